/**
 * A minimal writer for the cpio "newc" format the kernel unpacks as an initramfs. Written here
 * rather than driving cpio(1) so device nodes need no mknod (no root), and so the archive is
 * byte-for-byte reproducible (fixed inode numbers, mtime 0, uid/gid 0).
 */

export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Buffer; mode?: number }
  | { kind: 'chardev'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFCHR = 0o020000;

function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}

function pad4(len: number): Buffer {
  return Buffer.alloc((4 - (len % 4)) % 4);
}

function header(ino: number, mode: number, nlink: number, size: number, rmaj: number, rmin: number, name: string): Buffer {
  const nameBytes = Buffer.from(`${name}\0`, 'utf8');
  const fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rmaj, rmin, nameBytes.length, 0];
  const head = Buffer.from(`070701${fields.map(hex8).join('')}`, 'ascii');
  const withName = Buffer.concat([head, nameBytes]);
  return Buffer.concat([withName, pad4(withName.length)]);
}

/** Serialises entries (parents before children) into an uncompressed newc archive. */
export function buildCpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    const path = e.path.replace(/^\/+/, '');
    if (path === '' || path.split('/').includes('..')) throw new Error(`cpio: bad path ${JSON.stringify(e.path)}`);
    switch (e.kind) {
      case 'dir':
        parts.push(header(ino++, S_IFDIR | (e.mode ?? 0o755), 2, 0, 0, 0, path));
        break;
      case 'chardev':
        parts.push(header(ino++, S_IFCHR | (e.mode ?? 0o600), 1, 0, e.major, e.minor, path));
        break;
      case 'file':
        parts.push(header(ino++, S_IFREG | (e.mode ?? 0o644), 1, e.data.length, 0, 0, path), e.data, pad4(e.data.length));
        break;
    }
  }
  parts.push(header(0, 0, 1, 0, 0, 0, 'TRAILER!!!'));
  return Buffer.concat(parts);
}
