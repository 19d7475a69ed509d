import { describe, expect, it } from 'vitest';
import { Broadcast } from '../../../services/shared/broadcast.js';
import type { GuestPerfSample } from '../../../services/shared/gen/migd/v1/common.js';
import { watchGuest } from '../../../services/node/rpc/handlers.js';

// WatchGuest with the console of a chatty guest and a client that does not read (finding 7):
// the stream ends with RESOURCE_EXHAUSTED after at most `limit` pending messages instead of
// holding the console for ever.
describe('watchGuest', () => {
  const feed = (): { samples: Broadcast<GuestPerfSample>; console: Broadcast<Uint8Array> } => ({ samples: new Broadcast({ limit: 64 }), console: new Broadcast({ limit: 64 }) });

  it('ends a stream whose client stops reading instead of buffering the console without bound', async () => {
    const f = feed();
    const ac = new AbortController();
    const it = watchGuest(f, true, ac.signal, 32)[Symbol.asyncIterator]();
    const first = it.next();
    f.console.publish(Buffer.from('hello\n'));
    expect((await first).value).toMatchObject({ item: { $case: 'console' } });
    // The client reads no more while the guest prints 10 000 lines.
    for (let i = 0; i < 10_000; i++) {
      f.console.publish(Buffer.from(`line ${i}\n`));
      if (i % 16 === 0) await new Promise((r) => setImmediate(r));
    }
    let read = 0;
    const end = await (async () => {
      for (;;) {
        const r = await it.next();
        if (r.done) return 'done';
        read++;
      }
    })().catch((err: unknown) => err);
    expect(end).toMatchObject({ code: 'RESOURCE_EXHAUSTED', reason: 'STREAM_OVERFLOW' });
    expect(read).toBeLessThanOrEqual(32);
    // Nothing stays subscribed to the VM's feed.
    expect(f.console.subscribers).toBe(0);
    expect(f.samples.subscribers).toBe(0);
  });

  it('delivers everything to a client that reads, and ends when the client goes away', async () => {
    const f = feed();
    const ac = new AbortController();
    const it = watchGuest(f, true, ac.signal, 32)[Symbol.asyncIterator]();
    const got: string[] = [];
    for (let i = 0; i < 200; i++) {
      const next = it.next();
      f.console.publish(Buffer.from(`${i}`));
      const r = await next;
      got.push(Buffer.from((r.value as { item: { value: Uint8Array } }).item.value).toString());
    }
    expect(got).toHaveLength(200);
    ac.abort();
    expect((await it.next()).done).toBe(true);
    expect(f.console.subscribers).toBe(0);
  });
});
