/**
 * The cost model's figures measured on the VM itself (issue 14 §3 "fit the costs to measurements
 * ... use the history too"). Pure.
 *
 * ## Within the run: h from the guest's pace
 * The guest's samples reach the coordinator while the run goes (the source node forwards them).
 * {@link tallyGuestSample} folds each into a small running tally, per phase, with the same
 * definition as services/shared/guest/harm.ts: the time the guest's clock stood still (host span
 * − guest span of consecutive samples) plus, while it ran, the work not done against its pace
 * before the migration (`guest time × max(0, 1 − baseline / pace)` per whole-guest pace sample).
 * The baseline is the median of the whole-guest pace samples seen before pre-copy started (the
 * VM's stored samples from before the run, then those forwarded while the migration was set up).
 * The pre-copy harm rate of this run so far is lost ÷ observed time of pre-copy.
 *
 * ## From history: the prior
 * At a run's end {@link runCostFigures} keeps what the next run of the same VM needs: the pre-copy
 * harm rate and how long it was observed, and, for a run that switched to post-copy, the guest
 * time lost from the switch to the end and the backlog (as transfer time) at the switch.
 * Every succeeded run keeps them whatever its policy (a fixed post-copy after one pass teaches the
 * VM's next adaptive runs c and s too): the coordinator's supervisor folds every run's guest
 * samples, progress, transitions and actions through the same functions ({@link GuestCostTrack});
 * a run whose limit was raised once in pre-copy (and that did not go into post-copy after it) also
 * keeps the guest time lost from the raise to the end and the backlog then.
 * {@link priorFromHistory} turns the VM's earlier runs into the policy's prior: h their median;
 * c and s by least squares over the post-copy runs where their backlogs spread enough to tell the
 * slope (≥ 3 runs, ≥ 1 s apart), else s kept and c the median of lost − s·b — unless that is
 * below 0 (the runs lost less than s·b alone: hot-small's post-copy runs lost 0.2–0.6 s at backlogs
 * of 0.4–2.3 s, docs/lab/policies-720-repeat), then c = 0 and s the median of lost ÷ b. Each figure is
 * shrunk towards the default by `PRIOR_WEIGHT` runs' worth (one run of a noisy machine decides
 * little). The raises' losses give their median (cost.ts withMeasuredRaise blends it with the
 * model's prediction of a raise by the same weight). Where both a raise and post-copy were measured
 * in ≥ 2 runs each, the two are ranked on the VM's own figures, unshrunk (cost.ts likeForLike). A run whose pass boundaries showed the backlog holding at a working set also keeps that
 * W (bytes; adaptive.ts "Saturation"), and {@link workingSetFromHistory} gives the next runs the
 * median of those.
 *
 * ## Blending
 * {@link blendedCostModel}: the measured h of this run replaces the prior's in proportion to how
 * much was seen, h = (w·h_prior + n·h_run) / (w + n) with n the pace samples of pre-copy so far
 * (the guest reports every ≈100 ms) and w = {@link BLEND_PRIOR_SAMPLES}; below
 * {@link MIN_PACE_SAMPLES} the run's figure is not used at all. A VM without the stress agent
 * (no pace samples) keeps its prior.
 */
import { type GuestPerfSample, MigrationState, PolicyActionKind, type ProgressSample } from '../../../shared/gen/migd/v1/common.js';
import { type CostModel, DEFAULT_COST_MODEL } from './cost.js';
import { isPostcopy, isPrecopy, median, throughputBytesPerSec } from './signals.js';

/** Pace samples of pre-copy needed before this run's own h is used. */
export const MIN_PACE_SAMPLES = 10;
/** The prior's weight in pace samples when blended with this run's h. */
export const BLEND_PRIOR_SAMPLES = 20;
/** The default model's weight in runs when the history's figures are shrunk towards it. */
export const PRIOR_WEIGHT = 1;
/** Pace samples kept for the baseline. */
const BASELINE_SAMPLES = 9;

/** One guest sample as the tally reads it. */
export interface GuestPaceSample {
  /** Host time the line was read (epoch ms). */
  readonly hostMs: number;
  /** The guest's monotonic clock (ms). */
  readonly guestMonoMs: number;
  /** Whole-guest ms per GiB (0: none: a heartbeat or one worker's line). */
  readonly msPerGib: number;
}

