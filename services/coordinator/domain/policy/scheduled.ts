/**
 * A policy that follows a fixed schedule — downtime steps by elapsed time (Nova) or by completed
 * pre-copy passes (oVirt), optionally ending in a terminal step (abort, post-copy) — plus the
 * common timeouts. FIXED, NOVA, the three oVirt schedules and KUBEVIRT (an empty schedule) are all
 * instances of it; they differ only in the entries, the stepping mode and the timeouts.
 */
import { PolicyActionKind, type MigrationPolicy, type PolicyKind, type ProgressSample } from '../../../shared/gen/migd/v1/common.js';
import { formatDuration } from '../units.js';
import { completedPasses, isPostcopy, isPrecopy, isStarting } from './signals.js';
import { type TimeoutRules, type TimeoutState, checkTimeouts, initialTimeoutState, trackProgress } from './timeouts.js';
import type { ConvergencePolicy, Decision, PolicyDecision, PolicyRequirements } from './types.js';

/** When a schedule entry becomes due. */
export type ScheduleTrigger = { readonly afterMs: number } | { readonly afterPasses: number };

/** What a schedule entry does. */
export type ScheduleEffect =
  | { readonly kind: 'downtime'; readonly ms: number }
  | { readonly kind: 'postcopy' }
  | { readonly kind: 'pause' }
  | { readonly kind: 'abort' };

export interface ScheduleEntry {
  readonly trigger: ScheduleTrigger;
  readonly effect: ScheduleEffect;
  /** Words for the action's reason, e.g. "Nova downtime step 3/10". */
  readonly label: string;
}

/**
 * How due entries are taken:
 * - "catch-up": every due entry at once; several due downtime steps collapse into the last one
 *   (Nova's update_downtime picks the latest step whose time has passed).
 * - "one-per-pass": at most one entry per sample that shows a new pass, like vdsm's convergence
 *   schedule, which pops one entry per new iteration it observes.
 */
export type StepMode = 'catch-up' | 'one-per-pass';

export interface ScheduleConfig {
  readonly name: string;
  readonly kind: PolicyKind;
  readonly effective: MigrationPolicy;
  readonly requirements: PolicyRequirements;
  readonly entries: readonly ScheduleEntry[];
  readonly mode: StepMode;
  readonly timeouts: TimeoutRules;
}

/** Plain-data state of a {@link ScheduledPolicy}. */
export interface ScheduledState {
  /** Index of the next schedule entry. */
  readonly next: number;
  /** The downtime limit the policy last set (or the initial one). */
  readonly downtimeMs: number;
  /** Completed passes at the previous sample (-1 before the first). */
  readonly lastPasses: number;
  /** A terminal action was taken; the policy is silent from now on. */
  readonly done: boolean;
  readonly timeouts: TimeoutState;
}

function due(trigger: ScheduleTrigger, sample: ProgressSample, nowMs: number): boolean {
  return 'afterMs' in trigger ? nowMs >= trigger.afterMs : completedPasses(sample) >= trigger.afterPasses;
}

function describeTrigger(trigger: ScheduleTrigger): string {
  return 'afterMs' in trigger ? `after ${formatDuration(trigger.afterMs)}` : `after ${trigger.afterPasses} completed pass(es)`;
}

function toDecision(entry: ScheduleEntry, elapsedMs: number): PolicyDecision {
  const when = describeTrigger(entry.trigger);
  switch (entry.effect.kind) {
    case 'downtime':
      return { kind: PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME, value: entry.effect.ms, elapsedMs, reason: `${entry.label}: downtime limit ${entry.effect.ms} ms ${when}` };
    case 'postcopy':
      return { kind: PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY, value: 0, elapsedMs, reason: `${entry.label}: switching to post-copy ${when}` };
    case 'pause':
      return { kind: PolicyActionKind.POLICY_ACTION_KIND_PAUSE_GUEST, value: 0, elapsedMs, reason: `${entry.label}: pausing the guest ${when}` };
    case 'abort':
      return { kind: PolicyActionKind.POLICY_ACTION_KIND_ABORT, value: 0, elapsedMs, reason: `${entry.label}: aborting ${when}` };
  }
}

/** See the module comment. */
export class ScheduledPolicy implements ConvergencePolicy<ScheduledState> {
  readonly name: string;
  readonly kind: PolicyKind;
  readonly effective: MigrationPolicy;
  readonly requirements: PolicyRequirements;
  readonly entries: readonly ScheduleEntry[];
  readonly mode: StepMode;
  readonly timeouts: TimeoutRules;

  constructor(config: ScheduleConfig) {
    this.name = config.name;
    this.kind = config.kind;
    this.effective = config.effective;
    this.requirements = config.requirements;
    this.entries = config.entries;
    this.mode = config.mode;
    this.timeouts = config.timeouts;
  }

  initialState(): ScheduledState {
    return { next: 0, downtimeMs: this.effective.downtimeLimitMs, lastPasses: -1, done: false, timeouts: initialTimeoutState() };
  }

  decide(state: ScheduledState, sample: ProgressSample, nowMs: number): Decision<ScheduledState> {
    if (state.done) return { actions: [], state };
    if (isPostcopy(sample)) return { actions: [], state: { ...state, done: true } };
    if (!isPrecopy(sample) && !isStarting(sample)) return { actions: [], state };

    const timeouts = trackProgress(state.timeouts, sample);
    const timeout = checkTimeouts(this.timeouts, timeouts, nowMs);
    if (timeout) return { actions: [timeout], state: { ...state, timeouts, done: true } };
    if (!isPrecopy(sample)) return { actions: [], state: { ...state, timeouts } };

    const passes = completedPasses(sample);
    const newPass = passes > state.lastPasses;
    const taken: ScheduleEntry[] = [];
    let next = state.next;
    while (next < this.entries.length) {
      const entry = this.entries[next];
      if (!entry || !due(entry.trigger, sample, nowMs)) break;
      if (this.mode === 'one-per-pass' && (!newPass || taken.length > 0)) break;
      taken.push(entry);
      next++;
    }

    const actions: PolicyDecision[] = [];
    let downtimeMs = state.downtimeMs;
    let done = false;
    const terminal = taken.find((e) => e.effect.kind !== 'downtime');
    const lastDowntime = [...taken].reverse().find((e) => e.effect.kind === 'downtime');
    if (terminal) {
      // A terminal step makes earlier downtime steps of the same sample moot.
      actions.push(toDecision(terminal, nowMs));
      done = true;
    } else if (lastDowntime && lastDowntime.effect.kind === 'downtime' && lastDowntime.effect.ms !== downtimeMs) {
      actions.push(toDecision(lastDowntime, nowMs));
      downtimeMs = lastDowntime.effect.ms;
    }
    return { actions, state: { next, downtimeMs, lastPasses: passes, done, timeouts } };
  }
}
