/**
 * Issue 14's start delay: the source no longer measures the dirty rate for 1 s before QEMU's
 * `migrate`; its first estimate comes ≈1.7 s into pre-copy (500 ms, the 100 ms dirty set, the 1 s
 * estimate), and the
 * samples before it carry 0. The recorded adaptive runs of docs/lab/policies-links-3 (300 and 2000
 * Mbit/s: first passes from 0.25 s to 13 s) and docs/lab/policies-720-front carried the pre-start
 * estimate from their first sample. Replayed with it taken away before 1.75 s into pre-copy, each
 * must take the same first step at the same pass: where pass 1 ends before the first estimate
 * (moderate and phase at 2000 Mbit/s, compressible) the verdict reads QEMU's own rate, and the
 * runs whose verdict comes later have an estimate by then.
 */
import { describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import { MigrationState, PolicyKind, type ProgressSample } from '../../../services/shared/gen/migd/v1/common.js';
import type { GetRunTimelineResponse } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { type AdaptivePolicy, policyFor } from '../../../services/coordinator/domain/policy/index.js';
import { MiB } from '../../../services/coordinator/domain/units.js';
import { loadTimelines } from '../../../stress/lab/cost-fit.js';
import { replayWithGuest, summary } from './traces.js';

/** When the new source's first estimate is in, after pre-copy began (500 ms + 100 ms set + 1 s estimate + QMP). */
const FIRST_ESTIMATE_MS = 1750;

/** The run's first step and its pass; with `withoutEarlyEstimate`, the estimate zeroed before FIRST_ESTIMATE_MS into pre-copy. */
function firstStep(t: GetRunTimelineResponse, withoutEarlyEstimate: boolean): [string, number | undefined] {
  const run = t.run!;
  const policy = policyFor(run.policy!, run.memoryMib * MiB) as AdaptivePolicy;
  const streaming = Math.min(...run.transitions.filter((c) => c.to === MigrationState.MIGRATION_STATE_SETUP || c.to === MigrationState.MIGRATION_STATE_PRECOPY).map((c) => c.time!.getTime()));
  const progress: ProgressSample[] = withoutEarlyEstimate ? t.progress.map((s) => (s.time!.getTime() < streaming + FIRST_ESTIMATE_MS ? { ...s, estimatedDirtyBytesPerSec: 0 } : s)) : t.progress;
  const fixture = { transitions: run.transitions.map((c) => ({ time: c.time!.toISOString(), to: MigrationState[c.to] })), guest: t.guest };
  const { actions } = replayWithGuest(policy, progress, fixture);
  const first = actions[0];
  return [first ? summary([first])[0]![1] : 'NOTHING', first ? progress.filter((s) => s.elapsedMs <= first.elapsedMs).at(-1)?.pass : undefined];
}

for (const dir of ['policies-links-3', 'policies-720-front']) {
  const timelines = loadTimelines(fileURLToPath(new URL(`../../../docs/lab/${dir}/runs.tar.gz`, import.meta.url))).filter((t) => t.run?.policy?.kind === PolicyKind.POLICY_KIND_ADAPTIVE);
  describe(`adaptive runs of ${dir} without an estimate before ${FIRST_ESTIMATE_MS} ms into pre-copy`, () => {
    it('holds the adaptive runs', () => {
      expect(timelines.length).toBe(dir === 'policies-links-3' ? 42 : 21);
    });
    for (const t of [...timelines].sort((a, b) => a.run!.vmName.localeCompare(b.run!.vmName))) {
      it(`${t.run!.vmName}: the same first step`, () => {
        const recorded = firstStep(t, false);
        expect(firstStep(t, true)).toEqual(recorded);
      });
    }
  });
}
