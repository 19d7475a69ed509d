/**
 * Progress, guest and host CPU samples: buffered and written in batches (see sample-writer.ts),
 * each batch with the rate-limited RunProgress/RunGuestPerf events of its samples.
 */
import { InvalidArgumentError } from '../../shared/errors.js';
import { GuestPerfSample, ProgressSample } from '../../shared/gen/migd/v1/common.js';
import type { HostCpuSample } from '../../shared/gen/migd/v1/coordinator.js';
import { type Db, INSERT_CHUNK, runKey, throwFirstFailure, type OutboxEvent, type StoreDatabase, type TxState } from './database.js';
import { guestToRow, hostCpuToRow, ms, progressToRow } from './mapping.js';
import type { RunSamples } from './plan-run-repository.js';
import { SampleWriter, type SampleBatch, type SampleWriterStats } from './sample-writer.js';
import type { SampleRepository } from './types.js';

export class SqlSampleRepository implements SampleRepository, RunSamples {
  private readonly writer: SampleWriter;
  private readonly lastProgressEvent = new Map<string, number>();
  private readonly lastGuestEvent = new Map<string, number>();

  constructor(private readonly d: StoreDatabase) {
    this.writer = new SampleWriter({
      persist: (b) => this.persistSamples(b),
      batchSize: d.o.sampleBatchSize,
      flushIntervalMs: d.o.sampleFlushIntervalMs,
      maxBuffered: d.o.maxBufferedSamples,
      logger: d.log,
    });
  }

  /** Sample writer counters (written, dropped, failed flushes). */
  stats(): SampleWriterStats {
    return this.writer.stats();
  }

  appendProgress(runId: string, input: ProgressSample): void {
    if (runId === '') throw new InvalidArgumentError('run id is required');
    this.d.checkOpen();
    const sample = ProgressSample.fromPartial(input);
    const now = this.d.now();
    const at = ms(sample.time, now);
    const emit = this.due(this.lastProgressEvent, runId, now, this.d.o.progressEventIntervalMs);
    this.writer.addProgress(
      progressToRow(runId, sample, at),
      emit ? { runId, time: new Date(at), payload: { $case: 'runProgress', value: { runId, sample: { ...sample, time: new Date(at) } } } } : undefined,
    );
  }

  appendGuestSample(input: GuestPerfSample, runId?: string): void {
    const sample = GuestPerfSample.fromPartial(input);
    if (sample.vmName === '') throw new InvalidArgumentError('guest sample vm_name is required');
    this.d.checkOpen();
    const now = this.d.now();
    const at = ms(sample.time, now);
    const run = runId === undefined || runId === '' ? null : runId;
    const emit = run !== null && this.due(this.lastGuestEvent, run, now, this.d.o.guestEventIntervalMs);
    this.writer.addGuest(
      guestToRow(sample, run, at),
      emit && run !== null
        ? { runId: run, time: new Date(at), payload: { $case: 'runGuest', value: { runId: run, sample: { ...sample, time: new Date(at) } } } }
        : undefined,
    );
  }

  appendHostCpu(runId: string, sample: HostCpuSample): void {
    if (runId === '') throw new InvalidArgumentError('run id is required');
    this.d.checkOpen();
    this.writer.addHostCpu(hostCpuToRow(runId, sample, ms(sample.time, this.d.now())));
  }

  flushSamples(): Promise<void> {
    return this.writer.flush();
  }

  private due(last: Map<string, number>, runId: string, now: number, interval: number): boolean {
    const prev = last.get(runId);
    if (prev !== undefined && now - prev < interval) return false;
    last.set(runId, now);
    return true;
  }

  /**
   * Asks for a write of the buffered samples, then at once for `write` (see {@link SampleWriter.take}):
   * both are queued in this turn, in this order, so they go in the same group commit (or the
   * samples' in an earlier one) and the samples' events come before what `write` enqueues (a
   * run's end: its progress events before its RunCompleted). The samples are a write of their own,
   * so every run ending in one turn shares one batch (issue 15 §4: written inside each run's end,
   * they were 5–7 of the end's statements, each a round trip on Postgres), and one that fails
   * does not fail `write`: its rows go back to the buffer for a later flush.
   */
  async writeAfterSamples<T>(write: () => Promise<T>): Promise<T> {
    const taken = this.writer.take();
    const samples = taken === undefined
      ? undefined
      : this.d.write((trx, tx) => this.writeBatch(trx, tx, taken.batch), { keys: batchKeys(taken.batch) }).then(
          () => this.writer.written(taken),
          (err: unknown) => {
            this.d.log.warn('writing buffered samples before a run\'s end failed; will retry', { err, buffered: taken.rows });
            this.writer.restore(taken);
          },
        );
    try {
      return await write();
    } finally {
      await samples;
    }
  }

