/**
 * Runs carry the working set the adaptive policy found (services/coordinator/domain/policy/
 * adaptive.ts, "Saturation"): the bytes the backlog held at across pass boundaries, for the VM's
 * next runs to recognise the same bound at their first boundary. NULL where no bound was seen
 * (the backlog shrank, or no pass boundary after the first) and for every run stored before this
 * migration. Frozen like every migration: add a new one instead of editing this.
 */
import type { Kysely } from 'kysely';
import { columnTypes } from './dialect.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('runs').addColumn('cost_working_set_bytes', columnTypes(db).real).execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('runs').dropColumn('cost_working_set_bytes').execute();
}
