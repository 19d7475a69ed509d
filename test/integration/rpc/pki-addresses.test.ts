/**
 * Development certificates name the addresses their servers listen on (issue 18): a client that
 * verifies the server by the address it dials — as grpcurl and Python grpcio do — accepts a server
 * whose certificate was issued with that address, and refuses one whose certificate lacks it.
 * Real openssl, real TLS handshakes on loopback addresses (127.0.0.0/8 is all local).
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer, type Server } from 'node:tls';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createCa, ensurePki, identityFiles, serverIdentity } from '../../../services/shared/pki.js';

// <root>/certs with its CA (key) in <root>/ca, as .cache/certs and .cache/ca.
let root = '';
let dir = '';
const servers: Server[] = [];
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'migd-pki-'));
  dir = join(root, 'certs');
  createCa(dir);
});
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  rmSync(root, { recursive: true, force: true });
});

const san = (name: string): string => new X509Certificate(readFileSync(identityFiles(dir, name).certFile)).subjectAltName ?? '';

/** A mutual-TLS server on `host` with identity `name`; resolves to its port. */
async function serve(host: string, name: string): Promise<number> {
  const f = identityFiles(dir, name);
  const server = createServer({ ca: readFileSync(f.caFile), cert: readFileSync(f.certFile), key: readFileSync(f.keyFile), requestCert: true, rejectUnauthorized: true }, (s) => s.end('ok'));
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, host, r));
  return (server.address() as AddressInfo).port;
}

/** Dials host:port as `operator`, verifying the server by that address (no name override). */
function dial(host: string, port: number): Promise<string> {
  const f = identityFiles(dir, 'operator');
  return new Promise((resolve, reject) => {
    const s = connect({ host, port, ca: readFileSync(f.caFile), cert: readFileSync(f.certFile), key: readFileSync(f.keyFile) }, () => s.once('data', (d: Buffer) => resolve(d.toString())));
    s.once('error', reject);
  });
}

describe('development PKI: server certificates name their listen addresses', () => {
  it('issues the address, keeps a certificate that already names it, and reissues for a new one', () => {
    ensurePki(dir, [serverIdentity('migd-coordinator', ['198.18.7.1'])]);
    expect(san('migd-coordinator').split(', ').sort()).toEqual(['DNS:localhost', 'DNS:migd-coordinator', 'IP Address:127.0.0.1', 'IP Address:198.18.7.1']);
    const first = readFileSync(identityFiles(dir, 'migd-coordinator').certFile, 'utf8');
    ensurePki(dir, [serverIdentity('migd-coordinator', ['198.18.7.1'])]);
    expect(readFileSync(identityFiles(dir, 'migd-coordinator').certFile, 'utf8')).toBe(first);
    ensurePki(dir, [serverIdentity('migd-coordinator', ['198.18.9.1'])]);
    expect(san('migd-coordinator')).toContain('IP Address:198.18.9.1');
    expect(san('migd-coordinator')).not.toContain('198.18.7.1');
    // Same CA, and the key matches the new certificate.
    const ca = new X509Certificate(readFileSync(join(dir, 'ca.crt')));
    const cert = new X509Certificate(readFileSync(identityFiles(dir, 'migd-coordinator').certFile));
    expect(cert.verify(ca.publicKey)).toBe(true);
    expect(cert.checkPrivateKey(createPrivateKey(readFileSync(identityFiles(dir, 'migd-coordinator').keyFile)))).toBe(true);
  });

  it('a client dialing the address accepts a certificate naming it and refuses one that does not', async () => {
    ensurePki(dir, [serverIdentity('migd-coordinator', ['127.0.0.2']), { name: 'operator' }]);
    expect(await dial('127.0.0.2', await serve('127.0.0.2', 'migd-coordinator'))).toBe('ok');
    await expect(dial('127.0.0.3', await serve('127.0.0.3', 'migd-coordinator'))).rejects.toThrow(/IP: 127\.0\.0\.3 is not in the cert's list/);
  });
});
