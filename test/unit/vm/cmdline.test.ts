import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../services/shared/errors.js';
import { buildQemuArgs, vmPaths } from '../../../services/node/vm/cmdline.js';
import { DEFAULT_MACHINE, normalizeVmSpec, validateVmName, type VmSpecInput } from '../../../services/node/vm/spec.js';

const UUID = '6f1d2a8e-3c4b-4e5f-9a7b-1c2d3e4f5a6b';
const base: VmSpecInput = {
  name: 'vm1',
  memoryMiB: 256,
  kernel: '/srv/guest/vmlinux',
  initrd: '/srv/guest/initrd.cpio',
  append: 'console=ttyS0 quiet',
  uuid: UUID,
};

describe('validateVmName', () => {
  it.each(['a', 'vm1', 'VM_2.test-3', '0', 'x'.repeat(63)])('accepts %s', (n) => {
    expect(validateVmName(n)).toBe(n);
  });

  it.each(['', '-vm', '.hidden', '_x', 'a/b', '../etc', 'a,b', 'a b', 'vm\n', 'ü', 'x'.repeat(64), 42, undefined])(
    'refuses %j with InvalidArgumentError',
    (n) => {
      expect(() => validateVmName(n)).toThrow(InvalidArgumentError);
    },
  );
});

describe('normalizeVmSpec', () => {
  it('defaults vcpus, machine, cpu, backend; keeps the uuid (lower-cased) and freezes', () => {
    const s = normalizeVmSpec({ name: 'a', memoryMiB: 128, uuid: UUID.toUpperCase() }, 'tcg');
    expect(s).toEqual({
      name: 'a',
      memoryMiB: 128,
      vcpus: 1,
      machine: DEFAULT_MACHINE,
      accel: 'tcg',
      cpuModel: 'qemu64',
      kernel: undefined,
      initrd: undefined,
      append: undefined,
      uuid: UUID,
      memoryBackend: 'anonymous',
      disks: [],
      boot: 'kernel',
      nics: [],
    });
    expect(Object.isFrozen(s)).toBe(true);
    expect(DEFAULT_MACHINE).toBe('pc-i440fx-10.0');
  });

  it('generates a uuid when none is given', () => {
    expect(normalizeVmSpec({ name: 'a', memoryMiB: 128 }, 'tcg').uuid).toMatch(/^[0-9a-f-]{36}$/);
  });

  it.each<[string, Partial<VmSpecInput>, RegExp]>([
    ['memory too small', { memoryMiB: 8 }, /memoryMiB/],
    ['memory fractional', { memoryMiB: 128.5 }, /memoryMiB/],
    ['vcpus 0', { vcpus: 0 }, /vcpus/],
    ['relative kernel', { kernel: 'vmlinux' }, /kernel must be an absolute path/],
    ['initrd without kernel', { kernel: undefined, initrd: '/x' }, /need a kernel/],
    ['multi-line append', { append: 'a\nb' }, /append/],
    ['bad machine', { machine: 'pc;rm' }, /machine/],
    ['bad uuid', { uuid: 'nope' }, /uuid/],
    ['bad backend', { memoryBackend: 'hugepages' as 'file' }, /memoryBackend/],
    ['accel mismatch', { accel: 'kvm' }, /accel kvm requested but tcg resolved/],
  ])('refuses %s', (_what, patch, msg) => {
    expect(() => normalizeVmSpec({ ...base, ...patch }, 'tcg')).toThrow(InvalidArgumentError);
    expect(() => normalizeVmSpec({ ...base, ...patch }, 'tcg')).toThrow(msg);
  });
});

