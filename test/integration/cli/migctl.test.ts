/**
 * migctl against a real cluster: nats-server, the compiled coordinator, and two node daemons in
 * network namespaces (test/helpers/coordinator-cluster.ts). One small guest is created with
 * migctl, migrated with `migrate --watch`, and then looked at with every read command; the error
 * paths check exit codes 3 (unknown VM) and 4 (a viewer may not migrate). A VM of one's own
 * (an image given by path and one the node creates, both LOCAL, and a NIC) is created with
 * `--disk` and `--nic`, migrated, and found on the destination with identical disks and the same
 * MAC, answering on the VM network. migctl runs as the compiled binary, as a user would run it.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, ftruncateSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../../../services/shared/paths.js';
import { Prober } from '../../../services/testbed/prober.js';
import { startCoordinatorCluster, waitFor, type CoordinatorCluster } from '../../helpers/coordinator-cluster.js';
import { waitForGuest, type NodeClient } from '../../helpers/node-cluster.js';

const MIGCTL = join(repoRoot(), 'dist', 'services', 'coordinator', 'cli', 'migctl.js');
const VM = 'cli1';
/** A VM of one's own: disks and a NIC. */
const OWN = 'own2';
const MiB = 2 ** 20;
const run = promisify(execFile);

interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

let cluster: CoordinatorCluster | undefined;

