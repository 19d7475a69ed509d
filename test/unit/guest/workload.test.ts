import { describe, expect, it } from 'vitest';

import { InvalidArgumentError } from '../../../services/shared/errors.js';
import { buildGuestCmdline, parseGuestSize, resolveGuestWorkload, type GuestWorkload } from '../../../services/shared/guest/workload.js';

describe('guest workload parameters', () => {
  it('applies defaults', () => {
    expect(resolveGuestWorkload()).toEqual({
      workers: 1,
      bytesPerWorker: 64 * 2 ** 20,
      pattern: 'random',
      rateBytesPerSec: 0,
      verify: true,
      hotBytes: undefined,
      reportMs: 100,
      heartbeatMs: 1000,
      idleVerifyMs: 2000,
      seed: undefined,
      phaseAfterMs: 0,
      phaseRateBytesPerSec: 0,
    });
  });

  it('parses sizes with binary suffixes', () => {
    expect(parseGuestSize('512K', 'x')).toBe(512 * 1024);
    expect(parseGuestSize('64m', 'x')).toBe(64 * 2 ** 20);
    expect(parseGuestSize('1G', 'x')).toBe(2 ** 30);
    expect(parseGuestSize(4096, 'x')).toBe(4096);
    expect(() => parseGuestSize('12 MB', 'rate')).toThrow(/rate: "12 MB" is not a size/);
    expect(() => parseGuestSize(-1, 'rate')).toThrow(InvalidArgumentError);
  });

  it('builds the kernel command line the guest parses', () => {
    expect(buildGuestCmdline({ workers: 2, bytesPerWorker: '64M', pattern: 'hotcold', hotBytes: '4M', rateBytesPerSec: '16M', seed: 7 })).toBe(
      'console=ttyS0 quiet panic=-1 migd.workers=2 migd.bytes=67108864 migd.pattern=hotcold migd.rate=16777216 migd.verify=1 migd.report_ms=100 migd.hb_ms=1000 migd.hot=4194304 migd.seed=7',
    );
    expect(buildGuestCmdline({ pattern: 'idle', verify: false }, { quiet: false, panic: 5, console: 'ttyS1', extra: ['mitigations=off'] })).toBe(
      'console=ttyS1 panic=5 migd.workers=1 migd.bytes=67108864 migd.pattern=idle migd.rate=0 migd.verify=0 migd.report_ms=100 migd.hb_ms=1000 migd.idle_ms=2000 mitigations=off',
    );
    // A phase change: 8 MiB/s per worker, unlimited after 20 s of the guest's time.
    expect(buildGuestCmdline({ rateBytesPerSec: '8M', phaseAfterMs: 20_000, phaseRateBytesPerSec: 0 })).toBe(
      'console=ttyS0 quiet panic=-1 migd.workers=1 migd.bytes=67108864 migd.pattern=random migd.rate=8388608 migd.verify=1 migd.report_ms=100 migd.hb_ms=1000 migd.phase_ms=20000 migd.phase_rate=0',
    );
  });

  it.each([
    [{ workers: 0 }, /workers: 0 must be an integer in 1\.\.32/],
    [{ workers: 1.5 }, /workers/],
    [{ bytesPerWorker: 1000 }, /bytesPerWorker: 1000 must be a positive multiple of 4096/],
    [{ bytesPerWorker: '0' }, /bytesPerWorker/],
    [{ pattern: 'zigzag' as never }, /pattern: "zigzag" is not one of random, compressible, hotcold, idle/],
    [{ pattern: 'random', hotBytes: '1M' }, /hotBytes: only meaningful with pattern hotcold/],
    [{ pattern: 'hotcold', bytesPerWorker: '1M', hotBytes: '2M' }, /hotBytes: 2097152 exceeds bytesPerWorker/],
    [{ reportMs: 5 }, /reportMs/],
    [{ heartbeatMs: 2000 }, /heartbeatMs/],
    [{ seed: 0 }, /seed/],
    [{ phaseAfterMs: -1 }, /phaseAfterMs/],
    [{ phaseAfterMs: 1000, phaseRateBytesPerSec: 'fast' }, /phaseRateBytesPerSec/],
    [{ seed: 2n ** 64n }, /seed/],
  ] as [GuestWorkload, RegExp][])('rejects %o', (workload, message) => {
    expect(() => buildGuestCmdline(workload)).toThrow(InvalidArgumentError);
    expect(() => buildGuestCmdline(workload)).toThrow(message);
  });

  it('rejects bad options and workloads that do not fit the guest', () => {
    expect(() => buildGuestCmdline({}, { extra: ['a b'] })).toThrow(/extra: kernel parameter "a b"/);
    expect(() => buildGuestCmdline({}, { console: 'tty S0' })).toThrow(/console/);
    expect(() => buildGuestCmdline({ workers: 2, bytesPerWorker: '128M' }, { guestMemoryBytes: 256 * 2 ** 20 })).toThrow(
      /workload needs 352 MiB .* but the guest has 256 MiB/,
    );
    expect(buildGuestCmdline({ workers: 2, bytesPerWorker: '64M' }, { guestMemoryBytes: 256 * 2 ** 20 })).toContain('migd.workers=2');
  });
});
