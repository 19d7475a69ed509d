/**
 * The outbox relay: publishes a store's outbox to JetStream, in order, at least once.
 *
 * - Reads unpublished rows (lowest seq first) and publishes the batch in that order with `msgID` =
 *   event id, without waiting for each PubAck before the next publish (see {@link publishInOrder}):
 *   every row after the first expects the one before it as the stream's last message
 *   (`Nats-Expected-Last-Msg-Id`), so a row the stream did not store makes it refuse the rows after
 *   it instead of storing them ahead of it. Only the acknowledged prefix is marked published; the
 *   rest waits for the next pass. The stream keeps the outbox order (and with it each run's
 *   `run_sequence` order).
 * - Marks the published rows in one short transaction afterwards; no SQLite transaction is ever
 *   held across network I/O. A crash between publish and mark re-publishes those rows on the next
 *   start, and JetStream drops them as duplicates (within the stream's duplicate window).
 * - While NATS is unreachable it retries with exponential backoff (jittered); rows stay in the
 *   outbox meanwhile, so nothing is lost. A stream that disappeared (memory storage after a server
 *   restart) is re-created.
 * - Wakes as soon as the store reports newly committed rows, with a slow poll as a safety net.
 *
 * Give it a connection with `maxReconnectAttempts: -1` so it survives server restarts.
 */
