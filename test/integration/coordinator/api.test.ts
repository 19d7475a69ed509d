import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { subscribeRun } from '../../../services/shared/events/subscriber.js';
import { MigrationState as S, MultifdCompression, PolicyActionKind, PolicyKind, WorkloadPattern } from '../../../services/shared/gen/migd/v1/common.js';
import { ExportFormat, NodeStatus, PlanState, type CoordinatorServiceCreateVmRequest } from '../../../services/shared/gen/migd/v1/coordinator.js';
import type { Event } from '../../../services/shared/gen/migd/v1/events.js';
import { ensurePki, nodeIdentity } from '../../../services/shared/pki.js';
import { guestSpec, waitForGuest } from '../../helpers/node-cluster.js';
import {
  createGuest,
  migratePlan,
  startCoordinatorCluster,
  waitFor,
  waitForRun,
  waitForRunState,
  type CoordinatorClient,
  type CoordinatorCluster,
} from '../../helpers/coordinator-cluster.js';

// The coordinator's API end to end: a real nats-server, the compiled coordinator with its SQLite
// file, two node daemons in network namespaces, real QEMU guests running the verifying workload.
describe('coordinator API', () => {
  let c: CoordinatorCluster;
  let op: CoordinatorClient;
  let verified: Record<string, number> = {};

  beforeAll(async () => {
    // No held starts (--held-per-link 0): the cancel test below needs a run that stays queued
    // behind a busy link (held runs: drain.test.ts, restart.test.ts).
    c = await startCoordinatorCluster(['a', 'b'], { coordinatorArgs: ['--held-per-link', '0'] });
    op = c.client();
    const boots = await Promise.all([
      createGuest(c, 'a', guestSpec('vm1', { rate: 8 << 20 })),
      createGuest(c, 'a', guestSpec('vm2', { pattern: WorkloadPattern.WORKLOAD_PATTERN_HOTCOLD, bytesPerWorker: 32 << 20, hotBytes: 16 << 20 })),
      // vm3 is only ever queued and cancelled: 8 MiB at 4 MiB/s, a 2 s unverified first pass (8 s over 32 MiB).
      createGuest(c, 'a', guestSpec('vm3', { memoryMib: 128, bytesPerWorker: 8 << 20, rate: 4 << 20 })),
    ]);
    verified = { vm1: boots[0].at(-1)!.pagesVerified, vm2: boots[1].at(-1)!.pagesVerified };
  });
  afterAll(async () => {
    await c?.close();
  });

  const runCount = async (): Promise<number> => (await op.listRuns({ filter: undefined, pageSize: 1000, pageToken: '' })).runs.length;

  it('authorizes by role: a viewer reads but cannot submit, a node only registers and heartbeats', async () => {
    const viewer = c.client('viewer');
    const node = c.client('migd-node');
    expect((await viewer.listNodes({})).nodes.map((n) => n.host?.nodeId)).toEqual(['a', 'b']);
    await expect(viewer.submitPlan(migratePlan('viewer-1', 'vm1', 'b'))).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(viewer.cancelRun({ runId: 'x', reason: '' })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(node.listRuns({ filter: undefined, pageSize: 0, pageToken: '' })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await expect(op.registerNode({ host: undefined })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    await waitFor(() => c.coordinator.logs.some((l) => l.includes('permission denied') && l.includes('viewer') && l.includes('SubmitPlan')), 5000, 'the denial to be logged');
    expect(await runCount()).toBe(0);
    // Node certificates are bound to their node: b's may not speak for a, and this coordinator
    // (--require-node-identity) refuses the shared identity; a's record is untouched.
    const before = (await viewer.listNodes({})).nodes.find((n) => n.host?.nodeId === 'a')!.host!;
    const hijack = { ...before, managementAddress: '198.18.255.254:7001' };
    await expect(c.client(nodeIdentity('b')).registerNode({ host: hijack })).rejects.toMatchObject({ code: 'PERMISSION_DENIED', reason: 'NODE_IDENTITY_MISMATCH' });
    await expect(node.heartbeat({ host: hijack, vms: [] })).rejects.toMatchObject({ code: 'PERMISSION_DENIED', reason: 'NODE_IDENTITY_REQUIRED' });
    expect((await viewer.listNodes({})).nodes.find((n) => n.host?.nodeId === 'a')!.host!.managementAddress).toBe(before.managementAddress);
  });

  it('refuses bad input with the right codes and changes nothing', async () => {
    // A node that registers and then falls silent is marked down.
    ensurePki(c.certDir, [{ name: nodeIdentity('ghost') }]);
    const ghost = c.client(nodeIdentity('ghost'));
    const host = { ...c.tb.host('b') };
    await ghost.registerNode({
      host: { nodeId: 'ghost', managementAddress: `${host.mgmtAddress.replace(/\.\d+$/, '.250')}:7001`, migrationAddress: '198.19.255.250', memoryTotalBytes: 64 * 2 ** 30, memoryFreeBytes: 64 * 2 ** 30, cpus: 2, qemuVersion: '10.0.2', resolvedAccel: 3, migrationCapabilities: ['postcopy-ram'], labels: {}, machineTypes: [], networks: [] },
    });
    await waitFor(async () => (await op.listNodes({})).nodes.some((n) => n.host?.nodeId === 'ghost' && n.status === NodeStatus.NODE_STATUS_DOWN), 10_000, 'ghost to be marked down');

    const code = (p: Promise<unknown>): Promise<string> => p.then(() => 'OK', (err: { code?: string }) => err.code ?? String(err));
    expect(await code(op.submitPlan(migratePlan('', 'vm1', 'b')))).toBe('INVALID_ARGUMENT');
    expect(await code(op.submitPlan({ ...migratePlan('no-target', 'vm1', 'b'), target: undefined }))).toBe('INVALID_ARGUMENT');
    expect(await code(op.submitPlan(migratePlan('bad-1', 'nosuchvm', 'b')))).toBe('NOT_FOUND');
    expect(await code(op.submitPlan(migratePlan('bad-2', 'vm1', 'nosuchnode')))).toBe('NOT_FOUND');
    expect(await code(op.submitPlan(migratePlan('bad-3', 'vm1', 'a')))).toBe('FAILED_PRECONDITION');
    expect(await code(op.submitPlan(migratePlan('bad-4', 'vm1', 'ghost')))).toBe('FAILED_PRECONDITION');
    expect(await code(op.submitPlan(migratePlan('bad-5', 'vm1', 'b', { postcopy: { enabled: true, afterPasses: 1, afterMs: 0, onDemandOnly: false, preempt: true }, multifd: { enabled: true, channels: 2, compression: MultifdCompression.MULTIFD_COMPRESSION_NONE, compressionLevel: 0 } })))).toBe('INVALID_ARGUMENT');
    expect(await code(op.submitPlan(migratePlan('bad-6', 'vm1', 'b', { kind: PolicyKind.POLICY_KIND_ADAPTIVE, downtimeSteps: [{ afterPasses: 1, afterMs: 0, downtimeMs: 500 }] })))).toBe('INVALID_ARGUMENT');
    expect(await code(op.submitPlan(migratePlan('bad-7', 'vm1', 'b', { xbzrle: { enabled: false, cacheBytes: 1 << 20 } })))).toBe('INVALID_ARGUMENT');
    const drain = (key: string, nodeId: string, destinationNodeIds: string[] = []) => ({ ...migratePlan(key, '', ''), target: { $case: 'drain' as const, value: { nodeId, destinationNodeIds } } });
    expect(await code(op.submitPlan(drain('bad-8', 'nosuchnode')))).toBe('NOT_FOUND');
    expect(await code(op.submitPlan(drain('bad-9', 'a', ['ghost'])))).toBe('RESOURCE_EXHAUSTED');
    expect(await code(op.submitPlan(drain('bad-10', 'ghost')))).toBe('FAILED_PRECONDITION');
    const vmReq = (name: string, nodeId: string): CoordinatorServiceCreateVmRequest => ({ spec: guestSpec(name, { memoryMib: 128 }), nodeId });
    expect(await code(op.createVm(vmReq('vm1', '')))).toBe('ALREADY_EXISTS');
    expect(await code(op.createVm(vmReq('new1', 'ghost')))).toBe('FAILED_PRECONDITION');
    expect(await code(op.createVm(vmReq('new1', 'nosuchnode')))).toBe('NOT_FOUND');
    // NICs: no node of this cluster maps a network (no --network), and a malformed MAC.
    const withNic = (nodeId: string, mac = ''): CoordinatorServiceCreateVmRequest => ({ ...vmReq('new1', nodeId), spec: { ...vmReq('new1', nodeId).spec!, nics: [{ network: 'vm', mac, guestIp: '' }] } });
    expect(await code(op.createVm(withNic('')))).toBe('INVALID_ARGUMENT');
    expect(await code(op.createVm(withNic('a')))).toBe('INVALID_ARGUMENT');
    expect(await code(op.createVm(withNic('a', '01:00:5e:00:00:01')))).toBe('INVALID_ARGUMENT');
    expect(await code(op.getRun({ runId: 'nosuchrun' }))).toBe('NOT_FOUND');
    expect(await code(op.getPlan({ planId: 'nosuchplan' }))).toBe('NOT_FOUND');
    expect(await code(op.getRunTimeline({ runId: 'nosuchrun' }))).toBe('NOT_FOUND');
    expect(await code(op.cancelRun({ runId: 'nosuchrun', reason: '' }))).toBe('NOT_FOUND');
    expect(await code(op.adjustRun({ runId: 'nosuchrun', reason: '' }))).toBe('INVALID_ARGUMENT');
    expect(await code(op.listRuns({ filter: undefined, pageSize: 0, pageToken: 'garbage' }))).toBe('INVALID_ARGUMENT');
    expect(await code(op.listRuns({ filter: { vmName: '', nodeId: '', states: [], policyKinds: [], createdAfter: new Date(2000), createdBefore: new Date(1000), planId: '', runIds: [], label: '' }, pageSize: 0, pageToken: '' }))).toBe('INVALID_ARGUMENT');
    const watchCode = async (scope: Parameters<CoordinatorClient['watch']>[0]['scope']): Promise<string> => {
      try {
        for await (const _ of op.watch({ scope, statesOnly: false })) break;
        return 'OK';
      } catch (err) {
        return (err as { code: string }).code;
      }
    };
    expect(await watchCode(undefined)).toBe('INVALID_ARGUMENT');
    expect(await watchCode({ $case: 'runId', value: 'nosuchrun' })).toBe('NOT_FOUND');

    // Nothing changed: no run, no plan stored under the refused keys, no new VM.
    expect(await runCount()).toBe(0);
    const again = await op.submitPlan(migratePlan('bad-3', 'vm1', 'b'));
    expect(again.existing).toBe(false); // the key of a refused request was not used up
    const run = await waitForRun(op, again.plan!.migrations[0]!.runId);
    expect(run.state).toBe(S.MIGRATION_STATE_SUCCEEDED);
    // Back to a for the next case.
    const back = await op.submitPlan(migratePlan('bad-3-back', 'vm1', 'a'));
    expect((await waitForRun(op, back.plan!.migrations[0]!.runId)).state).toBe(S.MIGRATION_STATE_SUCCEEDED);
    expect((await op.listVms({ nodeId: '' })).vms.map((v) => v.spec?.name)).not.toContain('new1');
    verified['vm1'] = (await waitForGuest(c.nodeClients['a']!, 'vm1', 2, 30_000, (s) => s.pagesVerified > verified['vm1']!)).at(-1)!.pagesVerified;
  });

  it('migrates one VM through the plan API: run succeeded, events on NATS and Watch, timeline, idempotent resubmission', async () => {
    const before = await runCount();
    // The whole cluster, live, states only.
    const cluster: Event[] = [];
    const clusterAc = new AbortController();
    const clusterWatch = (async () => {
      for await (const m of op.watch({ scope: { $case: 'cluster', value: true }, statesOnly: true }, { signal: clusterAc.signal })) cluster.push(m.event!);
    })().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 200));
    const res = await op.submitPlan(migratePlan('single-1', 'vm1', 'b', undefined, { label: 'single' }));
    expect(res.existing).toBe(false);
    const plan = res.plan!;
    expect(plan.migrations).toHaveLength(1);
    const runId = plan.migrations[0]!.runId;
    expect(plan.migrations[0]).toMatchObject({ vmName: 'vm1', sourceNodeId: 'a', destinationNodeId: 'b' });

    const watched: Event[] = [];
    const watching = (async () => {
      for await (const m of op.watch({ scope: { $case: 'runId', value: runId }, statesOnly: false })) watched.push(m.event!);
    })();

    // The same key and request return the same plan and start nothing; the same key for another
    // request is refused; another key for a migrating VM is refused.
    const again = await op.submitPlan(migratePlan('single-1', 'vm1', 'b', undefined, { label: 'single' }));
    expect(again.existing).toBe(true);
    expect(again.plan!.id).toBe(plan.id);
    expect(again.plan!.migrations[0]!.runId).toBe(runId);
    await expect(op.submitPlan(migratePlan('single-1', 'vm1', 'b'))).rejects.toMatchObject({ code: 'ALREADY_EXISTS', reason: 'IDEMPOTENCY_KEY_REUSED' });
    await expect(op.submitPlan(migratePlan('single-2', 'vm1', 'b'))).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });

    const run = await waitForRun(op, runId);
    expect(run.state).toBe(S.MIGRATION_STATE_SUCCEEDED);
    expect(run.stats!.integrityErrors).toBe(0);
    expect(run.stats!.totalTimeMs).toBeGreaterThan(0);
    const states = run.transitions.map((t) => t.to);
    expect(states[0]).toBe(S.MIGRATION_STATE_QUEUED);
    expect(states).toContain(S.MIGRATION_STATE_PREPARING);
    expect(states).toContain(S.MIGRATION_STATE_VERIFYING);
    expect(states.at(-1)).toBe(S.MIGRATION_STATE_SUCCEEDED);
    expect(states.filter((s) => s === S.MIGRATION_STATE_PREPARING)).toHaveLength(1);
    console.log(`single migration through the coordinator: total ${run.stats!.totalTimeMs} ms, downtime ${run.stats!.downtimeMs} ms, ${run.stats!.passes} passes, run ${run.finishedAt!.getTime() - run.startedAt!.getTime()} ms from dispatch to verified`);

    expect((await op.submitPlan(migratePlan('single-1', 'vm1', 'b', undefined, { label: 'single' }))).existing).toBe(true);
    expect(await runCount()).toBe(before + 1);
    expect((await op.getPlan({ planId: plan.id })).plan!.state).toBe(PlanState.PLAN_STATE_SUCCEEDED);

    // The guest runs on b, intact, and the coordinator knows it.
    const after = await waitForGuest(c.nodeClients['b']!, 'vm1', 2, 30_000, (s) => s.pagesVerified > verified['vm1']!);
    expect(after.at(-1)!.integrityErrors).toBe(0);
    expect((await op.listVms({ nodeId: 'b' })).vms.some((v) => v.spec?.name === 'vm1')).toBe(true);
    await expect(c.nodeClients['a']!.getVm({ name: 'vm1' })).rejects.toMatchObject({ code: 'NOT_FOUND' });

    // Timeline in the store.
    const tl = await op.getRunTimeline({ runId });
    expect(tl.progress.length).toBeGreaterThan(0);
    expect(tl.hostCpu.length).toBe(tl.progress.length);
    expect(tl.guest.length).toBeGreaterThan(0);
    expect(tl.run!.transitions.length).toBe(run.transitions.length);

    // Events on NATS, replayed from JetStream.
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), 15_000);
    const onNats: Event[] = [];
    for await (const ev of await subscribeRun(c.nc, runId, { fromStart: true, untilCompleted: true, signal: ac.signal })) onNats.push(ev);
    clearTimeout(timer);
    expect(onNats.at(-1)!.payload?.$case).toBe('runCompleted');
    expect(onNats.some((e) => e.payload?.$case === 'runProgress')).toBe(true);
    const natsStates = onNats.flatMap((e) => (e.payload?.$case === 'runState' ? [e.payload.value.change!.to] : []));
    expect(natsStates).toEqual(states);
    const seqs = onNats.map((e) => e.runSequence);
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y));

    // Watch (in-process bus) saw the same events, and a late Watch replays them and ends.
    await watching;
    expect(watched.map((e) => e.id)).toEqual(onNats.map((e) => e.id));
    const late: Event[] = [];
    for await (const m of op.watch({ scope: { $case: 'runId', value: runId }, statesOnly: true })) late.push(m.event!);
    expect(late.some((e) => e.payload?.$case === 'runProgress')).toBe(false);
    expect(late.map((e) => e.id)).toEqual(onNats.filter((e) => e.payload?.$case !== 'runProgress' && e.payload?.$case !== 'runGuest').map((e) => e.id));

    await waitFor(() => cluster.some((e) => e.payload?.$case === 'planState' && e.payload.value.state === 'PLAN_STATE_SUCCEEDED'), 10_000, 'the plan event on the cluster watch');
    clusterAc.abort();
    await clusterWatch;
    const kinds = new Set(cluster.map((e) => e.payload?.$case));
    expect(kinds).toContain('planState');
    expect(kinds).toContain('runState');
    expect(kinds).toContain('runCompleted');
    expect(kinds).toContain('vmChanged');
    expect(kinds.has('runProgress') || kinds.has('runGuest')).toBe(false);

    // History queries.
    const cmp = await op.comparePolicies({ filter: { vmName: '', nodeId: '', states: [], policyKinds: [], createdAfter: undefined, createdBefore: undefined, planId: '', runIds: [], label: 'single' } });
    expect(cmp.summaries).toHaveLength(1);
    expect(cmp.summaries[0]).toMatchObject({ runs: 1, succeeded: 1, label: 'single' });
    const csv = await op.exportRuns({ filter: { vmName: '', nodeId: '', states: [], policyKinds: [], createdAfter: undefined, createdBefore: undefined, planId: '', runIds: [runId], label: '' }, format: ExportFormat.EXPORT_FORMAT_CSV, pageSize: 0, pageToken: '' });
    expect(csv.contentType).toContain('text/csv');
    expect(Buffer.from(csv.data).toString().split('\n').length).toBeGreaterThan(2);
    verified['vm1'] = after.at(-1)!.pagesVerified;
  });

  it('refuses a plan no node can take (RESOURCE_EXHAUSTED)', async () => {
    const before = await runCount();
    // vm1 runs on b; vm2 must be kept apart from it, and b is the only other node.
    await expect(op.submitPlan(migratePlan('apart-1', 'vm2', '', undefined, { antiAffinityVmNames: ['vm1', 'vm2'] }))).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
    expect(await runCount()).toBe(before);
  });

  it('cancels a queued run without touching a node, cancels a running one, and forces one to complete', async () => {
    await c.tb.shape('a', { rateMbit: 80 });
    try {
      // vm2's 16 MiB hot set cannot converge at 300 ms on 80 Mbit/s (≈ 1.7 s to send it once, as
      // 8 MiB on 40 Mbit/s, with the first pass over the guest's memory in half the time): it
      // keeps the a→b link busy.
      const p1 = (await op.submitPlan(migratePlan('cancel-1', 'vm2', 'b', { kind: PolicyKind.POLICY_KIND_FIXED, downtimeLimitMs: 300 }))).plan!;
      const r1 = p1.migrations[0]!.runId;
      await waitForRunState(op, r1, S.MIGRATION_STATE_PRECOPY);
      // The link limit (1 per a→b) keeps the next one queued.
      const p2 = (await op.submitPlan(migratePlan('cancel-2', 'vm3', 'b'))).plan!;
      const r2 = p2.migrations[0]!.runId;
      expect((await op.getRun({ runId: r2 })).run!.state).toBe(S.MIGRATION_STATE_QUEUED);
      // A second plan for a VM that is migrating is refused, and stores nothing.
      await expect(op.submitPlan(migratePlan('cancel-dup', 'vm2', 'b'))).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', reason: 'VM_ALREADY_MIGRATING' });
      await expect(op.submitPlan(migratePlan('cancel-dup-2', 'vm3', 'b'))).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', reason: 'VM_ALREADY_MIGRATING' });
      const cancelled = (await op.cancelRun({ runId: r2, reason: 'not needed' })).run!;
      expect(cancelled.state).toBe(S.MIGRATION_STATE_CANCELLED);
      expect(cancelled.transitions.map((t) => t.to)).toEqual([S.MIGRATION_STATE_QUEUED, S.MIGRATION_STATE_CANCELLED]);
      expect(cancelled.actions).toMatchObject([{ kind: PolicyActionKind.POLICY_ACTION_KIND_ABORT, actor: 'user:operator', reason: 'not needed' }]);
      await expect(c.nodeClients['a']!.getMigration({ runId: r2 })).rejects.toMatchObject({ code: 'NOT_FOUND' });
      expect((await op.getPlan({ planId: p2.id })).plan!.state).toBe(PlanState.PLAN_STATE_FAILED);
      await expect(op.cancelRun({ runId: r2, reason: '' })).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });

      // Cancel the running one: the node cancels, the guest stays on a.
      await op.cancelRun({ runId: r1, reason: 'maintenance window over' });
      const run1 = await waitForRun(op, r1);
      expect(run1.state).toBe(S.MIGRATION_STATE_CANCELLED);
      expect(run1.actions.some((a) => a.kind === PolicyActionKind.POLICY_ACTION_KIND_ABORT && a.actor === 'user:operator')).toBe(true);
      expect((await c.nodeClients['a']!.getVm({ name: 'vm2' })).vm!.state).toBe(2 /* RUNNING */);

      // Again, and force it to complete: without post-copy the node pauses the guest.
      const p3 = (await op.submitPlan(migratePlan('force-1', 'vm2', 'b', { kind: PolicyKind.POLICY_KIND_FIXED, downtimeLimitMs: 300 }))).plan!;
      const r3 = p3.migrations[0]!.runId;
      await waitFor(async () => (await op.getRunTimeline({ runId: r3 })).progress.some((s) => s.pass >= 3), 90_000, 'pre-copy pass 3');
      await expect(op.adjustRun({ runId: r3, downtimeLimitMs: 0, reason: '' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      await op.adjustRun({ runId: r3, maxBandwidthBytesPerSec: 100 << 20, reason: 'lift the cap' });
      await op.forceCompleteRun({ runId: r3, reason: 'deadline' });
      const run3 = await waitForRun(op, r3);
      expect(run3.state).toBe(S.MIGRATION_STATE_SUCCEEDED);
      expect(run3.actions.map((a) => [a.kind, a.actor])).toEqual(
        expect.arrayContaining([
          [PolicyActionKind.POLICY_ACTION_KIND_SET_BANDWIDTH, 'user:operator'],
          [PolicyActionKind.POLICY_ACTION_KIND_PAUSE_GUEST, 'user:operator'],
        ]),
      );
      expect(run3.stats!.integrityErrors).toBe(0);
      console.log(`force-complete: total ${run3.stats!.totalTimeMs} ms, downtime ${run3.stats!.downtimeMs} ms after ${run3.stats!.passes} passes`);
      const after = await waitForGuest(c.nodeClients['b']!, 'vm2', 2, 30_000, (s) => s.pagesVerified > verified['vm2']!);
      expect(after.at(-1)!.integrityErrors).toBe(0);
    } finally {
      await c.tb.unshape('a').catch(() => undefined);
    }
  });
});
