import { describe, expect, it } from 'vitest';
import { MigrationState, type GuestPerfSample } from '../../../services/shared/gen/migd/v1/common.js';
import {
  baselineMsPerGib,
  combinedGuestSeries,
  downsample,
  guestHarm,
  hostCpuRates,
  mean,
  migrationWindow,
  paretoFront,
  policyCriterion,
  quantile,
  runFigures,
  runSeries,
  slotUse,
  startDelayMs,
  type StrategySummary,
  summarize,
  timelineBaseline,
} from '../../../stress/lab/metrics.js';
import { syntheticTimeline } from './synthetic.js';

describe('percentiles', () => {
  it('interpolates linearly between closest ranks (type 7)', () => {
    expect(quantile([1, 2, 3, 4], 0.5)).toBe(2.5);
    expect(quantile([5], 0.99)).toBe(5);
    expect(quantile([10, 20], 0.99)).toBeCloseTo(19.9, 10);
    // p99 of 1..100: position 98.01 → 99.01
    expect(quantile(Array.from({ length: 100 }, (_, i) => i + 1), 0.99)).toBeCloseTo(99.01, 10);
    expect(quantile([3, 1, 2], 0)).toBe(1);
    expect(quantile([3, 1, 2], 1)).toBe(3);
  });

  it('ignores NaN and returns NaN for nothing', () => {
    expect(quantile([], 0.5)).toBeNaN();
    expect(quantile([NaN, 4], 0.5)).toBe(4);
    expect(mean([NaN])).toBeNaN();
    expect(mean([1, 2, NaN, 3])).toBe(2);
  });
});

const at = (t: number, worker: number, ms: number): GuestPerfSample => ({
  time: new Date(t), guestMonoMs: t, worker, msPerGib: ms, pass: 1, pagesVerified: 0, integrityErrors: 0, heartbeatGapMs: 0, vmName: 'v',
});

describe('guest harm', () => {
  it('integrates the extra ms/GiB over the window, and the seconds of guest work lost', () => {
    // Baseline 500 ms/GiB; 1000 ms/GiB (half speed) for the 10 s of the migration.
    const series = [];
    for (let t = 0; t <= 20_000; t += 100) series.push({ t, v: t > 5000 && t <= 15_000 ? 1000 : 500 });
    const b = baselineMsPerGib(series, 5000, 5000);
    expect(b).toBe(500);
    const h = guestHarm(series, b, 5000, 15_000);
    expect(h.extraMsPerGibSec).toBeCloseTo(500 * 10, 6);
    expect(h.guestSecondsLost).toBeCloseTo(5, 6);
    expect(h.meanDuring).toBeCloseTo(1000, 6);
    expect(h.coveredSec).toBeCloseTo(10, 6);
  });

  it('counts no harm for a faster guest and none without a baseline', () => {
    const series = [{ t: 1000, v: 400 }, { t: 2000, v: 400 }];
    expect(guestHarm(series, 500, 0, 2000).extraMsPerGibSec).toBe(0);
    expect(guestHarm(series, NaN, 0, 2000).extraMsPerGibSec).toBeNaN();
    expect(guestHarm([], 500, 0, 2000).guestSecondsLost).toBeNaN();
  });

  it('does not stretch a sample over a long silence (the guest was paused or stalled)', () => {
    const h = guestHarm([{ t: 0, v: 1000 }, { t: 10_000, v: 1000 }], 500, 0, 10_000);
    expect(h.coveredSec).toBeCloseTo(2, 6);
  });

  it('combines per-worker samples when the guest sent no combined ones', () => {
    const s = combinedGuestSeries([at(100, 0, 1000), at(110, 1, 1000), at(200, 0, 500), at(0, 0, 0)]);
    expect(s.map((p) => p.v)).toEqual([1000, 500, 1000 / 3]);
    expect(combinedGuestSeries([at(100, 0, 1000), at(100, -1, 480)])).toEqual([{ t: 100, v: 480 }]);
  });

  it('estimates the baseline from single workers when no whole-guest sample precedes the start', () => {
    // Three equal workers at ~1650 ms/GiB each: the guest writes 1 GiB in 550 ms.
    const guest = [at(400, 2, 1620), at(600, 1, 1680), at(1100, -1, 9000), at(1150, 0, 27000), at(1200, -1, 9000)];
    expect(baselineMsPerGib(combinedGuestSeries(guest), 1000)).toBeNaN();
    expect(timelineBaseline(guest, 1000)).toBe(550);
    expect(timelineBaseline([at(500, -1, 700), at(600, 0, 1200), at(700, 1, 1200)], 1000)).toBe(700); // whole-guest samples win
    expect(timelineBaseline([at(1100, -1, 700)], 1000)).toBeNaN();
  });
});

