/**
 * The QMP client: a small state machine modelled on python/qemu/qmp (AsyncProtocol + QMPClient).
 *
 *   idle ──connect()──▶ connecting ──greeting + qmp_capabilities──▶ running
 *     ▲                     │ failure                                  │ disconnect() / peer closed /
 *     └─────────────────────┴──────────── disconnecting ◀──────────────┘ protocol error
 *
 * One session per connection. Every command gets an integer id and a slot in the pending map; when
 * the session ends for any reason, every waiter is rejected with QmpDisconnectedError (QEMU exited
 * mid-command) and every event subscription ends. `connect()` again starts a fresh session on the
 * same transport (e.g. after the node daemon restarted, QEMU kept running).
 */
import { createLogger, type Logger } from '../../shared/log.js';
import { abortError, sleep } from './abort.js';
import type { QmpArgs, QmpReturn } from './commands.js';
import {
  QmpCommandError,
  QmpConnectError,
  QmpDisconnectedError,
  QmpError,
  QmpProtocolError,
  QmpStateError,
  QmpTimeoutError,
} from './errors.js';
import { EventHub, type QmpEventFilter, type QmpEventSubscription } from './events.js';
import { DEFAULT_MAX_LINE_BYTES, LineDecoder, encodeCommand, parseMessage, type QmpGreeting, type QmpInbound } from './protocol.js';
import { isRetryableConnectError, type QmpStream, type QmpTransport } from './transport.js';

export type QmpRunstate = 'idle' | 'connecting' | 'running' | 'disconnecting';

export interface QmpClientOptions {
  /** Name in log lines (e.g. the VM name). */
  readonly name?: string;
  readonly logger?: Logger;
  /** Default per-command timeout in ms; default 30 000. 0 or Infinity: none. */
  readonly commandTimeoutMs?: number;
  /** Default connect timeout (open + greeting + negotiation) in ms; default 5 000. */
  readonly connectTimeoutMs?: number;
  /** Longest accepted line; default 10 MiB. */
  readonly maxLineBytes?: number;
  /** Default per-subscription event queue bound; default 1024. */
  readonly eventQueueLimit?: number;
  /** Called once per command with its latency (seconds) and outcome — for metrics. */
  readonly onCommand?: (command: string, seconds: number, outcome: 'ok' | 'error' | 'timeout') => void;
}

export interface QmpConnectOptions {
  readonly signal?: AbortSignal;
  /** Overall deadline for open + greeting + negotiation (and retries); default from the client. */
  readonly timeoutMs?: number;
  /**
   * Retry a missing or refusing socket (ENOENT/ECONNREFUSED) every this many ms until the deadline:
   * for a QEMU that is still starting. Default: no retry.
   */
  readonly retryIntervalMs?: number;
}

export interface QmpExecuteOptions {
  readonly signal?: AbortSignal;
  /** Per-command timeout in ms; default from the client. 0 or Infinity: none. */
  readonly timeoutMs?: number;
  /** Send as `exec-oob` (QEMU runs it out of band, even while an in-band command blocks). */
  readonly oob?: boolean;
}

/** How a session ended. `error` is undefined when the client itself disconnected. */
export interface QmpSessionEnd {
  readonly expected: boolean;
  readonly error: QmpError | undefined;
}

interface Pending {
  readonly command: string;
  readonly args: Record<string, unknown> | undefined;
  readonly oob: boolean;
  resolve(value: unknown): void;
  reject(err: unknown): void;
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
  reject(e: unknown): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

class Session {
  readonly decoder: LineDecoder;
  readonly pending = new Map<number, Pending>();
  readonly greeting = deferred<QmpGreeting>();
  readonly ended = deferred<QmpSessionEnd>();
  gotGreeting = false;
  /** Reached `running`: only then do subscriptions belong to this session. */
  established = false;
  oob = false;
  done = false;
  reader: Promise<void> = Promise.resolve();

  constructor(
    readonly stream: QmpStream,
    maxLineBytes: number,
  ) {
    this.decoder = new LineDecoder(maxLineBytes);
    // Nobody may be waiting for the greeting when the session dies after connect: no unhandled rejection.
    this.greeting.promise.catch(() => undefined);
  }
}

/**
 * A QMP connection to one QEMU. Not reentrant across sessions: a command issued in one session is
 * never answered by another.
 */
export class QmpClient {
  private runstate: QmpRunstate = 'idle';
  private session: Session | undefined;
  private lastGreeting: QmpGreeting | undefined;
  private lastEnd: QmpSessionEnd | undefined;
  private nextId = 1;
  private connectAbort: AbortController | undefined;
  private connecting: Promise<unknown> | undefined;
  private readonly hub = new EventHub();
  private readonly log: Logger;
  private readonly commandTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly maxLineBytes: number;
  private readonly eventQueueLimit: number | undefined;
  private readonly onCommand: QmpClientOptions['onCommand'];