/** Lost guest time accumulated over one phase. */
export interface PhaseTally {
  /** Host time the guest's clock stood still (ms, may dip below 0 through read jitter; clamp when read). */
  readonly stoppedMs: number;
  /** Work not done while it ran (ms). */
  readonly slowedMs: number;
  /** Host time covered by consecutive samples (ms). */
  readonly coveredMs: number;
  /** Pace samples counted. */
  readonly paced: number;
}

/**
 * Where the migration is: before pre-copy (the baseline), pre-copy, switch-over (stopped: counted
 * with post-copy, as the fit in cost.ts did, and kept only when post-copy follows), post-copy,
 * after arrival (not counted).
 */
export type GuestPhase = 'before' | 'precopy' | 'switchover' | 'postcopy' | 'after';

/**
 * Plain-data running tally of the guest's samples (JSON-safe: no NaN, no Infinity). Like harm.ts,
 * each interval between two samples is shared out by host time over the phases' windows
 * (pre-copy: its start to the switch-over; post-copy: the switch-over to arrival), so a guest
 * that writes no line while its pages arrive is still charged when its next line comes.
 */
export interface GuestTally {
  readonly phase: GuestPhase;
  /** The last few whole-guest paces before pre-copy (ms/GiB). */
  readonly before: readonly number[];
  /** Frozen at the start of pre-copy: median of `before` (0: unknown). */
  readonly baselineMsPerGib: number;
  /** Host times (epoch ms) pre-copy started, the switch-over began, the guest arrived; -1: not yet. */
  readonly precopyAtMs: number;
  readonly switchAtMs: number;
  readonly arrivedAtMs: number;
  /** [hostMs, guestMonoMs] of the last sample and of the last pace sample. */
  readonly last: readonly [number, number] | null;
  readonly lastPaced: readonly [number, number] | null;
  readonly precopy: PhaseTally;
  readonly postcopy: PhaseTally;
  /** Backlog (transfer ms) at the switch to post-copy; -1: none or unknown. */
  readonly switchBacklogMs: number;
  /**
   * Downtime raises seen during pre-copy (a SET_DOWNTIME by whoever), the host time of the first
   * (-1: none) and the backlog (transfer ms) then; and the guest's loss from that raise to arrival
   * (the passes it still took and the stop). Absent in tallies from before these were kept.
   */
  readonly raises?: number;
  readonly raiseAtMs?: number;
  readonly raiseBacklogMs?: number;
  readonly raised?: PhaseTally;
  /** The run went into post-copy (whatever the backlog then). */
  readonly postcopySeen?: boolean;
}

const EMPTY_PHASE: PhaseTally = Object.freeze({ stoppedMs: 0, slowedMs: 0, coveredMs: 0, paced: 0 });
const PHASES: readonly GuestPhase[] = ['before', 'precopy', 'switchover', 'postcopy', 'after'];

export function initialGuestTally(): GuestTally {
  return { phase: 'before', before: [], baselineMsPerGib: 0, precopyAtMs: -1, switchAtMs: -1, arrivedAtMs: -1, last: null, lastPaced: null, precopy: EMPTY_PHASE, postcopy: EMPTY_PHASE, switchBacklogMs: -1 };
}

/**
 * Moves the tally to `phase` at host time `atMs` (only forwards: before → precopy → switchover →
 * postcopy → after). Entering pre-copy freezes the baseline; entering post-copy records the
 * backlog at the switch.
 */
export function enterPhase(t: GuestTally, phase: GuestPhase, atMs: number, switchBacklogMs?: number): GuestTally {
  if (PHASES.indexOf(phase) <= PHASES.indexOf(t.phase) || !Number.isFinite(atMs)) return t;
  let next: GuestTally = { ...t, phase };
  const passed = (p: GuestPhase): boolean => PHASES.indexOf(t.phase) < PHASES.indexOf(p) && PHASES.indexOf(phase) >= PHASES.indexOf(p);
  if (passed('precopy')) next = { ...next, precopyAtMs: atMs, baselineMsPerGib: t.before.length > 0 ? median(t.before) : 0 };
  if (passed('switchover')) next = { ...next, switchAtMs: atMs };
  if (passed('after')) next = { ...next, arrivedAtMs: atMs };
  if (phase === 'postcopy') next = { ...next, postcopySeen: true };
  if (passed('postcopy') && switchBacklogMs !== undefined && Number.isFinite(switchBacklogMs) && switchBacklogMs >= 0) next = { ...next, switchBacklogMs };
  return next;
}

