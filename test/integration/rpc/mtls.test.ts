import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Metadata, credentials, makeGenericClientConstructor, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, InvalidArgumentError, NotFoundError, PermissionDeniedError } from '../../../services/shared/errors.js';
import { CoordinatorServiceService } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { NodeServiceService, type GetHostInfoResponse } from '../../../services/shared/gen/migd/v1/node.js';
import { freePort } from '../../../services/shared/net.js';
import { repoRoot } from '../../../services/shared/paths.js';
import { createLogger } from '../../../services/shared/log.js';
import { createPki, identityFiles } from '../../../services/shared/pki.js';
import { createClient } from '../../../services/shared/rpc/client.js';
import { CERTIFICATE_REJECTED } from '../../../services/shared/rpc/tls-probe.js';
import { RpcServer, type Handlers } from '../../../services/shared/rpc/server.js';

const log = createLogger('test', {}, () => undefined);

// A NodeService whose handlers exercise the adapter: success, typed errors, internal errors and
// a server stream.
function handlers(): Handlers<typeof NodeServiceService> {
  const unimplemented = async (): Promise<never> => {
    throw new Error('secret internal detail');
  };
  return {
    getHostInfo: async (_req, ctx): Promise<GetHostInfoResponse> => ({
      host: { nodeId: ctx.identity ?? 'anonymous', managementAddress: '', migrationAddress: '', memoryTotalBytes: 1, memoryFreeBytes: 1, cpus: 2, qemuVersion: '10.0.2', resolvedAccel: 3, migrationCapabilities: [], labels: {}, machineTypes: [], networks: [] },
    }),
    createVm: async (req) => {
      throw new InvalidArgumentError(`bad name ${req.spec?.name ?? ''}`);
    },
    getVm: async (req) => {
      throw new NotFoundError(`unknown VM ${req.name}`);
    },
    listVms: unimplemented,
    destroyVm: unimplemented,
    stopVm: unimplemented,
    startVm: unimplemented,
    watchGuest: async function* (req) {
      if (req.name === 'big') {
        yield { item: { $case: 'console' as const, value: Buffer.alloc(6 * 1024 * 1024, 0x61) } };
        return;
      }
      for (let i = 0; i < 3; i++) yield { item: { $case: 'console' as const, value: Buffer.from(`${req.name}-${i}`) } };
    },
    expectIncoming: unimplemented,
    prepareIncoming: unimplemented,
    pauseIncoming: unimplemented,
    recoverIncoming: unimplemented,
    confirmIncoming: unimplemented,
    abortIncoming: unimplemented,
    resumeIncoming: unimplemented,
    startMigration: unimplemented,
    watchMigration: async function* () {
      yield* [];
      throw new PermissionDeniedError('not for you');
    },
    getMigration: unimplemented,
    listMigrations: unimplemented,
    adjustMigration: unimplemented,
    startPostcopy: unimplemented,
    forceComplete: unimplemented,
    cancelMigration: unimplemented,
    releaseMigration: unimplemented,
  };
}

