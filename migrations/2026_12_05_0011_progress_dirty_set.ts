/**
 * Progress samples carry the source's dirty-set measurement (calc-dirty-rate, page sampling, over
 * a short window during pre-copy): the unique bytes the guest dirtied within `dirty_set_window_ms`.
 * The adaptive policy reads from it, at the first pass boundary, that the backlog is a set the guest
 * rewrites faster than a pass goes; a restarted coordinator replays it like every other figure.
 * 0 for samples stored before this migration (not measured). Frozen like every migration: add a
 * new one instead of editing this.
 */
import type { Kysely } from 'kysely';
import { columnTypes } from './dialect.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  // bigint on Postgres: a guest's set can exceed 2 GiB.
  await db.schema.alterTable('progress_samples').addColumn('dirty_set_bytes', columnTypes(db).integer, (c) => c.notNull().defaultTo(0)).execute();
  await db.schema.alterTable('progress_samples').addColumn('dirty_set_window_ms', columnTypes(db).integer, (c) => c.notNull().defaultTo(0)).execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('progress_samples').dropColumn('dirty_set_window_ms').execute();
  await db.schema.alterTable('progress_samples').dropColumn('dirty_set_bytes').execute();
}
