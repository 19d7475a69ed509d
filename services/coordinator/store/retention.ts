/** Periodic pruning of samples and published outbox rows past their retention. */
import { createLogger, type Logger } from '../../shared/log.js';
import type { RetentionRepository } from './types.js';

/** A running pruning schedule. */
export interface PruneSchedule {
  /** Stops the schedule and waits for a prune in progress. */
  stop(): Promise<void>;
}

/**
 * Calls `pruneSamples` and `pruneOutbox` every `everyMs` (default 1 h), first after `everyMs`.
 * Failures are logged and retried at the next tick.
 */
export function schedulePruning(store: RetentionRepository, opts: { everyMs?: number; logger?: Logger } = {}): PruneSchedule {
  const everyMs = opts.everyMs ?? 3600_000;
  const log = opts.logger ?? createLogger('history-retention');
  let running: Promise<void> = Promise.resolve();
  const timer = setInterval(() => {
    running = running.then(async () => {
      try {
        const samples = await store.pruneSamples();
        const outbox = await store.pruneOutbox();
        if (samples.progress + samples.guest + samples.hostCpu + outbox > 0) log.info('pruned history', { ...samples, outbox });
      } catch (err) {
        log.warn('pruning history failed', { err });
      }
    });
  }, everyMs);
  timer.unref();
  return {
    stop: async () => {
      clearInterval(timer);
      await running;
    },
  };
}
