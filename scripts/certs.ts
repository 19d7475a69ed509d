/**
 * The development PKI (idempotent):
 *   node dist/scripts/certs.js [--quiet]          the CA (key in .cache/ca, 0700) and the default
 *                                                 identities in .cache/certs (what daemons read)
 *   node dist/scripts/certs.js issue NAME [--usage server|client|both]
 *                                                 one more identity, e.g. migd-node.<node id>
 *   node dist/scripts/certs.js revoke NAME        puts NAME's certificate on the revocation list
 *                                                 (.cache/certs/ca.crl); servers pick it up within
 *                                                 a second, for new connections
 * Folders: MIGD_CERT_DIR (default <repo>/.cache/certs) and MIGD_CA_DIR (default beside it, see
 * defaultCaDir).
 */
import { createPki, ensurePki, revokeIdentity, type CertUsage } from '../services/shared/pki.js';
import { certDir } from '../services/shared/paths.js';

const args = process.argv.slice(2);
const quiet = args.includes('--quiet');
const caDir = process.env['MIGD_CA_DIR'];
const opts = caDir ? { caDir } : {};
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$/;

function name(): string {
  const n = args[1];
  if (n === undefined || !NAME.test(n)) throw new Error(`usage: certs.js ${args[0]} NAME (a certificate name matching ${NAME.source})`);
  return n;
}

try {
  const cmd = args.find((a) => !a.startsWith('--'));
  if (cmd === undefined) {
    createPki(certDir(), undefined, undefined, opts);
    if (!quiet) console.log(`setup: development certificates in ${certDir()}`);
  } else if (cmd === 'issue') {
    const i = args.indexOf('--usage');
    const usage = i >= 0 ? args[i + 1] : undefined;
    if (usage !== undefined && !['server', 'client', 'both'].includes(usage)) throw new Error('--usage is server, client or both');
    ensurePki(certDir(), [{ name: name(), dnsNames: ['localhost'], ...(usage ? { usage: usage as CertUsage } : {}) }], opts);
    console.log(`certs: ${certDir()}/${name()}.crt`);
  } else if (cmd === 'revoke') {
    revokeIdentity(certDir(), name(), opts);
    console.log(`certs: ${name()} revoked; ${certDir()}/ca.crl updated (servers reload it within a second)`);
  } else {
    throw new Error(`unknown command "${cmd}" (known: issue, revoke; none creates the CA and default identities)`);
  }
} catch (err) {
  console.error(`certs: error: ${(err as Error).message}`);
  process.exit(1);
}
