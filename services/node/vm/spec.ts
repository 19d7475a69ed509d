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
export function normalizeVmSpec(input: VmSpecInput, accel: Accel): VmSpec {
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
  if (input.accel !== undefined && input.accel !== 'auto' && input.accel !== accel) {
    throw new InvalidArgumentError(`accel ${input.accel} requested but ${accel} resolved`);
  }
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
  });
}
