import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../services/shared/errors.js';
import {
  type DeepPartial,
  MigrationPolicy,
  MigrationState,
  MultifdCompression,
  PolicyActionKind,
  PolicyKind,
  ProgressSample,
  TimeoutAction,
} from '../../../services/shared/gen/migd/v1/common.js';
import {
  type ConvergencePolicy,
  OVIRT_STEPS,
  fixedPolicy,
  kubevirtPolicy,
  novaDowntimeSteps,
  policyFor,
  presetPolicy,
  toPolicyAction,
} from '../../../services/coordinator/domain/policy/index.js';
import { GiB, MiB } from '../../../services/coordinator/domain/units.js';
import { loadTrace, replay, summary } from './traces.js';

const build = (fields: DeepPartial<MigrationPolicy>, memoryBytes: number): ConvergencePolicy => policyFor(MigrationPolicy.fromPartial(fields), memoryBytes);

/**
 * A migration stuck in pre-copy: remaining falls for `fallMs`, then sits on a plateau; one pass
 * every `passMs`.
 */
function stalled(opts: { untilMs: number; everyMs: number; totalBytes: number; fallMs?: number; passMs?: number }): ProgressSample[] {
  const out: ProgressSample[] = [];
  const fall = opts.fallMs ?? 0;
  for (let t = opts.everyMs; t <= opts.untilMs; t += opts.everyMs) {
    const remaining = t < fall ? opts.totalBytes - ((opts.totalBytes - 100 * MiB) * t) / fall : 100 * MiB;
    out.push(
      ProgressSample.fromPartial({
        elapsedMs: t,
        state: MigrationState.MIGRATION_STATE_PRECOPY,
        qemuStatus: 'active',
        pass: 1 + Math.floor(t / (opts.passMs ?? 5000)),
        totalBytes: opts.totalBytes,
        remainingBytes: Math.round(remaining),
        throughputMbps: 100,
        dirtyPagesRate: 3000,
        pageSize: 4096,
        expectedDowntimeMs: 8000,
        downtimeLimitMs: 300,
      }),
    );
  }
  return out;
}