import { createInbox, ErrorCode, Events, type JetStreamManager, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from 'nats';
import { CancelledError, ConfigError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { retry } from '../retry.js';
import { eventHeaders } from './codec.js';
import { ensureEventStream, resolveEventStreamOptions, type EventStreamOptions } from './jetstream.js';
import type { OutboxRecord, OutboxSource } from './outbox.js';

/** Backlog figures reported to {@link OutboxRelayOptions.onLag}. */
export interface RelayLag {
  unpublished: number;
  /** Age of the oldest unpublished row in milliseconds (0 when none). */
  oldestAgeMs: number;
}

/** Options of {@link startOutboxRelay}. */
export interface OutboxRelayOptions {
  /** The store's outbox. */
  source: OutboxSource;
  /** The NATS connection (owned by the caller: the relay never closes it). */
  nc: NatsConnection;
  /** The events stream; ensured at start and again when it turns out to be missing. */
  stream?: EventStreamOptions;
  /** Set false to skip creating/updating the stream (someone else manages it). Default true. */
  manageStream?: boolean;
  /** Rows read per batch. Default 256. */
  batchSize?: number;
  /** How long to wait for one PubAck, in ms. Default 5000. */
  publishTimeoutMs?: number;
  /** Poll interval when no wake-up arrives, in ms. Default 1000. */
  pollIntervalMs?: number;
  /** First retry delay after a failure, in ms. Default 100. */
  retryInitialMs?: number;
  /** Longest retry delay, in ms. Default 5000. */
  retryMaxMs?: number;
  /** Minimum interval between two {@link onLag} reports while busy, in ms. Default 1000. */
  lagIntervalMs?: number;
  /** Receives the backlog figures (e.g. to set the outbox-lag gauges). */
  onLag?: (lag: RelayLag) => void;
  /** Clock in ms since the epoch. Default `Date.now`. */
  now?: () => number;
  logger?: Logger;
}

/** Counters of a relay since it started. */
export interface RelayStats {
  /** Events the stream stored. */
  published: number;
  /** Events the stream reported as duplicates (already stored earlier). */
  duplicates: number;
  /** Failed publish or outbox operations. */
  failures: number;
}

/** A running relay. */
export interface OutboxRelay {
  /** Counters since start. */
  stats(): RelayStats;
  /**
   * Resolves once the relay has read an empty outbox after this call (waits through outages).
   * @throws CancelledError when the relay stops first; the signal's reason when it aborts.
   */
  idle(signal?: AbortSignal): Promise<void>;
  /** Stops the loop once the batch being published is acknowledged (or not), marking what was; idempotent. */
  stop(): Promise<void>;
}

/**
 * Starts publishing `opts.source` to JetStream.
 * @throws ConfigError for bad options.
 */
export function startOutboxRelay(opts: OutboxRelayOptions): OutboxRelay {
  const relay = new Relay(opts);
  relay.start();
  return relay;
}

class Relay implements OutboxRelay {
  private readonly source: OutboxSource;
  private readonly acks: PubAckInbox;
  private readonly nc: NatsConnection;
  private readonly streamOpts: ReturnType<typeof resolveEventStreamOptions>;
  private readonly manageStream: boolean;
  private readonly batchSize: number;
  private readonly publishTimeoutMs: number;
  private readonly pollIntervalMs: number;
  private readonly retryInitialMs: number;
  private readonly retryMaxMs: number;
  private readonly lagIntervalMs: number;
  private readonly onLag: ((lag: RelayLag) => void) | undefined;
  private readonly now: () => number;
  private readonly log: Logger;

  private readonly counters: RelayStats = { published: 0, duplicates: 0, failures: 0 };
  private readonly stopper = new AbortController();
  private loop: Promise<void> | undefined;
  private unsubscribe: (() => void) | undefined;
  /** Set by a wake-up; cleared before each read so no wake-up is lost. */
  private pending = true;
  private wakeWaiter: (() => void) | undefined;
  /** Waiters of idle(); each is resolved only by an empty read that started after it. */
  private idleWaiters: Array<{ after: number; resolve: () => void; reject: (err: Error) => void }> = [];
  private readsStarted = 0;
  private streamReady = false;
  private jsmPromise: Promise<JetStreamManager> | undefined;
  private lastLagAt = 0;
  /** Ends the current round of retries (on reconnect), so the next attempt starts at once. */
  private round: AbortController | undefined;
  private statusWatch: Partial<{ stop(): void }> | undefined;

  constructor(opts: OutboxRelayOptions) {
    const pos = (name: string, v: number | undefined, dflt: number): number => {
      const r = v ?? dflt;
      if (!(Number.isFinite(r) && r > 0)) throw new ConfigError(`relay.${name}`, 'must be a positive number');
      return r;
    };
    this.source = opts.source;
    this.nc = opts.nc;
    this.acks = new PubAckInbox(opts.nc);
    this.streamOpts = resolveEventStreamOptions(opts.stream);
    this.manageStream = opts.manageStream ?? true;
    this.batchSize = Math.floor(pos('batchSize', opts.batchSize, 256));
    this.publishTimeoutMs = pos('publishTimeoutMs', opts.publishTimeoutMs, 5000);
    this.pollIntervalMs = pos('pollIntervalMs', opts.pollIntervalMs, 1000);
    this.retryInitialMs = pos('retryInitialMs', opts.retryInitialMs, 100);
    this.retryMaxMs = pos('retryMaxMs', opts.retryMaxMs, 5000);
    this.lagIntervalMs = pos('lagIntervalMs', opts.lagIntervalMs, 1000);
    if (this.retryMaxMs < this.retryInitialMs) throw new ConfigError('relay.retryMaxMs', 'must be >= relay.retryInitialMs');
    this.onLag = opts.onLag;
    this.now = opts.now ?? Date.now;
    this.log = opts.logger ?? createLogger('outbox-relay');
  }

  start(): void {
    this.unsubscribe = this.source.onOutboxEnqueued(() => this.wake());
    // After a reconnect, retry at once instead of finishing the backoff delay.
    const status = this.nc.status();
    // Typed as AsyncIterable, implemented by a queued iterator with stop().
    this.statusWatch = status as Partial<{ stop(): void }>;
    void (async () => {
      for await (const s of status) {
        if (s.type === Events.Reconnect) {
          this.round?.abort();
          this.wake();
        }
      }
    })().catch(() => undefined);
    this.loop = this.run().catch((err: unknown) => {
      this.log.error('outbox relay stopped on an unexpected error', { err });
    });
  }

  stats(): RelayStats {
    return { ...this.counters };
  }

  idle(signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason as Error);
      if (this.stopping) return reject(new CancelledError('outbox relay stopped'));
      const waiter = {
        reject,
        after: this.readsStarted,
        resolve: (): void => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      const onAbort = (): void => {
        this.idleWaiters = this.idleWaiters.filter((w) => w !== waiter);
        reject(signal?.reason as Error);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.idleWaiters.push(waiter);
      this.wake();
    });
  }

  async stop(): Promise<void> {
    this.stopper.abort();
    this.unsubscribe?.();
    this.statusWatch?.stop?.();
    this.wakeWaiter?.();
    await this.loop;
    this.acks.close();
    for (const w of this.idleWaiters.splice(0)) w.reject(new CancelledError('outbox relay stopped'));
  }

  private wake(): void {
    this.pending = true;
    const w = this.wakeWaiter;
    this.wakeWaiter = undefined;
    w?.();
  }

  private get stopping(): boolean {
    return this.stopper.signal.aborted;
  }

  private async run(): Promise<void> {
    while (!this.stopping) {
      // A round retries failed cycles with back-off until one works; a reconnect ends the round
      // (and its delay) so the next cycle starts at once. New rows do not cut a delay short.
      this.round = new AbortController();
      let outcome: 'idle' | 'busy';
      try {
        outcome = await retry(
          async () => {
            const r = await this.cycle();
            if (r instanceof Error) throw r;
            return r;
          },
          {
            initialMs: this.retryInitialMs,
            maxMs: this.retryMaxMs,
            jitter: 0.25,
            signal: AbortSignal.any([this.stopper.signal, this.round.signal]),
            retryable: () => true,
            onRetry: (err, failuresInRow, retryInMs) => {
              this.counters.failures++;
              this.log.warn('outbox relay: publishing failed; will retry', { err, retryInMs, failuresInRow });
            },
          },
        );
      } catch {
        continue; // stopped, or reconnected: go round again (the loop ends when stopped)
      } finally {
        this.round = undefined;
      }
      if (this.stopping) break;
      if (outcome === 'idle') await this.waitForWork();
    }
  }

  /** One read-publish-mark round. Returns 'idle', 'busy' (more may follow) or the failure. */
  private async cycle(): Promise<'idle' | 'busy' | Error> {
    if (this.manageStream && !this.streamReady) {
      try {
        await ensureEventStream(await this.jsm(), this.streamOpts);
        this.streamReady = true;
      } catch (err) {
        return asError(err);
      }
    }
    this.pending = false;
    const read = ++this.readsStarted;
    let batch: OutboxRecord[];
    try {
      batch = await this.source.readUnpublished(this.batchSize);
    } catch (err) {
      return asError(err);
    }
    if (batch.length === 0) {
      await this.reportLag(true);
      const waiting = this.idleWaiters;
      this.idleWaiters = waiting.filter((w) => w.after >= read);
      for (const w of waiting) if (w.after < read) w.resolve();
      return 'idle';
    }
    let failure: Error | undefined;
    let done: number[] = [];
    if (!this.stopping) {
      // One timer for the batch (every row is sent at once): what is still unanswered then fails.
      const timer = setTimeout(() => this.acks.failWaiting(Object.assign(new Error(`no PubAck within ${this.publishTimeoutMs} ms`), { code: ErrorCode.Timeout })), this.publishTimeoutMs);
      const r = await publishInOrder(batch, (rec, previousId) => {
        const h = eventHeaders(rec.eventId);
        h.set('Nats-Expected-Stream', this.streamOpts.name);
        if (previousId !== undefined) h.set('Nats-Expected-Last-Msg-Id', previousId);
        return this.acks.publish(rec.subject, rec.payload, h);
      }).finally(() => clearTimeout(timer));
      done = r.acked.map((rec) => rec.seq);
      this.counters.published += r.acked.length - r.duplicates;
      this.counters.duplicates += r.duplicates;
      if (r.failure !== undefined) {
        failure = asError(r.failure);
        // 503: nobody answers on the subject, i.e. the stream is gone (memory storage and a
        // restarted server, or deleted): re-create it before the retry.
        if (isNoResponders(r.failure)) this.streamReady = false;
      }
    }
    if (done.length > 0) {
      try {
        await this.source.markPublished(done, new Date(this.now()));
      } catch (err) {
        // Published but not marked: they go out again and the stream drops the duplicates.
        failure ??= asError(err);
      }
    }
    await this.reportLag(false);
    if (failure !== undefined) return failure;
    this.pending = true;
    return 'busy';
  }

  private jsm(): Promise<JetStreamManager> {
    // A failed lookup (server down) must not stick.
    this.jsmPromise ??= this.nc.jetstreamManager().catch((err: unknown) => {
      this.jsmPromise = undefined;
      throw err;
    });
    return this.jsmPromise;
  }

  private async reportLag(force: boolean): Promise<void> {
    if (this.onLag === undefined) return;
    const now = this.now();
    if (!force && now - this.lastLagAt < this.lagIntervalMs) return;
    this.lastLagAt = now;
    try {
      const lag = await this.source.outboxLag();
      this.onLag({
        unpublished: lag.unpublished,
        oldestAgeMs: lag.oldestCreatedAt === null ? 0 : Math.max(0, now - lag.oldestCreatedAt.getTime()),
      });
    } catch (err) {
      this.log.warn('outbox relay: reading the outbox lag failed', { err });
    }
  }

  private waitForWork(): Promise<void> {
    if (this.pending || this.stopping) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wakeWaiter = undefined;
        this.pending = true;
        resolve();
      }, this.pollIntervalMs);
      this.wakeWaiter = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
}

