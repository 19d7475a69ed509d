/**
 * The contracts work for services in other languages: Python stubs generated from proto/ with
 * Debian's protoc and grpc_python_plugin (clients/python/generate.sh), run by the system Python
 * (python3-grpcio, python3-protobuf), talk to a real coordinator over mutual TLS — list nodes,
 * submit a plan, follow the run on the Watch stream to its completion, read the run back.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../../../services/shared/paths.js';
import { createGuest, startCoordinatorCluster, type CoordinatorCluster } from '../../helpers/coordinator-cluster.js';
import { guestSpec } from '../../helpers/node-cluster.js';

// Debian's python3 with its grpcio/protobuf packages; a pyenv python on PATH has neither.
const PYTHON = process.env['MIGD_PYTHON'] ?? '/usr/bin/python3';
const SCRIPT = join(repoRoot(), 'test', 'integration', 'python', 'migrate_and_watch.py');
const GENERATE = join(repoRoot(), 'clients', 'python', 'generate.sh');
const VM = 'py1';

type Json = Record<string, any>;

describe('a Python client generated from proto/', () => {
  let cluster: CoordinatorCluster | undefined;
  let stubs = '';

  beforeAll(async () => {
    const probe = spawnSync(PYTHON, ['-c', 'import grpc, google.protobuf; print(grpc.__version__)'], { encoding: 'utf8' });
    if (probe.status !== 0) throw new Error(`${PYTHON} cannot import grpc/google.protobuf (apt-get install python3-grpcio python3-protobuf; scripts/setup does): ${probe.stderr || probe.error?.message}`);
    stubs = mkdtempSync(join(tmpdir(), 'migd-py-'));
    const gen = spawnSync('bash', [GENERATE, stubs], { encoding: 'utf8', env: { ...process.env, MIGD_PYTHON: PYTHON } });
    if (gen.status !== 0) throw new Error(`generating the Python stubs failed: ${gen.stderr}`);
    cluster = await startCoordinatorCluster(['a', 'b']);
    await createGuest(cluster, 'a', guestSpec(VM, { memoryMib: 160, bytesPerWorker: 16 * 2 ** 20, rate: 4 * 2 ** 20 }));
  }, 180_000);

  afterAll(async () => {
    await cluster?.close();
    if (stubs) rmSync(stubs, { recursive: true, force: true });
  }, 60_000);

  it('submits a migration over mTLS and watches it to success', async () => {
    const c = cluster!;
    const args = [SCRIPT, '--stubs', stubs, '--coordinator', c.coordinator.address, '--cert-dir', c.certDir, '--vm', VM, '--to', 'b', '--policy', 'POLICY_KIND_FIXED', '--key', 'python-it-1', '--timeout', '150'];
    const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
      const child = spawn(PYTHON, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const timer = setTimeout(() => child.kill('SIGKILL'), 170_000);
      child.once('error', reject);
      child.once('close', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr });
      });
    });
    if (process.env['MIGD_TEST_LOGS'] === '1') process.stderr.write(`$ ${PYTHON} ${args.join(' ')}  → exit ${r.code}\n${r.stdout}${r.stderr}\n`);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });

    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Json);
    const nodes = lines[0]?.['nodes'] as Json[];
    expect(nodes.map((n) => n['host']['nodeId'])).toEqual(['a', 'b']);

    const plan = lines[1]?.['plan'] as Json;
    expect(plan['idempotencyKey']).toBe('python-it-1');
    expect(plan['migrations']).toHaveLength(1);
    expect(plan['migrations'][0]).toMatchObject({ vmName: VM, sourceNodeId: 'a', destinationNodeId: 'b' });
    const runId = plan['migrations'][0]['runId'] as string;

    // Events of this run, in run-sequence order, ending with its completion.
    const events = lines.filter((l) => 'event' in l).map((l) => l['event'] as Json);
    const seqs = events.map((e) => Number(e['runSequence'] ?? 0)).filter((s) => s > 0);
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    expect(events.some((e) => e['runState']?.change?.to === 'MIGRATION_STATE_PRECOPY')).toBe(true);
    const done = events.at(-1)?.['runCompleted'] as Json;
    expect(done).toMatchObject({ runId, vmName: VM, state: 'MIGRATION_STATE_SUCCEEDED' });

    // GetRun agrees; proto JSON writes 64-bit integers as strings and leaves zeros out.
    const run = lines.at(-1)?.['run'] as Json;
    expect(run).toMatchObject({ id: runId, state: 'MIGRATION_STATE_SUCCEEDED', destinationNodeId: 'b' });
    expect(Number(run['stats']['transferredBytes'])).toBeGreaterThan(0);
    expect(Number(run['stats']['integrityErrors'] ?? 0)).toBe(0);

    // And the TypeScript side sees the VM on b.
    const { vms } = await c.client().listVms({ nodeId: 'b' });
    expect(vms.map((v) => v.spec?.name)).toContain(VM);
  }, 200_000);
});
