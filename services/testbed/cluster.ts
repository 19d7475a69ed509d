/**
 * A whole local migd cluster on this machine: testbed hosts (network namespaces with separate
 * management and migration networks), a nats-server with JetStream and the coordinator in the
 * root namespace (listening on the management network), and a node daemon in each host that
 * registers with the coordinator — all with mutual TLS. Used by `npm start`, the lab and the chaos
 * campaign. nats-server, the coordinator and the node daemons are supervised: one that dies is
 * named and started again, and the guests keep running (supervisor.ts). `close()` stops
 * everything (QEMU processes die with their namespaces), also after a partial start.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { ConfigError, DependencyError, UnavailableError } from '../shared/errors.js';
import { CoordinatorServiceService, NodeStatus } from '../shared/gen/migd/v1/coordinator.js';
import { NATS_PUBLISHER_USER, NATS_READER_USER, NATS_SERVER_IDENTITY, createNatsUsers, natsServerConfig, type NatsClusterConfig, type NatsServerSecurity } from '../shared/events/nats-security.js';
import { repoRoot } from '../shared/paths.js';
import { ensurePrivateDir } from '../shared/private-files.js';
import { ensurePki, identityFiles, serverIdentity } from '../shared/pki.js';
import { createClient, type RpcClient } from '../shared/rpc/client.js';
import { startNodeDaemon, type NodeProcess } from './nodes.js';
import { Supervisor } from './supervisor.js';
import { Testbed } from './testbed.js';
import { VM_BRIDGE } from './addressing.js';
import { freePort } from '../shared/net.js';

export type CoordinatorClient = RpcClient<typeof CoordinatorServiceService>;

export interface LocalClusterOptions {
  /** Host names (default a, b). */
  readonly hosts?: readonly string[];
  /** Work folder for state, the database and NATS storage (created; removed by close()). */
  readonly workDir: string;
  /** Certificates (made when missing). */
  readonly certDir: string;
  /** Guest-image folder handed to every node daemon (`--guest-image`), e.g. from ensureGuestImageDir. */
  readonly guestImage: string;
  /** Daemon log lines (default: dropped). */
  readonly onLog?: (line: string) => void;
  /** Extra coordinator flags. */
  readonly coordinatorArgs?: readonly string[];
  /** Coordinator gRPC port on the management network (default: a free one). */
  readonly coordinatorPort?: number;
  /** Folder of the coordinator's history store (default: workDir). The chaos campaign uses a small tmpfs. */
  readonly storeDir?: string;
  /**
   * What the supervisor says when it loses and restarts a child (default: `onLog` with a
   * `[supervisor] ` prefix). `npm start` prints it.
   */
  readonly onSupervisor?: (line: string) => void;
  /** First delay before restarting a dead child (ms, default 500). */
  readonly restartDelayMs?: number;
  /**
   * Give the testbed a VM network (br-vm on every host, a client namespace) and map it on every
   * node as network {@link LOCAL_VM_NETWORK} (`--network vm=br-vm`). Default true.
   */
  readonly vmNetwork?: boolean;
  /** MTU of the testbed's migration network (Testbed option `migrationMtu`, 1280..9000). Default 1500. */
  readonly migrationMtu?: number;
}

/** The network name under which the local cluster's nodes map the testbed's VM network. */
export const LOCAL_VM_NETWORK = 'vm';

/** Process ids of the cluster's children now; undefined while that child is being restarted. */
export interface ClusterPids {
  readonly nats: number | undefined;
  readonly coordinator: number | undefined;
  readonly nodes: Readonly<Record<string, number | undefined>>;
}

export interface LocalCluster {
  readonly tb: Testbed;
  /** The node daemons as they run now (an entry is replaced when its daemon is restarted). */
  readonly nodes: readonly NodeProcess[];
  /** host:port of the coordinator (reachable from the root namespace and from every host). */
  readonly coordinatorAddress: string;
  /** tls://127.0.0.1:port (TLS with a client certificate of the cluster's CA, and a user). */
  readonly natsUrl: string;
  /** The read-only NATS user for event consumers (its password file is private to this user). */
  readonly natsReader: { readonly user: string; readonly passwordFile: string };
  readonly certDir: string;
  /** A coordinator client with the given identity (default operator). */
  client(identity?: string): CoordinatorClient;
  /** The children's pids (for fault injection and `ps` checks). */
  pids(): ClusterPids;
  /** How often each child was restarted by the supervisor (`nats`, `coordinator`, `node a`…). */
  restarts(): Record<string, number>;
  /** Resolves once no child is being restarted. */
  settled(): Promise<void>;
  close(): Promise<void>;
}

