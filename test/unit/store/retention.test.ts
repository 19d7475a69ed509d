import { afterEach, describe, expect, it, vi } from 'vitest';
import { createLogger } from '../../../services/shared/log.js';
import { schedulePruning } from '../../../services/coordinator/store/retention.js';

afterEach(() => {
  vi.useRealTimers();
});

describe('schedulePruning', () => {
  it('prunes on every tick, survives a failure and stops', async () => {
    vi.useFakeTimers();
    let calls = 0;
    const store = {
      pruneSamples: async () => {
        calls++;
        if (calls === 1) throw new Error('busy');
        return { progress: 1, guest: 0, hostCpu: 0 };
      },
      pruneOutbox: async () => 0,
    };
    const s = schedulePruning(store, { everyMs: 1000, logger: createLogger('t', {}, () => undefined, 'error') });
    await vi.advanceTimersByTimeAsync(999);
    expect(calls).toBe(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(calls).toBe(1);
    await vi.advanceTimersByTimeAsync(2000);
    expect(calls).toBe(3);
    await s.stop();
    await vi.advanceTimersByTimeAsync(5000);
    expect(calls).toBe(3);
  });
});
