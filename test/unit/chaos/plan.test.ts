import { describe, expect, it } from 'vitest';
import { MigrationState as S } from '../../../services/shared/gen/migd/v1/common.js';
import { FAULT_KINDS, MODES, planSteps, replayCommand } from '../../../stress/chaos/plan.js';
import { leadingPhase, phaseLabel, phaseOf } from '../../../stress/chaos/phase.js';
import { createRng } from '../../../stress/chaos/prng.js';

describe('chaos plan', () => {
  it('draws the same steps from the same seed, and different ones from another', () => {
    expect(planSteps(1, 30)).toEqual(planSteps(1, 30));
    expect(planSteps(2, 30)).not.toEqual(planSteps(1, 30));
  });

  it('replays any stretch of a campaign: step i is the same whether the run starts at 0 or at i', () => {
    const all = planSteps(42, 50);
    expect(planSteps(42, 5, 37)).toEqual(all.slice(37, 42));
    expect(planSteps(42, 5, 37).map((s) => s.index)).toEqual([37, 38, 39, 40, 41]);
  });

  it('covers every fault kind and mode, with moments and durations inside their bounds', () => {
    const steps = planSteps(1, 400);
    expect(new Set(steps.map((s) => s.fault))).toEqual(new Set(FAULT_KINDS));
    expect(new Set(steps.map((s) => s.mode))).toEqual(new Set(MODES));
    expect(new Set(steps.map((s) => s.action))).toEqual(new Set(['migrate', 'migrate-two', 'drain']));
    for (const s of steps) {
      for (const f of [s, s.second]) {
        expect(f.faultAtMs).toBeGreaterThanOrEqual(0);
        expect(f.faultAtMs).toBeLessThanOrEqual(7000);
        expect(f.durationMs).toBeGreaterThanOrEqual(1000);
        expect(f.durationMs).toBeLessThanOrEqual(8000);
      }
    }
  });

  it('draws only the faults asked for', () => {
    const steps = planSteps(5, 60, 0, { faults: ['kill-nats', 'cut-management-link'] });
    expect(new Set(steps.flatMap((s) => [s.fault, s.second.fault]))).toEqual(new Set(['kill-nats', 'cut-management-link']));
  });

  it('refuses a bad seed', () => {
    expect(() => planSteps(-1, 1)).toThrow(/seed/);
    expect(() => planSteps(1.5, 1)).toThrow(/seed/);
  });

  it('writes replay commands that carry every option changing the draws', () => {
    expect(replayCommand(7)).toBe('npm run chaos -- --seed 7');
    expect(replayCommand(7, { fromStep: 12, faults: 2, perStep: 2, onlyFaults: ['kill-nats'] })).toBe('npm run chaos -- --seed 7 --from-step 12 --faults 2 --per-step 2 --only kill-nats');
  });

  it('has a PRNG that stays in range', () => {
    const r = createRng(3);
    for (let i = 0; i < 1000; i++) {
      const n = r.int(5, 9);
      expect(n).toBeGreaterThanOrEqual(5);
      expect(n).toBeLessThanOrEqual(9);
    }
    expect(() => r.pick([])).toThrow();
  });
});

describe('chaos phases', () => {
  it('names the phase of a run from its state and pass', () => {
    expect(phaseLabel(phaseOf(S.MIGRATION_STATE_QUEUED, undefined))).toBe('setup');
    expect(phaseLabel(phaseOf(S.MIGRATION_STATE_PREPARING, 0))).toBe('setup');
    expect(phaseLabel(phaseOf(S.MIGRATION_STATE_PRECOPY, 3))).toBe('pre-copy pass 3');
    expect(phaseLabel(phaseOf(S.MIGRATION_STATE_PRECOPY, 0))).toBe('pre-copy pass 1');
    expect(phaseLabel(phaseOf(S.MIGRATION_STATE_SWITCHOVER, 4))).toBe('switch-over');
    expect(phaseLabel(phaseOf(S.MIGRATION_STATE_POSTCOPY_PAUSED, 2))).toBe('post-copy');
    expect(phaseLabel(phaseOf(S.MIGRATION_STATE_VERIFYING, 2))).toBe('verification');
    expect(phaseLabel(phaseOf(S.MIGRATION_STATE_FAILED, 2))).toBe('finished');
  });

  it('takes the most advanced phase of several runs, finished only when all are', () => {
    expect(phaseLabel(leadingPhase([phaseOf(S.MIGRATION_STATE_PRECOPY, 2), phaseOf(S.MIGRATION_STATE_PRECOPY, 4), phaseOf(S.MIGRATION_STATE_SUCCEEDED, 0)]))).toBe('pre-copy pass 4');
    expect(phaseLabel(leadingPhase([phaseOf(S.MIGRATION_STATE_SETUP, 0), phaseOf(S.MIGRATION_STATE_POSTCOPY, 2)]))).toBe('post-copy');
    expect(phaseLabel(leadingPhase([phaseOf(S.MIGRATION_STATE_SUCCEEDED, 0)]))).toBe('finished');
  });
});
