/**
 * migd's adaptive convergence policy. None of the seed studies has one: they compare fixed
 * strategies. This one watches the samples, predicts early whether pre-copy will converge, and
 * takes the cheapest step that the prediction says suffices.
 *
 * ## Prediction
 * Pre-copy resends, in each pass, what the guest dirtied during the previous one. With dirty rate
 * D and throughput B (r = D/B), the backlog found at a pass boundary shrinks by ≈ r per pass
 * (a geometric series) while r < 1, and stops shrinking once r ≥ 1. QEMU switches over when
 * backlog / B ≤ downtime limit L; its `expected-downtime` is exactly backlog-at-last-sync / B
 * (estimated as D × pass time / B when missing). With b the backlog as switch-over time:
 *  - b·max(1, r) ≤ L: converges at the next boundary (the next sync finds ≈ b·r);
 *  - r < 1: converges after n = ⌈ln(L/b) / ln r⌉ more passes; "soon" when n ≤ K (5);
 *  - otherwise it will not converge on its own; the switch-over then needs ≈ b·r^K (r < 1: what
 *    is left after K more passes) or ≈ b·r (r ≥ 1).
 * QEMU's dirty-pages-rate counts pages newly dirty at each sync per second, so a guest whose
 * working set is rewritten faster than a pass shows r ≈ 1 however hard it writes: "dirty rate
 * above the link" appears as r ≥ 1 with a large backlog, and the backlog, not r, says how far
 * from converging it is. The rates measured over the first pass are biased low (it spans cold
 * memory): a slow-but-shrinking prediction (r < 1) made from them acts at once, but a raise is
 * sized as if the backlog did not shrink until every windowed rate comes from a later pass; r ≥ 1
 * is acted on after the first. Every figure is the median of a short window (3 samples) so one
 * noisy sample decides nothing.
 *
 * ## When: the pass where the step is cheapest
 * QEMU's dirty rate and backlog change only at a bitmap sync, so one sample after the sync carries
 * them; the window's throughput may come from the samples before it (pass 1 included: the same
 * link). The backlog is the larger of QEMU's expected-downtime and what remained at the pass's
 * first sample ÷ the window's throughput: QEMU reports its initial expected-downtime (the downtime
 * limit itself) until it has a dirty rate, so the first sample after the pass-1 sync can say
 * 300 ms for a backlog of seconds (lab, hot-small at 300 Mbit/s: 300 ms reported, ≈50 MiB = 2 s
 * left). Where the backlog holds or grows (r ≥ 1) every further pass costs its whole length in
 * dirty tracking and buys nothing: the step is cheapest now, and the policy acts on the first
 * sample after the sync (in the lab run above it waited for three pass-2 samples, 0.6 s, before).
 * Where it shrinks (r < 1) waiting costs little, and the policy first fills its window with
 * readings after the sync.
 *
 * The first pass's bias is worst for a guest that rewrites its working set W many times during
 * the (long) first pass: QEMU's rate after it is at most W ÷ pass time, so a dirtier at 1.4× the
 * link can read r ≈ 0.25 and be "predicted to converge" for passes. The source node therefore
 * measures the dirty rate itself (calc-dirty-rate, page sampling over 1 s: unique pages per
 * second, a lower bound of the true rate, see FACTS.md), and until the window's rates come from
 * pass ≥ 3 the policy takes the larger of the two. It measures during pre-copy, from 500 ms into
 * it: QEMU's `migrate` goes out at once (until issue 14's start-delay fix the source took this
 * estimate for 1 s before `migrate`, a second every adaptive run spent before its stream that
 * QEMU's total-time does not count). The first estimate is in ≈1.7 s into pass 1 (500 ms, then the
 * 100 ms dirty set); readings before it carry 0, which means "not measured yet", never a quiet
 * guest: the window's estimate is taken over the readings that carry one, and with none the
 * prediction reads QEMU's own rate alone (a first pass that short is little biased).
 *
 * ## Saturation: the working-set bound
 * QEMU's dirty-pages-rate is the pages found newly dirty at the syncs of a period ÷ the period, and
 * it is recomputed at a sync only once more than 1 s has passed since the last time
 * (migration_bitmap_sync). A guest that rewrites a hot set W faster than a pass goes therefore reads
 * W ÷ pass-1 time for the first second after pass 1 (saturated, not its rate), and the backlog found
 * at every later boundary is min(W, what it dirties in the pass) ≈ W: it does not shrink as b·r^i.
 * The lab's hot-small runs at 720 Mbit/s (fixtures lab-hot-small-720-v3-a/b): pass 1 ≈4.2 s reads
 * 11.4 MiB/s (≈48 MiB ÷ 4.2 s), and the boundaries of passes 2–10 find 42–60 MiB (a) and 32–52 MiB
 * (b, passes 2–8) where r (0.13 by QEMU's rate, 0.5–0.7 with the estimate) predicted a few MiB to
 * ≈35 MiB; QEMU's rate catches up (51–70 MiB/s, r ≈ 0.85) only at pass 5, ≈1 s later. Predicting
 * from r alone said "converges in 1–2 passes" and waited to pass 7.
 * So the policy keeps the backlog found at the last few boundaries (the larger of QEMU's
 * expected-downtime × the sample's throughput and what remained at the pass's first sample: both
 * lower bounds of what the sync found, which under-read by up to ≈40 % in those fixtures). Where a
 * later boundary's backlog is ≥ 60 % of an earlier one's and it shrank per pass by ≥ 1.5 × the r
 * predicted ({@link backlogPlateau}), the backlog holds at W = the larger of the two, and:
 *  - more pre-copy at L converges only if W's transfer time ≤ L (at the next boundary), else never;
 *  - a raise is sized on W (+25 %) and costed as one pass of W and a stop of W at r = 1 (the guest
 *    faults its whole set in every pass: the regime h was fitted in), if within max_downtime_ms;
 *  - post-copy as before, c + s·b; the cheapest of them is taken (cost.ts).
 * This needs two boundaries, so it acts at the first sample after the second sync seen (v3-a:
 * pass 3, 0.27 s after the first verdict; it switched at pass 7 before). The 1 s estimate E alone
 * cannot do it at pass 2: it shows the pass-1 rate is saturated (E × pass-1 time ≫ the backlog:
 * 42 MiB/s × 4.2 s against 48 MiB), but not whether W is rewritten within the next, short pass
 * (W ÷ B ≈ 0.55 s < the estimate's 1 s: the unique pages of 0.55 s lie anywhere in [E × 0.55 s, W]).
 * **The dirty set does**: during pre-copy the source also measures the unique pages dirtied within
 * 100 ms (ProgressSample.dirty_set_bytes). Unique pages only grow with the window, so where that set
 * is ≥ 60 % of the first boundary's backlog and the next pass takes longer than 100 ms, the next
 * boundary finds at least as much: the backlog holds, from the first boundary on (hot-small under
 * TCG: 43–48 MiB of its 48 MiB set within 100 ms; moderate, a steady 48 MiB/s writer: 4–7 MiB,
 * against ≈100 MiB; recorded criterion runs with the set injected: hot-small's post-copy at pass 2
 * instead of 3, every other workload's step unchanged, policy-criterion.test.ts). Such a bound
 * (one boundary) is not stored as the run's W. Where the source has no set yet (its first reading
 * comes ≈0.6 s into pass 1: the source measures nothing in the first 500 ms, a first pass that
 * short needs no estimate and the measurement would slow it), the second boundary is
 * the evidence — or the VM's history: a run that saw the bound stores its W
 * (runs.cost_working_set_bytes, measured.ts RunCostFigures), and a later run
 * whose first boundary finds a backlog within the same noise of the earlier runs' median W
 * (≥ 60 % of it and ≤ W ÷ 0.6) takes the bound at once, at pass 2 (v3-b after v3-a and v3-a after
 * v3-b: pass 2 instead of 5 and 3). A set of another size is not matched. A run that went into
 * post-copy at its first boundary (post-copy after one pass) sees one boundary only and stores what
 * it found (runs.cost_first_boundary_bytes): the set the guest dirtied over a whole first pass, no
 * evidence that it is dirtied again within the next, short pass. Where the VM's history has no W,
 * the median of those is matched the same way, and taken only if this run's estimate also covers
 * ≥ 60 % of it per second (unique pages over ≈1 s, a lower bound: the guest rewrites most of the set
 * every second; hot-small 33–66 MiB/s against 45–56 MiB, moderate's 2 × 64 MiB at 24 MiB/s 25 and
 * 72 MiB/s against 92 and 124 MiB: not taken). The estimate covers 1 s while hot-small's next pass
 * takes ≈0.6 s: a judgement, backed by its recorded boundaries (42–60 MiB in passes of ≈0.5 s).
 * Such a match is not stored as the run's own W. Where r ≥ 1 the model already says the
 * backlog holds and sizes on it; a backlog that shrinks as r says (a converging guest) or much is
 * never taken for a bound; one that holds at a W within L changes nothing (pre-copy converges).
 *
 * A guest whose pace changes during the migration (a phase change) makes any one estimate stale,
 * and QEMU's own rate says nothing until the first bitmap sync. So the source keeps re-estimating
 * while pre-copy runs (a round of the 100 ms set and the 1 s estimate, then 500 ms, ≈1.7 s per
 * round) and every sample carries the latest figure: a verdict at the end of pass 1 uses the
 * guest's pace during it. When the estimate changes materially (by `estimateChangeFactor` either way) after an
 * action, the policy decides again at once instead of waiting out its hysteresis: a raise sized
 * for a quiet guest is no answer to a busy one.
 *
 * ## Before the start: compression or post-copy (transport.ts)
 * QEMU fixes capabilities at the start and refuses multifd with post-copy, so one choice is made
 * before it, by the planner: where the evidence (the VM's workload as configured and, from its
 * earlier migrations in the history, the calc-dirty-rate estimates recorded during their
 * pre-copy, throughput and compression — never this run's estimate, measured only once its
 * stream runs) says pre-copy with multifd zstd converges within the budget at the link rate (compressed dirty
 * rate ≤ half the link, the backlog within the limit in ≤ 5 passes), or that the guest is quiet
 * (dirty rate ≤ a fifth of the link uncompressed, the backlog within the limit after the first
 * pass or the next: one bulk pass of the whole memory, of which some compresses), the run's
 * policy gets multifd zstd and no post-copy, and this policy then steers it with steps 0, 1, 3
 * and 4 below. Otherwise, or when the dirty rate is unknown, post-copy stays available.
 *
 * ## The steps, chosen by predicted guest harm (cost.ts)
 * Measured in the lab (docs/lab/policies, guest time lost from the guest's own clock): post-copy
 * straight after the first pass cost the guest 3–4.5 s on both workloads and finished in 7–9 s;
 * auto-converge first and post-copy two passes of hysteresis later cost 3.7–11 s and took 22–27 s;
 * auto-converge alone cost 28–172 s. Among the three live steps the policy no longer assumes an
 * order: at each verdict it predicts the guest time each would cost and takes the least (within
 * 5 % of each other: the one that completes sooner). The model, fitted to the guest time lost of
 * the 84 runs of issue 14's criterion at 720 Mbit/s (docs/lab/policies-720-criterion, replayed
 * through the production cost track; the fit, its spreads and the script that reproduces it are in
 * cost.ts):
 *  - more pre-copy costs h = 0.064 guest seconds per second of pre-copy (× min(1, r): a guest that
 *    hardly writes is hardly slowed), for every pass still to run, plus the stop in full;
 *  - post-copy now costs c + s·b = 156 ms + 0.695 × the backlog's transfer time.
 * A raise's stop is a full stop of the guest, where post-copy's switch stops it for milliseconds
 * and its faults cost 0.7 of the backlog: at r ≈ 1 a raise pays only below ≈0.42 s of backlog
 * ((1 + h)·b < c + s·b), e.g. not for hot-small's ≈0.6–0.7 s working set at 720 Mbit/s. These
 * are the defaults: the VM's earlier
 * runs replace them (measured.ts priorFromHistory), whatever policy those ran under — a fixed
 * post-copy after one pass teaches c and s, a run that raised once what its raise cost — so the
 * step follows what the VM's own runs lost (unit tests: policy-learn.test.ts; lab:
 * docs/lab/policies-720-learn).
 *  0. Nothing where pre-copy is predicted to converge within the current or the next pass at the
 *     limit in force (the gate, `nothingWithinPasses`): no other step is weighed. Where it
 *     converges only later (within K passes) nothing is one of the options, taken where it is
 *     predicted to harm the guest least. A limit raised by a user (AdjustRun) is respected while
 *     pre-copy converges at it.
 *  1. Raise the downtime limit to L' ≤ max_downtime_ms: one full stop of ≤ L', once. The operator
 *     declared that much acceptable, the source stays a safe fallback, and nothing slows the
 *     guest before it. We raise straight to the predicted need (+25 %, rounded up to 50 ms), not
 *     along a ramp: every ramp step predicted too small costs a whole pass (seconds to minutes of
 *     dirty tracking and link time) and buys nothing; re-evaluating after two passes and raising
 *     again if the need grew keeps the value "just enough" without guessing low. Its cost: the
 *     passes until the backlog fits L' (early, sized on the whole backlog: one pass) and the stop.
 *  2. Post-copy with preempt, at once, where it is predicted cheapest (always when the backlog
 *     cannot converge and no bounded raise suffices): the guest runs on the destination and faults
 *     in missing pages, harm ≈ c + s·b (measured as postcopy-blocktime too), with
 *     preempt keeping faults out of the bulk stream's queue. The guest is lost if the link or
 *     destination fails before it completes (seed 001): recovery (the node's post-copy recovery)
 *     is the safety net.
 *  3. Auto-converge, only where post-copy is not allowed (disabled, or multifd): throttling by t
 *     costs ≈ t of the guest's CPU for as long as it lasts — several passes, since QEMU ramps it
 *     20 % then +10 points per step. The node arms the capability at start with the throttle
 *     capped at 1 % (QEMU cannot add capabilities mid-migration) and lifts the cap when asked.
 *     A user who turns auto-converge on from the start gets post-copy once it has not shrunk the
 *     backlog by 20 % in 4 passes.
 *  4. Last resort, only without post-copy: once the throttle is at its maximum and switch-over
 *     still needs more than max_downtime_ms, the timeout action now rather than at the timeout
 *     (pause: a full stop of b; or abort) — waiting longer only prolongs a 99 % throttle.
 * The completion and progress timeouts apply on top, as for every policy.
 *
 * Hysteresis: after any action the window restarts and nothing more happens until the next pass
 * (a raised limit needs one pass to show whether it suffices); auto-converge and post-copy are
 * taken at most once and the downtime limit only ever goes up.
 */
