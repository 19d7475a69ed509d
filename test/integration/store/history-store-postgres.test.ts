/**
 * The history store on Postgres (a throw-away cluster of Debian's server, one fresh database per
 * test): the Postgres schema here, and the behaviour shared with every dialect from
 * history-store.suite.ts.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrations } from '../../../migrations/index.js';
import { openPostgresHistoryStore } from '../../../services/coordinator/store/postgres.js';
import { startPostgres, type PostgresServer } from '../../helpers/postgres.js';
import { quietLogger } from './fixtures.js';
import { historyStoreSuite, runInput } from './history-store.suite.js';

let server: PostgresServer;
beforeAll(async () => {
  server = await startPostgres();
}, 60_000);
afterAll(async () => {
  await server?.dispose();
});

async function query<T extends pg.QueryResultRow>(url: string, text: string): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(text)).rows;
  } finally {
    await c.end();
  }
}

describe('schema on Postgres', () => {
  it('migrates an empty database with 64-bit integers, and re-opening is a no-op that keeps the data', async () => {
    const url = await server.createDatabase();
    const s = await openPostgresHistoryStore({ url, logger: quietLogger });
    const run = await s.createRun(runInput());
    await s.close();
    const cols = await query<{ table_name: string; column_name: string; data_type: string }>(
      url,
      "select table_name, column_name, data_type from information_schema.columns where table_schema = 'public' and column_name in ('created_at', 'transferred_bytes', 'payload', 'seq', 'host_cpu_seconds') order by 1, 2",
    );
    const type = (t: string, c: string): string | undefined => cols.find((r) => r.table_name === t && r.column_name === c)?.data_type;
    expect(type('runs', 'created_at')).toBe('bigint');
    expect(type('runs', 'transferred_bytes')).toBe('bigint');
    expect(type('runs', 'host_cpu_seconds')).toBe('double precision');
    expect(type('outbox', 'payload')).toBe('bytea');
    expect(type('outbox', 'seq')).toBe('bigint');
    expect(await query(url, 'select count(*)::int as n from kysely_migration')).toEqual([{ n: Object.keys(migrations).length }]);
    const again = await openPostgresHistoryStore({ url, logger: quietLogger });
    try {
      expect((await again.getRun(run.id)).id).toBe(run.id);
      expect(await query(url, 'select count(*)::int as n from kysely_migration')).toEqual([{ n: Object.keys(migrations).length }]);
    } finally {
      await again.close();
    }
  });

  it('refuses a URL that is not postgres://, naming the option', async () => {
    await expect(openPostgresHistoryStore({ url: 'mysql://x', logger: quietLogger })).rejects.toThrow(/store\.url/);
  });
});

describe('on Postgres', () => {
  historyStoreSuite({
    name: 'postgres',
    open: async (opts) => openPostgresHistoryStore({ url: await server.createDatabase(), logger: quietLogger, ...opts }),
    cleanup: async () => undefined,
  });
});
