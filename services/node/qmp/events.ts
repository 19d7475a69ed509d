/**
 * Event fan-out. Every subscriber has its own queue and filter, so no consumer steals another's
 * events (the trap of a single shared queue); each queue is bounded, and a subscriber that falls
 * behind is failed loudly with `QmpEventOverflowError` instead of silently losing events.
 */
import { abortError } from './abort.js';
import { QmpEventOverflowError } from './errors.js';
import type { QmpEvent } from './protocol.js';

/** Default per-subscriber queue bound. */
export const DEFAULT_EVENT_QUEUE_LIMIT = 1024;

export interface QmpEventFilter {
  /** Event names to receive (exact, e.g. `['STOP', 'RESUME']`); all events when omitted. */
  readonly names?: readonly string[];
  /** Ends the iteration with CancelledError (or the signal's MigdError reason) when it fires. */
  readonly signal?: AbortSignal;
  /**
   * Most events held for this subscriber; default 1024, `Infinity` for unbounded (only for a
   * consumer that is known to keep up). On overflow the iteration yields what it holds, then
   * throws QmpEventOverflowError.
   */
  readonly limit?: number;
}

type Waiter = { resolve: (r: IteratorResult<QmpEvent>) => void; reject: (e: unknown) => void };

/**
 * One subscriber's view: an async iterator over the events that match its filter, in arrival
 * order. `break` out of a `for await` (or `close()`) unsubscribes.
 */
export class QmpEventSubscription implements AsyncIterableIterator<QmpEvent> {
  private readonly queue: QmpEvent[] = [];
  private waiter: Waiter | undefined;
  private ended = false;
  private failure: unknown;
  private readonly names: ReadonlySet<string> | undefined;
  private readonly limit: number;
  private readonly signal: AbortSignal | undefined;
  private readonly onAbort = (): void => this.fail(abortError(this.signal!), true);

  /** @internal Created by `EventHub.subscribe`. */
  constructor(
    filter: QmpEventFilter,
    private readonly detach: (sub: QmpEventSubscription) => void,
  ) {
    this.names = filter.names === undefined ? undefined : new Set(filter.names);
    this.limit = filter.limit ?? DEFAULT_EVENT_QUEUE_LIMIT;
    this.signal = filter.signal;
    if (this.signal?.aborted) this.onAbort();
    else this.signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  /** @internal Offers an event; ignored when filtered out or the subscription has ended. */
  deliver(ev: QmpEvent): void {
    if (this.ended || (this.names !== undefined && !this.names.has(ev.event))) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: ev, done: false });
      return;
    }
    if (this.queue.length >= this.limit) {
      this.fail(new QmpEventOverflowError(this.limit), false);
      return;
    }
    this.queue.push(ev);
  }

  /**
   * @internal Ends the subscription: buffered events are still yielded, then the iteration
   * finishes (`error` undefined) or throws `error`.
   */
  end(error?: unknown): void {
    if (this.ended) return;
    if (error === undefined) {
      this.ended = true;
      this.release();
      this.settleWaiter();
    } else {
      this.fail(error, false);
    }
  }

  private fail(error: unknown, discard: boolean): void {
    if (this.ended && !discard) return;
    this.ended = true;
    this.failure = error;
    if (discard) this.queue.length = 0;
    this.release();
    this.settleWaiter();
  }

  private settleWaiter(): void {
    if (!this.waiter || this.queue.length > 0) return;
    const w = this.waiter;
    this.waiter = undefined;
    if (this.failure !== undefined) {
      const f = this.failure;
      this.failure = undefined;
      w.reject(f);
    } else {
      w.resolve({ value: undefined, done: true });
    }
  }

  private release(): void {
    this.signal?.removeEventListener('abort', this.onAbort);
    this.detach(this);
  }

  /** Events currently buffered. */
  get buffered(): number {
    return this.queue.length;
  }

  next(): Promise<IteratorResult<QmpEvent>> {
    const ev = this.queue.shift();
    if (ev !== undefined) return Promise.resolve({ value: ev, done: false });
    if (this.ended) {
      if (this.failure !== undefined) {
        const f = this.failure;
        this.failure = undefined; // throw once, then report done
        return Promise.reject(f);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    if (this.waiter) return Promise.reject(new Error('QmpEventSubscription: concurrent next() calls'));
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  /** Unsubscribes; pending `next()` resolves done. Called by `for await` on `break`. */
  return(): Promise<IteratorResult<QmpEvent>> {
    this.close();
    return Promise.resolve({ value: undefined, done: true });
  }

  /** Unsubscribes and drops anything buffered. Idempotent. */
  close(): void {
    this.queue.length = 0;
    this.failure = undefined;
    if (!this.ended) {
      this.ended = true;
      this.release();
    }
    this.settleWaiter();
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}

/** The set of live subscriptions of one client. */
export class EventHub {
  private readonly subs = new Set<QmpEventSubscription>();

  subscribe(filter: QmpEventFilter = {}): QmpEventSubscription {
    const sub = new QmpEventSubscription(filter, (s) => this.subs.delete(s));
    // A subscription aborted at birth has already detached; do not re-add it.
    if (!(filter.signal?.aborted ?? false)) this.subs.add(sub);
    return sub;
  }

  dispatch(ev: QmpEvent): void {
    for (const sub of [...this.subs]) sub.deliver(ev);
  }

  /** Ends every live subscription (with `error`, or normally when undefined). */
  endAll(error?: unknown): void {
    for (const sub of [...this.subs]) sub.end(error);
    this.subs.clear();
  }

  get size(): number {
    return this.subs.size;
  }
}
