// The image builder's local steps (no apt, no QEMU): the newc writer, initrd caching by content
// hash, the errors for missing tools and sources, and vmlinux extraction failure modes.
import { execFile, spawnSync } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { DependencyError } from '../../../services/shared/errors.js';
import { createLogger } from '../../../services/shared/log.js';
import { ensureGuestInit, extractVmlinux } from '../../../stress/image/build.js';
import { buildCpio } from '../../../stress/image/cpio.js';
import { findXzStreams, XZ_MAGIC } from '../../../stress/image/kernel.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const quiet = createLogger('guest-image-test', {}, () => undefined, 'error');

describe('guest image builder', () => {
  let dir: string;
  const savedPath = process.env['PATH'];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'migd-image-'));
  });

  afterEach(async () => {
    process.env['PATH'] = savedPath;
    await rm(dir, { recursive: true, force: true });
  });

  it('writes a newc archive cpio(1) reads, device node included', async () => {
    const archive = buildCpio([
      { kind: 'dir', path: 'dev' },
      { kind: 'chardev', path: 'dev/console', major: 5, minor: 1 },
      { kind: 'file', path: '/init', data: Buffer.from('#!hello\n'), mode: 0o755 },
    ]);
    expect(archive.length % 4).toBe(0);
    const listing = spawnSync('cpio', ['-itv', '--quiet'], { input: archive });
    expect(listing.status).toBe(0);
    const lines = listing.stdout.toString().trim().split('\n');
    expect(lines.map((l) => l.split(/\s+/).at(-1))).toEqual(['dev', 'dev/console', 'init']);
    expect(lines[1]).toMatch(/^crw-------.*\b5,\s*1\b/);
    expect(lines[2]).toMatch(/^-rwxr-xr-x/);
    expect(() => buildCpio([{ kind: 'dir', path: '../etc' }])).toThrow(/bad path/);
  });

  it('builds the initrd once and reuses it until a source changes', async () => {
    const src = join(dir, 'src');
    await mkdir(src);
    for (const f of ['stress.c', 'integrity.c', 'integrity.h', 'guest.h', 'devices.c', 'disk.c']) await copyFile(join(repo, 'stress/guest', f), join(src, f));
    const opts = { cacheDir: join(dir, 'cache'), sourceDir: src, log: quiet };

    const first = await ensureGuestInit(opts);
    expect(first.cached).toBe(false);
    const cpio = spawnSync('cpio', ['-it', '--quiet'], { input: await readFile(first.initrd) });
    expect(cpio.stdout.toString().trim().split('\n')).toEqual(['dev', 'dev/console', 'proc', 'sys', 'tmp', 'init']);

    // Reused, not rebuilt: the same answer and the very same file, untouched (a rebuild compiles
    // the workload and writes the archive again). A file check, not a timed one.
    const builtAt = (await stat(first.initrd, { bigint: true })).mtimeNs;
    const again = await ensureGuestInit(opts);
    expect(again).toEqual({ ...first, cached: true });
    expect((await stat(again.initrd, { bigint: true })).mtimeNs).toBe(builtAt);

    await writeFile(join(src, 'stress.c'), (await readFile(join(src, 'stress.c'), 'utf8')) + '\n/* changed */\n');
    const rebuilt = await ensureGuestInit(opts);
    expect(rebuilt.cached).toBe(false);
    expect(rebuilt.initHash).not.toBe(first.initHash);
  });

  it('names what is missing: sources, musl-gcc', async () => {
    await expect(ensureGuestInit({ cacheDir: dir, sourceDir: join(dir, 'nope'), log: quiet })).rejects.toThrow(/stress\.c: guest workload source missing/);
    process.env['PATH'] = join(dir, 'empty-bin');
    const err = await ensureGuestInit({ cacheDir: dir, allowGlibc: false, log: quiet }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DependencyError);
    expect((err as DependencyError).dependency).toBe('musl-gcc');
    expect((err as Error).message).toMatch(/musl-gcc: not found on PATH \(apt-get install musl-tools\)/);
  });

  it('reports a compile failure with the compiler output', async () => {
    const src = join(dir, 'src');
    await mkdir(src);
    for (const f of ['integrity.c', 'integrity.h', 'guest.h', 'devices.c', 'disk.c']) await copyFile(join(repo, 'stress/guest', f), join(src, f));
    await writeFile(join(src, 'stress.c'), 'int main(void) { return syntax error; }\n');
    await expect(ensureGuestInit({ cacheDir: join(dir, 'cache'), sourceDir: src, log: quiet })).rejects.toThrow(/compiling the guest workload\): failed \(exit 1\).*error/s);
  });

  it('refuses a bzImage without an XZ stream, or whose stream is not a PVH ELF', async () => {
    const noXz = join(dir, 'vmlinuz-none');
    await writeFile(noXz, Buffer.alloc(4096, 0x41));
    await expect(extractVmlinux(noXz, join(dir, 'out'), 'test-kernel')).rejects.toThrow(/test-kernel: .* holds no XZ stream/);

    const payload = join(dir, 'payload');
    await writeFile(payload, 'not an ELF at all\n');
    await promisify(execFile)('xz', ['-k', '--check=crc32', payload]);
    const fake = Buffer.concat([Buffer.alloc(1000, 0x90), await readFile(`${payload}.xz`), Buffer.alloc(64, 0xee)]);
    expect(findXzStreams(fake)).toEqual([1000]);
    expect(fake.subarray(1000, 1006).equals(XZ_MAGIC)).toBe(true);
    const bz = join(dir, 'vmlinuz-fake');
    await writeFile(bz, fake);
    await expect(extractVmlinux(bz, join(dir, 'out'), 'test-kernel')).rejects.toThrow(/no XZ stream .* yields a PVH vmlinux: @1000: not an x86-64 ELF/);
  });
});
