/**
 * Replicated coordinators on this machine (issue 15): a throw-away PostgreSQL cluster, one
 * nats-server with JetStream or a JetStream cluster of three (TLS, publisher and reader users, as
 * in the local cluster; routes on loopback), N coordinators on that one database and given every
 * NATS server's URL, all listening on the testbed's root address, and a
 * node daemon in each testbed host that is given every coordinator's address (`--coordinator
 * a,b,c`) and follows the leader. Used by the failover tests and `npm run demo:ha`.
 *
 * Coordinators and nats-servers can be killed and started again (same address, same JetStream
 * store); `close()` stops everything —
 * coordinators, node daemons, the testbed (the QEMU processes die with their namespaces), NATS,
 * Postgres and the work folder — also after a partial start.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { NATS_PUBLISHER_USER, NATS_READER_USER, NATS_SERVER_IDENTITY, createNatsUsers, type NatsClientAuth, type NatsClusterConfig } from '../shared/events/nats-security.js';
import { NotFoundError, NotLeaderError, UnavailableError } from '../shared/errors.js';
import { CoordinatorServiceService, NodeStatus } from '../shared/gen/migd/v1/coordinator.js';
import { freePort } from '../shared/net.js';
import { ensurePki, identityFiles, serverIdentity } from '../shared/pki.js';
import { ensurePrivateDir } from '../shared/private-files.js';
import { createClient, type RpcClient } from '../shared/rpc/client.js';
import { createLeaderClient, type LeaderRpcClient } from '../shared/rpc/leader-client.js';
import { coordinatorEntry, natsServerBinary, startCoordinatorProcess, startNatsProcess, stopChild, type CoordinatorProcess } from './cluster.js';
import { startNodeDaemon, type NodeProcess } from './nodes.js';
import { startPostgres, type PostgresServer } from './postgres.js';
import { Testbed } from './testbed.js';

export type CoordinatorClient = RpcClient<typeof CoordinatorServiceService>;

export interface HaClusterOptions {
  /** Host names (default a, b). */
  readonly hosts?: readonly string[];
  /** How many coordinators (default 3). */
  readonly coordinators?: number;
  /** Work folder (created; removed by close()). Keep it short: unix socket paths are limited. */
  readonly workDir: string;
  /** Certificates (made when missing). */
  readonly certDir: string;
  /** Guest-image folder handed to every node daemon. */
  readonly guestImage: string;
  /**
   * How many nats-servers (default 1). 3 makes them a JetStream cluster (each routes to the
   * others) and the coordinators create the events stream with 3 replicas, so it survives the
   * loss of any one server.
   */
  readonly natsServers?: 1 | 3;
  /** Extra coordinator flags. */
  readonly coordinatorArgs?: readonly string[];
  /** Coordinator log level (default info: tests and the demo read its lines). */
  readonly coordinatorLogLevel?: string;
  /** Every daemon's log lines, prefixed with its name (default: dropped). */
  readonly onLog?: (line: string) => void;
}

/** Who a coordinator is right now, as a write tells: NOT_FOUND for an unknown run means "I lead". */
export type CoordinatorRole = 'leader' | 'follower' | 'down';

export interface HaCluster {
  readonly tb: Testbed;
  readonly pg: PostgresServer;
  /** The coordinators' shared database. */
  readonly dbUrl: string;
  /** The first nats-server's URL, tls://127.0.0.1:port. */
  readonly natsUrl: string;
  /** Every nats-server's URL (what the coordinators are given). */
  readonly natsUrls: readonly string[];
  /** The nats-server processes now (undefined while stopped or killed). */
  readonly natsServers: readonly (ChildProcess | undefined)[];
  /** How an event consumer authenticates to NATS (the read-only user, operator certificate). */
  readonly natsReader: NatsClientAuth;
  /** The coordinators' addresses (fixed, also while one is down). */
  readonly addresses: readonly string[];
  /** The coordinator processes now (undefined while killed). */
  readonly coordinators: readonly (CoordinatorProcess | undefined)[];
  readonly nodes: Readonly<Record<string, NodeProcess>>;
  /** A leader-following client over every coordinator address (default identity operator). */
  client(identity?: string): LeaderRpcClient<typeof CoordinatorServiceService>;
  /** A client of one coordinator. */
  clientAt(index: number, identity?: string): CoordinatorClient;
  /** What coordinator `index` answers a write with now. */
  role(index: number): Promise<CoordinatorRole>;
  /** The index of the one coordinator that leads (polls until exactly one does). @throws UnavailableError */
  waitForLeader(timeoutMs?: number, among?: readonly number[]): Promise<number>;
  /** Stops nats-server `index`, or every one (SIGTERM); the JetStream stores stay. */
  stopNats(index?: number): Promise<void>;
  /** SIGKILL nats-server `index`; resolves when it has exited. */
  killNats(index: number): Promise<void>;
  /** Starts nats-server `index`, or every stopped one, again on the same ports and store. */
  startNats(index?: number): Promise<void>;
  /** SIGKILL coordinator `index`; resolves when it has exited. */
  killCoordinator(index: number): Promise<void>;
  /** Starts coordinator `index` again (same address and database). */
  startCoordinator(index: number): Promise<void>;
  close(): Promise<void>;
}

