/**
 * Test helpers: load a recorded progress trace from test/fixtures/traces and replay it through a
 * policy. Every state is round-tripped through JSON between samples, so a replay also proves that
 * a coordinator restarted mid-migration (state loaded from the store) decides exactly the same.
 */
import { readFileSync } from 'node:fs';
import { GuestPerfSample, MigrationState, ProgressSample } from '../../../services/shared/gen/migd/v1/common.js';
import { PolicyActionKind } from '../../../services/shared/gen/migd/v1/common.js';
import type { ConvergencePolicy, PolicyDecision } from '../../../services/coordinator/domain/policy/index.js';

export function loadTrace(name: string): ProgressSample[] {
  const raw = JSON.parse(readFileSync(new URL(`../../fixtures/traces/${name}.json`, import.meta.url), 'utf8')) as unknown[];
  return raw.map((s) => ProgressSample.fromJSON(s));
}

/** Replays `samples` (decide at each sample's own elapsed time). */
export function replay(policy: ConvergencePolicy, samples: readonly ProgressSample[]): { actions: PolicyDecision[]; state: unknown } {
  let state: unknown = policy.initialState();
  const actions: PolicyDecision[] = [];
  for (const s of samples) {
    const d = policy.decide(state, s, s.elapsedMs);
    actions.push(...d.actions);
    state = JSON.parse(JSON.stringify(d.state)) as unknown;
  }
  return { actions, state };
}

/** [elapsed ms, action kind name, value] triples: compact to assert on. */
export function summary(actions: readonly PolicyDecision[]): [number, string, number][] {
  return actions.map((a) => [a.elapsedMs, PolicyActionKind[a.kind].replace('POLICY_ACTION_KIND_', ''), a.value]);
}

/** A recorded run's guest samples and transitions, beside its progress trace (`<name>.guest.json`). */
export interface GuestFixture {
  readonly transitions: readonly { readonly time: string; readonly to: string }[];
  readonly guest: readonly GuestPerfSample[];
}

export function loadGuestTrace(name: string): GuestFixture {
  const raw = JSON.parse(readFileSync(new URL(`../../fixtures/traces/${name}.guest.json`, import.meta.url), 'utf8')) as { transitions: { time: string; to: string }[]; guest: unknown[] };
  return { transitions: raw.transitions, guest: raw.guest.map((g) => GuestPerfSample.fromJSON(g)) };
}

/**
 * Replays progress samples, guest samples and transitions in the order of their host times, as
 * the coordinator receives them (policies without observeGuest/observeState see only the
 * progress). `prepare` may set the initial state up (e.g. withHistory).
 */
export function replayWithGuest(
  policy: ConvergencePolicy,
  samples: readonly ProgressSample[],
  fixture: GuestFixture | undefined,
  prepare: (s: unknown) => unknown = (s) => s,
): { actions: PolicyDecision[]; state: unknown; stateAtFirstAction: unknown } {
  type Ev = { t: number; run: (s: unknown) => { state: unknown; actions?: readonly PolicyDecision[] } };
  const events: Ev[] = samples.map((s) => ({ t: s.time?.getTime() ?? 0, run: (st) => policy.decide(st, s, s.elapsedMs) }));
  for (const g of fixture?.guest ?? []) events.push({ t: g.time?.getTime() ?? 0, run: (st) => ({ state: policy.observeGuest ? policy.observeGuest(st, g) : st }) });
  for (const c of fixture?.transitions ?? []) {
    const t = Date.parse(c.time);
    const to = MigrationState[c.to as keyof typeof MigrationState];
    events.push({ t, run: (st) => ({ state: policy.observeState ? policy.observeState(st, to, t) : st }) });
  }
  events.sort((a, b) => a.t - b.t);
  let state: unknown = prepare(policy.initialState());
  let stateAtFirstAction: unknown;
  const actions: PolicyDecision[] = [];
  for (const e of events) {
    const d = e.run(state);
    state = JSON.parse(JSON.stringify(d.state)) as unknown;
    if (d.actions && d.actions.length > 0) {
      actions.push(...d.actions);
      stateAtFirstAction ??= state;
    }
  }
  return { actions, state, stateAtFirstAction };
}