/**
 * JetStream publishes whose PubAcks come back on one inbox subscription of the relay's own.
 * nats.js's `js.publish` goes through `nc.request`, which after every answer also rejects the
 * settled promise with a new NatsError (a stack trace captured each time) and runs a timer per
 * request: 0.75 s of a coordinator's CPU at 100 nodes × 2000 VMs. Here a publish is `nc.publish`
 * with a reply subject under the inbox, and the answer settles its promise: the PubAck JSON
 * (`duplicate` when the stream already held the message id), its error (a refused expectation),
 * or the server's 503 status when no stream takes the subject (the error's code is
 * `ErrorCode.NoResponders`, as nats.js's). The caller times the batch out ({@link failWaiting}).
 * The subscription survives reconnections (nats.js subscribes again); it is made again if closed.
 */
const utf8 = new TextDecoder();

class PubAckInbox {
  private sub: Subscription | undefined;
  private prefix = '';
  private readonly waiting = new Map<string, { resolve: (a: PublishAck) => void; reject: (e: Error) => void }>();
  private next = 0;

  constructor(private readonly nc: NatsConnection) {}

  /**
   * Publishes `payload` to `subject` with `headers` (the JetStream ones included) and resolves with
   * its PubAck. @throws what `nc.publish` throws (closed connection), synchronously
   */
  publish(subject: string, payload: Uint8Array, headers: MsgHdrs): Promise<PublishAck> {
    if (!this.sub || this.sub.isClosed()) {
      const inboxPrefix = (this.nc as unknown as { options?: { inboxPrefix?: string } }).options?.inboxPrefix;
      this.prefix = `${createInbox(inboxPrefix)}.`;
      this.sub = this.nc.subscribe(`${this.prefix}*`, { callback: (_err, msg) => this.answer(msg) });
    }
    const token = (this.next++).toString(36);
    const acked = new Promise<PublishAck>((resolve, reject) => this.waiting.set(token, { resolve, reject }));
    try {
      this.nc.publish(subject, payload, { reply: this.prefix + token, headers });
    } catch (err) {
      this.waiting.delete(token);
      throw err;
    }
    return acked;
  }

