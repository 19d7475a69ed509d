import Database from 'better-sqlite3';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { MigrationState as S, PolicyKind } from '../../../services/shared/gen/migd/v1/common.js';
import type { SqliteHistoryStore } from '../../../services/coordinator/store/sqlite.js';
import { openStore, removeDir, tempDir } from './fixtures.js';

const WORKERS = 3;
const WORKER_SAMPLES = 1500;
const WORKER_TRANSITIONS = 40;
const LOOPS = 2;
const LOOP_SAMPLES = 1000;

let dir: string | undefined;
let store: SqliteHistoryStore | undefined;
const workers: Worker[] = [];

afterEach(async () => {
  await Promise.all(workers.splice(0).map((w) => w.terminate()));
  await store?.close();
  store = undefined;
  await removeDir(dir);
  dir = undefined;
});

interface WorkerResult {
  ok: boolean;
  error?: string;
  stats?: { written: number; dropped: number; failedFlushes: number };
}

function runWorker(data: object): Promise<WorkerResult> {
  const w = new Worker(new URL('./writer.worker.mjs', import.meta.url), { workerData: data });
  workers.push(w);
  return new Promise((resolve, reject) => {
    let result: WorkerResult | undefined;
    w.on('message', (m: WorkerResult) => (result = m));
    w.on('error', reject);
    w.on('exit', (code) => (result ? resolve(result) : reject(new Error(`worker exited ${code} without a result`))));
  });
}

describe('concurrent writers', () => {
  it('loses no rows and hits no SQLITE_BUSY with writer threads, async writers and queries at once', async () => {
    dir = await tempDir();
    const file = join(dir, 'history.db');
    const s = await openStore(dir, { sampleBatchSize: 100, sampleFlushIntervalMs: 5, progressEventIntervalMs: 0 });
    store = s;
    const policy = { kind: PolicyKind.POLICY_KIND_ADAPTIVE } as never;
    const runs = [];
    for (let i = 0; i < WORKERS + 1; i++) {
      const r = await s.createRun({ vmName: `vm-${i}`, sourceNodeId: 'a', destinationNodeId: 'b', policy });
      await s.transitionRun(r.id, { to: S.MIGRATION_STATE_PRECOPY });
      runs.push(r);
    }
    const mainRun = runs[WORKERS]!;

    const done = Promise.all(
      runs.slice(0, WORKERS).map((r, i) =>
        runWorker({ file, runId: r.id, vmName: `vm-${i}`, samples: WORKER_SAMPLES, transitions: WORKER_TRANSITIONS }),
      ),
    );
    let finished = false;
    const settled = done.finally(() => (finished = true));

    // In-process writers: several async loops sharing this process's store.
    const loops = Array.from({ length: LOOPS }, async (_, l) => {
      for (let i = 0; i < LOOP_SAMPLES; i++) {
        s.appendProgress(mainRun.id, { pass: l * LOOP_SAMPLES + i } as never);
        if (i % 50 === 0) await new Promise((r) => setImmediate(r));
      }
    });
    // Readers, until the writer threads are done.
    let queries = 0;
    const readers = (async () => {
      while (!finished) {
        await s.listRuns({ pageSize: 10 });
        await s.getRunTimeline(runs[queries % WORKERS]!.id);
        await s.comparePolicies({});
        await s.countRunsByState();
        queries++;
        await new Promise((r) => setTimeout(r, 2));
      }
    })();

    const results = await settled;
    await Promise.all([...loops, readers]);
    await s.flushSamples();
    for (const r of results) expect(r, r.error).toMatchObject({ ok: true, stats: { dropped: 0, failedFlushes: 0 } });
    expect(queries).toBeGreaterThan(0);
    expect(s.sampleStats()).toMatchObject({ dropped: 0, failedFlushes: 0 });

    const raw = new Database(file, { readonly: true });
    try {
      const count = (table: string, runId: string): number =>
        (raw.prepare(`select count(*) as n from ${table} where run_id = ?`).get(runId) as { n: number }).n;
      for (const r of runs.slice(0, WORKERS)) {
        expect(count('progress_samples', r.id)).toBe(WORKER_SAMPLES);
        expect(count('guest_samples', r.id)).toBe(WORKER_SAMPLES);
        expect(count('host_cpu_samples', r.id)).toBe(WORKER_SAMPLES);
        expect(count('run_transitions', r.id)).toBe(2 + WORKER_TRANSITIONS);
      }
      expect(count('progress_samples', mainRun.id)).toBe(LOOPS * LOOP_SAMPLES);
      // Every run's event sequence is gap-free and unique, whoever wrote it.
      for (const r of runs) {
        const seqs = (raw.prepare('select run_sequence as q from outbox where run_id = ? order by seq').all(r.id) as { q: number }[]).map((x) => x.q);
        expect(seqs).toEqual(seqs.map((_, i) => i + 1));
        const last = (raw.prepare('select last_sequence as q from runs where id = ?').get(r.id) as { q: number }).q;
        expect(last).toBe(seqs.length);
      }
    } finally {
      raw.close();
    }
  });
});
