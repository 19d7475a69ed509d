/**
 * Runs migd daemons inside testbed hosts: a node daemon per host, listening on the host's
 * management address, migrating over its migration address. Used by the integration tests,
 * `npm start` and the lab. Daemons run from the compiled tree (dist/), built by scripts/setup.
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { DependencyError, UnavailableError } from '../shared/errors.js';
import { NodeServiceService } from '../shared/gen/migd/v1/node.js';
import { repoRoot } from '../shared/paths.js';
import { createClient, type RpcClient } from '../shared/rpc/client.js';
import { ensurePki, identityFiles, nodeIdentity } from '../shared/pki.js';
import type { TestbedHost } from './testbed.js';

export interface NodeProcessOptions {
  /** Node id (default: the host's name). */
  readonly nodeId?: string;
  /** State folder of the daemon (keep it short: unix socket paths are limited to 107 bytes). */
  readonly stateDir: string;
  /** Folder with ca.crt and migd-node.{crt,key}; the node's own migd-node.<id>.{crt,key} are added. */
  readonly certDir: string;
  /** gRPC port inside the host's namespace (default 7001). */
  readonly port?: number;
  /** Coordinator address, when one runs. */
  readonly coordinator?: string;
  /** Guest-image folder (`--guest-image`: vmlinux, initrd.cpio), e.g. from ensureGuestImageDir. */
  readonly guestImage: string;
  /** Extra environment (e.g. MIGD_LOG_LEVEL). */
  readonly env?: NodeJS.ProcessEnv;
  /** Where the daemon's stderr goes (default: discarded unless MIGD_TEST_LOGS=1). */
  readonly onLog?: (line: string) => void;
  /** Start-up deadline in ms (default 30 000). */
  readonly timeoutMs?: number;
  /** Extra flags. */
  readonly args?: readonly string[];
  /** Require TLS on every migration stream (`--require-migration-tls`; default true). */
  readonly requireMigrationTls?: boolean;
}

export interface NodeProcess {
  readonly nodeId: string;
  readonly host: TestbedHost;
  /** host:port of the daemon's gRPC server (management network). */
  readonly address: string;
  readonly stateDir: string;
  readonly process: ChildProcess;
  /**
   * A client authenticated with the given identity of `certDir` (default `migd-coordinator`, the
   * only identity besides peer nodes a node daemon answers).
   */
  client(identity?: string): RpcClient<typeof NodeServiceService>;
  /** SIGTERM and wait (QEMU processes keep running). */
  stop(): Promise<void>;
  /** SIGKILL and wait (QEMU processes keep running). */
  kill(): Promise<void>;
}

/** The compiled node daemon entry point. @throws DependencyError when not built */
export function nodeDaemonEntry(): string {
  const entry = join(repoRoot(), 'dist', 'services', 'node', 'main.js');
  if (!existsSync(entry)) throw new DependencyError('node daemon', `${entry} is missing: run 'npm run build' (or scripts/setup)`);
  return entry;
}

/**
 * Starts a node daemon inside `host` and waits until it serves.
 * @throws DependencyError (not built), UnavailableError (exited or did not come up in time)
 */
export async function startNodeDaemon(host: TestbedHost, opts: NodeProcessOptions): Promise<NodeProcess> {
  const nodeId = opts.nodeId ?? host.name;
  // Its own certificate (migd-node.<id>), which the daemon presents by default when it exists,
  // naming the address it listens on.
  ensurePki(opts.certDir, [{ name: nodeIdentity(nodeId), ipAddresses: [host.mgmtAddress] }]);
  const port = opts.port ?? 7001;
  const address = `${host.mgmtAddress}:${port}`;
  const args = [
    nodeDaemonEntry(),
    '--node-id', nodeId,
    '--listen', address,
    '--migration-address', host.migrationAddress,
    '--state-dir', opts.stateDir,
    '--tls-dir', opts.certDir,
    '--guest-image', opts.guestImage,
    ...(opts.coordinator ? ['--coordinator', opts.coordinator] : []),
    ...(opts.requireMigrationTls === false ? [] : ['--require-migration-tls']),
    ...(opts.args ?? []),
  ];
  const child = host.spawn(process.execPath, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, MIGD_LOG_LEVEL: process.env['MIGD_LOG_LEVEL'] ?? 'info', ...opts.env },
  });
  const logs: string[] = [];
  const onLog = opts.onLog ?? ((l: string) => (process.env['MIGD_TEST_LOGS'] === '1' ? process.stderr.write(`[${nodeId}] ${l}\n`) : undefined));
  createInterface({ input: child.stderr! }).on('line', (l) => {
    logs.push(l);
    if (logs.length > 200) logs.shift();
    onLog(l);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new UnavailableError(`node daemon ${nodeId} did not start within ${opts.timeoutMs ?? 30_000} ms; last log lines:\n${logs.slice(-10).join('\n')}`)), opts.timeoutMs ?? 30_000);
    createInterface({ input: child.stdout! }).on('line', (l) => {
      if (l.includes('"ready":true')) {
        clearTimeout(timer);
        resolve();
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new UnavailableError(`node daemon ${nodeId} exited with code ${code} during start-up:\n${logs.slice(-10).join('\n')}`));
    });
  });
  const clients: { close(): void }[] = [];
  const waitExit = async (sig: NodeJS.Signals): Promise<void> => {
    for (const c of clients.splice(0)) c.close();
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill(sig);
    await exited;
  };
  return {
    nodeId,
    host,
    address,
    stateDir: opts.stateDir,
    process: child,
    client(identity = 'migd-coordinator') {
      // The node presents its own certificate: check it is this node's.
      const c = createClient('migd.v1.NodeService', NodeServiceService, address, { security: { tls: identityFiles(opts.certDir, identity), serverNames: [nodeIdentity(nodeId)] } });
      clients.push(c);
      return c;
    },
    stop: () => waitExit('SIGTERM'),
    kill: () => waitExit('SIGKILL'),
  };
}
