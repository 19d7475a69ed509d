/**
 * Issue 14's criterion runs as policy fixtures: the 21 adaptive runs of
 * docs/lab/policies-720-criterion (seven workloads × 3, VMs without history, 720 Mbit/s; read from
 * its runs.tar.gz), each replayed through the adaptive policy with its progress, guest samples and
 * transitions as the coordinator received them, up to the policy's first step. The step each
 * workload gets, and the pass, follow from the default cost model (cost.ts, fitted to these runs)
 * and the gate (nothing where pre-copy converges within the current or the next pass):
 *  - idle: nothing — pre-copy converges;
 *  - hot-small: post-copy once the backlog is seen to hold at its ≈0.6–0.9 s working set (a raise's
 *    full stop of W costs more than post-copy's c + s·b above c ÷ (1 + h − s) ≈ 0.42 s), not before:
 *    while pre-copy is predicted to converge, nothing;
 *  - moderate: post-copy at the first verdict that says pre-copy does not converge (pass 2, or
 *    pass 4 where the pass-2 rates still predicted convergence);
 *  - load A, heavy: post-copy at the first sample after the pass-1 sync (pass 2);
 *  - compressible: multifd zstd was chosen before the start, and pre-copy converges: nothing;
 *  - phase: the burst came after the migration ended: nothing.
 * The live runs (the previous default model) raised on hot-small (3 of 3) and moderate (2 of 3).
 */
import { describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import { MigrationState, type ProgressSample } from '../../../services/shared/gen/migd/v1/common.js';
import type { GetRunTimelineResponse } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { type AdaptivePolicy, type AdaptiveState, DEFAULT_COST_MODEL, policyFor } from '../../../services/coordinator/domain/policy/index.js';
import { MiB } from '../../../services/coordinator/domain/units.js';
import { loadTimelines } from '../../../stress/lab/cost-fit.js';
import { replayWithGuest, summary } from './traces.js';

const RUNS = fileURLToPath(new URL('../../../docs/lab/policies-720-criterion/runs.tar.gz', import.meta.url));
const timelines = loadTimelines(RUNS).filter((t) => t.run?.vmName.includes('-adaptive-'));

/** The run's first step under the adaptive policy, at the recorded limit or at `limitMs` instead. */
function firstStep(t: GetRunTimelineResponse, limitMs?: number): { step: string; pass: number | undefined; reason: string; state: AdaptiveState } {
  const run = t.run!;
  const recorded = run.policy!.downtimeLimitMs;
  const policy = policyFor({ ...run.policy!, ...(limitMs !== undefined ? { downtimeLimitMs: limitMs } : {}) }, run.memoryMib * MiB) as AdaptivePolicy;
  // At another limit QEMU would have reported it, and its first expected-downtime (the limit itself).
  const progress: ProgressSample[] =
    limitMs === undefined ? t.progress : t.progress.map((s) => ({ ...s, downtimeLimitMs: limitMs, expectedDowntimeMs: s.expectedDowntimeMs === recorded ? limitMs : s.expectedDowntimeMs }));
  const fixture = { transitions: run.transitions.map((c) => ({ time: c.time!.toISOString(), to: MigrationState[c.to] })), guest: t.guest };
  const { actions, state, stateAtFirstAction } = replayWithGuest(policy, progress, fixture);
  const first = actions[0];
  const pass = first ? progress.filter((s) => s.elapsedMs <= first.elapsedMs).at(-1)?.pass : undefined;
  return { step: first ? summary([first])[0]![1] : 'NOTHING', pass, reason: first?.reason ?? '', state: (stateAtFirstAction ?? state) as AdaptiveState };
}

const EXPECTED: Readonly<Record<string, readonly [string, number | undefined][]>> = {
  idle: [['NOTHING', undefined], ['NOTHING', undefined], ['NOTHING', undefined]],
  // Run 0: pre-copy predicted to converge in 5 more passes (0.81 s backlog, r 0.79), beyond the
  // gate; this run's own pace samples measured h 0.40 (blended: 0.29), so those passes (≈0.85 s)
  // cost more than post-copy (≈0.72 s). Runs 1 and 2: the working set seen at pass 3. Live, the
  // previous default raised in all three at pass 3.
  'hot-small': [['START_POSTCOPY', 3], ['START_POSTCOPY', 3], ['START_POSTCOPY', 3]],
  moderate: [['START_POSTCOPY', 2], ['START_POSTCOPY', 4], ['START_POSTCOPY', 2]],
  'load-a': [['START_POSTCOPY', 2], ['START_POSTCOPY', 2], ['START_POSTCOPY', 2]],
  heavy: [['START_POSTCOPY', 2], ['START_POSTCOPY', 2], ['START_POSTCOPY', 2]],
  compressible: [['NOTHING', undefined], ['NOTHING', undefined], ['NOTHING', undefined]],
  phase: [['NOTHING', undefined], ['NOTHING', undefined], ['NOTHING', undefined]],
};

const workloadOf = (vm: string): string => Object.keys(EXPECTED).find((w) => vm.includes(`-crit-${w}-adaptive-`))!;
const repOf = (vm: string): number => Number(/-adaptive-(\d)-/.exec(vm)![1]);

describe('adaptive policy on the criterion\'s recorded runs (policies-720-criterion, the fitted default model)', () => {
  it('holds the 21 adaptive runs, 3 per workload', () => {
    expect(timelines).toHaveLength(21);
    for (const w of Object.keys(EXPECTED)) expect(timelines.filter((t) => workloadOf(t.run!.vmName) === w)).toHaveLength(3);
  });

  for (const t of [...timelines].sort((a, b) => a.run!.vmName.localeCompare(b.run!.vmName))) {
    const vm = t.run!.vmName;
    const w = workloadOf(vm);
    const [step, pass] = EXPECTED[w]![repOf(vm)]!;
    it(`${w} #${repOf(vm)}: ${step === 'NOTHING' ? 'nothing' : `${step} at pass ${pass}`} (at the recorded 300 ms)`, () => {
      const got = firstStep(t);
      expect([got.step, got.pass], got.reason).toEqual([step, pass]);
      // Post-copy where pre-copy does not converge, or converges only after more passes than the gate's.
      if (step === 'START_POSTCOPY') expect(got.reason).toMatch(/^predicted (not to converge at 300 ms|to converge at 300 ms in [2-5] more passes)/);
      if (got.reason.startsWith('predicted to converge')) expect(got.reason).toContain('post-copy is predicted to cost the guest least');
    });
  }

  // The re-run's limit: every strategy at the lab's scaled T(300) = 104 ms (scenarios.ts), the
  // adaptive policy from there. The samples are rewritten to carry it; what QEMU would have done
  // differently after the first step (or, where there is none, after the recorded switch-over) is not
  // in the trace, so only the first step is claimed. Moderate's run 1 now sees at pass 2 that pre-copy
  // does not converge (1.4 s of backlog to 104 ms at r 0.65 takes more than 5 passes): post-copy there.
  const AT_104: Readonly<Record<string, readonly [string, number | undefined][]>> = { ...EXPECTED, moderate: [['START_POSTCOPY', 2], ['START_POSTCOPY', 2], ['START_POSTCOPY', 2]] };
  for (const t of [...timelines].sort((a, b) => a.run!.vmName.localeCompare(b.run!.vmName))) {
    const vm = t.run!.vmName;
    const w = workloadOf(vm);
    const [step, pass] = AT_104[w]![repOf(vm)]!;
    it(`${w} #${repOf(vm)}: ${step === 'NOTHING' ? 'nothing' : `${step} at pass ${pass}`} (at 104 ms, the re-run's limit)`, () => {
      const got = firstStep(t, 104);
      expect([got.step, got.pass], got.reason).toEqual([step, pass]);
      if (step === 'START_POSTCOPY') expect(got.reason).toMatch(/^predicted not to converge at 104 ms/);
    });
  }

  // The source's dirty set (unique pages dirtied within 100 ms, 4096 sample pages per GiB, measured
  // during pre-copy from ≈0.6 s on): what calc-dirty-rate read here for each workload's guest under
  // TCG (5 Dec, four readings each; MiB): hot-small 43–48 of its 48 MiB set, moderate 4–7 (a steady
  // 48 MiB/s), load A 171–191 of 256, heavy 169–181 of 384, compressible 3–5, idle 0–0.2; phase (before the
  // burst) writes 4 MiB/s. The recorded runs had none; injected, only hot-small's step moves: post-copy
  // at the first boundary (pass 2), where its backlog alone needed a second to show it holds.
  const SET_MIB: Readonly<Record<string, number>> = { idle: 0.2, 'hot-small': 45, moderate: 5, 'load-a': 180, heavy: 175, compressible: 4, phase: 0.4 };
  const AT_104_SET: Readonly<Record<string, readonly [string, number | undefined][]>> = { ...AT_104, 'hot-small': [['START_POSTCOPY', 2], ['START_POSTCOPY', 2], ['START_POSTCOPY', 2]] };
  for (const t of [...timelines].sort((a, b) => a.run!.vmName.localeCompare(b.run!.vmName))) {
    const vm = t.run!.vmName;
    const w = workloadOf(vm);
    const [step, pass] = AT_104_SET[w]![repOf(vm)]!;
    it(`${w} #${repOf(vm)}: ${step === 'NOTHING' ? 'nothing' : `${step} at pass ${pass}`} (at 104 ms, with the source's dirty set)`, () => {
      const set = Math.round(SET_MIB[w]! * MiB);
      const withSet = { ...t, progress: t.progress.map((s) => (s.elapsedMs >= 600 ? { ...s, dirtySetBytes: set, dirtySetWindowMs: 100 } : s)) };
      const got = firstStep(withSet, 104);
      expect([got.step, got.pass], got.reason).toEqual([step, pass]);
      if (w === 'hot-small') {
        expect(got.reason).toMatch(/^predicted not to converge at 104 ms/);
        expect(got.reason).toContain('within 100 ms (its dirty set)');
        // Not recorded as a working set seen to hold (one boundary).
        expect(got.state.workingSetBytes).toBeUndefined();
      }
    });
  }

  it('the cost comparison behind hot-small\'s post-copy: the raise\'s full stop of W against c + s·b', () => {
    for (const t of timelines.filter((x) => workloadOf(x.run!.vmName) === 'hot-small' && repOf(x.run!.vmName) > 0)) {
      const a = firstStep(t).state.assessment!;
      expect(a.workingSetMs, t.run!.vmName).toBeGreaterThan((DEFAULT_COST_MODEL.postcopyFixedMs / (1 + DEFAULT_COST_MODEL.precopyHarmRate - DEFAULT_COST_MODEL.postcopyHarmRate)) * 1.05);
      expect(a.target).toBeLessThanOrEqual(2000);
    }
  });

  it('with the previous default (h 0.74, c 1.07 s, s 0.74) the same runs raise on hot-small, as live', () => {
    const old = { ...DEFAULT_COST_MODEL, precopyHarmRate: 0.74, postcopyFixedMs: 1070, postcopyHarmRate: 0.74 };
    for (const t of timelines.filter((x) => workloadOf(x.run!.vmName) === 'hot-small')) {
      const run = t.run!;
      const policy = policyFor(run.policy!, run.memoryMib * MiB, { adaptiveTuning: { costs: old } }) as AdaptivePolicy;
      const fixture = { transitions: run.transitions.map((c) => ({ time: c.time!.toISOString(), to: MigrationState[c.to] })), guest: t.guest };
      const { actions } = replayWithGuest(policy, t.progress, fixture);
      expect(summary(actions.slice(0, 1))[0]?.[1], run.vmName).toBe('SET_DOWNTIME');
    }
  });
});
