/**
 * The lab's arithmetic, pure: series for the plots, per-run figures (downtime, total time, guest
 * harm against the baseline before the migration, host CPU) and per-strategy summaries, all from
 * run timelines (proto GetRunTimelineResponse, as the coordinator's GetRunTimeline returns it).
 */
import { MigrationState, type GuestPerfSample, type ProgressSample } from '../../services/shared/gen/migd/v1/common.js';
import type { GetRunTimelineResponse } from '../../services/shared/gen/migd/v1/coordinator.js';
import { guestTimeLost, type GuestClockSample } from '../../services/shared/guest/harm.js';

const MiB = 1024 * 1024;

/** A plot point: seconds since the migration started, value. */
export interface Point {
  readonly x: number;
  readonly y: number;
}

// ---------------------------------------------------------------------------------------------
// Statistics

/**
 * The q-quantile (0..1) with linear interpolation between closest ranks (R's type 7, NumPy's
 * default, the same as the coordinator's ComparePolicies). NaN for an empty list.
 */
export function quantile(values: readonly number[], q: number): number {
  const s = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const pos = (s.length - 1) * Math.min(1, Math.max(0, q));
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return s[lo]! + (s[hi]! - s[lo]!) * (pos - lo);
}

/** Arithmetic mean of the finite values; NaN when there are none. */
export function mean(values: readonly number[]): number {
  const f = values.filter((v) => Number.isFinite(v));
  return f.length === 0 ? NaN : f.reduce((a, b) => a + b, 0) / f.length;
}

// ---------------------------------------------------------------------------------------------
// The migration's time window

const ms = (d: Date | undefined): number | undefined => (d ? d.getTime() : undefined);

/**
 * Start and end of the migration in epoch ms: the run's started/finished times, else its first and
 * last progress samples. `end` is undefined for a run that has not finished and has no samples.
 */
export function migrationWindow(t: GetRunTimelineResponse): { start: number; end: number | undefined } {
  const first = t.progress[0];
  const last = t.progress[t.progress.length - 1];
  const start = ms(t.run?.startedAt) ?? (first?.time ? first.time.getTime() - Number(first.elapsedMs) : undefined) ?? ms(t.run?.createdAt) ?? 0;
  const end = ms(t.run?.finishedAt) ?? ms(last?.time);
  return { start, end };
}

// ---------------------------------------------------------------------------------------------
// Guest performance

const COMBINED = -1;

/**
 * The combined (all workers) ms/GiB series as (epoch ms, ms/GiB), oldest first. Uses the guest's
 * own combined samples (worker −1); when a timeline has only per-worker samples, combines them the
 * way the telemetry parser does, 1/Σ(1/msPerGib) over each worker's latest value, once per sample.
 * Heartbeat-only samples (msPerGib 0) carry no rate and are left out.
 */
export function combinedGuestSeries(guest: readonly GuestPerfSample[]): { t: number; v: number }[] {
  const withTime = guest.filter((g) => g.time && g.msPerGib > 0);
  const combined = withTime.filter((g) => g.worker === COMBINED);
  if (combined.length > 0) return combined.map((g) => ({ t: g.time!.getTime(), v: g.msPerGib })).sort((a, b) => a.t - b.t);
  const latest = new Map<number, number>();
  const out: { t: number; v: number }[] = [];
  for (const g of [...withTime].sort((a, b) => a.time!.getTime() - b.time!.getTime())) {
    latest.set(g.worker, g.msPerGib);
    let inv = 0;
    for (const v of latest.values()) inv += 1 / v;
    out.push({ t: g.time!.getTime(), v: 1 / inv });
  }
  return out;
}

/** Median combined ms/GiB over [start − windowMs, start): the guest's pace before the migration. NaN without samples. */
export function baselineMsPerGib(series: readonly { t: number; v: number }[], start: number, windowMs = 60_000): number {
  return quantile(series.filter((p) => p.t < start && p.t >= start - windowMs).map((p) => p.v), 0.5);
}

/**
 * The baseline of a timeline: the median of its whole-guest samples before the start; when the
 * window holds only single workers' samples (node daemons before this fix put the latest sample
 * of any kind in heartbeats, and between runs the store keeps one per heartbeat period), the
 * median of those divided by the number of workers — the workload's workers write equal shares,
 * so the guest's pace is one worker's pace ÷ workers. NaN without samples. `series` is the
 * combined series of `guest`, when the caller has it already.
 */
export function timelineBaseline(guest: readonly GuestPerfSample[], start: number, windowMs = 60_000, series = combinedGuestSeries(guest)): number {
  const b = baselineMsPerGib(series, start, windowMs);
  if (Number.isFinite(b)) return b;
  const workers = new Set(guest.filter((g) => g.worker >= 0).map((g) => g.worker)).size;
  const single = guest.filter((g) => g.worker >= 0 && g.msPerGib > 0 && g.time && g.time.getTime() < start && g.time.getTime() >= start - windowMs).map((g) => g.msPerGib);
  return workers > 0 ? quantile(single, 0.5) / workers : NaN;
}