import { type GuestPerfSample, type MigrationState, MultifdCompression, PolicyActionKind, PolicyKind, type MigrationPolicy, type ProgressSample } from '../../../shared/gen/migd/v1/common.js';
import { formatBytes, formatDuration, formatRate } from '../units.js';
import { type CostModel, DEFAULT_COST_MODEL, type StepCost, cheapest, likeForLike, postcopyCost, precopyCost, withMeasuredRaise } from './cost.js';
import { type GuestCostTrack, PRIOR_WEIGHT, type RunCostFigures, type WorkingSetHistory, blendedCostModel, priorFromHistory, trackGuestSample, trackProgressSample, trackTransition, trackedCostFigures, workingSetFromHistory } from './measured.js';
import { completedPasses, dirtyBytesPerSec, isPostcopy, isPrecopy, isStarting, median, throughputBytesPerSec } from './signals.js';
import { type TimeoutRules, type TimeoutState, checkTimeouts, initialTimeoutState, trackProgress } from './timeouts.js';
import type { ConvergencePolicy, Decision, PolicyDecision, PolicyRequirements } from './types.js';

/** Tuning knobs; the defaults are argued in the module comment. */
export interface AdaptiveTuning {
  /** Samples in the moving window (medians). */
  readonly windowSamples: number;
  /** Passes to wait after an action before deciding again. */
  readonly settlePasses: number;
  /** "Converges on its own" means within this many more passes (K). */
  readonly convergeWithinPasses: number;
  /**
   * Pre-copy predicted to converge within this many more passes (0: the current pass's boundary
   * finds a backlog within the limit; 1: the next one's) takes no step, whatever the costs say:
   * steps are weighed only where it does not.
   */
  readonly nothingWithinPasses: number;
  /** Headroom on a raised downtime limit. */
  readonly downtimeMargin: number;
  /** Downtime limits are rounded up to a multiple of this. */
  readonly downtimeQuantumMs: number;
  /** Passes auto-converge gets to shrink the backlog before post-copy takes over. */
  readonly autoConvergeGracePasses: number;
  /** The shrink it must achieve in that time (fraction of the backlog when it was enabled). */
  readonly autoConvergeMinShrink: number;
  /** A dirty-rate estimate this many times higher (or lower) than at the last action is new information: decide again without waiting. */
  readonly estimateChangeFactor: number;
  /** The cost model the steps are chosen by (cost.ts; defaults fitted to the lab's measurements). */
  readonly costs: CostModel;
  /** Working-set bound: a backlog found at a later boundary of at least this fraction of an earlier one's has not shrunk (the readings' noise)… */
  readonly plateauShrink: number;
  /** …when its shrink per pass is also at least this many times the r predicted (noise allowance). */
  readonly plateauVsPredicted: number;
}

