/**
 * Issue 13, disks: VMs with disk images on real node daemons (real QEMU in testbed namespaces).
 * Each bad input gets its own error and changes nothing; a created sparse disk and a qcow2 overlay
 * are what qemu-img says; the guest's disk workload runs on the disk; a VM boots from its disk
 * through the firmware; and a migration with SHARED storage, the guest writing to its disk, ends
 * with 0 memory and 0 disk integrity errors.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BootSource, DiskBus, DiskFormat, MigrationState, StorageMode, VmState, WorkloadPattern, type DiskSpec, type VmSpec } from '../../../services/shared/gen/migd/v1/common.js';
import { followMigration, guestSpec, policy, resetNodeCluster, startNodeCluster, type NodeClient, type NodeCluster } from '../../helpers/node-cluster.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

function disk(p: Partial<DiskSpec> & { id: string; path: string }): DiskSpec {
  return { format: DiskFormat.DISK_FORMAT_RAW, bus: DiskBus.DISK_BUS_VIRTIO_BLK, cache: 0, aio: 0, readOnly: false, serial: '', storage: StorageMode.STORAGE_MODE_LOCAL, create: undefined, ...p };
}

/** A guest with the idle memory workload and the disk workload on disk `d0`. */
function diskGuest(name: string, disks: DiskSpec[], rate = MiB): VmSpec {
  const s = guestSpec(name, { memoryMib: 192, pattern: WorkloadPattern.WORKLOAD_PATTERN_IDLE, bytesPerWorker: 16 * MiB });
  return { ...s, disks, workload: { ...s.workload!, diskId: 'd0', diskBytes: 16 * MiB, diskRateBytesPerSec: rate } };
}

/** Console text of a VM until `pattern` shows up. */
async function waitConsole(client: NodeClient, name: string, pattern: RegExp, timeoutMs = 60_000): Promise<string> {
  const ac = new AbortController();
  const t = setTimeout(() => ac.abort(), timeoutMs);
  let text = '';
  try {
    for await (const m of client.watchGuest({ name, includeConsole: true }, { signal: ac.signal })) {
      if (m.item?.$case !== 'console') continue;
      text += Buffer.from(m.item.value).toString('latin1');
      if (pattern.test(text)) return text;
    }
  } catch (err) {
    if (!ac.signal.aborted) throw err;
  } finally {
    clearTimeout(t);
    ac.abort();
  }
  throw new Error(`console of ${name} did not show ${pattern} within ${timeoutMs} ms: ${text.slice(-500)}`);
}

/**
 * A 512-byte boot sector (real-mode x86) that writes "migd-boot-ok" to COM1 and halts: enough to
 * prove that SeaBIOS booted the disk, with no kernel on QEMU's command line.
 */
function bootSector(): Buffer {
  const code = [0xfc, 0x31, 0xc0, 0x8e, 0xd8, 0xba, 0xf8, 0x03, 0xbe, 0x16, 0x7c, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xf4, 0xeb, 0xfd];
  const b = Buffer.alloc(512);
  Buffer.from(code).copy(b, 0);
  Buffer.from('migd-boot-ok\r\n\0', 'latin1').copy(b, 0x16);
  b[510] = 0x55;
  b[511] = 0xaa;
  return b;
}

