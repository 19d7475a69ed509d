/**
 * Issue 13, planning with LOCAL disks: the coordinator refuses a destination whose storage root
 * lacks the space for a VM's LOCAL disks before anything is recorded or started. Node b's storage
 * root is a 64 MiB tmpfs; the VM on a has a 48 MiB raw disk (sparse: a few KiB allocated), which
 * counts at its virtual size plus the margin (≈ 82 MiB) — more than b has, although b's own
 * PrepareIncoming check (allocation + 16 MiB) would have let the copy start. CreateVm is held to
 * the same rule: disks to create that do not fit on b are refused by the coordinator and by b
 * itself (RESOURCE_EXHAUSTED) before any image exists.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DiskBus, DiskFormat, StorageMode, type DiskSpec, type VmInfo } from '../../../services/shared/gen/migd/v1/common.js';
import { RunFilter, type Node } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { storageMargin } from '../../../services/coordinator/domain/cluster.js';
import { guestSpec } from '../../helpers/node-cluster.js';
import { waitFor } from '../../helpers/qemu-process.js';
import { migratePlan, startCoordinatorCluster, type CoordinatorClient, type CoordinatorCluster } from '../../helpers/coordinator-cluster.js';

const run = promisify(execFile);
const MiB = 2 ** 20;

function disk(p: Partial<DiskSpec> & Pick<DiskSpec, 'id' | 'path'>): DiskSpec {
  return { format: DiskFormat.DISK_FORMAT_RAW, bus: DiskBus.DISK_BUS_VIRTIO_BLK, cache: 0, aio: 0, readOnly: false, serial: '', storage: StorageMode.STORAGE_MODE_LOCAL, create: undefined, ...p };
}

describe('placement checks the storage of a destination for LOCAL disks (issue 13)', () => {
  let c: CoordinatorCluster | undefined;
  let op: CoordinatorClient;
  let bRoot = '';
  let mounted = false;

  beforeAll(async () => {
    bRoot = mkdtempSync('/tmp/migd-sp-b-');
    await run('mount', ['-t', 'tmpfs', '-o', 'size=64m,mode=0700', 'migd-test-sp-b', bRoot]);
    mounted = true;
    c = await startCoordinatorCluster(['a', 'b'], { nodeArgs: (_dir, h) => (h === 'b' ? ['--storage-root', bRoot] : []) });
    op = c.client();
  }, 180_000);
  afterAll(async () => {
    await c?.close();
    if (mounted) await run('umount', [bRoot]).catch(() => run('umount', ['-l', bRoot]));
    if (bRoot) rmSync(bRoot, { recursive: true, force: true });
  }, 60_000);

  it('refuses an explicit destination with RESOURCE_EXHAUSTED and records nothing; a drain finds no node', async () => {
    const cluster = c!;
    const spec = { ...guestSpec('sp1', { memoryMib: 128 }), disks: [disk({ id: 'd0', path: join(cluster.dir, 'a', 'sp1-d0.raw'), create: { sizeBytes: 48 * MiB, basePath: '' } })] };
    await op.createVm({ spec, nodeId: 'a' });
    // The heartbeats bring the disk's size and b's free storage to the coordinator.
    let reported: { vm: VmInfo; b: Node } | undefined;
    await waitFor(
      async () => {
        const vm = (await op.listVms({ nodeId: '' })).vms.find((v) => v.spec?.name === 'sp1');
        const b = (await op.listNodes({})).nodes.find((n) => n.host?.nodeId === 'b');
        if (vm?.localDisks.length && b?.host?.storageFreeBytes !== undefined) reported = { vm, b };
        return reported !== undefined;
      },
      30_000,
      "sp1's LOCAL disk and b's storage in the coordinator's view",
    );
    if (!reported) throw new Error('unreachable');
    expect(reported.vm.localDisks).toEqual([{ id: 'd0', virtualBytes: 48 * MiB, allocatedBytes: expect.any(Number) }]);
    expect(reported.vm.localDisks[0]!.allocatedBytes).toBeLessThan(4 * MiB);
    const free = reported.b.host!.storageFreeBytes!;
    expect(free).toBeLessThanOrEqual(64 * MiB);
    const need = 48 * MiB + storageMargin(48 * MiB);

    const err = (await op.submitPlan(migratePlan('sp1-to-b', 'sp1', 'b')).then(() => undefined, (e: unknown) => e)) as { code?: string; reason?: string; message: string } | undefined;
    expect(err).toMatchObject({ code: 'RESOURCE_EXHAUSTED', reason: 'INSUFFICIENT_STORAGE' });
    expect(err!.message).toContain('"sp1"');
    expect(err!.message).toContain('node "b"');
    expect(err!.message).toContain(`need ${need} bytes`);
    expect(err!.message).toMatch(/has \d+ bytes \(.*\) free/);
    // Nothing recorded: no run, and the same key is free for another request.
    expect((await op.listRuns({ filter: RunFilter.fromPartial({ vmName: 'sp1' }), pageSize: 10, pageToken: '' })).runs).toEqual([]);

    const drain = (await op
      .submitPlan({ ...migratePlan('sp1-drain', 'sp1', 'b'), target: { $case: 'drain', value: { nodeId: 'a', destinationNodeIds: ['b'] } } })
      .then(() => undefined, (e: unknown) => e)) as { code?: string; reason?: string; message: string } | undefined;
    expect(drain).toMatchObject({ code: 'RESOURCE_EXHAUSTED', reason: 'NO_DESTINATION' });
    expect(drain!.message).toMatch(/no node can take VM "sp1".*b has too little storage/);
    expect((await op.listRuns({ filter: RunFilter.fromPartial({ vmName: 'sp1' }), pageSize: 10, pageToken: '' })).runs).toEqual([]);
  }, 180_000);

  it('refuses a CreateVm whose disks to create do not fit, in the coordinator and in the node, creating nothing; one that fits is created', async () => {
    const cluster = c!;
    await waitFor(async () => (await op.listNodes({})).nodes.find((n) => n.host?.nodeId === 'b')?.host?.storageFreeBytes !== undefined, 30_000, "b's storage in the coordinator's view");
    // 96 MiB raw on a 64 MiB root: sparse, it would be created, and fail once the guest fills it.
    const big = { ...guestSpec('cr1', { memoryMib: 128 }), disks: [disk({ id: 'd0', path: join(bRoot, 'cr1-d0.raw'), create: { sizeBytes: 96 * MiB, basePath: '' } })] };
    const err = (await op.createVm({ spec: big, nodeId: 'b' }).then(() => undefined, (e: unknown) => e)) as { code?: string; reason?: string; message: string } | undefined;
    expect(err).toMatchObject({ code: 'RESOURCE_EXHAUSTED', reason: 'INSUFFICIENT_STORAGE' });
    expect(err!.message).toMatch(/cannot create VM "cr1" on node "b": the LOCAL disks of "cr1" need \d+ bytes .* but its storage root has \d+ bytes/);
    // The node's own check, for a coordinator whose view is stale (or a caller that skips it).
    const nodeErr = (await cluster.nodeClients['b']!.createVm({ spec: big }).then(() => undefined, (e: unknown) => e)) as { code?: string; reason?: string; message: string } | undefined;
    expect(nodeErr).toMatchObject({ code: 'RESOURCE_EXHAUSTED', reason: 'INSUFFICIENT_STORAGE' });
    expect(nodeErr!.message).toContain(`need ${96 * MiB} bytes`);
    expect(readdirSync(bRoot).filter((f) => f.startsWith('cr1'))).toEqual([]);
    expect((await cluster.nodeClients['b']!.listVms({})).vms.map((v) => v.spec?.name)).not.toContain('cr1');
    expect((await op.listVms({ nodeId: '' })).vms.map((v) => v.spec?.name)).not.toContain('cr1');

    // 8 MiB (+ the 32 MiB + 5 % margin) fits: created, and removed with its image again.
    const small = { ...guestSpec('cr2', { memoryMib: 128 }), disks: [disk({ id: 'd0', path: join(bRoot, 'cr2-d0.raw'), create: { sizeBytes: 8 * MiB, basePath: '' } })] };
    await op.createVm({ spec: small, nodeId: 'b' });
    expect(readdirSync(bRoot)).toContain('cr2-d0.raw');
    await op.deleteVm({ vmName: 'cr2', deleteDisks: true });
    expect(readdirSync(bRoot).filter((f) => f.startsWith('cr2'))).toEqual([]);
  }, 180_000);
});