describe('run figures', () => {
  it('reads totals, downtime, harm and CPU from a timeline', () => {
    const t = syntheticTimeline({ id: 'r1', start: 1_000_000, durationMs: 10_000, baseline: 560, during: 1120, downtimeMs: 42, srcCores: 1, dstCores: 0.5, throttle: true });
    const f = runFigures(t);
    expect(f.succeeded).toBe(true);
    expect(f.totalTimeMs).toBe(10_000);
    expect(f.downtimeMs).toBe(42);
    expect(f.baselineMsPerGib).toBe(560);
    expect(f.extraMsPerGibSec).toBeCloseTo(560 * 10, 0);
    expect(f.guestSecondsLost).toBeCloseTo(5, 1);
    expect(f.hostCpuSeconds).toBeCloseTo(15, 6);
    expect(f.maxThrottlePct).toBe(99);
    expect(migrationWindow(t)).toEqual({ start: 1_000_000, end: 1_010_000 });
  });

  it('reports a failed run without downtime, and integrity errors from the guest', () => {
    const t = syntheticTimeline({ id: 'r2', start: 0, durationMs: 4000, state: MigrationState.MIGRATION_STATE_FAILED, integrityErrors: 3 });
    const f = runFigures(t);
    expect(f.succeeded).toBe(false);
    expect(f.downtimeMs).toBeNaN();
    expect(f.integrityErrors).toBe(3);
    expect(f.error).toBe('completion timeout');
  });

  it("reads the start delay: dispatch (PREPARING) to the first streaming state, which QEMU's total time does not count", () => {
    const S = MigrationState;
    const t = syntheticTimeline({ id: 'r1', start: 1_000_000, durationMs: 10_000 });
    // PREPARING 500 ms before PRECOPY (syntheticTimeline): the set-up the total time leaves out.
    expect(runFigures(t).startDelayMs).toBe(500);
    expect(runFigures(t).totalTimeMs).toBe(10_000);
    const at = (ms: number, to: MigrationState) => ({ time: new Date(1_000_000 + ms), from: S.MIGRATION_STATE_UNSPECIFIED, to, reason: '' });
    const withTransitions = (...transitions: ReturnType<typeof at>[]) => ({ ...t, run: { ...t.run!, transitions } });
    // An adaptive run before issue 14's fix: 1.13 s of dirty-rate estimate before `migrate`; the
    // node's SETUP recorded after the PRECOPY its QEMU event brought: the earliest counts.
    expect(startDelayMs(withTransitions(at(0, S.MIGRATION_STATE_QUEUED), at(11, S.MIGRATION_STATE_PREPARING), at(1141, S.MIGRATION_STATE_SETUP), at(1123, S.MIGRATION_STATE_PRECOPY), at(9000, S.MIGRATION_STATE_POSTCOPY)))).toBe(1112);
    // No PREPARING recorded: from the run's start (startedAt = 1 000 000).
    expect(startDelayMs(withTransitions(at(40, S.MIGRATION_STATE_SETUP), at(60, S.MIGRATION_STATE_PRECOPY)))).toBe(40);
    // A run that failed before QEMU streamed has no start delay.
    expect(startDelayMs(withTransitions(at(0, S.MIGRATION_STATE_PREPARING), at(300, S.MIGRATION_STATE_FAILED)))).toBeNaN();
  });

  it('reads the storage figures: disk copied, storage phase, run time, blackout, bytes on the wire; none without a disk', () => {
    const t = syntheticTimeline({ id: 'r-disk', start: 0, durationMs: 6000, downtimeMs: 30 });
    const plain = runFigures(t);
    expect(plain.disk).toBe(false);
    expect(plain.diskBytes).toBeNaN();
    expect(plain.blackoutMs).toBeNaN();
    expect(plain.runTimeMs).toBe(6000);
    t.run!.stats = { ...t.run!.stats!, transferredBytes: 40 * 2 ** 20, disksCopied: 1, diskTransferredBytes: 70 * 2 ** 20, diskAllocatedBytes: 16 * 2 ** 20, storageMs: 1500, checks: [{ name: 'workload', passed: true, detail: '' }, { name: 'running', passed: false, detail: '' }] };
    t.run!.networkBlackout = { blackoutMs: 420, probesSent: 600, probesLost: 35, probeIntervalMs: 10, measuredBy: 'test', gapStartedAt: undefined, gapEndedAt: undefined };
    const f = runFigures(t, { wireBytes: 58 * 2 ** 20 });
    expect(f).toMatchObject({ disk: true, diskBytes: 70 * 2 ** 20, diskAllocatedBytes: 16 * 2 ** 20, storageMs: 1500, runTimeMs: 6000, blackoutMs: 420, probesLost: 35, probesSent: 600, checks: 2, checksPassed: 1, wireBytes: 58 * 2 ** 20 });
    // The disk's share of the wire: what the source sent less QEMU's memory stream.
    expect(f.diskWireBytes).toBe(18 * 2 ** 20);
    const [s] = summarize([{ group: 'g', label: 'mirror', figures: f }]);
    expect(s).toMatchObject({ disk: true, diskWireBytesP50: 18 * 2 ** 20, storageMsP50: 1500, storageDone: 1, blackoutMsP50: 420, checks: 2, checksFailed: 1 });
  });

  it('builds plot series in seconds since the start, with markers', () => {
    const t = syntheticTimeline({ id: 'r3', start: 50_000, durationMs: 8000, postcopyAtMs: 3000 });
    const s = runSeries(t);
    expect(s.remainingMiB[0]!.x).toBeCloseTo(0.25, 6);
    expect(Object.keys(s.guestMsPerGib).sort()).toEqual(['-1', '0', '1']);
    expect(s.guestMsPerGib['-1']![0]!.x).toBeLessThan(0);
    expect(s.markers.map((m) => m.label)).toEqual(expect.arrayContaining(['postcopy', 'post-copy', 'succeeded']));
    expect(s.cpuSource.every((p) => Math.abs(p.y - 1) < 1e-6)).toBe(true);
  });

  it('CPU rates ignore counters that restart', () => {
    const r = hostCpuRates([{ t: 0, src: 5, dst: 2 }, { t: 1000, src: 6, dst: 0 }], 0);
    expect(r.src[0]!.y).toBe(1);
    expect(r.dst[0]!.y).toBe(0);
  });

  it('downsampling keeps the peaks', () => {
    const pts = Array.from({ length: 10_000 }, (_, i) => ({ x: i, y: i === 5000 ? 99 : 1 }));
    const d = downsample(pts, 100);
    expect(d.length).toBeLessThanOrEqual(100);
    expect(Math.max(...d.map((p) => p.y))).toBe(99);
  });
});

