import { describe, expect, it } from 'vitest';
import { FailedPreconditionError, NotFoundError, ResourceExhaustedError } from '../../../services/shared/errors.js';
import { DiskFormat, StorageMode, VmInfo, VmState } from '../../../services/shared/gen/migd/v1/common.js';
import { Node, NodeStatus } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { type ClusterModel, type NodeModel, clusterFromProto, createdDiskSpace, localDiskSpace, storageMargin } from '../../../services/coordinator/domain/cluster.js';
import { type NodeVerdict, bestTwo, placeVm } from '../../../services/coordinator/domain/placement.js';
import { GiB, MiB } from '../../../services/coordinator/domain/units.js';

const ALL = ['postcopy-ram', 'return-path', 'postcopy-preempt', 'auto-converge', 'xbzrle', 'multifd'];
const node = (id: string, freeGib: number, extra: Partial<NodeModel> = {}): NodeModel => ({
  id,
  up: true,
  memoryTotalBytes: 64 * GiB,
  memoryFreeBytes: freeGib * GiB,
  capabilities: ALL,
  ...extra,
});

function cluster(extra: Partial<ClusterModel> = {}): ClusterModel {
  return {
    nodes: [node('src', 1), node('a', 8), node('b', 16), node('c', 12)],
    vms: [
      { name: 'web-1', nodeId: 'src', memoryMib: 4096, antiAffinityGroup: 'web' },
      { name: 'web-2', nodeId: 'b', memoryMib: 1024, antiAffinityGroup: 'web' },
      { name: 'db-1', nodeId: 'src', memoryMib: 2048 },
      { name: 'db-2', nodeId: 'c', memoryMib: 2048 },
    ],
    ...extra,
  };
}

