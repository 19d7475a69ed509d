/**
 * The Postgres store's write path as the coordinator runs it (issue 15): the timing of a write
 * transaction's statements (store/pg-timing.ts) on a throw-away server.
 */
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { vmKey, type StoreDatabase } from '../../../services/coordinator/store/database.js';
import { openPostgresHistoryStore, type PostgresHistoryStore, type PostgresHistoryStoreOptions } from '../../../services/coordinator/store/postgres.js';
import { NotFoundError, NotLeaderError } from '../../../services/shared/errors.js';
import { MigrationState, VmSpec, VmState, type VmInfo } from '../../../services/shared/gen/migd/v1/common.js';
import { turns } from '../../../services/shared/metrics/turns.js';
import { startPostgres, type PostgresServer } from '../../helpers/postgres.js';
import { outboxEvents, quietLogger } from './fixtures.js';
import { runInput } from './history-store.suite.js';

let server: PostgresServer;
beforeAll(async () => {
  server = await startPostgres();
}, 60_000);
afterAll(async () => {
  await server?.dispose();
});

const vm = (name: string, nodeId = 'a'): VmInfo => ({ spec: VmSpec.fromPartial({ name, memoryMib: 256 }), nodeId, state: VmState.VM_STATE_RUNNING, pid: 1, startedAt: undefined, migrationRunId: '', lastGuestPerf: undefined, qemuCpuSeconds: 0, localDisks: [] });
const cause = (name: string) => turns.causesSnapshot().find((c) => c.cause === name);
const database = (s: PostgresHistoryStore): StoreDatabase => (s as unknown as { database: StoreDatabase }).database;

describe('a write transaction on Postgres', () => {
  afterEach(() => turns.disable());

  it('begins, takes the write lock and checks its term in one round trip, and refuses another term', async () => {
    const url = await server.createDatabase();
    let term = 1;
    const fence = { token: () => term, notLeader: () => new NotLeaderError('other:1') };
    const s = await openPostgresHistoryStore({ url, logger: quietLogger, fence });
    try {
      await sql`insert into migd_leader (id, term, leader) values (1, 1, 'me')`.execute(database(s).db);
      turns.enable();
      const roundTrips = async (write: () => Promise<unknown>): Promise<number> => {
        const [q, w] = [cause('pg.write send→answer')?.count ?? 0, s.writeStats().statements];
        await write();
        return (cause('pg.write send→answer')?.count ?? 0) - q - (s.writeStats().statements - w);
      };
      // The group's own: begin + lock + term check, then commit.
      expect(await roundTrips(() => s.nodes.upsertVm(vm('a', 'node-1')))).toBe(2);
      term = 2; // we believe we lead in term 2, the row holds 1
      await expect(s.nodes.upsertVm(vm('a', 'node-2'))).rejects.toBeInstanceOf(NotLeaderError);
      term = 1;
      // The refused transaction was ended: the connection writes again.
      expect(await roundTrips(() => s.nodes.upsertVm(vm('a', 'node-3')))).toBe(2);
      expect((await s.nodes.getVm('a')).nodeId).toBe('node-3');
    } finally {
      await s.close();
    }
  });
});

describe('write statement timing on Postgres', () => {
  let store: PostgresHistoryStore | undefined;
  afterEach(async () => {
    await store?.close();
    store = undefined;
    turns.disable();
  });

  it('times each statement of the write transactions, and nothing of the reads', async () => {
    turns.enable();
    store = await openPostgresHistoryStore({ url: await server.createDatabase(), logger: quietLogger });
    await store.nodes.upsertVm(vm('a'));
    await store.nodes.listVms();
    await store.nodes.upsertVm(vm('b'));
    const stats = store.writeStats();
    const tx = cause('pg.write transaction');
    // One transaction per group commit; each holds the writes' statements (their outbox insert
    // counted with them) and the group's own: begin with the write lock, commit.
    expect(stats.groups).toBe(2);
    expect(tx?.count).toBe(stats.groups);
    const statements = stats.statements + 2 * stats.groups;
    expect(tx!.sizeMean * tx!.count).toBe(statements);
    expect(cause('pg.write send→answer')?.count).toBe(statements);
    expect(cause('pg.write send→answer idle')?.count).toBe(statements);
    expect(cause('pg.write answer→resolved')?.count).toBe(statements);
    // The read's query was built with Kysely's builders (the writes' here are compiled once).
    expect(cause('kysely compile')?.count).toBeGreaterThan(0);
    // From each statement's result to the next one's send, within a transaction.
    expect(cause('pg.write resolved→send')?.count).toBe(statements - stats.groups);
  });

  it('records nothing while the profiler is off', async () => {
    store = await openPostgresHistoryStore({ url: await server.createDatabase(), logger: quietLogger });
    await store.nodes.upsertVm(vm('a'));
    await store.nodes.listVms();
    turns.enable();
    expect(cause('pg.write transaction')).toBeUndefined();
    expect(cause('kysely compile')).toBeUndefined();
  });
});

