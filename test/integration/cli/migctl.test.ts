/**
 * migctl against a real cluster: nats-server, the compiled coordinator, and two node daemons in
 * network namespaces (test/helpers/coordinator-cluster.ts). One small guest is created with
 * migctl, migrated with `migrate --watch`, and then looked at with every read command; the error
 * paths check exit codes 3 (unknown VM) and 4 (a viewer may not migrate). migctl runs as the
 * compiled binary, as a user would run it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../../../services/shared/paths.js';
import { startCoordinatorCluster, type CoordinatorCluster } from '../../helpers/coordinator-cluster.js';
import { waitForGuest } from '../../helpers/node-cluster.js';

const MIGCTL = join(repoRoot(), 'dist', 'services', 'coordinator', 'cli', 'migctl.js');
const VM = 'cli1';

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

function expectExit(r: CliResult, code: number): void {
  // Show what migctl said when the code is not the expected one.
  expect({ code: r.code, stderr: r.code === code ? '' : r.stderr, stdout: r.code === code ? '' : r.stdout.slice(-2000) }).toEqual({ code, stderr: '', stdout: '' });
}

describe('migctl against a real coordinator', () => {
  let runId = '';
  let clusterWatch: Background | undefined;

  beforeAll(async () => {
    if (!existsSync(MIGCTL)) throw new Error(`${MIGCTL} is missing: run 'npm run build'`);
    cluster = await startCoordinatorCluster(['a', 'b']);
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
});
