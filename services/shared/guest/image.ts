/**
 * Where a node daemon finds the guest image it boots VMs with when a spec names no kernel: a
 * folder holding `vmlinux` (an uncompressed PVH kernel) and `initrd.cpio` (the workload's
 * initramfs), as files or symlinks. The node only reads this folder; the guest-image builder
 * (`node dist/stress/image/cli.js --install DIR`, see stress/image/) fills it.
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { FailedPreconditionError } from '../errors.js';

/** Default guest-image folder of a node daemon installed on a host (`--guest-image`). */
export const DEFAULT_GUEST_IMAGE_DIR = '/var/lib/migd/guest';
/** File names inside a guest-image folder. */
export const GUEST_KERNEL_FILE = 'vmlinux';
export const GUEST_INITRD_FILE = 'initrd.cpio';

/** The command that builds and installs a guest image into `dir`. */
export function guestImageBuildCommand(dir: string): string {
  return `node dist/stress/image/cli.js --install ${dir}`;
}

export interface GuestImageFiles {
  readonly kernel: string;
  readonly initrd: string;
}

/**
 * The kernel and initrd of the guest-image folder `dir`. Checked at every call, so an image
 * installed while the daemon runs is used without a restart.
 * @throws FailedPreconditionError (reason NO_GUEST_IMAGE) naming the missing file and the command
 *   that builds it
 */
export function guestImageFiles(dir: string): GuestImageFiles {
  const kernel = join(dir, GUEST_KERNEL_FILE);
  const initrd = join(dir, GUEST_INITRD_FILE);
  for (const f of [kernel, initrd]) {
    let ok = false;
    try {
      ok = statSync(f).isFile();
    } catch {
      // missing or a dangling link
    }
    if (!ok) {
      throw new FailedPreconditionError(`no guest image: ${f} is missing; build it with '${guestImageBuildCommand(dir)}' (or set spec.kernel_path)`, { reason: 'NO_GUEST_IMAGE' });
    }
  }
  return { kernel, initrd };
}