export const DEFAULT_ADAPTIVE_TUNING: AdaptiveTuning = Object.freeze({
  windowSamples: 3,
  settlePasses: 1,
  convergeWithinPasses: 5,
  nothingWithinPasses: 1,
  downtimeMargin: 1.25,
  downtimeQuantumMs: 50,
  autoConvergeGracePasses: 4,
  autoConvergeMinShrink: 0.2,
  estimateChangeFactor: 2,
  costs: DEFAULT_COST_MODEL,
  plateauShrink: 0.6,
  plateauVsPredicted: 1.5,
});

export interface AdaptiveConfig {
  readonly effective: MigrationPolicy;
  readonly requirements: PolicyRequirements;
  readonly timeouts: TimeoutRules;
  /** Upper bound for raised downtime limits (max_downtime_ms). */
  readonly maxDowntimeMs: number;
  /** Why post-copy may not be used, or undefined when it may. */
  readonly postcopyUnavailable: string | undefined;
  /** Throttle (percent) at which auto-converge counts as exhausted. */
  readonly autoConvergeMaxPct: number;
  /** The step-4 action without post-copy: PAUSE_GUEST (force-complete) or ABORT. */
  readonly lastResort: PolicyActionKind;
  readonly tuning?: Partial<AdaptiveTuning> | undefined;
}

/** One windowed reading. */
export interface AdaptiveReading {
  readonly t: number;
  /** QEMU's pass number (dirty-sync-count) when read. */
  readonly pass: number;
  readonly dirty: number;
  readonly bw: number;
  /** Backlog at the last pass boundary, as switch-over time in ms. */
  readonly backlogMs: number;
  /** The source's latest dirty-rate estimate, measured during pre-copy (bytes/s; 0 = none yet). Optional in stored states. */
  readonly estimate?: number;
  /** Remaining bytes when read (for the page rate of a compressed stream). Optional in stored states. */
  readonly remaining?: number;
  /** The backlog at the last pass boundary in bytes (the larger of QEMU's figure and what remained at the pass's first sample). Optional in stored states. */
  readonly backlogBytes?: number;
  /** The source's dirty set: unique bytes dirtied within `setWindowMs` during pre-copy (absent: not measured). */
  readonly setBytes?: number;
  readonly setWindowMs?: number;
}

/** Plain-data state of the {@link AdaptivePolicy}; its guest tally fields (guest, precopyAtMs, remainingMs) are measured.ts's GuestCostTrack. */
export interface AdaptiveState extends GuestCostTrack {
  readonly done: boolean;
  readonly downtimeMs: number;
  readonly autoConverge: boolean;
  /** Completed passes and backlog (ms) when auto-converge was enabled; null until measured. */
  readonly autoConvergeAt: { readonly passes: number; readonly backlogMs: number } | null;
  /** Completed passes at the last action (-1: none yet). */
  readonly lastActionPasses: number;
  /** The source's dirty-rate estimate (bytes/s) at the last action; optional in stored states. */
  readonly estimateAtAction?: number;
  /** The limit in force was raised by someone else (a user): while pre-copy converges at it, that choice stands. */
  readonly userLimit?: boolean;
  /** The figures of the last cost comparison (for tests and the timeline; not read back). */
  readonly assessment?: AdaptiveAssessment;
  /**
   * The cost model from this VM's earlier runs (measured.ts priorFromHistory), in place of the
   * tuning's; absent: the tuning's (DEFAULT_COST_MODEL).
   */
  readonly prior?: CostModel;
  /** Earlier runs behind `prior`: [with a pre-copy harm rate, with a post-copy cost, with a raise's cost (absent in older states)]. */
  readonly priorRuns?: readonly [number, number, number?];
  readonly window: readonly AdaptiveReading[];
  /**
   * [pass, backlog bytes] found at the last few pass boundaries seen (the largest reading of that
   * pass): the evidence of a working-set bound (see {@link backlogPlateau}). Absent in older states.
   */
  readonly boundaries?: readonly (readonly [number, number])[];
  /** The working set (bytes) this run's own boundaries showed the backlog held at (for the VM's next runs). */
  readonly workingSetBytes?: number;
  /** The working set the VM's earlier runs found (measured.ts workingSetFromHistory; firstBoundaryOnly: from post-copy runs' one boundary). */
  readonly priorWorkingSet?: WorkingSetHistory;
  /** [pass, first seen at ms, remaining bytes then] of the last few passes (older states: no third element). */
  readonly passMarks: readonly (readonly [number, number, number?])[];
  readonly timeouts: TimeoutState;
}

/** What the last cost comparison saw: enough to recompute the step costs (cost.ts). */
export interface AdaptiveAssessment {
  readonly elapsedMs: number;
  readonly backlogMs: number;
  readonly ratio: number;
  readonly limitMs: number;
  /** Switch-over need the raise was sized on (early: at least the backlog). */
  readonly needMs: number;
  /** Rates still from pass < 3: the raise is costed as if the backlog did not shrink. */
  readonly early: boolean;
  readonly convergesSoon: boolean;
  /** The raise it would take (ms). */
  readonly target: number;
  /** The working-set bound the backlog holds at, as transfer time (ms); absent: no such evidence. */
  readonly workingSetMs?: number;
  /** The cost model the steps were ranked by (the prior with this run's measured h blended in). */
  readonly model?: CostModel;
  /** This run's measured pre-copy harm rate and its pace samples, when it was used. */
  readonly measuredHarm?: { readonly rate: number; readonly samples: number };
}

