/**
 * Where a Postgres write transaction's time goes, statement by statement, as the coordinator sees
 * it (issue 15 §4: the one write connection spent ≈ 0.9 ms per write whatever the statements per
 * write, while the server executes one in 0.03–0.07 ms). Each statement of a write transaction is
 * split into:
 *
 * - `pg.write send→answer`: from the `query` call (node-pg writes it to the socket at once) to the
 *   socket read that brought its answer (size: the statements in flight when it was sent, itself
 *   included: more than 1 when a group's writes are pipelined); of which `pg.write send→answer idle` is the time the
 *   event loop sat blocked waiting for I/O (perf_hooks eventLoopUtilization's idle time): that part
 *   is the server, the network and the scheduling of both processes; the rest, the loop running
 *   other callbacks while the answer may already have been waiting in the socket;
 * - `pg.write answer→resolved`: node-pg's parsing and the promise reaching the caller;
 * - `pg.write resolved→send`: from one statement's result to the next statement's send in the same
 *   transaction: the writes' own JavaScript, Kysely's compiling and the group commit's code.
 *
 * `pg.write transaction` is one write transaction from its `begin` to its `commit`'s answer (size:
 * its statements). Only while the turn profiler is on (services/shared/metrics/turns.ts); off, each
 * statement costs one boolean test. A write transaction is recognised by its first statement (the
 * begin that takes the write lock, postgres.ts), so reads and the leadership's connection are not
 * counted.
 */
import { performance } from 'node:perf_hooks';
import type { QueryCompiler } from 'kysely';
import type pg from 'pg';
import { turns } from '../../shared/metrics/turns.js';

/**
 * `compiler` with its compiles timed as `kysely compile` while the profiler is on (every query
 * built with Kysely's builders, reads included; the queries compiled once, StoreDatabase.reuse,
 * are not compiled again).
 */
export function timedCompiler(compiler: QueryCompiler): QueryCompiler {
  return {
    compileQuery: (node, queryId) => {
      if (!turns.enabled) return compiler.compileQuery(node, queryId);
      const t = performance.now();
      const q = compiler.compileQuery(node, queryId);
      turns.recordMs('kysely compile', performance.now() - t);
      return q;
    },
  };
}

/** What the timing needs of a pool client (node-pg's Client). */
interface TimedClient {
  query: (...args: unknown[]) => unknown;
  connection?: { stream?: { prependListener?: (ev: string, fn: () => void) => unknown } };
}

/** One client's timing state. */
interface ClientTiming {
  /** Inside a write transaction (from its begin to its commit's or rollback's answer). */
  inWrite: boolean;
  /** When the latest socket read began, and the loop's idle time then. */
  dataAt: number;
  dataIdle: number;
  /** When the previous statement of this write transaction resolved (0: none yet). */
  resolvedAt: number;
  /** The transaction's first send and its statements so far. */
  txStart: number;
  txStatements: number;
  /** Statements of the write transaction sent and not yet answered. */
  inFlight: number;
}

const idleMs = (): number => performance.eventLoopUtilization().idle;

/**
 * Times the statements of write transactions on every client `pool` connects from now on (see the
 * file comment). `isWriteBegin(text)` says whether a statement begins a write transaction.
 */
export function timeWriteStatements(pool: pg.Pool, isWriteBegin: (text: string) => boolean): void {
  pool.on('connect', (client) => instrument(client as unknown as TimedClient, isWriteBegin));
}

function instrument(client: TimedClient, isWriteBegin: (text: string) => boolean): void {
  const stream = client.connection?.stream;
  if (typeof stream?.prependListener !== 'function') return;
  const s: ClientTiming = { inWrite: false, dataAt: 0, dataIdle: 0, resolvedAt: 0, txStart: 0, txStatements: 0, inFlight: 0 };
  // First among the socket's 'data' listeners: the time the answer was read, before node-pg parses it.
  stream.prependListener('data', () => {
    if (!turns.enabled) return;
    s.dataAt = performance.now();
    s.dataIdle = idleMs();
  });
  const query = client.query.bind(client);
  client.query = (...args: unknown[]): unknown => {
    const text = args[0];
    // Only the promise form with a text (Kysely's: text, values) is timed.
    if (!turns.enabled || typeof text !== 'string' || typeof args[2] === 'function') return query(...args);
    const sentAt = performance.now();
    const sentIdle = idleMs();
    if (!s.inWrite && isWriteBegin(text)) {
      s.inWrite = true;
      s.txStart = sentAt;
      s.txStatements = 0;
      s.inFlight = 0;
      s.resolvedAt = 0;
    }
    if (!s.inWrite) return query(...args);
    s.txStatements++;
    // Its size: the statements in flight with it (1 when each waits for the answer before).
    const inFlight = ++s.inFlight;
    if (s.resolvedAt > 0) turns.recordMs('pg.write resolved→send', sentAt - s.resolvedAt);
    const ends = text === 'commit' || text === 'rollback';
    const done = (): void => {
      const now = performance.now();
      // The read that brought this answer (node-pg settles the query while parsing it).
      const answerAt = s.dataAt >= sentAt ? s.dataAt : now;
      s.inFlight--;
      turns.recordMs('pg.write send→answer', answerAt - sentAt, inFlight);
      turns.recordMs('pg.write send→answer idle', s.dataAt >= sentAt ? s.dataIdle - sentIdle : 0);
      turns.recordMs('pg.write answer→resolved', now - answerAt);
      s.resolvedAt = now;
      if (ends) {
        turns.recordMs('pg.write transaction', now - s.txStart, s.txStatements);
        s.inWrite = false;
        s.resolvedAt = 0;
      }
    };
    const p = query(...args) as Promise<unknown>;
    p.then(done, done);
    return p;
  };
}