  constructor(
    readonly transport: QmpTransport,
    options: QmpClientOptions = {},
  ) {
    this.log = (options.logger ?? createLogger('qmp')).child({ qmp: options.name ?? transport.address });
    this.commandTimeoutMs = options.commandTimeoutMs ?? 30_000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 5_000;
    this.maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    this.eventQueueLimit = options.eventQueueLimit;
    this.onCommand = options.onCommand;
  }

  get state(): QmpRunstate {
    return this.runstate;
  }

  /** The greeting of the current (or last) session. */
  get greeting(): QmpGreeting | undefined {
    return this.lastGreeting;
  }

  /** True when out-of-band execution was negotiated in the current session. */
  get oobEnabled(): boolean {
    return this.runstate === 'running' && (this.session?.oob ?? false);
  }

  /**
   * Opens the transport, reads the greeting and negotiates capabilities (enabling `oob` when
   * offered). Resolves with the greeting once the client is `running`.
   * @throws QmpStateError when not idle.
   * @throws QmpConnectError when the socket cannot be reached or no greeting arrives in time (QEMU
   *   serves one QMP client at a time: a second client waits for the first to leave).
   * @throws QmpProtocolError on a malformed greeting; QmpCommandError if negotiation is refused.
   * @throws CancelledError when `signal` fires.
   */
  connect(options: QmpConnectOptions = {}): Promise<QmpGreeting> {
    if (this.runstate !== 'idle') {
      return Promise.reject(new QmpStateError(`QMP connect: client is ${this.runstate}`, 'QMP_NOT_IDLE'));
    }
    const p = this.doConnect(options);
    this.connecting = p.catch(() => undefined);
    return p;
  }

  private async doConnect(options: QmpConnectOptions): Promise<QmpGreeting> {
    const timeoutMs = options.timeoutMs ?? this.connectTimeoutMs;
    const ctl = new AbortController();
    this.connectAbort = ctl;
    const timer = setTimeout(
      () =>
        ctl.abort(
          new QmpConnectError(this.transport.address, `not ready within ${timeoutMs} ms (no socket, or no greeting: is another QMP client connected?)`, {
            cause: new QmpTimeoutError('connect', timeoutMs),
          }),
        ),
      timeoutMs,
    );
    const onUserAbort = (): void => ctl.abort(options.signal?.reason);
    if (options.signal?.aborted) onUserAbort();
    else options.signal?.addEventListener('abort', onUserAbort, { once: true });
    const signal = ctl.signal;

    this.runstate = 'connecting';
    const started = performance.now();
    try {
      const stream = await this.open(signal, options.retryIntervalMs);
      const session = new Session(stream, this.maxLineBytes);
      this.session = session;
      session.reader = this.readLoop(session);

      const greeting = await raceSignal(session.greeting.promise, signal);
      const enable = greeting.capabilities.includes('oob') ? ['oob'] : [];
      await this.send(session, 'qmp_capabilities', enable.length > 0 ? { enable } : undefined, { signal, timeoutMs: 0 });
      session.oob = enable.includes('oob');
      session.established = true;
      this.lastGreeting = greeting;
      this.runstate = 'running';
      this.log.debug('QMP connected', {
        ms: Math.round(performance.now() - started),
        qemu: greeting.version.qemu,
        oob: session.oob,
      });
      return greeting;
    } catch (err) {
      const error = signal.aborted ? abortErrorFor(signal) : err;
      if (this.session) this.endSession(this.session, asQmpError(error), true);
      this.runstate = 'idle';
      throw error;
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onUserAbort);
      this.connectAbort = undefined;
      this.connecting = undefined;
    }
  }

  private async open(signal: AbortSignal, retryIntervalMs: number | undefined): Promise<QmpStream> {
    for (;;) {
      try {
        return await this.transport.open(signal);
      } catch (err) {
        if (retryIntervalMs === undefined || signal.aborted || !isRetryableConnectError(err)) throw err;
      }
      await sleep(retryIntervalMs, signal);
    }
  }