/** The policy's reading of the window, exposed for tests and the run timeline. */
export interface AdaptivePrediction {
  readonly dirtyBytesPerSec: number;
  /** Of it, the source's calc-dirty-rate estimate when that was larger than QEMU's own early figure (else 0). */
  readonly estimateUsed: number;
  readonly throughputBytesPerSec: number;
  readonly ratio: number;
  readonly backlogMs: number;
  /** Downtime limit in force. */
  readonly limitMs: number;
  /** More passes needed at the current limit (Infinity: never). */
  readonly passesToConverge: number;
  /** Switch-over time needed when it does not converge soon on its own. */
  readonly needMs: number;
  readonly convergesSoon: boolean;
  /** The backlog holds at a working-set bound W (see {@link backlogPlateau}): W as transfer time (ms). */
  readonly workingSetMs?: number;
  /** The boundaries that showed it. */
  readonly plateau?: BacklogPlateau;
}

/** Two pass boundaries whose backlogs show a working-set bound, or one that matches the VM's earlier runs' bound. */
export interface BacklogPlateau {
  /** [pass, backlog bytes] at the earlier and the later boundary (from history: [0, the earlier runs' W]). */
  readonly from: readonly [number, number];
  readonly to: readonly [number, number];
  /** What the rates predicted for the later boundary (bytes): from × r^(passes between). */
  readonly predictedBytes: number;
  /** W: the larger of the two backlogs (bytes). */
  readonly workingSetBytes: number;
  /** From the VM's earlier runs: how many saw the bound (absent: from this run's boundaries). */
  readonly historyRuns?: number;
  /** Those runs saw one boundary each (post-copy after it): confirmed by this run's dirty-rate estimate (bytes/s). */
  readonly confirmedByEstimate?: number;
  /**
   * From this run's one boundary and its dirty set: the guest rewrote `bytes` (≥ shrink × the
   * backlog) within `windowMs`, less than the next pass takes (absent: other evidence).
   */
  readonly rewrittenWithin?: { readonly bytes: number; readonly windowMs: number };
}

/** The source's dirty-set measurement (AdaptiveReading.setBytes): unique bytes dirtied within windowMs. */
export interface DirtySet {
  readonly bytes: number;
  readonly windowMs: number;
}

/**
 * What besides two pass boundaries can show a working-set bound from one ({@link backlogPlateau}):
 * the VM's history, this run's dirty-rate estimate and its dirty set. Absent members: no such evidence.
 */
export interface BoundEvidence {
  /** The working set the VM's earlier runs found (measured.ts workingSetFromHistory). */
  readonly prior?: WorkingSetHistory | undefined;
  /**
   * This run's dirty-rate estimate (bytes/s; calc-dirty-rate over ≈1 s, a lower bound): what
   * confirms a set from post-copy runs' one boundary (`prior.firstBoundaryOnly`); 0: none.
   */
  readonly estimateBytesPerSec?: number | undefined;
  /** This run's dirty set. */
  readonly set?: DirtySet | undefined;
}

/** {@link BoundEvidence} and the throughput the dirty set is weighed against. */
export interface PlateauEvidence extends BoundEvidence {
  /** The rate the next pass sends the backlog at (bytes/s): the set counts where that pass outlasts its window; 0: unknown. */
  readonly bytesPerSec?: number | undefined;
}

/**
 * The working-set bound from the backlogs found at pass boundaries (pure; see the module comment,
 * "Saturation"). For each earlier boundary a and the latest c (c > a): where b_c ≥ `shrink` × b_a
 * (it did not shrink beyond the readings' noise, however many passes apart) and the shrink per pass
 * s = (b_c / b_a)^(1/(c−a)) ≥ `vsPredicted` × r (much less than the rates said), the guest rewrites
 * a bounded set within a pass: W = max(b_a, b_c), both being lower bounds of what a sync found.
 * Only for r < 1 (at r ≥ 1 the model already says the backlog holds). With `evidence.set` (this
 * run's dirty set, against the next pass at `evidence.bytesPerSec`) or `evidence.prior` (the VM's
 * earlier runs' W, measured.ts workingSetFromHistory) one boundary suffices: the set when it is
 * most of the backlog and rewritten faster than the next pass goes; the prior when the backlog is
 * within the same noise of it (≥ shrink × W and ≤ W ÷ shrink), whatever r says (that early it is
 * the saturated pass-1 rate, no evidence against the bound), a prior from post-copy runs' one
 * boundary only with `evidence.estimateBytesPerSec` covering it: W = the larger. Undefined
 * without such evidence.
 */
export function backlogPlateau(
  boundaries: readonly (readonly [number, number])[],
  ratio: number,
  shrink: number,
  vsPredicted: number,
  evidence: PlateauEvidence = {},
): BacklogPlateau | undefined {
  const { prior, estimateBytesPerSec = 0, set, bytesPerSec = 0 } = evidence;
  const last = boundaries[boundaries.length - 1];
  if (!last || !(ratio >= 0) || ratio >= 1) return undefined;
  for (const a of boundaries.slice(0, -1)) {
    if (a[0] >= last[0] || !(a[1] > 0)) continue;
    const passes = last[0] - a[0];
    const predictedBytes = a[1] * ratio ** passes;
    const perPass = (last[1] / a[1]) ** (1 / passes);
    if (last[1] >= shrink * a[1] && perPass >= vsPredicted * ratio) return { from: a, to: last, predictedBytes, workingSetBytes: Math.max(a[1], last[1]) };
  }
  // This run's dirty set: the guest rewrote at least `shrink` of this boundary's backlog within a
  // window shorter than the next pass (which sends that backlog at bytesPerSec). Unique pages only
  // grow with the window, so the next boundary finds at least that much again: the backlog holds.
  // A steady writer's set over a short window is a fraction of a pass's backlog (moderate: 4–7 MiB
  // in 100 ms against ≈100 MiB), a bounded set rewritten faster than that is nearly all of it
  // (hot-small: 43–48 MiB of 48).
  if (set && set.bytes > 0 && set.windowMs > 0 && last[1] > 0 && bytesPerSec > 0 && set.bytes >= shrink * last[1] && (last[1] / bytesPerSec) * 1000 >= set.windowMs) {
    return { from: last, to: last, predictedBytes: last[1] * ratio, workingSetBytes: Math.max(last[1], set.bytes), rewrittenWithin: { bytes: set.bytes, windowMs: set.windowMs } };
  }
  // The VM's earlier runs saw the backlog hold at W, and this boundary finds the same set (within
  // the readings' noise either way): expect it to hold again, from the first boundary on.
  if (prior && prior.bytes > 0 && last[1] >= shrink * prior.bytes && last[1] * shrink <= prior.bytes) {
    const found = { from: [0, prior.bytes] as const, to: last, predictedBytes: last[1] * ratio, workingSetBytes: Math.max(prior.bytes, last[1]), historyRuns: prior.runs };
    if (prior.firstBoundaryOnly !== true) return found;
    // One boundary per earlier run (post-copy after it): the set the guest dirtied over a whole
    // first pass, no evidence that it is dirtied again within the next, short one. This run's
    // estimate is: unique pages dirtied over ≈1 s (calc-dirty-rate, sampled: a lower bound) cover
    // at least `shrink` of the set, so the guest rewrites most of it every second and the next
    // boundary finds it again within the readings' noise. A rate-limited guest that fills a larger
    // region slowly (moderate: 48 MiB/s into 128 MiB) is not.
    if (estimateBytesPerSec >= shrink * found.workingSetBytes) return { ...found, confirmedByEstimate: estimateBytesPerSec };
  }
  return undefined;
}

const pct = (x: number): string => `${Math.round(x * 100)}%`;

/**
 * The window's dirty set, `pick` (median, min) of the readings that carry one, at the longest
 * window among them (a longer window's set is the larger: the conservative side for the bound);
 * undefined when none does.
 */
