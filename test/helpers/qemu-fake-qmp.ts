/**
 * A scripted fake QMP transport: the test plays QEMU. It pushes raw bytes (so partial lines, several
 * messages in one chunk and malformed JSON are all expressible), reads back what the client wrote,
 * and can close or break the stream at any point.
 */
import type { QmpStream, QmpTransport } from '../../services/node/qmp/transport.js';
import { QmpConnectError } from '../../services/node/qmp/errors.js';

export const GREETING_OOB =
  '{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2"}, "capabilities": ["oob"]}}\r\n';
export const GREETING_NO_OOB =
  '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}\r\n';

export interface SentCommand {
  execute?: string;
  'exec-oob'?: string;
  arguments?: Record<string, unknown>;
  id?: number | string;
}

type Item = { chunk: Uint8Array } | { end: true } | { error: Error };

/** One fake connection. */
export class FakeStream implements QmpStream {
  readonly sent: SentCommand[] = [];
  closed = false;
  private readonly items: Item[] = [];
  private wake: (() => void) | undefined;
  private readonly sentWaiters: Array<(c: SentCommand) => void> = [];
  private sentCursor = 0;
  private writeBuf = '';

  readonly chunks: AsyncIterable<Uint8Array> = {
    [Symbol.asyncIterator]: () => ({
      next: async (): Promise<IteratorResult<Uint8Array>> => {
        for (;;) {
          if (this.closed) return { value: undefined, done: true };
          const it = this.items.shift();
          if (it !== undefined) {
            if ('chunk' in it) return { value: it.chunk, done: false };
            if ('end' in it) return { value: undefined, done: true };
            throw it.error;
          }
          await new Promise<void>((r) => (this.wake = r));
        }
      },
    }),
  };

  /** QEMU sends bytes (a string is sent as UTF-8, exactly as given: add "\n" yourself). */
  push(data: string | Uint8Array): void {
    this.items.push({ chunk: typeof data === 'string' ? Buffer.from(data, 'utf8') : data });
    this.kick();
  }

  /** QEMU sends one JSON message with its line terminator. */
  send(msg: unknown): void {
    this.push(JSON.stringify(msg) + '\r\n');
  }

  /** QEMU closes the connection (exits). */
  end(): void {
    this.items.push({ end: true });
    this.kick();
  }

  /** The stream fails (ECONNRESET). */
  fail(err: Error): void {
    this.items.push({ error: err });
    this.kick();
  }

  private kick(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  write(data: Uint8Array): Promise<void> {
    if (this.closed) return Promise.reject(new Error('fake stream closed'));
    this.writeBuf += Buffer.from(data).toString('utf8');
    let nl: number;
    while ((nl = this.writeBuf.indexOf('\n')) >= 0) {
      const line = this.writeBuf.slice(0, nl);
      this.writeBuf = this.writeBuf.slice(nl + 1);
      const cmd = JSON.parse(line) as SentCommand;
      this.sent.push(cmd);
      const w = this.sentWaiters.shift();
      if (w) {
        this.sentCursor++;
        w(cmd);
      }
    }
    return Promise.resolve();
  }

  close(): void {
    this.closed = true;
    this.kick();
  }

  /** The next command the client sends (in order; resolves at once if already sent). */
  nextCommand(): Promise<SentCommand> {
    if (this.sentCursor < this.sent.length) return Promise.resolve(this.sent[this.sentCursor++]!);
    return new Promise((r) => this.sentWaiters.push(r));
  }

  /** Replies `{"return": value, "id": <id of cmd>}`. */
  reply(cmd: SentCommand, value: unknown = {}): void {
    this.send({ return: value, id: cmd.id });
  }

  /** Reads the greeting-phase handshake: sends the greeting, answers qmp_capabilities. */
  async handshake(greeting = GREETING_OOB): Promise<SentCommand> {
    this.push(greeting);
    const neg = await this.nextCommand();
    this.reply(neg);
    return neg;
  }
}

/** The fake endpoint. Each `open()` creates a FakeStream; tests await `nextStream()`. */
export class FakeTransport implements QmpTransport {
  readonly address = 'fake:qmp';
  readonly streams: FakeStream[] = [];
  /** When set, the next open() fails with this errno (e.g. 'ENOENT'), then clears. */
  failNextOpen: string[] = [];
  private readonly waiters: Array<(s: FakeStream) => void> = [];

  open(): Promise<QmpStream> {
    const code = this.failNextOpen.shift();
    if (code !== undefined) {
      const err = Object.assign(new Error(`connect ${code} ${this.address}`), { code });
      return Promise.reject(new QmpConnectError(this.address, err.message, { cause: err }));
    }
    const s = new FakeStream();
    this.streams.push(s);
    const w = this.waiters.shift();
    w?.(s);
    return Promise.resolve(s);
  }

  /** The stream of the next open() (or of the last one if it already happened and was not taken). */
  nextStream(): Promise<FakeStream> {
    const taken = this.taken;
    if (taken < this.streams.length) {
      this.taken++;
      return Promise.resolve(this.streams[taken]!);
    }
    return new Promise((r) =>
      this.waiters.push((s) => {
        this.taken++;
        r(s);
      }),
    );
  }
  private taken = 0;
}