/**
 * The backlog at the switch to post-copy when the switch itself did not give one (the last
 * pre-copy reading came before the pass-1 sync: what remained of pass 1, not a backlog): the first
 * post-copy reading's. Only once, and only after the switch.
 */
export function setSwitchBacklog(t: GuestTally, switchBacklogMs: number): GuestTally {
  if (t.postcopySeen !== true || t.switchBacklogMs >= 0 || !Number.isFinite(switchBacklogMs) || switchBacklogMs < 0) return t;
  return { ...t, switchBacklogMs };
}

/**
 * A downtime raise at host time `atMs` with `backlogMs` (transfer ms, -1: unknown) then: only one
 * during pre-copy is a raise whose cost can be told (the loss from it to arrival); a second makes
 * the run's raise figures void (see runCostFigures).
 */
export function enterRaise(t: GuestTally, atMs: number, backlogMs: number | undefined): GuestTally {
  if (t.phase !== 'precopy' || !Number.isFinite(atMs)) return t;
  const raises = (t.raises ?? 0) + 1;
  if (raises > 1) return { ...t, raises };
  return { ...t, raises, raiseAtMs: atMs, raiseBacklogMs: backlogMs !== undefined && Number.isFinite(backlogMs) && backlogMs >= 0 ? backlogMs : -1, raised: EMPTY_PHASE };
}

/** Overlap of [a, b] with [from, to] as a fraction of b − a (to < 0: open); as in harm.ts. */
function share(a: number, b: number, from: number, to: number): number {
  if (from < 0) return 0;
  const end = to < 0 ? Infinity : to;
  if (!(b > a)) return a >= from && a <= end ? 1 : 0;
  const o = Math.min(b, end) - Math.max(a, from);
  return o <= 0 ? 0 : o / (b - a);
}

function addInterval(p: PhaseTally, f: number, dh: number, dg: number): PhaseTally {
  return f <= 0 ? p : { ...p, stoppedMs: p.stoppedMs + f * (dh - dg), coveredMs: p.coveredMs + f * Math.max(0, dh) };
}

function addPace(p: PhaseTally, f: number, lostMs: number): PhaseTally {
  return f <= 0 ? p : { ...p, slowedMs: p.slowedMs + f * lostMs, paced: p.paced + 1 };
}

/** The phase tallies an interval is shared out over (`raised` only while a raise is tallied). */
type TalliedPhases = Pick<GuestTally, 'precopy' | 'postcopy' | 'raised'>;

/**
 * Shares the host interval [a, b] out over the phases' windows — pre-copy: its start to the
 * switch-over; post-copy: the switch-over to arrival; the raise: it to arrival — and adds to each
 * its share `f` by `add`.
 */
function shareOut(t: GuestTally, phases: TalliedPhases, a: number, b: number, add: (p: PhaseTally, f: number) => PhaseTally): TalliedPhases {
  const { precopy, postcopy, raised } = phases;
  return {
    precopy: add(precopy, share(a, b, t.precopyAtMs, t.switchAtMs)),
    postcopy: add(postcopy, share(a, b, t.switchAtMs, t.arrivedAtMs)),
    ...(raised ? { raised: add(raised, share(a, b, t.raiseAtMs ?? -1, t.arrivedAtMs)) } : {}),
  };
}

