/**
 * Buffers sample rows and writes them in batches: when `batchSize` rows are waiting, when the
 * oldest has waited `flushIntervalMs`, within `eventDelayMs` when a row carries an event (so
 * published samples are barely delayed, while the events of many runs arriving together still
 * share one transaction instead of one write each), and on `flush()`/`close()`. Writes are
 * serialized. A failed write puts its rows back in front of the buffer and retries later; past
 * `maxBuffered` rows the oldest are dropped (samples are telemetry; state changes never pass
 * through here).
 */
import { FailedPreconditionError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { Event } from '../../shared/gen/migd/v1/events.js';
import type { NewGuestRow, NewHostCpuRow, NewProgressRow } from './schema.js';

/** An event to enqueue in the same transaction as the batch's rows. */
export interface PendingEvent {
  runId: string;
  time: Date;
  payload: NonNullable<Event['payload']>;
}

/** One batch to persist. */
export interface SampleBatch {
  progress: NewProgressRow[];
  guest: NewGuestRow[];
  hostCpu: NewHostCpuRow[];
  /** Events, in the order their samples were appended. */
  events: PendingEvent[];
}

export interface SampleWriterOptions {
  /** Writes one batch in one transaction. */
  persist: (batch: SampleBatch) => Promise<void>;
  batchSize: number;
  flushIntervalMs: number;
  /** Longest wait of a row that carries an event (capped at flushIntervalMs). Default 50. */
  eventDelayMs?: number;
  maxBuffered: number;
  logger: Logger;
}

/** Rows handed out by {@link SampleWriter.take}. */
export interface TakenSamples {
  readonly batch: SampleBatch;
  readonly rows: number;
}

/** Counters of a writer. */
export interface SampleWriterStats {
  written: number;
  dropped: number;
  failedFlushes: number;
}

export class SampleWriter {
  private buf: SampleBatch = emptyBatch();
  private rows = 0;
  private chain: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private eventTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly counters: SampleWriterStats = { written: 0, dropped: 0, failedFlushes: 0 };

  constructor(private readonly opts: SampleWriterOptions) {}

  /** Rows waiting to be written. */
  get size(): number {
    return this.rows;
  }

  stats(): SampleWriterStats {
    return { ...this.counters };
  }

  /** @throws FailedPreconditionError after close. */
  addProgress(row: NewProgressRow, event?: PendingEvent): void {
    this.checkOpen();
    this.buf.progress.push(row);
    this.added(event);
  }

  /** @throws FailedPreconditionError after close. */
  addGuest(row: NewGuestRow, event?: PendingEvent): void {
    this.checkOpen();
    this.buf.guest.push(row);
    this.added(event);
  }

  /** @throws FailedPreconditionError after close. */
  addHostCpu(row: NewHostCpuRow): void {
    this.checkOpen();
    this.buf.hostCpu.push(row);
    this.added(undefined);
  }

  /**
   * Takes everything buffered now, for a caller that writes it in a transaction of its own (a
   * run's end writes the samples before it in its own transaction: one write instead of two
   * in a row). Rows taken by a flush under way are already in the store's write queue, before
   * whatever the caller queues. The caller reports the outcome with {@link written} or
   * {@link restore}. Undefined when nothing is buffered.
   */
  take(): TakenSamples | undefined {
    if (this.rows === 0 && this.buf.events.length === 0) return undefined;
    const taken = { batch: this.buf, rows: this.rows };
    this.buf = emptyBatch();
    this.rows = 0;
    return taken;
  }

  /** The rows of {@link take} were written. */
  written(t: TakenSamples): void {
    this.counters.written += t.rows;
  }

  /** The rows of {@link take} could not be written: back in front of the buffer, written later. */
  restore(t: TakenSamples): void {
    this.counters.failedFlushes++;
    this.requeue(t.batch, t.rows);
    this.retryLater();
  }

  /** Writes everything buffered so far. @throws the write error (rows stay buffered). */
  flush(): Promise<void> {
    const run = this.chain.then(() => this.flushOnce());
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** Stops the timers and writes what is buffered. Idempotent. @throws the write error. */
  async close(): Promise<void> {
    this.closed = true;
    this.clearTimers();
    await this.flush();
  }

  private checkOpen(): void {
    if (this.closed) throw new FailedPreconditionError('history store is closed');
  }

  private added(event: PendingEvent | undefined): void {
    this.rows++;
    if (event !== undefined) this.buf.events.push(event);
    if (this.rows >= this.opts.batchSize) {
      this.scheduleNow();
    } else if (event !== undefined && this.eventTimer === undefined) {
      this.eventTimer = setTimeout(() => {
        this.eventTimer = undefined;
        this.background();
      }, Math.min(this.opts.eventDelayMs ?? 50, this.opts.flushIntervalMs));
      this.eventTimer.unref();
    }
    if (this.timer === undefined && this.immediate === undefined) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.background();
      }, this.opts.flushIntervalMs);
      this.timer.unref();
    }
  }

  private scheduleNow(): void {
    if (this.immediate !== undefined) return;
    this.immediate = setImmediate(() => {
      this.immediate = undefined;
      this.background();
    });
  }

  private background(): void {
    this.flush().catch((err: unknown) => {
      this.opts.logger.warn('writing buffered samples failed; will retry', { err, buffered: this.rows });
      this.retryLater();
    });
  }

  /** A write failed: the next flush after flushIntervalMs (unless one is due already, or closed). */
  private retryLater(): void {
    if (this.closed || this.timer !== undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.background();
    }, this.opts.flushIntervalMs);
    this.timer.unref();
  }

  private clearTimers(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    if (this.immediate !== undefined) clearImmediate(this.immediate);
    if (this.eventTimer !== undefined) clearTimeout(this.eventTimer);
    this.timer = undefined;
    this.immediate = undefined;
    this.eventTimer = undefined;
  }

  private async flushOnce(): Promise<void> {
    if (this.rows === 0 && this.buf.events.length === 0) return;
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.eventTimer !== undefined) {
      clearTimeout(this.eventTimer);
      this.eventTimer = undefined;
    }
    const batch = this.buf;
    const n = this.rows;
    this.buf = emptyBatch();
    this.rows = 0;
    try {
      await this.opts.persist(batch);
      this.counters.written += n;
    } catch (err) {
      this.counters.failedFlushes++;
      this.requeue(batch, n);
      throw err;
    }
  }

  private requeue(batch: SampleBatch, n: number): void {
    const merged: SampleBatch = {
      progress: [...batch.progress, ...this.buf.progress],
      guest: [...batch.guest, ...this.buf.guest],
      hostCpu: [...batch.hostCpu, ...this.buf.hostCpu],
      events: [...batch.events, ...this.buf.events],
    };
    let rows = n + this.rows;
    const excess = rows - this.opts.maxBuffered;
    if (excess > 0) {
      // Drop the oldest rows (progress first, then guest, then host CPU) and as many of the oldest
      // events: samples are telemetry, losing some beats growing without bound.
      let left = excess;
      for (const key of ['progress', 'guest', 'hostCpu'] as const) {
        const k = Math.min(left, merged[key].length);
        merged[key].splice(0, k);
        left -= k;
      }
      merged.events.splice(0, Math.min(merged.events.length, excess));
      rows -= excess;
      this.counters.dropped += excess;
      this.opts.logger.warn('sample buffer full; dropped the oldest samples', { dropped: excess });
    }
    this.buf = merged;
    this.rows = rows;
  }
}

function emptyBatch(): SampleBatch {
  return { progress: [], guest: [], hostCpu: [], events: [] };
}
