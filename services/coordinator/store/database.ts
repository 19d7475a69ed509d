/**
 * What every repository of the history store shares: the one `Kysely<HistoryDatabase>`, short
 * write and read transactions, the clock and id factory, and the transactional outbox writer
 * (every state change and its event commit together; see services/shared/events/relay.ts).
 *
 * The little that differs between databases sits behind {@link StoreDialect}; the repositories'
 * queries are plain Kysely, written to run on SQLite and Postgres alike.
 */
import { performance } from 'node:perf_hooks';
import { CompiledQuery, type Compilable, type Kysely, type KyselyPlugin, type QueryResult } from 'kysely';
import { FailedPreconditionError, NotFoundError } from '../../shared/errors.js';
import { buildEvent, encodeEvent } from '../../shared/events/codec.js';
import { createIdFactory } from '../../shared/events/ids.js';
import type { Event } from '../../shared/gen/migd/v1/events.js';
import type { Logger } from '../../shared/log.js';
import { turns } from '../../shared/metrics/turns.js';
import type { ResolvedHistoryStoreOptions } from './options.js';
import type { HistoryDatabase } from './schema.js';

export type Db = Kysely<HistoryDatabase>;

/** The database-specific parts of the store; one object per dialect (see sqlite.ts). */
export interface StoreDialect {
  /** For logs and errors, e.g. "sqlite". */
  readonly name: string;
  /**
   * Opens a write transaction on `conn`. SQLite takes the write lock up front (BEGIN IMMEDIATE)
   * so a transaction never fails half-way upgrading a read lock.
   */
  beginWrite(conn: Db): Promise<void>;
  /** Opens a read transaction (one consistent snapshot) on `conn`. */
  beginRead(conn: Db): Promise<void>;
  /** Whether `err` is a violation of a primary-key (or, for 'unique', a unique) constraint. */
  isConstraintViolation(err: unknown, kind: 'primary-key' | 'unique'): boolean;
  /** The highest outbox `seq` ever handed out, also after the rows are pruned; 0 when none. */
  lastOutboxSeq(db: Db): Promise<number>;
  /** Best-effort maintenance before the connection closes. */
  optimize(db: Db): Promise<void>;
  /**
   * When the database can take a statement before it has answered the one before (Postgres's
   * pipeline mode): the group commit then runs the writes that touch disjoint keys together (see
   * StoreDatabase.write's `keys`). Absent, every write waits for the one before (SQLite: its
   * statements are synchronous, nothing would overlap).
   */
  readonly pipeline?: WritePipeline;
}

/**
 * Statements on the write group's connection that do not wait for the answers of those before
 * them: each is sent at once, the answers come back in order.
 */
export interface WritePipeline {
  /** A Db over `conn`'s connection (a group's, from `db.connection()`), usable until {@link end}. */
  over(conn: Db): Promise<Db>;
  /** Sends `query` on that connection now (queries sent one after the other arrive in that order). */
  send<R>(query: CompiledQuery<R>): Promise<QueryResult<R>>;
  /** The group is over: the Db refuses statements until the next {@link over}. */
  end(): void;
}

/** Counts the events a write transaction enqueued (listeners are told after its commit). */
export interface TxState {
  enqueued: number;
  /**
   * When set, {@link StoreDatabase.enqueueAll} keeps its outbox rows here instead of inserting
   * them, and the group inserts them all before its commit (see StoreDatabase.writeGroup).
   */
  deferred?: unknown[][];
}

/**
 * What the write connection has run (issue 15 §4: on Postgres each statement is a round trip of
 * the one write connection, so statements per migration bound a drain's rate). Deterministic:
 * tests count the statements of each write without timing.
 */
export interface WriteStats {
  /** Group commits (transactions) begun, redos included. */
  groups: number;
  /** Writes taken into a group (a write of a redone group once). */
  writes: number;
  /** Statements the writes themselves ran (a redone group's both attempts), without the groups' own begin, lock, fencing check and commit. */
  statements: number;
}

