/**
 * The narrow window onto the host's /proc, /sys and /dev that host probing needs. Production reads
 * the real root; unit tests point it at a fake tree (e.g. a temp dir holding `sys/module/kvm_pvm`
 * and `proc/cpuinfo`), which is what lets them prove `accel=auto` picks TCG on a PVM host.
 */
import { constants } from 'node:fs';
import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface HostFs {
  /** The root this view reads from ('/' in production). */
  readonly root: string;
  /** Reads a host path such as `/proc/meminfo`. Rejects when it does not exist. */
  readFile(path: string): Promise<string>;
  /** True when the host path exists. */
  exists(path: string): Promise<boolean>;
  /** True when the host path exists and can be opened read-write (e.g. /dev/kvm). */
  canReadWrite(path: string): Promise<boolean>;
}

/** A HostFs over a directory tree; `hostFs()` is the real host. */
export function hostFs(root = '/'): HostFs {
  const at = (p: string): string => (root === '/' ? p : join(root, p));
  return {
    root,
    readFile: (p) => readFile(at(p), 'utf8'),
    exists: (p) =>
      access(at(p), constants.F_OK).then(
        () => true,
        () => false,
      ),
    canReadWrite: (p) =>
      access(at(p), constants.R_OK | constants.W_OK).then(
        () => true,
        () => false,
      ),
  };
}
