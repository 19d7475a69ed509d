import { describe, expect, it } from 'vitest';
import { startRegistration } from '../../../services/node/registration.js';
import { NotFoundError, UnavailableError } from '../../../services/shared/errors.js';
import type { HostInfo, VmInfo } from '../../../services/shared/gen/migd/v1/common.js';
import type { HeartbeatRequest, RegisterNodeRequest } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { createLogger } from '../../../services/shared/log.js';
import { until } from '../../helpers/until.js';

const quiet = createLogger('test', {}, () => undefined, 'error');
const host = { nodeId: 'a', managementAddress: '198.18.0.10:7001', migrationAddress: '198.19.0.10' } as HostInfo;
const vm = { spec: { name: 'vm1' }, nodeId: 'a' } as VmInfo;

/** A coordinator that fails the first `failures` calls, then accepts; heartbeats can be made unknown. */
function fakeCoordinator(failures: number) {
  const calls: { method: 'register' | 'heartbeat'; at: number; req: RegisterNodeRequest | HeartbeatRequest }[] = [];
  let left = failures;
  let forget = false;
  let closed = false;
  const client = {
    registerNode: async (req: RegisterNodeRequest) => {
      calls.push({ method: 'register', at: Date.now(), req });
      if (left-- > 0) throw new UnavailableError('connection refused');
      return { nodeId: req.host!.nodeId, heartbeatIntervalMs: 20 };
    },
    heartbeat: async (req: HeartbeatRequest) => {
      calls.push({ method: 'heartbeat', at: Date.now(), req });
      if (forget) {
        forget = false;
        throw new NotFoundError('node a is not registered');
      }
      return {};
    },
    close: () => {
      closed = true;
    },
  };
  return { client, calls, forgetOnce: () => (forget = true), closed: () => closed };
}

describe('node registration', () => {
  it('caps the retry back-off, so a long outage never delays the next attempt past retryMaxMs', async () => {
    const c = fakeCoordinator(12);
    // The wait before each retry, as the registration logs it (the planned delay, not a wall-clock
    // gap, which a loaded machine stretches).
    const waits: number[] = [];
    const log = createLogger('test', {}, (line) => {
      const rec = JSON.parse(line) as { waitMs?: number };
      if (rec.waitMs !== undefined) waits.push(rec.waitMs);
    }, 'debug');
    const reg = startRegistration({ coordinator: 'x:1', security: { insecure: true }, heartbeatMs: 5000, hostInfo: async () => host, vms: async () => [vm], log, client: c.client, retryInitialMs: 5, retryMaxMs: 40 });
    await reg.registered;
    await reg.stop();
    expect(c.calls.filter((x) => x.method === 'register')).toHaveLength(13);
    expect(waits).toHaveLength(12);
    // Doubling from 5 ms would reach 10 s at the 12th retry; capped (jitter included), none waits
    // beyond 40 ms, and the back-off did grow to the cap (32 ms ±25 %).
    expect(Math.max(...waits)).toBeLessThanOrEqual(40);
    expect(waits[0]).toBeLessThanOrEqual(5);
    for (const w of waits.slice(-4)) expect(w).toBeGreaterThanOrEqual(24);
  });

  it('retries until registered, then heartbeats with host info and VMs at the interval the coordinator asks for', async () => {
    const c = fakeCoordinator(2);
    const reg = startRegistration({ coordinator: 'x:1', security: { insecure: true }, heartbeatMs: 5000, hostInfo: async () => host, vms: async () => [vm], log: quiet, client: c.client, retryInitialMs: 10 });
    await reg.registered;
    expect(c.calls.filter((x) => x.method === 'register')).toHaveLength(3);
    await until(() => c.calls.filter((x) => x.method === 'heartbeat').length >= 3, 'three heartbeats', 5000, 5);
    const beats = c.calls.filter((x) => x.method === 'heartbeat');
    expect(beats[0]!.req).toEqual({ host, vms: [vm] });
    // 20 ms from the coordinator, not the configured 5 s.
    expect(beats[2]!.at - beats[1]!.at).toBeLessThan(1000);
    await reg.stop();
    expect(c.closed()).toBe(true);
    const n = c.calls.length;
    await new Promise((r) => setTimeout(r, 60));
    expect(c.calls.length).toBe(n);
  });

  it('registers again when the coordinator does not know the node', async () => {
    const c = fakeCoordinator(0);
    const reg = startRegistration({ coordinator: 'x:1', security: { insecure: true }, heartbeatMs: 5000, hostInfo: async () => host, vms: async () => [], log: quiet, client: c.client, retryInitialMs: 10 });
    await until(() => c.calls.filter((x) => x.method === 'heartbeat').length >= 1, 'a heartbeat', 5000, 5);
    c.forgetOnce();
    await until(() => c.calls.filter((x) => x.method === 'register').length >= 2, 'a second registration', 5000, 5);
    await until(() => c.calls.at(-1)!.method === 'heartbeat', 'heartbeats again', 5000, 5);
    await reg.stop();
  });
});