describe('VMs with disks on node daemons (issue 13)', () => {
  let c: NodeCluster;
  let shared: string;
  const mine = new Set<string>();
  beforeAll(async () => {
    // Both nodes see one shared folder (as on NFS), besides their own state dirs.
    c = await startNodeCluster(['a', 'b'], { nodeArgs: (dir) => ['--storage-root', join(dir, 'shared'), '--storage-root', join(dir, 'a-or-b')] });
    shared = join(c.dir, 'shared');
    mkdirSync(shared, { recursive: true });
  }, 120_000);
  afterEach(async () => {
    await resetNodeCluster(c, mine);
    mine.clear();
  }, 120_000);
  afterAll(async () => {
    await c?.close();
  }, 60_000);

  const create = async (node: string, spec: VmSpec): Promise<void> => {
    mine.add(spec.name);
    await c.clients[node]!.createVm({ spec });
  };
  const refused = async (spec: VmSpec): Promise<{ code?: string; reason?: string; message: string }> => {
    const before = readdirSync(shared).sort();
    const err = (await c.clients['a']!.createVm({ spec }).then(() => undefined, (e: unknown) => e)) as { code?: string; reason?: string; message: string } | undefined;
    expect(err, 'the request should have been refused').toBeDefined();
    // Changes nothing: no VM, no file.
    expect((await c.clients['a']!.listVms({})).vms.map((v) => v.spec?.name)).not.toContain(spec.name);
    expect(readdirSync(shared).sort()).toEqual(before);
    return err!;
  };

  it('refuses each bad disk input with a clear error and changes nothing', async () => {
    const img = join(shared, 'exists.raw');
    await run('qemu-img', ['create', '-q', '-f', 'raw', img, String(8 * MiB)]);
    const base = guestSpec('bad');
    const cases: [string, DiskSpec[], object][] = [
      ['relative path', [disk({ id: 'd0', path: 'disks/d0.raw' })], { code: 'INVALID_ARGUMENT' }],
      ['missing file inside a root', [disk({ id: 'd0', path: join(shared, 'missing.raw') })], { code: 'INVALID_ARGUMENT', reason: 'DISK_MISSING' }],
      ['duplicate ids', [disk({ id: 'd0', path: img }), disk({ id: 'd0', path: join(shared, 'other.raw'), create: { sizeBytes: MiB, basePath: '' } })], { code: 'INVALID_ARGUMENT', reason: 'DISK_DUPLICATE' }],
      ['one file twice', [disk({ id: 'd0', path: img }), disk({ id: 'd1', path: img })], { code: 'INVALID_ARGUMENT', reason: 'DISK_DUPLICATE' }],
      ['a bad id', [disk({ id: 'D 0', path: img })], { code: 'INVALID_ARGUMENT', reason: 'DISK_INVALID' }],
      ['/etc/shadow', [disk({ id: 'd0', path: '/etc/shadow' })], { code: 'PERMISSION_DENIED', reason: 'PATH_NOT_ALLOWED' }],
      ['a missing file outside the roots', [disk({ id: 'd0', path: '/etc/no-such-disk' })], { code: 'PERMISSION_DENIED', reason: 'PATH_NOT_ALLOWED' }],
      ['a device', [disk({ id: 'd0', path: '/dev/zero' })], { code: 'PERMISSION_DENIED', reason: 'PATH_NOT_ALLOWED' }],
      ['escaping with ..', [disk({ id: 'd0', path: `${shared}/../../outside.raw`, create: { sizeBytes: MiB, basePath: '' } })], { code: 'PERMISSION_DENIED', reason: 'PATH_NOT_ALLOWED' }],
      ['creating outside the roots', [disk({ id: 'd0', path: '/tmp/migd-evil.raw', create: { sizeBytes: MiB, basePath: '' } })], { code: 'PERMISSION_DENIED' }],
      ['creating over an existing file', [disk({ id: 'd0', path: img, create: { sizeBytes: MiB, basePath: '' } })], { code: 'ALREADY_EXISTS', reason: 'DISK_EXISTS' }],
      ['an overlay on a base outside the roots', [disk({ id: 'd0', path: join(shared, 'ov.qcow2'), format: DiskFormat.DISK_FORMAT_QCOW2, create: { sizeBytes: 0, basePath: '/etc/passwd' } })], { code: 'PERMISSION_DENIED' }],
      ['a raw overlay', [disk({ id: 'd0', path: join(shared, 'ov.raw'), create: { sizeBytes: 0, basePath: img } })], { code: 'INVALID_ARGUMENT' }],
      ['a workload on a missing disk', [disk({ id: 'd1', path: img })], { code: 'INVALID_ARGUMENT' }],
    ];
    for (const [what, disks, expected] of cases) {
      const spec = what === 'a workload on a missing disk' ? diskGuest('bad', disks) : { ...base, disks };
      expect(await refused(spec), what).toMatchObject(expected);
    }
    const boot = await refused({ ...base, boot: BootSource.BOOT_SOURCE_DISK, disks: [] });
    expect(boot).toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(existsSync('/tmp/migd-evil.raw')).toBe(false);
  });

  it('creates a sparse disk and a qcow2 overlay, and the guest writes and verifies its disk', async () => {
    const base = join(shared, 'base.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(64 * MiB)]);
    const d0 = join(shared, 'vm1', 'd0.raw');
    const d1 = join(shared, 'vm1', 'd1.qcow2');
    await create('a', diskGuest('disk1', [
      disk({ id: 'd0', path: d0, create: { sizeBytes: 48 * MiB, basePath: '' }, serial: 'MIGD-D0' }),
      disk({ id: 'd1', path: d1, format: DiskFormat.DISK_FORMAT_QCOW2, bus: DiskBus.DISK_BUS_VIRTIO_SCSI, create: { sizeBytes: 0, basePath: base } }),
    ]));
    const info0 = JSON.parse((await run('qemu-img', ['info', '-U', '--output=json', d0])).stdout) as { 'virtual-size': number; 'actual-size': number; format: string };
    expect(info0).toMatchObject({ 'virtual-size': 48 * MiB, format: 'raw' });
    expect(info0['actual-size']).toBeLessThan(8 * MiB);
    const info1 = JSON.parse((await run('qemu-img', ['info', '-U', '--output=json', d1])).stdout) as { 'virtual-size': number; 'backing-filename': string };
    expect(info1).toMatchObject({ 'virtual-size': 64 * MiB, 'backing-filename': base });
    // The guest found /dev/vda (virtio-blk), wrote generations and verified them.
    const text = await waitConsole(c.clients['a']!, 'disk1', /dverify blocks=[1-9]/, 90_000);
    expect(text).toMatch(/dstart dev=\/dev\/vda/);
    expect(text).toMatch(/dverify blocks=\d+ errors=0/);
    const { vm } = await c.clients['a']!.getVm({ name: 'disk1' });
    expect(vm?.spec?.disks.map((d) => [d.id, d.path, d.create])).toEqual([['d0', d0, undefined], ['d1', d1, undefined]]);
  });

  it('boots a VM from its disk through the firmware, with no kernel', async () => {
    const img = join(shared, 'boot.raw');
    await run('qemu-img', ['create', '-q', '-f', 'raw', img, String(MiB)]);
    writeFileSync(img, bootSector(), { flag: 'r+' });
    await create('a', { ...guestSpec('fwboot'), workload: undefined, boot: BootSource.BOOT_SOURCE_DISK, disks: [disk({ id: 'boot', path: img, storage: StorageMode.STORAGE_MODE_SHARED })] });
    await waitConsole(c.clients['a']!, 'fwboot', /migd-boot-ok/, 60_000);
    const { vm } = await c.clients['a']!.getVm({ name: 'fwboot' });
    expect(vm?.state).toBe(VmState.VM_STATE_RUNNING);
  });

  it('migrates a guest writing to a SHARED disk: the destination opens the same image, 0 memory and 0 disk errors', async () => {
    const img = join(shared, 'shared-d0.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', img, String(32 * MiB)]);
    await create('a', diskGuest('shared1', [disk({ id: 'd0', path: img, format: DiskFormat.DISK_FORMAT_QCOW2, storage: StorageMode.STORAGE_MODE_SHARED })], 4 * MiB));
    await waitConsole(c.clients['a']!, 'shared1', /dpass n=[2-9]/, 90_000);
    const before = (await run('qemu-img', ['info', '-U', '--output=json', img])).stdout;
    await c.clients['a']!.startMigration({ runId: 'run-shared-1', vmName: 'shared1', destination: { nodeId: 'b', managementAddress: c.nodes['b']!.address, migrationAddress: c.tb.host('b').migrationAddress }, policy: policy({}) });
    const trace = await followMigration(c.clients['a']!, 'run-shared-1');
    expect(trace.result.error).toBeUndefined();
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(trace.result.stats?.integrityErrors).toBe(0);
    expect(trace.result.stats?.diskTransferredBytes ?? 0).toBe(0); // never copied
    const { vm } = await c.clients['b']!.getVm({ name: 'shared1' });
    expect(vm?.spec?.disks[0]?.path).toBe(img);
    // The destination writes on and a full verification there finds every block intact.
    const text = await waitConsole(c.clients['b']!, 'shared1', /dsweep n=\d+ blocks=[1-9]\d* errors=\d+/, 60_000);
    expect(text).toMatch(/dsweep n=\d+ blocks=[1-9]\d* errors=0/);
    expect(text).not.toMatch(/derr /);
    expect(JSON.parse(before)).toMatchObject({ filename: img });
  });
});
