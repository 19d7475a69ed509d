/**
 * The adaptive policy's default cost model (services/coordinator/domain/policy/cost.ts,
 * DEFAULT_COST_MODEL) fitted to a lab comparison's recorded runs, reproducibly: every run's
 * timeline (GetRunTimelineResponse JSON, as `runs/<id>.json` or inside `runs.tar.gz`) is replayed
 * through the production cost track (measured.ts replayCostTrack / trackedCostFigures, what the
 * coordinator stores at a run's end), and the figures are fitted as priorFromHistory fits a VM's
 * own runs. `node dist/scripts/fit-costs.js docs/lab/policies-720-criterion/runs.tar.gz` prints it;
 * test/unit/lab/cost-fit.test.ts checks the default against it. Pure but for the file reading.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { MigrationState, PolicyKind } from '../../services/shared/gen/migd/v1/common.js';
import { GetRunTimelineResponse } from '../../services/shared/gen/migd/v1/coordinator.js';
import { type RunCostFigures, replayCostTrack, trackedCostFigures } from '../../services/coordinator/domain/policy/measured.js';
import { median } from '../../services/coordinator/domain/policy/signals.js';
import { LAB_WORKLOADS } from './scenarios.js';

/** One recorded run's cost figures, as the coordinator would have stored them. */
export interface FittedRun {
  readonly id: string;
  readonly vmName: string;
  /** The lab workload, from the VM name (lab-pol-crit-<workload>-<strategy>-<rep>-<n>). */
  readonly workload: string;
  readonly policy: PolicyKind;
  readonly succeeded: boolean;
  readonly figures: RunCostFigures;
}

/** The lab's busy workloads whose guests dirty about as fast as the link sends or faster (r ≳ 1): h is "at r ≥ 1". */
export const BUSY_WORKLOADS: readonly string[] = ['hot-small', 'load-a', 'heavy'];

function workloadOf(vmName: string): string {
  return Object.keys(LAB_WORKLOADS).find((w) => vmName.includes(`-${w}-`)) ?? 'unknown';
}

/** The files of an ustar archive (regular files only). */
export function untar(buf: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let off = 0;
  while (off + 512 <= buf.length) {
    const header = buf.subarray(off, off + 512);
    if (header.every((b) => b === 0)) break;
    const field = (a: number, n: number): string => header.subarray(a, a + n).toString('utf8').replace(/\0.*$/s, '');
    const name = (field(345, 155) ? `${field(345, 155)}/` : '') + field(0, 100);
    const size = parseInt(field(124, 12).trim() || '0', 8);
    const type = field(156, 1);
    off += 512;
    if (type === '0' || type === '') out.set(name, buf.subarray(off, off + size));
    off += Math.ceil(size / 512) * 512;
  }
  return out;
}

/** The run timelines at `path`: a `runs.tar.gz`, or a folder of `<id>.json` (a lab's `runs/`). */
export function loadTimelines(path: string): GetRunTimelineResponse[] {
  const texts: string[] = [];
  if (statSync(path).isDirectory()) {
    for (const f of readdirSync(path).filter((n) => n.endsWith('.json')).sort()) texts.push(readFileSync(join(path, f), 'utf8'));
  } else {
    const files = untar(gunzipSync(readFileSync(path)));
    for (const [name, body] of [...files.entries()].sort((a, b) => a[0].localeCompare(b[0]))) if (name.endsWith('.json')) texts.push(body.toString('utf8'));
  }
  return texts.map((t) => GetRunTimelineResponse.fromJSON(JSON.parse(t)));
}

/** A timeline's cost figures (the production replay). */
export function fittedRun(t: GetRunTimelineResponse): FittedRun {
  const run = t.run;
  if (!run) throw new Error('a timeline without its run');
  const track = replayCostTrack(t.progress, t.guest, run.transitions, run.actions);
  return {
    id: run.id,
    vmName: run.vmName,
    workload: workloadOf(run.vmName),
    policy: run.policy?.kind ?? PolicyKind.POLICY_KIND_UNSPECIFIED,
    succeeded: run.state === MigrationState.MIGRATION_STATE_SUCCEEDED,
    figures: trackedCostFigures(track) ?? {},
  };
}