  private async persistSamples(b: SampleBatch): Promise<void> {
    await this.d.write((trx, tx) => this.writeBatch(trx, tx, b), { keys: batchKeys(b) });
  }

  /** One batch's rows and events, in the caller's transaction. */
  private async writeBatch(trx: Db, tx: TxState, b: SampleBatch): Promise<void> {
    // The statements are independent of one another: asked for all at once, so that on a
    // pipelined write connection (Postgres) they take one round trip, not one each (issue 15; on
    // SQLite and outside a pipelined group they still run one after the other, in this order).
    const statements: Promise<unknown>[] = [];
    for (let i = 0; i < b.progress.length; i += INSERT_CHUNK) {
      statements.push(trx.insertInto('progress_samples').values(b.progress.slice(i, i + INSERT_CHUNK)).execute());
    }
    for (let i = 0; i < b.guest.length; i += INSERT_CHUNK) {
      statements.push(trx.insertInto('guest_samples').values(b.guest.slice(i, i + INSERT_CHUNK)).execute());
    }
    for (let i = 0; i < b.hostCpu.length; i += INSERT_CHUNK) {
      statements.push(trx.insertInto('host_cpu_samples').values(b.hostCpu.slice(i, i + INSERT_CHUNK)).execute());
    }
    // The events' sequence numbers: one UPDATE for the runs with the same number of events in
    // this batch (usually all of them), then one INSERT for the events, in the batch's order.
    const perRun = new Map<string, number>();
    for (const e of b.events) perRun.set(e.runId, (perRun.get(e.runId) ?? 0) + 1);
    const byCount = new Map<number, string[]>();
    for (const [runId, n] of perRun) {
      const ids = byCount.get(n);
      if (ids === undefined) byCount.set(n, [runId]);
      else ids.push(runId);
    }
    /** Each run's next sequence number to hand out. */
    const next = new Map<string, number>();
    for (const [n, ids] of byCount) {
      statements.push(
        this.d.takeSequences(trx, ids, n).then((last) => {
          for (const [runId, l] of last) next.set(runId, l - n + 1);
        }),
      );
    }
    // Every one settled before the write ends (a failing one must not leave others in flight
    // behind the group's rollback), then the first failure.
    throwFirstFailure(await Promise.allSettled(statements));
    const events: OutboxEvent[] = [];
    for (const e of b.events) {
      // Samples of an unknown (or already deleted) run are kept; they just get no event.
      const sequence = next.get(e.runId);
      if (sequence === undefined) continue;
      next.set(e.runId, sequence + 1);
      events.push({ payload: e.payload, time: e.time, run: { runId: e.runId, sequence } });
    }
    await this.d.enqueueAll(trx, tx, events);
  }

  forgetRun(runId: string): void {
    this.lastProgressEvent.delete(runId);
    this.lastGuestEvent.delete(runId);
  }

  /** Writes what is buffered and stops buffering; logs (does not throw) what could not be written. */
  async close(): Promise<void> {
    try {
      await this.writer.close();
    } catch (err) {
      this.d.log.error('samples lost at close: the final write failed', { err, lost: this.writer.size });
    }
  }
}

/**
 * What a batch's write touches besides the rows it adds (StoreDatabase.write's keys): the event
 * sequence numbers of the runs it has events for. A run's end waits for a batch holding its events
 * (its progress events before its RunCompleted); the sample rows alone are new rows, which no
 * other write reads, so a run's transitions need not wait for a batch holding only its samples
 * (most runs: progress events go out at a reduced rate).
 */
function batchKeys(b: SampleBatch): string[] {
  return [...new Set(b.events.map((e) => e.runId))].map(runKey);
}
