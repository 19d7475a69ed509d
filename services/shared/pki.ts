/**
 * A local development PKI made with openssl: one CA and a certificate per identity, so a local
 * cluster runs with mutual TLS by default. The common name is the identity the coordinator maps
 * to a role; subjectAltName carries the service names clients verify (`migd-node`,
 * `migd-coordinator`) plus localhost, because migd's servers are reached by namespace IPs.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { DependencyError } from './errors.js';
import type { TlsFiles } from './rpc/tls.js';

/** One identity to issue. */
export interface IdentitySpec {
  /** Common name: the identity (e.g. `migd-node`, `operator`). Also the file name stem. */
  readonly name: string;
  /** Extra DNS names for subjectAltName (the CN is always included). */
  readonly dnsNames?: readonly string[];
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

/** Paths of an identity's files in a PKI folder. */
export function identityFiles(dir: string, name: string): TlsFiles {
  return { caFile: join(dir, 'ca.crt'), certFile: join(dir, `${name}.crt`), keyFile: join(dir, `${name}.key`) };
}

/**
 * Creates `dir/ca.{crt,key}` (unless present) and `dir/<name>.{crt,key}` for each identity that
 * lacks one. Idempotent. `caName` distinguishes CAs (tests make a foreign one).
 */
export function ensurePki(dir: string, identities: readonly IdentitySpec[] = defaultIdentities, caName = 'migd development CA'): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (!existsSync(join(dir, 'ca.crt')) || !existsSync(join(dir, 'ca.key'))) {
    openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '3650', '-subj', `/CN=${caName}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
  }
  for (const id of identities) {
    const f = identityFiles(dir, id.name);
    if (existsSync(f.certFile) && existsSync(f.keyFile)) continue;
    const san = [id.name, ...(id.dnsNames ?? [])].map((d) => `DNS:${d}`).concat('IP:127.0.0.1').join(',');
    const ext = join(dir, `${id.name}.ext`);
    writeFileSync(ext, `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=${san}\n`);
    openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${id.name}.key`, '-out', `${id.name}.csr`, '-subj', `/CN=${id.name}`], dir);
    openssl(['x509', '-req', '-in', `${id.name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${id.name}.crt`, '-days', '825', '-extfile', ext], dir);
    rmSync(join(dir, `${id.name}.csr`), { force: true });
    rmSync(ext, { force: true });
  }
}
