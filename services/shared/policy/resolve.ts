/**
 * From a MigrationPolicy to what QEMU is told: capabilities (both ends) and parameters (source,
 * plus the destination's multifd settings), with every combination QEMU 10 refuses rejected up
 * front, before any QEMU is touched (FACTS.md: multifd + post-copy, xbzrle + multifd,
 * dirty-limit under TCG, …). The node resolves the policy it is sent with it; the coordinator
 * runs the same checks ({@link migrationConfigProblems}) on the effective policy at submission,
 * so a plan the nodes would refuse is refused up front. Pure: no I/O.
 */
import { InvalidArgumentError } from '../errors.js';
import {
  MultifdCompression,
  PolicyKind,
  TimeoutAction,
  type MigrationPolicy,
} from '../gen/migd/v1/common.js';
import { QEMU_DEFAULTS } from './limits.js';
import { policyProblems } from './validate.js';

export { QEMU_DEFAULTS } from './limits.js';

/** The resolved, fully defaulted migration configuration. */
export interface MigrationConfig {
  readonly kind: PolicyKind;
  /** Capabilities set on BOTH ends, by QMP name. */
  readonly capabilities: Readonly<Record<string, boolean>>;
  /** Parameters set on the source before `migrate` (QMP names). */
  readonly sourceParameters: Readonly<Record<string, unknown>>;
  /** Parameters set on the destination before `migrate-incoming`. */
  readonly destinationParameters: Readonly<Record<string, unknown>>;
  readonly downtimeLimitMs: number;
  readonly maxBandwidthBytesPerSec: number;
  readonly postcopy: {
    readonly enabled: boolean;
    readonly preempt: boolean;
    /** Switch after this many completed passes (undefined: never automatically). */
    readonly afterPasses: number | undefined;
    /** Switch after this many ms of pre-copy (undefined: no time trigger). */
    readonly afterMs: number | undefined;
  };
  /**
   * Auto-converge is "armed" (capability on, throttle capped at 1 %) so a policy can enable it
   * while the migration runs: QEMU refuses migrate-set-capabilities during a migration, but
   * accepts throttle parameters.
   */
  readonly autoConverge: { readonly enabled: boolean; readonly armed: boolean; readonly initialPct: number; readonly incrementPct: number; readonly maxPct: number };
  readonly tls: boolean;
  readonly completionTimeoutSecPerGib: number;
  readonly progressTimeoutSec: number;
  readonly timeoutAction: TimeoutAction;
}

/** Policies that may escalate while running need post-copy and auto-converge ready from the start. */
function escalates(kind: PolicyKind): boolean {
  return kind === PolicyKind.POLICY_KIND_ADAPTIVE;
}

/** Capabilities that only measure: turned on where supported, never a reason to refuse a node. */
export const OPTIONAL_CAPABILITIES: ReadonlySet<string> = new Set(['postcopy-blocktime']);

/**
 * The QEMU capabilities a policy turns on at both ends (`events` included). QEMU refuses
 * migrate-set-capabilities while a migration runs, so whatever the policy may want later
 * (post-copy, auto-converge for an escalating policy) is on from the start.
 */
export function migrationCapabilities(policy: Partial<MigrationPolicy> | undefined): Record<string, boolean> {
  const p = policy ?? ({} as Partial<MigrationPolicy>);
  const kind = p.kind || PolicyKind.POLICY_KIND_FIXED;
  const multifd = p.multifd?.enabled ?? false;
  const pc = p.postcopy;
  // An escalating policy may switch to post-copy later, unless the policy turned it off explicitly.
  const postcopy = (pc?.enabled ?? false) || (escalates(kind) && !multifd && pc === undefined);
  const capabilities: Record<string, boolean> = { events: true };
  if ((p.autoConverge?.enabled ?? false) || escalates(kind)) capabilities['auto-converge'] = true;
  if (postcopy) {
    capabilities['postcopy-ram'] = true;
    capabilities['return-path'] = true;
    // Measures post-copy stalls on the destination (query-migrate's postcopy-blocktime and
    // per-vCPU blocktimes): the guest time lost to missing pages, which the run's stats report.
    capabilities['postcopy-blocktime'] = true;
  }
  if (postcopy && (pc?.preempt ?? true)) capabilities['postcopy-preempt'] = true;
  if (p.xbzrle?.enabled) capabilities['xbzrle'] = true;
  if (multifd) capabilities['multifd'] = true;
  if (p.switchoverAck) {
    capabilities['switchover-ack'] = true;
    capabilities['return-path'] = true;
  }
  return capabilities;
}

/**
 * Every reason a node would refuse `policy`: {@link policyProblems} plus the checks that need
 * QEMU's defaults filled in, and, when `supported` is given, the capabilities this QEMU lacks.
 */
