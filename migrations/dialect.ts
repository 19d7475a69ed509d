/**
 * The column types migrations use, per database. SQLite (the embedded default) keeps exactly the
 * types the migrations were released with; Postgres gets the types that hold the same values:
 * `bigint` for integers (times are milliseconds since the epoch, sizes are bytes: beyond int4),
 * `double precision` for reals, `bytea` for blobs, and identity columns for AUTOINCREMENT keys
 * (never reused after deletes, like SQLite's). Frozen like the migrations: it imports no
 * application code, and a type once used by a released migration never changes here.
 */
import { PostgresAdapter, type ColumnDataType, type ColumnDefinitionBuilder, type Kysely } from 'kysely';

export interface ColumnTypes {
  readonly postgres: boolean;
  /** 64-bit integers on Postgres (`integer` on SQLite, which is 64-bit there). */
  readonly integer: ColumnDataType;
  readonly real: ColumnDataType;
  readonly blob: ColumnDataType;
  /** The type of an auto-incrementing integer primary key … */
  readonly serial: ColumnDataType;
  /** … and its constraints. */
  serialKey(c: ColumnDefinitionBuilder): ColumnDefinitionBuilder;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function columnTypes(db: Kysely<any>): ColumnTypes {
  const postgres = db.getExecutor().adapter instanceof PostgresAdapter;
  return postgres
    ? { postgres, integer: 'bigint', real: 'double precision', blob: 'bytea', serial: 'bigint', serialKey: (c) => c.primaryKey().generatedByDefaultAsIdentity() }
    : { postgres, integer: 'integer', real: 'real', blob: 'blob', serial: 'integer', serialKey: (c) => c.primaryKey().autoIncrement() };
}