/** How a write is to be run (see {@link StoreDatabase.write}). */
export interface WriteOptions {
  /** A client waits for it: it goes before the writes waiting (see StoreDatabase.write). */
  readonly first?: boolean;
  /**
   * The rows the write reads or changes, as keys (`run:<id>`, `vm:<name>`, `node:<id>`), when it
   * touches nothing else but rows it adds (outbox events, a run's transitions). Two writes with
   * disjoint keys commute, so on a pipelined connection a group runs them together, their
   * statements interleaved (issue 15: on Postgres a statement's answer waits for a turn of the
   * coordinator's busy event loop, and one write after the other paid that wait for each
   * statement). None (an empty list): it only adds rows. A write without this option runs alone,
   * after the writes before it and before those after it.
   */
  readonly keys?: readonly string[];
}

/** The key of a run's row and its event sequence ({@link WriteOptions.keys}). */
export const runKey = (runId: string): string => `run:${runId}`;
/** The key of a VM's row. */
export const vmKey = (name: string): string => `vm:${name}`;
/** The key of a node's row. */
export const nodeKey = (nodeId: string): string => `node:${nodeId}`;

/** The key of the relay's marks of published outbox rows. */
export const PUBLISHED_MARKS = 'outbox:published';

/**
 * Throws the first failure among a write's statements asked for together, in the order they were
 * asked (a row's before the rows that reference it). The caller waits for all of them first
 * (Promise.allSettled): none may be left in flight behind the group's rollback.
 */
export function throwFirstFailure(settled: readonly PromiseSettledResult<unknown>[]): void {
  const failure = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failure) throw failure.reason;
}

/** Writes of one group commit at most (see StoreDatabase.write). */
export const WRITE_GROUP_MAX = 256;

/**
 * Whether a group commit takes one more write: while writes that were waiting when it began are
 * left, fewer than `max` are taken and the group has run less than `budgetMs`. The first write is
 * always taken. A group whose last write was asked for `first` (a client waits for it; taken
 * before the others, also into a group already under way) commits unless another such write
 * waits: it does not wait for the rest of the budget (Postgres: 100 ms of other writes).
 */
export function groupTakesMore(s: { taken: number; available: number; elapsedMs: number; max: number; budgetMs: number; lastFirst?: boolean; firstWaiting?: number }): boolean {
  if (s.taken >= s.available || s.taken >= s.max) return false;
  if (s.lastFirst === true && (s.firstWaiting ?? 0) === 0) return false;
  return s.taken === 0 || s.elapsedMs < s.budgetMs;
}

interface PendingWrite {
  readonly fn: (trx: Db, tx: TxState) => Promise<unknown>;
  /** What the write touches (see {@link WriteOptions.keys}); undefined: anything. */
  readonly keys: readonly string[] | undefined;
  /** When it was asked for (turns.now(); 0 when the turn profiler is off). */
  readonly askedAt: number;
  readonly first: boolean;
  readonly resolve: (v: unknown) => void;
  readonly reject: (err: unknown) => void;
}

/**
 * The writes waiting for a group commit: first in line those asked for with `first` (in the order
 * asked), then the others (in the order asked).
 */
export class WriteQueue<T> {
  private readonly firsts: T[] = [];
  private readonly rest: T[] = [];

  get length(): number {
    return this.firsts.length + this.rest.length;
  }

  push(item: T, first = false): void {
    (first ? this.firsts : this.rest).push(item);
  }

  /** The next item in line (undefined when empty). */
  shift(): T | undefined {
    return this.firsts.length > 0 ? this.firsts.shift() : this.rest.shift();
  }

  /** Items asked for `first` still waiting. */
  get firstWaiting(): number {
    return this.firsts.length;
  }

