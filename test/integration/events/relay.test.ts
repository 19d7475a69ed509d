import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NatsConnection } from 'nats';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openSqliteHistoryStore, type SqliteHistoryStore } from '../../../services/coordinator/store/sqlite.js';
import { decodeEvent } from '../../../services/shared/events/codec.js';
import { newId } from '../../../services/shared/events/ids.js';
import { EVENTS_STREAM } from '../../../services/shared/events/jetstream.js';
import type { OutboxSource } from '../../../services/shared/events/outbox.js';
import { startOutboxRelay, type OutboxRelay, type OutboxRelayOptions } from '../../../services/shared/events/relay.js';
import { subscribeCluster, subscribeRun, type EventSubscription } from '../../../services/shared/events/subscriber.js';
import { MigrationState as S, PolicyActionKind, PolicyKind } from '../../../services/shared/gen/migd/v1/common.js';
import type { Event } from '../../../services/shared/gen/migd/v1/events.js';
import { createLogger } from '../../../services/shared/log.js';
import { createMetrics, outboxLagObserver } from '../../../services/shared/metrics/metrics.js';
import { startMetricsServer, type MetricsServer } from '../../../services/shared/metrics/server.js';
import { closeConnection, connectTest, startNatsServer, type TestNatsServer } from '../../helpers/nats-server.js';

const quiet = createLogger('test', {}, () => undefined, 'error');

let server: TestNatsServer | undefined;
let dir: string | undefined;
let store: SqliteHistoryStore | undefined;
const connections: NatsConnection[] = [];
const relays: OutboxRelay[] = [];
const subs: EventSubscription[] = [];
let metricsServer: MetricsServer | undefined;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'migd-events-'));
  server = await startNatsServer();
  store = await openSqliteHistoryStore({ filename: join(dir, 'history.db'), logger: quiet, progressEventIntervalMs: 0 });
});

