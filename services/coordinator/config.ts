/**
 * Coordinator configuration: parsed once (services/shared/config.ts), fully defaulted, frozen.
 * Sources, later ones winning: a JSON file (`--config FILE` or MIGD_COORDINATOR_CONFIG), then
 * environment variables, then flags (`--listen 198.18.0.1:7000 --db /var/lib/migd/history.sqlite
 * --nats nats://127.0.0.1:4222 …`). Bad values and combinations are refused at start-up with a
 * message naming the flag.
 */
import { join } from 'node:path';
import { type ConcurrencyLimits, DEFAULT_LIMITS } from './domain/scheduler.js';
import { configError, configUsage, loadLayeredOptions, optionReader, type ConfigSchema, type RawOptions } from '../shared/config.js';
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
  /**
   * The history database as given: `sqlite:PATH` or a plain PATH (SQLite, the embedded default
   * `<repo>/.state/coordinator/history.sqlite`), or `postgres://…` (replicated coordinators: every
   * coordinator on the same database, one leader elected on it).
   */
  readonly db: string;
  /** {@link db} resolved: a SQLite file, or a Postgres URL. */
  readonly store: { readonly kind: 'sqlite'; readonly filename: string } | { readonly kind: 'postgres'; readonly url: string; readonly pipelineWrites: boolean };
  /** How often the leader prunes samples and published outbox rows past their retention, in ms (default 3 600 000). */
  readonly pruneEveryMs: number;
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
   * Replicas of the events stream the coordinator creates (MIGD_EVENTS): 1 for one nats-server,
   * 3 for a JetStream cluster of three, so the stream survives the loss of one server (default 1).
   */
  readonly natsStreamReplicas: number;
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
  /** Runs that may be prepared and held per link while another streams on it (default 1; 0: none). */
  readonly heldPerLink: number;
  /** Deadline of calls to node daemons, in ms (default 15 000; StartMigration and CreateVm get 6×). */
  readonly nodeCallDeadlineMs: number;
  /** How long a queued run waits for a down source or destination node before it fails, in ms (default 120 000). */
  readonly nodeDownWaitMs: number;
  /** Prometheus /metrics address host:port (empty: off; default empty). */
  readonly metricsListen: string;
}

/**
 * Every option, as a flag (`--heartbeat-ms`), a key of the JSON file (`heartbeatMs`) and, for
 * some, an environment variable; each documents its default.
 */
