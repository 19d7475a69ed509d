/**
 * Named presets: the platforms' convergence behaviour expressed as migd MigrationPolicy messages,
 * so users and the scenario lab run them side by side through the same machinery, and the fixed
 * strategies of the seed studies.
 *
 * Sources, and how they were read:
 * - Nova (libvirt driver, nova/virt/libvirt/migration.py): `downtime_steps(data_gb)` yields
 *   (delay·i, D/steps + i·(D − D/steps)/steps) for i = 0..steps with delay = 75 s × data_gb,
 *   defaults D = 500 ms, steps = 10; `update_downtime` applies the latest step whose time has
 *   passed. The completion timeout is 800 s × data_gb, then `live_migration_timeout_action`
 *   (abort, or force_complete = post-copy if permitted else pause). Nova counts guest RAM below
 *   2 GiB as 2 GiB in data_gb; we keep that floor (disk is not migrated by migd). Post-copy and
 *   auto-converge are off by default (live_migration_permit_*); Nova's progress timeout is gone.
 * - oVirt (engine migration policies executed by vdsm's convergence schedule): initial downtime
 *   100 ms, then on stalling iterations 1 → 150, 2 → 200, 3 → 300, 4 → 400, 6 → 500 ms, then the
 *   policy's final step. vdsm takes at most one schedule entry per new iteration it observes; the
 *   final entries (limit −1) are taken at the next new iterations after the ramp. Our reading:
 *   "iteration N" = N completed pre-copy passes; the final step(s) follow one pass apart:
 *   minimal downtime aborts after pass 7; suspend-workload sets 5000 ms after pass 7 and aborts
 *   after pass 8; post-copy switches after pass 7 (post-copy enabled on demand only, without
 *   preempt — vdsm never asked for it). oVirt's own progress/max-time timeouts are the legacy
 *   path and are not used with a schedule, so these presets have none (set them to add some).
 * - KubeVirt (virt-launcher's migration monitor): completionTimeoutPerGiB 150 s,
 *   progressTimeout 150 s (remaining data not reaching a new low), both abort; with
 *   allowPostCopy the completion timeout switches to post-copy instead. Bandwidth unlimited,
 *   no auto-converge, no post-copy by default. Queue limits: 2 outbound per node, 5 per cluster
 *   (see scheduler DEFAULT_LIMITS).
 */
import {
  MigrationPolicy,
  MultifdCompression,
  PolicyKind,
  TimeoutAction,
  type DowntimeStep,
} from '../../../shared/gen/migd/v1/common.js';
import { QEMU_DEFAULTS } from '../../../shared/policy/limits.js';
import { GiB } from '../units.js';
import { KUBEVIRT_STALL_MAX_DOWNTIME_MS } from './stall-detector.js';

/** QEMU's own defaults (measured on 10.0.2, FACTS.md; services/shared/policy/limits.ts). */
export const QEMU_DOWNTIME_LIMIT_MS = QEMU_DEFAULTS.downtimeLimitMs;
export const QEMU_THROTTLE = Object.freeze({ initialPct: QEMU_DEFAULTS.throttleInitialPct, incrementPct: QEMU_DEFAULTS.throttleIncrementPct, maxPct: QEMU_DEFAULTS.throttleMaxPct });

/** Nova's defaults. */
export const NOVA_DEFAULTS = Object.freeze({
  downtimeMs: 500,
  steps: 10,
  delaySecPerGib: 75,
  completionTimeoutSecPerGib: 800,
  /** Nova's data_gb never goes below 2 GiB of RAM. */
  minDataGib: 2,
});

/** oVirt's downtime ramp by completed passes (shared by its three schedules). */
export const OVIRT_INITIAL_DOWNTIME_MS = 100;
export const OVIRT_STEPS: readonly DowntimeStep[] = Object.freeze(
  [
    [1, 150],
    [2, 200],
    [3, 300],
    [4, 400],
    [6, 500],
  ].map(([afterPasses, downtimeMs]) => ({ afterPasses: afterPasses ?? 0, afterMs: 0, downtimeMs: downtimeMs ?? 0 })),
);
/** "Suspend workload if needed" ends with this downtime. */
export const OVIRT_SUSPEND_DOWNTIME_MS = 5000;

export const KUBEVIRT_DEFAULTS = Object.freeze({ completionTimeoutSecPerGib: 150, progressTimeoutSec: 150 });

