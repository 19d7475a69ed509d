import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import { KEPT_REQUESTS, TurnProfiler } from '../../../services/shared/metrics/turns.js';

describe('turn profiler', () => {
  const p = new TurnProfiler();
  afterEach(() => p.disable());

  it('records nothing while off', () => {
    p.recordMs('store.group-commit', 5, 10);
    p.keep('SubmitPlan k', { handlerMs: 1, phasesMs: {}, size: 1 });
    expect(p.laps('submit')).toBeUndefined();
    expect(p.report()).toEqual({ loopDelay: null, loopUse: null, causes: [], requests: {} });
  });

  it("reports the event loop's busy and idle time since it was turned on", async () => {
    p.enable();
    const until = performance.now() + 30;
    while (performance.now() < until) {
      // busy: this turn holds the loop
    }
    await new Promise((r) => setTimeout(r, 30));
    const u = p.report().loopUse!;
    expect(u.activeMs).toBeGreaterThanOrEqual(25);
    expect(u.idleMs).toBeGreaterThan(0);
  });

  it('keeps count, total, max and sizes per cause, the largest total first', () => {
    p.enable();
    p.recordMs('a', 2, 10);
    p.recordMs('a', 4, 30);
    p.recordMs('b', 100, 1);
    const [b, a] = p.causesSnapshot();
    expect(b!.cause).toBe('b');
    expect(a).toMatchObject({ cause: 'a', count: 2, totalMs: 6, sizeMax: 30, sizeMean: 20 });
    expect(a!.maxMs).toBeCloseTo(4, 1); // the histogram's precision
    expect(a!.p50Ms).toBeGreaterThanOrEqual(2);
    expect(a!.p99Ms).toBeLessThanOrEqual(4.01);
  });

  it('records the phases of a request as prefix.phase causes and keeps the latest requests only', () => {
    p.enable();
    const laps = p.laps('submit')!;
    laps.lap('read');
    laps.lap('write', 40);
    expect(Object.keys(laps.ms)).toEqual(['read', 'write']);
    expect(p.causesSnapshot().map((c) => c.cause).sort()).toEqual(['submit.read', 'submit.write']);
    for (let i = 0; i <= KEPT_REQUESTS; i++) p.keep(`r${i}`, { handlerMs: i, phasesMs: {}, size: 1 });
    const kept = p.report().requests;
    expect(Object.keys(kept)).toHaveLength(KEPT_REQUESTS);
    expect(kept['r0']).toBeUndefined();
    expect(kept[`r${KEPT_REQUESTS}`]?.handlerMs).toBe(KEPT_REQUESTS);
  });
});
