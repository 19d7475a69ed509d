/**
 * Progress samples carry the source's dirty-rate estimate taken just before the migration started
 * (calc-dirty-rate, page sampling): the adaptive policy predicts from it before the first pass
 * ends, and a restarted coordinator replays it like every other figure. 0 for samples stored
 * before this migration (not measured). Frozen like every migration: add a new one instead of
 * editing this.
 */
import type { Kysely } from 'kysely';
import { columnTypes } from './dialect.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  // bigint on Postgres: a fast TCG dirtier reaches ~2 GiB/s, beyond int4.
  await db.schema.alterTable('progress_samples').addColumn('estimated_dirty_bytes_per_sec', columnTypes(db).integer, (c) => c.notNull().defaultTo(0)).execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('progress_samples').dropColumn('estimated_dirty_bytes_per_sec').execute();
}