/** Folds one guest sample into the tally (samples out of the guest clock's order are dropped). */
export function tallyGuestSample(t: GuestTally, s: GuestPaceSample): GuestTally {
  if (!Number.isFinite(s.hostMs) || !Number.isFinite(s.guestMonoMs)) return t;
  const paced = s.msPerGib > 0;
  const newClock = !t.last || s.guestMonoMs > t.last[1];
  // The same line again (a worker's and the whole guest's share a clock): only its pace may be new.
  const newPace = paced && (!t.lastPaced || s.guestMonoMs > t.lastPaced[1]);
  if (!newClock && !newPace) return t;
  if (t.phase === 'before') {
    return {
      ...t,
      before: paced ? [...t.before, s.msPerGib].slice(-BASELINE_SAMPLES) : t.before,
      last: newClock ? [s.hostMs, s.guestMonoMs] : t.last,
      lastPaced: newPace ? [s.hostMs, s.guestMonoMs] : t.lastPaced,
    };
  }
  let phases: TalliedPhases = { precopy: t.precopy, postcopy: t.postcopy, ...(t.raised ? { raised: t.raised } : {}) };
  if (newClock && t.last) {
    const [a, ga] = t.last;
    const dh = s.hostMs - a;
    const dg = s.guestMonoMs - ga;
    phases = shareOut(t, phases, a, s.hostMs, (p, f) => addInterval(p, f, dh, dg));
  }
  if (newPace && t.lastPaced && t.baselineMsPerGib > 0) {
    const [a, ga] = t.lastPaced;
    const dg = s.guestMonoMs - ga;
    const lost = dg * Math.max(0, 1 - t.baselineMsPerGib / s.msPerGib);
    phases = shareOut(t, phases, a, s.hostMs, (p, f) => addPace(p, f, lost));
  }
  return { ...t, ...phases, last: newClock ? [s.hostMs, s.guestMonoMs] : t.last, lastPaced: newPace ? [s.hostMs, s.guestMonoMs] : t.lastPaced };
}

/**
 * What a run's guest samples, progress samples, transitions and actions drive (plain data): the
 * tally, created at the first guest sample (absent: no guest feed), when pre-copy was first seen and
 * what remained at its last sample as transfer time (the backlog at a switch to post-copy or a
 * raise). The coordinator's supervisor keeps one for every run whatever its policy (its figures
 * are stored at the run's end), and the adaptive policy keeps the same fields in its own state to
 * blend this run's h in while it decides: both fold through the functions below.
 */
export interface GuestCostTrack {
  readonly guest?: GuestTally;
  /** Host time (epoch ms) pre-copy was first seen. */
  readonly precopyAtMs?: number;
  /** What remained at the last pre-copy sample, as transfer time (ms). */
  readonly remainingMs?: number;
  /** The pass of that sample (1: before the first bitmap sync, so not a backlog; absent in older tracks). */
  readonly remainingPass?: number;
  /** The highest pass seen in pre-copy. */
  readonly precopyPass?: number;
  /**
   * What remained (bytes) at the first reading after the pass-1 sync: the first pass-2 sample in
   * pre-copy, or, where none came before the switch, the first post-copy sample. The backlog the
   * first boundary found (a lower bound: pages were sent since the sync).
   */
  readonly firstBoundaryBytes?: number;
  /** The run went into post-copy (a transition or a sample said so). */
  readonly postcopy?: boolean;
  /**
   * Host time (epoch ms) of the first progress sample of a LOCAL disk copy: the guest's pace from
   * then on is not its baseline (a write-blocking mirror slows it before pre-copy begins).
   */
  readonly storageAtMs?: number;
}

/** Folds one guest sample (forwarded by the source node, or stored from before the run) into the tally. */
export function trackGuestSample<S extends GuestCostTrack>(state: S, sample: GuestPerfSample): S {
  const host = sample.time?.getTime();
  if (host === undefined) return state;
  let guest = state.guest ?? initialGuestTally();
  if (state.guest === undefined && state.precopyAtMs !== undefined) guest = enterPhase(guest, 'precopy', state.precopyAtMs);
  // Whole-guest pace only (worker -1); a worker's own line counts for the clock. Nor is a pace
  // taken during a disk copy the baseline.
  const copying = guest.phase === 'before' && state.storageAtMs !== undefined && host >= state.storageAtMs;
  const next = tallyGuestSample(guest, { hostMs: host, guestMonoMs: sample.guestMonoMs, msPerGib: sample.worker === -1 && !copying ? sample.msPerGib : 0 });
  return next === state.guest ? state : { ...state, guest: next };
}

/**
 * The run moved to `to` at host time `atMs` (the coordinator's transitions): pre-copy ends at the
 * switch-over, the post-copy phase at arrival (VERIFYING) — no progress sample says so once QEMU
 * completes.
 */