export const COORDINATOR_OPTIONS = {
  config: { type: 'string', env: 'MIGD_COORDINATOR_CONFIG', doc: 'JSON file of options (camelCase keys); the environment and flags override it' },
  listen: { type: 'string', default: '127.0.0.1:7000', env: 'MIGD_COORDINATOR_LISTEN', doc: 'gRPC listen address host:port (default 127.0.0.1:7000)' },
  advertise: { type: 'string', env: 'MIGD_COORDINATOR_ADVERTISE', doc: 'address nodes and clients reach this coordinator at (default: --listen)' },
  'tls-dir': { type: 'string', env: 'MIGD_TLS_DIR', doc: 'folder with ca.crt and this identity\'s certificate and key (default .cache/certs)' },
  identity: { type: 'string', default: 'migd-coordinator', env: 'MIGD_COORDINATOR_IDENTITY', doc: 'TLS identity (certificate name) (default migd-coordinator)' },
  insecure: { type: 'boolean', env: 'MIGD_INSECURE', doc: 'plain-text gRPC on loopback; callers without a certificate get every role (default off)' },
  db: { type: 'string', env: 'MIGD_COORDINATOR_DB', doc: 'history database: sqlite:PATH or PATH (default .state/coordinator/history.sqlite), or postgres://user@host:port/db for replicated coordinators (one leader, elected on that database)' },
  'db-pipeline-writes': { type: 'string', default: 'on', doc: "postgres: run a write group's independent writes together on the write connection, each statement sent without waiting for the others' answers: on or off (default on)" },
  'prune-every-ms': { type: 'integer', default: 3_600_000, min: 100, max: 86_400_000, doc: 'how often the leader prunes samples and published outbox rows past their retention, in ms (default 3600000)' },
  nats: { type: 'string', default: '', env: 'MIGD_NATS_URL', doc: 'NATS server URL(s), comma-separated; tls:// for TLS (default none: events wait in the outbox)' },
  'nats-user': { type: 'string', default: '', env: 'MIGD_NATS_USER', doc: 'NATS user, with --nats-password-file (default none)' },
  'nats-password-file': { type: 'string', default: '', env: 'MIGD_NATS_PASSWORD_FILE', doc: 'file holding the NATS password (default none)' },
  'nats-creds': { type: 'string', default: '', env: 'MIGD_NATS_CREDS', doc: 'NATS credentials file, instead of a user (default none)' },
  'nats-stream-replicas': { type: 'integer', default: 1, min: 1, max: 5, env: 'MIGD_NATS_STREAM_REPLICAS', doc: 'replicas of the events stream: 3 on a JetStream cluster of three nats-servers (default 1)' },
  roles: { type: 'string', env: 'MIGD_COORDINATOR_ROLES', doc: 'identity=role,... added to or overriding the default roles' },
  'require-node-identity': { type: 'boolean', default: true, env: 'MIGD_COORDINATOR_REQUIRE_NODE_IDENTITY', doc: 'nodes must present their own certificate migd-node.<id> (default on)' },
  'allow-shared-node-identity': { type: 'boolean', env: 'MIGD_COORDINATOR_ALLOW_SHARED_NODE_IDENTITY', doc: 'let the shared migd-node certificate speak for any node (default off)' },
  'heartbeat-ms': { type: 'integer', default: 2000, min: 100, max: 60_000, doc: 'node heartbeat period in ms, told to nodes at registration (default 2000)' },
  'heartbeat-misses': { type: 'integer', default: 3, min: 1, max: 100, doc: 'missed heartbeats before a node is marked down (default 3)' },
  'limit-per-source': { type: 'integer', default: DEFAULT_LIMITS.perSource, min: 1, max: 1000, doc: `concurrent migrations out of one node (default ${DEFAULT_LIMITS.perSource})` },
  'limit-per-destination': { type: 'integer', default: DEFAULT_LIMITS.perDestination, min: 1, max: 1000, doc: `concurrent migrations into one node (default ${DEFAULT_LIMITS.perDestination})` },
  'limit-per-link': { type: 'integer', default: DEFAULT_LIMITS.perLink, min: 1, max: 1000, doc: `concurrent migration streams from one node to another: a migration holds its link until its source QEMU completed, its host slots until its handover ends (default ${DEFAULT_LIMITS.perLink})` },
  'held-per-link': { type: 'integer', default: 1, min: 0, max: 100, doc: 'queued runs per link prepared while another streams on it, released when the link frees (default 1; 0: none)' },
  'limit-per-cluster': { type: 'integer', default: DEFAULT_LIMITS.perCluster, min: 1, max: 10_000, doc: `concurrent migrations in the cluster (default ${DEFAULT_LIMITS.perCluster})` },
  'node-call-deadline-ms': { type: 'integer', default: 15_000, min: 100, max: 600_000, doc: 'deadline of calls to nodes in ms; StartMigration and CreateVm get 6x (default 15000)' },
  'node-down-wait-ms': { type: 'integer', default: 120_000, min: 0, max: 86_400_000, doc: 'how long a queued run waits for a down node before it fails, in ms (default 120000)' },
  'metrics-listen': { type: 'string', default: '', env: 'MIGD_COORDINATOR_METRICS', doc: 'Prometheus /metrics address host:port (default off)' },
  help: { type: 'boolean', short: 'h', doc: 'print this help' },
} as const satisfies ConfigSchema;

type Raw = RawOptions<typeof COORDINATOR_OPTIONS>;

/** --db-pipeline-writes. @throws ConfigError naming the option */
function pipelineWrites(v: string): boolean {
  if (v !== 'on' && v !== 'off') throw configError('db-pipeline-writes', `must be on or off, not "${v}"`);
  return v === 'on';
}

/** The database option for logs: a password in a postgres:// URL is masked. */
export function redactDb(db: string): string {
  return db.replace(/^(postgres(?:ql)?:\/\/[^:/@]+):[^@]*@/, '$1:***@');
}

/** `--help` text. */
export function coordinatorUsage(): string {
  return `usage: node dist/services/coordinator/main.js [options]\n${configUsage(COORDINATOR_OPTIONS)}`;
}

/**
 * Parses argv and env (over a JSON file named by `--config`) into a frozen CoordinatorConfig.
 * @throws ConfigError naming the option
 */
export function loadCoordinatorConfig(argv: readonly string[] = process.argv.slice(2), env: NodeJS.ProcessEnv = process.env): CoordinatorConfig {
  return resolveCoordinatorConfig(loadLayeredOptions(COORDINATOR_OPTIONS, argv, { env, fileOption: 'config' }));
}