/** Longest stretch a sample is taken to stand for (a guest that stops reporting is not extrapolated further). */
const MAX_HOLD_MS = 2000;

/**
 * Guest harm over [from, to]: each combined sample stands for the interval since the previous one
 * (it reports the work of that window), at most MAX_HOLD_MS.
 * - `extraMsPerGibSec`: ∫ max(0, m(t) − B) dt, in (ms/GiB)·s — the brief's "extra ms/GiB
 *   integrated over the migration".
 * - `guestSecondsLost`: ∫ max(0, 1 − B/m(t)) dt, in s — the same loss in wall-clock seconds of
 *   guest work (half speed for 10 s = 5 s lost), comparable across workloads.
 * - `meanDuring`: time-weighted mean ms/GiB over the covered part of the window.
 * NaN figures when B is unknown or no sample falls in the window.
 */
export function guestHarm(
  series: readonly { t: number; v: number }[],
  baseline: number,
  from: number,
  to: number,
): { extraMsPerGibSec: number; guestSecondsLost: number; meanDuring: number; coveredSec: number } {
  let extra = 0;
  let lost = 0;
  let weighted = 0;
  let covered = 0;
  let prev: number | undefined;
  for (const p of series) {
    const begin = Math.max(prev ?? p.t - Math.min(MAX_HOLD_MS, 100), p.t - MAX_HOLD_MS, from);
    const end = Math.min(p.t, to);
    prev = p.t;
    if (end <= begin) continue;
    const dt = (end - begin) / 1000;
    covered += dt;
    weighted += p.v * dt;
    if (Number.isFinite(baseline) && baseline > 0) {
      extra += Math.max(0, p.v - baseline) * dt;
      lost += Math.max(0, 1 - baseline / p.v) * dt;
    }
  }
  const known = Number.isFinite(baseline) && baseline > 0 && covered > 0;
  return {
    extraMsPerGibSec: known ? extra : NaN,
    guestSecondsLost: known ? lost : NaN,
    meanDuring: covered > 0 ? weighted / covered : NaN,
    coveredSec: covered,
  };
}

/**
 * The timeline's guest samples as clocks for {@link guestTimeLost}: every sample's two times, the
 * pace from the whole-guest samples (per-worker ones only when the timeline has no whole-guest
 * pace: then each worker's pace ÷ workers, as {@link timelineBaseline} does).
 */
export function guestClocks(guest: readonly GuestPerfSample[]): GuestClockSample[] {
  const timed = guest.filter((g) => g.time);
  const combined = timed.some((g) => g.worker === COMBINED && g.msPerGib > 0);
  const workers = Math.max(1, new Set(timed.filter((g) => g.worker >= 0).map((g) => g.worker)).size);
  return timed.map((g) => {
    const pace = g.msPerGib > 0 ? (combined ? (g.worker === COMBINED ? g.msPerGib : 0) : g.msPerGib / workers) : 0;
    return { hostMs: g.time!.getTime(), guestMonoMs: Number(g.guestMonoMs), msPerGib: pace };
  });
}

/** Highest integrity-error count any guest sample of the timeline reported. */
export function guestIntegrityErrors(guest: readonly GuestPerfSample[]): number {
  return guest.reduce((m, g) => Math.max(m, Number(g.integrityErrors)), 0);
}

// ---------------------------------------------------------------------------------------------
// Host CPU

/**
 * CPU seconds of both QEMU processes as (epoch ms, source, destination), from the timeline's host
 * CPU samples, else from the progress samples (which carry the same counters).
 */
export function hostCpuPoints(t: GetRunTimelineResponse): { t: number; src: number; dst: number }[] {
  const fromHost = t.hostCpu.filter((h) => h.time).map((h) => ({ t: h.time!.getTime(), src: h.sourceCpuSeconds, dst: h.destinationCpuSeconds }));
  if (fromHost.length > 0) return fromHost.sort((a, b) => a.t - b.t);
  return t.progress.filter((p) => p.time).map((p) => ({ t: p.time!.getTime(), src: p.sourceCpuSeconds, dst: p.destinationCpuSeconds }));
}

/** Per-interval CPU use in cores (CPU seconds per second) of source, destination and both. */
export function hostCpuRates(points: readonly { t: number; src: number; dst: number }[], start: number): { src: Point[]; dst: Point[]; total: Point[] } {
  const src: Point[] = [];
  const dst: Point[] = [];
  const total: Point[] = [];
  for (let i = 1; i < points.length; i++) {
    const a = points[i - 1]!;
    const b = points[i]!;
    const dt = (b.t - a.t) / 1000;
    if (dt <= 0) continue;
    const x = (b.t - start) / 1000;
    // Counters restart when the destination QEMU appears; a negative step is not a rate.
    const s = Math.max(0, (b.src - a.src) / dt);
    const d = Math.max(0, (b.dst - a.dst) / dt);
    src.push({ x, y: s });
    dst.push({ x, y: d });
    total.push({ x, y: s + d });
  }
  return { src, dst, total };
}

