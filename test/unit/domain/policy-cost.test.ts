import { describe, expect, it } from 'vitest';
import { DEFAULT_COST_MODEL, cheapest, postcopyCost, precopyCost } from '../../../services/coordinator/domain/policy/index.js';

const m = DEFAULT_COST_MODEL;

describe('adaptive policy cost model', () => {
  it('more pre-copy: every pass still to run at h × min(1, r), then the stop in full', () => {
    // 1 s backlog shrinking by half per pass: the boundaries find 500, then 250 ms (≤ 300).
    const c = precopyCost(m, 1000, 0.5, 300);
    expect(c.passes).toBe(2);
    expect(c.totalMs).toBeCloseTo(1000 + 500 + 250);
    expect(c.harmMs).toBeCloseTo(0.74 * 0.5 * 1500 + 250);
    // A backlog that does not shrink and does not fit never converges.
    expect(precopyCost(m, 1000, 1.2, 300).harmMs).toBe(Infinity);
    // r ≥ 1 that fits the limit at the next boundary: one pass.
    expect(precopyCost(m, 400, 1.1, 500)).toMatchObject({ passes: 1 });
  });

  it('post-copy: the fixed cost plus the backlog at s', () => {
    expect(postcopyCost(m, 1000)).toEqual({ harmMs: 1070 + 740, totalMs: 1000, passes: 0 });
  });

  it('at r ≈ 1 a raise to the backlog pays only below c ÷ (h + 1 − s) ≈ 1.07 s of backlog', () => {
    const raise = (b: number) => precopyCost(m, b, 1, b);
    const breakEven = m.postcopyFixedMs / (m.precopyHarmRate + 1 - m.postcopyHarmRate);
    expect(breakEven).toBeCloseTo(1070);
    expect(cheapest(m, [raise(800), postcopyCost(m, 800)])).toBe(0);
    expect(cheapest(m, [raise(1400), postcopyCost(m, 1400)])).toBe(1);
  });

  it('a tie (within 5 %) goes to the shorter migration; unknown costs choose nothing', () => {
    expect(cheapest(m, [{ harmMs: 1000, totalMs: 5000, passes: 4 }, { harmMs: 1040, totalMs: 1000, passes: 0 }])).toBe(1);
    expect(cheapest(m, [{ harmMs: 1000, totalMs: 5000, passes: 4 }, { harmMs: 1100, totalMs: 1000, passes: 0 }])).toBe(0);
    expect(cheapest(m, [{ harmMs: Infinity, totalMs: Infinity, passes: Infinity }])).toBe(-1);
    expect(cheapest(m, [])).toBe(-1);
  });
});
