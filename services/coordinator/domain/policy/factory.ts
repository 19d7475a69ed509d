/**
 * From the proto MigrationPolicy of a request to a running ConvergencePolicy: validation (every
 * contradiction reported at once, naming the fields: the kind's own rules here, QEMU's from
 * services/shared/policy, the same the node daemon applies), the preset's defaults filled into
 * the zero fields, and the policy object.
 */
import { InvalidArgumentError } from '../../../shared/errors.js';
import {
  MigrationPolicy,
  PolicyActionKind,
  PolicyKind,
  TimeoutAction,
  type DowntimeStep,
  type Postcopy,
} from '../../../shared/gen/migd/v1/common.js';
import { migrationConfigProblems } from '../../../shared/policy/resolve.js';
import { policyProblems } from '../../../shared/policy/validate.js';
import { GiB } from '../units.js';
import { type AdaptiveTuning, AdaptivePolicy } from './adaptive.js';
import {
  ADAPTIVE_DEFAULTS,
  NOVA_DEFAULTS,
  OVIRT_SUSPEND_DOWNTIME_MS,
  QEMU_DOWNTIME_LIMIT_MS,
  QEMU_THROTTLE,
  novaDowntimeSteps,
  presetPolicy,
} from './presets.js';
import { requirementsOf } from './requirements.js';
import { type ScheduleEntry, type StepMode, ScheduledPolicy } from './scheduled.js';
import { KUBEVIRT_STALL_MAX_DOWNTIME_MS, type StallDetectorTuning, StallDetectorPolicy } from './stall-detector.js';
import { resolveTimeouts, timeoutActionKind } from './timeouts.js';
import type { ConvergencePolicy } from './types.js';

const NAMES: Readonly<Partial<Record<PolicyKind, string>>> = {
  [PolicyKind.POLICY_KIND_FIXED]: 'fixed',
  [PolicyKind.POLICY_KIND_ADAPTIVE]: 'adaptive',
  [PolicyKind.POLICY_KIND_NOVA]: 'nova',
  [PolicyKind.POLICY_KIND_OVIRT_MINIMAL_DOWNTIME]: 'ovirt-minimal-downtime',
  [PolicyKind.POLICY_KIND_OVIRT_SUSPEND_WORKLOAD]: 'ovirt-suspend-workload',
  [PolicyKind.POLICY_KIND_OVIRT_POSTCOPY]: 'ovirt-postcopy',
  [PolicyKind.POLICY_KIND_KUBEVIRT]: 'kubevirt',
  [PolicyKind.POLICY_KIND_KUBEVIRT_STALL_DETECTOR]: 'kubevirt-stall-detector',
};

/** The policy's short name ("adaptive", "ovirt-postcopy"…), as used in action actors. */
export function policyName(kind: PolicyKind): string {
  return NAMES[kind || PolicyKind.POLICY_KIND_FIXED] ?? 'unknown';
}

const isOvirt = (k: PolicyKind): boolean =>
  k === PolicyKind.POLICY_KIND_OVIRT_MINIMAL_DOWNTIME || k === PolicyKind.POLICY_KIND_OVIRT_SUSPEND_WORKLOAD || k === PolicyKind.POLICY_KIND_OVIRT_POSTCOPY;