/**
 * Adaptive defaults: 2 s as the largest acceptable pause; timeouts only as a backstop behind the
 * policy's own escalation — KubeVirt's 150 s progress timeout, and twice its completion budget
 * (300 s/GiB), because on a slow link the first pass alone can take ~90 s/GiB (100 Mbit) and the
 * policy needs a few passes after it to see, act and let the action work.
 */
export const ADAPTIVE_DEFAULTS = Object.freeze({ maxDowntimeMs: 2000, completionTimeoutSecPerGib: 300, progressTimeoutSec: 150 });

/**
 * Nova's time-based downtime ramp for a guest of `memoryBytes`:
 * step i (0..steps) at i × delay, downtime ⌊D/steps + i·(D − D/steps)/steps⌋ ms,
 * delay = ⌊delaySecPerGib × max(GiB, minDataGib)⌋ s.
 */
export function novaDowntimeSteps(
  memoryBytes: number,
  opts: { downtimeMs?: number; steps?: number; delaySecPerGib?: number; minDataGib?: number } = {},
): DowntimeStep[] {
  const d = opts.downtimeMs ?? NOVA_DEFAULTS.downtimeMs;
  const steps = opts.steps ?? NOVA_DEFAULTS.steps;
  const dataGib = Math.max(memoryBytes / GiB, opts.minDataGib ?? NOVA_DEFAULTS.minDataGib);
  const delaySec = Math.trunc((opts.delaySecPerGib ?? NOVA_DEFAULTS.delaySecPerGib) * dataGib);
  const base = d / steps;
  const offset = (d - base) / steps;
  const out: DowntimeStep[] = [];
  for (let i = 0; i <= steps; i++) out.push({ afterPasses: 0, afterMs: delaySec * i * 1000, downtimeMs: Math.trunc(base + offset * i) });
  return out;
}

/**
 * The preset's MigrationPolicy: every parameter the preset implies, including the capabilities
 * the node must enable at start. Nova's ramp depends on guest memory: pass `vmMemoryBytes` to
 * have it filled in; without it `downtime_steps` stays empty and policyFor computes it.
 */
export function presetPolicy(kind: PolicyKind, opts: { vmMemoryBytes?: number } = {}): MigrationPolicy {
  switch (kind) {
    case PolicyKind.POLICY_KIND_UNSPECIFIED:
    case PolicyKind.POLICY_KIND_FIXED:
      return MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_FIXED, downtimeLimitMs: QEMU_DOWNTIME_LIMIT_MS, timeoutAction: TimeoutAction.TIMEOUT_ACTION_ABORT });
    case PolicyKind.POLICY_KIND_ADAPTIVE:
      return MigrationPolicy.fromPartial({
        kind,
        downtimeLimitMs: QEMU_DOWNTIME_LIMIT_MS,
        maxDowntimeMs: ADAPTIVE_DEFAULTS.maxDowntimeMs,
        // Armed, not enabled: the node sets the capability with the throttle capped at 1 %.
        autoConverge: { enabled: false, ...QEMU_THROTTLE },
        // The policy decides when to switch.
        postcopy: { enabled: true, onDemandOnly: true, preempt: true },
        completionTimeoutSecPerGib: ADAPTIVE_DEFAULTS.completionTimeoutSecPerGib,
        progressTimeoutSec: ADAPTIVE_DEFAULTS.progressTimeoutSec,
        timeoutAction: TimeoutAction.TIMEOUT_ACTION_ABORT,
      });
    case PolicyKind.POLICY_KIND_NOVA: {
      const steps = opts.vmMemoryBytes !== undefined ? novaDowntimeSteps(opts.vmMemoryBytes) : [];
      return MigrationPolicy.fromPartial({
        kind,
        // Nova's step 0 (D/steps) is in force from the start.
        downtimeLimitMs: NOVA_DEFAULTS.downtimeMs / NOVA_DEFAULTS.steps,
        maxDowntimeMs: NOVA_DEFAULTS.downtimeMs,
        downtimeSteps: steps,
        completionTimeoutSecPerGib: NOVA_DEFAULTS.completionTimeoutSecPerGib,
        timeoutAction: TimeoutAction.TIMEOUT_ACTION_ABORT,
      });
    }
    case PolicyKind.POLICY_KIND_OVIRT_MINIMAL_DOWNTIME:
    case PolicyKind.POLICY_KIND_OVIRT_SUSPEND_WORKLOAD:
      return MigrationPolicy.fromPartial({ kind, downtimeLimitMs: OVIRT_INITIAL_DOWNTIME_MS, downtimeSteps: [...OVIRT_STEPS], timeoutAction: TimeoutAction.TIMEOUT_ACTION_ABORT });
    case PolicyKind.POLICY_KIND_OVIRT_POSTCOPY:
      return MigrationPolicy.fromPartial({
        kind,
        downtimeLimitMs: OVIRT_INITIAL_DOWNTIME_MS,
        downtimeSteps: [...OVIRT_STEPS],
        postcopy: { enabled: true, onDemandOnly: true, preempt: false },
        timeoutAction: TimeoutAction.TIMEOUT_ACTION_ABORT,
      });
    case PolicyKind.POLICY_KIND_KUBEVIRT_STALL_DETECTOR:
      // VEP 248's defaults: maxDowntimeMs 900, QEMU's target min(900, 300) at the start, the
      // completion budget of 150 s/GiB (the stall path acts long before), no legacy progress timeout.
      return MigrationPolicy.fromPartial({
        kind,
        downtimeLimitMs: Math.min(KUBEVIRT_STALL_MAX_DOWNTIME_MS, QEMU_DOWNTIME_LIMIT_MS),
        maxDowntimeMs: KUBEVIRT_STALL_MAX_DOWNTIME_MS,
        completionTimeoutSecPerGib: KUBEVIRT_DEFAULTS.completionTimeoutSecPerGib,
        timeoutAction: TimeoutAction.TIMEOUT_ACTION_ABORT,
      });
    case PolicyKind.POLICY_KIND_KUBEVIRT:
      return MigrationPolicy.fromPartial({
        kind,
        downtimeLimitMs: QEMU_DOWNTIME_LIMIT_MS,
        completionTimeoutSecPerGib: KUBEVIRT_DEFAULTS.completionTimeoutSecPerGib,
        progressTimeoutSec: KUBEVIRT_DEFAULTS.progressTimeoutSec,
        timeoutAction: TimeoutAction.TIMEOUT_ACTION_ABORT,
      });
    default:
      return presetPolicy(PolicyKind.POLICY_KIND_FIXED);
  }
}

