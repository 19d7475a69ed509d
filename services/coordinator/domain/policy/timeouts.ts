/**
 * The two timeouts every policy carries, and what happens when one fires.
 *
 * - Completion: the migration has run longer than `completion_timeout_sec_per_gib` × guest GiB.
 * - Progress (stall): remaining bytes have not reached a new minimum for `progress_timeout_sec`
 *   (KubeVirt's "progress watermark"; a plateau that merely wobbles is still a stall).
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
  /** When it was reached (0: the migration's start). */
  readonly lowWaterAtMs: number;
}

export const initialTimeoutState = (): TimeoutState => ({ lowWaterBytes: null, lowWaterAtMs: 0 });

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
  };
}

/** Records a new remaining-bytes minimum. Only pre-copy samples count (setup reports 0 remaining). */
export function trackProgress(state: TimeoutState, sample: ProgressSample): TimeoutState {
  if (!isPrecopy(sample) || sample.totalBytes === 0) return state;
  if (state.lowWaterBytes === null || sample.remainingBytes < state.lowWaterBytes) {
    return { lowWaterBytes: sample.remainingBytes, lowWaterAtMs: sample.elapsedMs };
  }
  return state;
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
  if (rules.completionMs !== undefined && nowMs >= rules.completionMs) {
    return {
      kind: rules.onCompletion,
      value: 0,
      elapsedMs: nowMs,
      reason: `completion timeout: not completed after ${formatDuration(rules.completionMs)} (${rules.completionBasis}); ${verb(rules.onCompletion)}`,
    };
  }
  if (rules.progressMs !== undefined && nowMs - state.lowWaterAtMs >= rules.progressMs) {
    const since =
      state.lowWaterBytes === null
        ? 'no pre-copy progress since the start'
        : `remaining has not gone below ${formatBytes(state.lowWaterBytes)} since ${formatDuration(state.lowWaterAtMs)}`;
    return {
      kind: rules.onProgress,
      value: 0,
      elapsedMs: nowMs,
      reason: `progress timeout: ${since} (${formatDuration(rules.progressMs)} without a new minimum); ${verb(rules.onProgress)}`,
    };
  }
  return undefined;
}
