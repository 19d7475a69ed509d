/**
 * migctl's exit codes, so scripts can tell "the migration failed" from "you typed it wrong" from
 * "the coordinator is not there". The mapping from errors is the one place that decides.
 */
import { MigdError, type ErrorCode } from '../../shared/errors.js';
import { MigrationState } from '../../shared/gen/migd/v1/common.js';
import { UsageError } from './units.js';

export const ExitCode = Object.freeze({
  /** Done; with --watch/watch: every run succeeded. */
  OK: 0,
  /** A watched run failed or was cancelled, or an unexpected (internal) error. */
  FAILED: 1,
  /** The command line is wrong (unknown command or flag, bad value, missing argument). */
  USAGE: 2,
  /** The coordinator does not know the VM, node, run or plan. */
  NOT_FOUND: 3,
  /**
   * The coordinator refused the request: invalid argument, failed precondition (e.g. VM already
   * migrating, destination down), permission denied (role), already exists, resource exhausted.
   */
  REFUSED: 4,
  /** The coordinator could not be reached or did not answer in time. */
  UNAVAILABLE: 5,
  /** Interrupted (Ctrl-C) while waiting for a run; the run itself goes on. */
  INTERRUPTED: 130,
});
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

const BY_CODE: Readonly<Partial<Record<ErrorCode, ExitCode>>> = {
  NOT_FOUND: ExitCode.NOT_FOUND,
  INVALID_ARGUMENT: ExitCode.REFUSED,
  FAILED_PRECONDITION: ExitCode.REFUSED,
  PERMISSION_DENIED: ExitCode.REFUSED,
  UNAUTHENTICATED: ExitCode.REFUSED,
  ALREADY_EXISTS: ExitCode.REFUSED,
  RESOURCE_EXHAUSTED: ExitCode.REFUSED,
  UNAVAILABLE: ExitCode.UNAVAILABLE,
  DEADLINE_EXCEEDED: ExitCode.UNAVAILABLE,
  CANCELLED: ExitCode.INTERRUPTED,
};

/** The exit code for an error a command ended with. */
export function exitCodeForError(err: unknown): ExitCode {
  if (err instanceof UsageError) return ExitCode.USAGE;
  if (err instanceof MigdError) return BY_CODE[err.code] ?? ExitCode.FAILED;
  return ExitCode.FAILED;
}


/** The exit code for watched runs' final states: 0 only when every one succeeded. */
export function exitCodeForRuns(states: readonly MigrationState[]): ExitCode {
  return states.every((s) => s === MigrationState.MIGRATION_STATE_SUCCEEDED) ? ExitCode.OK : ExitCode.FAILED;
}