export function trackTransition<S extends GuestCostTrack>(state: S, to: MigrationState, atMs: number): S {
  if (to === MigrationState.MIGRATION_STATE_PRECOPY && state.precopyAtMs === undefined) state = { ...state, precopyAtMs: atMs };
  if (to === MigrationState.MIGRATION_STATE_POSTCOPY && state.postcopy !== true) state = { ...state, postcopy: true };
  if (!state.guest) return state;
  switch (to) {
    case MigrationState.MIGRATION_STATE_PRECOPY:
      return { ...state, guest: enterPhase(state.guest, 'precopy', atMs) };
    case MigrationState.MIGRATION_STATE_SWITCHOVER:
      return { ...state, guest: enterPhase(state.guest, 'switchover', atMs) };
    case MigrationState.MIGRATION_STATE_POSTCOPY:
      return { ...state, guest: enterPhase(state.guest, 'postcopy', atMs, switchBacklog(state)) };
    case MigrationState.MIGRATION_STATE_POSTCOPY_PAUSED:
    case MigrationState.MIGRATION_STATE_POSTCOPY_RECOVERING:
    case MigrationState.MIGRATION_STATE_PREPARING:
    case MigrationState.MIGRATION_STATE_SETUP:
    case MigrationState.MIGRATION_STATE_QUEUED:
    case MigrationState.MIGRATION_STATE_UNSPECIFIED:
      return state;
    default:
      return { ...state, guest: enterPhase(state.guest, 'after', atMs) };
  }
}

/**
 * The backlog at a switch to post-copy as transfer time: what remained at the last pre-copy sample,
 * once that sample came after the pass-1 sync (pass ≥ 2). Before it, "remaining" is what pass 1 had
 * still to send (zero pages included: 6.7–180 MiB in the lab's hot-small runs, whose switch then
 * found 34–49 MiB), not a backlog: undefined, and the first post-copy sample gives it
 * (setSwitchBacklog).
 */
function switchBacklog(state: GuestCostTrack): number | undefined {
  return (state.remainingPass ?? 2) >= 2 ? state.remainingMs : undefined;
}

/** Moves the tally's phase with a progress sample's (pre-copy: its start and what remains; post-copy: the switch). */
export function trackProgressSample<S extends GuestCostTrack>(state: S, sample: ProgressSample): S {
  const at = sample.time?.getTime();
  if (sample.storagePhase === true && at !== undefined && state.storageAtMs === undefined) state = { ...state, storageAtMs: at };
  const bw = throughputBytesPerSec(sample);
  if (isPrecopy(sample)) {
    const remainingMs = bw > 0 ? (sample.remainingBytes / bw) * 1000 : state.remainingMs;
    const remainingPass = bw > 0 ? sample.pass : state.remainingPass;
    const guest = state.guest && at !== undefined ? enterPhase(state.guest, 'precopy', at) : state.guest;
    const precopyAtMs = state.precopyAtMs ?? at;
    const precopyPass = Math.max(state.precopyPass ?? 0, sample.pass);
    const firstBoundaryBytes = state.firstBoundaryBytes === undefined && sample.pass === 2 && sample.remainingBytes > 0 ? sample.remainingBytes : state.firstBoundaryBytes;
    if (remainingMs === state.remainingMs && remainingPass === state.remainingPass && guest === state.guest && precopyAtMs === state.precopyAtMs && precopyPass === state.precopyPass && firstBoundaryBytes === state.firstBoundaryBytes) return state;
    return {
      ...state,
      ...(remainingMs !== undefined ? { remainingMs } : {}),
      ...(remainingPass !== undefined ? { remainingPass } : {}),
      ...(guest ? { guest } : {}),
      ...(precopyAtMs !== undefined ? { precopyAtMs } : {}),
      precopyPass,
      ...(firstBoundaryBytes !== undefined ? { firstBoundaryBytes } : {}),
    };
  }
  if (!isPostcopy(sample)) return state;
  // The first post-copy reading: what the sync at the switch found, less what was sent since.
  let next: S = state.postcopy === true ? state : { ...state, postcopy: true };
  if (next.firstBoundaryBytes === undefined && (next.precopyPass ?? 0) <= 1 && sample.remainingBytes > 0) next = { ...next, firstBoundaryBytes: sample.remainingBytes };
  if (!next.guest || at === undefined) return next;
  let guest = enterPhase(next.guest, 'postcopy', at, switchBacklog(next));
  if (bw > 0 && sample.remainingBytes > 0) guest = setSwitchBacklog(guest, (sample.remainingBytes / bw) * 1000);
  return guest === next.guest ? next : { ...next, guest };
}

