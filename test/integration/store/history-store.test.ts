/**
 * The history store on SQLite files: the SQLite schema itself here, and the behaviour shared with
 * every dialect from history-store.suite.ts.
 */
import Database from 'better-sqlite3';
import { Kysely, SqliteDialect } from 'kysely';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { migrateToLatest, type SqliteHistoryStore } from '../../../services/coordinator/store/sqlite.js';
import { migrations } from '../../../migrations/index.js';
import { FakeClock, openStore, removeDir, tempDir } from './fixtures.js';
import { historyStoreSuite, runInput } from './history-store.suite.js';

let dir: string | undefined;
let store: SqliteHistoryStore | undefined;
let clock: FakeClock;

beforeEach(async () => {
  dir = await tempDir();
  clock = new FakeClock();
});

afterEach(async () => {
  await store?.close();
  store = undefined;
  await removeDir(dir);
  dir = undefined;
});

async function open(opts: Parameters<typeof openStore>[1] = {}): Promise<SqliteHistoryStore> {
  store = await openStore(dir!, { now: clock.now, ...opts });
  return store;
}

describe('schema', () => {
  it('migrates an empty file, and re-running is a no-op that keeps the data', async () => {
    const s = await open();
    const run = await s.createRun(runInput());
    await s.close();
    store = undefined;

    const file = join(dir!, 'history.db');
    const raw = new Database(file, { readonly: true });
    try {
      const tables = raw.prepare(`select name from sqlite_master where type = 'table' order by name`).all() as { name: string }[];
      expect(tables.map((t) => t.name)).toEqual(
        expect.arrayContaining([
          'nodes',
          'vms',
          'plans',
          'runs',
          'run_transitions',
          'policy_actions',
          'progress_samples',
          'guest_samples',
          'host_cpu_samples',
          'outbox',
          'kysely_migration',
        ]),
      );
      expect(raw.prepare('select count(*) as n from kysely_migration').get()).toEqual({ n: Object.keys(migrations).length });
      const indexes = (raw.prepare(`select name from sqlite_master where type = 'index'`).all() as { name: string }[]).map((i) => i.name);
      expect(indexes).toEqual(expect.arrayContaining(['runs_active', 'outbox_unpublished', 'outbox_run', 'plans_state']));
      expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
    } finally {
      raw.close();
    }

    // Explicit re-run on the same file, then a normal re-open.
    const k = new Kysely<unknown>({ dialect: new SqliteDialect({ database: new Database(file) }) });
    await migrateToLatest(k);
    await k.destroy();
    const again = await open();
    expect((await again.getRun(run.id)).id).toBe(run.id);
    const raw2 = new Database(file, { readonly: true });
    expect(raw2.prepare('select count(*) as n from kysely_migration').get()).toEqual({ n: Object.keys(migrations).length });
    raw2.close();
  });

});

const dirs: string[] = [];
describe('on SQLite', () => {
  historyStoreSuite({
    name: 'sqlite',
    open: async (opts) => {
      const d = await tempDir();
      dirs.push(d);
      return openStore(d, opts);
    },
    cleanup: async () => {
      for (const d of dirs.splice(0)) await removeDir(d);
    },
  });
});
