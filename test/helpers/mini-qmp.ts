/**
 * QMP for tests that drive QEMU by hand (storage migration without the node daemon): the node's
 * own QmpClient over a unix socket, with every event kept from the connect on, so a wait can also
 * find one that came before it was asked for. No protocol code of its own.
 */
import { createLogger } from '../../services/shared/log.js';
import { QmpClient } from '../../services/node/qmp/client.js';
import { unixSocketTransport } from '../../services/node/qmp/transport.js';

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  /** Host ms (performance.timeOrigin + performance.now()) when the event was read. */
  atMs: number;
}

const quiet = createLogger('test-qmp', {}, () => undefined, 'error');

export class MiniQmp {
  readonly events: QmpEvent[] = [];
  private wakers: (() => void)[] = [];
  private closed: string | undefined;

  private constructor(readonly client: QmpClient) {}

  /** Connects (retrying while QEMU starts) and enters command mode. */
  static async connect(path: string, timeoutMs = 30_000): Promise<MiniQmp> {
    const client = new QmpClient(unixSocketTransport(path), { logger: quiet });
    await client.connect({ timeoutMs, retryIntervalMs: 50 });
    const q = new MiniQmp(client);
    void q.record();
    return q;
  }

  private async record(): Promise<void> {
    try {
      for await (const e of this.client.events({ limit: Infinity })) {
        this.events.push({ event: e.event, data: e.data ?? {}, atMs: performance.timeOrigin + performance.now() });
        for (const w of this.wakers.splice(0)) w();
      }
      this.closed = 'QMP session closed';
    } catch (err) {
      this.closed = `QMP session lost: ${(err as Error).message}`;
    }
    for (const w of this.wakers.splice(0)) w();
  }

  /** Runs a command; rejects with the client's QmpCommandError on an error reply. */
  async cmd<T = unknown>(execute: string, args?: Record<string, unknown>): Promise<T> {
    return (await this.client.execute(execute, args as never, { timeoutMs: 120_000 })) as T;
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
    void this.client.disconnect();
  }
}
