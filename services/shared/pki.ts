/**
 * A local development PKI made with openssl: one CA and a certificate per identity, so a local
 * cluster runs with mutual TLS by default. The CA's key lives in its own folder (`.cache/ca`,
 * 0700), apart from the certificate folder daemons read (`.cache/certs`); only
 * `node dist/scripts/certs.js` (scripts/setup) and tests create a CA, daemons and launchers only
 * issue identities with an existing one. A revocation list (`ca.crl`) sits beside the certificates
 * and every server honours it. The common name is the identity the coordinator maps
 * to a role; subjectAltName carries the service names migd's own clients verify (`migd-node`,
 * `migd-coordinator`), localhost and 127.0.0.1, plus the addresses a server listens on when the
 * issuer knows them (the local cluster does), so stock gRPC clients (grpcurl, Python grpcio)
 * connect to the printed address without overriding the target name.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, readFileSync, renameSync, writeFileSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { DependencyError } from './errors.js';
import { ensurePrivateDir, restrictFiles } from './private-files.js';
import type { TlsFiles } from './rpc/tls.js';

/** One identity to issue. */
export interface IdentitySpec {
  /** Common name: the identity (e.g. `migd-node`, `operator`). Also the file name stem. */
  readonly name: string;
  /** Extra DNS names for subjectAltName (the CN is always included). */
  readonly dnsNames?: readonly string[];
  /** Key usage (default {@link usageOf}: both for the coordinator and nodes, client otherwise). */
  readonly usage?: CertUsage;
  /**
   * IP addresses for subjectAltName besides 127.0.0.1: those the server listens on. A present
   * certificate that lacks one of them (or of the DNS names) is issued again.
   */
  readonly ipAddresses?: readonly string[];
}

/** The identities a local cluster uses. */
export const defaultIdentities: readonly IdentitySpec[] = [
  { name: 'migd-coordinator', dnsNames: ['localhost'] },
  { name: 'migd-node', dnsNames: ['localhost'] },
  { name: 'operator' },
  { name: 'viewer' },
];

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: Buffer };
    if (e.code === 'ENOENT') throw new DependencyError('openssl', 'not installed (apt-get install openssl)', { cause: err });
    throw new DependencyError('openssl', `openssl ${args[0]} failed: ${e.stderr?.toString().trim() ?? e.message}`, { cause: err });
  }
}

/** Prefix of per-node identities: `migd-node.<node id>` (the coordinator binds them to that node). */
export const NODE_IDENTITY_PREFIX = 'migd-node.';

/** The identity (certificate common name) of node `nodeId`'s own certificate. */
export function nodeIdentity(nodeId: string): string {
  return `${NODE_IDENTITY_PREFIX}${nodeId}`;
}

/** The node id a per-node identity is bound to, or undefined for any other identity. */
export function boundNodeId(identity: string | undefined): string | undefined {
  return identity?.startsWith(NODE_IDENTITY_PREFIX) && identity.length > NODE_IDENTITY_PREFIX.length ? identity.slice(NODE_IDENTITY_PREFIX.length) : undefined;
}

/** Paths of an identity's files in a PKI folder (with the folder's revocation list). */
export function identityFiles(dir: string, name: string): TlsFiles {
  return { caFile: join(dir, 'ca.crt'), certFile: join(dir, `${name}.crt`), keyFile: join(dir, `${name}.key`), crlFile: join(dir, CRL_FILE) };
}

/** The revocation list in a certificate folder, read by every server (see rpc/tls.ts). */
export const CRL_FILE = 'ca.crl';

/** The command that creates the development CA and certificates. */
export const CREATE_PKI_COMMAND = 'node dist/scripts/certs.js';

/**
 * Where the CA's key lives for certificate folder `certDir`: apart from it, because daemons read
 * `certDir` and must never hold the key that mints identities. `<parent>/ca` for a folder named
 * `certs` (`.cache/certs` → `.cache/ca`), `<certDir>-ca` otherwise.
 */
export function defaultCaDir(certDir: string): string {
  return basename(certDir) === 'certs' ? join(dirname(certDir), 'ca') : `${certDir}-ca`;
}

/** What a certificate may be used for: a server's, a client's, or both (daemons that serve and call). */
export type CertUsage = 'server' | 'client' | 'both';

/** The usage of an identity: given, else both for the daemons (coordinator, nodes), client for the rest. */
export function usageOf(id: IdentitySpec): CertUsage {
  if (id.usage) return id.usage;
  return id.name === 'migd-coordinator' || id.name === 'migd-node' || boundNodeId(id.name) !== undefined ? 'both' : 'client';
}

