/**
 * A digest of a disk image's guest-visible contents, equal for equal contents whatever the format
 * (raw, qcow2, an overlay on a base) and whatever the sparseness: SHA-256 over the virtual size
 * and, for each 64 KiB chunk of the guest's view that is not all zeros, its index and its bytes.
 *
 * The data comes from `qemu-img map -U` (which ranges hold data, in which file of the backing
 * chain, at which offset) and plain reads of those files, so only allocated data is read: a
 * sparse 10 GiB disk with 20 MiB written costs 20 MiB of reads. The image may be open in a QEMU
 * (hence -U); the caller makes sure nothing writes to it meanwhile (the guest is stopped).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { promisify } from 'node:util';
import { QEMU_IMG } from './disks.js';

const run = promisify(execFile);

/** The chunk grid: the unit whose zero-ness is decided (qcow2's default cluster size). */
export const DIGEST_CHUNK = 64 * 1024;

export interface ImageDigest {
  readonly sha256: string;
  /** Bytes of non-zero chunks hashed. */
  readonly dataBytes: number;
  readonly ms: number;
}

interface MapExtent {
  start: number;
  length: number;
  depth: number;
  zero: boolean;
  data: boolean;
  compressed?: boolean;
  offset?: number;
}

interface ChainEntry {
  filename: string;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'virtual-size': number;
}

/** The files of the backing chain, by depth (0 = the image itself). */
function chainFiles(path: string, chain: readonly ChainEntry[]): string[] {
  const files = [path];
  for (let i = 1; i < chain.length; i++) {
    const prev = chain[i - 1]!;
    files.push(prev['full-backing-filename'] ?? resolve(dirname(files[i - 1]!), prev['backing-filename'] ?? chain[i]!.filename));
  }
  return files;
}

/**
 * Digests the guest-visible contents of `path` (format `format`).
 * @throws Error when qemu-img cannot read the image, for compressed clusters (no offset to read),
 *   or when the image holds more than `maxDataBytes` of data (nothing is read then)
 */
export async function imageDigest(path: string, format: 'raw' | 'qcow2', opts_: { signal?: AbortSignal; maxDataBytes?: number } = {}): Promise<ImageDigest> {
  const { signal, maxDataBytes = Number.POSITIVE_INFINITY } = opts_;
  const t0 = Date.now();
  const opts = { timeout: 60_000, maxBuffer: 64 * 1024 * 1024, ...(signal ? { signal } : {}) };
  const [{ stdout: infoOut }, { stdout: mapOut }] = await Promise.all([
    run(QEMU_IMG, ['info', '-U', '--backing-chain', '--output=json', '-f', format, path], opts),
    run(QEMU_IMG, ['map', '-U', '--output=json', '-f', format, path], opts),
  ]);
  const chain = JSON.parse(infoOut) as ChainEntry[];
  const files = chainFiles(path, chain);
  const extents = (JSON.parse(mapOut) as MapExtent[]).filter((e) => e.data && !e.zero).sort((a, b) => a.start - b.start);
  const virtualBytes = chain[0]!['virtual-size'];
  const mapped = extents.reduce((sum, e) => sum + e.length, 0);
  if (mapped > maxDataBytes) throw new Error(`${(mapped / 1048576).toFixed(0)} MiB of data exceed the ${(maxDataBytes / 1048576).toFixed(0)} MiB a comparison at the switch-over may read`);
  const hash = createHash('sha256');
  hash.update(`migd-disk-digest v1 chunk=${DIGEST_CHUNK} size=${virtualBytes}\n`);
  const handles = new Map<number, FileHandle>();
  const chunk = Buffer.alloc(DIGEST_CHUNK);
  let current = -1;
  let dataBytes = 0;
  const flush = (): void => {
    if (current < 0) return;
    // All-zero chunks count as holes: a destination that wrote zeros where the source has none
    // holds the same contents.
    if (!chunk.every((b) => b === 0)) {
      const idx = Buffer.alloc(8);
      idx.writeBigUInt64LE(BigInt(current));
      hash.update(idx);
      hash.update(chunk);
      dataBytes += DIGEST_CHUNK;
    }
    chunk.fill(0);
    current = -1;
  };
  try {
    for (const e of extents) {
      if (e.offset === undefined || e.compressed) throw new Error(`${path}: compressed or unmapped data at ${e.start} (no file offset to read)`);
      const file = files[e.depth];
      if (file === undefined) throw new Error(`${path}: data at depth ${e.depth} beyond the backing chain`);
      let fh = handles.get(e.depth);
      if (!fh) handles.set(e.depth, (fh = await open(file, 'r')));
      for (let pos = e.start; pos < e.start + e.length; ) {
        signal?.throwIfAborted();
        const idx = Math.floor(pos / DIGEST_CHUNK);
        if (idx !== current) {
          flush();
          current = idx;
        }
        const within = pos - idx * DIGEST_CHUNK;
        const len = Math.min(DIGEST_CHUNK - within, e.start + e.length - pos);
        await fh.read(chunk, within, len, e.offset + (pos - e.start));
        pos += len;
      }
    }
    flush();
  } finally {
    await Promise.all([...handles.values()].map((h) => h.close()));
  }
  return { sha256: hash.digest('hex'), dataBytes, ms: Date.now() - t0 };
}
