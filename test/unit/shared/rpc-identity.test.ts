import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSecureContext } from 'node:tls';
import { credentials, makeGenericClientConstructor, Metadata, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeServiceService, GetHostInfoResponse } from '../../../services/shared/gen/migd/v1/node.js';
import { createLogger } from '../../../services/shared/log.js';
import { createPki, identityFiles } from '../../../services/shared/pki.js';
import { createClient } from '../../../services/shared/rpc/client.js';
import { RpcServer, type Handlers } from '../../../services/shared/rpc/server.js';

const log = createLogger('test', {}, () => undefined);

// The caller's certificate identity is read once per TLS 1.3 connection (PeerIdentityCache), not
// on every call; each connection still sees its own identity, and a TLS 1.2 connection (which could
// renegotiate) is read on every call.
describe('RpcServer caller identity per connection', () => {
  let dir: string;
  let server: RpcServer;
  let address: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'migd-rpc-identity-'));
    createPki(join(dir, 'pki'));
    server = new RpcServer({ address: '127.0.0.1:0', security: { tls: identityFiles(join(dir, 'pki'), 'migd-node') }, log });
    const unserved = Object.fromEntries(
      Object.keys(NodeServiceService).map((k) => [
        k,
        async () => {
          throw new Error(`${k} not served`);
        },
      ]),
    ) as unknown as Handlers<typeof NodeServiceService>;
    const h: Handlers<typeof NodeServiceService> = { ...unserved, getHostInfo: async (_req, ctx) => GetHostInfoResponse.fromPartial({ host: { nodeId: ctx.identity ?? 'anonymous' } }) };
    server.addService('migd.v1.NodeService', NodeServiceService, h);
    address = `127.0.0.1:${await server.start()}`;
  });

  afterAll(async () => {
    await server?.stop(500);
    rmSync(dir, { recursive: true, force: true });
  });

  const client = (name: string) =>
    createClient('migd.v1.NodeService', NodeServiceService, address, { security: { tls: identityFiles(join(dir, 'pki'), name), serverName: 'migd-node' }, defaultDeadlineMs: 5000 });

  it('reads each connection identity once and gives every call its own caller', async () => {
    const reads0 = server.identities.reads;
    const op = client('operator');
    const viewer = client('viewer');
    try {
      const seen: string[] = [];
      for (let i = 0; i < 5; i++) {
        seen.push((await op.getHostInfo({})).host!.nodeId);
        seen.push((await viewer.getHostInfo({})).host!.nodeId);
      }
      expect(seen).toEqual(Array.from({ length: 5 }, () => ['operator', 'viewer']).flat());
      // Ten calls over two connections: two certificate reads.
      expect(server.identities.reads - reads0).toBe(2);
    } finally {
      op.close();
      viewer.close();
    }
  });

  it('a new connection of another identity is read again, not served from an earlier one', async () => {
    const reads0 = server.identities.reads;
    for (const name of ['viewer', 'operator', 'viewer']) {
      const c = client(name);
      try {
        expect((await c.getHostInfo({})).host!.nodeId).toBe(name);
      } finally {
        c.close();
      }
    }
    expect(server.identities.reads - reads0).toBe(3);
  });

  it('reads the certificate on every call of a TLS 1.2 connection', async () => {
    const f = identityFiles(join(dir, 'pki'), 'operator');
    const ctx = createSecureContext({ ca: readFileSync(f.caFile), cert: readFileSync(f.certFile), key: readFileSync(f.keyFile), maxVersion: 'TLSv1.2' });
    const Ctor = makeGenericClientConstructor(NodeServiceService, 'migd.v1.NodeService');
    const c = new Ctor(address, credentials.createFromSecureContext(ctx), { 'grpc.ssl_target_name_override': 'migd-node' });
    const reads0 = server.identities.reads;
    try {
      for (let i = 0; i < 3; i++) {
        const res = await new Promise<Buffer>((resolve, reject) =>
          c.makeUnaryRequest(
            '/migd.v1.NodeService/GetHostInfo',
            () => Buffer.alloc(0),
            (b: Buffer) => b,
            {},
            new Metadata(),
            { deadline: Date.now() + 5000 },
            (e: ServiceError | null, v?: Buffer) => (e ? reject(e) : resolve(v!)),
          ),
        );
        expect(GetHostInfoResponse.decode(res).host?.nodeId).toBe('operator');
      }
      expect(server.identities.reads - reads0).toBe(0);
    } finally {
      c.close();
    }
  });
});