describe('shared RPC layer with mutual TLS', () => {
  let dir: string;
  let server: RpcServer;
  let address: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'migd-mtls-'));
    createPki(join(dir, 'pki'));
    createPki(join(dir, 'foreign'), [{ name: 'operator' }], 'some other CA');
    // An operator who trusts the right CA but holds a certificate another CA signed.
    mkdirSync(join(dir, 'mixed'));
    copyFileSync(join(dir, 'pki', 'ca.crt'), join(dir, 'mixed', 'ca.crt'));
    for (const f of ['operator.crt', 'operator.key']) copyFileSync(join(dir, 'foreign', f), join(dir, 'mixed', f));
    server = new RpcServer({ address: '127.0.0.1:0', security: { tls: identityFiles(join(dir, 'pki'), 'migd-node') }, log });
    server.addService('migd.v1.NodeService', NodeServiceService, handlers());
    // Never reached by the certificate tests below: the handshake is refused first.
    const never = async (): Promise<never> => {
      throw new Error('not served');
    };
    server.addService('migd.v1.CoordinatorService', CoordinatorServiceService, Object.fromEntries(Object.keys(CoordinatorServiceService).map((k) => [k, never])) as unknown as Handlers<typeof CoordinatorServiceService>);
    const port = await server.start();
    address = `127.0.0.1:${port}`;
  });

  afterAll(async () => {
    await server?.stop(500);
    rmSync(dir, { recursive: true, force: true });
  });

  const client = (pki: string, name: string) =>
    createClient('migd.v1.NodeService', NodeServiceService, address, { security: { tls: identityFiles(join(dir, pki), name), serverName: 'migd-node' }, defaultDeadlineMs: 3000 });

  it('lets a client with a certificate from the CA through and sees its identity', async () => {
    const c = client('pki', 'operator');
    try {
      const res = await c.getHostInfo({});
      expect(res.host?.nodeId).toBe('operator');
    } finally {
      c.close();
    }
  });

  it('refuses a client without a certificate', async () => {
    const Ctor = makeGenericClientConstructor(NodeServiceService, 'migd.v1.NodeService');
    const { readFileSync } = await import('node:fs');
    const c = new Ctor(address, credentials.createSsl(readFileSync(join(dir, 'pki', 'ca.crt'))), { 'grpc.ssl_target_name_override': 'migd-node' });
    const err = await new Promise<ServiceError | null>((resolve) =>
      c.makeUnaryRequest('/migd.v1.NodeService/GetHostInfo', () => Buffer.alloc(0), (b: Buffer) => b, {}, new Metadata(), { deadline: Date.now() + 3000 }, (e) => resolve(e)),
    );
    c.close();
    expect(err?.code).toBe(14); // UNAVAILABLE: handshake refused
  });

  it('refuses a client whose certificates come from a foreign CA, and says the certificate was rejected', async () => {
    const c = client('foreign', 'operator');
    try {
      await expect(c.getHostInfo({})).rejects.toMatchObject({ code: 'UNAUTHENTICATED', reason: CERTIFICATE_REJECTED, message: expect.stringMatching(/certificate rejected: .*not signed by the CA/) });
      const it = c.watchGuest({ name: 'vm1', includeConsole: true })[Symbol.asyncIterator]();
      await expect(it.next()).rejects.toMatchObject({ code: 'UNAUTHENTICATED', reason: CERTIFICATE_REJECTED });
    } finally {
      c.close();
    }
  });

  it('names a client certificate the server refuses (right CA file, foreign certificate) as rejected', async () => {
    const c = client('mixed', 'operator');
    try {
      await expect(c.getHostInfo({})).rejects.toMatchObject({ code: 'UNAUTHENTICATED', reason: CERTIFICATE_REJECTED, message: expect.stringMatching(/refused the client certificate .*operator\.crt/) });
    } finally {
      c.close();
    }
  });

  it('still reports a server that is not there as unavailable', async () => {
    const port = await freePort('127.0.0.1');
    const c = createClient('migd.v1.NodeService', NodeServiceService, `127.0.0.1:${port}`, { security: { tls: identityFiles(join(dir, 'pki'), 'operator'), serverName: 'migd-node' }, defaultDeadlineMs: 3000 });
    try {
      await expect(c.getHostInfo({})).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    } finally {
      c.close();
    }
  });

  it('migctl says "certificate rejected", not "coordinator unavailable", for a foreign certificate', async () => {
    const migctl = join(repoRoot(), 'dist', 'services', 'coordinator', 'cli', 'migctl.js');
    const run = (certDir: string): Promise<{ code: number | null; stderr: string }> =>
      new Promise((resolve, reject) => {
        const child = spawn(process.execPath, [migctl, '--coordinator', address, '--cert-dir', certDir, '--timeout', '5s', 'nodes'], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, MIGD_COORDINATOR: '', MIGD_IDENTITY: '' } });
        let stderr = '';
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        child.once('error', reject);
        child.once('close', (code) => resolve({ code, stderr }));
      });
    for (const pki of ['foreign', 'mixed']) {
      const r = await run(join(dir, pki));
      expect(r.stderr).toMatch(/^migctl: certificate rejected: /);
      expect(r.stderr).not.toMatch(/unavailable|is it running/);
      expect(r.code).toBe(4);
    }
  });

  it('maps typed errors to their status and hides internal ones', async () => {
    const c = client('pki', 'operator');
    try {
      await expect(c.createVm({ spec: undefined })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(c.getVm({ name: 'x' })).rejects.toThrow(/unknown VM x/);
      const e = (await c.listVms({}).then(
        () => new Error('expected an error'),
        (err: unknown) => err as Error,
      )) as Error & { code?: string };
      expect(e.code).toBe('INTERNAL');
      expect(e.message).not.toContain('secret');
    } finally {
      c.close();
    }
  });

  it('streams server-streaming responses and maps stream errors', async () => {
    const c = client('pki', 'operator');
    try {
      const got: string[] = [];
      for await (const m of c.watchGuest({ name: 'vm1', includeConsole: true })) if (m.item?.$case === 'console') got.push(Buffer.from(m.item.value).toString());
      expect(got).toEqual(['vm1-0', 'vm1-1', 'vm1-2']);
      const it = c.watchMigration({ runId: 'r' })[Symbol.asyncIterator]();
      await expect(it.next()).rejects.toBeInstanceOf(PermissionDeniedError);
    } finally {
      c.close();
    }
  });

  it('accepts responses beyond the 4 MiB gRPC default, up to the limit of the client', async () => {
    const c = client('pki', 'operator');
    const small = createClient('migd.v1.NodeService', NodeServiceService, address, {
      security: { tls: identityFiles(join(dir, 'pki'), 'operator'), serverName: 'migd-node' },
      maxReceiveBytes: 1024 * 1024,
    });
    try {
      let bytes = 0;
      for await (const m of c.watchGuest({ name: 'big', includeConsole: true })) if (m.item?.$case === 'console') bytes += m.item.value.length;
      expect(bytes).toBe(6 * 1024 * 1024);
      const it = small.watchGuest({ name: 'big', includeConsole: true })[Symbol.asyncIterator]();
      await expect(it.next()).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
    } finally {
      c.close();
      small.close();
    }
  });

  it('reports SERVING on grpc.health.v1 and lists services by reflection', async () => {
    const protoLoader = await import('@grpc/proto-loader');
    const grpc = await import('@grpc/grpc-js');
    const { join: pjoin, dirname } = await import('node:path');
    const { createRequire } = await import('node:module');
    const req = createRequire(import.meta.url);
    const healthProto = req.resolve('grpc-health-check/proto/health/v1/health.proto');
    const reflDir = pjoin(dirname(req.resolve('@grpc/reflection/package.json')), 'build', 'proto', 'grpc', 'reflection', 'v1', 'reflection.proto');
    const pkg = grpc.loadPackageDefinition(protoLoader.loadSync([healthProto, reflDir], { keepCase: true, enums: String })) as any;
    const { readFileSync } = await import('node:fs');
    const f = identityFiles(join(dir, 'pki'), 'viewer');
    const creds = grpc.credentials.createSsl(readFileSync(f.caFile), readFileSync(f.keyFile), readFileSync(f.certFile));
    const opts = { 'grpc.ssl_target_name_override': 'migd-node' };
    const health = new pkg.grpc.health.v1.Health(address, creds, opts);
    const status = await new Promise<any>((resolve, reject) => health.Check({ service: 'migd.v1.NodeService' }, (e: unknown, r: unknown) => (e ? reject(e) : resolve(r))));
    expect(status.status).toBe('SERVING');
    health.close();
    const refl = new pkg.grpc.reflection.v1.ServerReflection(address, creds, opts);
    const call = refl.ServerReflectionInfo();
    const reply = await new Promise<any>((resolve, reject) => {
      call.on('data', resolve);
      call.on('error', reject);
      call.write({ list_services: '' });
    });
    call.end();
    refl.close();
    const names = reply.list_services_response.service.map((s: { name: string }) => s.name);
    expect(names).toContain('migd.v1.NodeService');
    expect(names).toContain('migd.v1.CoordinatorService');
  });

  it('refuses plain text anywhere but loopback', async () => {
    await expect(new RpcServer({ address: '198.18.0.1:0', security: { insecure: true }, log }).start()).rejects.toThrow(/only allowed on loopback/);
    expect(() => createClient('migd.v1.NodeService', NodeServiceService, '198.18.0.1:1', { security: { insecure: true } })).toThrow(ConfigError);
    expect(() => createClient('migd.v1.NodeService', NodeServiceService, '127.0.0.1:1', { security: {} })).toThrow(/no TLS files configured/);
  });
});
