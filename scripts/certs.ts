/**
 * Creates the local development CA and certificates (idempotent): `node dist/scripts/certs.js`.
 * Folder: MIGD_CERT_DIR or <repo>/.cache/certs.
 */
import { ensurePki } from '../services/shared/pki.js';
import { certDir } from '../services/shared/paths.js';

const quiet = process.argv.includes('--quiet');
try {
  ensurePki(certDir());
  if (!quiet) console.log(`setup: development certificates in ${certDir()}`);
} catch (err) {
  console.error(`setup: error: ${(err as Error).message}`);
  process.exit(1);
}
