import { describe, expect, it } from 'vitest';
import { Broadcast } from '../../../services/shared/broadcast.js';

describe('Broadcast', () => {
  it('drops the oldest values of a slow in-process reader by default', async () => {
    const b = new Broadcast<number>({ limit: 3 });
    const sub = b.subscribe();
    for (let i = 0; i < 10; i++) b.publish(i);
    b.close();
    const got: number[] = [];
    for await (const v of sub) got.push(v);
    expect(got).toEqual([7, 8, 9]);
  });

  it("ends a reader that falls `limit` values behind with RESOURCE_EXHAUSTED when overflow is 'fail', holding nothing more", async () => {
    const b = new Broadcast<number>({ limit: 3, overflow: 'fail' });
    const slow = b.subscribe();
    const fast = b.subscribe([], { overflow: 'drop-oldest' });
    for (let i = 0; i < 10; i++) b.publish(i);
    // The failed reader left the broadcast: only the other one is still subscribed.
    expect(b.subscribers).toBe(1);
    await expect(slow.next()).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED', reason: 'STREAM_OVERFLOW' });
    expect(await slow.next()).toEqual({ value: undefined, done: true });
    expect((await fast.next()).value).toBe(7);
  });

  it('a reader that keeps up never overflows', async () => {
    const b = new Broadcast<number>({ limit: 2, overflow: 'fail' });
    const sub = b.subscribe();
    const got: number[] = [];
    for (let i = 0; i < 100; i++) {
      b.publish(i);
      got.push((await sub.next()).value as number);
    }
    expect(got).toHaveLength(100);
  });
});
