/**
 * The history store's behaviour, the same on every dialect: history-store.test.ts runs it on
 * SQLite files, history-store-postgres.test.ts on a throw-away Postgres cluster. Each test opens
 * a fresh, empty database through the backend.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  AlreadyExistsError,
} from '../../../services/shared/errors.js';
import { MigrationState as S, PolicyKind, PolicyActionKind, VmState } from '../../../services/shared/gen/migd/v1/common.js';
import { ExportFormat, NodeStatus, PlanState } from '../../../services/shared/gen/migd/v1/coordinator.js';
import type { RepositoryHistoryStore } from '../../../services/coordinator/store/history-store.js';
import type { HistoryStoreOptions } from '../../../services/coordinator/store/options.js';
import type { CreateRunInput } from '../../../services/coordinator/store/types.js';
import { createMetrics } from '../../../services/shared/metrics/metrics.js';
import { FakeClock, outboxEvents } from './fixtures.js';
import { errorInfo } from '../../../services/shared/policy/error-info.js';

const MIN = 60_000;

/** Opens a fresh, empty, migrated store; stores it opened are closed by the suite. */
export interface StoreBackend {
  readonly name: string;
  open(opts: HistoryStoreOptions): Promise<RepositoryHistoryStore>;
  /** Removes what open() made (temp dirs); after each test. */
  cleanup(): Promise<void>;
}

export function runInput(over: Partial<CreateRunInput> = {}): CreateRunInput {
  return {
    vmName: 'vm-a',
    sourceNodeId: 'node-1',
    destinationNodeId: 'node-2',
    policy: { kind: PolicyKind.POLICY_KIND_ADAPTIVE, downtimeLimitMs: 300 } as CreateRunInput['policy'],
    memoryMib: 512,
    ...over,
  };
}

