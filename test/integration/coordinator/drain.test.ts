import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrationState as S, WorkloadPattern } from '../../../services/shared/gen/migd/v1/common.js';
import { PlanState, type Run } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { guestSpec, waitForGuest } from '../../helpers/node-cluster.js';
import { createGuest, migratePlan, startCoordinatorCluster, waitFor, waitForPlan, waitForRun, waitForRunState, type CoordinatorCluster } from '../../helpers/coordinator-cluster.js';
import { qemuPidsMatching } from '../../helpers/qemu-process.js';

/** When a run's stream ended: its source reported QEMU's completion (VERIFYING), else its end. */
const streamEnd = (r: Run): number => (r.transitions.find((t) => t.to === S.MIGRATION_STATE_VERIFYING)?.time ?? r.finishedAt!).getTime();

/**
 * When a run's stream began: QEMU's `migrate` (SETUP, else the first pre-copy/post-copy state).
 * A run dispatched held (issue 15 §4) starts (PREPARING) while the previous run on its link streams.
 */
const streamStart = (r: Run): number => {
  const t = r.transitions.find((x) => x.to === S.MIGRATION_STATE_SETUP || x.to === S.MIGRATION_STATE_PRECOPY || x.to === S.MIGRATION_STATE_POSTCOPY)?.time;
  return (t ?? r.finishedAt!).getTime();
};

/** The most intervals of `runs` overlapping at any instant, per key; `start`/`end` (default: the run's) bound each. */
function maxOverlap(runs: readonly Run[], key: (r: Run) => string, end: (r: Run) => number = (r) => r.finishedAt!.getTime(), start: (r: Run) => number = (r) => r.startedAt!.getTime()): Map<string, number> {
  const points = runs.flatMap((r) => [
    { k: key(r), t: start(r), d: 1 },
    { k: key(r), t: end(r), d: -1 },
  ]);
  // At equal times, ends before starts: a slot released and taken in the same millisecond is not an overlap.
  points.sort((a, b) => a.t - b.t || a.d - b.d);
  const now = new Map<string, number>();
  const max = new Map<string, number>();
  for (const p of points) {
    const v = (now.get(p.k) ?? 0) + p.d;
    now.set(p.k, v);
    max.set(p.k, Math.max(max.get(p.k) ?? 0, v));
  }
  return max;
}

