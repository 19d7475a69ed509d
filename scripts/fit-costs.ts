/**
 * Fits the adaptive policy's default cost model to a lab comparison's recorded runs (see
 * stress/lab/cost-fit.ts) and prints the figures behind it, per run and fitted:
 *
 *   node dist/scripts/fit-costs.js docs/lab/policies-720-criterion/runs.tar.gz
 *   node dist/scripts/fit-costs.js test-output/lab/<comparison>/runs
 */
import { PolicyKind } from '../services/shared/gen/migd/v1/common.js';
import { fitCostModel, fittedRun, loadTimelines } from '../stress/lab/cost-fit.js';

const path = process.argv[2];
if (!path || process.argv.length > 3 || path.startsWith('-')) {
  console.error('usage: node dist/scripts/fit-costs.js <runs.tar.gz | runs folder>');
  process.exit(2);
}
const runs = loadTimelines(path).map(fittedRun);
const f = (x: number | undefined, d = 0): string => (x === undefined ? '—' : x.toFixed(d));
console.log('workload      policy    ok  h (s/s)  pre-copy ms  post-copy backlog/lost ms  raise backlog/lost ms  vm');
for (const r of [...runs].sort((a, b) => a.workload.localeCompare(b.workload) || a.vmName.localeCompare(b.vmName))) {
  const g = r.figures;
  console.log(
    `${r.workload.padEnd(13)} ${PolicyKind[r.policy].replace('POLICY_KIND_', '').toLowerCase().padEnd(9)} ${r.succeeded ? 'y' : 'n'}   ${f(g.precopyHarmRate, 3).padStart(7)}  ${f(g.precopyMs).padStart(11)}  ${`${f(g.postcopyBacklogMs)}/${f(g.postcopyLostMs)}`.padStart(25)}  ${`${f(g.raiseBacklogMs)}/${f(g.raiseLostMs)}`.padStart(21)}  ${r.vmName}`,
  );
}
const fit = fitCostModel(runs);
console.log(`\nh (busy: hot-small, load A, heavy; no throttle): median ${fit.precopyHarmRate.median.toFixed(3)} (${fit.precopyHarmRate.min.toFixed(3)}–${fit.precopyHarmRate.max.toFixed(3)}, ${fit.precopyHarmRate.runs} runs)`);
for (const [w, x] of Object.entries(fit.precopyByWorkload)) console.log(`  ${w}: median ${x.median.toFixed(3)} over ${x.runs} runs`);
const p = fit.postcopy;
console.log(`post-copy: c ${p.fixedMs.toFixed(0)} ms, s ${p.harmRate.toFixed(3)} (least squares over ${p.runs} runs; backlogs ${p.backlogMs[0].toFixed(0)}–${p.backlogMs[1].toFixed(0)} ms, lost ${p.lostMs[0].toFixed(0)}–${p.lostMs[1].toFixed(0)} ms)`);
for (const r of fit.raises) console.log(`raise (${r.workload}): backlog ${r.backlogMs.toFixed(0)} ms, lost from the raise to the end ${r.lostMs.toFixed(0)} ms`);
