import { describe, expect, it } from 'vitest';
import type { CampaignResult, FaultRecord } from '../../../stress/chaos/campaign.js';
import { markdownReport, summarize } from '../../../stress/chaos/report.js';

const rec = (step: number, fault: FaultRecord['fault'], phaseName: FaultRecord['phaseName'], extra: Partial<FaultRecord> = {}): FaultRecord => ({
  step,
  fault,
  mode: 'pre-copy',
  action: 'migrate',
  phase: phaseName === 'pre-copy' ? 'pre-copy pass 2' : phaseName,
  phaseName,
  target: 'x',
  applied: true,
  survived: true,
  atMs: 100,
  runs: [{ runId: 'r', vm: 'g1', from: 'a', to: 'b', state: 'SUCCEEDED', error: '' }],
  violations: [],
  replay: `npm run chaos -- --seed 9 --from-step ${step} --faults 2 --per-step 2`,
  elapsedMs: 1000,
  ...extra,
});

describe('chaos report', () => {
  const violation = { invariant: 'exactly-once' as const, subject: 'g1', detail: 'runs 2 times' };
  const result: CampaignResult = {
    seed: 9,
    fromStep: 0,
    faultsPerStep: 2,
    only: [],
    startedAt: '2026-12-02T05:00:00.000Z',
    durationMs: 120_000,
    records: [
      rec(0, 'kill-nats', 'pre-copy'),
      rec(0, 'kill-coordinator', 'setup'),
      rec(1, 'kill-destination-daemon', 'post-copy', { survived: false, violations: [violation] }),
      rec(1, 'kill-destination-qemu', 'setup', { survived: false, applied: false }),
    ],
    finalViolations: [],
    restarts: { coordinator: 1 },
  };

  it('counts faults per kind and phase, survivors, and each violation once', () => {
    const s = summarize(result);
    expect(s).toMatchObject({ injected: 3, notApplicable: 1, survived: 2, violations: 1 });
    expect(s.table['kill-destination-daemon']).toEqual({ 'post-copy': { injected: 1, survived: 0 } });
    expect(s.table['kill-nats']).toEqual({ 'pre-copy': { injected: 1, survived: 1 } });
  });

  it('prints the table and every violation with its seed and replay command', () => {
    const md = markdownReport(result);
    expect(md).toContain('**3 faults injected, 2 survived (no invariant violated), 1 violations**');
    expect(md).toContain('| kill-destination-daemon |  |  |  | 0/1 |  |  | 0/1 |');
    expect(md).toContain('- **exactly-once** g1: runs 2 times — step 1 (kill-destination-daemon in post-copy, pre-copy), seed 9; replay: `npm run chaos -- --seed 9 --from-step 1 --faults 2 --per-step 2`');
    expect(md).toContain('Pre-copy faults by pass: pass 2: 1.');
  });
});
