import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../services/shared/errors.js';
import { diskArgs, buildQemuArgs, vmPaths } from '../../../services/node/vm/cmdline.js';
import { guestDeviceOf, normalizeDisks, normalizeVmSpec } from '../../../services/node/vm/spec.js';

describe('normalizeDisks', () => {
  it('defaults format raw, bus virtio-blk, cache writeback, aio threads, storage local', () => {
    expect(normalizeDisks([{ id: 'd0', path: '/srv/d0.raw' }])).toEqual([
      { id: 'd0', path: '/srv/d0.raw', format: 'raw', bus: 'virtio-blk', cache: 'writeback', aio: 'threads', readOnly: false, serial: undefined, storage: 'local', basePath: undefined },
    ]);
  });

  it.each([
    [[{ id: 'd0', path: 'rel.raw' }], /absolute/],
    [[{ id: 'd0', path: '' }], /absolute|required/],
    [[{ id: 'D0', path: '/a' }], /id/],
    [[{ id: 'd0', path: '/a' }, { id: 'd0', path: '/b' }], /used by another disk/],
    [[{ id: 'd0', path: '/a' }, { id: 'd1', path: '/a' }], /used by another disk/],
    [[{ id: 'd0', path: '/a', aio: 'native' as const }], /O_DIRECT/],
    [[{ id: 'd0', path: '/a', serial: 'has space' }], /serial/],
    [[{ id: 'd0', path: '/a', format: 'vmdk' as never }], /format/],
    [[{ id: 'd0', path: '/a', basePath: '/b' }], /qcow2/],
  ])('refuses %j', (disks, msg) => {
    expect(() => normalizeDisks(disks)).toThrow(InvalidArgumentError);
    expect(() => normalizeDisks(disks)).toThrow(msg);
  });

  it('names guest devices per bus in order', () => {
    const d = normalizeDisks([{ id: 'a', path: '/a' }, { id: 'b', path: '/b', bus: 'virtio-scsi' }, { id: 'c', path: '/c' }]);
    expect([0, 1, 2].map((i) => guestDeviceOf(d, i))).toEqual(['/dev/vda', '/dev/sda', '/dev/vdb']);
  });

  it('boot from disk needs a disk and no kernel', () => {
    expect(() => normalizeVmSpec({ name: 'v', memoryMiB: 64, boot: 'disk' }, 'tcg')).toThrow(/needs a disk/);
    expect(() => normalizeVmSpec({ name: 'v', memoryMiB: 64, boot: 'disk', kernel: '/k', disks: [{ id: 'd0', path: '/a' }] }, 'tcg')).toThrow(/no kernel/);
  });
});

describe('diskArgs', () => {
  it('builds -blockdev (discard unmap, cache, aio, read-only) and -device per disk, one scsi controller, bootindex on the first', () => {
    const disks = normalizeDisks([
      { id: 'root', path: '/srv/a,b.qcow2', format: 'qcow2', cache: 'none', aio: 'native', serial: 'S1' },
      { id: 'data', path: '/srv/d.raw', bus: 'virtio-scsi', readOnly: true, cache: 'writethrough' },
    ]);
    const args = diskArgs(disks, true);
    expect(args[0]).toBe('-device');
    expect(args[1]).toBe('virtio-scsi-pci,id=scsi0');
    expect(JSON.parse(args[3]!)).toEqual({
      driver: 'qcow2', 'node-name': 'disk-root', discard: 'unmap', cache: { direct: true, 'no-flush': false }, 'read-only': false,
      file: { driver: 'file', filename: '/srv/a,b.qcow2', discard: 'unmap', aio: 'native', cache: { direct: true, 'no-flush': false }, 'read-only': false },
    });
    expect(args[5]).toBe('virtio-blk-pci,drive=disk-root,id=dev-root,write-cache=on,serial=S1,bootindex=1');
    expect(JSON.parse(args[7]!)).toMatchObject({ driver: 'raw', 'read-only': true, file: { 'read-only': true, cache: { direct: false } } });
    expect(args[9]).toBe('scsi-hd,bus=scsi0.0,drive=disk-data,id=dev-data,write-cache=off');
  });

  it('a firmware-booted VM has no -kernel and its disks on the command line', () => {
    const spec = normalizeVmSpec({ name: 'fw', memoryMiB: 64, boot: 'disk', disks: [{ id: 'd0', path: '/srv/d0.raw' }] }, 'tcg');
    const args = buildQemuArgs(spec, vmPaths('/state', 'fw'));
    expect(args).not.toContain('-kernel');
    expect(args).toContain('virtio-blk-pci,drive=disk-d0,id=dev-d0,write-cache=on,bootindex=1');
  });
});