describe('summaries per strategy', () => {
  it('computes completion, medians and p99 of completed runs, harm of all', () => {
    const mk = (id: string, durationMs: number, downtimeMs: number, state = MigrationState.MIGRATION_STATE_SUCCEEDED) =>
      runFigures(syntheticTimeline({ id, start: 0, durationMs, downtimeMs, state }));
    const rows = summarize([
      { group: 'g', label: 'ac', figures: mk('1', 10_000, 100) },
      { group: 'g', label: 'ac', figures: mk('2', 20_000, 300) },
      { group: 'g', label: 'ac', figures: mk('3', 30_000, 0, MigrationState.MIGRATION_STATE_FAILED) },
      { group: 'g', label: 'pc', figures: mk('4', 5000, 5) },
    ]);
    expect(rows.map((r) => r.label)).toEqual(['ac', 'pc']);
    const ac = rows[0]!;
    expect(ac.runs).toBe(3);
    expect(ac.succeeded).toBe(2);
    expect(ac.completionRate).toBeCloseTo(2 / 3, 10);
    expect(ac.totalTimeMsP50).toBe(15_000);
    expect(ac.downtimeMsP50).toBe(200);
    expect(ac.downtimeMsP99).toBeCloseTo(298, 6);
    expect(ac.guestSecondsLostP50).toBeGreaterThan(0);
    // Over every run that streamed, the failed one included (its set-up took its time too).
    expect(ac.startDelayMsP50).toBe(500);
    expect(rows[1]!.downtimeMsP99).toBe(5);
  });
});

