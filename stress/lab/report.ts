/**
 * The lab report: one self-contained HTML file per comparison (Chart.js and the data inlined, so it
 * opens anywhere without a network), with guestperf-like plots of every run over time and a
 * summary table per strategy; plus a PNG of it rendered by headless Chromium.
 *
 * Input is plain data — run timelines (proto GetRunTimelineResponse, as GetRunTimeline returns
 * them) and the scenarios' metadata — so the report is built and checked in unit tests from
 * synthetic timelines, and can be rebuilt from a results folder without a cluster.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { MigrationState } from '../../services/shared/gen/migd/v1/common.js';
import type { GetRunTimelineResponse } from '../../services/shared/gen/migd/v1/coordinator.js';
import { policyName } from '../../services/coordinator/domain/policy/index.js';
import { type LabOutcome, type RunDecision, type RunFigures, type RunSeries, type StrategySummary, type PolicyCriterion, paretoFront, policyCriterion, runDecisions, runFigures, runSeries, summarize } from './metrics.js';
import type { Scenario } from './scenarios.js';

/** One recorded run as the report takes it. */
export interface ReportRun {
  readonly scenario: string;
  readonly repetition: number;
  readonly outcome: LabOutcome;
  readonly timeline: GetRunTimelineResponse;
  /** E.g. "cancelled by the lab after 240 s". */
  readonly note?: string;
  /** Bytes the source sent on its migration link during the run, when the lab counted them. */
  readonly wireBytes?: number;
}

export interface ReportInput {
  readonly comparison: { readonly name: string; readonly title: string; readonly description: string };
  /** Metadata of the scenarios the runs belong to (runs of unknown scenarios are grouped under "other"). */
  readonly scenarios: readonly Scenario[];
  readonly runs: readonly ReportRun[];
  /** Default now. */
  readonly generatedAt?: Date;
  /** Shown in the header (e.g. mode, QEMU version, host). */
  readonly environment?: Readonly<Record<string, string>>;
}

/** What the page's script gets, JSON-safe (NaN → null). */
export interface ReportData {
  readonly comparison: ReportInput['comparison'];
  readonly generatedAt: string;
  readonly environment: Readonly<Record<string, string>>;
  readonly summaries: StrategySummary[];
  readonly groups: string[];
  readonly runs: {
    readonly scenario: string;
    readonly title: string;
    readonly group: string;
    readonly label: string;
    readonly repetition: number;
    readonly outcome: LabOutcome;
    readonly note: string;
    readonly policy: string;
    readonly figures: RunFigures;
    readonly series: RunSeries;
    /** The scenario migrates one VM back and forth (Scenario.sameVm). */
    readonly sameVm: boolean;
    /** The run's VM (a sameVm scenario's VM, or the one it continues, keeps its name: its history). */
    readonly vmName: string;
    /** Source → destination node of the run. */
    readonly from: string;
    readonly to: string;
    /** The policy's actions, with the pass each was taken in. */
    readonly decisions: RunDecision[];
  }[];
}

/** Builds the report's data: per-run figures and series, per-strategy summaries. */
export function buildReportData(input: ReportInput): ReportData {
  const meta = new Map(input.scenarios.map((s) => [s.name, s]));
  const order = new Map(input.scenarios.map((s, i) => [s.name, i]));
  const runs = [...input.runs]
    .sort((a, b) => (order.get(a.scenario) ?? 1e9) - (order.get(b.scenario) ?? 1e9) || a.repetition - b.repetition)
    .map((r) => {
      const s = meta.get(r.scenario);
      // The baseline is every guest sample in the minute before the migration (the store's guest
      // window): outside runs the coordinator keeps one sample per heartbeat, so the lab's own
      // baseline phase alone may hold only one or two.
      const figures = runFigures(r.timeline, r.wireBytes !== undefined ? { wireBytes: r.wireBytes } : {});
      const kind = r.timeline.run?.policy?.kind ?? s?.policy.kind ?? 0;
      return {
        scenario: r.scenario,
        title: s?.title ?? r.scenario,
        group: s?.group ?? 'other',
        label: s?.label ?? r.scenario,
        repetition: r.repetition,
        outcome: r.outcome,
        note: r.note ?? '',
        policy: policyName(kind),
        figures,
        series: runSeries(r.timeline),
        sameVm: s?.sameVm === true,
        vmName: r.timeline.run?.vmName ?? '',
        from: r.timeline.run?.sourceNodeId ?? '',
        to: r.timeline.run?.destinationNodeId ?? '',
        decisions: runDecisions(r.timeline),
      };
    });
  const summaries = summarize(runs.map((r) => ({ group: r.group, label: r.label, figures: r.figures })));
  const groups = [...new Set(runs.map((r) => r.group))];
  return {
    comparison: input.comparison,
    generatedAt: (input.generatedAt ?? new Date()).toISOString(),
    environment: input.environment ?? {},
    summaries,
    groups,
    runs,
  };
}

/** Path of Chart.js's UMD bundle (the package's exports do not list it, so resolve via its main file). */
export function chartJsPath(): string {
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve('chart.js')), 'chart.umd.min.js');
}

/** JSON for a <script> block: NaN/Infinity → null, and nothing that could close the element. */
export function scriptJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v))
    .replace(/</g, '\\u003c')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

