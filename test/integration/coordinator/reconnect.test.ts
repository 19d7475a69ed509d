import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrationState as S } from '../../../services/shared/gen/migd/v1/common.js';
import { PlanState } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { guestSpec } from '../../helpers/node-cluster.js';
import { createGuest, migratePlan, startCoordinatorCluster, waitForPlan, waitForRun, type CoordinatorCluster } from '../../helpers/coordinator-cluster.js';

// After a long coordinator outage the node daemons must be back within 2 s of its return: their
// reconnect back-off (theirs and the gRPC channel's) is capped. The coordinator here marks a node
// down after 2 s of silence (1 s heartbeats, 2 misses), so a plan submitted the moment it is back
// fails with SOURCE_DOWN unless the source node has heartbeated by then. (Before the cap: 16 s.)
describe('coordinator: node daemons reconnect quickly after an outage', () => {
  let c: CoordinatorCluster;

  beforeAll(async () => {
    c = await startCoordinatorCluster(['a', 'b'], { coordinatorArgs: ['--heartbeat-ms', '1000', '--heartbeat-misses', '2'] });
    await createGuest(c, 'a', guestSpec('hb1', { memoryMib: 128, bytesPerWorker: 8 << 20, rate: 1 << 20 }));
  });
  afterAll(async () => {
    await c?.close();
  });

  it('heartbeats again within 2 s of a 25 s outage, and a plan submitted right away runs', async () => {
    await c.coordinator.kill();
    // Long enough for an uncapped exponential back-off to have grown well past 10 s.
    await new Promise((r) => setTimeout(r, 25_000));
    await c.restartCoordinator('stop'); // already dead: this only starts it again
    const back = Date.now();
    const op = c.client();
    const plan = (await op.submitPlan(migratePlan('after-outage', 'hb1', 'b'))).plan!;
    const seen: Record<string, number> = {};
    while (Object.keys(seen).length < 2 && Date.now() - back < 10_000) {
      const { nodes } = await op.listNodes({});
      for (const n of nodes) {
        const at = n.lastHeartbeat?.getTime() ?? 0;
        if (at >= back && seen[n.host!.nodeId] === undefined) seen[n.host!.nodeId] = at - back;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    console.log(`reconnect: heartbeats after the coordinator's return: ${JSON.stringify(seen)} ms`);
    expect(seen['a']).toBeLessThan(2000);
    expect(seen['b']).toBeLessThan(2000);
    const run = await waitForRun(op, plan.migrations[0]!.runId);
    expect(run.error?.reason ?? '').not.toBe('SOURCE_DOWN');
    expect(run.state).toBe(S.MIGRATION_STATE_SUCCEEDED);
    expect((await waitForPlan(op, plan.id)).state).toBe(PlanState.PLAN_STATE_SUCCEEDED);
  });
});
