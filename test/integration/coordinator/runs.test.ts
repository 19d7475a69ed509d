/**
 * The run manager, run supervisor and event bus against a real history store (SQLite file in a
 * temp dir), with scripted node daemons at the gRPC seam: fast checks of what the QEMU tests can
 * only show once — policy decisions become node calls, actions are recorded exactly once, queued
 * runs are cancelled without a node call, slots follow the limits, restart recovery asks the node
 * first and never starts twice, Watch replays then follows.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { EventBus, eventsFromRun } from '../../../services/coordinator/event-bus.js';
import { Planner } from '../../../services/coordinator/planner.js';
import { NodeRegistry } from '../../../services/coordinator/registry.js';
import { RunManager } from '../../../services/coordinator/runs/manager.js';
import { openSqliteHistoryStore, type SqliteHistoryStore } from '../../../services/coordinator/store/sqlite.js';
import type { ActiveMove } from '../../../services/coordinator/store/types.js';
import { MigrationPolicy, MigrationState as S, PolicyActionKind, PolicyKind, VmSpec, VmState, type HostInfo } from '../../../services/shared/gen/migd/v1/common.js';
import { PlanState, type Run } from '../../../services/shared/gen/migd/v1/coordinator.js';
import type { Event } from '../../../services/shared/gen/migd/v1/events.js';
import { createLogger } from '../../../services/shared/log.js';
import { type FakeMigration, FakeNode } from '../../helpers/coordinator-fakes.js';
import { FailedPreconditionError, UnavailableError } from '../../../services/shared/errors.js';
import { removeDir, tempDir } from '../store/fixtures.js';
import { until } from '../../helpers/until.js';

const quiet = createLogger('test', {}, () => undefined, 'error');
const MiB = 1024 * 1024;

function host(id: string): HostInfo {
  return { nodeId: id, managementAddress: `127.0.0.1:${7000 + id.charCodeAt(0)}`, migrationAddress: '127.0.0.1', memoryTotalBytes: 8 * 2 ** 30, memoryFreeBytes: 8 * 2 ** 30, cpus: 2, qemuVersion: '10.0.2', resolvedAccel: 3, migrationCapabilities: ['postcopy-ram', 'auto-converge', 'return-path', 'postcopy-preempt'], labels: {}, machineTypes: [], networks: [] };
}

let dir: string;
let store: SqliteHistoryStore;
let registry: NodeRegistry;
let runs: RunManager | undefined;
let nodes: Record<string, FakeNode>;
let plans = 0;

beforeEach(async () => {
  dir = await tempDir('migd-runs-');
  store = await openSqliteHistoryStore({ filename: `${dir}/history.sqlite`, logger: quiet, sampleFlushIntervalMs: 10 });
  nodes = { a: new FakeNode('a'), b: new FakeNode('b'), c: new FakeNode('c') };
  registry = new NodeRegistry({ store, log: quiet, heartbeatMs: 60_000, misses: 3, security: { insecure: true }, callDeadlineMs: 1000, connect: (h) => nodes[h.nodeId]!.client() });
  await registry.start();
  for (const id of ['a', 'b', 'c']) await registry.register(host(id));
});

afterEach(async () => {
  vi.restoreAllMocks();
  await runs?.close();
  runs = undefined;
  registry.stop();
  await store.close();
  await removeDir(dir);
});

/** What a real source does with a cancel: the abort action, CANCELLING, then the result. */
function carryOutCancel(mig: FakeMigration, req: { actor: string; reason: string }): void {
  mig.action(PolicyActionKind.POLICY_ACTION_KIND_ABORT, 0, req.actor, req.reason);
  mig.state(S.MIGRATION_STATE_CANCELLING);
  setTimeout(() => mig.finish(S.MIGRATION_STATE_CANCELLED, 'cancelled; the guest keeps running on the source'), 20);
}

function manager(extra: { nodeDownWaitMs?: number; heldPerLink?: number; holdMs?: number } = {}): RunManager {
  runs = new RunManager({ store, registry, log: quiet, limits: { perSource: 2, perDestination: 2, perLink: 1, perCluster: 5 }, callDeadlineMs: 1000, tickMs: 20, ...extra });
  return runs;
}

/** A plan of one run per VM name (`vm` a→b, or `vm:src:dst`), stored (not queued). */
async function plan(vms: string[], policy: Partial<MigrationPolicy> = {}): Promise<{ planId: string; runs: Run[] }> {
  const id = `plan-${++plans}`;
  await store.createPlan({
    id,
    idempotencyKey: id,
    request: {} as never,
    runs: vms.map((spec, i) => {
      const [vm, src = 'a', dst = 'b'] = spec.split(':') as [string, string?, string?];
      return { id: `${id}-run-${i}`, vmName: vm, sourceNodeId: src, destinationNodeId: dst, policy: MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_FIXED, ...policy }), memoryMib: 192 };
    }),
  });
  return { planId: id, runs: await store.listPlanRuns(id) };
}

const run = async (id: string): Promise<Run> => store.getRun(id);

