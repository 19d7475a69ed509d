/**
 * The relay's batch publishing (publishInOrder): every row of a batch is sent before any ack is
 * awaited, each after the first names the one before it, and only the prefix up to the first
 * failed ack counts as published. The stream's side (refusing a row whose predecessor it did not
 * store) is covered against a real nats-server in test/integration/events/relay.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { publishInOrder, type PublishAck } from '../../../services/shared/events/relay.js';

interface Rec {
  eventId: string;
}

const batch = (n: number): Rec[] => Array.from({ length: n }, (_, i) => ({ eventId: `e${i}` }));

/** A publisher whose acks the test settles by hand, in any order. */
function manualPublisher(): {
  publish: (rec: Rec, previousId: string | undefined) => Promise<PublishAck>;
  calls: { id: string; previousId: string | undefined }[];
  ack(i: number, duplicate?: boolean): void;
  fail(i: number, err: Error): void;
} {
  const calls: { id: string; previousId: string | undefined }[] = [];
  const settle: { resolve: (a: PublishAck) => void; reject: (e: Error) => void }[] = [];
  return {
    calls,
    publish: (rec, previousId) => {
      calls.push({ id: rec.eventId, previousId });
      return new Promise<PublishAck>((resolve, reject) => settle.push({ resolve, reject }));
    },
    ack: (i, duplicate = false) => settle[i]!.resolve({ duplicate }),
    fail: (i, err) => settle[i]!.reject(err),
  };
}

describe('publishInOrder', () => {
  it('sends the whole batch before any ack arrives, each row naming the one before it', async () => {
    const p = manualPublisher();
    const out = publishInOrder(batch(4), p.publish);
    // All four were sent although no ack has arrived yet.
    expect(p.calls).toEqual([
      { id: 'e0', previousId: undefined },
      { id: 'e1', previousId: 'e0' },
      { id: 'e2', previousId: 'e1' },
      { id: 'e3', previousId: 'e2' },
    ]);
    // Acks arriving last first still make the whole batch, in batch order.
    for (const i of [3, 2, 1, 0]) p.ack(i, i === 1);
    const r = await out;
    expect(r.acked.map((x) => x.eventId)).toEqual(['e0', 'e1', 'e2', 'e3']);
    expect(r.duplicates).toBe(1);
    expect(r.failure).toBeUndefined();
  });

  it('counts only the prefix before the first failed ack; later acks that arrived are left for the next pass', async () => {
    const p = manualPublisher();
    const out = publishInOrder(batch(5), p.publish);
    const err = new Error('wrong last msg ID');
    p.ack(0);
    p.ack(1, true);
    p.fail(2, err);
    p.ack(3); // stored after all (its ack arrived): still not counted, it goes out again
    p.ack(4, true);
    const r = await out;
    expect(r.acked.map((x) => x.eventId)).toEqual(['e0', 'e1']);
    expect(r.duplicates).toBe(1); // the duplicate after the failure is not counted
    expect(r.failure).toBe(err);
  });

  it('a failed first ack publishes nothing; a publish that throws counts as a failed ack', async () => {
    const p = manualPublisher();
    const out = publishInOrder(batch(2), p.publish);
    p.fail(0, new Error('timeout'));
    p.ack(1);
    expect((await out).acked).toEqual([]);

    const boom = new Error('connection closed');
    const r = await publishInOrder(batch(3), (rec) => {
      if (rec.eventId === 'e1') throw boom;
      return Promise.resolve({ duplicate: false });
    });
    expect(r.acked.map((x) => x.eventId)).toEqual(['e0']);
    expect(r.failure).toBe(boom);
  });

  it('an empty batch publishes nothing', async () => {
    const p = manualPublisher();
    expect(await publishInOrder([], p.publish)).toEqual({ acked: [], duplicates: 0 });
    expect(p.calls).toEqual([]);
  });
});