// ---------------------------------------------------------------------------------------------
// Series for the plots

/** Keeps at most `max` points: per time bucket, the point with the largest value (spikes are the story). */
export function downsample(points: readonly Point[], max = 600): Point[] {
  if (points.length <= max) return [...points];
  const x0 = points[0]!.x;
  const span = points[points.length - 1]!.x - x0 || 1;
  const buckets = new Map<number, Point>();
  for (const p of points) {
    const k = Math.min(max - 1, Math.floor(((p.x - x0) / span) * max));
    const cur = buckets.get(k);
    if (!cur || p.y > cur.y) buckets.set(k, p);
  }
  return [...buckets.entries()].sort((a, b) => a[0] - b[0]).map(([, p]) => p);
}

const round = (v: number, digits = 3): number => Math.round(v * 10 ** digits) / 10 ** digits;
const pt = (x: number, y: number): Point => ({ x: round(x), y: round(y, 2) });

/** A vertical marker: a state change or a policy action. */
export interface Marker {
  readonly x: number;
  readonly label: string;
  readonly kind: 'state' | 'action';
}

/** Everything the plots of one run need, in seconds since the migration started. */
export interface RunSeries {
  readonly remainingMiB: Point[];
  readonly dirtyMiBps: Point[];
  readonly throughputMiBps: Point[];
  readonly throttlePct: Point[];
  /** Per worker (key = worker index) and combined (key -1). */
  readonly guestMsPerGib: Record<string, Point[]>;
  readonly cpuSource: Point[];
  readonly cpuDestination: Point[];
  readonly cpuTotal: Point[];
  readonly markers: Marker[];
  /** Baseline ms/GiB (combined), NaN when unknown. */
  readonly baseline: number;
}

const dirtyBps = (p: ProgressSample): number => Number(p.dirtyPagesRate) * (p.pageSize || 4096);
const stateName = (s: MigrationState): string => (MigrationState[s] ?? String(s)).replace('MIGRATION_STATE_', '').toLowerCase();

/** The series of one run for the report's plots. */
export function runSeries(t: GetRunTimelineResponse, opts: { maxPoints?: number; baselineWindowMs?: number } = {}): RunSeries {
  const { start } = migrationWindow(t);
  const max = opts.maxPoints ?? 600;
  const x = (time: Date | undefined, elapsedMs?: number): number => (time ? (time.getTime() - start) / 1000 : (elapsedMs ?? 0) / 1000);
  const progress = t.progress;
  const ds = (pts: Point[]): Point[] => downsample(pts, max);
  const guest: Record<string, Point[]> = {};
  for (const g of t.guest) {
    if (!g.time || !(g.msPerGib > 0)) continue;
    (guest[String(g.worker)] ??= []).push(pt(x(g.time), g.msPerGib));
  }
  for (const k of Object.keys(guest)) guest[k] = ds(guest[k]!.sort((a, b) => a.x - b.x));
  const cpu = hostCpuRates(hostCpuPoints(t), start);
  const markers: Marker[] = [];
  for (const c of t.run?.transitions ?? []) {
    if (!c.time || c.from === c.to) continue;
    const to = c.to;
    // The states that change what the plots show; the rest would only clutter them.
    if (to === MigrationState.MIGRATION_STATE_POSTCOPY || to === MigrationState.MIGRATION_STATE_SWITCHOVER || to === MigrationState.MIGRATION_STATE_POSTCOPY_PAUSED || to >= MigrationState.MIGRATION_STATE_SUCCEEDED) {
      markers.push({ x: round(x(c.time)), label: stateName(to), kind: 'state' });
    }
  }
  for (const a of t.run?.actions ?? []) markers.push({ x: round(a.time ? x(a.time) : Number(a.elapsedMs) / 1000), label: actionLabel(a.kind, Number(a.value)), kind: 'action' });
  return {
    remainingMiB: ds(progress.map((p) => pt(x(p.time, Number(p.elapsedMs)), Number(p.remainingBytes) / MiB))),
    dirtyMiBps: ds(progress.map((p) => pt(x(p.time, Number(p.elapsedMs)), dirtyBps(p) / MiB))),
    throughputMiBps: ds(progress.map((p) => pt(x(p.time, Number(p.elapsedMs)), (p.throughputMbps * 1e6) / 8 / MiB))),
    throttlePct: ds(progress.map((p) => pt(x(p.time, Number(p.elapsedMs)), p.throttlePct))),
    guestMsPerGib: guest,
    cpuSource: ds(cpu.src.map((p) => pt(p.x, p.y))),
    cpuDestination: ds(cpu.dst.map((p) => pt(p.x, p.y))),
    cpuTotal: ds(cpu.total.map((p) => pt(p.x, p.y))),
    markers: markers.sort((a, b) => a.x - b.x),
    baseline: timelineBaseline(t.guest, start, opts.baselineWindowMs),
  };
}

