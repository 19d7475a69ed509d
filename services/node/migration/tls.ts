/**
 * TLS for the migration stream: QEMU `tls-creds-x509` objects built from the node's certificate,
 * so guest memory never crosses the wire in clear when a policy asks for it. QEMU reads a folder
 * with fixed file names; the node's certificate (EKU serverAuth + clientAuth) serves both ends.
 */
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { DependencyError } from '../../shared/errors.js';
import { identityFiles } from '../../shared/pki.js';
import type { QmpClient } from '../qmp/client.js';
import { QmpCommandError } from '../qmp/errors.js';

export const TLS_CREDS_ID = 'migd-migration-tls';
/** The name QEMU checks in the peer's certificate (SAN DNS of every node certificate). */
export const TLS_HOSTNAME = 'migd-node';

/** Lays out QEMU's credential folder under `stateDir/qemu-tls` from `certDir`. Idempotent. */
export function prepareQemuTlsDir(certDir: string, stateDir: string): string {
  const f = identityFiles(certDir, 'migd-node');
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
  return dir;
}

/** Adds the credentials object to a QEMU (ignores "already exists"). */
export async function addTlsCreds(qmp: QmpClient, dir: string, endpoint: 'client' | 'server'): Promise<string> {
  try {
    await qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: TLS_CREDS_ID, dir, endpoint, 'verify-peer': true });
  } catch (err) {
    if (!(err instanceof QmpCommandError && /already|duplicate/i.test(err.message))) throw err;
  }
  return TLS_CREDS_ID;
}