describe('placeVm', () => {
  it('chooses the node with the most free memory, respecting anti-affinity groups', () => {
    // b has the most free memory but hosts web-2 (group "web"): c wins.
    const p = placeVm(cluster(), 'web-1');
    expect(p.destination).toBe('c');
    expect(p.reason).toContain('most free memory');
    expect(p.verdicts.find((v) => v.nodeId === 'b')?.problems).toEqual(['would share the node with "web-2" (anti-affinity group "web")']);
    expect(p.move).toEqual({ vmName: 'web-1', from: 'src', to: 'c', memoryBytes: 4 * GiB });
  });

  it('keeps apart the VMs a request names, in addition to groups', () => {
    // db-2 sits on c; keeping db-1 and db-2 apart rules c out, b has the most memory.
    expect(placeVm(cluster(), 'db-1').destination).toBe('b');
    const p = placeVm(cluster({ nodes: [node('src', 1), node('a', 8), node('c', 16)] }), 'db-1', { keepApart: ['db-1', 'db-2'] });
    expect(p.destination).toBe('a');
  });

  it('reserves memory for planned inbound migrations and sees planned VMs for anti-affinity', () => {
    const c = cluster({ plannedMoves: [{ vmName: 'other', from: 'x', to: 'c', memoryBytes: 10 * GiB }] });
    // c: 12 − 10 = 2 GiB left, too little for web-1 (4 GiB); b excluded by web-2; a remains.
    const p = placeVm(c, 'web-1');
    expect(p.destination).toBe('a');
    expect(p.verdicts.find((v) => v.nodeId === 'c')?.problems[0]).toMatch(/needs 4\.00 GiB but has 2\.00 GiB free after 10\.00 GiB reserved by 1 planned migration/);
    // web-2 planned to move b → a: a is out for web-1 now, and b (which web-2 leaves) is in.
    const c2 = cluster({ plannedMoves: [{ vmName: 'web-2', from: 'b', to: 'a', memoryBytes: GiB }] });
    const p2 = placeVm(c2, 'web-1');
    expect(p2.destination).toBe('b');
    expect(p2.verdicts.find((v) => v.nodeId === 'a')?.problems).toContain('would share the node with "web-2" (anti-affinity group "web")');
  });

  it('breaks ties by fewest inbound migrations, then by id', () => {
    const c: ClusterModel = {
      nodes: [node('src', 1), node('y', 10), node('x', 12)],
      vms: [{ name: 'v', nodeId: 'src', memoryMib: 1024 }],
      plannedMoves: [{ vmName: 'w', from: 'q', to: 'x', memoryBytes: 2 * GiB }],
    };
    // Both have 10 GiB available; x has one inbound.
    const p = placeVm(c, 'v');
    expect(p.destination).toBe('y');
    expect(p.reason).toContain('fewer inbound migrations');
    const even: ClusterModel = { nodes: [node('src', 1), node('n2', 10), node('n1', 10)], vms: c.vms };
    expect(placeVm(even, 'v').destination).toBe('n1');
  });

  it('requires the policy’s capabilities on both ends', () => {
    const c = cluster({ nodes: [node('src', 1), node('a', 8, { capabilities: ['auto-converge'] }), node('c', 6)] });
    expect(placeVm(c, 'db-1', { requiredCapabilities: ['postcopy-ram'] }).destination).toBe('c');
    const noSrc = cluster({ nodes: [node('src', 1, { capabilities: [] }), node('a', 8)] });
    expect(() => placeVm(noSrc, 'db-1', { requiredCapabilities: ['postcopy-ram'] })).toThrow(FailedPreconditionError);
  });

  it('explains per node why nothing fits', () => {
    const c: ClusterModel = {
      nodes: [node('src', 1), node('down', 64, { up: false }), node('small', 1), node('old', 32, { capabilities: [] })],
      vms: [{ name: 'big', nodeId: 'src', memoryMib: 8192 }],
    };
    let err: unknown;
    try {
      placeVm(c, 'big', { requiredCapabilities: ['postcopy-ram'] });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ResourceExhaustedError);
    const msg = (err as Error).message;
    expect(msg).toContain('no node can take VM "big" (8.00 GiB)');
    expect(msg).toContain('down is down');
    expect(msg).toContain('small needs 8.00 GiB but has 1.00 GiB free');
    expect(msg).toContain('old lacks postcopy-ram');
  });

  it('checks a requested destination and says what is wrong with it', () => {
    const c = cluster({ nodes: [node('src', 1), node('a', 2), node('b', 16), node('off', 64, { up: false })] });
    expect(placeVm(c, 'db-1', { destination: 'b' }).destination).toBe('b');
    expect(() => placeVm(c, 'db-1', { destination: 'nowhere' })).toThrow(NotFoundError);
    expect(() => placeVm(c, 'db-1', { destination: 'src' })).toThrow(expect.objectContaining({ code: 'FAILED_PRECONDITION', reason: 'DESTINATION_IS_SOURCE' }));
    expect(() => placeVm(c, 'db-1', { destination: 'off' })).toThrow(expect.objectContaining({ code: 'FAILED_PRECONDITION', reason: 'DESTINATION_DOWN' }));
    expect(() => placeVm(c, 'web-1', { destination: 'a' })).toThrow(ResourceExhaustedError);
    expect(() => placeVm(c, 'web-1', { destination: 'b' })).toThrow(expect.objectContaining({ code: 'FAILED_PRECONDITION', message: expect.stringContaining('anti-affinity group "web"') }));
  });

  it('refuses unknown and already migrating VMs', () => {
    expect(() => placeVm(cluster(), 'ghost')).toThrow(NotFoundError);
    const c = cluster({ vms: [{ name: 'busy', nodeId: 'src', memoryMib: 512, migrating: true }] });
    expect(() => placeVm(c, 'busy')).toThrow(expect.objectContaining({ reason: 'VM_ALREADY_MIGRATING' }));
  });
});

describe('clusterFromProto', () => {
  it('turns the incoming half of a running migration into a planned move', () => {
    const host = (nodeId: string, free: number) => Node.fromPartial({ host: { nodeId, memoryFreeBytes: free, migrationCapabilities: ['postcopy-ram'] }, status: NodeStatus.NODE_STATUS_UP });
    const c = clusterFromProto(
      [host('a', 8 * GiB), host('b', 8 * GiB), Node.fromPartial({ host: { nodeId: 'c' }, status: NodeStatus.NODE_STATUS_DOWN })],
      [
        VmInfo.fromPartial({ spec: { name: 'v1', memoryMib: 1024, antiAffinityGroup: 'g' }, nodeId: 'a', state: VmState.VM_STATE_MIGRATING, migrationRunId: 'r1' }),
        VmInfo.fromPartial({ spec: { name: 'v1', memoryMib: 1024, antiAffinityGroup: 'g' }, nodeId: 'b', state: VmState.VM_STATE_INCOMING, migrationRunId: 'r1' }),
        VmInfo.fromPartial({ spec: { name: 'v2', memoryMib: 512 }, nodeId: 'a', state: VmState.VM_STATE_RUNNING }),
      ],
      { dirtyRates: new Map([['v2', 5 * MiB]]) },
    );
    expect(c.nodes.map((n) => [n.id, n.up])).toEqual([
      ['a', true],
      ['b', true],
      ['c', false],
    ]);
    expect(c.vms).toEqual([
      { name: 'v1', nodeId: 'a', memoryMib: 1024, antiAffinityGroup: 'g', dirtyRateBytesPerSec: undefined, migrating: true },
      { name: 'v2', nodeId: 'a', memoryMib: 512, antiAffinityGroup: undefined, dirtyRateBytesPerSec: 5 * MiB, migrating: false },
    ]);
    expect(c.plannedMoves).toEqual([{ vmName: 'v1', from: 'a', to: 'b', memoryBytes: GiB }]);
  });
});

