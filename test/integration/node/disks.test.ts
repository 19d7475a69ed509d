/**
 * Issue 13, disks: VMs with disk images on real node daemons (real QEMU in testbed namespaces).
 * Each bad input gets its own error and changes nothing; a created sparse disk and a qcow2 overlay
 * are what qemu-img says; the guest's disk workload runs on the disk; a VM boots from its disk
 * through the firmware; a migration with SHARED storage, the guest writing to its disk, ends
 * with 0 memory and 0 disk integrity errors; LOCAL disks are copied over NBD (pre-copy and
 * post-copy, 0 errors; an overlay sends only its own bytes); a cancel or a link cut during the
 * copy leaves nothing on the destination; a destination without the space refuses before anything
 * starts.
 *
 * Node b's first storage root (where LOCAL targets go) is a 96 MiB tmpfs, so "lacks the space" is
 * real; every node also sees one shared folder, as on NFS.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BootSource, DiskBus, DiskFormat, MigrationState, StorageMode, VmState, WorkloadPattern, type DiskSpec, type VmSpec } from '../../../services/shared/gen/migd/v1/common.js';
import { followMigration, guestSpec, policy, resetNodeCluster, startMigration, startNodeCluster, waitForGuest, type NodeClient, type NodeCluster } from '../../helpers/node-cluster.js';
import { qemuPidsMatching, waitFor } from '../../helpers/qemu-process.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

function disk(p: Partial<DiskSpec> & { id: string; path: string }): DiskSpec {
  return { format: DiskFormat.DISK_FORMAT_RAW, bus: DiskBus.DISK_BUS_VIRTIO_BLK, cache: 0, aio: 0, readOnly: false, serial: '', storage: StorageMode.STORAGE_MODE_LOCAL, create: undefined, ...p };
}

/**
 * A guest with the idle memory workload and the disk workload on the first `diskBytes` of disk
 * `d0`. Tests that wait for the second pass (`dpass n=2`: every block written once) wait
 * diskBytes / rate for it: 8 MiB at 2 MiB/s is 4 s, 16 MiB at 1 MiB/s was 16 s.
 */
