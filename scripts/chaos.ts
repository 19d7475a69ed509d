/**
 * The fault campaign (stress/chaos/): a local cluster of real QEMU guests in network namespaces,
 * many migrations in every mode, one fault per step at a moment drawn from the seed, invariants
 * checked after every fault once the system settles and at the end.
 *
 *   npm run chaos -- [--seed N] [--faults K] [--minutes M] [--per-step 1|2] [--from-step I]
 *                    [--only kind,kind] [--out DIR] [--name NAME] [--log FILE]
 *
 * Defaults: --seed 1, --faults 20 (with --minutes and no --faults: as many as fit), --per-step 1
 * (2: a second fault at another moment of the same migrations, for more faults per minute). A
 * replay of one step: --from-step I --faults <per-step> (with the same --per-step and --only). Results go to
 * docs/chaos/<name>.{md,json} (default name: seed-<N>). Exit code 1 when an invariant was violated.
 * Needs root (namespaces, tmpfs), like the integration tests.
 */
import { appendFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { repoRoot } from '../services/shared/paths.js';
import { runCampaign } from '../stress/chaos/campaign.js';
import { FAULT_KINDS, type FaultKind } from '../stress/chaos/plan.js';
import { markdownReport, saveReport, summarize } from '../stress/chaos/report.js';

function fail(msg: string): never {
  console.error(`chaos: ${msg}`);
  process.exit(2);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seed: { type: 'string' },
      faults: { type: 'string' },
      minutes: { type: 'string' },
      'from-step': { type: 'string' },
      'per-step': { type: 'string' },
      only: { type: 'string' },
      out: { type: 'string' },
      name: { type: 'string' },
      log: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    console.log('npm run chaos -- [--seed N] [--faults K] [--minutes M] [--per-step 1|2] [--from-step I] [--only kind,…] [--out DIR] [--name NAME] [--log FILE]');
    console.log(`faults: ${FAULT_KINDS.join(', ')}`);
    return;
  }
  const int = (v: string | undefined, name: string, dflt: number): number => {
    if (v === undefined) return dflt;
    if (!/^\d+$/.test(v)) fail(`--${name} must be a non-negative integer, got ${JSON.stringify(v)}`);
    return Number(v);
  };
  const seed = int(values.seed, 'seed', 1);
  const minutes = values.minutes === undefined ? undefined : Number(values.minutes);
  if (minutes !== undefined && !(minutes > 0)) fail(`--minutes must be a positive number, got ${JSON.stringify(values.minutes)}`);
  const faults = int(values.faults, 'faults', minutes !== undefined ? 100_000 : 20);
  if (faults < 1) fail('--faults must be at least 1');
  const perStep = int(values['per-step'], 'per-step', 1);
  if (perStep !== 1 && perStep !== 2) fail('--per-step must be 1 or 2');
  const only = values.only?.split(',').map((s) => s.trim()).filter(Boolean) as FaultKind[] | undefined;
  for (const k of only ?? []) if (!FAULT_KINDS.includes(k)) fail(`--only: unknown fault ${JSON.stringify(k)} (known: ${FAULT_KINDS.join(', ')})`);
  if (process.getuid?.() !== 0) fail('needs root (network namespaces, a tmpfs for the coordinator store)');
  const logFile = values.log;
  const log = (l: string): void => {
    console.log(l);
    if (logFile) appendFileSync(logFile, `${l}\n`);
  };
  const out = values.out ?? join(repoRoot(), 'docs', 'chaos');
  const name = values.name ?? `seed-${seed}`;
  const result = await runCampaign({
    seed,
    faults,
    fromStep: int(values['from-step'], 'from-step', 0),
    faultsPerStep: perStep,
    ...(minutes !== undefined ? { maxDurationMs: minutes * 60_000 } : {}),
    ...(only ? { only } : {}),
    log,
    ...(logFile ? { onClusterLog: (l: string) => appendFileSync(logFile, `${l}\n`) } : {}),
    // The results so far are saved after every step (as <name>.partial.*): a long campaign that
    // is stopped still leaves its table.
    onProgress: (partial) => saveReport(partial, out, `${name}.partial`),
  });
  const { md, json } = saveReport(result, out, name);
  for (const ext of ['md', 'json']) rmSync(join(out, `${name}.partial.${ext}`), { force: true });
  console.log('\n' + markdownReport(result).split('## Steps')[0]!.trim());
  const s = summarize(result);
  console.log(`\nchaos: ${s.injected} faults, ${s.survived} survived, ${s.violations} violations; saved ${md} and ${json}`);
  process.exitCode = s.violations > 0 ? 1 : 0;
}

void main().catch((err: unknown) => {
  console.error(`chaos: ${(err as Error).stack ?? String(err)}`);
  process.exit(1);
});