describe('LOCAL disks and the storage of a destination (issue 13)', () => {
  // db-1 has a 20 GiB raw disk (2 GiB written) and a qcow2 disk with 1 GiB allocated (8 GiB
  // virtual), and a SHARED disk that never counts.
  const vmInfo = (): VmInfo =>
    VmInfo.fromPartial({
      spec: {
        name: 'db-1',
        memoryMib: 2048,
        disks: [
          { id: 'root', format: DiskFormat.DISK_FORMAT_RAW, storage: StorageMode.STORAGE_MODE_LOCAL },
          { id: 'data', format: DiskFormat.DISK_FORMAT_QCOW2, storage: StorageMode.STORAGE_MODE_LOCAL },
          { id: 'nfs', format: DiskFormat.DISK_FORMAT_RAW, storage: StorageMode.STORAGE_MODE_SHARED },
        ],
      },
      nodeId: 'src',
      state: VmState.VM_STATE_RUNNING,
      localDisks: [
        { id: 'root', virtualBytes: 20 * GiB, allocatedBytes: 2 * GiB },
        { id: 'data', virtualBytes: 8 * GiB, allocatedBytes: GiB },
        { id: 'nfs', virtualBytes: 50 * GiB, allocatedBytes: 50 * GiB },
      ],
    });
  const space = 21 * GiB; // raw: virtual 20 GiB; qcow2: allocated 1 GiB
  const need = space + storageMargin(space);
  const withDisks = (nodes: NodeModel[], extra: Partial<ClusterModel> = {}): ClusterModel => {
    const c = cluster({ nodes, ...extra });
    return { ...c, vms: c.vms.map((v) => (v.name === 'db-1' ? { ...v, diskSpaceBytes: space, diskTransferBytes: 3 * GiB } : v)) };
  };

  it('counts a raw disk at its virtual size, a qcow2 disk at its allocation, and sends the allocation', () => {
    expect(localDiskSpace(vmInfo())).toEqual({ spaceBytes: space, transferBytes: 3 * GiB });
    expect(storageMargin(space)).toBe(32 * MiB + Math.ceil(space / 20));
    expect(storageMargin(0)).toBe(0);
    const c = clusterFromProto([Node.fromPartial({ host: { nodeId: 'src', memoryFreeBytes: GiB, storageFreeBytes: 5 * GiB }, status: NodeStatus.NODE_STATUS_UP })], [vmInfo()]);
    expect(c.vms[0]).toMatchObject({ diskSpaceBytes: space, diskTransferBytes: 3 * GiB });
    expect(c.nodes[0]?.storageFreeBytes).toBe(5 * GiB);
  });

  it('counts what a CreateVm spec asks its node to create: a new raw disk at its size, a new qcow2 disk or overlay, an existing or a SHARED disk at 0', () => {
    const d = (format: DiskFormat, storage: StorageMode, create?: { sizeBytes: number; basePath: string }) => ({ format, storage, create });
    expect(
      createdDiskSpace([
        d(DiskFormat.DISK_FORMAT_RAW, StorageMode.STORAGE_MODE_LOCAL, { sizeBytes: 48 * MiB, basePath: '' }),
        d(DiskFormat.DISK_FORMAT_RAW, StorageMode.STORAGE_MODE_UNSPECIFIED, { sizeBytes: GiB, basePath: '' }),
        d(DiskFormat.DISK_FORMAT_QCOW2, StorageMode.STORAGE_MODE_LOCAL, { sizeBytes: 100 * GiB, basePath: '' }),
        d(DiskFormat.DISK_FORMAT_QCOW2, StorageMode.STORAGE_MODE_LOCAL, { sizeBytes: 0, basePath: '/base.qcow2' }),
        d(DiskFormat.DISK_FORMAT_RAW, StorageMode.STORAGE_MODE_SHARED, { sizeBytes: 10 * GiB, basePath: '' }),
        d(DiskFormat.DISK_FORMAT_RAW, StorageMode.STORAGE_MODE_LOCAL),
      ]),
    ).toBe(48 * MiB + GiB);
    expect(createdDiskSpace([])).toBe(0);
  });

  it('refuses an explicit destination without the space: RESOURCE_EXHAUSTED naming VM, node, needed and free bytes', () => {
    const c = withDisks([node('src', 1), node('a', 8, { storageFreeBytes: need - 1 }), node('b', 16, { storageFreeBytes: need })]);
    expect(() => placeVm(c, 'db-1', { destination: 'a' })).toThrow(
      expect.objectContaining({ code: 'RESOURCE_EXHAUSTED', reason: 'INSUFFICIENT_STORAGE', message: expect.stringMatching(new RegExp(`"db-1".*node "a".*need ${need} bytes.*has ${need - 1} bytes`)) }),
    );
    const p = placeVm(c, 'db-1', { destination: 'b' });
    expect(p.move).toEqual({ vmName: 'db-1', from: 'src', to: 'b', memoryBytes: 2 * GiB, diskBytes: space });
    // Short of memory and storage: still a resource, named both ways; a lacking capability is not.
    const both = withDisks([node('src', 1), node('a', 1, { storageFreeBytes: need - 1 })]);
    expect(() => placeVm(both, 'db-1', { destination: 'a' })).toThrow(
      expect.objectContaining({ code: 'RESOURCE_EXHAUSTED', reason: 'INSUFFICIENT_RESOURCES', message: expect.stringMatching(/needs 2\.00 GiB but has 1\.00 GiB free; has too little storage/) }),
    );
    const caps = withDisks([node('src', 1), node('a', 8, { storageFreeBytes: need - 1, capabilities: [] })]);
    expect(() => placeVm(caps, 'db-1', { destination: 'a', requiredCapabilities: ['postcopy-ram'] })).toThrow(expect.objectContaining({ code: 'FAILED_PRECONDITION', reason: 'DESTINATION_UNSUITABLE' }));
  });

  it('counts the space promised to migrations in flight to the node', () => {
    const c = withDisks([node('src', 1), node('b', 16, { storageFreeBytes: need + 10 * GiB })], { plannedMoves: [{ vmName: 'other', from: 'x', to: 'b', memoryBytes: GiB, diskBytes: 10 * GiB + 1 }] });
    expect(() => placeVm(c, 'db-1', { destination: 'b' })).toThrow(expect.objectContaining({ reason: 'INSUFFICIENT_STORAGE', message: expect.stringContaining(`${10 * GiB + 1} bytes (10.00 GiB) are promised to 1 migration(s) in flight`) }));
    // A drain's own earlier placements promise space too: two such VMs do not both go to b.
    const two: ClusterModel = {
      nodes: [node('src', 1), node('a', 8, { storageFreeBytes: 1.5 * need }), node('b', 16, { storageFreeBytes: 1.5 * need })],
      vms: [
        { name: 'x1', nodeId: 'src', memoryMib: 1024, diskSpaceBytes: space, diskTransferBytes: space },
        { name: 'x2', nodeId: 'src', memoryMib: 1024, diskSpaceBytes: space, diskTransferBytes: space },
      ],
    };
    const first = placeVm(two, 'x1');
    expect(first.destination).toBe('b');
    expect(placeVm(two, 'x2', { plannedMoves: [first.move] }).destination).toBe('a');
  });

  it('auto-placement skips nodes without the space, fails clearly when none has it, and does not check a node that does not report', () => {
    const c = withDisks([node('src', 1), node('a', 8, { storageFreeBytes: need }), node('b', 16, { storageFreeBytes: GiB })]);
    const p = placeVm(c, 'db-1');
    expect(p.destination).toBe('a');
    expect(p.verdicts.find((v) => v.nodeId === 'b')?.problems[0]).toMatch(/^has too little storage: the LOCAL disks of "db-1" need \d+ bytes/);
    const none = withDisks([node('src', 1), node('a', 8, { storageFreeBytes: GiB }), node('b', 16, { storageFreeBytes: 0 })]);
    expect(() => placeVm(none, 'db-1')).toThrow(expect.objectContaining({ code: 'RESOURCE_EXHAUSTED', reason: 'NO_DESTINATION', message: expect.stringContaining('a has too little storage') }));
    const silent = withDisks([node('src', 1), node('a', 8)]);
    expect(placeVm(silent, 'db-1', { destination: 'a' }).destination).toBe('a');
  });

  it('reserves the storage of a run in flight on its destination, until its node reports the VM there', () => {
    const host = (nodeId: string) => Node.fromPartial({ host: { nodeId, memoryFreeBytes: 8 * GiB, storageFreeBytes: 100 * GiB }, status: NodeStatus.NODE_STATUS_UP });
    const moving = clusterFromProto([host('src'), host('b')], [vmInfo()], { plannedMoves: [{ vmName: 'db-1', from: 'src', to: 'b', memoryBytes: 2 * GiB }] });
    expect(moving.plannedMoves).toEqual([{ vmName: 'db-1', from: 'src', to: 'b', memoryBytes: 2 * GiB, diskBytes: space }]);
    const arrived = clusterFromProto([host('src'), host('b')], [{ ...vmInfo(), nodeId: 'b' }], { plannedMoves: [{ vmName: 'db-1', from: 'src', to: 'b', memoryBytes: 2 * GiB }] });
    expect(arrived.plannedMoves).toEqual([{ vmName: 'db-1', from: 'src', to: 'b', memoryBytes: 2 * GiB }]);
  });

  it('does not count twice what a copy under way has already written on the destination', () => {
    // b had 30 GiB free; the copy of db-1 (21 GiB promised) has written 5 GiB of target images
    // there, so b now reports 25 GiB free and its incoming copy 5 GiB allocated.
    const host = (nodeId: string, storageFreeBytes: number) => Node.fromPartial({ host: { nodeId, memoryFreeBytes: 8 * GiB, storageFreeBytes }, status: NodeStatus.NODE_STATUS_UP });
    const incoming = (root: number, data: number): VmInfo => ({
      ...vmInfo(),
      nodeId: 'b',
      state: VmState.VM_STATE_INCOMING,
      localDisks: [
        { id: 'root', virtualBytes: 20 * GiB, allocatedBytes: root },
        { id: 'data', virtualBytes: 8 * GiB, allocatedBytes: data },
      ],
    });
    const other = VmInfo.fromPartial({
      spec: { name: 'web-9', memoryMib: 512, disks: [{ id: 'd0', format: DiskFormat.DISK_FORMAT_QCOW2, storage: StorageMode.STORAGE_MODE_LOCAL }] },
      nodeId: 'src',
      state: VmState.VM_STATE_RUNNING,
      localDisks: [{ id: 'd0', virtualBytes: 8 * GiB, allocatedBytes: 3 * GiB }],
    });
    const during = clusterFromProto([host('src', 100 * GiB), host('b', 25 * GiB)], [vmInfo(), incoming(4 * GiB, GiB), other]);
    expect(during.plannedMoves).toEqual([{ vmName: 'db-1', from: 'src', to: 'b', memoryBytes: 2 * GiB, diskBytes: space - 5 * GiB }]);
    // web-9 needs 3 GiB + margin: 25 − 16 = 9 GiB is left for it (counting the 5 GiB twice would leave 4).
    expect(placeVm(during, 'web-9', { destination: 'b' }).destination).toBe('b');
    const tight = clusterFromProto([host('src', 100 * GiB), host('b', 16 * GiB + 3 * GiB + storageMargin(3 * GiB) - 1)], [vmInfo(), incoming(4 * GiB, GiB), other]);
    expect(() => placeVm(tight, 'web-9', { destination: 'b' })).toThrow(expect.objectContaining({ code: 'RESOURCE_EXHAUSTED', reason: 'INSUFFICIENT_STORAGE', message: expect.stringContaining(`${16 * GiB} bytes (16.00 GiB) are promised to 1 migration(s)`) }));
    // Fully written: nothing more is promised.
    const done = clusterFromProto([host('src', 100 * GiB), host('b', 9 * GiB)], [vmInfo(), incoming(20 * GiB, GiB)]);
    expect(done.plannedMoves).toEqual([{ vmName: 'db-1', from: 'src', to: 'b', memoryBytes: 2 * GiB }]);
  });
});

describe('bestTwo', () => {
  it('picks the same best and runner-up as sorting every eligible verdict', () => {
    let seed = 42;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const byRank = (a: NodeVerdict, b: NodeVerdict): number => b.availableBytes - a.availableBytes || a.inbound - b.inbound || (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0);
    for (let round = 0; round < 500; round++) {
      // Few distinct values, so ties on memory and on inbound are common.
      const verdicts: NodeVerdict[] = Array.from({ length: rnd(12) }, (_, i) => ({ nodeId: `n${rnd(6)}-${i}`, eligible: rnd(4) > 0, problems: [], availableBytes: rnd(3) * GiB, inbound: rnd(3) }));
      const sorted = verdicts.filter((v) => v.eligible).sort(byRank);
      expect(bestTwo(verdicts)).toEqual({ best: sorted[0], runnerUp: sorted[1], eligible: sorted.length });
    }
  });
});
