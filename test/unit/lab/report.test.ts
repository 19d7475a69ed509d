import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MigrationState } from '../../../services/shared/gen/migd/v1/common.js';
import { buildReportData, chartJsPath, renderReportHtml, scriptJson, summaryMarkdown, writeReport, type ReportInput } from '../../../stress/lab/report.js';
import { SEED_001 } from '../../../stress/lab/scenarios.js';
import { syntheticTimeline } from './synthetic.js';

const ac = SEED_001[0]!;
const pc = SEED_001[4]!;

function input(): ReportInput {
  return {
    comparison: { name: 'seed-001', title: 'Seed 001 <test>', description: 'synthetic' },
    scenarios: [ac, pc],
    generatedAt: new Date('2026-01-01T00:00:00Z'),
    environment: { mode: 'test' },
    runs: [
      { scenario: ac.name, repetition: 0, outcome: 'succeeded', timeline: syntheticTimeline({ id: 'run-ac-0', start: 1e6, durationMs: 40_000, downtimeMs: 120, throttle: true, during: 2000 }) },
      { scenario: ac.name, repetition: 1, outcome: 'succeeded', timeline: syntheticTimeline({ id: 'run-ac-1', start: 2e6, durationMs: 60_000, downtimeMs: 80, throttle: true, during: 2000 }) },
      { scenario: pc.name, repetition: 0, outcome: 'succeeded', timeline: syntheticTimeline({ id: 'run-pc-0', start: 3e6, durationMs: 8000, downtimeMs: 4, postcopyAtMs: 3000, during: 900 }) },
      {
        scenario: pc.name,
        repetition: 1,
        outcome: 'timed-out',
        note: 'cancelled by the lab after 240 s',
        timeline: syntheticTimeline({ id: 'run-pc-1', start: 4e6, durationMs: 9000, state: MigrationState.MIGRATION_STATE_CANCELLED }),
      },
    ],
  };
}

