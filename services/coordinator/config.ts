/**
 * Coordinator configuration: parsed once, fully defaulted, frozen. Sources, later ones winning: a
 * JSON file (`--config FILE` or MIGD_COORDINATOR_CONFIG), then environment variables, then flags
 * (`--listen 198.18.0.1:7000 --db /var/lib/migd/history.sqlite --nats nats://127.0.0.1:4222 …`).
 * Bad values and combinations are refused at start-up with a message naming the option.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type ConcurrencyLimits, DEFAULT_LIMITS } from './domain/scheduler.js';
import { ConfigError } from '../shared/errors.js';
import { redactNatsUrl, type NatsClientAuth } from '../shared/events/nats-security.js';
import { identityFiles } from '../shared/pki.js';
import { certDir, repoRoot } from '../shared/paths.js';
import { isLoopbackHost, splitHostPort, type TransportSecurity } from '../shared/rpc/tls.js';
import { DEFAULT_ROLES, parseRoleMap, type Role } from './roles.js';

export interface CoordinatorConfig {
  /** gRPC listen address (default 127.0.0.1:7000). */
  readonly listen: string;
  /** Address node daemons and clients use to reach the coordinator (default: `listen`). */
  readonly advertise: string;
  /** gRPC server transport security (default: mTLS with the development certificates in `.cache/certs`). */
  readonly security: TransportSecurity;
  /** Security of calls to node daemons (this identity; node certificates verified as `migd-node`). */
  readonly nodeClientSecurity: TransportSecurity;
  /** The TLS identity (certificate CN) this coordinator uses (default `migd-coordinator`). */
  readonly identity: string;
  /** Plain-text loopback mode: callers without a certificate are granted every role. Default false. */
  readonly insecure: boolean;
  /** SQLite history database file (default `<repo>/.state/coordinator/history.sqlite`). */
  readonly db: string;
  /**
   * NATS server URL(s), comma-separated; empty: no NATS, events wait in the outbox (default
   * empty). `tls://host:port` connects with TLS, presenting this coordinator's certificate.
   */
  readonly nats: string;
  /**
   * How the coordinator authenticates to NATS: `--nats-user` with `--nats-password-file`, or a
   * credentials file (`--nats-creds`); TLS for `tls://` URLs. Default: nothing (an open server).
   */
  readonly natsAuth: NatsClientAuth;
  /**
   * Client-certificate identity (CN) → role. Defaults: operator→operator, viewer→viewer,
   * migd-node→node, migd-coordinator→operator; entries given in configuration add to or
   * override them. Unknown identities are refused.
   */
  readonly roles: ReadonlyMap<string, Role>;
  /**
   * Nodes must present their own certificate (`migd-node.<node id>`) to register and heartbeat;
   * the shared `migd-node` identity is refused. Default true; `--allow-shared-node-identity`
   * turns it off (the shared identity may then speak for any node, with a warning). A per-node
   * certificate never speaks for another node.
   */
  readonly requireNodeIdentity: boolean;
  /** How often node daemons must heartbeat, in ms; told to them at registration (default 2000). */
  readonly heartbeatMs: number;
  /** A node is marked down after this many missed heartbeats (default 3). */
  readonly heartbeatMisses: number;
  /** Concurrency limits of the migration queue (defaults from the domain scheduler). */
  readonly limits: ConcurrencyLimits;
  /** Deadline of calls to node daemons, in ms (default 15 000; StartMigration and CreateVm get 6×). */
  readonly nodeCallDeadlineMs: number;
  /** How long a queued run waits for a down source or destination node before it fails, in ms (default 120 000). */
  readonly nodeDownWaitMs: number;
  /** Prometheus /metrics address host:port (empty: off; default empty). */
  readonly metricsListen: string;
}

type Raw = Partial<
  Record<
    | 'listen'
    | 'advertise'
    | 'tlsDir'
    | 'identity'
    | 'insecure'
    | 'db'
    | 'nats'
    | 'natsUser'
    | 'natsPasswordFile'
    | 'natsCreds'
    | 'roles'
    | 'requireNodeIdentity'
    | 'allowSharedNodeIdentity'
    | 'heartbeatMs'
    | 'heartbeatMisses'
    | 'limitPerSource'
    | 'limitPerDestination'
    | 'limitPerLink'
    | 'limitPerCluster'
    | 'nodeCallDeadlineMs'
    | 'nodeDownWaitMs'
    | 'metricsListen',
    unknown
  >
>;

