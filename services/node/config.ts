/**
 * Node daemon configuration: parsed once, fully defaulted, frozen. Sources, later ones winning:
 * a JSON file (`--config FILE` or MIGD_NODE_CONFIG), then environment variables, then flags
 * (`--node-id a --listen 198.18.0.2:7001 …`). Bad combinations are refused at start-up with a
 * message naming the option.
 */
import { existsSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { ConfigError } from '../shared/errors.js';
import { DEFAULT_GUEST_IMAGE_DIR } from '../shared/guest/image.js';
import { boundNodeId, identityFiles, nodeIdentity } from '../shared/pki.js';
import { cacheDir, certDir } from '../shared/paths.js';
import { isLoopbackHost, splitHostPort, type TransportSecurity } from '../shared/rpc/tls.js';

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
  /** Coordinator to register with and heartbeat (empty: none). */
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
}

type Raw = Partial<Record<Exclude<keyof NodeConfig, 'guestImageDir'> | 'guestImage' | 'tlsDir' | 'insecure' | 'coordinatorIdentity' | 'storageRoot' | 'imageRoot', unknown>>;

const envMap: Record<string, keyof Raw> = {
  MIGD_NODE_ID: 'nodeId',
  MIGD_NODE_LISTEN: 'listen',
  MIGD_NODE_ADVERTISE: 'advertise',
  MIGD_NODE_MIGRATION_ADDRESS: 'migrationAddress',
  MIGD_NODE_STATE_DIR: 'stateDir',
  MIGD_COORDINATOR: 'coordinator',
  MIGD_TLS_DIR: 'tlsDir',
  MIGD_NODE_TLS_IDENTITY: 'tlsIdentity',
  MIGD_INSECURE: 'insecure',
  MIGD_QEMU: 'qemuBinary',
  MIGD_GUEST_IMAGE: 'guestImage',
  MIGD_NODE_METRICS: 'metricsListen',
  MIGD_NODE_COORDINATOR_IDENTITY: 'coordinatorIdentity',
  MIGD_NODE_STORAGE_ROOT: 'storageRoot',
  MIGD_NODE_IMAGE_ROOT: 'imageRoot',
  MIGD_NODE_REQUIRE_MIGRATION_TLS: 'requireMigrationTls',
};

/** Flags without a value. */
const switches = new Set<keyof Raw>(['insecure', 'requireMigrationTls']);
/** Flags that may be given more than once (also comma-separated in env, arrays in JSON). */
const repeatable = new Set<keyof Raw>(['coordinatorIdentity', 'storageRoot', 'imageRoot']);

function flagName(k: string): string {
  return k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

const keys: (keyof Raw)[] = ['nodeId', 'listen', 'advertise', 'migrationAddress', 'stateDir', 'coordinator', 'heartbeatMs', 'qemuBinary', 'guestImage', 'progressIntervalMs', 'postcopyStallMs', 'metricsListen', 'tlsDir', 'tlsIdentity', 'insecure', 'migrationTlsDir', 'coordinatorIdentity', 'storageRoot', 'imageRoot', 'requireMigrationTls'];

/** Parses argv (`--key value`) and env into a frozen NodeConfig. @throws ConfigError */
export function loadNodeConfig(argv: readonly string[] = process.argv.slice(2), env: NodeJS.ProcessEnv = process.env): NodeConfig {
  const raw: Raw = {};
  const flags = new Map(keys.map((k) => [flagName(k), k]));
  let file = env['MIGD_NODE_CONFIG'];
  const fromFlags: Raw = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (!a.startsWith('--')) throw new ConfigError(a, 'unexpected argument (flags are --name value)');
    const name = a.slice(2);
    const value = argv[i + 1];
    const sw = flags.get(name);
    if (sw !== undefined && switches.has(sw)) {
      fromFlags[sw] = true;
      continue;
    }
    if (value === undefined) throw new ConfigError(name, 'missing value');
    i++;
    if (name === 'config') {
      file = value;
      continue;
    }
    const key = flags.get(name);
    if (!key) throw new ConfigError(name, `unknown option (known: ${[...flags.keys(), 'config'].join(', ')})`);
    if (repeatable.has(key)) fromFlags[key] = [...((fromFlags[key] as string[] | undefined) ?? []), value];
    else fromFlags[key] = value;
  }
  if (file) {
    try {
      Object.assign(raw, JSON.parse(readFileSync(file, 'utf8')) as Raw);
    } catch (err) {
      throw new ConfigError('config', `cannot read ${file}: ${(err as Error).message}`);
    }
  }
  for (const [e, k] of Object.entries(envMap)) if (env[e] !== undefined) raw[k] = env[e];
  Object.assign(raw, fromFlags);
  return resolveNodeConfig(raw);
}

function str(raw: Raw, k: keyof Raw, dflt: string): string {
  const v = raw[k];
  if (v === undefined || v === '') return dflt;
  if (typeof v !== 'string') throw new ConfigError(k, 'must be a string');
  return v;
}