/** The fixed strategies the seed studies compare (001: Nova/Mirantis scenarios; 002/003: guestperf). */
export type FixedStrategy =
  | { readonly strategy: 'precopy'; readonly downtimeMs?: number; readonly bandwidthBytesPerSec?: number }
  | { readonly strategy: 'auto-converge'; readonly initialPct?: number; readonly incrementPct?: number; readonly downtimeMs?: number }
  | { readonly strategy: 'postcopy-after-passes'; readonly passes?: number; readonly preempt?: boolean }
  | { readonly strategy: 'postcopy-after-ms'; readonly afterMs: number; readonly preempt?: boolean }
  | { readonly strategy: 'xbzrle'; readonly cacheBytes?: number }
  | { readonly strategy: 'multifd'; readonly channels?: number; readonly compression?: MultifdCompression };

/**
 * A FIXED MigrationPolicy for one of the seeds' strategies. The node carries out the
 * capability-level behaviour (throttling, the post-copy trigger); the policy adds only the
 * timeouts given in `timeouts`.
 */
export function fixedPolicy(
  s: FixedStrategy,
  timeouts: { completionTimeoutSecPerGib?: number; progressTimeoutSec?: number; timeoutAction?: TimeoutAction } = {},
): MigrationPolicy {
  const base = { kind: PolicyKind.POLICY_KIND_FIXED, downtimeLimitMs: QEMU_DOWNTIME_LIMIT_MS, ...timeouts };
  switch (s.strategy) {
    case 'precopy':
      return MigrationPolicy.fromPartial({ ...base, downtimeLimitMs: s.downtimeMs ?? QEMU_DOWNTIME_LIMIT_MS, maxBandwidthBytesPerSec: s.bandwidthBytesPerSec ?? 0 });
    case 'auto-converge':
      return MigrationPolicy.fromPartial({
        ...base,
        downtimeLimitMs: s.downtimeMs ?? QEMU_DOWNTIME_LIMIT_MS,
        autoConverge: { enabled: true, initialPct: s.initialPct ?? QEMU_THROTTLE.initialPct, incrementPct: s.incrementPct ?? QEMU_THROTTLE.incrementPct, maxPct: QEMU_THROTTLE.maxPct },
      });
    case 'postcopy-after-passes':
      return MigrationPolicy.fromPartial({ ...base, postcopy: { enabled: true, afterPasses: s.passes ?? 1, preempt: s.preempt ?? true } });
    case 'postcopy-after-ms':
      return MigrationPolicy.fromPartial({ ...base, postcopy: { enabled: true, afterMs: s.afterMs, preempt: s.preempt ?? true } });
    case 'xbzrle':
      return MigrationPolicy.fromPartial({ ...base, xbzrle: { enabled: true, cacheBytes: s.cacheBytes ?? 64 * 1024 * 1024 } });
    case 'multifd':
      return MigrationPolicy.fromPartial({ ...base, multifd: { enabled: true, channels: s.channels ?? 2, compression: s.compression ?? MultifdCompression.MULTIFD_COMPRESSION_NONE } });
  }
}

