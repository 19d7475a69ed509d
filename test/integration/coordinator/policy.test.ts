import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrationState as S, PolicyActionKind, PolicyKind, TimeoutAction, WorkloadPattern } from '../../../services/shared/gen/migd/v1/common.js';
import { guestSpec, waitForGuest } from '../../helpers/node-cluster.js';
import { createGuest, migratePlan, startCoordinatorCluster, waitForRun, type CoordinatorCluster } from '../../helpers/coordinator-cluster.js';

// The coordinator's convergence policies on a real, hard case: a 16 MiB hot set rewritten
// constantly, on an 80 Mbit/s link (≈1.7 s to send the hot set once, as 8 MiB on 40 Mbit/s; the
// first pass over the guest's memory takes half as long). Plain pre-copy at 300 ms never
// gets there and its progress timeout aborts it; the adaptive policy sees that early and escalates
// until the migration completes, with the guest intact.
describe('coordinator: adaptive policy vs fixed pre-copy', () => {
  let c: CoordinatorCluster;
  let verified = 0;

  beforeAll(async () => {
    c = await startCoordinatorCluster(['a', 'b']);
    const s = await createGuest(c, 'a', guestSpec('hot1', { pattern: WorkloadPattern.WORKLOAD_PATTERN_HOTCOLD, bytesPerWorker: 32 << 20, hotBytes: 16 << 20 }));
    verified = s.at(-1)!.pagesVerified;
    await c.tb.shape('a', { rateMbit: 80 });
  });
  afterAll(async () => {
    await c?.close();
  });

  it('fixed pre-copy with a progress timeout aborts; the adaptive policy completes the same migration', async () => {
    const op = c.client();
    const fixed = await op.submitPlan(
      migratePlan('fixed-1', 'hot1', 'b', { kind: PolicyKind.POLICY_KIND_FIXED, downtimeLimitMs: 300, progressTimeoutSec: 8, timeoutAction: TimeoutAction.TIMEOUT_ACTION_ABORT }, { label: 'hotset-40mbit' }),
    );
    const fr = await waitForRun(op, fixed.plan!.migrations[0]!.runId);
    expect(fr.state).toBe(S.MIGRATION_STATE_CANCELLED);
    const abort = fr.actions.find((a) => a.kind === PolicyActionKind.POLICY_ACTION_KIND_ABORT);
    expect(abort).toMatchObject({ actor: 'policy:fixed' });
    expect(abort!.reason).toMatch(/progress timeout/);
    const fixedPasses = Math.max(...(await op.getRunTimeline({ runId: fr.id })).progress.map((s) => s.pass));
    expect(fixedPasses).toBeGreaterThanOrEqual(3); // it kept trying, pass after pass
    console.log(`fixed pre-copy: aborted by its progress timeout after ${fr.finishedAt!.getTime() - fr.startedAt!.getTime()} ms and ${fixedPasses} passes (${abort!.reason})`);
    // The guest stayed on a, intact.
    const still = await waitForGuest(c.nodeClients['a']!, 'hot1', 2, 30_000, (s) => s.pagesVerified > verified);
    expect(still.at(-1)!.integrityErrors).toBe(0);

    const adaptive = await op.submitPlan(migratePlan('adaptive-1', 'hot1', 'b', { kind: PolicyKind.POLICY_KIND_ADAPTIVE }, { label: 'hotset-40mbit' }));
    const ar = await waitForRun(op, adaptive.plan!.migrations[0]!.runId, 240_000);
    expect(ar.state).toBe(S.MIGRATION_STATE_SUCCEEDED);
    expect(ar.stats!.integrityErrors).toBe(0);
    const policyActions = ar.actions.filter((a) => a.actor === 'policy:adaptive');
    expect(policyActions.length).toBeGreaterThan(0);
    console.log(
      `adaptive: succeeded in ${ar.stats!.totalTimeMs} ms (${ar.finishedAt!.getTime() - ar.startedAt!.getTime()} ms dispatch to verified), downtime ${ar.stats!.downtimeMs} ms, ${ar.stats!.passes} passes, throttle max ${ar.stats!.maxThrottlePct}%, post-copy requests ${ar.stats!.postcopyRequests}; actions: ` +
        policyActions.map((a) => `${PolicyActionKind[a.kind]!.replace('POLICY_ACTION_KIND_', '')}${a.value ? `=${a.value}` : ''} at ${a.elapsedMs} ms`).join(', '),
    );
    const after = await waitForGuest(c.nodeClients['b']!, 'hot1', 2, 30_000, (s) => s.pagesVerified > still.at(-1)!.pagesVerified);
    expect(after.at(-1)!.integrityErrors).toBe(0);

    // The comparison the history store keeps: one completed, one did not.
    const cmp = await op.comparePolicies({ filter: { vmName: '', nodeId: '', states: [], policyKinds: [], createdAfter: undefined, createdBefore: undefined, planId: '', runIds: [], label: 'hotset-40mbit' } });
    const byKind = new Map(cmp.summaries.map((s) => [s.kind, s]));
    expect(byKind.get(PolicyKind.POLICY_KIND_FIXED)).toMatchObject({ runs: 1, succeeded: 0 });
    expect(byKind.get(PolicyKind.POLICY_KIND_ADAPTIVE)).toMatchObject({ runs: 1, succeeded: 1, integrityErrors: 0 });
  });
});