/** "downtime 500 ms", "post-copy", "throttle on"… for an action marker. */
export function actionLabel(kind: number, value: number): string {
  switch (kind) {
    case 1:
      return `downtime ${value} ms`;
    case 2:
      return `bandwidth ${(value / MiB).toFixed(0)} MiB/s`;
    case 3:
      return 'auto-converge on';
    case 4:
      return 'post-copy';
    case 5:
      return 'pause guest';
    case 6:
      return 'abort';
    case 7:
      return 'recover';
    default:
      return `action ${kind}`;
  }
}

/** A policy's action as the report shows it: the step, the QEMU pass it was taken in, and what its reason cites. */
export interface RunDecision {
  /** "post-copy", "downtime 700 ms"… */
  readonly step: string;
  /** QEMU's pass (dirty-sync count) of the last progress sample at or before it; 0 when none. */
  readonly pass: number;
  readonly elapsedMs: number;
  readonly actor: string;
  /** Earlier runs of the VM its cost prior came from ("prior from N earlier runs"); 0 when not cited. */
  readonly priorRuns: number;
  /** Earlier runs whose working set it took ("the working set this VM's earlier runs found"); 0 when not cited. */
  readonly workingSetRuns: number;
  /** The cost model it ranked the steps by, as cited ("h 0.74, c 1.07 s, s 0.74"); '' when not cited. */
  readonly model: string;
}

/** The policy's actions of a run (not users'), oldest first, with the pass each was taken in (adaptive's reasons: measured.ts, adaptive.ts). */
export function runDecisions(t: GetRunTimelineResponse): RunDecision[] {
  const progress = [...t.progress].sort((a, b) => Number(a.elapsedMs) - Number(b.elapsedMs));
  return (t.run?.actions ?? [])
    .filter((a) => !a.actor.startsWith('user:'))
    .sort((a, b) => Number(a.elapsedMs) - Number(b.elapsedMs))
    .map((a) => {
      const at = Number(a.elapsedMs);
      let pass = 0;
      for (const p of progress) {
        if (Number(p.elapsedMs) > at) break;
        pass = p.pass;
      }
      const prior = /prior from (\d+) earlier runs/.exec(a.reason);
      const ws = /working set this VM's earlier runs found: [^(]*\((\d+) runs?\)/.exec(a.reason);
      const h = /; h ([\d.]+)/.exec(a.reason);
      const cs = / c ([^,]+), s ([\d.]+)/.exec(a.reason);
      return {
        step: actionLabel(a.kind, Number(a.value)),
        pass,
        elapsedMs: at,
        actor: a.actor,
        priorRuns: prior ? Number(prior[1]) : 0,
        workingSetRuns: ws ? Number(ws[1]) : 0,
        model: h && cs ? `h ${h[1]}, c ${cs[1]}, s ${cs[2]}` : '',
      };
    });
}

// ---------------------------------------------------------------------------------------------
// Per run and per strategy

/** The states in which QEMU streams the migration (or has streamed it): the first one entered ends the set-up. */
const STREAMING: ReadonlySet<MigrationState> = new Set([
  MigrationState.MIGRATION_STATE_SETUP,
  MigrationState.MIGRATION_STATE_PRECOPY,
  MigrationState.MIGRATION_STATE_SWITCHOVER,
  MigrationState.MIGRATION_STATE_POSTCOPY,
  MigrationState.MIGRATION_STATE_VERIFYING,
]);

/**
 * The run's start delay (ms): from its dispatch (the coordinator's transition to PREPARING, else
 * the run's start) to the first streaming state recorded (SETUP, or PRECOPY where the node's first
 * report was already that). QEMU's total-time counts from `migrate`, so whatever a strategy does
 * before it — an adaptive run's dirty-rate estimate took 1.1 s there until issue 14's start-delay
 * fix — is in no other figure; the earliest transition counts, as the coordinator can record a
 * node's SETUP after the PRECOPY that QEMU's event brought. A run with LOCAL disks includes its
 * storage phase (the memory stream starts after it). NaN for a run that never streamed.
 */
export function startDelayMs(t: GetRunTimelineResponse): number {
  const transitions = t.run?.transitions ?? [];
  const dispatched = ms(transitions.find((c) => c.to === MigrationState.MIGRATION_STATE_PREPARING)?.time) ?? ms(t.run?.startedAt);
  const streamed = transitions.filter((c) => STREAMING.has(c.to) && c.time).map((c) => c.time!.getTime());
  if (dispatched === undefined || streamed.length === 0) return NaN;
  return Math.max(0, Math.min(...streamed) - dispatched);
}

/** How the lab saw a run end; 'timed-out' = the lab's own time limit cancelled it. */
export type LabOutcome = 'succeeded' | 'failed' | 'cancelled' | 'timed-out';