/** An action taken on the migration (by its policy or a user) at host time `atMs`: a downtime raise starts the raise's tally. */
export function trackAction<S extends GuestCostTrack>(state: S, kind: PolicyActionKind, atMs: number): S {
  if (kind !== PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME || !state.guest) return state;
  const guest = enterRaise(state.guest, atMs, state.remainingMs);
  return guest === state.guest ? state : { ...state, guest };
}

/** The host time of a sample, transition or action (epoch ms; 0 without one): what a replay orders by. The store hands samples back in this order already (by time, then as stored). */
const timeOf = (x: { readonly time?: Date | undefined }): number => x.time?.getTime() ?? 0;

/** A run's recorded timeline as the store keeps it: progress and guest samples, the run's transitions and actions. */
export interface RecordedTimeline {
  readonly progress: readonly ProgressSample[];
  readonly guest: readonly GuestPerfSample[];
  readonly transitions: readonly { readonly time?: Date | undefined; readonly to: MigrationState }[];
  readonly actions: readonly { readonly time?: Date | undefined; readonly kind: PolicyActionKind }[];
}

/** How a replay moves its state with each kind of event (host times in epoch ms, 0 without one); a kind without a fold is left out. */
export interface TimelineFolds<S> {
  readonly progress?: ((state: S, sample: ProgressSample) => S) | undefined;
  readonly guest?: ((state: S, sample: GuestPerfSample) => S) | undefined;
  readonly transition?: ((state: S, to: MigrationState, atMs: number) => S) | undefined;
  readonly action?: ((state: S, kind: PolicyActionKind, atMs: number) => S) | undefined;
}

/**
 * Folds a run's recorded timeline into `init` through `folds`, in the order of the events' host
 * times, as they came in (equal times: progress, guest samples, transitions, actions, each as
 * stored). `order` 'merge': progress replayed alone (no other event to merge in) keeps its stored
 * order rather than being sorted by time.
 */
export function replayTimeline<S>(init: S, timeline: RecordedTimeline, folds: TimelineFolds<S>, order: 'time' | 'merge' = 'time'): S {
  const events: { t: number; o: number; apply: (s: S) => S }[] = [];
  const add = (t: number, apply: (s: S) => S): void => void events.push({ t, o: events.length, apply });
  const { progress, guest, transition, action } = folds;
  if (progress) for (const p of timeline.progress) add(timeOf(p), (s) => progress(s, p));
  const progressOnly = events.length;
  if (guest) for (const g of timeline.guest) add(timeOf(g), (s) => guest(s, g));
  if (transition) for (const c of timeline.transitions) add(timeOf(c), (s) => transition(s, c.to, timeOf(c)));
  if (action) for (const a of timeline.actions) add(timeOf(a), (s) => action(s, a.kind, timeOf(a)));
  if (order === 'time' || events.length > progressOnly) events.sort((a, b) => a.t - b.t || a.o - b.o);
  return events.reduce((s, e) => e.apply(s), init);
}

/**
 * A run's cost track from its recorded timeline (a restarted coordinator, the tests): guest
 * samples (those before the run included), progress, transitions and actions in the order of their
 * host times, as they came in.
 */
export function replayCostTrack(
  progress: readonly ProgressSample[],
  guest: readonly GuestPerfSample[],
  transitions: RecordedTimeline['transitions'],
  actions: RecordedTimeline['actions'],
): GuestCostTrack {
  return replayTimeline<GuestCostTrack>({}, { progress, guest, transitions, actions }, { progress: trackProgressSample, guest: trackGuestSample, transition: trackTransition, action: trackAction });
}

/** The figures a run's track leaves for the VM's next runs (undefined: nothing measured). */
export function trackedCostFigures(state: GuestCostTrack): RunCostFigures | undefined {
  const f = { ...(state.guest ? runCostFigures(state.guest) : {}), ...firstBoundarySet(state) };
  return Object.keys(f).length > 0 ? f : undefined;
}

/**
 * A run that went into post-copy at its first pass boundary (pre-copy never reached pass 3) saw one
 * boundary only: no working set of its own (that needs two, adaptive.ts "Saturation"), but the
 * backlog that boundary found is the set the guest dirtied over the whole first pass, which the VM's
 * next adaptive run may confirm (adaptive.ts backlogPlateau).
 */
