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
 *    vCPU for the host's CPU and every first write to a page after a sync traps; on a 2-core host
 *    with the machine otherwise quiet that cost is small (0.06 s/s, the fit below), under load it
 *    was up to 0.4–1.6. A guest that hardly writes is hardly slowed (idle: 0.01 s/s), hence × min(1, r).
 *  - **Post-copy now**: the guest runs on the destination at once and faults in the backlog.
 *    lost ≈ c + s · b,  total ≈ b
 *    c is what a switch to post-copy costs whatever the backlog (the switch, the destination's
 *    start, the first fault storm), s the guest seconds lost per second of backlog sent.
 *
 * ## The fit (DEFAULT_COST_MODEL)
 * Reproducible: `node dist/scripts/fit-costs.js docs/lab/policies-720-criterion/runs.tar.gz`
 * (stress/lab/cost-fit.ts; test/unit/lab/cost-fit.test.ts checks these figures against it). The
 * 84 runs of issue 14's criterion at 720 Mbit/s (4 Dec 19:56–20:55, load 0.7–4.3; QEMU 10.0.2 TCG,
 * 512 MiB 1-vCPU guests, idle 1 GiB, the shared 2-core machine), each replayed through the
 * production cost track (measured.ts replayCostTrack/trackedCostFigures: what the coordinator
 * stores at a run's end), so the figures are those a VM's own history would hold:
 *  - h = 0.064 s/s: the median over the 18 unthrottled pre-copy phases of the busy workloads,
 *    whose guests dirty as fast as the link sends or faster (hot-small 0.04–0.41, median 0.07;
 *    load A 0.04–0.22, 0.06; heavy 0.02–0.40, 0.06: the succeeded runs under adaptive and under
 *    post-copy after one pass, 3 + 3 each; auto-converge's left out: it slows the guest on purpose).
 *    The rate-limited writers lose more than × min(1, r) says: moderate 0.14–0.51 (median 0.38,
 *    9 runs) and compressible 0.28–0.47 at r ≈ 0.5–0.8 — every write of theirs is a first write to
 *    a page since the sync (a trap), where an unlimited writer's hot set traps once per page per
 *    pass; a run's own pace samples correct h within it (measured.ts blendedCostModel).
 *  - c = 156 ms, s = 0.695 s/s: least squares of the guest time lost from the switch to the end
 *    against the backlog at the switch over the 22 runs that went into post-copy (adaptive on
 *    moderate, load A and heavy; post-copy after one pass on all but idle and phase, whose pre-copy
 *    converged first): backlogs 0.59–4.81 s, losses 0.51–3.72 s.
 *  - Check on the raises (not fitted): the 5 adaptive runs that raised lost 593–612 ms (hot-small,
 *    a working set of ≈0.6–0.7 s) and 573–979 ms (moderate) from the raise to the end, where the
 *    model predicts ≈(1 + h)·W ≈ 0.64–0.75 s for hot-small; post-copy from the switch lost
 *    546–677 ms on hot-small (predicted 0.57–0.62 s). The break-even at r = 1 is
 *    c ÷ (1 + h − s) ≈ 0.42 s of backlog: below it a raise's full stop is the cheaper step.
 * The previous default (h 0.74, c 1.07 s, s 0.74) was fitted on 2–3 Dec runs at load 9–17 whose
 * post-copy backlogs were read with a pass-1 artefact since fixed (docs/lab/README.md,
 * policies-720-learn-first); it priced hot-small's post-copy at ≈1.6 s and took raises that cost
 * the guest a full stop of 0.56–0.98 s (policies-720-criterion).
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
 * runs share the noise, while the default's error is not shared — its post-copy (c + s·b, fitted
 * on other guests' backlogs) and its raise (h × passes + the stop) are off by different
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
  precopyHarmRate: 0.064,
  postcopyFixedMs: 156,
  postcopyHarmRate: 0.695,
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
