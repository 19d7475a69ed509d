/**
 * The NodeService handlers over narrow fake node parts (no daemon, no QEMU): requests reach the
 * part that owns them with the caller's identity, bad input is refused before anything runs, a
 * peer node reads only the VM it migrates, and QEMU's own words never reach a client.
 */
import { Metadata } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { MigdError } from '../../../services/shared/errors.js';
import { VmInfo, type VmSpec } from '../../../services/shared/gen/migd/v1/common.js';
import type { MigrationInfo, PrepareIncomingRequest } from '../../../services/shared/gen/migd/v1/node.js';
import { createLogger } from '../../../services/shared/log.js';
import type { CallContext } from '../../../services/shared/rpc/server.js';
import { nodeHandlers, type NodeServiceParts } from '../../../services/node/rpc/handlers.js';
import type { NodeCaller } from '../../../services/node/rpc/authz.js';
import { QmpCommandError } from '../../../services/node/qmp/errors.js';

const quiet = createLogger('handlers-test', {}, () => undefined, 'error');

function ctx(method: string, identity: string | undefined): CallContext {
  return { signal: new AbortController().signal, deadline: undefined, metadata: new Metadata(), peer: 'test', identity, method: `/migd.v1.NodeService/${method}` };
}

function parts(): NodeServiceParts & { log: string[] } {
  const log: string[] = [];
  const unused = (what: string) => () => {
    throw new Error(`unexpected ${what}`);
  };
  return {
    log,
    config: { coordinatorIdentities: ['migd-coordinator'], nodeId: 'a' },
    vms: { list: () => [{ name: 'vm1' }, { name: 'vm2' }] },
    hostInfo: async () => ({ nodeId: 'a' }) as never,
    createVm: async (spec: VmSpec) => {
      log.push(`createVm ${spec.name}`);
      throw new QmpCommandError('device_add', undefined, { class: 'GenericError', desc: 'secret detail /var/run/qmp.sock' });
    },
    vmInfo: async (name) => VmInfo.fromPartial({ spec: { name }, nodeId: 'a' }),
    destroyVm: async (name, opts) => void log.push(`destroyVm ${name}${opts?.deleteDisks ? ' deleteDisks' : ''}`),
    stopVm: unused('stopVm'),
    startVm: unused('startVm'),
    guest: unused('guest'),
    migrations: {
      peerMayRead: (nodeId: string, name: string) => nodeId === 'b' && name === 'vm1',
      prepareIncoming: async (req: PrepareIncomingRequest, caller?: NodeCaller) => {
        log.push(`prepareIncoming ${req.runId} ${JSON.stringify(caller)}`);
        return { uri: 'tcp:x:1', pid: 1, port: 1, disks: [] };
      },
      get: (runId: string, caller?: NodeCaller) => {
        log.push(`get ${runId} ${JSON.stringify(caller)}`);
        return { runId } as MigrationInfo;
      },
      list: () => [],
    } as unknown as NodeServiceParts['migrations'],
  };
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    return err instanceof MigdError ? `${err.code}: ${err.message}` : `other: ${String(err)}`;
  }
  return 'ok';
}

describe('NodeService handlers', () => {
  it('pass requests with the caller to the part that owns them', async () => {
    const p = parts();
    const h = nodeHandlers(p, quiet);
    expect((await h.listVms({}, ctx('ListVms', 'migd-coordinator'))).vms.map((v) => v.spec?.name)).toEqual(['vm1', 'vm2']);
    await h.destroyVm({ name: 'vm2' }, ctx('DestroyVm', 'migd-coordinator'));
    await h.prepareIncoming({ runId: 'r1' } as PrepareIncomingRequest, ctx('PrepareIncoming', 'migd-node.b'));
    await h.getMigration({ runId: 'r1' }, ctx('GetMigration', 'migd-coordinator'));
    expect(p.log).toEqual(['destroyVm vm2', 'prepareIncoming r1 {"kind":"peer","nodeId":"b"}', 'get r1 {"kind":"coordinator"}']);
  });

  it('refuse bad input before anything runs, and let a peer read only the VM it migrates', async () => {
    const p = parts();
    const h = nodeHandlers(p, quiet);
    expect(await code(h.createVm({ spec: undefined }, ctx('CreateVm', 'migd-coordinator')))).toBe('INVALID_ARGUMENT: spec is required');
    expect(await code(h.destroyVm({ name: '' }, ctx('DestroyVm', 'migd-coordinator')))).toBe('INVALID_ARGUMENT: name is required');
    expect(await code(h.getVm({ name: 'vm1' }, ctx('GetVm', 'migd-node.b')))).toBe('ok');
    expect(await code(h.getVm({ name: 'vm2' }, ctx('GetVm', 'migd-node.b')))).toMatch(/^PERMISSION_DENIED: node b has no migration of VM vm2/);
    expect(await code(h.getMigration({ runId: 'r1' }, ctx('GetMigration', 'somebody')))).toMatch(/^PERMISSION_DENIED/);
    expect(p.log).toEqual([]);
  });

  it("never let QEMU's own words reach a client", async () => {
    const p = parts();
    const h = nodeHandlers(p, quiet);
    const answer = await code(h.createVm({ spec: { name: 'vm3' } as VmSpec }, ctx('CreateVm', 'migd-coordinator')));
    expect(p.log).toEqual(['createVm vm3']);
    expect(answer).toMatch(/QEMU refused device_add \(GenericError\); the node's log has the details/);
    expect(answer).not.toMatch(/secret|qmp\.sock/);
  });
});
