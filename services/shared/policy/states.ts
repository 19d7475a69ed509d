/** Migration states both services reason about. */
import { MigrationState } from '../gen/migd/v1/common.js';

/** The states a migration never leaves. */
export const TERMINAL_STATES: ReadonlySet<MigrationState> = new Set([
  MigrationState.MIGRATION_STATE_SUCCEEDED,
  MigrationState.MIGRATION_STATE_FAILED,
  MigrationState.MIGRATION_STATE_CANCELLED,
]);

/** Whether a migration in state `s` has ended. */
export function isTerminalState(s: MigrationState): boolean {
  return TERMINAL_STATES.has(s);
}
