/**
 * AbortSignal helpers shared by the node daemon's QMP and VM code: one way to turn a fired signal
 * into an error, and an abortable sleep.
 */
import { CancelledError, MigdError } from '../../shared/errors.js';

/**
 * The error to reject with once `signal` has fired: its reason when that is already a `MigdError`
 * (a parent's DeadlineExceededError stays one), else a `CancelledError` caused by the reason.
 */
export function abortError(signal: AbortSignal): MigdError {
  const reason: unknown = signal.reason;
  return reason instanceof MigdError ? reason : new CancelledError('operation cancelled', { cause: reason });
}

/**
 * Resolves after `ms`, or rejects with `abortError(signal)` as soon as the signal fires.
 * @throws CancelledError (or the signal's MigdError reason).
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError(signal));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortError(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
