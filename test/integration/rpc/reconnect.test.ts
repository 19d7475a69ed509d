import { afterEach, describe, expect, it } from 'vitest';
import { NodeServiceService, type GetHostInfoResponse } from '../../../services/shared/gen/migd/v1/node.js';
import { createLogger } from '../../../services/shared/log.js';
import { freePort } from '../../../services/shared/net.js';
import { createClient } from '../../../services/shared/rpc/client.js';
import { RpcServer, type Handlers } from '../../../services/shared/rpc/server.js';

const log = createLogger('test', {}, () => undefined);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// Only GetHostInfo is served: the test is about the channel, not the service.
function handlers(): Handlers<typeof NodeServiceService> {
  const host = async (): Promise<GetHostInfoResponse> => ({
    host: { nodeId: 'peer', managementAddress: '', migrationAddress: '', memoryTotalBytes: 1, memoryFreeBytes: 1, cpus: 1, qemuVersion: '', resolvedAccel: 0, migrationCapabilities: [], labels: {}, machineTypes: [], networks: [] },
  });
  return new Proxy({} as Handlers<typeof NodeServiceService>, { get: (_t, k) => (k === 'getHostInfo' ? host : async () => Promise.reject(new Error('not served'))) });
}

// A node daemon's client of a peer (services/node/daemon.ts peer()) caps its reconnect backoff at
// 1 s. With gRPC's default (up to 120 s) a channel that failed to connect while its peer was down
// keeps failing every call fast ("No connection established") for as long as its backoff lasts
// after the peer is back: seen as a PrepareIncoming refused seconds after the destination's restart.
describe('a client of a peer that restarts', () => {
  const stops: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const s of stops.splice(0)) await s().catch(() => undefined);
  });

  it('reaches the peer again within about a second of its restart with a 1 s backoff ceiling; the default backoff still fails fast', async () => {
    const port = await freePort('127.0.0.1');
    const serve = async (): Promise<RpcServer> => {
      const s = new RpcServer({ address: `127.0.0.1:${port}`, security: { insecure: true }, log });
      s.addService('migd.v1.NodeService', NodeServiceService, handlers());
      await s.start();
      return s;
    };
    let server = await serve();
    stops.push(async () => server.stop(100));
    const mk = (maxReconnectBackoffMs?: number) => {
      const c = createClient('migd.v1.NodeService', NodeServiceService, `127.0.0.1:${port}`, { security: { insecure: true }, defaultDeadlineMs: 2000, ...(maxReconnectBackoffMs !== undefined ? { maxReconnectBackoffMs } : {}) });
      stops.push(async () => c.close());
      return c;
    };
    const capped = mk(1000);
    const byDefault = mk();
    expect((await capped.getHostInfo({})).host?.nodeId).toBe('peer');
    expect((await byDefault.getHostInfo({})).host?.nodeId).toBe('peer');

    // The peer is down for 12 s while both keep calling: the default backoff grows to ≈6–7 s.
    await server.stop(100);
    const downUntil = Date.now() + 12_000;
    while (Date.now() < downUntil) {
      await Promise.allSettled([capped.getHostInfo({}), byDefault.getHostInfo({})]);
      await sleep(200);
    }
    server = await serve();
    await sleep(1500);

    expect((await capped.getHostInfo({})).host?.nodeId).toBe('peer');
    // The control: without the ceiling the channel is still waiting out its backoff.
    await expect(byDefault.getHostInfo({})).rejects.toMatchObject({ code: 'UNAVAILABLE', message: expect.stringMatching(/No connection established/) });
  }, 30_000);
});
