/**
 * From a MigrationPolicy to what QEMU is told: capabilities (both ends) and parameters (source,
 * plus the destination's multifd settings), with every combination QEMU 10 refuses rejected up
 * front, before any QEMU is touched (FACTS.md: multifd + post-copy, xbzrle + multifd,
 * dirty-limit under TCG, …). Pure: no I/O.
 */
import { InvalidArgumentError } from '../../shared/errors.js';
import {
  MultifdCompression,
  PolicyKind,
  TimeoutAction,
  type MigrationPolicy,
} from '../../shared/gen/migd/v1/common.js';

/** QEMU's defaults we start from (measured on 10.0.2). */
export const QEMU_DEFAULTS = Object.freeze({
  downtimeLimitMs: 300,
  throttleInitialPct: 20,
  throttleIncrementPct: 10,
  throttleMaxPct: 99,
  multifdChannels: 2,
  xbzrleCacheBytes: 64 * 1024 * 1024,
  maxDowntimeMs: 2_000_000,
});

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

/**
 * Resolves and validates a policy against what a node's QEMU supports.
 * @throws InvalidArgumentError naming the contradiction or the missing capability.
 */
export function resolveMigrationConfig(policy: MigrationPolicy | undefined, supported: ReadonlySet<string>): MigrationConfig {
  const p = policy ?? ({} as Partial<MigrationPolicy>);
  const kind = p.kind || PolicyKind.POLICY_KIND_FIXED;
  const problems: string[] = [];

  const multifd = p.multifd?.enabled ?? false;
  const xbzrle = p.xbzrle?.enabled ?? false;
  const pc = p.postcopy;
  const postcopyRequested = pc?.enabled ?? false;
  // An escalating policy may switch to post-copy later, unless the policy turned it off explicitly.
  const postcopy = postcopyRequested || (escalates(kind) && !multifd && pc === undefined);
  const ac = p.autoConverge;
  const acEnabled = ac?.enabled ?? false;

  if (multifd && postcopyRequested) problems.push('multifd cannot be combined with post-copy (QEMU: "Postcopy is not yet compatible with multifd")');
  if (multifd && xbzrle) problems.push('xbzrle cannot be combined with multifd (QEMU refuses it)');
  if (!multifd && p.multifd && (p.multifd.channels > 0 || (p.multifd.compression !== MultifdCompression.MULTIFD_COMPRESSION_UNSPECIFIED && p.multifd.compression !== MultifdCompression.MULTIFD_COMPRESSION_NONE))) {
    problems.push('multifd.channels/compression are set but multifd.enabled is false');
  }
  if (!xbzrle && p.xbzrle && p.xbzrle.cacheBytes > 0) problems.push('xbzrle.cache_bytes is set but xbzrle.enabled is false');
  if (!postcopyRequested && pc && (pc.afterPasses > 0 || pc.afterMs > 0 || pc.onDemandOnly || pc.preempt === true)) {
    problems.push('postcopy.after_passes/after_ms/on_demand_only/preempt are set but postcopy.enabled is false');
  }
  if (pc?.onDemandOnly && (pc.afterPasses > 0 || pc.afterMs > 0)) problems.push('postcopy.on_demand_only contradicts postcopy.after_passes/after_ms');
  const initialPct = ac?.initialPct || QEMU_DEFAULTS.throttleInitialPct;
  const incrementPct = ac?.incrementPct || QEMU_DEFAULTS.throttleIncrementPct;
  const maxPct = ac?.maxPct || QEMU_DEFAULTS.throttleMaxPct;
  if (!acEnabled && ac && (ac.initialPct > 0 || ac.incrementPct > 0 || ac.maxPct > 0) && !escalates(kind)) {
    problems.push('auto_converge percentages are set but auto_converge.enabled is false');
  }
  if (initialPct > 99 || incrementPct > 100 || maxPct > 99) problems.push('auto_converge: initial and max must be 1..99, increment 1..100');
  if (initialPct > maxPct) problems.push(`auto_converge.initial_pct (${initialPct}) exceeds max_pct (${maxPct})`);
  const downtime = p.downtimeLimitMs || QEMU_DEFAULTS.downtimeLimitMs;
  if (downtime > QEMU_DEFAULTS.maxDowntimeMs) problems.push(`downtime_limit_ms ${downtime} exceeds QEMU's maximum ${QEMU_DEFAULTS.maxDowntimeMs}`);
  if (p.maxDowntimeMs && p.maxDowntimeMs < downtime) problems.push(`max_downtime_ms (${p.maxDowntimeMs}) is below downtime_limit_ms (${downtime})`);
  const channels = p.multifd?.channels || QEMU_DEFAULTS.multifdChannels;
  if (channels > 255) problems.push('multifd.channels must be 1..255');
  const compression = p.multifd?.compression ?? MultifdCompression.MULTIFD_COMPRESSION_UNSPECIFIED;
  const level = p.multifd?.compressionLevel ?? 0;
  if (compression === MultifdCompression.MULTIFD_COMPRESSION_ZLIB && level > 9) problems.push('multifd.compression_level for zlib must be 0..9');
  if (compression === MultifdCompression.MULTIFD_COMPRESSION_ZSTD && level > 20) problems.push('multifd.compression_level for zstd must be 0..20');
  for (const s of p.downtimeSteps ?? []) if (s.downtimeMs <= 0 || s.downtimeMs > QEMU_DEFAULTS.maxDowntimeMs) problems.push(`downtime step ${s.downtimeMs} ms is out of range`);

  const capabilities: Record<string, boolean> = { events: true };
  if (acEnabled || escalates(kind)) capabilities['auto-converge'] = true;
  if (postcopy) {
    capabilities['postcopy-ram'] = true;
    capabilities['return-path'] = true;
  }
  const preempt = postcopy && (pc?.preempt ?? true);
  if (preempt) capabilities['postcopy-preempt'] = true;
  if (xbzrle) capabilities['xbzrle'] = true;
  if (multifd) capabilities['multifd'] = true;
  if (p.switchoverAck) {
    capabilities['switchover-ack'] = true;
    capabilities['return-path'] = true;
  }
  for (const cap of Object.keys(capabilities)) {
    if (!supported.has(cap)) problems.push(`this node's QEMU does not support the "${cap}" capability`);
  }
  if (problems.length > 0) throw new InvalidArgumentError(`invalid migration policy: ${problems.join('; ')}`, { reason: 'INVALID_POLICY' });

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
