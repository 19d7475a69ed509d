import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmState, type HostInfo, type VmInfo } from '../../../services/shared/gen/migd/v1/common.js';
import { CoordinatorServiceService, type WatchResponse } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { createPki, identityFiles, nodeIdentity } from '../../../services/shared/pki.js';
import { createClient } from '../../../services/shared/rpc/client.js';
import { DEFAULT_SERVER_LIMITS, RpcServer, type Handlers } from '../../../services/shared/rpc/server.js';
import { NodeServiceService, type CreateVmRequest } from '../../../services/shared/gen/migd/v1/node.js';
import { UnavailableError } from '../../../services/shared/errors.js';
import { createLogger } from '../../../services/shared/log.js';
import { WATCH_QUEUE } from '../../../services/coordinator/event-bus.js';
import { startCoordinatorProcess, type CoordinatorProcess } from '../../../services/testbed/cluster.js';
import { migratePlan, waitFor, type CoordinatorClient } from '../../helpers/coordinator-cluster.js';
import { guestSpec } from '../../helpers/node-cluster.js';
import { freePort } from '../../helpers/nats-server.js';

// Denial of service against the coordinator by callers holding valid certificates (finding 7):
// a Watch that never reads, more Watch streams than one identity may hold, and a flood of
// connections. The compiled coordinator runs as a child process; the "node" that makes events
// is a gRPC caller with its own certificate (no QEMU: every attack here is on the control plane).
describe('coordinator denial of service', () => {
  let dir: string;
  let certDir: string;
  let coordinator: CoordinatorProcess;
  const clients: CoordinatorClient[] = [];
  const client = (identity: string): CoordinatorClient => {
    const c = createClient('migd.v1.CoordinatorService', CoordinatorServiceService, coordinator.address, { security: { tls: identityFiles(certDir, identity), serverName: 'migd-coordinator' } });
    clients.push(c);
    return c;
  };
  const host = (nodeId: string, port: number): HostInfo => ({
    nodeId,
    managementAddress: `127.0.0.1:${port}`,
    migrationAddress: '127.0.0.1',
    memoryTotalBytes: 64 * 2 ** 30,
    memoryFreeBytes: 48 * 2 ** 30,
    cpus: 4,
    qemuVersion: '10.0.2',
    resolvedAccel: 3,
    migrationCapabilities: [],
    labels: {},
    machineTypes: [],
    networks: [],
  });
  const vm = (name: string, nodeId: string, state: VmState): VmInfo => ({
    spec: guestSpec(name, { memoryMib: 64 }),
    nodeId,
    state,
    pid: 4242,
    startedAt: new Date(),
    migrationRunId: '',
    lastGuestPerf: undefined,
    qemuCpuSeconds: 0,
    localDisks: [],
  });
  let hostA: HostInfo;
  let flips = 0;

  /** Makes at least `n` VmChanged events: node a's VMs flip between running and paused. */
  const flood = async (n: number): Promise<void> => {
    const a = client(nodeIdentity('a'));
    const names = Array.from({ length: 250 }, (_, i) => `flood-${i}`);
    for (let made = 0; made < n; made += names.length) {
      const state = flips++ % 2 === 0 ? VmState.VM_STATE_PAUSED : VmState.VM_STATE_RUNNING;
      await a.heartbeat({ host: hostA, vms: names.map((name) => vm(name, 'a', state)) }, { deadlineMs: 30_000 });
    }
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'migd-dos-'));
    certDir = join(dir, 'pki');
    createPki(certDir, [{ name: 'migd-coordinator', dnsNames: ['localhost'] }, { name: 'operator' }, { name: 'viewer' }, { name: nodeIdentity('a') }, { name: nodeIdentity('slow'), dnsNames: ['migd-node'] }]);
    const listen = `127.0.0.1:${await freePort()}`;
    coordinator = await startCoordinatorProcess({ listen, db: join(dir, 'history.sqlite'), certDir, args: ['--heartbeat-ms', '60000'], logLevel: 'info' });
    hostA = host('a', await freePort());
    const a = client(nodeIdentity('a'));
    await a.registerNode({ host: hostA });
    await a.heartbeat({ host: hostA, vms: [vm('victim', 'a', VmState.VM_STATE_RUNNING)] });
  }, 60_000);

  const closers: (() => Promise<void>)[] = [];
  afterAll(async () => {
    for (const c of closers.splice(0)) await c();
    for (const c of clients.splice(0)) c.close();
    await coordinator?.kill();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a Watch that stops reading is ended with RESOURCE_EXHAUSTED instead of buffering every event', async () => {
    const viewer = client('viewer');
    const stalled = viewer.watch({ scope: { $case: 'cluster', value: true }, statesOnly: false })[Symbol.asyncIterator]();
    const first = stalled.next(); // starts the stream; after its first event the client reads no more
    await sleep(300);
    await flood(WATCH_QUEUE + 2000);
    expect((await first).done).toBe(false);
    // Whatever was in flight still arrives, then the stream's end: RESOURCE_EXHAUSTED, not more.
    let got = 1;
    const end = await (async () => {
      for (;;) {
        const r = await stalled.next();
        if (r.done) return 'ended without an error';
        got++;
      }
    })().catch((err: unknown) => err);
    expect(end).toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
    expect(got).toBeLessThan(WATCH_QUEUE + 2000);
    // A client that reads keeps getting events.
    const ac = new AbortController();
    const reader = viewer.watch({ scope: { $case: 'cluster', value: true }, statesOnly: false }, { signal: ac.signal })[Symbol.asyncIterator]();
    const next = reader.next();
    await sleep(300);
    await flood(250);
    expect((await next).value).toMatchObject({ event: expect.anything() as unknown });
    ac.abort();
    await reader.return?.(undefined);
  }, 120_000);

  it('one identity may hold only so many Watch streams; other identities are not affected', async () => {
    const max = DEFAULT_SERVER_LIMITS.maxStreamsPerIdentity;
    const viewer = client('viewer');
    const acs: AbortController[] = [];
    const open: AsyncIterator<WatchResponse>[] = [];
    const pending: Promise<unknown>[] = [];
    for (let i = 0; i < max; i++) {
      const ac = new AbortController();
      acs.push(ac);
      const it = viewer.watch({ scope: { $case: 'cluster', value: true }, statesOnly: true }, { signal: ac.signal })[Symbol.asyncIterator]();
      open.push(it);
      pending.push(it.next().catch((err: unknown) => err));
    }
    await sleep(1000);
    const refused = await viewer.watch({ scope: { $case: 'cluster', value: true }, statesOnly: true })[Symbol.asyncIterator]().next().catch((err: unknown) => err);
    expect(refused).toMatchObject({ code: 'RESOURCE_EXHAUSTED', reason: 'TOO_MANY_STREAMS' });
    // The operator is another identity: its streams are its own.
    const opAc = new AbortController();
    const op = client('operator').watch({ scope: { $case: 'cluster', value: true }, statesOnly: false }, { signal: opAc.signal })[Symbol.asyncIterator]();
    const opNext = op.next();
    await sleep(300);
    await flood(250);
    expect((await opNext).done).toBe(false);
    opAc.abort();
    await op.return?.(undefined);
    // Closing its streams gives the viewer its streams back.
    for (const ac of acs) ac.abort();
    await Promise.all(pending);
    await waitFor(async () => {
      const probe = new AbortController();
      const it = viewer.watch({ scope: { $case: 'cluster', value: true }, statesOnly: false }, { signal: probe.signal })[Symbol.asyncIterator]();
      const r = it.next().then(() => true, (err: unknown) => (err as { code?: string }).code !== 'RESOURCE_EXHAUSTED');
      const ok = await Promise.race([r, sleep(500).then(() => true)]);
      probe.abort();
      await it.return?.(undefined).catch(() => undefined);
      return ok;
    }, 10_000, 'the viewer to open a stream again');
  }, 120_000);

  it('a flood of connections from one address is cut at the per-address limit; other clients still get in', async () => {
    const [host, port] = [coordinator.address.split(':')[0]!, Number(coordinator.address.split(':')[1])];
    const limit = DEFAULT_SERVER_LIMITS.maxConnectionsPerAddress;
    const sockets: Socket[] = [];
    let closed = 0;
    try {
      // From 127.0.0.2: a second loopback address, so the test's own clients (127.0.0.1) are "others".
      for (let i = 0; i < limit + 20; i++) {
        const s = connect({ host, port, localAddress: '127.0.0.2' });
        s.on('error', () => undefined);
        s.on('close', () => closed++);
        sockets.push(s);
      }
      await waitFor(() => closed >= 20, 5000, 'the connections beyond the limit to be closed');
      await sleep(500);
      expect(closed).toBe(20);
      // A viewer from another address is served meanwhile.
      const nodes = await client('viewer').listNodes({});
      expect(nodes.nodes.map((n) => n.host?.nodeId)).toContain('a');
    } finally {
      for (const s of sockets) s.destroy();
    }
  }, 60_000);

  it('a node slow to create a VM does not hold up planning for anyone else', async () => {
    // A node whose CreateVm takes as long as the test says (a loaded or hostile host).
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let creates = 0;
    const handlers = new Proxy({} as Handlers<typeof NodeServiceService>, {
      get: (_t, key) => {
        if (key === 'createVm') {
          return async (req: CreateVmRequest) => {
            creates++;
            await released;
            return { vm: { ...vm(req.spec!.name, 'slow', VmState.VM_STATE_RUNNING), spec: req.spec } };
          };
        }
        if (key === 'watchGuest' || key === 'watchMigration') {
          return async function* () {
            yield await Promise.reject(new UnavailableError('not here'));
          };
        }
        return async () => Promise.reject(new UnavailableError('not here'));
      },
    });
    const slow = new RpcServer({ address: '127.0.0.1:0', security: { tls: identityFiles(certDir, nodeIdentity('slow')) }, log: createLogger('slow-node', {}, () => undefined) });
    slow.addService('migd.v1.NodeService', NodeServiceService, handlers);
    const port = await slow.start();
    closers.push(async () => {
      release();
      await slow.stop(100);
    });
    const slowHost = host('slow', port);
    await client(nodeIdentity('slow')).registerNode({ host: slowHost });
    await client(nodeIdentity('slow')).heartbeat({ host: slowHost, vms: [] });
    await client(nodeIdentity('a')).heartbeat({ host: hostA, vms: [vm('mover', 'a', VmState.VM_STATE_RUNNING)] });
    const op = client('operator');
    const creating = op.createVm({ spec: guestSpec('slow-vm', { memoryMib: 64 }), nodeId: 'slow' }, { deadlineMs: 60_000 });
    await waitFor(() => creates === 1, 10_000, 'the slow node to get the CreateVm');
    // Meanwhile: a plan is placed and stored at once, and the name being created is taken.
    const t0 = Date.now();
    const plan = await op.submitPlan(migratePlan('while-creating', 'mover', 'slow'));
    // At once: not behind the slow node's CreateVm, which answers only when released below (the
    // bound leaves a loaded host room and still fails a submit that waits for it).
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(plan.plan?.migrations[0]).toMatchObject({ vmName: 'mover', destinationNodeId: 'slow' });
    await expect(op.createVm({ spec: guestSpec('slow-vm', { memoryMib: 64 }), nodeId: 'a' })).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    // A plan for the VM being created is refused (it cannot move before it exists).
    await expect(op.submitPlan(migratePlan('move-creating', 'slow-vm', 'a'))).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    release();
    const created = await creating;
    expect(created.vm?.nodeId).toBe('slow');
  }, 60_000);
});
