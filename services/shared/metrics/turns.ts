/**
 * Where a process's event loop goes (issue 15 §4): the event-loop delay (perf_hooks
 * monitorEventLoopDelay) and the longest synchronous stretches by cause (a group commit, a
 * dispatch pass, a heartbeat's VM report, SubmitPlan's phases). The coordinator serves everything
 * on one event loop; a request waits for whatever turn is running when it arrives, so "why is
 * SubmitPlan slow" is "which turns are long".
 *
 * Off by default and then nearly free (one boolean test per recording site); the coordinator turns
 * it on with its metrics endpoint (--metrics-listen) and serves the figures there
 * (`migd_event_loop_delay_milliseconds{stat}`, `migd_turn_milliseconds{cause,stat}`).
 */
import { createHistogram, monitorEventLoopDelay, performance, PerformanceObserver, type EventLoopUtilization, type IntervalHistogram, type RecordableHistogram } from 'node:perf_hooks';
import { Gauge, type Registry } from 'prom-client';

/** One cause's figures, durations in ms. */
export interface TurnFigures {
  readonly cause: string;
  readonly count: number;
  readonly totalMs: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
  /** The size of the largest and the mean turn (statements, runs, VMs: the cause's unit). */
  readonly sizeMax: number;
  readonly sizeMean: number;
}

/** Event-loop delay figures in ms. */
export interface LoopDelayFigures {
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
  readonly meanMs: number;
}

/** One request's time in its handler and its phases (ms), e.g. a SubmitPlan's. */
export interface RequestTiming {
  /** When the handler began, ms since the epoch (performance.timeOrigin based, sub-ms). */
  readonly startedAt?: number;
  readonly handlerMs: number;
  readonly phasesMs: Readonly<Record<string, number>>;
  readonly size: number;
}

/** The event loop's busy and idle time since recording began (perf_hooks eventLoopUtilization), ms. */
export interface LoopUseFigures {
  readonly activeMs: number;
  readonly idleMs: number;
}

/** What `/debug/turns` serves. */
export interface TurnReport {
  readonly loopDelay: LoopDelayFigures | null;
  /** Absent from coordinators built before it. */
  readonly loopUse?: LoopUseFigures | null;
  readonly causes: readonly TurnFigures[];
  readonly requests: Readonly<Record<string, RequestTiming>>;
}

/** Requests whose phases are kept (the latest). */
export const KEPT_REQUESTS = 1000;

interface Cause {
  readonly h: RecordableHistogram;
  totalUs: number;
  sizeTotal: number;
  sizeMax: number;
}

/** Durations are recorded in µs (the histograms hold integers). */
const US = 1000;

export class TurnProfiler {
  private on = false;
  private loop: IntervalHistogram | undefined;
  private gc: PerformanceObserver | undefined;
  /** The loop's utilization when recording began (see {@link loopUse}). */
  private elu: EventLoopUtilization | undefined;
  private readonly causes = new Map<string, Cause>();
  /** The latest requests' phases by request key (see {@link keep}), oldest first. */
  private readonly requests = new Map<string, RequestTiming>();

  /** Whether recording is on: recording sites test it before reading the clock. */
  get enabled(): boolean {
    return this.on;
  }

