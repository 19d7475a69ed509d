import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runCampaign } from '../../../stress/chaos/campaign.js';
import { FAULT_KINDS, type FaultKind } from '../../../stress/chaos/plan.js';
import { saveReport, summarize } from '../../../stress/chaos/report.js';

// The short fault campaign (the long one is `npm run chaos`): a local cluster of three small
// guests, ten migrations with two faults each at moments drawn from a fixed seed, and every
// invariant checked after each step and at the end. Any violation fails the test with its replay
// command in the report.
//
// Faults the system does not survive yet are left out here, so `npm test` stays a regression
// guard for the ones it does; `npm run chaos` injects all of them and docs/chaos/ lists what they
// break (issue 16, ownership protocol): a source daemon killed during setup leaves the prepared
// destination QEMU behind; a migration link cut for good can leave a run in VERIFYING with the
// guest running on the source and a paused copy on the destination; a full coordinator disk can
// leave a run in CANCELLING. Remove a fault from this list once its fix lands.
const NOT_YET_SURVIVED: readonly FaultKind[] = ['kill-source-daemon', 'cut-migration-link-for-good', 'coordinator-disk-full'];

describe('chaos campaign (short, fixed seed)', () => {
  const out = mkdtempSync(join(tmpdir(), 'migd-chaos-test-'));
  afterAll(() => rmSync(out, { recursive: true, force: true }));

  it('survives 20 faults at random moments with no invariant violated', async () => {
    const lines: string[] = [];
    const only = FAULT_KINDS.filter((k) => !NOT_YET_SURVIVED.includes(k));
    const result = await runCampaign({ seed: 16, faults: 20, faultsPerStep: 2, only, settleBoundMs: 120_000, log: (l) => lines.push(l) });
    const { md } = saveReport(result, out, 'seed-16');
    const report = readFileSync(md, 'utf8');
    const s = summarize(result);
    console.log(report.split('## Steps')[0]);
    expect(result.records).toHaveLength(20);
    // Faults really landed: most found their target, in more than one phase, of more than one kind.
    expect(s.injected).toBeGreaterThanOrEqual(15);
    expect(new Set(result.records.filter((r) => r.applied).map((r) => r.fault)).size).toBeGreaterThanOrEqual(6);
    expect(new Set(result.records.filter((r) => r.applied).map((r) => r.phaseName)).size).toBeGreaterThanOrEqual(2);
    expect(result.records.flatMap((r) => r.runs).length).toBeGreaterThanOrEqual(10);
    expect(s.violations, report).toBe(0);
    expect(s.survived).toBe(s.injected);
  }, 900_000);
});
