/**
 * Runs carry the realised cost of a downtime raise (services/coordinator/domain/policy/measured.ts
 * RunCostFigures): the guest ms lost from the run's one raise of the downtime limit during pre-copy
 * to arrival (the passes it still took and the stop), and the backlog then (transfer ms), so the
 * adaptive policy's prior can fit what a raise costs the VM as it does post-copy's c and s. NULL
 * where not measured (no raise, more than one, post-copy after it, no guest pace feed, and every run
 * stored before this migration). Frozen like every migration: add a new one instead of editing this.
 */
import type { Kysely } from 'kysely';
import { columnTypes } from './dialect.js';

const COLUMNS = ['cost_raise_lost_ms', 'cost_raise_backlog_ms'] as const;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  for (const c of COLUMNS) await db.schema.alterTable('runs').addColumn(c, columnTypes(db).real).execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  for (const c of [...COLUMNS].reverse()) await db.schema.alterTable('runs').dropColumn(c).execute();
}
