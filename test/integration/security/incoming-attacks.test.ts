/**
 * Issue 17, the destination's side: only the source the coordinator announced (ExpectIncoming)
 * may prepare a run's incoming side, and only its certificate may connect to the migration port.
 * Three node daemons in their own network namespaces (a: source, b: destination, c: another node
 * of the cluster, the attacker), real QEMU, small guests. Each attack must fail and change nothing.
 */
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrationState, VmState } from '../../../services/shared/gen/migd/v1/common.js';
import { identityFiles, nodeIdentity } from '../../../services/shared/pki.js';
import { followMigration, guestSpec, policy, startMigration, startNodeCluster, waitForGuest, type NodeCluster } from '../../helpers/node-cluster.js';

/**
 * The rogue: run with node inside host c's namespace. Each attempt connects to the destination's
 * migration port — over TLS with a certificate of the cluster's CA, or in plain text — sends the
 * start of a migration stream (QEMU_VM_FILE_MAGIC, version 3, then junk) and reports whether the
 * server closed the connection and whether it ever sent anything.
 */
const ROGUE = `
import { connect as tcp } from 'node:net';
import { connect as tls } from 'node:tls';
import { readFileSync } from 'node:fs';
const { host, port, attempts } = JSON.parse(process.argv[2]);
const header = Buffer.concat([Buffer.from([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3]), Buffer.alloc(4096, 0x41)]);
const one = (a) => new Promise((resolve) => {
  const r = { name: a.name, secured: false, received: 0, closedByServer: false, error: '' };
  const s = a.tls
    ? tls({ host, port, ca: readFileSync(a.tls.caFile), cert: readFileSync(a.tls.certFile), key: readFileSync(a.tls.keyFile), rejectUnauthorized: false, checkServerIdentity: () => undefined })
    : tcp({ host, port });
  const timer = setTimeout(() => { s.destroy(); resolve(r); }, 20000);
  s.on(a.tls ? 'secureConnect' : 'connect', () => { r.secured = !!a.tls; s.write(header, () => undefined); });
  s.on('data', (d) => { r.received += d.length; });
  s.on('error', (e) => { r.error = e.code || e.message; });
  s.on('close', () => { clearTimeout(timer); r.closedByServer = true; resolve(r); });
});
const results = await Promise.all(attempts.map(one));
process.stdout.write(JSON.stringify(results));
`;

interface RogueResult {
  readonly name: string;
  readonly secured: boolean;
  readonly received: number;
  readonly closedByServer: boolean;
  readonly error: string;
}

