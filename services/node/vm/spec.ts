/**
 * VM specs: what a caller asks for (`VmSpecInput`) and the validated, fully defaulted, frozen form
 * (`VmSpec`) that the command-line builder consumes and `vm.json` records. A migration destination
 * is created from the source's `VmSpec` as is, which is what keeps both device models identical.
 */
import { randomUUID } from 'node:crypto';
import { isAbsolute } from 'node:path';
import { InvalidArgumentError } from '../../shared/errors.js';
import type { Accel, AccelRequest } from './accel.js';

/** Names become directory names and QEMU option values: no path characters, no commas. */
export const VM_NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
/** The default machine type; both ends of a migration must use the same explicit one. */
export const DEFAULT_MACHINE = 'pc-i440fx-10.0';
/** Default CPU model: explicit so both ends agree (QEMU's default differs between accelerators). */
export const DEFAULT_CPU_MODEL = 'qemu64';

export type MemoryBackend = 'anonymous' | 'file';

export type DiskFormat = 'raw' | 'qcow2';
export type DiskBus = 'virtio-blk' | 'virtio-scsi';
/** libvirt's cache modes: `none` and `directsync` open the image with O_DIRECT. */
export type DiskCache = 'none' | 'writeback' | 'writethrough' | 'directsync' | 'unsafe';
export type DiskAio = 'threads' | 'native' | 'io_uring';
export type StorageMode = 'shared' | 'local';
export type BootSource = 'kernel' | 'disk';

/** Disk ids name QEMU nodes and devices: short, lowercase, no separators QEMU interprets. */
export const DISK_ID_PATTERN = /^[a-z][a-z0-9_-]{0,30}$/;
const DISK_SERIAL_PATTERN = /^[A-Za-z0-9_.-]{1,20}$/;

export interface DiskInput {
  /** `[a-z][a-z0-9_-]{0,30}`, unique within the VM. */
  readonly id: string;
  /** Absolute path of the image (confined to the node's storage roots by the daemon). */
  readonly path: string;
  /** Default `raw`. */
  readonly format?: DiskFormat;
  /** Default `virtio-blk`. */
  readonly bus?: DiskBus;
  /** Default `writeback` (QEMU's default). */
  readonly cache?: DiskCache;
  /** Default `threads`. */
  readonly aio?: DiskAio;
  /** Default false. */
  readonly readOnly?: boolean;
  readonly serial?: string;
  /** Default `local`. */
  readonly storage?: StorageMode;
  /** The overlay's base image, when the disk is a qcow2 overlay (recorded, for sync-top copies). */
  readonly basePath?: string;
}

export interface Disk {
  readonly id: string;
  readonly path: string;
  readonly format: DiskFormat;
  readonly bus: DiskBus;
  readonly cache: DiskCache;
  readonly aio: DiskAio;
  readonly readOnly: boolean;
  readonly serial: string | undefined;
  readonly storage: StorageMode;
  readonly basePath: string | undefined;
}

/** A network card as a caller asks for it: the MAC (already checked, see shared/nics.ts) and the network. */
export interface NicInput {
  readonly mac: string;
  readonly network: string;
}

/** A network card of a validated spec: where it plugs in on this host. */
export interface VmNic {
  readonly mac: string;
  readonly network: string;
  /** The bridge this node maps `network` to. */
  readonly bridge: string;
  /** The tap device the node creates on `bridge` for this card (host side, not guest-visible). */
  readonly tap: string;
}

/** How this node places cards: its network → bridge map and the tap name of card i. */
export interface NicPlacement {
  readonly networks: ReadonlyMap<string, string>;
  tap(index: number): string;
}