/** Runs the compiled migctl against the test cluster; never throws on a non-zero exit. */
function migctl(args: readonly string[], opts: { identity?: string; timeoutMs?: number } = {}): Promise<CliResult> {
  const c = cluster!;
  const argv = [MIGCTL, '--coordinator', c.coordinator.address, '--cert-dir', c.certDir, ...(opts.identity ? ['--identity', opts.identity] : []), ...args];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MIGD_COORDINATOR: '', MIGD_IDENTITY: '' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      if (process.env['MIGD_TEST_LOGS'] === '1') process.stderr.write(`$ migctl ${args.join(' ')}  → exit ${code}\n${stdout}${stderr}\n`);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A long-running migctl (watch --cluster) whose output is read while it runs. */
interface Background {
  readonly stdout: () => string;
  readonly exited: Promise<number | null>;
  readonly child: ChildProcess;
}

function migctlInBackground(args: readonly string[]): Background {
  const c = cluster!;
  const child = spawn(process.execPath, [MIGCTL, '--coordinator', c.coordinator.address, '--cert-dir', c.certDir, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.resume();
  return { stdout: () => out, child, exited: new Promise((resolve) => child.once('close', (code) => resolve(code))) };
}

/** Console text of a VM until `pattern` shows up. */
async function waitConsole(client: NodeClient, name: string, pattern: RegExp, timeoutMs: number): Promise<void> {
  const ac = new AbortController();
  const t = setTimeout(() => ac.abort(), timeoutMs);
  let text = '';
  try {
    for await (const m of client.watchGuest({ name, includeConsole: true }, { signal: ac.signal })) {
      if (m.item?.$case !== 'console') continue;
      text += Buffer.from(m.item.value).toString('latin1');
      if (pattern.test(text)) return;
    }
  } catch (err) {
    if (!ac.signal.aborted) throw err;
  } finally {
    clearTimeout(t);
    ac.abort();
  }
  throw new Error(`console of ${name} did not show ${pattern} within ${timeoutMs} ms: ${text.slice(-500)}`);
}

function expectExit(r: CliResult, code: number): void {
  // Show what migctl said when the code is not the expected one.
  expect({ code: r.code, stderr: r.code === code ? '' : r.stderr, stdout: r.code === code ? '' : r.stdout.slice(-2000) }).toEqual({ code, stderr: '', stdout: '' });
}

describe('migctl against a real coordinator', () => {
  let runId = '';
  let clusterWatch: Background | undefined;

  beforeAll(async () => {
    if (!existsSync(MIGCTL)) throw new Error(`${MIGCTL} is missing: run 'npm run build'`);
    cluster = await startCoordinatorCluster(['a', 'b'], { vmNetwork: true });
  }, 120_000);

  afterAll(async () => {
    if (clusterWatch && clusterWatch.child.exitCode === null) {
      clusterWatch.child.kill('SIGKILL');
      await clusterWatch.exited;
    }
    await cluster?.close();
  }, 60_000);

  it('lists the nodes as JSON', async () => {
    const r = await migctl(['nodes', '--json']);
    expectExit(r, 0);
    const nodes = (JSON.parse(r.stdout) as { nodes: { host: { nodeId: string }; status: string }[] }).nodes;
    expect(nodes.map((n) => [n.host.nodeId, n.status])).toEqual([
      ['a', 'NODE_STATUS_UP'],
      ['b', 'NODE_STATUS_UP'],
    ]);
  });

  it('creates a VM', async () => {
    // Follows the whole cluster from here on (well before the migration starts).
    clusterWatch = migctlInBackground(['watch', '--cluster', '--json']);
    // A small, rate-limited dirtier with verification: pre-copy converges on the unshaped link.
    const r = await migctl(['create-vm', VM, '--memory', '160', '--node', 'a', '--pattern', 'random', '--workers', '1', '--bytes', '16M', '--rate', '4M'], { timeoutMs: 120_000 });
    expectExit(r, 0);
    expect(r.stdout).toMatch(new RegExp(`^vm ${VM} \\w+ on a \\(160 MiB`));
    await waitForGuest(cluster!.nodeClients['a']!, VM, 2, 60_000, (s) => s.pagesVerified > 0);
    const vms = await migctl(['vms', '--node', 'a']);
    expectExit(vms, 0);
    expect(vms.stdout).toMatch(new RegExp(`^${VM}\\s+a\\s+running\\s+160 MiB`, 'm'));
  });

  it('migrates it live with --watch and exits 0', async () => {
    const r = await migctl(['migrate', VM, '--to', 'b', '--policy', 'adaptive', '--key', 'migctl-it-1', '--watch'], { timeoutMs: 180_000 });
    expectExit(r, 0);
    const m = /^plan (\S+): 1 migration/m.exec(r.stdout);
    expect(m).not.toBeNull();
    runId = /^0\s+(\S+)\s+cli1\s+a\s+b/m.exec(r.stdout)?.[1] ?? '';
    expect(runId).not.toBe('');
    // Not a terminal: state changes and plain progress lines, then the outcome.
    expect(r.stdout).toMatch(/cli1 a→b: \S+ → precopy/);
    expect(r.stdout).toMatch(/cli1 a→b: SUCCEEDED in .*, 0 integrity errors/);
    expect(r.stdout).not.toContain('\x1b[');

    // The cluster watch saw the run complete, and stops with exit 0 on Ctrl-C.
    const w = clusterWatch!;
    const deadline = Date.now() + 15_000;
    while (!w.stdout().includes(`"runCompleted":{"runId":"${runId}"`) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 100));
    const events = w.stdout().trim().split('\n').map((l) => JSON.parse(l) as { event: { runCompleted?: { runId: string; state: string } } });
    expect(events.find((e) => e.event.runCompleted?.runId === runId)?.event.runCompleted?.state).toBe('MIGRATION_STATE_SUCCEEDED');
    w.child.kill('SIGINT');
    expect(await w.exited).toBe(0);
  }, 200_000);

  it('lists the run with runs --json', async () => {
    const r = await migctl(['runs', '--json', '--vm', VM]);
    expectExit(r, 0);
    const runs = (JSON.parse(r.stdout) as { runs: { id: string; state: string; sourceNodeId: string; destinationNodeId: string; policy?: { kind?: string } }[] }).runs;
    expect(runs).toHaveLength(1);
    expect(runs[0]).toMatchObject({ id: runId, state: 'MIGRATION_STATE_SUCCEEDED', sourceNodeId: 'a', destinationNodeId: 'b' });
    expect(runs[0]?.policy?.kind).toBe('POLICY_KIND_ADAPTIVE');
    const vms = await migctl(['vms', '--json']);
    expect((JSON.parse(vms.stdout) as { vms: { spec: { name: string }; nodeId: string }[] }).vms.find((v) => v.spec.name === VM)?.nodeId).toBe('b');
  });

  it('shows the run with its timeline summary, and replays it with watch', async () => {
    const r = await migctl(['run', runId]);
    expectExit(r, 0);
    expect(r.stdout).toContain(`run       ${runId}`);
    expect(r.stdout).toContain('route     a → b');
    expect(r.stdout).toMatch(/^state {5}succeeded$/m);
    expect(r.stdout).toMatch(/^policy {4}adaptive \(/m);
    expect(r.stdout).toMatch(/^ {2}progress {2}\d+ samples?, \d+ pass(es)?,/m);
    expect(r.stdout).toMatch(/integrity errors 0$/m);
    const w = await migctl(['watch', runId, '--states-only']);
    expectExit(w, 0);
    expect(w.stdout).toMatch(/SUCCEEDED/);
  });

  it('compares policies and exports CSV', async () => {
    const h = await migctl(['history', 'compare', '--vm', VM]);
    expectExit(h, 0);
    expect(h.stdout).toMatch(/^POLICY\s+LABEL\s+RUNS\s+OK\s+RATE/);
    expect(h.stdout).toMatch(/^adaptive\s+-\s+1\s+1\s+100%/m);
    const e = await migctl(['export', '--format', 'csv', '--run', runId]);
    expectExit(e, 0);
    const lines = e.stdout.trim().split('\n');
    expect(lines.length).toBeGreaterThan(1); // header + one row per progress sample
    expect(lines[0]).toMatch(/run_id/);
    expect(lines.slice(1).every((l) => l.includes(runId))).toBe(true);
  });

  it('exits 3 with a clear message for an unknown VM', async () => {
    const r = await migctl(['migrate', 'ghost-vm', '--to', 'b']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^migctl: not found: .*ghost-vm/);
    expect(r.stdout).toBe('');
  });

  it('exits 4 when a viewer tries to migrate', async () => {
    const r = await migctl(['migrate', VM, '--to', 'a'], { identity: 'viewer' });
    expect(r.code).toBe(4);
    expect(r.stderr).toMatch(/^migctl: permission denied for identity "viewer"/);
    // Reading is allowed to a viewer.
    expectExit(await migctl(['runs'], { identity: 'viewer' }), 0);
  });
  it("creates a VM of one's own with LOCAL disks and a NIC, migrates it, and its disks come along", async () => {
    const c = cluster!;
    const vmNet = c.tb.vm!;
    const guestIp = vmNet.guestAddress(0);
    // An image of one's own in node a's storage root (its state dir): 32 MiB, 8 MiB of random data
    // around holes, qcow2. The original bytes are kept outside the cluster to compare with.
    const images = join(c.dir, 'a', 'images');
    mkdirSync(images, { recursive: true });
    const original = join(c.dir, 'own-data.raw');
    const fd = openSync(original, 'w');
    writeSync(fd, randomBytes(4 * MiB), 0, 4 * MiB, 0);
    writeSync(fd, randomBytes(4 * MiB), 0, 4 * MiB, 20 * MiB);
    ftruncateSync(fd, 32 * MiB);
    closeSync(fd);
    const data = join(images, 'own2-data.qcow2');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', original, data]);
    const scratch = join(c.dir, 'a', 'disks', 'own2', 'scratch.raw');

    // What the README shows: an image given by path, one the node creates, the guest's disk
    // workload on the second, a NIC on the VM network.
    const create = await migctl(
      ['create-vm', OWN, '--memory', '160', '--node', 'a', '--pattern', 'idle', '--bytes', '8M',
        '--disk', `id=data,path=${data},mode=local`,
        '--disk', `id=scratch,path=${scratch},mode=local,create=64M`,
        '--disk-workload', 'scratch,bytes=8M,rate=1M',
        '--nic', `vm,ip=${guestIp}/${vmNet.prefixLength}`],
      { timeoutMs: 120_000 },
    );
    expectExit(create, 0);
    expect(create.stdout).toContain(`  disk data ${data} (qcow2, local, virtio-blk)\n  disk scratch ${scratch} (raw, local, virtio-blk)\n`);
    const mac = /^ {2}nic {2}(52:54:00(?::[0-9a-f]{2}){3}) on network vm, guest /m.exec(create.stdout)?.[1];
    expect(mac).toBeDefined();
    // The disk workload has written its blocks once before the migration.
    await waitConsole(c.nodeClients['a']!, OWN, /dpass n=[1-9]/, 90_000);
    const prober = await Prober.start({ target: guestIp, netns: vmNet.client.netns, intervalMs: 20 });
    try {
      await prober.waitForAnswers(5, 30_000);
      const m = await migctl(['migrate', OWN, '--to', 'b', '--key', 'migctl-own-1', '--watch'], { timeoutMs: 240_000 });
      expectExit(m, 0);
      // Both LOCAL disks were copied before the memory, and checked on b: the guest verified its
      // memory and the scratch disk, the node compared the data disk's digest with the source's.
      expect(m.stdout).toMatch(/own2 a→b: SUCCEEDED in .*, 2 disks copied \(.*\), 0 integrity errors, checked on the destination: .*\bworkload\b/);
      expect(m.stdout).toMatch(/checked on the destination: .*\bdisk:data\b/);
      expect(m.stdout).not.toMatch(/FAILED/);
      process.stdout.write(`migctl own VM: ${/^own2 a→b: SUCCEEDED.*$/m.exec(m.stdout)?.[0] ?? ''}\n`);
      // The guest answers on the VM network from b, with the same MAC.
      const answered = prober.answerLog.length;
      await waitFor(() => prober.answerLog.length >= answered + 5, 30_000, 'echo answers after the migration');
    } finally {
      await prober.stop();
    }
    const vms = await migctl(['vms', '--json']);
    expectExit(vms, 0);
    const vm = (JSON.parse(vms.stdout) as { vms: { spec: { name: string; disks: { id: string; path: string }[]; nics: { mac: string }[] }; nodeId: string }[] }).vms.find((v) => v.spec.name === OWN);
    expect(vm?.nodeId).toBe('b');
    expect(vm?.spec.nics.map((n) => n.mac)).toEqual([mac]);
    // On b each disk is a copy in b's storage root, and the data disk holds the original bytes.
    const onB = Object.fromEntries((vm?.spec.disks ?? []).map((d) => [d.id, d.path]));
    expect(Object.keys(onB)).toEqual(['data', 'scratch']);
    for (const p of Object.values(onB)) expect(p.startsWith(join(c.dir, 'b') + '/')).toBe(true);
    expect((await run('qemu-img', ['compare', '-U', '-f', 'raw', '-F', 'qcow2', original, onB['data']!])).stdout).toMatch(/identical/);
    // The image given by path stays on a; the one a created for the VM went once copied away.
    expect(existsSync(data)).toBe(true);
    expect(existsSync(scratch)).toBe(false);
  }, 400_000);
});