/** Defaults and validates a raw configuration. @throws ConfigError naming the option */
export function resolveCoordinatorConfig(raw: Raw): CoordinatorConfig {
  const { str, int, bool, has } = optionReader(COORDINATOR_OPTIONS, raw);
  const listen = str('listen');
  let host: string;
  try {
    host = splitHostPort(listen).host;
  } catch {
    throw configError('listen', `"${listen}" is not host:port`);
  }
  const advertise = str('advertise', listen);
  try {
    splitHostPort(advertise);
  } catch {
    throw configError('advertise', `"${advertise}" is not host:port`);
  }
  const insecure = bool('insecure');
  if (insecure && !isLoopbackHost(host)) throw configError('insecure', `plain-text gRPC is only allowed on loopback, not on ${listen}`);
  const identity = str('identity');
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(identity)) throw configError('identity', `"${identity}" is not a certificate name`);
  const tlsDir = str('tlsDir', certDir());
  const files = identityFiles(tlsDir, identity);
  const nats = str('nats');
  for (const url of nats ? nats.split(',') : []) {
    if (!/^(nats|tls|ws|wss):\/\/[^\s/]+$|^[^\s:/]+:\d+$/.test(url.trim())) throw configError('nats', `"${redactNatsUrl(url)}" is not a NATS server URL (nats://host:port)`);
  }
  const natsUser = str('natsUser');
  const natsPasswordFile = str('natsPasswordFile');
  const natsCreds = str('natsCreds');
  if (natsUser && !natsPasswordFile) throw configError('nats-password-file', 'is required with --nats-user');
  if (natsPasswordFile && !natsUser) throw configError('nats-user', 'is required with --nats-password-file');
  if (natsCreds && natsUser) throw configError('nats-creds', 'set either --nats-creds or --nats-user, not both');
  const natsTls = nats.split(',').some((u) => u.trim().startsWith('tls://'));
  if (natsTls && insecure) throw configError('nats', 'tls:// needs this coordinator\'s certificate; it cannot be combined with --insecure');
  const natsAuth: NatsClientAuth = Object.freeze({
    ...(natsTls ? { tls: files } : {}),
    ...(natsUser ? { user: natsUser, passwordFile: natsPasswordFile } : {}),
    ...(natsCreds ? { credsFile: natsCreds } : {}),
  });
  const metricsListen = str('metricsListen');
  if (metricsListen) {
    try {
      splitHostPort(metricsListen);
    } catch {
      throw configError('metrics-listen', `"${metricsListen}" is not host:port`);
    }
  }
  const rawRoles = raw.roles;
  let extraRoles: ReadonlyMap<string, Role>;
  try {
    extraRoles = parseRoleMap(rawRoles ?? '');
  } catch (err) {
    throw configError('roles', (err as Error).message);
  }
  const roles = new Map<string, Role>([...DEFAULT_ROLES, ...extraRoles]);
  const allowShared = bool('allowSharedNodeIdentity');
  if (allowShared && has('requireNodeIdentity') && bool('requireNodeIdentity')) {
    throw configError('allow-shared-node-identity', 'contradicts --require-node-identity: set one of them');
  }
  const requireNodeIdentity = !allowShared && bool('requireNodeIdentity');
  const heartbeatMs = int('heartbeatMs');
  const heartbeatMisses = int('heartbeatMisses');
  const limits: ConcurrencyLimits = Object.freeze({
    perSource: int('limitPerSource'),
    perDestination: int('limitPerDestination'),
    perLink: int('limitPerLink'),
    perCluster: int('limitPerCluster'),
  });
  const db = str('db', join(repoRoot(), '.state', 'coordinator', 'history.sqlite'));
  const store: CoordinatorConfig['store'] = /^postgres(?:ql)?:\/\//.test(db)
    ? { kind: 'postgres', url: db, pipelineWrites: pipelineWrites(str('dbPipelineWrites')) }
    : { kind: 'sqlite', filename: db.startsWith('sqlite:') ? db.slice('sqlite:'.length) : db };
  if (store.kind === 'sqlite' && store.filename === '') throw configError('db', 'sqlite: needs a file name (sqlite:PATH)');
  if (store.kind === 'postgres') {
    try {
      new URL(store.url);
    } catch {
      throw configError('db', 'is not a valid postgres:// URL');
    }
  }
  const cfg: CoordinatorConfig = {
    listen,
    advertise,
    security: insecure ? { insecure: true } : { tls: files },
    nodeClientSecurity: insecure ? { insecure: true } : { tls: files, serverName: 'migd-node' },
    identity,
    insecure,
    db,
    store,
    pruneEveryMs: int('pruneEveryMs'),
    nats,
    natsAuth,
    natsStreamReplicas: int('natsStreamReplicas'),
    roles,
    requireNodeIdentity,
    heartbeatMs,
    heartbeatMisses,
    limits,
    heldPerLink: int('heldPerLink'),
    nodeCallDeadlineMs: int('nodeCallDeadlineMs'),
    nodeDownWaitMs: int('nodeDownWaitMs'),
    metricsListen,
  };
  return Object.freeze(cfg);
}
