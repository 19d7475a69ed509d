/**
 * A fan-out channel: every subscriber gets every value published after it subscribed, on its own
 * bounded queue, as an async iterator; a slow subscriber loses its oldest values (counted), never
 * blocks the publisher or the other subscribers. `close()` ends every iterator after it drained.
 */

export interface BroadcastOptions {
  /** Per-subscriber queue bound (default 4096). */
  readonly limit?: number;
}

class Subscriber<T> implements AsyncIterableIterator<T> {
  private readonly queue: T[] = [];
  private waiter: ((r: IteratorResult<T>) => void) | undefined;
  private ended = false;
  dropped = 0;

  constructor(
    private readonly limit: number,
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

  constructor(opts: BroadcastOptions = {}) {
    this.limit = opts.limit ?? 4096;
  }

  /** Delivers `v` to every current subscriber. Ignored after close. */
  publish(v: T): void {
    if (this.closedFlag) return;
    for (const s of this.subs) s.push(v);
  }

  /**
   * Subscribes. `initial` values are queued first (e.g. the current state for a late joiner).
   * The iterator ends when the broadcast closes, or when `signal` fires.
   */
  subscribe(initial: readonly T[] = [], signal?: AbortSignal): AsyncIterableIterator<T> {
    const sub = new Subscriber<T>(this.limit, (s) => this.subs.delete(s));
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