const keys: (keyof Raw)[] = [
  'listen',
  'advertise',
  'tlsDir',
  'identity',
  'insecure',
  'db',
  'nats',
  'natsUser',
  'natsPasswordFile',
  'natsCreds',
  'roles',
  'requireNodeIdentity',
  'allowSharedNodeIdentity',
  'heartbeatMs',
  'heartbeatMisses',
  'limitPerSource',
  'limitPerDestination',
  'limitPerLink',
  'limitPerCluster',
  'nodeCallDeadlineMs',
  'nodeDownWaitMs',
  'metricsListen',
];

const envMap: Record<string, keyof Raw> = {
  MIGD_COORDINATOR_LISTEN: 'listen',
  MIGD_COORDINATOR_ADVERTISE: 'advertise',
  MIGD_TLS_DIR: 'tlsDir',
  MIGD_COORDINATOR_IDENTITY: 'identity',
  MIGD_INSECURE: 'insecure',
  MIGD_COORDINATOR_DB: 'db',
  MIGD_NATS_URL: 'nats',
  MIGD_NATS_USER: 'natsUser',
  MIGD_NATS_PASSWORD_FILE: 'natsPasswordFile',
  MIGD_NATS_CREDS: 'natsCreds',
  MIGD_COORDINATOR_ROLES: 'roles',
  MIGD_COORDINATOR_REQUIRE_NODE_IDENTITY: 'requireNodeIdentity',
  MIGD_COORDINATOR_ALLOW_SHARED_NODE_IDENTITY: 'allowSharedNodeIdentity',
  MIGD_COORDINATOR_METRICS: 'metricsListen',
};

function flagName(k: string): string {
  return k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

/** Parses argv (`--key value`) and env into a frozen CoordinatorConfig. @throws ConfigError */
export function loadCoordinatorConfig(argv: readonly string[] = process.argv.slice(2), env: NodeJS.ProcessEnv = process.env): CoordinatorConfig {
  const flags = new Map(keys.map((k) => [flagName(k), k]));
  let file = env['MIGD_COORDINATOR_CONFIG'];
  const fromFlags: Raw = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (!a.startsWith('--')) throw new ConfigError(a, 'unexpected argument (flags are --name value)');
    const name = a.slice(2);
    const switches: Record<string, keyof Raw> = { insecure: 'insecure', 'require-node-identity': 'requireNodeIdentity', 'allow-shared-node-identity': 'allowSharedNodeIdentity' };
    const flag = switches[name];
    if (flag) {
      fromFlags[flag] = true;
      continue;
    }
    const value = argv[i + 1];
    if (value === undefined) throw new ConfigError(name, 'missing value');
    i++;
    if (name === 'config') {
      file = value;
      continue;
    }
    const key = flags.get(name);
    if (!key) throw new ConfigError(name, `unknown option (known: ${[...flags.keys(), 'config'].join(', ')})`);
    fromFlags[key] = value;
  }
  const raw: Raw = {};
  if (file) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      throw new ConfigError('config', `cannot read ${file}: ${(err as Error).message}`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new ConfigError('config', `${file} must hold a JSON object`);
    for (const [k, v] of Object.entries(parsed)) {
      if (!(keys as string[]).includes(k)) throw new ConfigError(k, `unknown option in ${file}`);
      raw[k as keyof Raw] = v;
    }
  }
  for (const [e, k] of Object.entries(envMap)) if (env[e] !== undefined) raw[k] = env[e];
  Object.assign(raw, fromFlags);
  return resolveCoordinatorConfig(raw);
}

function str(raw: Raw, k: keyof Raw, dflt: string): string {
  const v = raw[k];
  if (v === undefined || v === '') return dflt;
  if (typeof v !== 'string') throw new ConfigError(k, 'must be a string');
  return v;
}

function int(raw: Raw, k: keyof Raw, dflt: number, min: number, max: number): number {
  const v = raw[k];
  if (v === undefined || v === '') return dflt;
  const n = typeof v === 'number' ? v : Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new ConfigError(k, `must be an integer in ${min}..${max}, got ${String(v)}`);
  return n;
}

function bool(raw: Raw, k: keyof Raw, dflt = false): boolean {
  const v = raw[k];
  if (v === undefined || v === '') return dflt;
  if (v === false || v === 'false' || v === '0') return false;
  if (v === true || v === 'true' || v === '1') return true;
  throw new ConfigError(k, `must be true or false, got ${String(v)}`);
}

