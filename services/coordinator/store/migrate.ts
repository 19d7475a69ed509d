/** Brings a history database's schema up to date (migrations/, any dialect Kysely supports). */
import { Migrator, type Kysely } from 'kysely';
import { migrationProvider } from '../../../migrations/index.js';
import { MigdError } from '../../shared/errors.js';

/**
 * Applies every pending migration of migrations/index.ts.
 * @throws MigdError(INTERNAL) naming the failed migration.
 */
export async function migrateToLatest<DB>(db: Kysely<DB>): Promise<void> {
  const { error, results } = await new Migrator({ db, provider: migrationProvider }).migrateToLatest();
  if (error !== undefined) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName;
    throw new MigdError('INTERNAL', `schema migration ${failed ?? ''} failed: ${String((error as Error)?.message ?? error)}`.replace('  ', ' '), {
      cause: error,
    });
  }
}