function firstBoundarySet(state: GuestCostTrack): Pick<RunCostFigures, 'firstBoundaryBytes'> {
  const b = state.firstBoundaryBytes;
  return state.postcopy === true && b !== undefined && b > 0 && (state.precopyPass ?? 0) <= 2 ? { firstBoundaryBytes: b } : {};
}

/** Guest ms lost over a phase's tally. */
export function phaseLostMs(p: PhaseTally): number {
  return Math.max(0, p.stoppedMs) + p.slowedMs;
}

/** This run's pre-copy harm rate so far and the pace samples behind it; undefined without a baseline or pace. */
export function measuredPrecopyHarm(t: GuestTally): { rate: number; samples: number } | undefined {
  const p = t.precopy;
  if (!(t.baselineMsPerGib > 0) || p.paced === 0 || !(p.coveredMs > 0)) return undefined;
  return { rate: phaseLostMs(p) / p.coveredMs, samples: p.paced };
}

/** The model with this run's h blended in (see the module comment); the prior unchanged below the minimum. */
export function blendedCostModel(prior: CostModel, t: GuestTally | undefined): { model: CostModel; measured?: { rate: number; samples: number } } {
  const m = t ? measuredPrecopyHarm(t) : undefined;
  if (!m || m.samples < MIN_PACE_SAMPLES) return { model: prior };
  const h = (BLEND_PRIOR_SAMPLES * prior.precopyHarmRate + m.samples * m.rate) / (BLEND_PRIOR_SAMPLES + m.samples);
  return { model: { ...prior, precopyHarmRate: h }, measured: m };
}

/** What one finished run tells the next run of the same VM (stored with the run). */
export interface RunCostFigures {
  /** Guest seconds lost per second of pre-copy; undefined: not measured. */
  readonly precopyHarmRate?: number | undefined;
  /** Observed pre-copy (ms) behind it. */
  readonly precopyMs?: number | undefined;
  /** Guest ms lost from the switch to post-copy to the end; undefined: no post-copy, or not measured. */
  readonly postcopyLostMs?: number | undefined;
  /** Backlog at the switch, as transfer time (ms). */
  readonly postcopyBacklogMs?: number | undefined;
  /** The working set the backlog held at across pass boundaries (bytes; adaptive.ts "Saturation"); undefined: none seen. */
  readonly workingSetBytes?: number | undefined;
  /**
   * A run that switched to post-copy at its first pass boundary: the backlog that boundary found
   * (bytes), one boundary's evidence of the set only (see workingSetFromHistory); undefined otherwise.
   */
  readonly firstBoundaryBytes?: number | undefined;
  /**
   * Guest ms lost from the run's one downtime raise to the end (the passes it still took and the
   * stop); undefined: no raise, more than one, post-copy after it, or not measured.
   */
  readonly raiseLostMs?: number | undefined;
  /** Backlog when the limit was raised, as transfer time (ms). */
  readonly raiseBacklogMs?: number | undefined;
}

/** A finished run's figures from its tally (empty where nothing was measured). */
export function runCostFigures(t: GuestTally): RunCostFigures {
  const out: { -readonly [K in keyof RunCostFigures]: RunCostFigures[K] } = {};
  const h = measuredPrecopyHarm(t);
  if (h && h.samples >= MIN_PACE_SAMPLES) {
    out.precopyHarmRate = h.rate;
    out.precopyMs = t.precopy.coveredMs;
  }
  if (t.switchBacklogMs >= 0 && t.baselineMsPerGib > 0 && t.postcopy.coveredMs > 0) {
    out.postcopyLostMs = phaseLostMs(t.postcopy);
    out.postcopyBacklogMs = t.switchBacklogMs;
  }
  const raised = t.raised;
  if (raised && t.raises === 1 && t.postcopySeen !== true && t.arrivedAtMs >= 0 && (t.raiseBacklogMs ?? -1) >= 0 && t.baselineMsPerGib > 0 && raised.coveredMs > 0) {
    out.raiseLostMs = phaseLostMs(raised);
    out.raiseBacklogMs = t.raiseBacklogMs;
  }
  return out;
}