function windowSet(window: readonly AdaptiveReading[], pick: (xs: number[]) => number): DirtySet | undefined {
  const withSet = window.filter((r) => (r.setBytes ?? 0) > 0 && (r.setWindowMs ?? 0) > 0);
  if (withSet.length === 0) return undefined;
  return { bytes: pick(withSet.map((r) => r.setBytes!)), windowMs: Math.max(...withSet.map((r) => r.setWindowMs!)) };
}

/**
 * The window's dirty-rate estimate, `pick` (median, min) of the readings that carry one; 0 when
 * none does. The source measures during pre-copy only, so the first readings of a run carry 0
 * until its first estimate is in (≈1.2 s): taken as "no estimate" — the prediction then reads
 * QEMU's own rate alone — never as a quiet guest, and a median over them would drop a real
 * estimate for as long as they outnumber it in the window.
 */
function windowEstimate(window: readonly AdaptiveReading[], pick: (xs: number[]) => number): number {
  const known = window.map((r) => r.estimate ?? 0).filter((e) => e > 0);
  return known.length === 0 ? 0 : pick(known);
}

/** See the module comment. */
export class AdaptivePolicy implements ConvergencePolicy<AdaptiveState> {
  readonly name = 'adaptive';
  readonly kind = PolicyKind.POLICY_KIND_ADAPTIVE;
  readonly effective: MigrationPolicy;
  readonly requirements: PolicyRequirements;
  readonly timeouts: TimeoutRules;
  readonly tuning: AdaptiveTuning;
  private readonly config: AdaptiveConfig;

  constructor(config: AdaptiveConfig) {
    this.config = config;
    this.effective = config.effective;
    this.requirements = config.requirements;
    this.timeouts = config.timeouts;
    this.tuning = { ...DEFAULT_ADAPTIVE_TUNING, ...config.tuning };
  }

  initialState(): AdaptiveState {
    return {
      done: false,
      downtimeMs: this.effective.downtimeLimitMs,
      autoConverge: this.requirements.autoConverge === 'on',
      autoConvergeAt: null,
      lastActionPasses: -1,
      window: [],
      passMarks: [],
      timeouts: initialTimeoutState(),
    };
  }

  /**
   * Median figures of a full window and what they predict. The evidence of a working-set bound
   * besides `boundaries` (backlogPlateau): the VM's history as given, and, where `evidence` leaves
   * them out, the window's median estimate and the median of its readings' dirty sets.
   */
  predict(window: readonly AdaptiveReading[], limitMs: number, boundaries: readonly (readonly [number, number])[] = [], evidence: BoundEvidence = {}): AdaptivePrediction {
    const { convergeWithinPasses: k } = this.tuning;
    // Dirty rate and backlog come from readings after a sync (pass ≥ 2); throughput and the
    // source's estimate from the whole window (pass-1 samples included).
    const synced = window.filter((r) => r.pass >= 2);
    const qemuDirty = synced.length > 0 ? median(synced.map((r) => r.dirty)) : 0;
    // Early (rates from pass < 3, biased low by the long first pass), the source's estimate — a
    // lower bound of the rate — when it is the larger (see the module comment). Readings taken
    // before the first estimate came carry 0: no figure, not a quiet guest (windowEstimate).
    const early = window.some((r) => r.pass < 3);
    const estimate = early ? windowEstimate(window, median) : 0;
    const dirty = Math.max(qemuDirty, estimate);
    const bw = median(window.map((r) => r.bw));
    const backlogMs = synced.length > 0 ? median(synced.map((r) => r.backlogMs)) : NaN;
    const ratio = bw > 0 ? dirty / bw : Infinity;
    let passesToConverge: number;
    // The next sync finds what the guest dirtied during this pass: ≈ backlog × r (r ≥ 1: it grows).
    if (backlogMs * Math.max(1, ratio) <= limitMs) passesToConverge = 0;
    else if (ratio < 1 && ratio > 0) passesToConverge = Math.ceil(Math.log(limitMs / backlogMs) / Math.log(ratio));
    else if (ratio === 0) passesToConverge = 1;
    else passesToConverge = Infinity;
    const needMs = ratio < 1 ? backlogMs * ratio ** k : backlogMs * ratio;
    const base = { dirtyBytesPerSec: dirty, estimateUsed: estimate > qemuDirty ? estimate : 0, throughputBytesPerSec: bw, ratio, backlogMs, limitMs };
    // Saturation: the backlog holds at the working set W, so more pre-copy at L converges only if
    // W's transfer time fits L (then at the next boundary), and needs ≈ W otherwise.
    const plateau =
      bw > 0
        ? backlogPlateau(boundaries, ratio, this.tuning.plateauShrink, this.tuning.plateauVsPredicted, {
            prior: evidence.prior,
            estimateBytesPerSec: evidence.estimateBytesPerSec ?? windowEstimate(window, median),
            set: evidence.set ?? windowSet(window, median),
            bytesPerSec: bw,
          })
        : undefined;
    if (plateau && Number.isFinite(backlogMs)) {
      const workingSetMs = (plateau.workingSetBytes / bw) * 1000;
      const fits = workingSetMs <= limitMs;
      return { ...base, passesToConverge: fits ? 0 : Infinity, needMs: workingSetMs, convergesSoon: fits, workingSetMs, plateau };
    }
    return { ...base, passesToConverge, needMs, convergesSoon: passesToConverge <= k };
  }

  /** The cost model in force: the VM's prior (or the tuning's) with this run's measured h blended in. */
  costModel(state: AdaptiveState): { model: CostModel; measured?: { rate: number; samples: number } } {
    return blendedCostModel(state.prior ?? this.tuning.costs, state.guest);
  }

  private assessedModel(st: AdaptiveState): Pick<AdaptiveAssessment, 'model' | 'measuredHarm'> {
    if (st.prior === undefined && st.guest === undefined) return {};
    const { model, measured } = this.costModel(st);
    return { model, ...(measured ? { measuredHarm: measured } : {}) };
  }

  /** Folds one guest sample (forwarded by the source node, or stored from before the run) into the tally (measured.ts). */
  observeGuest(state: AdaptiveState, sample: GuestPerfSample): AdaptiveState {
    return trackGuestSample(state, sample);
  }

  /** The run's state changed (the coordinator's transitions; measured.ts trackTransition). */
  observeState(state: AdaptiveState, to: MigrationState, atMs: number): AdaptiveState {
    return trackTransition(state, to, atMs);
  }

  /** Sets the prior from the VM's earlier runs (measured.ts); no usable run: unchanged. */
  withHistory(state: AdaptiveState, runs: readonly RunCostFigures[]): AdaptiveState {
    const p = priorFromHistory(runs, this.tuning.costs);
    const ws = workingSetFromHistory(runs);
    const withWs = ws ? { ...state, priorWorkingSet: ws } : state;
    if (p.precopyRuns === 0 && p.postcopyRuns === 0 && p.raiseRuns === 0) return withWs;
    return { ...withWs, prior: p.model, priorRuns: [p.precopyRuns, p.postcopyRuns, p.raiseRuns] };
  }

  /** This run's measured figures, for the next run of the VM; undefined without a guest pace feed. */
  costFigures(state: AdaptiveState): RunCostFigures | undefined {
    const f = { ...trackedCostFigures(state), ...(state.workingSetBytes !== undefined ? { workingSetBytes: state.workingSetBytes } : {}) };
    return Object.keys(f).length > 0 ? f : undefined;
  }

