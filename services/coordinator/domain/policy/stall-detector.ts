/**
 * KubeVirt's migration stall detector (VEP 248, "Live Migration Stability & Convergence", alpha in
 * KubeVirt 1.9, feature gate MigrationStallDetection), as a baseline preset: what virt-launcher's
 * monitor does with its default hyper-parameters, driven by migd's progress samples.
 *
 * Read from kubevirt/enhancements veps/sig-compute/248-migration-convergence (vep.md and
 * migration-hyperparameters.md):
 * - Bandwidth is smoothed on every poll: ewma ← α·sample + (1 − α)·ewma, α = 0.4, seeded with
 *   the first sample. The implied pause is remaining bytes ÷ that bandwidth.
 * - At every pre-copy iteration boundary (QEMU's bitmap sync; here: the first sample of a new
 *   pass, whose remaining bytes are the freshly synced backlog) the remaining bytes are recorded.
 *   The migration is stalled when they are ≥ (1 − 4 %) × the lowest remaining bytes among the
 *   boundaries at least stallProgressTimeout (40 s) earlier.
 * - Once stalled, the target is the lowest remaining bytes of the boundaries since that window
 *   began; switch-over happens at a local minimum: a boundary whose remaining bytes are within
 *   4 % above the target. Where that level does not come back within the patience (40 s, then
 *   halved each time), the target is relaxed to the lowest level seen since the stall (and that
 *   level dropped from the history).
 * - The switch-over at a local minimum: post-copy (when allowed) only when the implied pause fits
 *   in completionTimeoutFactor (2) × the completion budget minus the time spent, else wait for a
 *   later boundary. Without post-copy, the downtime limit goes to maxDowntimeMs (default 900 ms)
 *   when the implied pause is within precopyPossibleFactor (1.5) × that, with a switch-over
 *   deadline of 60 s (then abort); above 1.5× it aborts. With workload disruption allowed (here:
 *   timeout action FORCE_COMPLETE) and no post-copy, the guest is paused instead.
 * - The completion budget (150 s/GiB, KubeVirt's completionTimeoutPerGiB) still applies: when it
 *   runs out before any switch-over, post-copy if allowed and the implied pause fits in 2× the
 *   budget minus the time spent, a pause with workload disruption allowed, else abort; at 2× the
 *   budget, abort in any case. The legacy progress timeout is not part of the stall path (VEP:
 *   "stall detection does not read this field"); set one and it applies as for every policy.
 *
 * Where this reads the VEP loosely: KubeVirt asks post-copy for allowPostCopy *and*
 * allowWorkloadDisruption; here a policy with post-copy enabled has both. Samples come every
 * ~250 ms, so a boundary's remaining bytes are those of the first sample after the sync.
 */
import { PolicyActionKind, PolicyKind, TimeoutAction, type MigrationPolicy, type ProgressSample } from '../../../shared/gen/migd/v1/common.js';
import { formatBytes, formatDuration, formatRate } from '../units.js';
import { isPostcopy, isPrecopy, isStarting, throughputBytesPerSec } from './signals.js';
import { type TimeoutState, checkTimeouts, completionBudgetMs, initialTimeoutState, trackProgress } from './timeouts.js';
import type { ConvergencePolicy, Decision, PolicyDecision, PolicyRequirements, TimeoutRules } from './types.js';

/** The VEP's hyper-parameters and their alpha defaults (migration-hyperparameters.md). */
export interface StallDetectorTuning {
  readonly ewmaAlpha: number;
  readonly stallProgressTimeoutMs: number;
  /** Fraction (the VEP's integer percent ÷ 100). */
  readonly stallMargin: number;
  readonly completionTimeoutFactor: number;
  readonly precopyPossibleFactor: number;
  readonly patienceWindowDecayFactor: number;
  readonly switchoverTimeoutMs: number;
  /** false: switch over as soon as the stall is detected. */
  readonly searchLocalMinima: boolean;
}