describe('buildQemuArgs', () => {
  const spec = normalizeVmSpec(base, 'tcg');
  const paths = vmPaths('/var/lib/migd', 'vm1');

  it('produces the documented argv for a typical VM', () => {
    expect(buildQemuArgs(spec, paths)).toEqual([
      '-name', 'vm1',
      '-uuid', UUID,
      '-nodefaults',
      '-no-user-config',
      '-display', 'none',
      '-machine', 'pc-i440fx-10.0',
      '-accel', 'tcg',
      '-cpu', 'qemu64',
      '-m', '256M',
      '-smp', '1',
      '-kernel', '/srv/guest/vmlinux',
      '-initrd', '/srv/guest/initrd.cpio',
      '-append', 'console=ttyS0 quiet',
      '-chardev', 'socket,id=console0,path=/var/lib/migd/vms/vm1/serial.sock,server=on,wait=off,logfile=/var/lib/migd/vms/vm1/serial.log,logappend=on',
      '-device', 'isa-serial,chardev=console0,id=serial0',
      '-qmp', 'unix:/var/lib/migd/vms/vm1/qmp.sock,server=on,wait=off',
      '-pidfile', '/var/lib/migd/vms/vm1/qemu.pid',
      '-msg', 'timestamp=on',
      '-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
    ]);
  });

  it('gives source and destination identical device models: only host paths and -incoming defer differ', () => {
    const src = buildQemuArgs(spec, vmPaths('/var/lib/migd-a', 'vm1'));
    const dst = buildQemuArgs(spec, vmPaths('/srv/node-b/state', 'vm1'), { incoming: true });
    expect(dst.slice(-2)).toEqual(['-incoming', 'defer']);
    const normalize = (argv: string[], root: string): string[] => argv.map((a) => a.replaceAll(root, '<state>'));
    expect(normalize(dst.slice(0, -2), '/srv/node-b/state')).toEqual(normalize(src, '/var/lib/migd-a'));
  });

  it('adds -S for a paused start', () => {
    expect(buildQemuArgs(spec, paths, { paused: true })).toContain('-S');
    expect(buildQemuArgs(spec, paths)).not.toContain('-S');
  });

  it('uses a shared memory-backend-file only when asked', () => {
    const plain = buildQemuArgs(spec, paths);
    expect(plain.join(' ')).not.toMatch(/memory-backend/);
    const file = buildQemuArgs(normalizeVmSpec({ ...base, memoryBackend: 'file' }, 'tcg'), paths);
    expect(file).toContain('pc-i440fx-10.0,memory-backend=ram0');
    expect(file).toContain('memory-backend-file,id=ram0,size=256M,mem-path=/var/lib/migd/vms/vm1/ram,share=on');
    expect(file[file.indexOf('-m') + 1]).toBe('256M');
  });

  it('boots the firmware only when there is no kernel', () => {
    const argv = buildQemuArgs(normalizeVmSpec({ name: 'fw', memoryMiB: 128, uuid: UUID }, 'kvm'), vmPaths('/s', 'fw'));
    expect(argv).not.toContain('-kernel');
    expect(argv[argv.indexOf('-accel') + 1]).toBe('kvm');
  });

  it('refuses state paths QEMU cannot express or the kernel cannot bind', () => {
    expect(() => buildQemuArgs(spec, vmPaths('/var/lib/a,b', 'vm1'))).toThrow(/comma/);
    expect(() => buildQemuArgs(spec, vmPaths('/' + 'x'.repeat(100), 'vm1'))).toThrow(/longer than 107 bytes/);
  });

  it('plugs each NIC into its own tap with the MAC; only host paths and taps differ between nodes', () => {
    const nics = [{ mac: '52:54:00:00:00:01', network: 'lan' }, { mac: '52:54:00:00:00:02', network: 'lan' }];
    const at = (bridge: string, prefix: string) => normalizeVmSpec({ ...base, nics }, 'tcg', { networks: new Map([['lan', bridge]]), tap: (i) => `${prefix}${i}` });
    const a = at('br0', 'ta');
    expect(a.nics).toEqual([
      { mac: '52:54:00:00:00:01', network: 'lan', bridge: 'br0', tap: 'ta0' },
      { mac: '52:54:00:00:00:02', network: 'lan', bridge: 'br0', tap: 'ta1' },
    ]);
    const argv = buildQemuArgs(a, paths);
    expect(argv).toContain('tap,id=net0,ifname=ta0,script=no,downscript=no');
    expect(argv).toContain('virtio-net-pci,netdev=net1,mac=52:54:00:00:00:02,id=nic1');
    const b = buildQemuArgs(at('br-other', 'tb'), paths);
    expect(b.map((x) => x.replace(/ifname=tb/, 'ifname=ta'))).toEqual(argv);
  });

  it('refuses a NIC on a network the node does not have, and a MAC twice', () => {
    const place = { networks: new Map([['lan', 'br0']]), tap: (i: number) => `t${i}` };
    expect(() => normalizeVmSpec({ ...base, nics: [{ mac: '52:54:00:00:00:01', network: 'wan' }] }, 'tcg', place)).toThrow(/network "wan" is not on this node \(it has lan\)/);
    expect(() => normalizeVmSpec({ ...base, nics: [{ mac: '52:54:00:00:00:01', network: 'lan' }] }, 'tcg')).toThrow(/has no --network/);
    const twice = [{ mac: '52:54:00:00:00:01', network: 'lan' }, { mac: '52:54:00:00:00:01', network: 'lan' }];
    expect(() => normalizeVmSpec({ ...base, nics: twice }, 'tcg', place)).toThrow(InvalidArgumentError);
  });
});