  /** Rejects every publish still waiting for its answer with `err`. */
  failWaiting(err: Error): void {
    const all = [...this.waiting.values()];
    this.waiting.clear();
    for (const w of all) w.reject(err);
  }

  /** Ends the subscription; a later publish makes a new one. */
  close(): void {
    try {
      this.sub?.unsubscribe();
    } catch {
      // the connection is closed already
    }
    this.sub = undefined;
    this.failWaiting(new Error('outbox relay stopped'));
  }

  private answer(msg: Msg): void {
    if (!msg.subject.startsWith(this.prefix)) return; // an earlier subscription's late answer
    const token = msg.subject.slice(this.prefix.length);
    const w = this.waiting.get(token);
    if (!w) return; // timed out already
    this.waiting.delete(token);
    const status = msg.headers?.code ?? 0;
    if (status === 503) return w.reject(Object.assign(new Error('no responders: no stream takes the subject'), { code: ErrorCode.NoResponders }));
    if (status !== 0 && status !== 200) return w.reject(new Error(`JetStream publish answered ${status} ${msg.headers?.description ?? ''}`.trim()));
    let ack: { stream?: string; seq?: number; duplicate?: boolean; error?: { code?: number; err_code?: number; description?: string } };
    try {
      ack = JSON.parse(utf8.decode(msg.data)) as typeof ack;
    } catch (err) {
      return w.reject(new Error('JetStream publish: the PubAck is not JSON', { cause: err }));
    }
    if (ack.error) return w.reject(Object.assign(new Error(`JetStream refused the message: ${ack.error.description ?? 'error'} (${ack.error.code ?? '?'}/${ack.error.err_code ?? '?'})`), { api_error: ack.error }));
    if (!ack.stream || !(Number(ack.seq) >= 1)) return w.reject(new Error('JetStream publish: invalid PubAck'));
    w.resolve({ duplicate: ack.duplicate === true });
  }
}

