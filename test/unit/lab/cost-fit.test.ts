/**
 * The default cost model (cost.ts DEFAULT_COST_MODEL) is the fit of issue 14's criterion runs
 * (docs/lab/policies-720-criterion/runs.tar.gz, 84 recorded timelines), replayed through the
 * production cost track: a change to the model, to the replay or to the recorded runs shows here.
 */
import { describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import { DEFAULT_COST_MODEL } from '../../../services/coordinator/domain/policy/index.js';
import { fitCostModel, fittedRun, loadTimelines, untar } from '../../../stress/lab/cost-fit.js';

const RUNS = fileURLToPath(new URL('../../../docs/lab/policies-720-criterion/runs.tar.gz', import.meta.url));

describe('the default cost model is the fit of the recorded criterion runs', () => {
  const runs = loadTimelines(RUNS).map(fittedRun);
  const fit = fitCostModel(runs);

  it('reads all 84 runs (7 workloads × 4 strategies × 3)', () => {
    expect(runs).toHaveLength(84);
    expect(new Set(runs.map((r) => r.workload)).size).toBe(7);
    expect(runs.filter((r) => r.succeeded)).toHaveLength(69); // multifd zstd timed out on hot-small, load A, heavy; auto-converge on load A, heavy
  });

  it('post-copy: c and s by least squares over the 22 post-copy runs', () => {
    expect(fit.postcopy.runs).toBe(22);
    expect(fit.postcopy.fixedMs).toBeCloseTo(DEFAULT_COST_MODEL.postcopyFixedMs, 0);
    expect(fit.postcopy.harmRate).toBeCloseTo(DEFAULT_COST_MODEL.postcopyHarmRate, 3);
    expect(fit.postcopy.backlogMs[0]).toBeGreaterThan(500);
    expect(fit.postcopy.backlogMs[1]).toBeLessThan(5000);
  });

  it('h: the median of the busy workloads\' unthrottled pre-copy (18 runs)', () => {
    expect(fit.precopyHarmRate.runs).toBe(18);
    expect(fit.precopyHarmRate.median).toBeCloseTo(DEFAULT_COST_MODEL.precopyHarmRate, 3);
    // The rate-limited writers lose more per second of pre-copy than r says (see cost.ts).
    expect(fit.precopyByWorkload['moderate']!.median).toBeGreaterThan(0.3);
  });

  it('the raises of the adaptive runs: what a raise cost from the decision to the end', () => {
    expect(fit.raises.map((r) => r.workload).sort()).toEqual(['hot-small', 'hot-small', 'hot-small', 'moderate', 'moderate']);
    for (const r of fit.raises.filter((x) => x.workload === 'hot-small')) expect(r.lostMs).toBeGreaterThan(550);
  });

  it('untar reads a ustar archive and stops at its end', () => {
    const header = Buffer.alloc(512);
    header.write('a.json', 0);
    header.write('0000000002\0', 124);
    header.write('0', 156);
    const body = Buffer.alloc(512);
    body.write('{}');
    const files = untar(Buffer.concat([header, body, Buffer.alloc(1024)]));
    expect([...files.keys()]).toEqual(['a.json']);
    expect(files.get('a.json')!.toString()).toBe('{}');
  });
});