/** One run's figures. Times in ms, CPU in s; NaN where a figure is unknown. */
export interface RunFigures {
  readonly runId: string;
  readonly state: MigrationState;
  readonly succeeded: boolean;
  readonly totalTimeMs: number;
  /** Dispatch to the first streaming state (ms), see {@link startDelayMs}; NaN when it never streamed. */
  readonly startDelayMs: number;
  readonly downtimeMs: number;
  readonly passes: number;
  readonly maxThrottlePct: number;
  readonly transferredBytes: number;
  readonly postcopy: boolean;
  readonly hostCpuSeconds: number;
  readonly integrityErrors: number;
  readonly baselineMsPerGib: number;
  readonly duringMsPerGib: number;
  readonly extraMsPerGibSec: number;
  /** Guest time lost (s): stopped + slowed, from the guest's clock (services/shared/guest/harm.ts). */
  readonly guestSecondsLost: number;
  /** Of it, the guest's clock standing still (switch-over, forced pauses, a paused destination). */
  readonly guestStoppedSec: number;
  /** Of it, running but slowed or stalled (throttling, post-copy faults). */
  readonly guestSlowedSec: number;
  /** The longest single pause (ms). */
  readonly longestPauseMs: number;
  /** The destination's postcopy-blocktime (ms, all vCPUs blocked at once); 0 without post-copy. */
  readonly postcopyBlocktimeMs: number;
  /** The old estimate: each sample held ≤ 2 s, pauses not counted in full (for comparison). */
  readonly guestSecondsLostSampled: number;
  readonly actions: number;
  readonly error: string;
  /** The run copied LOCAL disks (a storage phase). */
  readonly disk: boolean;
  /** Bytes the storage mirrors copied (QEMU's job offsets; zeroed ranges count without crossing the link); NaN without a disk. */
  readonly diskBytes: number;
  /** Allocated bytes of the LOCAL disks when the copy started; NaN without a disk. */
  readonly diskAllocatedBytes: number;
  /** The storage phase: first mirror started → every mirror READY (ms); NaN without a disk or when it never ended. */
  readonly storageMs: number;
  /** migd's run from start to end (storage phase, memory migration, handover), ms; NaN while unfinished. */
  readonly runTimeMs: number;
  /** The network blackout measured from outside the guest (ms); NaN when nobody probed it. */
  readonly blackoutMs: number;
  readonly probesLost: number;
  readonly probesSent: number;
  /** What the nodes checked on the destination (workload: memory and disk verified there; running; vCPUs; I/O errors; disk digests): passed / made. */
  readonly checksPassed: number;
  readonly checks: number;
  /** Bytes the source put on its migration link during the run (memory and disk streams), when the lab counted them; NaN otherwise. */
  readonly wireBytes: number;
  /** Of them, the disk's: wire bytes − QEMU's memory-stream bytes; NaN when not counted. */
  readonly diskWireBytes: number;
}

/** The figures of one run from its timeline. */
export function runFigures(t: GetRunTimelineResponse, opts: { baselineWindowMs?: number; wireBytes?: number } = {}): RunFigures {
  const run = t.run;
  const stats = run?.stats;
  const { start, end } = migrationWindow(t);
  const state = run?.state ?? MigrationState.MIGRATION_STATE_UNSPECIFIED;
  const succeeded = state === MigrationState.MIGRATION_STATE_SUCCEEDED;
  const series = combinedGuestSeries(t.guest);
  const baseline = timelineBaseline(t.guest, start, opts.baselineWindowMs, series);
  const harm = guestHarm(series, baseline, start, end ?? start);
  const lost = guestTimeLost(guestClocks(t.guest), baseline, start, end ?? start);
  const cpu = hostCpuPoints(t);
  const lastCpu = cpu[cpu.length - 1];
  const statsCpu = stats ? stats.sourceCpuSeconds + stats.destinationCpuSeconds : 0;
  const lastProgress = t.progress[t.progress.length - 1];
  const postcopy =
    (run?.transitions ?? []).some((c) => c.to === MigrationState.MIGRATION_STATE_POSTCOPY) || t.progress.some((p) => p.state === MigrationState.MIGRATION_STATE_POSTCOPY || p.qemuStatus.startsWith('postcopy'));
  return {
    runId: run?.id ?? '',
    state,
    succeeded,
    totalTimeMs: stats?.totalTimeMs ? Number(stats.totalTimeMs) : end !== undefined ? end - start : NaN,
    startDelayMs: startDelayMs(t),
    downtimeMs: succeeded && stats ? Number(stats.downtimeMs) : NaN,
    passes: stats?.passes ?? Math.max(0, (lastProgress?.pass ?? 1) - 1),
    maxThrottlePct: Math.max(stats?.maxThrottlePct ?? 0, ...t.progress.map((p) => p.throttlePct)),
    transferredBytes: Number(stats?.transferredBytes || lastProgress?.transferredBytes || 0),
    postcopy,
    hostCpuSeconds: statsCpu > 0 ? statsCpu : lastCpu ? lastCpu.src + lastCpu.dst : NaN,
    integrityErrors: Math.max(Number(stats?.integrityErrors ?? 0), guestIntegrityErrors(t.guest)),
    baselineMsPerGib: baseline,
    duringMsPerGib: harm.meanDuring,
    extraMsPerGibSec: harm.extraMsPerGibSec,
    guestSecondsLost: lost.lostMs / 1000,
    guestStoppedSec: lost.stoppedMs / 1000,
    guestSlowedSec: lost.slowedMs / 1000,
    longestPauseMs: lost.longestStopMs,
    postcopyBlocktimeMs: stats?.postcopyBlocktimeMs ?? 0,
    guestSecondsLostSampled: harm.guestSecondsLost,
    actions: run?.actions.length ?? 0,
    error: run?.error?.message ?? '',
    ...storageFigures(t, start, end, opts.wireBytes),
  };
}

