/**
 * A bare QMP client for tests that drive QEMU by hand (storage migration without the node daemon):
 * greeting, capabilities, commands, and every event kept so a wait can also find one that came
 * before it was asked for.
 */
import { createConnection, type Socket } from 'node:net';

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  /** Host ms (performance.timeOrigin + performance.now()) when the event was read. */
  atMs: number;
}

export class QmpCommandFailed extends Error {
  constructor(
    readonly command: string,
    readonly reply: unknown,
  ) {
    super(`${command}: ${JSON.stringify(reply)}`);
  }
}

export class MiniQmp {
  readonly events: QmpEvent[] = [];
  private buf = '';
  private id = 0;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; command: string }>();
  private wakers: (() => void)[] = [];
  private closed: string | undefined;
  private greeted: () => void = () => undefined;

  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('close', () => this.onClose('QMP socket closed'));
    sock.on('error', (e) => this.onClose(`QMP socket error: ${e.message}`));
  }

  /** Connects (retrying while QEMU starts) and enters command mode. */
  static async connect(path: string, timeoutMs = 30_000): Promise<MiniQmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const sock = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection(path, () => resolve(s));
          s.once('error', reject);
        });
        const q = new MiniQmp(sock);
        await new Promise<void>((resolve) => (q.greeted = resolve));
        await q.cmd('qmp_capabilities');
        return q;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  private onData(d: string): void {
    this.buf += d;
    let i;
    while ((i = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, i).trim();
      this.buf = this.buf.slice(i + 1);
      if (!line) continue;
      const msg = JSON.parse(line) as Record<string, unknown>;
      if ('QMP' in msg) {
        this.greeted();
      } else if (typeof msg['event'] === 'string') {
        this.events.push({ event: msg['event'], data: (msg['data'] as Record<string, unknown> | undefined) ?? {}, atMs: performance.timeOrigin + performance.now() });
        for (const w of this.wakers.splice(0)) w();
      } else if (typeof msg['id'] === 'number') {
        const p = this.pending.get(msg['id']);
        if (!p) continue;
        this.pending.delete(msg['id']);
        if ('error' in msg) p.reject(new QmpCommandFailed(p.command, msg['error']));
        else p.resolve(msg['return']);
      }
    }
  }

  private onClose(reason: string): void {
    if (this.closed !== undefined) return;
    this.closed = reason;
    for (const p of this.pending.values()) p.reject(new Error(`${p.command}: ${reason}`));
    this.pending.clear();
    for (const w of this.wakers.splice(0)) w();
  }

  /** Runs a command; rejects with QmpCommandFailed on an error reply. */
  cmd<T = unknown>(execute: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed !== undefined) return Promise.reject(new Error(`${execute}: ${this.closed}`));
    const id = ++this.id;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, command: execute });
      this.sock.write(JSON.stringify({ execute, ...(args ? { arguments: args } : {}), id }) + '\n');
    });
  }

  /** The first event (from index `from`) matching; waits up to timeoutMs. */
  async waitEvent(match: (e: QmpEvent) => boolean, timeoutMs = 60_000, from = 0): Promise<QmpEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.events.slice(from).find(match);
      if (hit) return hit;
      const left = deadline - Date.now();
      if (left <= 0 || this.closed !== undefined) {
        throw new Error(`no matching QMP event within ${timeoutMs} ms (${this.closed ?? 'timeout'}); events: ${this.events.map((e) => e.event).join(',')}`);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wakers.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  close(): void {
    this.sock.destroy();
  }
}