export function historyStoreSuite(backend: StoreBackend): void {
  let store: RepositoryHistoryStore | undefined;
  let clock: FakeClock;

  beforeEach(() => {
    clock = new FakeClock();
  });

  afterEach(async () => {
    await store?.close();
    store = undefined;
    await backend.cleanup();
  });

  async function open(opts: HistoryStoreOptions = {}): Promise<RepositoryHistoryStore> {
    store = await backend.open({ now: clock.now, ...opts });
    return store;
  }

  it('rejects bad options naming the option', async () => {
    await expect(backend.open({ sampleBatchSize: 0 })).rejects.toThrow(/store\.sampleBatchSize/);
  });

  describe('nodes and VMs', () => {
    it('upserts nodes and emits a state event only on a change', async () => {
      const s = await open();
      const host = { nodeId: 'node-1.example', managementAddress: '10.0.0.1:7000', migrationAddress: '198.18.0.1', cpus: 2 };
      await s.upsertNode({ host: host as never });
      await s.upsertNode({ host: host as never }); // heartbeat, same status
      const down = await s.setNodeStatus('node-1.example', NodeStatus.NODE_STATUS_DOWN, 'missed heartbeats');
      expect(down.status).toBe(NodeStatus.NODE_STATUS_DOWN);
      await s.setNodeStatus('node-1.example', NodeStatus.NODE_STATUS_DOWN, 'still down');

      const events = await outboxEvents(s);
      expect(events.map((e) => [e.subject, e.payload?.$case])).toEqual([
        ['migd.v1.node.node-1~2Eexample.state', 'nodeState'],
        ['migd.v1.node.node-1~2Eexample.state', 'nodeState'],
      ]);
      await expect(s.getNode('nope')).rejects.toBeInstanceOf(NotFoundError);
      await expect(s.setNodeStatus('nope', NodeStatus.NODE_STATUS_UP)).rejects.toBeInstanceOf(NotFoundError);

      await s.upsertVm({ spec: { name: 'vm-a', memoryMib: 256 } as never, nodeId: 'node-1.example', state: 2 } as never);
      await s.upsertVm({ spec: { name: 'vm-a', memoryMib: 256 } as never, nodeId: 'node-1.example', state: 2 } as never);
      const node = await s.getNode('node-1.example');
      expect(node.vmCount).toBe(1);
      expect(node.host?.managementAddress).toBe('10.0.0.1:7000');
      expect((await s.listVms('node-1.example')).map((v) => v.spec?.name)).toEqual(['vm-a']);
      expect((await outboxEvents(s)).filter((e) => e.payload?.$case === 'vmChanged')).toHaveLength(1);
      await expect(s.getVm('nope')).rejects.toBeInstanceOf(NotFoundError);
      await expect(s.upsertVm({ nodeId: 'x' } as never)).rejects.toBeInstanceOf(InvalidArgumentError);
    });

    it('upserts a batch of VMs in one transaction: one VmChanged per new or changed VM, in order; a bad one writes nothing', async () => {
      const s = await open();
      const vm = (name: string, nodeId: string, state = 2) => ({ spec: { name, memoryMib: 256 }, nodeId, state }) as never;
      await s.upsertVms([]);
      await s.upsertVms([vm('vm-a', 'node-1'), vm('vm-b', 'node-1'), vm('vm-c', 'node-1')]);
      // vm-a unchanged, vm-b moved, vm-c changed state, vm-d new; vm-d twice: the second write
      // sees the first (one event for it).
      await s.upsertVms([vm('vm-a', 'node-1'), vm('vm-b', 'node-2'), vm('vm-c', 'node-1', 5), vm('vm-d', 'node-2'), vm('vm-d', 'node-2')]);
      const changed = (await outboxEvents(s)).flatMap((e) => (e.payload?.$case === 'vmChanged' ? [`${e.payload.value.vm?.spec?.name}@${e.payload.value.vm?.nodeId}`] : []));
      expect(changed).toEqual(['vm-a@node-1', 'vm-b@node-1', 'vm-c@node-1', 'vm-b@node-2', 'vm-c@node-1', 'vm-d@node-2']);
      expect((await s.listVms()).map((v) => `${v.spec?.name}@${v.nodeId}:${v.state}`)).toEqual(['vm-a@node-1:2', 'vm-c@node-1:5', 'vm-b@node-2:2', 'vm-d@node-2:2']);
      await expect(s.upsertVms([vm('vm-e', 'node-1'), { nodeId: 'node-1' } as never])).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(s.getVm('vm-e')).rejects.toBeInstanceOf(NotFoundError);
      expect(await outboxEvents(s)).toHaveLength(6);
    });
  });

  describe('plans', () => {
    it('creates a plan idempotently by key', async () => {
      const s = await open();
      const input = {
        idempotencyKey: 'key-1',
        request: { idempotencyKey: 'key-1', priority: 5 } as never,
        orderingReason: 'shortest first',
        priority: 5,
        runs: [runInput({ vmName: 'vm-a' }), runInput({ vmName: 'vm-b' })],
      };
      const first = await s.createPlan(input);
      expect(first.existing).toBe(false);
      const second = await s.createPlan({ ...input, runs: [runInput({ vmName: 'vm-c' })] });
      expect(second.existing).toBe(true);
      expect(second.plan.id).toBe(first.plan.id);
      expect(second.plan.request?.priority).toBe(5);

      const runs = await s.listPlanRuns(first.plan.id);
      expect(runs.map((r) => r.vmName)).toEqual(['vm-a', 'vm-b']);
      // What createPlan returns is what a read returns (SubmitPlan does not read them back).
      expect(first.runs).toEqual(runs);
      expect(first.plan).toEqual(await s.getPlan(first.plan.id));
      expect(second.runs).toBeUndefined();
      expect(runs.every((r) => r.planId === first.plan.id)).toBe(true);

      expect((await s.getPlan(first.plan.id)).orderingReason).toBe('shortest first');
      await s.finishRun(runs[0]!.id, { state: S.MIGRATION_STATE_CANCELLED });
      const p = await s.setPlanState(first.plan.id, PlanState.PLAN_STATE_FAILED);
      expect(p.state).toBe(PlanState.PLAN_STATE_FAILED);
      const planEvents = (await outboxEvents(s)).filter((e) => e.payload?.$case === 'planState');
      expect(planEvents.map((e) => (e.payload?.$case === 'planState' ? e.payload.value : null))).toEqual([
        { planId: first.plan.id, state: 'PLAN_STATE_RUNNING', runsTotal: 2, runsFinished: 0 },
        { planId: first.plan.id, state: 'PLAN_STATE_FAILED', runsTotal: 2, runsFinished: 1 },
      ]);
      await expect(s.getPlan('nope')).rejects.toBeInstanceOf(NotFoundError);
      await expect(s.listPlanRuns('nope')).rejects.toBeInstanceOf(NotFoundError);
      await expect(s.createPlan({ ...input, idempotencyKey: '' })).rejects.toBeInstanceOf(InvalidArgumentError);
    });

    it('writes a large plan\'s runs in chunks, in order, and refuses a plan with a duplicate run id whole', async () => {
      const s = await open();
      // More runs than one statement takes (REUSE_CHUNK 64), with an explicit state and reason.
      const inputs = Array.from({ length: 70 }, (_, i) => runInput({ id: `run-${String(i).padStart(3, '0')}`, vmName: `vm-${i}`, ...(i === 69 ? { state: S.MIGRATION_STATE_PREPARING, reason: 'resumed' } : {}) }));
      const { plan, runs: created } = await s.createPlan({ idempotencyKey: 'k-big', request: {} as never, runs: inputs });
      const runs = await s.listPlanRuns(plan.id);
      expect(runs.map((r) => r.id)).toEqual(inputs.map((r) => r.id));
      expect(created).toEqual(runs);
      expect(runs.every((r) => r.planId === plan.id && r.transitions.length === 1)).toBe(true);
      expect(runs[0]!.state).toBe(S.MIGRATION_STATE_QUEUED);
      expect(runs[0]!.startedAt).toBeUndefined();
      expect(runs[69]!.state).toBe(S.MIGRATION_STATE_PREPARING);
      expect(runs[69]!.startedAt?.getTime()).toBe(clock.t);
      expect(runs[69]!.transitions[0]).toMatchObject({ from: S.MIGRATION_STATE_UNSPECIFIED, to: S.MIGRATION_STATE_PREPARING, reason: 'resumed' });
      const events = await outboxEvents(s);
      expect(events.map((e) => (e.payload?.$case === 'runState' ? e.payload.value.runId : e.payload?.$case))).toEqual([...inputs.map((r) => r.id), 'planState']);
      expect(events.every((e) => e.payload?.$case !== 'runState' || e.runSequence === 1)).toBe(true);
      // A run's next event continues its sequence.
      await s.transitionRun('run-000', { to: S.MIGRATION_STATE_PREPARING });
      expect((await outboxEvents(s)).at(-1)?.runSequence).toBe(2);

      const before = (await outboxEvents(s)).length;
      const dup = [...Array.from({ length: 66 }, (_, i) => runInput({ id: `dup-${i}`, vmName: `vm-${i}` })), runInput({ id: 'dup-3', vmName: 'vm-x' })];
      await expect(s.createPlan({ idempotencyKey: 'k-dup', request: {} as never, runs: dup })).rejects.toBeInstanceOf(AlreadyExistsError);
      await expect(s.createPlan({ idempotencyKey: 'k-dup2', request: {} as never, runs: [runInput({ id: 'run-005', vmName: 'vm-5' })] })).rejects.toThrow(/run run-005 already exists/);
      expect(await s.findPlanByKey('k-dup')).toBeUndefined();
      await expect(s.getRun('dup-0')).rejects.toBeInstanceOf(NotFoundError);
      expect((await outboxEvents(s)).length).toBe(before);
    });

    it("counts a plan's runs, finished and succeeded (planProgress)", async () => {
      const s = await open();
      const { plan } = await s.createPlan({ idempotencyKey: 'k-progress', request: {} as never, runs: ['vm-a', 'vm-b', 'vm-c'].map((vmName) => runInput({ vmName })) });
      expect(await s.planProgress(plan.id)).toEqual({ state: PlanState.PLAN_STATE_RUNNING, runs: 3, finished: 0, succeeded: 0 });
      const runs = await s.listPlanRuns(plan.id);
      await s.transitionRun(runs[0]!.id, { to: S.MIGRATION_STATE_PRECOPY });
      await s.finishRun(runs[0]!.id, { state: S.MIGRATION_STATE_SUCCEEDED });
      await s.finishRun(runs[1]!.id, { state: S.MIGRATION_STATE_FAILED });
      expect(await s.planProgress(plan.id)).toEqual({ state: PlanState.PLAN_STATE_RUNNING, runs: 3, finished: 2, succeeded: 1 });
      await s.setPlanState(plan.id, PlanState.PLAN_STATE_FAILED);
      expect((await s.planProgress(plan.id)).state).toBe(PlanState.PLAN_STATE_FAILED);
      const empty = await s.createPlan({ idempotencyKey: 'k-empty', request: {} as never });
      expect(await s.planProgress(empty.plan.id)).toEqual({ state: PlanState.PLAN_STATE_RUNNING, runs: 0, finished: 0, succeeded: 0 });
      await expect(s.planProgress('nope')).rejects.toBeInstanceOf(NotFoundError);
    });
  });

  describe('runs and the outbox', () => {
    it('records a run lifecycle with one event per change, in per-run sequence', async () => {
      const s = await open();
      const run = await s.createRun(runInput());
      expect(run.state).toBe(S.MIGRATION_STATE_QUEUED);
      expect(run.startedAt).toBeUndefined();

      clock.advance(1000);
      await s.transitionRun(run.id, { to: S.MIGRATION_STATE_PREPARING, reason: 'slot free' });
      clock.advance(1000);
      await s.transitionRun(run.id, { to: S.MIGRATION_STATE_PRECOPY, expectedFrom: S.MIGRATION_STATE_PREPARING });
      await s.recordAction(run.id, {
        kind: PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME,
        value: 500,
        reason: 'not converging',
        actor: 'policy:adaptive',
        elapsedMs: 900,
      } as never);
      clock.advance(1000);
      const done = await s.finishRun(run.id, {
        state: S.MIGRATION_STATE_SUCCEEDED,
        stats: { totalTimeMs: 2000, downtimeMs: 25, sourceCpuSeconds: 1.5, destinationCpuSeconds: 0.5 } as never,
        reason: 'verified',
      });

      expect(done.state).toBe(S.MIGRATION_STATE_SUCCEEDED);
      expect(done.startedAt?.getTime()).toBe(clock.t - 2000);
      expect(done.finishedAt?.getTime()).toBe(clock.t);
      expect(done.stats?.downtimeMs).toBe(25);
      expect(done.transitions.map((t) => [t.from, t.to])).toEqual([
        [S.MIGRATION_STATE_UNSPECIFIED, S.MIGRATION_STATE_QUEUED],
        [S.MIGRATION_STATE_QUEUED, S.MIGRATION_STATE_PREPARING],
        [S.MIGRATION_STATE_PREPARING, S.MIGRATION_STATE_PRECOPY],
        [S.MIGRATION_STATE_PRECOPY, S.MIGRATION_STATE_SUCCEEDED],
      ]);
      expect(done.actions).toHaveLength(1);
      expect(done.actions[0]?.value).toBe(500);

      const events = await outboxEvents(s);
      expect(events.map((e) => e.runSequence)).toEqual([1, 2, 3, 4, 5, 6]);
      expect(events.map((e) => e.subject.split('.').pop())).toEqual(['state', 'state', 'state', 'action', 'state', 'completed']);
      expect(new Set(events.map((e) => e.id)).size).toBe(6);
      expect([...events.map((e) => e.id)].sort()).toEqual(events.map((e) => e.id)); // sortable ids
      const completed = events[5]?.payload;
      expect(completed?.$case === 'runCompleted' && completed.value.stats?.totalTimeMs).toBe(2000);
      expect(await s.listActiveRuns()).toEqual([]);
    });

    it('takes the caller\'s last recorded state as a hint: a right one, a wrong one and a finished run', async () => {
      const s = await open();
      const run = await s.createRun(runInput());
      clock.advance(1000);
      // Right: written from it.
      expect(await s.transitionRun(run.id, { to: S.MIGRATION_STATE_PREPARING, from: S.MIGRATION_STATE_QUEUED })).toMatchObject({ from: S.MIGRATION_STATE_QUEUED, to: S.MIGRATION_STATE_PREPARING });
      const startedAt = clock.t;
      clock.advance(1000);
      // Wrong: the change is made from what the run holds, not refused; the start time is kept.
      expect(await s.transitionRun(run.id, { to: S.MIGRATION_STATE_PRECOPY, from: S.MIGRATION_STATE_QUEUED })).toMatchObject({ from: S.MIGRATION_STATE_PREPARING, to: S.MIGRATION_STATE_PRECOPY });
      // expectedFrom decides, whatever the hint.
      const before = (await outboxEvents(s)).length;
      await expect(s.transitionRun(run.id, { to: S.MIGRATION_STATE_SETUP, from: S.MIGRATION_STATE_PRECOPY, expectedFrom: S.MIGRATION_STATE_SETUP })).rejects.toMatchObject({ reason: 'UNEXPECTED_STATE' });
      expect((await outboxEvents(s)).length).toBe(before);
      clock.advance(1000);
      const done = await s.finishRun(run.id, { state: S.MIGRATION_STATE_SUCCEEDED, from: S.MIGRATION_STATE_SETUP });
      expect(done.startedAt?.getTime()).toBe(startedAt);
      expect(done.finishedAt?.getTime()).toBe(clock.t);
      expect(done.transitions.map((t) => [t.from, t.to])).toEqual([
        [S.MIGRATION_STATE_UNSPECIFIED, S.MIGRATION_STATE_QUEUED],
        [S.MIGRATION_STATE_QUEUED, S.MIGRATION_STATE_PREPARING],
        [S.MIGRATION_STATE_PREPARING, S.MIGRATION_STATE_PRECOPY],
        [S.MIGRATION_STATE_PRECOPY, S.MIGRATION_STATE_SUCCEEDED],
      ]);
      const events = (await outboxEvents(s)).filter((e) => e.subject.includes(run.id));
      expect(events.map((e) => e.runSequence)).toEqual([1, 2, 3, 4, 5]);
      const changes = events.flatMap((e) => (e.payload?.$case === 'runState' ? [[e.payload.value.change?.from, e.payload.value.change?.to]] : []));
      expect(changes.at(-1)).toEqual([S.MIGRATION_STATE_PRECOPY, S.MIGRATION_STATE_SUCCEEDED]);

      // A finished run refuses every change, whatever the hint (its own end state included).
      await expect(s.transitionRun(run.id, { to: S.MIGRATION_STATE_PRECOPY, from: S.MIGRATION_STATE_SUCCEEDED })).rejects.toMatchObject({ reason: 'RUN_FINISHED' });
      await expect(s.finishRun(run.id, { state: S.MIGRATION_STATE_FAILED, from: S.MIGRATION_STATE_SUCCEEDED })).rejects.toMatchObject({ reason: 'RUN_FINISHED' });
      await expect(s.transitionRun('nope', { to: S.MIGRATION_STATE_PRECOPY, from: S.MIGRATION_STATE_QUEUED })).rejects.toBeInstanceOf(NotFoundError);
      await expect(s.finishRun('nope', { state: S.MIGRATION_STATE_FAILED, from: S.MIGRATION_STATE_QUEUED })).rejects.toBeInstanceOf(NotFoundError);
      // A right hint at the end: the queued run ends from QUEUED.
      const other = await s.createRun(runInput({ vmName: 'vm-b' }));
      const cancelled = await s.finishRun(other.id, { state: S.MIGRATION_STATE_CANCELLED, from: S.MIGRATION_STATE_QUEUED });
      expect(cancelled.transitions.map((t) => [t.from, t.to]).at(-1)).toEqual([S.MIGRATION_STATE_QUEUED, S.MIGRATION_STATE_CANCELLED]);
      expect(cancelled.startedAt).toBeUndefined();
    });

    it('writes a migration as the supervisor does in few statements on the write connection, counted per write (issue 15 §4)', async () => {
      const s = await open();
      const vmInfo = (nodeId: string) => ({ spec: { name: 'vm-a', memoryMib: 512 }, nodeId, state: VmState.VM_STATE_RUNNING, pid: 1, migrationRunId: '', qemuCpuSeconds: 0, localDisks: [] }) as never;
      await s.upsertVm(vmInfo('node-1'));
      const { runs } = await s.createPlan({ idempotencyKey: 'k', request: {} as never, runs: [runInput()] });
      const id = runs![0]!.id;
      /** Statements the write connection ran for `write` (one write: one group). */
      const cost = async (write: () => Promise<unknown>): Promise<number> => {
        const before = s.writeStats();
        await write();
        const after = s.writeStats();
        expect([after.groups - before.groups, after.writes - before.writes]).toEqual([1, 1]);
        return after.statements - before.statements;
      };
      const counted = {
        preparing: await cost(() => s.transitionRun(id, { to: S.MIGRATION_STATE_PREPARING, from: S.MIGRATION_STATE_QUEUED, reason: 'slot free' })),
        precopy: await cost(() => s.transitionRun(id, { to: S.MIGRATION_STATE_PRECOPY, from: S.MIGRATION_STATE_PREPARING })),
        end: await cost(() =>
          s.finishRun(id, { state: S.MIGRATION_STATE_SUCCEEDED, from: S.MIGRATION_STATE_PRECOPY, stats: { totalTimeMs: 1000, downtimeMs: 20 } as never, costs: { precopyHarmRate: 0.1, precopyMs: 900 } }),
        ),
        vmSettled: await cost(() => s.upsertVm(vmInfo('node-2'))),
      };
      // Postgres: the change, then its event; SQLite: its statements are no round trips.
      const expected = backend.name === 'postgres' ? { preparing: 2, precopy: 2, end: 2, vmSettled: 2 } : { preparing: 3, precopy: 3, end: 5, vmSettled: 2 };
      expect(counted).toEqual(expected);
      // The same rows and events as ever.
      const events = (await outboxEvents(s)).filter((e) => e.subject.includes(id) || e.payload?.$case === 'vmChanged');
      expect(events.map((e) => [e.payload?.$case, e.runSequence])).toEqual([
        ['vmChanged', 0],
        ['runState', 1],
        ['runState', 2],
        ['runState', 3],
        ['runState', 4],
        ['runCompleted', 5],
        ['vmChanged', 0],
      ]);
      expect(events.map((e) => (e.payload?.$case === 'runState' ? [e.payload.value.planId, e.payload.value.vmName, e.payload.value.change?.from, e.payload.value.change?.to] : undefined))).toEqual([
        undefined,
        [runs![0]!.planId, 'vm-a', S.MIGRATION_STATE_UNSPECIFIED, S.MIGRATION_STATE_QUEUED],
        [runs![0]!.planId, 'vm-a', S.MIGRATION_STATE_QUEUED, S.MIGRATION_STATE_PREPARING],
        [runs![0]!.planId, 'vm-a', S.MIGRATION_STATE_PREPARING, S.MIGRATION_STATE_PRECOPY],
        [runs![0]!.planId, 'vm-a', S.MIGRATION_STATE_PRECOPY, S.MIGRATION_STATE_SUCCEEDED],
        undefined,
        undefined,
      ]);
      const completed = events[5]!.payload;
      expect(completed?.$case === 'runCompleted' && [completed.value.planId, completed.value.vmName, completed.value.stats?.downtimeMs]).toEqual([runs![0]!.planId, 'vm-a', 20]);
      const vm = events[6]!.payload;
      expect(vm?.$case === 'vmChanged' && vm.value.vm?.nodeId).toBe('node-2');
      expect((await s.getVm('vm-a')).nodeId).toBe('node-2');
      const run = await s.getRun(id);
      expect(run.transitions.map((t) => t.to)).toEqual([S.MIGRATION_STATE_QUEUED, S.MIGRATION_STATE_PREPARING, S.MIGRATION_STATE_PRECOPY, S.MIGRATION_STATE_SUCCEEDED]);
      expect(await s.vmCostHistory('vm-a', 5)).toMatchObject([{ precopyMs: 900 }]);
    });

    it("a group's writes put their events into the outbox with one statement before the commit, in the order of the writes (issue 15 §4)", async () => {
      const s = await open();
      const { runs } = await s.createPlan({ idempotencyKey: 'k', request: {} as never, runs: ['vm-a', 'vm-b', 'vm-c', 'vm-d'].map((vmName) => runInput({ vmName })) });
      const ids = runs!.map((r) => r.id);
      // One transition alone: its change, then its event (Postgres) — the baseline per write.
      let before = s.writeStats();
      await s.transitionRun(ids[0]!, { to: S.MIGRATION_STATE_PREPARING, from: S.MIGRATION_STATE_QUEUED });
      let after = s.writeStats();
      const alone = after.statements - before.statements;
      // Three asked for together: one group, each write its change, and the three events in one INSERT.
      before = s.writeStats();
      await Promise.all(ids.slice(1).map((id) => s.transitionRun(id, { to: S.MIGRATION_STATE_PREPARING, from: S.MIGRATION_STATE_QUEUED })));
      after = s.writeStats();
      expect([after.groups - before.groups, after.writes - before.writes]).toEqual([1, 3]);
      expect(after.statements - before.statements).toBe(3 * (alone - 1) + 1);
      // The events as if each write had inserted its own: outbox order = the order of the writes.
      const preparing = (await outboxEvents(s)).flatMap((e) => (e.payload?.$case === 'runState' && e.payload.value.change?.to === S.MIGRATION_STATE_PREPARING ? [[e.payload.value.runId, e.runSequence]] : []));
      expect(preparing).toEqual(ids.map((id) => [id, 2]));
    });

    it('refuses bad transitions without writing anything', async () => {
      const s = await open();
      const run = await s.createRun(runInput());
      const before = (await outboxEvents(s)).length;
      await expect(s.transitionRun(run.id, { to: S.MIGRATION_STATE_SUCCEEDED })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(s.transitionRun(run.id, { to: S.MIGRATION_STATE_UNSPECIFIED })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(
        s.transitionRun(run.id, { to: S.MIGRATION_STATE_PRECOPY, expectedFrom: S.MIGRATION_STATE_SETUP }),
      ).rejects.toBeInstanceOf(FailedPreconditionError);
      await expect(s.transitionRun('nope', { to: S.MIGRATION_STATE_PRECOPY })).rejects.toBeInstanceOf(NotFoundError);
      await expect(s.recordAction('nope', { kind: 1 } as never)).rejects.toBeInstanceOf(NotFoundError);
      await expect(s.finishRun(run.id, { state: S.MIGRATION_STATE_PRECOPY })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(s.createRun(runInput({ id: run.id }))).rejects.toBeInstanceOf(AlreadyExistsError);
      await expect(s.createRun(runInput({ planId: 'no-such-plan' }))).rejects.toBeInstanceOf(NotFoundError);
      expect((await outboxEvents(s)).length).toBe(before);
      expect((await s.getRun(run.id)).transitions).toHaveLength(1);

      await s.finishRun(run.id, { state: S.MIGRATION_STATE_CANCELLED, error: errorInfo('CANCELLED', 'USER', 'cancelled') });
      await expect(s.transitionRun(run.id, { to: S.MIGRATION_STATE_PRECOPY })).rejects.toBeInstanceOf(FailedPreconditionError);
      await expect(s.finishRun(run.id, { state: S.MIGRATION_STATE_FAILED })).rejects.toBeInstanceOf(FailedPreconditionError);
      const r = await s.getRun(run.id);
      expect(r.error?.reason).toBe('USER');
      expect(r.startedAt).toBeUndefined();
      await expect(s.getRun('nope')).rejects.toBeInstanceOf(NotFoundError);
    });

    it('keeps the guest harm a run measured and gives a VM\'s succeeded runs\' figures back, newest first', async () => {
      const s = await open();
      const ids: string[] = [];
      for (const [vm, state] of [['vm-c', S.MIGRATION_STATE_SUCCEEDED], ['vm-c', S.MIGRATION_STATE_FAILED], ['vm-c', S.MIGRATION_STATE_SUCCEEDED], ['vm-d', S.MIGRATION_STATE_SUCCEEDED], ['vm-c', S.MIGRATION_STATE_SUCCEEDED]] as const) {
        const run = await s.createRun(runInput({ vmName: vm }));
        clock.advance(1000);
        await s.finishRun(run.id, { state });
        ids.push(run.id);
      }
      await s.recordRunCosts(ids[0]!, { precopyHarmRate: 0.4, precopyMs: 6000 });
      await s.recordRunCosts(ids[1]!, { precopyHarmRate: 9 }); // failed: not a prior
      await s.recordRunCosts(ids[2]!, { precopyHarmRate: 0.3, precopyMs: 5000, postcopyLostMs: 700, postcopyBacklogMs: 550 });
      await s.recordRunCosts(ids[3]!, { precopyHarmRate: 0.9 }); // another VM
      // ids[4]: nothing measured (no guest pace feed): not in the history.
      expect(await s.vmCostHistory('vm-c', 10)).toEqual([
        { precopyHarmRate: 0.3, precopyMs: 5000, postcopyLostMs: 700, postcopyBacklogMs: 550 },
        { precopyHarmRate: 0.4, precopyMs: 6000, postcopyLostMs: undefined, postcopyBacklogMs: undefined },
      ]);
      expect(await s.vmCostHistory('vm-c', 1)).toHaveLength(1);
      expect(await s.vmCostHistory('vm-none', 5)).toEqual([]);
      await expect(s.recordRunCosts('nope', { precopyHarmRate: 0.1 })).rejects.toBeInstanceOf(NotFoundError);
      await expect(s.recordRunCosts('nope', {})).rejects.toBeInstanceOf(NotFoundError);
    });

    it('writes a run\'s measured costs with its end (finishRun costs), as recordRunCosts does', async () => {
      const s = await open();
      const a = await s.createRun(runInput({ vmName: 'vm-f' }));
      await s.transitionRun(a.id, { to: S.MIGRATION_STATE_PRECOPY, from: S.MIGRATION_STATE_QUEUED });
      clock.advance(1000);
      await s.recordAction(a.id, { kind: 1, value: 400, reason: 'slow', actor: 'policy:adaptive', elapsedMs: 900 } as never);
      // Not finite, or half a raise: left out; the hint (from) right.
      const endedA = await s.finishRun(a.id, { state: S.MIGRATION_STATE_SUCCEEDED, from: S.MIGRATION_STATE_PRECOPY, costs: { precopyHarmRate: 0.25, precopyMs: 4000, postcopyLostMs: Number.NaN, workingSetBytes: 1_048_576, raiseLostMs: 10 } });
      const b = await s.createRun(runInput({ vmName: 'vm-f' }));
      clock.advance(1000);
      // The hint wrong (the run is QUEUED): read and finished from what it holds, costs the same way.
      const ended = await s.finishRun(b.id, { state: S.MIGRATION_STATE_SUCCEEDED, from: S.MIGRATION_STATE_PRECOPY, costs: { raiseLostMs: 500, raiseBacklogMs: 200, firstBoundaryBytes: 4096 } });
      expect(ended.transitions.map((t) => [t.from, t.to])).toEqual([[S.MIGRATION_STATE_UNSPECIFIED, S.MIGRATION_STATE_QUEUED], [S.MIGRATION_STATE_QUEUED, S.MIGRATION_STATE_SUCCEEDED]]);
      expect(await s.vmCostHistory('vm-f', 10)).toEqual([
        { precopyHarmRate: undefined, precopyMs: undefined, postcopyLostMs: undefined, postcopyBacklogMs: undefined, workingSetBytes: undefined, raiseLostMs: 500, raiseBacklogMs: 200, firstBoundaryBytes: 4096 },
        { precopyHarmRate: 0.25, precopyMs: 4000, postcopyLostMs: undefined, postcopyBacklogMs: undefined, workingSetBytes: 1_048_576, raiseLostMs: undefined, raiseBacklogMs: undefined, firstBoundaryBytes: undefined },
      ]);
      // The run finishRun returns is the stored one (its transitions, the end's last, and actions).
      expect(endedA.transitions.map((t) => t.to)).toEqual([S.MIGRATION_STATE_QUEUED, S.MIGRATION_STATE_PRECOPY, S.MIGRATION_STATE_SUCCEEDED]);
      expect(endedA.actions).toHaveLength(1);
      expect(endedA).toEqual(await s.getRun(a.id));
      expect(ended).toEqual(await s.getRun(b.id));
    });

    it('keeps the working set a run found (alone or with its harm figures) in the VM\'s history', async () => {
      const s = await open();
      const ids: string[] = [];
      for (let i = 0; i < 3; i++) {
        const run = await s.createRun(runInput({ vmName: 'vm-w' }));
        clock.advance(1000);
        await s.finishRun(run.id, { state: S.MIGRATION_STATE_SUCCEEDED });
        ids.push(run.id);
      }
      await s.recordRunCosts(ids[0]!, { workingSetBytes: 62_390_272 }); // no pace feed: the bound only
      await s.recordRunCosts(ids[1]!, { precopyHarmRate: 0.5, precopyMs: 4000, workingSetBytes: 54_421_504 });
      // ids[2]: nothing (no bound seen, no pace feed)
      const h = await s.vmCostHistory('vm-w', 10);
      expect(h.map((r) => r.workingSetBytes)).toEqual([54_421_504, 62_390_272]);
      expect(h[0]).toMatchObject({ precopyHarmRate: 0.5, precopyMs: 4000 });
      expect(h[1]?.precopyHarmRate).toBeUndefined();
    });

    it('keeps a raise\'s realised loss (alone or with its harm figures) in the VM\'s history; half a raise figure is not stored', async () => {
      const s = await open();
      const ids: string[] = [];
      for (let i = 0; i < 3; i++) {
        const run = await s.createRun(runInput({ vmName: 'vm-r' }));
        clock.advance(1000);
        await s.finishRun(run.id, { state: S.MIGRATION_STATE_SUCCEEDED });
        ids.push(run.id);
      }
      await s.recordRunCosts(ids[0]!, { raiseLostMs: 648, raiseBacklogMs: 300 });
      await s.recordRunCosts(ids[1]!, { precopyHarmRate: 0.4, precopyMs: 5000, raiseLostMs: 533, raiseBacklogMs: 615 });
      await s.recordRunCosts(ids[2]!, { raiseLostMs: 700 }); // without its backlog: nothing to keep
      const h = await s.vmCostHistory('vm-r', 10);
      expect(h.map((r) => [r.raiseLostMs, r.raiseBacklogMs])).toEqual([[533, 615], [648, 300]]);
      expect(h[0]).toMatchObject({ precopyHarmRate: 0.4, precopyMs: 5000 });
    });

    it('keeps the set a post-copy run\'s first boundary found (alone, or with its loss) in the VM\'s history', async () => {
      const s = await open();
      const ids: string[] = [];
      for (let i = 0; i < 3; i++) {
        const run = await s.createRun(runInput({ vmName: 'vm-b' }));
        clock.advance(1000);
        await s.finishRun(run.id, { state: S.MIGRATION_STATE_SUCCEEDED });
        ids.push(run.id);
      }
      await s.recordRunCosts(ids[0]!, { firstBoundaryBytes: 51_101_696 }); // no pace feed: the set only
      await s.recordRunCosts(ids[1]!, { postcopyLostMs: 330, postcopyBacklogMs: 509, firstBoundaryBytes: 46_653_440 });
      // ids[2]: nothing
      const h = await s.vmCostHistory('vm-b', 10);
      expect(h.map((r) => r.firstBoundaryBytes)).toEqual([46_653_440, 51_101_696]);
      expect(h[0]).toMatchObject({ postcopyLostMs: 330, postcopyBacklogMs: 509 });
      expect(h[1]?.workingSetBytes).toBeUndefined();
    });

    it('attaches an externally measured network blackout to a finished run, and refuses a bad one', async () => {
      const s = await open();
      const run = await s.createRun(runInput());
      const blackout = { blackoutMs: 412, probesSent: 900, probesLost: 38, probeIntervalMs: 10, measuredBy: 'testbed prober', gapStartedAt: new Date(clock.t + 5000), gapEndedAt: new Date(clock.t + 5412) };
      await expect(s.recordNetworkBlackout(run.id, blackout)).rejects.toMatchObject({ reason: 'RUN_NOT_FINISHED' });
      await s.finishRun(run.id, { state: S.MIGRATION_STATE_SUCCEEDED, stats: { downtimeMs: 40, announceAfterResumeMs: 3, nicsAnnounced: 1 } as never });
      await expect(s.recordNetworkBlackout('nope', blackout)).rejects.toBeInstanceOf(NotFoundError);
      await expect(s.recordNetworkBlackout(run.id, { ...blackout, probesLost: 901 })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(s.recordNetworkBlackout(run.id, { ...blackout, blackoutMs: 100 })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(s.recordNetworkBlackout(run.id, { ...blackout, gapEndedAt: new Date(clock.t) })).rejects.toBeInstanceOf(InvalidArgumentError);
      expect((await s.getRun(run.id)).networkBlackout).toBeUndefined();
      const r = await s.recordNetworkBlackout(run.id, blackout);
      expect(r.networkBlackout).toEqual(blackout);
      expect(r.stats?.announceAfterResumeMs).toBe(3);
      expect(r.stats?.nicsAnnounced).toBe(1);
      // Replaced by a second measurement; the timeline carries it too.
      await s.recordNetworkBlackout(run.id, { ...blackout, blackoutMs: 300, gapEndedAt: new Date(clock.t + 5300) });
      expect((await s.getRunTimeline(run.id)).run?.networkBlackout?.blackoutMs).toBe(300);
    });

    it("writes a run's buffered samples in its end's transaction, their events before the end's", async () => {
      const s = await open({ progressEventIntervalMs: 0 });
      const run = await s.createRun(runInput());
      await s.transitionRun(run.id, { to: S.MIGRATION_STATE_PRECOPY });
      for (let i = 0; i < 3; i++) s.appendProgress(run.id, { pass: i + 1, transferredBytes: i } as never);
      await s.finishRun(run.id, { state: S.MIGRATION_STATE_SUCCEEDED });
      expect((await s.getRunTimeline(run.id)).progress.map((p) => p.pass)).toEqual([1, 2, 3]);
      const mine = (await outboxEvents(s)).filter((e) => e.subject.startsWith('migd.v1.run.'));
      const kinds = mine.map((e) => e.subject.split('.').pop());
      expect(kinds.slice(-5)).toEqual(['progress', 'progress', 'progress', 'state', 'completed']);
      // The run's sequence numbers follow the order written.
      const seqs = mine.map((e) => Number(e.runSequence));
      expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    });

    it("ends a run whose buffered samples cannot be written: they go back to the buffer, the end is written", async () => {
      const s = await open({ progressEventIntervalMs: 0, sampleFlushIntervalMs: 60_000 });
      const run = await s.createRun(runInput());
      s.appendProgress(run.id, { pass: 1 } as never);
      s.appendProgress(run.id, { pass: Number.NaN } as never); // refused by the NOT NULL integer column
      const done = await s.finishRun(run.id, { state: S.MIGRATION_STATE_SUCCEEDED });
      expect(done.state).toBe(S.MIGRATION_STATE_SUCCEEDED);
      expect(s.sampleStats()).toMatchObject({ written: 0, failedFlushes: 1 });
      expect((await s.getRunTimeline(run.id)).progress).toEqual([]);
      const kinds = (await outboxEvents(s)).map((e) => e.subject.split('.').pop());
      expect(kinds).toEqual(['state', 'state', 'completed']);
      expect((await outboxEvents(s)).map((e) => e.runSequence)).toEqual([1, 2, 3]);
    });

    it('stores every sample but publishes progress at a reduced rate; state changes are never dropped', async () => {
      const s = await open({ progressEventIntervalMs: 1000, guestEventIntervalMs: 1000 });
      const run = await s.createRun(runInput());
      await s.transitionRun(run.id, { to: S.MIGRATION_STATE_PRECOPY });
      for (let i = 0; i < 20; i++) {
        s.appendProgress(run.id, { pass: i, transferredBytes: i * 1000 } as never);
        s.appendGuestSample({ vmName: 'vm-a', msPerGib: 800 + i } as never, run.id);
        s.appendHostCpu(run.id, { sourceCpuSeconds: i, destinationCpuSeconds: i / 2 } as never);
        if (i % 5 === 4) await s.transitionRun(run.id, { to: S.MIGRATION_STATE_PRECOPY, reason: `pass ${i}` });
        clock.advance(250); // 20 samples over 5 s
      }
      await s.flushSamples();
      const tl = await s.getRunTimeline(run.id);
      expect(tl.progress.map((p) => p.pass)).toEqual([...Array(20).keys()]);
      expect(tl.guest).toHaveLength(20);
      expect(tl.hostCpu).toHaveLength(20);

      const events = await outboxEvents(s);
      const kinds = (k: string): number => events.filter((e) => e.subject.endsWith(`.${k}`)).length;
      expect(kinds('progress')).toBe(5); // one per second
      expect(kinds('guest')).toBe(5);
      expect(kinds('state')).toBe(2 + 4);
      expect(events.map((e) => e.runSequence)).toEqual(events.map((_, i) => i + 1));
      expect(() => s.appendProgress('', {} as never)).toThrow(InvalidArgumentError);
      expect(() => s.appendGuestSample({ vmName: '' } as never)).toThrow(InvalidArgumentError);
    });

    it("numbers a sample batch's events per run, in the batch's order, over many runs and uneven counts", async () => {
      const s = await open({ progressEventIntervalMs: 0 });
      const a = await s.createRun(runInput({ vmName: 'a' }));
      const b = await s.createRun(runInput({ vmName: 'b' }));
      const c = await s.createRun(runInput({ vmName: 'c' }));
      // More runs than one multi-row statement takes (REUSE_CHUNK = 64).
      const many: string[] = [];
      for (let i = 0; i < 70; i++) many.push((await s.createRun(runInput({ vmName: `m${i}` }))).id);
      const before = (await outboxEvents(s)).length;
      const order = [a.id, c.id, 'no-such-run', a.id, b.id, ...many, c.id, a.id, c.id];
      for (const [i, runId] of order.entries()) s.appendProgress(runId, { pass: i } as never);
      await s.flushSamples();

      const events = (await outboxEvents(s)).slice(before);
      const runOf = (e: (typeof events)[number]): string => (e.payload?.$case === 'runProgress' ? e.payload.value.runId : '');
      // One event per sample of an existing run, in the order the samples came; the unknown run's
      // sample is stored without an event.
      expect(events.map(runOf)).toEqual(order.filter((id) => id !== 'no-such-run'));
      expect(events.map((e) => (e.payload?.$case === 'runProgress' ? e.payload.value.sample?.pass : -1))).toEqual(
        [...order.keys()].filter((i) => order[i] !== 'no-such-run'),
      );
      const seqs = (id: string): number[] => events.filter((e) => runOf(e) === id).map((e) => e.runSequence);
      expect(seqs(a.id)).toEqual([2, 3, 4]); // 1: its QUEUED event
      expect(seqs(b.id)).toEqual([2]);
      expect(seqs(c.id)).toEqual([2, 3, 4]);
      for (const id of many) expect(seqs(id)).toEqual([2]);
      // The sequence goes on from there.
      await s.transitionRun(a.id, { to: S.MIGRATION_STATE_PRECOPY });
      await s.finishRun(a.id, { state: S.MIGRATION_STATE_SUCCEEDED });
      const ofA = (await outboxEvents(s)).filter((e) => e.subject.startsWith(`migd.v1.run.${a.id}.`));
      expect(ofA.map((e) => e.runSequence)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    });

    it('lists unfinished runs for restart recovery and counts runs by state', async () => {
      const s = await open();
      const low = await s.createRun(runInput({ vmName: 'a', priority: 0 }));
      clock.advance(10);
      const high = await s.createRun(runInput({ vmName: 'b', priority: 9 }));
      clock.advance(10);
      const done = await s.createRun(runInput({ vmName: 'c' }));
      await s.transitionRun(low.id, { to: S.MIGRATION_STATE_PRECOPY });
      await s.finishRun(done.id, { state: S.MIGRATION_STATE_FAILED });
      expect((await s.listActiveRuns()).map((r) => r.id)).toEqual([high.id, low.id]);
      const counts = await s.countRunsByState();
      expect(Object.fromEntries(counts)).toEqual({
        [S.MIGRATION_STATE_QUEUED]: 1,
        [S.MIGRATION_STATE_PRECOPY]: 1,
        [S.MIGRATION_STATE_FAILED]: 1,
      });
    });

    it('feeds the metrics: runs by state at scrape time, duration and downtime on finish', async () => {
      const metrics = createMetrics({
        sources: { runsByState: () => store!.countRunsByState(), outboxLag: () => store!.outboxLag() },
      });
      const s = await open({ metrics });
      const a = await s.createRun(runInput());
      await s.createRun(runInput({ policy: { kind: PolicyKind.POLICY_KIND_NOVA } as never }));
      await s.transitionRun(a.id, { to: S.MIGRATION_STATE_PRECOPY });
      await s.finishRun(a.id, { state: S.MIGRATION_STATE_SUCCEEDED, stats: { totalTimeMs: 1500, downtimeMs: 30 } as never });
      const text = await metrics.registry.metrics();
      expect(text).toMatch(/^migd_runs\{state="queued"\} 1$/m);
      expect(text).toMatch(/^migd_runs\{state="succeeded"\} 1$/m);
      expect(text).toMatch(/^migd_runs\{state="precopy"\} 0$/m);
      expect(text).toMatch(/^migd_migration_duration_seconds_sum\{policy_kind="adaptive",outcome="succeeded"\} 1\.5$/m);
      expect(text).toMatch(/^migd_migration_downtime_seconds_count\{policy_kind="adaptive"\} 1$/m);
      expect(text).toMatch(/^migd_outbox_unpublished_events 5$/m); // 2 created, 1 transition, finished + completed
      expect(text).toMatch(/^migd_outbox_oldest_unpublished_age_seconds \d/m);
    });

    it('refuses calls after close', async () => {
      const s = await open();
      await s.close();
      store = undefined;
      await expect(s.listRuns({})).rejects.toBeInstanceOf(FailedPreconditionError);
      expect(() => s.appendProgress('r', {} as never)).toThrow(FailedPreconditionError);
    });
  });

  describe('queries', () => {
    /** 30 runs over 3 VMs, 3 node pairs, 3 policies, 2 labels; created_at in steps of 1 min with ties. */
    async function seed(s: RepositoryHistoryStore): Promise<string[]> {
      const base = clock.t;
      const kinds = [PolicyKind.POLICY_KIND_ADAPTIVE, PolicyKind.POLICY_KIND_NOVA, PolicyKind.POLICY_KIND_UNSPECIFIED];
      const ids: string[] = [];
      for (let i = 0; i < 30; i++) {
        const r = await s.createRun(
          runInput({
            vmName: `vm-${i % 3}`,
            sourceNodeId: `node-${i % 3}`,
            destinationNodeId: `node-${(i + 1) % 3}`,
            policy: { kind: kinds[i % 3]! } as CreateRunInput['policy'],
            policyLabel: i % 2 === 0 ? 'lab-a' : 'lab-b',
            // Pairs of runs share a created_at to exercise the id tie-break.
            createdAt: new Date(base + Math.floor(i / 2) * MIN),
          }),
        );
        ids.push(r.id);
        if (i % 4 === 0) await s.finishRun(r.id, { state: S.MIGRATION_STATE_SUCCEEDED, at: new Date(base + Math.floor(i / 2) * MIN + 5000) });
      }
      return ids;
    }

    it('filters by VM, node, state, policy kind, label, plan and time range', async () => {
      const s = await open();
      const ids = await seed(s);
      const list = async (filter: object): Promise<string[]> => (await s.listRuns({ filter: filter as never, pageSize: 1000 })).runs.map((r) => r.id);

      expect(await list({ vmName: 'vm-1' })).toHaveLength(10);
      expect(await list({ nodeId: 'node-0' })).toHaveLength(20); // source or destination
      expect(await list({ states: [S.MIGRATION_STATE_SUCCEEDED] })).toHaveLength(8);
      expect(await list({ states: [S.MIGRATION_STATE_SUCCEEDED, S.MIGRATION_STATE_QUEUED] })).toHaveLength(30);
      expect(await list({ policyKinds: [PolicyKind.POLICY_KIND_NOVA] })).toHaveLength(10);
      // UNSPECIFIED is stored and filtered as FIXED.
      expect(await list({ policyKinds: [PolicyKind.POLICY_KIND_FIXED] })).toHaveLength(10);
      expect(await list({ label: 'lab-a' })).toHaveLength(15);
      expect(await list({ runIds: [ids[3], ids[4]] })).toEqual([ids[4], ids[3]]);
      const t0 = clock.t;
      // created_at in [t0+2min, t0+5min): runs 4..9, newest first, ties broken by id (descending).
      expect(await list({ createdAfter: new Date(t0 + 2 * MIN), createdBefore: new Date(t0 + 5 * MIN) })).toEqual(
        [9, 8, 7, 6, 5, 4].map((i) => ids[i]),
      );
      expect(await list({ vmName: 'vm-0', label: 'lab-a', policyKinds: [PolicyKind.POLICY_KIND_ADAPTIVE] })).toHaveLength(5);

      const plan = await s.createPlan({ idempotencyKey: 'k', request: {} as never, runs: [runInput({ vmName: 'vm-p' })] });
      const planRuns = await list({ planId: plan.plan.id });
      expect(planRuns).toHaveLength(1);
    });

    it('paginates newest first with stable keyset tokens', async () => {
      const s = await open();
      await seed(s);
      const all = (await s.listRuns({ pageSize: 1000 })).runs;
      expect(all).toHaveLength(30);
      for (let i = 1; i < all.length; i++) {
        const a = all[i - 1]!;
        const b = all[i]!;
        const order = b.createdAt!.getTime() - a.createdAt!.getTime() || (b.id < a.id ? -1 : 1);
        expect(order).toBeLessThan(0);
      }

      const seen: string[] = [];
      let token = '';
      let pages = 0;
      do {
        const page = await s.listRuns({ pageSize: 7, pageToken: token });
        seen.push(...page.runs.map((r) => r.id));
        token = page.nextPageToken;
        pages++;
        // A run created meanwhile (newer than everything) must not disturb later pages.
        if (pages === 2) {
          clock.advance(365 * 24 * 3600_000);
          await s.createRun(runInput({ vmName: 'late' }));
        }
      } while (token !== '');
      expect(pages).toBe(5);
      expect(seen).toEqual(all.map((r) => r.id));

      // Filtered pagination.
      const filtered: string[] = [];
      token = '';
      do {
        const page = await s.listRuns({ filter: { label: 'lab-b' } as never, pageSize: 4, pageToken: token });
        filtered.push(...page.runs.map((r) => r.id));
        token = page.nextPageToken;
      } while (token !== '');
      const reference = (await s.listRuns({ filter: { label: 'lab-b' } as never, pageSize: 1000 })).runs.map((r) => r.id);
      expect(filtered).toEqual(reference);
      expect(filtered).toHaveLength(15);
    });

    it('rejects bad page tokens, tokens of another filter and inverted ranges', async () => {
      const s = await open();
      await seed(s);
      await expect(s.listRuns({ pageToken: 'garbage!' })).rejects.toThrow(/page_token is invalid/);
      await expect(s.listRuns({ pageToken: Buffer.from('{"v":1}').toString('base64url') })).rejects.toBeInstanceOf(InvalidArgumentError);
      const page = await s.listRuns({ pageSize: 5, filter: { label: 'lab-a' } as never });
      await expect(s.listRuns({ pageSize: 5, pageToken: page.nextPageToken, filter: { label: 'lab-b' } as never })).rejects.toThrow(
        /different filter/,
      );
      const inverted = { createdAfter: new Date(clock.t + MIN), createdBefore: new Date(clock.t) };
      await expect(s.listRuns({ filter: inverted as never })).rejects.toThrow(/inverted/);
      await expect(s.comparePolicies(inverted as never)).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(s.exportRuns(inverted as never, ExportFormat.EXPORT_FORMAT_CSV)).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(s.getRunTimeline('nope')).rejects.toBeInstanceOf(NotFoundError);
    });

    it("gives a starting run the guest samples of its VM from the window before it up to now, oldest first", async () => {
      const s = await open({ guestWindowMs: 60_000 });
      const t0 = clock.t;
      // Stored out of time order, with another VM's beside them and two at the same time.
      for (const dt of [-10_000, -90_000, -50_000, -30_000, 0, -30_000]) s.appendGuestSample({ vmName: 'vm-a', msPerGib: 1000 - dt / 1000, time: new Date(t0 + dt) } as never);
      s.appendGuestSample({ vmName: 'other-vm', msPerGib: 5, time: new Date(t0 - 10_000) } as never);
      const run = await s.createRun(runInput({ createdAt: new Date(t0 - 20_000), state: S.MIGRATION_STATE_QUEUED }));
      await s.flushSamples();
      // Not started: from created − 60 s (−80 s) up to now (0 included); later samples are not there yet.
      const before = await s.guestSamplesBeforeRun(run.id);
      expect(before.map((g) => [g.time!.getTime() - t0, g.msPerGib])).toEqual([
        [-50_000, 1050],
        [-30_000, 1030],
        [-30_000, 1030],
        [-10_000, 1010],
        [0, 1000],
      ]);
      // Started later: the window moves to the start.
      clock.advance(30_000);
      await s.transitionRun(run.id, { to: S.MIGRATION_STATE_PRECOPY, at: new Date(clock.t) });
      expect((await s.guestSamplesBeforeRun(run.id)).map((g) => g.time!.getTime() - t0)).toEqual([-30_000, -30_000, -10_000, 0]);
      expect(await s.guestSamplesBeforeRun('nope')).toEqual([]);
    });

    it('returns a full timeline with guest samples before, during and after', async () => {
      const s = await open({ guestWindowMs: 60_000 });
      const t0 = clock.t;
      // Guest samples of the VM, every 10 s from -120 s to +120 s around the run.
      for (let dt = -120_000; dt <= 120_000; dt += 10_000) s.appendGuestSample({ vmName: 'vm-a', msPerGib: 1000, time: new Date(t0 + dt) } as never);
      s.appendGuestSample({ vmName: 'other-vm', msPerGib: 5, time: new Date(t0) } as never);
      const run = await s.createRun(runInput({ createdAt: new Date(t0) }));
      await s.transitionRun(run.id, { to: S.MIGRATION_STATE_PRECOPY, at: new Date(t0) });
      for (let i = 0; i < 5; i++) {
        s.appendProgress(run.id, { time: new Date(t0 + i * 1000), pass: i } as never);
        s.appendHostCpu(run.id, { time: new Date(t0 + i * 1000), sourceCpuSeconds: i, destinationCpuSeconds: 0 } as never);
      }
      await s.recordAction(run.id, { kind: PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY, time: new Date(t0 + 2000) } as never);
      await s.finishRun(run.id, { state: S.MIGRATION_STATE_SUCCEEDED, at: new Date(t0 + 30_000) });

      const tl = await s.getRunTimeline(run.id);
      expect(tl.run?.id).toBe(run.id);
      expect(tl.run?.actions).toHaveLength(1);
      expect(tl.progress.map((p) => p.pass)).toEqual([0, 1, 2, 3, 4]);
      expect(tl.hostCpu.map((h) => h.sourceCpuSeconds)).toEqual([0, 1, 2, 3, 4]);
      const times = tl.guest.map((g) => g.time!.getTime() - t0);
      expect(times[0]).toBe(-60_000);
      expect(times[times.length - 1]).toBe(90_000);
      expect(tl.guest.every((g) => g.vmName === 'vm-a')).toBe(true);
      expect([...times].sort((a, b) => a - b)).toEqual(times);
    });

    it('summarises policies: completion, p50/p99, guest before vs during, CPU, integrity', async () => {
      const s = await open({ guestWindowMs: 60_000 });
      const t0 = clock.t;
      // Policy ADAPTIVE/"x": 4 runs, 3 succeed with downtimes 10, 20, 30 and total 1000, 2000, 3000.
      const adaptive = [10, 20, 30, null];
      for (const [i, dt] of adaptive.entries()) {
        const start = t0 + i * 10 * MIN;
        const vm = `vm-ad-${i}`;
        // Before: 1000 ms/GiB; during: 2000 ms/GiB; heartbeat-only samples (0) ignored.
        s.appendGuestSample({ vmName: vm, msPerGib: 1000, time: new Date(start - 30_000) } as never);
        s.appendGuestSample({ vmName: vm, msPerGib: 0, time: new Date(start - 20_000) } as never);
        s.appendGuestSample({ vmName: vm, msPerGib: 9999, time: new Date(start - 5 * MIN) } as never); // outside window
        s.appendGuestSample({ vmName: vm, msPerGib: 2000, time: new Date(start + 1000) } as never);
        const r = await s.createRun(runInput({ vmName: vm, policyLabel: 'x', createdAt: new Date(start) }));
        await s.transitionRun(r.id, { to: S.MIGRATION_STATE_PRECOPY, at: new Date(start) });
        s.appendHostCpu(r.id, { time: new Date(start + 500), sourceCpuSeconds: 1, destinationCpuSeconds: 1 } as never);
        if (dt === null) {
          await s.finishRun(r.id, { state: S.MIGRATION_STATE_FAILED, at: new Date(start + 5000) });
        } else {
          await s.finishRun(r.id, {
            state: S.MIGRATION_STATE_SUCCEEDED,
            at: new Date(start + 5000),
            stats: { totalTimeMs: (i + 1) * 1000, downtimeMs: dt, sourceCpuSeconds: 3, destinationCpuSeconds: 1, integrityErrors: i === 1 ? 2 : 0 } as never,
          });
        }
      }
      // Policy NOVA: 1 run, succeeded; one unfinished NOVA run that must not count.
      const n = await s.createRun(runInput({ vmName: 'vm-n', policy: { kind: PolicyKind.POLICY_KIND_NOVA } as never }));
      await s.transitionRun(n.id, { to: S.MIGRATION_STATE_PRECOPY });
      await s.finishRun(n.id, { state: S.MIGRATION_STATE_SUCCEEDED, stats: { totalTimeMs: 500, downtimeMs: 7 } as never });
      await s.createRun(runInput({ vmName: 'vm-n2', policy: { kind: PolicyKind.POLICY_KIND_NOVA } as never }));

      const { summaries } = await s.comparePolicies({});
      expect(summaries).toHaveLength(2);
      const [ad, nova] = summaries;
      expect(ad).toMatchObject({ kind: PolicyKind.POLICY_KIND_ADAPTIVE, label: 'x', runs: 4, succeeded: 3, completionRate: 0.75 });
      expect(ad!.totalTimeMsP50).toBe(2000);
      expect(ad!.downtimeMsP50).toBe(20);
      expect(ad!.downtimeMsP99).toBeCloseTo(29.8, 6); // linear interpolation between 20 and 30
      expect(ad!.guestMsPerGibBefore).toBe(1000);
      expect(ad!.guestMsPerGibDuring).toBe(2000);
      // 3 runs with stats (3 + 1 s) and the failed one from its host CPU sample (1 + 1 s).
      expect(ad!.hostCpuSeconds).toBeCloseTo((4 + 4 + 4 + 2) / 4, 9);
      expect(ad!.integrityErrors).toBe(2);
      expect(nova).toMatchObject({ kind: PolicyKind.POLICY_KIND_NOVA, label: '', runs: 1, succeeded: 1, completionRate: 1, downtimeMsP50: 7 });

      const onlyNova = await s.comparePolicies({ policyKinds: [PolicyKind.POLICY_KIND_NOVA] } as never);
      expect(onlyNova.summaries.map((x) => x.kind)).toEqual([PolicyKind.POLICY_KIND_NOVA]);
    });

    it("keeps a sample's dirty set (issue 14): written, read back in the timeline; absent reads 0", async () => {
      const s = await open();
      const run = await s.createRun(runInput({ vmName: 'vm-set' }));
      const big = 3 * 2 ** 30 + 4096; // beyond 31 bits
      s.appendProgress(run.id, { pass: 1, qemuStatus: 'active', dirtySetBytes: 45 * 2 ** 20, dirtySetWindowMs: 100 } as never);
      s.appendProgress(run.id, { pass: 2, qemuStatus: 'active', dirtySetBytes: big, dirtySetWindowMs: 100 } as never);
      s.appendProgress(run.id, { pass: 3, qemuStatus: 'active' } as never);
      await s.finishRun(run.id, { state: S.MIGRATION_STATE_SUCCEEDED });
      const tl = await s.getRunTimeline(run.id);
      expect(tl.progress.map((p) => [p.dirtySetBytes, p.dirtySetWindowMs])).toEqual([
        [45 * 2 ** 20, 100],
        [big, 100],
        [0, 0],
      ]);
    });

    it("keeps a sample's storage-copy figures (issue 13): written, read back in the timeline, exported; absent stays absent", async () => {
      const s = await open();
      const run = await s.createRun(runInput({ vmName: 'vm-disk' }));
      const big = 5 * 2 ** 30 + 123; // beyond 32 bits
      s.appendProgress(run.id, { pass: 0, qemuStatus: 'storage-copy', diskTransferredBytes: 0, diskTotalBytes: big, diskRateBytesPerSec: 0, storagePhase: true } as never);
      s.appendProgress(run.id, { pass: 1, qemuStatus: 'active', diskTransferredBytes: big, diskTotalBytes: big, diskRateBytesPerSec: 88 * 2 ** 20, storagePhase: false } as never);
      s.appendProgress(run.id, { pass: 2, qemuStatus: 'active' } as never);
      await s.finishRun(run.id, { state: S.MIGRATION_STATE_SUCCEEDED });
      const tl = await s.getRunTimeline(run.id);
      expect(tl.progress.map((p) => [p.diskTransferredBytes, p.diskTotalBytes, p.diskRateBytesPerSec, p.storagePhase])).toEqual([
        [0, big, 0, true],
        [big, big, 88 * 2 ** 20, false],
        [undefined, undefined, undefined, undefined],
      ]);
      const csv = parseCsv(Buffer.from((await s.exportRuns({ runIds: [run.id] } as never, ExportFormat.EXPORT_FORMAT_CSV)).data).toString('utf8'));
      const col = (name: string): number => csv[0]!.indexOf(name);
      expect(csv.slice(1).map((r) => [r[col('disk_transferred_bytes')], r[col('disk_total_bytes')], r[col('disk_rate_bytes_per_sec')], r[col('storage_phase')]])).toEqual([
        ['0', String(big), '0', '1'],
        [String(big), String(big), String(88 * 2 ** 20), '0'],
        ['', '', '', ''],
      ]);
    });

    it('exports runs as JSON and as CSV with proper quoting', async () => {
      const s = await open();
      const label = 'lab, "quoted"\nline';
      const r1 = await s.createRun(runInput({ vmName: 'vm-1', policyLabel: label }));
      for (let i = 0; i < 3; i++) s.appendProgress(r1.id, { pass: i + 1, qemuStatus: 'active', remainingBytes: 100 - i } as never);
      await s.finishRun(r1.id, { state: S.MIGRATION_STATE_FAILED, error: errorInfo('INTERNAL', 'X', 'boom, "bad"') });
      clock.advance(1000);
      const r2 = await s.createRun(runInput({ vmName: 'vm-2' })); // no samples: one row

      const json = await s.exportRuns({}, ExportFormat.EXPORT_FORMAT_JSON);
      expect(json.contentType).toBe('application/json');
      const doc = JSON.parse(Buffer.from(json.data).toString('utf8')) as Array<{ run: { id: string }; progress?: unknown[]; policyLabel: string }>;
      expect(doc.map((d) => d.run.id)).toEqual([r1.id, r2.id]);
      expect(doc[0]?.progress).toHaveLength(3);
      expect(doc[0]?.policyLabel).toBe(label);

      const csv = await s.exportRuns({ runIds: [r1.id, r2.id] } as never, ExportFormat.EXPORT_FORMAT_CSV);
      expect(csv.contentType).toBe('text/csv');
      const text = Buffer.from(csv.data).toString('utf8');
      const records = parseCsv(text);
      const header = records[0]!;
      expect(header.slice(0, 3)).toEqual(['run_id', 'plan_id', 'vm_name']);
      expect(records).toHaveLength(1 + 3 + 1);
      const col = (name: string): number => header.indexOf(name);
      expect(records.slice(1).every((r) => r.length === header.length)).toBe(true);
      expect(records[1]![col('policy_label')]).toBe(label);
      expect(records[1]![col('error_message')]).toBe('boom, "bad"');
      expect(records.slice(1, 4).map((r) => r[col('pass')])).toEqual(['1', '2', '3']);
      expect(records[4]![col('run_id')]).toBe(r2.id);
      expect(records[4]![col('pass')]).toBe('');
      expect(text).toContain('"lab, ""quoted""\nline"');
      expect(text.endsWith('\r\n')).toBe(true);

      // A page never holds more than the store's limit, whatever the caller asks; the pages
      // together hold every run once, oldest first, and CSV pages after the first have no header.
      const limited = await backend.open({ maxExportRuns: 2, now: clock.now });
      try {
        const made = [];
        for (let i = 0; i < 5; i++) {
          made.push((await limited.createRun(runInput())).id);
          clock.advance(1000);
        }
        const seen: string[] = [];
        let pages = 0;
        for (let token = ''; ; pages++) {
          const page = await limited.exportRuns({}, ExportFormat.EXPORT_FORMAT_JSON, { pageSize: 1000, pageToken: token });
          const docs = JSON.parse(Buffer.from(page.data).toString('utf8')) as { run: { id: string } }[];
          expect(docs.length).toBeLessThanOrEqual(2);
          seen.push(...docs.map((d) => d.run.id));
          token = page.nextPageToken;
          if (!token) break;
        }
        expect(seen).toEqual(made);
        expect(pages).toBe(2);
        const first = await limited.exportRuns({}, ExportFormat.EXPORT_FORMAT_CSV, { pageSize: 1 });
        const second = await limited.exportRuns({}, ExportFormat.EXPORT_FORMAT_CSV, { pageSize: 1, pageToken: first.nextPageToken });
        expect(Buffer.from(first.data).toString().startsWith('run_id,')).toBe(true);
        expect(Buffer.from(second.data).toString()).toContain(made[1]!);
        expect(Buffer.from(second.data).toString()).not.toContain('run_id,');
        // A token is bound to its filter.
        await expect(limited.exportRuns({ vmName: 'other' }, ExportFormat.EXPORT_FORMAT_JSON, { pageToken: first.nextPageToken })).rejects.toMatchObject({ reason: 'BAD_PAGE_TOKEN' });
      } finally {
        await limited.close();
      }
    });
  });


  describe('retention', () => {
    it('prunes samples of runs finished before the retention cutoff, keeps the rest', async () => {
      const DAY = 24 * 3600_000;
      const s = await open({ sampleRetentionMs: 7 * DAY, outboxRetentionMs: DAY });
      const t0 = clock.t;
      const old = await s.createRun(runInput({ vmName: 'old', createdAt: new Date(t0) }));
      const active = await s.createRun(runInput({ vmName: 'active', createdAt: new Date(t0) }));
      for (let i = 0; i < 10; i++) {
        s.appendProgress(old.id, { time: new Date(t0 + i), pass: i } as never);
        s.appendHostCpu(old.id, { time: new Date(t0 + i) } as never);
        s.appendGuestSample({ vmName: 'old', time: new Date(t0 + i) } as never, old.id);
        s.appendProgress(active.id, { time: new Date(t0 + i), pass: i } as never);
        s.appendGuestSample({ vmName: 'active', time: new Date(t0 + i) } as never, active.id);
        s.appendGuestSample({ vmName: 'idle-vm', time: new Date(t0 + i) } as never);
      }
      await s.finishRun(old.id, { state: S.MIGRATION_STATE_SUCCEEDED, at: new Date(t0 + 1000) });
      clock.advance(8 * DAY);
      s.appendGuestSample({ vmName: 'idle-vm', time: new Date(clock.t) } as never);
      await s.flushSamples();

      const res = await s.pruneSamples(new Date(clock.t));
      expect(res).toEqual({ progress: 10, hostCpu: 10, guest: 20 });
      expect((await s.getRunTimeline(old.id)).progress).toHaveLength(0);
      expect((await s.getRunTimeline(old.id)).run?.transitions).toHaveLength(2); // the run itself stays
      expect((await s.getRunTimeline(active.id)).progress).toHaveLength(10);
      expect(await s.pruneSamples(new Date(clock.t))).toEqual({ progress: 0, hostCpu: 0, guest: 0 });

      // Outbox: only published rows past their retention go.
      const rows = await s.readUnpublished(1000);
      await s.markPublished(rows.slice(0, 2).map((r) => r.seq), new Date(t0));
      expect(await s.pruneOutbox(new Date(clock.t))).toBe(2);
      expect((await s.outboxLag()).unpublished).toBe(rows.length - 2);
    });
  });

  /** A strict RFC 4180 parser for the assertions (quoted fields, doubled quotes, CRLF records). */
  function parseCsv(text: string): string[][] {
    const records: string[][] = [];
    let field = '';
    let record: string[] = [];
    let i = 0;
    let quoted = false;
    while (i < text.length) {
      const c = text[i]!;
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') {
          field += '"';
          i += 2;
        } else if (c === '"') {
          quoted = false;
          i++;
        } else {
          field += c;
          i++;
        }
      } else if (c === '"') {
        quoted = true;
        i++;
      } else if (c === ',') {
        record.push(field);
        field = '';
        i++;
      } else if (c === '\r' && text[i + 1] === '\n') {
        record.push(field);
        records.push(record);
        record = [];
        field = '';
        i += 2;
      } else {
        field += c;
        i++;
      }
    }
    return records;
  }
}