describe('Nova preset', () => {
  it('computes the downtime ramp: D/steps + i·(D − D/steps)/steps, delay 75 s per GiB', () => {
    const steps = novaDowntimeSteps(4 * GiB);
    expect(steps.map((s) => s.downtimeMs)).toEqual([50, 95, 140, 185, 230, 275, 320, 365, 410, 455, 500]);
    expect(steps.map((s) => s.afterMs)).toEqual([0, 300, 600, 900, 1200, 1500, 1800, 2100, 2400, 2700, 3000].map((s) => s * 1000));
    // The delay scales with memory; Nova counts less than 2 GiB of RAM as 2 GiB.
    expect(novaDowntimeSteps(8 * GiB)[1]?.afterMs).toBe(600_000);
    expect(novaDowntimeSteps(3 * GiB)[1]?.afterMs).toBe(225_000);
    expect(novaDowntimeSteps(GiB)[1]?.afterMs).toBe(150_000);
    expect(novaDowntimeSteps(512 * MiB)[1]?.afterMs).toBe(150_000);
    // Nova's own docstring example: 400 ms, 10 steps, 30 s delay, 3 GB.
    expect(novaDowntimeSteps(3 * GiB, { downtimeMs: 400, delaySecPerGib: 30 }).map((s) => [s.afterMs / 1000, s.downtimeMs])).toEqual([
      [0, 40],
      [90, 76],
      [180, 112],
      [270, 148],
      [360, 184],
      [450, 220],
      [540, 256],
      [630, 292],
      [720, 328],
      [810, 364],
      [900, 400],
    ]);
  });

  it('steps the downtime on time and aborts at 800 s per GiB', () => {
    const policy = build({ kind: PolicyKind.POLICY_KIND_NOVA }, GiB);
    expect(policy.effective.downtimeLimitMs).toBe(50); // step 0 is in force from the start
    const { actions } = replay(policy, stalled({ untilMs: 1_700_000, everyMs: 10_000, totalBytes: GiB }));
    expect(summary(actions)).toEqual([
      [150_000, 'SET_DOWNTIME', 95],
      [300_000, 'SET_DOWNTIME', 140],
      [450_000, 'SET_DOWNTIME', 185],
      [600_000, 'SET_DOWNTIME', 230],
      [750_000, 'SET_DOWNTIME', 275],
      [900_000, 'SET_DOWNTIME', 320],
      [1_050_000, 'SET_DOWNTIME', 365],
      [1_200_000, 'SET_DOWNTIME', 410],
      [1_350_000, 'SET_DOWNTIME', 455],
      [1_500_000, 'SET_DOWNTIME', 500],
      [1_600_000, 'ABORT', 0], // 800 s × 2 GiB (Nova's floor)
    ]);
    expect(actions[0]?.reason).toBe('Nova downtime step 1/10, one every 150 s for 2.00 GiB: downtime limit 95 ms after 2m30s');
    expect(actions[10]?.reason).toContain('completion timeout: not completed after 26m40s (800 s/GiB × 2.00 GiB)');
  });

  it('takes the latest due step when samples are sparse (update_downtime)', () => {
    const policy = build({ kind: PolicyKind.POLICY_KIND_NOVA }, 4 * GiB);
    const { actions } = replay(policy, stalled({ untilMs: 2_000_000, everyMs: 700_000, totalBytes: 4 * GiB }));
    // One step every 300 s: at 700 s steps 1 and 2 are due (95 is skipped), at 1400 s step 4.
    expect(summary(actions)).toEqual([
      [700_000, 'SET_DOWNTIME', 140],
      [1_400_000, 'SET_DOWNTIME', 230],
    ]);
  });

  it('force-completes on timeout: post-copy when permitted, else pause', () => {
    const samples = stalled({ untilMs: 1_700_000, everyMs: 100_000, totalBytes: GiB });
    const pause = build({ kind: PolicyKind.POLICY_KIND_NOVA, timeoutAction: TimeoutAction.TIMEOUT_ACTION_FORCE_COMPLETE }, GiB);
    expect(summary(replay(pause, samples).actions).at(-1)).toEqual([1_600_000, 'PAUSE_GUEST', 0]);
    const pc = build({ kind: PolicyKind.POLICY_KIND_NOVA, timeoutAction: TimeoutAction.TIMEOUT_ACTION_FORCE_COMPLETE, postcopy: { enabled: true } }, GiB);
    expect(pc.effective.postcopy).toMatchObject({ enabled: true, onDemandOnly: true, preempt: true });
    expect(summary(replay(pc, samples).actions).at(-1)).toEqual([1_600_000, 'START_POSTCOPY', 0]);
  });

  it('takes its top downtime D from max_downtime_ms', () => {
    const policy = build({ kind: PolicyKind.POLICY_KIND_NOVA, maxDowntimeMs: 1000 }, GiB);
    expect(policy.effective.downtimeSteps.map((s) => s.downtimeMs)).toEqual([100, 190, 280, 370, 460, 550, 640, 730, 820, 910, 1000]);
    expect(policy.effective.downtimeLimitMs).toBe(100);
  });
});

