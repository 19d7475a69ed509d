/**
 * A real `nats-server -js` for tests: bound to 127.0.0.1 on a free port, JetStream store in a
 * temp dir, readiness taken from its log. It can be stopped and started again on the same port
 * and store dir (to test outages). Every server started here is killed when the process exits,
 * as a last resort behind the tests' own teardown.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type ConnectionOptions, type NatsConnection } from 'nats';
import { freePort } from '../../services/shared/net.js';

export { freePort };

/** Path of the nats-server binary: $NATS_SERVER_BIN, else /usr/sbin/nats-server, else PATH. */
export function natsServerBinary(): string {
  const env = process.env['NATS_SERVER_BIN'];
  if (env !== undefined && env !== '') return env;
  return existsSync('/usr/sbin/nats-server') ? '/usr/sbin/nats-server' : 'nats-server';
}


const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

/** A test nats-server. */
export interface TestNatsServer {
  readonly port: number;
  /** `nats://127.0.0.1:<port>`. */
  readonly url: string;
  /** JetStream store dir (kept across stop/start). */
  readonly storeDir: string;
  /** True while the process runs. */
  readonly running: boolean;
  /** Stops the server (SIGTERM, SIGKILL after 5 s); no-op when stopped. */
  stop(): Promise<void>;
  /** Starts it again on the same port and store dir. */
  start(): Promise<void>;
  /** Stops it and removes the store dir. Idempotent. */
  dispose(): Promise<void>;
}

/** Starts a nats-server with JetStream. */
export async function startNatsServer(opts: { storeDir?: string } = {}): Promise<TestNatsServer> {
  const storeDir = opts.storeDir ?? (await mkdtemp(join(tmpdir(), 'migd-nats-')));
  const ownsDir = opts.storeDir === undefined;
  let port = 0;
  let proc: ChildProcess | undefined;
  let lastError: unknown;
  // The port is free when picked but could be taken before the server binds: retry a few times.
  for (let attempt = 0; attempt < 5 && proc === undefined; attempt++) {
    port = await freePort();
    try {
      proc = await spawnServer(port, storeDir);
    } catch (err) {
      lastError = err;
    }
  }
  if (proc === undefined) {
    if (ownsDir) await rm(storeDir, { recursive: true, force: true });
    throw lastError instanceof Error ? lastError : new Error(String(lastError));
  }
  let disposed = false;
  const handle: TestNatsServer = {
    port,
    url: `nats://127.0.0.1:${port}`,
    storeDir,
    get running() {
      return proc !== undefined && proc.exitCode === null && proc.signalCode === null;
    },
    async stop() {
      const p = proc;
      proc = undefined;
      if (p !== undefined) await killProcess(p);
    },
    async start() {
      if (disposed) throw new Error('nats-server handle disposed');
      if (proc !== undefined) return;
      proc = await spawnServer(port, storeDir);
    },
    async dispose() {
      disposed = true;
      await handle.stop();
      if (ownsDir) await rm(storeDir, { recursive: true, force: true });
    },
  };
  return handle;
}

async function spawnServer(port: number, storeDir: string): Promise<ChildProcess> {
  const p = spawn(natsServerBinary(), ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', storeDir, '-n', `migd-test-${port}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(p);
  p.once('exit', () => live.delete(p));
  let log = '';
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`nats-server did not become ready in 10 s:\n${log}`)), 10_000);
      const onData = (chunk: Buffer): void => {
        log += chunk.toString();
        if (log.includes('Server is ready')) {
          clearTimeout(timer);
          resolve();
        }
      };
      p.stdout?.on('data', onData);
      p.stderr?.on('data', onData);
      p.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      p.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`nats-server exited (${code ?? signal}) before it was ready:\n${log}`));
      });
    });
  } catch (err) {
    await killProcess(p);
    throw err;
  }
  // Keep draining its output so a chatty server never blocks on a full pipe.
  p.stdout?.resume();
  p.stderr?.resume();
  return p;
}

async function killProcess(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
  p.kill('SIGTERM');
  const timer = setTimeout(() => p.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

/** Connects to a test server, reconnecting forever quickly (for outage tests). */
export function connectTest(server: Pick<TestNatsServer, 'url'>, opts: Partial<ConnectionOptions> = {}): Promise<NatsConnection> {
  return connect({
    servers: server.url,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 100,
    reconnectJitter: 0,
    ...opts,
  });
}

/**
 * Drains a connection and waits until it is closed; closes it outright when draining fails or
 * takes over 3 s (e.g. the server is down). Ignores an already closed one.
 */
export async function closeConnection(nc: NatsConnection | undefined): Promise<void> {
  if (nc === undefined || nc.isClosed()) return;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), 3000);
  });
  try {
    const r = await Promise.race([nc.drain().then(() => 'drained' as const), timeout]);
    if (r === 'timeout') await nc.close();
  } catch {
    await nc.close();
  } finally {
    clearTimeout(timer);
  }
  await nc.closed();
}
