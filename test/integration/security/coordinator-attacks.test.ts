import { statSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmState, type HostInfo, type VmInfo } from '../../../services/shared/gen/migd/v1/common.js';
import { CoordinatorServiceService, PlanState } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { createPki, identityFiles, nodeIdentity, revokeIdentity } from '../../../services/shared/pki.js';
import { createClient } from '../../../services/shared/rpc/client.js';
import { startCoordinatorProcess, type CoordinatorProcess } from '../../../services/testbed/cluster.js';
import { migratePlan, waitFor, type CoordinatorClient } from '../../helpers/coordinator-cluster.js';
import { guestSpec } from '../../helpers/node-cluster.js';
import { freePort } from '../../helpers/nats-server.js';

// Attacks on the coordinator by callers holding valid certificates: a node claiming another
// node's VM (finding 8), an operator reusing another's idempotency key (finding 10), and the
// state the coordinator writes being readable by others (finding 9). The compiled coordinator
// runs as a child process with its SQLite file; the "nodes" are gRPC callers with their own
// per-node certificates — no QEMU is involved, because every attack here is on the control plane.
describe('coordinator attacks', () => {
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
    migrationCapabilities: ['postcopy-ram'],
    labels: {},
    machineTypes: [],
    networks: [],
  });
  const vm = (name: string, nodeId: string, memoryMib = 192): VmInfo => ({
    spec: guestSpec(name, { memoryMib }),
    nodeId,
    state: VmState.VM_STATE_RUNNING,
    pid: 4242,
    startedAt: new Date(),
    migrationRunId: '',
    lastGuestPerf: undefined,
    qemuCpuSeconds: 0,
    localDisks: [],
  });
  let hosts: Record<string, HostInfo>;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'migd-sec-'));
    certDir = join(dir, 'pki');
    createPki(certDir, [{ name: 'migd-coordinator', dnsNames: ['localhost'] }, { name: 'operator' }, { name: 'alice' }, { name: 'mallory' }, { name: 'viewer' }, { name: nodeIdentity('a') }, { name: nodeIdentity('b') }]);
    const listen = `127.0.0.1:${await freePort()}`;
    // The database goes into a folder that does not exist yet: the coordinator creates it.
    // Nothing listens on these ports: runs the plans start fail at the node call, which is fine —
    // the attacks are on what the coordinator records. A short node-call deadline (2 s; StartMigration
    // 12 s) lets such a run fail in seconds instead of after the default 15 s / 90 s.
    coordinator = await startCoordinatorProcess({ listen, db: join(dir, 'state', 'coordinator', 'history.sqlite'), certDir, args: ['--roles', 'alice=operator,mallory=operator', '--heartbeat-ms', '60000', '--node-call-deadline-ms', '2000'], logLevel: 'info' });
    hosts = { a: host('a', await freePort()), b: host('b', await freePort()) };
    for (const id of ['a', 'b'] as const) await client(nodeIdentity(id)).registerNode({ host: hosts[id] });
    await client(nodeIdentity('a')).heartbeat({ host: hosts['a'], vms: [vm('victim', 'a'), vm('other', 'a')] });
    await client(nodeIdentity('b')).heartbeat({ host: hosts['b'], vms: [] });
  }, 60_000);

  afterAll(async () => {
    for (const c of clients.splice(0)) c.close();
    await coordinator?.kill();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a node that claims another node\'s VM in its heartbeat changes nothing', async () => {
    const viewer = client('viewer');
    const before = await viewer.listVms({ nodeId: '' });
    expect(before.vms.map((v) => `${v.spec?.name}@${v.nodeId}`)).toEqual(['other@a', 'victim@a']);
    // b says it runs "victim" (and a huge copy of it, to bend placement's memory accounting).
    const nodeB = client(nodeIdentity('b'));
    for (let i = 0; i < 3; i++) await nodeB.heartbeat({ host: hosts['b'], vms: [vm('victim', 'b', 32_768), vm('mine', 'b')] });
    const after = await viewer.listVms({ nodeId: '' });
    expect(after.vms.map((v) => `${v.spec?.name}@${v.nodeId}`)).toEqual(['other@a', 'victim@a', 'mine@b']);
    const nodes = await viewer.listNodes({});
    expect(Object.fromEntries(nodes.nodes.map((n) => [n.host?.nodeId, n.vmCount]))).toEqual({ a: 2, b: 1 });
    await waitFor(() => coordinator.logs.some((l) => l.includes('VM ownership conflict') && l.includes('victim')), 5000, 'the conflict to be logged');
    // The store agrees: a plan for "victim" still moves it from a.
    const plan = await client('operator').submitPlan(migratePlan('claim-check', 'victim', 'b'));
    expect(plan.plan?.migrations[0]).toMatchObject({ vmName: 'victim', sourceNodeId: 'a', destinationNodeId: 'b' });
    // The "nodes" here answer no calls, so that run fails once the coordinator has stopped trying
    // the source and the destination; the VM is free for the next test only after that.
    const planId = plan.plan!.id;
    await waitFor(async () => (await viewer.getPlan({ planId })).plan?.state === PlanState.PLAN_STATE_FAILED, 100_000, 'the claim-check plan to fail');
    // b's own VM is taken as b's (no other node owns it).
    expect(after.vms.find((v) => v.spec?.name === 'mine')?.nodeId).toBe('b');
  });

  it('idempotency keys are per identity: another operator cannot pre-claim or shadow a key', async () => {
    const op = client('operator');
    const alice = client('alice');
    // alice takes the key first, for another VM.
    const first = await alice.submitPlan(migratePlan('shared-key', 'other', 'b'));
    expect(first.existing).toBe(false);
    // The operator's use of the same key is its own plan, for its own request.
    const mine = await op.submitPlan(migratePlan('shared-key', 'victim', 'b', undefined, { label: 'op' }));
    expect(mine.existing).toBe(false);
    expect(mine.plan?.id).not.toBe(first.plan?.id);
    expect(mine.plan?.idempotencyKey).toBe('shared-key');
    expect(mine.plan?.migrations.map((m) => m.vmName)).toEqual(['victim']);
    // The same key and request from the same identity returns the original plan.
    const again = await op.submitPlan(migratePlan('shared-key', 'victim', 'b', undefined, { label: 'op' }));
    expect(again).toMatchObject({ existing: true, plan: { id: mine.plan?.id } });
    // The same key with a different request is refused, naming what differs; nothing is made.
    const runsBefore = (await op.listRuns({ filter: undefined, pageSize: 1000, pageToken: '' })).runs.length;
    const refused = (p: Promise<unknown>): Promise<{ code?: string; reason?: string; message: string }> =>
      p.then(
        () => ({ message: 'accepted' }),
        (err: { code?: string; reason?: string; message: string }) => ({ code: err.code, reason: err.reason, message: err.message }),
      );
    const reused = await refused(op.submitPlan(migratePlan('shared-key', 'other', 'b', undefined, { label: 'op' })));
    expect(reused).toMatchObject({ code: 'ALREADY_EXISTS', reason: 'IDEMPOTENCY_KEY_REUSED' });
    expect(reused.message).toMatch(/differs in: migrate\.vmName\b/);
    const bumped = await refused(alice.submitPlan(migratePlan('shared-key', 'other', 'b', undefined, { priority: 5 })));
    expect(bumped).toMatchObject({ code: 'ALREADY_EXISTS' });
    expect(bumped.message).toMatch(/differs in: priority/);
    expect((await op.listRuns({ filter: undefined, pageSize: 1000, pageToken: '' })).runs.length).toBe(runsBefore);
    expect((await alice.getPlan({ planId: first.plan!.id })).plan?.migrations.map((m) => m.vmName)).toEqual(['other']);
  });

  it('refuses a revoked operator certificate; the other identities keep working', async () => {
    const mallory = client('mallory');
    expect((await mallory.listNodes({})).nodes).toHaveLength(2);
    mallory.close();
    const runsBefore = (await client('viewer').listRuns({ filter: undefined, pageSize: 1000, pageToken: '' })).runs.length;
    revokeIdentity(certDir, 'mallory');
    const attempt = async (call: (c: CoordinatorClient) => Promise<unknown>): Promise<string | undefined> => {
      const c = client('mallory');
      const code = await call(c).then(() => 'OK', (err: { code?: string }) => err.code);
      c.close();
      return code;
    };
    // The running coordinator picks the list up within a second (new connections).
    await waitFor(async () => (await attempt((c) => c.listNodes({}))) === 'UNAUTHENTICATED', 10_000, 'the coordinator to refuse the revoked certificate');
    expect(await attempt((c) => c.submitPlan(migratePlan('mallory-1', 'other', 'b')))).toBe('UNAUTHENTICATED');
    expect((await client('viewer').listRuns({ filter: undefined, pageSize: 1000, pageToken: '' })).runs.length).toBe(runsBefore);
    expect((await client('operator').listNodes({})).nodes).toHaveLength(2);
  });

  it('keeps its state private: 0700 folders, 0600 database and WAL files', () => {
    const state = join(dir, 'state', 'coordinator');
    expect(statSync(join(dir, 'state')).mode & 0o777).toBe(0o700);
    expect(statSync(state).mode & 0o777).toBe(0o700);
    for (const f of ['history.sqlite', 'history.sqlite-wal', 'history.sqlite-shm']) expect([f, statSync(join(state, f)).mode & 0o777]).toEqual([f, 0o600]);
  });
});
