/**
 * When the leader's event bus reads the outbox (issue 15 §4): a commit after a quiet spell (a
 * run's end on an idle coordinator) reaches Watch streams at once; the commits that follow within
 * WAKE_DELAY_MS (10 ms) share one read at the end of that window, so a busy coordinator still reads
 * the outbox at most once per window. Fake timers: the windows are counted, not waited out.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { EventBus } from '../../../services/coordinator/event-bus.js';
import type { OutboxRepository } from '../../../services/coordinator/store/types.js';
import { buildEvent, encodeEvent } from '../../../services/shared/events/codec.js';
import type { OutboxRecord } from '../../../services/shared/events/outbox.js';
import type { Event } from '../../../services/shared/gen/migd/v1/events.js';
import { createLogger } from '../../../services/shared/log.js';

const quiet = createLogger('event-bus-wake-test', {}, () => undefined, 'error');

/** An in-memory outbox: `commit()` appends a row and calls the listeners, as the store does after a commit. */
class MemoryOutbox {
  readonly rows: OutboxRecord[] = [];
  reads = 0;
  private listeners: (() => void)[] = [];

  commit(runId: string): void {
    const ev = buildEvent({ $case: 'runState', value: { runId, planId: '', vmName: 'vm1', change: undefined } });
    this.rows.push({ seq: this.rows.length + 1, eventId: ev.id, subject: ev.subject, payload: encodeEvent(ev), createdAt: new Date() });
    for (const l of this.listeners) l();
  }

  repository(): OutboxRepository {
    return {
      readOutbox: async ({ afterSeq = 0, limit }) => {
        this.reads++;
        return this.rows.filter((r) => r.seq > afterSeq).slice(0, limit);
      },
      lastOutboxSeq: async () => this.rows.length,
      onOutboxEnqueued: (l) => {
        this.listeners.push(l);
        return () => (this.listeners = this.listeners.filter((x) => x !== l));
      },
      readUnpublished: async () => [],
      markPublished: async () => undefined,
      outboxLag: async () => ({ unpublished: 0, oldestCreatedAt: null }),
    };
  }
}

let bus: EventBus | undefined;
beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'performance'] });
});
afterEach(async () => {
  await bus?.stop();
  bus = undefined;
  vi.useRealTimers();
});

describe('event bus outbox reads', () => {
  it('delivers a commit after a quiet spell at once, and batches the commits within the next 10 ms into one read', async () => {
    const outbox = new MemoryOutbox();
    bus = new EventBus(outbox.repository(), quiet);
    await bus.start();
    const seen: Event[] = [];
    const ac = new AbortController();
    const sub = bus.subscribe(ac.signal);
    void (async () => {
      for await (const ev of sub) seen.push(ev);
    })();
    await vi.advanceTimersByTimeAsync(50); // a quiet spell

    outbox.commit('run-1');
    await vi.advanceTimersByTimeAsync(0);
    expect(outbox.reads).toBe(1);
    expect(seen).toHaveLength(1);

    // Commits right behind it share one read at the end of the window.
    outbox.commit('run-2');
    outbox.commit('run-3');
    await vi.advanceTimersByTimeAsync(5);
    outbox.commit('run-4');
    await vi.advanceTimersByTimeAsync(0);
    expect(outbox.reads).toBe(1);
    await vi.advanceTimersByTimeAsync(5);
    expect(outbox.reads).toBe(2);
    expect(seen).toHaveLength(4);

    // A commit within 10 ms of that read waits for the window's end again.
    outbox.commit('run-5');
    await vi.advanceTimersByTimeAsync(0);
    expect(outbox.reads).toBe(2);
    await vi.advanceTimersByTimeAsync(10);
    expect(outbox.reads).toBe(3);
    expect(seen).toHaveLength(5);
    ac.abort();
  });
});
