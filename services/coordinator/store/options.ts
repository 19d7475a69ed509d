/**
 * Options of the history store that do not depend on the database behind it (batching, event
 * rates, retention, windows, limits). A dialect's factory adds its own (a file name for SQLite)
 * and resolves both once, at open.
 */
import { ConfigError } from '../../shared/errors.js';
import { createLogger, type Logger } from '../../shared/log.js';
import type { MigdMetrics } from '../../shared/metrics/metrics.js';

/** Options of the repositories; each documents its default. */
export interface HistoryStoreOptions {
  /** Samples per batch insert: a full batch is written at once. Default 500. */
  sampleBatchSize?: number;
  /** Longest time a sample waits in the buffer, in ms. Default 200. */
  sampleFlushIntervalMs?: number;
  /** Samples kept in memory while writes fail before the oldest are dropped. Default 100 000. */
  maxBufferedSamples?: number;
  /** At most one RunProgress event per run per this many ms; 0 = one per sample. Default 1000. */
  progressEventIntervalMs?: number;
  /** At most one RunGuestPerf event per run per this many ms; 0 = one per sample. Default 1000. */
  guestEventIntervalMs?: number;
  /** Keep samples this long (see pruneSamples), in ms; null keeps them forever. Default 30 days. */
  sampleRetentionMs?: number | null;
  /** Keep published outbox rows this long, in ms. Default 1 day. */
  outboxRetentionMs?: number;
  /** Guest samples this long before a run's start (and after its end) belong to its timeline
   * and to the "before" figure of comparisons, in ms. Default 60 000. */
  guestWindowMs?: number;
  /** Most runs one export page may contain (pages are at most 500 runs anyway). Default 10 000. */
  maxExportRuns?: number;
  /**
   * A group commit takes no further write once it has run this long, in ms; the rest of the queue
   * goes in the next group, after the event loop's I/O (see StoreDatabase.write). 0: one write
   * per transaction. Default 10 (Postgres: POSTGRES_WRITE_GROUP_BUDGET_MS, 100).
   */
  writeGroupBudgetMs?: number;
  /** Clock in ms since the epoch. Default `Date.now`. */
  now?: () => number;
  logger?: Logger;
  /** Finished runs are observed in the duration/downtime histograms when given. */
  metrics?: Pick<MigdMetrics, 'migrationDurationSeconds' | 'migrationDowntimeSeconds'>;
}

/** Fully defaulted repository options. */
export type ResolvedHistoryStoreOptions = Readonly<
  Required<Omit<HistoryStoreOptions, 'metrics' | 'logger'>> & Pick<HistoryStoreOptions, 'metrics'> & { logger: Logger }
>;

/** Checks that option `store.<name>` is a finite number of at least `min`. @throws ConfigError */
export function checkMin(name: string, v: number, min: number): void {
  if (!Number.isFinite(v) || v < min) throw new ConfigError(`store.${name}`, `must be a number >= ${min}`);
}

/**
 * Fills in defaults and validates (not frozen: a dialect's factory adds its own and freezes).
 * @throws ConfigError naming the first bad option.
 */
export function resolveHistoryStoreOptions(o: HistoryStoreOptions): ResolvedHistoryStoreOptions {
  const r = {
    sampleBatchSize: o.sampleBatchSize ?? 500,
    sampleFlushIntervalMs: o.sampleFlushIntervalMs ?? 200,
    maxBufferedSamples: o.maxBufferedSamples ?? 100_000,
    progressEventIntervalMs: o.progressEventIntervalMs ?? 1000,
    guestEventIntervalMs: o.guestEventIntervalMs ?? 1000,
    sampleRetentionMs: o.sampleRetentionMs === undefined ? 30 * 24 * 3600_000 : o.sampleRetentionMs,
    outboxRetentionMs: o.outboxRetentionMs ?? 24 * 3600_000,
    guestWindowMs: o.guestWindowMs ?? 60_000,
    maxExportRuns: o.maxExportRuns ?? 10_000,
    writeGroupBudgetMs: o.writeGroupBudgetMs ?? 10,
    now: o.now ?? Date.now,
    logger: o.logger ?? createLogger('history-store'),
    metrics: o.metrics,
  };
  checkMin('sampleBatchSize', r.sampleBatchSize, 1);
  checkMin('sampleFlushIntervalMs', r.sampleFlushIntervalMs, 1);
  checkMin('maxBufferedSamples', r.maxBufferedSamples, r.sampleBatchSize);
  checkMin('progressEventIntervalMs', r.progressEventIntervalMs, 0);
  checkMin('guestEventIntervalMs', r.guestEventIntervalMs, 0);
  if (r.sampleRetentionMs !== null) checkMin('sampleRetentionMs', r.sampleRetentionMs, 1);
  checkMin('outboxRetentionMs', r.outboxRetentionMs, 1);
  checkMin('guestWindowMs', r.guestWindowMs, 0);
  checkMin('maxExportRuns', r.maxExportRuns, 1);
  checkMin('writeGroupBudgetMs', r.writeGroupBudgetMs, 0);
  return r;
}