/** Defaults and validates a raw configuration. @throws ConfigError naming the option */
export function resolveCoordinatorConfig(raw: Raw): CoordinatorConfig {
  const listen = str(raw, 'listen', '127.0.0.1:7000');
  let host: string;
  try {
    host = splitHostPort(listen).host;
  } catch {
    throw new ConfigError('listen', `"${listen}" is not host:port`);
  }
  const advertise = str(raw, 'advertise', listen);
  try {
    splitHostPort(advertise);
  } catch {
    throw new ConfigError('advertise', `"${advertise}" is not host:port`);
  }
  const insecure = bool(raw, 'insecure');
  if (insecure && !isLoopbackHost(host)) throw new ConfigError('insecure', `plain-text gRPC is only allowed on loopback, not on ${listen}`);
  const identity = str(raw, 'identity', 'migd-coordinator');
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(identity)) throw new ConfigError('identity', `"${identity}" is not a certificate name`);
  const tlsDir = str(raw, 'tlsDir', certDir());
  const files = identityFiles(tlsDir, identity);
  const nats = str(raw, 'nats', '');
  for (const url of nats ? nats.split(',') : []) {
    if (!/^(nats|tls|ws|wss):\/\/[^\s/]+$|^[^\s:/]+:\d+$/.test(url.trim())) throw new ConfigError('nats', `"${redactNatsUrl(url)}" is not a NATS server URL (nats://host:port)`);
  }
  const natsUser = str(raw, 'natsUser', '');
  const natsPasswordFile = str(raw, 'natsPasswordFile', '');
  const natsCreds = str(raw, 'natsCreds', '');
  if (natsUser && !natsPasswordFile) throw new ConfigError('natsPasswordFile', 'is required with natsUser');
  if (natsPasswordFile && !natsUser) throw new ConfigError('natsUser', 'is required with natsPasswordFile');
  if (natsCreds && natsUser) throw new ConfigError('natsCreds', 'set either natsCreds or natsUser, not both');
  const natsTls = nats.split(',').some((u) => u.trim().startsWith('tls://'));
  if (natsTls && insecure) throw new ConfigError('nats', 'tls:// needs this coordinator\'s certificate; it cannot be combined with insecure');
  const natsAuth: NatsClientAuth = Object.freeze({
    ...(natsTls ? { tls: files } : {}),
    ...(natsUser ? { user: natsUser, passwordFile: natsPasswordFile } : {}),
    ...(natsCreds ? { credsFile: natsCreds } : {}),
  });
  const metricsListen = str(raw, 'metricsListen', '');
  if (metricsListen) {
    try {
      splitHostPort(metricsListen);
    } catch {
      throw new ConfigError('metricsListen', `"${metricsListen}" is not host:port`);
    }
  }
  const rawRoles = raw.roles;
  let extraRoles: ReadonlyMap<string, Role>;
  try {
    extraRoles = parseRoleMap(rawRoles ?? '');
  } catch (err) {
    throw new ConfigError('roles', (err as Error).message);
  }
  const roles = new Map<string, Role>([...DEFAULT_ROLES, ...extraRoles]);
  const allowShared = bool(raw, 'allowSharedNodeIdentity');
  if (allowShared && raw.requireNodeIdentity !== undefined && bool(raw, 'requireNodeIdentity')) {
    throw new ConfigError('allowSharedNodeIdentity', 'contradicts requireNodeIdentity: set one of them');
  }
  const requireNodeIdentity = !allowShared && bool(raw, 'requireNodeIdentity', true);
  const heartbeatMs = int(raw, 'heartbeatMs', 2000, 100, 60_000);
  const heartbeatMisses = int(raw, 'heartbeatMisses', 3, 1, 100);
  const limits: ConcurrencyLimits = Object.freeze({
    perSource: int(raw, 'limitPerSource', DEFAULT_LIMITS.perSource, 1, 1000),
    perDestination: int(raw, 'limitPerDestination', DEFAULT_LIMITS.perDestination, 1, 1000),
    perLink: int(raw, 'limitPerLink', DEFAULT_LIMITS.perLink, 1, 1000),
    perCluster: int(raw, 'limitPerCluster', DEFAULT_LIMITS.perCluster, 1, 10_000),
  });
  const cfg: CoordinatorConfig = {
    listen,
    advertise,
    security: insecure ? { insecure: true } : { tls: files },
    nodeClientSecurity: insecure ? { insecure: true } : { tls: files, serverName: 'migd-node' },
    identity,
    insecure,
    db: str(raw, 'db', join(repoRoot(), '.state', 'coordinator', 'history.sqlite')),
    nats,
    natsAuth,
    roles,
    requireNodeIdentity,
    heartbeatMs,
    heartbeatMisses,
    limits,
    nodeCallDeadlineMs: int(raw, 'nodeCallDeadlineMs', 15_000, 100, 600_000),
    nodeDownWaitMs: int(raw, 'nodeDownWaitMs', 120_000, 0, 86_400_000),
    metricsListen,
  };
  return Object.freeze(cfg);
}
