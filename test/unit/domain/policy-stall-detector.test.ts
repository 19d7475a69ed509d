import { describe, expect, it } from 'vitest';
import { type DeepPartial, MigrationPolicy, MigrationState, PolicyKind, ProgressSample, TimeoutAction } from '../../../services/shared/gen/migd/v1/common.js';
import { type StallDetectorPolicy, type StallDetectorState, kubevirtPolicy, policyFor, policyName, presetPolicy } from '../../../services/coordinator/domain/policy/index.js';
import { GiB, MiB } from '../../../services/coordinator/domain/units.js';
import { loadTrace, replay, summary } from './traces.js';

const build = (fields: DeepPartial<MigrationPolicy>, memoryBytes: number): StallDetectorPolicy =>
  policyFor(MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_KUBEVIRT_STALL_DETECTOR, ...fields }), memoryBytes) as StallDetectorPolicy;

/**
 * A pre-copy whose backlog plateaus: pass 1 sends `totalBytes` in `pass1Ms`, then every pass lasts
 * `passMs` and starts with `levels[i]` bytes remaining (the last level repeats), falling to 10 % of
 * it by the pass's end; a sample every 500 ms at `mbps` of throughput.
 */
function plateau(opts: { untilMs: number; totalBytes: number; pass1Ms: number; passMs: number; levels: readonly number[]; mbps: number }): ProgressSample[] {
  const out: ProgressSample[] = [];
  for (let t = 500; t <= opts.untilMs; t += 500) {
    let pass: number;
    let remaining: number;
    if (t < opts.pass1Ms) {
      pass = 1;
      remaining = opts.totalBytes * (1 - t / opts.pass1Ms);
    } else {
      const i = Math.floor((t - opts.pass1Ms) / opts.passMs);
      const level = opts.levels[Math.min(i, opts.levels.length - 1)] ?? 0;
      pass = i + 2;
      remaining = level * (1 - (0.9 * (t - opts.pass1Ms - i * opts.passMs)) / opts.passMs);
    }
    out.push(
      ProgressSample.fromPartial({
        elapsedMs: t,
        state: MigrationState.MIGRATION_STATE_PRECOPY,
        qemuStatus: 'active',
        pass,
        totalBytes: opts.totalBytes,
        remainingBytes: Math.round(remaining),
        throughputMbps: opts.mbps,
        dirtyPagesRate: 10_000,
        pageSize: 4096,
        expectedDowntimeMs: 2000,
        downtimeLimitMs: 300,
      }),
    );
  }
  return out;
}

// 100 Mbit/s ≈ 11.9 MiB/s: 100 MiB remaining imply ≈8.4 s of pause, 10 MiB ≈0.84 s.
const MBPS = 100;
const ONE_GIB = { untilMs: 140_000, totalBytes: GiB, pass1Ms: 20_000, passMs: 4000, mbps: MBPS } as const;

