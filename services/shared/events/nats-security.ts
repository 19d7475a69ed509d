/**
 * NATS locked down: TLS with client certificates from the migd CA, and users with subject
 * permissions. Only the publisher (the coordinator) may publish `migd.v1.>` and call the
 * JetStream API at large (it manages the MIGD_EVENTS stream); a reader may only create and pull
 * its own ordered consumers on MIGD_EVENTS and read stream info — it can neither publish an event,
 * nor purge, delete or reconfigure the stream. Everything here is shared by the local cluster
 * launcher, the tests' nats-server helper and the daemons' client options.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { credsAuthenticator, type ConnectionOptions } from 'nats';
import { ConfigError } from '../errors.js';
import type { TlsFiles } from '../rpc/tls.js';
import { EVENTS_STREAM } from './jetstream.js';
import { ALL_EVENTS_SUBJECT } from './subjects.js';

/** The certificate identity of the NATS server (server usage only). */
export const NATS_SERVER_IDENTITY = 'migd-nats';
/** The NATS user of the coordinator (publishes events, manages the stream). */
export const NATS_PUBLISHER_USER = 'migd-coordinator';
/** The NATS user of event consumers (read only). */
export const NATS_READER_USER = 'migd-reader';

/** Subjects a reader may publish to: requests for its own consumers on the events stream, nothing else. */
export function readerPublishSubjects(stream = EVENTS_STREAM): string[] {
  return [
    '$JS.API.INFO',
    `$JS.API.STREAM.INFO.${stream}`,
    `$JS.API.CONSUMER.CREATE.${stream}`,
    `$JS.API.CONSUMER.CREATE.${stream}.>`,
    `$JS.API.CONSUMER.INFO.${stream}.>`,
    `$JS.API.CONSUMER.MSG.NEXT.${stream}.>`,
  ];
}

/** A user of the server's configuration. */
export interface NatsUser {
  readonly user: string;
  readonly password: string;
  readonly role: 'publisher' | 'reader';
}

/** What a nats-server configuration needs. */
export interface NatsServerSecurity {
  /** The server's certificate (usage server) and the CA client certificates must chain to. */
  readonly tls: TlsFiles;
  readonly users: readonly NatsUser[];
}

const quote = (s: string): string => JSON.stringify(s);
const list = (xs: readonly string[]): string => `[${xs.map(quote).join(', ')}]`;

/**
 * One member of a nats-server cluster: where it accepts routes, every member's route address
 * (its own included: nats-server skips it), and the user routes authenticate with.
 */
export interface NatsClusterConfig {
  /** The cluster's name (the same on every member). */
  readonly name: string;
  /** host:port this member accepts routes on. */
  readonly listen: string;
  /** host:port of every member's route listener. */
  readonly routes: readonly string[];
  readonly user: string;
  readonly password: string;
}

/**
 * A nats-server configuration: JetStream in `storeDir`, listening on `host:port`, TLS that
 * requires a client certificate of the CA, and the users with their permissions. With `cluster`,
 * the server also routes to the other members (a JetStream cluster: `name` must differ per member).
 */
export function natsServerConfig(o: { host: string; port: number; storeDir: string; name: string; security: NatsServerSecurity; cluster?: NatsClusterConfig | undefined }): string {
  const users = o.security.users.map((u) => {
    const perms =
      u.role === 'publisher'
        ? `publish: { allow: ${list([ALL_EVENTS_SUBJECT, '$JS.API.>'])} }, subscribe: { allow: ${list(['_INBOX.>', ALL_EVENTS_SUBJECT])} }`
        : `publish: { allow: ${list(readerPublishSubjects())} }, subscribe: { allow: ${list(['_INBOX.>', ALL_EVENTS_SUBJECT])} }`;
    return `    { user: ${quote(u.user)}, password: ${quote(u.password)}, permissions: { ${perms} } }`;
  });
  return [
    `server_name: ${quote(o.name)}`,
    `listen: ${quote(`${o.host}:${o.port}`)}`,
    `jetstream { store_dir: ${quote(o.storeDir)} }`,
    ...(o.cluster ? clusterBlock(o.cluster) : []),
    `tls { cert_file: ${quote(o.security.tls.certFile)}, key_file: ${quote(o.security.tls.keyFile)}, ca_file: ${quote(o.security.tls.caFile)}, verify: true, timeout: 5 }`,
    'authorization {',
    '  users = [',
    ...users,
    '  ]',
    '}',
    '',
  ].join('\n');
}

