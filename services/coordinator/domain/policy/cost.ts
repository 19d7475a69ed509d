/**
 * The adaptive policy's cost model: the guest time each step is expected to cost, fitted to the
 * guest time lost the lab measured (services/shared/guest/harm.ts: the guest's own clock and pace
 * against its baseline). Pure.
 *
 * ## The model
 * With b the backlog found at the last pass boundary (as transfer time at the window's
 * throughput), r = dirty rate ÷ throughput and L the downtime limit:
 *  - **More pre-copy** (nothing, or a raise to L'): the current pass still sends ≈ b, each further
 *    one what the guest dirtied meanwhile, ≈ b·r^i, until the backlog found at a boundary is
 *    ≤ L (after k boundaries); then QEMU stops the guest for ≈ b·r^k.
 *    lost ≈ h · min(1, r) · b · Σ_{i<k} r^i  +  b·r^k     (the stop counts in full)
 *    total ≈ b · Σ_{i<k} r^i + b·r^k.
 *    h is the pre-copy harm rate: guest seconds lost per second of pre-copy of a guest that dirties
 *    about as fast as the link sends (r ≈ 1). Under TCG the migration thread competes with the
 *    vCPU for the host's CPU and every first write to a page after a sync traps, so this is large.
 *    A guest that hardly writes is hardly slowed (idle lab runs: 0.01 s/s), hence × min(1, r).
 *  - **Post-copy now**: the guest runs on the destination at once and faults in the backlog.
 *    lost ≈ c + s · b,  total ≈ b
 *    c is what a switch to post-copy costs whatever the backlog (the switch, the destination's
 *    start, the first fault storm), s the guest seconds lost per second of backlog sent.
 *
 * ## The fit (DEFAULT_COST_MODEL)
 * From the stored lab runs at 720 Mbit/s (QEMU 10.0.2 TCG, 512 MiB 1-vCPU guests, the shared
 * 2-core machine): docs/lab/policies-720-v3 (14 runs), -v4 (18 runs: idle, heavy) and the heavy
 * re-run (3), pol-v2-hot-small-adaptive and pol-hot-small-300-adaptive (1 each). Each run's guest
 * time lost was split at its transitions: pre-copy (PRECOPY → SWITCHOVER) and switch-over /
 * post-copy (SWITCHOVER → VERIFYING).
 *  - h = 0.74 s/s: the median over the 14 pre-copy phases of busy guests (hot-small 5 runs:
 *    0.70–1.21, median 0.75; heavy 9 runs: 0.06–1.58, median 0.61). The phase and compressible
 *    runs were left out (their pace baseline was taken in a quieter phase; compressed pages). The
 *    9 idle runs give 0.00–0.02 s/s.
 *  - c = 1.07 s, s = 0.74 s/s: least squares of post-copy-phase loss against the backlog at the
 *    switch over the 11 post-copy runs where that backlog is known (the adaptive runs switching in
 *    pass 2, heavy and phase and hot-small at 300 Mbit/s; post-copy after one pass on heavy, which
 *    switched at the pass-2 boundary): backlogs 0.8–15.0 s, losses 1.5–13.1 s (the loss is
 *    0.9× the post-copy phase's length: the guest hardly runs while its pages arrive).
 * The spreads are wide (the machine is shared and noisy): the model ranks steps, it does not
 * promise figures. They are the prior only: the adaptive policy replaces them with the VM's own
 * measurements where it has them (measured.ts: its earlier runs' h, c and s from the store — runs
 * under any policy, a fixed post-copy's too — what its earlier raises cost it (withMeasuredRaise;
 * once both steps are measured in two runs each, ranked on those alone: likeForLike),
 * and this run's h from the guest's pace samples, blended in as they arrive).
 */

/** Fitted parameters (see the module comment). */
export interface CostModel {
  /** h: guest seconds lost per second of pre-copy at r ≥ 1. */
  readonly precopyHarmRate: number;
  /** c: guest ms lost by a switch to post-copy whatever the backlog. */
  readonly postcopyFixedMs: number;
  /** s: guest seconds lost per second of backlog sent in post-copy. */
  readonly postcopyHarmRate: number;
  /** Predicted losses within this fraction of each other are a tie, decided by total time. */
  readonly tieTolerance: number;
  /**
   * What the VM's own downtime raises cost it (measured.ts priorFromHistory): the median guest ms
   * lost from a raise to the end over `runs` earlier runs; absent: none measured (the model alone).
   */
  readonly measuredRaise?: { readonly lostMs: number; readonly runs: number };
  /**
   * What post-copy cost the VM in its own runs (measured.ts priorFromHistory): c and s fitted to
   * `runs` earlier runs alone, before they are shrunk towards the default (postcopyFixedMs and
   * postcopyHarmRate above are the shrunk figures); absent: none measured.
   */
  readonly measuredPostcopy?: { readonly fixedMs: number; readonly harmRate: number; readonly runs: number };
}

/**
 * Runs of each step (a raise, post-copy) the VM's history must hold before the two are ranked on
 * their measured costs alone ({@link likeForLike}).
 */
export const LIKE_FOR_LIKE_RUNS = 2;

