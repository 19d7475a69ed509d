import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MigrationState, PolicyActionKind, type GuestPerfSample } from '../../../services/shared/gen/migd/v1/common.js';
import { guestTimeLost } from '../../../services/shared/guest/harm.js';
import { followMigration, guestSpec, policy, resetNodeCluster, startMigration, startNodeCluster, waitForGuest, type MigrationTrace, type NodeCluster } from '../../helpers/node-cluster.js';

// Honest harm on real QEMU (TCG): the guest's own clock shows every pause in full, and post-copy
// stalls are measured by the destination QEMU (capability postcopy-blocktime).
describe('node daemons: guest time lost, measured from the guest', () => {
  let c: NodeCluster;
  let n = 0;
  beforeAll(async () => {
    c = await startNodeCluster(['a', 'b']);
  });
  afterAll(async () => {
    await c?.close();
  });
  afterEach(async () => {
    if (c) await resetNodeCluster(c, [`harm${n}`]);
  });

  const dest = () => ({ nodeId: 'b', managementAddress: c.nodes['b']!.address, migrationAddress: c.tb.host('b').migrationAddress });
  const guestOf = (t: MigrationTrace): GuestPerfSample[] => t.updates.flatMap((u) => (u.update?.$case === 'guest' ? [u.update.value] : []));
  const clocks = (samples: readonly GuestPerfSample[]) =>
    samples.filter((s) => s.time).map((s) => ({ hostMs: s.time!.getTime(), guestMonoMs: s.guestMonoMs, msPerGib: s.worker === -1 ? s.msPerGib : 0 }));
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

  it('a forced pause counts in full: the guest clock stands still from the pause until the destination resumes it', async () => {
    const name = `harm${++n}`;
    // 32 MiB rewritten as fast as the vCPU goes over 100 Mbit/s: pre-copy never converges.
    const before = await (async () => {
      await c.clients['a']!.createVm({ spec: guestSpec(name, { bytesPerWorker: 32 << 20 }) });
      return waitForGuest(c.clients['a']!, name, 8, 30_000, (s) => s.pagesVerified > 0);
    })();
    await c.tb.shape('a', { rateMbit: 100 });
    const runId = `run-harm-pause-${n}`;
    await startMigration(c, 'a', { runId, vmName: name, destination: dest(), policy: policy({ downtimeLimitMs: 100 }) });
    let forced = false;
    const trace = await followMigration(c.clients['a']!, runId, async (u) => {
      if (forced || u.update?.$case !== 'progress' || u.update.value.pass < 3) return;
      forced = true;
      await c.clients['a']!.forceComplete({ runId, actor: 'test', reason: 'force-complete without post-copy: pause the guest' });
    });
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    const pause = trace.result.actions.find((a) => a.kind === PolicyActionKind.POLICY_ACTION_KIND_PAUSE_GUEST);
    expect(pause?.time).toBeDefined();
    const completed = trace.updates.flatMap((u) => (u.update?.$case === 'stateChange' && u.update.value.to === MigrationState.MIGRATION_STATE_VERIFYING ? [u.update.value.time!.getTime()] : []))[0]!;
    // The guest cannot have run between the pause and QEMU's completion (nor until the handover).
    const mustHaveStopped = completed - pause!.time!.getTime();
    const after = await waitForGuest(c.clients['b']!, name, 3, 30_000);
    const samples = [...before, ...guestOf(trace), ...after];
    const baseline = median(before.filter((s) => s.worker === -1 && s.msPerGib > 0).map((s) => s.msPerGib));
    const lost = guestTimeLost(clocks(samples), baseline, trace.result.startedAt!.getTime(), trace.result.finishedAt!.getTime());
    console.log(
      `forced pause: pause→completion ${mustHaveStopped} ms, QEMU downtime ${trace.result.stats!.downtimeMs} ms; guest clock stopped ${lost.stoppedMs.toFixed(0)} ms (longest ${lost.longestStopMs.toFixed(0)}), lost ${lost.lostMs.toFixed(0)} ms`,
    );
    expect(mustHaveStopped).toBeGreaterThan(300);
    // Counted in full (the host's read jitter at either end is a few ms; allow 150).
    expect(lost.longestStopMs).toBeGreaterThanOrEqual(mustHaveStopped - 150);
    expect(lost.stoppedMs).toBeGreaterThanOrEqual(mustHaveStopped - 150);
    // …and not invented: no longer than the whole migration.
    expect(lost.stoppedMs).toBeLessThanOrEqual(trace.result.finishedAt!.getTime() - trace.result.startedAt!.getTime());
    expect(trace.result.stats!.integrityErrors).toBe(0);
  });

  it('post-copy reports its blocktime (all vCPUs and per vCPU), and the guest clock sees the stalls', async () => {
    const name = `harm${++n}`;
    await c.clients['a']!.createVm({ spec: guestSpec(name, { workers: 2, bytesPerWorker: 32 << 20 }) });
    const before = await waitForGuest(c.clients['a']!, name, 8, 30_000, (s) => s.pagesVerified > 0);
    await c.tb.shape('a', { rateMbit: 200 });
    const runId = `run-harm-pc-${n}`;
    await startMigration(c, 'a', { runId, vmName: name, destination: dest(), policy: policy({ postcopy: { enabled: true, afterPasses: 1, afterMs: 0, onDemandOnly: false, preempt: true } }) });
    const trace = await followMigration(c.clients['a']!, runId);
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(trace.states).toContain(MigrationState.MIGRATION_STATE_POSTCOPY);
    const stats = trace.result.stats!;
    const after = await waitForGuest(c.clients['b']!, name, 3, 30_000);
    const baseline = median(before.filter((s) => s.worker === -1 && s.msPerGib > 0).map((s) => s.msPerGib));
    const lost = guestTimeLost(clocks([...before, ...guestOf(trace), ...after]), baseline, trace.result.startedAt!.getTime(), trace.result.finishedAt!.getTime());
    console.log(
      `post-copy: ${stats.postcopyRequests} page requests, blocktime ${stats.postcopyBlocktimeMs} ms (per vCPU ${stats.postcopyVcpuBlocktimeMs.join(', ')}); guest clock: stopped ${lost.stoppedMs.toFixed(0)} ms, slowed ${lost.slowedMs.toFixed(0)} ms, lost ${lost.lostMs.toFixed(0)} ms`,
    );
    expect(stats.postcopyRequests).toBeGreaterThan(0);
    // One vCPU: one per-vCPU figure, and with page requests served the vCPU was blocked a while.
    expect(stats.postcopyVcpuBlocktimeMs).toHaveLength(1);
    expect(stats.postcopyBlocktimeMs).toBeGreaterThan(0);
    expect(stats.postcopyVcpuBlocktimeMs[0]).toBeGreaterThanOrEqual(stats.postcopyBlocktimeMs);
    // The guest felt it: time lost while its clock ran (stalls) on top of the switch-over.
    expect(lost.slowedMs).toBeGreaterThan(0);
    expect(stats.integrityErrors).toBe(0);
  });
});
