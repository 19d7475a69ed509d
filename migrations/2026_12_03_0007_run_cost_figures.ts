/**
 * Runs carry what they measured of the guest's harm, for the adaptive policy's prior on the VM's
 * next runs (services/coordinator/domain/policy/measured.ts): the pre-copy harm rate (guest
 * seconds lost per second of pre-copy) and how long pre-copy was observed, and for a run that
 * switched to post-copy the guest ms lost from the switch to arrival and the backlog at the switch
 * (transfer ms). NULL where not measured (no guest pace feed, no post-copy, every run stored
 * before this migration). Frozen like every migration: add a new one instead of editing this.
 */
import type { Kysely } from 'kysely';
import { columnTypes } from './dialect.js';

const COLUMNS = ['cost_precopy_harm_rate', 'cost_precopy_ms', 'cost_postcopy_lost_ms', 'cost_postcopy_backlog_ms'] as const;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  for (const c of COLUMNS) await db.schema.alterTable('runs').addColumn(c, columnTypes(db).real).execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  for (const c of [...COLUMNS].reverse()) await db.schema.alterTable('runs').dropColumn(c).execute();
}