describe('oVirt presets', () => {
  it('step the downtime by completed passes, one step per new pass, then their final step', () => {
    const trace = loadTrace('hotset-stall'); // passes: 22.4 s, then every 3 s
    const ramp: [number, string, number][] = [
      [23_000, 'SET_DOWNTIME', 150], // 1 pass completed
      [26_000, 'SET_DOWNTIME', 200], // 2
      [29_000, 'SET_DOWNTIME', 300], // 3
      [32_000, 'SET_DOWNTIME', 400], // 4
      [38_000, 'SET_DOWNTIME', 500], // 6
    ];
    const minimal = build({ kind: PolicyKind.POLICY_KIND_OVIRT_MINIMAL_DOWNTIME }, 256 * MiB);
    expect(minimal.effective.downtimeLimitMs).toBe(100);
    expect(summary(replay(minimal, trace).actions)).toEqual([...ramp, [41_000, 'ABORT', 0]]);
    const suspend = build({ kind: PolicyKind.POLICY_KIND_OVIRT_SUSPEND_WORKLOAD }, 256 * MiB);
    expect(summary(replay(suspend, trace).actions)).toEqual([...ramp, [41_000, 'SET_DOWNTIME', 5000], [44_000, 'ABORT', 0]]);
    const postcopy = build({ kind: PolicyKind.POLICY_KIND_OVIRT_POSTCOPY }, 256 * MiB);
    const pc = replay(postcopy, trace).actions;
    expect(summary(pc)).toEqual([...ramp, [41_000, 'START_POSTCOPY', 0]]);
    expect(pc.at(-1)?.reason).toBe('oVirt postcopy: downtime schedule exhausted: switching to post-copy after 7 completed pass(es)');
  });

  it('takes at most one entry per newly observed pass, like vdsm', () => {
    const policy = build({ kind: PolicyKind.POLICY_KIND_OVIRT_MINIMAL_DOWNTIME }, 256 * MiB);
    const at = (t: number, pass: number): ProgressSample =>
      ProgressSample.fromPartial({ elapsedMs: t, state: MigrationState.MIGRATION_STATE_PRECOPY, qemuStatus: 'active', pass, totalBytes: 256 * MiB, remainingBytes: 10 * MiB });
    // A jump from pass 1 to pass 9 (7+ passes completed at once), then the same pass again.
    const { actions } = replay(policy, [at(1000, 1), at(2000, 9), at(3000, 9), at(4000, 10), at(5000, 11)]);
    expect(summary(actions)).toEqual([
      [2000, 'SET_DOWNTIME', 150],
      [4000, 'SET_DOWNTIME', 200],
      [5000, 'SET_DOWNTIME', 300],
    ]);
  });

  it('fill in the schedule and, for post-copy, post-copy on demand without preempt', () => {
    expect(presetPolicy(PolicyKind.POLICY_KIND_OVIRT_MINIMAL_DOWNTIME).downtimeSteps).toEqual(OVIRT_STEPS);
    expect(OVIRT_STEPS.map((s) => [s.afterPasses, s.downtimeMs])).toEqual([
      [1, 150],
      [2, 200],
      [3, 300],
      [4, 400],
      [6, 500],
    ]);
    const pc = presetPolicy(PolicyKind.POLICY_KIND_OVIRT_POSTCOPY);
    expect(pc.postcopy).toEqual({ enabled: true, afterPasses: 0, afterMs: 0, onDemandOnly: true, preempt: false });
    const policy = policyFor(pc, GiB);
    expect(policy.requirements.capabilities).toEqual(['postcopy-ram', 'return-path']);
  });
});

describe('KubeVirt preset', () => {
  it('aborts at 150 s per GiB', () => {
    const policy = build({ kind: PolicyKind.POLICY_KIND_KUBEVIRT }, 256 * MiB);
    const { actions } = replay(policy, loadTrace('hotset-stall'));
    expect(summary(actions)).toEqual([[38_000, 'ABORT', 0]]); // 150 s × 0.25 GiB = 37.5 s
    expect(actions[0]?.reason).toBe('completion timeout: not completed after 37.5 s (150 s/GiB × 0.25 GiB); aborting; the guest keeps running on the source');
  });

  it('aborts after 150 s without a new minimum of remaining bytes', () => {
    const policy = build({ kind: PolicyKind.POLICY_KIND_KUBEVIRT }, 4 * GiB); // completion 600 s
    const { actions } = replay(policy, stalled({ untilMs: 300_000, everyMs: 1000, totalBytes: 4 * GiB, fallMs: 20_000 }));
    expect(summary(actions)).toEqual([[170_000, 'ABORT', 0]]);
    expect(actions[0]?.reason).toBe('progress timeout: remaining has not gone below 100.0 MiB since 20.0 s (2m30s without a new minimum); aborting; the guest keeps running on the source');
  });

  it('switches to post-copy at the completion timeout when post-copy is allowed (progress still aborts)', () => {
    const policy = build({ kind: PolicyKind.POLICY_KIND_KUBEVIRT, postcopy: { enabled: true } }, 256 * MiB);
    expect(summary(replay(policy, loadTrace('hotset-stall')).actions)).toEqual([[38_000, 'START_POSTCOPY', 0]]);
    const stuck = build({ kind: PolicyKind.POLICY_KIND_KUBEVIRT, postcopy: { enabled: true } }, 4 * GiB);
    expect(summary(replay(stuck, stalled({ untilMs: 300_000, everyMs: 1000, totalBytes: 4 * GiB, fallMs: 20_000 })).actions)).toEqual([[170_000, 'ABORT', 0]]);
  });

  it('is filled in by presetPolicy', () => {
    expect(presetPolicy(PolicyKind.POLICY_KIND_KUBEVIRT)).toMatchObject({
      kind: PolicyKind.POLICY_KIND_KUBEVIRT,
      completionTimeoutSecPerGib: 150,
      progressTimeoutSec: 150,
      timeoutAction: TimeoutAction.TIMEOUT_ACTION_ABORT,
      maxBandwidthBytesPerSec: 0,
    });
  });
});