/** The disk and network part of {@link runFigures}. */
function storageFigures(
  t: GetRunTimelineResponse,
  start: number,
  end: number | undefined,
  wireBytes: number | undefined,
): Pick<RunFigures, 'disk' | 'diskBytes' | 'diskAllocatedBytes' | 'storageMs' | 'runTimeMs' | 'blackoutMs' | 'probesLost' | 'probesSent' | 'checksPassed' | 'checks' | 'wireBytes' | 'diskWireBytes'> {
  const stats = t.run?.stats;
  const maxCopied = t.progress.reduce((m, p) => Math.max(m, Number(p.diskTransferredBytes ?? 0)), 0);
  const disk = (stats?.disksCopied ?? 0) > 0 || Number(stats?.diskAllocatedBytes ?? 0) > 0 || t.progress.some((p) => p.storagePhase === true || p.qemuStatus === 'storage-copy' || Number(p.diskTotalBytes ?? 0) > 0);
  const checks = stats?.checks ?? [];
  const wire = wireBytes ?? NaN;
  const b = t.run?.networkBlackout;
  const finished = t.run?.finishedAt !== undefined && end !== undefined;
  return {
    disk,
    diskBytes: disk && (stats?.diskTransferredBytes !== undefined || maxCopied > 0) ? Number(stats?.diskTransferredBytes ?? maxCopied) : NaN,
    diskAllocatedBytes: disk && stats?.diskAllocatedBytes !== undefined ? Number(stats.diskAllocatedBytes) : NaN,
    storageMs: disk && stats?.storageMs ? Number(stats.storageMs) : NaN,
    runTimeMs: finished ? end - start : NaN,
    blackoutMs: b ? b.blackoutMs : NaN,
    probesLost: b ? b.probesLost : NaN,
    probesSent: b ? b.probesSent : NaN,
    checksPassed: checks.filter((c) => c.passed).length,
    checks: checks.length,
    wireBytes: wire,
    diskWireBytes: disk && Number.isFinite(wire) ? Math.max(0, wire - Number(stats?.transferredBytes ?? 0)) : NaN,
  };
}

/** One strategy's summary (the report's table row; the proto PolicySummary plus harm). */
export interface StrategySummary {
  readonly group: string;
  readonly label: string;
  readonly runs: number;
  readonly succeeded: number;
  readonly completionRate: number;
  readonly totalTimeMsP50: number;
  /** Start delay p50 over every run that streamed (a failed run's set-up took its time too). */
  readonly startDelayMsP50: number;
  readonly downtimeMsP50: number;
  readonly downtimeMsP99: number;
  readonly extraMsPerGibSecP50: number;
  readonly guestSecondsLostP50: number;
  readonly guestSecondsLostMin: number;
  readonly guestSecondsLostMax: number;
  readonly totalTimeMsMin: number;
  readonly totalTimeMsMax: number;
  readonly guestStoppedSecP50: number;
  readonly longestPauseMsP50: number;
  readonly postcopyBlocktimeMsP50: number;
  readonly baselineMsPerGib: number;
  readonly duringMsPerGib: number;
  readonly hostCpuSecondsMean: number;
  readonly integrityErrors: number;
  /** Some run of it copied a disk (the report then shows the storage figures). */
  readonly disk: boolean;
  readonly diskBytesP50: number;
  /** Disk bytes on the wire (migration link bytes − memory stream), p50; NaN when not counted. */
  readonly diskWireBytesP50: number;
  readonly diskAllocatedBytesP50: number;
  readonly storageMsP50: number;
  /** Runs with a storage phase that ended (every mirror READY). */
  readonly storageDone: number;
  readonly runTimeMsP50: number;
  readonly runTimeMsMin: number;
  readonly runTimeMsMax: number;
  readonly blackoutMsP50: number;
  readonly blackoutMsMax: number;
  readonly probesLostP50: number;
  /** Destination checks failed / made over all runs. */
  readonly checksFailed: number;
  readonly checks: number;
}

/**
 * Summaries per (group, label), in the order the groups and labels first appear. Times and
 * downtimes are of succeeded runs only (as ComparePolicies does); harm, CPU and integrity count
 * every run (a failed migration harms the guest too).
 */