export const KUBEVIRT_STALL_DEFAULTS: StallDetectorTuning = Object.freeze({
  ewmaAlpha: 0.4,
  stallProgressTimeoutMs: 40_000,
  stallMargin: 0.04,
  completionTimeoutFactor: 2,
  precopyPossibleFactor: 1.5,
  patienceWindowDecayFactor: 0.5,
  switchoverTimeoutMs: 60_000,
  searchLocalMinima: true,
});

/** KubeVirt's default maxDowntimeMs (VEP 248). */
export const KUBEVIRT_STALL_MAX_DOWNTIME_MS = 900;

export interface StallDetectorConfig {
  readonly effective: MigrationPolicy;
  readonly requirements: PolicyRequirements;
  /** completionMs: the budget (150 s/GiB); progressMs: the legacy progress timeout, if set. */
  readonly timeouts: TimeoutRules;
  readonly maxDowntimeMs: number;
  readonly tuning?: Partial<StallDetectorTuning> | undefined;
}

/** Plain-data state of the {@link StallDetectorPolicy}. */
export interface StallDetectorState {
  readonly done: boolean;
  /** Smoothed bandwidth, bytes/s (0: no sample yet). */
  readonly ewmaBytesPerSec: number;
  /** QEMU's pass number at the last boundary recorded (0: none). */
  readonly lastPass: number;
  /** [elapsed ms, remaining bytes] of the boundaries still inside the stall window. */
  readonly recent: readonly (readonly [number, number])[];
  /** Lowest remaining bytes among the boundaries that left the window (null: none yet). */
  readonly outsideMin: number | null;
  /** Set once the stall is detected. */
  readonly stall: { readonly best: number; readonly history: readonly number[]; readonly patienceMs: number; readonly deadlineMs: number } | null;
  /** Raised to max downtime at this elapsed time: switch-over must happen by the deadline. */
  readonly switchoverDeadlineMs: number | null;
  readonly timeouts: TimeoutState;
}

/** See the module comment. */
export class StallDetectorPolicy implements ConvergencePolicy<StallDetectorState> {
  readonly name = 'kubevirt-stall-detector';
  readonly kind = PolicyKind.POLICY_KIND_KUBEVIRT_STALL_DETECTOR;
  readonly effective: MigrationPolicy;
  readonly requirements: PolicyRequirements;
  readonly timeouts: TimeoutRules;
  readonly tuning: StallDetectorTuning;
  private readonly maxDowntimeMs: number;

  constructor(config: StallDetectorConfig) {
    this.effective = config.effective;
    this.requirements = config.requirements;
    this.timeouts = config.timeouts;
    this.maxDowntimeMs = config.maxDowntimeMs;
    this.tuning = { ...KUBEVIRT_STALL_DEFAULTS, ...config.tuning };
  }

  initialState(): StallDetectorState {
    return { done: false, ewmaBytesPerSec: 0, lastPass: 0, recent: [], outsideMin: null, stall: null, switchoverDeadlineMs: null, timeouts: initialTimeoutState() };
  }

