/**
 * The serial console of one VM. QEMU's socket chardev serves one client at a time, so the manager
 * is the single reader of `serial.sock` and fans the bytes out: each subscriber gets its own bounded
 * queue. History is not replayed from the socket: QEMU's `logfile=` keeps every byte (also while
 * nobody is connected), and late joiners read `serial.log` (the seam between history and live
 * bytes may duplicate or miss a few bytes).
 */
import net from 'node:net';
import { ResourceExhaustedError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { abortError, sleep } from '../qmp/abort.js';
import { socketStream, type QmpStream } from '../qmp/transport.js';

/** Default bytes held per subscriber before it is failed as too slow. */
export const DEFAULT_SERIAL_QUEUE_BYTES = 4 * 1024 * 1024;

/** Console bytes for one subscriber, in order; ends when QEMU exits or the manager detaches. */
export class SerialSubscription implements AsyncIterableIterator<Uint8Array> {
  private readonly queue: Uint8Array[] = [];
  private bytes = 0;
  private waiter: { resolve: (r: IteratorResult<Uint8Array>) => void; reject: (e: unknown) => void } | undefined;
  private ended = false;
  private failure: unknown;
  private readonly onAbort = (): void => {
    this.queue.length = 0;
    this.finish(abortError(this.signal!));
  };

  /** @internal */
  constructor(
    private readonly limitBytes: number,
    private readonly signal: AbortSignal | undefined,
    private readonly detach: (s: SerialSubscription) => void,
  ) {
    if (signal?.aborted) this.onAbort();
    else signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  /** @internal */
  deliver(chunk: Uint8Array): void {
    if (this.ended) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: chunk, done: false });
      return;
    }
    if (this.bytes + chunk.length > this.limitBytes) {
      this.finish(new ResourceExhaustedError(`serial subscriber fell more than ${this.limitBytes} bytes behind`, { reason: 'SERIAL_OVERFLOW' }));
      return;
    }
    this.queue.push(chunk);
    this.bytes += chunk.length;
  }

  /** @internal Ends after the buffered bytes; throws `error` at the end when given. */
  finish(error?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.failure = error;
    this.signal?.removeEventListener('abort', this.onAbort);
    this.detach(this);
    if (this.waiter && this.queue.length === 0) {
      const w = this.waiter;
      this.waiter = undefined;
      if (error !== undefined) {
        this.failure = undefined;
        w.reject(error);
      } else {
        w.resolve({ value: undefined, done: true });
      }
    }
  }

  next(): Promise<IteratorResult<Uint8Array>> {
    const chunk = this.queue.shift();
    if (chunk !== undefined) {
      this.bytes -= chunk.length;
      return Promise.resolve({ value: chunk, done: false });
    }
    if (this.ended) {
      if (this.failure !== undefined) {
        const f = this.failure;
        this.failure = undefined;
        return Promise.reject(f);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  return(): Promise<IteratorResult<Uint8Array>> {
    this.queue.length = 0;
    this.finish();
    this.failure = undefined;
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}

/** The manager's connection to one VM's serial socket. */
export class SerialConsole {
  private stream: QmpStream | undefined;
  private readonly subs = new Set<SerialSubscription>();
  private closed = false;
  private reader: Promise<void> = Promise.resolve();

  constructor(
    readonly socketPath: string,
    private readonly log: Logger,
    private readonly limitBytes = DEFAULT_SERIAL_QUEUE_BYTES,
  ) {}

  /**
   * Connects (retrying while QEMU creates the socket) and starts reading.
   * @throws Error when the socket cannot be reached before `timeoutMs`.
   * @throws CancelledError when `signal` fires.
   */
  async start(options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
    const deadline = Date.now() + (options.timeoutMs ?? 5000);
    for (;;) {
      try {
        this.stream = await connectUnix(this.socketPath, options.signal);
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || Date.now() > deadline) throw err;
      }
      await sleep(10, options.signal);
    }
    if (this.closed) {
      this.stream.close();
      return;
    }
    const stream = this.stream;
    this.reader = (async () => {
      try {
        for await (const chunk of stream.chunks) for (const s of [...this.subs]) s.deliver(chunk);
      } catch (err) {
        this.log.warn('serial console read failed', { error: err });
      }
      this.stream = undefined;
      for (const s of [...this.subs]) s.finish();
    })();
  }

  get connected(): boolean {
    return this.stream !== undefined;
  }

  /** A live view of console output from now on. Ends when QEMU exits or the console is closed. */
  subscribe(options: { signal?: AbortSignal; limitBytes?: number } = {}): SerialSubscription {
    const sub = new SerialSubscription(options.limitBytes ?? this.limitBytes, options.signal, (s) => this.subs.delete(s));
    if (this.closed || this.stream === undefined) sub.finish();
    else if (!(options.signal?.aborted ?? false)) this.subs.add(sub);
    return sub;
  }

  /**
   * Types into the console (guest's ttyS0 input).
   * @throws Error when the console is not connected.
   */
  async write(data: Uint8Array | string): Promise<void> {
    if (this.stream === undefined) throw new Error('serial console not connected');
    await this.stream.write(typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
  }

  /** Disconnects (QEMU keeps running; output keeps going to serial.log). Subscribers end. */
  async close(): Promise<void> {
    this.closed = true;
    this.stream?.close();
    await this.reader;
    for (const s of [...this.subs]) s.finish();
  }
}

function connectUnix(path: string, signal: AbortSignal | undefined): Promise<QmpStream> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError(signal));
      return;
    }
    const sock = net.createConnection({ path });
    const onAbort = (): void => {
      sock.destroy();
      reject(abortError(signal!));
    };
    sock.once('connect', () => {
      signal?.removeEventListener('abort', onAbort);
      sock.removeAllListeners('error');
      resolve(socketStream(sock));
    });
    sock.once('error', (err) => {
      signal?.removeEventListener('abort', onAbort);
      sock.destroy();
      reject(err);
    });
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