  decide(state0: AdaptiveState, sample: ProgressSample, nowMs: number): Decision<AdaptiveState> {
    const state = trackProgressSample(state0, sample);
    if (state.done) return { actions: [], state };
    if (isPostcopy(sample)) return { actions: [], state: { ...state, done: true } };
    if (!isPrecopy(sample) && !isStarting(sample)) return { actions: [], state };

    const timeouts = trackProgress(state.timeouts, sample);
    const timeout = checkTimeouts(this.timeouts, timeouts, nowMs);
    if (timeout) return { actions: [timeout], state: { ...state, timeouts, done: true } };
    if (!isPrecopy(sample)) return { actions: [], state: { ...state, timeouts } };

    const passMarks = this.markPass(state.passMarks, sample);
    const window = this.observe(state.window, passMarks, sample);
    const boundaries = this.markBoundary(state.boundaries ?? [], window, sample);
    // A limit above any the policy set or knew was raised by someone else (a user's AdjustRun).
    const userLimit = state.userLimit === true || sample.downtimeLimitMs > state.downtimeMs;
    const base: AdaptiveState = { ...state, timeouts, passMarks, window, ...(boundaries.length > 0 ? { boundaries } : {}), downtimeMs: Math.max(state.downtimeMs, sample.downtimeLimitMs), ...(userLimit ? { userLimit } : {}) };

    const passes = completedPasses(sample);
    const settled = state.lastActionPasses < 0 || passes - state.lastActionPasses >= this.tuning.settlePasses || this.estimateChanged(state.estimateAtAction, sample.estimatedDirtyBytesPerSec);
    // A verdict needs a full window (throughput) with at least one reading taken after a sync.
    if (passes < 1 || window.length < this.tuning.windowSamples || !window.some((r) => r.pass >= 2) || !settled) return { actions: [], state: base };

    // A compressed stream was chosen before the start because it was predicted to converge
    // (transport.ts), and QEMU's figures mix wire bytes (throughput) with page bytes (dirty rate,
    // remaining): give it the passes that prediction allowed before second-guessing it.
    if (this.compressed() && passes < this.tuning.convergeWithinPasses) return { actions: [], state: base };
    const p = this.predict(window, base.downtimeMs, base.boundaries, { prior: base.priorWorkingSet });
    // The cheapest pass for a step: while the backlog grows or holds (r ≥ 1) every further pass
    // costs its whole length in dirty tracking and buys nothing, so one reading after the sync is
    // enough to act on. While it shrinks (r < 1) a full window of readings after the sync first —
    // unless the verdict stands even on the window's most favourable figures (QEMU's lowest dirty
    // rate and backlog, highest throughput): more readings can then only confirm it, and waiting for them
    // costs the guest dirty tracking for nothing (lab, heavy at 720 Mbit/s: r 0.87 read at the first
    // pass-2 sample with a 4.6 s backlog against 300 ms, post-copy 1.7 s later after two more).
    const synced = window.filter((r) => r.pass >= 2).length;
    // (The favourable reading drops the estimate as a dirty rate; as the evidence that a set seen at
    // one boundary holds, the window's lowest estimate is the favourable case.)
    const favourableEvidence: BoundEvidence = { prior: base.priorWorkingSet, estimateBytesPerSec: windowEstimate(window, (xs) => Math.min(...xs)), set: windowSet(window, (xs) => Math.min(...xs)) };
    if (synced < this.tuning.windowSamples && p.ratio < 1 && this.predict(this.favourable(window), base.downtimeMs, base.boundaries, favourableEvidence).convergesSoon) return { actions: [], state: base };
    let st = base;
    // What this run saw of the bound, for the VM's next runs: its own boundaries' W, or (matched to
    // the earlier runs' W) this boundary's own reading — not the larger of the two, which would ratchet.
    // A set only the post-copy runs' one boundary and this run's estimate showed is not recorded as
    // one seen to hold (the run's first boundary is, where it switches there: measured.ts).
    // Nor one only its dirty set showed (one boundary: not yet seen to hold).
    if (p.plateau && p.plateau.confirmedByEstimate === undefined && p.plateau.rewrittenWithin === undefined) st = { ...st, workingSetBytes: p.plateau.historyRuns === undefined ? p.plateau.workingSetBytes : p.plateau.to[1] };
    if (st.autoConverge && st.autoConvergeAt === null) st = { ...st, autoConvergeAt: { passes, backlogMs: p.backlogMs } };
    // Rates measured over the first pass are biased low (see module comment): a verdict of "not
    // converging" from them stands (the truth is worse), but the switch-over need they give is too
    // small, so size it as if the backlog were not shrinking (r = 1) until a later pass says more.
    const early = window.some((r) => r.pass < 3) && p.ratio < 1 && p.workingSetMs === undefined;
    const sized = early ? { ...p, needMs: Math.max(p.needMs, p.backlogMs) } : p;
    const t = this.tuning;
    const target = Math.ceil((sized.needMs * t.downtimeMargin) / t.downtimeQuantumMs) * t.downtimeQuantumMs;
    st = { ...st, assessment: { elapsedMs: nowMs, backlogMs: p.backlogMs, ratio: p.ratio, limitMs: p.limitMs, needMs: sized.needMs, early, convergesSoon: p.convergesSoon, target, ...(p.workingSetMs !== undefined ? { workingSetMs: p.workingSetMs } : {}), ...this.assessedModel(st) } };
    const decision = this.escalate(st, sized, early, target, sample, nowMs);
    if (!decision) return { actions: [], state: st };
    const next: AdaptiveState = { ...st, lastActionPasses: passes, estimateAtAction: sample.estimatedDirtyBytesPerSec ?? 0, window: [] };
    switch (decision.kind) {
      case PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME:
        return { actions: [decision], state: { ...next, downtimeMs: decision.value } };
      case PolicyActionKind.POLICY_ACTION_KIND_ENABLE_AUTO_CONVERGE:
        return { actions: [decision], state: { ...next, autoConverge: true, autoConvergeAt: { passes, backlogMs: p.backlogMs } } };
      default:
        return { actions: [decision], state: { ...next, done: true } };
    }
  }

  /**
   * One reading with the window's most favourable figures for convergence: QEMU's lowest dirty rate
   * and backlog read after a sync (not the source's estimate), the highest throughput (the
   * backlog's transfer time rescaled to it).
   */
  private favourable(window: readonly AdaptiveReading[]): AdaptiveReading[] {
    const synced = window.filter((r) => r.pass >= 2);
    const last = window[window.length - 1];
    if (synced.length === 0 || !last) return [...window];
    const bw = Math.max(...window.map((r) => r.bw));
    const bwMedian = median(window.map((r) => r.bw));
    return [
      {
        t: last.t,
        pass: Math.min(...synced.map((r) => r.pass)),
        dirty: Math.min(...synced.map((r) => r.dirty)),
        bw,
        backlogMs: (Math.min(...synced.map((r) => r.backlogMs)) * bwMedian) / bw,
        // QEMU's own rate: the source's estimate stands in for it only because the first
        // pass biases it low, so the favourable case is the one where QEMU is right.
        estimate: 0,
      },
    ];
  }

