/**
 * Disk images on a node: which paths a VM spec may name (inside the storage roots, see
 * confine.ts), creating sparse images and qcow2 overlays with qemu-img, reading an image's virtual
 * and allocated size, and the free space of a storage root.
 *
 * Errors follow issue 13: a path outside the roots is PERMISSION_DENIED with one message whatever
 * the reason (no probing of the host); inside the roots a missing image is INVALID_ARGUMENT (the
 * caller may see its own roots); an image to create that exists already is ALREADY_EXISTS.
 */
import { execFile } from 'node:child_process';
import { mkdir, realpath, rm, stat, statfs } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, normalize, sep } from 'node:path';
import { promisify } from 'node:util';
import { AlreadyExistsError, DependencyError, FailedPreconditionError, InvalidArgumentError, PermissionDeniedError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { confinePath, type PathRoots } from './confine.js';

const run = promisify(execFile);

/** qemu-img, from PATH (qemu-utils; listed in scripts/binaries.manifest). */
export const QEMU_IMG = 'qemu-img';

async function within(real: string, roots: readonly PathRoots[]): Promise<boolean> {
  return (await Promise.all(roots.map((r) => r.real()))).flat().some((root) => real.startsWith(root));
}

function deny(field: string, roots: readonly PathRoots[], path: string, why: string, log?: Logger): never {
  log?.warn('disk path refused', { field, path, why });
  throw new PermissionDeniedError(`${field} is not a file this node may use: it must name a regular file under the node's ${roots.map((r) => r.kind).join(' or ')} roots`, {
    reason: 'PATH_NOT_ALLOWED',
  });
}

/**
 * The real path of an existing disk image.
 * @throws PermissionDeniedError (PATH_NOT_ALLOWED) outside the roots or not a regular file;
 *   InvalidArgumentError (DISK_MISSING) for a missing file whose folder is inside the roots
 */
export async function confineDiskPath(path: string, field: string, roots: readonly PathRoots[], log?: Logger): Promise<string> {
  if (!isAbsolute(path)) throw new InvalidArgumentError(`${field} must be an absolute path, got ${JSON.stringify(path)}`, { reason: 'DISK_INVALID' });
  const exists = await stat(path).then(
    () => true,
    () => false,
  );
  if (!exists) {
    const folder = await realpath(dirname(normalize(path))).catch(() => undefined);
    if (folder !== undefined && (await within(folder + sep, roots))) {
      throw new InvalidArgumentError(`${field}: ${path} does not exist (create it, or ask for it to be created)`, { reason: 'DISK_MISSING' });
    }
    return deny(field, roots, path, 'does not exist, folder outside the roots', log);
  }
  return confinePath(path, field, roots, log);
}

/**
 * Where a new image may be created: its folder (created if missing, below an existing folder
 * inside the roots) must be inside the roots, and the file must not exist.
 * @throws PermissionDeniedError (PATH_NOT_ALLOWED), AlreadyExistsError (DISK_EXISTS), InvalidArgumentError
 */
export async function confineNewDiskPath(path: string, field: string, roots: readonly PathRoots[], log?: Logger): Promise<string> {
  if (!isAbsolute(path) || path.includes('\0')) throw new InvalidArgumentError(`${field} must be an absolute path, got ${JSON.stringify(path)}`, { reason: 'DISK_INVALID' });
  const p = normalize(path);
  // The nearest existing ancestor decides (realpath: links cannot leave a root).
  let folder = dirname(p);
  const missing: string[] = [];
  let real: string | undefined;
  for (;;) {
    real = await realpath(folder).catch(() => undefined);
    if (real !== undefined || folder === dirname(folder)) break;
    missing.unshift(basename(folder));
    folder = dirname(folder);
  }
  if (real === undefined || !(await within(real + sep, roots))) return deny(field, roots, path, 'folder outside the roots', log);
  const target = join(real, ...missing, basename(p));
  if (await stat(target).then(() => true, () => false)) throw new AlreadyExistsError(`${field}: ${path} exists already; name it without create to use it`, { reason: 'DISK_EXISTS' });
  return target;
}

export interface ImageInfo {
  readonly format: string;
  readonly virtualBytes: number;
  /** Bytes allocated on the host (sparse regions excluded). */
  readonly allocatedBytes: number;
  readonly backingFile: string | undefined;
}

/**
 * `qemu-img info -U` (no lock: the image may be open in a running QEMU).
 * @throws DependencyError when qemu-img is missing; FailedPreconditionError when the image is unreadable
 */
export async function imageInfo(path: string): Promise<ImageInfo> {
  try {
    const { stdout } = await run(QEMU_IMG, ['info', '-U', '--output=json', path], { timeout: 30_000 });
    const j = JSON.parse(stdout) as { format: string; 'virtual-size': number; 'actual-size'?: number; 'full-backing-filename'?: string; 'backing-filename'?: string };
    return { format: j.format, virtualBytes: j['virtual-size'], allocatedBytes: j['actual-size'] ?? j['virtual-size'], backingFile: j['full-backing-filename'] ?? j['backing-filename'] };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new DependencyError(QEMU_IMG, 'qemu-img is not installed (package qemu-utils)');
    throw new FailedPreconditionError(`cannot read the disk image ${path}: ${((err as { stderr?: string }).stderr ?? (err as Error).message).trim()}`, { reason: 'DISK_UNREADABLE' });
  }
}

/**
 * Creates an image: empty and sparse of `sizeBytes`, or (with `base`) a qcow2 overlay on it
 * (size 0 keeps the base's). Missing folders are created (0700).
 * @throws InvalidArgumentError for a bad size/format combination, DependencyError, FailedPreconditionError
 */
export async function createImage(path: string, format: 'raw' | 'qcow2', sizeBytes: number, base?: string): Promise<void> {
  if (base !== undefined && format !== 'qcow2') throw new InvalidArgumentError('an overlay on a base image must be qcow2', { reason: 'DISK_INVALID' });
  if (base === undefined && (!Number.isSafeInteger(sizeBytes) || sizeBytes < 512)) throw new InvalidArgumentError(`a new disk needs a size of at least 512 bytes, got ${sizeBytes}`, { reason: 'DISK_INVALID' });
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const args = ['create', '-q', '-f', format];
  if (base !== undefined) args.push('-b', base, '-F', (await imageInfo(base)).format);
  args.push(path);
  if (sizeBytes > 0) args.push(String(sizeBytes));
  try {
    await run(QEMU_IMG, args, { timeout: 60_000 });
  } catch (err) {
    await rm(path, { force: true });
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new DependencyError(QEMU_IMG, 'qemu-img is not installed (package qemu-utils)');
    throw new FailedPreconditionError(`could not create the disk image ${path}: ${((err as { stderr?: string }).stderr ?? (err as Error).message).trim()}`, { reason: 'DISK_CREATE_FAILED' });
  }
}

/** Bytes an unprivileged writer may still use on the file system holding `path` (an existing folder). */
export async function freeBytes(path: string): Promise<number> {
  const s = await statfs(path);
  return s.bavail * s.bsize;
}

/**
 * What disk images occupy, measured often (every heartbeat) and cheaply: each image's virtual size
 * and backing chain come from qemu-img once (they do not change while the image is in use), the
 * allocation from stat() each time (st_blocks, what qemu-img calls the actual size).
 */
export class DiskUsageProbe {
  private readonly chains = new Map<string, { virtualBytes: number; chain: readonly string[] }>();

  /** Virtual size and the allocation of the whole backing chain. @throws as {@link imageInfo} */
  async usage(path: string): Promise<{ virtualBytes: number; allocatedBytes: number }> {
    let c = this.chains.get(path);
    if (!c) {
      const top = await imageInfo(path);
      const chain = [path];
      for (let b = top.backingFile, depth = 0; b !== undefined && depth < 8; depth++) {
        chain.push(b);
        b = (await imageInfo(b)).backingFile;
      }
      c = { virtualBytes: top.virtualBytes, chain };
      if (this.chains.size > 4096) this.chains.clear();
      this.chains.set(path, c);
    }
    let allocatedBytes = 0;
    for (const p of c.chain) allocatedBytes += (await stat(p)).blocks * 512;
    return { virtualBytes: c.virtualBytes, allocatedBytes };
  }

  /** Forgets an image (removed, or replaced by another at the same path). */
  forget(path: string): void {
    this.chains.delete(path);
  }
}

/**
 * Size and free bytes (as {@link freeBytes}) of the file system that holds `path`, judged at its
 * nearest existing folder: a storage root created only when the first image is (e.g. disks/ under
 * the state dir) is measured where its images will go. Undefined when nothing can be measured.
 */
export async function storageSpace(path: string): Promise<{ totalBytes: number; freeBytes: number } | undefined> {
  for (let p = normalize(path); ; p = dirname(p)) {
    const s = await statfs(p).catch(() => undefined);
    if (s) return { totalBytes: s.blocks * s.bsize, freeBytes: s.bavail * s.bsize };
    if (p === dirname(p)) return undefined;
  }
}

/**
 * The file system that holds `path`, judged at its nearest existing folder (as
 * {@link storageSpace}): its device number, to add up what several images need on one file
 * system, and its free bytes. Undefined when nothing can be measured.
 */
export async function fileSystemOf(path: string): Promise<{ dev: number; freeBytes: number; at: string } | undefined> {
  for (let p = normalize(path); ; p = dirname(p)) {
    const st = await stat(p).catch(() => undefined);
    if (st?.isDirectory()) {
      const s = await statfs(p).catch(() => undefined);
      return s ? { dev: st.dev, freeBytes: s.bavail * s.bsize, at: p } : undefined;
    }
    if (p === dirname(p)) return undefined;
  }
}
