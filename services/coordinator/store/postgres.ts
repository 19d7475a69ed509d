/**
 * The Postgres dialect of the history store, for replicated coordinators sharing one database:
 * Kysely's PostgresDialect over a `pg` pool. The repositories are the same as on SQLite
 * (history-store.ts); this file adds what differs:
 * - write transactions are serialized by a transaction-level advisory lock, as SQLite's BEGIN
 *   IMMEDIATE serializes them: outbox `seq` values are then committed in order, so a reader
 *   following the outbox by `seq` never skips a row committed late;
 * - fencing: with a `fence`, every write transaction first checks, in the same transaction, that
 *   the term row still holds this coordinator's term (FOR SHARE, so a new leader's term bump waits
 *   for it, and every later write of the deposed leader is refused with NotLeaderError);
 * - 64-bit integers and numerics come back as JavaScript numbers (ms times and byte counts are
 *   far below 2^53).
 */
import { CompiledQuery, Kysely, PostgresAdapter, PostgresDialect, PostgresIntrospector, PostgresQueryCompiler, sql, type DatabaseConnection, type Driver, type QueryCompiler } from 'kysely';
import pg from 'pg';
import { ConfigError, type NotLeaderError } from '../../shared/errors.js';
import { LEADER_TABLE_SQL, SCHEMA_LOCK } from '../leadership/postgres.js';
import { TX, type Db, type StoreDialect, type WritePipeline } from './database.js';
import { RepositoryHistoryStore } from './history-store.js';
import { migrateToLatest } from './migrate.js';
import { timedCompiler, timeWriteStatements } from './pg-timing.js';
import { checkMin, resolveHistoryStoreOptions, type HistoryStoreOptions, type ResolvedHistoryStoreOptions } from './options.js';
import type { HistoryDatabase } from './schema.js';

/** Serializes write transactions ('migd' 'wrte'). */
const WRITE_LOCK = [0x6d696764, 0x77727465] as const;

/** The fencing token of this coordinator's writes: its term, or a NotLeaderError to refuse with. */
export interface WriteFence {
  /** @throws NotLeaderError when this coordinator does not lead */
  token(): number;
  /** The refusal when the database holds another term (names the leader when known). */
  notLeader(): NotLeaderError;
}

export interface PostgresHistoryStoreOptions extends HistoryStoreOptions {
  /** postgres://user@host:port/database. Required. */
  url: string;
  /** Most connections of the pool. Default 10. */
  poolSize?: number;
  /** Apply pending schema migrations on open. Default true. */
  migrate?: boolean;
  /** When given, every write carries and checks this coordinator's term (see the file comment). */
  fence?: WriteFence;
  /**
   * Run the independent writes of a group commit together on the write connection, each statement
   * sent without waiting for the answers of the others' (node-pg's pipeline mode; see
   * StoreDatabase.write). Default true; false: one write after the other, as on SQLite.
   */
  pipelineWrites?: boolean;
}

export type ResolvedPostgresHistoryStoreOptions = ResolvedHistoryStoreOptions &
  Readonly<Required<Pick<PostgresHistoryStoreOptions, 'url' | 'poolSize' | 'migrate' | 'pipelineWrites'>>> &
  Readonly<Pick<PostgresHistoryStoreOptions, 'fence'>>;

/**
 * The default time budget of a group commit on Postgres (ms; SQLite's is 10). SQLite's writes are
 * synchronous, so its budget bounds how long the event loop is held; a Postgres group waits on
 * the network and holds no turn, and its budget bounds the write rate instead: each write is a few
 * round trips to the server, and 10 ms let a group take about 7 writes. In a 500-node drain
 * (bench-control-plane d) the heartbeats' writes then queued behind the runs' (round trip p99
 * 7.5 s, makespan 83 s); with 100 ms, 0.5 s and 74–78 s.
 */
export const POSTGRES_WRITE_GROUP_BUDGET_MS = 100;

/** Whether `s` names a Postgres database (postgres:// or postgresql://). */
export function isPostgresUrl(s: string): boolean {
  return /^postgres(?:ql)?:\/\//.test(s);
}

