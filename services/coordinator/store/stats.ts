/** Small statistics helpers for the policy comparison. */

/**
 * The q-quantile (0..1) of `values` with linear interpolation between closest ranks (the
 * "type 7" estimator of R and NumPy's default). NaN for an empty list.
 */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const pos = (s.length - 1) * Math.min(1, Math.max(0, q));
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  const a = s[lo]!;
  const b = s[hi]!;
  return a + (b - a) * (pos - lo);
}

/** Arithmetic mean; NaN for an empty list. */
export function mean(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  let sum = 0;
  for (const v of values) sum += v;
  return sum / values.length;
}

/** NaN → 0, for proto doubles that cannot carry "no data". */
export function orZero(v: number): number {
  return Number.isNaN(v) ? 0 : v;
}