const coordinatorEntryPath = (): string => join(repoRoot(), 'dist', 'services', 'coordinator', 'main.js');

/** How long a supervised coordinator or node daemon may take to say it is ready (ms). */
const SUPERVISED_START_MS = 120_000;

/** Whether the coordinator has been built (dist/). */
export function coordinatorBuilt(): boolean {
  return existsSync(coordinatorEntryPath());
}

/** The compiled coordinator entry point. @throws DependencyError when not built */
export function coordinatorEntry(): string {
  const p = coordinatorEntryPath();
  if (!existsSync(p)) throw new DependencyError('coordinator', `${p} is missing: run 'npm run build' (or scripts/setup)`);
  return p;
}

/** The nats-server binary. @throws DependencyError when not installed */
export function natsServerBinary(): string {
  const p = process.env['NATS_SERVER_BIN'] ?? ['/usr/sbin/nats-server', '/usr/bin/nats-server', '/usr/local/bin/nats-server'].find((c) => existsSync(c));
  if (!p) throw new DependencyError('nats-server', 'not installed (apt-get install nats-server, or run scripts/setup)');
  return p;
}

/**
 * Spawns a root-namespace service and waits until a line of its output says it is ready. Every
 * output line, also after start-up, goes to `onLog` prefixed with `[name] `. The service logs at
 * MIGD_LOG_LEVEL (default warn) unless `env` says otherwise.
 */
export async function startService(
  name: string,
  cmd: string,
  args: readonly string[],
  ready: (line: string) => boolean,
  onLog: (l: string) => void,
  timeoutMs = 30_000,
  env: Readonly<Record<string, string>> = {},
): Promise<ChildProcess> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MIGD_LOG_LEVEL: process.env['MIGD_LOG_LEVEL'] ?? 'warn', ...env } });
  const tail: string[] = [];
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new UnavailableError(`${name} not ready within ${timeoutMs} ms:\n${tail.join('\n')}`)), timeoutMs);
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
        reject(new UnavailableError(`${name} exited with ${code} during start-up:\n${tail.join('\n')}`));
      });
    });
  } catch (err) {
    await stopChild(child);
    throw err;
  }
  return child;
}

/**
 * Starts nats-server with JetStream on 127.0.0.1 (a free port), storing under `storeDir`. With
 * `security` it requires TLS with client certificates and the given users (configuration in
 * `<storeDir>.conf`, 0600) and its URL is `tls://`; without, it is open (benchmarks only).
 * With `cluster` (needs `security`) it is one member of a JetStream cluster.
 * @throws DependencyError when not installed; UnavailableError when it does not start
 */
export async function startNatsProcess(
  storeDir: string,
  onLog: (l: string) => void = () => undefined,
  port?: number,
  security?: NatsServerSecurity,
  cluster?: NatsClusterConfig,
): Promise<{ process: ChildProcess; url: string; port: number }> {
  const bin = natsServerBinary();
  if (cluster && !security) throw new ConfigError('nats cluster', 'a clustered nats-server is started with security only');
  port ??= await freePort('127.0.0.1');
  ensurePrivateDir(storeDir);
  let args = ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', storeDir];
  if (security) {
    const conf = `${storeDir}.conf`;
    writeFileSync(conf, natsServerConfig({ host: '127.0.0.1', port, storeDir, name: `migd-${port}`, security, cluster }), { mode: 0o600 });
    args = ['-c', conf];
  }
  const child = await startService('nats', bin, args, (l) => l.includes('Server is ready'), onLog);
  return { process: child, url: `${security ? 'tls' : 'nats'}://127.0.0.1:${port}`, port };
}

