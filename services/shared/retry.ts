/**
 * One retry helper (STYLE 17): exponential back-off with jitter and a cap, bounded by attempts
 * and/or a deadline, stopped by an AbortSignal, retrying only the errors the caller calls
 * transient. The last error is thrown when the bound is reached.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { MigdError } from './errors.js';

export interface RetryOptions {
  /** First delay (ms). Default 250. */
  readonly initialMs?: number;
  /** Delay cap (ms). Default 5000. */
  readonly maxMs?: number;
  /** Growth factor. Default 2. */
  readonly factor?: number;
  /** Fraction of each delay drawn at random (0 = none, 0.2 = ±20 %). Default 0.2. */
  readonly jitter?: number;
  /** At most this many attempts (≥ 1). Default unbounded. */
  readonly attempts?: number;
  /** Give up once this much time (ms) has passed since the first attempt. Default unbounded. */
  readonly deadlineMs?: number;
  /** Stops waiting and retrying (the signal's reason is thrown). */
  readonly signal?: AbortSignal;
  /** Whether an error is worth another attempt. Default: {@link isTransient}. */
  readonly retryable?: (err: unknown) => boolean;
  /** Called before each wait, e.g. to log. */
  readonly onRetry?: (err: unknown, attempt: number, delayMs: number) => void;
  readonly now?: () => number;
  readonly random?: () => number;
}

/** UNAVAILABLE and DEADLINE_EXCEEDED: the peer did not answer, so asking again may help. */
export function isTransient(err: unknown): boolean {
  return err instanceof MigdError && (err.code === 'UNAVAILABLE' || err.code === 'DEADLINE_EXCEEDED');
}

/**
 * Calls `fn(attempt)` until it resolves, a non-retryable error is thrown, or the bound is reached.
 * @throws the last error, or the signal's reason when aborted
 */
export async function retry<T>(fn: (attempt: number) => Promise<T>, o: RetryOptions = {}): Promise<T> {
  const now = o.now ?? Date.now;
  const random = o.random ?? Math.random;
  const retryable = o.retryable ?? isTransient;
  const start = now();
  let delay = o.initialMs ?? 250;
  for (let attempt = 1; ; attempt++) {
    o.signal?.throwIfAborted();
    try {
      return await fn(attempt);
    } catch (err) {
      o.signal?.throwIfAborted();
      if (!retryable(err)) throw err;
      if (o.attempts !== undefined && attempt >= o.attempts) throw err;
      const j = o.jitter ?? 0.2;
      let wait = Math.max(0, Math.round(delay * (1 - j + 2 * j * random())));
      if (o.deadlineMs !== undefined) {
        const left = start + o.deadlineMs - now();
        if (left <= 0) throw err;
        wait = Math.min(wait, left);
      }
      o.onRetry?.(err, attempt, wait);
      await sleep(wait, undefined, o.signal ? { signal: o.signal } : undefined);
      delay = Math.min(delay * (o.factor ?? 2), o.maxMs ?? 5000);
    }
  }
}