export interface VmSpecInput {
  /** `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}`. */
  readonly name: string;
  /** Guest RAM in MiB, 16…1048576. */
  readonly memoryMiB: number;
  /** Default 1. */
  readonly vcpus?: number;
  /** Default `pc-i440fx-10.0`. */
  readonly machine?: string;
  /** Default `auto` (resolved per host by the manager; the resolved value is recorded). */
  readonly accel?: AccelRequest | undefined;
  /** Default `qemu64`. */
  readonly cpuModel?: string;
  /** Absolute path of the guest kernel (bzImage or PVH-capable ELF vmlinux); none boots the firmware only. */
  readonly kernel?: string;
  /** Absolute path of the initrd; needs `kernel`. */
  readonly initrd?: string;
  /** Kernel command line; needs `kernel`. */
  readonly append?: string;
  /** SMBIOS UUID; default random. Kept across a migration. */
  readonly uuid?: string;
  /**
   * `anonymous` (default): plain QEMU RAM. `file`: a shared file `<vmdir>/ram`
   * (memory-backend-file, share=on), so tools outside QEMU can map guest memory (fault injection).
   * Part of the device model: both ends of a migration must agree.
   */
  readonly memoryBackend?: MemoryBackend;
  /** Disks, in attachment order. Default none. */
  readonly disks?: readonly DiskInput[];
  /** `kernel` (default): -kernel; `disk`: the firmware boots the first disk (no kernel allowed). */
  readonly boot?: BootSource;
  /** Network cards (virtio-net-pci), in guest PCI order. Default none. */
  readonly nics?: readonly NicInput[];
}

/** A validated spec. `accel` is resolved (never `auto`). */
export interface VmSpec {
  readonly name: string;
  readonly memoryMiB: number;
  readonly vcpus: number;
  readonly machine: string;
  readonly accel: Accel;
  readonly cpuModel: string;
  readonly kernel: string | undefined;
  readonly initrd: string | undefined;
  readonly append: string | undefined;
  readonly uuid: string;
  readonly memoryBackend: MemoryBackend;
  /** Absent in records written before disks existed: read with `spec.disks ?? []`. */
  readonly disks?: readonly Disk[];
  readonly boot?: BootSource;
  /** Guest-visible: the MACs and their order. Host-side: bridge and tap (may differ per node). */
  readonly nics: readonly VmNic[];
}

/**
 * @throws InvalidArgumentError when the name is not `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}`.
 */
export function validateVmName(name: unknown): string {
  if (typeof name !== 'string' || !VM_NAME_PATTERN.test(name)) {
    throw new InvalidArgumentError(
      `vm name ${JSON.stringify(name)} is invalid: use 1-63 characters [a-zA-Z0-9_.-], starting with a letter or digit`,
      { reason: 'VM_NAME_INVALID' },
    );
  }
  return name;
}

function intIn(field: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new InvalidArgumentError(`${field} must be an integer in ${min}..${max}, got ${String(v)}`);
  }
  return v;
}

function absPath(field: string, v: string | undefined): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !isAbsolute(v) || v.includes('\0') || v.includes('\n')) {
    throw new InvalidArgumentError(`${field} must be an absolute path, got ${JSON.stringify(v)}`);
  }
  return v;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Validates and defaults a spec. `accel` must already be resolved (the manager does that).
 * @throws InvalidArgumentError naming the offending field.
 */