/** SIGTERM, then SIGKILL after 5 s; resolves when the child has exited. */
export async function stopChild(c: ChildProcess | undefined, graceMs = 5000): Promise<void> {
  if (!c || c.exitCode !== null || c.signalCode !== null) return;
  const exited = new Promise<void>((r) => c.once('exit', () => r()));
  c.kill('SIGTERM');
  const t = setTimeout(() => c.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(t);
}

/** The compiled coordinator as a child process. */
export interface CoordinatorProcess {
  readonly address: string;
  readonly process: ChildProcess;
  /** Its most recent 2000 log lines. */
  readonly logs: string[];
  /** SIGTERM (SIGKILL after graceMs, default 5 s); resolves when it has exited. */
  stop(graceMs?: number): Promise<void>;
  /** SIGKILL; resolves when it has exited. */
  kill(): Promise<void>;
}

export interface CoordinatorProcessOptions {
  /** host:port to listen on. */
  readonly listen: string;
  /** SQLite history file. */
  readonly db: string;
  /** NATS URL (default: none, events are only kept in the outbox). */
  readonly nats?: string | undefined;
  readonly certDir: string;
  /** Extra flags. */
  readonly args?: readonly string[];
  /** Flags of node itself, before the entry point (e.g. `--cpu-prof`). */
  readonly nodeArgs?: readonly string[];
  /** Log level (default MIGD_LOG_LEVEL, else warn). */
  readonly logLevel?: string;
  readonly onLog?: (line: string) => void;
  readonly timeoutMs?: number;
}

/**
 * Starts `node dist/services/coordinator/main.js` and waits for its ready line.
 * @throws DependencyError when not built; UnavailableError when it does not start
 */
export async function startCoordinatorProcess(o: CoordinatorProcessOptions): Promise<CoordinatorProcess> {
  const logs: string[] = [];
  const child = await startService(
    'coordinator',
    process.execPath,
    [...(o.nodeArgs ?? []), coordinatorEntry(), '--listen', o.listen, '--db', o.db, '--tls-dir', o.certDir, ...(o.nats ? ['--nats', o.nats] : []), ...(o.args ?? [])],
    (l) => l.includes('"ready":true'),
    (l) => {
      logs.push(l);
      if (logs.length > 2000) logs.shift();
      o.onLog?.(l);
    },
    o.timeoutMs ?? 30_000,
    o.logLevel ? { MIGD_LOG_LEVEL: o.logLevel } : {},
  );
  const exited = new Promise<void>((r) => {
    if (child.exitCode !== null || child.signalCode !== null) r();
    else child.once('exit', () => r());
  });
  return {
    address: o.listen,
    process: child,
    logs,
    stop: (graceMs?: number) => stopChild(child, graceMs),
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/**
 * Starts the cluster and waits until every node has registered with the coordinator.
 * @throws DependencyError, UnavailableError (everything started so far is stopped)
 */
export async function startLocalCluster(opts: LocalClusterOptions): Promise<LocalCluster> {
  const hosts = opts.hosts ?? ['a', 'b'];
  const onLog = opts.onLog ?? (() => undefined);
  mkdirSync(opts.workDir, { recursive: true });
  ensurePki(opts.certDir);
  let tb: Testbed | undefined;
  const supervisor = new Supervisor({ say: opts.onSupervisor ?? ((l) => onLog(`[supervisor] ${l}`)), ...(opts.restartDelayMs === undefined ? {} : { initialDelayMs: opts.restartDelayMs }) });
  const nodes: NodeProcess[] = [];
  const clients: CoordinatorClient[] = [];
  const close = async (): Promise<void> => {
    for (const c of clients.splice(0)) c.close();
    // Supervision ends first, so nothing is restarted while the cluster stops.
    await supervisor.close();
    await tb?.destroy();
    rmSync(opts.workDir, { recursive: true, force: true });
  };
  try {
    // Fail before anything starts when a piece is missing.
    coordinatorEntry();
    natsServerBinary();
    const vmNetwork = opts.vmNetwork ?? true;
    tb = await Testbed.create({ hosts: [...hosts], vmNetwork, migrationMtu: opts.migrationMtu });
    // The servers' certificates name the addresses they listen on (known only now), so stock
    // gRPC clients (grpcurl, Python grpcio) accept the printed address as it is.
    ensurePki(opts.certDir, [serverIdentity('migd-coordinator', [tb.rootAddress]), serverIdentity('migd-node', hosts.map((h) => tb!.host(h).mgmtAddress))]);
    const natsDir = join(opts.workDir, 'nats');
    // NATS is locked down: TLS with the cluster's certificates, a publisher (the coordinator) and
    // a read-only user, with passwords in private files.
    const natsAuthDir = join(opts.workDir, 'nats-auth');
    ensurePrivateDir(natsAuthDir);
    ensurePki(opts.certDir, [{ name: NATS_SERVER_IDENTITY, usage: 'server', dnsNames: ['localhost'] }]);
    const { users: natsUsers, passwordFile } = createNatsUsers(natsAuthDir);
    const natsSecurity = { tls: identityFiles(opts.certDir, NATS_SERVER_IDENTITY), users: natsUsers };
    let natsPort: number | undefined;
    await supervisor.add('nats-server', async () => {
      const n = await startNatsProcess(natsDir, onLog, natsPort, natsSecurity);
      natsPort = n.port;
      return { process: n.process, stop: () => stopChild(n.process) };
    });
    const natsUrl = `tls://127.0.0.1:${natsPort}`;
    const natsArgs = ['--nats-user', NATS_PUBLISHER_USER, '--nats-password-file', passwordFile(NATS_PUBLISHER_USER)];
    const coordinatorAddress = `${tb.rootAddress}:${opts.coordinatorPort ?? (await freePort(tb.rootAddress))}`;
    const storeDir = opts.storeDir ?? opts.workDir;
    mkdirSync(storeDir, { recursive: true });
    // Every node daemon started here presents its own certificate, so the coordinator can insist.
    // Restarts wait up to SUPERVISED_START_MS for the ready line: on this shared 2-core machine
    // (load average above 20 at times) a coordinator once needed more than 30 s to start, and a
    // restart killed at 30 s only starts over (5 times in a row in a chaos campaign: 200 s away).
    await supervisor.add('coordinator', () =>
      startCoordinatorProcess({ listen: coordinatorAddress, db: join(storeDir, 'history.sqlite'), nats: natsUrl, certDir: opts.certDir, args: ['--require-node-identity', ...natsArgs, ...(opts.coordinatorArgs ?? [])], onLog, timeoutMs: SUPERVISED_START_MS }),
    );
    const testbed = tb;
    for (const [i, h] of hosts.entries()) {
      await supervisor.add(`node ${h}`, async () => {
        const n = await startNodeDaemon(testbed.host(h), {
          stateDir: join(opts.workDir, h),
          certDir: opts.certDir,
          guestImage: opts.guestImage,
          coordinator: coordinatorAddress,
          timeoutMs: SUPERVISED_START_MS,
          env: { MIGD_LOG_LEVEL: process.env['MIGD_LOG_LEVEL'] ?? 'warn' },
          onLog: (l) => onLog(`[node ${h}] ${l}`),
          ...(vmNetwork ? { args: ['--network', `${LOCAL_VM_NETWORK}=${VM_BRIDGE}`] } : {}),
        });
        nodes[i] = n;
        return n;
      });
    }
    const client = (identity = 'operator'): CoordinatorClient => {
      const c = createClient('migd.v1.CoordinatorService', CoordinatorServiceService, coordinatorAddress, { security: { tls: identityFiles(opts.certDir, identity), serverName: 'migd-coordinator' } });
      clients.push(c);
      return c;
    };
    const probe = client();
    const deadline = Date.now() + 30_000;
    for (;;) {
      const { nodes: registered } = await probe.listNodes({});
      if (registered.filter((n) => n.status === NodeStatus.NODE_STATUS_UP).length >= hosts.length) break;
      if (Date.now() > deadline) throw new UnavailableError(`only ${registered.length} of ${hosts.length} nodes registered with the coordinator`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const pids = (): ClusterPids => ({
      nats: supervisor.current('nats-server')?.process.pid,
      coordinator: supervisor.current('coordinator')?.process.pid,
      nodes: Object.fromEntries(hosts.map((h) => [h, supervisor.current(`node ${h}`)?.process.pid])),
    });
    const natsReader = { user: NATS_READER_USER, passwordFile: passwordFile(NATS_READER_USER) };
    return { tb, nodes, coordinatorAddress, natsUrl, natsReader, certDir: opts.certDir, client, pids, restarts: () => supervisor.restarts(), settled: () => supervisor.settled(), close };
  } catch (err) {
    await close();
    throw err;
  }
}
