import { existsSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DiskBus, DiskFormat, MigrationState as S, StorageMode, VmState, type DiskSpec } from '../../../services/shared/gen/migd/v1/common.js';
import { guestSpec, waitForGuest } from '../../helpers/node-cluster.js';
import { migratePlan, startCoordinatorCluster, waitForRun, type CoordinatorClient, type CoordinatorCluster } from '../../helpers/coordinator-cluster.js';

const MiB = 2 ** 20;

function disk(p: Partial<DiskSpec> & Pick<DiskSpec, 'id' | 'path'>): DiskSpec {
  return { format: DiskFormat.DISK_FORMAT_RAW, bus: DiskBus.DISK_BUS_VIRTIO_BLK, cache: 0, aio: 0, readOnly: false, serial: '', storage: StorageMode.STORAGE_MODE_LOCAL, create: undefined, ...p };
}

/** Whether a live (not zombie) process with this pid runs. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) [ZX] /s.test(stat);
  } catch {
    return false;
  }
}

// VM lifecycle through the coordinator: stop, start and delete a real guest (128 MiB) with a LOCAL
// disk the node created and one given by path; bad input and a VM in a run are refused.
describe('VM lifecycle', () => {
  let c: CoordinatorCluster;
  let op: CoordinatorClient;

  beforeAll(async () => {
    c = await startCoordinatorCluster(['a', 'b']);
    op = c.client();
  });
  afterAll(async () => {
    await c?.close();
  });

  it('stops, starts and deletes a VM, keeping the disks it was given, refusing it while it is in a run', async () => {
    const created = join(c.dir, 'a', 'lc1-d0.raw');
    const given = join(c.dir, 'a', 'lc1-given.raw');
    writeFileSync(given, '');
    truncateSync(given, 8 * MiB);
    // An 8 MiB working set: the test waits for the verifier twice (after the create and after the
    // start), and each wait is one unverified first pass over it at 2 MiB/s (16 s with 32 MiB).
    const spec = { ...guestSpec('lc1', { memoryMib: 128, bytesPerWorker: 8 * MiB, rate: 2 * MiB }), disks: [disk({ id: 'd0', path: created, create: { sizeBytes: 16 * MiB, basePath: '' } }), disk({ id: 'd1', path: given })] };
    await op.createVm({ spec, nodeId: 'a' });
    await waitForGuest(c.nodeClients['a']!, 'lc1', 2, 60_000, (s) => s.pagesVerified > 0);
    const first = (await c.nodeClients['a']!.getVm({ name: 'lc1' })).vm!;
    expect(first.pid).toBeGreaterThan(0);
    expect(existsSync(created)).toBe(true);

    const code = (p: Promise<unknown>): Promise<string> => p.then(() => 'OK', (err: { code?: string; reason?: string }) => `${err.code ?? String(err)}${err.reason ? ` ${err.reason}` : ''}`);
    expect(await code(op.stopVm({ vmName: '' }))).toBe('INVALID_ARGUMENT');
    expect(await code(op.startVm({ vmName: 'no/such' }))).toBe('INVALID_ARGUMENT');
    expect(await code(op.deleteVm({ vmName: 'nosuch', deleteDisks: true }))).toBe('NOT_FOUND UNKNOWN_VM');
    expect(await code(c.client('viewer').stopVm({ vmName: 'lc1' }))).toBe('PERMISSION_DENIED ROLE_NOT_ALLOWED');
    expect(await code(c.client('viewer').deleteVm({ vmName: 'lc1' }))).toBe('PERMISSION_DENIED ROLE_NOT_ALLOWED');

    // In a run (queued or running): refused, and the run goes on until it is cancelled.
    const plan = (await op.submitPlan(migratePlan('lc1-move', 'lc1', 'b', { maxBandwidthBytesPerSec: 4 * MiB }))).plan!;
    const runId = plan.migrations[0]!.runId;
    expect(await code(op.stopVm({ vmName: 'lc1' }))).toBe('FAILED_PRECONDITION VM_MIGRATING');
    expect(await code(op.deleteVm({ vmName: 'lc1', deleteDisks: true }))).toBe('FAILED_PRECONDITION VM_MIGRATING');
    await op.cancelRun({ runId, reason: 'lifecycle test' });
    // Whether it lands in the storage copy, just before the memory stream or in it: CANCELLED.
    expect(S[(await waitForRun(op, runId)).state]).toBe('MIGRATION_STATE_CANCELLED');
    expect((await c.nodeClients['a']!.getVm({ name: 'lc1' })).vm!.state).toBe(VmState.VM_STATE_RUNNING);

    // Stop: QEMU exits, the VM stays (stopped) with its disks; a second stop changes nothing.
    const stopped = (await op.stopVm({ vmName: 'lc1' })).vm!;
    expect(stopped.state).toBe(VmState.VM_STATE_STOPPED);
    expect(alive(first.pid)).toBe(false);
    expect((await op.stopVm({ vmName: 'lc1' })).vm!.state).toBe(VmState.VM_STATE_STOPPED);
    expect((await op.listVms({ nodeId: 'a' })).vms.find((v) => v.spec?.name === 'lc1')?.state).toBe(VmState.VM_STATE_STOPPED);
    expect(existsSync(created) && existsSync(given)).toBe(true);

    // Start: a new QEMU with the same disks and identity; the guest verifies its memory again.
    const restarted = (await op.startVm({ vmName: 'lc1' })).vm!;
    expect(restarted.state).toBe(VmState.VM_STATE_RUNNING);
    expect(restarted.pid).toBeGreaterThan(0);
    expect(restarted.pid).not.toBe(first.pid);
    expect(restarted.spec!.uuid).toBe(first.spec!.uuid);
    expect(restarted.spec!.disks.map((d) => d.path)).toEqual([created, given]);
    await waitForGuest(c.nodeClients['a']!, 'lc1', 2, 60_000, (s) => s.pagesVerified > 0);

    // Delete with its disks: only the image the node created goes; the one given by path stays.
    await op.deleteVm({ vmName: 'lc1', deleteDisks: true });
    expect(alive(restarted.pid)).toBe(false);
    expect(existsSync(created)).toBe(false);
    expect(existsSync(given)).toBe(true);
    expect((await op.listVms({ nodeId: '' })).vms.map((v) => v.spec?.name)).not.toContain('lc1');
    expect(await code(c.nodeClients['a']!.getVm({ name: 'lc1' }))).toBe('NOT_FOUND VM_NOT_FOUND');
    // Gone for good: the next heartbeats do not bring it back.
    await new Promise((r) => setTimeout(r, 1500));
    expect((await op.listVms({ nodeId: '' })).vms.map((v) => v.spec?.name)).not.toContain('lc1');
    expect(await code(op.startVm({ vmName: 'lc1' }))).toBe('NOT_FOUND UNKNOWN_VM');
  }, 300_000);
});
