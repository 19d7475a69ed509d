import { describe, expect, it } from 'vitest';
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../../../services/shared/errors.js';
import { type ConcurrencyLimits, type QueueItem, DEFAULT_LIMITS, MigrationQueue } from '../../../services/coordinator/domain/scheduler.js';
import { mulberry32 } from '../../helpers/prng.js';

const item = (id: string, source: string, destination: string, extra: Partial<QueueItem> = {}): QueueItem => ({ id, source, destination, ...extra });

/**
 * Counts running items per limit from the outside, independently of the queue's own counters;
 * `offLink`: ids whose stream is done (they count everywhere but on their link).
 */
function usageOf(running: readonly QueueItem[], offLink: ReadonlySet<string> = new Set()): { total: number; out: Map<string, number>; in: Map<string, number>; link: Map<string, number> } {
  const out = new Map<string, number>();
  const inb = new Map<string, number>();
  const link = new Map<string, number>();
  for (const r of running) {
    out.set(r.source, (out.get(r.source) ?? 0) + 1);
    inb.set(r.destination, (inb.get(r.destination) ?? 0) + 1);
    const k = `${r.source}->${r.destination}`;
    if (!offLink.has(r.id)) link.set(k, (link.get(k) ?? 0) + 1);
  }
  return { total: running.length, out, in: inb, link };
}

function assertWithin(running: readonly QueueItem[], limits: ConcurrencyLimits, offLink: ReadonlySet<string> = new Set()): void {
  const u = usageOf(running, offLink);
  expect(u.total).toBeLessThanOrEqual(limits.perCluster);
  for (const v of u.out.values()) expect(v).toBeLessThanOrEqual(limits.perSource);
  for (const v of u.in.values()) expect(v).toBeLessThanOrEqual(limits.perDestination);
  for (const v of u.link.values()) expect(v).toBeLessThanOrEqual(limits.perLink);
}