describe('KubeVirt stall detector preset (VEP 248)', () => {
  it('has VEP 248 defaults: max downtime 900 ms, QEMU target 300 ms, 150 s/GiB, no legacy progress timeout', () => {
    expect(presetPolicy(PolicyKind.POLICY_KIND_KUBEVIRT_STALL_DETECTOR)).toMatchObject({
      kind: PolicyKind.POLICY_KIND_KUBEVIRT_STALL_DETECTOR,
      downtimeLimitMs: 300,
      maxDowntimeMs: 900,
      completionTimeoutSecPerGib: 150,
      progressTimeoutSec: 0,
      timeoutAction: TimeoutAction.TIMEOUT_ACTION_ABORT,
    });
    const p = build({}, GiB);
    expect(policyName(p.kind)).toBe('kubevirt-stall-detector');
    expect(p.tuning).toMatchObject({ ewmaAlpha: 0.4, stallProgressTimeoutMs: 40_000, stallMargin: 0.04, completionTimeoutFactor: 2, precopyPossibleFactor: 1.5 });
    expect(p.timeouts.completionMs).toBe(150_000);
    expect(p.requirements.postcopy).toBe(false);
    // kubevirtPolicy with the feature gate on: the same preset, post-copy on demand when allowed.
    const kv = kubevirtPolicy({ stallDetection: true, allowPostCopy: true });
    expect(kv.kind).toBe(PolicyKind.POLICY_KIND_KUBEVIRT_STALL_DETECTOR);
    expect(kv.postcopy).toMatchObject({ enabled: true, onDemandOnly: true, preempt: false });
    expect(kubevirtPolicy({ stallDetection: true, maxDowntimeMs: 200 })).toMatchObject({ maxDowntimeMs: 200, downtimeLimitMs: 200 });
    expect(() => kubevirtPolicy({ maxDowntimeMs: 200 })).toThrow(RangeError);
  });

  it('refuses a downtime schedule', () => {
    expect(() => build({ downtimeSteps: [{ afterPasses: 1, downtimeMs: 500 }] }, GiB)).toThrow(/kubevirt-stall-detector policy has no downtime schedule/);
  });

  it('does nothing while remaining bytes keep falling by more than 4 % per 40 s', () => {
    // Each pass starts 8 % lower than the last: never within 4 % of a level 40 s old.
    const levels = Array.from({ length: 40 }, (_, i) => 400 * MiB * 0.92 ** i);
    expect(replay(build({ postcopy: { enabled: true } }, GiB), plateau({ ...ONE_GIB, levels })).actions).toEqual([]);
  });

  it('detects the stall 40 s after the plateau began and switches to post-copy at a local minimum', () => {
    // Plateau from pass 2 (t = 20 s): 100 MiB, with 80 MiB every fourth pass (a local minimum).
    const levels = Array.from({ length: 40 }, (_, i) => (i % 4 === 3 ? 80 : 100) * MiB);
    const { actions } = replay(build({ postcopy: { enabled: true } }, GiB), plateau({ ...ONE_GIB, levels }));
    // Boundaries every 4 s from 20 s. At 60 s the 100 MiB are no lower than at 20 s (40 s before):
    // stalled, but the best level since then is 80 MiB (32 and 48 s), so it waits; the next 80 MiB
    // boundary, 64 s, is the local minimum.
    expect(summary(actions)).toEqual([[64_000, 'START_POSTCOPY', 0]]);
    expect(actions[0]?.reason).toMatch(/local minimum/);
    expect(actions[0]?.reason).toMatch(/switching to post-copy/);
  });

  it('without post-copy raises the downtime to max when the implied pause is within 1.5x, and aborts 60 s later without a switch-over', () => {
    // 12 MiB plateau ≈1.0 s of pause at 100 Mbit/s: ≤ 1.5 × 900 ms.
    const levels = [12 * MiB];
    const { actions } = replay(build({}, GiB), plateau({ ...ONE_GIB, levels }));
    expect(summary(actions)).toEqual([
      [60_000, 'SET_DOWNTIME', 900],
      [120_000, 'ABORT', 0],
    ]);
    expect(actions[1]?.reason).toMatch(/switch-over timeout/);
  });

  it('without post-copy aborts at the stall when the implied pause is above 1.5 x max', () => {
    const { actions } = replay(build({}, GiB), plateau({ ...ONE_GIB, levels: [100 * MiB] }));
    expect(summary(actions)).toEqual([[60_000, 'ABORT', 0]]);
    expect(actions[0]?.reason).toMatch(/> 1.5 × max 900 ms and post-copy is not allowed/);
  });

  it('relaxes the target when the best level does not come back', () => {
    // A 60 MiB dip at 28 s, then 100 and 96 MiB alternating. Stalled at 60 s (96 MiB is within 4 %
    // of the 100 MiB at 20 s) with the 60 MiB as the best level, which never returns; after 40 s of
    // patience (100 s) the target becomes the lowest level seen since the stall, 96 MiB — this one.
    const levels = [100, 100, 60, ...Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? 100 : 96))].map((m) => m * MiB);
    const { actions } = replay(build({ postcopy: { enabled: true } }, GiB), plateau({ ...ONE_GIB, levels }));
    expect(summary(actions)).toEqual([[100_000, 'START_POSTCOPY', 0]]);
    expect(actions[0]?.reason).toMatch(/target relaxed to 96\.0 MiB/);
  });

  it('at the completion budget: post-copy when the implied pause fits in 2x the budget minus the time spent, else abort', () => {
    // 128 MiB guest: budget 150 s/GiB × 0.125 GiB = 18.75 s, before any stall can be seen.
    const small = { untilMs: 60_000, totalBytes: 128 * MiB, pass1Ms: 10_000, passMs: 2000, mbps: MBPS, levels: [60 * MiB] };
    expect(summary(replay(build({ postcopy: { enabled: true } }, 128 * MiB), plateau(small)).actions)).toEqual([[19_000, 'START_POSTCOPY', 0]]);
    expect(summary(replay(build({}, 128 * MiB), plateau(small)).actions)).toEqual([[19_000, 'ABORT', 0]]);
    // 600 MiB left ≈50 s of pause > 37.5 − 19 s: abort even with post-copy.
    const huge = { ...small, totalBytes: 128 * MiB, levels: [600 * MiB] };
    const { actions } = replay(build({ postcopy: { enabled: true } }, 128 * MiB), plateau(huge));
    expect(summary(actions)).toEqual([[19_000, 'ABORT', 0]]);
    expect(actions[0]?.reason).toMatch(/exceeds the/);
  });

  it('smooths bandwidth with alpha 0.4 and keeps its state as plain data', () => {
    const p = build({ postcopy: { enabled: true } }, GiB);
    const samples = plateau({ ...ONE_GIB, untilMs: 1500, levels: [MiB] }).map((s, i) => ({ ...s, throughputMbps: [100, 200, 100][i] ?? 0 }));
    let st = p.initialState();
    for (const s of samples) st = JSON.parse(JSON.stringify(p.decide(st, s, s.elapsedMs).state)) as StallDetectorState;
    const bps = (mbps: number): number => (mbps * 1e6) / 8;
    expect(st.ewmaBytesPerSec).toBeCloseTo(0.4 * bps(100) + 0.6 * (0.4 * bps(200) + 0.6 * bps(100)), 3);
  });

  it('on the recorded hot-set plateau (hotset-stall): post-copy at the first boundary 40 s after the plateau began', () => {
    // 16.4 MB from pass 2 (≈22 s) on: the first boundary ≥ 40 s later is stalled and at the best level.
    const trace = loadTrace('hotset-stall');
    const { actions } = replay(build({ postcopy: { enabled: true } }, GiB), trace);
    expect(actions).toHaveLength(1);
    const at = actions[0]!.elapsedMs;
    const firstPlateau = trace.find((s) => s.pass === 2)!.elapsedMs;
    expect(at).toBeGreaterThanOrEqual(firstPlateau + 40_000);
    expect(at).toBeLessThan(firstPlateau + 40_000 + 4000);
    expect(summary(actions)[0]?.[1]).toBe('START_POSTCOPY');
  });
});
