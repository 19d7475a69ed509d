/**
 * Issue 13: a cancel through the coordinator while a LOCAL disk is being copied. The run ends
 * CANCELLED (not FAILED), the guest runs on at the source, and the destination keeps nothing: no
 * VM, no QEMU process (whose NBD server held the export), no target image.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DiskBus, DiskFormat, MigrationState, StorageMode, VmState, WorkloadPattern, type DiskSpec, type VmSpec } from '../../../services/shared/gen/migd/v1/common.js';
import { migratePlan, startCoordinatorCluster, waitFor, waitForRun, type CoordinatorClient, type CoordinatorCluster } from '../../helpers/coordinator-cluster.js';
import { guestSpec, waitForGuest } from '../../helpers/node-cluster.js';
import { qemuPidsMatching } from '../../helpers/qemu-process.js';

const run = promisify(execFile);
const MiB = 2 ** 20;

function disk(p: Partial<DiskSpec> & Pick<DiskSpec, 'id' | 'path'>): DiskSpec {
  return { format: DiskFormat.DISK_FORMAT_RAW, bus: DiskBus.DISK_BUS_VIRTIO_BLK, cache: 0, aio: 0, readOnly: false, serial: '', storage: StorageMode.STORAGE_MODE_LOCAL, create: undefined, ...p };
}

describe('a cancel during the LOCAL disk copy, through the coordinator', () => {
  let c: CoordinatorCluster;
  let op: CoordinatorClient;

  beforeAll(async () => {
    c = await startCoordinatorCluster(['a', 'b']);
    op = c.client();
  }, 120_000);
  afterAll(async () => {
    await c?.close();
  }, 60_000);

  /** A guest with an idle memory workload and a 48 MiB LOCAL disk holding `dataMiB` of random data. */
  const createWithDisk = async (name: string, dataMiB: number): Promise<string> => {
    const path = join(c.dir, 'a', `${name}-d0.raw`);
    await run('qemu-img', ['create', '-q', '-f', 'raw', path, String(48 * MiB)]);
    await run('dd', ['if=/dev/urandom', `of=${path}`, 'bs=1M', `count=${dataMiB}`, 'seek=16', 'conv=notrunc', 'status=none']);
    const s = guestSpec(name, { memoryMib: 160, pattern: WorkloadPattern.WORKLOAD_PATTERN_IDLE, bytesPerWorker: 16 * MiB });
    const spec: VmSpec = { ...s, disks: [disk({ id: 'd0', path })], workload: { ...s.workload!, diskId: 'd0', diskBytes: 8 * MiB, diskRateBytesPerSec: MiB } };
    await op.createVm({ spec, nodeId: 'a' });
    await waitForGuest(c.nodeClients['a']!, name, 2, 90_000, (g) => g.pagesVerified > 0);
    return path;
  };

  /** A VM's QEMU processes on a node (its folder in the node's state dir is on their command line). */
  const qemuOf = (node: string, name: string): Promise<number[]> => qemuPidsMatching(join(c.dir, node, 'vms', `${name}/`));
  /** The LOCAL-disk targets a node holds for a VM (its storage root is its state dir). */
  const targetsOf = (node: string, name: string): string[] => {
    const dir = join(c.dir, node, 'disks', name);
    return existsSync(dir) ? readdirSync(dir) : [];
  };

  /** Nothing of the run is left on b: no VM, no QEMU (nor its NBD export), no target image. */
  const cleanOnB = async (name: string): Promise<void> => {
    expect((await c.nodeClients['b']!.listVms({})).vms.map((v) => v.spec?.name)).not.toContain(name);
    await waitFor(async () => (await qemuOf('b', name)).length === 0, 20_000, 'no QEMU of the run left on b');
    expect(targetsOf('b', name)).toEqual([]);
    // The same look finds the source's QEMU, which runs on.
    expect(await qemuOf('a', name)).toHaveLength(1);
  };

  it('ends CANCELLED; the source runs on; nothing is left on the destination; it migrates afterwards', async () => {
    await createWithDisk('sc1', 24);
    await c.tb.shape('a', { rateMbit: 16 }); // 24 MiB take ~12 s
    try {
      const runId = (await op.submitPlan(migratePlan('sc1-move', 'sc1', 'b'))).plan!.migrations[0]!.runId;
      // Cancelled once the mirror has copied some of the disk (the storage phase is under way).
      let copying = false;
      const ac = new AbortController();
      try {
        for await (const { event } of op.watch({ scope: { $case: 'runId', value: runId }, statesOnly: false }, { signal: ac.signal })) {
          const p = event?.payload;
          if (p?.$case === 'runProgress' && p.value.sample?.storagePhase && (p.value.sample.diskTransferredBytes ?? 0) > MiB) {
            copying = true;
            break;
          }
          if (p?.$case === 'runCompleted') break;
        }
      } finally {
        ac.abort();
      }
      expect(copying).toBe(true);
      // What cleanOnB looks for is there while the disk is copied: b's QEMU (its NBD server exports
      // the target) and the target image.
      expect(await qemuOf('b', 'sc1')).toHaveLength(1);
      expect(targetsOf('b', 'sc1')).toEqual(['d0.raw']);
      await op.cancelRun({ runId, reason: 'cancel during the disk copy' });
      const ended = await waitForRun(op, runId);
      expect({ state: MigrationState[ended.state], error: ended.error?.message }).toEqual({ state: 'MIGRATION_STATE_CANCELLED', error: undefined });
      expect((await c.nodeClients['a']!.getVm({ name: 'sc1' })).vm?.state).toBe(VmState.VM_STATE_RUNNING);
      await cleanOnB('sc1');
    } finally {
      await c.tb.unshape('a');
    }
    // No mirror, NBD node or block job is left on the source: it migrates again.
    const again = (await op.submitPlan(migratePlan('sc1-move-2', 'sc1', 'b'))).plan!.migrations[0]!.runId;
    expect(MigrationState[(await waitForRun(op, again)).state]).toBe('MIGRATION_STATE_SUCCEEDED');
  }, 300_000);
  it('a cancel during the memory stream, the mirrors in sync: CANCELLED as well', async () => {
    await createWithDisk('sc2', 2);
    const runId = (await op.submitPlan(migratePlan('sc2-move', 'sc2', 'b', { maxBandwidthBytesPerSec: 4 * MiB }))).plan!.migrations[0]!.runId;
    let streaming = false;
    const ac = new AbortController();
    try {
      for await (const { event } of op.watch({ scope: { $case: 'runId', value: runId }, statesOnly: false }, { signal: ac.signal })) {
        const p = event?.payload;
        if (p?.$case === 'runProgress' && !p.value.sample?.storagePhase && (p.value.sample?.transferredBytes ?? 0) > 4 * MiB) {
          streaming = true;
          break;
        }
        if (p?.$case === 'runCompleted') break;
      }
    } finally {
      ac.abort();
    }
    expect(streaming).toBe(true);
    await op.cancelRun({ runId, reason: 'cancel during the memory stream' });
    const ended = await waitForRun(op, runId);
    expect({ state: MigrationState[ended.state], error: ended.error?.message }).toEqual({ state: 'MIGRATION_STATE_CANCELLED', error: undefined });
    expect((await c.nodeClients['a']!.getVm({ name: 'sc2' })).vm?.state).toBe(VmState.VM_STATE_RUNNING);
    await cleanOnB('sc2');
  }, 300_000);

  it('a cancel right after the submit: CANCELLED as well', async () => {
    await createWithDisk('sc3', 2);
    const runId = (await op.submitPlan(migratePlan('sc3-move', 'sc3', 'b', { maxBandwidthBytesPerSec: 4 * MiB }))).plan!.migrations[0]!.runId;
    await op.cancelRun({ runId, reason: 'cancel at once' });
    const ended = await waitForRun(op, runId);
    expect({ state: MigrationState[ended.state], error: ended.error?.message }).toEqual({ state: 'MIGRATION_STATE_CANCELLED', error: undefined });
    expect((await c.nodeClients['a']!.getVm({ name: 'sc3' })).vm?.state).toBe(VmState.VM_STATE_RUNNING);
    await cleanOnB('sc3');
  }, 300_000);
});
