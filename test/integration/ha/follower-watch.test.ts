/**
 * Followers serve Watch through NATS (issue 15 §2): two coordinators on one PostgreSQL and one
 * nats-server, one node daemon (no guests). The follower's live events come from NATS, the
 * leader's from the outbox it writes (each says so in its log). A node event the leader commits
 * (its node daemon killed: marked down) reaches a Watch stream open on the follower, once; while
 * NATS is stopped it does not (the follower does not read the outbox), and once NATS is back it
 * does (the leader's relay publishes what waited in the outbox).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeStatus } from '../../../services/shared/gen/migd/v1/coordinator.js';
import type { Event } from '../../../services/shared/gen/migd/v1/events.js';
import { createPki } from '../../../services/shared/pki.js';
import { coordinatorBuilt } from '../../../services/testbed/cluster.js';
import { startHaCluster, type HaCluster } from '../../../services/testbed/ha-cluster.js';
import { ensureGuestImageDir } from '../../../stress/image/build.js';
import { waitFor } from '../../helpers/coordinator-cluster.js';

describe.skipIf(!coordinatorBuilt())('replicated coordinators: a follower serves Watch through NATS', () => {
  let c: HaCluster | undefined;
  const dir = mkdtempSync('/tmp/migd-haw-');

  beforeAll(async () => {
    const certDir = join(dir, 'pki');
    createPki(certDir);
    c = await startHaCluster({ hosts: ['a'], coordinators: 2, workDir: join(dir, 'w'), certDir, guestImage: await ensureGuestImageDir(join(dir, 'guest')) });
  }, 180_000);
  afterAll(async () => {
    await c?.close();
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('the follower streams the leader\'s events from NATS, not from the outbox', async () => {
    const cl = c!;
    const leader = await cl.waitForLeader();
    const follower = leader === 0 ? 1 : 0;
    const busLines = (i: number): string[] => cl.coordinators[i]!.logs.filter((l) => l.includes('event bus: live events from'));
    await waitFor(() => busLines(follower).length > 0, 20_000, 'the follower to say where its live events come from');
    expect(busLines(follower).at(-1)).toContain('live events from NATS');
    expect(busLines(leader).at(-1) ?? 'live events from the outbox').toContain('live events from the outbox');

    const events: Event[] = [];
    const ac = new AbortController();
    const watching = (async () => {
      try {
        for await (const r of cl.clientAt(follower).watch({ scope: { $case: 'cluster', value: true }, statesOnly: true }, { signal: ac.signal })) if (r.event) events.push(r.event);
      } catch {
        // ended by the test
      }
    })();
    const nodeEvents = (id: string, up: boolean): Event[] => events.filter((e) => e.payload?.$case === 'nodeState' && e.payload.value.nodeId === id && e.payload.value.up === up);
    try {
      await new Promise((r) => setTimeout(r, 1000));
      // NATS down: the leader still commits a's loss to the outbox, but the follower's Watch
      // (fed by NATS) does not see it…
      await cl.stopNats();
      await cl.nodes['a']!.kill();
      const leaderSees = cl.clientAt(leader);
      await waitFor(async () => (await leaderSees.listNodes({})).nodes.some((n) => n.host?.nodeId === 'a' && n.status !== NodeStatus.NODE_STATUS_UP), 20_000, 'the leader to mark a down');
      await new Promise((r) => setTimeout(r, 2000));
      expect(nodeEvents('a', false)).toEqual([]);
      // …until NATS is back and the relay publishes what waited.
      await cl.startNats();
      await waitFor(() => nodeEvents('a', false).length > 0, 30_000, 'the follower\'s Watch to deliver a\'s loss');
      await new Promise((r) => setTimeout(r, 1000));
      expect(nodeEvents('a', false)).toHaveLength(1);
    } finally {
      ac.abort();
      await watching;
    }
  }, 120_000);
});
