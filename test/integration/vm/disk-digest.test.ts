/**
 * The disk digest the nodes compare after a storage copy (services/node/host/digest.ts), on real
 * images made with qemu-img: equal guest-visible contents give equal digests across raw, qcow2,
 * an overlay on a base and a target that holds written zeros; one changed byte changes it.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { imageDigest } from '../../../services/node/host/digest.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

describe('disk digest', () => {
  let dir = '';
  beforeAll(() => {
    dir = mkdtempSync('/tmp/migd-digest-');
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('is equal for equal contents in any format or sparseness, and differs for one changed byte', async () => {
    const raw = join(dir, 'a.raw');
    await run('qemu-img', ['create', '-q', '-f', 'raw', raw, String(16 * MiB)]);
    await run('dd', ['if=/dev/urandom', `of=${raw}`, 'bs=4k', 'count=300', 'seek=700', 'conv=notrunc', 'status=none']);
    const a = await imageDigest(raw, 'raw');
    expect(a.dataBytes).toBeGreaterThanOrEqual(300 * 4096);
    expect(a.dataBytes).toBeLessThan(2 * MiB);
    // The same contents as qcow2.
    const q = join(dir, 'a.qcow2');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, q]);
    expect((await imageDigest(q, 'qcow2')).sha256).toBe(a.sha256);
    // A raw copy whose holes were written as zeros (fully allocated).
    const full = join(dir, 'full.raw');
    await run('qemu-img', ['convert', '-S', '0', '-f', 'raw', '-O', 'raw', raw, full]);
    expect((await run('qemu-img', ['info', '--output=json', full])).stdout).toMatch(/"actual-size": 1[67]\d{6}/);
    expect((await imageDigest(full, 'raw')).sha256).toBe(a.sha256);
    // An empty overlay on it reads the same; a write into the overlay changes it.
    const ov = join(dir, 'ov.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', raw, '-F', 'raw', ov]);
    expect((await imageDigest(ov, 'qcow2')).sha256).toBe(a.sha256);
    await run('qemu-io', ['-c', 'write -P 0x5a 3145728 1', '-f', 'qcow2', ov]);
    expect((await imageDigest(ov, 'qcow2')).sha256).not.toBe(a.sha256);
    // One byte in the data.
    await run('dd', ['if=/dev/zero', `of=${full}`, 'bs=1', 'count=1', `seek=${700 * 4096 + 5}`, 'conv=notrunc', 'status=none']);
    expect((await imageDigest(full, 'raw')).sha256).not.toBe(a.sha256);
    // A different size is different contents.
    const big = join(dir, 'big.raw');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', raw, big]);
    await run('qemu-img', ['resize', '-q', '-f', 'raw', big, String(32 * MiB)]);
    expect((await imageDigest(big, 'raw')).sha256).not.toBe(a.sha256);
  });
});