  /** Starts recording (idempotent); `resolutionMs` is the event-loop delay sampling period. */
  enable(resolutionMs = 10): void {
    if (this.on) return;
    this.on = true;
    this.loop = monitorEventLoopDelay({ resolution: resolutionMs });
    this.loop.enable();
    this.elu = performance.eventLoopUtilization();
    // Garbage collection pauses are turns of their own.
    this.gc = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) this.recordMs('gc', e.duration);
    });
    this.gc.observe({ entryTypes: ['gc'] });
  }

  /** Stops recording and forgets everything. */
  disable(): void {
    this.on = false;
    this.loop?.disable();
    this.loop = undefined;
    this.gc?.disconnect();
    this.gc = undefined;
    this.elu = undefined;
    this.causes.clear();
    this.requests.clear();
  }

  /** The clock the recording sites use (ms, sub-ms precision). */
  now(): number {
    return performance.now();
  }

  /** Records one turn of `cause` that started at `startMs` (from {@link now}); `size` in the cause's unit. */
  record(cause: string, startMs: number, size = 1): void {
    if (!this.on) return;
    this.recordMs(cause, performance.now() - startMs, size);
  }

  /** Records a duration measured elsewhere. */
  recordMs(cause: string, ms: number, size = 1): void {
    if (!this.on) return;
    let c = this.causes.get(cause);
    if (!c) this.causes.set(cause, (c = { h: createHistogram(), totalUs: 0, sizeTotal: 0, sizeMax: 0 }));
    const us = Math.max(1, Math.round(ms * US));
    c.h.record(us);
    c.totalUs += us;
    c.sizeTotal += size;
    if (size > c.sizeMax) c.sizeMax = size;
  }

  /** Keeps one request's phases under `key` (the latest {@link KEPT_REQUESTS}). */
  keep(key: string, timing: RequestTiming): void {
    if (!this.on) return;
    this.requests.delete(key);
    this.requests.set(key, timing);
    if (this.requests.size > KEPT_REQUESTS) this.requests.delete(this.requests.keys().next().value!);
  }

  /** Everything so far, as `/debug/turns` serves it. */
  report(): TurnReport {
    return { loopDelay: this.loopDelay() ?? null, loopUse: this.loopUse() ?? null, causes: this.causesSnapshot(), requests: Object.fromEntries(this.requests) };
  }

  /** A stopwatch over one request's phases (undefined while off): see {@link Laps}. */
  laps(prefix: string): Laps | undefined {
    return this.on ? new Laps(this, prefix) : undefined;
  }

  /** The figures so far, by cause, the largest total first. */
  causesSnapshot(): TurnFigures[] {
    return [...this.causes.entries()]
      .map(([cause, c]) => ({
        cause,
        count: c.h.count,
        totalMs: c.totalUs / US,
        p50Ms: c.h.percentile(50) / US,
        p99Ms: c.h.percentile(99) / US,
        maxMs: c.h.max / US,
        sizeMax: c.sizeMax,
        sizeMean: c.h.count > 0 ? c.sizeTotal / c.h.count : 0,
      }))
      .sort((a, b) => b.totalMs - a.totalMs);
  }

  /**
   * The event loop's busy (running callbacks) and idle (waiting for I/O) time since recording began
   * (undefined while off): a reader polling it takes differences for a period's utilization.
   */
  loopUse(): LoopUseFigures | undefined {
    if (!this.elu) return undefined;
    const u = performance.eventLoopUtilization(this.elu);
    return { activeMs: u.active, idleMs: u.idle };
  }

  /** Event-loop delay so far (undefined while off). */
  loopDelay(): LoopDelayFigures | undefined {
    const h = this.loop;
    if (!h || h.count === 0) return undefined;
    const ms = 1e6;
    return { p50Ms: h.percentile(50) / ms, p99Ms: h.percentile(99) / ms, maxMs: h.max / ms, meanMs: h.mean / ms };
  }

  /** Serves the figures in `registry` (read at scrape time). */
  register(registry: Registry): void {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    new Gauge({
      name: 'migd_event_loop_delay_milliseconds',
      help: 'Event-loop delay since start (perf_hooks monitorEventLoopDelay), ms; stat p50|p99|max|mean.',
      labelNames: ['stat'] as const,
      registers: [registry],
      collect(this: Gauge<'stat'>) {
        const d = self.loopDelay();
        if (!d) return;
        this.set({ stat: 'p50' }, d.p50Ms);
        this.set({ stat: 'p99' }, d.p99Ms);
        this.set({ stat: 'max' }, d.maxMs);
        this.set({ stat: 'mean' }, d.meanMs);
      },
    });
    new Gauge({
      name: 'migd_turn_milliseconds',
      help: 'Synchronous stretches of the event loop by cause since start; stat count|total|p50|p99|max (ms) and size_max|size_mean (the cause unit).',
      labelNames: ['cause', 'stat'] as const,
      registers: [registry],
      collect(this: Gauge<'cause' | 'stat'>) {
        for (const f of self.causesSnapshot()) {
          this.set({ cause: f.cause, stat: 'count' }, f.count);
          this.set({ cause: f.cause, stat: 'total' }, f.totalMs);
          this.set({ cause: f.cause, stat: 'p50' }, f.p50Ms);
          this.set({ cause: f.cause, stat: 'p99' }, f.p99Ms);
          this.set({ cause: f.cause, stat: 'max' }, f.maxMs);
          this.set({ cause: f.cause, stat: 'size_max' }, f.sizeMax);
          this.set({ cause: f.cause, stat: 'size_mean' }, f.sizeMean);
        }
      },
    });
  }
}

/**
 * One request's phases: each `lap(name)` records the time since the previous lap (or the start) as
 * cause `prefix.name` and keeps it in `ms` (e.g. for one log line per request).
 */
export class Laps {
  private last: number;
  readonly ms: Record<string, number> = {};
  readonly startedAt: number;

  constructor(
    private readonly p: TurnProfiler,
    private readonly prefix: string,
  ) {
    this.last = this.startedAt = p.now();
  }

  lap(name: string, size = 1): void {
    const now = this.p.now();
    const ms = now - this.last;
    this.last = now;
    this.ms[name] = Math.round(((this.ms[name] ?? 0) + ms) * 100) / 100;
    this.p.recordMs(`${this.prefix}.${name}`, ms, size);
  }

  /** The start, ms since the epoch (sub-ms: comparable with another process's on this machine). */
  startedAtEpoch(): number {
    return performance.timeOrigin + this.startedAt;
  }

  /** ms since the start. */
  total(): number {
    return Math.round((this.p.now() - this.startedAt) * 100) / 100;
  }
}

/** The process's profiler (one event loop per process). */
export const turns = new TurnProfiler();