describe('KubeVirt migration-policy fields (kubevirtPolicy)', () => {
  it('defaults to the KUBEVIRT preset', () => {
    expect(kubevirtPolicy()).toEqual(presetPolicy(PolicyKind.POLICY_KIND_KUBEVIRT));
  });

  it('allowPostCopy + allowAutoConverge: throttled from the start, post-copy at the completion timeout, abort on no progress', () => {
    const p = kubevirtPolicy({ allowPostCopy: true, allowAutoConverge: true, completionTimeoutPerGiB: 100, progressTimeout: 60 });
    const policy = policyFor(p, 512 * MiB);
    expect(policy.requirements).toMatchObject({ postcopy: true, postcopyPreempt: false, autoConverge: 'on' });
    expect(policy.timeouts).toMatchObject({ completionMs: 50_000, progressMs: 60_000 });
    expect(policy.timeouts.onCompletion).toBe(PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY);
    expect(policy.timeouts.onProgress).toBe(PolicyActionKind.POLICY_ACTION_KIND_ABORT);
    // The 36 MB hot set never converges: post-copy at 100 s/GiB × 0.25 GiB.
    expect(summary(replay(policyFor(p, 256 * MiB), loadTrace('hotset-stall')).actions)).toEqual([[25_000, 'START_POSTCOPY', 0]]);
  });

  it('refuses a negative or non-finite field', () => {
    expect(() => kubevirtPolicy({ completionTimeoutPerGiB: -1 })).toThrow(/completionTimeoutPerGiB must be a finite number >= 0/);
    expect(() => kubevirtPolicy({ progressTimeout: Number.NaN })).toThrow(RangeError);
  });
});

