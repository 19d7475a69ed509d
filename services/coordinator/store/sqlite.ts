/**
 * The SQLite dialect of the history store: Kysely over better-sqlite3, one connection per process
 * (Kysely serializes its use), WAL journal, `synchronous=NORMAL`, a busy timeout for other
 * processes writing the same file. Write transactions start with BEGIN IMMEDIATE (so they never
 * fail half-way upgrading a read lock), hold no network I/O and are kept short; samples are
 * buffered and inserted in batches. The repositories themselves are dialect-neutral
 * (history-store.ts); this file adds what only SQLite has.
 *
 * Open ONE store per process and file: better-sqlite3 is synchronous, so a second connection in
 * the same thread waiting on the first one's write lock would block the very event loop the
 * first needs to commit (a self-deadlock until the busy timeout). Other processes (or worker
 * threads) may write the same file; WAL and the busy timeout handle them.
 */
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { CompiledQuery, Kysely, SqliteDialect, sql } from 'kysely';
import { ConfigError } from '../../shared/errors.js';
import { ensurePrivateDir, ensurePrivateFile, restrictFiles } from '../../shared/private-files.js';
import { TX, type StoreDialect } from './database.js';
import { RepositoryHistoryStore } from './history-store.js';
import { migrateToLatest } from './migrate.js';
import { checkMin, resolveHistoryStoreOptions, type HistoryStoreOptions, type ResolvedHistoryStoreOptions } from './options.js';
import type { HistoryDatabase } from './schema.js';

export { migrateToLatest } from './migrate.js';

/** Options of {@link openSqliteHistoryStore}; each documents its default. */
export interface SqliteHistoryStoreOptions extends HistoryStoreOptions {
  /** Database file (created if missing); `:memory:` for a throw-away store. Required. */
  filename: string;
  /** How long to wait for another process's write lock, in ms. Default 5000. */
  busyTimeoutMs?: number;
  /** Apply pending schema migrations on open. Default true. */
  migrate?: boolean;
}

/** Fully defaulted options. */
export type ResolvedSqliteHistoryStoreOptions = ResolvedHistoryStoreOptions & Readonly<Required<Pick<SqliteHistoryStoreOptions, 'filename' | 'busyTimeoutMs' | 'migrate'>>>;

/**
 * Fills in defaults and validates.
 * @throws ConfigError naming the first bad option.
 */
export function resolveSqliteStoreOptions(o: SqliteHistoryStoreOptions): ResolvedSqliteHistoryStoreOptions {
  if (typeof o.filename !== 'string' || o.filename === '') throw new ConfigError('store.filename', 'is required');
  const busyTimeoutMs = o.busyTimeoutMs ?? 5000;
  checkMin('busyTimeoutMs', busyTimeoutMs, 0);
  return Object.freeze({ filename: o.filename, busyTimeoutMs, migrate: o.migrate ?? true, ...resolveHistoryStoreOptions(o) });
}

/** Compiled once (a write transaction starts with it, hundreds of times a second in a drain). */
const BEGIN_IMMEDIATE = CompiledQuery.raw('begin immediate');

/** What differs on SQLite. */
export const sqliteStoreDialect: StoreDialect = {
  name: 'sqlite',
  beginWrite: async (conn) => {
    await conn.executeQuery(BEGIN_IMMEDIATE);
  },
  beginRead: async (conn) => {
    await conn.executeQuery(TX.begin);
  },
  isConstraintViolation: (err, kind) =>
    (err as { code?: unknown } | null)?.code === (kind === 'primary-key' ? 'SQLITE_CONSTRAINT_PRIMARYKEY' : 'SQLITE_CONSTRAINT_UNIQUE'),
  lastOutboxSeq: async (db) => {
    // AUTOINCREMENT keeps the high-water mark in sqlite_sequence even after the rows are pruned.
    const r = await sql<{ seq: number }>`select seq from sqlite_sequence where name = 'outbox'`.execute(db);
    return Number(r.rows[0]?.seq ?? 0);
  },
  optimize: async (db) => {
    await sql`pragma optimize`.execute(db);
  },
};

/** Prepared statements kept per connection (distinct SQL texts; the oldest unused go first). */
export const STATEMENT_CACHE_SIZE = 512;

/**
 * The connection Kysely's SQLite driver uses, with its prepared statements kept and reused:
 * the driver prepares every query it runs, and under load (hundreds of heartbeats and progress
 * samples a second) compiling the same few dozen statements again was the coordinator's largest
 * single CPU cost. Safe because the driver runs one query at a time to completion (`all`/`run`,
 * never an open iterator here), and SQLite re-prepares a statement by itself after a schema change.
 */
export function withStatementCache(database: Database.Database, size = STATEMENT_CACHE_SIZE): { prepare: (sql: string) => Database.Statement; close: () => void } {
  const cache = new Map<string, Database.Statement>();
  return {
    prepare: (text: string) => {
      let stmt = cache.get(text);
      if (stmt !== undefined) {
        // Most recently used last: Map keeps insertion order.
        cache.delete(text);
        cache.set(text, stmt);
        return stmt;
      }
      stmt = database.prepare(text);
      cache.set(text, stmt);
      if (cache.size > size) cache.delete(cache.keys().next().value as string);
      return stmt;
    },
    close: () => {
      cache.clear();
      database.close();
    },
  };
}

/** The history store on a SQLite file. */
export class SqliteHistoryStore extends RepositoryHistoryStore {
  /** The resolved options. */
  readonly options: ResolvedSqliteHistoryStoreOptions;

  /** Use {@link openSqliteHistoryStore}. */
  constructor(db: Kysely<HistoryDatabase>, o: ResolvedSqliteHistoryStoreOptions) {
    super(db, sqliteStoreDialect, o);
    this.options = o;
  }
}

/**
 * Opens (creating if needed) the store and applies pending migrations.
 * @throws ConfigError for bad options; MigdError(INTERNAL) when the schema cannot be migrated
 *   (e.g. the file was written by a newer migd).
 */
export async function openSqliteHistoryStore(opts: SqliteHistoryStoreOptions): Promise<SqliteHistoryStore> {
  const o = resolveSqliteStoreOptions(opts);
  const onDisk = o.filename !== ':memory:' && !o.filename.startsWith('file:');
  // The history is private (0600 files in a 0700 folder): SQLite gives the WAL and shared-memory
  // files the database file's mode, and existing ones are tightened after opening.
  if (onDisk) {
    ensurePrivateDir(dirname(o.filename));
    ensurePrivateFile(o.filename);
  }
  const database = new Database(o.filename, { timeout: o.busyTimeoutMs });
  try {
    database.pragma('journal_mode = WAL');
    if (onDisk) restrictFiles([`${o.filename}-wal`, `${o.filename}-shm`]);
    database.pragma('synchronous = NORMAL');
    database.pragma('foreign_keys = ON');
    database.pragma(`busy_timeout = ${Math.floor(o.busyTimeoutMs)}`);
  } catch (err) {
    database.close();
    throw err;
  }
  const db = new Kysely<HistoryDatabase>({ dialect: new SqliteDialect({ database: withStatementCache(database) }) });
  if (o.migrate) {
    try {
      await migrateToLatest(db);
    } catch (err) {
      await db.destroy();
      throw err;
    }
  }
  return new SqliteHistoryStore(db, o);
}