/** Contradictions in the request as given (before defaults). */
function problemsOf(p: MigrationPolicy, kind: PolicyKind): string[] {
  const problems: string[] = [];
  const name = policyName(kind);
  const multifd = p.multifd?.enabled ?? false;
  const pc = p.postcopy;

  if (NAMES[kind] === undefined) problems.push(`unknown policy kind ${String(kind)}`);
  // What QEMU rules out whatever the kind: the rules the node daemon checks too.
  problems.push(...policyProblems(p));

  const steps = p.downtimeSteps;
  if (steps.some((s) => s.afterPasses > 0 && s.afterMs > 0)) problems.push('a downtime step sets either after_passes or after_ms, not both');
  const byTime = steps.some((s) => s.afterMs > 0);
  const byPass = steps.some((s) => s.afterPasses > 0);
  if (byTime && byPass) problems.push('downtime_steps mix after_passes and after_ms; use one kind of schedule');
  for (let i = 1; i < steps.length; i++) {
    const a = steps[i - 1];
    const b = steps[i];
    if (a && b && (b.afterMs < a.afterMs || b.afterPasses < a.afterPasses)) {
      problems.push('downtime_steps must be in ascending order of after_ms/after_passes');
      break;
    }
  }

  const autoTrigger = pc?.enabled && (pc.afterPasses > 0 || pc.afterMs > 0);
  if (kind !== PolicyKind.POLICY_KIND_FIXED && autoTrigger) {
    problems.push(`the ${name} policy decides itself when to switch to post-copy: drop postcopy.after_passes/after_ms (post-copy is used on demand only)`);
  }
  if (kind === PolicyKind.POLICY_KIND_ADAPTIVE && steps.length > 0) problems.push('the adaptive policy chooses its own downtime limits: drop downtime_steps, or use a FIXED policy');
  if ((kind === PolicyKind.POLICY_KIND_KUBEVIRT || kind === PolicyKind.POLICY_KIND_KUBEVIRT_STALL_DETECTOR) && steps.length > 0) problems.push(`the ${name} policy has no downtime schedule: drop downtime_steps, or use a FIXED policy`);
  if (kind === PolicyKind.POLICY_KIND_NOVA && byPass) problems.push('Nova steps the downtime by time: downtime_steps must use after_ms');
  if (isOvirt(kind) && byTime) problems.push('oVirt steps the downtime by pre-copy passes: downtime_steps must use after_passes');
  if (kind === PolicyKind.POLICY_KIND_OVIRT_POSTCOPY) {
    if (multifd) problems.push("oVirt's post-copy schedule ends in post-copy, which multifd rules out");
    if (pc && !pc.enabled) problems.push("oVirt's post-copy schedule needs postcopy.enabled");
  }
  return problems;
}

/** A policy's post-copy settings as its kind uses them: the policy, not the node, triggers it. */
function onDemand(pc: Postcopy): Postcopy {
  return { ...pc, onDemandOnly: true, afterPasses: 0, afterMs: 0, preempt: pc.preempt ?? true };
}

/** The request with the preset's defaults in its zero fields. */
function effectiveOf(p: MigrationPolicy, kind: PolicyKind, vmMemoryBytes: number): MigrationPolicy {
  const preset = presetPolicy(kind);
  const e: MigrationPolicy = {
    ...p,
    kind,
    downtimeLimitMs: p.downtimeLimitMs || preset.downtimeLimitMs,
    maxDowntimeMs: p.maxDowntimeMs || preset.maxDowntimeMs,
    completionTimeoutSecPerGib: p.completionTimeoutSecPerGib || preset.completionTimeoutSecPerGib,
    progressTimeoutSec: p.progressTimeoutSec || preset.progressTimeoutSec,
    timeoutAction: p.timeoutAction || TimeoutAction.TIMEOUT_ACTION_ABORT,
    downtimeSteps: p.downtimeSteps.length > 0 ? p.downtimeSteps : preset.downtimeSteps,
    autoConverge: p.autoConverge ?? preset.autoConverge,
    postcopy: p.postcopy ?? preset.postcopy,
  };
  const multifd = p.multifd?.enabled ?? false;
  if (kind !== PolicyKind.POLICY_KIND_FIXED && e.postcopy?.enabled) e.postcopy = onDemand(e.postcopy);
  if (kind === PolicyKind.POLICY_KIND_ADAPTIVE) {
    if (multifd) e.postcopy = undefined;
    e.autoConverge = {
      enabled: e.autoConverge?.enabled ?? false,
      initialPct: e.autoConverge?.initialPct || QEMU_THROTTLE.initialPct,
      incrementPct: e.autoConverge?.incrementPct || QEMU_THROTTLE.incrementPct,
      maxPct: e.autoConverge?.maxPct || QEMU_THROTTLE.maxPct,
    };
  }
  if (kind === PolicyKind.POLICY_KIND_KUBEVIRT_STALL_DETECTOR) {
    // virt-launcher sets QEMU's target downtime to min(maxDowntimeMs, 300 ms) at the start.
    e.downtimeLimitMs = p.downtimeLimitMs || Math.min(e.maxDowntimeMs, QEMU_DOWNTIME_LIMIT_MS);
  }
  if (kind === PolicyKind.POLICY_KIND_NOVA) {
    // Nova's D is the top of the ramp: max_downtime_ms, default 500.
    const d = e.maxDowntimeMs || NOVA_DEFAULTS.downtimeMs;
    e.maxDowntimeMs = d;
    if (p.downtimeSteps.length === 0) e.downtimeSteps = novaDowntimeSteps(vmMemoryBytes, { downtimeMs: d });
    e.downtimeLimitMs = p.downtimeLimitMs || (e.downtimeSteps[0]?.downtimeMs ?? preset.downtimeLimitMs);
  }
  return MigrationPolicy.fromPartial(e);
}