function clusterBlock(c: NatsClusterConfig): string[] {
  const auth = `${encodeURIComponent(c.user)}:${encodeURIComponent(c.password)}`;
  return [
    'cluster {',
    `  name: ${quote(c.name)}`,
    `  listen: ${quote(c.listen)}`,
    `  authorization { user: ${quote(c.user)}, password: ${quote(c.password)} }`,
    `  routes: ${list(c.routes.map((r) => `nats-route://${auth}@${r}`))}`,
    '}',
  ];
}

/**
 * Makes the users of a local cluster with fresh random passwords, each also written to
 * `dir/<user>.password` (0600) for the clients' `--nats-password-file`.
 */
export function createNatsUsers(dir: string): { users: NatsUser[]; passwordFile: (user: string) => string } {
  const users: NatsUser[] = [
    { user: NATS_PUBLISHER_USER, password: randomBytes(24).toString('base64url'), role: 'publisher' },
    { user: NATS_READER_USER, password: randomBytes(24).toString('base64url'), role: 'reader' },
  ];
  for (const u of users) writeFileSync(join(dir, `${u.user}.password`), u.password + '\n', { mode: 0o600 });
  return { users, passwordFile: (user) => join(dir, `${user}.password`) };
}

/** How a NATS client authenticates. */
export interface NatsClientAuth {
  /** TLS with this client certificate (and CA) — needed when the server requires TLS. */
  readonly tls?: TlsFiles;
  readonly user?: string;
  /** A file holding the password (first line). */
  readonly passwordFile?: string;
  /** A NATS credentials file (JWT + nkey seed, from `nsc`). */
  readonly credsFile?: string;
}

/**
 * Connection options for `auth`, plus `servers` with their `tls://` scheme turned into the plain
 * form nats.js expects (TLS is then required by the `tls` option).
 * @throws ConfigError for unreadable files or a user without a password
 */
export function natsConnectOptions(servers: readonly string[], auth: NatsClientAuth): Partial<ConnectionOptions> {
  const opts: { -readonly [K in keyof ConnectionOptions]?: ConnectionOptions[K] } = { servers: servers.map((s) => s.trim().replace(/^tls:\/\//, 'nats://')) };
  if (auth.tls) opts.tls = { caFile: auth.tls.caFile, certFile: auth.tls.certFile, keyFile: auth.tls.keyFile };
  if (auth.credsFile) {
    let creds: Buffer;
    try {
      creds = readFileSync(auth.credsFile);
    } catch (err) {
      throw new ConfigError('natsCreds', `cannot read ${auth.credsFile}: ${(err as Error).message}`);
    }
    opts.authenticator = credsAuthenticator(new Uint8Array(creds));
  }
  if (auth.user !== undefined && auth.user !== '') {
    if (!auth.passwordFile) throw new ConfigError('natsPasswordFile', `a password file is required with user "${auth.user}"`);
    let pass: string;
    try {
      pass = readFileSync(auth.passwordFile, 'utf8').split('\n')[0]!.trim();
    } catch (err) {
      throw new ConfigError('natsPasswordFile', `cannot read ${auth.passwordFile}: ${(err as Error).message}`);
    }
    opts.user = auth.user;
    opts.pass = pass;
  }
  return opts;
}

/** A NATS URL (or comma-separated list) fit for logs: user info (passwords, tokens) removed. */
export function redactNatsUrl(urls: string): string {
  return urls
    .split(',')
    .map((u) => u.trim().replace(/^([a-z]+:\/\/)?[^@/\s]*@/i, (_m, scheme: string | undefined) => `${scheme ?? ''}***@`))
    .join(',');
}
