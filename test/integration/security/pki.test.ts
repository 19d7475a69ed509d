import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DependencyError } from '../../../services/shared/errors.js';
import { NodeServiceService, type GetHostInfoResponse } from '../../../services/shared/gen/migd/v1/node.js';
import { createLogger } from '../../../services/shared/log.js';
import { createPki, defaultCaDir, ensurePki, identityFiles, revokeIdentity } from '../../../services/shared/pki.js';
import { createClient } from '../../../services/shared/rpc/client.js';
import { RpcServer, type Handlers } from '../../../services/shared/rpc/server.js';
import { waitFor } from '../../helpers/coordinator-cluster.js';

const log = createLogger('test', {}, () => undefined);

/** A NodeService answering GetHostInfo with the caller's identity; every other method refuses. */
function whoAmI(): Handlers<typeof NodeServiceService> {
  const refuse = async (): Promise<never> => {
    throw new Error('not served here');
  };
  const h = Object.fromEntries(Object.keys(NodeServiceService).map((k) => [k, refuse])) as Record<string, unknown>;
  h['getHostInfo'] = async (_req: unknown, ctx: { identity?: string }): Promise<GetHostInfoResponse> => ({
    host: { nodeId: ctx.identity ?? '', managementAddress: '', migrationAddress: '', memoryTotalBytes: 1, memoryFreeBytes: 1, cpus: 1, qemuVersion: '', resolvedAccel: 0, migrationCapabilities: [], labels: {}, machineTypes: [], networks: [] },
  });
  return h as unknown as Handlers<typeof NodeServiceService>;
}

// Finding 5: keys. The CA key never sits where daemons read, no daemon mints a CA, certificates
// carry only the usages they need, and a revoked certificate is refused by a running server —
// the shared RpcServer that both the coordinator and the node daemons serve with.
describe('development PKI', () => {
  let dir: string;
  let pki: string;
  let server: RpcServer;
  let address: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'migd-pki-'));
    pki = join(dir, 'certs');
    createPki(pki, [{ name: 'migd-node.a', dnsNames: ['migd-node'] }, { name: 'operator' }, { name: 'mallory' }, { name: 'frontend', usage: 'server', dnsNames: ['migd-node'] }]);
    server = new RpcServer({ address: '127.0.0.1:0', security: { tls: identityFiles(pki, 'migd-node.a') }, log });
    server.addService('migd.v1.NodeService', NodeServiceService, whoAmI());
    address = `127.0.0.1:${await server.start()}`;
  });
  afterAll(async () => {
    await server?.stop(500);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const call = async (name: string): Promise<string> => {
    const c = createClient('migd.v1.NodeService', NodeServiceService, address, { security: { tls: identityFiles(pki, name), serverName: 'migd-node' }, defaultDeadlineMs: 3000 });
    try {
      return (await c.getHostInfo({})).host?.nodeId ?? '';
    } catch (err) {
      return (err as { code?: string }).code ?? 'error';
    } finally {
      c.close();
    }
  };

  it('keeps the CA key apart from the certificates daemons read, all private', () => {
    const caDir = defaultCaDir(pki);
    expect(caDir).toBe(join(dir, 'ca'));
    expect(existsSync(join(caDir, 'ca.key'))).toBe(true);
    expect(readdirSync(pki).filter((f) => f.startsWith('ca.'))).toEqual(['ca.crl', 'ca.crt']);
    for (const d of [pki, caDir]) expect(statSync(d).mode & 0o777).toBe(0o700);
    for (const f of readdirSync(pki)) expect([f, statSync(join(pki, f)).mode & 0o777]).toEqual([f, 0o600]);
    expect(statSync(join(caDir, 'ca.key')).mode & 0o777).toBe(0o600);
  });

  it('never mints a CA where there is none: ensurePki names the command that makes one', () => {
    const bare = join(dir, 'bare', 'certs');
    let err: unknown;
    try {
      ensurePki(bare, [{ name: 'migd-node.x' }]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DependencyError);
    expect((err as Error).message).toContain('node dist/scripts/certs.js');
    expect(existsSync(bare)).toBe(false);
    expect(existsSync(defaultCaDir(bare))).toBe(false);
  });

  it('gives certificates only the usages they need: a client-only certificate cannot serve, a server-only one cannot call', async () => {
    expect(await call('operator')).toBe('operator');
    // A server-only certificate presented as a client is refused in the handshake.
    expect(await call('frontend')).toBe('UNAUTHENTICATED');
    // A client-only certificate cannot serve: clients refuse the server.
    const rogue = new RpcServer({ address: '127.0.0.1:0', security: { tls: identityFiles(pki, 'operator') }, log });
    rogue.addService('migd.v1.NodeService', NodeServiceService, whoAmI());
    const port = await rogue.start();
    try {
      const c = createClient('migd.v1.NodeService', NodeServiceService, `127.0.0.1:${port}`, { security: { tls: identityFiles(pki, 'migd-node.a'), serverName: 'operator' }, defaultDeadlineMs: 3000 });
      await expect(c.getHostInfo({})).rejects.toMatchObject({ code: expect.stringMatching(/UNAVAILABLE|UNAUTHENTICATED/) });
      c.close();
    } finally {
      await rogue.stop(200);
    }
  });

  it('refuses a revoked client certificate on a running server; others keep working', async () => {
    expect(await call('mallory')).toBe('mallory');
    revokeIdentity(pki, 'mallory');
    await waitFor(async () => (await call('mallory')) === 'UNAUTHENTICATED', 10_000, 'the revocation to reach the server');
    expect(await call('operator')).toBe('operator');
    // Revoking again is harmless; a server started afterwards refuses it from the start.
    revokeIdentity(pki, 'mallory');
    const fresh = new RpcServer({ address: '127.0.0.1:0', security: { tls: identityFiles(pki, 'migd-node.a') }, log });
    fresh.addService('migd.v1.NodeService', NodeServiceService, whoAmI());
    const port = await fresh.start();
    try {
      const c = createClient('migd.v1.NodeService', NodeServiceService, `127.0.0.1:${port}`, { security: { tls: identityFiles(pki, 'mallory'), serverName: 'migd-node' }, defaultDeadlineMs: 3000 });
      await expect(c.getHostInfo({})).rejects.toMatchObject({ code: expect.stringMatching(/UNAVAILABLE|UNAUTHENTICATED/) });
      c.close();
    } finally {
      await fresh.stop(200);
    }
  });
});