  /**
   * How many items the next group may take, at most `max`: the `first` ones alone while any wait
   * (a client waits for each: they commit without waiting for up to a budget's worth of the
   * others), else the others.
   */
  nextGroup(max: number): number {
    return Math.min(this.firsts.length > 0 ? this.firsts.length : this.rest.length, max);
  }

  /** Takes up to `n` items in line. */
  take(n: number): T[] {
    const out: T[] = [];
    while (out.length < n && this.length > 0) out.push(this.shift()!);
    return out;
  }
}

/**
 * Transaction control statements, compiled once: a raw sql template is built and compiled again
 * each time it runs (issue 15 §4).
 */
export const TX = {
  begin: CompiledQuery.raw('begin'),
  commit: CompiledQuery.raw('commit'),
  rollback: CompiledQuery.raw('rollback'),
  // The savepoint of each write of a group written again after a failure (see inSavepoint).
  savepoint: CompiledQuery.raw('savepoint migd_write'),
  release: CompiledQuery.raw('release savepoint migd_write'),
  rollbackToSavepoint: CompiledQuery.raw('rollback to savepoint migd_write'),
} as const;

/** What {@link inSavepoint} ran came to. */
type Outcome<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly err: unknown };

/**
 * Runs `fn` inside a savepoint of the transaction on `conn` (a write of a group written again, see
 * StoreDatabase.writeGroup): kept when it succeeds; when it fails, what it wrote is undone and the
 * events it enqueued are no longer counted, and the transaction goes on (Postgres accepts
 * statements again after the rollback to the savepoint).
 */
async function inSavepoint<T>(conn: Db, tx: TxState, fn: () => Promise<T>): Promise<Outcome<T>> {
  const enqueued = tx.enqueued;
  await conn.executeQuery(TX.savepoint);
  try {
    const value = await fn();
    await conn.executeQuery(TX.release);
    return { ok: true, value };
  } catch (err) {
    tx.enqueued = enqueued;
    await conn.executeQuery(TX.rollbackToSavepoint);
    await conn.executeQuery(TX.release);
    return { ok: false, err };
  }
}

/** Marks parameter `i` while a reusable query is compiled (see StoreDatabase.reuse). */
const param = (i: number): string => `\u0000migd-param-${i}\u0000`;
const PARAM = /^\u0000migd-param-(\d+)\u0000$/;

/** A hot query, built with placeholders: `p(i)` stands for the i-th argument of each run. */
export type ReusableQueryBuilder<R> = (db: Db, p: (i: number) => never) => Compilable<R>;

/** Rows per INSERT statement (SQLite allows 32 766 bound values per statement). */
export const INSERT_CHUNK = 500;

/**
 * Rows per statement of the multi-row queries compiled once ({@link StoreDatabase.enqueueAll},
 * {@link StoreDatabase.takeSequences}): one compiled statement per row count up to this.
 */
export const REUSE_CHUNK = 64;

/** One event for {@link StoreDatabase.enqueueAll}; `run`: a run's event with its sequence number. */
export interface OutboxEvent {
  readonly payload: NonNullable<Event['payload']>;
  readonly time: Date;
  readonly run?: { readonly runId: string; readonly sequence: number };
}

/**
 * The database as the repositories share it. One per open store; the repositories hold it, never
 * each other's internals.
 */
export class StoreDatabase {
  readonly log: Logger;
  readonly newId: () => string;
  readonly now: () => number;
  private readonly listeners = new Set<() => void>();
  private closed = false;
  /** Writes waiting for the next group (see {@link write}). */
  private readonly pending = new WriteQueue<PendingWrite>();
  private flushing: Promise<void> | undefined;
  /** Ends the flush's wait for the event loop's check phase at once (see {@link nextTurn}). */
  private wake: (() => void) | undefined;
  /** Groups written again with savepoints because one of their writes failed (see writeGroup). */
  groupRedos = 0;
  /** See {@link WriteStats}. */
  readonly writeStats: WriteStats = { groups: 0, writes: 0, statements: 0 };
  /** Counts the statements of the writes (a plugin sees every query's result on the connection it is added to). */
  private readonly countStatements: KyselyPlugin = {
    transformQuery: (args) => args.node,
    transformResult: (args) => {
      this.writeStats.statements++;
      return Promise.resolve(args.result);
    },
  };
  /** Hot queries compiled once for this database's dialect: SQL text and where each argument goes. */
  private readonly reusable = new Map<string, { compiled: CompiledQuery<unknown>; slots: number[] }>();

