/**
 * The lab's smoke test: the tiny `smoke` scenario end to end through the real stack — testbed
 * hosts, node daemons, and the coordinator with nats-server when the coordinator is built (else the
 * node daemons directly; MIGD_LAB_MODE=direct|coordinator forces one) — then the report from the
 * recorded timeline and its PNG via headless Chromium, kept in test-output/lab-smoke/. Then the
 * `storage-smoke` scenario: a guest with a LOCAL disk it writes and a NIC, the disk copied over NBD,
 * the guest probed from the VM network's client namespace (the blackout recorded with the run).
 */
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrationState } from '../../../services/shared/gen/migd/v1/common.js';
import { repoRoot } from '../../../services/shared/paths.js';
import { startLabCluster, type LabCluster } from '../../../stress/lab/cluster.js';
import { runFigures } from '../../../stress/lab/metrics.js';
import { chromiumBinary } from '../../../stress/lab/report.js';
import { loadTimeline } from '../../../stress/lab/results.js';
import { runComparison } from '../../../stress/lab/runner.js';
import { resolveTarget } from '../../../stress/lab/scenarios.js';

const mode = process.env['MIGD_LAB_MODE'] === 'direct' || process.env['MIGD_LAB_MODE'] === 'coordinator' ? process.env['MIGD_LAB_MODE'] : undefined;
const out = join(repoRoot(), 'test-output', 'lab-smoke');
const outStorage = join(repoRoot(), 'test-output', 'lab-smoke-storage');

describe('scenario lab smoke', () => {
  let cluster: LabCluster | undefined;
  const lines: string[] = [];

  beforeAll(async () => {
    rmSync(out, { recursive: true, force: true });
    rmSync(outStorage, { recursive: true, force: true });
    cluster = await startLabCluster({ ...(mode ? { mode } : {}), onLog: (l) => (process.env['MIGD_TEST_LOGS'] === '1' ? console.error(l) : undefined) });
  }, 180_000);

  afterAll(async () => {
    await cluster?.close();
  }, 120_000);

  it('runs the smoke scenario, records its run and writes the report with a PNG', async () => {
    const c = cluster!;
    const comparison = resolveTarget('smoke')!;
    const tb = c.tb;
    const r = await runComparison({
      comparison,
      outDir: out,
      backend: c.backend,
      source: c.source,
      destination: c.destination,
      shape: (host, link) => tb.shape(host, { ...(link.rateMbit !== undefined ? { rateMbit: link.rateMbit } : {}) }),
      png: chromiumBinary() !== undefined,
      environment: { test: 'smoke' },
      log: (l) => lines.push(l),
    });
    expect(r.results.errors, lines.join('\n')).toEqual([]);
    expect(r.results.runs).toHaveLength(1);
    const rec = r.results.runs[0]!;
    expect(rec.outcome, lines.join('\n')).toBe('succeeded');
    expect(r.results.mode).toBe(c.mode);

    const t = await loadTimeline(out, rec.timelineFile);
    expect(t.run?.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(t.progress.length).toBeGreaterThan(0);
    const start = t.run!.startedAt!.getTime();
    const end = t.run!.finishedAt!.getTime();
    // Guest samples from before (the baseline) and after the migration are part of the run.
    expect(t.guest.some((g) => g.time!.getTime() < start && g.msPerGib > 0)).toBe(true);
    expect(t.guest.some((g) => g.time!.getTime() > end)).toBe(true);
    const f = runFigures(t);
    expect(f.integrityErrors).toBe(0);
    expect(Number.isFinite(f.downtimeMs)).toBe(true);
    expect(f.baselineMsPerGib).toBeGreaterThan(0);
    expect(f.hostCpuSeconds).toBeGreaterThan(0);

    const html = readFileSync(r.reportHtml, 'utf8');
    expect(html).toContain(rec.runId);
    expect(html).toContain('Chart.js v4');
    expect(html).toMatch(/1\/1 \(100 %\)/);
    if (chromiumBinary()) {
      expect(r.reportPng).toBe(join(out, 'report.png'));
      expect(existsSync(r.reportPng!)).toBe(true);
      expect(statSync(r.reportPng!).size).toBeGreaterThan(20_000);
    }
  }, 300_000);

  it('resuming a complete comparison runs nothing', async () => {
    const c = cluster!;
    const r = await runComparison({ comparison: resolveTarget('smoke')!, outDir: out, backend: c.backend, source: c.source, destination: c.destination, resume: true, png: false });
    expect(r.ran).toBe(0);
    expect(r.results.runs).toHaveLength(1);
  }, 60_000);

  it('runs a storage scenario: the LOCAL disk copied, the blackout measured from outside and recorded with the run', async () => {
    const c = cluster!;
    const tb = c.tb;
    const r = await runComparison({
      comparison: resolveTarget('storage-smoke')!,
      outDir: outStorage,
      backend: c.backend,
      source: c.source,
      destination: c.destination,
      shape: (host, link) => tb.shape(host, { ...(link.rateMbit !== undefined ? { rateMbit: link.rateMbit } : {}) }),
      storage: c.storage,
      png: false,
      log: (l) => lines.push(l),
    });
    expect(r.results.errors, lines.join('\n')).toEqual([]);
    const rec = r.results.runs[0]!;
    expect(rec.outcome, lines.join('\n')).toBe('succeeded');
    const t = await loadTimeline(outStorage, rec.timelineFile);
    const f = runFigures(t, { wireBytes: rec.wireBytes! });
    expect(f.disk).toBe(true);
    expect(f.integrityErrors).toBe(0);
    expect(f.checks).toBeGreaterThan(0);
    expect(f.checksPassed).toBe(f.checks);
    // The guest had written part of its 64 MiB disk: what it wrote crossed the link, the holes
    // did not (a copy of them would be 64 MiB).
    expect(f.diskAllocatedBytes).toBeGreaterThan(2 ** 20);
    expect(f.diskWireBytes).toBeGreaterThan(f.diskAllocatedBytes / 2);
    expect(f.diskWireBytes).toBeLessThan(40 * 2 ** 20);
    expect(f.storageMs).toBeGreaterThan(0);
    expect(f.runTimeMs).toBeGreaterThan(f.storageMs);
    // The blackout is a figure (printed in the report), not a timed assertion: it was measured.
    expect(t.run?.networkBlackout?.probesSent).toBeGreaterThan(30);
    expect(Number.isFinite(f.blackoutMs)).toBe(true);
    const md = readFileSync(r.summaryMarkdown, 'utf8');
    expect(md).toContain('## Runs with a disk');
    expect(md).toContain(rec.scenario);
  }, 240_000);
});