/** "12.3 s", "850 ms", "—". */
export function fmtMs(v: number): string {
  if (!Number.isFinite(v)) return '—';
  return v >= 10_000 ? `${(v / 1000).toFixed(1)} s` : v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`;
}
/** Fixed decimals, "—" for NaN; k/M suffixes from 10 000 up (harm figures run into millions). */
/** "3.1–4.0" from a min and max (seconds), "—" when unknown. */
export function fmtSpread(min: number, max: number, digits = 1): string {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return '—';
  return `${min.toFixed(digits)}–${max.toFixed(digits)}`;
}

export function fmtNum(v: number, digits = 1): string {
  if (!Number.isFinite(v)) return '—';
  if (Math.abs(v) >= 1e6) return `${(v / 1e6).toFixed(2)} M`;
  if (Math.abs(v) >= 1e4) return `${(v / 1e3).toFixed(1)} k`;
  return v.toFixed(digits);
}

const mib = (v: number): string => fmtNum(v / 2 ** 20, 1);

/** The storage figures of a strategy: disk copied, storage phase, whole run, blackout, disk checks. */
function storageCells(s: StrategySummary): string[] {
  return [
    `${mib(s.diskAllocatedBytesP50)} / ${mib(s.diskWireBytesP50)} / ${mib(s.diskBytesP50)}`,
    `${fmtMs(s.storageMsP50)}${s.storageDone < s.runs ? ` (${s.storageDone}/${s.runs} ended)` : ''}`,
    `${fmtMs(s.runTimeMsP50)} (${fmtSpread(s.runTimeMsMin / 1000, s.runTimeMsMax / 1000)})`,
    `${fmtMs(s.blackoutMsP50)} / ${fmtMs(s.blackoutMsMax)}`,
    fmtNum(s.probesLostP50, 0),
    s.checks === 0 ? '—' : `${s.checks - s.checksFailed}/${s.checks}`,
  ];
}
const STORAGE_HEADS = ['disk MiB allocated / on the wire / mirrored p50', 'storage phase p50', 'run time p50 (min–max, s)', 'blackout p50 / max', 'probes lost p50', 'destination checks passed'];

function storageSummaryTable(summaries: readonly StrategySummary[], group: string): string {
  const rows = summaries
    .filter((s) => s.group === group)
    .map((s) => `<tr><td class="l">${esc(s.label)}</td><td>${s.succeeded}/${s.runs}</td>${storageCells(s).map((c) => `<td>${esc(c)}</td>`).join('')}<td>${fmtMs(s.totalTimeMsP50)}</td><td>${fmtMs(s.downtimeMsP50)}</td><td class="${s.integrityErrors > 0 ? 'bad' : ''}">${s.integrityErrors}</td></tr>`)
    .join('\n');
  return `<table class="summary">
<thead><tr><th class="l">strategy</th><th>completed</th>${STORAGE_HEADS.map((h) => `<th>${esc(h)}</th>`).join('')}<th>QEMU memory migration p50</th><th>downtime p50</th><th>integrity errors<br><small>guest: memory + disk</small></th></tr></thead>
<tbody>
${rows}
</tbody></table>`;
}

/** The group's runs include a network blackout measured from outside (VMs with a NIC). */
function hasBlackout(summaries: readonly StrategySummary[], group: string): boolean {
  return summaries.some((s) => s.group === group && Number.isFinite(s.blackoutMsP50));
}

function summaryTable(summaries: readonly StrategySummary[], group: string): string {
  if (summaries.some((s) => s.group === group && s.disk)) return storageSummaryTable(summaries, group);
  const front = paretoFront(summaries.filter((x) => x.group === group));
  const blackout = hasBlackout(summaries, group);
  const rows = summaries
    .filter((s) => s.group === group)
    .map(
      (s) => `<tr>
  <td class="l">${esc(s.label)}</td><td>${s.runs}</td><td>${s.succeeded}/${s.runs} (${Math.round(s.completionRate * 100)} %)</td>
  <td>${fmtMs(s.totalTimeMsP50)}</td><td>${fmtMs(s.startDelayMsP50)}</td><td>${fmtMs(s.downtimeMsP50)}</td><td>${fmtMs(s.downtimeMsP99)}</td>
  <td>${fmtSpread(s.totalTimeMsMin / 1000, s.totalTimeMsMax / 1000)}</td>
  <td>${fmtNum(s.baselineMsPerGib, 0)} → ${fmtNum(s.duringMsPerGib, 0)}</td><td>${fmtNum(s.extraMsPerGibSecP50, 0)}</td><td>${fmtNum(s.guestSecondsLostP50, 2)}<br><small>${fmtSpread(s.guestSecondsLostMin, s.guestSecondsLostMax)}</small></td>
  <td>${fmtNum(s.guestStoppedSecP50, 2)} / ${fmtNum(s.longestPauseMsP50 / 1000, 2)}</td><td>${fmtNum(s.postcopyBlocktimeMsP50, 0)}</td>
  <td>${fmtNum(s.hostCpuSecondsMean, 1)}</td><td class="${s.integrityErrors > 0 ? 'bad' : ''}">${s.integrityErrors}</td>${blackout ? `<td>${fmtMs(s.blackoutMsP50)} / ${fmtMs(s.blackoutMsMax)}</td>` : ''}<td class="l">${esc(front.get(s.label) ?? '')}</td>
</tr>`,
    )
    .join('\n');
  return `<table class="summary">
<thead><tr><th class="l">strategy</th><th>runs</th><th>completed</th><th>total time p50</th><th>start delay p50<br><small>dispatch → streaming</small></th><th>downtime p50</th><th>downtime p99</th>
<th>total min–max<br><small>s</small></th>
<th>guest ms/GiB before → during</th><th>harm p50<br><small>extra ms/GiB·s</small></th><th>guest time lost p50<br><small>s (min–max)</small></th><th>paused p50 / longest<br><small>s</small></th><th>post-copy blocktime p50<br><small>ms</small></th><th>host CPU<br><small>s, mean</small></th><th>integrity errors</th>${blackout ? '<th>network blackout p50 / max</th>' : ''}<th class="l">Pareto<br><small>total time × guest time lost, 10 % slack</small></th></tr></thead>
<tbody>
${rows}
</tbody></table>`;
}

/** The per-repetition table of sameVm scenarios; '' when there are none. */
function seriesHtml(data: ReportData): string {
  const rows = seriesRows(data);
  if (rows.length === 0) return '';
  const tables = [...new Set(rows.map((r) => r.label))].map(
    (label) => `<h3>${esc(label)}</h3>
<table class="summary"><thead><tr>${SERIES_HEADS.map((h) => `<th class="l">${esc(h)}</th>`).join('')}</tr></thead>
<tbody>
${rows
  .filter((r) => r.label === label)
  .map((r) => `<tr>${r.cells.map((c) => `<td class="l">${esc(c)}</td>`).join('')}</tr>`)
  .join('\n')}
</tbody></table>`,
  );
  return `<h2>One VM migrated back and forth</h2>
<p class="desc">Per repetition of a scenario that migrates the same VM again: from the second run on its earlier succeeded runs are in the history store (the adaptive policy's prior). Decision = the policy's actions with QEMU's pass at the time; "nothing" = no action. History cited = what the decision's reason says it took from the VM's earlier runs.</p>
${tables.join('\n')}
`;
}

function runFacts(r: ReportData['runs'][number]): string {
  const f = r.figures;
  const state = (MigrationState[f.state] ?? '').replace('MIGRATION_STATE_', '').toLowerCase();
  const parts = [
    `<b class="${r.outcome === 'succeeded' ? 'ok' : 'bad'}">${esc(r.outcome)}</b>${state && state !== r.outcome ? ` (${esc(state)})` : ''}`,
    `total ${fmtMs(f.totalTimeMs)}`,
    `start delay ${fmtMs(f.startDelayMs)}`,
    `downtime ${fmtMs(f.downtimeMs)}`,
    `${f.passes} passes`,
    f.postcopy ? 'post-copy' : '',
    f.maxThrottlePct > 0 ? `throttle ≤ ${f.maxThrottlePct} %` : '',
    `${fmtNum(f.transferredBytes / 2 ** 20, 0)} MiB sent`,
    f.disk ? `disk ${mib(f.diskAllocatedBytes)} MiB allocated, ${mib(f.diskWireBytes)} MiB on the wire, ${mib(f.diskBytes)} MiB mirrored; storage phase ${fmtMs(f.storageMs)}, run ${fmtMs(f.runTimeMs)}` : '',
    Number.isFinite(f.blackoutMs) ? `network blackout ${fmtMs(f.blackoutMs)} (${f.probesLost}/${f.probesSent} probes lost)` : '',
    f.checks > 0 ? `destination checks ${f.checksPassed}/${f.checks} passed` : '',
    `harm ${fmtNum(f.extraMsPerGibSec, 0)} ms/GiB·s (${fmtNum(f.guestSecondsLost, 2)} s lost: ${fmtNum(f.guestStoppedSec, 2)} s paused, longest ${fmtMs(f.longestPauseMs)})`,
    f.postcopy ? `post-copy blocktime ${fmtMs(f.postcopyBlocktimeMs)}` : '',
    `host CPU ${fmtNum(f.hostCpuSeconds, 1)} s`,
    `<span class="${f.integrityErrors > 0 ? 'bad' : ''}">${f.integrityErrors} integrity errors</span>`,
    `policy ${esc(r.policy)}${r.decisions.length > 0 ? `: ${esc(decisionText(r.decisions))}` : ''}`,
    r.note ? esc(r.note) : '',
    f.error ? `<span class="bad">${esc(f.error)}</span>` : '',
  ];
  return parts.filter((p) => p !== '').join(' · ');
}

const CSS = `
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:16px 24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:14px;margin:14px 0 4px} .desc{color:#555;max-width:1100px} .env{color:#777;font-size:12px}
table.summary{border-collapse:collapse;margin:6px 0 10px} table.summary th,table.summary td{border:1px solid #ddd;padding:3px 7px;text-align:right}
table.summary th{background:#f4f6f8;font-weight:600} .l{text-align:left!important} .bad{color:#b00020} .ok{color:#1b7f3a}
.facts{font-size:12px;color:#333;margin:2px 0 4px} .row{display:grid;grid-template-columns:repeat(3,1fr);gap:10px;margin-bottom:8px}
.cell{position:relative;height:220px;border:1px solid #eee;border-radius:4px;padding:4px} .sumchart{position:relative;height:230px;max-width:1100px}
.run{margin:4px 0 14px} .pair{display:grid;grid-template-columns:1fr 1fr;gap:10px;max-width:1400px;margin-bottom:8px}
.cell2{position:relative;height:300px;border:1px solid #eee;border-radius:4px;padding:4px}
`;

/** The page script: draws every chart from the inlined data (no network, no animation). */
const PAGE_SCRIPT = `
(function(){
const D = JSON.parse(document.getElementById('lab-data').textContent);
Chart.defaults.animation = false;
Chart.defaults.font.size = 11;
Chart.defaults.maintainAspectRatio = false;
const COLORS = ['#1f77b4','#ff7f0e','#2ca02c','#d62728','#9467bd','#8c564b','#e377c2','#7f7f7f','#bcbd22','#17becf'];
const markers = {
  id: 'labMarkers',
  afterDatasetsDraw(chart, _args, opts) {
    const list = opts && opts.list; if (!list || !list.length) return;
    const {ctx, chartArea, scales} = chart; const xs = scales.x;
    ctx.save(); ctx.font = '10px sans-serif';
    for (const m of list) {
      const px = xs.getPixelForValue(m.x); if (px < chartArea.left || px > chartArea.right) continue;
      ctx.strokeStyle = m.kind === 'action' ? 'rgba(200,0,0,.55)' : 'rgba(0,0,0,.45)';
      ctx.setLineDash(m.kind === 'action' ? [4,3] : [2,2]);
      ctx.beginPath(); ctx.moveTo(px, chartArea.top); ctx.lineTo(px, chartArea.bottom); ctx.stroke();
      ctx.translate(px + 3, chartArea.top + 2); ctx.rotate(Math.PI / 2);
      ctx.fillStyle = ctx.strokeStyle; ctx.fillText(m.label, 0, 0); ctx.rotate(-Math.PI / 2); ctx.translate(-(px + 3), -(chartArea.top + 2));
    }
    ctx.restore();
  }
};
Chart.register(markers);
const ds = (label, data, color, axis, extra) => Object.assign({label, data, borderColor: color, backgroundColor: color, yAxisID: axis || 'y', pointRadius: 0, borderWidth: 1.4, parsing: false, normalized: true}, extra || {});
const lin = (title, extra) => Object.assign({type: 'linear', title: {display: !!title, text: title}}, extra || {});
function chart(el, title, datasets, scales, list) {
  return new Chart(el, {type: 'line', data: {datasets}, options: {
    plugins: {title: {display: true, text: title}, legend: {labels: {boxWidth: 10}}, labMarkers: {list}},
    scales: Object.assign({x: lin('s since migration start')}, scales), interaction: {mode: 'nearest', intersect: false}}});
}
for (const [i, r] of D.runs.entries()) {
  const s = r.series;
  const get = (id) => document.getElementById(id + '-' + i);
  chart(get('mig'), 'migration', [
    ds('remaining MiB', s.remainingMiB, COLORS[0]),
    ds('dirty MiB/s', s.dirtyMiBps, COLORS[3], 'y1'),
    ds('throughput MiB/s', s.throughputMiBps, COLORS[2], 'y1'),
  ], {y: lin('remaining MiB', {min: 0}), y1: lin('MiB/s', {position: 'right', min: 0, grid: {drawOnChartArea: false}})}, s.markers);
  const guest = Object.keys(s.guestMsPerGib).sort((a, b) => Number(a) - Number(b)).map((w, k) =>
    ds(w === '-1' ? 'combined ms/GiB' : 'worker ' + w + ' ms/GiB', s.guestMsPerGib[w], w === '-1' ? '#111' : COLORS[(k + 4) % COLORS.length], 'y', w === '-1' ? {borderWidth: 2} : {}));
  if (r.figures.baselineMsPerGib !== null && s.guestMsPerGib['-1']) {
    const pts = s.guestMsPerGib['-1']; const b = r.figures.baselineMsPerGib;
    guest.push(ds('baseline', [{x: pts[0].x, y: b}, {x: pts[pts.length - 1].x, y: b}], '#999', 'y', {borderDash: [6, 4], borderWidth: 1}));
  }
  guest.push(ds('throttle %', s.throttlePct, COLORS[1], 'y1', {stepped: true}));
  chart(get('guest'), 'guest: time to write 1 GiB', guest,
    {y: lin('ms/GiB', {type: 'logarithmic'}), y1: lin('throttle %', {position: 'right', min: 0, max: 100, grid: {drawOnChartArea: false}})}, s.markers);
  chart(get('cpu'), 'QEMU host CPU', [
    ds('source', s.cpuSource, COLORS[0]), ds('destination', s.cpuDestination, COLORS[1]), ds('both', s.cpuTotal, '#111', 'y', {borderDash: [3, 2]}),
  ], {y: lin('CPU s per s', {min: 0})}, s.markers);
}
for (const [g, name] of D.groups.entries()) {
  const el = document.getElementById('sum-' + g); if (!el) continue;
  const rows = D.summaries.filter((s) => s.group === name);
  new Chart(el, {type: 'bar', data: {labels: rows.map((s) => s.label), datasets: [
    {label: 'total time p50 (s)', data: rows.map((s) => s.totalTimeMsP50 === null ? null : s.totalTimeMsP50 / 1000), backgroundColor: COLORS[0], yAxisID: 'y'},
    {label: 'downtime p50 (ms)', data: rows.map((s) => s.downtimeMsP50), backgroundColor: COLORS[1], yAxisID: 'y1'},
    {label: 'guest time lost p50 (s)', data: rows.map((s) => s.guestSecondsLostP50), backgroundColor: COLORS[3], yAxisID: 'y'},
    {label: 'completion %', data: rows.map((s) => s.completionRate * 100), backgroundColor: COLORS[2], yAxisID: 'y2'},
  ]}, options: {plugins: {title: {display: true, text: name}}, scales: {
    y: {title: {display: true, text: 's'}, min: 0, grace: '8%'}, y1: {position: 'right', title: {display: true, text: 'ms'}, min: 0, grace: '8%', grid: {drawOnChartArea: false}},
    y2: {position: 'right', min: 0, max: 105, title: {display: true, text: '%'}, grid: {drawOnChartArea: false}}}}});
}
for (const [g, name] of D.groups.entries()) {
  const el = document.getElementById('pareto-' + g); if (!el) continue;
  const labels = [...new Set(D.runs.filter((r) => r.group === name).map((r) => r.label))];
  new Chart(el, {type: 'scatter', data: {datasets: labels.map((l, k) => ({label: l, backgroundColor: COLORS[k % COLORS.length], borderColor: COLORS[k % COLORS.length], pointRadius: 5,
    data: D.runs.filter((r) => r.group === name && r.label === l && r.outcome === 'succeeded' && r.figures.guestSecondsLost !== null).map((r) => ({x: r.figures.totalTimeMs / 1000, y: r.figures.guestSecondsLost}))}))},
    options: {plugins: {title: {display: true, text: name + ': Pareto, one point per completed run (lower left is better)'}, legend: {labels: {boxWidth: 10}}}, scales: {x: {title: {display: true, text: 'total time (s)'}, min: 0}, y: {title: {display: true, text: 'guest time lost (s)'}, min: 0}}}});
}
for (const [g, name] of D.groups.entries()) {
  const el = document.getElementById('down-' + g); if (!el) continue;
  const runs = D.runs.filter((r) => r.group === name && r.outcome === 'succeeded' && r.figures.totalTimeMs !== null);
  const labels = [...new Set(D.runs.filter((r) => r.group === name).map((r) => r.label))];
  const sets = [];
  labels.forEach((l, k) => {
    const mine = runs.filter((r) => r.label === l);
    sets.push({label: l + ': downtime', backgroundColor: COLORS[k % COLORS.length], borderColor: COLORS[k % COLORS.length], pointRadius: 5, pointStyle: 'circle',
      data: mine.filter((r) => r.figures.downtimeMs !== null).map((r) => ({x: r.figures.totalTimeMs / 1000, y: r.figures.downtimeMs}))});
    const bl = mine.filter((r) => r.figures.blackoutMs !== null);
    if (bl.length) sets.push({label: l + ': network blackout', backgroundColor: 'rgba(0,0,0,0)', borderColor: COLORS[k % COLORS.length], borderWidth: 2, pointRadius: 6, pointStyle: 'triangle',
      data: bl.map((r) => ({x: r.figures.totalTimeMs / 1000, y: r.figures.blackoutMs}))});
  });
  const withBlackout = sets.some((s) => s.pointStyle === 'triangle');
  new Chart(el, {type: 'scatter', data: {datasets: sets},
    options: {plugins: {title: {display: true, text: name + ': downtime' + (withBlackout ? ' (●) and network blackout (▲)' : '') + ' per completed run'}, legend: {labels: {boxWidth: 10, usePointStyle: true}}},
      scales: {x: {title: {display: true, text: 'total time (s)'}, min: 0}, y: {title: {display: true, text: 'ms'}, min: 0}}}});
}
document.body.setAttribute('data-charts', String(Object.keys(Chart.instances).length));
})();
`;

/**
 * The report as one HTML document. `chartJs` is the Chart.js UMD source to inline (default: read
 * from node_modules by {@link writeReport}; the unit tests pass a stub).
 */
export function renderReportHtml(data: ReportData, chartJs: string): string {
  const env = Object.entries(data.environment)
    .map(([k, v]) => `${esc(k)}: ${esc(v)}`)
    .join(' · ');
  const groups = data.groups
    .map(
      (g, i) => `<h3>${esc(g)}</h3>
${summaryTable(data.summaries, g)}
<div class="sumchart"><canvas id="sum-${i}"></canvas></div>
<div class="pair"><div class="cell2"><canvas id="pareto-${i}"></canvas></div><div class="cell2"><canvas id="down-${i}"></canvas></div></div>`,
    )
    .join('\n');
  let lastScenario = '';
  const runs = data.runs
    .map((r, i) => {
      const head = r.scenario !== lastScenario ? `<h3 id="sc-${esc(r.scenario)}">${esc(r.title)} <small>(${esc(r.scenario)} · ${esc(r.group)} · ${esc(r.label)})</small></h3>` : '';
      lastScenario = r.scenario;
      return `${head}<div class="run" data-run="${esc(r.figures.runId)}">
<div class="facts">rep ${r.repetition + 1} · run ${esc(r.figures.runId)} · ${runFacts(r)}</div>
<div class="row"><div class="cell"><canvas id="mig-${i}"></canvas></div><div class="cell"><canvas id="guest-${i}"></canvas></div><div class="cell"><canvas id="cpu-${i}"></canvas></div></div>
</div>`;
    })
    .join('\n');
  const safeChartJs = chartJs.replace(/<\/script/gi, '<\\/script');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>migd lab: ${esc(data.comparison.title)}</title>
<style>${CSS}</style>
<script>${safeChartJs}</script>
</head><body>
<h1>migd lab: ${esc(data.comparison.title)}</h1>
<p class="desc">${esc(data.comparison.description)}</p>
<p class="env">comparison ${esc(data.comparison.name)} · ${data.runs.length} runs · generated ${esc(data.generatedAt)}${env ? ' · ' + env : ''}</p>
${criterionHtml(data)}<h2>Summary per strategy</h2>
<p class="desc">Times and downtimes of completed runs; total time = QEMU's own, from its <code>migrate</code>; start delay = the run's dispatch to its first streaming state (set-up before <code>migrate</code>, which total time does not count), over every run that streamed; harm = guest ms/GiB above the baseline (median of the samples before the migration) integrated over the migration; guest time lost = every interval the guest's own clock stood still (switch-over, forced pauses, a paused destination) in full, plus the work not done while it ran slowed or stalled (throttling, post-copy faults), from the guest's clock and pace; host CPU = source + destination QEMU during the migration. Spreads are min–max over the repetitions.</p>
${groups}
${seriesHtml(data)}<h2>Runs</h2>
${runs}
<script type="application/json" id="lab-data">${scriptJson(data)}</script>
<script>${PAGE_SCRIPT}</script>
</body></html>
`;
}

/** "post-copy @ pass 2 (2.9 s)", "downtime 700 ms @ pass 3 (…) → post-copy @ pass 5 (…)", or "nothing". */
export function decisionText(d: readonly RunDecision[]): string {
  return d.length === 0 ? 'nothing' : d.map((x) => `${x.step} @ pass ${x.pass} (${(x.elapsedMs / 1000).toFixed(1)} s)`).join(' → ');
}

/** What history the run's decisions cite: "prior 3 runs, W from 2 runs", or "—". */
function historyText(d: readonly RunDecision[]): string {
  const prior = Math.max(0, ...d.map((x) => x.priorRuns));
  const ws = Math.max(0, ...d.map((x) => x.workingSetRuns));
  const parts = [prior > 0 ? `prior ${prior} run${prior === 1 ? '' : 's'}` : '', ws > 0 ? `W from ${ws} run${ws === 1 ? '' : 's'}` : ''].filter((x) => x !== '');
  return parts.length > 0 ? parts.join(', ') : '—';
}

/** The runs of sameVm scenarios, in order, as table rows (repetition, direction, earlier runs, decision, figures). */
export function seriesRows(data: ReportData): { scenario: string; label: string; group: string; cells: string[] }[] {
  // data.runs is in the comparison's order (scenario, then repetition): a sameVm scenario's VM's runs in the order they ran.
  const order = new Map(data.runs.map((r, i) => [r, i]));
  const runs = data.runs.filter((r) => r.sameVm).sort((a, b) => a.scenario.localeCompare(b.scenario) || a.repetition - b.repetition);
  return runs.map((r) => {
    // The VM's earlier succeeded runs: its scenario's, and those of the scenario it continues (one VM name).
    const sameVm = (x: (typeof runs)[number]): boolean => (r.vmName !== '' && x.vmName !== undefined ? x.vmName === r.vmName : x.scenario === r.scenario);
    const earlier = runs.filter((x) => sameVm(x) && (order.get(x) ?? 0) < (order.get(r) ?? 0) && x.outcome === 'succeeded').length;
    const f = r.figures;
    const model = r.decisions.map((x) => x.model).find((m) => m !== '') ?? '';
    return {
      scenario: r.scenario,
      label: r.label,
      group: r.group,
      cells: [String(r.repetition + 1), `${r.from} → ${r.to}`, String(earlier), decisionText(r.decisions), historyText(r.decisions), model || '—', r.outcome, fmtMs(f.totalTimeMs), fmtNum(f.guestSecondsLost, 2), fmtMs(f.downtimeMs), String(f.passes)],
    };
  });
}
const SERIES_HEADS = ['#', 'direction', 'earlier succeeded runs', 'decision (step @ pass, time)', 'history cited', 'cost model cited', 'outcome', 'total', 'guest time lost (s)', 'downtime', 'passes'];

/** Issue 14's criterion over the comparison; undefined without an adaptive strategy. */
function criterionOf(data: ReportData): PolicyCriterion | undefined {
  const kinds = new Map(data.runs.map((r) => [`${r.group}\u0000${r.label}`, r.policy]));
  return policyCriterion(data.summaries, (group, label) => kinds.get(`${group}\u0000${label}`) ?? '');
}

const CRITERION_TEXT =
  "Issue 14's criterion: the adaptive policy completes every run; on every workload no other strategy is better on both total time p50 and guest time lost p50 by more than 10 % (adaptive on the Pareto front or within 10 % of it); every fixed strategy is off the front (or incomplete) on at least one workload. Presets (Nova, oVirt, KubeVirt) are compared but not judged.";

/** The criterion as rows of cells: what, verdict, met. */
function criterionRows(c: PolicyCriterion): string[][] {
  const yes = (m: boolean): string => (m ? 'met' : 'NOT met');
  return [
    ['adaptive completes every run', `${c.adaptiveCompleted.succeeded}/${c.adaptiveCompleted.runs}`, yes(c.adaptiveCompleted.succeeded === c.adaptiveCompleted.runs)],
    ...c.workloads.map((w) => [`${w.label} on ${w.group}`, w.verdict, yes(w.met)]),
    ...c.fixed.map((f) => [`fixed strategy ${f.label} off the front somewhere`, f.offOn.length > 0 ? `off on ${f.offOn.join('; ')}` : 'on the front (or within 10 %) everywhere it ran', yes(f.met)]),
    ['criterion', '', yes(c.met)],
  ];
}

function criterionHtml(data: ReportData): string {
  const c = criterionOf(data);
  if (!c) return '';
  const rows = criterionRows(c)
    .map(([what, verdict, met]) => `<tr><td class="l">${esc(what ?? '')}</td><td class="l">${esc(verdict ?? '')}</td><td class="${met === 'met' ? 'ok' : 'bad'}">${esc(met ?? '')}</td></tr>`)
    .join('\n');
  return `<h2>Criterion</h2>
<p class="desc">${esc(CRITERION_TEXT)}</p>
<table class="summary"><thead><tr><th class="l">what</th><th class="l">verdict</th><th>met?</th></tr></thead>
<tbody>
${rows}
</tbody></table>
`;
}

/**
 * The summary tables as Markdown (one per group), with each strategy's outcomes spelled out: for
 * terminals, commit messages and notes, next to the HTML report.
 */
export function summaryMarkdown(data: ReportData): string {
  const out: string[] = [`# ${data.comparison.title}`, '', `${data.runs.length} runs, generated ${data.generatedAt}${Object.keys(data.environment).length > 0 ? ` (${Object.entries(data.environment).map(([k, v]) => `${k} ${v}`).join(', ')})` : ''}.`];
  out.push('Times and downtimes: completed runs only. Total: QEMU\'s own total-time, from its `migrate`. Start delay: the run\'s dispatch to its first streaming state (what a strategy spends before `migrate`, which total time does not count), every run that streamed. Harm: guest ms/GiB above its baseline integrated over the migration. Guest time lost: every interval the guest did not run (its own clock stood still: switch-over, forced pauses, a paused destination) in full, plus work not done while it ran slowed or stalled (throttle, post-copy faults). Spreads: min–max over repetitions. Host CPU: source + destination QEMU. Pareto: completed every run and no other such strategy better on both total time p50 and guest time lost p50.');
  const criterion = criterionOf(data);
  if (criterion) {
    out.push('', '## Criterion', '', CRITERION_TEXT, '', '| what | verdict | met? |', '|---|---|---|');
    for (const cells of criterionRows(criterion)) out.push(`| ${cells.join(' | ')} |`);
  }
  const storageGroups = new Set(data.summaries.filter((x) => x.disk).map((x) => x.group));
  if (storageGroups.size > 0) {
    out.push(
      'Storage: disk MiB allocated = the LOCAL disk\'s allocation when the copy started; on the wire = bytes the source sent on its migration link during the run minus QEMU\'s memory-stream bytes; mirrored = the mirror jobs\' offsets (zeroed ranges and rewritten blocks count, holes cross the link as NBD zero requests without payload); storage phase = first mirror started until every mirror READY (a background mirror of a disk written faster than the link may never get there); run time = migd\'s run from start to end (storage phase + memory migration + handover), QEMU memory migration = QEMU\'s own total-time; blackout = longest gap between answers to UDP probes sent every 10 ms from the VM network\'s client namespace; integrity errors = the guest\'s own count over memory and disk (it verifies every disk block and memory page on the destination); destination checks = what the nodes checked there (workload: memory and disk verified by the guest; running; vCPUs ran; no I/O errors).',
    );
  }
  for (const group of data.groups) {
    if (storageGroups.has(group)) {
      out.push('', `## ${group}`, '', `| strategy | completed | outcomes | ${STORAGE_HEADS.join(' | ')} | QEMU memory migration p50 | downtime p50 | integrity errors |`, `|---|---|---|${STORAGE_HEADS.map(() => '---|').join('')}---|---|---|`);
      for (const s of data.summaries.filter((x) => x.group === group)) {
        out.push(`| ${s.label} | ${s.succeeded}/${s.runs} | ${outcomesOf(data, group, s.label)} | ${storageCells(s).join(' | ')} | ${fmtMs(s.totalTimeMsP50)} | ${fmtMs(s.downtimeMsP50)} | ${s.integrityErrors} |`);
      }
      continue;
    }
    const front = paretoFront(data.summaries.filter((x) => x.group === group));
    const blackout = hasBlackout(data.summaries, group);
    out.push(
      '',
      `## ${group}`,
      '',
      `| strategy | completed | outcomes | total p50 (min–max) | start delay p50 | downtime p50 | downtime p99 |${blackout ? ' network blackout p50 / max |' : ''} guest ms/GiB before → during | harm p50 (ms/GiB·s) | guest time lost p50 (min–max, s) | paused p50 / longest (s) | post-copy blocktime p50 (ms) | host CPU (s, mean) | integrity errors | Pareto |`,
      `|---|---|---|---|---|---|---|${blackout ? '---|' : ''}---|---|---|---|---|---|---|---|`,
    );
    for (const s of data.summaries.filter((x) => x.group === group)) {
      out.push(
        `| ${s.label} | ${s.succeeded}/${s.runs} | ${outcomesOf(data, group, s.label)} | ${fmtMs(s.totalTimeMsP50)} (${fmtSpread(s.totalTimeMsMin / 1000, s.totalTimeMsMax / 1000)}) | ${fmtMs(s.startDelayMsP50)} | ${fmtMs(s.downtimeMsP50)} | ${fmtMs(s.downtimeMsP99)} |${blackout ? ` ${fmtMs(s.blackoutMsP50)} / ${fmtMs(s.blackoutMsMax)} |` : ''} ${fmtNum(s.baselineMsPerGib, 0)} → ${fmtNum(s.duringMsPerGib, 0)} | ${fmtNum(s.extraMsPerGibSecP50, 0)} | ${fmtNum(s.guestSecondsLostP50, 2)} (${fmtSpread(s.guestSecondsLostMin, s.guestSecondsLostMax)}) | ${fmtNum(s.guestStoppedSecP50, 2)} / ${fmtNum(s.longestPauseMsP50 / 1000, 2)} | ${fmtNum(s.postcopyBlocktimeMsP50, 0)} | ${fmtNum(s.hostCpuSecondsMean, 1)} | ${s.integrityErrors} | ${front.get(s.label) ?? ''} |`,
      );
    }
  }
  const series = seriesRows(data);
  if (series.length > 0) {
    out.push('', '## One VM migrated back and forth', '', 'Per repetition of a scenario that migrates the same VM again (from the second run on, its earlier succeeded runs are in the history store: the adaptive policy\'s prior). Decision = the policy\'s actions with QEMU\'s pass at the time; "nothing" = no action (pre-copy converged as it was). History cited = what the decision\'s reason says it took from the VM\'s earlier runs.');
    for (const label of [...new Set(series.map((r) => r.label))]) {
      out.push('', `### ${label}`, '', `| ${SERIES_HEADS.join(' | ')} |`, `|${SERIES_HEADS.map(() => '---|').join('')}`);
      for (const r of series.filter((x) => x.label === label)) out.push(`| ${r.cells.join(' | ')} |`);
    }
  }
  if (storageGroups.size > 0) {
    out.push('', '## Runs with a disk', '', '| scenario | rep | outcome | disk MiB allocated / on the wire / mirrored | storage phase | run time | QEMU memory migration | downtime | blackout | probes lost / sent | integrity errors | destination checks passed |', '|---|---|---|---|---|---|---|---|---|---|---|---|');
    for (const r of data.runs.filter((x) => x.figures.disk)) {
      const f = r.figures;
      out.push(
        `| ${r.scenario} | ${r.repetition + 1} | ${r.outcome} | ${mib(f.diskAllocatedBytes)} / ${mib(f.diskWireBytes)} / ${mib(f.diskBytes)} | ${fmtMs(f.storageMs)} | ${fmtMs(f.runTimeMs)} | ${fmtMs(f.totalTimeMs)} | ${fmtMs(f.downtimeMs)} | ${fmtMs(f.blackoutMs)} | ${Number.isFinite(f.probesSent) ? `${f.probesLost} / ${f.probesSent}` : '—'} | ${f.integrityErrors} | ${f.checks > 0 ? `${f.checksPassed}/${f.checks}` : '—'} |`,
      );
    }
  }
  return `${out.join('\n')}\n`;
}

/** "2 succeeded, 1 timed-out" for one strategy of a group. */
function outcomesOf(data: ReportData, group: string, label: string): string {
  const outcomes = new Map<string, number>();
  for (const r of data.runs) if (r.group === group && r.label === label) outcomes.set(r.outcome, (outcomes.get(r.outcome) ?? 0) + 1);
  return [...outcomes].map(([k, n]) => `${n} ${k}`).join(', ');
}

/** Writes `<dir>/report.html`, `report.json` (the data behind it) and `summary.md`; returns their paths. */
export async function writeReport(dir: string, input: ReportInput, opts: { chartJs?: string } = {}): Promise<{ html: string; json: string; markdown: string; data: ReportData }> {
  await mkdir(dir, { recursive: true });
  const data = buildReportData(input);
  const chartJs = opts.chartJs ?? (await readFile(chartJsPath(), 'utf8'));
  const html = join(dir, 'report.html');
  const json = join(dir, 'report.json');
  const markdown = join(dir, 'summary.md');
  await writeFile(html, renderReportHtml(data, chartJs));
  await writeFile(json, scriptJson(data));
  await writeFile(markdown, summaryMarkdown(data));
  return { html, json, markdown, data };
}

/** The Chromium binary: $CHROMIUM_BIN, else /usr/bin/chromium. Undefined when neither exists. */
export function chromiumBinary(): string | undefined {
  const env = process.env['CHROMIUM_BIN'];
  if (env) return env;
  return existsSync('/usr/bin/chromium') ? '/usr/bin/chromium' : undefined;
}

/**
 * Renders `htmlPath` with headless Chromium into `pngPath` (viewport `width`×`height`). Chromium
 * gets a fresh profile in a temp dir (removed afterwards) and every background fetch turned off,
 * so it never reaches the network; a run longer than `timeoutMs` is killed.
 * @throws Error when Chromium is missing, fails, or produces no PNG.
 */
export async function screenshot(htmlPath: string, pngPath: string, opts: { width?: number; height?: number; timeoutMs?: number; binary?: string } = {}): Promise<void> {
  const bin = opts.binary ?? chromiumBinary();
  if (!bin) throw new Error('chromium not found: install Debian package "chromium" or set CHROMIUM_BIN');
  const profile = await mkdtemp(join(tmpdir(), 'migd-chromium-'));
  const out = resolve(pngPath);
  await rm(out, { force: true });
  try {
    const args = [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--hide-scrollbars',
      `--user-data-dir=${profile}`,
      // Let the page's script run to completion before the picture is taken.
      '--virtual-time-budget=5000',
      `--screenshot=${out}`,
      `--window-size=${opts.width ?? 1400},${opts.height ?? 2000}`,
      pathToFileURL(resolve(htmlPath)).href,
    ];
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    child.stdout.on('data', (b: Buffer) => (log = (log + b.toString()).slice(-4000)));
    child.stderr.on('data', (b: Buffer) => (log = (log + b.toString()).slice(-4000)));
    const code = await new Promise<number | null>((res, rej) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
      child.once('error', (e) => {
        clearTimeout(timer);
        rej(e);
      });
      child.once('exit', (c, sig) => {
        clearTimeout(timer);
        res(sig ? -1 : c);
      });
    });
    if (code !== 0 || !existsSync(out)) throw new Error(`chromium exited with ${code} and ${existsSync(out) ? 'a' : 'no'} screenshot:\n${log}`);
  } finally {
    await rm(profile, { recursive: true, force: true });
  }
}