describe('run supervisor and manager', () => {
  it('turns a policy decision into a node call and records the action once', async () => {
    const m = manager();
    const { planId, runs: [r] } = await plan(['vm1'], { progressTimeoutSec: 1 });
    // The node carries out a cancel like the real one: action, CANCELLING, then the result.
    nodes['a']!.onRequest = (method, mig, req) => {
      if (method !== 'cancelMigration') return;
      carryOutCancel(mig, req);
    };
    m.enqueue([{ run: r!, order: 0 }]);
    await until(() => nodes['a']!.migrations.has(r!.id), 'StartMigration');
    const mig = nodes['a']!.migrations.get(r!.id)!;
    expect(nodes['a']!.calls[0]!.request).toMatchObject({ runId: r!.id, vmName: 'vm1', destination: { nodeId: 'b', managementAddress: host('b').managementAddress } });
    mig.state(S.MIGRATION_STATE_SETUP);
    mig.state(S.MIGRATION_STATE_PRECOPY);
    mig.progress({ elapsedMs: 100, pass: 1, remainingBytes: 100 * MiB, sourceCpuSeconds: 0.5, destinationCpuSeconds: 0.1 });
    // No more samples: the policy clock must still reach the 1 s progress timeout.
    await until(async () => (await run(r!.id)).finishedAt !== undefined, 'the run to end');
    const done = await run(r!.id);
    expect(done.state).toBe(S.MIGRATION_STATE_CANCELLED);
    expect(done.transitions.map((t) => t.to)).toEqual([S.MIGRATION_STATE_QUEUED, S.MIGRATION_STATE_PREPARING, S.MIGRATION_STATE_SETUP, S.MIGRATION_STATE_PRECOPY, S.MIGRATION_STATE_CANCELLING, S.MIGRATION_STATE_CANCELLED]);
    expect(done.actions).toHaveLength(1);
    expect(done.actions[0]).toMatchObject({ kind: PolicyActionKind.POLICY_ACTION_KIND_ABORT, actor: 'policy:fixed' });
    expect(done.actions[0]!.reason).toMatch(/progress timeout/);
    const cancel = nodes['a']!.calls.find((c) => c.method === 'cancelMigration')!;
    expect(cancel.request).toMatchObject({ actor: 'policy:fixed' });
    const tl = await store.getRunTimeline(r!.id);
    expect(tl.progress).toHaveLength(1);
    expect(tl.hostCpu[0]).toMatchObject({ sourceCpuSeconds: 0.5, destinationCpuSeconds: 0.1 });
    await until(async () => (await store.getPlan(planId)).state === PlanState.PLAN_STATE_FAILED, 'the plan state');
    expect(m.queue.snapshot().running).toBe(0);
  });

  it("sends a policy's abort again while the source node does not answer it, until it is carried out, and records it once", async () => {
    const m = manager();
    const { runs: [r] } = await plan(['vm1'], { progressTimeoutSec: 1 });
    // The first two cancels do not reach the node (its daemon restarting, its management link cut).
    let cancels = 0;
    nodes['a']!.onRequest = (method, mig, req) => {
      if (method !== 'cancelMigration') return;
      if (++cancels <= 2) throw new UnavailableError('source node a is not answering');
      carryOutCancel(mig, req);
    };
    m.enqueue([{ run: r!, order: 0 }]);
    await until(() => nodes['a']!.migrations.has(r!.id), 'StartMigration');
    const mig = nodes['a']!.migrations.get(r!.id)!;
    mig.state(S.MIGRATION_STATE_SETUP);
    mig.state(S.MIGRATION_STATE_PRECOPY);
    mig.progress({ elapsedMs: 100, pass: 1, remainingBytes: 100 * MiB });
    // Before, the policy fell silent after its first abort failed: the run stayed PRECOPY for good.
    await until(async () => (await run(r!.id)).finishedAt !== undefined, 'the run to end', 10_000);
    const done = await run(r!.id);
    expect(done.state).toBe(S.MIGRATION_STATE_CANCELLED);
    expect(cancels).toBe(3);
    expect(done.actions).toHaveLength(1);
    expect(done.actions[0]).toMatchObject({ kind: PolicyActionKind.POLICY_ACTION_KIND_ABORT, actor: 'policy:fixed' });
    expect(done.actions[0]!.reason).toMatch(/progress timeout/);
  });

  it('does not send an abort again that the source node refused (post-copy began there: the node ends the run)', async () => {
    const m = manager();
    const { runs: [r] } = await plan(['vm1'], { progressTimeoutSec: 1 });
    let cancels = 0;
    nodes['a']!.onRequest = (method) => {
      if (method !== 'cancelMigration') return;
      cancels++;
      throw new FailedPreconditionError('cannot cancel a migration in post-copy: the guest already runs on the destination', { reason: 'POSTCOPY_NOT_CANCELLABLE' });
    };
    m.enqueue([{ run: r!, order: 0 }]);
    await until(() => nodes['a']!.migrations.has(r!.id), 'StartMigration');
    const mig = nodes['a']!.migrations.get(r!.id)!;
    mig.state(S.MIGRATION_STATE_SETUP);
    mig.state(S.MIGRATION_STATE_PRECOPY);
    mig.progress({ elapsedMs: 100, pass: 1, remainingBytes: 100 * MiB });
    await until(() => cancels > 0, 'the abort');
    await new Promise((res) => setTimeout(res, 300)); // 15 ticks
    expect(cancels).toBe(1);
    mig.finish(S.MIGRATION_STATE_FAILED, 'QEMU failed the switch to post-copy; the guest keeps running on the source');
    await until(async () => (await run(r!.id)).finishedAt !== undefined, 'the run to end');
  });

  it('a failed run has its destination remove its incoming copy (retried while it does not answer) before its end is recorded', async () => {
    const m = manager();
    const { planId, runs: [r] } = await plan(['vm1']);
    nodes['b']!.onAbortIncoming = (n) => (n <= 2 ? new UnavailableError('destination unreachable') : undefined);
    m.enqueue([{ run: r!, order: 0 }]);
    await until(() => nodes['a']!.migrations.has(r!.id), 'StartMigration');
    const mig = nodes['a']!.migrations.get(r!.id)!;
    mig.state(S.MIGRATION_STATE_SETUP);
    mig.finish(S.MIGRATION_STATE_FAILED, 'the destination did not answer');
    await until(async () => (await run(r!.id)).finishedAt !== undefined, 'the run to end', 10_000);
    const aborts = nodes['b']!.calls.filter((c) => c.method === 'abortIncoming');
    expect(aborts).toHaveLength(3); // two unanswered, the third done — all before the end was recorded
    expect(aborts[0]!.request).toMatchObject({ runId: r!.id });
    expect((await run(r!.id)).state).toBe(S.MIGRATION_STATE_FAILED);
    await until(async () => (await store.getPlan(planId)).state === PlanState.PLAN_STATE_FAILED, 'the plan state');
  });

  it('records the end of a run and settles its plan once a full store can write again; the next queued run starts', async () => {
    const m = manager();
    const { planId, runs: rs } = await plan(['vm1', 'vm2']);
    const finishRun = store.plans.finishRun.bind(store.plans);
    let failures = 0;
    vi.spyOn(store.plans, 'finishRun').mockImplementation(async (id, input) => {
      if (failures++ < 3) throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
      return finishRun(id, input);
    });
    m.enqueue(rs.map((run, order) => ({ run, order })));
    await until(() => nodes['a']!.migrations.has(rs[0]!.id), 'the first start');
    const first = nodes['a']!.migrations.get(rs[0]!.id)!;
    first.state(S.MIGRATION_STATE_CANCELLING);
    first.finish(S.MIGRATION_STATE_CANCELLED, 'cancelled; the guest keeps running on the source');
    await until(async () => (await run(rs[0]!.id)).finishedAt !== undefined, 'the run to end despite the full store', 15_000);
    expect(failures).toBeGreaterThan(3);
    expect((await run(rs[0]!.id)).state).toBe(S.MIGRATION_STATE_CANCELLED);
    await until(() => nodes['a']!.migrations.has(rs[1]!.id), 'the queued run to start', 10_000);
    nodes['a']!.migrations.get(rs[1]!.id)!.finish(S.MIGRATION_STATE_SUCCEEDED);
    await until(async () => (await store.getPlan(planId)).state !== PlanState.PLAN_STATE_RUNNING, 'the plan to end', 10_000);
    expect((await store.getPlan(planId)).state).toBe(PlanState.PLAN_STATE_FAILED);
  });

  it('feeds the guest\'s samples to the adaptive policy, gives it the VM\'s earlier figures, and stores what the run measured', async () => {
    const m = manager();
    // An earlier succeeded run of the same VM with its figures (the prior), and the guest's pace before this run.
    const { runs: [earlier] } = await plan(['vm-h'], { kind: PolicyKind.POLICY_KIND_ADAPTIVE });
    await store.finishRun(earlier!.id, { state: S.MIGRATION_STATE_SUCCEEDED });
    await store.recordRunCosts(earlier!.id, { precopyHarmRate: 0.2, precopyMs: 4000, postcopyLostMs: 500, postcopyBacklogMs: 400 });
    const t0 = Date.now() - 3000;
    // The guest's clock runs with the host's (it stands still only where the test says so).
    const mono = (hostMs: number) => hostMs - t0 + 10_000;
    for (let i = 0; i < 5; i++) store.appendGuestSample({ time: new Date(t0 + i * 500), guestMonoMs: mono(t0 + i * 500), worker: -1, msPerGib: 1000, pass: i, pagesVerified: 0, integrityErrors: 0, heartbeatGapMs: 0, vmName: 'vm-h' });
    await store.flushSamples();
    const { runs: [r] } = await plan(['vm-h'], { kind: PolicyKind.POLICY_KIND_ADAPTIVE, postcopy: { enabled: true, onDemandOnly: true, preempt: true, afterPasses: 0, afterMs: 0 } });
    m.enqueue([{ run: r!, order: 0 }]);
    await until(() => nodes['a']!.migrations.has(r!.id), 'StartMigration');
    const mig = nodes['a']!.migrations.get(r!.id)!;
    const guest = (hostMs: number, guestMonoMs: number, msPerGib: number) =>
      mig.updates.publish({ update: { $case: 'guest', value: { time: new Date(hostMs), guestMonoMs, worker: -1, msPerGib, pass: 0, pagesVerified: 0, integrityErrors: 0, heartbeatGapMs: 0, vmName: 'vm-h' } } });
    mig.state(S.MIGRATION_STATE_SETUP);
    mig.state(S.MIGRATION_STATE_PRECOPY);
    // Pre-copy: 12 lines 20 ms apart at half the pace before (h = 0.5), timed after the transition.
    const p0 = Date.now() + 5;
    for (let i = 1; i <= 12; i++) guest(p0 + i * 20, mono(p0 + i * 20), 2000);
    // After the pass-1 sync (pass 2): what remains is the backlog (a pass-1 reading is not one, measured.ts).
    mig.progress({ elapsedMs: 300, pass: 2, remainingBytes: 40 * MiB, throughputMbps: 800 });
    await until(() => Date.now() > p0 + 12 * 20 + 5, 'the host clock to pass the last pre-copy line', 2000);
    mig.state(S.MIGRATION_STATE_SWITCHOVER);
    mig.state(S.MIGRATION_STATE_POSTCOPY);
    // Post-copy: the guest clock stands still for 80 ms of a 100 ms gap, then runs at its own pace.
    const q0 = Date.now() + 5;
    guest(q0 + 100, mono(q0 + 100) - 80, 1000);
    for (let i = 1; i <= 5; i++) guest(q0 + 100 + i * 20, mono(q0 + 100 + i * 20) - 80, 1000);
    await until(() => Date.now() > q0 + 220, 'the host clock to pass the last post-copy line', 2000);
    mig.state(S.MIGRATION_STATE_VERIFYING);
    mig.finish(S.MIGRATION_STATE_SUCCEEDED);
    await until(async () => (await store.vmCostHistory('vm-h', 5)).length === 2, 'the run\'s figures');
    const [mine] = await store.vmCostHistory('vm-h', 5);
    expect(mine!.precopyHarmRate).toBeGreaterThan(0.4);
    expect(mine!.precopyHarmRate).toBeLessThan(0.6);
    expect(mine!.postcopyLostMs).toBeGreaterThanOrEqual(60);
    expect(mine!.postcopyLostMs).toBeLessThan(200);
    // The backlog at the switch: 40 MiB at 800 Mbit/s.
    expect(mine!.postcopyBacklogMs).toBeCloseTo(((40 * MiB) / (800e6 / 8)) * 1000, 0);
    // It switched at its first boundary: the set that boundary found, for the VM's next adaptive runs.
    expect(mine!.firstBoundaryBytes).toBe(40 * MiB);
    expect((await run(r!.id)).state).toBe(S.MIGRATION_STATE_SUCCEEDED);
  });

  it('stores what a run measured whatever its policy: a fixed policy\'s run leaves h and the loss from its one downtime raise to the end', async () => {
    const m = manager();
    const t0 = Date.now() - 3000;
    const mono = (hostMs: number) => hostMs - t0 + 10_000;
    for (let i = 0; i < 5; i++) store.appendGuestSample({ time: new Date(t0 + i * 500), guestMonoMs: mono(t0 + i * 500), worker: -1, msPerGib: 1000, pass: i, pagesVerified: 0, integrityErrors: 0, heartbeatGapMs: 0, vmName: 'vm-f' });
    await store.flushSamples();
    const { runs: [r] } = await plan(['vm-f']);
    expect(r!.policy?.kind).toBe(PolicyKind.POLICY_KIND_FIXED);
    m.enqueue([{ run: r!, order: 0 }]);
    await until(() => nodes['a']!.migrations.has(r!.id), 'StartMigration');
    const mig = nodes['a']!.migrations.get(r!.id)!;
    const guest = (hostMs: number, guestMonoMs: number, msPerGib: number) =>
      mig.updates.publish({ update: { $case: 'guest', value: { time: new Date(hostMs), guestMonoMs, worker: -1, msPerGib, pass: 0, pagesVerified: 0, integrityErrors: 0, heartbeatGapMs: 0, vmName: 'vm-f' } } });
    mig.state(S.MIGRATION_STATE_SETUP);
    mig.state(S.MIGRATION_STATE_PRECOPY);
    // Pre-copy at half the pace before: 12 lines 20 ms apart, a user's raise, 12 more.
    const p0 = Date.now() + 5;
    for (let i = 1; i <= 12; i++) guest(p0 + i * 20, mono(p0 + i * 20), 2000);
    mig.progress({ elapsedMs: 300, pass: 2, remainingBytes: 40 * MiB, throughputMbps: 800 });
    await until(() => Date.now() > p0 + 12 * 20 + 5, 'the host clock to pass the first lines', 2000);
    mig.action(PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME, 900, 'user:operator', 'raise');
    const q0 = Date.now() + 5;
    for (let i = 1; i <= 12; i++) guest(q0 + i * 20, mono(q0 + i * 20), 2000);
    await until(() => Date.now() > q0 + 12 * 20 + 5, 'the host clock to pass the last pre-copy line', 2000);
    mig.state(S.MIGRATION_STATE_SWITCHOVER);
    // The stop: the guest clock stands still for 100 ms of a 120 ms gap.
    const s0 = Date.now();
    await until(() => Date.now() > s0 + 125, 'the stop', 2000);
    mig.state(S.MIGRATION_STATE_VERIFYING);
    guest(s0 + 120, mono(s0 + 120) - 100, 1000);
    mig.finish(S.MIGRATION_STATE_SUCCEEDED);
    await until(async () => (await store.vmCostHistory('vm-f', 5)).length === 1, 'the run\'s figures');
    const [mine] = await store.vmCostHistory('vm-f', 5);
    expect(mine!.precopyHarmRate).toBeGreaterThan(0.4);
    expect(mine!.precopyHarmRate).toBeLessThan(0.6);
    expect(mine!.postcopyLostMs).toBeUndefined();
    // From the raise: ≈ 12 lines at half speed (≈120 ms) and most of the 100 ms stop.
    expect(mine!.raiseLostMs).toBeGreaterThan(150);
    expect(mine!.raiseLostMs).toBeLessThan(300);
    expect(mine!.raiseBacklogMs).toBeCloseTo(((40 * MiB) / (800e6 / 8)) * 1000, 0);
  });

  it('keeps one migration per link, cancels a queued run without a node call, and dispatches the next when a slot frees', async () => {
    const m = manager({ heldPerLink: 0 }); // no held starts (see the held-start tests below)
    const { planId, runs: rs } = await plan(['vm1', 'vm2', 'vm3']);
    m.enqueue(rs.map((run, order) => ({ run, order })));
    await until(() => nodes['a']!.migrations.size === 1, 'the first start');
    expect((await run(rs[1]!.id)).state).toBe(S.MIGRATION_STATE_QUEUED);
    const cancelled = await m.cancel(rs[2]!.id, 'user:operator', 'not needed');
    expect(cancelled.state).toBe(S.MIGRATION_STATE_CANCELLED);
    expect(cancelled.actions).toMatchObject([{ kind: PolicyActionKind.POLICY_ACTION_KIND_ABORT, actor: 'user:operator' }]);
    await expect(m.cancel(rs[2]!.id, 'user:operator', '')).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    await expect(m.forceComplete(rs[1]!.id, 'user:operator', '')).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', reason: 'RUN_QUEUED' });
    expect(nodes['a']!.calls.filter((c) => c.request['runId'] === rs[2]!.id)).toEqual([]);

    const first = nodes['a']!.migrations.get(rs[0]!.id)!;
    first.state(S.MIGRATION_STATE_PRECOPY);
    // User requests go to the node with the user as actor.
    await m.adjust({ runId: rs[0]!.id, downtimeLimitMs: 700, reason: 'more' }, 'user:operator');
    expect(nodes['a']!.calls.at(-1)).toMatchObject({ method: 'adjustMigration', request: { downtimeLimitMs: 700, actor: 'user:operator' } });
    first.finish(S.MIGRATION_STATE_SUCCEEDED);
    await until(() => nodes['a']!.migrations.has(rs[1]!.id), 'the second start');
    const one = await run(rs[0]!.id);
    expect(one).toMatchObject({ state: S.MIGRATION_STATE_SUCCEEDED, stats: { totalTimeMs: 1234, downtimeMs: 12 } });
    expect((await run(rs[1]!.id)).startedAt!.getTime()).toBeGreaterThanOrEqual(one.finishedAt!.getTime());
    nodes['a']!.migrations.get(rs[1]!.id)!.finish(S.MIGRATION_STATE_SUCCEEDED);
    await until(async () => (await store.getPlan(planId)).state !== PlanState.PLAN_STATE_RUNNING, 'the plan to end');
    expect((await store.getPlan(planId)).state).toBe(PlanState.PLAN_STATE_FAILED); // one run was cancelled
    expect(nodes['a']!.methods().filter((x) => x === 'startMigration')).toHaveLength(2);
  });

  it('frees the link once the source reports VERIFYING: the next run on the link starts during the handover; the host limit still counts the first until its end', async () => {
    const m = manager({ heldPerLink: 0 });
    const { planId, runs: rs } = await plan(['vm1', 'vm2', 'vm3']);
    m.enqueue(rs.map((run, order) => ({ run, order })));
    await until(() => nodes['a']!.migrations.size === 1, 'the first start');
    const first = nodes['a']!.migrations.get(rs[0]!.id)!;
    first.state(S.MIGRATION_STATE_PRECOPY);
    first.state(S.MIGRATION_STATE_SWITCHOVER);
    await until(async () => (await run(rs[0]!.id)).state === S.MIGRATION_STATE_SWITCHOVER, 'SWITCHOVER recorded');
    expect(nodes['a']!.migrations.has(rs[1]!.id)).toBe(false); // still streaming: the link is taken
    first.state(S.MIGRATION_STATE_VERIFYING);
    await until(() => nodes['a']!.migrations.has(rs[1]!.id), 'the second start while the first hands over');
    expect((await run(rs[0]!.id)).finishedAt).toBeUndefined();
    expect(m.queue.snapshot()).toMatchObject({ running: 2, offLinkIds: [rs[0]!.id], runningByLink: { 'a->b': 1 }, outboundByHost: { a: 2 } });
    const second = nodes['a']!.migrations.get(rs[1]!.id)!;
    second.state(S.MIGRATION_STATE_PRECOPY);
    second.state(S.MIGRATION_STATE_VERIFYING);
    await until(() => m.queue.snapshot().offLinkIds.length === 2, 'the second leaving the link');
    // The link is free, but a has its 2 outbound migrations until the first one ends.
    await new Promise((res) => setTimeout(res, 100));
    expect(nodes['a']!.migrations.has(rs[2]!.id)).toBe(false);
    expect((await run(rs[2]!.id)).state).toBe(S.MIGRATION_STATE_QUEUED);
    first.finish(S.MIGRATION_STATE_SUCCEEDED);
    await until(() => nodes['a']!.migrations.has(rs[2]!.id), 'the third start once the first ended');
    const one = await run(rs[0]!.id);
    expect((await run(rs[2]!.id)).startedAt!.getTime()).toBeGreaterThanOrEqual(one.finishedAt!.getTime());
    // The recorded stream intervals (start → VERIFYING) never overlap on the link.
    const verifying = one.transitions.find((t) => t.to === S.MIGRATION_STATE_VERIFYING)!.time!.getTime();
    expect((await run(rs[1]!.id)).startedAt!.getTime()).toBeGreaterThanOrEqual(verifying);
    second.finish(S.MIGRATION_STATE_SUCCEEDED);
    nodes['a']!.migrations.get(rs[2]!.id)!.finish(S.MIGRATION_STATE_SUCCEEDED);
    await until(async () => (await store.getPlan(planId)).state === PlanState.PLAN_STATE_SUCCEEDED, 'the plan to end');
    expect(m.queue.snapshot()).toMatchObject({ running: 0, offLinkIds: [], runningByLink: {}, outboundByHost: {} });
  });

  it('dispatches the next run on a busy link held (StartMigration hold_ms), releases it when the link frees; a held run cancelled is never released', async () => {
    const m = manager();
    const { planId, runs: rs } = await plan(['vm1', 'vm2', 'vm3']);
    m.enqueue(rs.map((run, order) => ({ run, order })));
    await until(() => nodes['a']!.migrations.size === 2, 'the first start and the second, held');
    const startOf = (id: string): Record<string, unknown> => nodes['a']!.calls.find((c) => c.method === 'startMigration' && c.request['runId'] === id)!.request;
    const released = (): unknown[] => nodes['a']!.calls.filter((c) => c.method === 'releaseMigration').map((c) => c.request['runId']);
    expect(startOf(rs[0]!.id)['holdMs']).toBeUndefined();
    expect(startOf(rs[1]!.id)['holdMs']).toBe(600_000);
    expect(m.queue.snapshot()).toMatchObject({ heldIds: [rs[1]!.id], runningByLink: { 'a->b': 1 }, outboundByHost: { a: 2 }, queuedIds: [rs[2]!.id] });
    const first = nodes['a']!.migrations.get(rs[0]!.id)!;
    first.state(S.MIGRATION_STATE_PRECOPY);
    await until(async () => (await run(rs[0]!.id)).state === S.MIGRATION_STATE_PRECOPY, 'PRECOPY recorded');
    expect(released()).toEqual([]); // the first still streams
    first.state(S.MIGRATION_STATE_VERIFYING);
    await until(() => released().length === 1, 'the release once the first left the link');
    expect(released()).toEqual([rs[1]!.id]);
    expect(m.queue.snapshot()).toMatchObject({ heldIds: [], offLinkIds: [rs[0]!.id], runningByLink: { 'a->b': 1 }, outboundByHost: { a: 2 } });
    first.finish(S.MIGRATION_STATE_SUCCEEDED);
    // The third is dispatched held behind the second's stream, then cancelled while held: the
    // source ends it (its destination's copy removed there); it is never released.
    await until(() => nodes['a']!.migrations.has(rs[2]!.id), 'the third start, held');
    expect(startOf(rs[2]!.id)['holdMs']).toBe(600_000);
    nodes['a']!.onRequest = (method, mig) => {
      if (method === 'cancelMigration') mig.finish(S.MIGRATION_STATE_CANCELLED);
    };
    await m.cancel(rs[2]!.id, 'user:operator', 'not needed');
    await until(async () => (await run(rs[2]!.id)).state === S.MIGRATION_STATE_CANCELLED, 'the held run cancelled');
    expect(m.queue.snapshot()).toMatchObject({ heldIds: [], runningByLink: { 'a->b': 1 }, outboundByHost: { a: 1 } });
    const second = nodes['a']!.migrations.get(rs[1]!.id)!;
    second.state(S.MIGRATION_STATE_PRECOPY);
    second.state(S.MIGRATION_STATE_VERIFYING);
    second.finish(S.MIGRATION_STATE_SUCCEEDED);
    await until(async () => (await store.getPlan(planId)).state !== PlanState.PLAN_STATE_RUNNING, 'the plan to end');
    expect((await store.getPlan(planId)).state).toBe(PlanState.PLAN_STATE_FAILED); // one run was cancelled
    expect(released()).toEqual([rs[1]!.id]);
    expect(m.queue.snapshot()).toMatchObject({ running: 0, heldIds: [], runningByLink: {}, outboundByHost: {} });
  });

  it('renews the hold of a held run (a repeated held StartMigration every third of it) while the run ahead streams longer than the hold, and stops once released', async () => {
    const m = manager({ holdMs: 3000 });
    const { runs: rs } = await plan(['vm1', 'vm2']);
    m.enqueue(rs.map((run, order) => ({ run, order })));
    await until(() => nodes['a']!.migrations.size === 2, 'the first start and the second, held');
    const starts = (): Record<string, unknown>[] => nodes['a']!.calls.filter((c) => c.method === 'startMigration' && c.request['runId'] === rs[1]!.id).map((c) => c.request);
    const first = nodes['a']!.migrations.get(rs[0]!.id)!;
    first.state(S.MIGRATION_STATE_PRECOPY);
    // The first streams past the second's whole hold: renewed at 1 s, 2 s, 3 s.
    await until(() => starts().length >= 4, 'three renewals', 10_000);
    expect(starts().every((r) => r['holdMs'] === 3000 && r['vmName'] === 'vm2')).toBe(true);
    expect(nodes['a']!.calls.filter((c) => c.method === 'releaseMigration')).toEqual([]);
    expect(nodes['a']!.calls.filter((c) => c.method === 'startMigration' && c.request['runId'] === rs[0]!.id)).toHaveLength(1);
    first.state(S.MIGRATION_STATE_VERIFYING);
    await until(() => nodes['a']!.calls.some((c) => c.method === 'releaseMigration'), 'the release');
    const renewed = starts().length;
    await new Promise((res) => setTimeout(res, 1500));
    expect(starts()).toHaveLength(renewed); // no renewal after the release
    first.finish(S.MIGRATION_STATE_SUCCEEDED);
    nodes['a']!.migrations.get(rs[1]!.id)!.finish(S.MIGRATION_STATE_SUCCEEDED);
    await until(() => m.queue.snapshot().running === 0, 'both to end');
  });

  it('after a restart, a PREPARING run dispatched behind a streaming one on its link is held again and released when the link frees', async () => {
    // The held run is the first in the store: recovery still gives the link to the streaming one.
    const { runs: [held, streaming] } = await plan(['vm2:a:b', 'vm1:a:b']);
    await store.transitionRun(streaming!.id, { to: S.MIGRATION_STATE_PREPARING });
    await store.transitionRun(streaming!.id, { to: S.MIGRATION_STATE_PRECOPY });
    await store.transitionRun(held!.id, { to: S.MIGRATION_STATE_PREPARING });
    const s = nodes['a']!.adopt({ runId: streaming!.id, vmName: 'vm1', destination: registry.endpoint('b'), policy: streaming!.policy });
    s.info.state = S.MIGRATION_STATE_PRECOPY;
    const h = nodes['a']!.adopt({ runId: held!.id, vmName: 'vm2', destination: registry.endpoint('b'), policy: held!.policy, holdMs: 600_000 });
    const released = (): unknown[] => nodes['a']!.calls.filter((c) => c.method === 'releaseMigration').map((c) => c.request['runId']);
    const m = manager();
    await m.recover();
    expect(m.queue.snapshot()).toMatchObject({ running: 2, heldIds: [held!.id], runningByLink: { 'a->b': 1 }, outboundByHost: { a: 2 } });
    await until(() => nodes['a']!.methods().filter((x) => x === 'watchMigration').length === 2, 'both re-attached');
    expect(released()).toEqual([]);
    expect(nodes['a']!.methods().filter((x) => x === 'startMigration')).toEqual([]);
    s.state(S.MIGRATION_STATE_VERIFYING);
    await until(() => released().length === 1, 'the release once the streaming run left the link');
    expect(released()).toEqual([held!.id]);
    s.finish(S.MIGRATION_STATE_SUCCEEDED);
    h.finish(S.MIGRATION_STATE_SUCCEEDED);
    await until(() => m.queue.snapshot().running === 0, 'both to end');
  });

  it('after a restart, a recovered run past its stream (VERIFYING) holds no link slot', async () => {
    const { runs: [verifying, queued] } = await plan(['vm1:a:b', 'vm2:a:b']);
    await store.transitionRun(verifying!.id, { to: S.MIGRATION_STATE_PREPARING });
    await store.transitionRun(verifying!.id, { to: S.MIGRATION_STATE_VERIFYING });
    const mig = nodes['a']!.adopt({ runId: verifying!.id, vmName: 'vm1', destination: registry.endpoint('b'), policy: verifying!.policy });
    mig.info.state = S.MIGRATION_STATE_VERIFYING;
    const m = manager();
    await m.recover();
    await until(() => nodes['a']!.migrations.has(queued!.id), 'the queued run to start while the recovered one verifies');
    expect((await run(verifying!.id)).finishedAt).toBeUndefined();
    expect(m.queue.snapshot()).toMatchObject({ running: 2, offLinkIds: [verifying!.id], outboundByHost: { a: 2 } });
    mig.finish(S.MIGRATION_STATE_SUCCEEDED);
    nodes['a']!.migrations.get(queued!.id)!.finish(S.MIGRATION_STATE_SUCCEEDED);
    await until(() => m.queue.snapshot().running === 0, 'both to end');
  });

  it("holds the unfinished runs' moves as the store has them (queued, running, cancelled, ended, recovered); SubmitPlan plans with them", async () => {
    const m = manager({ heldPerLink: 0 }); // vm3's run stays queued behind the link
    const sorted = (xs: readonly ActiveMove[]): ActiveMove[] => [...xs].sort((x, y) => (x.runId < y.runId ? -1 : 1));
    const same = async (mgr: RunManager, n: number): Promise<void> => {
      expect(sorted(mgr.activeMoves())).toEqual(sorted(await store.listActiveMoves()));
      expect(mgr.activeMoves()).toHaveLength(n);
      // What planning models: the same moves, in the same order.
      expect(mgr.plannedMoves()).toEqual(mgr.activeMoves().map((a) => ({ vmName: a.vmName, from: a.sourceNodeId, to: a.destinationNodeId, memoryBytes: a.memoryMib * 1024 * 1024 })));
    };
    await same(m, 0);
    const { runs: rs } = await plan(['vm1', 'vm2', 'vm3']);
    m.enqueue(rs.map((run, order) => ({ run, order })));
    await until(() => nodes['a']!.migrations.size === 1, 'the first start');
    await same(m, 3);
    // A VM of a queued run cannot be planned again: the planner sees the run without reading the store's runs.
    await registry.heartbeat(host('a'), ['vm1', 'vm2', 'vm3', 'vm4'].map((name) => ({ spec: VmSpec.fromPartial({ name, memoryMib: 192 }), nodeId: 'a', state: VmState.VM_STATE_RUNNING, pid: 1, startedAt: new Date(), migrationRunId: '', lastGuestPerf: undefined, qemuCpuSeconds: 0, localDisks: [] })));
    const planner = new Planner({ store, registry, runs: m, limits: m.queue.limits, log: quiet, createVmDeadlineMs: 1000 });
    const listed = vi.spyOn(store.plans, 'listActiveMoves');
    const migrate = (key: string, vmName: string) => planner.submit({ idempotencyKey: key, target: { $case: 'migrate', value: { vmName, destinationNodeId: 'c' } }, policy: MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_FIXED }), priority: 0, antiAffinityVmNames: [], label: '' });
    await expect(migrate('again', 'vm2')).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    expect(listed).not.toHaveBeenCalled();
    await m.cancel(rs[2]!.id, 'user:operator', 'not needed');
    await same(m, 2);
    nodes['a']!.migrations.get(rs[0]!.id)!.finish(S.MIGRATION_STATE_SUCCEEDED);
    await until(() => nodes['a']!.migrations.has(rs[1]!.id), 'the second start');
    await until(() => m.activeMoves().length === 1, 'the first run to leave the active moves');
    await same(m, 1);
    // vm3's run was cancelled: vm3 may be planned again, and its new run is held like the others.
    const again = await migrate('vm3-again', 'vm3');
    await same(m, 2);
    expect(m.activeMoves().map((a) => a.runId)).toContain(again.plan!.migrations[0]!.runId);
    // A restarted manager holds the same runs, read back from the store.
    await m.close();
    const m2 = manager({ heldPerLink: 0 });
    await m2.recover();
    await same(m2, 2);
  });

  it("heartbeats take the run manager's moves for the ownership check (no store read): a run's destination may report its VM, another node may not", async () => {
    const m = manager();
    registry.useRunMoves((vm, node) => m.isMovingTo(vm, node));
    const vm = (name: string, nodeId: string) => ({ spec: VmSpec.fromPartial({ name, memoryMib: 192 }), nodeId, state: VmState.VM_STATE_RUNNING, pid: 1, startedAt: new Date(), migrationRunId: '', lastGuestPerf: undefined, qemuCpuSeconds: 0, localDisks: [] });
    await registry.heartbeat(host('a'), [vm('vm1', 'a'), vm('vm2', 'a')]);
    const { runs: rs } = await plan(['vm1', 'vm2:a:c']);
    const listed = vi.spyOn(store.plans, 'listActiveMoves');
    const on = async (node: string): Promise<string[]> => (await registry.vms(node)).map((v) => v.spec!.name).sort();
    // Both runs start (two links); each is held with its move.
    m.enqueue(rs.map((run, order) => ({ run, order })));
    await until(() => nodes['a']!.migrations.size === 2, 'both starts');
    for (const r of rs) {
      expect(m.isMovingTo(r.vmName, r.destinationNodeId)).toBe(true);
      expect(m.isMovingTo(r.vmName, r.sourceNodeId)).toBe(false);
      expect(m.activeRunOf(r.vmName)).toBe(r.id);
    }
    // vm1 resumed on b (its run's destination): b's report of it is taken; c reporting vm1 is a
    // conflict (no run moves vm1 to c) and left out.
    await registry.heartbeat(host('b'), [vm('vm1', 'b')]);
    await registry.heartbeat(host('c'), [vm('vm1', 'c')]);
    expect(await on('b')).toEqual(['vm1']);
    expect(await on('c')).toEqual([]);
    // vm1's run ends: from then on (its VM settled on b) only b may report it.
    nodes['a']!.migrations.get(rs[0]!.id)!.finish(S.MIGRATION_STATE_SUCCEEDED);
    await until(() => !m.isMovingTo('vm1', 'b'), 'vm1 to leave the moves');
    expect(m.activeRunOf('vm1')).toBeUndefined();
    await until(async () => (await store.getVm('vm1')).nodeId === 'b', 'vm1 settled on b');
    await registry.heartbeat(host('b'), [vm('vm1', 'b')]);
    await registry.heartbeat(host('a'), [vm('vm1', 'a'), vm('vm2', 'a')]);
    expect(await on('b')).toEqual(['vm1']);
    expect(await on('a')).toEqual(['vm2']);
    expect(listed).not.toHaveBeenCalled();
    // A run's end forgets its move before the VM's new home is written (vmSettled): a heartbeat of
    // that node in between is not a conflict either.
    await registry.heartbeat(host('a'), [vm('vm2', 'a'), vm('vm3', 'a')]);
    await registry.heartbeat(host('c'), [vm('vm3', 'c')]); // no run, not settling: a conflict
    expect(await on('c')).toEqual([]);
    const settled = registry.vmSettled('vm3', 'c', true);
    await registry.heartbeat(host('c'), [vm('vm3', 'c')]);
    expect(await on('c')).toEqual(['vm3']);
    await settled;
    expect((await store.getVm('vm3')).nodeId).toBe('c');
  });

  it('after a restart, re-attaches to running migrations (GetMigration first), never starting one twice', async () => {
    // The previous coordinator's record: one run migrating (a→b), one just dispatched (a→c), one
    // the node lost (b→a), one queued behind the first (a→b).
    const { runs: [running, preparing, lost, queued] } = await plan(['vm1:a:b', 'vm2:a:c', 'vm3:b:a', 'vm4:a:b']);
    for (const r of [running!, lost!]) {
      await store.transitionRun(r.id, { to: S.MIGRATION_STATE_PREPARING });
      await store.transitionRun(r.id, { to: S.MIGRATION_STATE_PRECOPY });
    }
    await store.transitionRun(preparing!.id, { to: S.MIGRATION_STATE_PREPARING });
    const mig = nodes['a']!.adopt({ runId: running!.id, vmName: 'vm1', destination: registry.endpoint('b'), policy: running!.policy });
    mig.info.state = S.MIGRATION_STATE_PRECOPY;
    // An action the node took while no coordinator listened.
    mig.action(PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME, 900, 'user:operator', 'while you were away');

    const m = manager();
    await m.recover();
    await until(async () => (await run(lost!.id)).finishedAt !== undefined, 'the lost run to fail');
    expect(await run(lost!.id)).toMatchObject({ state: S.MIGRATION_STATE_FAILED, error: { reason: 'MIGRATION_LOST' } });
    await until(() => nodes['a']!.migrations.has(preparing!.id), 'the PREPARING run to be started');
    await until(async () => (await run(running!.id)).actions.length === 1, 'the missed action to be recorded');
    expect((await run(queued!.id)).state).toBe(S.MIGRATION_STATE_QUEUED);
    mig.finish(S.MIGRATION_STATE_SUCCEEDED);
    await until(async () => (await run(running!.id)).finishedAt !== undefined, 'the running run to end');
    const done = await run(running!.id);
    expect(done.state).toBe(S.MIGRATION_STATE_SUCCEEDED);
    expect(done.actions).toHaveLength(1); // reported live and again in the result: recorded once
    const calls = nodes['a']!.calls;
    const started = calls.filter((c) => c.method === 'startMigration').map((c) => c.request['runId']);
    expect(started.filter((id) => id === preparing!.id)).toHaveLength(1);
    expect(started).not.toContain(running!.id);
    expect(calls.filter((c) => c.method === 'getMigration').map((c) => c.request['runId']).sort()).toEqual([running!.id, preparing!.id].sort());
    // The lost run: asked, not restarted (the queued run a→b may be announced to b by now).
    expect(nodes['b']!.calls.filter((c) => c.request['runId'] !== queued!.id).map((c) => c.method)).toEqual(['getMigration']);
    // The re-dispatched PREPARING run (a→c) is announced to its destination again.
    expect(nodes['c']!.calls.filter((c) => c.request['runId'] === preparing!.id)).toMatchObject([{ method: 'expectIncoming', request: { sourceNodeId: 'a', vmName: 'vm2' } }]);
    // The queued run waited for the link; it is dispatched once the link is free.
    await until(() => nodes['a']!.migrations.has(queued!.id), 'the queued run to start');
    expect((await run(queued!.id)).startedAt!.getTime()).toBeGreaterThanOrEqual(done.finishedAt!.getTime());
  });

  it('announces the run to its destination while PREPARING is being recorded, and starts it on the source only once both are done', async () => {
    const m = manager();
    const { runs: [r] } = await plan(['vm1']);
    let release!: () => void;
    const held = new Promise<void>((res) => (release = res));
    const transitionRun = store.plans.transitionRun.bind(store.plans);
    vi.spyOn(store.plans, 'transitionRun').mockImplementation(async (id, input) => {
      if (input.to === S.MIGRATION_STATE_PREPARING) await held;
      return transitionRun(id, input);
    });
    m.enqueue([{ run: r!, order: 0 }]);
    await until(() => nodes['b']!.methods().includes('expectIncoming'), 'ExpectIncoming while PREPARING is being written');
    expect(nodes['b']!.calls.find((c) => c.method === 'expectIncoming')?.request).toMatchObject({ runId: r!.id, sourceNodeId: 'a', vmName: 'vm1' });
    await new Promise((res) => setTimeout(res, 100));
    expect(nodes['a']!.methods()).toEqual([]); // no StartMigration before the state is recorded
    expect((await run(r!.id)).state).toBe(S.MIGRATION_STATE_QUEUED);
    release();
    await until(() => nodes['a']!.migrations.has(r!.id), 'StartMigration once PREPARING is recorded');
    expect((await run(r!.id)).state).toBe(S.MIGRATION_STATE_PREPARING);
  });

  it('holds a queued run while one of its nodes is down, without a slot, and starts it when the node is back', async () => {
    const down = new Set(['c']);
    vi.spyOn(registry, 'isUp').mockImplementation((id) => !down.has(id));
    const m = manager({ nodeDownWaitMs: 2500 });
    const back = await plan(['vm1:a:c']);
    const gone = await plan(['vm2:b:c']);
    // Both wait on c; vm1 and vm2 use different sources so both can start once c is up.
    m.enqueue([...back.runs, ...gone.runs].map((run) => ({ run, order: 0 })));
    await new Promise((r) => setTimeout(r, 1200));
    expect(nodes['a']!.methods()).toEqual([]);
    expect((await run(back.runs[0]!.id)).state).toBe(S.MIGRATION_STATE_QUEUED);
    expect(m.queue.snapshot()).toMatchObject({ queued: 2, running: 0 }); // no slot taken while waiting
    // c comes back.
    vi.spyOn(registry, 'isUp').mockImplementation((id) => !down.has(id) || id === 'c');
    await until(() => nodes['a']!.migrations.has(back.runs[0]!.id), 'vm1 to start once c is up', 3000);
    await until(() => nodes['b']!.migrations.has(gone.runs[0]!.id), 'vm2 to start too');
  });

  it('fails a queued run whose node stays down past the wait, with NODE_DOWN, and settles its plan', async () => {
    vi.spyOn(registry, 'isUp').mockImplementation((id) => id !== 'c');
    const m = manager({ nodeDownWaitMs: 1500 });
    const p = await plan(['vm1:a:c']);
    const t0 = Date.now();
    m.enqueue([{ run: p.runs[0]!, order: 0 }]);
    await until(async () => (await run(p.runs[0]!.id)).finishedAt !== undefined, 'the run to fail', 6000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1500);
    expect(await run(p.runs[0]!.id)).toMatchObject({ state: S.MIGRATION_STATE_FAILED, error: { reason: 'NODE_DOWN', code: 'UNAVAILABLE' } });
    // The plan's state follows the run's end in a write of its own.
    await until(async () => (await store.getPlan(p.planId)).state === PlanState.PLAN_STATE_FAILED, 'the plan to fail');
    expect(nodes['a']!.methods()).toEqual([]);
    expect(m.queue.snapshot()).toMatchObject({ queued: 0, running: 0 });
  });

  it('settles a plan whose last run ended just before the coordinator stopped', async () => {
    const ok = await plan(['vm1']);
    const bad = await plan(['vm2', 'vm3']);
    const open = await plan(['vm4']);
    // The runs ended in the store, but nothing updated their plans (the coordinator stopped).
    await store.finishRun(ok.runs[0]!.id, { state: S.MIGRATION_STATE_SUCCEEDED });
    await store.finishRun(bad.runs[0]!.id, { state: S.MIGRATION_STATE_SUCCEEDED });
    await store.finishRun(bad.runs[1]!.id, { state: S.MIGRATION_STATE_FAILED, reason: 'lost' });
    expect((await store.getPlan(ok.planId)).state).toBe(PlanState.PLAN_STATE_RUNNING);
    expect(await store.listRunningPlanIds()).toEqual([ok.planId, bad.planId, open.planId]);
    await manager().recover();
    expect((await store.getPlan(ok.planId)).state).toBe(PlanState.PLAN_STATE_SUCCEEDED);
    expect((await store.getPlan(bad.planId)).state).toBe(PlanState.PLAN_STATE_FAILED);
    expect((await store.getPlan(open.planId)).state).toBe(PlanState.PLAN_STATE_RUNNING); // its run is still queued
    expect(await store.listRunningPlanIds()).toEqual([open.planId]);
  });
});

