/**
 * Initial schema of the run-history store. Frozen in time: never import application code here,
 * and never edit this file once released — add a new migration instead.
 *
 * Conventions: times are INTEGER milliseconds since the Unix epoch (UTC); enums are INTEGER proto
 * enum values; proto sub-messages that are only read back whole are JSON (proto3 JSON mapping).
 *
 * Edited once (issue 15, Postgres as a second dialect): the column types come from dialect.ts,
 * which gives SQLite exactly the types released here (the SQLite DDL is unchanged) and Postgres
 * their equivalents.
 */
import { sql, type Kysely } from 'kysely';
import { columnTypes } from './dialect.js';

// Migrations are typed against no schema on purpose (`Kysely<any>`): they must keep compiling
// unchanged while the application's schema types move on.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  // SQLite gets exactly the types this migration was released with; Postgres their equivalents.
  const t = columnTypes(db);
  await db.schema
    .createTable('nodes')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('management_address', 'text', (c) => c.notNull().defaultTo(''))
    .addColumn('migration_address', 'text', (c) => c.notNull().defaultTo(''))
    .addColumn('host_json', 'text', (c) => c.notNull())
    .addColumn('status', t.integer, (c) => c.notNull())
    .addColumn('last_heartbeat_at', t.integer)
    .addColumn('updated_at', t.integer, (c) => c.notNull())
    .execute();

  await db.schema
    .createTable('vms')
    .addColumn('name', 'text', (c) => c.primaryKey())
    .addColumn('node_id', 'text')
    .addColumn('state', t.integer, (c) => c.notNull())
    .addColumn('memory_mib', t.integer, (c) => c.notNull().defaultTo(0))
    .addColumn('info_json', 'text', (c) => c.notNull())
    .addColumn('updated_at', t.integer, (c) => c.notNull())
    .execute();
  await db.schema.createIndex('vms_node_id').on('vms').columns(['node_id', 'name']).execute();

  await db.schema
    .createTable('plans')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('idempotency_key', 'text', (c) => c.notNull().unique())
    .addColumn('created_at', t.integer, (c) => c.notNull())
    .addColumn('state', t.integer, (c) => c.notNull())
    .addColumn('priority', t.integer, (c) => c.notNull().defaultTo(0))
    .addColumn('ordering_reason', 'text', (c) => c.notNull().defaultTo(''))
    .addColumn('request_json', 'text', (c) => c.notNull())
    .addColumn('migrations_json', 'text', (c) => c.notNull())
    .execute();

  await db.schema
    .createTable('runs')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('plan_id', 'text', (c) => c.references('plans.id'))
    .addColumn('vm_name', 'text', (c) => c.notNull())
    .addColumn('source_node_id', 'text', (c) => c.notNull())
    .addColumn('destination_node_id', 'text', (c) => c.notNull())
    .addColumn('policy_json', 'text', (c) => c.notNull())
    .addColumn('policy_kind', t.integer, (c) => c.notNull())
    .addColumn('policy_label', 'text', (c) => c.notNull().defaultTo(''))
    .addColumn('state', t.integer, (c) => c.notNull())
    .addColumn('priority', t.integer, (c) => c.notNull().defaultTo(0))
    .addColumn('memory_mib', t.integer, (c) => c.notNull().defaultTo(0))
    .addColumn('created_at', t.integer, (c) => c.notNull())
    .addColumn('started_at', t.integer)
    .addColumn('finished_at', t.integer)
    // Last per-run event sequence number handed out (Event.run_sequence).
    .addColumn('last_sequence', t.integer, (c) => c.notNull().defaultTo(0))
    // Outcome: the whole MigrationStats as JSON plus the figures queries aggregate on.
    .addColumn('stats_json', 'text')
    .addColumn('total_time_ms', t.integer)
    .addColumn('downtime_ms', t.integer)
    .addColumn('transferred_bytes', t.integer)
    .addColumn('host_cpu_seconds', t.real)
    .addColumn('integrity_errors', t.integer)
    .addColumn('error_reason', 'text')
    .addColumn('error_message', 'text')
    .addColumn('error_code', 'text')
    .execute();
  // Listing is newest first with a (created_at, id) keyset; every filter gets a matching prefix.
  await db.schema.createIndex('runs_created').on('runs').columns(['created_at', 'id']).execute();
  await db.schema.createIndex('runs_vm').on('runs').columns(['vm_name', 'created_at', 'id']).execute();
  await db.schema.createIndex('runs_source').on('runs').columns(['source_node_id', 'created_at', 'id']).execute();
  await db.schema
    .createIndex('runs_destination')
    .on('runs')
    .columns(['destination_node_id', 'created_at', 'id'])
    .execute();
  await db.schema.createIndex('runs_state').on('runs').columns(['state', 'created_at', 'id']).execute();
  await db.schema
    .createIndex('runs_policy')
    .on('runs')
    .columns(['policy_kind', 'policy_label', 'created_at', 'id'])
    .execute();
  await db.schema.createIndex('runs_label').on('runs').columns(['policy_label', 'created_at', 'id']).execute();
  await db.schema.createIndex('runs_plan').on('runs').columns(['plan_id', 'created_at', 'id']).execute();
  await db.schema.createIndex('runs_finished').on('runs').columns(['finished_at']).execute();
  // Restart recovery reads the unfinished runs only.
  await db.schema
    .createIndex('runs_active')
    .on('runs')
    .columns(['created_at', 'id'])
    .where(sql.ref('finished_at'), 'is', null)
    .execute();

  await db.schema
    .createTable('run_transitions')
    .addColumn('id', t.serial, (c) => t.serialKey(c))
    .addColumn('run_id', 'text', (c) => c.notNull().references('runs.id').onDelete('cascade'))
    .addColumn('at', t.integer, (c) => c.notNull())
    .addColumn('from_state', t.integer, (c) => c.notNull())
    .addColumn('to_state', t.integer, (c) => c.notNull())
    .addColumn('reason', 'text', (c) => c.notNull().defaultTo(''))
    .execute();
  await db.schema.createIndex('run_transitions_run').on('run_transitions').columns(['run_id', 'id']).execute();

  await db.schema
    .createTable('policy_actions')
    .addColumn('id', t.serial, (c) => t.serialKey(c))
    .addColumn('run_id', 'text', (c) => c.notNull().references('runs.id').onDelete('cascade'))
    .addColumn('at', t.integer, (c) => c.notNull())
    .addColumn('elapsed_ms', t.integer, (c) => c.notNull().defaultTo(0))
    .addColumn('kind', t.integer, (c) => c.notNull())
    .addColumn('value', t.integer, (c) => c.notNull().defaultTo(0))
    .addColumn('reason', 'text', (c) => c.notNull().defaultTo(''))
    .addColumn('actor', 'text', (c) => c.notNull().defaultTo(''))
    .execute();
  await db.schema.createIndex('policy_actions_run').on('policy_actions').columns(['run_id', 'id']).execute();

  // Sample tables carry no foreign keys: they are written in batches on the hot path, and guest
  // samples exist before (and after) any run of their VM.
  await db.schema
    .createTable('progress_samples')
    .addColumn('id', t.serial, (c) => t.serialKey(c))
    .addColumn('run_id', 'text', (c) => c.notNull())
    .addColumn('at', t.integer, (c) => c.notNull())
    .addColumn('elapsed_ms', t.integer, (c) => c.notNull())
    .addColumn('state', t.integer, (c) => c.notNull())
    .addColumn('qemu_status', 'text', (c) => c.notNull())
    .addColumn('pass', t.integer, (c) => c.notNull())
    .addColumn('transferred_bytes', t.integer, (c) => c.notNull())
    .addColumn('remaining_bytes', t.integer, (c) => c.notNull())
    .addColumn('total_bytes', t.integer, (c) => c.notNull())
    .addColumn('throughput_mbps', t.real, (c) => c.notNull())
    .addColumn('dirty_pages_rate', t.integer, (c) => c.notNull())
    .addColumn('page_size', t.integer, (c) => c.notNull())
    .addColumn('expected_downtime_ms', t.integer, (c) => c.notNull())
    .addColumn('throttle_pct', t.integer, (c) => c.notNull())
    .addColumn('postcopy_requests', t.integer, (c) => c.notNull())
    .addColumn('downtime_limit_ms', t.integer, (c) => c.notNull())
    .addColumn('max_bandwidth_bytes_per_sec', t.integer, (c) => c.notNull())
    .addColumn('source_cpu_seconds', t.real, (c) => c.notNull())
    .addColumn('destination_cpu_seconds', t.real, (c) => c.notNull())
    .addColumn('xbzrle_cache_miss', t.integer, (c) => c.notNull())
    .addColumn('duplicate_pages', t.integer, (c) => c.notNull())
    .execute();
  await db.schema.createIndex('progress_samples_run').on('progress_samples').columns(['run_id', 'at', 'id']).execute();

  await db.schema
    .createTable('guest_samples')
    .addColumn('id', t.serial, (c) => t.serialKey(c))
    .addColumn('vm_name', 'text', (c) => c.notNull())
    .addColumn('run_id', 'text')
    .addColumn('at', t.integer, (c) => c.notNull())
    .addColumn('guest_mono_ms', t.integer, (c) => c.notNull())
    .addColumn('worker', t.integer, (c) => c.notNull())
    .addColumn('ms_per_gib', t.real, (c) => c.notNull())
    .addColumn('pass', t.integer, (c) => c.notNull())
    .addColumn('pages_verified', t.integer, (c) => c.notNull())
    .addColumn('integrity_errors', t.integer, (c) => c.notNull())
    .addColumn('heartbeat_gap_ms', t.integer, (c) => c.notNull())
    .execute();
  await db.schema.createIndex('guest_samples_vm').on('guest_samples').columns(['vm_name', 'at', 'id']).execute();
  await db.schema.createIndex('guest_samples_at').on('guest_samples').columns(['at']).execute();

  await db.schema
    .createTable('host_cpu_samples')
    .addColumn('id', t.serial, (c) => t.serialKey(c))
    .addColumn('run_id', 'text', (c) => c.notNull())
    .addColumn('at', t.integer, (c) => c.notNull())
    .addColumn('source_cpu_seconds', t.real, (c) => c.notNull())
    .addColumn('destination_cpu_seconds', t.real, (c) => c.notNull())
    .execute();
  await db.schema.createIndex('host_cpu_samples_run').on('host_cpu_samples').columns(['run_id', 'at', 'id']).execute();

  // Transactional outbox: rows are written in the same transaction as the change they describe
  // and published to NATS afterwards. AUTOINCREMENT keeps `seq` strictly increasing (never
  // reused after deletes), which is the publication order.
  await db.schema
    .createTable('outbox')
    .addColumn('seq', t.serial, (c) => t.serialKey(c))
    .addColumn('event_id', 'text', (c) => c.notNull().unique())
    .addColumn('subject', 'text', (c) => c.notNull())
    .addColumn('payload', t.blob, (c) => c.notNull())
    .addColumn('run_id', 'text')
    .addColumn('run_sequence', t.integer, (c) => c.notNull().defaultTo(0))
    .addColumn('created_at', t.integer, (c) => c.notNull())
    .addColumn('published_at', t.integer)
    .execute();
  await db.schema
    .createIndex('outbox_unpublished')
    .on('outbox')
    .column('seq')
    .where(sql.ref('published_at'), 'is', null)
    .execute();
  await db.schema.createIndex('outbox_published').on('outbox').column('published_at').execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  for (const table of [
    'outbox',
    'host_cpu_samples',
    'guest_samples',
    'progress_samples',
    'policy_actions',
    'run_transitions',
    'runs',
    'plans',
    'vms',
    'nodes',
  ]) {
    await db.schema.dropTable(table).ifExists().execute();
  }
}