afterEach(async () => {
  for (const s of subs.splice(0)) s.stop();
  for (const r of relays.splice(0)) await r.stop();
  for (const nc of connections.splice(0)) await closeConnection(nc);
  await metricsServer?.close();
  metricsServer = undefined;
  await store?.close();
  store = undefined;
  await server?.dispose();
  server = undefined;
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function connect(): Promise<NatsConnection> {
  const nc = await connectTest(server!);
  connections.push(nc);
  return nc;
}

function relay(nc: NatsConnection, opts: Partial<OutboxRelayOptions> = {}): OutboxRelay {
  const r = startOutboxRelay({ source: store!, nc, logger: quiet, publishTimeoutMs: 500, retryMaxMs: 300, ...opts });
  relays.push(r);
  return r;
}

async function track<T extends EventSubscription>(p: Promise<T>): Promise<T> {
  const s = await p;
  subs.push(s);
  return s;
}

async function collect(sub: AsyncIterable<Event>, timeoutMs = 20_000): Promise<Event[]> {
  const out: Event[] = [];
  const timer = setTimeout(() => (sub as EventSubscription).stop(), timeoutMs);
  try {
    for await (const ev of sub) out.push(ev);
  } finally {
    clearTimeout(timer);
  }
  return out;
}

/** A run's life: created, 3 transitions, 2 progress samples, an action, finished. 9 events. */
async function lifecycle(s: SqliteHistoryStore, runId = newId()): Promise<string> {
  await s.createRun({ id: runId, vmName: 'vm-a', sourceNodeId: 'n1', destinationNodeId: 'n2', policy: { kind: PolicyKind.POLICY_KIND_ADAPTIVE } as never });
  await s.transitionRun(runId, { to: S.MIGRATION_STATE_PREPARING });
  await s.transitionRun(runId, { to: S.MIGRATION_STATE_SETUP });
  await s.transitionRun(runId, { to: S.MIGRATION_STATE_PRECOPY });
  s.appendProgress(runId, { pass: 1, remainingBytes: 100 } as never);
  s.appendProgress(runId, { pass: 2, remainingBytes: 10 } as never);
  await s.flushSamples();
  await s.recordAction(runId, { kind: PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME, value: 500, actor: 'policy:adaptive' } as never);
  await s.finishRun(runId, { state: S.MIGRATION_STATE_SUCCEEDED, stats: { totalTimeMs: 1234, downtimeMs: 12 } as never });
  return runId;
}

const EXPECTED_KINDS = ['state', 'state', 'state', 'state', 'progress', 'progress', 'action', 'state', 'completed'];

function expectRunEvents(events: Event[], runId: string): void {
  expect(events.map((e) => e.runSequence)).toEqual(EXPECTED_KINDS.map((_, i) => i + 1));
  expect(events.map((e) => e.subject)).toEqual(EXPECTED_KINDS.map((k) => `migd.v1.run.${runId}.${k}`));
  expect(new Set(events.map((e) => e.id)).size).toBe(events.length);
  const last = events[events.length - 1]?.payload;
  expect(last?.$case === 'runCompleted' && last.value.stats?.totalTimeMs).toBe(1234);
}

async function streamMessages(nc: NatsConnection): Promise<number> {
  const jsm = await nc.jetstreamManager();
  return (await jsm.streams.info(EVENTS_STREAM)).state.messages;
}

describe('events through the outbox relay', () => {
  it('a subscriber receives a run’s events live, in order', async () => {
    const nc = await connect();
    const r = relay(nc);
    await r.idle(); // stream exists
    const runId = newId();
    const sub = await track(subscribeRun(nc, runId, { untilCompleted: true }));
    const cluster = await track(subscribeCluster(nc, { statesOnly: true }));
    const received = collect(sub);
    await lifecycle(store!, runId);
    const events = await received;
    expectRunEvents(events, runId);

    const clusterEvents: Event[] = [];
    for await (const ev of cluster) {
      clusterEvents.push(ev);
      if (ev.payload?.$case === 'runCompleted') break;
    }
    // states_only leaves out the progress samples.
    expect(clusterEvents.map((e) => e.subject.split('.').pop())).toEqual(EXPECTED_KINDS.filter((k) => k !== 'progress'));
  });

  it('a subscriber that joins after the run replays all of it', async () => {
    const nc = await connect();
    const r = relay(nc);
    const runId = await lifecycle(store!);
    const other = await lifecycle(store!);
    await r.idle();
    expect((await store!.outboxLag()).unpublished).toBe(0);

    const events = await collect(await track(subscribeRun(nc, runId, { fromStart: true, untilCompleted: true })));
    expectRunEvents(events, runId);
    const states = await collect(await track(subscribeRun(nc, other, { statesOnly: true, untilCompleted: true })));
    expect(states.map((e) => e.runSequence)).toEqual([1, 2, 3, 4, 7, 8, 9]);
    expect(await streamMessages(nc)).toBe(18);
  });

  it('loses nothing while NATS is down and publishes no duplicates once it is back', async () => {
    const nc = await connect();
    const registry = createMetrics();
    metricsServer = await startMetricsServer({ registry: registry.registry, port: 0, logger: quiet });
    const r = relay(nc, { onLag: outboxLagObserver(registry), lagIntervalMs: 50 });
    const runId = newId();
    await store!.createRun({ id: runId, vmName: 'vm-a', sourceNodeId: 'n1', destinationNodeId: 'n2', policy: {} as never });
    await store!.transitionRun(runId, { to: S.MIGRATION_STATE_PREPARING });
    await r.idle();
    // A live subscriber across the outage: the ordered consumer must recover by itself.
    const live = await track(subscribeRun(nc, runId, { untilCompleted: true, expiresMs: 2000 }));
    const liveEvents = collect(live, 60_000);

    await server!.stop();
    await store!.transitionRun(runId, { to: S.MIGRATION_STATE_SETUP });
    await store!.transitionRun(runId, { to: S.MIGRATION_STATE_PRECOPY });
    store!.appendProgress(runId, { pass: 1 } as never);
    await store!.flushSamples();
    await store!.recordAction(runId, { kind: PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY } as never);
    await store!.transitionRun(runId, { to: S.MIGRATION_STATE_POSTCOPY });
    await store!.finishRun(runId, { state: S.MIGRATION_STATE_SUCCEEDED });
    // The relay keeps failing and the backlog shows in the outbox and the metrics.
    await waitFor(async () => r.stats().failures >= 2);
    expect((await store!.outboxLag()).unpublished).toBe(7);
    await waitFor(async () => (await registry.outboxUnpublished.get()).values[0]?.value === 7);

    await server!.start();
    await r.idle();
    expect((await store!.outboxLag()).unpublished).toBe(0);

    const replay = await collect(await track(subscribeRun(nc, runId, { untilCompleted: true })));
    expect(replay.map((e) => e.runSequence)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(replay.map((e) => e.subject.split('.').pop())).toEqual([
      'state',
      'state',
      'state',
      'state',
      'progress',
      'action',
      'state',
      'state',
      'completed',
    ]);
    expect(await streamMessages(nc)).toBe(9); // nothing stored twice
    const liveGot = await liveEvents;
    expect(liveGot.map((e) => e.runSequence)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);

    const body = await (await fetch(metricsServer.url)).text();
    expect(body).toMatch(/^migd_outbox_unpublished_events 0$/m);
    expect(body).toMatch(/^migd_outbox_oldest_unpublished_age_seconds 0$/m);
    expect((await fetch(metricsServer.url.replace('/metrics', '/other'))).status).toBe(404);
  });

  it('a relay crash between publish and mark-published re-publishes, and JetStream drops the duplicates', async () => {
    const nc = await connect();
    const runId = await lifecycle(store!);
    // Relay A publishes but "crashes" before marking: marking always fails.
    let markAttempts = 0;
    const crashing: OutboxSource = {
      readUnpublished: (n) => store!.readUnpublished(n),
      markPublished: async () => {
        markAttempts++;
        throw new Error('simulated crash before mark-published');
      },
      outboxLag: () => store!.outboxLag(),
      onOutboxEnqueued: (l) => store!.onOutboxEnqueued(l),
    };
    const a = startOutboxRelay({ source: crashing, nc, logger: quiet, retryInitialMs: 10, retryMaxMs: 20 });
    relays.push(a);
    await waitFor(async () => markAttempts >= 2);
    await a.stop();
    expect(a.stats().published).toBe(9);
    expect(a.stats().duplicates).toBeGreaterThanOrEqual(9); // its own retry was deduplicated
    expect((await store!.outboxLag()).unpublished).toBe(9);

    // The restarted relay publishes everything again: all duplicates, then marks them.
    const b = relay(nc);
    await b.idle();
    expect(b.stats()).toMatchObject({ published: 0, duplicates: 9 });
    expect((await store!.outboxLag()).unpublished).toBe(0);
    expect(await streamMessages(nc)).toBe(9);
    expectRunEvents(await collect(await track(subscribeRun(nc, runId, { untilCompleted: true }))), runId);
  });

  it('re-creates a memory stream lost in a server restart and carries on', async () => {
    const nc = await connect();
    const r = relay(nc, { stream: { storage: 'memory' } });
    await lifecycle(store!);
    await r.idle();
    await server!.stop();
    await server!.start();
    const runId = await lifecycle(store!);
    await r.idle();
    expect(await streamMessages(nc)).toBe(9); // only the second run: memory storage forgot the first
    expectRunEvents(await collect(await track(subscribeRun(nc, runId, { untilCompleted: true }))), runId);
  });

  it('a row the stream refuses in the middle of a batch holds back the rows after it: nothing stored out of order', async () => {
    const nc = await connect();
    const first = relay(nc);
    await first.idle(); // the stream exists
    await first.stop();
    // The stream refuses messages over 1 KiB: the action below, whose reason is 4 KiB, is one.
    const jsm = await nc.jetstreamManager();
    const info = await jsm.streams.info(EVENTS_STREAM);
    await jsm.streams.update(EVENTS_STREAM, { ...info.config, max_msg_size: 1024 });
    const runId = newId();
    await store!.createRun({ id: runId, vmName: 'vm-a', sourceNodeId: 'n1', destinationNodeId: 'n2', policy: {} as never });
    await store!.transitionRun(runId, { to: S.MIGRATION_STATE_PREPARING });
    await store!.recordAction(runId, { kind: PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME, value: 1, reason: 'x'.repeat(4096), actor: 'user' } as never);
    await store!.transitionRun(runId, { to: S.MIGRATION_STATE_SETUP });
    await store!.transitionRun(runId, { to: S.MIGRATION_STATE_PRECOPY });
    await store!.finishRun(runId, { state: S.MIGRATION_STATE_SUCCEEDED });
    // One relay reads all 7 rows in one batch and publishes them without waiting ack by ack.
    const r = relay(nc);
    await waitFor(async () => r.stats().failures >= 2);
    expect(r.stats().published).toBe(2);
    expect((await store!.outboxLag()).unpublished).toBe(5);
    expect(await streamMessages(nc)).toBe(2); // the 4 rows after the refused one were refused too

    await jsm.streams.update(EVENTS_STREAM, { ...info.config, max_msg_size: -1 });
    await r.idle();
    expect((await store!.outboxLag()).unpublished).toBe(0);
    // The stream holds the run's events once each, in run_sequence order.
    const stored: number[] = [];
    for (let seq = 1; seq <= (await streamMessages(nc)); seq++) stored.push(decodeEvent((await jsm.streams.getMessage(EVENTS_STREAM, { seq })).data).runSequence);
    expect(stored).toEqual([1, 2, 3, 4, 5, 6, 7]);
  });

  it('never publishes a change that rolled back', async () => {
    const nc = await connect();
    const r = relay(nc);
    const runId = newId();
    await store!.createRun({ id: runId, vmName: 'vm', sourceNodeId: 'a', destinationNodeId: 'b', policy: {} as never });
    await expect(store!.transitionRun(runId, { to: S.MIGRATION_STATE_PRECOPY, expectedFrom: S.MIGRATION_STATE_SETUP })).rejects.toThrow();
    await expect(store!.createRun({ id: runId, vmName: 'vm', sourceNodeId: 'a', destinationNodeId: 'b', policy: {} as never })).rejects.toThrow();
    await store!.finishRun(runId, { state: S.MIGRATION_STATE_CANCELLED });
    await r.idle();
    const events = await collect(await track(subscribeRun(nc, runId, { untilCompleted: true })));
    expect(events.map((e) => `${e.runSequence}:${e.subject.split('.').pop()}`)).toEqual(['1:state', '2:state', '3:completed']);
  });
});

async function waitFor(cond: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
