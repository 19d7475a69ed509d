/**
 * Node daemon configuration: parsed once (services/shared/config.ts), fully defaulted, frozen.
 * Sources, later ones winning: a JSON file (`--config FILE` or MIGD_NODE_CONFIG), then environment
 * variables, then flags (`--node-id a --listen 198.18.0.2:7001 …`). Bad values and combinations
 * are refused at start-up with a message naming the flag.
 */
import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { configError, configUsage, flagOf, loadLayeredOptions, optionReader, type ConfigSchema, type RawOptions } from '../shared/config.js';
import { DEFAULT_GUEST_IMAGE_DIR } from '../shared/guest/image.js';
import { NETWORK_NAME } from '../shared/nics.js';
import { boundNodeId, identityFiles, nodeIdentity } from '../shared/pki.js';
import { cacheDir, certDir } from '../shared/paths.js';
import { isLoopbackHost, splitHostPort, type TransportSecurity } from '../shared/rpc/tls.js';
import { TAP_NAME } from './host/taps.js';

export interface NodeConfig {
  /** Node id (default: the host name). */
  readonly nodeId: string;
  /** gRPC listen address on the management network (default 127.0.0.1:7001). */
  readonly listen: string;
  /** Address other components use to reach this daemon (default: `listen`). */
  readonly advertise: string;
  /** Address migration streams bind to (dedicated migration network; default: listen's host). */
  readonly migrationAddress: string;
  /** Where VMs' sockets, logs and records live (default <repo>/.state/node-<id>). */
  readonly stateDir: string;
  /** gRPC transport security (default: mTLS with the development certificates). */
  readonly security: TransportSecurity;
  /** Security for calls to other node daemons and the coordinator. */
  readonly clientSecurity: TransportSecurity;
  /**
   * The certificate this daemon presents to the coordinator and other nodes (default: its own,
   * `migd-node.<node id>`, when the TLS folder has one, else the shared `migd-node`). A coordinator
   * lets a per-node certificate speak for that node only. The gRPC server always serves as
   * `migd-node`, the name clients verify.
   */
  readonly tlsIdentity: string;
  /** Folder with ca.crt and migd-node.{crt,key}, used for QEMU's migration-stream TLS. */
  readonly migrationTlsDir: string;
  /** Coordinator to register with and heartbeat (empty: none); replicated coordinators: several, comma-separated (the node follows the leader). */
  readonly coordinator: string;
  /** Heartbeat period in ms (default 2000). */
  readonly heartbeatMs: number;
  /** QEMU binary (default qemu-system-x86_64 from PATH). */
  readonly qemuBinary: string;
  /**
   * Guest-image folder (`--guest-image`): `vmlinux` and `initrd.cpio` for VMs whose spec names no
   * kernel (default /var/lib/migd/guest). The daemon never builds it: `node
   * dist/stress/image/cli.js --install DIR` does.
   */
  readonly guestImageDir: string;
  /** query-migrate polling interval (default 250 ms; at most 250). */
  readonly progressIntervalMs: number;
  /** Post-copy stall detection (default 3000 ms). */
  readonly postcopyStallMs: number;
  /** Prometheus /metrics address (empty: off). */
  readonly metricsListen: string;
  /**
   * The identities (client-certificate common names) allowed to manage this node: create and
   * destroy VMs, start and steer migrations (default `migd-coordinator`). Other nodes may call
   * only the incoming side of migrations they drive; anyone else is refused (PERMISSION_DENIED).
   */
  readonly coordinatorIdentities: readonly string[];
  /** Folders whose files a VM spec may name as disks (repeatable `--storage-root`; default the state dir). */
  readonly storageRoots: readonly string[];
  /** Folders whose files a VM spec may name as kernel or initrd (repeatable `--image-root`; default the guest image folder). */
  readonly imageRoots: readonly string[];
  /**
   * Every migration stream to and from this node uses TLS, whatever the policy says: a policy
   * without TLS is upgraded (and reported with tls on). Default off; on in the local cluster.
   */
  readonly requireMigrationTls: boolean;
  /**
   * Network name → bridge on this host (repeatable `--network NAME=BRIDGE`; env MIGD_NODE_NETWORK
   * comma-separated; default none). A VM's card names a network; the node creates its tap on the
   * mapped bridge. Every node that may run the VM needs the network (under any bridge name).
   */
  readonly networks: Readonly<Record<string, string>>;
}

/**
 * Every option, as a flag (`--heartbeat-ms`), a key of the JSON file (`heartbeatMs`) and, for
 * some, an environment variable; each documents its default.
 */
