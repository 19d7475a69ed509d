import { describe, expect, it } from 'vitest';
import type { HostFs } from '../../../services/node/host/fs.js';
import { isSameLiveProcess, parseMemInfo, parseProcStat, processCpu } from '../../../services/node/host/info.js';

const MEMINFO = `MemTotal:       24684108 kB
MemFree:        23776112 kB
MemAvailable:   24317876 kB
Buffers:           48212 kB
Cached:           700120 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
`;

// A QEMU whose comm has a space and a parenthesis, to prove fields are counted from the last ')'.
const STAT =
  '4242 (qemu-system-x86) weird)) S 1 4242 4242 0 -1 4194560 5000 0 0 0 912 87 0 0 20 0 3 0 123456 1000000000 65536 18446744073709551615 1 1 0 0 0 0 0 4096 17475 0 0 0 17 1 0 0 0 0 0\n';

describe('host info parsing', () => {
  it('parses /proc/meminfo into bytes', () => {
    expect(parseMemInfo(MEMINFO)).toEqual({
      totalBytes: 24684108 * 1024,
      freeBytes: 23776112 * 1024,
      availableBytes: 24317876 * 1024,
    });
    expect(parseMemInfo('MemTotal: 100 kB\nMemFree: 40 kB\n').availableBytes).toBe(40 * 1024);
    expect(() => parseMemInfo('nothing')).toThrow(/MemTotal/);
  });

  it('parses /proc/PID/stat fields 3, 4, 14, 15, 22, 24', () => {
    expect(parseProcStat(STAT)).toEqual({
      pid: 4242,
      comm: 'qemu-system-x86) weird)',
      state: 'S',
      ppid: 1,
      utimeTicks: 912,
      stimeTicks: 87,
      startTimeTicks: 123456,
      rssPages: 65536,
    });
  });

  it('computes CPU seconds with the clock tick rate', async () => {
    const fs: HostFs = {
      root: '/fake',
      readFile: (p) => (p === '/proc/4242/stat' ? Promise.resolve(STAT) : Promise.reject(new Error('ENOENT'))),
      exists: () => Promise.resolve(false),
      canReadWrite: () => Promise.resolve(false),
    };
    expect(await processCpu(4242, fs, 100)).toEqual({ userSeconds: 9.12, systemSeconds: 0.87, totalSeconds: 9.99, clockTicks: 100 });
    expect(await processCpu(1, fs, 100)).toBeUndefined();
  });

  it('identifies a process by pid and start time; zombies are dead', () => {
    const s = parseProcStat(STAT);
    expect(isSameLiveProcess(s, 123456)).toBe(true);
    expect(isSameLiveProcess(s, 999)).toBe(false); // pid reused by another process
    expect(isSameLiveProcess({ ...s, state: 'Z' }, 123456)).toBe(false);
    expect(isSameLiveProcess(undefined, 123456)).toBe(false);
  });
});
