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
import { setTimeout as sleep } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';
import { AckPolicy, DeliverPolicy, nanos, type ConsumerMessages, type NatsConnection } from 'nats';
import { CancelledError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { retry } from '../retry.js';
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

/**
 * Failed liveness probes in a row (one every half `expiresMs`) after which a consumer counts as
 * lost. An ordered consumer is a single in-memory replica on one server: when that server dies
 * (one of a cluster), nats.js keeps asking it for the consumer's info (timeouts, not "not found")
 * and never re-creates it, so the subscription does that itself, from the stream sequence after
 * the last message it saw.
 */
const LOST_AFTER_FAILED_PROBES = 2;

async function subscribe(
  nc: NatsConnection,
  filter: string,
  fromStart: boolean,
  opts: SubscribeOptions,
  decide: (ev: Event) => 'yield' | 'skip' | 'last',
  startTime?: Date,
): Promise<EventSubscription> {
  const log = opts.logger ?? createLogger('events-subscriber');
  const stream = opts.stream ?? EVENTS_STREAM;
  const expires = opts.expiresMs ?? 10_000;
  const subscribedAt = new Date();
  /** Stream sequence of the last message seen (0: none yet). */
  let lastSeq = 0;
  const stopper = new AbortController();
  let current: ConsumerMessages | undefined;

  const open = async (): Promise<ConsumerMessages> => {
    // A re-created consumer goes on after the last message seen (or from the first
    // subscription's time when none was seen).
    const from =
      lastSeq > 0
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: lastSeq + 1 }
        : fromStart
          ? { deliver_policy: DeliverPolicy.All }
          : startTime
            ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: startTime.toISOString() }
            : current === undefined
              ? { deliver_policy: DeliverPolicy.New }
              : { deliver_policy: DeliverPolicy.StartTime, opt_start_time: subscribedAt.toISOString() };
    // An ordered consumer made by hand (nats.js's own re-creates itself only with a long back-off
    // of its own, and not at all when its server is gone): one attempt, the caller retries.
    const jsm = await nc.jetstreamManager({ checkAPI: false });
    const info = await jsm.consumers.add(stream, {
      name: `migd_sub_${randomBytes(8).toString('hex')}`,
      filter_subject: filter,
      ...from,
      ack_policy: AckPolicy.None,
      max_deliver: 1,
      mem_storage: true,
      num_replicas: 1,
      inactive_threshold: nanos(5 * 60_000),
    });
    const consumer = await nc.jetstream().consumers.get(stream, info.name);
    const messages = await consumer.consume({ expires, idle_heartbeat: Math.floor(expires / 2) });
    log.debug('event consumer created', { filter, ...from, name: info.name, server: info.cluster?.leader });
    void (async () => {
      let failed = 0;
      const ended = messages.closed().then(() => true);
      for (;;) {
        if (await Promise.race([ended, sleep(Math.floor(expires / 2), false, { ref: false })])) return;
        if (stopper.signal.aborted || nc.isClosed()) return;
        try {
          await consumer.info();
          failed = 0;
        } catch (err) {
          if (++failed < LOST_AFTER_FAILED_PROBES) continue;
          log.warn('event consumer lost (its server is gone?); re-creating it', { filter, afterStreamSeq: lastSeq, err: (err as Error).message });
          messages.stop();
          return;
        }
      }
    })().catch(() => undefined);
    return messages;
  };

  current = await open();
  const signal = opts.signal;
  const stop = (): void => {
    stopper.abort(new CancelledError('subscription stopped'));
    signal?.removeEventListener('abort', stop);
    current?.stop();
  };
  signal?.addEventListener('abort', stop, { once: true });
  if (signal?.aborted) stop();

  async function* iterate(): AsyncGenerator<Event> {
    try {
      while (!stopper.signal.aborted) {
        const messages = current!;
        let delivered = 0;
        for await (const m of messages) {
          // Ordered: a gap in the consumer's delivery sequence means a message did not arrive.
          if (m.info.deliverySequence !== delivered + 1) {
            log.warn('event consumer skipped a message; re-creating it', { filter, afterStreamSeq: lastSeq });
            messages.stop();
            break;
          }
          delivered = m.info.deliverySequence;
          if (m.seq <= lastSeq) continue; // already seen, before a re-creation
          lastSeq = m.seq;
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
        if (stopper.signal.aborted) return;
        // Lost: a new consumer, as soon as the stream answers again.
        try {
          const lostAt = Date.now();
          const stopped = new Promise<undefined>((resolve) => stopper.signal.addEventListener('abort', () => resolve(undefined), { once: true }));
          const opening = retry(() => open(), {
            initialMs: 250,
            maxMs: 5000,
            jitter: 0.25,
            signal: stopper.signal,
            retryable: () => !nc.isClosed(),
            onRetry: (err, attempt, retryInMs) => log.debug('re-creating the event consumer failed; retrying', { filter, attempt, retryInMs, err: (err as Error).message }),
          });
          // nats.js retries a consumer it cannot create by itself, without a signal: stop waiting
          // for it when the subscription stops (and stop what it makes later).
          const next = await Promise.race([opening, stopped]);
          if (next === undefined) {
            void opening.then((m) => m.stop(), () => undefined);
            return;
          }
          current = next;
          log.info('event consumer re-created', { filter, afterStreamSeq: lastSeq, tookMs: Date.now() - lostAt });
        } catch (err) {
          if (stopper.signal.aborted) return;
          throw err;
        }
        if (stopper.signal.aborted) current.stop();
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