export const NODE_OPTIONS = {
  config: { type: 'string', env: 'MIGD_NODE_CONFIG', doc: 'JSON file of options (camelCase keys); the environment and flags override it' },
  'node-id': { type: 'string', env: 'MIGD_NODE_ID', doc: 'node id (default: the host name)' },
  listen: { type: 'string', default: '127.0.0.1:7001', env: 'MIGD_NODE_LISTEN', doc: 'gRPC listen address host:port on the management network (default 127.0.0.1:7001)' },
  advertise: { type: 'string', env: 'MIGD_NODE_ADVERTISE', doc: 'address other components reach this daemon at (default: --listen)' },
  'migration-address': { type: 'string', env: 'MIGD_NODE_MIGRATION_ADDRESS', doc: "address migration streams bind to (default: --listen's host)" },
  'state-dir': { type: 'string', env: 'MIGD_NODE_STATE_DIR', doc: "VMs' sockets, logs and records (default .state/node-<id>)" },
  coordinator: { type: 'string', default: '', env: 'MIGD_COORDINATOR', doc: 'coordinator host:port to register with (default none)' },
  'heartbeat-ms': { type: 'integer', default: 2000, min: 100, max: 60_000, doc: 'heartbeat period in ms (default 2000)' },
  'qemu-binary': { type: 'string', default: 'qemu-system-x86_64', env: 'MIGD_QEMU', doc: 'QEMU binary (default qemu-system-x86_64 from PATH)' },
  'guest-image': { type: 'string', default: DEFAULT_GUEST_IMAGE_DIR, env: 'MIGD_GUEST_IMAGE', doc: `guest-image folder (vmlinux, initrd.cpio), built by setup, never by the daemon (default ${DEFAULT_GUEST_IMAGE_DIR})` },
  'progress-interval-ms': { type: 'integer', default: 250, min: 20, max: 250, doc: 'query-migrate polling interval in ms (default 250)' },
  'postcopy-stall-ms': { type: 'integer', default: 3000, min: 500, max: 600_000, doc: 'post-copy stall detection in ms (default 3000)' },
  'metrics-listen': { type: 'string', default: '', env: 'MIGD_NODE_METRICS', doc: 'Prometheus /metrics address host:port (default off)' },
  'tls-dir': { type: 'string', env: 'MIGD_TLS_DIR', doc: 'folder with ca.crt and the node certificates (default .cache/certs)' },
  'tls-identity': { type: 'string', env: 'MIGD_NODE_TLS_IDENTITY', doc: 'certificate presented to the coordinator and other nodes (default migd-node.<id> when present, else migd-node)' },
  insecure: { type: 'boolean', env: 'MIGD_INSECURE', doc: 'plain-text gRPC, on loopback only (default off)' },
  'migration-tls-dir': { type: 'string', doc: "folder with the certificates for QEMU's migration TLS (default: --tls-dir)" },
  'coordinator-identity': { type: 'list', default: ['migd-coordinator'], env: 'MIGD_NODE_COORDINATOR_IDENTITY', doc: 'identity allowed to manage this node, repeatable (default migd-coordinator)' },
  'storage-root': { type: 'list', env: 'MIGD_NODE_STORAGE_ROOT', doc: 'folder a VM spec may take disks from, repeatable (default: --state-dir)' },
  'image-root': { type: 'list', env: 'MIGD_NODE_IMAGE_ROOT', doc: 'folder a VM spec may take kernels and initrds from, repeatable (default: --guest-image)' },
  'require-migration-tls': { type: 'boolean', env: 'MIGD_NODE_REQUIRE_MIGRATION_TLS', doc: 'every migration stream uses TLS, whatever the policy says (default off)' },
  network: { type: 'list', env: 'MIGD_NODE_NETWORK', doc: "NAME=BRIDGE: VMs' cards on network NAME get a tap on this host's BRIDGE, repeatable (default none)" },
  help: { type: 'boolean', short: 'h', doc: 'print this help' },
} as const satisfies ConfigSchema;

type Raw = RawOptions<typeof NODE_OPTIONS>;

/** `--help` text. */
export function nodeUsage(): string {
  return `usage: node dist/services/node/main.js [options]\n${configUsage(NODE_OPTIONS)}`;
}

/**
 * Parses argv and env (over a JSON file named by `--config`) into a frozen NodeConfig.
 * @throws ConfigError naming the option
 */
export function loadNodeConfig(argv: readonly string[] = process.argv.slice(2), env: NodeJS.ProcessEnv = process.env): NodeConfig {
  return resolveNodeConfig(loadLayeredOptions(NODE_OPTIONS, argv, { env, fileOption: 'config' }));
}