/**
 * Both steps measured on this VM in at least {@link LIKE_FOR_LIKE_RUNS} runs each: each step's
 * prediction is then the VM's own figure, not shrunk towards the default model. The shrinking
 * guards one step's few noisy runs against a model fitted on many; but once both steps are measured
 * on the same VM, under the same workload, machine and link, the comparison is like for like: their
 * runs share the noise, while the default's error is not shared — its post-copy (c 1.07 s, fitted on
 * heavy guests' backlogs of seconds) and its raise (h × passes + the stop) are off by different
 * amounts for a given VM, so weighing both towards it tilts the ranking by the default's error, not
 * the VM's (hot-small at 720 Mbit/s: raise and post-copy each cost the guest ≈0.6 s from the decision,
 * yet with two post-copy runs the shrunk c predicted post-copy at 0.86–0.89 s, docs/lab
 * policies-720-learn). Two runs each, so that one run's figure never decides alone.
 */
export function likeForLike(model: CostModel): boolean {
  const r = model.measuredRaise;
  const p = model.measuredPostcopy;
  return r !== undefined && p !== undefined && r.runs >= LIKE_FOR_LIKE_RUNS && p.runs >= LIKE_FOR_LIKE_RUNS && Number.isFinite(r.lostMs) && Number.isFinite(p.fixedMs) && Number.isFinite(p.harmRate);
}

export const DEFAULT_COST_MODEL: CostModel = Object.freeze({
  precopyHarmRate: 0.74,
  postcopyFixedMs: 1070,
  postcopyHarmRate: 0.74,
  tieTolerance: 0.05,
});

/** The predicted cost of one step, in ms. */
export interface StepCost {
  /** Guest time lost. */
  readonly harmMs: number;
  /** Time until the migration completes. */
  readonly totalMs: number;
  /** Pre-copy passes still to run, the current one included (0 for post-copy). */
  readonly passes: number;
}

/** Pass boundaries allowed before "more pre-copy" counts as never converging. */
const MAX_BOUNDARIES = 50;

/**
 * More pre-copy at the limit `limitMs`: passes until the backlog found at a boundary fits it.
 * Infinity (harm and total) when it never does within `maxBoundaries` boundaries. `harmRatio`
 * (default `ratio`) scales the harm rate when the backlog is sized more cautiously than r says.
 */
export function precopyCost(model: CostModel, backlogMs: number, ratio: number, limitMs: number, maxBoundaries = MAX_BOUNDARIES, harmRatio = ratio): StepCost {
  const never: StepCost = { harmMs: Infinity, totalMs: Infinity, passes: Infinity };
  if (!(backlogMs >= 0) || !(ratio >= 0)) return never;
  let sent = 0;
  let found = backlogMs;
  for (let k = 1; k <= maxBoundaries; k++) {
    sent += found;
    found *= ratio;
    if (found <= limitMs) return { harmMs: model.precopyHarmRate * Math.min(1, harmRatio) * sent + found, totalMs: sent + found, passes: k };
    if (ratio >= 1) return never;
  }
  return never;
}

/** Post-copy now. */
export function postcopyCost(model: CostModel, backlogMs: number): StepCost {
  const own = likeForLike(model) ? model.measuredPostcopy : undefined;
  const c = own ? own.fixedMs : model.postcopyFixedMs;
  const s = own ? own.harmRate : model.postcopyHarmRate;
  return { harmMs: c + s * backlogMs, totalMs: backlogMs, passes: 0 };
}

/**
 * A raise's predicted cost with the VM's own measured raises blended in, as the prior blends its
 * other figures: (n·measured + w·predicted) / (n + w), n the runs measured, w `weight` runs' worth
 * for the model (measured.ts PRIOR_WEIGHT); the measured figure alone where post-copy is measured
 * too ({@link likeForLike}). The measured figure is one number per VM, whatever the
 * backlog: it stands for raises of the same VM under the same workload, as those runs were.
 */
export function withMeasuredRaise(model: CostModel, raise: StepCost, weight: number): StepCost {
  const m = model.measuredRaise;
  if (!m || !(m.runs > 0) || !Number.isFinite(m.lostMs) || !Number.isFinite(raise.harmMs)) return raise;
  // Like for like with post-copy's own figures: the measured raise alone.
  if (likeForLike(model)) return { ...raise, harmMs: m.lostMs };
  return { ...raise, harmMs: (m.runs * m.lostMs + weight * raise.harmMs) / (m.runs + weight) };
}

/** Index of the cheapest cost: least harm, and of those within the tie tolerance of it, the shortest total. */
export function cheapest(model: CostModel, costs: readonly StepCost[]): number {
  const least = Math.min(...costs.map((c) => c.harmMs));
  if (!Number.isFinite(least)) return -1;
  let best = -1;
  costs.forEach((c, i) => {
    if (c.harmMs > least * (1 + model.tieTolerance) + 1e-9) return;
    const b = costs[best];
    if (!b || c.totalMs < b.totalMs || (c.totalMs === b.totalMs && c.harmMs < b.harmMs)) best = i;
  });
  return best;
}
