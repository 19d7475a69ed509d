/**
 * The two timeouts every policy carries, and what happens when one fires.
 *
 * - Completion: the migration has run longer than `completion_timeout_sec_per_gib` × the GiB it
 *   moves: guest memory, plus the LOCAL disks a storage copy sends (the largest disk total the
 *   samples reported), as Nova (RAM plus disk for a block migration) and KubeVirt (the migrating
 *   disks' size for BlockMigration) count it. A run with big LOCAL disks gets the time its copy
 *   takes at the same per-GiB pace.
 * - Progress (stall): remaining bytes have not reached a new minimum for `progress_timeout_sec`
 *   (KubeVirt's "progress watermark"; a plateau that merely wobbles is still a stall). During the
 *   storage copy the mirrors' remaining bytes (disk total − disk transferred) are the watermark:
 *   a long copy that advances is progress, one the guest's writes outrun is a stall.
 *
 * Neither fires in post-copy (the guest already runs on the destination: there is nothing left to
 * abort, Nova and KubeVirt skip their checks there too) nor after the migration finished.
 */
import { PolicyActionKind, TimeoutAction, type MigrationPolicy, type ProgressSample } from '../../../shared/gen/migd/v1/common.js';
import { GiB, formatBytes, formatDuration } from '../units.js';
import { isPrecopy } from './signals.js';
import type { PolicyDecision, TimeoutRules } from './types.js';

export type { TimeoutRules } from './types.js';

/** Progress tracking; plain data. */
export interface TimeoutState {
  /** Lowest remaining bytes seen in pre-copy (null before the first pre-copy sample). */
  readonly lowWaterBytes: number | null;
  /** When it (or the storage copy's low water) was last reached (0: the migration's start). */
  readonly lowWaterAtMs: number;
  /** Lowest remaining bytes of the storage copy (null before its first sample). */
  readonly diskLowWaterBytes?: number | null;
  /** The largest disk total the samples reported: what the storage copy moves (0: none). */
  readonly diskBytes?: number;
}

export const initialTimeoutState = (): TimeoutState => ({ lowWaterBytes: null, lowWaterAtMs: 0, diskLowWaterBytes: null, diskBytes: 0 });

/**
 * The completion budget once `diskBytes` of LOCAL disks are known to be copied: the memory's
 * budget plus the same seconds per GiB of disk (undefined: no completion timeout).
 */
export function completionBudgetMs(rules: { readonly completionMs: number | undefined; readonly completionSecPerGib?: number | undefined }, diskBytes: number): number | undefined {
  if (rules.completionMs === undefined) return undefined;
  const perGib = rules.completionSecPerGib ?? 0;
  return rules.completionMs + (perGib > 0 && diskBytes > 0 ? Math.round((perGib * diskBytes * 1000) / GiB) : 0);
}

/** Force-complete as Nova defines it: post-copy when it is enabled, otherwise pause the guest. */
export function forceCompleteKind(postcopy: boolean): PolicyActionKind {
  return postcopy ? PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY : PolicyActionKind.POLICY_ACTION_KIND_PAUSE_GUEST;
}

/** The action a timeout takes under `action`. */
export function timeoutActionKind(action: TimeoutAction, postcopy: boolean): PolicyActionKind {
  return action === TimeoutAction.TIMEOUT_ACTION_FORCE_COMPLETE ? forceCompleteKind(postcopy) : PolicyActionKind.POLICY_ACTION_KIND_ABORT;
}

/**
 * Resolves the timeouts of an effective policy (its zero fields already replaced by the policy's
 * defaults).
 * @param opts.postcopy post-copy is available for a force-complete
 * @param opts.completionPrefersPostcopy KubeVirt: with post-copy allowed, the completion timeout
 *   switches to post-copy whatever the timeout action says
 * @param opts.minDataGib Nova: guest memory below this many GiB counts as this many
 */
