import { describe, expect, it } from 'vitest';
import { roundRobin } from '../../../stress/lab/runner.js';
import type { Scenario } from '../../../stress/lab/scenarios.js';

describe('lab run order', () => {
  it('runs every scenario once before any twice (a sweep cut short still compares them all)', () => {
    const s = (name: string, repetitions: number) => ({ name, repetitions }) as unknown as Scenario;
    const order = roundRobin([s('a', 3), s('b', 1), s('c', 2)]).map(([x, rep]) => `${x.name}${rep}`);
    expect(order).toEqual(['a0', 'b0', 'c0', 'a1', 'c1', 'a2']);
  });
});