// Draining a host through the coordinator: three small VMs leave a for b and c within the
// concurrency limits (2 outbound from a, 1 per link), and every guest arrives intact.
describe('coordinator: drain', () => {
  let c: CoordinatorCluster;
  const sizes: Record<string, number> = { d1: 128, d2: 160, d3: 192 };
  const verified: Record<string, number> = {};

  beforeAll(async () => {
    c = await startCoordinatorCluster(['a', 'b', 'c']);
    await Promise.all(
      Object.entries(sizes).map(async ([name, mib]) => {
        const s = await createGuest(c, 'a', guestSpec(name, { memoryMib: mib, bytesPerWorker: 24 << 20, rate: 4 << 20 }));
        verified[name] = s.at(-1)!.pagesVerified;
      }),
    );
  });
  afterAll(async () => {
    await c?.close();
  });

  it('drains a host within the per-link and per-source limits', async () => {
    const op = c.client();
    // Shaped so each migration takes a few seconds and the limits are visible in the record.
    for (const h of ['a']) await c.tb.shape(h, { rateMbit: 200 });
    const submitted = Date.now();
    const res = await op.submitPlan({ ...migratePlan('drain-a', '', ''), target: { $case: 'drain', value: { nodeId: 'a', destinationNodeIds: [] } } });
    const plan = res.plan!;
    expect(plan.migrations).toHaveLength(3);
    expect(new Set(plan.migrations.map((m) => m.vmName))).toEqual(new Set(Object.keys(sizes)));
    expect(plan.migrations.every((m) => m.sourceNodeId === 'a' && ['b', 'c'].includes(m.destinationNodeId))).toBe(true);
    expect(new Set(plan.migrations.map((m) => m.destinationNodeId)).size).toBe(2); // spread over both
    expect(plan.orderingReason).toMatch(/longest predicted/);
    console.log(`drain plan: ${plan.migrations.map((m) => `${m.order}:${m.vmName}→${m.destinationNodeId}`).join(', ')}; ${plan.orderingReason}`);

    const done = await waitForPlan(op, plan.id);
    expect(done.state).toBe(PlanState.PLAN_STATE_SUCCEEDED);
    const { runs } = await op.listRuns({ filter: { vmName: '', nodeId: '', states: [], policyKinds: [], createdAfter: undefined, createdBefore: undefined, planId: plan.id, runIds: [], label: '' }, pageSize: 100, pageToken: '' });
    expect(runs).toHaveLength(3);
    for (const r of runs) {
      expect(r.state).toBe(S.MIGRATION_STATE_SUCCEEDED);
      expect(r.stats!.integrityErrors).toBe(0);
    }

    // The limits, from the recorded start and finish times; a link counts streams (SETUP →
    // VERIFYING), the hosts count runs from their start (PREPARING) until their end.
    const perLink = maxOverlap(runs, (r) => `${r.sourceNodeId}->${r.destinationNodeId}`, streamEnd, streamStart);
    for (const [link, n] of perLink) expect(n, `link ${link}`).toBeLessThanOrEqual(1);
    expect(maxOverlap(runs, (r) => r.sourceNodeId).get('a')).toBeLessThanOrEqual(2);
    expect(Math.max(...maxOverlap(runs, (r) => r.destinationNodeId).values())).toBeLessThanOrEqual(2);
    // Two links, three VMs: two ran side by side, and the third waited for a slot.
    expect(maxOverlap(runs, (r) => r.sourceNodeId).get('a')).toBe(2);

    const first = Math.min(...runs.map((r) => r.startedAt!.getTime()));
    const last = Math.max(...runs.map((r) => r.finishedAt!.getTime()));
    const byStart = [...runs].sort((x, y) => x.startedAt!.getTime() - y.startedAt!.getTime());
    console.log(
      `drain makespan ${last - first} ms (${last - submitted} ms from submission): ` +
        byStart.map((r) => `${r.vmName}→${r.destinationNodeId} ${r.startedAt!.getTime() - first}..${r.finishedAt!.getTime() - first} ms (migration ${r.stats!.totalTimeMs} ms, downtime ${r.stats!.downtimeMs} ms)`).join('; '),
    );

    // a is empty; every guest runs intact where the plan put it.
    expect((await op.listVms({ nodeId: 'a' })).vms).toHaveLength(0);
    expect((await c.nodeClients['a']!.listVms({})).vms).toHaveLength(0);
    for (const m of plan.migrations) {
      const after = await waitForGuest(c.nodeClients[m.destinationNodeId]!, m.vmName, 2, 30_000, (s) => s.pagesVerified > verified[m.vmName]!);
      expect(after.at(-1)!.integrityErrors).toBe(0);
    }
    await c.tb.unshape('a');
  });

  /** A VM's QEMU processes on a node (its folder in the node's state dir is on their command line). */
  const qemuOf = (node: string, name: string): Promise<number[]> => qemuPidsMatching(join(c.dir, node, 'vms', `${name}/`));

  it('prepares the next run on a link while the previous one streams; a held run cancelled leaves no QEMU behind', async () => {
    const op = c.client();
    // Idle guests (their region written once): each stream is about its written memory at the
    // link's rate; h1's (64 MiB at 40 Mbit/s, ≥ 13 s) is long enough to see the next run held.
    await createGuest(c, 'a', guestSpec('h1', { memoryMib: 160, pattern: WorkloadPattern.WORKLOAD_PATTERN_IDLE, bytesPerWorker: 64 << 20 }));
    for (const name of ['h2', 'h3']) await createGuest(c, 'a', guestSpec(name, { memoryMib: 128, pattern: WorkloadPattern.WORKLOAD_PATTERN_IDLE, bytesPerWorker: 16 << 20 }));
    // One link, a → b: h1 streams, the next run is dispatched held (it takes a's second outbound
    // slot and prepares b), the third waits in the queue.
    await c.tb.shape('a', { rateMbit: 40 });
    try {
      // One plan per VM, submitted in this order (equal priority and plan order: first come first
      // served), so the test does not depend on what else runs on a.
      const runIds: string[] = [];
      for (const name of ['h1', 'h2', 'h3']) runIds.push((await op.submitPlan(migratePlan(`held-${name}`, name, 'b'))).plan!.migrations[0]!.runId);
      const [first, held] = [{ runId: runIds[0]!, vmName: 'h1' }, { runId: runIds[1]!, vmName: 'h2' }];
      // The held run's destination QEMU is up while the first one has not finished its stream.
      await waitFor(async () => (await qemuOf('b', held.vmName)).length > 0, 60_000, `the held run's destination QEMU on b`);
      const firstNow = (await op.getRun({ runId: first.runId })).run!;
      const heldNow = (await op.getRun({ runId: held.runId })).run!;
      expect(heldNow.state).toBe(S.MIGRATION_STATE_PREPARING);
      expect(firstNow.transitions.some((t) => t.to === S.MIGRATION_STATE_VERIFYING)).toBe(false);
      console.log(`held run ${held.vmName} prepared while ${first.vmName} is ${S[firstNow.state]}`);

      await op.cancelRun({ runId: held.runId, reason: 'cancel a held run' });
      const cancelled = await waitForRunState(op, held.runId, S.MIGRATION_STATE_CANCELLED);
      expect(cancelled.transitions.some((t) => t.to === S.MIGRATION_STATE_SETUP || t.to === S.MIGRATION_STATE_PRECOPY)).toBe(false);
      // Nothing of it on b; it runs on a, which still owns it.
      await waitFor(async () => (await qemuOf('b', held.vmName)).length === 0, 20_000, 'no QEMU of the cancelled held run left on b');
      expect((await c.nodeClients['b']!.listVms({})).vms.map((v) => v.spec?.name)).not.toContain(held.vmName);
      expect(await qemuOf('a', held.vmName)).toHaveLength(1);
      expect((await op.listVms({ nodeId: 'a' })).vms.map((v) => v.spec?.name)).toContain(held.vmName);

      const runs = await Promise.all(runIds.map((id) => waitForRun(op, id)));
      const moved = runs.filter((r) => r.id !== held.runId);
      for (const r of moved) {
        expect(r.state).toBe(S.MIGRATION_STATE_SUCCEEDED);
        expect(r.stats!.integrityErrors).toBe(0);
      }
      // One stream at a time on the link, though runs overlapped from PREPARING on.
      expect(maxOverlap(moved, () => 'a->b', streamEnd, streamStart).get('a->b')).toBe(1);
      expect(maxOverlap(runs, (r) => r.sourceNodeId).get('a')).toBeLessThanOrEqual(2);
      const [m1, m2] = [...moved].sort((x, y) => streamStart(x) - streamStart(y));
      console.log(`stream gap on a->b ${streamStart(m2!) - streamEnd(m1!)} ms; second run PREPARING ${m2!.startedAt!.getTime() - streamEnd(m1!)} ms after the first's VERIFYING`);
      const onB = (await c.nodeClients['b']!.listVms({})).vms.map((v) => v.spec?.name);
      expect(onB).toEqual(expect.arrayContaining(moved.map((r) => r.vmName)));
      expect(onB).not.toContain(held.vmName);
    } finally {
      await c.tb.unshape('a');
    }
  });
});
