import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NodeRegistry } from '../../../services/coordinator/registry.js';
import { openSqliteHistoryStore, type SqliteHistoryStore } from '../../../services/coordinator/store/sqlite.js';
import type { NodeVmRepository } from '../../../services/coordinator/store/types.js';
import { decodeEvent } from '../../../services/shared/events/codec.js';
import { HostInfo, VmSpec, VmState, type VmInfo } from '../../../services/shared/gen/migd/v1/common.js';
import { createLogger } from '../../../services/shared/log.js';

const log = createLogger('test', {}, () => undefined, 'error');
const host = HostInfo.fromPartial({ nodeId: 'a', managementAddress: '198.18.0.10:7001', migrationAddress: '198.19.0.10' });
const vm = (name: string, state = VmState.VM_STATE_RUNNING): VmInfo => ({ spec: VmSpec.fromPartial({ name, memoryMib: 256 }), nodeId: 'a', state, pid: 1, startedAt: undefined, migrationRunId: '', lastGuestPerf: undefined, qemuCpuSeconds: 0, localDisks: [] });

// A node's heartbeat is written to the store in one transaction, however many VMs it reports
// (it used to be one transaction per VM: 10 000 at a 500-node fleet's start).
describe('NodeRegistry writes a heartbeat in one batch', () => {
  let dir: string;
  let store: SqliteHistoryStore;
  let batches: number[];
  let registry: NodeRegistry;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'migd-registry-'));
    store = await openSqliteHistoryStore({ filename: join(dir, 'history.db'), logger: log });
    batches = [];
    // The real repository, counting its write calls.
    const nodes: NodeVmRepository = Object.create(store.nodes) as NodeVmRepository;
    nodes.upsertVm = (v) => {
      batches.push(1);
      return store.nodes.upsertVm(v);
    };
    nodes.upsertVms = (vs) => {
      batches.push(vs.length);
      return store.nodes.upsertVms(vs);
    };
    registry = new NodeRegistry({ store: { nodes, plans: store, samples: store }, log, heartbeatMs: 60_000, misses: 3, security: { insecure: true }, callDeadlineMs: 1000 });
    await registry.start();
  });

  afterEach(async () => {
    registry.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  const vmEvents = async (): Promise<string[]> =>
    (await store.readUnpublished(10_000)).map((r) => decodeEvent(r.payload)).flatMap((e) => (e.payload?.$case === 'vmChanged' ? [`${e.payload.value.vm?.spec?.name}:${VmState[e.payload.value.vm?.state ?? 0]}`] : []));

  it('writes the first heartbeat of 40 VMs as one batch, then only what changed', async () => {
    await registry.register(host);
    const names = Array.from({ length: 40 }, (_, i) => `vm-${String(i).padStart(2, '0')}`);
    await registry.heartbeat(host, names.map((n) => vm(n)));
    expect(batches).toEqual([40]);
    expect((await store.listVms('a')).map((v) => v.spec?.name)).toEqual(names);
    expect(await vmEvents()).toEqual(names.map((n) => `${n}:VM_STATE_RUNNING`));

    // The same report again: nothing to write.
    await registry.heartbeat(host, names.map((n) => vm(n)));
    expect(batches).toEqual([40]);

    // One VM paused, two gone from the report (written as stopped): one batch of three.
    await registry.heartbeat(host, names.slice(2).map((n) => vm(n, n === 'vm-10' ? VmState.VM_STATE_PAUSED : VmState.VM_STATE_RUNNING)));
    expect(batches).toEqual([40, 3]);
    expect((await vmEvents()).slice(40).sort()).toEqual(['vm-00:VM_STATE_STOPPED', 'vm-01:VM_STATE_STOPPED', 'vm-10:VM_STATE_PAUSED']);
    expect((await store.getVm('vm-01')).state).toBe(VmState.VM_STATE_STOPPED);
    expect((await registry.vms('a')).map((v) => v.spec?.name)).toEqual(names.slice(2));
  });

  it('a failed batch is written again by the next heartbeat', async () => {
    await registry.register(host);
    const report = [vm('vm-x'), vm('vm-y')];
    const real = store.nodes.upsertVms.bind(store.nodes);
    let fail = true;
    store.nodes.upsertVms = async (vs) => {
      if (fail) throw new Error('disk full');
      return real(vs);
    };
    await expect(registry.heartbeat(host, report)).rejects.toThrow(/disk full/);
    fail = false;
    await registry.heartbeat(host, report);
    expect(batches).toEqual([2, 2]);
    expect((await store.listVms('a')).map((v) => v.spec?.name)).toEqual(['vm-x', 'vm-y']);
  });
});