describe('lab report', () => {
  it('summarises per strategy with the medians and completion rates', () => {
    const d = buildReportData(input());
    expect(d.groups).toEqual([ac.group]);
    const byLabel = Object.fromEntries(d.summaries.map((s) => [s.label, s]));
    expect(byLabel[ac.label]).toMatchObject({ runs: 2, succeeded: 2, totalTimeMsP50: 50_000, downtimeMsP50: 100 });
    expect(byLabel[pc.label]).toMatchObject({ runs: 2, succeeded: 1, completionRate: 0.5, totalTimeMsP50: 8000, downtimeMsP50: 4 });
    expect(d.runs.map((r) => r.figures.runId)).toEqual(['run-ac-0', 'run-ac-1', 'run-pc-0', 'run-pc-1']);
  });

  it('renders one self-contained page: inlined Chart.js and data, three charts per run, the summary table', () => {
    const d = buildReportData(input());
    const html = renderReportHtml(d, '/* chart.js stub */ window.Chart = function(){};');
    expect(html).toContain('/* chart.js stub */');
    expect(html).not.toMatch(/<script[^>]+src=/);
    expect(html).not.toMatch(/https?:\/\//);
    expect(html).toContain('Seed 001 &lt;test&gt;');
    for (let i = 0; i < 4; i++) for (const c of ['mig', 'guest', 'cpu']) expect(html).toContain(`id="${c}-${i}"`);
    expect(html).toContain('id="sum-0"');
    // Summary row of the post-copy strategy: 1/2 completed, 8.00 s median, 500 ms from dispatch to
    // streaming (syntheticTimeline's PREPARING), 4 ms downtime.
    const row = html.slice(html.indexOf(`>${pc.label}<`));
    expect(row).toMatch(/1\/2 \(50 %\)<\/td>\s*<td>8\.00 s<\/td><td>500 ms<\/td><td>4 ms<\/td><td>4 ms<\/td>/);
    expect(html).toContain('<th>start delay p50<br><small>dispatch → streaming</small></th>');
    expect(html).toContain('start delay 500 ms');
    const md = summaryMarkdown(d);
    expect(md).toContain('| total p50 (min–max) | start delay p50 | downtime p50 |');
    expect(md.split('\n').find((l) => l.startsWith(`| ${pc.label} |`))).toMatch(/\| 8\.00 s \(8\.0–8\.0\) \| 500 ms \| 4 ms \|/);
    expect(html).toContain('cancelled by the lab after 240 s');
    const data = JSON.parse(html.slice(html.indexOf('id="lab-data">') + 'id="lab-data">'.length, html.indexOf('</script>', html.indexOf('id="lab-data">'))));
    expect(data.runs).toHaveLength(4);
    expect(data.runs[0].series.remainingMiB.length).toBeGreaterThan(10);
  });

  it('shows per workload the Pareto scatter with the downtime beside it, the network blackout once measured, and the Pareto verdict', () => {
    const plain = renderReportHtml(buildReportData(input()), '');
    expect(plain).toMatch(/<div class="pair"><div class="cell2"><canvas id="pareto-0"><\/canvas><\/div><div class="cell2"><canvas id="down-0"><\/canvas><\/div><\/div>/);
    expect(plain).not.toContain('network blackout p50 / max');
    // The auto-converge strategy completed both runs and nothing beats it on both figures; post-copy lost one.
    expect(plain.slice(plain.indexOf(`>${ac.label}<`))).toMatch(/<td class="l">front<\/td>/);
    expect(plain.slice(plain.indexOf(`>${pc.label}<`))).toMatch(/<td class="l">incomplete<\/td>/);

    // Guests with a NIC: the blackout measured from outside joins the table and the downtime chart.
    const withNic = input();
    const runs = withNic.runs.map((r, i) => {
      const t = structuredClone(r.timeline);
      t.run!.networkBlackout = { blackoutMs: 400 + 100 * i, probesSent: 900, probesLost: 40, probeIntervalMs: 10, measuredBy: 'test', gapStartedAt: undefined, gapEndedAt: undefined };
      return { ...r, timeline: t };
    });
    const d = buildReportData({ ...withNic, runs });
    const html = renderReportHtml(d, '');
    expect(html).toContain('<th>network blackout p50 / max</th>');
    expect(html.slice(html.indexOf(`>${ac.label}<`))).toMatch(/<td>450 ms \/ 500 ms<\/td><td class="l">front<\/td>/);
    const md = summaryMarkdown(d);
    expect(md).toContain('| downtime p99 | network blackout p50 / max | guest ms/GiB');
    expect(md.split('\n').find((l) => l.startsWith(`| ${ac.label} |`))).toMatch(/\| 450 ms \/ 500 ms \|/);
    // The page's script draws the blackout as a second series per strategy.
    expect(html).toContain("label: l + ': network blackout'");
  });

  it('shows per repetition of a sameVm scenario the direction, the decision with its pass, the history it cites, total time and guest time lost', () => {
    const rep = { ...pc, name: 'rep-pc', sameVm: true };
    const reason = (n: number): string => `predicted not to converge …; post-copy is predicted to cost the guest least (predicted guest time lost: nothing —, raise to 700 ms ≈2.1 s, post-copy ≈1.4 s; h 0.62 with this run's 0.55 over 12 guest pace samples, c 0.90 s, s 0.70${n > 0 ? `, prior from ${n} earlier runs of the VM` : ''})`;
    const run = (i: number, outcome: 'succeeded' | 'failed', postcopyAtMs?: number) => {
      const t = syntheticTimeline({ id: `run-rep-${i}`, start: 1e6 * (i + 1), durationMs: 8000 + 1000 * i, downtimeMs: 5, during: 900, ...(postcopyAtMs !== undefined ? { postcopyAtMs } : {}) });
      t.run!.sourceNodeId = i % 2 === 0 ? 'a' : 'b';
      t.run!.destinationNodeId = i % 2 === 0 ? 'b' : 'a';
      for (const a of t.run!.actions) a.reason = reason(i === 2 ? 1 : i);
      return { scenario: rep.name, repetition: i, outcome, timeline: t };
    };
    // Rep 2 follows a failed run: one earlier succeeded run, and its reason cites a prior of one.
    const d = buildReportData({ ...input(), scenarios: [ac, rep], runs: [run(2, 'succeeded', 3000), run(0, 'succeeded'), run(1, 'failed', 3000)] });
    const md = summaryMarkdown(d);
    expect(md).toContain('## One VM migrated back and forth');
    const rows = md.split('\n').filter((l) => /^\| \d \| [ab] → [ab] \|/.test(l));
    expect(rows).toEqual([
      // Guest time lost: 900 against 560 ms/GiB = 0.378 of each second (synthetic.ts).
      '| 1 | a → b | 0 | nothing | — | — | succeeded | 8.00 s | 3.02 | 5 ms | 5 |',
      // Post-copy 3 s into 9 s: the last progress sample at or before it reads pass 1 + ⌊6 × 3/9⌋ = 3.
      '| 2 | b → a | 1 | post-copy @ pass 3 (3.0 s) | prior 1 run | h 0.62, c 0.90 s, s 0.70 | failed | 9.00 s | 3.40 | 5 ms | 5 |',
      // Into 10 s: pass 1 + ⌊6 × 3/10⌋ = 2.
      '| 3 | a → b | 1 | post-copy @ pass 2 (3.0 s) | prior 1 run | h 0.62, c 0.90 s, s 0.70 | succeeded | 10.0 s | 3.78 | 5 ms | 5 |',
    ]);
    const html = renderReportHtml(d, '');
    expect(html).toContain('<h2>One VM migrated back and forth</h2>');
    expect(html).toContain('<td class="l">post-copy @ pass 2 (3.0 s)</td><td class="l">prior 1 run</td>');
    // Scenarios without sameVm get no such table.
    expect(summaryMarkdown(buildReportData(input()))).not.toContain('One VM migrated');

    // A scenario that continues another's VM counts that one's runs as the VM's earlier runs (one VM name).
    const next = { ...ac, name: 'rep-next', label: 'after post-copy', sameVm: true, continues: rep.name };
    const named = (r: ReturnType<typeof run>, vm: string) => {
      const t = structuredClone(r.timeline);
      t.run!.vmName = vm;
      return { ...r, timeline: t };
    };
    const later = { ...named(run(0, 'succeeded'), 'vm-1'), scenario: next.name };
    const both = buildReportData({ ...input(), scenarios: [rep, next], runs: [named(run(0, 'succeeded'), 'vm-1'), named(run(1, 'succeeded', 3000), 'vm-1'), later] });
    const laterRows = summaryMarkdown(both).split('\n').slice(summaryMarkdown(both).split('\n').indexOf('### after post-copy'));
    expect(laterRows.find((l) => l.startsWith('| 1 |'))).toMatch(/^\| 1 \| a → b \| 2 \|/);
  });

  it('keeps inlined JSON from closing its script element and maps NaN to null', () => {
    expect(scriptJson({ a: '</script><b>', n: NaN })).toBe('{"a":"\\u003c/script>\\u003cb>","n":null}');
  });

  it('writes report.html with the real Chart.js bundle', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'migd-lab-report-'));
    try {
      const { html, markdown } = await writeReport(dir, input());
      const page = readFileSync(html, 'utf8');
      expect(page).toContain('Chart.js v4');
      expect(page.length).toBeGreaterThan(readFileSync(chartJsPath()).length);
      // The Markdown summary: a row per strategy with its outcomes spelled out.
      const md = readFileSync(markdown, 'utf8');
      const pcRow = md.split('\n').find((l) => l.startsWith(`| ${pc.label} |`));
      expect(pcRow).toMatch(/^\| [^|]+ \| 1\/2 \| 1 succeeded, 1 timed-out \| 8\.00 s \(8\.0–8\.0\) \| 500 ms \| 4 ms \| 4 ms \|/);
      expect(md.split('\n').filter((l) => l.startsWith('| ')).length).toBe(3); // header + 2 strategies
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
