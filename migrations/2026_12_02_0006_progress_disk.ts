/**
 * Progress samples keep the storage copy's figures (issue 13): LOCAL-disk bytes copied and to
 * copy, the mirrors' rate, and whether the storage phase ran. NULL where a sample has none (no
 * LOCAL disk, or stored before this migration), as the proto fields are optional. Frozen like
 * every migration: add a new one instead of editing this.
 */
import type { Kysely } from 'kysely';
import { columnTypes } from './dialect.js';

const COLUMNS = ['disk_transferred_bytes', 'disk_total_bytes', 'disk_rate_bytes_per_sec', 'storage_phase'] as const;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  // bigint on Postgres: disks pass 2 GiB. storage_phase is 0/1 in both dialects.
  const { integer } = columnTypes(db);
  for (const c of COLUMNS) await db.schema.alterTable('progress_samples').addColumn(c, integer).execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  for (const c of [...COLUMNS].reverse()) await db.schema.alterTable('progress_samples').dropColumn(c).execute();
}
