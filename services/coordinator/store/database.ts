/**
 * What every repository of the history store shares: the one `Kysely<HistoryDatabase>`, short
 * write and read transactions, the clock and id factory, and the transactional outbox writer
 * (every state change and its event commit together; see services/shared/events/relay.ts).
 *
 * The little that differs between databases sits behind {@link StoreDialect}; the repositories'
 * queries are plain Kysely, written to run on SQLite and Postgres alike.
 */
import { sql, type Kysely } from 'kysely';
import { FailedPreconditionError, NotFoundError } from '../../shared/errors.js';
import { buildEvent, encodeEvent } from '../../shared/events/codec.js';
import { createIdFactory } from '../../shared/events/ids.js';
import type { Event } from '../../shared/gen/migd/v1/events.js';
import type { Logger } from '../../shared/log.js';
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
}

/** Counts the events a write transaction enqueued (listeners are told after its commit). */
export interface TxState {
  enqueued: number;
}

/** Writes of one group commit at most (see StoreDatabase.write). */
export const WRITE_GROUP_MAX = 256;

interface PendingWrite {
  readonly fn: (trx: Db, tx: TxState) => Promise<unknown>;
  readonly resolve: (v: unknown) => void;
  readonly reject: (err: unknown) => void;
}

/** Rows per INSERT statement (SQLite allows 32 766 bound values per statement). */
export const INSERT_CHUNK = 500;

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
  private readonly pending: PendingWrite[] = [];
  private flushing: Promise<void> | undefined;

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
   * in together, one transaction with each write in its own savepoint. A write that fails is
   * rolled back to its savepoint and rejected on its own; the others commit (and resolve) only
   * with the transaction. On a drain's hundreds of run updates a second this turns one commit per
   * update into one per group; every write still sees the ones before it, as in serial order, and
   * the fencing check (beginWrite) covers the whole transaction. `fn` must not itself wait for
   * another write (it would wait for its own group).
   */
  write<T>(fn: (trx: Db, tx: TxState) => Promise<T>): Promise<T> {
    this.checkOpen();
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ fn, resolve: resolve as (v: unknown) => void, reject });
      this.flushing ??= Promise.resolve().then(() => this.flush());
    });
  }

  /** Writes queued groups until none is left. */
  private async flush(): Promise<void> {
    try {
      while (this.pending.length > 0) await this.writeGroup(this.pending.splice(0, WRITE_GROUP_MAX));
    } finally {
      this.flushing = undefined;
    }
  }

  /** Resolves once every write asked for so far has committed or failed. */
  async settled(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  private async writeGroup(group: readonly PendingWrite[]): Promise<void> {
    const tx: TxState = { enqueued: 0 };
    const outcomes: ({ ok: true; value: unknown } | { ok: false; err: unknown })[] = [];
    try {
      await this.db.connection().execute(async (conn) => {
        await this.dialect.beginWrite(conn);
        try {
          if (group.length === 1) {
            outcomes.push({ ok: true, value: await group[0]!.fn(conn, tx) });
          } else {
            for (const w of group) {
              const before = tx.enqueued;
              await sql`savepoint migd_write`.execute(conn);
              try {
                const value = await w.fn(conn, tx);
                await sql`release savepoint migd_write`.execute(conn);
                outcomes.push({ ok: true, value });
              } catch (err) {
                outcomes.push({ ok: false, err });
                tx.enqueued = before;
                await sql`rollback to savepoint migd_write`.execute(conn);
                await sql`release savepoint migd_write`.execute(conn);
              }
            }
          }
          await sql`commit`.execute(conn);
        } catch (err) {
          try {
            await sql`rollback`.execute(conn);
          } catch {
            // The database already rolled back (e.g. SQLite after SQLITE_FULL); nothing to undo.
          }
          throw err;
        }
      });
    } catch (err) {
      // Nothing of the group was committed: a write that failed on its own says why; the others
      // get the transaction's error.
      group.forEach((w, i) => {
        const o = outcomes[i];
        w.reject(o && !o.ok ? o.err : err);
      });
      return;
    }
    if (tx.enqueued > 0) this.notify();
    group.forEach((w, i) => {
      const o = outcomes[i]!;
      if (o.ok) w.resolve(o.value);
      else w.reject(o.err);
    });
  }

  /** Runs `fn` on one consistent snapshot (a read transaction). */
  async read<T>(fn: (conn: Db) => Promise<T>): Promise<T> {
    this.checkOpen();
    return this.db.connection().execute(async (conn) => {
      await this.dialect.beginRead(conn);
      try {
        return await fn(conn);
      } finally {
        await sql`commit`.execute(conn);
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

  /** Hands out the run's next event sequence number; null when the run does not exist. */
  async nextSequence(trx: Db, runId: string): Promise<number | null> {
    const row = await trx
      .updateTable('runs')
      .set((eb) => ({ last_sequence: eb('last_sequence', '+', 1) }))
      .where('id', '=', runId)
      .returning('last_sequence')
      .executeTakeFirst();
    return row?.last_sequence ?? null;
  }

  /** Writes an event into the outbox (inside the caller's transaction). */
  async enqueue(trx: Db, tx: TxState, payload: NonNullable<Event['payload']>, time: Date, run?: { runId: string; sequence: number }): Promise<void> {
    const event = buildEvent(payload, { id: this.newId(), time, runSequence: run?.sequence ?? 0 });
    const bytes = encodeEvent(event);
    await trx
      .insertInto('outbox')
      .values({
        event_id: event.id,
        subject: event.subject,
        payload: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength),
        run_id: run?.runId ?? null,
        run_sequence: run?.sequence ?? 0,
        created_at: this.now(),
      })
      .execute();
    tx.enqueued++;
  }

  /** Enqueues a run event with the run's next sequence number. @throws NotFoundError */
  async enqueueRunEvent(trx: Db, tx: TxState, runId: string, payload: NonNullable<Event['payload']>, time: Date): Promise<void> {
    const sequence = await this.nextSequence(trx, runId);
    if (sequence === null) throw new NotFoundError(`run ${runId} not found`);
    await this.enqueue(trx, tx, payload, time, { runId, sequence });
  }
}
