import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { subscribeRun } from '../../../services/shared/events/subscriber.js';
import { MigrationState as S, PolicyKind, WorkloadPattern } from '../../../services/shared/gen/migd/v1/common.js';
import { PlanState } from '../../../services/shared/gen/migd/v1/coordinator.js';
import type { Event } from '../../../services/shared/gen/migd/v1/events.js';
import { guestSpec, waitForGuest } from '../../helpers/node-cluster.js';
import { createGuest, migratePlan, startCoordinatorCluster, waitFor, waitForPlan, waitForRun, waitForRunState, type CoordinatorCluster } from '../../helpers/coordinator-cluster.js';

// A coordinator killed (SIGKILL) in the middle of a migration: the node keeps migrating, and the
// restarted coordinator picks the run up from its database and the source node — without starting
// it twice — and follows it to the end under its policy; a queued run is queued again and runs.
describe('coordinator: restart recovery', () => {
  let c: CoordinatorCluster;
  const verified: Record<string, number> = {};

  beforeAll(async () => {
    c = await startCoordinatorCluster(['a', 'b']);
    const [r1, r2] = await Promise.all([
      createGuest(c, 'a', guestSpec('r1', { pattern: WorkloadPattern.WORKLOAD_PATTERN_HOTCOLD, bytesPerWorker: 32 << 20, hotBytes: 8 << 20 })),
      // r2 only has to run and arrive intact: 8 MiB at 2 MiB/s, a 4 s unverified first pass (8 s with 16 MiB).
      createGuest(c, 'a', guestSpec('r2', { memoryMib: 128, bytesPerWorker: 8 << 20, rate: 2 << 20 })),
    ]);
    verified['r1'] = r1.at(-1)!.pagesVerified;
    verified['r2'] = r2.at(-1)!.pagesVerified;
    await c.tb.shape('a', { rateMbit: 40 });
  });
  afterAll(async () => {
    await c?.close();
  });

  it('resumes tracking a running migration, and holds again the one prepared behind it on the link, after a SIGKILL', async () => {
    let op = c.client();
    const p1 = (await op.submitPlan(migratePlan('restart-1', 'r1', 'b', { kind: PolicyKind.POLICY_KIND_ADAPTIVE }))).plan!;
    const r1 = p1.migrations[0]!.runId;
    await waitForRunState(op, r1, S.MIGRATION_STATE_PRECOPY);
    const p2 = (await op.submitPlan(migratePlan('restart-2', 'r2', 'b'))).plan!;
    const r2 = p2.migrations[0]!.runId;
    // r1 streams on a→b: r2 is dispatched held (issue 15 §4): its destination is prepared, and
    // it waits for the link.
    await waitForRunState(op, r2, S.MIGRATION_STATE_PREPARING);
    await waitFor(async () => (await op.getRunTimeline({ runId: r1 })).progress.length >= 16, 30_000, 'a few seconds of progress samples');

    const killedAt = new Date();
    await c.restartCoordinator('kill');
    // The node kept migrating meanwhile.
    const onNode = (await c.nodeClients['a']!.getMigration({ runId: r1 })).migration!;
    expect([S.MIGRATION_STATE_PRECOPY, S.MIGRATION_STATE_POSTCOPY, S.MIGRATION_STATE_SWITCHOVER, S.MIGRATION_STATE_VERIFYING, S.MIGRATION_STATE_SUCCEEDED]).toContain(onNode.state);
    op = c.client();

    const run1 = await waitForRun(op, r1, 240_000);
    // The slow link was there to keep r1 migrating across the kill and r2 queued behind it; r2
    // need not crawl once r1 has released the link.
    await c.tb.unshape('a');
    expect(run1.state).toBe(S.MIGRATION_STATE_SUCCEEDED);
    expect(run1.stats!.integrityErrors).toBe(0);
    // Started once: one PREPARING, one migration on the node for this run.
    expect(run1.transitions.filter((t) => t.to === S.MIGRATION_STATE_PREPARING)).toHaveLength(1);
    const { migrations } = await c.nodeClients['a']!.listMigrations({ activeOnly: false });
    expect(migrations.filter((m) => m.vmName === 'r1')).toHaveLength(1);
    // Tracked after the restart: samples recorded after it, and the re-attach was logged.
    const tl = await op.getRunTimeline({ runId: r1 });
    // (Under load the migration may finish while the coordinator is still restarting: then the
    // re-attach finds it finished and records the result without new samples.)
    const sampledAfter = tl.progress.some((s) => s.time!.getTime() > killedAt.getTime() + 1000);
    const finishedDuringRestart = run1.finishedAt!.getTime() < killedAt.getTime() + 15_000 && c.coordinator.logs.some((l) => l.includes('re-attached to a migration after restart') && /SUCCEEDED|VERIFYING|POSTCOPY/.test(l));
    expect(sampledAfter || finishedDuringRestart).toBe(true);
    expect(c.coordinator.logs.some((l) => l.includes('re-attached to a migration after restart'))).toBe(true);
    console.log(
      `restart: coordinator killed ${killedAt.getTime() - run1.startedAt!.getTime()} ms into the run; run succeeded in ${run1.stats!.totalTimeMs} ms, downtime ${run1.stats!.downtimeMs} ms; actions: ${run1.actions.map((a) => `${a.actor} kind ${a.kind} at ${a.elapsedMs} ms`).join(', ')}`,
    );

    // The held run was held again after the restart and streamed only after the first released
    // the link (its source reported QEMU's completion: VERIFYING); it was started once, and b
    // holds one copy of each guest.
    const run2 = await waitForRun(op, r2, 180_000);
    expect(run2.state).toBe(S.MIGRATION_STATE_SUCCEEDED);
    const run1StreamEnd = (run1.transitions.find((t) => t.to === S.MIGRATION_STATE_VERIFYING)?.time ?? run1.finishedAt!).getTime();
    const run2StreamStart = run2.transitions.find((t) => t.to === S.MIGRATION_STATE_SETUP || t.to === S.MIGRATION_STATE_PRECOPY)!.time!.getTime();
    expect(run2StreamStart).toBeGreaterThanOrEqual(run1StreamEnd);
    expect(run2.transitions.filter((t) => t.to === S.MIGRATION_STATE_PREPARING)).toHaveLength(1);
    expect((await c.nodeClients['a']!.listMigrations({ activeOnly: false })).migrations.filter((m) => m.vmName === 'r2')).toHaveLength(1);
    expect((await c.nodeClients['b']!.listVms({})).vms.map((v) => v.spec?.name).sort()).toEqual(['r1', 'r2']);
    expect((await waitForPlan(op, p1.id)).state).toBe(PlanState.PLAN_STATE_SUCCEEDED);
    expect((await waitForPlan(op, p2.id)).state).toBe(PlanState.PLAN_STATE_SUCCEEDED);

    // Events on NATS: one gap-free sequence across both coordinator lives.
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), 15_000);
    const events: Event[] = [];
    for await (const ev of await subscribeRun(c.nc, r1, { fromStart: true, untilCompleted: true, signal: ac.signal })) events.push(ev);
    clearTimeout(timer);
    expect(events.at(-1)!.payload?.$case).toBe('runCompleted');
    const seqs = events.map((e) => e.runSequence);
    expect(seqs).toEqual(seqs.map((_, i) => i + 1));

    for (const name of ['r1', 'r2']) {
      const after = await waitForGuest(c.nodeClients['b']!, name, 2, 30_000, (s) => s.pagesVerified > verified[name]!);
      expect(after.at(-1)!.integrityErrors).toBe(0);
    }
  });
});
