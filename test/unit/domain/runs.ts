/**
 * Test helpers: a recorded lab run (docs/lab/<comparison>/runs/<id>.json, copied to
 * test/fixtures/runs): its timeline as the coordinator stored it, and what its cost track leaves
 * for the VM's next runs (domain/policy/measured.ts, as the supervisor records it at the end).
 */
import { readFileSync } from 'node:fs';
import { GuestPerfSample, MigrationState, PolicyActionKind, ProgressSample } from '../../../services/shared/gen/migd/v1/common.js';
import { type GuestCostTrack, type RunCostFigures, replayCostTrack, trackedCostFigures } from '../../../services/coordinator/domain/policy/measured.js';

export interface RecordedRun {
  readonly vmName: string;
  readonly policy: string;
  readonly actions: readonly { readonly time: Date; readonly kind: PolicyActionKind; readonly value: number; readonly reason: string }[];
  readonly transitions: readonly { readonly time: Date; readonly to: MigrationState }[];
  readonly progress: ProgressSample[];
  /** The VM's guest samples, those before the run included (its pace baseline). */
  readonly guest: GuestPerfSample[];
}

export function loadRun(id: string): RecordedRun {
  const raw = JSON.parse(readFileSync(new URL(`../../fixtures/runs/${id}.json`, import.meta.url), 'utf8')) as {
    run: { vmName: string; policy: { kind: string }; actions: { time: string; kind: string; value?: number; reason: string }[]; transitions: { time: string; to: string }[] };
    progress: unknown[];
    guest: unknown[];
  };
  return {
    vmName: raw.run.vmName,
    policy: raw.run.policy.kind,
    actions: raw.run.actions.map((a) => ({ time: new Date(a.time), kind: PolicyActionKind[a.kind as keyof typeof PolicyActionKind], value: a.value ?? 0, reason: a.reason })),
    transitions: raw.run.transitions.map((c) => ({ time: new Date(c.time), to: MigrationState[c.to as keyof typeof MigrationState] })),
    progress: raw.progress.map((s) => ProgressSample.fromJSON(s)),
    guest: raw.guest.map((g) => GuestPerfSample.fromJSON(g)),
  };
}

/** The run's cost track replayed from its timeline. */
export function runTrack(r: RecordedRun): GuestCostTrack {
  return replayCostTrack(r.progress, r.guest, r.transitions, r.actions);
}

/** What the run leaves for the VM's next runs (empty: nothing measured). */
export function runFigures(r: RecordedRun): RunCostFigures {
  return trackedCostFigures(runTrack(r)) ?? {};
}
