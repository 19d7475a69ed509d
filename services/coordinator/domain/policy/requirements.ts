/**
 * What a policy needs from both nodes before the migration starts. QEMU refuses
 * migrate-set-capabilities while a migration runs, so anything a policy may want later (post-copy,
 * auto-converge) must be switched on at the start: this is what placement checks against each
 * node's `migration_capabilities`, and what the node's own config resolver turns on.
 */
import { PolicyKind, type MigrationPolicy } from '../../../shared/gen/migd/v1/common.js';
import type { PolicyRequirements } from './types.js';

/**
 * Requirements of an effective policy (see `ConvergencePolicy.effective`). Mirrors the node's
 * resolver (services/node/migration/config.ts), which the coordinator may not import. The
 * always-on "events" capability is left out: every QEMU migd supports has it.
 */
export function requirementsOf(effective: MigrationPolicy): PolicyRequirements {
  const kind = effective.kind || PolicyKind.POLICY_KIND_FIXED;
  const multifd = effective.multifd?.enabled ?? false;
  const postcopy = (effective.postcopy?.enabled ?? false) && !multifd;
  const postcopyPreempt = postcopy && (effective.postcopy?.preempt ?? true);
  const autoConverge = effective.autoConverge?.enabled ? 'on' : kind === PolicyKind.POLICY_KIND_ADAPTIVE ? 'armed' : 'off';
  const caps = new Set<string>();
  if (postcopy) {
    caps.add('postcopy-ram');
    caps.add('return-path');
  }
  if (postcopyPreempt) caps.add('postcopy-preempt');
  if (autoConverge !== 'off') caps.add('auto-converge');
  if (effective.xbzrle?.enabled) caps.add('xbzrle');
  if (multifd) caps.add('multifd');
  if (effective.switchoverAck) {
    caps.add('switchover-ack');
    caps.add('return-path');
  }
  return { capabilities: [...caps].sort(), postcopy, postcopyPreempt, autoConverge };
}
