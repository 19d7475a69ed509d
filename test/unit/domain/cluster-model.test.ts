import { describe, expect, it } from 'vitest';
import { DiskFormat, StorageMode, VmInfo, VmState } from '../../../services/shared/gen/migd/v1/common.js';
import { NodeStatus, type Node } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { ClusterIndex, clusterFromProto } from '../../../services/coordinator/domain/cluster.js';

const MiB = 1024 * 1024;
const node = (id: string): Node => ({ host: { nodeId: id, memoryTotalBytes: 64 * 1024 * MiB, memoryFreeBytes: 32 * 1024 * MiB, migrationCapabilities: [] }, status: NodeStatus.NODE_STATUS_UP }) as unknown as Node;
const report = (name: string, nodeId: string, extra: Partial<VmInfo> = {}): VmInfo => VmInfo.fromPartial({ spec: { name, memoryMib: 1024 }, nodeId, state: VmState.VM_STATE_RUNNING, ...extra });
const move = (vmName: string, from: string, to: string) => ({ vmName, from, to, memoryBytes: 1024 * MiB });

// clusterFromProto is built on every SubmitPlan from the registry's reports: a report's model is
// kept between builds, which must not carry one build's planned moves or dirty rates into another.
describe('clusterFromProto over the same reports', () => {
  const nodes = [node('a'), node('b')];
  const disk = report('d1', 'a', { spec: { name: 'd1', memoryMib: 512, disks: [{ id: 'x', format: DiskFormat.DISK_FORMAT_RAW, storage: StorageMode.STORAGE_MODE_LOCAL }] } as never, localDisks: [{ id: 'x', allocatedBytes: 10 * MiB, virtualBytes: 40 * MiB }] as never });
  const vms = [report('v1', 'a'), report('v2', 'a', { migrationRunId: 'r0' }), report('v3', 'b'), disk];

  it('marks as migrating the VMs of each build\'s own moves only', () => {
    const first = clusterFromProto(nodes, vms, { plannedMoves: [move('v1', 'a', 'b')] });
    const second = clusterFromProto(nodes, vms, { plannedMoves: [move('v3', 'b', 'a')] });
    const third = clusterFromProto(nodes, vms);
    const flags = (c: typeof first) => Object.fromEntries(c.vms.map((v) => [v.name, v.migrating]));
    expect(flags(first)).toEqual({ v1: true, v2: true, v3: false, d1: false });
    expect(flags(second)).toEqual({ v1: false, v2: true, v3: true, d1: false });
    expect(flags(third)).toEqual({ v1: false, v2: true, v3: false, d1: false });
    // The same models as from copies of the reports (nothing cached for them).
    expect(second).toEqual(clusterFromProto(nodes, vms.map((v) => ({ ...v })), { plannedMoves: [move('v3', 'b', 'a')] }));
    expect(third.vms.find((v) => v.name === 'd1')).toMatchObject({ diskSpaceBytes: 40 * MiB, diskTransferBytes: 10 * MiB });
  });

  it('gives each build its own dirty rates', () => {
    const rated = clusterFromProto(nodes, vms, { dirtyRates: new Map([['v1', 5 * MiB]]) });
    const plain = clusterFromProto(nodes, vms);
    expect(rated.vms.find((v) => v.name === 'v1')?.dirtyRateBytesPerSec).toBe(5 * MiB);
    expect(plain.vms.find((v) => v.name === 'v1')?.dirtyRateBytesPerSec).toBeUndefined();
  });

  it('promises a moved VM\'s LOCAL disks on its destination, and nothing for VMs without', () => {
    const c = clusterFromProto(nodes, vms, { plannedMoves: [move('d1', 'a', 'b'), move('v1', 'a', 'b')] });
    expect(c.plannedMoves).toEqual([{ ...move('d1', 'a', 'b'), diskBytes: 40 * MiB }, move('v1', 'a', 'b')]);
    const index = new ClusterIndex(c);
    expect(index.reservations('b')).toEqual({ bytes: 2048 * MiB, count: 2, diskBytes: 40 * MiB });
    expect(index.location('d1')).toBe('b');
    expect(index.location('v3')).toBe('b');
    expect(index.location('v2')).toBe('a');
    expect(index.location('nope')).toBeUndefined();
  });
});
