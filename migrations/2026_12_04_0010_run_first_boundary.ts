/**
 * Runs carry the backlog the first pass boundary found when the run switched to post-copy there
 * (services/coordinator/domain/policy/measured.ts RunCostFigures.firstBoundaryBytes, bytes): one
 * boundary's evidence of the set the guest dirties, which the VM's next adaptive run takes as its
 * working set only when its own dirty-rate estimate confirms it. NULL where not measured (no
 * post-copy, a switch after the second boundary, and every run stored before this migration).
 * Frozen like every migration: add a new one instead of editing this.
 */
import type { Kysely } from 'kysely';
import { columnTypes } from './dialect.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('runs').addColumn('cost_first_boundary_bytes', columnTypes(db).real).execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('runs').dropColumn('cost_first_boundary_bytes').execute();
}