describe('a destination accepts a run only from its announced source (issue 17)', () => {
  let c: NodeCluster;
  beforeAll(async () => {
    c = await startNodeCluster(['a', 'b', 'c']);
  }, 180_000);
  afterAll(async () => {
    await c?.close();
  });
  const coordinator = (h: string) => c.clients[h]!;
  /** A client of node `to` presenting node `as`'s certificate (as a peer node daemon does). */
  const asNode = (as: string, to: string) => c.nodes[to]!.client(nodeIdentity(as));
  const endpoint = (h: string) => ({ nodeId: h, managementAddress: c.nodes[h]!.address, migrationAddress: c.tb.host(h).migrationAddress });
  const denied = { code: 'PERMISSION_DENIED' };

  /** QEMU processes in host `h`'s namespace (pid → command line). */
  const qemus = async (h: string): Promise<Map<number, string>> => {
    const out = (await c.tb.host(h).exec('ip', ['netns', 'pids', c.tb.host(h).netns], { check: false })).stdout;
    const found = new Map<number, string>();
    for (const pid of out.split(/\s+/).filter(Boolean).map(Number)) {
      const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmd.includes('qemu-system')) found.set(pid, cmd.replaceAll('\0', ' '));
    }
    return found;
  };
  /** What a destination holds: its VMs, migration records and QEMU processes. */
  const snapshot = async (h: string) => ({
    vms: (await coordinator(h).listVms({})).vms.map((v) => `${v.spec?.name}:${v.state}:${v.pid}`).sort(),
    records: existsSync(join(c.nodes[h]!.stateDir, 'migrations')) ? readdirSync(join(c.nodes[h]!.stateDir, 'migrations')).sort() : [],
    qemus: [...(await qemus(h)).keys()].sort(),
  });

  it('refuses PrepareIncoming from the source itself when the coordinator announced nothing, starting nothing', async () => {
    const before = await snapshot('b');
    const fromA = asNode('a', 'b');
    await expect(fromA.prepareIncoming({ runId: 'run-unannounced', spec: guestSpec('unannounced', { memoryMib: 128 }), policy: policy({}), disks: [], source: endpoint('a') })).rejects.toMatchObject({ ...denied, reason: 'NOT_EXPECTED_SOURCE' });
    // Announced for another run, or for another VM: still refused.
    await coordinator('b').expectIncoming({ runId: 'run-other', sourceNodeId: 'a', vmName: 'unannounced' });
    await expect(fromA.prepareIncoming({ runId: 'run-unannounced', spec: guestSpec('unannounced', { memoryMib: 128 }), policy: policy({}), disks: [] })).rejects.toMatchObject(denied);
    await expect(fromA.prepareIncoming({ runId: 'run-other', spec: guestSpec('another-vm', { memoryMib: 128 }), policy: policy({}), disks: [] })).rejects.toMatchObject(denied);
    // Only the coordinator may announce a run: a node cannot announce itself.
    await expect(fromA.expectIncoming({ runId: 'run-unannounced', sourceNodeId: 'a', vmName: 'unannounced' })).rejects.toMatchObject(denied);
    await expect(fromA.prepareIncoming({ runId: 'run-unannounced', spec: guestSpec('unannounced', { memoryMib: 128 }), policy: policy({}), disks: [] })).rejects.toMatchObject(denied);
    expect(await snapshot('b')).toEqual(before);
  });

  it("refuses node c with its own certificate, and with a's name in the source field, for a run a→b; nothing changes on b and a's PrepareIncoming then works", async () => {
    const run = 'run-a-to-b';
    const spec = guestSpec('stolen', { memoryMib: 128 });
    await coordinator('b').expectIncoming({ runId: run, sourceNodeId: 'a', vmName: 'stolen' });
    const before = await snapshot('b');
    const fromC = asNode('c', 'b');
    await expect(fromC.prepareIncoming({ runId: run, spec, policy: policy({}), disks: [] })).rejects.toMatchObject({ ...denied, reason: 'NOT_EXPECTED_SOURCE' });
    await expect(fromC.prepareIncoming({ runId: run, spec, policy: policy({}), disks: [], source: endpoint('a') })).rejects.toMatchObject({ ...denied, reason: 'NOT_EXPECTED_SOURCE' });
    await expect(fromC.prepareIncoming({ runId: run, spec, policy: policy({}), disks: [], source: endpoint('c') })).rejects.toMatchObject(denied);
    // Nor can c tear the run down or block it before a prepares it.
    await expect(fromC.abortIncoming({ runId: run })).rejects.toMatchObject(denied);
    await expect(fromC.pauseIncoming({ runId: run })).rejects.toMatchObject(denied);
    await expect(fromC.confirmIncoming({ runId: run, timeoutMs: 1, resume: true })).rejects.toMatchObject(denied);
    // a presenting itself while naming c as the source is refused too.
    await expect(asNode('a', 'b').prepareIncoming({ runId: run, spec, policy: policy({}), disks: [], source: endpoint('c') })).rejects.toMatchObject(denied);
    expect(await snapshot('b')).toEqual(before);
    expect((await coordinator('b').listVms({})).vms.map((v) => v.spec?.name)).not.toContain('stolen');

    // The announced source is not hindered by any of it.
    const fromA = asNode('a', 'b');
    const prepared = await fromA.prepareIncoming({ runId: run, spec, policy: policy({}), disks: [], source: endpoint('a') });
    expect(prepared.port).toBeGreaterThan(0);
    expect((await coordinator('b').getVm({ name: 'stolen' })).vm?.state).toBe(VmState.VM_STATE_INCOMING);
    // Once prepared, the run stays a's: c still cannot touch it.
    await expect(fromC.abortIncoming({ runId: run })).rejects.toMatchObject(denied);
    await fromA.abortIncoming({ runId: run });
    await expect(coordinator('b').getVm({ name: 'stolen' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('drops rogue connections to a waiting destination (a viewer and another node over TLS, plain text); the destination stays unharmed and the real migration from a then succeeds', async () => {
    const a = coordinator('a');
    const b = coordinator('b');
    await a.createVm({ spec: guestSpec('target', { memoryMib: 128, bytesPerWorker: 32 << 20, rate: 4 << 20 }) });
    const before = await waitForGuest(a, 'target', 2, 90_000, (s) => s.pagesVerified > 0);
    // a's stream cannot reach b yet (frames dropped between them: its connect waits), so b's
    // incoming QEMU listens with nobody connected while the rogue on c tries its luck.
    await c.tb.cut('a', { network: 'migration', to: 'b' });
    try {
      await startMigration(c, 'a', { runId: 'run-target', vmName: 'target', destination: endpoint('b'), policy: policy({}) });
      const { vm: waiting } = await b.getVm({ name: 'target' });
      expect(waiting?.state).toBe(VmState.VM_STATE_INCOMING);
      const listening = await listeners('b');
      expect(listening.length).toBeGreaterThan(0);
      const port = listening[0]!;
      const script = join(c.dir, 'rogue.mjs');
      writeFileSync(script, ROGUE);
      const attempts = [
        { name: 'viewer', tls: identityFiles(c.certDir, 'viewer') },
        { name: 'node c', tls: identityFiles(c.certDir, nodeIdentity('c')) },
        { name: 'plain text' },
      ];
      const res = await c.tb.host('c').exec(process.execPath, [script, JSON.stringify({ host: c.tb.host('b').migrationAddress, port, attempts })], { timeoutMs: 60_000 });
      const results = JSON.parse(res.stdout) as RogueResult[];
      console.log(`rogue connections to b:${port}: ${results.map((r) => `${r.name}: closed by b=${r.closedByServer}${r.error ? ` (${r.error})` : ''}`).join('; ')}`);
      for (const r of results) {
        expect(r.closedByServer, r.name).toBe(true);
        expect(r.received, r.name).toBe(0);
      }
      // Unharmed: the same incoming QEMU still waits on the same port.
      const { vm: still } = await b.getVm({ name: 'target' });
      expect(still?.state).toBe(VmState.VM_STATE_INCOMING);
      expect(still?.pid).toBe(waiting?.pid);
      expect(await listeners('b')).toContain(port);
    } finally {
      await c.tb.restore('a', { network: 'migration', to: 'b' });
    }
    const trace = await followMigration(a, 'run-target');
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(trace.result.policy?.tls).toBe(true);
    const after = await waitForGuest(b, 'target', 2, 60_000, (s) => s.pagesVerified > before.at(-1)!.pagesVerified);
    expect(after.at(-1)!.integrityErrors).toBe(0);
    await b.destroyVm({ name: 'target' });
  }, 300_000);

  /** TCP ports listening on host `h`'s migration address (the incoming QEMU's). */
  async function listeners(h: string): Promise<number[]> {
    const addr = c.tb.host(h).migrationAddress;
    const out = (await c.tb.host(h).exec('ss', ['-Htln'])).stdout;
    return out
      .split('\n')
      .map((l) => l.trim().split(/\s+/)[3] ?? '')
      .filter((local) => local.startsWith(`${addr}:`))
      .map((local) => Number(local.slice(addr.length + 1)));
  }
});
