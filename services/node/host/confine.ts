/**
 * Host paths a client may name (kernel, initrd, and later disks) are confined to the node's
 * configured roots: resolved with realpath (so `..` and symlinks cannot leave a root), regular
 * files only (no /dev/zero, no FIFOs, no folders). Every refusal has the same message whether the
 * path exists or not, so a caller cannot probe the host's file system; the reason goes to the log.
 */
import { realpath, stat } from 'node:fs/promises';
import { dirname, isAbsolute, sep } from 'node:path';
import { PermissionDeniedError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';

/**
 * The configured roots of one kind, resolved at each check (a root created or re-linked while the
 * daemon runs counts at once; a root that does not exist admits nothing).
 */
export class PathRoots {
  constructor(
    /** What the roots hold, for messages: `image`, `storage`. */
    readonly kind: string,
    readonly roots: readonly string[],
    /** Trusted links (e.g. the guest-image folder's vmlinux): the folder each resolves into is a root too. */
    readonly links: readonly string[] = [],
  ) {}

  /** Real paths of the roots that exist, each ending with a separator. */
  async real(): Promise<string[]> {
    const folder = (p: string): string => (p.endsWith(sep) ? p : p + sep);
    const roots = this.roots.map((r) => realpath(r).then(folder, () => undefined));
    const linked = this.links.map((l) => realpath(l).then((p) => folder(dirname(p)), () => undefined));
    return (await Promise.all([...roots, ...linked])).filter((r): r is string => r !== undefined);
  }
}

/**
 * The real path of `path` when it is a regular file inside one of `roots`.
 * @param field the request field, named in the error (e.g. `spec.initrd_path`)
 * @throws PermissionDeniedError (reason PATH_NOT_ALLOWED) otherwise — missing, outside the roots,
 *   not a regular file or not absolute all get the identical message
 */
export async function confinePath(path: string, field: string, roots: readonly PathRoots[], log?: Logger): Promise<string> {
  const allowed = roots.map((r) => r.kind).join(' or ');
  const deny = (why: string): never => {
    log?.warn('path refused', { field, path, why });
    throw new PermissionDeniedError(`${field} is not a file this node may use: it must name a regular file under the node's ${allowed} roots`, { reason: 'PATH_NOT_ALLOWED' });
  };
  if (!isAbsolute(path) || path.includes('\0')) return deny('not an absolute path');
  let real: string;
  try {
    real = await realpath(path);
  } catch {
    return deny('does not resolve');
  }
  const within = (await Promise.all(roots.map((r) => r.real()))).flat().some((root) => real.startsWith(root));
  if (!within) return deny(`resolves to ${real}, outside the roots`);
  const st = await stat(real).catch(() => undefined);
  if (!st?.isFile()) return deny('not a regular file');
  return real;
}