export function normalizeVmSpec(input: VmSpecInput, accel: Accel, placement?: NicPlacement): VmSpec {
  const name = validateVmName(input.name);
  const memoryMiB = intIn('memoryMiB', input.memoryMiB, 16, 1 << 20);
  const vcpus = intIn('vcpus', input.vcpus ?? 1, 1, 255);
  const machine = input.machine ?? DEFAULT_MACHINE;
  if (typeof machine !== 'string' || !/^[a-z0-9][a-z0-9._-]{0,63}$/.test(machine)) {
    throw new InvalidArgumentError(`machine ${JSON.stringify(machine)} is not a machine type name`);
  }
  const cpuModel = input.cpuModel ?? DEFAULT_CPU_MODEL;
  if (typeof cpuModel !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.,=+-]{0,255}$/.test(cpuModel)) {
    throw new InvalidArgumentError(`cpuModel ${JSON.stringify(cpuModel)} is not a CPU model`);
  }
  const kernel = absPath('kernel', input.kernel);
  const initrd = absPath('initrd', input.initrd);
  const append = input.append;
  if (append !== undefined && (typeof append !== 'string' || /[\0\n]/.test(append))) {
    throw new InvalidArgumentError('append must be a single-line string');
  }
  if (kernel === undefined && (initrd !== undefined || append !== undefined)) {
    throw new InvalidArgumentError('initrd and append need a kernel');
  }
  const uuid = input.uuid ?? randomUUID();
  if (!UUID.test(uuid)) throw new InvalidArgumentError(`uuid ${JSON.stringify(uuid)} is not a UUID`);
  const memoryBackend = input.memoryBackend ?? 'anonymous';
  if (memoryBackend !== 'anonymous' && memoryBackend !== 'file') {
    throw new InvalidArgumentError(`memoryBackend must be 'anonymous' or 'file', got ${JSON.stringify(memoryBackend)}`);
  }
  const disks = normalizeDisks(input.disks ?? []);
  const boot = input.boot ?? 'kernel';
  if (boot !== 'kernel' && boot !== 'disk') throw new InvalidArgumentError(`boot must be 'kernel' or 'disk', got ${JSON.stringify(boot)}`);
  if (boot === 'disk' && kernel !== undefined) throw new InvalidArgumentError('boot from disk takes no kernel (the firmware boots the first disk)');
  if (boot === 'disk' && disks.length === 0) throw new InvalidArgumentError('boot from disk needs a disk', { reason: 'NO_BOOT_DISK' });
  if (input.accel !== undefined && input.accel !== 'auto' && input.accel !== accel) {
    throw new InvalidArgumentError(`accel ${input.accel} requested but ${accel} resolved`);
  }
  const nics = placeNics(input.nics ?? [], placement);
  return Object.freeze({
    name,
    memoryMiB,
    vcpus,
    machine,
    accel,
    cpuModel,
    kernel,
    initrd,
    append,
    uuid: uuid.toLowerCase(),
    memoryBackend,
    disks,
    boot,
    nics,
  });
}

function oneOf<T extends string>(field: string, v: unknown, allowed: readonly T[], dflt: T): T {
  if (v === undefined) return dflt;
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) {
    throw new InvalidArgumentError(`${field} must be one of ${allowed.join(', ')}, got ${JSON.stringify(v)}`, { reason: 'DISK_INVALID' });
  }
  return v as T;
}

/**
 * Validates and defaults the disks (paths must be absolute and unique, ids unique). Whether a path
 * may be used on this node is the daemon's check (confine.ts), not this pure one.
 * @throws InvalidArgumentError (reason DISK_INVALID, DISK_DUPLICATE) naming the disk
 */