/** The fit and the figures behind it. */
export interface CostFit {
  /** h: median pre-copy harm rate of the busy workloads' runs (s/s), and its spread. */
  readonly precopyHarmRate: { readonly median: number; readonly min: number; readonly max: number; readonly runs: number };
  /** Per workload: median h (s/s) and runs. */
  readonly precopyByWorkload: Readonly<Record<string, { readonly median: number; readonly runs: number }>>;
  /** c (ms) and s (s/s): least squares of post-copy loss on the backlog at the switch. */
  readonly postcopy: { readonly fixedMs: number; readonly harmRate: number; readonly runs: number; readonly backlogMs: readonly [number, number]; readonly lostMs: readonly [number, number] };
  /** Guest ms lost from a raise to the end, and the backlog then (ms), per raised run. */
  readonly raises: readonly { readonly workload: string; readonly lostMs: number; readonly backlogMs: number }[];
}

function leastSquares(points: readonly (readonly [number, number])[]): { intercept: number; slope: number } {
  const n = points.length;
  const mx = points.reduce((a, p) => a + p[0], 0) / n;
  const my = points.reduce((a, p) => a + p[1], 0) / n;
  const sxx = points.reduce((a, p) => a + (p[0] - mx) ** 2, 0);
  if (!(n >= 2 && sxx > 0)) throw new Error(`post-copy fit: ${n} runs without a spread of backlogs`);
  const slope = points.reduce((a, p) => a + (p[0] - mx) * (p[1] - my), 0) / sxx;
  return { intercept: my - slope * mx, slope };
}

/**
 * Fits the model to succeeded runs: h the median of the busy workloads' pre-copy harm rates
 * (every policy: the guest does not know which policy runs its pre-copy; runs under a throttle
 * left out, auto-converge slows the guest on purpose), c and s by least squares over every run
 * that went into post-copy with a known backlog at the switch.
 */
export function fitCostModel(runs: readonly FittedRun[]): CostFit {
  const ok = runs.filter((r) => r.succeeded);
  const unthrottled = (r: FittedRun): boolean => !r.vmName.includes('-seed-ac-');
  const hs = (w: (r: FittedRun) => boolean): number[] => ok.filter((r) => unthrottled(r) && w(r) && r.figures.precopyHarmRate !== undefined).map((r) => r.figures.precopyHarmRate!);
  const busy = hs((r) => BUSY_WORKLOADS.includes(r.workload));
  if (busy.length === 0) throw new Error('no busy run with a measured pre-copy harm rate');
  const byWorkload: Record<string, { median: number; runs: number }> = {};
  for (const w of Object.keys(LAB_WORKLOADS)) {
    const x = hs((r) => r.workload === w);
    if (x.length > 0) byWorkload[w] = { median: median(x), runs: x.length };
  }
  const pc = ok.filter((r) => r.figures.postcopyLostMs !== undefined && r.figures.postcopyBacklogMs !== undefined).map((r) => [r.figures.postcopyBacklogMs!, r.figures.postcopyLostMs!] as const);
  const fit = leastSquares(pc);
  const raises = ok.filter((r) => r.figures.raiseLostMs !== undefined).map((r) => ({ workload: r.workload, lostMs: r.figures.raiseLostMs!, backlogMs: r.figures.raiseBacklogMs ?? NaN }));
  return {
    precopyHarmRate: { median: median(busy), min: Math.min(...busy), max: Math.max(...busy), runs: busy.length },
    precopyByWorkload: byWorkload,
    postcopy: {
      fixedMs: fit.intercept,
      harmRate: fit.slope,
      runs: pc.length,
      backlogMs: [Math.min(...pc.map((p) => p[0])), Math.max(...pc.map((p) => p[0]))],
      lostMs: [Math.min(...pc.map((p) => p[1])), Math.max(...pc.map((p) => p[1]))],
    },
    raises,
  };
}