  decide(state: StallDetectorState, sample: ProgressSample, nowMs: number): Decision<StallDetectorState> {
    if (state.done) return { actions: [], state };
    if (isPostcopy(sample)) return { actions: [], state: { ...state, done: true } };
    if (!isPrecopy(sample) && !isStarting(sample)) return { actions: [], state };

    // The poll arm: bandwidth, then the deadlines.
    const bw = throughputBytesPerSec(sample);
    const ewma = !isPrecopy(sample) || bw <= 0 ? state.ewmaBytesPerSec : state.ewmaBytesPerSec > 0 ? this.tuning.ewmaAlpha * bw + (1 - this.tuning.ewmaAlpha) * state.ewmaBytesPerSec : bw;
    const timeouts = trackProgress(state.timeouts, sample);
    let st: StallDetectorState = { ...state, ewmaBytesPerSec: ewma, timeouts };
    const deadline = this.deadlines(st, sample, nowMs);
    if (deadline) return { actions: [deadline], state: { ...st, done: true } };
    if (!isPrecopy(sample) || sample.pass <= st.lastPass || st.switchoverDeadlineMs !== null) return { actions: [], state: st };

    // The iteration-boundary arm.
    const t = sample.elapsedMs;
    const rem = sample.remainingBytes;
    const windowStart = t - this.tuning.stallProgressTimeoutMs;
    let outsideMin = st.outsideMin;
    const recent: (readonly [number, number])[] = [];
    for (const r of st.recent) {
      if (r[0] <= windowStart) outsideMin = outsideMin === null ? r[1] : Math.min(outsideMin, r[1]);
      else recent.push(r);
    }
    recent.push([t, rem]);
    st = { ...st, lastPass: sample.pass, recent, outsideMin };
    const margin = this.tuning.stallMargin;

    if (!st.stall) {
      if (outsideMin === null || rem < outsideMin * (1 - margin)) return { actions: [], state: st };
      const best = Math.min(outsideMin, ...recent.map((r) => r[1]));
      const stall = { best, history: [], patienceMs: this.tuning.stallProgressTimeoutMs, deadlineMs: t + this.tuning.stallProgressTimeoutMs };
      st = { ...st, stall };
      const why = `stalled: ${formatBytes(rem)} remaining at pass ${sample.pass}, not below ${formatBytes(outsideMin)} (the lowest ${formatDuration(this.tuning.stallProgressTimeoutMs)} or more ago) by ${Math.round(margin * 100)} %`;
      if (!this.tuning.searchLocalMinima || rem <= best * (1 + margin)) return this.trySwitchover(st, sample, nowMs, `${why}; at a local minimum (best ${formatBytes(best)})`);
      return { actions: [], state: st };
    }

    let stall = { ...st.stall, history: [...st.stall.history, rem] };
    const near = (): boolean => rem <= stall.best * (1 + margin);
    if (!this.tuning.searchLocalMinima || near()) return this.trySwitchover({ ...st, stall }, sample, nowMs, `stalled; ${formatBytes(rem)} remaining is a local minimum (best ${formatBytes(stall.best)} + ${Math.round(margin * 100)} %)`);
    if (t >= stall.deadlineMs && stall.history.length > 0) {
      const lowest = Math.min(...stall.history);
      const history = [...stall.history];
      history.splice(history.indexOf(lowest), 1);
      const patienceMs = stall.patienceMs * this.tuning.patienceWindowDecayFactor;
      stall = { best: lowest, history, patienceMs, deadlineMs: t + patienceMs };
      if (near()) return this.trySwitchover({ ...st, stall }, sample, nowMs, `stalled; the best level did not come back, target relaxed to ${formatBytes(lowest)}: ${formatBytes(rem)} remaining is a local minimum`);
    }
    return { actions: [], state: { ...st, stall } };
  }

  /** Implied pause (ms) of `remaining` bytes at the smoothed bandwidth. */
  private impliedMs(st: StallDetectorState, remaining: number): number {
    return st.ewmaBytesPerSec > 0 ? (remaining / st.ewmaBytesPerSec) * 1000 : Infinity;
  }

  private postcopy(): boolean {
    return this.requirements.postcopy;
  }

  private disruptionAllowed(): boolean {
    return this.effective.timeoutAction === TimeoutAction.TIMEOUT_ACTION_FORCE_COMPLETE;
  }