  constructor(
    readonly db: Db,
    readonly dialect: StoreDialect,
    readonly o: ResolvedHistoryStoreOptions,
  ) {
    this.log = o.logger;
    this.now = o.now;
    this.newId = createIdFactory(o.now);
  }

  /**
   * Runs `fn` in a write transaction; notifies outbox listeners after a commit that enqueued.
   *
   * Group commit: writes asked for while another group is being written wait for it and then go
   * in together, one transaction. The writes of a group run one after another without
   * savepoints; when one fails, the group is rolled back and written again with each write in its
   * own savepoint, so a write that fails is rejected on its own and the others commit (and
   * resolve) only with the transaction. So `fn` may run twice, and must have no effect outside
   * the transaction (nothing of the first attempt is kept). On a drain's hundreds of run updates a second this turns one commit per
   * update into one per group; every write still sees the ones before it, as in serial order, and
   * the fencing check (beginWrite) covers the whole transaction. `fn` must not itself wait for
   * another write (it would wait for its own group).
   *
   * A group is bounded by WRITE_GROUP_MAX writes and by the store's writeGroupBudgetMs: once it has
   * run that long it commits, and the writes still queued go in the next group, after the event
   * loop's I/O (setImmediate). SQLite's writes are synchronous, so a group is one stretch of the
   * event loop during which no request is read: 256 writes took 200–400 ms in a 100-node drain,
   * and SubmitPlan and the heartbeats waited behind them (issue 15 §4).
   *
   * Writes go in the order asked, except that one asked with `first` (a client's request waiting
   * on it, e.g. SubmitPlan's plan) goes before the writes still waiting: it did not wait behind a
   * drain's backlog of run updates. Such writes commit in groups of their own, begun at once (or
   * right after the group being written): a group of the others held a SubmitPlan up to a budget's
   * worth of writes, and one begun after the turn's I/O callbacks had its response written a turn
   * of the event loop later (issue 15). Queued writes are concurrent (none has been acknowledged), so
   * any order of them is a serial order; each run's own writes are made one after the other by
   * its supervisor, so its events keep their order.
   *
   * On a pipelined connection (Postgres, {@link StoreDialect.pipeline}) the writes of a group that
   * name their keys ({@link WriteOptions.keys}) run together while their keys are disjoint: each
   * one's statements still go one after the other, but a statement of one no longer waits for the
   * answers of the others'. That is a serial order too (they commute), and a write sharing a key
   * with one under way, or naming none, waits until those under way are done. When any fails,
   * the group is redone one write after the other as above.
   */
  write<T>(fn: (trx: Db, tx: TxState) => Promise<T>, opts: WriteOptions = {}): Promise<T> {
    this.checkOpen();
    return new Promise<T>((resolve, reject) => {
      const first = opts.first === true;
      this.pending.push({ fn, keys: opts.keys, resolve: resolve as (v: unknown) => void, reject, askedAt: turns.enabled ? turns.now() : 0, first }, first);
      // The group starts after the I/O callbacks of this turn of the event loop (setImmediate), not
      // after the current microtasks: a drain's run updates arrive one gRPC message per callback,
      // and a group begun at once held one write each (SQLite's writes are synchronous, so the
      // group was written before the next message was read): 4–5 commits per migration.
      // A `first` write (a client waits for it) does not wait for the I/O callbacks: its group
      // (of `first` writes only) begins now, or as soon as the group being written has committed,
      // so the client's response is written in this turn of the event loop, not the next one.
      if (first) this.wake?.();
      this.flushing ??= (first ? Promise.resolve() : this.nextTurn()).then(() => this.flush());
    });
  }