// A group's writes with disjoint keys run together on the write connection (node-pg's pipeline
// mode): a statement of one does not wait for the answers to the others' (StoreDatabase.write).
describe('pipelined write groups on Postgres', () => {
  let store: PostgresHistoryStore | undefined;
  afterEach(async () => {
    await store?.close();
    store = undefined;
    turns.disable();
  });
  const open = async (o: Partial<PostgresHistoryStoreOptions> = {}): Promise<PostgresHistoryStore> =>
    (store = await openPostgresHistoryStore({ url: await server.createDatabase(), logger: quietLogger, writeGroupBudgetMs: 60_000, ...o }));
  const vmRows = async (s: PostgresHistoryStore) => (await s.nodes.listVms()).map((v) => `${v.spec?.name}@${v.nodeId}`).sort();

  it("sends the statements of a group's independent writes without waiting for each answer", async () => {
    const s = await open();
    turns.enable();
    const names = Array.from({ length: 20 }, (_, i) => `vm-${String(i).padStart(2, '0')}`);
    await Promise.all(names.map((n) => s.nodes.upsertVm(vm(n))));
    expect(s.writeStats().groups).toBe(1);
    // The 20 writes' first statements were all in flight at once.
    expect(cause('pg.write send→answer')?.sizeMax).toBe(20);
    expect(await vmRows(s)).toEqual(names.map((n) => `${n}@a`));
  });

  it('sends one statement at a time with pipelineWrites false, with the same result', async () => {
    const s = await open({ pipelineWrites: false });
    turns.enable();
    const names = Array.from({ length: 20 }, (_, i) => `vm-${i}`);
    await Promise.all(names.map((n) => s.nodes.upsertVm(vm(n))));
    expect(s.writeStats().groups).toBe(1);
    expect(cause('pg.write send→answer')?.sizeMax).toBe(1);
    expect(await vmRows(s)).toEqual(names.map((n) => `${n}@a`).sort());
  });

  it('undoes a pipelined write whose statement fails, and commits the others', async () => {
    const s = await open();
    const d = database(s);
    const results = await Promise.allSettled([
      s.nodes.upsertVm(vm('a')),
      // Fails on the server while the others' statements are in flight: the transaction is aborted
      // and the group is written again one write after the other, this one alone failing.
      d.write((trx) => sql`select 1 / 0`.execute(trx), { keys: [vmKey('x')] }),
      s.nodes.upsertVm(vm('b')),
      s.plans.transitionRun('nope', { to: MigrationState.MIGRATION_STATE_PRECOPY }),
      s.nodes.upsertVm(vm('c')),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled', 'rejected', 'fulfilled']);
    expect((results[1] as PromiseRejectedResult).reason).toMatchObject({ code: '22012' });
    expect((results[3] as PromiseRejectedResult).reason).toBeInstanceOf(NotFoundError);
    expect(d.groupRedos).toBe(1);
    expect(await vmRows(s)).toEqual(['a@a', 'b@a', 'c@a']);
    expect((await outboxEvents(s)).map((e) => (e.payload?.$case === 'vmChanged' ? e.payload.value.vm?.spec?.name : e.payload?.$case))).toEqual(['a', 'b', 'c']);
  });

  it('runs a write without keys after the writes asked before it and before those asked after it', async () => {
    const s = await open();
    const d = database(s);
    const seen: string[][] = [];
    const count = (label: string) =>
      d.write(async (trx) => {
        const rows = await trx.selectFrom('vms').select('name').orderBy('name').execute();
        seen.push([label, ...rows.map((r) => r.name)]);
      });
    await Promise.all([s.nodes.upsertVm(vm('a')), s.nodes.upsertVm(vm('b')), count('middle'), s.nodes.upsertVm(vm('c')), count('last')]);
    expect(s.writeStats().groups).toBe(1);
    expect(seen).toEqual([
      ['middle', 'a', 'b'],
      ['last', 'a', 'b', 'c'],
    ]);
  });

  it('runs writes sharing a key in the order asked', async () => {
    const s = await open();
    await Promise.all([s.nodes.upsertVm(vm('a', 'n1')), s.nodes.upsertVm(vm('b', 'n1')), s.nodes.upsertVm(vm('a', 'n2')), s.nodes.upsertVm(vm('a', 'n3'))]);
    expect(s.writeStats().groups).toBe(1);
    expect(await vmRows(s)).toEqual(['a@n3', 'b@n1']);
    const moves = (await outboxEvents(s)).map((e) => (e.payload?.$case === 'vmChanged' ? `${e.payload.value.vm?.spec?.name}@${e.payload.value.vm?.nodeId}` : ''));
    expect(moves.filter((m) => m.startsWith('a@'))).toEqual(['a@n1', 'a@n2', 'a@n3']);
  });

  it("sends a group's outbox rows with its commit", async () => {
    const s = await open();
    turns.enable();
    // One write of two statements one after the other (a new VM: UPDATE, INSERT), then its
    // VmChanged row and the commit together.
    await s.nodes.upsertVm(vm('a'));
    expect(s.writeStats()).toMatchObject({ groups: 1, statements: 3 });
    expect(cause('pg.write send→answer')?.count).toBe(5);
    expect(cause('pg.write send→answer')?.sizeMax).toBe(2);
  });

  it("sends a plan's row, its runs' and their transitions' together, in the order their references need", async () => {
    const s = await open();
    turns.enable();
    const runs = Array.from({ length: 70 }, (_, i) => runInput({ vmName: `vm-${i}` }));
    const { plan, runs: created } = await s.createPlan({ idempotencyKey: 'k', request: {} as never, runs });
    // The idempotency check, then the plan, 2 × 2 chunks of runs and transitions (64 + 6) in one
    // flight: a reference sent ahead of its row would fail the group and redo it.
    expect(cause('pg.write send→answer')?.sizeMax).toBe(5);
    expect(database(s).groupRedos).toBe(0);
    expect((await s.listPlanRuns(plan.id)).map((r) => r.id)).toEqual(created!.map((r) => r.id));
    expect((await s.getRun(created![69]!.id)).transitions).toHaveLength(1);
  });

  describe('when the outbox rows cannot be inserted', () => {
    /** Refuses the outbox rows of node events (a trigger), as a full disk or a bad row would. */
    const refuseNodeEvents = (s: PostgresHistoryStore) =>
      sql
        .raw(
          `create function refuse_node_events() returns trigger language plpgsql as $$ begin if new.subject like 'migd.v1.node.%.state' then raise exception 'refused by the test'; end if; return new; end $$;
           create trigger refuse_node_events before insert on outbox for each row execute function refuse_node_events()`,
        )
        .execute(database(s).db);

    it('fails the write whose rows they are, writes the others, and the commit that rolled back is noticed', async () => {
      const s = await open();
      await refuseNodeEvents(s);
      const d = database(s);
      const results = await Promise.allSettled([s.nodes.upsertVm(vm('a')), s.nodes.writeNode({ host: { nodeId: 'n1' } as never }), s.nodes.upsertVm(vm('b'))]);
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
      expect(String((results[1] as PromiseRejectedResult).reason)).toMatch(/refused by the test/);
      expect(d.groupRedos).toBe(1);
      expect(await vmRows(s)).toEqual(['a@a', 'b@a']);
      expect(await s.nodes.listNodes()).toEqual([]);
    });

    it('fails a write alone in its group, and the connection writes again after it', async () => {
      const s = await open();
      await refuseNodeEvents(s);
      await expect(s.nodes.writeNode({ host: { nodeId: 'n1' } as never })).rejects.toThrow(/refused by the test/);
      await s.nodes.upsertVm(vm('a'));
      expect(await vmRows(s)).toEqual(['a@a']);
      expect(await s.nodes.listNodes()).toEqual([]);
    });
  });

  it("keeps each run's events in order when many runs end together with their samples", async () => {
    const s = await open({ progressEventIntervalMs: 0 });
    const runs = [];
    for (let i = 0; i < 12; i++) runs.push(await s.createRun(runInput({ vmName: `vm-${i}` })));
    await Promise.all(runs.map((r) => s.transitionRun(r.id, { to: MigrationState.MIGRATION_STATE_PRECOPY, from: MigrationState.MIGRATION_STATE_QUEUED })));
    for (const r of runs) for (let p = 1; p <= 3; p++) s.appendProgress(r.id, { pass: p, transferredBytes: p } as never);
    const before = s.writeStats().groups;
    await Promise.all(runs.map((r) => s.finishRun(r.id, { state: MigrationState.MIGRATION_STATE_SUCCEEDED, from: MigrationState.MIGRATION_STATE_PRECOPY })));
    // The ends and the one batch of samples before them in one group.
    expect(s.writeStats().groups - before).toBe(1);
    const events = await outboxEvents(s);
    for (const r of runs) {
      const mine = events.filter((e) => e.subject.startsWith('migd.v1.run.') && JSON.stringify(e.payload).includes(r.id));
      // Created (queued), PRECOPY, the samples, the end.
      expect(mine.map((e) => e.subject.split('.').pop())).toEqual(['state', 'state', 'progress', 'progress', 'progress', 'state', 'completed']);
      expect(mine.map((e) => Number(e.runSequence))).toEqual([1, 2, 3, 4, 5, 6, 7]);
      expect((await s.getRunTimeline(r.id)).progress.map((p) => p.pass)).toEqual([1, 2, 3]);
    }
  });
});
