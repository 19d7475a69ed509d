import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MigrationState, MultifdCompression, PolicyActionKind, PolicyKind, WorkloadPattern } from '../../../services/shared/gen/migd/v1/common.js';
import { followMigration, guestSpec, policy, resetNodeCluster, startMigration, startNodeCluster, waitForGuest, type NodeCluster } from '../../helpers/node-cluster.js';

// Every mode of the node daemon on real QEMU (TCG) between two namespaces. Each case migrates a
// guest running the verifying workload and asserts it keeps running on the destination with
// integrity errors = 0.
describe('node daemons: migration modes', () => {
  let c: NodeCluster;
  let n = 0;
  beforeAll(async () => {
    c = await startNodeCluster(['a', 'b']);
  });
  afterAll(async () => {
    await c?.close();
  });
  // Each case's VM (vm<n>) is removed, a migration it is in cancelled first, and the link unshaped,
  // also when the case fails.
  afterEach(async () => {
    if (c) await resetNodeCluster(c, [`vm${n}`]);
  });
  const onB = async (name: string) => (await c.clients['b']!.listVms({})).vms.filter((v) => v.spec?.name === name);

  const dest = () => ({ nodeId: 'b', managementAddress: c.nodes['b']!.address, migrationAddress: c.tb.host('b').migrationAddress });

  async function bootGuest(name: string, spec = guestSpec(name)) {
    await c.clients['a']!.createVm({ spec });
    return waitForGuest(c.clients['a']!, name, 2, 30_000, (s) => s.pagesVerified > 0);
  }

  async function assertOnDestination(name: string, verifiedBefore: number) {
    const after = await waitForGuest(c.clients['b']!, name, 2, 30_000, (s) => s.pagesVerified > verifiedBefore);
    expect(after.at(-1)!.integrityErrors).toBe(0);
    await expect(c.clients['a']!.getVm({ name })).rejects.toMatchObject({ code: 'NOT_FOUND' });
  }

  it('slow link: pre-copy does not converge at 300 ms, converges after raising the downtime limit live', async () => {
    const name = `vm${++n}`;
    // 16 MiB hot set rewritten constantly; 80 Mbit/s ≈ 10 MB/s: the hot set alone needs ~1.7 s of
    // downtime (as 8 MiB on 40 Mbit/s, but the first pass over the guest's memory takes half as long).
    const before = await bootGuest(name, guestSpec(name, { pattern: WorkloadPattern.WORKLOAD_PATTERN_HOTCOLD, bytesPerWorker: 32 << 20, hotBytes: 16 << 20 }));
    await c.tb.shape('a', { rateMbit: 80 });
    const runId = `run-slow-${n}`;
    await startMigration(c, 'a', { runId, vmName: name, destination: dest(), policy: policy({ downtimeLimitMs: 300 }) });
    let raised = false;
    let passesAt300 = 0;
    const trace = await followMigration(c.clients['a']!, runId, async (u) => {
      if (u.update?.$case !== 'progress' || raised) return;
      passesAt300 = u.update.value.pass;
      // several passes without converging at 300 ms: raise the limit live
      if (u.update.value.pass >= 4) {
        raised = true;
        await c.clients['a']!.adjustMigration({ runId, downtimeLimitMs: 5000, enableAutoConverge: false, actor: 'test', reason: 'not converging' });
      }
    });
    expect(passesAt300).toBeGreaterThanOrEqual(4);
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(trace.result.actions.some((a) => a.kind === PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME && a.value === 5000)).toBe(true);
    expect(trace.result.stats!.integrityErrors).toBe(0);
    console.log(`slow link: ${trace.result.stats!.passes} passes, total ${trace.result.stats!.totalTimeMs} ms, downtime ${trace.result.stats!.downtimeMs} ms`);
    await assertOnDestination(name, before.at(-1)!.pagesVerified);
  });

  it('an adaptive migration\'s samples carry the dirty set: a 16 MiB hot set reads as most of it within 100 ms', async () => {
    const name = `vm${++n}`;
    await bootGuest(name, guestSpec(name, { pattern: WorkloadPattern.WORKLOAD_PATTERN_HOTCOLD, bytesPerWorker: 32 << 20, hotBytes: 16 << 20 }));
    await c.tb.shape('a', { rateMbit: 80 });
    const runId = `run-set-${n}`;
    await startMigration(c, 'a', { runId, vmName: name, destination: dest(), policy: policy({ kind: PolicyKind.POLICY_KIND_ADAPTIVE, downtimeLimitMs: 300 }) });
    // The source measures during pre-copy only (issue 14's start delay: QEMU's migrate goes out at
    // once): the 100 ms set first, then the 1 s estimate. Followed until both are in.
    let seen: { set: number; windowMs: number; elapsedMs: number } | undefined;
    let estimated: { bps: number; elapsedMs: number } | undefined;
    const trace = await followMigration(c.clients['a']!, runId, async (u) => {
      if (u.update?.$case !== 'progress' || estimated) return;
      const s = u.update.value;
      if (!seen && s.dirtySetBytes > 0) seen = { set: s.dirtySetBytes, windowMs: s.dirtySetWindowMs, elapsedMs: s.elapsedMs };
      if (s.estimatedDirtyBytesPerSec > 0) {
        estimated = { bps: s.estimatedDirtyBytesPerSec, elapsedMs: s.elapsedMs };
        await c.clients['a']!.cancelMigration({ runId, actor: 'test', reason: 'dirty set and estimate seen' }).catch(() => undefined);
      }
    });
    expect(seen, 'no progress sample carried a dirty set').toBeDefined();
    expect(estimated, 'no progress sample carried a dirty-rate estimate').toBeDefined();
    // The figures, not timed assertions (a shared machine): when each first came, since the dispatch.
    console.log(`dirty set: ${(seen!.set / 2 ** 20).toFixed(1)} MiB within ${seen!.windowMs} ms, first at ${seen!.elapsedMs} ms; 1 s estimate ${(estimated!.bps / 2 ** 20).toFixed(1)} MiB/s, first at ${estimated!.elapsedMs} ms`);
    // The set is measured first in each round: no sample carries the estimate before one carries the set.
    expect(seen!.elapsedMs).toBeLessThanOrEqual(estimated!.elapsedMs);
    expect(seen!.windowMs).toBe(100);
    // Page sampling reads a lower bound; the hot set is rewritten many times within 100 ms under TCG.
    expect(seen!.set).toBeGreaterThanOrEqual(0.6 * (16 << 20));
    expect(seen!.set).toBeLessThanOrEqual(40 << 20);
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_CANCELLED);
  });

  it('auto-converge raises the throttle pass after pass and completes', async () => {
    const name = `vm${++n}`;
    // The guest dirties 48 MiB/s against a 160 Mbit/s (≈ 20 MB/s) link: the ratio of 24 MiB/s on
    // 80 Mbit/s, so the same passes and throttle steps, each in half the time.
    const before = await bootGuest(name, guestSpec(name, { rate: 48 << 20 }));
    await c.tb.shape('a', { rateMbit: 160 });
    const runId = `run-ac-${n}`;
    // Steps of 50 → 75 → 99: still several raises, in fewer passes than 30 → 50 → 70 → 90 → 99 (45 s).
    await startMigration(c, 'a', { runId, vmName: name, destination: dest(), policy: policy({ autoConverge: { enabled: true, initialPct: 50, incrementPct: 25, maxPct: 99 } }) });
    const throttles: number[] = [];
    const trace = await followMigration(c.clients['a']!, runId, (u) => {
      if (u.update?.$case === 'progress') throttles.push(u.update.value.throttlePct);
    });
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    const distinct = [...new Set(throttles.filter((t) => t > 0))];
    expect(distinct.length).toBeGreaterThanOrEqual(2);
    expect(distinct).toEqual([...distinct].sort((x, y) => x - y));
    expect(trace.result.stats!.maxThrottlePct).toBeGreaterThanOrEqual(50);
    console.log(`auto-converge: throttle ${distinct.join('→')} %, total ${trace.result.stats!.totalTimeMs} ms, downtime ${trace.result.stats!.downtimeMs} ms`);
    await assertOnDestination(name, before.at(-1)!.pagesVerified);
  });

  it('post-copy with preempt after one pass completes, with downtime and page requests reported', async () => {
    const name = `vm${++n}`;
    const before = await bootGuest(name, guestSpec(name, { workers: 2, bytesPerWorker: 32 << 20 }));
    await c.tb.shape('a', { rateMbit: 400 });
    const runId = `run-pc-${n}`;
    await startMigration(c, 'a', { runId, vmName: name, destination: dest(), policy: policy({ postcopy: { enabled: true, afterPasses: 1, afterMs: 0, onDemandOnly: false, preempt: true } }) });
    const trace = await followMigration(c.clients['a']!, runId);
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(trace.states).toContain(MigrationState.MIGRATION_STATE_POSTCOPY);
    expect(trace.result.actions.some((a) => a.kind === PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY)).toBe(true);
    // The switch-over pause only (0 when under 1 ms), never QEMU's quirk of reporting the whole
    // post-copy phase (see postcopyDowntimeMs). How short the pause is is a figure (printed; the
    // lab measures it), not a timed assertion: the bound is the post-copy phase as the source saw
    // it (half of it, at least 1 s), which a load that stretches the pause stretches too.
    const changes = trace.updates.flatMap((u) => (u.update?.$case === 'stateChange' ? [u.update.value] : []));
    const enteredMs = changes.find((x) => x.to === MigrationState.MIGRATION_STATE_POSTCOPY)!.time!.getTime();
    const leftMs = (changes.find((x) => x.from === MigrationState.MIGRATION_STATE_POSTCOPY)?.time ?? trace.result.finishedAt!).getTime();
    const postcopyPhaseMs = leftMs - enteredMs;
    expect(trace.result.stats!.downtimeMs).toBeGreaterThanOrEqual(0);
    expect(trace.result.stats!.downtimeMs).toBeLessThan(Math.max(1000, postcopyPhaseMs / 2));
    expect(trace.result.stats!.postcopyRequests).toBeGreaterThan(0);
    console.log(`post-copy+preempt: total ${trace.result.stats!.totalTimeMs} ms, downtime ${trace.result.stats!.downtimeMs} ms, post-copy phase ${postcopyPhaseMs} ms, page requests ${trace.result.stats!.postcopyRequests}`);
    await assertOnDestination(name, before.at(-1)!.pagesVerified);
  });

  it('multifd with zstd completes; multifd with post-copy is refused before any QEMU is touched', async () => {
    const name = `vm${++n}`;
    const before = await bootGuest(name, guestSpec(name, { rate: 8 << 20 }));
    await expect(
      startMigration(c, 'a', { runId: `run-bad-${n}`, vmName: name, destination: dest(), policy: policy({ multifd: { enabled: true, channels: 2, compression: 0, compressionLevel: 0 }, postcopy: { enabled: true, afterPasses: 1, afterMs: 0, onDemandOnly: false } }) }),
    ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/multifd cannot be combined with post-copy/) });
    expect(await onB(name)).toHaveLength(0);
    const runId = `run-multifd-${n}`;
    await startMigration(c, 'a', { runId, vmName: name, destination: dest(), policy: policy({ multifd: { enabled: true, channels: 4, compression: MultifdCompression.MULTIFD_COMPRESSION_ZSTD, compressionLevel: 1 } }) });
    const trace = await followMigration(c.clients['a']!, runId);
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    console.log(`multifd(4, zstd): total ${trace.result.stats!.totalTimeMs} ms, downtime ${trace.result.stats!.downtimeMs} ms`);
    await assertOnDestination(name, before.at(-1)!.pagesVerified);
  });

  it('xbzrle completes on a compressible workload', async () => {
    const name = `vm${++n}`;
    const before = await bootGuest(name, guestSpec(name, { pattern: WorkloadPattern.WORKLOAD_PATTERN_COMPRESSIBLE, rate: 8 << 20 }));
    await c.tb.shape('a', { rateMbit: 200 });
    const runId = `run-xbzrle-${n}`;
    await startMigration(c, 'a', { runId, vmName: name, destination: dest(), policy: policy({ xbzrle: { enabled: true, cacheBytes: 32 << 20 }, downtimeLimitMs: 500 }) });
    const trace = await followMigration(c.clients['a']!, runId);
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    console.log(`xbzrle: total ${trace.result.stats!.totalTimeMs} ms, downtime ${trace.result.stats!.downtimeMs} ms, passes ${trace.result.stats!.passes}`);
    await assertOnDestination(name, before.at(-1)!.pagesVerified);
  });

  it('a cancelled migration leaves the source running and no destination QEMU', async () => {
    const name = `vm${++n}`;
    await bootGuest(name);
    await c.tb.shape('a', { rateMbit: 20 });
    const runId = `run-cancel-${n}`;
    await startMigration(c, 'a', { runId, vmName: name, destination: dest(), policy: policy({}) });
    const trace = await followMigration(c.clients['a']!, runId, async (u) => {
      if (u.update?.$case === 'progress' && u.update.value.transferredBytes > 0) await c.clients['a']!.cancelMigration({ runId, actor: 'test', reason: 'testing cancel' }).catch(() => undefined);
    });
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_CANCELLED);
    expect(await onB(name)).toHaveLength(0);
    const vm = await c.clients['a']!.getVm({ name });
    expect(vm.vm?.state).toBe(2); // running
    const after = await waitForGuest(c.clients['a']!, name, 2);
    expect(after.at(-1)!.integrityErrors).toBe(0);
  });
});
