/**
 * Turning Debian's kernel package into an uncompressed ELF vmlinux with a PVH entry point.
 *
 * Why: under TCG the bzImage's own XZ decompressor costs ~7 s of emulated CPU per boot. Debian
 * builds with CONFIG_PVH=y, so QEMU can load the ELF vmlinux directly through the PVH note and
 * the guest reaches /init in ~4 s. The vmlinux is the XZ stream embedded in the bzImage.
 */
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';

import { DependencyError } from '../../services/shared/errors.js';

export const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);
/** XEN_ELFNOTE_PHYS32_ENTRY: the note QEMU's PVH loader looks for. */
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

/** Offsets of every XZ stream header in a bzImage (the first is normally the kernel). */
export function findXzStreams(bzImage: Buffer): number[] {
  const at: number[] = [];
  for (let i = bzImage.indexOf(XZ_MAGIC); i >= 0; i = bzImage.indexOf(XZ_MAGIC, i + 1)) at.push(i);
  return at;
}

/** Decompresses one XZ stream (trailing bytes ignored) into `outFile`. Rejects on xz failure. */
export async function xzDecompressTo(data: Buffer, outFile: string, signal?: AbortSignal): Promise<void> {
  const child = spawn('xz', ['-dc', '--single-stream'], { stdio: ['pipe', 'pipe', 'pipe'], signal });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    if (stderr.length < 2000) stderr += d.toString();
  });
  const exited = new Promise<number>((resolve, reject) => {
    child.on('error', (err: NodeJS.ErrnoException) =>
      reject(err.code === 'ENOENT' ? new DependencyError('xz', 'not found (apt-get install xz-utils)', { cause: err }) : err),
    );
    child.on('close', (code) => resolve(code ?? -1));
  });
  // EPIPE when xz stops reading early (it does, at the end of the stream) is not an error.
  child.stdin.on('error', () => undefined);
  const feed = pipeline(Readable.from([data]), child.stdin).catch(() => undefined);
  const drain = pipeline(child.stdout, createWriteStream(outFile));
  const [code] = await Promise.all([exited, drain, feed]);
  if (code !== 0) throw new Error(`xz exited ${code}: ${stderr.trim()}`);
}

export interface ElfInfo {
  /** 64-bit little-endian x86-64 ELF. */
  ok: boolean;
  /** Has the PVH entry note (Xen ELF note type 18). */
  pvh: boolean;
}

/** Checks that `file` is an x86-64 ELF with a PVH entry note (reads only headers and notes). */
export async function inspectVmlinux(file: string): Promise<ElfInfo> {
  const fh = await open(file, 'r');
  try {
    const ehdr = Buffer.alloc(64);
    await fh.read(ehdr, 0, 64, 0);
    const ok = ehdr.subarray(0, 4).equals(ELF_MAGIC) && ehdr[4] === 2 && ehdr[5] === 1 && ehdr.readUInt16LE(18) === 62;
    if (!ok) return { ok: false, pvh: false };
    const phoff = Number(ehdr.readBigUInt64LE(32));
    const phentsize = ehdr.readUInt16LE(54);
    const phnum = ehdr.readUInt16LE(56);
    const phdrs = Buffer.alloc(phentsize * phnum);
    await fh.read(phdrs, 0, phdrs.length, phoff);
    for (let i = 0; i < phnum; i++) {
      const ph = phdrs.subarray(i * phentsize, (i + 1) * phentsize);
      if (ph.readUInt32LE(0) !== 4 /* PT_NOTE */) continue;
      const off = Number(ph.readBigUInt64LE(8));
      const size = Number(ph.readBigUInt64LE(32));
      if (size > 1 << 20) continue;
      const notes = Buffer.alloc(size);
      await fh.read(notes, 0, size, off);
      for (let p = 0; p + 12 <= size; ) {
        const namesz = notes.readUInt32LE(p);
        const descsz = notes.readUInt32LE(p + 4);
        const type = notes.readUInt32LE(p + 8);
        const name = notes.subarray(p + 12, p + 12 + namesz).toString('latin1');
        if (name === 'Xen\0' && type === XEN_ELFNOTE_PHYS32_ENTRY) return { ok: true, pvh: true };
        p += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
      }
    }
    return { ok: true, pvh: false };
  } finally {
    await fh.close();
  }
}