/**
 * KubeVirt's MigrationPolicy / MigrationConfiguration fields (kubevirt.io/user-guide, "migration
 * policies"; the API's V1MigrationConfiguration), as the user writes them there.
 */
export interface KubevirtMigrationFields {
  /** Seconds per GiB of guest memory before the completion timeout (KubeVirt default 150). */
  readonly completionTimeoutPerGiB?: number;
  /** Seconds without a new low of remaining data before the migration is cancelled (default 150). */
  readonly progressTimeout?: number;
  /** Throttle the vCPUs from the start (libvirt VIR_MIGRATE_AUTO_CONVERGE; default false). */
  readonly allowAutoConverge?: boolean;
  /** Start in pre-copy and switch to post-copy when the completion timeout triggers (default false). */
  readonly allowPostCopy?: boolean;
  /** bytes/s per migration, 0 = unlimited (the default). */
  readonly bandwidthPerMigration?: number;
  /** The MigrationStallDetection feature gate (VEP 248, alpha in 1.9): the stall detector decides the switch-over. */
  readonly stallDetection?: boolean;
  /** VEP 248: the largest acceptable final pause on the pre-copy-only stall path (default 900). */
  readonly maxDowntimeMs?: number;
}

/**
 * The KUBEVIRT preset with KubeVirt's own knobs, so a user can run "what KubeVirt would do" with a
 * given MigrationPolicy and compare it with the adaptive policy. What each knob does in KubeVirt's
 * virt-launcher monitor, and here: the completion timeout aborts, or switches to post-copy when
 * allowPostCopy (post-copy only then: no preempt, no earlier trigger); the progress timeout
 * aborts; allowAutoConverge throttles from the start with QEMU's 20/10 ramp; the downtime limit
 * stays QEMU's 300 ms (KubeVirt does not set one).
 * @throws RangeError on a negative or non-finite field
 */
export function kubevirtPolicy(f: KubevirtMigrationFields = {}): MigrationPolicy {
  for (const [k, v] of Object.entries(f)) {
    if (typeof v === 'number' && !(Number.isFinite(v) && v >= 0)) throw new RangeError(`kubevirt ${k} must be a finite number >= 0, not ${v}`);
  }
  if (f.maxDowntimeMs !== undefined && !f.stallDetection) throw new RangeError('kubevirt maxDowntimeMs belongs to the stall detector (stallDetection: true)');
  const stall = f.stallDetection === true;
  const max = f.maxDowntimeMs ?? KUBEVIRT_STALL_MAX_DOWNTIME_MS;
  return MigrationPolicy.fromPartial({
    ...presetPolicy(stall ? PolicyKind.POLICY_KIND_KUBEVIRT_STALL_DETECTOR : PolicyKind.POLICY_KIND_KUBEVIRT),
    ...(stall ? { maxDowntimeMs: max, downtimeLimitMs: Math.min(max, QEMU_DOWNTIME_LIMIT_MS) } : {}),
    completionTimeoutSecPerGib: f.completionTimeoutPerGiB ?? KUBEVIRT_DEFAULTS.completionTimeoutSecPerGib,
    // With the stall detector the legacy progress timeout is not on the stall path (VEP 248).
    progressTimeoutSec: f.progressTimeout ?? (stall ? 0 : KUBEVIRT_DEFAULTS.progressTimeoutSec),
    maxBandwidthBytesPerSec: f.bandwidthPerMigration ?? 0,
    ...(f.allowAutoConverge ? { autoConverge: { enabled: true, ...QEMU_THROTTLE } } : {}),
    ...(f.allowPostCopy ? { postcopy: { enabled: true, onDemandOnly: true, preempt: false } } : {}),
  });
}
