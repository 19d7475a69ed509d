/**
 * Idempotency keys belong to the identity that submitted them: one operator's key cannot claim or
 * shadow another's. `plans.idempotency_key` stays the unique lookup column (SQLite cannot drop
 * its UNIQUE constraint) and now holds the scoped key; `idempotency_scope` is the submitting
 * identity ('' for plans stored before this migration, whose keys were global). Frozen like every
 * migration: add a new one instead of editing this.
 */
import type { Kysely } from 'kysely';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('plans').addColumn('idempotency_scope', 'text', (c) => c.notNull().defaultTo('')).execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('plans').dropColumn('idempotency_scope').execute();
}
