/**
 * The lab's own cluster on this machine: two testbed hosts (network namespaces with a shaped
 * migration link), a node daemon in each, and — in coordinator mode — a nats-server and the
 * coordinator in the root namespace, the nodes registering with it. `close()` stops all of it
 * (QEMU processes die with their namespaces) and is safe to call after a partial start.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { ensurePki } from '../../services/shared/pki.js';
import { repoRoot } from '../../services/shared/paths.js';
import { startNodeDaemon, type NodeProcess } from '../../services/testbed/nodes.js';
import { Testbed } from '../../services/testbed/testbed.js';
import type { BackendMode, LabBackend } from './backend.js';
import { CoordinatorBackend } from './coordinator-backend.js';
import { DirectBackend } from './direct-backend.js';

export interface LabCluster {
  readonly mode: BackendMode;
  readonly tb: Testbed;
  readonly nodes: readonly NodeProcess[];
  readonly backend: LabBackend;
  /** The coordinator's address (coordinator mode). */
  readonly coordinatorAddress?: string;
  readonly certDir: string;
  readonly source: string;
  readonly destination: string;
  close(): Promise<void>;
}

export interface LabClusterOptions {
  /** Default: coordinator when it is built (dist/services/coordinator/main.js), else direct. */
  readonly mode?: BackendMode;
  /** Certificates (made if missing). Default: a fresh development PKI in the work dir. */
  readonly certDir?: string;
  /** Daemon log lines (default: dropped). */
  readonly onLog?: (line: string) => void;
}

/** The compiled coordinator entry point, if built. */
export function coordinatorEntry(): string | undefined {
  const p = join(repoRoot(), 'dist', 'services', 'coordinator', 'main.js');
  return existsSync(p) ? p : undefined;
}

async function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const a = srv.address();
      const port = typeof a === 'object' && a !== null ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

/** Spawns a root-namespace service and waits for `ready` in its output. */
async function startService(name: string, cmd: string, args: string[], ready: (line: string) => boolean, onLog: (l: string) => void, timeoutMs = 30_000): Promise<ChildProcess> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MIGD_LOG_LEVEL: process.env['MIGD_LOG_LEVEL'] ?? 'warn' } });
  children.add(child);
  child.once('exit', () => children.delete(child));
  const tail: string[] = [];
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} not ready within ${timeoutMs} ms:\n${tail.join('\n')}`)), timeoutMs);
    const onLine = (l: string): void => {
      tail.push(l);
      if (tail.length > 30) tail.shift();
      onLog(`[${name}] ${l}`);
      if (ready(l)) {
        clearTimeout(timer);
        resolve();
      }
    };
    createInterface({ input: child.stdout! }).on('line', onLine);
    createInterface({ input: child.stderr! }).on('line', onLine);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code} during start-up:\n${tail.join('\n')}`));
    });
  }).catch(async (err: unknown) => {
    await stopChild(child);
    throw err;
  });
  return child;
}

async function stopChild(c: ChildProcess | undefined): Promise<void> {
  if (!c || c.exitCode !== null || c.signalCode !== null) return;
  const exited = new Promise<void>((r) => c.once('exit', () => r()));
  c.kill('SIGTERM');
  const t = setTimeout(() => c.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(t);
}

/**
 * Starts the cluster.
 * @throws Error when a piece does not come up (everything started so far is stopped)
 */
export async function startLabCluster(opts: LabClusterOptions = {}): Promise<LabCluster> {
  const mode: BackendMode = opts.mode ?? (coordinatorEntry() ? 'coordinator' : 'direct');
  const onLog = opts.onLog ?? (() => undefined);
  // Short: unix socket paths under the node state dirs are limited to 107 bytes.
  const work = await mkdtemp(join(tmpdir(), 'migd-lab-'));
  const certDir = opts.certDir ?? join(work, 'pki');
  ensurePki(certDir);
  let tb: Testbed | undefined;
  let nats: ChildProcess | undefined;
  let coordinator: ChildProcess | undefined;
  let backend: LabBackend | undefined;
  const nodes: NodeProcess[] = [];
  const close = async (): Promise<void> => {
    await backend?.close().catch(() => undefined);
    await Promise.all(nodes.map((n) => n.stop().catch(() => undefined)));
    await stopChild(coordinator);
    await stopChild(nats);
    await tb?.destroy(); // kills the QEMU processes left in the namespaces
    await rm(work, { recursive: true, force: true });
  };
  try {
    tb = await Testbed.create({ hosts: ['a', 'b'] });
    let coordinatorAddress: string | undefined;
    if (mode === 'coordinator') {
      const entry = coordinatorEntry();
      if (!entry) throw new Error('the coordinator is not built (dist/services/coordinator/main.js): run npm run build, or use --direct');
      const natsBin = process.env['NATS_SERVER_BIN'] ?? (existsSync('/usr/sbin/nats-server') ? '/usr/sbin/nats-server' : 'nats-server');
      const natsPort = await freePort('127.0.0.1');
      const natsDir = join(work, 'nats');
      await mkdir(natsDir);
      nats = await startService('nats', natsBin, ['-js', '-a', '127.0.0.1', '-p', String(natsPort), '-sd', natsDir], (l) => l.includes('Server is ready'), onLog);
      const port = await freePort(tb.rootAddress);
      coordinatorAddress = `${tb.rootAddress}:${port}`;
      coordinator = await startService(
        'coordinator',
        process.execPath,
        [entry, '--listen', coordinatorAddress, '--db', join(work, 'history.sqlite'), '--nats', `nats://127.0.0.1:${natsPort}`, '--tls-dir', certDir],
        (l) => l.includes('"ready":true'),
        onLog,
      );
    }
    for (const h of ['a', 'b']) {
      nodes.push(
        await startNodeDaemon(tb.host(h), {
          stateDir: join(work, h),
          certDir,
          env: { MIGD_LOG_LEVEL: process.env['MIGD_LOG_LEVEL'] ?? 'warn' },
          onLog: (l) => onLog(`[node ${h}] ${l}`),
          ...(coordinatorAddress ? { coordinator: coordinatorAddress } : {}),
        }),
      );
    }
    if (coordinatorAddress) {
      const cb = new CoordinatorBackend({ address: coordinatorAddress, certDir });
      backend = cb;
      await cb.waitForNodes(2, 30_000);
    } else {
      backend = new DirectBackend(nodes.map((n) => ({ id: n.nodeId, managementAddress: n.address, migrationAddress: n.host.migrationAddress, client: n.client() })));
    }
    const cluster: LabCluster = {
      mode,
      tb,
      nodes,
      backend,
      certDir,
      source: 'a',
      destination: 'b',
      close,
      ...(coordinatorAddress ? { coordinatorAddress } : {}),
    };
    return cluster;
  } catch (err) {
    await close();
    throw err;
  }
}