const triggerOf = (s: DowntimeStep): ScheduleEntry['trigger'] => (s.afterPasses > 0 ? { afterPasses: s.afterPasses } : { afterMs: s.afterMs });

function scheduleOf(e: MigrationPolicy, kind: PolicyKind, vmMemoryBytes: number): { entries: ScheduleEntry[]; mode: StepMode } {
  const steps = e.downtimeSteps;
  const n = steps.length;
  switch (kind) {
    case PolicyKind.POLICY_KIND_NOVA: {
      const gib = Math.max(vmMemoryBytes / GiB, NOVA_DEFAULTS.minDataGib);
      const delay = steps[1] ? `, one every ${steps[1].afterMs / 1000} s for ${gib.toFixed(2)} GiB` : '';
      return {
        mode: 'catch-up',
        entries: steps.map((s, i) => ({ trigger: triggerOf(s), effect: { kind: 'downtime', ms: s.downtimeMs }, label: `Nova downtime step ${i}/${n - 1}${delay}` })),
      };
    }
    case PolicyKind.POLICY_KIND_OVIRT_MINIMAL_DOWNTIME:
    case PolicyKind.POLICY_KIND_OVIRT_SUSPEND_WORKLOAD:
    case PolicyKind.POLICY_KIND_OVIRT_POSTCOPY: {
      const name = policyName(kind);
      const entries: ScheduleEntry[] = steps.map((s, i) => ({ trigger: triggerOf(s), effect: { kind: 'downtime', ms: s.downtimeMs }, label: `oVirt ${name.slice(6)} step ${i + 1}/${n}` }));
      const last = steps[n - 1]?.afterPasses ?? 0;
      const exhausted = `oVirt ${name.slice(6)}: downtime schedule exhausted`;
      if (kind === PolicyKind.POLICY_KIND_OVIRT_MINIMAL_DOWNTIME) {
        entries.push({ trigger: { afterPasses: last + 1 }, effect: { kind: 'abort' }, label: exhausted });
      } else if (kind === PolicyKind.POLICY_KIND_OVIRT_SUSPEND_WORKLOAD) {
        entries.push({ trigger: { afterPasses: last + 1 }, effect: { kind: 'downtime', ms: OVIRT_SUSPEND_DOWNTIME_MS }, label: `${exhausted}, suspending the workload if needed` });
        entries.push({ trigger: { afterPasses: last + 2 }, effect: { kind: 'abort' }, label: `${exhausted}, even at ${OVIRT_SUSPEND_DOWNTIME_MS} ms` });
      } else {
        entries.push({ trigger: { afterPasses: last + 1 }, effect: { kind: 'postcopy' }, label: exhausted });
      }
      return { mode: 'one-per-pass', entries };
    }
    default:
      return { mode: 'catch-up', entries: steps.map((s, i) => ({ trigger: triggerOf(s), effect: { kind: 'downtime', ms: s.downtimeMs }, label: `downtime step ${i + 1}/${n}` })) };
  }
}

/**
 * Validates a request's policy and builds the convergence policy for a guest of
 * `vmMemoryBytes`. The returned policy's `effective` message (defaults filled in) is what the
 * nodes must be sent; its `requirements` are what placement checks.
 * @throws InvalidArgumentError listing every contradiction, each naming its fields
 */
