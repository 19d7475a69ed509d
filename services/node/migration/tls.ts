/**
 * TLS for the migration stream: QEMU `tls-creds-x509` objects built from the node's own
 * certificate (`migd-node.<id>`), so guest memory never crosses the wire in clear when a policy
 * asks for it or the node requires it. Each end checks the other's node: the source verifies the
 * destination's certificate names `migd-node.<destination id>` (tls-hostname), the destination
 * admits only the source node's certificate (an `authz-simple` object as tls-authz). QEMU reads a
 * folder with fixed file names; the node's certificate (EKU serverAuth + clientAuth) serves both.
 */
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DependencyError } from '../../shared/errors.js';
import { identityFiles, nodeIdentity } from '../../shared/pki.js';
import type { QmpClient } from '../qmp/client.js';
import { QmpCommandError } from '../qmp/errors.js';

export const TLS_CREDS_ID = 'migd-migration-tls';
/** Id of the authz object a destination QEMU checks the source's certificate with. */
export const TLS_AUTHZ_ID = 'migd-migration-authz';

/**
 * The Diffie-Hellman group a destination QEMU's TLS server uses: RFC 7919's ffdhe2048 (a published
 * safe-prime group, as TLS 1.3 negotiates by name), PKCS#3 PEM. Without a `dh-params.pem` in its
 * credential folder QEMU generates fresh 2048-bit parameters at every `object-add` of server
 * credentials (gnutls_dh_params_generate2): ~0.5 s of CPU before each incoming migration listens.
 */
export const QEMU_DH_PARAMS_PEM = `-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
`;

/** The name the source's QEMU checks in destination `nodeId`'s certificate (its SAN DNS name). */
export function tlsHostnameOf(nodeId: string): string {
  return nodeIdentity(nodeId);
}

/** The distinguished name QEMU reads from source `nodeId`'s certificate (dev PKI: CN only). */
export function tlsDistinguishedNameOf(nodeId: string): string {
  return `CN=${nodeIdentity(nodeId)}`;
}

/**
 * Lays out QEMU's credential folder under `stateDir/qemu-tls` from `certDir`, with `identity`'s
 * certificate (the node's own). Idempotent.
 */
export function prepareQemuTlsDir(certDir: string, stateDir: string, identity = 'migd-node'): string {
  const f = identityFiles(certDir, identity);
  for (const file of [f.caFile, f.certFile, f.keyFile]) {
    if (!existsSync(file)) throw new DependencyError('migration TLS', `${file} is missing (run scripts/setup)`);
  }
  const dir = join(stateDir, 'qemu-tls');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  copyFileSync(f.caFile, join(dir, 'ca-cert.pem'));
  for (const role of ['server', 'client']) {
    copyFileSync(f.certFile, join(dir, `${role}-cert.pem`));
    copyFileSync(f.keyFile, join(dir, `${role}-key.pem`));
  }
  writeFileSync(join(dir, 'dh-params.pem'), QEMU_DH_PARAMS_PEM, { mode: 0o600 });
  return dir;
}

/** The id of the credentials object addTlsCreds adds for `endpoint`. */
export function tlsCredsIdOf(endpoint: 'client' | 'server'): string {
  return `${TLS_CREDS_ID}-${endpoint}`;
}

/**
 * Adds the credentials object for `endpoint` to a QEMU (ignores "already exists"). One id per
 * endpoint: a VM that arrived here (server credentials) may later leave as a source (client).
 */
export async function addTlsCreds(qmp: QmpClient, dir: string, endpoint: 'client' | 'server'): Promise<string> {
  const id = tlsCredsIdOf(endpoint);
  try {
    await qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id, dir, endpoint, 'verify-peer': true });
  } catch (err) {
    if (!(err instanceof QmpCommandError && /already|duplicate/i.test(err.message))) throw err;
  }
  return id;
}

/**
 * Adds (or replaces) the authz object that admits only `distinguishedName` as TLS client.
 * Replaced each time: an incoming QEMU serves one run, but a retry may name another source.
 * `fresh`: the QEMU was just started by this node (no such object yet), so nothing is deleted
 * first and the `object-add` goes out at once, in the caller's round trip.
 */
export async function addTlsAuthz(qmp: QmpClient, distinguishedName: string, opts: { fresh?: boolean } = {}): Promise<string> {
  if (!opts.fresh) await qmp.execute('object-del', { id: TLS_AUTHZ_ID }).catch(() => undefined);
  await qmp.execute('object-add', { 'qom-type': 'authz-simple', id: TLS_AUTHZ_ID, identity: distinguishedName });
  return TLS_AUTHZ_ID;
}
