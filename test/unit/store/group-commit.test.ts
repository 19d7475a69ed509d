import Database from 'better-sqlite3';
import { Kysely, SqliteDialect, sql } from 'kysely';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { groupTakesMore, WriteQueue, type StoreDialect } from '../../../services/coordinator/store/database.js';
import { createHistoryStore, type RepositoryHistoryStore } from '../../../services/coordinator/store/history-store.js';
import { migrateToLatest } from '../../../services/coordinator/store/migrate.js';
import { resolveHistoryStoreOptions } from '../../../services/coordinator/store/options.js';
import type { HistoryDatabase } from '../../../services/coordinator/store/schema.js';
import { sqliteStoreDialect } from '../../../services/coordinator/store/sqlite.js';
import { AlreadyExistsError, NotFoundError, NotLeaderError } from '../../../services/shared/errors.js';
import { decodeEvent } from '../../../services/shared/events/codec.js';
import { PolicyKind, VmSpec, VmState, type VmInfo } from '../../../services/shared/gen/migd/v1/common.js';
import { createLogger } from '../../../services/shared/log.js';

const log = createLogger('test', {}, () => undefined, 'error');
const vm = (name: string): VmInfo => ({ spec: VmSpec.fromPartial({ name, memoryMib: 256 }), nodeId: 'a', state: VmState.VM_STATE_RUNNING, pid: 1, startedAt: undefined, migrationRunId: '', lastGuestPerf: undefined, qemuCpuSeconds: 0, localDisks: [] });
const runOf = (id: string) => ({ id, vmName: `vm-${id}`, sourceNodeId: 'a', destinationNodeId: 'b', policy: { kind: PolicyKind.POLICY_KIND_ADAPTIVE, downtimeLimitMs: 300 } as never, memoryMib: 256 });

