/**
 * Request-time validation of a MigrationPolicy: the domain's `policyFor` contradictions plus the
 * ones the node daemon's resolver (services/node/migration/config.ts, which the coordinator may
 * not import) would only find when the migration starts, so that a plan is refused up front
 * instead of producing runs that fail on their first node call. Pure.
 */
import { InvalidArgumentError } from '../shared/errors.js';
import { MultifdCompression, PolicyKind, type MigrationPolicy } from '../shared/gen/migd/v1/common.js';
import { policyFor } from './domain/policy/factory.js';
import type { ConvergencePolicy } from './domain/policy/types.js';

/** QEMU's largest downtime-limit (ms), as the node enforces it. */
export const QEMU_MAX_DOWNTIME_MS = 2_000_000;

/** Contradictions `policyFor` does not report (fields set for a feature that is off, ranges). */
export function extraPolicyProblems(p: MigrationPolicy): string[] {
  const problems: string[] = [];
  const kind = p.kind || PolicyKind.POLICY_KIND_FIXED;
  const mf = p.multifd;
  if (mf && !mf.enabled && (mf.channels > 0 || (mf.compression !== MultifdCompression.MULTIFD_COMPRESSION_UNSPECIFIED && mf.compression !== MultifdCompression.MULTIFD_COMPRESSION_NONE) || mf.compressionLevel > 0)) {
    problems.push('multifd.channels/compression are set but multifd.enabled is false');
  }
  if (mf?.enabled && mf.channels > 255) problems.push('multifd.channels must be 1..255');
  if (mf?.compression === MultifdCompression.MULTIFD_COMPRESSION_ZLIB && mf.compressionLevel > 9) problems.push('multifd.compression_level for zlib must be 0..9');
  if (mf?.compression === MultifdCompression.MULTIFD_COMPRESSION_ZSTD && mf.compressionLevel > 20) problems.push('multifd.compression_level for zstd must be 0..20');
  if (p.xbzrle && !p.xbzrle.enabled && p.xbzrle.cacheBytes > 0) problems.push('xbzrle.cache_bytes is set but xbzrle.enabled is false');
  const ac = p.autoConverge;
  if (ac && !ac.enabled && kind !== PolicyKind.POLICY_KIND_ADAPTIVE && (ac.initialPct > 0 || ac.incrementPct > 0 || ac.maxPct > 0)) {
    problems.push('auto_converge percentages are set but auto_converge.enabled is false');
  }
  if (p.downtimeLimitMs > QEMU_MAX_DOWNTIME_MS) problems.push(`downtime_limit_ms ${p.downtimeLimitMs} exceeds QEMU's maximum ${QEMU_MAX_DOWNTIME_MS}`);
  if (p.maxDowntimeMs > QEMU_MAX_DOWNTIME_MS) problems.push(`max_downtime_ms ${p.maxDowntimeMs} exceeds QEMU's maximum ${QEMU_MAX_DOWNTIME_MS}`);
  for (const s of p.downtimeSteps) if (s.downtimeMs > QEMU_MAX_DOWNTIME_MS) problems.push(`downtime step ${s.downtimeMs} ms exceeds QEMU's maximum ${QEMU_MAX_DOWNTIME_MS}`);
  return problems;
}

/**
 * Validates `policy` for a guest of `vmMemoryBytes` and returns the convergence policy.
 * @throws InvalidArgumentError (reason INVALID_POLICY) listing every contradiction found
 */
export function validatePolicy(policy: MigrationPolicy, vmMemoryBytes: number): ConvergencePolicy {
  const extra = extraPolicyProblems(policy);
  let convergence: ConvergencePolicy | undefined;
  let domain: string | undefined;
  try {
    convergence = policyFor(policy, vmMemoryBytes);
  } catch (err) {
    if (!(err instanceof InvalidArgumentError)) throw err;
    domain = err.message.replace(/^invalid migration policy: /, '');
  }
  const problems = [...(domain ? [domain] : []), ...extra];
  if (problems.length > 0 || !convergence) throw new InvalidArgumentError(`invalid migration policy: ${problems.join('; ')}`, { reason: 'INVALID_POLICY' });
  return convergence;
}