describe('CreateVm placement', () => {
  it('places a VM on the up node with the most free memory, keeping its anti-affinity group apart', async () => {
    const m = manager();
    const planner = new Planner({ store, registry, runs: m, limits: m.queue.limits, log: quiet, createVmDeadlineMs: 1000 });
    const spec = (name: string, group = ''): VmSpec => VmSpec.fromPartial({ name, memoryMib: 256, antiAffinityGroup: group });
    // b has the most free memory; c is next.
    await registry.heartbeat({ ...host('a'), memoryFreeBytes: 1 * 2 ** 30 }, []);
    await registry.heartbeat({ ...host('b'), memoryFreeBytes: 6 * 2 ** 30 }, []);
    await registry.heartbeat({ ...host('c'), memoryFreeBytes: 4 * 2 ** 30 }, []);
    expect((await planner.createVm({ spec: spec('w1', 'web'), nodeId: '' })).nodeId).toBe('b');
    // The same group may not share b: c it is.
    expect((await planner.createVm({ spec: spec('w2', 'web'), nodeId: '' })).nodeId).toBe('c');
    expect(nodes['b']!.methods()).toEqual(['createVm']);
    expect(nodes['c']!.methods()).toEqual(['createVm']);
    expect((await registry.vms()).map((v) => [v.spec?.name, v.nodeId, v.state])).toEqual([
      ['w1', 'b', VmState.VM_STATE_RUNNING],
      ['w2', 'c', VmState.VM_STATE_RUNNING],
    ]);
    await expect(planner.createVm({ spec: spec('w1'), nodeId: '' })).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    await expect(planner.createVm({ spec: VmSpec.fromPartial({ name: 'big', memoryMib: 64 * 1024 }), nodeId: '' })).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
    await expect(planner.createVm({ spec: VmSpec.fromPartial({ name: '../x', memoryMib: 64 }), nodeId: '' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});

describe('event bus', () => {
  it('replays a run from the outbox, then follows it live to its completion', async () => {
    const bus = new EventBus(store, quiet);
    await bus.start();
    try {
      const { runs: [r] } = await plan(['vm1']);
      await store.transitionRun(r!.id, { to: S.MIGRATION_STATE_PREPARING });
      const seen: Event[] = [];
      const states: Event[] = [];
      const all = (async () => {
        for await (const e of bus.watchRun(r!.id)) seen.push(e);
      })();
      const statesOnly = (async () => {
        for await (const e of bus.watchRun(r!.id, { statesOnly: true })) states.push(e);
      })();
      const cluster: Event[] = [];
      const ac = new AbortController();
      const clusterWatch = (async () => {
        for await (const e of bus.watchCluster({ signal: ac.signal })) cluster.push(e);
      })();
      await until(() => seen.length === 2, 'the replay');
      await store.transitionRun(r!.id, { to: S.MIGRATION_STATE_PRECOPY });
      store.appendProgress(r!.id, { elapsedMs: 10, pass: 1 } as never);
      await store.flushSamples();
      await store.finishRun(r!.id, { state: S.MIGRATION_STATE_SUCCEEDED });
      await all;
      await statesOnly;
      expect(seen.map((e) => e.payload?.$case)).toEqual(['runState', 'runState', 'runState', 'runProgress', 'runState', 'runCompleted']);
      expect(seen.map((e) => e.runSequence)).toEqual([1, 2, 3, 4, 5, 6]);
      expect(states.map((e) => e.runSequence)).toEqual([1, 2, 3, 5, 6]);
      // Cluster watchers get live events of every kind, from when they joined.
      await until(() => cluster.some((e) => e.payload?.$case === 'runCompleted'), 'the cluster watch');
      ac.abort();
      await clusterWatch;
      // (Events committed just before joining may still arrive: the bus reads the outbox after each commit.)
      expect(cluster.map((e) => e.payload?.$case).slice(-4)).toEqual(['runState', 'runProgress', 'runState', 'runCompleted']);

      // Once the outbox has been pruned, the run's history comes from the store instead.
      const rows = await store.readOutbox({ limit: 1000 });
      await store.markPublished(rows.map((x) => x.seq), new Date());
      await store.pruneOutbox(new Date(Date.now() + 7 * 24 * 3600_000));
      expect(await store.readOutbox({ runId: r!.id, limit: 10 })).toEqual([]);
      expect(await store.lastOutboxSeq()).toBe(rows.at(-1)!.seq);
      const replay: Event[] = [];
      for await (const e of bus.watchRun(r!.id, { fallback: async (before) => eventsFromRun(await store.getRun(r!.id), before) })) replay.push(e);
      expect(replay.map((e) => e.payload?.$case)).toEqual(['runState', 'runState', 'runState', 'runState', 'runCompleted']);
    } finally {
      await bus.stop();
    }
  });
});