function diskGuest(name: string, disks: DiskSpec[], rate = MiB, diskBytes = 16 * MiB): VmSpec {
  const s = guestSpec(name, { memoryMib: 192, pattern: WorkloadPattern.WORKLOAD_PATTERN_IDLE, bytesPerWorker: 16 * MiB });
  return { ...s, disks, workload: { ...s.workload!, diskId: 'd0', diskBytes, diskRateBytesPerSec: rate } };
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
 * A 512-byte boot sector (real-mode x86) that writes "migd-boot-ok" to COM1 about once a second
 * (18 timer ticks halted between two lines): enough to prove that SeaBIOS booted the disk, with no
 * kernel on QEMU's command line. It repeats because WatchGuest shows only what the console prints
 * after the watch starts: a single line, printed ~200 ms after the VM started, was sometimes
 * printed before the test's watch began (a CI run waited 60 s for it).
 *
 *   0 start: cld; xor ax,ax; mov ds,ax; mov dx,0x3f8; mov si,0x7c1c
 *  11 print: lodsb; test al,al; jz done; out dx,al; jmp print
 *  19 done:  sti; mov cx,18
 *  23 wait:  hlt; loop wait; jmp start
 *  28 "migd-boot-ok\r\n\0"
 */
function bootSector(): Buffer {
  const code = [0xfc, 0x31, 0xc0, 0x8e, 0xd8, 0xba, 0xf8, 0x03, 0xbe, 0x1c, 0x7c, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xfb, 0xb9, 0x12, 0x00, 0xf4, 0xe2, 0xfd, 0xeb, 0xe4];
  const b = Buffer.alloc(512);
  Buffer.from(code).copy(b, 0);
  Buffer.from('migd-boot-ok\r\n\0', 'latin1').copy(b, code.length);
  b[510] = 0x55;
  b[511] = 0xaa;
  return b;
}

describe('VMs with disks on node daemons (issue 13)', () => {
  let c: NodeCluster;
  let shared: string;
  let bLocalMounted = false;
  let bLocal = '';
  const mine = new Set<string>();
  beforeAll(async () => {
    // Both nodes see one shared folder (as on NFS), besides their own state dirs.
    // Mounted before the daemons start: each runs in a mount namespace of its own (ip netns exec),
    // which sees only the mounts made before it.
    bLocal = mkdtempSync('/tmp/migd-b-local-');
    await run('mount', ['-t', 'tmpfs', '-o', 'size=96m,mode=0700', 'migd-test-b-local', bLocal]);
    bLocalMounted = true;
    c = await startNodeCluster(['a', 'b'], { nodeArgs: (dir, h) => ['--storage-root', h === 'b' ? bLocal : join(dir, `${h}-local`), '--storage-root', join(dir, 'shared')] });
    shared = join(c.dir, 'shared');
    mkdirSync(shared, { recursive: true });
    mkdirSync(join(c.dir, 'a-local'));
  }, 120_000);
  afterEach(async () => {
    await resetNodeCluster(c, mine);
    mine.clear();
    // DestroyVm keeps disks: the images this test left on b's small root go here.
    rmSync(join(bLocal, 'disks'), { recursive: true, force: true });
  }, 120_000);
  afterAll(async () => {
    await c?.close();
    if (bLocalMounted) await run('umount', [bLocal]).catch(() => run('umount', ['-l', bLocal]));
    if (bLocal) rmSync(bLocal, { recursive: true, force: true });
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

  it("reports the size and free space of its first storage root in HostInfo (where LOCAL images go)", async () => {
    const { host } = await c.clients['b']!.getHostInfo({});
    expect(host?.storageTotalBytes).toBe(96 * MiB);
    const before = host?.storageFreeBytes ?? 0;
    expect(before).toBeGreaterThan(90 * MiB);
    expect(before).toBeLessThanOrEqual(96 * MiB);
    // 8 MiB written on the tmpfs: the next report has 8 MiB less.
    const file = join(bLocal, 'fill.bin');
    writeFileSync(file, Buffer.alloc(8 * MiB, 1));
    try {
      expect((await c.clients['b']!.getHostInfo({})).host?.storageFreeBytes).toBe(before - 8 * MiB);
    } finally {
      rmSync(file);
    }
    // a's first root does not exist yet: measured at its nearest existing folder.
    const a = (await c.clients['a']!.getHostInfo({})).host;
    expect(a?.storageTotalBytes).toBeGreaterThan(0);
    expect(a?.storageFreeBytes).toBeGreaterThan(0);
  });

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
    await create('a', diskGuest('shared1', [disk({ id: 'd0', path: img, format: DiskFormat.DISK_FORMAT_QCOW2, storage: StorageMode.STORAGE_MODE_SHARED })], 4 * MiB, 8 * MiB));
    await waitConsole(c.clients['a']!, 'shared1', /dpass n=[2-9]/, 90_000);
    const before = (await run('qemu-img', ['info', '-U', '--output=json', img])).stdout;
    await startMigration(c, 'a', { runId: 'run-shared-1', vmName: 'shared1', destination: { nodeId: 'b', managementAddress: c.nodes['b']!.address, migrationAddress: c.tb.host('b').migrationAddress }, policy: policy({}) });
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

  const toB = () => ({ nodeId: 'b', managementAddress: c.nodes['b']!.address, migrationAddress: c.tb.host('b').migrationAddress });
  const bTargets = (name: string): string[] => {
    const d = join(bLocal, 'disks', name);
    return existsSync(d) ? readdirSync(d) : [];
  };
  /** A LOCAL raw disk created on a, with `dataMiB` of random data at 16 MiB (beyond the workload's area). */
  const localDisk = async (name: string, dataMiB = 0, sizeMiB = 48): Promise<DiskSpec> => {
    const path = join(c.dir, 'a-local', `${name}-d0.raw`);
    await run('qemu-img', ['create', '-q', '-f', 'raw', path, String(sizeMiB * MiB)]);
    if (dataMiB > 0) await run('dd', ['if=/dev/urandom', `of=${path}`, 'bs=1M', `count=${dataMiB}`, 'seek=16', 'conv=notrunc', 'status=none']);
    return disk({ id: 'd0', path });
  };
  /** The destination's guest after arrival: a full disk verification with 0 errors. */
  const verifiedOnB = async (name: string): Promise<void> => {
    const text = await waitConsole(c.clients['b']!, name, /dsweep n=\d+ blocks=[1-9]\d* errors=\d+/, 60_000);
    expect(text).toMatch(/dsweep n=\d+ blocks=[1-9]\d* errors=0/);
    expect(text).not.toMatch(/derr /);
  };

  it('copies a LOCAL disk over NBD with pre-copy: sparse target, disk bytes in progress and stats, 0 memory and 0 disk errors', async () => {
    await create('a', diskGuest('local1', [await localDisk('local1', 8)], 2 * MiB, 8 * MiB));
    await waitConsole(c.clients['a']!, 'local1', /dpass n=[2-9]/, 90_000);
    await startMigration(c, 'a', { runId: 'run-local-1', vmName: 'local1', destination: toB(), policy: policy({}) });
    const trace = await followMigration(c.clients['a']!, 'run-local-1');
    expect(trace.result.error).toBeUndefined();
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    const st = trace.result.stats!;
    expect(st.integrityErrors).toBe(0);
    expect(st.disksCopied).toBe(1);
    expect(st.diskTransferredBytes ?? 0).toBeGreaterThanOrEqual(8 * MiB);
    expect(st.storageMs ?? 0).toBeGreaterThan(0);
    const samples = trace.updates.flatMap((u) => (u.update?.$case === 'progress' ? [u.update.value] : []));
    expect(samples.some((p) => p.storagePhase === true && (p.diskTotalBytes ?? 0) > 0)).toBe(true);
    // The memory stream started only after the storage phase.
    const firstMemory = samples.findIndex((p) => p.storagePhase !== true);
    expect(samples.slice(firstMemory).every((p) => p.storagePhase !== true)).toBe(true);
    const { vm } = await c.clients['b']!.getVm({ name: 'local1' });
    const target = vm!.spec!.disks[0]!.path;
    expect(target).toBe(join(bLocal, 'disks', 'local1', 'd0.raw'));
    const info = JSON.parse((await run('qemu-img', ['info', '-U', '--output=json', target])).stdout) as { 'virtual-size': number; 'actual-size': number };
    expect(info['virtual-size']).toBe(48 * MiB);
    expect(info['actual-size']).toBeLessThan(40 * MiB); // sparse regions stayed sparse
    await verifiedOnB('local1');
    // The guest verifies its own disk here: no digest for it, the host's checks besides.
    expect(st.checks.map((k) => [k.name, k.passed])).toEqual([['workload', true], ['running', true], ['vcpus', true], ['io-errors', true]]);
    process.stdout.write(`disks local-precopy ${JSON.stringify({ diskBytes: st.diskTransferredBytes, allocated: st.diskAllocatedBytes, storageMs: st.storageMs, downtimeMs: st.downtimeMs, totalMs: st.totalTimeMs, targetAllocated: info['actual-size'] })}\n`);
  }, 240_000);

  it('copies a LOCAL disk with post-copy: the mirrors end before the destination resumes; 0 errors', async () => {
    const s = diskGuest('local2', [await localDisk('local2', 4)], 2 * MiB, 8 * MiB);
    // A guest rewriting memory faster than any link here: pre-copy never converges, post-copy ends it.
    await create('a', { ...s, workload: { ...s.workload!, pattern: WorkloadPattern.WORKLOAD_PATTERN_RANDOM, bytesPerWorker: 24 * MiB, rateBytesPerSec: 0 } });
    await waitConsole(c.clients['a']!, 'local2', /dpass n=[2-9]/, 90_000);
    // A slow link, so that pass 1 cannot converge even on a quiet machine (resetNodeCluster unshapes).
    await c.tb.shape('a', { rateMbit: 100 });
    await startMigration(c, 'a', { runId: 'run-local-2', vmName: 'local2', destination: toB(), policy: policy({ postcopy: { enabled: true, afterPasses: 1, afterMs: 0, onDemandOnly: false, preempt: false } }) });
    const trace = await followMigration(c.clients['a']!, 'run-local-2');
    expect(trace.result.error).toBeUndefined();
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(trace.states).toContain(MigrationState.MIGRATION_STATE_POSTCOPY);
    expect(trace.result.stats?.integrityErrors).toBe(0);
    expect(trace.result.stats?.disksCopied).toBe(1);
    await verifiedOnB('local2');
  }, 240_000);

  it('copies only the overlay of a qcow2 disk whose base the destination has (sync top), measured', async () => {
    // The guest writes an 8 MiB area (its overlay's data); the base's 16 MiB of data lie beyond it.
    const base = join(shared, 'base-16m.raw');
    await run('qemu-img', ['create', '-q', '-f', 'raw', base, String(48 * MiB)]);
    await run('dd', ['if=/dev/urandom', `of=${base}`, 'bs=1M', 'count=16', 'seek=20', 'conv=notrunc', 'status=none']);
    const overlay = join(c.dir, 'a-local', 'ov', 'd0.qcow2');
    await create('a', diskGuest('ov1', [disk({ id: 'd0', path: overlay, format: DiskFormat.DISK_FORMAT_QCOW2, create: { sizeBytes: 0, basePath: base } })], MiB, 8 * MiB));
    await waitConsole(c.clients['a']!, 'ov1', /dpass n=[2-9]/, 90_000);
    const overlayBytes = (JSON.parse((await run('qemu-img', ['info', '-U', '--output=json', overlay])).stdout) as { 'actual-size': number })['actual-size'];
    await startMigration(c, 'a', { runId: 'run-ov-1', vmName: 'ov1', destination: toB(), policy: policy({}) });
    const trace = await followMigration(c.clients['a']!, 'run-ov-1');
    expect(trace.result.error).toBeUndefined();
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    const st = trace.result.stats!;
    // Only the overlay's clusters (what the guest wrote into its 8 MiB area), never the base's
    // 16 MiB of data: a full copy would send both.
    expect(st.diskTransferredBytes ?? 0).toBeGreaterThan(0);
    expect(st.diskTransferredBytes ?? 0).toBeLessThanOrEqual(overlayBytes + 4 * MiB);
    expect(st.diskAllocatedBytes ?? 0).toBeGreaterThanOrEqual(overlayBytes + 16 * MiB);
    expect(st.diskTransferredBytes ?? 0).toBeLessThan((st.diskAllocatedBytes ?? 0) - 12 * MiB);
    const { vm } = await c.clients['b']!.getVm({ name: 'ov1' });
    const info = JSON.parse((await run('qemu-img', ['info', '-U', '--output=json', vm!.spec!.disks[0]!.path])).stdout) as { 'backing-filename'?: string };
    expect(info['backing-filename']).toBe(base);
    await verifiedOnB('ov1');
    process.stdout.write(`disks overlay ${JSON.stringify({ diskBytes: st.diskTransferredBytes, overlayBytes, chainAllocated: st.diskAllocatedBytes, baseData: 16 * MiB })}\n`);
  }, 240_000);

  it('migrates a disk-booted VM with no migd workload: checked from the host on the destination (running, vCPUs, I/O, disk digest)', async () => {
    // The boot sector, then 6 MiB of data the copy must carry, on a sparse 32 MiB LOCAL disk.
    const img = join(c.dir, 'a-local', 'fw2-boot.raw');
    await run('qemu-img', ['create', '-q', '-f', 'raw', img, String(32 * MiB)]);
    writeFileSync(img, bootSector(), { flag: 'r+' });
    await run('dd', ['if=/dev/urandom', `of=${img}`, 'bs=1M', 'count=6', 'seek=8', 'conv=notrunc', 'status=none']);
    await create('a', { ...guestSpec('fw2', { memoryMib: 128 }), workload: undefined, boot: BootSource.BOOT_SOURCE_DISK, disks: [disk({ id: 'boot', path: img })] });
    await waitConsole(c.clients['a']!, 'fw2', /migd-boot-ok/, 60_000);
    await startMigration(c, 'a', { runId: 'run-fw-1', vmName: 'fw2', destination: toB(), policy: policy({}) });
    const trace = await followMigration(c.clients['a']!, 'run-fw-1');
    expect(trace.result.error).toBeUndefined();
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    const checks = trace.result.stats?.checks ?? [];
    expect(checks.map((k) => [k.name, k.passed])).toEqual([['running', true], ['vcpus', true], ['io-errors', true], ['disk:boot', true]]);
    expect(checks.find((k) => k.name === 'disk:boot')?.detail).toMatch(/identical to the source at the switch-over: SHA-256 [0-9a-f]{16}… over 6\.\d MiB of data on both ends/);
    expect(checks.find((k) => k.name === 'vcpus')?.detail).toMatch(/ran \d+\.\d ms of CPU/);
    // What was checked is named in the result, and the guest runs on b from its copied disk.
    expect(trace.result.stats?.disksCopied).toBe(1);
    const { vm } = await c.clients['b']!.getVm({ name: 'fw2' });
    expect(vm?.state).toBe(VmState.VM_STATE_RUNNING);
    const target = vm!.spec!.disks[0]!.path;
    expect(target).toBe(join(bLocal, 'disks', 'fw2', 'boot.raw'));
    // Independently of the nodes' digests: the guest-visible contents are equal.
    expect((await run('qemu-img', ['compare', '-U', '-f', 'raw', '-F', 'raw', img, target])).stdout).toMatch(/identical/);
    process.stdout.write(`disks fw-boot checks ${JSON.stringify(checks)}\n`);
  }, 240_000);

  it('a cancel during the storage copy: the source runs on, no VM, export or image is left on the destination', async () => {
    await create('a', diskGuest('cancel1', [await localDisk('cancel1', 24)], MiB));
    await waitConsole(c.clients['a']!, 'cancel1', /dpass n=[1-9]/, 90_000);
    await c.tb.shape('a', { rateMbit: 16 }); // 24 MiB take ~12 s
    await startMigration(c, 'a', { runId: 'run-cancel-1', vmName: 'cancel1', destination: toB(), policy: policy({}) });
    let cancelled = false;
    const trace = await followMigration(c.clients['a']!, 'run-cancel-1', async (u) => {
      if (!cancelled && u.update?.$case === 'progress' && u.update.value.storagePhase && (u.update.value.diskTransferredBytes ?? 0) > MiB) {
        cancelled = true;
        await c.clients['a']!.cancelMigration({ runId: 'run-cancel-1', actor: 'test', reason: 'cancel during the mirror' });
      }
    });
    expect(cancelled).toBe(true);
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_CANCELLED);
    expect(trace.states).not.toContain(MigrationState.MIGRATION_STATE_SETUP);
    const { vm } = await c.clients['a']!.getVm({ name: 'cancel1' });
    expect(vm?.state).toBe(VmState.VM_STATE_RUNNING);
    expect((await c.clients['b']!.listVms({})).vms.map((v) => v.spec?.name)).not.toContain('cancel1');
    expect(bTargets('cancel1')).toEqual([]);
    // No QEMU of it on b (whose NBD server held the export): only the source's is left.
    await waitFor(async () => (await qemuPidsMatching(vm!.spec!.uuid)).length === 1, 20_000, 'only the source QEMU of cancel1');
    expect(await qemuPidsMatching(vm!.spec!.uuid)).toEqual([vm!.pid]);
    // The source writes on, and can migrate again (no mirror or NBD node left behind).
    await c.tb.unshape('a');
    await startMigration(c, 'a', { runId: 'run-cancel-2', vmName: 'cancel1', destination: toB(), policy: policy({}) });
    expect((await followMigration(c.clients['a']!, 'run-cancel-2')).result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
  }, 240_000);

  it('a cancel while StartMigration prepares the destination: CANCELLED, no copy or stream starts, nothing is left on the destination', async () => {
    await create('a', diskGuest('cancel3', [await localDisk('cancel3', 8)], MiB));
    await waitConsole(c.clients['a']!, 'cancel3', /dpass n=[1-9]/, 90_000);
    const { vm: src } = await c.clients['a']!.getVm({ name: 'cancel3' });
    const uuid = src!.spec!.uuid;
    await c.clients['b']!.expectIncoming({ runId: 'run-cancel-3', sourceNodeId: c.nodes['a']!.nodeId, vmName: 'cancel3' });
    const starting = c.clients['a']!.startMigration({ runId: 'run-cancel-3', vmName: 'cancel3', destination: toB(), policy: policy({}) });
    // Cancelled as soon as node a knows the run (NOT_FOUND before): b is being prepared then (its
    // QEMU started, the target image created and exported), which takes far longer than a call.
    for (;;) {
      const known = await c.clients['a']!.cancelMigration({ runId: 'run-cancel-3', actor: 'test', reason: 'cancel while starting' }).then(
        () => true,
        (e: unknown) => ((e as { code?: string }).code === 'NOT_FOUND' ? false : Promise.reject(e)),
      );
      if (known) break;
      await sleep(2);
    }
    // StartMigration answered after the cancel: the cancel came while the run was starting.
    const started = (await starting).migration!;
    expect(MigrationState[started.state]).toBe('MIGRATION_STATE_CANCELLING');
    const { result } = await followMigration(c.clients['a']!, 'run-cancel-3', undefined, 60_000);
    expect({ state: MigrationState[result.state], error: result.error }).toEqual({ state: 'MIGRATION_STATE_CANCELLED', error: undefined });
    // Nothing was streamed, the source's QEMU runs on, and b holds nothing of the run.
    expect(result.lastProgress?.transferredBytes ?? 0).toBe(0);
    const { vm } = await c.clients['a']!.getVm({ name: 'cancel3' });
    expect(vm?.state).toBe(VmState.VM_STATE_RUNNING);
    expect((await c.clients['b']!.listVms({})).vms.map((v) => v.spec?.name)).not.toContain('cancel3');
    await waitFor(async () => (await qemuPidsMatching(uuid)).length === 1, 20_000, 'only the source QEMU of cancel3');
    expect(await qemuPidsMatching(uuid)).toEqual([src!.pid]);
    expect(bTargets('cancel3')).toEqual([]);
    // No mirror or NBD node left on the source: it migrates afterwards.
    await startMigration(c, 'a', { runId: 'run-cancel-4', vmName: 'cancel3', destination: toB(), policy: policy({}) });
    expect(MigrationState[(await followMigration(c.clients['a']!, 'run-cancel-4')).result.state]).toBe('MIGRATION_STATE_SUCCEEDED');
  }, 240_000);

  it('a link cut during the storage copy fails the run with a clear error; the source runs on, no image, export or QEMU is left on the destination', async () => {
    await create('a', diskGuest('cut1', [await localDisk('cut1', 24)], MiB));
    await waitConsole(c.clients['a']!, 'cut1', /dpass n=[1-9]/, 90_000);
    const { vm: src } = await c.clients['a']!.getVm({ name: 'cut1' });
    const uuid = src!.spec!.uuid;
    await c.tb.shape('a', { rateMbit: 16 }); // 24 MiB take ~12 s
    await startMigration(c, 'a', { runId: 'run-cut-1', vmName: 'cut1', destination: toB(), policy: policy({}) });
    let cut = false;
    let during: { qemus: number; targets: string[] } | undefined;
    const trace = await followMigration(c.clients['a']!, 'run-cut-1', async (u) => {
      if (!cut && u.update?.$case === 'progress' && u.update.value.storagePhase && (u.update.value.diskTransferredBytes ?? 0) > MiB) {
        cut = true;
        // What must be gone afterwards is there now: b's incoming QEMU (its NBD server exports the
        // target) next to the source's, and the target image.
        during = { qemus: (await qemuPidsMatching(uuid)).length, targets: bTargets('cut1') };
        await c.tb.cut('a', { network: 'migration' }); // no reset: packets vanish
      }
    });
    expect(cut).toBe(true);
    expect(during).toEqual({ qemus: 2, targets: ['d0.raw'] });
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_FAILED);
    expect(trace.states).not.toContain(MigrationState.MIGRATION_STATE_SETUP); // the memory stream never started
    // A clear error: what stalled, for how long, what is presumed, and where the guest runs.
    expect(trace.result.error).toMatchObject({ reason: 'STORAGE_COPY_STALLED' });
    expect(trace.result.error?.message).toMatch(/^the storage copy failed: the storage copy made no progress for \d+ ms \(\d+ of \d+ bytes\): the link to the destination is presumed down; the guest keeps running on the source$/);
    // The source runs on, the same QEMU, its guest still verifying its memory with 0 errors.
    const { vm } = await c.clients['a']!.getVm({ name: 'cut1' });
    expect(vm?.state).toBe(VmState.VM_STATE_RUNNING);
    expect(vm?.pid).toBe(src!.pid);
    const before = (await waitForGuest(c.clients['a']!, 'cut1', 1)).at(-1)!.pagesVerified;
    const after = await waitForGuest(c.clients['a']!, 'cut1', 1, 60_000, (g) => g.pagesVerified > before);
    expect(after.at(-1)!.integrityErrors).toBe(0);
    // Nothing of the run on b: no VM, no QEMU (whose NBD server held the export), no image. The
    // cut is still in place: b removed it on the source's word over the management network.
    expect((await c.clients['b']!.listVms({})).vms.map((v) => v.spec?.name)).not.toContain('cut1');
    await waitFor(async () => (await qemuPidsMatching(uuid)).length === 1, 20_000, 'only the source QEMU of cut1');
    expect(await qemuPidsMatching(uuid)).toEqual([src!.pid]);
    expect(bTargets('cut1')).toEqual([]);
    // Once the link is back, it migrates (no mirror or NBD node left on the source), and the
    // guest verifies every block of its disk on b.
    await c.tb.restore('a', { network: 'migration' });
    await c.tb.unshape('a');
    await startMigration(c, 'a', { runId: 'run-cut-2', vmName: 'cut1', destination: toB(), policy: policy({}) });
    const again = await followMigration(c.clients['a']!, 'run-cut-2');
    expect(again.result.error).toBeUndefined();
    expect(again.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    await verifiedOnB('cut1');
  }, 300_000);

  it('write-blocking copy: a guest writing faster than the link is mirrored synchronously, the copy converges and the disk matches', async () => {
    // 8 MiB/s of guest writes over a 24 Mbit/s (3 MB/s) link: a background mirror would chase
    // them; in write-blocking mode each write waits for the destination, so the guest slows to the
    // link's pace and the copy converges.
    await create('a', diskGuest('wb1', [await localDisk('wb1', 8)], 8 * MiB));
    await waitConsole(c.clients['a']!, 'wb1', /dpass n=[2-9]/, 90_000);
    await c.tb.shape('a', { rateMbit: 24 });
    await startMigration(c, 'a', { runId: 'run-wb-1', vmName: 'wb1', destination: toB(), policy: policy({ storageWriteBlocking: true, downtimeLimitMs: 2000 }) });
    // The storage copy runs and converges on the slow link. Once the memory stream starts, the
    // link is unshaped: what is tested (the copy converging although the guest outwrites the link)
    // is done then, and the memory phase sharing 3 MB/s with the synchronous writes took ~30 s.
    let storageSeen = false;
    let unshapedAfterStorage = false;
    const trace = await followMigration(c.clients['a']!, 'run-wb-1', async (u) => {
      if (u.update?.$case !== 'progress') return;
      if (u.update.value.storagePhase === true) storageSeen = true;
      else if (storageSeen && !unshapedAfterStorage) {
        unshapedAfterStorage = true;
        await c.tb.unshape('a');
      }
    }, 200_000);
    expect(trace.result.error).toBeUndefined();
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(storageSeen).toBe(true);
    const st = trace.result.stats!;
    expect(st.disksCopied).toBe(1);
    expect(st.diskTransferredBytes ?? 0).toBeGreaterThanOrEqual(8 * MiB);
    expect(st.integrityErrors).toBe(0);
    // The guest verifies every block of its disk on b: what it wrote during the copy is there.
    await verifiedOnB('wb1');
    process.stdout.write(`disks write-blocking ${JSON.stringify({ diskBytes: st.diskTransferredBytes, storageMs: st.storageMs, downtimeMs: st.downtimeMs, totalMs: st.totalTimeMs })}\n`);
  }, 240_000);

  it('a source node-daemon restart during the storage copy: the run fails cleanly, the guest runs once, on the source, nothing is left', async () => {
    await create('a', diskGuest('rst1', [await localDisk('rst1', 24)], MiB));
    await waitConsole(c.clients['a']!, 'rst1', /dpass n=[1-9]/, 90_000);
    const uuid = (await c.clients['a']!.getVm({ name: 'rst1' })).vm!.spec!.uuid;
    await c.tb.shape('a', { rateMbit: 16 }); // 24 MiB take ~12 s
    await startMigration(c, 'a', { runId: 'run-rst-1', vmName: 'rst1', destination: toB(), policy: policy({}) });
    // Into the storage phase, then SIGKILL the source's daemon (its QEMUs live on).
    const ac = new AbortController();
    for await (const u of c.clients['a']!.watchMigration({ runId: 'run-rst-1' }, { signal: ac.signal })) {
      if (u.update?.$case === 'progress' && u.update.value.storagePhase && (u.update.value.diskTransferredBytes ?? 0) > MiB) break;
      if (u.update?.$case === 'result') throw new Error(`the run ended before the kill: ${JSON.stringify(u.update.value.error)}`);
    }
    ac.abort();
    await c.nodes['a']!.kill();
    expect(await qemuPidsMatching(uuid)).toHaveLength(2); // the source and the incoming copy
    await c.restart('a');
    let info: Awaited<ReturnType<NodeClient['getMigration']>>['migration'];
    await waitFor(async () => {
      info = (await c.clients['a']!.getMigration({ runId: 'run-rst-1' }).catch(() => ({ migration: undefined }))).migration;
      return info !== undefined && [MigrationState.MIGRATION_STATE_FAILED, MigrationState.MIGRATION_STATE_SUCCEEDED, MigrationState.MIGRATION_STATE_CANCELLED].includes(info.state);
    }, 60_000, 'the run to end after the restart');
    expect(info!.state).toBe(MigrationState.MIGRATION_STATE_FAILED);
    expect(info!.error).toMatchObject({ reason: 'SOURCE_RESTARTED' });
    // One QEMU of the guest, the source's, running; the destination's copy, export and image gone.
    await waitFor(async () => (await qemuPidsMatching(uuid)).length === 1, 30_000, 'one QEMU of the VM');
    const { vm } = await c.clients['a']!.getVm({ name: 'rst1' });
    expect(vm?.state).toBe(VmState.VM_STATE_RUNNING);
    expect(await qemuPidsMatching(uuid)).toEqual([vm!.pid]);
    expect((await c.clients['b']!.listVms({})).vms.map((v) => v.spec?.name)).not.toContain('rst1');
    expect(bTargets('rst1')).toEqual([]);
    await waitConsole(c.clients['a']!, 'rst1', /dverify blocks=[1-9]\d* errors=0/, 60_000);
    // No mirror job or NBD node left on the source: the same disks migrate again.
    await c.tb.unshape('a');
    await startMigration(c, 'a', { runId: 'run-rst-2', vmName: 'rst1', destination: toB(), policy: policy({}) });
    const again = await followMigration(c.clients['a']!, 'run-rst-2');
    expect(again.result.error).toBeUndefined();
    expect(again.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    await verifiedOnB('rst1');
  }, 240_000);

  it('refuses with RESOURCE_EXHAUSTED, before anything starts, when the destination lacks the space', async () => {
    await create('a', diskGuest('big1', [await localDisk('big1', 96, 128)], MiB));
    await waitConsole(c.clients['a']!, 'big1', /dstart/, 90_000);
    const err = (await startMigration(c, 'a', { runId: 'run-big-1', vmName: 'big1', destination: toB(), policy: policy({}) }).then(() => undefined, (e: unknown) => e)) as { code?: string; reason?: string } | undefined;
    expect(err).toMatchObject({ code: 'RESOURCE_EXHAUSTED', reason: 'INSUFFICIENT_STORAGE' });
    const { vm } = await c.clients['a']!.getVm({ name: 'big1' });
    expect(vm?.state).toBe(VmState.VM_STATE_RUNNING);
    expect((await c.clients['b']!.listVms({})).vms.map((v) => v.spec?.name)).not.toContain('big1');
    expect(bTargets('big1')).toEqual([]);
  }, 120_000);
});
