/**
 * The coordinator's in-process event bus: the same events the outbox relay publishes on NATS,
 * read back from the store's outbox right after each commit and fanned out to Watch streams. It
 * needs no NATS, so Watch works while NATS is down or not configured, and a run's Watch replays
 * the run's events from the outbox (ids and run sequences exactly as on NATS) before going live.
 *
 * Replicated coordinators: a follower takes its live events from NATS ({@link followNats}: the
 * leader's relay publishes them there) instead of polling the shared outbox; the leader, and a
 * follower while NATS is not connected, read the outbox. Events are told apart by id, so one that
 * arrives on both paths around a switch is delivered once.
 */
import type { NatsConnection } from 'nats';
import { Broadcast } from '../shared/broadcast.js';
import { subscribeCluster, type EventSubscription } from '../shared/events/subscriber.js';
import { buildEvent, decodeEvent } from '../shared/events/codec.js';
import { isSampleSubject, parseSubject } from '../shared/events/subjects.js';
import type { Run } from '../shared/gen/migd/v1/coordinator.js';
import type { Event } from '../shared/gen/migd/v1/events.js';
import type { Logger } from '../shared/log.js';
import { turns } from '../shared/metrics/turns.js';
import type { OutboxRepository } from './store/types.js';

const PAGE = 500;
/**
 * Reads of the outbox are at least this far apart (ms): a commit after a quiet spell is read at
 * once, the commits of a busy coordinator within the window share one read at its end.
 */
const WAKE_DELAY_MS = 10;

/**
 * Events one Watch stream may hold for a client that does not read. A stream that falls further
 * behind ends with RESOURCE_EXHAUSTED (STREAM_OVERFLOW): memory stays bounded per stream, and
 * the client knows it missed events (it can watch again, replaying a run from the outbox).
 */
export const WATCH_QUEUE = 4096;

/** The run an event is about, or undefined for plan and node events. */
export function runIdOf(event: Event): string | undefined {
  try {
    const s = parseSubject(event.subject);
    return s.scope === 'run' ? s.id : undefined;
  } catch {
    return undefined;
  }
}

export class EventBus {
  private readonly live = new Broadcast<Event>({ limit: WATCH_QUEUE, overflow: 'fail' });
  private cursor = 0;
  private unsubscribe: (() => void) | undefined;
  private pumping: Promise<void> | undefined;
  private again = false;
  private waking: NodeJS.Timeout | undefined;
  /** performance.now() when the outbox was last read (see WAKE_DELAY_MS). */
  private lastPumpAt = -Infinity;
  private poller: NodeJS.Timeout | undefined;
  private pollMs = 0;
  /** Ids of recently delivered events (oldest first), so no event is delivered twice. */
  private readonly recent = new Set<string>();
  /** The NATS feed while this (follower) coordinator takes live events from NATS. */
  private nats: { sub: EventSubscription | undefined; stopped: boolean; done: Promise<void> } | undefined;
  private stopped = false;

  constructor(
    private readonly store: OutboxRepository,
    private readonly log: Logger,
  ) {}

  /**
   * Starts following the outbox from its current end. `pollMs`: also read it every so many ms,
   * for events other processes commit (replicated coordinators share one database; a follower's
   * Watch sees the leader's events this way, in outbox order, none skipped).
   */
  async start(opts: { pollMs?: number } = {}): Promise<void> {
    this.cursor = await this.store.lastOutboxSeq();
    this.unsubscribe = this.store.onOutboxEnqueued(() => this.wake());
    this.pollMs = opts.pollMs ?? 0;
    this.startPolling();
  }

  private startPolling(): void {
    if (!this.pollMs || this.poller) return;
    this.poller = setInterval(() => this.wake(), this.pollMs);
    this.poller.unref();
  }

  /** Where live events come from now. */
  get source(): 'outbox' | 'nats' {
    return this.nats ? 'nats' : 'outbox';
  }

