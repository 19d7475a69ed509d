import { afterEach, describe, expect, it, vi } from 'vitest';
import { FailedPreconditionError } from '../../../services/shared/errors.js';
import { createLogger } from '../../../services/shared/log.js';
import { SampleWriter, type SampleBatch } from '../../../services/coordinator/store/sample-writer.js';
import type { NewHostCpuRow, NewProgressRow } from '../../../services/coordinator/store/schema.js';

const logger = createLogger('test', {}, () => undefined, 'error');
const progress = (i: number): NewProgressRow => ({ run_id: 'r', at: i, pass: i }) as NewProgressRow;
const cpu = (i: number): NewHostCpuRow => ({ run_id: 'r', at: i, source_cpu_seconds: i, destination_cpu_seconds: 0 });

function writer(opts: Partial<ConstructorParameters<typeof SampleWriter>[0]> = {}) {
  const batches: SampleBatch[] = [];
  const w = new SampleWriter({
    persist: async (b) => {
      batches.push(b);
    },
    batchSize: 10,
    flushIntervalMs: 100,
    maxBuffered: 50,
    logger,
    ...opts,
  });
  return { w, batches };
}

afterEach(() => {
  vi.useRealTimers();
});

describe('SampleWriter', () => {
  it('flushes when a batch is full', async () => {
    vi.useFakeTimers();
    const { w, batches } = writer();
    for (let i = 0; i < 10; i++) w.addProgress(progress(i));
    expect(batches).toHaveLength(0);
    await vi.advanceTimersToNextTimerAsync(); // the immediate scheduled by the full batch
    expect(batches).toHaveLength(1);
    expect(batches[0]!.progress).toHaveLength(10);
    expect(w.size).toBe(0);
  });

  it('flushes after the interval when the batch is not full', async () => {
    vi.useFakeTimers();
    const { w, batches } = writer();
    w.addHostCpu(cpu(1));
    await vi.advanceTimersByTimeAsync(99);
    expect(batches).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(batches).toHaveLength(1);
    expect(batches[0]!.hostCpu).toEqual([cpu(1)]);
  });

  it('writes a sample that carries an event within eventDelayMs, with its event and those of other runs in one batch', async () => {
    vi.useFakeTimers();
    const { w, batches } = writer({ eventDelayMs: 20 });
    const event = (runId: string) => ({ runId, time: new Date(0), payload: { $case: 'runProgress' as const, value: { runId, sample: undefined } } });
    w.addProgress(progress(1));
    w.addProgress(progress(2), event('r'));
    await vi.advanceTimersByTimeAsync(10);
    w.addProgress({ ...progress(3), run_id: 's' }, event('s'));
    expect(batches).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(10);
    expect(batches).toHaveLength(1);
    expect(batches[0]!.progress).toHaveLength(3);
    expect(batches[0]!.events.map((e) => e.runId)).toEqual(['r', 's']);
    // Nothing left to write: the interval timer of those rows finds an empty buffer.
    await vi.advanceTimersByTimeAsync(200);
    expect(batches).toHaveLength(1);
  });

  it('keeps rows in order after a failed write and retries them', async () => {
    let fail = true;
    const written: number[] = [];
    const { w } = writer({
      persist: async (b) => {
        if (fail) throw new Error('SQLITE_BUSY');
        written.push(...b.progress.map((p) => p.pass as number));
      },
    });
    w.addProgress(progress(1));
    w.addProgress(progress(2));
    await expect(w.flush()).rejects.toThrow('SQLITE_BUSY');
    expect(w.size).toBe(2);
    w.addProgress(progress(3));
    fail = false;
    await w.flush();
    expect(written).toEqual([1, 2, 3]);
    expect(w.stats()).toEqual({ written: 3, dropped: 0, failedFlushes: 1 });
    await w.close();
  });

  it('drops the oldest rows beyond maxBuffered while writes fail', async () => {
    const { w } = writer({
      persist: async () => {
        throw new Error('disk full');
      },
      batchSize: 1000,
      maxBuffered: 5,
    });
    for (let i = 0; i < 8; i++) w.addProgress(progress(i));
    await expect(w.flush()).rejects.toThrow('disk full');
    expect(w.size).toBe(5);
    expect(w.stats().dropped).toBe(3);
    await expect(w.close()).rejects.toThrow('disk full');
  });

  it('hands its buffer to a caller that writes it elsewhere, and takes it back in front when that fails', async () => {
    vi.useFakeTimers();
    const { w, batches } = writer();
    expect(w.take()).toBeUndefined();
    w.addProgress(progress(1));
    w.addProgress(progress(2));
    const t = w.take()!;
    expect(t.batch.progress.map((r) => r.pass)).toEqual([1, 2]);
    expect(w.size).toBe(0);
    w.addProgress(progress(3));
    // The caller's write failed: its rows go back before the newer one and are written later.
    w.restore(t);
    expect(w.stats().failedFlushes).toBe(1);
    await vi.advanceTimersByTimeAsync(100);
    expect(batches.flatMap((b) => b.progress.map((r) => r.pass))).toEqual([1, 2, 3]);
    // A successful caller's rows count as written.
    w.addProgress(progress(4));
    const t2 = w.take()!;
    w.written(t2);
    expect(w.stats().written).toBe(4);
  });

  it('serializes flushes and refuses samples after close', async () => {
    let active = 0;
    let maxActive = 0;
    const { w } = writer({
      persist: async () => {
        active++;
        maxActive = Math.max(maxActive, active);
        await new Promise((r) => setTimeout(r, 5));
        active--;
      },
    });
    w.addProgress(progress(1));
    const a = w.flush();
    w.addProgress(progress(2));
    const b = w.flush();
    await Promise.all([a, b]);
    expect(maxActive).toBe(1);
    await w.close();
    expect(() => w.addProgress(progress(3))).toThrow(FailedPreconditionError);
  });
});