  /** Resolves after the I/O callbacks of this turn of the event loop (setImmediate), or when woken. */
  private nextTurn(): Promise<void> {
    return new Promise<void>((resolve) => {
      const immediate = setImmediate(() => {
        this.wake = undefined;
        resolve();
      });
      this.wake = () => {
        clearImmediate(immediate);
        this.wake = undefined;
        resolve();
      };
    });
  }

  /** Writes queued groups until none is left. */
  private async flush(): Promise<void> {
    try {
      for (;;) {
        const t = turns.enabled ? turns.now() : 0;
        const statements = this.writeStats.statements;
        const written = await this.writeGroup();
        turns.record('store.group-commit', t, written);
        // The same groups, sized by their writes' statements on the write connection (bench d: statements per migration; a group's own begin/lock/commit not counted).
        turns.record('store.group-commit statements', t, this.writeStats.statements - statements);
        if (this.pending.length === 0) break;
        // The rest after the I/O callbacks (requests, node messages) that waited for this group;
        // `first` writes at once.
        if (this.pending.firstWaiting === 0) await this.nextTurn();
      }
    } finally {
      this.flushing = undefined;
    }
  }

  /** Resolves once every write asked for so far has committed or failed. */
  async settled(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  /**
   * Writes the next group: from the head of the queue, the writes waiting when it began, as many
   * as {@link groupTakesMore} allows (the rest stay first in line for the next group). Returns the
   * number of writes taken.
   */
  private async writeGroup(): Promise<number> {
    const available = this.pending.nextGroup(WRITE_GROUP_MAX);
    const group: PendingWrite[] = [];
    const tx: TxState = { enqueued: 0 };
    const outcomes: Outcome<unknown>[] = [];
    try {
      await this.db.connection().execute(async (control) => {
        await this.dialect.beginWrite(control);
        this.writeStats.groups++;
        // The writes' statements are counted (writeStats), the group's own are not.
        const conn = control.withPlugin(this.countStatements);
        const started = performance.now();
        const pipeline = this.dialect.pipeline;
        /** On a pipelined connection: the group's statements sent without waiting for the answers before. */
        const pipelined = pipeline ? (await pipeline.over(control)).withPlugin(this.countStatements) : undefined;
        /** The optimistic pass committed along with its outbox rows (pipelined). */
        let committed = false;
        try {
          // The optimistic pass defers its writes' outbox rows and inserts them all before the
          // commit: the same rows in the same order in the same transaction, in one statement per
          // 64 instead of one per write (on Postgres each statement is a round trip of the one
          // write connection, which bounds a drain's rate: 4.4 single-row outbox INSERTs per
          // migration of ≈13.7 statements in bench d). No write reads the outbox it writes.
          tx.deferred = [];
          if (available === 1) {
            group.push(this.takeNext());
            // On a pipelined connection too: statements a write asks for together go together.
            outcomes.push({ ok: true, value: await group[0]!.fn(pipelined ?? conn, tx) });
            // Its rows and the commit in one round trip; its failure to insert them is its own.
            if (pipeline) {
              await this.commitWithDeferred(pipeline, tx);
              committed = true;
            }
          } else {
            // Optimistic: the writes one after another without savepoints (two statements fewer
            // each: on Postgres two network round trips of a group's four to six per write), and
            // on a pipelined connection those with disjoint keys together (see write).
            let failed = false;
            /** Writes under way together, and the keys they hold. */
            const running = new Set<Promise<void>>();
            const held = new Set<string>();
            const settle = async (): Promise<void> => {
              while (running.size > 0) await Promise.all(running);
            };
            try {
              while (!failed && groupTakesMore({ taken: group.length, available, elapsedMs: performance.now() - started, max: WRITE_GROUP_MAX, budgetMs: this.o.writeGroupBudgetMs, lastFirst: group[group.length - 1]?.first, firstWaiting: this.pending.firstWaiting })) {
                const w = this.takeNext();
                const i = group.length;
                group.push(w);
                const keys = pipelined === undefined ? undefined : w.keys;
                const together = keys !== undefined && !keys.some((k) => held.has(k));
                if (!together && pipelined !== undefined) {
                  // How often, and how long, a pipelined group waits for the writes under way (bench d).
                  const t = turns.enabled ? turns.now() : 0;
                  await settle();
                  turns.record(keys === undefined ? 'store.pipeline waits: no keys' : 'store.pipeline waits: a key in use', t);
                } else if (!together) {
                  await settle();
                }
                // One under way failed: this one is redone with the others (below).
                if (failed) break;
                const run = w.fn(pipelined ?? conn, tx).then(
                  (value) => {
                    outcomes[i] = { ok: true, value };
                  },
                  () => {
                    failed = true;
                  },
                );
                if (!together) {
                  await run;
                  continue;
                }
                for (const k of keys) held.add(k);
                const under: Promise<void> = run.then(() => {
                  for (const k of keys) held.delete(k);
                  running.delete(under);
                });
                running.add(under);
              }
            } finally {
              // Every statement answered before the group's next one (or its rollback) is sent.
              await settle();
            }
            if (!failed) {
              try {
                if (pipeline) {
                  await this.commitWithDeferred(pipeline, tx);
                  committed = true;
                } else {
                  await this.flushDeferred(conn, tx);
                }
              } catch {
                // (Pipelined, the transaction has ended: its commit rolled it back.)
                failed = true;
              }
            }
            if (failed) {
              // One failed, perhaps half-way (its statements so far are in the transaction, and
              // Postgres refuses any further statement after a failed one), or the deferred outbox
              // rows could not be inserted: the group is undone and written again, each write in
              // its own savepoint with its own outbox rows, so only the failing one fails.
              this.groupRedos++;
              await control.executeQuery(TX.rollback);
              outcomes.length = 0;
              tx.enqueued = 0;
              tx.deferred = undefined;
              await this.dialect.beginWrite(control);
              this.writeStats.groups++;
              for (const w of group) outcomes.push(await inSavepoint(control, tx, () => w.fn(conn, tx)));
            }
          }
          if (!committed) {
            // A single write's rows (its failure to insert them is its own).
            if (tx.deferred) await this.flushDeferred(conn, tx);
            await control.executeQuery(TX.commit);
          }
        } catch (err) {
          try {
            await control.executeQuery(TX.rollback);
          } catch {
            // The database already rolled back (e.g. SQLite after SQLITE_FULL); nothing to undo.
          }
          throw err;
        } finally {
          pipeline?.end();
        }
      });
    } catch (err) {
      // Refused before any write ran (e.g. fencing at begin): the writes it was to take fail with it.
      if (group.length === 0) group.push(...this.pending.take(Math.max(1, available)));
      // Nothing of the group was committed: a write that failed on its own says why; the others
      // get the transaction's error.
      group.forEach((w, i) => {
        const o = outcomes[i];
        w.reject(o && !o.ok ? o.err : err);
      });
      return group.length;
    }
    if (tx.enqueued > 0) this.notify();
    group.forEach((w, i) => {
      const o = outcomes[i]!;
      if (o.ok) w.resolve(o.value);
      else w.reject(o.err);
    });
    return group.length;
  }

  /**
   * Pipelined: the outbox rows the writes deferred and the commit, sent together (one round trip
   * instead of two; the group's own round trips are most of a pipelined group's time).
   * @throws the first INSERT's failure, after the commit's answer: Postgres then ended the failed
   *   transaction with a rollback
   */
  private async commitWithDeferred(pipeline: WritePipeline, tx: TxState): Promise<void> {
    const rows = tx.deferred ?? [];
    tx.deferred = undefined;
    const inserts = this.outboxQueries(rows).map((q) => pipeline.send(q));
    this.writeStats.statements += inserts.length;
    const [settled] = await Promise.all([Promise.allSettled(inserts), pipeline.send(TX.commit)]);
    throwFirstFailure(settled);
  }

  /** Inserts the outbox rows the group's writes deferred (see {@link TxState.deferred}) and stops deferring. */
  private async flushDeferred(conn: Db, tx: TxState): Promise<void> {
    const rows = tx.deferred ?? [];
    tx.deferred = undefined;
    if (rows.length > 0) await this.insertOutbox(conn, rows);
  }

  /** The next write in line, its wait in the queue recorded (turn profiler: `store.write-wait`, `first` ones apart). */
  private takeNext(): PendingWrite {
    const w = this.pending.shift()!;
    this.writeStats.writes++;
    if (w.askedAt > 0) turns.record(w.first ? 'store.write-wait first' : 'store.write-wait', w.askedAt);
    return w;
  }

  /** Runs `fn` on one consistent snapshot (a read transaction). */
  async read<T>(fn: (conn: Db) => Promise<T>): Promise<T> {
    this.checkOpen();
    return this.db.connection().execute(async (conn) => {
      const t0 = turns.enabled ? turns.now() : 0;
      await this.dialect.beginRead(conn);
      try {
        return await fn(conn);
      } finally {
        await conn.executeQuery(TX.commit);
        turns.record('store.read', t0);
      }
    });
  }

  /** @throws FailedPreconditionError once the store is closed. */
  checkOpen(): void {
    if (this.closed) throw new FailedPreconditionError('history store is closed');
  }

  /** Refuses further use and forgets the outbox listeners. */
  markClosed(): void {
    this.closed = true;
    this.listeners.clear();
  }

  /** Calls `listener` after every commit that enqueued events; returns an unsubscribe function. */
  onOutboxEnqueued(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private notify(): void {
    for (const l of this.listeners) {
      try {
        l();
      } catch (err) {
        this.log.warn('outbox listener threw', { err });
      }
    }
  }

  /**
   * Runs a hot query compiled once (per store, so per dialect) with new arguments. Building and
   * compiling a Kysely query costs more CPU than SQLite takes to run a small one; the queries
   * every migration runs several times (outbox rows, event sequence numbers, transitions) are
   * built once under `key` by `build`, whose `p(i)` marks where argument i goes.
   */
  reuse<R>(conn: Db, key: string, build: ReusableQueryBuilder<R>, args: readonly unknown[]): Promise<QueryResult<R>> {
    return conn.executeQuery<R>(this.reused(key, build, args));
  }

  /** The query {@link reuse} runs, compiled once under `key`, with `args`. */
  private reused<R>(key: string, build: ReusableQueryBuilder<R>, args: readonly unknown[]): CompiledQuery<R> {
    let q = this.reusable.get(key);
    if (q === undefined) {
      const compiled = build(this.db, param as (i: number) => never).compile() as CompiledQuery<unknown>;
      const slots = compiled.parameters.map((v) => {
        const m = typeof v === 'string' ? PARAM.exec(v) : null;
        if (m === null) throw new Error(`reusable query ${key}: parameter ${String(v)} is not an argument placeholder`);
        return Number(m[1]);
      });
      this.reusable.set(key, (q = { compiled, slots }));
    }
    const { compiled, slots } = q;
    return { ...(compiled as CompiledQuery<R>), parameters: slots.map((i) => args[i]) };
  }

  /** Hands out the run's next event sequence number; null when the run does not exist. */
  async nextSequence(trx: Db, runId: string): Promise<number | null> {
    return (await this.takeSequences(trx, [runId], 1)).get(runId) ?? null;
  }

  /**
   * Counts the event sequence of each run in `runIds` (distinct ids) up by `by`, with one
   * UPDATE … RETURNING per {@link REUSE_CHUNK} runs: the map holds each run's last sequence number
   * afterwards (its `by` events take the numbers up to it). A run that does not exist is left out.
   */
  async takeSequences(trx: Db, runIds: readonly string[], by: number): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    for (let i = 0; i < runIds.length; i += REUSE_CHUNK) {
      const ids = runIds.slice(i, i + REUSE_CHUNK);
      const r = await this.reuse(
        trx,
        `takeSequences×${ids.length}`,
        (db, p) =>
          db
            .updateTable('runs')
            .set((eb) => ({ last_sequence: eb('last_sequence', '+', p(0)) }))
            .where(
              'id',
              'in',
              ids.map((_, k) => p(k + 1)),
            )
            .returning(['id', 'last_sequence']),
        [by, ...ids],
      );
      for (const row of r.rows) out.set(row.id, Number(row.last_sequence));
    }
    return out;
  }

  /** Writes an event into the outbox (inside the caller's transaction). */
  async enqueue(trx: Db, tx: TxState, payload: NonNullable<Event['payload']>, time: Date, run?: { runId: string; sequence: number }): Promise<void> {
    await this.enqueueAll(trx, tx, [{ payload, time, ...(run ? { run } : {}) }]);
  }

  /**
   * Writes events into the outbox in this order, one INSERT per {@link REUSE_CHUNK} events (inside
   * the caller's transaction): a run's end writes two, a sample batch one per run. In a group
   * commit's optimistic pass the rows are only built here and inserted by the group, all at once,
   * before its commit ({@link TxState.deferred}).
   */
  async enqueueAll(trx: Db, tx: TxState, events: readonly OutboxEvent[]): Promise<void> {
    const now = this.now();
    const rows = events.map((e) => {
      const event = buildEvent(e.payload, { id: this.newId(), time: e.time, runSequence: e.run?.sequence ?? 0 });
      const bytes = encodeEvent(event);
      return [event.id, event.subject, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), e.run?.runId ?? null, e.run?.sequence ?? 0, now];
    });
    tx.enqueued += rows.length;
    if (tx.deferred) tx.deferred.push(...rows);
    else await this.insertOutbox(trx, rows);
  }