export function normalizeDisks(input: readonly DiskInput[]): Disk[] {
  if (!Array.isArray(input)) throw new InvalidArgumentError('disks must be a list');
  if (input.length > 16) throw new InvalidArgumentError(`at most 16 disks, got ${input.length}`, { reason: 'DISK_INVALID' });
  const ids = new Set<string>();
  const paths = new Set<string>();
  return input.map((d, i) => {
    const at = `disks[${i}]`;
    if (typeof d.id !== 'string' || !DISK_ID_PATTERN.test(d.id)) {
      throw new InvalidArgumentError(`${at}.id ${JSON.stringify(d.id)} is invalid: use 1-31 characters [a-z0-9_-], starting with a letter`, { reason: 'DISK_INVALID' });
    }
    if (ids.has(d.id)) throw new InvalidArgumentError(`${at}.id ${d.id} is used by another disk`, { reason: 'DISK_DUPLICATE' });
    ids.add(d.id);
    const path = absPath(`${at}.path`, d.path);
    if (path === undefined || path === '') throw new InvalidArgumentError(`${at}.path is required`, { reason: 'DISK_INVALID' });
    if (paths.has(path)) throw new InvalidArgumentError(`${at}.path ${path} is used by another disk`, { reason: 'DISK_DUPLICATE' });
    paths.add(path);
    const cache = oneOf(`${at}.cache`, d.cache, ['none', 'writeback', 'writethrough', 'directsync', 'unsafe'] as const, 'writeback');
    const aio = oneOf(`${at}.aio`, d.aio, ['threads', 'native', 'io_uring'] as const, 'threads');
    if (aio === 'native' && cache !== 'none' && cache !== 'directsync') {
      throw new InvalidArgumentError(`${at}.aio native needs cache none or directsync (O_DIRECT)`, { reason: 'DISK_INVALID' });
    }
    if (d.serial !== undefined && (typeof d.serial !== 'string' || !DISK_SERIAL_PATTERN.test(d.serial))) {
      throw new InvalidArgumentError(`${at}.serial must be 1-20 characters [A-Za-z0-9_.-]`, { reason: 'DISK_INVALID' });
    }
    const format = oneOf(`${at}.format`, d.format, ['raw', 'qcow2'] as const, 'raw');
    const basePath = absPath(`${at}.basePath`, d.basePath);
    if (basePath !== undefined && format !== 'qcow2') throw new InvalidArgumentError(`${at}: only a qcow2 disk can be an overlay on a base image`, { reason: 'DISK_INVALID' });
    return Object.freeze({
      id: d.id,
      path,
      format,
      bus: oneOf(`${at}.bus`, d.bus, ['virtio-blk', 'virtio-scsi'] as const, 'virtio-blk'),
      cache,
      aio,
      readOnly: d.readOnly === true,
      serial: d.serial,
      storage: oneOf(`${at}.storage`, d.storage, ['shared', 'local'] as const, 'local'),
      basePath,
    });
  });
}

/**
 * The guest's device name of `disks[index]`: virtio-blk disks are /dev/vda, /dev/vdb… in order,
 * virtio-scsi disks /dev/sda… in order (one controller, one LUN each).
 */
export function guestDeviceOf(disks: readonly Pick<Disk, 'bus'>[], index: number): string {
  const bus = disks[index]?.bus;
  if (bus === undefined) throw new InvalidArgumentError(`no disk ${index}`);
  const nth = disks.slice(0, index).filter((d) => d.bus === bus).length;
  return `/dev/${bus === 'virtio-blk' ? 'vd' : 'sd'}${String.fromCharCode(97 + nth)}`;
}


/**
 * Maps each card's network to this node's bridge and names its tap.
 * @throws InvalidArgumentError (reason NETWORK_UNKNOWN) for a network this node does not have, or
 *   a MAC given twice.
 */
function placeNics(nics: readonly NicInput[], placement: NicPlacement | undefined): readonly VmNic[] {
  const macs = new Set<string>();
  return Object.freeze(
    nics.map((n, i) => {
      const bridge = placement?.networks.get(n.network);
      if (bridge === undefined) {
        const known = [...(placement?.networks.keys() ?? [])];
        throw new InvalidArgumentError(
          `nics[${i}]: network ${JSON.stringify(n.network)} is not on this node (${known.length ? `it has ${known.join(', ')}` : 'it has no --network'})`,
          { reason: 'NETWORK_UNKNOWN' },
        );
      }
      if (macs.has(n.mac)) throw new InvalidArgumentError(`nics[${i}]: MAC ${n.mac} is given twice`, { reason: 'MAC_DUPLICATE' });
      macs.add(n.mac);
      return Object.freeze({ mac: n.mac, network: n.network, bridge, tap: (placement as NicPlacement).tap(i) });
    }),
  );
}