export function summarize(runs: readonly { group: string; label: string; figures: RunFigures }[]): StrategySummary[] {
  const order: string[] = [];
  const by = new Map<string, { group: string; label: string; f: RunFigures[] }>();
  for (const r of runs) {
    const key = `${r.group}\u0000${r.label}`;
    if (!by.has(key)) {
      by.set(key, { group: r.group, label: r.label, f: [] });
      order.push(key);
    }
    by.get(key)!.f.push(r.figures);
  }
  return order.map((k) => {
    const { group, label, f } = by.get(k)!;
    const ok = f.filter((x) => x.succeeded);
    return {
      group,
      label,
      runs: f.length,
      succeeded: ok.length,
      completionRate: f.length === 0 ? 0 : ok.length / f.length,
      totalTimeMsP50: quantile(ok.map((x) => x.totalTimeMs), 0.5),
      startDelayMsP50: quantile(f.map((x) => x.startDelayMs), 0.5),
      downtimeMsP50: quantile(ok.map((x) => x.downtimeMs), 0.5),
      downtimeMsP99: quantile(ok.map((x) => x.downtimeMs), 0.99),
      extraMsPerGibSecP50: quantile(f.map((x) => x.extraMsPerGibSec), 0.5),
      guestSecondsLostP50: quantile(f.map((x) => x.guestSecondsLost), 0.5),
      guestSecondsLostMin: quantile(f.map((x) => x.guestSecondsLost), 0),
      guestSecondsLostMax: quantile(f.map((x) => x.guestSecondsLost), 1),
      totalTimeMsMin: quantile(ok.map((x) => x.totalTimeMs), 0),
      totalTimeMsMax: quantile(ok.map((x) => x.totalTimeMs), 1),
      guestStoppedSecP50: quantile(f.map((x) => x.guestStoppedSec), 0.5),
      longestPauseMsP50: quantile(f.map((x) => x.longestPauseMs), 0.5),
      postcopyBlocktimeMsP50: quantile(ok.filter((x) => x.postcopy).map((x) => x.postcopyBlocktimeMs), 0.5),
      baselineMsPerGib: mean(f.map((x) => x.baselineMsPerGib)),
      duringMsPerGib: mean(f.map((x) => x.duringMsPerGib)),
      hostCpuSecondsMean: mean(f.map((x) => x.hostCpuSeconds)),
      integrityErrors: f.reduce((a, x) => a + x.integrityErrors, 0),
      disk: f.some((x) => x.disk),
      diskBytesP50: quantile(ok.map((x) => x.diskBytes), 0.5),
      diskWireBytesP50: quantile(ok.map((x) => x.diskWireBytes), 0.5),
      diskAllocatedBytesP50: quantile(f.map((x) => x.diskAllocatedBytes), 0.5),
      storageMsP50: quantile(f.map((x) => x.storageMs), 0.5),
      storageDone: f.filter((x) => Number.isFinite(x.storageMs)).length,
      runTimeMsP50: quantile(ok.map((x) => x.runTimeMs), 0.5),
      runTimeMsMin: quantile(ok.map((x) => x.runTimeMs), 0),
      runTimeMsMax: quantile(ok.map((x) => x.runTimeMs), 1),
      blackoutMsP50: quantile(ok.map((x) => x.blackoutMs), 0.5),
      blackoutMsMax: quantile(ok.map((x) => x.blackoutMs), 1),
      probesLostP50: quantile(ok.map((x) => x.probesLost), 0.5),
      checksFailed: f.reduce((a, x) => a + (x.checks - x.checksPassed), 0),
      checks: f.reduce((a, x) => a + x.checks, 0),
    };
  });
}

/**
 * Each strategy's place against the Pareto front of total time p50 and guest time lost p50 among
 * the strategies of one group that completed all their runs, with the 10 % slack: on the
 * front when no other is better on both; within 10 % when every one better on both is so by at
 * most 10 % on at least one figure; otherwise off, naming who beats it. Strategies with a failed
 * or timed-out repetition are incomplete; NaN figures make a strategy unknown.
 */
export function paretoFront(summaries: readonly StrategySummary[], slack = 0.1): Map<string, string> {
  const out = new Map<string, string>();
  const complete = summaries.filter((s) => s.runs > 0 && s.succeeded === s.runs);
  for (const s of summaries) {
    if (!complete.includes(s)) {
      out.set(s.label, 'incomplete');
      continue;
    }
    const t = s.totalTimeMsP50;
    const g = s.guestSecondsLostP50;
    if (!Number.isFinite(t) || !Number.isFinite(g)) {
      out.set(s.label, 'unknown');
      continue;
    }
    const better = complete.filter((o) => o !== s && o.totalTimeMsP50 < t && o.guestSecondsLostP50 < g);
    if (better.length === 0) {
      out.set(s.label, 'front');
      continue;
    }
    // Beaten by more than the slack on both figures (guest time lost compared with a 0.1 s floor).
    const clearly = better.filter((o) => o.totalTimeMsP50 < t / (1 + slack) && Math.max(0.1, o.guestSecondsLostP50) < Math.max(0.1, g) / (1 + slack));
    out.set(s.label, clearly.length === 0 ? 'within 10 %' : `off (behind ${clearly.map((o) => o.label).join(', ')})`);
  }
  return out;
}