function bool(raw: Raw, k: keyof Raw): boolean {
  const v = raw[k];
  if (v === undefined || v === '' || v === false || v === 'false' || v === '0') return false;
  if (v === true || v === 'true' || v === '1') return true;
  throw new ConfigError(k, `must be true or false, got ${String(v)}`);
}

/** A list option: repeated flags, a comma-separated string (env) or a JSON array. */
function list(raw: Raw, k: keyof Raw, dflt: readonly string[]): readonly string[] {
  const v = raw[k];
  if (v === undefined || v === '') return dflt;
  const items = Array.isArray(v) ? v : typeof v === 'string' ? v.split(',') : undefined;
  if (!items || items.some((x) => typeof x !== 'string')) throw new ConfigError(k, 'must be a string or a list of strings');
  const out = (items as string[]).map((x) => x.trim()).filter(Boolean);
  return out.length > 0 ? out : dflt;
}

function int(raw: Raw, k: keyof Raw, dflt: number, min: number, max: number): number {
  const v = raw[k];
  if (v === undefined || v === '') return dflt;
  const n = typeof v === 'number' ? v : Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new ConfigError(k, `must be an integer in ${min}..${max}, got ${String(v)}`);
  return n;
}

/** Defaults and validates a raw configuration. @throws ConfigError */
export function resolveNodeConfig(raw: Raw): NodeConfig {
  const nodeId = str(raw, 'nodeId', hostname());
  if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/.test(nodeId)) throw new ConfigError('nodeId', `"${nodeId}" must match [a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}`);
  const listen = str(raw, 'listen', '127.0.0.1:7001');
  const { host } = splitHostPort(listen);
  const advertise = str(raw, 'advertise', listen);
  splitHostPort(advertise);
  const migrationAddress = str(raw, 'migrationAddress', host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host);
  const insecure = bool(raw, 'insecure');
  const tlsDir = str(raw, 'tlsDir', certDir());
  if (insecure && !isLoopbackHost(host)) throw new ConfigError('insecure', `plain-text gRPC is only allowed on loopback, not on ${listen}`);
  const files = identityFiles(tlsDir, 'migd-node');
  const own = nodeIdentity(nodeId);
  const tlsIdentity = str(raw, 'tlsIdentity', existsSync(identityFiles(tlsDir, own).certFile) ? own : 'migd-node');
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$/.test(tlsIdentity)) throw new ConfigError('tlsIdentity', `"${tlsIdentity}" is not a certificate name`);
  const clientFiles = identityFiles(tlsDir, tlsIdentity);
  if (!insecure && tlsIdentity !== 'migd-node' && !existsSync(clientFiles.certFile)) throw new ConfigError('tlsIdentity', `${clientFiles.certFile} does not exist`);
  const security: TransportSecurity = insecure ? { insecure: true } : { tls: files };
  const clientSecurity: TransportSecurity = insecure ? { insecure: true } : { tls: clientFiles, serverName: 'migd-node' };
  const stateDir = str(raw, 'stateDir', join(cacheDir(), '..', '.state', `node-${nodeId}`));
  const guestImageDir = resolve(str(raw, 'guestImage', DEFAULT_GUEST_IMAGE_DIR));
  const coordinatorIdentities = list(raw, 'coordinatorIdentity', ['migd-coordinator']);
  for (const id of coordinatorIdentities) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$/.test(id)) throw new ConfigError('coordinatorIdentity', `"${id}" is not a certificate name`);
    if (boundNodeId(id) !== undefined || id === 'migd-node') throw new ConfigError('coordinatorIdentity', `"${id}" is a node identity; a node cannot manage other nodes`);
  }
  const roots = (k: 'storageRoot' | 'imageRoot', dflt: string): readonly string[] => {
    const r = list(raw, k, [dflt]);
    for (const p of r) if (!isAbsolute(p)) throw new ConfigError(k, `"${p}" must be an absolute path`);
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
    migrationTlsDir: str(raw, 'migrationTlsDir', tlsDir),
    coordinator: str(raw, 'coordinator', ''),
    heartbeatMs: int(raw, 'heartbeatMs', 2000, 100, 60_000),
    qemuBinary: str(raw, 'qemuBinary', 'qemu-system-x86_64'),
    guestImageDir,
    progressIntervalMs: int(raw, 'progressIntervalMs', 250, 20, 250),
    postcopyStallMs: int(raw, 'postcopyStallMs', 3000, 500, 600_000),
    metricsListen: str(raw, 'metricsListen', ''),
    coordinatorIdentities: Object.freeze([...coordinatorIdentities]),
    storageRoots: roots('storageRoot', stateDir),
    imageRoots: roots('imageRoot', guestImageDir),
    requireMigrationTls: bool(raw, 'requireMigrationTls'),
  };
  if (cfg.requireMigrationTls && insecure) throw new ConfigError('requireMigrationTls', 'needs certificates; it cannot be combined with --insecure');
  return Object.freeze(cfg);
}
