/**
 * What a policy reads from a progress sample, in bytes, bytes per second and milliseconds.
 */
import { MigrationState, type ProgressSample } from '../../../shared/gen/migd/v1/common.js';
import { mbpsToBytesPerSec } from '../units.js';

const DEFAULT_PAGE_SIZE = 4096;

/** Pre-copy passes are running (the only phase a convergence policy acts in). */
export function isPrecopy(s: ProgressSample): boolean {
  return s.state === MigrationState.MIGRATION_STATE_PRECOPY || (s.state === MigrationState.MIGRATION_STATE_UNSPECIFIED && s.qemuStatus === 'active');
}

/** Still setting up: timeouts run, but there is nothing to steer yet. */
export function isStarting(s: ProgressSample): boolean {
  return s.state === MigrationState.MIGRATION_STATE_PREPARING || s.state === MigrationState.MIGRATION_STATE_SETUP || s.state === MigrationState.MIGRATION_STATE_QUEUED;
}

/**
 * Post-copy: the guest already runs on the destination. Nothing can be aborted or throttled any
 * more; a stalled link is the node's business (recovery).
 */
export function isPostcopy(s: ProgressSample): boolean {
  return (
    s.state === MigrationState.MIGRATION_STATE_POSTCOPY ||
    s.state === MigrationState.MIGRATION_STATE_POSTCOPY_PAUSED ||
    s.state === MigrationState.MIGRATION_STATE_POSTCOPY_RECOVERING ||
    s.qemuStatus.startsWith('postcopy')
  );
}

/**
 * Pre-copy passes completed. QEMU's dirty-sync-count is 1 during the first (bulk) pass and N+1
 * once N passes are done (the node's post-copy-after-N-passes trigger counts the same way).
 */
export function completedPasses(s: ProgressSample): number {
  return Math.max(0, s.pass - 1);
}

/** dirty_pages_rate × page_size. */
export function dirtyBytesPerSec(s: ProgressSample): number {
  return s.dirtyPagesRate * (s.pageSize || DEFAULT_PAGE_SIZE);
}

export function throughputBytesPerSec(s: ProgressSample): number {
  return mbpsToBytesPerSec(s.throughputMbps);
}

/** Median of a non-empty list (mean of the middle two for an even count). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  if (sorted.length === 0) return NaN;
  if (sorted.length % 2 === 1) return sorted[mid] ?? NaN;
  return ((sorted[mid - 1] ?? NaN) + (sorted[mid] ?? NaN)) / 2;
}