/** Defaults and validates a raw configuration. @throws ConfigError naming the flag */
export function resolveNodeConfig(raw: Raw): NodeConfig {
  const { str, int, bool, list } = optionReader(NODE_OPTIONS, raw);
  const nodeId = str('nodeId', hostname());
  if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/.test(nodeId)) throw configError('node-id', `"${nodeId}" must match [a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}`);
  const listen = str('listen');
  const host = hostOf('listen', listen);
  const advertise = str('advertise', listen);
  hostOf('advertise', advertise);
  const migrationAddress = str('migrationAddress', host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host);
  const insecure = bool('insecure');
  const tlsDir = str('tlsDir', certDir());
  if (insecure && !isLoopbackHost(host)) throw configError('insecure', `plain-text gRPC is only allowed on loopback, not on ${listen}`);
  const files = identityFiles(tlsDir, 'migd-node');
  const own = nodeIdentity(nodeId);
  const tlsIdentity = str('tlsIdentity', existsSync(identityFiles(tlsDir, own).certFile) ? own : 'migd-node');
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$/.test(tlsIdentity)) throw configError('tls-identity', `"${tlsIdentity}" is not a certificate name`);
  const clientFiles = identityFiles(tlsDir, tlsIdentity);
  if (!insecure && tlsIdentity !== 'migd-node' && !existsSync(clientFiles.certFile)) throw configError('tls-identity', `${clientFiles.certFile} does not exist`);
  // The server presents the node's own certificate (`migd-node.<id>`, with its addresses) when it
  // has one, so callers can check they reached this node and not another.
  const security: TransportSecurity = insecure ? { insecure: true } : { tls: tlsIdentity === 'migd-node' ? files : clientFiles };
  const clientSecurity: TransportSecurity = insecure ? { insecure: true } : { tls: clientFiles, serverName: 'migd-node' };
  const stateDir = str('stateDir', join(cacheDir(), '..', '.state', `node-${nodeId}`));
  const guestImageDir = resolve(str('guestImage'));
  const coordinatorIdentities = list('coordinatorIdentity');
  for (const id of coordinatorIdentities) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$/.test(id)) throw configError('coordinator-identity', `"${id}" is not a certificate name`);
    if (boundNodeId(id) !== undefined || id === 'migd-node') throw configError('coordinator-identity', `"${id}" is a node identity; a node cannot manage other nodes`);
  }
  const roots = (k: 'storageRoot' | 'imageRoot', dflt: string): readonly string[] => {
    const r = list(k, [dflt]);
    for (const p of r) if (!isAbsolute(p)) throw configError(flagOf(k), `"${p}" must be an absolute path`);
    return Object.freeze([...r]);
  };
  const cfg: NodeConfig = {
    nodeId,
    listen,
    advertise,
    migrationAddress,
    stateDir,
    security,
    clientSecurity,
    tlsIdentity,
    migrationTlsDir: str('migrationTlsDir', tlsDir),
    coordinator: str('coordinator'),
    heartbeatMs: int('heartbeatMs'),
    qemuBinary: str('qemuBinary'),
    guestImageDir,
    progressIntervalMs: int('progressIntervalMs'),
    postcopyStallMs: int('postcopyStallMs'),
    metricsListen: str('metricsListen'),
    coordinatorIdentities: Object.freeze([...coordinatorIdentities]),
    storageRoots: roots('storageRoot', stateDir),
    imageRoots: roots('imageRoot', guestImageDir),
    requireMigrationTls: bool('requireMigrationTls'),
    networks: networkMap(list('network', [])),
  };
  if (cfg.requireMigrationTls && insecure) throw configError('require-migration-tls', 'needs certificates; it cannot be combined with --insecure');
  return Object.freeze(cfg);
}

/** The host of `address`. @throws ConfigError naming `key`'s flag when it is not host:port */
function hostOf(key: 'listen' | 'advertise', address: string): string {
  try {
    return splitHostPort(address).host;
  } catch {
    throw configError(key, `"${address}" is not host:port`);
  }
}

/** `NAME=BRIDGE` items into a frozen map. @throws ConfigError naming the bad item */
function networkMap(items: readonly string[]): Readonly<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const item of items) {
    const eq = item.indexOf('=');
    const name = item.slice(0, eq);
    const bridge = item.slice(eq + 1);
    if (eq <= 0 || !NETWORK_NAME.test(name)) throw configError('network', `"${item}" must be NAME=BRIDGE with NAME matching ${NETWORK_NAME.source}`);
    if (!TAP_NAME.test(bridge)) throw configError('network', `"${item}": "${bridge}" is not an interface name (1-15 characters [a-zA-Z0-9_.-])`);
    if (Object.hasOwn(out, name)) throw configError('network', `network "${name}" is mapped twice`);
    out[name] = bridge;
  }
  return Object.freeze(out);
}
