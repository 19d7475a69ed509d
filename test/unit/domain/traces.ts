/**
 * Test helpers: load a recorded progress trace from test/fixtures/traces and replay it through a
 * policy. Every state is round-tripped through JSON between samples, so a replay also proves that
 * a coordinator restarted mid-migration (state loaded from the store) decides exactly the same.
 */
import { readFileSync } from 'node:fs';
import { ProgressSample } from '../../../services/shared/gen/migd/v1/common.js';
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
