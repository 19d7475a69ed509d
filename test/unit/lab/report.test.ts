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
    // Summary row of the post-copy strategy: 1/2 completed, 8.00 s median, 4 ms downtime.
    const row = html.slice(html.indexOf(`>${pc.label}<`));
    expect(row).toMatch(/1\/2 \(50 %\)<\/td>\s*<td>8\.00 s<\/td><td>4 ms<\/td><td>4 ms<\/td>/);
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
      expect(pcRow).toMatch(/^\| [^|]+ \| 1\/2 \| 1 succeeded, 1 timed-out \| 8\.00 s \(8\.0–8\.0\) \| 4 ms \| 4 ms \|/);
      expect(md.split('\n').filter((l) => l.startsWith('| ')).length).toBe(3); // header + 2 strategies
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
