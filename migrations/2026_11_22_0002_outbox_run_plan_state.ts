/**
 * Indexes for two lookups that scanned whole tables: a run's events replayed from the outbox
 * (Watch with replay: `run_id = ? AND seq > ?`), and the plans still RUNNING that a restarted
 * coordinator re-checks. Frozen like every migration: add a new one instead of editing this.
 */
import type { Kysely } from 'kysely';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.createIndex('outbox_run').on('outbox').columns(['run_id', 'seq']).execute();
  await db.schema.createIndex('plans_state').on('plans').column('state').execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropIndex('plans_state').ifExists().execute();
  await db.schema.dropIndex('outbox_run').ifExists().execute();
}