/** Fills in defaults and validates. @throws ConfigError naming the first bad option */
export function resolvePostgresStoreOptions(o: PostgresHistoryStoreOptions): ResolvedPostgresHistoryStoreOptions {
  if (typeof o.url !== 'string' || !isPostgresUrl(o.url)) throw new ConfigError('store.url', 'must be a postgres:// URL');
  const poolSize = o.poolSize ?? 10;
  checkMin('poolSize', poolSize, 1);
  if (o.pipelineWrites !== undefined && typeof o.pipelineWrites !== 'boolean') throw new ConfigError('store.pipelineWrites', 'must be true or false');
  return Object.freeze({ url: o.url, poolSize, migrate: o.migrate ?? true, pipelineWrites: o.pipelineWrites ?? true, fence: o.fence, ...resolveHistoryStoreOptions({ ...o, writeGroupBudgetMs: o.writeGroupBudgetMs ?? POSTGRES_WRITE_GROUP_BUDGET_MS }) });
}

/** int8 (20) and numeric (1700) as numbers; every other type as pg parses it. */
const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') => {
    if (oid === 20 || oid === 1700) return (v: string) => (v === null ? null : Number(v));
    return pg.types.getTypeParser(oid, format as 'text');
  }) as typeof pg.types.getTypeParser,
};

/**
 * node-pg answers a simple query of several statements (BEGIN_WRITE) with an array of results,
 * one per statement, which Kysely would read as an empty result: its client gives the last one.
 */
function lastResultOfMany(client: pg.PoolClient): void {
  const query = client.query.bind(client) as (...args: unknown[]) => unknown;
  (client as { query: unknown }).query = (...args: unknown[]): unknown => {
    const r = query(...args);
    if (typeof args[0] !== 'string' || !args[0].includes(';') || !(r instanceof Promise)) return r;
    return r.then((v: unknown) => (Array.isArray(v) ? v[v.length - 1] : v));
  };
}

/** Compiled once, as the shared transaction statements (database.ts TX): every read begins with it. */
const BEGIN_READ = CompiledQuery.raw('begin isolation level repeatable read read only');

/**
 * The write group's connection without Kysely's one-query-at-a-time (its `connection()` waits for
 * each query's answer before it passes on the next): a Kysely whose driver hands out the group's
 * connection to every query at once, so that node-pg, in pipeline mode, sends each when it is
 * asked for. Kysely's own Postgres compiler and adapter; no transactions of its own (the group's
 * is begun and ended on the connection itself).
 */
export function writePipeline(): WritePipeline {
  let current: DatabaseConnection | undefined;
  const connection = async (): Promise<DatabaseConnection> => {
    if (current === undefined) throw new Error('history store: a pipelined statement outside a write group');
    return current;
  };
  const noTransactions = (): Promise<never> => Promise.reject(new Error('history store: the write pipeline has no transactions of its own'));
  const driver: Driver = {
    init: async () => undefined,
    acquireConnection: connection,
    beginTransaction: noTransactions,
    commitTransaction: noTransactions,
    rollbackTransaction: noTransactions,
    releaseConnection: async () => undefined,
    destroy: async () => undefined,
  };
  const db: Db = new Kysely<HistoryDatabase>({
    dialect: {
      createAdapter: () => new PostgresAdapter(),
      createDriver: () => driver,
      createIntrospector: (k) => new PostgresIntrospector(k),
      createQueryCompiler: () => timedCompiler(new PostgresQueryCompiler()),
    },
  });
  return {
    over: async (conn) => {
      // The connection the group holds (its single-connection provider hands it out at once).
      current = await conn.getExecutor().provideConnection((c) => Promise.resolve(c));
      return db;
    },
    send: (query) => {
      if (current === undefined) return Promise.reject(new Error('history store: a pipelined statement outside a write group'));
      // node-pg writes it to the socket within this call (pipeline mode).
      return current.executeQuery(query);
    },
    end: () => {
      current = undefined;
    },
  };
}

/**
 * A write transaction's first round trip: begin, the write lock and, fenced, the term row FOR
 * SHARE, as one simple query (its answer is the last statement's). Three round trips were a
 * group's own four with the commit; with the writes of a group pipelined (writePipeline), a
 * group's own round trips are most of its time on the connection. The lock's keys are constants,
 * written as literals.
 */
export const BEGIN_WRITE = `begin; select pg_advisory_xact_lock(${WRITE_LOCK[0]}, ${WRITE_LOCK[1]})`;
const BEGIN_WRITE_UNFENCED = CompiledQuery.raw(BEGIN_WRITE);
const BEGIN_WRITE_FENCED = CompiledQuery.raw(`${BEGIN_WRITE}; select term from migd_leader where id = 1 for share`);