  /**
   * The switch-over deadline, the completion budget (1×: post-copy or a pause when allowed and the
   * implied pause fits in 2× the budget minus the time spent, else abort; 2×: abort) and the legacy
   * progress timeout, if set. Returns the action due.
   */
  private deadlines(st: StallDetectorState, sample: ProgressSample, nowMs: number): PolicyDecision | undefined {
    const act = (kind: PolicyActionKind, reason: string): PolicyDecision => ({ kind, value: 0, elapsedMs: nowMs, reason });
    const abort = (reason: string): PolicyDecision => act(PolicyActionKind.POLICY_ACTION_KIND_ABORT, reason);
    if (st.switchoverDeadlineMs !== null && nowMs >= st.switchoverDeadlineMs) {
      return abort(`switch-over timeout: no switch-over ${formatDuration(this.tuning.switchoverTimeoutMs)} after the downtime limit went to ${this.maxDowntimeMs} ms; aborting`);
    }
    const budget = completionBudgetMs(this.timeouts, st.timeouts.diskBytes ?? 0);
    if (budget !== undefined) {
      const hard = budget * this.tuning.completionTimeoutFactor;
      if (nowMs >= hard) return abort(`completion timeout: not completed after ${formatDuration(hard)} (${this.tuning.completionTimeoutFactor} × ${this.timeouts.completionBasis}); aborting`);
      if (nowMs >= budget && st.switchoverDeadlineMs === null) {
        const implied = this.impliedMs(st, sample.remainingBytes);
        const fits = implied <= hard - nowMs;
        const head = `completion budget spent (${formatDuration(budget)}, ${this.timeouts.completionBasis}); implied pause ≈${formatDuration(implied)} ${fits ? 'fits in' : 'exceeds'} the ${formatDuration(hard - nowMs)} left of ${this.tuning.completionTimeoutFactor}× the budget`;
        if (this.postcopy() && fits) return act(PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY, `${head}: switching to post-copy`);
        if (this.disruptionAllowed() && fits) return act(PolicyActionKind.POLICY_ACTION_KIND_PAUSE_GUEST, `${head}; workload disruption allowed: pausing the guest to force completion`);
        return abort(`${head}: aborting`);
      }
    }
    return checkTimeouts({ ...this.timeouts, completionMs: undefined }, st.timeouts, nowMs);
  }

  /** decideAction at a local minimum (VEP 248 "Switchover policy"). */
  private trySwitchover(st: StallDetectorState, sample: ProgressSample, nowMs: number, why: string): Decision<StallDetectorState> {
    const implied = this.impliedMs(st, sample.remainingBytes);
    const figures = `${why}; implied pause ≈${formatDuration(implied)} (${formatBytes(sample.remainingBytes)} at ${formatRate(st.ewmaBytesPerSec)} smoothed)`;
    const budget = completionBudgetMs(this.timeouts, st.timeouts.diskBytes ?? 0);
    if (budget !== undefined && implied > budget * this.tuning.completionTimeoutFactor - nowMs) return { actions: [], state: st };
    if (this.postcopy()) {
      return { actions: [{ kind: PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY, value: 0, elapsedMs: nowMs, reason: `${figures}, within the budget: switching to post-copy` }], state: { ...st, done: true } };
    }
    if (this.disruptionAllowed()) {
      return { actions: [{ kind: PolicyActionKind.POLICY_ACTION_KIND_PAUSE_GUEST, value: 0, elapsedMs: nowMs, reason: `${figures}; workload disruption allowed: pausing the guest (stop-and-copy)` }], state: { ...st, done: true } };
    }
    const max = this.maxDowntimeMs;
    if (implied <= max * this.tuning.precopyPossibleFactor) {
      return {
        actions: [{ kind: PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME, value: max, elapsedMs: nowMs, reason: `${figures} ≤ ${this.tuning.precopyPossibleFactor} × max ${max} ms: raising the downtime limit to ${max} ms, switch-over due within ${formatDuration(this.tuning.switchoverTimeoutMs)}` }],
        state: { ...st, switchoverDeadlineMs: nowMs + this.tuning.switchoverTimeoutMs },
      };
    }
    return { actions: [{ kind: PolicyActionKind.POLICY_ACTION_KIND_ABORT, value: 0, elapsedMs: nowMs, reason: `${figures} > ${this.tuning.precopyPossibleFactor} × max ${max} ms and post-copy is not allowed: aborting` }], state: { ...st, done: true } };
  }
}
