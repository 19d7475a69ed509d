/**
 * The phase a migration is in when a fault lands, as the campaign logs it: setup, pre-copy pass N,
 * switch-over, post-copy, verification — or finished when the fault came after the run's end.
 */
import { MigrationState as S } from '../../services/shared/gen/migd/v1/common.js';

export type PhaseName = 'setup' | 'pre-copy' | 'switch-over' | 'post-copy' | 'verification' | 'finished';

export interface Phase {
  readonly name: PhaseName;
  /** Pre-copy pass (1-based) when name is pre-copy. */
  readonly pass?: number;
}

/** The phase of a run in `state`, with the pass of its latest progress sample. */
export function phaseOf(state: S | undefined, pass: number | undefined): Phase {
  switch (state) {
    case S.MIGRATION_STATE_PRECOPY:
      return { name: 'pre-copy', pass: Math.max(1, pass ?? 1) };
    case S.MIGRATION_STATE_SWITCHOVER:
      return { name: 'switch-over' };
    case S.MIGRATION_STATE_POSTCOPY:
    case S.MIGRATION_STATE_POSTCOPY_PAUSED:
    case S.MIGRATION_STATE_POSTCOPY_RECOVERING:
      return { name: 'post-copy' };
    case S.MIGRATION_STATE_VERIFYING:
      return { name: 'verification' };
    case S.MIGRATION_STATE_SUCCEEDED:
    case S.MIGRATION_STATE_FAILED:
    case S.MIGRATION_STATE_CANCELLED:
      return { name: 'finished' };
    default:
      return { name: 'setup' };
  }
}

/** "pre-copy pass 3", "post-copy", … */
export function phaseLabel(p: Phase): string {
  return p.name === 'pre-copy' ? `pre-copy pass ${p.pass ?? 1}` : p.name;
}

/** Order of phases, for picking the most advanced of several runs (a drain). */
const RANK: Record<PhaseName, number> = { setup: 0, 'pre-copy': 1, 'switch-over': 2, 'post-copy': 3, verification: 4, finished: -1 };

/** The most advanced phase among runs still going; finished when none is. */
export function leadingPhase(phases: readonly Phase[]): Phase {
  let best: Phase = { name: 'finished' };
  for (const p of phases) {
    if (RANK[p.name] > RANK[best.name] || (p.name === best.name && (p.pass ?? 0) > (best.pass ?? 0))) best = p;
  }
  return best;
}