export function migrationConfigProblems(policy: Partial<MigrationPolicy> | undefined, supported?: ReadonlySet<string>): string[] {
  const p = policy ?? ({} as Partial<MigrationPolicy>);
  const problems = policyProblems(p);
  const ac = p.autoConverge;
  const initialPct = ac?.initialPct || QEMU_DEFAULTS.throttleInitialPct;
  const maxPct = ac?.maxPct || QEMU_DEFAULTS.throttleMaxPct;
  // With QEMU's defaults filled in, a lone max_pct below the default initial is a contradiction.
  if (initialPct > maxPct && !(ac && ac.initialPct > 0 && ac.maxPct > 0)) problems.push(`auto_converge.initial_pct (${initialPct}, QEMU's default) exceeds max_pct (${maxPct})`);
  const downtime = p.downtimeLimitMs || QEMU_DEFAULTS.downtimeLimitMs;
  if (p.maxDowntimeMs && !p.downtimeLimitMs && p.maxDowntimeMs < downtime) problems.push(`max_downtime_ms (${p.maxDowntimeMs}) is below downtime_limit_ms (${downtime}, QEMU's default)`);
  if (supported) {
    for (const cap of Object.keys(migrationCapabilities(p))) {
      // A measurement only: a QEMU without it migrates the same, without the figure.
      if (OPTIONAL_CAPABILITIES.has(cap)) continue;
      if (!supported.has(cap)) problems.push(`this node's QEMU does not support the "${cap}" capability`);
    }
  }
  return problems;
}

/**
 * Resolves and validates a policy against what a node's QEMU supports.
 * @throws InvalidArgumentError (reason INVALID_POLICY) naming every contradiction and missing
 *   capability
 */
export function resolveMigrationConfig(policy: MigrationPolicy | undefined, supported: ReadonlySet<string>): MigrationConfig {
  const p = policy ?? ({} as Partial<MigrationPolicy>);
  const kind = p.kind || PolicyKind.POLICY_KIND_FIXED;
  const problems = migrationConfigProblems(p, supported);
  if (problems.length > 0) throw new InvalidArgumentError(`invalid migration policy: ${problems.join('; ')}`, { reason: 'INVALID_POLICY' });

  const multifd = p.multifd?.enabled ?? false;
  const xbzrle = p.xbzrle?.enabled ?? false;
  const pc = p.postcopy;
  const postcopyRequested = pc?.enabled ?? false;
  const ac = p.autoConverge;
  const acEnabled = ac?.enabled ?? false;
  const initialPct = ac?.initialPct || QEMU_DEFAULTS.throttleInitialPct;
  const incrementPct = ac?.incrementPct || QEMU_DEFAULTS.throttleIncrementPct;
  const maxPct = ac?.maxPct || QEMU_DEFAULTS.throttleMaxPct;
  const downtime = p.downtimeLimitMs || QEMU_DEFAULTS.downtimeLimitMs;
  const channels = p.multifd?.channels || QEMU_DEFAULTS.multifdChannels;
  const compression = p.multifd?.compression ?? MultifdCompression.MULTIFD_COMPRESSION_UNSPECIFIED;
  const level = p.multifd?.compressionLevel ?? 0;
  const capabilities = migrationCapabilities(p);
  const postcopy = capabilities['postcopy-ram'] === true;
  const preempt = capabilities['postcopy-preempt'] === true;

  const armed = escalates(kind) && !acEnabled;
  const src: Record<string, unknown> = {
    'downtime-limit': downtime,
    // QEMU's default is 128 MiB/s; 0 would mean "no limit" only for some parameters, so an
    // explicit "unlimited" is a very large number.
    'max-bandwidth': p.maxBandwidthBytesPerSec || Number.MAX_SAFE_INTEGER,
  };
  if (capabilities['auto-converge']) {
    src['cpu-throttle-initial'] = armed ? 1 : initialPct;
    src['cpu-throttle-increment'] = armed ? 1 : incrementPct;
    src['max-cpu-throttle'] = armed ? 1 : maxPct;
  }
  if (xbzrle) src['xbzrle-cache-size'] = p.xbzrle?.cacheBytes || QEMU_DEFAULTS.xbzrleCacheBytes;
  const dst: Record<string, unknown> = {};
  if (multifd) {
    const comp = compression === MultifdCompression.MULTIFD_COMPRESSION_ZLIB ? 'zlib' : compression === MultifdCompression.MULTIFD_COMPRESSION_ZSTD ? 'zstd' : 'none';
    for (const target of [src, dst]) {
      target['multifd-channels'] = channels;
      target['multifd-compression'] = comp;
      if (comp === 'zlib' && level) target['multifd-zlib-level'] = level;
      if (comp === 'zstd' && level) target['multifd-zstd-level'] = level;
    }
  }

  const autoPasses = postcopyRequested && !pc?.onDemandOnly ? pc?.afterPasses || (pc?.afterMs ? undefined : 1) : undefined;
  return Object.freeze({
    kind,
    capabilities: Object.freeze(capabilities),
    sourceParameters: Object.freeze(src),
    destinationParameters: Object.freeze(dst),
    downtimeLimitMs: downtime,
    maxBandwidthBytesPerSec: p.maxBandwidthBytesPerSec ?? 0,
    postcopy: Object.freeze({
      enabled: postcopy,
      preempt,
      afterPasses: autoPasses,
      afterMs: postcopyRequested && !pc?.onDemandOnly && pc?.afterMs ? pc.afterMs : undefined,
    }),
    autoConverge: Object.freeze({ enabled: acEnabled, armed, initialPct, incrementPct, maxPct }),
    tls: p.tls ?? false,
    completionTimeoutSecPerGib: p.completionTimeoutSecPerGib ?? 0,
    progressTimeoutSec: p.progressTimeoutSec ?? 0,
    timeoutAction: p.timeoutAction || TimeoutAction.TIMEOUT_ACTION_ABORT,
  });
}