describe('fixed policies', () => {
  it('do nothing by themselves (the node runs their capabilities)', () => {
    expect(replay(build({}, 256 * MiB), loadTrace('hotset-stall')).actions).toEqual([]);
  });

  it('abort on the progress timeout measured from the last new minimum', () => {
    const policy = build({ progressTimeoutSec: 30 }, 256 * MiB);
    const { actions } = replay(policy, loadTrace('hotset-stall'));
    // The lowest remaining seen is at 22 s (end of pass 1); the 3 s passes never go below it.
    expect(summary(actions)).toEqual([[52_000, 'ABORT', 0]]);
    expect(actions[0]?.reason).toContain('remaining has not gone below 4.2 MiB since 22.0 s');
  });

  it('follow a downtime schedule by passes or by time', () => {
    const byPass = build({ downtimeSteps: [{ afterPasses: 2, downtimeMs: 500 }, { afterPasses: 4, downtimeMs: 1000 }] }, 256 * MiB);
    expect(summary(replay(byPass, loadTrace('hotset-stall')).actions)).toEqual([
      [26_000, 'SET_DOWNTIME', 500],
      [32_000, 'SET_DOWNTIME', 1000],
    ]);
    const byTime = build({ downtimeSteps: [{ afterMs: 10_000, downtimeMs: 400 }, { afterMs: 30_000, downtimeMs: 800 }] }, 256 * MiB);
    expect(summary(replay(byTime, loadTrace('hotset-stall')).actions)).toEqual([
      [10_000, 'SET_DOWNTIME', 400],
      [30_000, 'SET_DOWNTIME', 800],
    ]);
  });

  it('force-complete on timeout with post-copy if enabled, else pause the guest', () => {
    const timeouts = { completionTimeoutSecPerGib: 100, timeoutAction: TimeoutAction.TIMEOUT_ACTION_FORCE_COMPLETE };
    const pc = policyFor(fixedPolicy({ strategy: 'postcopy-after-passes', passes: 3 }, timeouts), 256 * MiB);
    expect(pc.effective.postcopy).toMatchObject({ enabled: true, afterPasses: 3, onDemandOnly: false });
    expect(summary(replay(pc, loadTrace('hotset-stall')).actions)).toEqual([[25_000, 'START_POSTCOPY', 0]]);
    const pause = policyFor(fixedPolicy({ strategy: 'auto-converge', initialPct: 30, incrementPct: 15 }, timeouts), 256 * MiB);
    expect(pause.requirements.autoConverge).toBe('on');
    expect(summary(replay(pause, loadTrace('hotset-stall')).actions)).toEqual([[25_000, 'PAUSE_GUEST', 0]]);
  });

  it('cover the seed studies’ strategies', () => {
    const strategies = [
      fixedPolicy({ strategy: 'precopy', downtimeMs: 1000, bandwidthBytesPerSec: 100 * MiB }),
      fixedPolicy({ strategy: 'auto-converge' }),
      fixedPolicy({ strategy: 'postcopy-after-passes' }),
      fixedPolicy({ strategy: 'postcopy-after-ms', afterMs: 60_000 }),
      fixedPolicy({ strategy: 'xbzrle' }),
      fixedPolicy({ strategy: 'multifd', channels: 4, compression: MultifdCompression.MULTIFD_COMPRESSION_ZSTD }),
    ];
    expect(strategies.map((p) => policyFor(p, GiB).requirements.capabilities)).toEqual([
      [],
      ['auto-converge'],
      ['postcopy-preempt', 'postcopy-ram', 'return-path'],
      ['postcopy-preempt', 'postcopy-ram', 'return-path'],
      ['xbzrle'],
      ['multifd'],
    ]);
    expect(strategies.every((p) => p.kind === PolicyKind.POLICY_KIND_FIXED)).toBe(true);
  });
});

