// The image builder's module handling (stress/image/modules.ts): modinfo parsing from an ELF64
// file and the dependency order /init loads modules in. The ELF is built here byte by byte, in the
// layout a kernel module has (section headers, .shstrtab, .modinfo), so no kernel is needed.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { moduleDepends, moduleLoadOrder, readModinfo, resolveModuleFiles } from '../../../stress/image/modules.js';

/** A minimal ELF64 LE file with a null section, .shstrtab and .modinfo holding `info`. */
function fakeModule(info: string[]): Buffer {
  const shstr = Buffer.from('\0.shstrtab\0.modinfo\0', 'latin1');
  const modinfo = Buffer.from(info.map((s) => `${s}\0`).join(''), 'latin1');
  const shstrOff = 64;
  const modinfoOff = shstrOff + shstr.length;
  const shoff = Math.ceil((modinfoOff + modinfo.length) / 8) * 8;
  const buf = Buffer.alloc(shoff + 3 * 64);
  buf.writeUInt32BE(0x7f454c46, 0);
  buf[4] = 2; // ELFCLASS64
  buf[5] = 1; // little endian
  buf.writeBigUInt64LE(BigInt(shoff), 0x28);
  buf.writeUInt16LE(64, 0x3a);
  buf.writeUInt16LE(3, 0x3c);
  buf.writeUInt16LE(1, 0x3e);
  shstr.copy(buf, shstrOff);
  modinfo.copy(buf, modinfoOff);
  const sh = (i: number, name: number, off: number, size: number): void => {
    const at = shoff + i * 64;
    buf.writeUInt32LE(name, at);
    buf.writeBigUInt64LE(BigInt(off), at + 0x18);
    buf.writeBigUInt64LE(BigInt(size), at + 0x20);
  };
  sh(1, 1, shstrOff, shstr.length);
  sh(2, 11, modinfoOff, modinfo.length);
  return buf;
}

describe('guest kernel modules', () => {
  let dir: string | undefined;
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('reads depends= from .modinfo, and refuses what is not a module', () => {
    const info = readModinfo(fakeModule(['license=GPL', 'depends=virtio_ring,virtio_pci_modern_dev,virtio', 'name=virtio_pci', 'alias=a', 'alias=b']));
    expect(moduleDepends(info)).toEqual(['virtio_ring', 'virtio_pci_modern_dev', 'virtio']);
    expect(info.get('alias')).toEqual(['a', 'b']);
    expect(moduleDepends(readModinfo(fakeModule(['depends='])))).toEqual([]);
    expect(() => readModinfo(Buffer.from('not an elf at all, but long enough to have a header........................'))).toThrow(/not a little-endian ELF64/);
  });

  it('orders dependencies first, treats - and _ alike, and names a missing dependency or a cycle', () => {
    const deps: Record<string, string[]> = {
      virtio_ring: [],
      virtio: ['virtio_ring'],
      virtio_pci_modern_dev: [],
      virtio_pci: ['virtio_ring', 'virtio_pci_modern_dev', 'virtio'],
      virtio_blk: ['virtio', 'virtio_ring'],
      t10_pi: ['crc-t10dif'],
      crc_t10dif: [],
      sd_mod: ['t10-pi'],
    };
    expect(moduleLoadOrder(['virtio_pci', 'virtio_blk', 'sd_mod'], (k) => deps[k])).toEqual([
      'virtio_ring',
      'virtio_pci_modern_dev',
      'virtio',
      'virtio_pci',
      'virtio_blk',
      'crc_t10dif',
      't10_pi',
      'sd_mod',
    ]);
    expect(() => moduleLoadOrder(['virtio_net'], (k) => deps[k])).toThrow(/the kernel package has no module virtio_net/);
    expect(() => moduleLoadOrder(['a'], (k) => ({ a: ['b'] })[k])).toThrow(/module a depends on b, which the kernel package does not have/);
    expect(() => moduleLoadOrder(['a'], (k) => ({ a: ['b'], b: ['a'] })[k])).toThrow(/cycle: a -> b -> a/);
  });

  it('finds the closure of the roots in an unpacked module tree', async () => {
    dir = await mkdtemp(join(tmpdir(), 'migd-modules-'));
    const tree = join(dir, '6.1.0-test');
    await mkdir(join(tree, 'kernel/drivers/virtio'), { recursive: true });
    await mkdir(join(tree, 'kernel/drivers/net'), { recursive: true });
    await writeFile(join(tree, 'kernel/drivers/virtio/virtio_ring.ko'), fakeModule(['depends=']));
    await writeFile(join(tree, 'kernel/drivers/virtio/virtio.ko'), fakeModule(['depends=virtio_ring']));
    await writeFile(join(tree, 'kernel/drivers/net/net_failover.ko'), fakeModule(['depends=failover']));
    await writeFile(join(tree, 'kernel/drivers/net/failover.ko'), fakeModule(['depends=']));
    await writeFile(join(tree, 'kernel/drivers/net/virtio_net.ko'), fakeModule(['depends=virtio_ring,virtio,net_failover']));
    await writeFile(join(tree, 'kernel/drivers/net/unrelated.ko'), Buffer.from('never read'));
    const files = await resolveModuleFiles(tree, ['virtio_net']);
    expect(files.map((f) => f.name)).toEqual(['virtio_ring', 'virtio', 'failover', 'net_failover', 'virtio_net']);
    expect(files[4]?.sha256).toMatch(/^[0-9a-f]{64}$/);
    await expect(resolveModuleFiles(tree, ['virtio_blk'])).rejects.toThrow(/no module virtio_blk/);
  });
});
