/**
 * The coordinator without NATS: it starts and serves while the server is down, Watch works from
 * the in-process bus, events wait in the outbox, and once NATS is up the relay publishes them.
 * In-process coordinator, real nats-server, real SQLite file; no QEMU.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveCoordinatorConfig } from '../../../services/coordinator/config.js';
import { Coordinator } from '../../../services/coordinator/coordinator.js';
import { subscribeCluster } from '../../../services/shared/events/subscriber.js';
import { CoordinatorServiceService, NodeStatus } from '../../../services/shared/gen/migd/v1/coordinator.js';
import type { Event } from '../../../services/shared/gen/migd/v1/events.js';
import { createLogger } from '../../../services/shared/log.js';
import { createPki, defaultIdentities, identityFiles, nodeIdentity } from '../../../services/shared/pki.js';
import { createClient } from '../../../services/shared/rpc/client.js';
import { waitFor } from '../../helpers/coordinator-cluster.js';
import { closeConnection, connectTest, startNatsServer, type TestNatsServer } from '../../helpers/nats-server.js';
import { removeDir, tempDir } from '../store/fixtures.js';

const quiet = createLogger('test', {}, () => undefined, 'error');

describe('coordinator: NATS outage', () => {
  let dir: string;
  let nats: TestNatsServer;
  let coordinator: Coordinator | undefined;

  beforeAll(async () => {
    dir = await tempDir('migd-outage-');
    createPki(join(dir, 'pki'), [...defaultIdentities, { name: nodeIdentity('n1') }]);
    nats = await startNatsServer({ certDir: join(dir, 'pki') });
    await nats.stop(); // down from the start; started again on the same port below
  });
  afterAll(async () => {
    await coordinator?.stop();
    await nats?.dispose();
    await removeDir(dir);
  });

  it('starts and serves without NATS, keeps events in the outbox, publishes them once NATS is up', async () => {
    const config = resolveCoordinatorConfig({ listen: '127.0.0.1:0', db: join(dir, 'history.sqlite'), nats: nats.url, natsUser: nats.auth('publisher').user, natsPasswordFile: nats.auth('publisher').passwordFile, tlsDir: join(dir, 'pki'), heartbeatMs: '200' });
    coordinator = await Coordinator.start(config, quiet);
    const address = `127.0.0.1:${coordinator.port}`;
    const client = (id: string) => createClient('migd.v1.CoordinatorService', CoordinatorServiceService, address, { security: { tls: identityFiles(join(dir, 'pki'), id), serverName: 'migd-coordinator' } });
    const op = client('operator');
    const node = client(nodeIdentity('n1'));
    try {
      // Watch works from the in-process bus.
      const watched: Event[] = [];
      const ac = new AbortController();
      const watching = (async () => {
        for await (const m of op.watch({ scope: { $case: 'cluster', value: true }, statesOnly: false }, { signal: ac.signal })) watched.push(m.event!);
      })().catch(() => undefined);
      await new Promise((r) => setTimeout(r, 100));
      await node.registerNode({ host: { nodeId: 'n1', managementAddress: '127.0.0.1:1', migrationAddress: '127.0.0.1', memoryTotalBytes: 2 ** 30, memoryFreeBytes: 2 ** 30, cpus: 1, qemuVersion: '10.0.2', resolvedAccel: 3, migrationCapabilities: [], labels: {}, machineTypes: [], networks: [] } });
      expect((await op.listNodes({})).nodes[0]).toMatchObject({ status: NodeStatus.NODE_STATUS_UP });
      // No heartbeats: marked down after 3 × 200 ms.
      await waitFor(async () => (await op.listNodes({})).nodes[0]?.status === NodeStatus.NODE_STATUS_DOWN, 5000, 'n1 to be marked down');
      await waitFor(() => watched.filter((e) => e.payload?.$case === 'nodeState').length >= 2, 5000, 'both node events on Watch');
      ac.abort();
      await watching;
      expect(watched.map((e) => (e.payload?.$case === 'nodeState' ? e.payload.value.up : undefined))).toEqual([true, false]);
      const lag = await coordinator.store.outboxLag();
      expect(lag.unpublished).toBe(2);
      expect(coordinator.natsConnected).toBe(false);

      await nats.start();
      await waitFor(async () => (await coordinator!.store.outboxLag()).unpublished === 0, 20_000, 'the outbox to drain to NATS');
      const nc = await connectTest(nats, {}, 'reader');
      try {
        const got: Event[] = [];
        const sub = await subscribeCluster(nc, { fromStart: true });
        for await (const e of sub) {
          got.push(e);
          if (got.length === 2) break;
        }
        sub.stop();
        expect(got.map((e) => e.id)).toEqual(watched.map((e) => e.id));
      } finally {
        await closeConnection(nc);
      }
    } finally {
      op.close();
      node.close();
    }
  });
});