/** What {@link publishInOrder} needs of a PubAck. */
export interface PublishAck {
  duplicate: boolean;
}

/** The outcome of {@link publishInOrder}. */
export interface InOrderOutcome<R> {
  /** The longest prefix of the batch whose acks all arrived, in order: these can be marked published. */
  acked: R[];
  /** How many of `acked` the stream reported as duplicates. */
  duplicates: number;
  /** The first failed ack's error (the record at index `acked.length`); undefined when all arrived. */
  failure?: unknown;
}

/**
 * Publishes `batch` in order without waiting for one ack before the next publish, then waits for
 * all the acks. `publish(rec, previousId)` must send at once (before it awaits) and must make the
 * stream refuse `rec` unless `previousId` (the record before it in this batch; undefined for the
 * first) is the stream's last stored message: then a record the stream did not store makes it
 * refuse the ones after it, so nothing is stored out of order. Only the prefix up to the first
 * failed ack counts as published; a later ack that did arrive is ignored (that record goes out
 * again in the next pass and the stream drops it as a duplicate).
 */
export async function publishInOrder<R extends { eventId: string }>(
  batch: readonly R[],
  publish: (rec: R, previousId: string | undefined) => Promise<PublishAck>,
): Promise<InOrderOutcome<R>> {
  const pending: Promise<PublishAck>[] = [];
  let previous: string | undefined;
  for (const rec of batch) {
    let p: Promise<PublishAck>;
    try {
      p = publish(rec, previous);
    } catch (err) {
      p = Promise.reject(err);
    }
    pending.push(p);
    previous = rec.eventId;
  }
  const settled = await Promise.allSettled(pending);
  const out: InOrderOutcome<R> = { acked: [], duplicates: 0 };
  for (const [i, s] of settled.entries()) {
    if (s.status === 'rejected') {
      out.failure = s.reason;
      break;
    }
    out.acked.push(batch[i]!);
    if (s.value.duplicate) out.duplicates++;
  }
  return out;
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

function isNoResponders(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === ErrorCode.NoResponders;
}