/** Issue 14's criterion (§5) read off one comparison's summaries; see policyCriterion. */
export interface PolicyCriterion {
  /** Every run of the adaptive strategies completed. */
  readonly adaptiveCompleted: { readonly succeeded: number; readonly runs: number };
  /** Per workload (group) with an adaptive strategy: its Pareto verdict and whether it passes. */
  readonly workloads: readonly { readonly group: string; readonly label: string; readonly verdict: string; readonly met: boolean }[];
  /** Per fixed strategy: the workloads it is off the front (or incomplete) on. */
  readonly fixed: readonly { readonly label: string; readonly offOn: readonly string[]; readonly met: boolean }[];
  readonly met: boolean;
}

/**
 * Issue 14's criterion over one comparison: the adaptive strategies complete every run; on every
 * workload each is on the Pareto front of total time × guest time lost or within 10 % of it; and
 * every fixed strategy is off the front (or incomplete) on at least one workload it ran. `kindOf`
 * names a strategy's policy ("adaptive", "fixed", a preset's name); presets are neither judged
 * nor required off. Undefined when the comparison has no adaptive strategy.
 */
export function policyCriterion(summaries: readonly StrategySummary[], kindOf: (group: string, label: string) => string, slack = 0.1): PolicyCriterion | undefined {
  const adaptive = summaries.filter((s) => kindOf(s.group, s.label) === 'adaptive');
  if (adaptive.length === 0) return undefined;
  const groups = [...new Set(summaries.map((s) => s.group))];
  const fronts = new Map(groups.map((g) => [g, paretoFront(summaries.filter((s) => s.group === g), slack)]));
  const workloads = adaptive.map((s) => {
    const verdict = fronts.get(s.group)?.get(s.label) ?? 'unknown';
    return { group: s.group, label: s.label, verdict, met: verdict === 'front' || verdict === 'within 10 %' };
  });
  const fixedLabels = [...new Set(summaries.filter((s) => kindOf(s.group, s.label) === 'fixed').map((s) => s.label))];
  const fixed = fixedLabels.map((label) => {
    const offOn = summaries.filter((s) => s.label === label && kindOf(s.group, s.label) === 'fixed').filter((s) => /^(off|incomplete)/.test(fronts.get(s.group)?.get(label) ?? '')).map((s) => s.group);
    return { label, offOn, met: offOn.length > 0 };
  });
  const adaptiveCompleted = { succeeded: adaptive.reduce((n, s) => n + s.succeeded, 0), runs: adaptive.reduce((n, s) => n + s.runs, 0) };
  return { adaptiveCompleted, workloads, fixed, met: adaptiveCompleted.succeeded === adaptiveCompleted.runs && workloads.every((w) => w.met) && fixed.every((f) => f.met) };
}

/**
 * How the drain used its slots: from the first SubmitPlan (`from`) to the last completion (`to`),
 * the simulated migrations in flight against the `concurrency` the bound assumes. Lost slot time
 * (concurrency × span − time migrations ran) is split at the moment the slots were first all in
 * use and at the last start (the tail, where fewer migrations are left than slots), and the
 * steady part is also given per migration started in it: the gap a slot sat free between two.
 */
export function slotUse(intervals: readonly (readonly [number, number])[], from: number, to: number, concurrency: number): { fullAtMs: number; lastStartMs: number; lost: { ramp: number; steady: number; tail: number }; steadyStarts: number; use: number } {
  const ev: [number, number][] = [];
  for (const [a, b] of intervals) {
    ev.push([a, 1]);
    ev.push([b < 0 ? to : b, -1]);
  }
  ev.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  let n = 0;
  let fullAt = NaN;
  for (const [t, d] of ev) {
    n += d;
    if (n >= Math.ceil(concurrency * 0.95) && Number.isNaN(fullAt)) fullAt = t;
  }
  const lastStart = intervals.reduce((m, [a]) => Math.max(m, a), from);
  const full = Number.isNaN(fullAt) ? lastStart : fullAt;
  const lostIn = (a: number, b: number): number => {
    if (b <= a) return 0;
    let busy = 0;
    for (const [s, e0] of intervals) {
      const e = e0 < 0 ? to : e0;
      busy += Math.max(0, Math.min(e, b) - Math.max(s, a));
    }
    return concurrency * (b - a) - busy;
  };
  const busyAll = intervals.reduce((acc, [s, e]) => acc + Math.max(0, Math.min(e < 0 ? to : e, to) - Math.max(s, from)), 0);
  return {
    fullAtMs: full - from,
    lastStartMs: lastStart - from,
    lost: { ramp: lostIn(from, full), steady: lostIn(full, lastStart), tail: lostIn(lastStart, to) },
    steadyStarts: intervals.filter(([a]) => a > full && a <= lastStart).length,
    use: busyAll / (concurrency * Math.max(1, to - from)),
  };
}