  /** Inserts outbox rows (as {@link enqueueAll} builds them) in this order, one INSERT per {@link REUSE_CHUNK}. */
  private async insertOutbox(trx: Db, rows: readonly unknown[][]): Promise<void> {
    for (const q of this.outboxQueries(rows)) await trx.executeQuery(q);
  }

  /** The INSERTs of outbox rows (as {@link enqueueAll} builds them), in this order, one per {@link REUSE_CHUNK}. */
  private outboxQueries(rows: readonly unknown[][]): CompiledQuery<unknown>[] {
    const out: CompiledQuery<unknown>[] = [];
    for (let i = 0; i < rows.length; i += REUSE_CHUNK) {
      const chunk = rows.slice(i, i + REUSE_CHUNK);
      const n = chunk.length;
      out.push(
        this.reused(
          n === 1 ? 'enqueue' : `enqueue×${n}`,
          (db, p) =>
            db.insertInto('outbox').values(
              chunk.map((_, k) => ({ event_id: p(6 * k), subject: p(6 * k + 1), payload: p(6 * k + 2), run_id: p(6 * k + 3), run_sequence: p(6 * k + 4), created_at: p(6 * k + 5) })),
            ),
          chunk.flat(),
        ),
      );
    }
    return out;
  }

  /** Enqueues a run event with the run's next sequence number. @throws NotFoundError */
  async enqueueRunEvent(trx: Db, tx: TxState, runId: string, payload: NonNullable<Event['payload']>, time: Date): Promise<void> {
    const sequence = await this.nextSequence(trx, runId);
    if (sequence === null) throw new NotFoundError(`run ${runId} not found`);
    await this.enqueue(trx, tx, payload, time, { runId, sequence });
  }
}
