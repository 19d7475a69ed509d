import { describe, expect, it } from 'vitest';
import { mean, orZero, quantile } from '../../../services/coordinator/store/stats.js';

describe('stats', () => {
  it('interpolates quantiles between closest ranks', () => {
    expect(quantile([3, 1, 2], 0.5)).toBe(2);
    expect(quantile([1, 2, 3, 4], 0.5)).toBe(2.5);
    expect(quantile([10, 20, 30], 0.99)).toBeCloseTo(29.8, 9);
    expect(quantile([7], 0.99)).toBe(7);
    expect(quantile([], 0.5)).toBeNaN();
  });
  it('averages and maps NaN to 0', () => {
    expect(mean([1, 2, 3])).toBe(2);
    expect(mean([])).toBeNaN();
    expect(orZero(Number.NaN)).toBe(0);
    expect(orZero(5)).toBe(5);
  });
});
