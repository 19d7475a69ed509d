/**
 * What a policy needs from both nodes before the migration starts. QEMU refuses
 * migrate-set-capabilities while a migration runs, so anything a policy may want later (post-copy,
 * auto-converge) must be switched on at the start: this is what placement checks against each
 * node's `migration_capabilities`, and what the node's resolver turns on — both read it from
 * services/shared/policy.
 */
import { PolicyKind, type MigrationPolicy } from '../../../shared/gen/migd/v1/common.js';
import { OPTIONAL_CAPABILITIES, migrationCapabilities } from '../../../shared/policy/resolve.js';
import type { PolicyRequirements } from './types.js';

/**
 * Requirements of an effective policy (see `ConvergencePolicy.effective`). The always-on "events"
 * capability is left out (every QEMU migd supports has it), and so are the measuring ones.
 */
export function requirementsOf(effective: MigrationPolicy): PolicyRequirements {
  const kind = effective.kind || PolicyKind.POLICY_KIND_FIXED;
  const caps = migrationCapabilities(effective);
  delete caps['events'];
  // Measurements (postcopy-blocktime) are used where supported, not required of a node.
  for (const c of OPTIONAL_CAPABILITIES) delete caps[c];
  const postcopy = caps['postcopy-ram'] === true;
  const postcopyPreempt = caps['postcopy-preempt'] === true;
  const autoConverge = effective.autoConverge?.enabled ? 'on' : kind === PolicyKind.POLICY_KIND_ADAPTIVE ? 'armed' : 'off';
  return { capabilities: Object.keys(caps).sort(), postcopy, postcopyPreempt, autoConverge };
}