/** Flags every coordinator of the HA cluster gets: quick heartbeats, bound node identities. */
export const HA_COORDINATOR_ARGS = ['--heartbeat-ms', '500', '--heartbeat-misses', '3', '--require-node-identity'];

export async function startHaCluster(opts: HaClusterOptions): Promise<HaCluster> {
  const hosts = opts.hosts ?? ['a', 'b'];
  const count = opts.coordinators ?? 3;
  const onLog = opts.onLog ?? (() => undefined);
  mkdirSync(opts.workDir, { recursive: true });
  let tb: Testbed | undefined;
  let pg: PostgresServer | undefined;
  const nats: (ChildProcess | undefined)[] = [];
  const coordinators: (CoordinatorProcess | undefined)[] = [];
  const nodes: Record<string, NodeProcess> = {};
  const clients: { close(): void }[] = [];
  const close = async (): Promise<void> => {
    for (const c of clients.splice(0)) c.close();
    await Promise.all(coordinators.map((c) => c?.kill().catch(() => undefined)));
    await Promise.all(Object.values(nodes).map((n) => n.kill().catch(() => undefined)));
    await tb?.destroy().catch(() => undefined);
    await Promise.all(nats.map((p) => stopChild(p).catch(() => undefined)));
    await pg?.dispose().catch(() => undefined);
    rmSync(opts.workDir, { recursive: true, force: true });
  };
  try {
    coordinatorEntry();
    natsServerBinary();
    pg = await startPostgres();
    const dbUrl = await pg.createDatabase();
    tb = await Testbed.create({ hosts: [...hosts] });
    const testbed = tb;
    ensurePki(opts.certDir);
    ensurePki(opts.certDir, [serverIdentity('migd-coordinator', [tb.rootAddress]), { name: NATS_SERVER_IDENTITY, usage: 'server', dnsNames: ['localhost'] }, { name: 'operator' }]);
    const natsAuthDir = join(opts.workDir, 'nats-auth');
    ensurePrivateDir(natsAuthDir);
    const { users, passwordFile } = createNatsUsers(natsAuthDir);
    const natsSecurity = { tls: identityFiles(opts.certDir, NATS_SERVER_IDENTITY), users };
    const natsCount = opts.natsServers ?? 1;
    const natsPorts: number[] = [];
    for (let i = 0; i < natsCount; i++) natsPorts.push(await freePort('127.0.0.1'));
    let natsCluster: ((i: number) => NatsClusterConfig) | undefined;
    if (natsCount > 1) {
      const routePorts: number[] = [];
      for (let i = 0; i < natsCount; i++) routePorts.push(await freePort('127.0.0.1'));
      const routes = routePorts.map((p) => `127.0.0.1:${p}`);
      const password = randomBytes(18).toString('base64url');
      natsCluster = (i) => ({ name: 'migd', listen: routes[i]!, routes, user: 'migd-route', password });
    }
    const startNatsAt = async (i: number): Promise<void> => {
      const p = nats[i];
      if (p && p.exitCode === null && p.signalCode === null) return;
      // Each server its own store folder (removed with the work folder).
      nats[i] = (await startNatsProcess(join(opts.workDir, natsCount > 1 ? `nats${i}` : 'nats'), (l) => onLog(natsCount > 1 ? l.replace(/^\[nats\]/, `[nats ${i}]`) : l), natsPorts[i], natsSecurity, natsCluster?.(i))).process;
    };
    // Together: a clustered server waits for its routes only after it is up.
    await Promise.all(natsPorts.map((_, i) => startNatsAt(i)));
    const natsUrls = natsPorts.map((p) => `tls://127.0.0.1:${p}`);
    const natsArgs = ['--nats', natsUrls.join(','), '--nats-user', NATS_PUBLISHER_USER, '--nats-password-file', passwordFile(NATS_PUBLISHER_USER), '--nats-stream-replicas', String(natsCount)];
    const addresses: string[] = [];
    for (let i = 0; i < count; i++) addresses.push(`${tb.rootAddress}:${await freePort(tb.rootAddress)}`);
    const startCoordinator = async (i: number): Promise<void> => {
      if (coordinators[i]) return;
      coordinators[i] = await startCoordinatorProcess({
        listen: addresses[i]!,
        db: dbUrl,
        certDir: opts.certDir,
        args: [...natsArgs, ...HA_COORDINATOR_ARGS, ...(opts.coordinatorArgs ?? [])],
        logLevel: opts.coordinatorLogLevel ?? 'info',
        onLog: (l) => onLog(`[coordinator ${i}] ${l}`),
        timeoutMs: 60_000,
      });
    };
    // One after the other: the first one elected leads while the others start.
    for (let i = 0; i < count; i++) await startCoordinator(i);
    await Promise.all(
      hosts.map(async (h) => {
        nodes[h] = await startNodeDaemon(testbed.host(h), {
          stateDir: join(opts.workDir, h),
          certDir: opts.certDir,
          guestImage: opts.guestImage,
          coordinator: addresses.join(','),
          timeoutMs: 60_000,
          env: { MIGD_LOG_LEVEL: process.env['MIGD_LOG_LEVEL'] ?? 'warn' },
          onLog: (l) => onLog(`[node ${h}] ${l}`),
        });
      }),
    );
    const security = (identity: string): { tls: ReturnType<typeof identityFiles>; serverName: string } => ({ tls: identityFiles(opts.certDir, identity), serverName: 'migd-coordinator' });
    const clientAt = (i: number, identity = 'operator'): CoordinatorClient => {
      const c = createClient('migd.v1.CoordinatorService', CoordinatorServiceService, addresses[i]!, { security: security(identity) });
      clients.push(c);
      return c;
    };
    const role = async (i: number): Promise<CoordinatorRole> => {
      if (!coordinators[i]) return 'down';
      const c = createClient('migd.v1.CoordinatorService', CoordinatorServiceService, addresses[i]!, { security: security('operator'), defaultDeadlineMs: 2000 });
      try {
        await c.cancelRun({ runId: 'no-such-run', reason: 'who leads?' });
        return 'leader';
      } catch (err) {
        if (err instanceof NotFoundError) return 'leader';
        if (err instanceof NotLeaderError) return 'follower';
        return 'down';
      } finally {
        c.close();
      }
    };
    const waitForLeader = async (timeoutMs = 30_000, among: readonly number[] = addresses.map((_, i) => i)): Promise<number> => {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const roles = await Promise.all(among.map((i) => role(i)));
        const leaders = among.filter((_, k) => roles[k] === 'leader');
        if (leaders.length === 1) return leaders[0]!;
        if (Date.now() > until) throw new UnavailableError(`no single leader among coordinators ${among.join(', ')} within ${timeoutMs} ms (roles: ${roles.join(', ')})`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    const cluster: HaCluster = {
      tb,
      pg,
      dbUrl,
      natsUrl: natsUrls[0]!,
      natsUrls,
      natsServers: nats,
      natsReader: { tls: identityFiles(opts.certDir, 'operator'), user: NATS_READER_USER, passwordFile: passwordFile(NATS_READER_USER) },
      addresses,
      coordinators,
      nodes,
      client(identity = 'operator') {
        const c = createLeaderClient('migd.v1.CoordinatorService', CoordinatorServiceService, addresses, { security: security(identity), defaultDeadlineMs: 20_000 });
        clients.push(c);
        return c;
      },
      clientAt,
      role,
      waitForLeader,
      async stopNats(i) {
        const which = i === undefined ? natsPorts.map((_, k) => k) : [i];
        await Promise.all(
          which.map(async (k) => {
            const p = nats[k];
            nats[k] = undefined;
            await stopChild(p);
          }),
        );
      },
      async killNats(i) {
        const p = nats[i];
        nats[i] = undefined;
        if (!p || p.exitCode !== null || p.signalCode !== null) return;
        const exited = new Promise<void>((r) => p.once('exit', () => r()));
        p.kill('SIGKILL');
        await exited;
      },
      async startNats(i) {
        await Promise.all((i === undefined ? natsPorts.map((_, k) => k) : [i]).map((k) => startNatsAt(k)));
      },
      async killCoordinator(i) {
        const c = coordinators[i];
        coordinators[i] = undefined;
        await c?.kill();
      },
      startCoordinator,
      close,
    };
    // Every node registered with the leader and heart-beating.
    const leader = await waitForLeader(60_000);
    const admin = clientAt(leader);
    const until = Date.now() + 60_000;
    for (;;) {
      const { nodes: list } = await admin.listNodes({});
      if (hosts.every((h) => list.some((x) => x.host?.nodeId === h && x.status === NodeStatus.NODE_STATUS_UP))) break;
      if (Date.now() > until) throw new UnavailableError(`only ${list.length} of ${hosts.length} node daemons registered with the leader`);
      await new Promise((r) => setTimeout(r, 200));
    }
    return cluster;
  } catch (err) {
    await close();
    throw err;
  }
}
