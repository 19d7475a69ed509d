/**
 * Micro-benchmark of the history store and the event path (not part of `npm test`).
 *
 *   npm run build && node dist/scripts/bench-store-events.js [--samples 200000] [--runs 20]
 *                                                           [--latency 1000] [--interval-ms 5]
 *
 * Starts a private `nats-server -js` (temp store dir, free port) and a store on a temp SQLite
 * file, then measures:
 *  1. ingest: progress samples per second the store takes in and writes (batched), with the
 *     outbox relay publishing the rate-limited progress events meanwhile;
 *  2. latency from "a state change / a progress sample is recorded" (the stand-in for a QMP event
 *     arriving) to a NATS subscriber receiving it through outbox → relay → JetStream → ordered
 *     consumer, at one event per `--interval-ms`.
 * Everything it starts is stopped and removed at the end, also on failure.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { connect, type NatsConnection } from 'nats';
import { openSqliteHistoryStore, type SqliteHistoryStore } from '../services/coordinator/store/sqlite.js';
import { loadConfig } from '../services/shared/config.js';
import { newId } from '../services/shared/events/ids.js';
import { startOutboxRelay, type OutboxRelay } from '../services/shared/events/relay.js';
import { subscribeRun } from '../services/shared/events/subscriber.js';
import { MigrationState, PolicyKind } from '../services/shared/gen/migd/v1/common.js';
import { createLogger } from '../services/shared/log.js';
import { freePort } from '../services/shared/net.js';

const quiet = createLogger('bench', {}, () => undefined, 'error');

const { values: opts } = loadConfig(
  {
    samples: { type: 'integer', default: 200_000, min: 1, max: 100_000_000, doc: 'progress samples ingested (default 200000)' },
    runs: { type: 'integer', default: 20, min: 1, max: 100_000, doc: 'runs the samples are spread over (default 20)' },
    latency: { type: 'integer', default: 1000, min: 1, max: 1_000_000, doc: 'events timed end to end (default 1000)' },
    'interval-ms': { type: 'integer', default: 5, min: 1, max: 60_000, doc: 'one latency event every N ms (default 5)' },
  },
  process.argv.slice(2),
);
const SAMPLES = opts.samples;
const RUNS = opts.runs;
const LATENCY_EVENTS = opts.latency;
const INTERVAL_MS = opts['interval-ms'];


async function startNats(storeDir: string): Promise<{ proc: ChildProcess; url: string }> {
  const bin = process.env['NATS_SERVER_BIN'] ?? (existsSync('/usr/sbin/nats-server') ? '/usr/sbin/nats-server' : 'nats-server');
  const port = await freePort();
  const proc = spawn(bin, ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', storeDir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`nats-server not ready:\n${log}`)), 10_000);
    const onData = (b: Buffer): void => {
      log += b.toString();
      if (log.includes('Server is ready')) {
        clearTimeout(timer);
        resolve();
      }
    };
    proc.stdout?.on('data', onData);
    proc.stderr?.on('data', onData);
    proc.once('exit', (c) => {
      clearTimeout(timer);
      reject(new Error(`nats-server exited ${c}:\n${log}`));
    });
  });
  proc.stdout?.resume();
  proc.stderr?.resume();
  return { proc, url: `nats://127.0.0.1:${port}` };
}

async function stopNats(proc: ChildProcess | undefined): Promise<void> {
  if (proc === undefined || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(t);
}

function pct(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

function fmt(ms: number): string {
  return `${ms.toFixed(2)} ms`;
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

async function benchIngest(store: SqliteHistoryStore, relay: OutboxRelay): Promise<void> {
  const runs: string[] = [];
  for (let i = 0; i < RUNS; i++) {
    const r = await store.createRun({
      vmName: `vm-${i}`,
      sourceNodeId: 'a',
      destinationNodeId: 'b',
      policy: { kind: PolicyKind.POLICY_KIND_ADAPTIVE } as never,
    });
    await store.transitionRun(r.id, { to: MigrationState.MIGRATION_STATE_PRECOPY });
    runs.push(r.id);
  }
  await relay.idle();
  const before = relay.stats().published;
  const t0 = performance.now();
  for (let i = 0; i < SAMPLES; i++) {
    store.appendProgress(runs[i % RUNS]!, {
      pass: i,
      transferredBytes: i * 4096,
      remainingBytes: 1e9 - i,
      totalBytes: 1e9,
      throughputMbps: 900,
      qemuStatus: 'active',
      state: MigrationState.MIGRATION_STATE_PRECOPY,
    } as never);
    // Let the flush timers and the relay run, as an event loop serving QMP sockets would.
    if (i % 2000 === 1999) await tick();
  }
  const appended = performance.now();
  await store.flushSamples();
  const flushed = performance.now();
  await relay.idle();
  const s = store.sampleStats();
  console.log(`ingest: ${SAMPLES} progress samples over ${RUNS} runs`);
  console.log(`  appended in ${fmt(appended - t0)}, all written in ${fmt(flushed - t0)}`);
  console.log(`  => ${Math.round(SAMPLES / ((flushed - t0) / 1000)).toLocaleString('en-US')} samples/s written (batched)`);
  console.log(`  progress events published meanwhile (rate-limited per run): ${relay.stats().published - before}; dropped samples: ${s.dropped}`);
}

async function benchLatency(store: SqliteHistoryStore, nc: NatsConnection): Promise<void> {
  const measure = async (kind: 'state' | 'progress'): Promise<number[]> => {
    const runId = newId();
    await store.createRun({ id: runId, vmName: 'vm-lat', sourceNodeId: 'a', destinationNodeId: 'b', policy: {} as never });
    const sub = await subscribeRun(nc, runId, { fromStart: false });
    const sent = new Map<number, number>();
    const lat: number[] = [];
    const done = (async () => {
      for await (const ev of sub) {
        const now = performance.now();
        let key: number | undefined;
        if (kind === 'state' && ev.payload?.$case === 'runState') key = Number(ev.payload.value.change?.reason.slice(1));
        if (kind === 'progress' && ev.payload?.$case === 'runProgress') key = ev.payload.value.sample?.pass;
        const t = key === undefined ? undefined : sent.get(key);
        if (t !== undefined) lat.push(now - t);
        if (lat.length === LATENCY_EVENTS) break;
      }
    })();
    for (let i = 0; i < LATENCY_EVENTS; i++) {
      sent.set(i, performance.now());
      if (kind === 'state') {
        await store.transitionRun(runId, { to: MigrationState.MIGRATION_STATE_PRECOPY, reason: `b${i}` });
      } else {
        store.appendProgress(runId, { pass: i } as never);
      }
      await new Promise((r) => setTimeout(r, INTERVAL_MS));
    }
    const timeout = setTimeout(() => sub.stop(), 30_000);
    await done;
    clearTimeout(timeout);
    sub.stop();
    return lat.sort((a, b) => a - b);
  };
  for (const kind of ['state', 'progress'] as const) {
    const lat = await measure(kind);
    console.log(
      `latency ${kind === 'state' ? 'state change ' : 'progress sample'} recorded -> subscriber: n=${lat.length} ` +
        `p50 ${fmt(pct(lat, 0.5))}  p99 ${fmt(pct(lat, 0.99))}  max ${fmt(lat[lat.length - 1] ?? NaN)}`,
    );
  }
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'migd-bench-'));
  let nats: { proc: ChildProcess; url: string } | undefined;
  let nc: NatsConnection | undefined;
  let relay: OutboxRelay | undefined;
  let ingestStore: SqliteHistoryStore | undefined;
  let latencyStore: SqliteHistoryStore | undefined;
  try {
    nats = await startNats(join(dir, 'nats'));
    nc = await connect({ servers: nats.url, maxReconnectAttempts: -1 });
    console.log(`node ${process.version}, nats-server at ${nats.url}, SQLite file in ${dir}`);

    ingestStore = await openSqliteHistoryStore({ filename: join(dir, 'ingest.db'), logger: quiet });
    relay = startOutboxRelay({ source: ingestStore, nc, logger: quiet });
    await benchIngest(ingestStore, relay);
    await relay.stop();
    await ingestStore.close();
    ingestStore = undefined;

    // Every progress sample carries an event here, to time the whole path per sample.
    latencyStore = await openSqliteHistoryStore({ filename: join(dir, 'latency.db'), logger: quiet, progressEventIntervalMs: 0 });
    relay = startOutboxRelay({ source: latencyStore, nc, logger: quiet });
    await relay.idle();
    await benchLatency(latencyStore, nc);
  } finally {
    await relay?.stop();
    await ingestStore?.close();
    await latencyStore?.close();
    if (nc !== undefined && !nc.isClosed()) {
      await nc.drain();
      await nc.closed();
    }
    await stopNats(nats?.proc);
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
