/**
 * The campaign's results: faults injected per kind and phase, how many the system survived (no
 * invariant violated in that step), and every violation with its seed and replay command — as a
 * console table, Markdown and JSON (docs/chaos/ for `npm run chaos`). Pure apart from `saveReport`.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CampaignResult } from './campaign.js';
import { FAULT_KINDS } from './plan.js';
import type { PhaseName } from './phase.js';
import { LOST_IN_QEMU_REASON } from './invariants.js';

const PHASES: readonly PhaseName[] = ['setup', 'pre-copy', 'switch-over', 'post-copy', 'verification', 'finished'];

export interface Summary {
  readonly injected: number;
  readonly notApplicable: number;
  readonly survived: number;
  readonly violations: number;
  /** kind → phase → injected / survived. */
  readonly table: Record<string, Record<string, { injected: number; survived: number }>>;
}

export function summarize(r: CampaignResult): Summary {
  const table: Summary['table'] = {};
  let injected = 0;
  let survived = 0;
  let notApplicable = 0;
  let violations = r.finalViolations.length;
  for (const rec of r.records) {
    violations += rec.violations.length;
    if (!rec.applied) {
      notApplicable++;
      continue;
    }
    injected++;
    const ok = rec.survived;
    if (ok) survived++;
    const row = (table[rec.fault] ??= {});
    const cell = (row[rec.phaseName] ??= { injected: 0, survived: 0 });
    cell.injected++;
    if (ok) cell.survived++;
  }
  return { injected, notApplicable, survived, violations, table };
}

/** A Markdown table: rows = fault kinds, columns = phases, cells = survived/injected. */
export function markdownReport(r: CampaignResult): string {
  const s = summarize(r);
  const lines: string[] = [];
  lines.push(`# Chaos campaign, seed ${r.seed}${r.fromStep ? ` from step ${r.fromStep}` : ''}`);
  lines.push('');
  lines.push(`Started ${r.startedAt}, ${(r.durationMs / 60000).toFixed(1)} min, ${new Set(r.records.map((x) => x.step)).size} steps of ${r.faultsPerStep} fault${r.faultsPerStep > 1 ? 's' : ''} each. Replay: \`npm run chaos -- --seed ${r.seed}${r.fromStep ? ` --from-step ${r.fromStep}` : ''} --faults ${r.records.length}${r.faultsPerStep !== 1 ? ` --per-step ${r.faultsPerStep}` : ''}${r.only.length ? ` --only ${r.only.join(',')}` : ''}\`.`);
  lines.push('');
  lines.push(`**${s.injected} faults injected, ${s.survived} survived (no invariant violated), ${s.violations} violations**${s.notApplicable ? `; ${s.notApplicable} faults found no target (e.g. no destination QEMU yet) and are not counted` : ''}.`);
  lines.push('');
  lines.push('Survived / injected per fault and the phase of the migration when it landed:');
  lines.push('');
  lines.push(`| fault | ${PHASES.join(' | ')} | total |`);
  lines.push(`| --- | ${PHASES.map(() => '---:').join(' | ')} | ---: |`);
  for (const kind of FAULT_KINDS) {
    const row = s.table[kind] ?? {};
    const tot = Object.values(row).reduce((a, c) => ({ injected: a.injected + c.injected, survived: a.survived + c.survived }), { injected: 0, survived: 0 });
    if (tot.injected === 0) continue;
    lines.push(`| ${kind} | ${PHASES.map((p) => (row[p] ? `${row[p].survived}/${row[p].injected}` : '')).join(' | ')} | ${tot.survived}/${tot.injected} |`);
  }
  lines.push('');
  const pre = new Map<string, number>();
  for (const rec of r.records) if (rec.applied && rec.phaseName === 'pre-copy') pre.set(rec.phase, (pre.get(rec.phase) ?? 0) + 1);
  if (pre.size) lines.push(`Pre-copy faults by pass: ${[...pre].sort().map(([k, n]) => `${k.replace('pre-copy ', '')}: ${n}`).join(', ')}.`, '');
  if (Object.keys(r.restarts).length) lines.push(`Supervisor restarts: ${Object.entries(r.restarts).map(([k, n]) => `${k} ${n}`).join(', ')}.`, '');
  lines.push('## Violations');
  lines.push('');
  const all = [...r.records.flatMap((rec) => rec.violations.map((v) => ({ ...v, where: `step ${rec.step} (${rec.fault} in ${rec.phase}, ${rec.mode})`, replay: rec.replay }))), ...r.finalViolations.map((v) => ({ ...v, where: 'final check', replay: `npm run chaos -- --seed ${r.seed} --faults ${r.records.length}${r.faultsPerStep !== 1 ? ` --per-step ${r.faultsPerStep}` : ''}` }))];
  if (all.length === 0) lines.push('None.');
  for (const v of all) lines.push(`- **${v.invariant}** ${v.subject}: ${v.detail} — ${v.where}, seed ${r.seed}; replay: \`${v.replay}\``);
  lines.push('');
  const lost = r.records.flatMap((rec) => rec.runs.filter((x) => x.error.startsWith(`${LOST_IN_QEMU_REASON}:`)).map((x) => `- ${x.vm} ${x.from}→${x.to}, step ${rec.step} (${rec.fault} in ${rec.phase}): ${x.error}`));
  if (lost.length) {
    lines.push("## Guests lost in QEMU's switch to post-copy", '');
    lines.push('QEMU fails post-copy for good when the stream breaks between the device-state package and the end of its switch; migd keeps both copies paused (never two running) and reports the run FAILED. Counted as survived: no migd invariant is violated.', '');
    lines.push(...[...new Set(lost)], '');
  }
  lines.push('## Steps');
  lines.push('');
  lines.push('| step | action | mode | fault | phase | target | runs | violations |');
  lines.push('| ---: | --- | --- | --- | --- | --- | --- | ---: |');
  for (const rec of r.records) {
    const runs = rec.runs.map((x) => `${x.vm} ${x.from}→${x.to} ${x.state}`).join('; ');
    lines.push(`| ${rec.step} | ${rec.action} | ${rec.mode} | ${rec.fault} | ${rec.phase} | ${rec.target.replace(/\|/g, '/')} | ${runs} | ${rec.violations.length} |`);
  }
  return lines.join('\n') + '\n';
}

/** Writes `<dir>/<name>.md` and `<dir>/<name>.json`; returns their paths. */
export function saveReport(r: CampaignResult, dir: string, name: string): { md: string; json: string } {
  mkdirSync(dir, { recursive: true });
  const md = join(dir, `${name}.md`);
  const json = join(dir, `${name}.json`);
  writeFileSync(md, markdownReport(r));
  writeFileSync(json, JSON.stringify({ summary: summarize(r), ...r }, null, 2) + '\n');
  return { md, json };
}