/**
 * The Postgres dialect object; `fence` makes every write check the term; with `pipeline` (its pool
 * in node-pg's pipeline mode) a group's independent writes run together.
 */
export function postgresStoreDialect(fence?: WriteFence, pipeline?: WritePipeline): StoreDialect {
  return {
    name: 'postgres',
    ...(pipeline ? { pipeline } : {}),
    beginWrite: async (conn) => {
      // Refuse before touching the database when we know we do not lead.
      const term = fence?.token();
      try {
        const r = await conn.executeQuery<{ term: number }>(term === undefined ? BEGIN_WRITE_UNFENCED : BEGIN_WRITE_FENCED);
        if (term !== undefined && Number(r.rows[0]?.term) !== term) throw fence!.notLeader();
      } catch (err) {
        // The caller only rolls back what it began: end this transaction before the connection
        // goes back to the pool.
        await conn.executeQuery(TX.rollback).catch(() => undefined);
        throw err;
      }
    },
    beginRead: async (conn) => {
      await conn.executeQuery(BEGIN_READ);
    },
    isConstraintViolation: (err, kind) => {
      const e = err as { code?: unknown; constraint?: unknown } | null;
      if (e?.code !== '23505') return false;
      const pkey = typeof e.constraint === 'string' && e.constraint.endsWith('_pkey');
      return kind === 'primary-key' ? pkey : !pkey;
    },
    lastOutboxSeq: async (db) => {
      // The highest committed row, not the sequence (which may already count a transaction that
      // has not committed yet: a reader starting past it would skip that row).
      const r = await sql<{ last: number | null }>`select max(seq) as last from outbox`.execute(db);
      return Number(r.rows[0]?.last ?? 0);
    },
    optimize: async () => {
      // Postgres's autovacuum analyzes by itself.
    },
  };
}

/** Kysely's Postgres dialect, its compiles timed while the turn profiler is on (bench d, issue 15). */
class TimedPostgresDialect extends PostgresDialect {
  override createQueryCompiler(): QueryCompiler {
    return timedCompiler(super.createQueryCompiler());
  }
}

/** The history store on a Postgres database. */
export class PostgresHistoryStore extends RepositoryHistoryStore {
  readonly options: ResolvedPostgresHistoryStoreOptions;
  constructor(db: Kysely<HistoryDatabase>, o: ResolvedPostgresHistoryStoreOptions) {
    super(db, postgresStoreDialect(o.fence, o.pipelineWrites ? writePipeline() : undefined), o);
    this.options = o;
  }
}

/**
 * Connects, applies pending migrations (safe when several coordinators start at once: Kysely's
 * migrator locks) and creates the term row's table.
 * @throws ConfigError for bad options; MigdError(INTERNAL) when the schema cannot be migrated;
 *   the connection error when the database is unreachable
 */
export async function openPostgresHistoryStore(opts: PostgresHistoryStoreOptions): Promise<PostgresHistoryStore> {
  const o = resolvePostgresStoreOptions(opts);
  // Pipeline mode: a query is sent when asked for, not after the answer to the one before. Kysely
  // still waits for each answer on a connection it hands out (reads, migrations), so only the
  // write group's pipelined writes (writePipeline) have several statements in flight.
  const pool = new pg.Pool({ connectionString: o.url, max: o.poolSize, types, application_name: 'migd-coordinator', keepAlive: true, connectionTimeoutMillis: 5000, pipeline: o.pipelineWrites });
  // An idle connection that breaks (server restart) is dropped by the pool; not a crash.
  pool.on('error', (err) => o.logger.warn('history store: idle database connection failed', { err: err.message }));
  // The write transactions' statements timed while the turn profiler is on (bench d, issue 15).
  timeWriteStatements(pool, (text) => text.startsWith(BEGIN_WRITE));
  pool.on('connect', lastResultOfMany);
  const db = new Kysely<HistoryDatabase>({ dialect: new TimedPostgresDialect({ pool }) });
  try {
    if (o.migrate) await migrateToLatest(db);
    await db.transaction().execute(async (trx) => {
      await sql`select pg_advisory_xact_lock(${SCHEMA_LOCK[0]}::int4, ${SCHEMA_LOCK[1]}::int4)`.execute(trx);
      await sql.raw(LEADER_TABLE_SQL).execute(trx);
    });
  } catch (err) {
    await db.destroy();
    throw err;
  }
  return new PostgresHistoryStore(db, o);
}
