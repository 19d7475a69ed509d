/**
 * The QEMU command line, built purely from a `VmSpec` and the VM's folder. Everything the guest can
 * see (machine, CPU, RAM, devices, UUID) comes from the spec alone, so a migration source and its
 * `-incoming defer` destination built from the same spec have identical device models; only host
 * paths and the incoming flag differ.
 */
import { join } from 'node:path';
import { InvalidArgumentError } from '../../shared/errors.js';
import type { Disk, VmSpec } from './spec.js';

/** Files of one VM under `<stateDir>/vms/<name>/`. */
export interface VmPaths {
  readonly dir: string;
  readonly qmpSocket: string;
  readonly serialSocket: string;
  readonly serialLog: string;
  readonly pidFile: string;
  readonly record: string;
  readonly qemuLog: string;
  /** Backing file of guest RAM (memoryBackend `file` only). */
  readonly ramFile: string;
}

/** QEMU's seccomp filter for every VM: obsolete system calls, privilege changes, exec and resource control denied. */
export const SANDBOX = 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny';

/** Longest unix socket path (sun_path is 108 bytes with the terminating NUL). */
export const MAX_SOCKET_PATH = 107;

export function vmPaths(stateDir: string, name: string): VmPaths {
  const dir = join(stateDir, 'vms', name);
  return {
    dir,
    qmpSocket: join(dir, 'qmp.sock'),
    serialSocket: join(dir, 'serial.sock'),
    serialLog: join(dir, 'serial.log'),
    pidFile: join(dir, 'qemu.pid'),
    record: join(dir, 'vm.json'),
    qemuLog: join(dir, 'qemu.log'),
    ramFile: join(dir, 'ram'),
  };
}

export interface BuildOptions {
  /** Start as a migration destination waiting for `migrate-incoming` (`-incoming defer`). */
  readonly incoming?: boolean;
  /** Do not start the vCPUs (`-S`): the VM waits for `cont`. */
  readonly paused?: boolean;
}

/**
 * QEMU option values are comma-separated: a literal comma is written twice. The legacy `-qmp unix:`
 * syntax has no escape at all, so paths with commas are refused outright.
 */
function optValue(v: string): string {
  return v.replaceAll(',', ',,');
}

/**
 * The argv (without the binary) for `spec` living in `paths`.
 * @throws InvalidArgumentError when a path contains a comma or a socket path is too long.
 */
export function buildQemuArgs(spec: VmSpec, paths: VmPaths, options: BuildOptions = {}): string[] {
  if (paths.dir.includes(',')) {
    throw new InvalidArgumentError(`state path ${paths.dir} contains a comma, which QEMU's -qmp syntax cannot express`);
  }
  for (const sock of [paths.qmpSocket, paths.serialSocket]) {
    if (Buffer.byteLength(sock) > MAX_SOCKET_PATH) {
      throw new InvalidArgumentError(`socket path ${sock} is longer than ${MAX_SOCKET_PATH} bytes; use a shorter state dir`);
    }
  }

  const fileRam = spec.memoryBackend === 'file';
  const args: string[] = [
    '-name', spec.name,
    '-uuid', spec.uuid,
    '-nodefaults',
    '-no-user-config',
    '-display', 'none',
    '-machine', fileRam ? `${spec.machine},memory-backend=ram0` : spec.machine,
    '-accel', spec.accel,
    '-cpu', spec.cpuModel,
    '-m', `${spec.memoryMiB}M`,
    '-smp', String(spec.vcpus),
  ];
  if (fileRam) {
    args.push('-object', `memory-backend-file,id=ram0,size=${spec.memoryMiB}M,mem-path=${optValue(paths.ramFile)},share=on`);
  }
  if (spec.kernel !== undefined) args.push('-kernel', spec.kernel);
  if (spec.initrd !== undefined) args.push('-initrd', spec.initrd);
  if (spec.append !== undefined) args.push('-append', spec.append);
  args.push(...diskArgs(spec.disks ?? [], spec.boot === 'disk'));
  args.push(
    // Serial console: a socket for live readers plus a logfile that keeps every byte even while
    // no reader is connected (QEMU drops socket output with nobody attached).
    '-chardev',
    `socket,id=console0,path=${optValue(paths.serialSocket)},server=on,wait=off,logfile=${optValue(paths.serialLog)},logappend=on`,
    '-device', 'isa-serial,chardev=console0,id=serial0',
    '-qmp', `unix:${paths.qmpSocket},server=on,wait=off`,
    '-pidfile', paths.pidFile,
    // Timestamps on QEMU's own stderr lines (qemu.log), for post-mortems.
    '-msg', 'timestamp=on',
    // QEMU runs as root (post-copy needs userfaultfd, which an unprivileged QEMU lacks while
    // vm.unprivileged_userfaultfd=0), so confine it: no exec (an `exec:` migration URI or a
    // compromised device model cannot start a shell), no setuid/setgid, no scheduler or
    // resource-limit changes. `-run-with user=` would drop root too, but it cannot be combined
    // with elevateprivileges=deny (SIGSYS) and loses post-copy here (see FACTS.md).
    '-sandbox', SANDBOX,
  );
  args.push(...nicArgs(spec));
  if (options.paused === true) args.push('-S');
  if (options.incoming === true) args.push('-incoming', 'defer');
  return args;
}

