/**
 * Named prepared statements for the store's Postgres pool (issue 15 §4).
 *
 * Kysely's PostgresDialect sends every query as `client.query(text, values)`: pg then uses an
 * unnamed statement, which the server parses and plans again on each run. In bench d the write
 * connection ran ≈ 8.5 statements per migration, the server executed each in 0.03–0.07 ms and
 * the connection was busy ≈ 0.45 ms a statement: parse and plan are part of the rest, on a machine
 * whose two cores the coordinator, Postgres and the simulated nodes share. Here a statement text
 * seen again gets a name (pg's `{ name, text, values }`): each connection parses and plans it the
 * first time it runs it there (pg remembers which names it has prepared per connection) and
 * only binds and executes it afterwards.
 *
 * What invalidates them: Postgres re-plans a prepared statement by itself when a table it uses
 * changes, but refuses to run one whose result columns would change ("cached plan must not change
 * result type", e.g. `select *` or `returning *` after a newer coordinator's migration added a
 * column while this one runs). Texts with a `*` are therefore never named (they stay unnamed, as
 * before); the others name their result columns. The schema migrations at open run before any
 * statement here, and a connection the pool opens later starts with no prepared statement.
 * Statements without parameters (begin, commit, the migrations' DDL) stay unnamed: they are simple
 * queries (one round trip, several statements allowed). Such a query of several statements answers
 * here with its last statement's result (pg answers with a list, which Kysely's driver does not
 * read): a write transaction's begin, lock and fencing check go in one round trip (postgres.ts).
 */
import type { PostgresPool, PostgresPoolClient } from 'kysely';
import type pg from 'pg';

/** Distinct texts named at most (each is prepared once per connection of the pool that runs it). */
export const NAMED_STATEMENTS_MAX = 256;

/** Which statement texts run as named prepared statements, and under which name. */
export class StatementNames {
  /** Text → its name; null: seen once (named from its second run); '': never named. */
  private readonly names = new Map<string, string | null>();
  private named = 0;

  constructor(readonly max = NAMED_STATEMENTS_MAX) {}

  /**
   * The name to run `text` under, or undefined to run it unnamed: a text is named from its second
   * run on (a statement run once, e.g. a report's query, is not kept on the server), unless it
   * holds a `*` (see the file comment) or {@link max} texts are named already.
   */
  nameOf(text: string): string | undefined {
    const known = this.names.get(text);
    if (known) return known;
    if (known === '') return undefined;
    if (known === undefined) {
      // Remembered as the names are bounded: past 4 × max texts, new ones run unnamed unremembered.
      if (this.names.size < this.max * 4) this.names.set(text, null);
      return undefined;
    }
    if (this.named >= this.max || text.includes('*')) {
      this.names.set(text, '');
      return undefined;
    }
    const name = `migd_${++this.named}`;
    this.names.set(text, name);
    return name;
  }

  /** How many texts are named. */
  get size(): number {
    return this.named;
  }
}

/** What the store's pool sent (tests: round trips per write). */
export interface PoolStats {
  /** Queries sent, each one round trip (a simple query of several statements once). */
  queries: number;
}

/**
 * `pool` as Kysely's PostgresDialect takes it: the queries `names` names run as named statements
 * (none without `names`), a simple query of several statements answers with its last result, and
 * `stats` counts the queries. The same wrapper is handed out for a pool client each time (Kysely
 * keys its connection objects on it).
 */
export function storePool(pool: pg.Pool, names: StatementNames | undefined, stats: PoolStats): PostgresPool {
  const wrapped = new WeakMap<pg.PoolClient, PostgresPoolClient>();
  const last = (r: unknown): unknown => (Array.isArray(r) ? r[r.length - 1] : r);
  return {
    connect: async () => {
      const client = await pool.connect();
      let w = wrapped.get(client);
      if (w === undefined) {
        const query = ((textOrCursor: unknown, values?: readonly unknown[]) => {
          if (typeof textOrCursor !== 'string') return (client.query as (a: unknown) => unknown)(textOrCursor);
          stats.queries++;
          if (values !== undefined && values.length > 0) {
            const name = names?.nameOf(textOrCursor);
            if (name !== undefined) return client.query({ name, text: textOrCursor, values: values as unknown[] });
            return client.query(textOrCursor, values as unknown[]);
          }
          return client.query(textOrCursor).then(last);
        }) as PostgresPoolClient['query'];
        w = { query, release: () => client.release() };
        wrapped.set(client, w);
      }
      return w;
    },
    end: () => pool.end(),
  };
}