// StoreDatabase.write commits the writes asked for together in one transaction (group commit),
// each in its own savepoint: one that fails is undone and rejected alone.
describe('store group commit', () => {
  let store: RepositoryHistoryStore;
  let kysely: Kysely<HistoryDatabase>;
  let transactions: number;
  let refuse: Error | undefined;

  beforeEach(async () => {
    const db = new Kysely<HistoryDatabase>({ dialect: new SqliteDialect({ database: new Database(':memory:') }) });
    kysely = db;
    await migrateToLatest(db);
    transactions = 0;
    refuse = undefined;
    const dialect: StoreDialect = {
      ...sqliteStoreDialect,
      beginWrite: async (conn) => {
        transactions++;
        await sqliteStoreDialect.beginWrite(conn);
        // Like a fencing check that finds another leader's term.
        if (refuse) throw refuse;
      },
    };
    // No time budget here (a loaded machine must not split the groups these tests count).
    store = createHistoryStore(db, dialect, resolveHistoryStoreOptions({ logger: log, writeGroupBudgetMs: 60_000 }));
  });

  afterEach(async () => {
    await store.close();
  });

  const redos = (): number => (store as unknown as { database: { groupRedos: number } }).database.groupRedos;
  const events = async (): Promise<string[]> =>
    (await store.readUnpublished(10_000)).map((r) => decodeEvent(r.payload)).map((e) => (e.payload?.$case === 'vmChanged' ? `vm:${e.payload.value.vm?.spec?.name}` : (e.payload?.$case ?? '')));

  it('commits concurrent writes in one transaction, in the order asked, each settling on its own', async () => {
    const names = Array.from({ length: 30 }, (_, i) => `vm-${String(i).padStart(2, '0')}`);
    const results = await Promise.allSettled([...names.map((n) => store.nodes.upsertVm(vm(n))), store.plans.transitionRun('nope', { to: 3 })]);
    expect(results.slice(0, 30).every((r) => r.status === 'fulfilled')).toBe(true);
    expect(results[30]).toMatchObject({ status: 'rejected', reason: expect.any(NotFoundError) });
    // One group: begun once, undone at the failing write, begun again with a savepoint per write.
    expect(transactions).toBe(2);
    expect(redos()).toBe(1);
    expect((await store.listVms('a')).map((v) => v.spec?.name)).toEqual(names);
    expect(await events()).toEqual(names.map((n) => `vm:${n}`));
  });

  it('undoes what a failing write of a group wrote, and keeps the others', async () => {
    // Three plans (writes asked for first: one group of their own). The bad plan's row is written
    // before its duplicate run fails.
    const [before, bad, after] = await Promise.allSettled([
      store.plans.createPlan({ id: 'p-a', idempotencyKey: 'k-a', request: {} as never, runs: [runOf('a1')] }),
      store.plans.createPlan({ id: 'p-bad', idempotencyKey: 'k-bad', request: {} as never, runs: [runOf('dup'), runOf('dup')] }),
      store.plans.createPlan({ id: 'p-c', idempotencyKey: 'k-c', request: {} as never, runs: [runOf('c1')] }),
    ]);
    // The bad plan shared a group (a write alone is not redone): undone at the failing write and
    // written again with savepoints. (The first plan may have begun a group alone.)
    expect(redos()).toBe(1);
    expect(transactions).toBeLessThanOrEqual(3);
    expect(before.status).toBe('fulfilled');
    expect(after.status).toBe('fulfilled');
    expect(bad).toMatchObject({ status: 'rejected', reason: expect.any(AlreadyExistsError) });
    await expect(store.plans.getPlan('p-bad')).rejects.toBeInstanceOf(NotFoundError);
    await expect(store.plans.getRun('dup')).rejects.toBeInstanceOf(NotFoundError);
    const planEvents = (await store.readUnpublished(10_000)).map((r) => decodeEvent(r.payload)).flatMap((e) => (e.payload?.$case === 'planState' ? [e.payload.value.planId] : []));
    expect(planEvents).toEqual(['p-a', 'p-c']);
    expect((await store.plans.getRun('a1')).planId).toBe('p-a');
    expect((await store.plans.getRun('c1')).planId).toBe('p-c');
    // A later write of the same plan goes through: nothing of the failed one was left behind.
    await store.plans.createPlan({ id: 'p-bad', idempotencyKey: 'k-bad', request: {} as never, runs: [runOf('dup')] });
    expect((await store.plans.planProgress('p-bad')).runs).toBe(1);
  });

  it('a group the transaction refuses (fencing) fails every write in it and writes nothing', async () => {
    refuse = new NotLeaderError('other');
    const results = await Promise.allSettled([store.nodes.upsertVm(vm('x')), store.nodes.upsertVm(vm('y'))]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    expect(results.every((r) => r.status === 'rejected' && r.reason === refuse)).toBe(true);
    refuse = undefined;
    expect(await store.listVms()).toEqual([]);
    expect(await events()).toEqual([]);
  });

  it('a group whose writes all succeed is written once, with no redo', async () => {
    await Promise.all(['s1', 's2', 's3'].map((n) => store.nodes.upsertVm(vm(n))));
    expect(transactions).toBe(1);
    expect(redos()).toBe(0);
    expect((await store.listVms('a')).map((v) => v.spec?.name)).toEqual(['s1', 's2', 's3']);
  });

  it("a run's end takes the buffered samples into its own transaction, and is recorded even when they cannot be written", async () => {
    const plan = await store.plans.createPlan({ id: 'p1', idempotencyKey: 'k1', request: {} as never, runs: [runOf('r1'), runOf('r2')] });
    expect(plan.plan.id).toBe('p1');
    store.appendProgress('r1', { pass: 1 } as never);
    const before = transactions;
    await store.plans.finishRun('r1', { state: 10 });
    // One transaction for the samples and the end (they used to be a flush, then the end).
    expect(transactions - before).toBe(1);
    expect((await store.getRunTimeline('r1')).progress.map((p) => p.pass)).toEqual([1]);
    // The samples' table is gone: their write fails, the end is still recorded, the rows stay buffered.
    await sql`drop table progress_samples`.execute(kysely);
    store.appendProgress('r2', { pass: 7 } as never);
    await store.plans.finishRun('r2', { state: 10 });
    expect((await store.plans.getRun('r2')).finishedAt).toBeDefined();
    expect(store.sampleStats().failedFlushes).toBe(1);
  });

  it('writes asked for while a group is being written go in the next group', async () => {
    const first = store.nodes.upsertVm(vm('a1'));
    await Promise.resolve();
    await Promise.resolve();
    // The first group has started; these two wait for it and then share a transaction.
    const next = [store.nodes.upsertVm(vm('b1')), store.nodes.upsertVm(vm('b2'))];
    await Promise.all([first, ...next]);
    expect(transactions).toBeLessThanOrEqual(2);
    expect((await store.listVms('a')).map((v) => v.spec?.name)).toEqual(['a1', 'b1', 'b2']);
  });

  it('a write asked for first commits in a group of its own, begun at once, before the writes waiting', async () => {
    const order: string[] = [];
    let immediate = false;
    setImmediate(() => (immediate = true));
    const others = ['o1', 'o2', 'o3'].map((n) => store.nodes.upsertVm(vm(n)).then(() => order.push(n)));
    const plan = store.plans.createPlan({ id: 'p1', idempotencyKey: 'k1', request: {} as never, runs: [runOf('r1')] }).then(() => {
      order.push('plan');
      // Committed in this turn of the event loop: the I/O callbacks (and this immediate) not yet run.
      return immediate;
    });
    expect(await plan).toBe(false);
    await Promise.all(others);
    // The plan alone, then the three others together.
    expect(order).toEqual(['plan', 'o1', 'o2', 'o3']);
    expect(transactions).toBe(2);
    expect((await store.listVms('a')).map((v) => v.spec?.name)).toEqual(['o1', 'o2', 'o3']);
    expect((await store.plans.planProgress('p1')).runs).toBe(1);
  });

  it('first writes asked for while a group is waiting for its turn wake it; the others keep waiting for the next turn', async () => {
    const other = store.nodes.upsertVm(vm('o1'));
    const plans = [1, 2].map((i) => store.plans.createPlan({ id: `p${i}`, idempotencyKey: `k${i}`, request: {} as never, runs: [runOf(`r${i}`)] }));
    let immediate = false;
    setImmediate(() => (immediate = true));
    await Promise.all(plans);
    expect(immediate).toBe(false);
    expect(transactions).toBe(1);
    await other;
    expect(transactions).toBe(2);
  });

  it('a group past its time budget commits what it took; the rest follow in order, one group each', async () => {
    await store.close();
    const db = new Kysely<HistoryDatabase>({ dialect: new SqliteDialect({ database: new Database(':memory:') }) });
    await migrateToLatest(db);
    transactions = 0;
    const counting: StoreDialect = {
      ...sqliteStoreDialect,
      beginWrite: async (conn) => {
        transactions++;
        await sqliteStoreDialect.beginWrite(conn);
      },
    };
    // Budget 0: every group is spent after its first write.
    store = createHistoryStore(db, counting, resolveHistoryStoreOptions({ logger: log, writeGroupBudgetMs: 0 }));
    const names = Array.from({ length: 5 }, (_, i) => `vm-${i}`);
    const results = await Promise.allSettled([...names.map((n) => store.nodes.upsertVm(vm(n))), store.plans.transitionRun('nope', { to: 3 })]);
    expect(results.slice(0, 5).every((r) => r.status === 'fulfilled')).toBe(true);
    expect(results[5]).toMatchObject({ status: 'rejected', reason: expect.any(NotFoundError) });
    expect(transactions).toBe(6);
    expect((await store.listVms('a')).map((v) => v.spec?.name)).toEqual(names);
    expect(await events()).toEqual(names.map((n) => `vm:${n}`));
  });
});

describe('groupTakesMore', () => {
  const at = (taken: number, elapsedMs: number, available = 10) => groupTakesMore({ taken, available, elapsedMs, max: 4, budgetMs: 10 });

  it('always takes a first write, even past the budget', () => {
    expect(at(0, 50)).toBe(true);
    expect(at(0, 0, 0)).toBe(false);
  });

  it('stops at the writes that were waiting, at the maximum, and once the budget is spent', () => {
    expect(at(1, 9)).toBe(true);
    expect(at(1, 10)).toBe(false);
    expect(at(3, 0)).toBe(true);
    expect(at(4, 0)).toBe(false);
    expect(at(2, 0, 2)).toBe(false);
  });
});

describe('groupTakesMore after a first write', () => {
  const at = (taken: number, lastFirst: boolean, firstWaiting: number, available = 10) => groupTakesMore({ taken, available, elapsedMs: 0, max: 8, budgetMs: 10, lastFirst, firstWaiting });

  it('commits after a write a client waits for, unless another such write waits', () => {
    expect(at(3, true, 0)).toBe(false);
    expect(at(3, true, 1)).toBe(true);
    expect(at(3, false, 0)).toBe(true);
    expect(at(1, true, 2, 1)).toBe(false);
  });
});

describe('WriteQueue', () => {
  it('hands out the writes asked for first before the others, each kind in the order asked', () => {
    const q = new WriteQueue<string>();
    q.push('a');
    q.push('b');
    q.push('plan-1', true);
    q.push('c');
    q.push('plan-2', true);
    expect(q.length).toBe(5);
    expect(q.take(3)).toEqual(['plan-1', 'plan-2', 'a']);
    expect(q.shift()).toBe('b');
    expect(q.take(10)).toEqual(['c']);
    expect(q.shift()).toBeUndefined();
    expect(q.length).toBe(0);
  });
});

describe('WriteQueue.nextGroup', () => {
  it('gives a group the first writes alone while any wait, else the others, at most max', () => {
    const q = new WriteQueue<string>();
    expect(q.nextGroup(4)).toBe(0);
    for (const x of ['a', 'b', 'c', 'd', 'e']) q.push(x);
    expect(q.nextGroup(4)).toBe(4);
    expect(q.nextGroup(10)).toBe(5);
    q.push('plan-1', true);
    q.push('plan-2', true);
    expect(q.firstWaiting).toBe(2);
    expect(q.nextGroup(4)).toBe(2);
    expect(q.nextGroup(1)).toBe(1);
    expect(q.take(q.nextGroup(4))).toEqual(['plan-1', 'plan-2']);
    expect(q.firstWaiting).toBe(0);
    expect(q.nextGroup(4)).toBe(4);
  });
});
