import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrationState as S } from '../../../services/shared/gen/migd/v1/common.js';
import { PlanState, type Run } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { guestSpec, waitForGuest } from '../../helpers/node-cluster.js';
import { createGuest, migratePlan, startCoordinatorCluster, waitForPlan, type CoordinatorCluster } from '../../helpers/coordinator-cluster.js';

/** When a run's stream ended: its source reported QEMU's completion (VERIFYING), else its end. */
const streamEnd = (r: Run): number => (r.transitions.find((t) => t.to === S.MIGRATION_STATE_VERIFYING)?.time ?? r.finishedAt!).getTime();

/** The most intervals of `runs` overlapping at any instant, per key; `end` (default: the run's end) closes each. */
function maxOverlap(runs: readonly Run[], key: (r: Run) => string, end: (r: Run) => number = (r) => r.finishedAt!.getTime()): Map<string, number> {
  const points = runs.flatMap((r) => [
    { k: key(r), t: r.startedAt!.getTime(), d: 1 },
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

    // The limits, from the recorded start and finish times; a link counts streams (start →
    // VERIFYING), the hosts count runs until their end.
    const perLink = maxOverlap(runs, (r) => `${r.sourceNodeId}->${r.destinationNodeId}`, streamEnd);
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
});