/** Least squares of y on x: intercept and slope; undefined when x does not spread. */
function leastSquares(points: readonly (readonly [number, number])[]): { intercept: number; slope: number } | undefined {
  const n = points.length;
  if (n < 2) return undefined;
  const mx = points.reduce((a, p) => a + p[0], 0) / n;
  const my = points.reduce((a, p) => a + p[1], 0) / n;
  const sxx = points.reduce((a, p) => a + (p[0] - mx) ** 2, 0);
  if (!(sxx > 0)) return undefined;
  const slope = points.reduce((a, p) => a + (p[0] - mx) * (p[1] - my), 0) / sxx;
  return { intercept: my - slope * mx, slope };
}

const shrink = (fitted: number, n: number, prior: number): number => (n * fitted + PRIOR_WEIGHT * prior) / (n + PRIOR_WEIGHT);

/** The working set (bytes) the VM's earlier runs found, and how many runs found it. */
export interface WorkingSetHistory {
  readonly bytes: number;
  readonly runs: number;
  /** Only from runs that switched to post-copy at their first boundary (one boundary each). */
  readonly firstBoundaryOnly?: true;
}

/**
 * The working set the VM's earlier runs found the backlog held at: the median of those that saw one
 * (bytes), and how many did; undefined when none did.
 */
export function workingSetFromHistory(runs: readonly RunCostFigures[]): WorkingSetHistory | undefined {
  const ok = (x: number | undefined): x is number => x !== undefined && Number.isFinite(x) && x > 0;
  const ws = runs.map((r) => r.workingSetBytes).filter(ok);
  if (ws.length > 0) return { bytes: median(ws), runs: ws.length };
  // Only runs that switched to post-copy at their first boundary: the median of what it found,
  // marked as such (the adaptive policy takes it only with this run's own evidence, backlogPlateau).
  const first = runs.map((r) => r.firstBoundaryBytes).filter(ok);
  return first.length > 0 ? { bytes: median(first), runs: first.length, firstBoundaryOnly: true } : undefined;
}

/**
 * The prior for a VM from its earlier runs' figures (see the module comment), and which figures
 * came from how many runs. With no usable run: `fallback` itself.
 */
export function priorFromHistory(runs: readonly RunCostFigures[], fallback: CostModel = DEFAULT_COST_MODEL): { model: CostModel; precopyRuns: number; postcopyRuns: number; raiseRuns: number } {
  const hs = runs.map((r) => r.precopyHarmRate).filter((x): x is number => x !== undefined && Number.isFinite(x) && x >= 0);
  const pc = runs
    .filter((r) => r.postcopyLostMs !== undefined && r.postcopyBacklogMs !== undefined && Number.isFinite(r.postcopyLostMs) && Number.isFinite(r.postcopyBacklogMs))
    .map((r) => [r.postcopyBacklogMs!, r.postcopyLostMs!] as const);
  let model: CostModel = fallback;
  if (hs.length > 0) model = { ...model, precopyHarmRate: shrink(median(hs), hs.length, fallback.precopyHarmRate) };
  if (pc.length > 0) {
    const xs = pc.map((p) => p[0]);
    const fit = pc.length >= 3 && Math.max(...xs) - Math.min(...xs) >= 1000 ? leastSquares(pc) : undefined;
    let s = fallback.postcopyHarmRate;
    let c: number;
    if (fit && fit.slope >= 0 && fit.intercept >= 0) {
      s = fit.slope;
      c = fit.intercept;
    } else {
      c = median(pc.map(([b, lost]) => lost - s * b));
      const ratios = pc.filter(([b]) => b > 0).map(([b, lost]) => lost / b);
      if (!(c >= 0) && ratios.length > 0) {
        // The runs lost less than s·b alone: their slope is smaller, not c below 0 (lost = s·b through the origin).
        c = 0;
        s = median(ratios);
      }
      c = Math.max(0, c);
    }
    model = { ...model, postcopyFixedMs: shrink(c, pc.length, fallback.postcopyFixedMs), postcopyHarmRate: shrink(s, pc.length, fallback.postcopyHarmRate), measuredPostcopy: { fixedMs: c, harmRate: s, runs: pc.length } };
  }
  const raised = runs.map((r) => r.raiseLostMs).filter((x): x is number => x !== undefined && Number.isFinite(x) && x >= 0);
  if (raised.length > 0) model = { ...model, measuredRaise: { lostMs: median(raised), runs: raised.length } };
  return { model, precopyRuns: hs.length, postcopyRuns: pc.length, raiseRuns: raised.length };
}