  /**
   * Runs a command and resolves with its `return` value. Typed for the commands in QmpCommandMap.
   * A timeout or abort only stops the wait: QMP cannot cancel a command, which may still run.
   * @throws QmpCommandError when QEMU answers with an error (keeps command, arguments, class, desc).
   * @throws QmpDisconnectedError when not connected, or the session ends before the reply.
   * @throws QmpTimeoutError when no reply arrives within the timeout.
   * @throws QmpStateError for `oob: true` when out-of-band execution was not negotiated.
   * @throws CancelledError when `signal` fires.
   */
  execute<C extends string>(command: C, args?: QmpArgs<C>, options: QmpExecuteOptions = {}): Promise<QmpReturn<C>> {
    if (options.signal?.aborted) return Promise.reject(abortError(options.signal));
    const session = this.session;
    if (this.runstate !== 'running' || session === undefined) {
      return Promise.reject(
        new QmpDisconnectedError(`QMP ${command}: not connected (client is ${this.runstate})`, { reason: 'QMP_NOT_CONNECTED' }),
      );
    }
    if (options.oob === true && !session.oob) {
      return Promise.reject(
        new QmpStateError(
          `QMP ${command}: exec-oob needs the 'oob' capability, which this session did not negotiate (greeting offered: [${this.lastGreeting?.capabilities.join(', ') ?? ''}])`,
          'QMP_OOB_UNAVAILABLE',
        ),
      );
    }
    const sent = this.send(session, command, args as Record<string, unknown> | undefined, options) as Promise<QmpReturn<C>>;
    const observe = this.onCommand;
    if (!observe) return sent;
    const t0 = performance.now();
    return sent.then(
      (v) => {
        observe(command, (performance.now() - t0) / 1000, 'ok');
        return v;
      },
      (err: unknown) => {
        observe(command, (performance.now() - t0) / 1000, err instanceof QmpTimeoutError ? 'timeout' : 'error');
        throw err;
      },
    );
  }

  private send(
    session: Session,
    command: string,
    args: Record<string, unknown> | undefined,
    options: QmpExecuteOptions,
  ): Promise<unknown> {
    const id = this.nextId++;
    const oob = options.oob === true;
    const timeoutMs = options.timeoutMs ?? this.commandTimeoutMs;
    const signal = options.signal;
    return new Promise<unknown>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = (): void => {
        session.pending.delete(id);
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = (): void => {
        cleanup();
        reject(abortError(signal!));
      };
      session.pending.set(id, {
        command,
        args,
        oob,
        resolve: (v) => {
          cleanup();
          resolve(v);
        },
        reject: (e) => {
          cleanup();
          reject(e);
        },
      });
      if (timeoutMs > 0 && Number.isFinite(timeoutMs)) {
        timer = setTimeout(() => {
          cleanup();
          this.log.warn('QMP command timed out', { command, id, timeoutMs });
          reject(new QmpTimeoutError(command, timeoutMs));
        }, timeoutMs);
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      this.log.debug('QMP >', { command, id, oob });
      session.stream.write(encodeCommand(command, args, id, oob)).catch((err: unknown) => {
        const p = session.pending.get(id);
        p?.reject(new QmpDisconnectedError(`QMP ${command}: write failed`, { cause: err }));
      });
    });
  }

  /**
   * Subscribes to events: each call gets its own filtered, bounded queue (see QmpEventFilter). The
   * iteration ends normally when the client disconnects itself, and throws QmpDisconnectedError
   * when the session is lost. Subscribe before issuing the command whose events you expect.
   */
  events(filter: QmpEventFilter = {}): QmpEventSubscription {
    const limit = filter.limit ?? this.eventQueueLimit;
    return this.hub.subscribe(limit === undefined ? filter : { ...filter, limit });
  }

  /**
   * Resolves when the current session ends — when idle, at once with how the last session ended:
   * `expected` is true for `disconnect()` (or when there never was a session), false when QEMU went
   * away or broke the protocol. Never rejects.
   */
  whenDisconnected(): Promise<QmpSessionEnd> {
    if (this.session === undefined || this.runstate === 'idle' || this.runstate === 'connecting') {
      return Promise.resolve(this.lastEnd ?? { expected: true, error: undefined });
    }
    return this.session.ended.promise;
  }

  /**
   * Closes the session (or aborts a connect in progress): pending commands reject with
   * QmpDisconnectedError, subscriptions end normally. Does not stop QEMU. Idempotent.
   */
  async disconnect(): Promise<void> {
    if (this.runstate === 'connecting') {
      this.connectAbort?.abort(new QmpDisconnectedError('QMP connect aborted by disconnect()'));
      await this.connecting;
      return;
    }
    const session = this.session;
    if (session === undefined) return;
    this.endSession(session, new QmpDisconnectedError('QMP client disconnected'), true);
    await session.reader;
  }