const EKU: Record<CertUsage, string> = { server: 'serverAuth', client: 'clientAuth', both: 'serverAuth,clientAuth' };

/** Options of the PKI functions. */
export interface PkiOptions {
  /** Folder of the CA key and its bookkeeping (default {@link defaultCaDir}). */
  readonly caDir?: string;
}

function openSslCaConfig(caDir: string): string {
  const cnf = join(caDir, 'openssl.cnf');
  if (!existsSync(cnf)) {
    writeFileSync(cnf, `[ ca ]\ndefault_ca = migd\n[ migd ]\ndatabase = ${join(caDir, 'index.txt')}\ncrlnumber = ${join(caDir, 'crlnumber')}\ncertificate = ${join(caDir, 'ca.crt')}\nprivate_key = ${join(caDir, 'ca.key')}\ndefault_md = sha256\ndefault_crl_days = 3650\n`, { mode: 0o600 });
  }
  if (!existsSync(join(caDir, 'index.txt'))) writeFileSync(join(caDir, 'index.txt'), '', { mode: 0o600 });
  if (!existsSync(join(caDir, 'crlnumber'))) writeFileSync(join(caDir, 'crlnumber'), '01\n', { mode: 0o600 });
  return cnf;
}

/** Writes the CA's current revocation list into `certDir` (every server reads it there). */
function publishCrl(certDir: string, caDir: string): void {
  const cnf = openSslCaConfig(caDir);
  openssl(['ca', '-config', cnf, '-gencrl', '-out', join(caDir, CRL_FILE)], caDir);
  copyFileSync(join(caDir, CRL_FILE), join(certDir, CRL_FILE));
  chmodSync(join(certDir, CRL_FILE), 0o600);
}

/**
 * Creates the CA (unless present): its key in `caDir` (0700, never read by a daemon), its
 * certificate and an empty revocation list in `certDir`. The only place a CA is ever made.
 */
export function createCa(certDir: string, caName = 'migd development CA', opts: PkiOptions = {}): void {
  const caDir = opts.caDir ?? defaultCaDir(certDir);
  ensurePrivateDir(caDir, { tighten: true });
  ensurePrivateDir(certDir, { tighten: true });
  // A CA made before keys were kept apart sits in the certificate folder: move it, so the
  // certificates it signed stay valid and the key leaves the folder daemons read.
  if (!existsSync(join(caDir, 'ca.key')) && existsSync(join(certDir, 'ca.key')) && existsSync(join(certDir, 'ca.crt'))) {
    for (const f of ['ca.key', 'ca.crt', 'ca.srl']) if (existsSync(join(certDir, f))) copyFileSync(join(certDir, f), join(caDir, f));
    rmSync(join(certDir, 'ca.key'));
    rmSync(join(certDir, 'ca.srl'), { force: true });
  }
  if (!existsSync(join(caDir, 'ca.crt')) || !existsSync(join(caDir, 'ca.key'))) {
    openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '3650', '-subj', `/CN=${caName}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], caDir);
  }
  restrictFiles([join(caDir, 'ca.key'), join(caDir, 'ca.crt')]);
  copyFileSync(join(caDir, 'ca.crt'), join(certDir, 'ca.crt'));
  chmodSync(join(certDir, 'ca.crt'), 0o600);
  if (!existsSync(join(certDir, CRL_FILE))) publishCrl(certDir, caDir);
}

/** The CA folder of `certDir`, or a clear error naming the command that creates it. */
function requireCa(certDir: string, opts: PkiOptions): string {
  const caDir = opts.caDir ?? defaultCaDir(certDir);
  if (!existsSync(join(caDir, 'ca.key')) || !existsSync(join(caDir, 'ca.crt'))) {
    throw new DependencyError('CA', `no certificate authority in ${caDir} for ${certDir}: create it with \`${CREATE_PKI_COMMAND}\` (scripts/setup runs it); daemons never make one`);
  }
  if (!existsSync(join(certDir, 'ca.crt'))) {
    ensurePrivateDir(certDir, { tighten: true });
    copyFileSync(join(caDir, 'ca.crt'), join(certDir, 'ca.crt'));
  }
  return caDir;
}

/**
 * A server identity of the defaults (`migd-coordinator`, `migd-node`) that also names the IP
 * addresses the server listens on, for `ensurePki` once they are known.
 */
export function serverIdentity(name: string, ipAddresses: readonly string[]): IdentitySpec {
  return { ...(defaultIdentities.find((i) => i.name === name) ?? { name }), ipAddresses };
}

