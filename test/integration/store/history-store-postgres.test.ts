/**
 * The history store on Postgres (a throw-away cluster of Debian's server, one fresh database per
 * test): the Postgres schema here, and the behaviour shared with every dialect from
 * history-store.suite.ts.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrations } from '../../../migrations/index.js';
import { sql, type Kysely } from 'kysely';
import { NotLeaderError } from '../../../services/shared/errors.js';
import { MigrationState as S, VmState } from '../../../services/shared/gen/migd/v1/common.js';
import { openPostgresHistoryStore, type PostgresHistoryStore } from '../../../services/coordinator/store/postgres.js';
import { StatementNames } from '../../../services/coordinator/store/postgres-statements.js';
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

describe('named prepared statements on Postgres (issue 15 §4)', () => {
  /** The store's own Kysely (its pool): pg_prepared_statements is per connection. */
  const kysely = (s: PostgresHistoryStore): Kysely<unknown> => (s as unknown as { database: { db: Kysely<unknown> } }).database.db;
  const prepared = async (s: PostgresHistoryStore): Promise<string[]> =>
    (await sql<{ statement: string }>`select statement from pg_prepared_statements`.execute(kysely(s))).rows.map((r) => r.statement);
  /** `n` migrations' writes as the supervisor makes them (plans keyed `key`0, `key`1, …). */
  const migrate = async (s: PostgresHistoryStore, n: number, key = 'k'): Promise<string[]> => {
    const ids: string[] = [];
    for (let i = 0; i < n; i++) {
      const { runs } = await s.createPlan({ idempotencyKey: `${key}${i}`, request: {} as never, runs: [runInput()] });
      const id = runs![0]!.id;
      await s.transitionRun(id, { to: S.MIGRATION_STATE_PREPARING, from: S.MIGRATION_STATE_QUEUED });
      await s.transitionRun(id, { to: S.MIGRATION_STATE_PRECOPY, from: S.MIGRATION_STATE_PREPARING });
      await s.finishRun(id, { state: S.MIGRATION_STATE_SUCCEEDED, from: S.MIGRATION_STATE_PRECOPY });
      ids.push(id);
    }
    return ids;
  };

  it('prepares a statement run again once per connection, and none with a * (their result would follow the table)', async () => {
    const s = await openPostgresHistoryStore({ url: await server.createDatabase(), logger: quietLogger, poolSize: 1 });
    try {
      await migrate(s, 3);
      const texts = await prepared(s);
      // The transition's UPDATE … WITH (run twice per migration) is among them, prepared once.
      expect(texts.filter((t) => t.startsWith('with u as (') && t.includes('insert into run_transitions') && !t.includes('returning *'))).toHaveLength(1);
      expect(texts.filter((t) => t.includes('*'))).toEqual([]);
      expect(new Set(texts).size).toBe(texts.length);
    } finally {
      await s.close();
    }
  });

  it('sends every statement unnamed with namedStatements: false', async () => {
    const s = await openPostgresHistoryStore({ url: await server.createDatabase(), logger: quietLogger, poolSize: 1, namedStatements: false });
    try {
      await migrate(s, 3);
      expect(await prepared(s)).toEqual([]);
    } finally {
      await s.close();
    }
  });

  it('keeps writing when a newer schema adds a column to a table while it runs', async () => {
    const url = await server.createDatabase();
    const s = await openPostgresHistoryStore({ url, logger: quietLogger, poolSize: 1 });
    try {
      const before = await migrate(s, 2);
      await query(url, 'alter table runs add column added_by_a_newer_coordinator integer');
      const after = await migrate(s, 2, 'after');
      for (const id of [...before, ...after]) expect((await s.getRun(id)).state).toBe(S.MIGRATION_STATE_SUCCEEDED);
    } finally {
      await s.close();
    }
  });

  it('names a text from its second run, never one with a *, and at most max texts', () => {
    const n = new StatementNames(2);
    expect(n.nameOf('select a from t where id = $1')).toBeUndefined();
    expect(n.nameOf('select a from t where id = $1')).toBe('migd_1');
    expect(n.nameOf('select a from t where id = $1')).toBe('migd_1');
    expect([n.nameOf('select * from t where id = $1'), n.nameOf('select * from t where id = $1')]).toEqual([undefined, undefined]);
    n.nameOf('b');
    expect(n.nameOf('b')).toBe('migd_2');
    n.nameOf('c');
    expect(n.nameOf('c')).toBeUndefined();
    expect(n.size).toBe(2);
  });
});

describe('a write transaction on Postgres', () => {
  it('begins, takes the write lock and checks its term in one round trip, and refuses another term', async () => {
    const url = await server.createDatabase();
    let term = 1;
    const fence = { token: () => term, notLeader: () => new NotLeaderError('other:1') };
    const s = await openPostgresHistoryStore({ url, logger: quietLogger, fence });
    try {
      await query(url, "insert into migd_leader (id, term, leader) values (1, 1, 'me')");
      const vm = (nodeId: string) => ({ spec: { name: 'vm-a', memoryMib: 512 }, nodeId, state: VmState.VM_STATE_RUNNING, pid: 1, migrationRunId: '', qemuCpuSeconds: 0, localDisks: [] }) as never;
      const roundTrips = async (write: () => Promise<unknown>): Promise<number> => {
        const [q, w] = [s.poolStats.queries, s.writeStats().statements];
        await write();
        return s.poolStats.queries - q - (s.writeStats().statements - w);
      };
      // The group's own: begin + lock + term check, then commit.
      expect(await roundTrips(() => s.upsertVm(vm('node-1')))).toBe(2);
      term = 2; // we believe we lead in term 2, the row holds 1
      await expect(s.upsertVm(vm('node-2'))).rejects.toBeInstanceOf(NotLeaderError);
      term = 1;
      // The refused transaction was ended: the connection writes again.
      expect(await roundTrips(() => s.upsertVm(vm('node-3')))).toBe(2);
      expect((await s.getVm('vm-a')).nodeId).toBe('node-3');
    } finally {
      await s.close();
    }
  });
});

describe('on Postgres', () => {
  historyStoreSuite({
    name: 'postgres',
    open: async (opts) => openPostgresHistoryStore({ url: await server.createDatabase(), logger: quietLogger, ...opts }),
    cleanup: async () => undefined,
  });
});
