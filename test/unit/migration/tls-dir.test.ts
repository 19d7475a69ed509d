/**
 * QEMU's migration TLS folder (services/node/migration/tls.ts): besides the node's certificate it
 * holds RFC 7919's ffdhe2048 group as dh-params.pem, so a destination QEMU does not generate DH
 * parameters at every incoming migration.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createPki } from '../../../services/shared/pki.js';
import { prepareQemuTlsDir, QEMU_DH_PARAMS_PEM } from '../../../services/node/migration/tls.js';

/** The integers of a PKCS#3 DHParameter (SEQUENCE { INTEGER p, INTEGER g }), as hex. */
function dhParams(pem: string): { p: string; g: string } {
  const der = Buffer.from(pem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
  let i = 0;
  const len = (): number => {
    const b = der[i++]!;
    if (b < 0x80) return b;
    let n = 0;
    for (let k = 0; k < (b & 0x7f); k++) n = n * 256 + der[i++]!;
    return n;
  };
  const int = (): string => {
    expect(der[i++]).toBe(0x02);
    const n = len();
    const v = der.subarray(i, i + n);
    i += n;
    return v.toString('hex').replace(/^00/, '');
  };
  expect(der[i++]).toBe(0x30);
  expect(len()).toBe(der.length - i);
  return { p: int(), g: int() };
}

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

describe('QEMU migration TLS folder', () => {
  it('the DH parameters are ffdhe2048: a 2048-bit prime with RFC 7919 ends, generator 2', () => {
    const { p, g } = dhParams(QEMU_DH_PARAMS_PEM);
    expect(p).toHaveLength(512);
    expect(p.startsWith('ffffffffffffffffadf85458a2bb4a9aafdc5620273d3cf1')).toBe(true);
    expect(p.endsWith('886b423861285c97ffffffffffffffff')).toBe(true);
    expect(g).toBe('02');
  });

  it('holds the CA, the node certificate for both ends and dh-params.pem', () => {
    const work = mkdtempSync(join(tmpdir(), 'migd-tlsdir-'));
    dirs.push(work);
    createPki(join(work, 'pki'));
    const dir = prepareQemuTlsDir(join(work, 'pki'), join(work, 'state'));
    for (const f of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem', 'client-cert.pem', 'client-key.pem']) expect(readFileSync(join(dir, f), 'utf8')).toContain('-----BEGIN');
    expect(readFileSync(join(dir, 'dh-params.pem'), 'utf8')).toBe(QEMU_DH_PARAMS_PEM);
  });
});
