import { describe, expect, it } from 'vitest';
import { DEFAULT_COST_MODEL, cheapest, postcopyCost, precopyCost } from '../../../services/coordinator/domain/policy/index.js';

const m = DEFAULT_COST_MODEL;

describe('adaptive policy cost model', () => {
  it('more pre-copy: every pass still to run at h × min(1, r), then the stop in full', () => {
    // 1 s backlog shrinking by half per pass: the boundaries find 500, then 250 ms (≤ 300).
    const c = precopyCost(m, 1000, 0.5, 300);
    expect(c.passes).toBe(2);
    expect(c.totalMs).toBeCloseTo(1000 + 500 + 250);
    expect(c.harmMs).toBeCloseTo(m.precopyHarmRate * 0.5 * 1500 + 250);
    // A backlog that does not shrink and does not fit never converges.
    expect(precopyCost(m, 1000, 1.2, 300).harmMs).toBe(Infinity);
    // r ≥ 1 that fits the limit at the next boundary: one pass.
    expect(precopyCost(m, 400, 1.1, 500)).toMatchObject({ passes: 1 });
  });

  it('post-copy: the fixed cost plus the backlog at s', () => {
    expect(postcopyCost(m, 1000)).toEqual({ harmMs: m.postcopyFixedMs + m.postcopyHarmRate * 1000, totalMs: 1000, passes: 0 });
    expect(postcopyCost(m, 1000).harmMs).toBeCloseTo(851);
  });

  it('at r ≈ 1 a raise to the backlog pays only below c ÷ (h + 1 − s) ≈ 0.42 s of backlog: its stop counts in full, post-copy\'s backlog at s', () => {
    const raise = (b: number) => precopyCost(m, b, 1, b);
    const breakEven = m.postcopyFixedMs / (m.precopyHarmRate + 1 - m.postcopyHarmRate);
    expect(breakEven).toBeCloseTo(423, 0);
    // Well below it the raise; above it post-copy (hot-small's 0.6–0.7 s working set at 720 Mbit/s).
    expect(cheapest(m, [raise(300), postcopyCost(m, 300)])).toBe(0);
    expect(cheapest(m, [raise(650), postcopyCost(m, 650)])).toBe(1);
    // Near it, within the tie tolerance, the shorter migration: post-copy (total b against 2b).
    expect(cheapest(m, [raise(440), postcopyCost(m, 440)])).toBe(1);
  });

  it('a tie (within 5 %) goes to the shorter migration; unknown costs choose nothing', () => {
    expect(cheapest(m, [{ harmMs: 1000, totalMs: 5000, passes: 4 }, { harmMs: 1040, totalMs: 1000, passes: 0 }])).toBe(1);
    expect(cheapest(m, [{ harmMs: 1000, totalMs: 5000, passes: 4 }, { harmMs: 1100, totalMs: 1000, passes: 0 }])).toBe(0);
    expect(cheapest(m, [{ harmMs: Infinity, totalMs: Infinity, passes: Infinity }])).toBe(-1);
    expect(cheapest(m, [])).toBe(-1);
  });
});
