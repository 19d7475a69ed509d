/**
 * The shape every convergence policy has: a pure function from (state, progress sample, time) to
 * (actions, next state). State is plain JSON-serialisable data, so the coordinator can store it
 * with the run and a restarted coordinator resumes a policy exactly where it stopped; replaying a
 * recorded trace through `decide` reproduces the actions exactly (that is how the tests work).
 */
import type { RunCostFigures } from './measured.js';
import {
  type GuestPerfSample,
  type MigrationState,
  PolicyActionKind,
  type MigrationPolicy,
  type PolicyAction,
  type PolicyKind,
  type ProgressSample,
} from '../../../shared/gen/migd/v1/common.js';

/** One step a policy wants taken now. Maps 1:1 onto the proto PolicyAction. */
export interface PolicyDecision {
  readonly kind: PolicyActionKind;
  /** Milliseconds for SET_DOWNTIME, bytes per second for SET_BANDWIDTH, else 0. */
  readonly value: number;
  /** Why, in words, with the figures that led to it. */
  readonly reason: string;
  /** The migration's elapsed time when decided. */
  readonly elapsedMs: number;
}

/** What the node must set up before the migration starts (QEMU cannot add capabilities later). */
export interface PolicyRequirements {
  /** Migration capabilities (QMP names) the policy needs on both ends. */
  readonly capabilities: readonly string[];
  /** post-copy may be started (by the node's own trigger, a force-complete, or the policy). */
  readonly postcopy: boolean;
  readonly postcopyPreempt: boolean;
  /**
   * Auto-converge: "on" throttles from the start; "armed" has the capability on with the throttle
   * capped at 1 % so the policy can raise the cap later (ENABLE_AUTO_CONVERGE); "off" not at all.
   */
  readonly autoConverge: 'off' | 'armed' | 'on';
}

/** A policy's completion and progress timeouts, resolved for one guest (see timeouts.ts). */
export interface TimeoutRules {
  /** For the guest's memory (LOCAL disks add to it: see completionBudgetMs); undefined: none. */
  readonly completionMs: number | undefined;
  /** Undefined: no progress timeout. */
  readonly progressMs: number | undefined;
  /** ABORT, START_POSTCOPY or PAUSE_GUEST. */
  readonly onCompletion: PolicyActionKind;
  readonly onProgress: PolicyActionKind;
  /** How the completion timeout was computed, for the reason ("150 s/GiB × 0.50 GiB"). */
  readonly completionBasis: string;
  /**
   * The per-GiB pace behind `completionMs` (0 or undefined: none): LOCAL disks a storage copy
   * sends add this many seconds per GiB (see completionBudgetMs).
   */
  readonly completionSecPerGib?: number;
}

/** The result of one decision. */
export interface Decision<S> {
  readonly actions: readonly PolicyDecision[];
  readonly state: S;
}

/**
 * A convergence policy. `S` must be plain data (numbers, strings, booleans, null, arrays, objects)
 * so that `JSON.parse(JSON.stringify(state))` is the same state.
 */
export interface ConvergencePolicy<S = unknown> {
  /** Short stable name, e.g. "adaptive", "nova", "ovirt-minimal-downtime"; actions say "policy:<name>". */
  readonly name: string;
  readonly kind: PolicyKind;
  /**
   * The policy message to send to the nodes: the request's policy with this policy's defaults
   * filled in (e.g. post-copy enabled on demand for oVirt's post-copy schedule).
   */
  readonly effective: MigrationPolicy;
  readonly requirements: PolicyRequirements;
  readonly timeouts: TimeoutRules;
  /** State before the first sample. */
  initialState(): S;
  /**
   * Feeds one progress sample.
   * @param nowMs the migration's elapsed time by the coordinator's (injected) clock. Pass
   *   `sample.elapsedMs` when replaying a trace; pass the clock when ticking without a new sample
   *   (a node that stops reporting must still hit its progress timeout).
   */
  decide(state: S, sample: ProgressSample, nowMs: number): Decision<S>;
  /**
   * Feeds one guest sample (the guest's clock and pace: services/shared/guest/harm.ts), for a
   * policy that measures the guest's harm itself. Pure like `decide`; a replay interleaves guest
   * and progress samples in the order of their times.
   */
  observeGuest?(state: S, sample: GuestPerfSample): S;
  /** The run moved to `to` at host time `atMs` (the coordinator's transitions), for a policy that tracks phases between samples. */
  observeState?(state: S, to: MigrationState, atMs: number): S;
  /** Gives the policy what the VM's earlier runs measured (its prior), before the first sample. */
  withHistory?(state: S, runs: readonly RunCostFigures[]): S;
  /** What this run measured, to be stored with it for the VM's next runs (at its end). */
  costFigures?(state: S): RunCostFigures | undefined;
}

/** Builds the proto action the coordinator records and sends. */
export function toPolicyAction(decision: PolicyDecision, policyName: string, at: Date): PolicyAction {
  return {
    time: at,
    elapsedMs: decision.elapsedMs,
    kind: decision.kind,
    value: decision.value,
    reason: decision.reason,
    actor: `policy:${policyName}`,
  };
}

/** ABORT, START_POSTCOPY and PAUSE_GUEST end a policy's work: after them it stays silent. */
export function isTerminalAction(kind: PolicyActionKind): boolean {
  return (
    kind === PolicyActionKind.POLICY_ACTION_KIND_ABORT ||
    kind === PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY ||
    kind === PolicyActionKind.POLICY_ACTION_KIND_PAUSE_GUEST
  );
}
