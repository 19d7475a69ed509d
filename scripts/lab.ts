/**
 * The scenario lab (stress/lab/): runs a comparison or one scenario against a migd cluster and
 * writes a self-contained HTML report (and a PNG of it) next to its results.
 *
 *   npm run lab -- <comparison|scenario> [--quick | --repetitions N] [--resume] [--out DIR]
 *                  [--coordinator HOST:PORT [--cert-dir DIR]] [--direct] [--no-png]
 *   npm run lab -- <comparison|scenario> --report-only [--out DIR]
 *   npm run lab -- --list
 *
 * Without --coordinator it brings up its own cluster: two testbed hosts (network namespaces, the
 * link shaped per scenario), nats-server, the coordinator and two node daemons (root needed, as
 * for the integration tests). --direct leaves the coordinator out: the node daemons are driven
 * directly with the coordinator's policy code in-process. With --coordinator the cluster is
 * someone else's and links are not shaped (the scenarios' links are only recorded).
 * Default --out: test-output/lab/<target>[-quick]. Ctrl-C stops after cleaning up; --resume then
 * continues with the scenario/repetition pairs not yet recorded. --repetitions N runs every
 * scenario N times instead of its own count (3 for the seed tables).
 */
import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { configError, configUsage, loadConfig, type ConfigSchema } from '../services/shared/config.js';
import { certDir as defaultCertDir, repoRoot } from '../services/shared/paths.js';
import type { LabBackend } from '../stress/lab/backend.js';
import { startLabCluster, type LabCluster } from '../stress/lab/cluster.js';
import { CoordinatorBackend } from '../stress/lab/coordinator-backend.js';
import { loadResults } from '../stress/lab/results.js';
import { reportFromResults, runComparison } from '../stress/lab/runner.js';
import { COMPARISONS, resolveTarget, type LabLink } from '../stress/lab/scenarios.js';

/** The lab's options (services/shared/config.ts). */
const OPTIONS = {
  quick: { type: 'boolean', doc: "run the comparison's quick subset once each" },
  repetitions: { type: 'integer', short: 'n', min: 1, max: 100, doc: "run every scenario N times instead of its own count" },
  resume: { type: 'boolean', doc: 'continue with the scenario/repetition pairs not yet recorded' },
  out: { type: 'string', doc: 'results folder (default test-output/lab/<target>[-quick])' },
  coordinator: { type: 'string', doc: "someone else's coordinator, HOST:PORT (links are then not shaped)" },
  'cert-dir': { type: 'string', doc: 'client certificates for --coordinator (default .cache/certs)' },
  direct: { type: 'boolean', doc: "drive the node daemons directly with the coordinator's policy code in-process" },
  'no-png': { type: 'boolean', doc: 'do not render report.png' },
  'report-only': { type: 'boolean', doc: 'rebuild the report from recorded results' },
  list: { type: 'boolean', doc: 'list the comparisons and scenarios' },
  verbose: { type: 'boolean', short: 'v', doc: "print the daemons' log lines" },
  help: { type: 'boolean', short: 'h', doc: 'this help, and the list' },
} as const satisfies ConfigSchema;

function list(): void {
  console.log(`usage: npm run lab -- <comparison|scenario> [options]\n${configUsage(OPTIONS)}\n`);
  for (const c of COMPARISONS) {
    const runs = c.scenarios.reduce((n, s) => n + s.repetitions, 0);
    console.log(`${c.name}  (${c.scenarios.length} scenarios, ${runs} runs; --quick: ${c.quick?.length ?? c.scenarios.length} runs)\n  ${c.title}`);
    for (const s of c.scenarios) console.log(`    ${s.name.padEnd(34)} ${s.label}`);
  }
}

function qemuVersion(): string {
  try {
    return execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).split('\n')[0]!.replace('QEMU emulator version ', '');
  } catch {
    return 'unknown';
  }
}