  /**
   * The predicted costs of the three live steps (cost.ts), each undefined where it is not an
   * option: nothing while pre-copy converges within K passes at the limit in force; a raise to
   * `target` while that is within max_downtime_ms and above the limit; post-copy while allowed.
   */
  costs(p: AdaptivePrediction, early: boolean, target: number, postcopy: boolean, m: CostModel = this.tuning.costs): { nothing?: StepCost; raise?: StepCost; postcopy?: StepCost } {
    const out: { nothing?: StepCost; raise?: StepCost; postcopy?: StepCost } = {};
    if (p.workingSetMs !== undefined) {
      // Saturated: every pass sends ≈ W and the guest faults its whole set in each (r = 1 for the
      // harm too: the regime h was fitted in); a stop of ≈ W once the limit admits it.
      if (p.convergesSoon) out.nothing = precopyCost(m, p.workingSetMs, 1, p.limitMs);
      if (target <= this.config.maxDowntimeMs && target > p.limitMs) {
        const raise = withMeasuredRaise(m, precopyCost(m, p.workingSetMs, 1, target, this.tuning.convergeWithinPasses + 1, 1), PRIOR_WEIGHT);
        if (Number.isFinite(raise.harmMs)) out.raise = raise;
      }
      if (postcopy) out.postcopy = postcopyCost(m, p.backlogMs);
      return out;
    }
    if (p.convergesSoon) out.nothing = precopyCost(m, p.backlogMs, p.ratio, p.limitMs);
    if (target <= this.config.maxDowntimeMs && target > p.limitMs) {
      // Sized on the need (early: as if the backlog did not shrink): one more boundary, then a stop of the need.
      const r = early ? Math.max(1, p.ratio) : p.ratio;
      const raise = withMeasuredRaise(m, precopyCost(m, p.backlogMs, r, target, this.tuning.convergeWithinPasses + 1, p.ratio), PRIOR_WEIGHT);
      if (Number.isFinite(raise.harmMs)) out.raise = raise;
    }
    if (postcopy) out.postcopy = postcopyCost(m, p.backlogMs);
    return out;
  }

  /** The cheapest step by predicted guest harm (cost.ts), or the fallbacks without post-copy; undefined = nothing now. */
  private escalate(st: AdaptiveState, p: AdaptivePrediction, early: boolean, target: number, sample: ProgressSample, nowMs: number): PolicyDecision | undefined {
    const t = this.tuning;
    const max = this.config.maxDowntimeMs;
    const estimated = p.estimateUsed > 0 ? ' (the source\'s calc-dirty-rate estimate; QEMU\'s rate over the long first pass reads lower)' : '';
    const figures = `backlog ≈${formatDuration(p.backlogMs)} of transfer, dirty ${formatRate(p.dirtyBytesPerSec)}${estimated} = ${p.ratio.toFixed(2)}× the ${formatRate(p.throughputBytesPerSec)} link`;
    const horizon = p.ratio < 1 ? ` even after ${t.convergeWithinPasses} more passes` : '';
    const pl = p.plateau;
    const held = !pl
      ? ''
      : pl.rewrittenWithin !== undefined
        ? `; the backlog holds at a working set: ≈${formatBytes(pl.to[1])} at pass ${pl.to[0]}, of which the guest rewrote ≈${formatBytes(pl.rewrittenWithin.bytes)} within ${pl.rewrittenWithin.windowMs} ms (its dirty set), less than the next pass takes, where r predicts ≈${formatBytes(pl.predictedBytes)}; W ≈${formatBytes(pl.workingSetBytes)} = ≈${formatDuration(p.workingSetMs ?? 0)}`
        : pl.historyRuns !== undefined
        ? `; the backlog holds at the working set this VM's earlier runs found: ≈${formatBytes(pl.from[1])} (${pl.historyRuns} run${pl.historyRuns === 1 ? '' : 's'}${pl.confirmedByEstimate !== undefined ? `, at the one boundary before their post-copy; dirtied ≥${formatRate(pl.confirmedByEstimate)} now` : ''}), ≈${formatBytes(pl.to[1])} at pass ${pl.to[0]} where r predicts ≈${formatBytes(pl.predictedBytes)} next, W ≈${formatBytes(pl.workingSetBytes)} = ≈${formatDuration(p.workingSetMs ?? 0)}`
        : `; the backlog holds at a working set: ≈${formatBytes(pl.from[1])} at pass ${pl.from[0]}, ≈${formatBytes(pl.to[1])} at pass ${pl.to[0]} where r predicted ≈${formatBytes(pl.predictedBytes)}, W ≈${formatBytes(pl.workingSetBytes)} = ≈${formatDuration(p.workingSetMs ?? 0)}`;
    const verdict = p.convergesSoon
      ? `predicted to converge at ${p.limitMs} ms in ${p.passesToConverge} more passes (${figures}${held})`
      : `predicted not to converge at ${p.limitMs} ms (${figures}${held}): switch-over needs ≈${formatDuration(p.needMs)}${pl ? '' : horizon}`;

    const passes = completedPasses(sample);
    const allowed = this.config.postcopyUnavailable === undefined;
    // A throttle the user turned on gets its grace passes before post-copy.
    const acAt = st.autoConverge ? st.autoConvergeAt : null;
    const inGrace = acAt !== null && (passes - acAt.passes < t.autoConvergeGracePasses || p.backlogMs <= (1 - t.autoConvergeMinShrink) * acAt.backlogMs);
    const { model, measured } = this.costModel(st);
    const c = this.costs(p, early, target, allowed && !inGrace, model);
    const options = [c.nothing, c.raise, c.postcopy];
    const pick = cheapest(model, options.filter((x): x is StepCost => x !== undefined));
    const chosen = pick < 0 ? undefined : options.filter((x): x is StepCost => x !== undefined)[pick];
    const lost = (x: StepCost | undefined): string => (x ? `≈${formatDuration(x.harmMs)}` : '—');
    const source = measured ? `h ${model.precopyHarmRate.toFixed(2)} with this run's ${measured.rate.toFixed(2)} over ${measured.samples} guest pace samples` : `h ${model.precopyHarmRate.toFixed(2)}`;
    const [, pcRuns = 0, raiseRuns = 0] = st.priorRuns ?? [];
    const learnt = pcRuns + raiseRuns > 0 ? ` (post-copy measured in ${pcRuns}, a raise in ${raiseRuns})` : '';
    const prior = st.priorRuns ? `, prior from ${Math.max(...st.priorRuns.map((n) => n ?? 0))} earlier runs of the VM${learnt}` : '';
    const mr = model.measuredRaise;
    const own = likeForLike(model) ? model.measuredPostcopy : undefined;
    const raiseMeasured = own && mr
      ? `; like for like, the VM's own: a raise measured ≈${formatDuration(mr.lostMs)} (${mr.runs} runs), post-copy c ${formatDuration(own.fixedMs)}, s ${own.harmRate.toFixed(2)} (${own.runs} runs)`
      : mr
        ? `, a raise measured ≈${formatDuration(mr.lostMs)}`
        : '';
    const costs = `predicted guest time lost: nothing ${lost(c.nothing)}, raise to ${target} ms ${lost(c.raise)}, post-copy ${lost(c.postcopy)}; ${source}, c ${formatDuration(model.postcopyFixedMs)}, s ${model.postcopyHarmRate.toFixed(2)}${raiseMeasured}${prior}`;

    // The gate: pre-copy converges on its own within the current or the next pass — nothing.
    if (p.convergesSoon && p.passesToConverge <= t.nothingWithinPasses) return undefined;
    if ((chosen !== undefined && chosen === c.nothing) || (c.nothing && st.userLimit === true)) return undefined;

    // 1. A bounded downtime raise, straight to the predicted need.
    if (chosen !== undefined && chosen === c.raise) {
      return {
        kind: PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME,
        value: target,
        elapsedMs: nowMs,
        reason: `${verdict}; raising the downtime limit to ${target} ms (need +${pct(t.downtimeMargin - 1)}, within max ${max} ms): one pause of at most ${target} ms is the cheapest step (${costs})`,
      };
    }

    const overMax = `${verdict}${p.convergesSoon || target <= max ? '' : ` > max ${max} ms`}`;

    // 2. Post-copy at once: cheaper than more passes, or no bounded pause suffices.
    if (chosen !== undefined && chosen === c.postcopy) {
      const why = acAt
        ? `auto-converge has not shrunk the backlog in ${passes - acAt.passes} passes (≈${formatDuration(acAt.backlogMs)} → ≈${formatDuration(p.backlogMs)})`
        : c.nothing || c.raise
          ? 'post-copy is predicted to cost the guest least'
          : 'no bounded pause suffices, and more passes only prolong dirty tracking';
      const backlogBytes = (p.backlogMs / 1000) * p.throughputBytesPerSec;
      return {
        kind: PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY,
        value: 0,
        elapsedMs: nowMs,
        reason: `${overMax}; ${why} (${costs}); switching to post-copy${this.requirements.postcopyPreempt ? ' with preempt' : ''} now: ≈${formatDuration(p.backlogMs)} of page faults for the ≈${formatBytes(backlogBytes)} still dirty`,
      };
    }
    if (allowed) return undefined;

    // 3. Without post-copy: auto-converge, the only live option left.
    if (!st.autoConverge) {
      const throttleNeeded = Math.min(0.99, Math.max(0, 1 - max / p.needMs));
      return {
        kind: PolicyActionKind.POLICY_ACTION_KIND_ENABLE_AUTO_CONVERGE,
        value: 0,
        elapsedMs: nowMs,
        reason: `${overMax}; it would need ≈${pct(throttleNeeded)} throttle, and post-copy is unavailable (${this.config.postcopyUnavailable ?? ''}): enabling auto-converge`,
      };
    }

    // 4. Without post-copy, once the throttle is exhausted.
    if (sample.throttlePct >= this.config.autoConvergeMaxPct) {
      const what = this.config.lastResort === PolicyActionKind.POLICY_ACTION_KIND_PAUSE_GUEST ? 'pausing the guest to force completion' : 'aborting (timeout action)';
      return {
        kind: this.config.lastResort,
        value: 0,
        elapsedMs: nowMs,
        reason: `${overMax}; auto-converge is at ${sample.throttlePct}% and post-copy is unavailable (${this.config.postcopyUnavailable ?? ''}): ${what} now rather than at the timeout`,
      };
    }
    return undefined;
  }