describe('policyFor validation', () => {
  const refuse = (fields: DeepPartial<MigrationPolicy>, message: RegExp): void => {
    let err: unknown;
    try {
      build(fields, GiB);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as Error).message).toMatch(message);
  };

  it('rejects contradictions, naming the fields', () => {
    refuse({ multifd: { enabled: true }, postcopy: { enabled: true } }, /multifd cannot be combined with post-copy/);
    refuse({ multifd: { enabled: true }, xbzrle: { enabled: true } }, /xbzrle cannot be combined with multifd/);
    refuse({ postcopy: { enabled: false, afterPasses: 2 } }, /postcopy\.enabled is false/);
    refuse({ postcopy: { enabled: true, onDemandOnly: true, afterPasses: 2 } }, /on_demand_only contradicts/);
    refuse({ autoConverge: { enabled: true, initialPct: 60, maxPct: 50 } }, /initial_pct \(60\) exceeds max_pct \(50\)/);
    refuse({ downtimeSteps: [{ afterPasses: 1, afterMs: 5, downtimeMs: 100 }] }, /either after_passes or after_ms/);
    refuse({ downtimeSteps: [{ afterPasses: 3, downtimeMs: 100 }, { afterPasses: 1, downtimeMs: 200 }] }, /ascending order/);
    refuse({ timeoutAction: TimeoutAction.TIMEOUT_ACTION_FORCE_COMPLETE }, /FORCE_COMPLETE is set but the fixed policy has no completion_timeout_sec_per_gib/);
    refuse({ kind: PolicyKind.POLICY_KIND_ADAPTIVE, downtimeSteps: [{ afterPasses: 1, downtimeMs: 500 }] }, /adaptive policy chooses its own downtime/);
    refuse({ kind: PolicyKind.POLICY_KIND_ADAPTIVE, downtimeLimitMs: 3000 }, /downtime_limit_ms \(3000\) exceeds max_downtime_ms \(2000, the adaptive default\)/);
    refuse({ kind: PolicyKind.POLICY_KIND_ADAPTIVE, postcopy: { enabled: true, afterPasses: 1 } }, /decides itself when to switch to post-copy/);
    refuse({ kind: PolicyKind.POLICY_KIND_OVIRT_POSTCOPY, multifd: { enabled: true } }, /ends in post-copy, which multifd rules out/);
    refuse({ kind: PolicyKind.POLICY_KIND_NOVA, downtimeSteps: [{ afterPasses: 1, downtimeMs: 50 }] }, /Nova steps the downtime by time/);
    refuse({ kind: PolicyKind.POLICY_KIND_OVIRT_MINIMAL_DOWNTIME, downtimeSteps: [{ afterMs: 1000, downtimeMs: 50 }] }, /oVirt steps the downtime by pre-copy passes/);
    refuse({ kind: 42 as PolicyKind }, /unknown policy kind 42/);
  });

  it('reports every problem at once', () => {
    refuse({ multifd: { enabled: true }, postcopy: { enabled: true }, xbzrle: { enabled: true } }, /post-copy.*; xbzrle/);
  });

  it('allows adaptive with multifd (then without post-copy)', () => {
    const p = build({ kind: PolicyKind.POLICY_KIND_ADAPTIVE, multifd: { enabled: true } }, GiB);
    expect(p.requirements.postcopy).toBe(false);
    expect(p.requirements.autoConverge).toBe('armed');
  });

  it('turns actions into proto PolicyActions with the policy as actor', () => {
    const policy = build({ kind: PolicyKind.POLICY_KIND_KUBEVIRT }, 256 * MiB);
    const decision = replay(policy, loadTrace('hotset-stall')).actions[0]!;
    const at = new Date('2025-01-01T00:00:38Z');
    expect(toPolicyAction(decision, policy.name, at)).toEqual({ time: at, elapsedMs: 38_000, kind: decision.kind, value: 0, reason: decision.reason, actor: 'policy:kubevirt' });
  });
});

describe('presetPolicy', () => {
  it('fills every preset with its parameters', () => {
    expect(presetPolicy(PolicyKind.POLICY_KIND_FIXED)).toMatchObject({ kind: PolicyKind.POLICY_KIND_FIXED, downtimeLimitMs: 300, completionTimeoutSecPerGib: 0 });
    expect(presetPolicy(PolicyKind.POLICY_KIND_ADAPTIVE)).toMatchObject({
      downtimeLimitMs: 300,
      maxDowntimeMs: 2000,
      postcopy: { enabled: true, onDemandOnly: true, preempt: true },
      autoConverge: { enabled: false, initialPct: 20, incrementPct: 10, maxPct: 99 },
      completionTimeoutSecPerGib: 300,
      progressTimeoutSec: 150,
    });
    expect(presetPolicy(PolicyKind.POLICY_KIND_NOVA)).toMatchObject({ downtimeLimitMs: 50, maxDowntimeMs: 500, completionTimeoutSecPerGib: 800, progressTimeoutSec: 0, downtimeSteps: [] });
    expect(presetPolicy(PolicyKind.POLICY_KIND_NOVA, { vmMemoryBytes: 4 * GiB }).downtimeSteps).toEqual(novaDowntimeSteps(4 * GiB));
    expect(presetPolicy(PolicyKind.POLICY_KIND_OVIRT_SUSPEND_WORKLOAD)).toMatchObject({ downtimeLimitMs: 100, downtimeSteps: OVIRT_STEPS });
    // Every preset is accepted by policyFor as it is.
    for (const kind of [1, 2, 3, 4, 5, 6, 7] as PolicyKind[]) expect(() => policyFor(presetPolicy(kind, { vmMemoryBytes: GiB }), GiB)).not.toThrow();
  });
});
