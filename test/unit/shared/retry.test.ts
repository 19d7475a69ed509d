import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, UnavailableError } from '../../../services/shared/errors.js';
import { retry } from '../../../services/shared/retry.js';

describe('retry', () => {
  it('retries transient errors with growing, capped delays until success', async () => {
    const delays: number[] = [];
    let n = 0;
    const v = await retry(async () => {
      if (++n < 5) throw new UnavailableError('down');
      return n;
    }, { initialMs: 1, maxMs: 4, jitter: 0, onRetry: (_e, _a, d) => delays.push(d) });
    expect(v).toBe(5);
    expect(delays).toEqual([1, 2, 4, 4]);
  });

  it('throws a non-retryable error at once, and the last error when attempts run out', async () => {
    let n = 0;
    await expect(retry(async () => { n++; throw new InvalidArgumentError('bad'); }, { initialMs: 1 })).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(n).toBe(1);
    n = 0;
    await expect(retry(async () => { n++; throw new UnavailableError(`down ${n}`); }, { initialMs: 1, attempts: 3 })).rejects.toThrow('down 3');
  });

  it('stops at the deadline and when the signal fires', async () => {
    let t = 0;
    await expect(retry(async () => { t += 100; throw new UnavailableError('down'); }, { initialMs: 1, deadlineMs: 250, now: () => t })).rejects.toThrow('down');
    expect(t).toBe(300);
    const ac = new AbortController();
    const p = retry(async () => { throw new UnavailableError('down'); }, { initialMs: 10_000, signal: ac.signal });
    setTimeout(() => ac.abort(new Error('stop')), 10);
    await expect(p).rejects.toThrow();
  });
});
