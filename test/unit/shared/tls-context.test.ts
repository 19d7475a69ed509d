import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeServiceService, GetHostInfoResponse } from '../../../services/shared/gen/migd/v1/node.js';
import { createLogger } from '../../../services/shared/log.js';
import { createPki, identityFiles, nodeIdentity } from '../../../services/shared/pki.js';
import { createClient } from '../../../services/shared/rpc/client.js';
import { RpcServer, type Handlers } from '../../../services/shared/rpc/server.js';
import { clientContextStats, clientSecureContext, type TlsFiles } from '../../../services/shared/rpc/tls.js';

const log = createLogger('test', {}, () => undefined);

// Clients with the same identity files share one TLS secure context (a coordinator built one per
// node client); each client still checks its own server's name, keeps its own connection, and a
// client created after the files were replaced presents the new certificate.
describe('client TLS contexts shared per identity files', () => {
  let dir: string;
  let pki: string;
  let server: RpcServer;
  let address: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'migd-tls-context-'));
    pki = join(dir, 'pki');
    createPki(pki, [{ name: 'migd-coordinator' }, { name: nodeIdentity('a') }, { name: nodeIdentity('b') }, { name: 'operator' }, { name: 'viewer' }]);
    // Node b's daemon, answering with its caller's identity.
    server = new RpcServer({ address: '127.0.0.1:0', security: { tls: identityFiles(pki, nodeIdentity('b')) }, log });
    const unserved = Object.fromEntries(
      Object.keys(NodeServiceService).map((k) => [
        k,
        async () => {
          throw new Error(`${k} not served`);
        },
      ]),
    ) as unknown as Handlers<typeof NodeServiceService>;
    server.addService('migd.v1.NodeService', NodeServiceService, { ...unserved, getHostInfo: async (_req, ctx) => GetHostInfoResponse.fromPartial({ host: { nodeId: ctx.identity ?? 'anonymous' } }) });
    address = `127.0.0.1:${await server.start()}`;
  });

  afterAll(async () => {
    await server?.stop(500);
    rmSync(dir, { recursive: true, force: true });
  });

  const client = (files: TlsFiles, serverNames: string[]) => createClient('migd.v1.NodeService', NodeServiceService, address, { security: { tls: files, serverNames }, defaultDeadlineMs: 5000 });

  it('builds one context for clients of every node, and each client still requires its own node', async () => {
    const coordinator = identityFiles(pki, 'migd-coordinator');
    const built0 = clientContextStats.built;
    const reads0 = server.identities.reads;
    const toB = client(coordinator, [nodeIdentity('b')]);
    const toB2 = client(coordinator, [nodeIdentity('b')]);
    // Dialling node a at b's address: b's certificate does not name a.
    const toA = client(coordinator, [nodeIdentity('a')]);
    try {
      expect((await toB.getHostInfo({})).host!.nodeId).toBe('migd-coordinator');
      expect((await toB2.getHostInfo({})).host!.nodeId).toBe('migd-coordinator');
      const err = await toA.getHostInfo({}).then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      expect(err).toBeInstanceOf(Error);
      expect(err!.message).toMatch(/ERR_TLS_CERT_ALTNAME_INVALID.*migd-node\.a/);
      // One context for the three clients (none, if an earlier test built it already).
      expect(clientContextStats.built - built0).toBeLessThanOrEqual(1);
      // Two clients of one address still keep a connection each (two identity reads).
      expect(server.identities.reads - reads0).toBe(2);
    } finally {
      toB.close();
      toB2.close();
      toA.close();
    }
  });

  it('gives a client created after the identity files were replaced the new certificate; an earlier client keeps working', async () => {
    // A renewable identity: files at fixed paths, first operator's, then viewer's.
    const files: TlsFiles = { caFile: join(pki, 'ca.crt'), certFile: join(dir, 'renewed.crt'), keyFile: join(dir, 'renewed.key') };
    const install = (name: string): void => {
      const f = identityFiles(pki, name);
      copyFileSync(f.keyFile, files.keyFile);
      copyFileSync(f.certFile, files.certFile);
    };
    install('operator');
    const first = client(files, [nodeIdentity('b')]);
    const context = clientSecureContext(files);
    expect(clientSecureContext(files)).toBe(context);
    try {
      expect((await first.getHostInfo({})).host!.nodeId).toBe('operator');
      install('viewer');
      const built0 = clientContextStats.built;
      const second = client(files, [nodeIdentity('b')]);
      try {
        expect((await second.getHostInfo({})).host!.nodeId).toBe('viewer');
        expect(clientContextStats.built - built0).toBe(1);
        expect(clientSecureContext(files)).not.toBe(context);
        expect((await first.getHostInfo({})).host!.nodeId).toBe('operator');
      } finally {
        second.close();
      }
    } finally {
      first.close();
    }
  });
});