export function resolveTimeouts(
  effective: MigrationPolicy,
  memoryBytes: number,
  opts: { postcopy: boolean; completionPrefersPostcopy?: boolean; minDataGib?: number },
): TimeoutRules {
  const gib = Math.max(memoryBytes / GiB, opts.minDataGib ?? 0);
  const perGib = effective.completionTimeoutSecPerGib;
  const configured = timeoutActionKind(effective.timeoutAction, opts.postcopy);
  return {
    completionMs: perGib > 0 ? Math.round(perGib * gib * 1000) : undefined,
    progressMs: effective.progressTimeoutSec > 0 ? effective.progressTimeoutSec * 1000 : undefined,
    onCompletion: opts.completionPrefersPostcopy && opts.postcopy ? PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY : configured,
    onProgress: configured,
    completionBasis: perGib > 0 ? `${perGib} s/GiB × ${gib.toFixed(2)} GiB` : '',
    completionSecPerGib: perGib,
  };
}

/**
 * Records a new remaining-bytes minimum: of the memory in pre-copy samples (setup reports 0
 * remaining), of the disks in storage-copy samples; and the largest disk total seen.
 */
export function trackProgress(state: TimeoutState, sample: ProgressSample): TimeoutState {
  let next = state;
  const diskTotal = sample.diskTotalBytes ?? 0;
  if (diskTotal > (next.diskBytes ?? 0)) next = { ...next, diskBytes: diskTotal };
  if (sample.storagePhase && diskTotal > 0) {
    const left = Math.max(0, diskTotal - (sample.diskTransferredBytes ?? 0));
    const low = next.diskLowWaterBytes ?? null;
    if (low === null || left < low) next = { ...next, diskLowWaterBytes: left, lowWaterAtMs: sample.elapsedMs };
    return next;
  }
  if (!isPrecopy(sample) || sample.totalBytes === 0) return next;
  if (next.lowWaterBytes === null || sample.remainingBytes < next.lowWaterBytes) {
    return { ...next, lowWaterBytes: sample.remainingBytes, lowWaterAtMs: sample.elapsedMs };
  }
  return next;
}

function verb(kind: PolicyActionKind): string {
  switch (kind) {
    case PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY:
      return 'switching to post-copy to force completion';
    case PolicyActionKind.POLICY_ACTION_KIND_PAUSE_GUEST:
      return 'pausing the guest to force completion';
    default:
      return 'aborting; the guest keeps running on the source';
  }
}

/**
 * The timeout action due at `nowMs`, if any. Call after {@link trackProgress}, and only while the
 * migration is starting or in pre-copy. The completion timeout wins when both are due.
 */
export function checkTimeouts(rules: TimeoutRules, state: TimeoutState, nowMs: number): PolicyDecision | undefined {
  const diskBytes = state.diskBytes ?? 0;
  const completionMs = completionBudgetMs(rules, diskBytes);
  if (completionMs !== undefined && nowMs >= completionMs) {
    const disks = completionMs > (rules.completionMs ?? 0) ? ` + ${rules.completionSecPerGib} s/GiB × ${(diskBytes / GiB).toFixed(2)} GiB of LOCAL disks` : '';
    return {
      kind: rules.onCompletion,
      value: 0,
      elapsedMs: nowMs,
      reason: `completion timeout: not completed after ${formatDuration(completionMs)} (${rules.completionBasis}${disks}); ${verb(rules.onCompletion)}`,
    };
  }
  if (rules.progressMs !== undefined && nowMs - state.lowWaterAtMs >= rules.progressMs) {
    const diskLow = state.diskLowWaterBytes ?? null;
    const since =
      state.lowWaterBytes !== null
        ? `remaining has not gone below ${formatBytes(state.lowWaterBytes)} since ${formatDuration(state.lowWaterAtMs)}`
        : diskLow !== null
          ? `the storage copy's remaining has not gone below ${formatBytes(diskLow)} since ${formatDuration(state.lowWaterAtMs)}`
          : 'no pre-copy progress since the start';
    return {
      kind: rules.onProgress,
      value: 0,
      elapsedMs: nowMs,
      reason: `progress timeout: ${since} (${formatDuration(rules.progressMs)} without a new minimum); ${verb(rules.onProgress)}`,
    };
  }
  return undefined;
}