async function main(): Promise<number> {
  const { values: o, positionals } = loadConfig(OPTIONS, process.argv.slice(2), { positionals: 1 });
  if (o.quick && o.repetitions !== undefined) throw configError('repetitions', 'does not go with --quick: --quick runs its subset once each');
  if (o.direct && o.coordinator !== undefined) throw configError('direct', 'does not go with --coordinator: --direct brings up its own node daemons');
  const args = { ...o, target: positionals[0], certDir: o['cert-dir'], png: !o['no-png'], reportOnly: o['report-only'], list: o.list || o.help };
  if (args.list || !args.target) {
    list();
    return args.target || args.list ? 0 : 2;
  }
  const comparison = resolveTarget(args.target, { quick: args.quick, repetitions: args.repetitions });
  if (!comparison) {
    console.error(`lab: no comparison or scenario named "${args.target}" (npm run lab -- --list)`);
    return 2;
  }
  const out = args.out ?? join(repoRoot(), 'test-output', 'lab', `${comparison.name}${args.quick ? '-quick' : ''}`);
  const log = (l: string): void => {
    if (process.stdout.isTTY) process.stdout.write('\r\x1b[K');
    console.log(`lab: ${l}`);
  };
  const status = (l: string): void => {
    if (process.stdout.isTTY) process.stdout.write('\r\x1b[K' + l.slice(0, (process.stdout.columns || 160) - 1));
    else console.log(l);
  };

  if (args.reportOnly) {
    const results = await loadResults(out, comparison.name);
    if (!results) {
      console.error(`lab: no results in ${out}`);
      return 1;
    }
    const r = await reportFromResults(out, comparison, results, { png: args.png });
    console.log(`\n${await readFile(r.markdown, 'utf8')}`);
    log(`report: ${r.html}${r.png ? `, ${r.png}` : ''}, ${r.markdown}`);
    return 0;
  }

  const ac = new AbortController();
  let interrupted = 0;
  const onSignal = (): void => {
    if (++interrupted > 1) process.exit(130);
    log('interrupted: stopping after cleaning up (Ctrl-C again to quit at once)');
    ac.abort(new Error('interrupted'));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  let cluster: LabCluster | undefined;
  let backend: LabBackend | undefined;
  let shape: ((host: string, link: LabLink) => Promise<void>) | undefined;
  let source = 'a';
  let destination = 'b';
  try {
    if (args.coordinator) {
      const cb = new CoordinatorBackend({ address: args.coordinator, certDir: args.certDir ?? defaultCertDir() });
      backend = cb;
      const ids = await cb.nodeIds();
      if (ids.length < 2) throw new Error(`the coordinator at ${args.coordinator} knows ${ids.length} node(s); the lab needs two`);
      [source, destination] = ids as [string, string];
      log(`using the coordinator at ${args.coordinator}: migrating ${source} → ${destination}; links are not shaped`);
    } else {
      log(`starting a cluster (${args.direct ? 'node daemons only' : 'coordinator, nats-server, node daemons'} in network namespaces)…`);
      cluster = await startLabCluster({ ...(args.direct ? { mode: 'direct' as const } : {}), ...(args.verbose ? { onLog: (l: string) => console.error(l) } : {}) });
      backend = cluster.backend;
      const tb = cluster.tb;
      shape = async (host, link) => {
        const s = { ...(link.rateMbit !== undefined ? { rateMbit: link.rateMbit } : {}), ...(link.delayMs ? { delayMs: link.delayMs } : {}), ...(link.lossPct ? { lossPct: link.lossPct } : {}) };
        if (Object.keys(s).length === 0) await tb.unshape(host);
        else await tb.shape(host, s);
      };
      log(`cluster up (${cluster.mode}${cluster.coordinatorAddress ? ` at ${cluster.coordinatorAddress}` : ''})`);
    }
    const r = await runComparison({
      comparison,
      outDir: out,
      backend,
      source,
      destination,
      ...(shape ? { shape } : {}),
      ...(cluster ? { storage: cluster.storage } : {}),
      resume: args.resume,
      quick: args.quick,
      png: args.png,
      environment: { qemu: qemuVersion(), host: `${cpus().length} CPUs`, node: process.version },
      log,
      status,
      signal: ac.signal,
    });
    const done = r.results.runs.length;
    const want = comparison.scenarios.reduce((n, s) => n + s.repetitions, 0);
    log(`${r.ran} run(s) this time; ${done}/${want} recorded, ${r.results.errors.length} error(s); results ${join(out, 'results.json')}`);
    console.log(`\n${await readFile(r.summaryMarkdown, 'utf8')}`);
    log(`report: ${r.reportHtml}${r.reportPng ? `, ${r.reportPng}` : ''}, ${r.summaryMarkdown}`);
    if (args.coordinator === undefined && cluster?.mode === 'coordinator' && done > 0) {
      // Cross-check: the coordinator's own per-policy summary of the same runs.
      const cb = backend as CoordinatorBackend;
      const cmp = await cb.client.comparePolicies({ filter: { runIds: r.results.runs.map((x) => x.runId), vmName: '', nodeId: '', states: [], policyKinds: [], planId: '', label: '' } }).catch(() => undefined);
      for (const s of cmp?.summaries ?? []) log(`coordinator ComparePolicies: ${s.label || s.kind}: ${s.succeeded}/${s.runs} ok, total p50 ${Math.round(s.totalTimeMsP50)} ms, downtime p50 ${Math.round(s.downtimeMsP50)} ms`);
    }
    return ac.signal.aborted ? 130 : r.results.errors.length > 0 && done < want ? 1 : 0;
  } finally {
    if (cluster) await cluster.close();
    else await backend?.close();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`lab: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
