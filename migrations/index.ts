/**
 * The list of schema migrations, for a Kysely `Migrator`. Listed statically (no directory
 * globbing) so the same code runs from the TypeScript sources and from dist/. Append new
 * migrations here in name order; names are timestamps so they sort chronologically.
 */
import type { Migration, MigrationProvider } from 'kysely';
import * as m0001 from './2026_11_22_0001_initial.js';
import * as m0002 from './2026_11_22_0002_outbox_run_plan_state.js';
import * as m0003 from './2026_12_02_0003_plan_idempotency_scope.js';
import * as m0004 from './2026_12_02_0004_progress_dirty_estimate.js';
import * as m0005 from './2026_12_02_0005_run_network_blackout.js';
import * as m0006 from './2026_12_02_0006_progress_disk.js';
import * as m0007 from './2026_12_03_0007_run_cost_figures.js';
import * as m0008 from './2026_12_03_0008_run_working_set.js';
import * as m0009 from './2026_12_04_0009_run_raise_cost.js';
import * as m0010 from './2026_12_04_0010_run_first_boundary.js';
import * as m0011 from './2026_12_05_0011_progress_dirty_set.js';

/** Every migration by name, oldest first. */
export const migrations: Readonly<Record<string, Migration>> = Object.freeze({
  '2026_11_22_0001_initial': m0001,
  '2026_11_22_0002_outbox_run_plan_state': m0002,
  '2026_12_02_0003_plan_idempotency_scope': m0003,
  '2026_12_02_0004_progress_dirty_estimate': m0004,
  '2026_12_02_0005_run_network_blackout': m0005,
  '2026_12_02_0006_progress_disk': m0006,
  '2026_12_03_0007_run_cost_figures': m0007,
  '2026_12_03_0008_run_working_set': m0008,
  '2026_12_04_0009_run_raise_cost': m0009,
  '2026_12_04_0010_run_first_boundary': m0010,
  '2026_12_05_0011_progress_dirty_set': m0011,
});

/** A `MigrationProvider` serving {@link migrations}. */
export const migrationProvider: MigrationProvider = {
  getMigrations: () => Promise.resolve({ ...migrations }),
};
