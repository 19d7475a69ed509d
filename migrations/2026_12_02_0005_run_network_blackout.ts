/**
 * Runs carry the network blackout measured from outside the guest (a prober's longest gap between
 * answers and its lost probes), attached after the run by whoever ran the prober
 * (RecordRunBlackout): the proto3 JSON of NetworkBlackout, and its blackout in ms as a column of
 * its own for queries and comparisons. NULL for runs without one (every run stored before this
 * migration). Frozen like every migration: add a new one instead of editing this.
 */
import type { Kysely } from 'kysely';
import { columnTypes } from './dialect.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('runs').addColumn('network_blackout_json', 'text').execute();
  await db.schema.alterTable('runs').addColumn('network_blackout_ms', columnTypes(db).integer).execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('runs').dropColumn('network_blackout_ms').execute();
  await db.schema.alterTable('runs').dropColumn('network_blackout_json').execute();
}