export function policyFor(policy: MigrationPolicy | undefined, vmMemoryBytes: number, opts: { adaptiveTuning?: Partial<AdaptiveTuning>; stallTuning?: Partial<StallDetectorTuning> } = {}): ConvergencePolicy {
  const p = policy ?? MigrationPolicy.fromPartial({});
  const kind = p.kind || PolicyKind.POLICY_KIND_FIXED;
  const problems = problemsOf(p, kind);
  if (!(vmMemoryBytes > 0)) problems.push(`guest memory must be positive, got ${vmMemoryBytes}`);
  const effective = problems.length === 0 ? effectiveOf(p, kind, vmMemoryBytes) : undefined;
  if (effective && effective.maxDowntimeMs > 0 && effective.downtimeLimitMs > effective.maxDowntimeMs) {
    problems.push(`downtime_limit_ms (${effective.downtimeLimitMs}) exceeds max_downtime_ms (${effective.maxDowntimeMs}${p.maxDowntimeMs ? '' : `, the ${policyName(kind)} default`})`);
  }
  if (effective && effective.timeoutAction === TimeoutAction.TIMEOUT_ACTION_FORCE_COMPLETE && !effective.completionTimeoutSecPerGib && !effective.progressTimeoutSec) {
    problems.push(`timeout_action FORCE_COMPLETE is set but the ${policyName(kind)} policy has no completion_timeout_sec_per_gib or progress_timeout_sec`);
  }
  // The effective policy is what the nodes are sent: refuse here what they would refuse.
  if (effective && problems.length === 0) problems.push(...migrationConfigProblems(effective));
  if (!effective || problems.length > 0) throw new InvalidArgumentError(`invalid migration policy: ${problems.join('; ')}`, { reason: 'INVALID_POLICY' });

  const requirements = requirementsOf(effective);
  const timeouts = resolveTimeouts(effective, vmMemoryBytes, {
    postcopy: requirements.postcopy,
    completionPrefersPostcopy: kind === PolicyKind.POLICY_KIND_KUBEVIRT,
    minDataGib: kind === PolicyKind.POLICY_KIND_NOVA ? NOVA_DEFAULTS.minDataGib : 0,
  });

  if (kind === PolicyKind.POLICY_KIND_ADAPTIVE) {
    const postcopyUnavailable = requirements.postcopy
      ? undefined
      : effective.multifd?.enabled
        ? 'multifd is enabled'
        : 'post-copy is disabled in the policy';
    return new AdaptivePolicy({
      effective,
      requirements,
      timeouts,
      maxDowntimeMs: effective.maxDowntimeMs || ADAPTIVE_DEFAULTS.maxDowntimeMs,
      postcopyUnavailable,
      autoConvergeMaxPct: effective.autoConverge?.maxPct || QEMU_THROTTLE.maxPct,
      lastResort: timeoutActionKind(effective.timeoutAction, false),
      tuning: opts.adaptiveTuning,
    });
  }
  if (kind === PolicyKind.POLICY_KIND_KUBEVIRT_STALL_DETECTOR) {
    return new StallDetectorPolicy({ effective, requirements, timeouts, maxDowntimeMs: effective.maxDowntimeMs || KUBEVIRT_STALL_MAX_DOWNTIME_MS, tuning: opts.stallTuning });
  }
  const { entries, mode } = scheduleOf(effective, kind, vmMemoryBytes);
  return new ScheduledPolicy({ name: policyName(kind), kind, effective, requirements, entries, mode, timeouts });
}

/** A request's policy resolved for each guest size it is asked about (see {@link policyResolution}). */
export type PolicyResolution = (vmMemoryBytes: number) => ConvergencePolicy;

/**
 * One request's policy, parsed and validated once per guest size and passed along — to placement,
 * the drain planner, the stored runs and their supervisors — instead of each parsing it again.
 * Convergence policies keep their state outside (`initialState`), so one serves every run.
 * @throws InvalidArgumentError (from the returned function) as {@link policyFor}
 */
export function policyResolution(policy: MigrationPolicy | undefined): PolicyResolution {
  const bySize = new Map<number, ConvergencePolicy>();
  return (vmMemoryBytes) => {
    let c = bySize.get(vmMemoryBytes);
    if (!c) {
      c = policyFor(policy, vmMemoryBytes);
      bySize.set(vmMemoryBytes, c);
    }
    return c;
  };
}

/** The step a user's force-complete request takes under `policy`: post-copy if enabled, else pause. */
export function forceCompleteKindFor(policy: ConvergencePolicy): PolicyActionKind {
  return policy.requirements.postcopy ? PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY : PolicyActionKind.POLICY_ACTION_KIND_PAUSE_GUEST;
}
