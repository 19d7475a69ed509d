/**
 * Reading migd events back from JetStream with ordered (ephemeral, client-tracked) consumers:
 * messages arrive in stream order, and a gap (server restart, lost message) makes the client
 * re-create the consumer from the last sequence it saw instead of skipping ahead.
 *
 * ```ts
 * const sub = await subscribeRun(nc, runId, { fromStart: true, signal });
 * for await (const event of sub) { ... }   // ends when `signal` aborts or sub.stop() is called
 * ```
 */
import { DeliverPolicy, type ConsumerMessages, type NatsConnection } from 'nats';
import { createLogger, type Logger } from '../log.js';
import type { Event } from '../gen/migd/v1/events.js';
import { decodeEvent } from './codec.js';
import { EVENTS_STREAM } from './jetstream.js';
import { ALL_EVENTS_SUBJECT, isSampleSubject, runEventsFilter } from './subjects.js';

/** Options common to the subscriptions. */
export interface SubscribeOptions {
  /** Ends the iteration when aborted (the iterator then returns normally). */
  signal?: AbortSignal;
  /** Leave out progress and guest samples. Default false. */
  statesOnly?: boolean;
  /** Stream name. Default `MIGD_EVENTS`. */
  stream?: string;
  /**
   * How long one pull request waits on the server, in ms; the server sends heartbeats every half
   * of it and two missed ones make the consumer re-create itself (e.g. after a server restart).
   * Default 10 000.
   */
  expiresMs?: number;
  logger?: Logger;
}

/** Options of {@link subscribeRun}. */
export interface SubscribeRunOptions extends SubscribeOptions {
  /** Replay the run's events from its first one (default true); false: only new events. */
  fromStart?: boolean;
  /** End the iteration after the run's RunCompleted event. Default false. */
  untilCompleted?: boolean;
}

/** Options of {@link subscribeCluster}. */
export interface SubscribeClusterOptions extends SubscribeOptions {
  /** Also replay events still in the stream (default false: live events only). */
  fromStart?: boolean;
  /** Deliver events from this time on (instead of only new ones); ignored with fromStart. */
  startTime?: Date;
}

/** A subscription: iterate it once; `stop()` (or the signal) ends the iteration. */
export interface EventSubscription extends AsyncIterable<Event> {
  stop(): void;
}

/**
 * Subscribes to the events of one run (`migd.v1.run.<id>.>`), in order. Resolves once the
 * consumer exists, so with `fromStart: false` every event published afterwards is delivered.
 * Events whose `run_sequence` is not above the last one seen are skipped, so a duplicate that
 * outlived the stream's duplicate window is not delivered twice.
 * @throws InvalidArgumentError for an empty run id; NATS errors when the stream is missing or
 *   JetStream is unavailable.
 */
export async function subscribeRun(nc: NatsConnection, runId: string, opts: SubscribeRunOptions = {}): Promise<EventSubscription> {
  const filter = runEventsFilter(runId);
  let lastSeq = 0;
  return subscribe(nc, filter, opts.fromStart ?? true, opts, (ev) => {
    if (ev.runSequence !== 0) {
      if (ev.runSequence <= lastSeq) return 'skip';
      lastSeq = ev.runSequence;
    }
    return opts.untilCompleted === true && ev.payload?.$case === 'runCompleted' ? 'last' : 'yield';
  });
}

/**
 * Subscribes to every migd event of the cluster (`migd.v1.>`): live from now, or replayed with
 * `fromStart`. Resolves once the consumer exists.
 * @throws NATS errors when the stream is missing or JetStream is unavailable.
 */
export async function subscribeCluster(nc: NatsConnection, opts: SubscribeClusterOptions = {}): Promise<EventSubscription> {
  return subscribe(nc, ALL_EVENTS_SUBJECT, opts.fromStart ?? false, opts, () => 'yield', opts.fromStart ? undefined : opts.startTime);
}

async function subscribe(
  nc: NatsConnection,
  filter: string,
  fromStart: boolean,
  opts: SubscribeOptions,
  decide: (ev: Event) => 'yield' | 'skip' | 'last',
  startTime?: Date,
): Promise<EventSubscription> {
  const log = opts.logger ?? createLogger('events-subscriber');
  // "From the start" is deliver_policy=all. nats.js's ordered consumer expresses it as its default
  // (start sequence 1): passing DeliverPolicy.All explicitly makes it send `all` together with
  // opt_start_seq, which the server rejects.
  const consumer = await nc.jetstream().consumers.get(opts.stream ?? EVENTS_STREAM, {
    filterSubjects: filter,
    ...(fromStart ? {} : startTime ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: startTime.toISOString() } : { deliver_policy: DeliverPolicy.New }),
  });
  const expires = opts.expiresMs ?? 10_000;
  const messages: ConsumerMessages = await consumer.consume({ expires, idle_heartbeat: Math.floor(expires / 2) });
  const signal = opts.signal;
  const stop = (): void => {
    signal?.removeEventListener('abort', stop);
    messages.stop();
  };
  signal?.addEventListener('abort', stop, { once: true });
  if (signal?.aborted) stop();

  async function* iterate(): AsyncGenerator<Event> {
    try {
      for await (const m of messages) {
        if (opts.statesOnly === true && isSampleSubject(m.subject)) continue;
        let ev: Event;
        try {
          ev = decodeEvent(m.data, m.headers);
        } catch (err) {
          log.warn('skipping a message that is not a migd event', { subject: m.subject, err });
          continue;
        }
        const d = decide(ev);
        if (d === 'skip') continue;
        yield ev;
        if (d === 'last') return;
      }
    } finally {
      stop();
    }
  }
  const it = iterate();
  return {
    [Symbol.asyncIterator]: () => it,
    stop,
  };
}
