/**
 * A real `nats-server -js` for tests: bound to 127.0.0.1 on a free port, JetStream store in a
 * temp dir, readiness taken from its log. It runs locked down like the local cluster's: TLS that
 * requires a client certificate of the CA, and users with permissions (a publisher that may
 * publish events and manage the stream, a reader that may only consume) — see
 * services/shared/events/nats-security.ts. It can be stopped and started again on the same port
 * and store dir (to test outages). Every server started here is killed when the process exits,
 * as a last resort behind the tests' own teardown.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type ConnectionOptions, type NatsConnection } from 'nats';
import { NATS_PUBLISHER_USER, NATS_READER_USER, NATS_SERVER_IDENTITY, createNatsUsers, natsConnectOptions, natsServerConfig, type NatsClientAuth } from '../../services/shared/events/nats-security.js';
import { freePort } from '../../services/shared/net.js';
import { createPki, ensurePki, identityFiles } from '../../services/shared/pki.js';

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

/** Who a test client is on the server. */
export type NatsRole = 'publisher' | 'reader';

/** A test nats-server. */
export interface TestNatsServer {
  readonly port: number;
  /** `tls://127.0.0.1:<port>` (TLS is required). */
  readonly url: string;
  /** The PKI folder its certificates come from. */
  readonly certDir: string;
  /** How a client authenticates as the publisher (certificate migd-coordinator) or a reader (operator). */
  auth(role: NatsRole): NatsClientAuth & { user: string; passwordFile: string };
  /** Coordinator flags that connect it as the publisher. */
  coordinatorArgs(): string[];
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

/**
 * Starts a nats-server with JetStream, TLS and users. `certDir`: a PKI whose CA signs the server's
 * and the clients' certificates (default: a fresh one of its own, removed by dispose()).
 */
export async function startNatsServer(opts: { storeDir?: string; certDir?: string } = {}): Promise<TestNatsServer> {
  const storeDir = opts.storeDir ?? (await mkdtemp(join(tmpdir(), 'migd-nats-')));
  const ownsDir = opts.storeDir === undefined;
  const secrets = await mkdtemp(join(tmpdir(), 'migd-nats-auth-'));
  const certDir = opts.certDir ?? join(secrets, 'pki');
  const server = { name: NATS_SERVER_IDENTITY, usage: 'server' as const, dnsNames: ['localhost'] };
  if (opts.certDir) ensurePki(certDir, [server, { name: 'migd-coordinator' }, { name: 'operator' }]);
  else createPki(certDir, [server, { name: 'migd-coordinator' }, { name: 'operator' }]);
  const { users, passwordFile } = createNatsUsers(secrets);
  const conf = join(secrets, 'nats.conf');
  const writeConf = (port: number): void =>
    writeFileSync(conf, natsServerConfig({ host: '127.0.0.1', port, storeDir, name: `migd-test-${port}`, security: { tls: identityFiles(certDir, NATS_SERVER_IDENTITY), users } }), { mode: 0o600 });
  let port = 0;
  let proc: ChildProcess | undefined;
  let lastError: unknown;
  // The port is free when picked but could be taken before the server binds: retry a few times.
  for (let attempt = 0; attempt < 5 && proc === undefined; attempt++) {
    port = await freePort();
    writeConf(port);
    try {
      proc = await spawnServer(conf);
    } catch (err) {
      lastError = err;
    }
  }
  if (proc === undefined) {
    if (ownsDir) await rm(storeDir, { recursive: true, force: true });
    await rm(secrets, { recursive: true, force: true });
    throw lastError instanceof Error ? lastError : new Error(String(lastError));
  }
  let disposed = false;
  const auth = (role: NatsRole): NatsClientAuth & { user: string; passwordFile: string } => {
    const user = role === 'publisher' ? NATS_PUBLISHER_USER : NATS_READER_USER;
    return { tls: identityFiles(certDir, role === 'publisher' ? 'migd-coordinator' : 'operator'), user, passwordFile: passwordFile(user) };
  };
  const url = `tls://127.0.0.1:${port}`;
  const handle: TestNatsServer = {
    port,
    url,
    certDir,
    auth,
    coordinatorArgs: () => ['--nats', url, '--nats-user', NATS_PUBLISHER_USER, '--nats-password-file', passwordFile(NATS_PUBLISHER_USER)],
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
      proc = await spawnServer(conf);
    },
    async dispose() {
      disposed = true;
      await handle.stop();
      if (ownsDir) await rm(storeDir, { recursive: true, force: true });
      await rm(secrets, { recursive: true, force: true });
    },
  };
  return handle;
}

async function spawnServer(conf: string): Promise<ChildProcess> {
  const p = spawn(natsServerBinary(), ['-c', conf], {
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

/** Connects to a test server as `role` (default publisher), reconnecting forever quickly (for outage tests). */
export function connectTest(server: Pick<TestNatsServer, 'url' | 'auth'>, opts: Partial<ConnectionOptions> = {}, role: NatsRole = 'publisher'): Promise<NatsConnection> {
  return connect({
    ...natsConnectOptions([server.url], server.auth(role)),
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
