/** RunFilter validation and its translation into Kysely conditions (dialect-neutral). */
import type { Expression, ExpressionBuilder, SqlBool } from 'kysely';
import { InvalidArgumentError } from '../../shared/errors.js';
import { MigrationState, PolicyKind } from '../../shared/gen/migd/v1/common.js';
import type { RunFilter } from '../../shared/gen/migd/v1/coordinator.js';
import { normalizePolicyKind } from './mapping.js';
import type { HistoryDatabase } from './schema.js';

/** A validated filter with canonical (sorted, de-duplicated) lists; empty fields match all. */
export interface NormalizedFilter {
  vmName: string;
  nodeId: string;
  states: number[];
  policyKinds: number[];
  createdAfterMs: number | null;
  createdBeforeMs: number | null;
  planId: string;
  runIds: string[];
  label: string;
}

const STATES = new Set(Object.values(MigrationState).filter((v): v is number => typeof v === 'number'));
const KINDS = new Set(Object.values(PolicyKind).filter((v): v is number => typeof v === 'number'));

/**
 * Validates a filter.
 * @throws InvalidArgumentError for an inverted time range, an invalid date or an unknown enum value.
 */
export function normalizeFilter(f: Partial<RunFilter> | undefined): NormalizedFilter {
  const time = (d: Date | undefined, name: string): number | null => {
    if (d === undefined) return null;
    const t = d.getTime();
    if (!Number.isFinite(t)) throw new InvalidArgumentError(`filter.${name} is not a valid time`);
    return t;
  };
  const createdAfterMs = time(f?.createdAfter, 'created_after');
  const createdBeforeMs = time(f?.createdBefore, 'created_before');
  if (createdAfterMs !== null && createdBeforeMs !== null && createdAfterMs > createdBeforeMs) {
    throw new InvalidArgumentError(
      `filter time range is inverted: created_after (${new Date(createdAfterMs).toISOString()}) is later than created_before (${new Date(createdBeforeMs).toISOString()})`,
      { reason: 'INVERTED_TIME_RANGE' },
    );
  }
  const states = uniqSorted((f?.states ?? []).filter((s) => s !== MigrationState.MIGRATION_STATE_UNSPECIFIED));
  for (const s of states) if (!STATES.has(s)) throw new InvalidArgumentError(`filter.states: unknown state ${s}`);
  const kinds = uniqSorted((f?.policyKinds ?? []).map(normalizePolicyKind));
  for (const k of kinds) if (!KINDS.has(k)) throw new InvalidArgumentError(`filter.policy_kinds: unknown policy kind ${k}`);
  return {
    vmName: f?.vmName ?? '',
    nodeId: f?.nodeId ?? '',
    states,
    policyKinds: kinds,
    createdAfterMs,
    createdBeforeMs,
    planId: f?.planId ?? '',
    runIds: [...new Set((f?.runIds ?? []).filter((id) => id !== ''))].sort(),
    label: f?.label ?? '',
  };
}

function uniqSorted(xs: number[]): number[] {
  return [...new Set(xs)].sort((a, b) => a - b);
}

/** The conditions a filter puts on the `runs` table. */
export function filterConditions(eb: ExpressionBuilder<HistoryDatabase, 'runs'>, f: NormalizedFilter): Expression<SqlBool>[] {
  const c: Expression<SqlBool>[] = [];
  if (f.vmName !== '') c.push(eb('runs.vm_name', '=', f.vmName));
  if (f.nodeId !== '') {
    c.push(eb.or([eb('runs.source_node_id', '=', f.nodeId), eb('runs.destination_node_id', '=', f.nodeId)]));
  }
  if (f.states.length > 0) c.push(eb('runs.state', 'in', f.states));
  if (f.policyKinds.length > 0) c.push(eb('runs.policy_kind', 'in', f.policyKinds));
  if (f.createdAfterMs !== null) c.push(eb('runs.created_at', '>=', f.createdAfterMs));
  if (f.createdBeforeMs !== null) c.push(eb('runs.created_at', '<', f.createdBeforeMs));
  if (f.planId !== '') c.push(eb('runs.plan_id', '=', f.planId));
  if (f.runIds.length > 0) c.push(eb('runs.id', 'in', f.runIds));
  if (f.label !== '') c.push(eb('runs.policy_label', '=', f.label));
  return c;
}
