/**
 * What this node can do, read once at start-up and reported to the coordinator: QEMU binary and
 * version, the accelerator `auto` resolves to, QEMU's migration capabilities and default
 * parameters, and host memory/CPUs.
 */
import { resolveAccel, type AccelDecision } from '../vm/accel.js';
import { probeQemuBinary, probeQemuMigration, type QemuBinary, type QemuMigrationSupport } from '../vm/qemu-binary.js';
import { hostFs, type HostFs } from './fs.js';
import { readHostInfo, type HostInfo } from './info.js';

export interface HostCapabilities {
  readonly qemu: QemuBinary;
  /** What `accel: auto` becomes here, and why. */
  readonly accel: AccelDecision;
  readonly migration: QemuMigrationSupport;
  readonly host: HostInfo;
}

/**
 * Probes the host (starts one throwaway QEMU for the migration capabilities).
 * @throws DependencyError when QEMU is missing or does not start.
 */
export async function probeHostCapabilities(
  options: { qemuBinary?: string; fs?: HostFs; signal?: AbortSignal } = {},
): Promise<HostCapabilities> {
  const fs = options.fs ?? hostFs();
  const qemu = await probeQemuBinary(options.qemuBinary);
  const [accel, migration, host] = await Promise.all([
    resolveAccel('auto', fs),
    probeQemuMigration(qemu.path, options.signal ? { signal: options.signal } : {}),
    readHostInfo(fs),
  ]);
  return { qemu, accel, migration, host };
}
