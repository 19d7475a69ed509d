import { describe, expect, it } from 'vitest';
import { roundRobin } from '../../../stress/lab/runner.js';
import type { Scenario } from '../../../stress/lab/scenarios.js';

describe('lab run order', () => {
  it('runs every scenario once before any twice (a sweep cut short still compares them all)', () => {
    const s = (name: string, repetitions: number) => ({ name, repetitions }) as unknown as Scenario;
    const order = roundRobin([s('a', 3), s('b', 1), s('c', 2)]).map(([x, rep]) => `${x.name}${rep}`);
    expect(order).toEqual(['a0', 'b0', 'c0', 'a1', 'c1', 'a2']);
  });

  it("keeps a sameVm scenario's repetitions together, at its place in the first round (its one VM migrates back and forth alone)", () => {
    const s = (name: string, repetitions: number, sameVm = false) => ({ name, repetitions, sameVm }) as unknown as Scenario;
    const order = roundRobin([s('a', 2), s('r', 3, true), s('c', 2)]).map(([x, rep]) => `${x.name}${rep}`);
    expect(order).toEqual(['a0', 'r0', 'r1', 'r2', 'c0', 'a1', 'c1']);
    expect(roundRobin([s('r', 4, true), s('q', 2, true)]).map(([x, rep]) => `${x.name}${rep}`)).toEqual(['r0', 'r1', 'r2', 'r3', 'q0', 'q1']);
  });
});
