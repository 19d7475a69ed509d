/**
 * Convergence policies: pure functions from a migration's progress trace to actions. Start with
 * {@link policyFor} (a request's MigrationPolicy → ConvergencePolicy) or {@link presetPolicy}.
 */
export type { ConvergencePolicy, Decision, PolicyDecision, PolicyRequirements, TimeoutRules } from './types.js';
export { isTerminalAction, toPolicyAction } from './types.js';
export { type AdaptiveAssessment, type AdaptiveConfig, type AdaptivePrediction, type AdaptiveReading, type AdaptiveState, type AdaptiveTuning, AdaptivePolicy, type BacklogPlateau, type BoundEvidence, type DirtySet, type PlateauEvidence, DEFAULT_ADAPTIVE_TUNING, backlogPlateau } from './adaptive.js';
export { type ScheduleConfig, type ScheduleEffect, type ScheduleEntry, type ScheduleTrigger, type ScheduledState, type StepMode, ScheduledPolicy } from './scheduled.js';
export { KUBEVIRT_STALL_DEFAULTS, KUBEVIRT_STALL_MAX_DOWNTIME_MS, type StallDetectorConfig, type StallDetectorState, type StallDetectorTuning, StallDetectorPolicy } from './stall-detector.js';
export { type TimeoutState, checkTimeouts, completionBudgetMs, forceCompleteKind, resolveTimeouts, timeoutActionKind, trackProgress } from './timeouts.js';
export { requirementsOf } from './requirements.js';
export {
  ADAPTIVE_DEFAULTS,
  type FixedStrategy,
  KUBEVIRT_DEFAULTS,
  NOVA_DEFAULTS,
  OVIRT_INITIAL_DOWNTIME_MS,
  OVIRT_STEPS,
  OVIRT_SUSPEND_DOWNTIME_MS,
  QEMU_DOWNTIME_LIMIT_MS,
  QEMU_THROTTLE,
  fixedPolicy,
  novaDowntimeSteps,
  kubevirtPolicy,
  type KubevirtMigrationFields,
  presetPolicy,
} from './presets.js';
export { forceCompleteKindFor, policyFor, policyName, policyResolution, type PolicyResolution } from './factory.js';
export { type CostModel, DEFAULT_COST_MODEL, type StepCost, LIKE_FOR_LIKE_RUNS, cheapest, likeForLike, postcopyCost, precopyCost, withMeasuredRaise } from './cost.js';
export {
  BLEND_PRIOR_SAMPLES,
  type GuestPaceSample,
  type GuestPhase,
  type GuestTally,
  MIN_PACE_SAMPLES,
  PRIOR_WEIGHT,
  type PhaseTally,
  type RunCostFigures,
  blendedCostModel,
  enterPhase,
  enterRaise,
  type GuestCostTrack,
  replayCostTrack,
  trackAction,
  trackGuestSample,
  trackProgressSample,
  trackTransition,
  trackedCostFigures,
  initialGuestTally,
  measuredPrecopyHarm,
  phaseLostMs,
  priorFromHistory,
  workingSetFromHistory,
  type WorkingSetHistory,
  runCostFigures,
  tallyGuestSample,
} from './measured.js';