describe('MigrationQueue', () => {
  it('defaults to KubeVirt-like limits: 2 outbound, 2 inbound, 1 per link, 5 per cluster', () => {
    expect(DEFAULT_LIMITS).toEqual({ perSource: 2, perDestination: 2, perLink: 1, perCluster: 5 });
    expect(new MigrationQueue().limits).toEqual(DEFAULT_LIMITS);
  });

  it('rejects limits that are not positive integers', () => {
    expect(() => new MigrationQueue({ perLink: 0 })).toThrow(InvalidArgumentError);
    expect(() => new MigrationQueue({ perCluster: 1.5 })).toThrow(/perCluster/);
  });

  it('dispatches by priority, then plan order, then first come', () => {
    const q = new MigrationQueue({ perSource: 10, perDestination: 10, perCluster: 10 });
    q.enqueue(item('late-low', 'a', 'b', { priority: 0, order: 0 }));
    q.enqueue(item('high-2', 'a', 'c', { priority: 5, order: 2 }));
    q.enqueue(item('high-1', 'a', 'd', { priority: 5, order: 1 }));
    q.enqueue(item('low-first', 'a', 'e', { priority: 0, order: 0 }));
    expect(q.snapshot().queuedIds).toEqual(['high-1', 'high-2', 'late-low', 'low-first']);
    expect(q.nextDispatchable().map((i) => i.id)).toEqual(['high-1', 'high-2', 'late-low', 'low-first']);
  });

  it('never puts two migrations on one link, and the source limit caps a drain at two', () => {
    const q = new MigrationQueue();
    for (const [i, dst] of ['b', 'b', 'c', 'd'].entries()) q.enqueue(item(`m${i}`, 'a', dst, { order: i }));
    // m1 shares the a->b link with m0: skipped, m2 goes instead; m3 would be a third outbound.
    expect(q.nextDispatchable().map((i) => i.id)).toEqual(['m0', 'm2']);
  });

  it('lets later items past a blocked one (no head-of-line blocking) at equal priority', () => {
    const q = new MigrationQueue();
    q.enqueue(item('running', 'a', 'b'));
    q.started('running');
    q.enqueue(item('blocked', 'a', 'b'));
    q.enqueue(item('free', 'c', 'd'));
    expect(q.nextDispatchable().map((i) => i.id)).toEqual(['free']);
  });

  it('reserves what a blocked higher-priority item waits for against lower priorities', () => {
    const q = new MigrationQueue({ perDestination: 1 });
    q.enqueue(item('r', 'a', 'x'));
    q.started('r'); // a->x busy (link limit 1)
    q.enqueue(item('urgent', 'a', 'x', { priority: 9 })); // waits for the a->x link
    q.enqueue(item('low-to-x', 'c', 'x', { priority: 0 })); // would take x's only inbound slot... after r finishes
    q.enqueue(item('low-elsewhere', 'c', 'y', { priority: 0 }));
    q.finished('r');
    // x's inbound slot is free now: urgent takes it.
    expect(q.nextDispatchable().map((i) => i.id)).toEqual(['urgent', 'low-elsewhere']);
    q.enqueue(item('r2', 'a', 'z'));
    q.started('r2');
    q.started('urgent');
    q.finished('urgent');
    // Without a blocked higher-priority item, lower ones use x freely.
    expect(q.nextDispatchable().map((i) => i.id)).toContain('low-to-x');
  });

  it('does not let lower priorities take a blocked higher-priority item’s destination', () => {
    const q = new MigrationQueue({ perDestination: 2 });
    q.enqueue(item('busy', 'a', 'x'));
    q.started('busy');
    q.enqueue(item('urgent', 'a', 'x', { priority: 1 })); // blocked on the a->x link
    q.enqueue(item('low', 'c', 'x', { priority: 0 })); // x has a free inbound slot, but urgent claims it
    expect(q.nextDispatchable().map((i) => i.id)).toEqual([]);
  });

  it('passes over held items without letting them keep a slot from the items behind', () => {
    const q = new MigrationQueue({ perSource: 1, perDestination: 2, perLink: 1, perCluster: 5 });
    q.enqueue(item('r1', 'a', 'down'));
    q.enqueue(item('r2', 'a', 'b'));
    expect(q.nextDispatchable().map((i) => i.id)).toEqual(['r1']);
    expect(q.nextDispatchable((i) => i.destination === 'down').map((i) => i.id)).toEqual(['r2']);
  });

  it('refuses to start beyond a limit and names the limit', () => {
    const q = new MigrationQueue();
    q.enqueue(item('one', 'a', 'b'));
    q.enqueue(item('two', 'a', 'b'));
    q.started('one');
    expect(() => q.started('two')).toThrow(FailedPreconditionError);
    expect(() => q.started('two')).toThrow(/link limit 1 of a->b/);
  });

  it('reports unknown, duplicate and cancelled items', () => {
    const q = new MigrationQueue();
    q.enqueue(item('x', 'a', 'b'));
    expect(() => q.enqueue(item('x', 'a', 'c'))).toThrow(AlreadyExistsError);
    expect(() => q.enqueue(item('self', 'a', 'a'))).toThrow(InvalidArgumentError);
    expect(() => q.finished('x')).toThrow(NotFoundError);
    expect(() => q.started('nope')).toThrow(NotFoundError);
    expect(q.cancel('x')).toBe('dequeued');
    expect(q.status('x')).toBeUndefined();
    q.enqueue(item('y', 'a', 'b'));
    q.started('y');
    expect(q.cancel('y')).toBe('running'); // keeps its slots until finished()
    expect(q.snapshot().running).toBe(1);
    q.finished('y');
    expect(() => q.cancel('y')).toThrow(NotFoundError);
  });

  it('a migration whose stream is done leaves its link: the next one on the link may start, the host and cluster limits still count it', () => {
    const q = new MigrationQueue({ perSource: 2, perDestination: 2, perLink: 1, perCluster: 5 });
    for (const id of ['1', '2', '3']) q.enqueue(item(id, 'a', 'b'));
    q.started('1');
    expect(q.nextDispatchable()).toEqual([]); // the link a->b is taken
    expect(q.leftLink('1')).toBe(true);
    expect(q.leftLink('1')).toBe(false); // once
    expect(q.snapshot()).toMatchObject({ running: 1, runningIds: ['1'], offLinkIds: ['1'], runningByLink: {}, outboundByHost: { a: 1 }, inboundByHost: { b: 1 } });
    expect(q.nextDispatchable().map((i) => i.id)).toEqual(['2']);
    q.started('2');
    expect(q.leftLink('2')).toBe(true);
    // Both streams are done, the link is free, but a has 2 outbound and b 2 inbound until they end.
    expect(q.nextDispatchable()).toEqual([]);
    expect(() => q.started('3')).toThrow(/outbound limit 2 of a/);
    q.finished('1');
    expect(q.snapshot()).toMatchObject({ running: 1, offLinkIds: ['2'], runningByLink: {}, outboundByHost: { a: 1 } });
    expect(q.nextDispatchable().map((i) => i.id)).toEqual(['3']);
    q.started('3');
    q.finished('2'); // its link slot went at leftLink: this one's stays counted
    expect(q.snapshot()).toMatchObject({ running: 1, offLinkIds: [], runningByLink: { 'a->b': 1 }, outboundByHost: { a: 1 }, inboundByHost: { b: 1 } });
    q.finished('3');
    expect(q.snapshot()).toMatchObject({ running: 0, runningByLink: {}, outboundByHost: {}, inboundByHost: {} });
    expect(() => q.leftLink('3')).toThrow(NotFoundError);
  });

  it('snapshots depth and slot usage per host and link', () => {
    const q = new MigrationQueue();
    q.enqueue(item('1', 'a', 'b'));
    q.enqueue(item('2', 'a', 'c'));
    q.enqueue(item('3', 'a', 'd'));
    for (const i of q.nextDispatchable()) q.started(i.id);
    expect(q.snapshot()).toMatchObject({
      queued: 1,
      running: 2,
      queuedIds: ['3'],
      outboundByHost: { a: 2 },
      inboundByHost: { b: 1, c: 1 },
      runningByLink: { 'a->b': 1, 'a->c': 1 },
    });
  });

  it('never exceeds any limit under randomized operation sequences, and always drains', () => {
    const hosts = ['h0', 'h1', 'h2', 'h3', 'h4'];
    for (let seed = 1; seed <= 100; seed++) {
      const rnd = mulberry32(seed);
      const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
      const limits: ConcurrencyLimits = {
        perSource: 1 + Math.floor(rnd() * 3),
        perDestination: 1 + Math.floor(rnd() * 3),
        perLink: 1 + Math.floor(rnd() * 2),
        perCluster: 1 + Math.floor(rnd() * 6),
      };
      const q = new MigrationQueue(limits);
      const running: QueueItem[] = [];
      const queued: QueueItem[] = [];
      const offLink = new Set<string>();
      let next = 0;
      const start = (id: string): void => {
        const it = q.started(id);
        running.push(it);
        queued.splice(queued.findIndex((x) => x.id === id), 1);
      };
      for (let step = 0; step < 300; step++) {
        const op = rnd();
        if (op < 0.4) {
          const source = pick(hosts);
          const destination = pick(hosts.filter((h) => h !== source));
          const it = item(`r${next++}`, source, destination, { priority: Math.floor(rnd() * 3), order: Math.floor(rnd() * 4) });
          q.enqueue(it);
          queued.push(it);
        } else if (op < 0.6) {
          const batch = q.nextDispatchable();
          // The batch as a whole fits on top of what runs.
          assertWithin([...running, ...batch], limits, offLink);
          for (const it of batch) start(it.id);
        } else if (op < 0.7 && running.length > 0) {
          // A stream ends: its link slot goes, the rest stays until it finishes.
          const it = pick(running);
          expect(q.leftLink(it.id)).toBe(!offLink.has(it.id));
          offLink.add(it.id);
        } else if (op < 0.8 && running.length > 0) {
          const it = pick(running);
          q.finished(it.id);
          offLink.delete(it.id);
          running.splice(running.indexOf(it), 1);
        } else if (op < 0.9 && queued.length > 0) {
          // Start an arbitrary queued item directly: allowed only within the limits.
          const it = pick(queued);
          const before = [...running];
          try {
            start(it.id);
          } catch (err) {
            expect(err).toBeInstanceOf(FailedPreconditionError);
            const u = usageOf(before, offLink);
            const full =
              u.total >= limits.perCluster ||
              (u.out.get(it.source) ?? 0) >= limits.perSource ||
              (u.in.get(it.destination) ?? 0) >= limits.perDestination ||
              (u.link.get(`${it.source}->${it.destination}`) ?? 0) >= limits.perLink;
            expect(full).toBe(true);
          }
        } else if (queued.length > 0) {
          const it = pick(queued);
          expect(q.cancel(it.id)).toBe('dequeued');
          queued.splice(queued.indexOf(it), 1);
        }
        assertWithin(running, limits, offLink);
        const snap = q.snapshot();
        expect(snap.running).toBe(running.length);
        expect(snap.queued).toBe(queued.length);
        expect(new Set(snap.offLinkIds)).toEqual(offLink);
        // The link counters are the streaming runs, exactly.
        const streams = usageOf(running, offLink).link;
        expect(snap.runningByLink).toEqual(Object.fromEntries(streams));
        // The host and cluster limits count every running item, streaming or not.
        assertWithin(running, { ...limits, perLink: Infinity });
      }
      // Liveness: dispatching and finishing everything empties the queue.
      for (let guard = 0; (queued.length > 0 || running.length > 0) && guard < 10_000; guard++) {
        const batch = q.nextDispatchable();
        if (batch.length === 0) expect(running.length).toBeGreaterThan(0); // no deadlock
        for (const it of batch) start(it.id);
        assertWithin(running, limits, offLink);
        const done = running.shift();
        if (done) {
          q.finished(done.id);
          offLink.delete(done.id);
        }
      }
      expect(queued).toEqual([]);
      expect(q.snapshot()).toMatchObject({ queued: 0, running: running.length });
    }
  });
  it('keeps dispatch order (priority, plan order, first come) through thousands of enqueues, starts and cancels', () => {
    const random = mulberry32(42);
    const rnd = (n: number): number => Math.floor(random() * n);
    const q = new MigrationQueue({ perCluster: 1000, perSource: 1000, perDestination: 1000, perLink: 1000 });
    const ref: { id: string; priority: number; order: number; seq: number }[] = [];
    let seq = 0;
    for (let step = 0; step < 3000; step++) {
      const op = rnd(10);
      if (op < 6 || ref.length === 0) {
        const item = { id: `r${step}`, source: `s${rnd(5)}`, destination: `d${rnd(5)}`, priority: rnd(3), order: rnd(20) };
        q.enqueue(item);
        ref.push({ id: item.id, priority: item.priority, order: item.order, seq: seq++ });
      } else {
        const [gone] = ref.splice(rnd(ref.length), 1);
        if (op < 8) q.cancel(gone!.id);
        else {
          q.started(gone!.id);
          q.finished(gone!.id);
        }
      }
      if (step % 97 === 0 || step === 2999) {
        const want = [...ref].sort((a, b) => b.priority - a.priority || a.order - b.order || a.seq - b.seq).map((r) => r.id);
        expect(q.snapshot().queuedIds).toEqual(want);
      }
    }
  });

  describe('held starts (heldPerLink)', () => {
    it('starts the next run on a busy link held: host slots yes, link slot only when promoted', () => {
      const q = new MigrationQueue({}, { heldPerLink: 1 });
      for (const id of ['1', '2', '3']) q.enqueue(item(id, 'a', 'b'));
      expect(q.nextDispatch()).toEqual([
        { item: item('1', 'a', 'b'), held: false },
        { item: item('2', 'a', 'b'), held: true }, // the link is 1's; one held per link; '3' waits
      ]);
      // nextDispatchable (no held starts) is unchanged.
      expect(q.nextDispatchable().map((i) => i.id)).toEqual(['1']);
      q.started('1');
      q.started('2', true);
      expect(q.isHeld('2')).toBe(true);
      expect(q.snapshot()).toMatchObject({ running: 2, heldIds: ['2'], runningByLink: { 'a->b': 1 }, outboundByHost: { a: 2 }, inboundByHost: { b: 2 } });
      expect(q.nextDispatch()).toEqual([]); // a's two outbound slots are taken
      expect(() => q.started('3', true)).toThrow(/outbound limit 2 of a/);
      expect(q.promote()).toEqual([]); // 1 still streams
      expect(q.leftLink('2')).toBe(false); // a held run holds no link slot to leave
      expect(q.leftLink('1')).toBe(true);
      expect(q.promote().map((i) => i.id)).toEqual(['2']);
      expect(q.promote()).toEqual([]);
      expect(q.isHeld('2')).toBe(false);
      expect(q.snapshot()).toMatchObject({ heldIds: [], runningByLink: { 'a->b': 1 }, outboundByHost: { a: 2 } });
      q.finished('1');
      // 3 may now start held behind 2's stream.
      expect(q.nextDispatch()).toEqual([{ item: item('3', 'a', 'b'), held: true }]);
      q.started('3', true);
      q.finished('2'); // it never left its link: the slot goes now
      expect(q.snapshot()).toMatchObject({ heldIds: ['3'], runningByLink: {}, outboundByHost: { a: 1 } });
      expect(q.promote().map((i) => i.id)).toEqual(['3']);
      q.finished('3');
      expect(q.snapshot()).toMatchObject({ running: 0, heldIds: [], runningByLink: {}, outboundByHost: {}, inboundByHost: {} });
    });

    it('a held run that ends before its promotion (cancelled, expired) gives back its host slots and held place only', () => {
      const q = new MigrationQueue({ perSource: 3, perDestination: 3 }, { heldPerLink: 1 });
      for (const id of ['1', '2', '3']) q.enqueue(item(id, 'a', 'b'));
      q.started('1');
      q.started('2', true);
      expect(() => q.started('3', true)).toThrow(/has 1 held already/);
      expect(q.cancel('2')).toBe('running');
      q.finished('2');
      expect(q.snapshot()).toMatchObject({ heldIds: [], runningByLink: { 'a->b': 1 }, outboundByHost: { a: 1 }, inboundByHost: { b: 1 } });
      expect(q.nextDispatch()).toEqual([{ item: item('3', 'a', 'b'), held: true }]);
    });

    it('never holds past a host limit, or ahead of a higher-priority run waiting for that host', () => {
      const q = new MigrationQueue({ perDestination: 1 }, { heldPerLink: 1 });
      q.enqueue(item('1', 'a', 'b'));
      q.enqueue(item('2', 'a', 'b'));
      q.started('1');
      expect(q.nextDispatch()).toEqual([]); // b takes one inbound: holding 2 would exceed it
      const r = new MigrationQueue({}, { heldPerLink: 1 });
      r.enqueue(item('1', 'a', 'b'));
      r.started('1'); // a->b streams; b has one inbound slot left
      for (const [id, d] of [['e1', 'c'], ['e2', 'd']] as const) {
        r.enqueue(item(id, 'e', d));
        r.started(id); // e's two outbound slots are taken
      }
      r.enqueue(item('hi', 'e', 'b', { priority: 5 })); // waits for e, and claims b against lower priorities
      r.enqueue(item('2', 'a', 'b', { priority: 0 }));
      r.enqueue(item('lo', 'a', 'c', { priority: 0 }));
      // Holding '2' would take b's last inbound slot, which 'hi' waits for: not held; 'lo' starts.
      expect(r.nextDispatch()).toEqual([{ item: item('lo', 'a', 'c', { priority: 0 }), held: false }]);
    });

    it('is off by default and rejects a bad heldPerLink', () => {
      const q = new MigrationQueue();
      q.enqueue(item('1', 'a', 'b'));
      q.enqueue(item('2', 'a', 'b'));
      expect(q.nextDispatch().map((d) => d.held)).toEqual([false]);
      q.started('1');
      expect(() => q.started('2', true)).toThrow(/has 0 held already/);
      expect(() => new MigrationQueue({}, { heldPerLink: -1 })).toThrow(InvalidArgumentError);
    });

    it('keeps one stream per link and every host limit under randomized sequences, and drains', () => {
      const hosts = ['h0', 'h1', 'h2', 'h3'];
      for (let seed = 1; seed <= 40; seed++) {
        const rnd = mulberry32(seed);
        const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
        const limits: ConcurrencyLimits = { perSource: 1 + Math.floor(rnd() * 3), perDestination: 1 + Math.floor(rnd() * 3), perLink: 1, perCluster: 1 + Math.floor(rnd() * 6) };
        const heldPerLink = 1 + Math.floor(rnd() * 2);
        const q = new MigrationQueue(limits, { heldPerLink });
        const running: QueueItem[] = [];
        const held = new Set<string>();
        const offLink = new Set<string>();
        let queued = 0;
        let next = 0;
        const dispatch = (): void => {
          for (const it of q.promote()) held.delete(it.id);
          for (const { item: it, held: h } of q.nextDispatch()) {
            q.started(it.id, h);
            running.push(it);
            queued--;
            if (h) held.add(it.id);
          }
        };
        const check = (): void => {
          // Held runs count on hosts and the cluster, not on their link; at most heldPerLink per link.
          assertWithin(running, limits, new Set([...offLink, ...held]));
          const perLink = new Map<string, number>();
          for (const it of running) if (held.has(it.id)) perLink.set(`${it.source}->${it.destination}`, (perLink.get(`${it.source}->${it.destination}`) ?? 0) + 1);
          for (const v of perLink.values()) expect(v).toBeLessThanOrEqual(heldPerLink);
          expect(new Set(q.snapshot().heldIds)).toEqual(held);
        };
        for (let step = 0; step < 300; step++) {
          const op = rnd();
          if (op < 0.4) {
            const source = pick(hosts);
            q.enqueue(item(`r${next++}`, source, pick(hosts.filter((h) => h !== source)), { priority: Math.floor(rnd() * 3) }));
            queued++;
          } else if (op < 0.6) {
            dispatch();
          } else if (op < 0.8 && running.length > 0) {
            const it = pick(running);
            if (!held.has(it.id)) {
              q.leftLink(it.id);
              offLink.add(it.id);
            }
          } else if (running.length > 0) {
            const it = pick(running);
            q.finished(it.id);
            held.delete(it.id);
            offLink.delete(it.id);
            running.splice(running.indexOf(it), 1);
          }
          check();
        }
        for (let guard = 0; (queued > 0 || running.length > 0) && guard < 10_000; guard++) {
          dispatch();
          check();
          // The oldest non-held run ends (a held one waits for its link; some run always streams or ends).
          const i = running.findIndex((r) => !held.has(r.id));
          expect(i).toBeGreaterThanOrEqual(running.length > 0 ? 0 : -1);
          if (i >= 0) {
            const [done] = running.splice(i, 1);
            q.finished(done!.id);
            offLink.delete(done!.id);
          }
        }
        expect(queued).toBe(0);
        expect(running).toEqual([]);
      }
    });
  });
});