  /** The estimate moved by the change factor or more since the last action (both known). */
  private estimateChanged(atAction: number | undefined, now: number | undefined): boolean {
    if (!atAction || !now || atAction <= 0 || now <= 0) return false;
    const f = this.tuning.estimateChangeFactor;
    return now >= atAction * f || now <= atAction / f;
  }

  /** Remembers when each pass was first seen and what remained then (pass durations, backlogs). */
  private markPass(marks: AdaptiveState['passMarks'], sample: ProgressSample): AdaptiveState['passMarks'] {
    const last = marks[marks.length - 1];
    if (last && last[0] >= sample.pass) return marks;
    return [...marks, [sample.pass, sample.elapsedMs, sample.remainingBytes] as const].slice(-3);
  }

  /**
   * Records the backlog found at the boundary the sample's pass started with: the largest reading
   * of that pass (QEMU's first figure after a sync can be stale, see observe). Last three kept.
   */
  private markBoundary(boundaries: readonly (readonly [number, number])[], window: readonly AdaptiveReading[], sample: ProgressSample): readonly (readonly [number, number])[] {
    const r = window[window.length - 1];
    if (sample.pass < 2 || !r || r.t !== sample.elapsedMs || r.pass !== sample.pass || !(r.backlogBytes !== undefined && r.backlogBytes > 0)) return boundaries;
    const last = boundaries[boundaries.length - 1];
    if (last && last[0] > r.pass) return boundaries;
    if (last && last[0] === r.pass) return r.backlogBytes > last[1] ? [...boundaries.slice(0, -1), [r.pass, r.backlogBytes] as const] : boundaries;
    return [...boundaries, [r.pass, r.backlogBytes] as const].slice(-3);
  }

  /** multifd with zlib or zstd. */
  private compressed(): boolean {
    const c = this.effective.multifd;
    return (c?.enabled ?? false) && c?.compression !== undefined && c.compression !== MultifdCompression.MULTIFD_COMPRESSION_NONE && c.compression !== MultifdCompression.MULTIFD_COMPRESSION_UNSPECIFIED;
  }

  /**
   * Guest-page bytes moved per second. QEMU's throughput is wire bytes: with multifd compression a
   * page costs a fraction of its size on the wire, while dirty rate and remaining bytes count whole
   * pages (a compressible load in the lab: 7 MiB/s on the wire, ≈45 MiB/s of pages). So with
   * compression the rate at which remaining bytes fall since the previous reading of the same pass
   * counts, when larger.
   */
  private pageThroughput(window: readonly AdaptiveReading[], sample: ProgressSample): number {
    const wire = throughputBytesPerSec(sample);
    const prev = window[window.length - 1];
    if (!this.compressed() || !prev || prev.pass !== sample.pass || prev.remaining === undefined || sample.elapsedMs <= prev.t) return wire;
    const pages = ((prev.remaining - sample.remainingBytes) / (sample.elapsedMs - prev.t)) * 1000;
    return Math.max(wire, pages);
  }

  /**
   * Adds the sample to the window when it carries a throughput. Pass-1 samples count too (their
   * throughput and the source's estimate are as good as later ones; their backlog is not known yet,
   * NaN), so the first verdict can be made at the first sample after the pass-1 sync instead of a
   * full window later.
   */
  private observe(window: readonly AdaptiveReading[], marks: AdaptiveState['passMarks'], sample: ProgressSample): readonly AdaptiveReading[] {
    const bw = this.pageThroughput(window, sample);
    if (bw <= 0) return window;
    const set = sample.dirtySetBytes > 0 && sample.dirtySetWindowMs > 0 ? { setBytes: sample.dirtySetBytes, setWindowMs: sample.dirtySetWindowMs } : {};
    const reading = (dirty: number, backlogMs: number, backlogBytes?: number): AdaptiveReading => ({ t: sample.elapsedMs, pass: sample.pass, dirty, bw, backlogMs, estimate: sample.estimatedDirtyBytesPerSec, remaining: sample.remainingBytes, ...(backlogBytes !== undefined ? { backlogBytes } : {}), ...set });
    if (completedPasses(sample) < 1) return [...window, reading(0, NaN)].slice(-this.tuning.windowSamples);
    const dirty = dirtyBytesPerSec(sample);
    // QEMU's expected-downtime is backlog-at-last-sync ÷ bandwidth, but it starts out as the
    // downtime limit and is only recomputed once a dirty rate exists: the first samples after the
    // pass-1 sync can still carry the limit (300) while the backlog is seconds. The backlog is at
    // least what was left at the first sample of this pass (remaining falls within a pass).
    const mark = marks[marks.length - 1];
    const atPassStart = mark && mark[0] === sample.pass ? (mark[2] ?? sample.remainingBytes) : sample.remainingBytes;
    // Over the window's median throughput, as the prediction reads it (one sample's rate is noisy).
    const bwMedian = median([...window.map((r) => r.bw), bw].slice(-this.tuning.windowSamples));
    const fromRemaining = (atPassStart / bwMedian) * 1000;
    const qemu = dirty > 0 && sample.expectedDowntimeMs > 0 && sample.expectedDowntimeMs !== sample.downtimeLimitMs ? sample.expectedDowntimeMs : 0;
    let backlogMs = Math.max(qemu, fromRemaining);
    if (backlogMs <= 0) {
      // Without either: what the guest dirtied during the last full pass.
      const a = marks[marks.length - 2];
      const b = marks[marks.length - 1];
      const passMs = a && b ? b[1] - a[1] : undefined;
      backlogMs = passMs !== undefined ? (dirty * passMs) / bw : 0;
    }
    // In bytes (the working-set evidence, markBoundary): QEMU's figure is what remained at its last
    // update ÷ its bandwidth then, which the sample's own throughput carries — not the window's.
    const backlogBytes = qemu > 0 || atPassStart > 0 ? Math.max((qemu / 1000) * bw, atPassStart) : (backlogMs / 1000) * bw;
    return [...window, reading(dirty, backlogMs, backlogBytes)].slice(-this.tuning.windowSamples);
  }
}