  private async readLoop(session: Session): Promise<void> {
    let failure: QmpError | undefined;
    try {
      for await (const chunk of session.stream.chunks) {
        if (session.done) return;
        for (const line of session.decoder.push(chunk)) {
          this.onLine(session, line);
          if (session.done) return;
        }
      }
    } catch (err) {
      failure =
        err instanceof QmpError ? err : new QmpDisconnectedError(`QMP connection to ${this.transport.address} failed`, { cause: err });
    }
    if (!session.done) {
      this.endSession(
        session,
        failure ?? new QmpDisconnectedError(`QEMU closed the QMP connection ${this.transport.address}`),
        false,
      );
    }
  }

  private onLine(session: Session, line: string): void {
    let msg: QmpInbound;
    try {
      msg = parseMessage(line);
    } catch (err) {
      this.endSession(session, asQmpError(err), false);
      return;
    }
    if (!session.gotGreeting) {
      if (msg.kind === 'event') {
        // Not per the protocol, but seen once in CI (a capability probe's first line was an
        // event): QEMU may write an event it emitted while its monitor was between clients to a
        // client whose greeting is still on its way. An event asks nothing of us: skip it.
        this.log.warn('QMP event before the greeting; skipped', { event: msg.event.event });
        return;
      }
      if (msg.kind !== 'greeting') {
        this.endSession(session, new QmpProtocolError(`expected a QMP greeting, got a ${msg.kind} message`, { line }), false);
        return;
      }
      session.gotGreeting = true;
      session.greeting.resolve(msg.greeting);
      return;
    }
    switch (msg.kind) {
      case 'greeting':
        this.endSession(session, new QmpProtocolError('unexpected second QMP greeting', { line }), false);
        return;
      case 'event':
        this.log.debug('QMP event', { event: msg.event.event, ...(msg.event.event === 'MIGRATION' ? { status: msg.event.data?.['status'] } : {}) });
        this.hub.dispatch(msg.event);
        return;
      case 'return':
      case 'error': {
        const p = typeof msg.id === 'number' ? session.pending.get(msg.id) : undefined;
        if (p === undefined) {
          if (msg.kind === 'error' && msg.id === undefined) {
            // QEMU could not parse a request (qmp-spec: the reply carries no id). It belongs to no
            // waiter and the stream is suspect: end the session, as python/qemu/qmp does.
            this.endSession(session, new QmpProtocolError(`QEMU reported an unparseable request: ${msg.error.desc}`, { line }), false);
            return;
          }
          // qmp-spec: drop replies with an unknown id (here: a reply after its waiter timed out).
          this.log.debug('QMP reply for no waiter dropped', { id: msg.id });
          return;
        }
        this.log.debug('QMP <', { command: p.command, id: msg.id, ok: msg.kind === 'return' });
        if (msg.kind === 'return') p.resolve(msg.value);
        else p.reject(new QmpCommandError(p.command, p.args, msg.error, p.oob));
        return;
      }
    }
  }

  /** Ends `session` once: closes the stream, rejects waiters, ends subscriptions, back to idle. */
  private endSession(session: Session, reason: QmpError, expected: boolean): void {
    if (session.done) return;
    session.done = true;
    if (this.session === session && this.runstate !== 'connecting') this.runstate = 'disconnecting';
    session.stream.close();
    const disconnected =
      reason instanceof QmpDisconnectedError
        ? reason
        : new QmpDisconnectedError(`QMP session ended: ${reason.message}`, { cause: reason });
    for (const p of [...session.pending.values()]) p.reject(disconnected);
    session.pending.clear();
    session.greeting.reject(reason);
    // A failed connect leaves subscriptions alone: they wait for the session a retry may open.
    if (session.established) this.hub.endAll(expected ? undefined : disconnected);
    // Info, not warn: QEMU closing QMP is also how every `quit` and guest poweroff ends.
    if (!expected) this.log.info('QMP session ended by peer', { error: reason });
    if (this.session === session) {
      this.session = undefined;
      if (this.runstate !== 'connecting') this.runstate = 'idle';
    }
    const end: QmpSessionEnd = { expected, error: expected ? undefined : reason };
    if (session.established) this.lastEnd = end;
    session.ended.resolve(end);
  }
}

function asQmpError(err: unknown): QmpError {
  return err instanceof QmpError ? err : new QmpDisconnectedError('QMP session aborted', { cause: err });
}

/** The error a connect aborted by `signal` rejects with: our own timeout error, or the caller's abort. */
function abortErrorFor(signal: AbortSignal): unknown {
  const reason: unknown = signal.reason;
  return reason instanceof QmpError ? reason : abortError(signal);
}

function raceSignal<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(abortErrorFor(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortErrorFor(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}