/** QEMU's node name of a disk's format layer (also its NBD export name during a storage copy). */
export function diskNodeName(id: string): string {
  return `disk-${id}`;
}

/** QEMU's id of a disk's guest device. */
export function diskDeviceId(id: string): string {
  return `dev-${id}`;
}

/** cache=… as libvirt maps it: O_DIRECT (`direct`), flushes ignored (`no-flush`), the device's write cache. */
function cacheOf(d: Disk): { direct: boolean; noFlush: boolean; writeCache: boolean } {
  switch (d.cache) {
    case 'none':
      return { direct: true, noFlush: false, writeCache: true };
    case 'writethrough':
      return { direct: false, noFlush: false, writeCache: false };
    case 'directsync':
      return { direct: true, noFlush: false, writeCache: false };
    case 'unsafe':
      return { direct: false, noFlush: true, writeCache: true };
    default:
      return { direct: false, noFlush: false, writeCache: true };
  }
}

/**
 * `-blockdev` (file + format node, `discard: unmap` so a storage copy keeps sparse regions
 * sparse) and `-device` per disk, in order; one virtio-scsi controller when any disk needs it.
 * Node and device names come from the disk id only, so both ends of a migration agree.
 */
export function diskArgs(disks: readonly Disk[], bootFromDisk: boolean): string[] {
  const args: string[] = [];
  if (disks.some((d) => d.bus === 'virtio-scsi')) args.push('-device', 'virtio-scsi-pci,id=scsi0');
  disks.forEach((d, i) => {
    const c = cacheOf(d);
    const cache = { direct: c.direct, 'no-flush': c.noFlush };
    const file = { driver: 'file', filename: d.path, discard: 'unmap', aio: d.aio, cache, 'read-only': d.readOnly };
    args.push('-blockdev', JSON.stringify({ driver: d.format, 'node-name': diskNodeName(d.id), discard: 'unmap', cache, 'read-only': d.readOnly, file }));
    const props = [
      d.bus === 'virtio-blk' ? 'virtio-blk-pci' : 'scsi-hd,bus=scsi0.0',
      `drive=${diskNodeName(d.id)}`,
      `id=${diskDeviceId(d.id)}`,
      `write-cache=${c.writeCache ? 'on' : 'off'}`,
      ...(d.serial !== undefined ? [`serial=${optValue(d.serial)}`] : []),
      ...(bootFromDisk && i === 0 ? ['bootindex=1'] : []),
    ];
    args.push('-device', props.join(','));
  });
  return args;
}

/**
 * One virtio-net-pci card per NIC on the tap the node created for it. The MAC and the device ids
 * are guest-visible (the same on both ends of a migration); the tap is this host's own.
 */
export function nicArgs(spec: Pick<VmSpec, 'nics'>): string[] {
  return (spec.nics ?? []).flatMap((n, i) => [
    '-netdev', `tap,id=net${i},ifname=${n.tap},script=no,downscript=no`,
    '-device', `virtio-net-pci,netdev=net${i},mac=${n.mac},id=nic${i}`,
  ]);
}