describe('slotUse', () => {
  it('splits the slot time a drain lost into ramp, steady gaps and tail', () => {
    // 2 slots over [0, 10]: one migration fills a slot from 0, the second slot is first used at 2
    // (ramp: 2 slot·s lost); then each slot is free 1 s between two migrations of 3 s; the last
    // start is at 6 and the other slot is idle from 9 to 10 (tail).
    const intervals: [number, number][] = [
      [0, 3],
      [2, 5],
      [4, 7],
      [6, 9],
      [8, 10],
    ];
    const u = slotUse(intervals, 0, 10, 2);
    expect(u.fullAtMs).toBe(2);
    expect(u.lastStartMs).toBe(8);
    // Busy 3+3+3+3+2 = 14 of 2 × 10 = 20.
    expect(u.use).toBeCloseTo(0.7);
    expect(u.lost.ramp).toBe(2);
    // From 2 to 8: gaps [3,4] and [5,6] and [7,8]: 3 slot·s, over the starts at 4, 6 and 8.
    expect(u.lost.steady).toBe(3);
    expect(u.steadyStarts).toBe(3);
    // From 8 to 10: [9,10] idle in one slot.
    expect(u.lost.tail).toBe(1);
    expect(u.lost.ramp + u.lost.steady + u.lost.tail).toBeCloseTo((1 - u.use) * 20);
  });

  it('counts a migration still running at the end up to the end', () => {
    const u = slotUse([[0, -1]], 0, 4, 1);
    expect(u.use).toBe(1);
    expect(u.lost).toEqual({ ramp: 0, steady: 0, tail: 0 });
  });
});

describe("issue 14's criterion", () => {
  // Only the figures the front reads; the rest of a summary does not enter the verdicts.
  const sum = (group: string, label: string, totalS: number, lostS: number, succeeded = 3, runs = 3): StrategySummary =>
    ({ group, label, runs, succeeded, totalTimeMsP50: totalS * 1000, guestSecondsLostP50: lostS }) as unknown as StrategySummary;
  const kinds: Record<string, string> = { adaptive: 'adaptive', pc: 'fixed', ac: 'fixed', kv: 'kubevirt' };
  const kindOf = (_g: string, label: string): string => kinds[label] ?? '';

  it('places strategies against the front with 10 % slack', () => {
    const front = paretoFront([sum('w', 'adaptive', 10, 2), sum('w', 'pc', 9.5, 1.9), sum('w', 'ac', 20, 5), sum('w', 'kv', 5, 1, 2, 3)]);
    expect(front.get('pc')).toBe('front');
    expect(front.get('adaptive')).toBe('within 10 %');
    expect(front.get('ac')).toBe('off (behind adaptive, pc)');
    expect(front.get('kv')).toBe('incomplete');
  });

  it('is met when adaptive is on or near the front everywhere and each fixed strategy is off somewhere', () => {
    const c = policyCriterion([sum('w1', 'adaptive', 10, 2), sum('w1', 'pc', 9.5, 1.9), sum('w1', 'ac', 20, 5), sum('w2', 'adaptive', 5, 1), sum('w2', 'pc', 8, 3), sum('w2', 'ac', 30, 9, 1, 3), sum('w2', 'kv', 40, 20)], kindOf)!;
    expect(c.adaptiveCompleted).toEqual({ succeeded: 6, runs: 6 });
    expect(c.workloads.map((w) => [w.group, w.verdict, w.met])).toEqual([
      ['w1', 'within 10 %', true],
      ['w2', 'front', true],
    ]);
    // pc is off on w2; ac off on w1 and incomplete on w2; the KubeVirt preset is not judged.
    expect(c.fixed).toEqual([
      { label: 'pc', offOn: ['w2'], met: true },
      { label: 'ac', offOn: ['w1', 'w2'], met: true },
    ]);
    expect(c.met).toBe(true);
  });

  it('is not met when adaptive is clearly behind, fails a run, or a fixed strategy is never off', () => {
    const behind = policyCriterion([sum('w', 'adaptive', 12, 3), sum('w', 'pc', 10, 2)], kindOf)!;
    expect(behind.workloads[0]).toMatchObject({ verdict: 'off (behind pc)', met: false });
    expect(behind.met).toBe(false);
    const failed = policyCriterion([sum('w', 'adaptive', 5, 1, 2, 3), sum('w', 'pc', 10, 2), sum('v', 'adaptive', 5, 1), sum('v', 'pc', 9, 2)], kindOf)!;
    expect(failed.adaptiveCompleted).toEqual({ succeeded: 5, runs: 6 });
    expect(failed.workloads[0]).toMatchObject({ verdict: 'incomplete', met: false });
    expect(failed.met).toBe(false);
    const neverOff = policyCriterion([sum('w', 'adaptive', 10, 2), sum('w', 'pc', 10.5, 1.5)], kindOf)!;
    expect(neverOff.workloads[0]!.met).toBe(true);
    expect(neverOff.fixed).toEqual([{ label: 'pc', offOn: [], met: false }]);
    expect(neverOff.met).toBe(false);
    expect(policyCriterion([sum('w', 'pc', 10, 2)], kindOf)).toBeUndefined();
  });
});