  /**
   * Follower: live events from NATS (the cluster's events from a little before now, so nothing
   * published while the switch happens is missed; duplicates are dropped by id), no outbox polling.
   * The consumer re-creates itself after a NATS outage. No-op when already following NATS.
   */
  followNats(nc: NatsConnection): void {
    if (this.nats || this.stopped) return;
    if (this.poller) clearInterval(this.poller);
    this.poller = undefined;
    const feed: { sub: EventSubscription | undefined; stopped: boolean; done: Promise<void> } = { sub: undefined, stopped: false, done: Promise.resolve() };
    this.nats = feed;
    feed.done = (async () => {
      let backoff = 250;
      while (!feed.stopped) {
        try {
          feed.sub = await subscribeCluster(nc, { startTime: new Date(Date.now() - 10_000), logger: this.log });
          if (feed.stopped) feed.sub.stop();
          backoff = 250;
          for await (const ev of feed.sub) this.deliver(ev);
        } catch (err) {
          if (!feed.stopped) this.log.warn('event bus: reading events from NATS failed; retrying', { err: (err as Error).message, retryInMs: backoff });
        }
        if (feed.stopped) return;
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 5000);
      }
    })();
    this.log.info('event bus: live events from NATS');
  }

  /**
   * Leader (or NATS lost): live events from the outbox again, from a little before its end (what
   * NATS already delivered is dropped by id), polling it when configured.
   */
  async followOutbox(): Promise<void> {
    const feed = this.nats;
    if (!feed) return;
    this.nats = undefined;
    feed.stopped = true;
    feed.sub?.stop();
    await feed.done;
    this.cursor = Math.max(this.cursor, (await this.store.lastOutboxSeq().catch(() => this.cursor)) - 1000);
    this.startPolling();
    this.wake();
    this.log.info('event bus: live events from the outbox');
  }

  /** Publishes `ev` to Watch streams unless it was delivered already. */
  private deliver(ev: Event): void {
    if (ev.id) {
      if (this.recent.has(ev.id)) return;
      this.recent.add(ev.id);
      if (this.recent.size > 20_000) this.recent.delete(this.recent.values().next().value!);
    }
    this.live.publish(ev);
  }

  /**
   * Reads what the outbox gained: at once after a quiet spell (a lone commit, such as a run's
   * end, reaches Watch streams without waiting), else WAKE_DELAY_MS after the last read, so the
   * commits of a busy coordinator (hundreds a second in a drain) share one read instead of one each.
   */
  private wake(): void {
    if (this.nats || this.stopped) return;
    if (this.pumping) {
      this.again = true;
      return;
    }
    if (this.waking) return;
    this.waking = setTimeout(() => {
      this.waking = undefined;
      this.pumpNow();
    }, Math.max(0, WAKE_DELAY_MS - (performance.now() - this.lastPumpAt)));
  }

  private pumpNow(): void {
    if (this.nats) return;
    this.lastPumpAt = performance.now();
    this.pumping = this.pump()
      .catch((err: unknown) => this.log.warn('event bus: reading the outbox failed', { err }))
      .finally(() => {
        this.pumping = undefined;
        if (this.again) {
          this.again = false;
          this.wake();
        }
      });
  }

  private async pump(): Promise<void> {
    for (;;) {
      const rows = await this.store.readOutbox({ afterSeq: this.cursor, limit: PAGE });
      const t0 = turns.enabled ? turns.now() : 0;
      for (const r of rows) {
        this.cursor = r.seq;
        try {
          this.deliver(decodeEvent(r.payload));
        } catch (err) {
          this.log.warn('event bus: undecodable outbox row', { seq: r.seq, err });
        }
      }
      turns.record('events.deliver', t0, rows.length);
      if (rows.length < PAGE) return;
    }
  }

  /** Every event from now on (until `signal` fires or the bus stops). */
  subscribe(signal?: AbortSignal): AsyncIterableIterator<Event> {
    return this.live.subscribe([], signal);
  }

  /** Live events of the whole cluster. */
  async *watchCluster(opts: { statesOnly?: boolean; signal?: AbortSignal } = {}): AsyncIterable<Event> {
    for await (const ev of this.subscribe(opts.signal)) {
      if (opts.statesOnly && isSampleSubject(ev.subject)) continue;
      yield ev;
    }
  }

  /**
   * One run's events: those already in the outbox, then live ones, ending after its RunCompleted.
   * When the outbox no longer holds the run's start (pruned), `fallback` supplies the history (the
   * run's transitions, actions and completion rebuilt from the store) instead.
   */
  async *watchRun(runId: string, opts: { statesOnly?: boolean; signal?: AbortSignal; fallback?: (before?: Date) => Promise<Event[]> } = {}): AsyncIterable<Event> {
    // Subscribe before reading the replay, so nothing committed in between is lost; duplicates
    // are recognised by their run sequence.
    const live = this.subscribe(opts.signal);
    try {
      const keep = (ev: Event): boolean => !(opts.statesOnly && isSampleSubject(ev.subject));
      let last = 0;
      let replayed = 0;
      let after = 0;
      for (;;) {
        const rows = await this.store.readOutbox({ afterSeq: after, runId, limit: PAGE });
        for (const r of rows) {
          after = r.seq;
          const ev = decodeEvent(r.payload);
          if (replayed === 0 && ev.runSequence > 1 && opts.fallback) {
            for (const old of await opts.fallback(ev.time)) if (keep(old)) yield old;
          }
          replayed++;
          last = Math.max(last, ev.runSequence);
          if (keep(ev)) yield ev;
          if (isCompletion(ev)) return;
        }
        if (rows.length < PAGE) break;
      }
      if (replayed === 0 && opts.fallback) {
        for (const old of await opts.fallback()) {
          if (keep(old)) yield old;
          if (isCompletion(old)) return;
        }
      }
      for await (const ev of live) {
        if (runIdOf(ev) !== runId) continue;
        if (ev.runSequence !== 0 && ev.runSequence <= last) continue;
        last = Math.max(last, ev.runSequence);
        if (keep(ev)) yield ev;
        if (isCompletion(ev)) return;
      }
    } finally {
      await live.return?.();
    }
  }

  /** Stops following the outbox and ends every subscription. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    if (this.poller) clearInterval(this.poller);
    if (this.waking) {
      // What was committed before the stop still reaches the streams.
      clearTimeout(this.waking);
      this.waking = undefined;
      if (!this.pumping) this.pumpNow();
    }
    const feed = this.nats;
    this.nats = undefined;
    if (feed) {
      feed.stopped = true;
      feed.sub?.stop();
      await feed.done;
    }
    await this.pumping;
    this.live.close();
  }
}

/** RunCompleted is the last event of a run (written after its final RunStateChanged). */
function isCompletion(ev: Event): boolean {
  return ev.payload?.$case === 'runCompleted';
}

/**
 * A run's history as events (state changes, actions, completion), oldest first, for a Watch whose
 * run has left the outbox. They carry run sequence 0 (the originals' numbers are not kept) and
 * fresh ids; only those before `before` when given.
 */
export function eventsFromRun(run: Run, before?: Date): Event[] {
  const base = { runId: run.id, planId: run.planId, vmName: run.vmName };
  const items: { t: number; payload: NonNullable<Event['payload']> }[] = [];
  for (const change of run.transitions) items.push({ t: change.time?.getTime() ?? 0, payload: { $case: 'runState', value: { ...base, change } } });
  for (const action of run.actions) items.push({ t: action.time?.getTime() ?? 0, payload: { $case: 'runAction', value: { runId: run.id, action } } });
  if (run.finishedAt) {
    items.push({ t: run.finishedAt.getTime() + 1, payload: { $case: 'runCompleted', value: { ...base, state: run.state, stats: run.stats, error: run.error } } });
  }
  return items
    .filter((i) => before === undefined || i.t < before.getTime())
    .sort((a, b) => a.t - b.t)
    .map((i) => buildEvent(i.payload, { time: new Date(i.t), runSequence: 0 }));
}
