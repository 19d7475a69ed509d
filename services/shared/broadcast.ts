/**
 * A fan-out channel: every subscriber gets every value published after it subscribed, on its own
 * bounded queue, as an async iterator; a slow subscriber never blocks the publisher or the other
 * subscribers. When its queue is full it either loses its oldest values (counted; in-process
 * readers that only need the latest) or — `overflow: 'fail'`, for streams to remote clients —
 * ends with ResourceExhaustedError (reason STREAM_OVERFLOW), so a client that stops reading costs
 * at most `limit` values of memory. `close()` ends every iterator after it drained.
 */
import { ResourceExhaustedError } from './errors.js';

/** What a subscriber's full queue does with one more value. */
export type Overflow = 'drop-oldest' | 'fail';

export interface BroadcastOptions {
  /** Per-subscriber queue bound (default 4096). */
  readonly limit?: number;
  /** Default for subscribers (default 'drop-oldest'). */
  readonly overflow?: Overflow;
}

/** Options of one subscription. */
export interface SubscribeOptions {
  /** Ends the iterator. */
  readonly signal?: AbortSignal;
  /** Overrides the broadcast's overflow behaviour for this subscriber. */
  readonly overflow?: Overflow;
}

class Subscriber<T> implements AsyncIterableIterator<T> {
  private readonly queue: T[] = [];
  private waiter: ((r: IteratorResult<T>) => void) | undefined;
  private ended = false;
  private failure: Error | undefined;
  dropped = 0;

  constructor(
    private readonly limit: number,
    private readonly overflow: Overflow,
    private readonly onClose: (s: Subscriber<T>) => void,
  ) {}

  push(v: T): void {
    if (this.ended) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w({ value: v, done: false });
      return;
    }
    if (this.queue.length >= this.limit) {
      if (this.overflow === 'fail') {
        // The reader fell `limit` values behind: drop what it has not read and end it with an
        // error instead of holding more.
        this.failure = new ResourceExhaustedError(`the reader fell more than ${this.limit} messages behind; the stream was ended (read faster, or narrow what you watch)`, { reason: 'STREAM_OVERFLOW' });
        this.queue.length = 0;
        this.ended = true;
        this.onClose(this);
        return;
      }
      this.queue.shift();
      this.dropped++;
    }
    this.queue.push(v);
  }

  end(): void {
    this.ended = true;
    if (this.waiter && this.queue.length === 0) {
      const w = this.waiter;
      this.waiter = undefined;
      w({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<T>> {
    const v = this.queue.shift();
    if (v !== undefined) return Promise.resolve({ value: v, done: false });
    if (this.failure) {
      const f = this.failure;
      this.failure = undefined;
      return Promise.reject(f);
    }
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => (this.waiter = resolve));
  }

  return(): Promise<IteratorResult<T>> {
    this.ended = true;
    this.queue.length = 0;
    this.onClose(this);
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w({ value: undefined, done: true });
    }
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }
}

export class Broadcast<T> {
  private readonly subs = new Set<Subscriber<T>>();
  private closedFlag = false;
  private readonly limit: number;
  private readonly overflow: Overflow;

  constructor(opts: BroadcastOptions = {}) {
    this.limit = opts.limit ?? 4096;
    this.overflow = opts.overflow ?? 'drop-oldest';
  }

  /** Delivers `v` to every current subscriber. Ignored after close. */
  publish(v: T): void {
    if (this.closedFlag) return;
    for (const s of this.subs) s.push(v);
  }

  /**
   * Subscribes. `initial` values are queued first (e.g. the current state for a late joiner).
   * The iterator ends when the broadcast closes, or when the signal fires; with overflow 'fail'
   * it throws ResourceExhaustedError (STREAM_OVERFLOW) once it falls `limit` values behind.
   */
  subscribe(initial: readonly T[] = [], opts: AbortSignal | SubscribeOptions = {}): AsyncIterableIterator<T> {
    const o: SubscribeOptions = opts instanceof AbortSignal ? { signal: opts } : opts;
    const signal = o.signal;
    const sub = new Subscriber<T>(this.limit, o.overflow ?? this.overflow, (s) => this.subs.delete(s));
    for (const v of initial) sub.push(v);
    if (this.closedFlag) sub.end();
    else this.subs.add(sub);
    if (signal) {
      if (signal.aborted) void sub.return();
      else signal.addEventListener('abort', () => void sub.return(), { once: true });
    }
    return sub;
  }

  /** Ends every subscription (after it drains) and refuses new values. */
  close(): void {
    this.closedFlag = true;
    for (const s of this.subs) s.end();
    this.subs.clear();
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  get subscribers(): number {
    return this.subs.size;
  }
}
