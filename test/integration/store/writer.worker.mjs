// Worker thread for concurrency.test.ts: opens its own store (its own SQLite connection) on the
// shared file and appends samples and state changes as fast as it can.
import './register-ts.mjs';
import { parentPort, workerData } from 'node:worker_threads';

const { openSqliteHistoryStore } = await import('../../../services/coordinator/store/sqlite.ts');
const { file, runId, vmName, samples, transitions } = workerData;
const store = await openSqliteHistoryStore({
  filename: file,
  sampleBatchSize: 100,
  sampleFlushIntervalMs: 5,
  progressEventIntervalMs: 2,
  logger: { debug() {}, info() {}, warn() {}, error() {}, child() { return this; } },
});
try {
  let t = 0;
  for (let i = 0; i < samples; i++) {
    store.appendProgress(runId, { pass: i, transferredBytes: i });
    store.appendGuestSample({ vmName, msPerGib: 1000 + i }, runId);
    store.appendHostCpu(runId, { sourceCpuSeconds: i, destinationCpuSeconds: 0 });
    if (i % 100 === 99) {
      // A state change every 100 samples, and let the flush timers run.
      await store.transitionRun(runId, { to: 4, reason: `t${t++}` });
      await new Promise((r) => setImmediate(r));
    }
  }
  for (; t < transitions; t++) await store.transitionRun(runId, { to: 4, reason: `t${t}` });
  await store.flushSamples();
  parentPort.postMessage({ ok: true, stats: store.sampleStats() });
} catch (err) {
  parentPort.postMessage({ ok: false, error: String(err?.stack ?? err) });
} finally {
  await store.close();
}
