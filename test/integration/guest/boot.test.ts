// Boots the real test guest (Debian kernel as PVH vmlinux + static workload /init) under QEMU TCG:
// once per workload pattern for the boot time and a baseline ms/GiB, and once with guest RAM in a
// shared file to corrupt, zero and roll back pages from outside and see every fault reported.
// The first run downloads the kernel package with apt-get (cached in .cache/guest afterwards).
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import type { GuestEvent, GuestPassEvent, GuestPerfSample } from '../../../services/shared/guest/telemetry.js';
import { createLogger } from '../../../services/shared/log.js';
import { buildGuestCmdline, ensureGuestImage, type GuestImage, type GuestPattern, type GuestWorkload } from '../../../stress/image/build.js';
import { GuestQemu } from '../../helpers/guest-qemu.js';

const MEM_MIB = 256;
type Ev<T extends GuestEvent['type']> = Extract<GuestEvent, { type: T }>;
const is =
  <T extends GuestEvent['type']>(type: T, extra: (e: Ev<T>) => boolean = () => true) =>
  (e: GuestEvent): e is Ev<T> =>
    e.type === type && extra(e as Ev<T>);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
}

describe('test guest under QEMU TCG', () => {
  let image: GuestImage;
  const guests: GuestQemu[] = [];
  const measured: Record<string, unknown> = {};

  beforeAll(async () => {
    const t0 = performance.now();
    image = await ensureGuestImage({ log: createLogger('guest-image', {}, undefined, 'warn') });
    measured['imageMs'] = Math.round(performance.now() - t0);
    measured['imageCached'] = image.cached;
  }, 600_000);

  afterEach(async () => {
    await Promise.all(guests.splice(0).map((g) => g.stop()));
  });

  afterAll(() => {
    // The numbers the issue asks for; visible in the test output.
    console.info(`guest measurements: ${JSON.stringify(measured)}`);
  });

  const boot = async (workload: GuestWorkload, ramFile = false): Promise<GuestQemu> => {
    const cmdline = buildGuestCmdline(workload, { guestMemoryBytes: MEM_MIB * 2 ** 20 });
    const g = await GuestQemu.start({ kernel: image.kernel, initrd: image.initrd, cmdline, memMiB: MEM_MIB, ramFile });
    guests.push(g);
    return g;
  };

  it.each(['random', 'compressible', 'hotcold', 'idle'] as GuestPattern[])(
    '%s: first line within seconds, baseline ms/GiB per worker, no integrity errors',
    async (pattern) => {
      const t0 = performance.now();
      const g = await boot({ workers: 2, bytesPerWorker: '32M', pattern, idleVerifyMs: 1000 });
      const start = await g.log.waitFor(is('start'), 30_000);
      const bootMs = Math.round(start.hostMs - g.spawnedAt);
      expect(start.params).toMatchObject({ workers: 2, bytesPerWorker: 32 << 20, pattern, verify: true });
      // Boot time is a figure (printed with the guest measurements; the PVH vmlinux boots in ~4 s on a quiet machine), not
      // a timed assertion: the bound only catches a guest that never started its workload.
      expect(bootMs).toBeGreaterThan(0);
      expect(bootMs).toBeLessThan(30_000);

      const perWorker: Record<number, number> = {};
      if (pattern === 'idle') {
        // written once, then only verified: the fill pass is the baseline
        for (const w of [0, 1]) {
          perWorker[w] = (await g.log.waitFor(is('pass', (e) => e.worker === w), 10_000)).msPerGib;
          await g.log.waitFor(is('verify', (e) => e.worker === w && e.pagesVerified >= 8192), 10_000);
        }
        await g.log.waitFor(is('heartbeat', (e) => e.mibWritten.length === 2 && e.mibWritten.every((m) => m === 32)), 5_000);
      } else {
        // steady state: passes after the first (the fill pass does not verify)
        const steady = (w: number) => (e: GuestEvent): e is GuestPassEvent => e.type === 'pass' && e.worker === w && e.pass >= 2;
        const enough = (e: GuestEvent) => e.type === 'heartbeat' && [0, 1].every((w) => g.log.events.filter(steady(w)).length >= 5);
        await g.log.waitFor(enough, 20_000);
        for (const w of [0, 1]) perWorker[w] = median(g.log.events.filter(steady(w)).map((e) => e.msPerGib));
        const combined = g.log.events
          .filter((e): e is Ev<'sample'> => e.type === 'sample' && e.sample.worker === -1)
          .map((e) => e.sample);
        expect(combined.length).toBeGreaterThan(2);
        measured[`${pattern}.combinedMsPerGib`] = median(combined.slice(1).map((s: GuestPerfSample) => s.msPerGib));
      }
      for (const w of [0, 1]) expect(perWorker[w]).toBeGreaterThan(0);
      expect(g.log.parser.integrity().errors).toBe(0);
      expect(g.log.parser.stats.malformed).toBe(0);
      expect(g.log.events.filter((e) => e.type === 'anomaly' || e.type === 'fatal' || e.type === 'kernel-panic')).toEqual([]);
      measured[`${pattern}.bootToFirstLineMs`] = bootMs;
      measured[`${pattern}.msPerGibPerWorker`] = perWorker;
      measured[`${pattern}.testMs`] = Math.round(performance.now() - t0);
    },
    60_000,
  );

  it('reports pages corrupted, zeroed and rolled back from outside the guest, and host-side silences', async () => {
    const t0 = performance.now();
    const g = await boot({ workers: 1, bytesPerWorker: '32M', pattern: 'random' }, true);
    const log = g.log;
    const map0 = await log.waitFor(is('map', (e) => e.worker === 0 && e.page === 0), 30_000);
    expect(map0.physAddr).not.toBeNull();
    const pa0 = map0.physAddr ?? 0;
    await log.waitFor(is('pass', (e) => e.pass >= 3), 10_000);

    // The printed physical address really is the page: its header says MIGD / worker 0 / page 0.
    const header = await g.readRam(pa0, 16);
    expect(header.readBigUInt64LE(0) >> 32n).toBe(0x4d494744n);
    expect(header.readBigUInt64LE(0) & 0xffffffn).toBe(0n);
    expect(header.readBigUInt64LE(8)).toBe(0n);

    // 1. a bit flip in word 125 of page 0
    const byte = await g.readRam(pa0 + 1000, 1);
    await g.writeRam(pa0 + 1000, Buffer.from([(byte[0] ?? 0) ^ 0x10]));
    const flip = await log.waitFor(is('integrity-error', (e) => e.page === 0), 10_000);
    expect(flip).toMatchObject({ worker: 0, reason: 'corrupt', word: 125 });

    // 2. a page that "never arrived": zeroed
    g.send('pa 0 5');
    const map5 = await log.waitFor(is('map', (e) => e.page === 5), 10_000);
    await g.writeRam(map5.physAddr ?? 0, Buffer.alloc(4096));
    expect(await log.waitFor(is('integrity-error', (e) => e.page === 5), 10_000)).toMatchObject({ reason: 'zero' });

    // 3. a page rolled back to an older generation
    g.send('pa 0 9');
    const pa9 = (await log.waitFor(is('map', (e) => e.page === 9), 10_000)).physAddr ?? 0;
    const snapshot = await g.readRam(pa9, 4096);
    const snapGen = Number(snapshot.readBigUInt64LE(16));
    await log.waitFor(is('pass', (e) => e.pass >= snapGen + 3), 10_000);
    await g.writeRam(pa9, snapshot);
    const stale = await log.waitFor(is('integrity-error', (e) => e.page === 9), 10_000);
    expect(stale).toMatchObject({ reason: 'stale', foundGen: snapGen });
    expect(stale.expectedGen).toBeGreaterThan(snapGen);

    // 4. the guest-side trigger over the serial line
    g.send('corrupt 0 12 7');
    expect(await log.waitFor(is('integrity-error', (e) => e.page === 12), 10_000)).toMatchObject({ reason: 'corrupt', word: 7 });

    // 5. the VM frozen for 2.5 s: the parser reports the silence
    const before = log.events.length;
    g.pause();
    await new Promise((r) => setTimeout(r, 2500));
    g.resume();
    const gap = await log.waitFor(is('gap'), 10_000, before);
    expect(gap.hostGapMs).toBeGreaterThanOrEqual(2000);

    await log.waitFor(is('verify', (e) => e.errors >= 4), 5_000);
    expect(log.parser.integrity().errors).toBe(4);
    expect(log.parser.integrity().details.map((d) => d.reason).sort()).toEqual(['corrupt', 'corrupt', 'stale', 'zero']);
    measured['faultInjection.testMs'] = Math.round(performance.now() - t0);
    measured['faultInjection.gapMs'] = Math.round(gap.hostGapMs);
  }, 90_000);
});