/** The subjectAltName entries of an identity, in openssl's `DNS:x,IP:y` form. */
function subjectAltNames(id: IdentitySpec): string[] {
  const dns = [...new Set([id.name, ...(id.dnsNames ?? [])])].map((d) => `DNS:${d}`);
  const ips = [...new Set(['127.0.0.1', ...(id.ipAddresses ?? [])])].map((a) => `IP:${a}`);
  return [...dns, ...ips];
}

/** Whether the certificate at `certFile` names every subjectAltName in `wanted`. */
function coversNames(certFile: string, wanted: readonly string[]): boolean {
  let present: Set<string>;
  try {
    // Node prints `DNS:a, IP Address:1.2.3.4`.
    const san = new X509Certificate(readFileSync(certFile)).subjectAltName ?? '';
    present = new Set(san.split(', ').map((e) => e.replace(/^IP Address:/, 'IP:')));
  } catch {
    return false;
  }
  return wanted.every((w) => present.has(w));
}

/**
 * Issues `certDir/<name>.{crt,key}` for each identity that lacks one, or whose certificate lacks
 * one of the identity's names or addresses (it is issued again), with the existing CA.
 * Idempotent. Certificates carry only the key usages their identity needs ({@link usageOf}).
 * @throws DependencyError when the CA does not exist (it is never created here: see
 *   {@link createCa}, `node dist/scripts/certs.js`) or openssl fails
 */
export function ensurePki(dir: string, identities: readonly IdentitySpec[] = defaultIdentities, opts: PkiOptions = {}): void {
  const caDir = requireCa(dir, opts);
  for (const id of identities) {
    const f = identityFiles(dir, id.name);
    const san = subjectAltNames(id);
    if (existsSync(f.certFile) && existsSync(f.keyFile) && coversNames(f.certFile, san)) continue;
    // Written under temporary names and renamed into place (key first), so a process starting
    // meanwhile reads a complete old or new pair, never a half-written file.
    const tmp = `${id.name}.tmp-${process.pid}`;
    const ext = join(dir, `${tmp}.ext`);
    writeFileSync(ext, `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=${EKU[usageOf(id)]}\nsubjectAltName=${san.join(',')}\n`);
    try {
      openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${tmp}.key`, '-out', `${tmp}.csr`, '-subj', `/CN=${id.name}`], dir);
      openssl(['x509', '-req', '-in', `${tmp}.csr`, '-CA', join(caDir, 'ca.crt'), '-CAkey', join(caDir, 'ca.key'), '-CAserial', join(caDir, 'ca.srl'), '-CAcreateserial', '-out', `${tmp}.crt`, '-days', '825', '-extfile', ext], dir);
      restrictFiles([join(dir, `${tmp}.crt`), join(dir, `${tmp}.key`)]);
      renameSync(join(dir, `${tmp}.key`), f.keyFile);
      renameSync(join(dir, `${tmp}.crt`), f.certFile);
    } finally {
      for (const e of ['csr', 'ext', 'key', 'crt']) rmSync(join(dir, `${tmp}.${e}`), { force: true });
    }
  }
}

/**
 * A whole development PKI in `dir`: the CA (unless present, key apart in `opts.caDir`) and the
 * identities. What `node dist/scripts/certs.js` and tests run; daemons only call {@link ensurePki}.
 * `caName` distinguishes CAs (tests make a foreign one).
 */
export function createPki(dir: string, identities: readonly IdentitySpec[] = defaultIdentities, caName = 'migd development CA', opts: PkiOptions = {}): void {
  createCa(dir, caName, opts);
  ensurePki(dir, identities, opts);
}

/**
 * Revokes identity `name` of `certDir`: its certificate goes on the CA's revocation list and the
 * list is written to `certDir/ca.crl`, which servers load at start (restart them to apply it).
 * @throws DependencyError when the CA or the certificate is missing, or openssl fails
 */
export function revokeIdentity(certDir: string, name: string, opts: PkiOptions = {}): void {
  const caDir = requireCa(certDir, opts);
  const f = identityFiles(certDir, name);
  if (!existsSync(f.certFile)) throw new DependencyError('certificate', `${f.certFile} does not exist: nothing to revoke`);
  const cnf = openSslCaConfig(caDir);
  try {
    openssl(['ca', '-config', cnf, '-revoke', f.certFile], caDir);
  } catch (err) {
    if (!/already revoked/i.test((err as Error).message)) throw err;
  }
  publishCrl(certDir, caDir);
}
