/**
 * The contradictions of a MigrationPolicy that QEMU (or the meaning of the fields) rules out,
 * whatever the policy kind: written once, run by the coordinator at submission (inside the
 * domain's `policyFor`) and by the node before it touches QEMU (inside `resolveMigrationConfig`).
 * Values are checked as given; checks that need QEMU's defaults filled in are in resolve.ts.
 * Pure.
 */
import { MultifdCompression, PolicyKind, type MigrationPolicy } from '../gen/migd/v1/common.js';
import { QEMU_LIMITS } from './limits.js';

/** Every contradiction in `p`, each naming its fields (empty: none). */
export function policyProblems(p: Partial<MigrationPolicy>): string[] {
  const problems: string[] = [];
  const kind = p.kind || PolicyKind.POLICY_KIND_FIXED;
  const mf = p.multifd;
  const multifd = mf?.enabled ?? false;
  const pc = p.postcopy;
  const postcopy = pc?.enabled ?? false;
  const ac = p.autoConverge;

  if (multifd && postcopy) problems.push('multifd cannot be combined with post-copy (QEMU: "Postcopy is not yet compatible with multifd")');
  if (multifd && p.xbzrle?.enabled) problems.push('xbzrle cannot be combined with multifd (QEMU refuses it)');
  if (mf && !multifd && (mf.channels > 0 || (mf.compression !== MultifdCompression.MULTIFD_COMPRESSION_UNSPECIFIED && mf.compression !== MultifdCompression.MULTIFD_COMPRESSION_NONE) || mf.compressionLevel > 0)) {
    problems.push('multifd.channels/compression are set but multifd.enabled is false');
  }
  if (mf && mf.channels > QEMU_LIMITS.maxMultifdChannels) problems.push(`multifd.channels must be 1..${QEMU_LIMITS.maxMultifdChannels}`);
  if (mf?.compression === MultifdCompression.MULTIFD_COMPRESSION_ZLIB && mf.compressionLevel > QEMU_LIMITS.maxZlibLevel) problems.push(`multifd.compression_level for zlib must be 0..${QEMU_LIMITS.maxZlibLevel}`);
  if (mf?.compression === MultifdCompression.MULTIFD_COMPRESSION_ZSTD && mf.compressionLevel > QEMU_LIMITS.maxZstdLevel) problems.push(`multifd.compression_level for zstd must be 0..${QEMU_LIMITS.maxZstdLevel}`);
  if (p.xbzrle && !p.xbzrle.enabled && p.xbzrle.cacheBytes > 0) problems.push('xbzrle.cache_bytes is set but xbzrle.enabled is false');
  if (pc && !postcopy && (pc.afterPasses > 0 || pc.afterMs > 0 || pc.onDemandOnly || pc.preempt === true)) {
    problems.push('postcopy.after_passes/after_ms/on_demand_only/preempt are set but postcopy.enabled is false');
  }
  if (pc?.onDemandOnly && (pc.afterPasses > 0 || pc.afterMs > 0)) problems.push('postcopy.on_demand_only contradicts postcopy.after_passes/after_ms');
  if (ac) {
    // The adaptive policy arms auto-converge with percentages but without enabling it.
    if (!ac.enabled && kind !== PolicyKind.POLICY_KIND_ADAPTIVE && (ac.initialPct > 0 || ac.incrementPct > 0 || ac.maxPct > 0)) {
      problems.push('auto_converge percentages are set but auto_converge.enabled is false');
    }
    if (ac.initialPct > QEMU_LIMITS.maxThrottlePct || ac.maxPct > QEMU_LIMITS.maxThrottlePct || ac.incrementPct > QEMU_LIMITS.maxThrottleIncrementPct) {
      problems.push(`auto_converge: initial_pct and max_pct must be 1..${QEMU_LIMITS.maxThrottlePct}, increment_pct 1..${QEMU_LIMITS.maxThrottleIncrementPct}`);
    }
    if (ac.initialPct > 0 && ac.maxPct > 0 && ac.initialPct > ac.maxPct) problems.push(`auto_converge.initial_pct (${ac.initialPct}) exceeds max_pct (${ac.maxPct})`);
  }
  const max = QEMU_LIMITS.maxDowntimeMs;
  if ((p.downtimeLimitMs ?? 0) > max) problems.push(`downtime_limit_ms ${p.downtimeLimitMs} exceeds QEMU's maximum ${max}`);
  if ((p.maxDowntimeMs ?? 0) > max) problems.push(`max_downtime_ms ${p.maxDowntimeMs} exceeds QEMU's maximum ${max}`);
  if (p.maxDowntimeMs && p.downtimeLimitMs && p.maxDowntimeMs < p.downtimeLimitMs) problems.push(`max_downtime_ms (${p.maxDowntimeMs}) is below downtime_limit_ms (${p.downtimeLimitMs})`);
  const steps = p.downtimeSteps ?? [];
  if (steps.some((s) => s.downtimeMs <= 0)) problems.push('every downtime step needs downtime_ms > 0');
  for (const s of steps) if (s.downtimeMs > max) problems.push(`downtime step ${s.downtimeMs} ms exceeds QEMU's maximum ${max}`);
  return problems;
}
