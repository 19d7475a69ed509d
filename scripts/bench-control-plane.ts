/**
 * Control-plane benchmarks (not part of `npm test`). Each part measures two things side by side in
 * one run and prints their ratio:
 *
 *   npm run build && node dist/scripts/bench-control-plane.js [--parts a,b,c,d] [--reps 3]
 *                                                            [--nodes 50,100,500] [--vms-per-node 20]
 *                                                            [--drain-vms 4] [--mtu 1500]
 *
 *  a. control-plane overhead: one migration of the same idle guest through migd (SubmitPlan →
 *     RunCompleted: plan, dispatch, destination QEMU, capabilities, migration, guest verification,
 *     source clean-up) vs a bare QMP script doing the least that works (start `-incoming defer`
 *     QEMU, migrate-incoming, migrate, wait for `completed` and the destination's RESUME);
 *  b. wire efficiency: an idle guest's migration bytes per second vs the shaped link rate;
 *  c. drain makespan vs total bytes ÷ link bandwidth (a host with 4 guests drained to another);
 *  d. control-plane scale: drains of 20 VMs per node over 50/100/500 simulated nodes (real
 *     coordinator, fake NodeService endpoints at the gRPC seam, see stress/lab/sim-nodes.ts) —
 *     SubmitPlan cost, plans per second, dispatch throughput against the concurrency bound.
 *
 * a–c run a real cluster in network namespaces (root, QEMU, nats-server, built dist/), one testbed
 * shared by the three, its migration network at `--mtu` (9000 models jumbo frames); d needs only
 * the coordinator and nats-server. Everything started is stopped at the end, also on failure.
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { monitorEventLoopDelay, performance, type IntervalHistogram } from 'node:perf_hooks';
import { MigrationPolicy, MigrationState, PolicyKind, WorkloadPattern, VmSpec } from '../services/shared/gen/migd/v1/common.js';
import { PlanState } from '../services/shared/gen/migd/v1/coordinator.js';
import { buildGuestCmdline } from '../services/shared/guest/workload.js';
import { createPki, nodeIdentity } from '../services/shared/pki.js';
import { freePort } from '../services/shared/net.js';
import { type CoordinatorProcess, coordinatorEntry, startCoordinatorProcess, startNatsProcess, stopChild } from '../services/testbed/cluster.js';
import { ensureGuestImage } from '../stress/image/build.js';
import { sleep } from '../stress/lab/backend.js';
import { configError, loadConfig } from '../services/shared/config.js';
import { startLabCluster, type LabCluster } from '../stress/lab/cluster.js';
import { DEFAULT_MIGRATION_MTU, MAX_MIGRATION_MTU, MIN_MIGRATION_MTU } from '../services/testbed/addressing.js';
import { startPostgres, type PostgresServer } from '../services/testbed/postgres.js';
import { CoordinatorBackend } from '../stress/lab/coordinator-backend.js';
import { quantile, slotUse } from '../stress/lab/metrics.js';
import { SimCluster } from '../stress/lab/sim-nodes.js';
import { SubmitChild, submitPlans, type LoopDelay, type SubmitReport } from '../stress/lab/submit-client.js';
import type { TurnReport } from '../services/shared/metrics/turns.js';

const MiB = 1024 * 1024;

const { values: opts } = loadConfig(
  {
    parts: { type: 'list', default: ['a', 'b', 'c', 'd'], doc: 'which parts to run (default a,b,c,d)' },
    reps: { type: 'integer', default: 3, min: 1, max: 100, doc: 'repetitions of a and b (default 3)' },
    nodes: { type: 'list', default: ['50', '100', '500'], doc: 'simulated cluster sizes of d (default 50,100,500)' },
    'vms-per-node': { type: 'integer', default: 20, min: 1, max: 10_000, doc: 'VMs per simulated node (default 20)' },
    'max-plans': { type: 'integer', default: 25, min: 0, max: 100_000, doc: 'drain plans per cluster size, each of 2 × vms-per-node VMs; 0: every populated node (default 25)' },
    db: { type: 'list', default: ['sqlite'], doc: "d's store dialects, each run in turn: sqlite, postgres (a throw-away server, services/testbed/postgres.ts) (default sqlite)" },
    'cpu-prof-dir': { type: 'string', default: '', doc: "write a V8 CPU profile of d's coordinator into this directory (node --cpu-prof)" },
    'heartbeat-misses': { type: 'integer', default: 3, min: 1, max: 100, doc: "the coordinator's --heartbeat-misses (default 3, at 2 s)" },
    'bare-stream': { type: 'string', default: 'tls', doc: "part a's bare QMP script: tls (its stream encrypted as the lab's nodes do; they require migration TLS) or clear (default tls)" },
    'log-level': { type: 'string', default: 'info', doc: "the daemons' MIGD_LOG_LEVEL in parts a–c (default info: part a's verification figure and phase table come from their log lines; debug adds every QMP command)" },
    'timelines-json': { type: 'string', default: '', doc: "write part a's per-run timelines (every migd log line and the bare script's steps, ms from the start) to this JSON file" },
    'drain-vms': { type: 'integer', default: 4, min: 2, max: 16, doc: "part c's guests (256 MiB each) drained a → b (default 4)" },
    mtu: { type: 'integer', default: DEFAULT_MIGRATION_MTU, min: MIN_MIGRATION_MTU, max: MAX_MIGRATION_MTU, doc: `MTU of the lab testbed's migration network (mig0, the switch ports, br-mig) that parts a–c share: ${MIN_MIGRATION_MTU}..${MAX_MIGRATION_MTU}, 9000 for jumbo frames (default ${DEFAULT_MIGRATION_MTU})` },
    'drain-json': { type: 'string', default: '', doc: "write part c's per-migration timelines (recorded states, ms after SubmitPlan) to this JSON file" },
    'pg-statements': { type: 'integer', default: 0, min: 0, max: 100, doc: "part d on postgres: print the N statements that took the server longest (pg_stat_statements: calls, total and mean execution time), beside the write connection's wall time (default 0: off)" },
    'pg-pipeline-writes': { type: 'string', default: 'on', doc: "part d on postgres: the coordinator's --db-pipeline-writes, on (a write group's independent writes together on the write connection) or off (default on)" },
    'submit-client': { type: 'string', default: 'process', doc: "where part d's SubmitPlan client runs: process (a child process of its own) or inline (this process, with the simulated nodes, as before 3 Dec 15:00) (default process)" },
  },
  process.argv.slice(2),
);
for (const p of opts.parts) if (!['a', 'b', 'c', 'd'].includes(p)) throw configError('parts', `"${p}" is not a part (a, b, c, d)`);
for (const d of opts.db) if (!['sqlite', 'postgres'].includes(d)) throw configError('db', `"${d}" is not a store dialect (sqlite, postgres)`);
const DBS = opts.db as readonly ('sqlite' | 'postgres')[];
const NODES = opts.nodes.map(Number);
if (NODES.some((n) => !Number.isInteger(n) || n < 1)) throw configError('nodes', 'must be whole numbers of nodes');
const PARTS = new Set(opts.parts);
const REPS = opts.reps;
const VMS_PER_NODE = opts['vms-per-node'];
/** Drain plans submitted per cluster size (each drains one node of 2 × vms-per-node VMs); 0 = every populated node. */
const MAX_PLANS = opts['max-plans'];
/** The coordinator's --heartbeat-misses (its default is 3 at 2 s). */
const HEARTBEAT_MISSES = opts['heartbeat-misses'];
/** Part a's bare script uses TLS like migd's lab nodes. */
if (!['tls', 'clear'].includes(opts['bare-stream'])) throw configError('bare-stream', 'must be tls or clear');
const BARE_TLS = opts['bare-stream'] === 'tls';
if (!['on', 'off'].includes(opts['pg-pipeline-writes'])) throw configError('pg-pipeline-writes', 'must be on or off');
if (!['process', 'inline'].includes(opts['submit-client'])) throw configError('submit-client', 'must be process or inline');
/** Part d's SubmitPlan client runs in a child process of its own (not on the simulated nodes' event loop). */
const SUBMIT_IN_CHILD = opts['submit-client'] === 'process';

const fmt = (v: number, d = 2): string => (Number.isFinite(v) ? v.toFixed(d) : '—');
const med = (v: number[]): number => quantile(v, 0.5);
const out = (s: string): void => console.log(s);

const FIXED_PRECOPY = MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_FIXED, downtimeLimitMs: 300 });

function idleSpec(name: string, memoryMib: number, bytesPerWorker: number): VmSpec {
  return VmSpec.fromPartial({
    name,
    memoryMib,
    vcpus: 1,
    accel: 0,
    machineType: '',
    kernelPath: '',
    initrdPath: '',
    extraCmdline: '',
    disks: [],
    // "Idle" for the migration: the region is written once, then one 4 KiB page is rewritten over
    // and over (QEMU sees one dirty page per pass). Not the `idle` pattern: a guest that only
    // heart-beats is never confirmed alive on the destination (GUEST_NOT_ALIVE_ON_DESTINATION).
    workload: { pattern: WorkloadPattern.WORKLOAD_PATTERN_HOTCOLD, workers: 1, bytesPerWorker, rateBytesPerSec: 0, hotBytes: 4096, verify: true, phaseAfterMs: 0, phaseRateBytesPerSec: 0 },
    labels: {},
    antiAffinityGroup: '',
    uuid: '',
    nics: [],
  });
}

// --------------------------------------------------------------------------------------------
// A minimal QMP client: greeting, capabilities, commands, events. The bare baseline of part a.

class MiniQmp {
  private buf = '';
  private waiters: { match: (m: Record<string, unknown>) => boolean; resolve: (m: Record<string, unknown>) => void }[] = [];
  private id = 0;
  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      let i;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i).trim();
        this.buf = this.buf.slice(i + 1);
        if (!line) continue;
        const msg = JSON.parse(line) as Record<string, unknown>;
        const w = this.waiters.findIndex((x) => x.match(msg));
        if (w >= 0) this.waiters.splice(w, 1)[0]!.resolve(msg);
      }
    });
  }

  static async connect(path: string, timeoutMs = 30_000): Promise<MiniQmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const sock = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection(path, () => resolve(s));
          s.once('error', reject);
        });
        const q = new MiniQmp(sock);
        await q.next((m) => 'QMP' in m);
        await q.cmd('qmp_capabilities');
        return q;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await sleep(20);
      }
    }
  }

  /** Resolves with the next message `match` accepts (an event may already be in flight). */
  next(match: (m: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
    return new Promise((resolve) => this.waiters.push({ match, resolve }));
  }

  async cmd(execute: string, args?: Record<string, unknown>): Promise<unknown> {
    const id = ++this.id;
    const reply = this.next((m) => m['id'] === id);
    this.sock.write(JSON.stringify({ execute, arguments: args, id }) + '\n');
    const r = await reply;
    if ('error' in r) throw new Error(`${execute}: ${JSON.stringify(r['error'])}`);
    return r['return'];
  }

  close(): void {
    this.sock.destroy();
  }
}

/** A lab node's state dir (its storage root), where the node keeps QEMU's TLS folder (qemu-tls). */
function nodeStateDir(cluster: LabCluster, host: string): string {
  return dirname(dirname(dirname(cluster.storage.diskPath(host, 'v', 'd'))));
}

/**
 * One bare migration a → b of an idle guest; returns ms from starting the destination QEMU to the
 * guest running there. With `tls` the stream is encrypted as migd's nodes do it (the lab nodes
 * require migration TLS): the nodes' own QEMU TLS folders, the destination's name checked by the
 * source and only the source's certificate admitted by the destination.
 */
async function bareMigration(cluster: LabCluster, dir: string, memoryMib: number, bytesPerWorker: number, tls: boolean): Promise<{ totalMs: number; qemuMs: number; downtimeMs: number; timeline: { offMs: number; who: string; msg: string }[] }> {
  const image = await ensureGuestImage();
  const append = buildGuestCmdline({ pattern: 'hotcold', workers: 1, bytesPerWorker, hotBytes: 4096 }, { guestMemoryBytes: memoryMib * MiB });
  const base = (tag: string): string[] => [
    '-name', `bare-${tag}`, '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-machine', 'pc-i440fx-10.0', '-accel', 'tcg', '-m', `${memoryMib}M`, '-smp', '1',
    '-kernel', image.kernel, '-initrd', image.initrd, '-append', append,
    '-serial', `file:${join(dir, `${tag}.serial`)}`, '-qmp', `unix:${join(dir, `${tag}.qmp`)},server=on,wait=off`,
  ];
  const procs: ChildProcess[] = [];
  const qmps: MiniQmp[] = [];
  try {
    const srcProc = cluster.tb.host('a').spawn('qemu-system-x86_64', base('src'), { stdio: 'ignore' });
    procs.push(srcProc);
    const src = await MiniQmp.connect(join(dir, 'src.qmp'));
    qmps.push(src);
    // Same starting point as the migd run: the guest is up and its workload reporting.
    const serial = join(dir, 'src.serial');
    const deadline = Date.now() + 60_000;
    while (!(existsSync(serial) && readFileSync(serial, 'utf8').includes(' hb '))) {
      if (Date.now() > deadline) throw new Error('bare source guest did not boot');
      await sleep(100);
    }
    const port = 49000 + Math.floor(Math.random() * 1000);
    const t0 = performance.now();
    const timeline: { offMs: number; who: string; msg: string }[] = [];
    const mark = (msg: string): void => void timeline.push({ offMs: performance.now() - t0, who: 'bare', msg });
    const dstProc = cluster.tb.host('b').spawn('qemu-system-x86_64', [...base('dst'), '-incoming', 'defer'], { stdio: 'ignore' });
    procs.push(dstProc);
    const dst = await MiniQmp.connect(join(dir, 'dst.qmp'));
    qmps.push(dst);
    mark('destination QMP connected');
    for (const q of [src, dst]) await q.cmd('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
    const addr = cluster.tb.host('b').migrationAddress;
    if (tls) {
      await src.cmd('object-add', { 'qom-type': 'tls-creds-x509', id: 'tls0', dir: join(nodeStateDir(cluster, 'a'), 'qemu-tls'), endpoint: 'client', 'verify-peer': true });
      await dst.cmd('object-add', { 'qom-type': 'tls-creds-x509', id: 'tls0', dir: join(nodeStateDir(cluster, 'b'), 'qemu-tls'), endpoint: 'server', 'verify-peer': true });
      await dst.cmd('object-add', { 'qom-type': 'authz-simple', id: 'authz0', identity: `CN=${nodeIdentity('a')}` });
      await dst.cmd('migrate-set-parameters', { 'tls-creds': 'tls0', 'tls-authz': 'authz0' });
    }
    await dst.cmd('migrate-incoming', { uri: `tcp:${addr}:${port}` });
    mark('destination listening');
    await src.cmd('migrate-set-parameters', { 'downtime-limit': 300, 'max-bandwidth': 10 * 1024 * MiB, ...(tls ? { 'tls-creds': 'tls0', 'tls-hostname': nodeIdentity('b') } : {}) });
    const resumed = dst.next((m) => m['event'] === 'RESUME').then(() => mark('destination RESUME'));
    const stopped = src.next((m) => m['event'] === 'STOP').then(() => mark('source STOP'));
    const completed = src.next((m) => m['event'] === 'MIGRATION' && (m['data'] as { status?: string }).status === 'completed').then(() => mark('source completed'));
    mark('migrate');
    await src.cmd('migrate', { uri: `tcp:${addr}:${port}` });
    await Promise.all([completed, resumed]);
    const t1 = performance.now();
    void stopped;
    const info = (await src.cmd('query-migrate')) as { 'total-time'?: number; downtime?: number };
    return { totalMs: t1 - t0, qemuMs: info['total-time'] ?? NaN, downtimeMs: info.downtime ?? NaN, timeline };
  } finally {
    for (const q of qmps) q.close();
    for (const p of procs) p.kill('SIGKILL');
    await Promise.all(procs.map((p) => (p.exitCode === null && p.signalCode === null ? new Promise((r) => p.once('exit', r)) : undefined)));
  }
}

/**
 * The daemons' log lines (coordinator and nodes), kept with their parsed time while part a runs,
 * for the phase timeline of each migd migration (--log-level info or debug).
 */
interface LogLine {
  readonly atMs: number;
  readonly who: string;
  readonly msg: string;
  readonly rec: Record<string, unknown>;
}
const logLines: LogLine[] = [];
function tapLog(line: string): void {
  const i = line.indexOf('{');
  if (i < 0) return;
  try {
    const rec = JSON.parse(line.slice(i)) as Record<string, unknown>;
    const atMs = Date.parse(String(rec['t']));
    if (!Number.isFinite(atMs)) return;
    const prefix = line.slice(0, i).replace(/[[\]]/g, '').trim();
    const who = prefix.startsWith('node ') ? prefix : String(rec['component'] ?? prefix);
    const detail =
      rec['msg'] === 'QMP >' || rec['msg'] === 'QMP <'
        ? ` ${String(rec['command'])}`
        : rec['msg'] === 'QMP event'
          ? ` ${String(rec['event'])}${rec['status'] !== undefined ? ` ${String(rec['status'])}` : ''}`
          : rec['msg'] === 'migration state'
            ? ` → ${String(rec['to'])}`
            : '';
    logLines.push({ atMs, who, msg: `${String(rec['msg'])}${detail}`, rec });
    if (logLines.length > 200_000) logLines.splice(0, 100_000);
  } catch {
    // not a JSON log line
  }
}

interface MigdFigures {
  totalMs: number;
  qemuMs: number;
  downtimeMs: number;
  transferred: number;
  setupMs: number;
  /** Destination: ms from the guest's resume there to the handover confirmed (in-guest proof and host checks); NaN without logs. */
  confirmMs: number;
  /** Destination: ms from the guest's resume there to its workload proving pages verified there. */
  provenMs: number;
  /** Log lines of this migration, ms from SubmitPlan. */
  timeline: { offMs: number; who: string; msg: string }[];
}

/** One migd migration of a fresh idle guest a → b; returns wall ms from SubmitPlan to RunCompleted and the run's stats. */
async function migdMigration(cb: CoordinatorBackend, name: string, memoryMib: number, bytesPerWorker: number): Promise<MigdFigures> {
  await cb.createVm(idleSpec(name, memoryMib, bytesPerWorker), 'a');
  try {
    await cb.waitGuest(name, { minSamples: 2, minMs: 2000, timeoutMs: 60_000 });
    const from = logLines.length;
    const wall0 = Date.now();
    const t0 = performance.now();
    const r = await cb.migrate({ key: `bench.${name}`, vmName: name, memoryMib, sourceNodeId: 'a', destinationNodeId: 'b', policy: FIXED_PRECOPY, label: 'bench', timeLimitMs: 300_000 });
    const t1 = performance.now();
    const run = (await cb.client.getRun({ runId: r.runId })).run!;
    if (r.outcome !== 'succeeded') throw new Error(`migd migration ${name} ${r.outcome}: ${run.error?.reason ?? ''} ${run.error?.message ?? ''}`);
    const s = run.stats!;
    await sleep(200); // the last log lines
    const mine = logLines.slice(from).filter((l) => l.atMs >= wall0 - 5 && l.atMs <= wall0 + (t1 - t0) + 100);
    const confirmed = mine.find((l) => l.msg === 'guest confirmed on the destination');
    return {
      totalMs: t1 - t0,
      qemuMs: Number(s.totalTimeMs),
      downtimeMs: Number(s.downtimeMs),
      transferred: Number(s.transferredBytes),
      setupMs: Number(s.setupTimeMs),
      confirmMs: Number(confirmed?.rec['confirmedAfterResumeMs'] ?? NaN),
      provenMs: Number(confirmed?.rec['workloadProvenAfterResumeMs'] ?? NaN),
      timeline: [...mine.map((l) => ({ offMs: l.atMs - wall0, who: l.who, msg: l.msg })), { offMs: t1 - t0, who: 'bench', msg: 'RunCompleted received' }],
    };
  } finally {
    await cb.destroyVm(name).catch(() => undefined);
  }
}

const mmm = (v: number[], d = 0): string => `${fmt(Math.min(...v), d)} / ${fmt(med(v), d)} / ${fmt(Math.max(...v), d)}`;

async function partA(cluster: LabCluster, cb: CoordinatorBackend): Promise<void> {
  out(`\n== a. control-plane overhead: migd vs a bare QMP script (256 MiB idle guest, 64 MiB written, 1 Gbit/s link; runs interleaved, order alternating; the bare stream ${BARE_TLS ? 'with TLS as migd\'s lab nodes (--require-migration-tls)' : 'in clear while migd\'s lab nodes use TLS'})`);
  await cluster.tb.shape('a', { rateMbit: 1000 });
  await cluster.tb.shape('b', { rateMbit: 1000 });
  const dir = await mkdtemp(join(tmpdir(), 'migd-bare-'));
  const migd: number[] = [];
  const migdNoVerify: number[] = [];
  const bare: number[] = [];
  const ratios: number[] = [];
  const ratiosNoVerify: number[] = [];
  const migdQemu: number[] = [];
  const bareQemu: number[] = [];
  const confirm: number[] = [];
  const proven: number[] = [];
  const timelines: MigdFigures['timeline'][] = [];
  const bareTimelines: MigdFigures['timeline'][] = [];
  const pairs: { migd: MigdFigures['timeline']; bare: MigdFigures['timeline'] }[] = [];
  try {
    for (let i = 0; i < REPS; i++) {
      // A B, then B A: a drift of the machine's speed weighs on both sides alike.
      let m: MigdFigures | undefined;
      let b: Awaited<ReturnType<typeof bareMigration>> | undefined;
      for (const side of i % 2 === 0 ? ['migd', 'bare'] : ['bare', 'migd']) {
        if (side === 'migd') m = await migdMigration(cb, `bench-a-${i}-${process.pid}`, 256, 64 * MiB);
        else b = await bareMigration(cluster, dir, 256, 64 * MiB, BARE_TLS);
      }
      const noVerify = m!.totalMs - (Number.isFinite(m!.confirmMs) ? m!.confirmMs : 0);
      migd.push(m!.totalMs);
      migdNoVerify.push(noVerify);
      bare.push(b!.totalMs);
      ratios.push(m!.totalMs / b!.totalMs);
      ratiosNoVerify.push(noVerify / b!.totalMs);
      migdQemu.push(m!.qemuMs);
      bareQemu.push(b!.qemuMs);
      confirm.push(m!.confirmMs);
      proven.push(m!.provenMs);
      timelines.push(m!.timeline);
      bareTimelines.push(b!.timeline);
      pairs.push({ migd: m!.timeline, bare: b!.timeline });
      out(`  rep ${i + 1}: migd ${fmt(m!.totalMs, 0)} ms (without verification ${fmt(noVerify, 0)} ms; QEMU ${m!.qemuMs} ms, downtime ${m!.downtimeMs} ms; verification ${fmt(m!.confirmMs, 0)} ms, workload proof ${fmt(m!.provenMs, 0)} ms) · bare ${fmt(b!.totalMs, 0)} ms (QEMU ${b!.qemuMs} ms, downtime ${b!.downtimeMs} ms)`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  out('  figure                                    min / median / max');
  out(`  migd, SubmitPlan → RunCompleted (ms)      ${mmm(migd)}`);
  out(`  migd without the verification (ms)        ${mmm(migdNoVerify)}`);
  out(`  bare QMP script (ms)                      ${mmm(bare)}`);
  out(`  ratio migd/bare, pair by pair             ${mmm(ratios, 2)}`);
  out(`  ratio without verification, pair by pair  ${mmm(ratiosNoVerify, 2)}   (issue 15 goal ≤ 1.10)`);
  out(`  verification after the resume (ms)        ${mmm(confirm)}   (p50 goal ≤ 300 ms; resume → handover confirmed on the destination)`);
  out(`    of which the workload's proof (ms)      ${mmm(proven)}`);
  out(`  QEMU's own total-time: migd ${fmt(med(migdQemu), 0)} ms, bare ${fmt(med(bareQemu), 0)} ms; control-plane overhead without verification ${fmt(med(migdNoVerify) - med(bare), 0)} ms per migration`);
  if (timelines.some((t) => t.length > 0)) printPhases(timelines);
  out('  phases of the bare script (ms after starting the destination QEMU):');
  printPhases(bareTimelines);
  if (opts['timelines-json']) await writeFile(opts['timelines-json'], JSON.stringify(pairs, null, 1));
}

/**
 * The migd migrations' log lines as phases: for each (daemon, message) the median time from
 * SubmitPlan of its first occurrence, in order, with the gap from the line before.
 */
function printPhases(timelines: MigdFigures['timeline'][]): void {
  const firsts = new Map<string, number[]>();
  for (const t of timelines) {
    const seen = new Set<string>();
    for (const l of t) {
      const k = `${l.who}: ${l.msg}`;
      if (seen.has(k)) continue;
      seen.add(k);
      firsts.set(k, [...(firsts.get(k) ?? []), l.offMs]);
    }
  }
  const rows = [...firsts.entries()].filter(([, v]) => v.length * 2 >= timelines.length).map(([k, v]) => ({ k, at: med(v), n: v.length })).sort((a, b) => a.at - b.at);
  if (timelines[0]?.[0]?.who !== 'bare') out(`  phases of the migd migrations (log lines; median ms after SubmitPlan of each line's first occurrence, gap from the line before, ${timelines.length} runs):`);
  let prev = 0;
  for (const r of rows) {
    out(`    ${fmt(r.at, 0).padStart(6)}  +${fmt(r.at - prev, 0).padStart(5)}  ${r.k}${r.n < timelines.length ? ` (${r.n} runs)` : ''}`);
    prev = r.at;
  }
}

async function partB(cluster: LabCluster, cb: CoordinatorBackend): Promise<void> {
  out('\n== b. wire efficiency: idle guest (512 MiB, 256 MiB written) migration bytes/s vs the shaped link');
  for (const mbit of [100, 300]) {
    await cluster.tb.shape('a', { rateMbit: mbit });
    await cluster.tb.shape('b', { rateMbit: mbit });
    const eff: number[] = [];
    for (let i = 0; i < Math.max(1, Math.min(REPS, 2)); i++) {
      const m = await migdMigration(cb, `bench-b-${mbit}-${i}-${process.pid}`, 512, 256 * MiB);
      const bps = m.transferred / ((m.qemuMs - m.setupMs) / 1000);
      const link = (mbit * 1e6) / 8;
      eff.push(bps / link);
      out(`  ${mbit} Mbit/s rep ${i + 1}: ${fmt(m.transferred / MiB, 1)} MiB in ${m.qemuMs} ms (setup ${m.setupMs} ms) = ${fmt((bps * 8) / 1e6, 1)} Mbit/s → ${fmt(bps / link, 3)} of the link`);
    }
    out(`  ${mbit} Mbit/s: median efficiency ${fmt(med(eff), 3)} (migration bytes/s ÷ link bytes/s)`);
  }
}

/** One drain run's timeline: ms after SubmitPlan of each recorded state and of its end. */
interface DrainRunTimeline {
  readonly vm: string;
  readonly runId: string;
  /** State name (PREPARING, SETUP, PRECOPY, SWITCHOVER, VERIFYING, …) → ms after SubmitPlan of its first entry. */
  readonly states: Record<string, number>;
  readonly finishedMs: number;
  readonly transferredBytes: number;
  /** The stream on the link: SETUP (or PRECOPY) → VERIFYING (QEMU `completed` on the source). */
  readonly streamFromMs: number;
  readonly streamToMs: number;
}

/** Total length of the union of intervals (ms). */
function unionMs(intervals: readonly [number, number][]): number {
  const sorted = [...intervals].filter(([a, b]) => Number.isFinite(a) && Number.isFinite(b) && b > a).sort((x, y) => x[0] - y[0]);
  let total = 0;
  let curA = -Infinity;
  let curB = -Infinity;
  for (const [a, b] of sorted) {
    if (a > curB) {
      if (curB > curA) total += curB - curA;
      curA = a;
      curB = b;
    } else curB = Math.max(curB, b);
  }
  if (curB > curA) total += curB - curA;
  return total;
}

/** A plan's end as a Watch stream delivered it: performance.now() on arrival, and the event's recorded time. */
interface PlanEndSeen {
  readonly state: string;
  readonly at: number;
  readonly time: Date | undefined;
}

/**
 * Follows the cluster's Watch stream (states only) for plan state events, from before the plan is
 * submitted: the plan's end is seen when its event arrives, not at the next GetPlan poll (part c
 * polled every 200 ms, adding 0–200 ms plus a call to every makespan). `ended(id)` resolves with
 * the first end of plan `id` (any state but RUNNING), or undefined when the stream breaks.
 */
function watchPlanEnds(cb: CoordinatorBackend): { ended: (planId: string) => Promise<PlanEndSeen | undefined>; close: () => void } {
  const ac = new AbortController();
  const seen = new Map<string, PlanEndSeen>();
  const waiters = new Map<string, (e: PlanEndSeen | undefined) => void>();
  let broken = false;
  void (async () => {
    try {
      for await (const { event } of cb.client.watch({ scope: { $case: 'cluster', value: true }, statesOnly: true }, { signal: ac.signal })) {
        const p = event?.payload;
        if (p?.$case !== 'planState' || p.value.state === 'PLAN_STATE_RUNNING' || seen.has(p.value.planId)) continue;
        const e = { state: p.value.state, at: performance.now(), time: event!.time };
        seen.set(p.value.planId, e);
        waiters.get(p.value.planId)?.(e);
      }
    } catch {
      // aborted, or the stream broke: the caller falls back to GetPlan
    }
    broken = true;
    for (const w of waiters.values()) w(undefined);
  })();
  return {
    ended: (planId) => {
      const e = seen.get(planId);
      if (e || broken) return Promise.resolve(e);
      return new Promise((resolve) => waiters.set(planId, resolve));
    },
    close: () => ac.abort(),
  };
}

/**
 * What the shaper has sent on a host's migration egress so far: the root HTB qdisc's byte and
 * packet counters on mig0. They count whole frames as the rate limit does (Ethernet header
 * included, GSO super-packets as their segments), so a drain's difference is the wire volume its
 * streams cost, against QEMU's payload bytes.
 */
async function wireCount(cluster: LabCluster, host: string): Promise<{ bytes: number; frames: number }> {
  const h = cluster.tb.host(host);
  const r = await h.exec('tc', ['-s', '-j', 'qdisc', 'show', 'dev', h.migrationInterface]);
  const root = (JSON.parse(r.stdout) as { root?: boolean; bytes?: number; packets?: number }[]).find((q) => q.root);
  if (root?.bytes === undefined || root.packets === undefined) throw new Error(`no root qdisc counters on ${host}'s ${h.migrationInterface}: ${r.stdout}`);
  return { bytes: root.bytes, frames: root.packets };
}

async function partC(cluster: LabCluster, cb: CoordinatorBackend): Promise<void> {
  const k = opts['drain-vms'];
  const mbit = 300;
  // The MTU as the kernel reports it on the source's migration interface, not just the option:
  // the shaper counts whole frames, so the figure below depends on it.
  const mig = cluster.tb.host('a');
  const link = await mig.exec('ip', ['-j', 'link', 'show', 'dev', mig.migrationInterface]);
  const kernelMtu = (JSON.parse(link.stdout) as { mtu?: number }[])[0]?.mtu;
  out(`\n== c. drain makespan vs total bytes ÷ bandwidth (${k} idle guests of 256 MiB, 128 MiB written, ${mbit} Mbit/s, migration MTU ${cluster.tb.migrationMtu}; ${mig.migrationInterface} on a reports ${kernelMtu ?? '?'})`);
  await cluster.tb.shape('a', { rateMbit: mbit });
  await cluster.tb.shape('b', { rateMbit: mbit });
  const names = Array.from({ length: k }, (_, i) => `bench-c-${i}-${process.pid}`);
  try {
    for (const n of names) await cb.createVm(idleSpec(n, 256, 128 * MiB), 'a');
    for (const n of names) await cb.waitGuest(n, { minSamples: 2, minMs: 2000, timeoutMs: 90_000 });
    // The plan's end is seen on the Watch stream (opened before SubmitPlan); a GetPlan poll every
    // second stays as the fallback should the stream break.
    const planEnds = watchPlanEnds(cb);
    await sleep(200); // the stream's subscription is in place long before any plan of ours ends; this only keeps its setup out of the timed part
    const wire0 = await wireCount(cluster, 'a');
    const wall0 = Date.now();
    const t0 = performance.now();
    const { plan } = await cb.client.submitPlan({ idempotencyKey: `bench-c-${process.pid}`, target: { $case: 'drain', value: { nodeId: 'a', destinationNodeIds: ['b'] } }, policy: FIXED_PRECOPY, priority: 0, antiAffinityVmNames: [], label: 'bench-drain' });
    let endAt: number | undefined;
    let seenBy = 'the Watch stream';
    let endEvent: PlanEndSeen | undefined;
    if (plan!.state === PlanState.PLAN_STATE_RUNNING) {
      let polled = false;
      const poll = (async () => {
        while (endAt === undefined) {
          await sleep(1000);
          if (endAt !== undefined) return;
          const st = await cb.client.getPlan({ planId: plan!.id }).then((r) => r.plan!.state, () => PlanState.PLAN_STATE_RUNNING);
          if (st !== PlanState.PLAN_STATE_RUNNING && endAt === undefined) {
            polled = true;
            endAt = performance.now();
          }
        }
      })();
      endEvent = await Promise.race([planEnds.ended(plan!.id), poll.then(() => undefined)]);
      if (endEvent && endAt === undefined) endAt = endEvent.at;
      else {
        await poll;
        if (polled) seenBy = 'a GetPlan poll (the Watch stream broke or lagged)';
      }
    } else endAt = performance.now();
    planEnds.close();
    const makespan = endAt! - t0;
    const wire1 = await wireCount(cluster, 'a');
    const wire = { bytes: wire1.bytes - wire0.bytes, frames: wire1.frames - wire0.frames };
    let bytes = 0;
    let qemu = 0;
    const runs: DrainRunTimeline[] = [];
    for (const m of plan!.migrations) {
      const run = (await cb.client.getRun({ runId: m.runId })).run!;
      if (run.state !== MigrationState.MIGRATION_STATE_SUCCEEDED) throw new Error(`drain run ${m.runId} ${MigrationState[run.state]}`);
      bytes += Number(run.stats?.transferredBytes ?? 0);
      qemu += Number(run.stats?.totalTimeMs ?? 0);
      const states: Record<string, number> = {};
      for (const tr of run.transitions) {
        const name = MigrationState[tr.to].replace('MIGRATION_STATE_', '');
        if (tr.time && states[name] === undefined) states[name] = tr.time.getTime() - wall0;
      }
      const finishedMs = (run.finishedAt?.getTime() ?? NaN) - wall0;
      runs.push({
        vm: run.vmName,
        runId: run.id,
        states,
        finishedMs,
        transferredBytes: Number(run.stats?.transferredBytes ?? 0),
        streamFromMs: states['SETUP'] ?? states['PRECOPY'] ?? NaN,
        streamToMs: states['VERIFYING'] ?? finishedMs,
      });
    }
    runs.sort((a, b) => a.streamFromMs - b.streamFromMs);
    const bound = (bytes / ((mbit * 1e6) / 8)) * 1000;
    out(`  ${plan!.migrations.length} migrations (${plan!.orderingReason}); ${fmt(bytes / MiB, 1)} MiB sent`);
    out(`  makespan ${fmt(makespan / 1000, 2)} s vs bytes÷bandwidth ${fmt(bound / 1000, 2)} s → ratio ${fmt(makespan / bound)} (sum of QEMU migration times ${fmt(qemu / 1000, 2)} s)`);
    out(`    (SubmitPlan sent → the plan's end seen through ${seenBy}${endEvent?.time ? `; the end was recorded at ${fmt(endEvent.time.getTime() - wall0, 0)} ms` : ''})`);
    // The bound counts QEMU's payload; the shaper counts frames (TCP/IP/Ethernet headers, TLS
    // records). Wire bytes ÷ bandwidth is the least time the link itself needs for this drain.
    const wireBound = (wire.bytes / ((mbit * 1e6) / 8)) * 1000;
    out(`  on the wire (HTB's count on a's ${cluster.tb.host('a').migrationInterface}, MTU ${cluster.tb.migrationMtu}): ${fmt(wire.bytes / MiB, 1)} MiB in ${wire.frames} frames (mean ${fmt(wire.bytes / Math.max(1, wire.frames), 0)} B) = ${fmt(wire.bytes / bytes, 4)} × the payload bytes; wire bytes ÷ bandwidth ${fmt(wireBound / 1000, 2)} s → makespan ÷ that ${fmt(makespan / wireBound)}`);
    // Per-migration timelines (the coordinator's recorded transitions, with the node's times).
    const cols = ['PREPARING', 'SETUP', 'PRECOPY', 'SWITCHOVER', 'VERIFYING'];
    out(`  per migration, ms after SubmitPlan: ${cols.join(' / ')} / ended; MiB sent`);
    for (const r of runs) out(`    ${r.vm.padEnd(24)} ${cols.map((c) => fmt(r.states[c] ?? NaN, 0).padStart(6)).join(' ')} ${fmt(r.finishedMs, 0).padStart(6)}  ${fmt(r.transferredBytes / MiB, 1)}`);
    const streaming = unionMs(runs.map((r) => [r.streamFromMs, r.streamToMs]));
    out(`  the link carried a stream ${fmt(streaming / 1000, 2)} s of the ${fmt(makespan / 1000, 2)} s; idle ${fmt((makespan - streaming) / 1000, 2)} s`);
    out(`    before the first stream ${fmt(runs[0]?.streamFromMs ?? NaN, 0)} ms (SubmitPlan → SETUP); after the last ${fmt(makespan - Math.max(...runs.map((r) => r.streamToMs)), 0)} ms (its VERIFYING → plan SUCCEEDED seen; its end recorded ${fmt(Math.max(...runs.map((r) => r.finishedMs)) - Math.max(...runs.map((r) => r.streamToMs)), 0)} ms after its VERIFYING)`);
    out('    between streams (ms): previous VERIFYING → its end (handover, verification) | previous end → next PREPARING (dispatch) | next PREPARING → next SETUP (destination prepared) | gap on the link');
    for (let i = 1; i < runs.length; i++) {
      const p = runs[i - 1]!;
      const n = runs[i]!;
      const prep = n.states['PREPARING'] ?? NaN;
      out(`      ${i}→${i + 1}: ${fmt(p.finishedMs - p.streamToMs, 0).padStart(6)} | ${fmt(prep - p.finishedMs, 0).padStart(6)} | ${fmt(n.streamFromMs - prep, 0).padStart(6)} | ${fmt(n.streamFromMs - p.streamToMs, 0).padStart(6)}`);
    }
    // The daemons' log lines around the drain's two fixed ends (the first run's preparation, the
    // last run's handover and verification), ms after SubmitPlan (--log-level debug adds QMP).
    const first = runs[0];
    const last = runs.reduce((a, b) => (b.streamToMs > a.streamToMs ? b : a), runs[0]!);
    const linesOf = (runId: string | undefined, from: number, to: number): { offMs: number; who: string; msg: string; rec: Record<string, unknown> }[] =>
      logLines
        .filter((l) => l.atMs - wall0 >= from && l.atMs - wall0 <= to && (runId === undefined || l.rec['runId'] === undefined || l.rec['runId'] === runId))
        .map((l) => ({ offMs: l.atMs - wall0, who: l.who, msg: l.msg, rec: l.rec }));
    const ends = { firstPreparation: linesOf(first?.runId, -5, (first?.streamFromMs ?? 0) + 50), lastEnd: linesOf(last?.runId, (last?.streamToMs ?? 0) - 50, makespan + 50) };
    if (opts['drain-json']) await writeFile(opts['drain-json'], JSON.stringify({ makespanMs: makespan, boundMs: bound, bytes, migrationMtu: cluster.tb.migrationMtu, wireBytes: wire.bytes, wireFrames: wire.frames, runs, ends }, null, 1));
  } finally {
    for (const n of names) await cb.destroyVm(n).catch(() => undefined);
  }
}

// --------------------------------------------------------------------------------------------
// d. scale with simulated nodes

/** Root-namespace services started here, killed if the process exits early. */
const started = new Set<ChildProcess>();
const workDirs = new Set<string>();
process.once('exit', () => {
  for (const p of started) p.kill('SIGKILL');
  for (const d of workDirs) rmSync(d, { recursive: true, force: true });
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));

/** Issue 15 §4's scale figures: what it measured before this work, and the goal. */
const SCALE_GOALS = [
  { figure: 'bound ÷ makespan', today: 0.58, goal: 0.9, better: 'higher', unit: '', digits: 2 },
  { figure: 'SubmitPlan p99', today: 850, goal: 100, better: 'lower', unit: ' ms', digits: 0 },
  { figure: 'coordinator CPU per migration', today: 0.09, goal: 0.01, better: 'lower', unit: ' s', digits: 3 },
] as const;

/** How the drain used its slots (stress/lab/metrics.ts slotUse): ramp, steady gaps, tail. */
function printSlotUse(intervals: readonly (readonly [number, number])[], from: number, to: number, concurrency: number, submittedAt: number): void {
  const u = slotUse(intervals, from, to, concurrency);
  const s = (ms: number): string => fmt(ms / 1000, 2);
  out(
    `    slots (${concurrency}): in use ${fmt(u.use * 100, 1)} % of the makespan; 95 % in use from ${s(u.fullAtMs)} s (last plan answered at ${s(submittedAt - from)} s), last start at ${s(u.lastStartMs)} s; slot time lost: ramp ${s(u.lost.ramp)} s, steady ${s(u.lost.steady)} s (${fmt(u.steadyStarts > 0 ? u.lost.steady / u.steadyStarts : NaN, 0)} ms per start), tail ${s(u.lost.tail)} s (÷ ${concurrency} slots: ${s(u.lost.ramp / concurrency)} + ${s(u.lost.steady / concurrency)} + ${s(u.lost.tail / concurrency)} s of makespan)`,
  );
}

/** Cumulative turn figures of the coordinator's write connection, polled at `at` (epoch ms). */
interface PolledTurns {
  at: number;
  groups: number;
  writes: number;
  statements: number;
  busyMs: number;
  firstWrites: number;
  gcMs: number;
  /** The coordinator's event loop busy and idle so far (ms; 0 from a coordinator without them). */
  loopActiveMs: number;
  loopIdleMs: number;
}

/** Polls the coordinator's /debug/turns every second until stopped (the ramp's write-connection figures). */
function pollTurns(url: string): { stop: () => PolledTurns[] } {
  const polled: PolledTurns[] = [];
  let stopped = false;
  void (async () => {
    while (!stopped) {
      const at = Date.now();
      const r = await turnReport(url);
      if (r) {
        const c = (name: string) => r.causes.find((x) => x.cause === name);
        const g = c('store.group-commit');
        polled.push({ at, groups: g?.count ?? 0, writes: (g?.sizeMean ?? 0) * (g?.count ?? 0), statements: (c('store.group-commit statements')?.sizeMean ?? 0) * (c('store.group-commit statements')?.count ?? 0), busyMs: g?.totalMs ?? 0, firstWrites: c('store.write-wait first')?.count ?? 0, gcMs: c('gc')?.totalMs ?? 0, loopActiveMs: r.loopUse?.activeMs ?? 0, loopIdleMs: r.loopUse?.idleMs ?? 0 });
      }
      await sleep(Math.max(0, 1000 - (Date.now() - at)));
    }
  })();
  return {
    stop: () => {
      stopped = true;
      return polled;
    },
  };
}

/**
 * The ramp second by second: plans answered, runs announced to their destination (ExpectIncoming,
 * sent as the run's dispatch write begins) and migrations started (StartMigration, after that write
 * committed), and the slots in use at the end of each second. A dispatch decided in time but started
 * late is the write queue; one announced late is the run manager or the coordinator's loop.
 */
function printRamp(from: number, fullAtMs: number, answeredAt: readonly number[], announcedAt: readonly number[], intervals: readonly (readonly [number, number])[], polled: readonly PolledTurns[]): void {
  const secs = Math.min(20, Math.ceil(fullAtMs / 1000) + 1);
  const bin = (ts: readonly number[], k: number): number => ts.filter((t) => t - from >= k * 1000 && t - from < (k + 1) * 1000).length;
  const starts = intervals.map(([a]) => a);
  const rows: string[] = [];
  for (let k = 0; k < secs; k++) {
    const at = from + (k + 1) * 1000;
    const inUse = intervals.filter(([a, b]) => a <= at && (b < 0 || b > at)).length;
    // The write connection in this second: the polled turn figures nearest to its start and end.
    const near = (t: number): PolledTurns | undefined => polled.reduce<PolledTurns | undefined>((b, p) => (b === undefined || Math.abs(p.at - t) < Math.abs(b.at - t) ? p : b), undefined);
    const a = near(at - 1000);
    const b = near(at);
    const d = (f: (p: PolledTurns) => number): string => (a && b && b !== a ? fmt(f(b) - f(a), 0) : '–');
    // The coordinator's event loop busy in this second (eventLoopUtilization), %.
    const loop = a && b && b !== a && b.loopActiveMs + b.loopIdleMs > a.loopActiveMs + a.loopIdleMs ? fmt((100 * (b.loopActiveMs - a.loopActiveMs)) / (b.loopActiveMs + b.loopIdleMs - a.loopActiveMs - a.loopIdleMs), 0) : '–';
    rows.push(
      `${String(k).padStart(3)}–${String(k + 1).padEnd(3)} ${String(bin(answeredAt, k)).padStart(6)} ${String(bin(announcedAt, k)).padStart(10)} ${String(bin(starts, k)).padStart(8)} ${String(inUse).padStart(8)}   ${d((p) => p.groups).padStart(6)} ${d((p) => p.writes).padStart(6)} ${d((p) => p.statements).padStart(6)} ${d((p) => p.busyMs).padStart(7)} ${d((p) => p.firstWrites).padStart(6)} ${d((p) => p.gcMs).padStart(6)} ${loop.padStart(6)}`,
    );
  }
  out('    ramp, per second since the first SubmitPlan:   s  plans  announced  started  in use (at its end)   groups writes  stmts busy ms firsts  gc ms loop %');
  for (const r of rows) out(`      ${r}`);
}

/** Prints this run's figures beside issue 15's "today" and its goal. */
function printScaleGoals(label: string, measured: readonly number[]): void {
  out(`    ${label}: issue 15 today vs this run vs goal`);
  SCALE_GOALS.forEach((g, i) => {
    const v = measured[i] ?? NaN;
    const met = g.better === 'higher' ? v >= g.goal : v <= g.goal;
    const cmp = g.better === 'higher' ? '≥' : '≤';
    out(`      ${g.figure.padEnd(30)} ${`${fmt(g.today, g.digits)}${g.unit}`.padStart(10)}  ${`${fmt(v, g.digits)}${g.unit}`.padStart(10)}  goal ${cmp} ${fmt(g.goal, g.digits)}${g.unit}  ${Number.isFinite(v) ? (met ? 'met' : 'not met') : ''}`);
  });
}

async function partD(): Promise<void> {
  for (const db of DBS) await partDOn(db);
}

async function partDOn(dialect: 'sqlite' | 'postgres'): Promise<void> {
  coordinatorEntry(); // throws when not built
  const limits = { cluster: 200, source: 4, destination: 4 };
  const migrationMs = 1000;
  out(`\n== d. control-plane scale on ${dialect}${dialect === 'postgres' ? ` (write pipeline ${opts['pg-pipeline-writes']})` : ''}: drains over simulated nodes (${VMS_PER_NODE} VMs per node: ${VMS_PER_NODE * 2} on each of the first half, drained to the second half; simulated migrations of ${migrationMs} ms; limits cluster ${limits.cluster}, per source ${limits.source}, per destination ${limits.destination})`);
  out(`  (heartbeats every 2 s, a node is down after ${HEARTBEAT_MISSES} misses)`);
  out(`  (${MAX_PLANS > 0 ? `at most ${MAX_PLANS} drain plans per size` : 'every populated node drained'}; bound = ceil(migrations ÷ concurrency) × migration time)`);
  out('  nodes   VMs  plans  SubmitPlan p50/p99 ms  plans/s  migrations planned/s  makespan s  bound s  bound/makespan  coordinator CPU s');
  for (const n of NODES) {
    const work = await mkdtemp(join(tmpdir(), 'migd-scale-'));
    workDirs.add(work);
    const certDir = join(work, 'pki');
    createPki(certDir);
    let nats: ChildProcess | undefined;
    let coord: CoordinatorProcess | undefined;
    let sim: SimCluster | undefined;
    let cb: CoordinatorBackend | undefined;
    let downs = 0;
    /** Connections the coordinator refused (its per-address limit: the simulated nodes share 127.0.0.1). */
    let refused = 0;
    const downLines: string[] = [];
    /** Who missed the heartbeats: the simulator (its sends late) or the coordinator (answers late). */
    const heartbeatReport = (): void => {
      if (!sim) return;
      const rtt = sim.heartbeatRttMs;
      if (refused > 0) out(`    (the coordinator refused ${refused} connections: connection limit)`);
      out(`    heartbeats: longest gap between two sends of one simulated node ${fmt(sim.maxSendGapMs / 1000, 1)} s (the simulator's lateness; down after ${2 * HEARTBEAT_MISSES} s); round trip p50/p99/max ${fmt(quantile(rtt, 0.5), 0)} / ${fmt(quantile(rtt, 0.99), 0)} / ${fmt(rtt.reduce((a, b) => Math.max(a, b), 0), 0)} ms (the coordinator's)${stallMs > 0 ? `; the coordinator stalled ${fmt(stallMs / 1000, 1)} s in all and extended the deadlines by as much` : ''}`);
    };
    /** The coordinator's own stalls (≥ 1 s each) for which it extended the heartbeat deadlines. */
    let stallMs = 0;
    let benchLoop: IntervalHistogram | undefined;
    let submitted: SubmitReport | undefined;
    let submitter: SubmitChild | undefined;
    let pg: PostgresServer | undefined;
    try {
      if (dialect === 'postgres') pg = await startPostgres(opts['pg-statements'] > 0 ? { settings: { shared_preload_libraries: 'pg_stat_statements', 'pg_stat_statements.track': 'all' } } : {});
      const dbUrl = pg ? await pg.createDatabase() : undefined;
      if (dbUrl && opts['pg-statements'] > 0) await pgQuery(dbUrl, 'CREATE EXTENSION pg_stat_statements');
      const natsProc = await startNatsProcess(join(work, 'nats'));
      nats = natsProc.process;
      started.add(nats);
      const port = await freePort('127.0.0.1');
      const addr = `127.0.0.1:${port}`;
      // The metrics endpoint turns the coordinator's turn profiler on (services/shared/metrics/turns.ts).
      const metricsAddr = `127.0.0.1:${await freePort('127.0.0.1')}`;
      coord = await startCoordinatorProcess({
        listen: addr,
        db: dbUrl ?? join(work, 'history.sqlite'),
        nats: natsProc.url,
        certDir,
        nodeArgs: opts['cpu-prof-dir'] ? ['--cpu-prof', '--cpu-prof-dir', opts['cpu-prof-dir']] : [],
        args: ['--limit-per-cluster', String(limits.cluster), '--limit-per-source', String(limits.source), '--limit-per-destination', String(limits.destination), '--heartbeat-misses', String(HEARTBEAT_MISSES), '--allow-shared-node-identity', '--metrics-listen', metricsAddr, ...(dbUrl && opts['pg-pipeline-writes'] === 'off' ? ['--db-pipeline-writes', 'off'] : [])],
        onLog: (l) => {
          if (l.includes('connection refused')) refused++;
          if (l.includes('node marked down')) {
            downs++;
            if (downLines.length < 3) downLines.push(l.slice(l.indexOf('{')));
          }
          if (l.includes('totalStallMs') || l.includes('coordinatorStallMs')) stallMs = Math.max(stallMs, Number(/"(?:totalStallMs|coordinatorStallMs)":(\d+)/.exec(l)?.[1] ?? 0));
        },
      });
      started.add(coord.process);
      // Half the nodes hold the VMs (2 × vmsPerNode each), the other half receive them.
      const old = Math.max(1, Math.floor(n / 2));
      sim = await SimCluster.start({ nodes: n, populated: old, vmsPerNode: VMS_PER_NODE * 2, vmMemoryMib: 1024, migrationMs, progressMs: 250, coordinator: addr, certDir });
      cb = new CoordinatorBackend({ address: addr, certDir });
      await cb.waitForNodes(n, 60_000);
      // Let the registry settle: every node has heart-beaten its VMs at least once.
      await sleep(2500);
      // Started and connected before the CPU count starts, as the in-process client was.
      submitter = SUBMIT_IN_CHILD ? await SubmitChild.start(addr, certDir) : undefined;
      const cpu0 = cpuSeconds(coord.process.pid!);
      // CPU and run-queue waits of the coordinator's main thread, Postgres's processes and this one, over the drain.
      const sched0 = schedFigures(coord.process.pid!, pg?.pid);
      // The simulated nodes run in this process: its own event-loop delay is part of every
      // heartbeat's and migration's figure here (and of SubmitPlan's with --submit-client inline).
      benchLoop = monitorEventLoopDelay({ resolution: 10 });
      benchLoop.enable();
      const newNodes = sim.nodeIds.slice(old);
      const requests = sim.nodeIds.slice(0, MAX_PLANS > 0 ? Math.min(old, MAX_PLANS) : old).map((id) => ({
        idempotencyKey: `scale-${n}-${id}`,
        target: { $case: 'drain' as const, value: { nodeId: id, destinationNodeIds: newNodes } },
        policy: FIXED_PRECOPY,
        priority: 0,
        antiAffinityVmNames: [],
        label: 'scale',
      }));
      // The write connection second by second through the ramp (stopped once the slots are full).
      const poller = pollTurns(`http://${metricsAddr}/debug/turns`);
      setTimeout(() => poller.stop(), 15_000).unref();
      const t0 = performance.now();
      submitted = submitter ? await submitter.submit(requests, 60_000) : { timings: await submitPlans(cb.client, requests, 60_000) };
      const timings = submitted.timings;
      const lat = timings.map((t) => t.latencyMs);
      const latByKey = new Map(timings.map((t) => [t.key, t.latencyMs]));
      /** When each SubmitPlan was sent, ms since the epoch (to compare with the coordinator's handler start). */
      const sentAt = new Map(timings.map((t) => [t.key, t.sentAt]));
      const planIds = timings.map((t) => t.planId);
      const planned = timings.reduce((a, t) => a + t.migrations, 0);
      // From the first send (the child connects first) to the last answer.
      const firstSent = timings[0]?.sentAt ?? performance.timeOrigin + t0;
      const submitMs = timings.length > 0 ? timings[timings.length - 1]!.sentAt + timings[timings.length - 1]!.latencyMs - firstSent : performance.now() - t0;
      const total = sim.vmNode.size;
      const deadline = Date.now() + 20 * 60_000;
      // Done when every plan has left RUNNING in the coordinator (failed runs never finish in the
      // simulation), checked every 2 s; the makespan is the last simulated completion.
      let open = planIds.length;
      let failed = 0;
      let lastCheck = 0;
      while (open > 0 && Date.now() < deadline) {
        await sleep(500);
        if (sim.completed < planned && Date.now() - lastCheck < 2000) continue;
        lastCheck = Date.now();
        open = 0;
        failed = 0;
        for (const id of planIds) {
          const st = (await cb.client.getPlan({ planId: id })).plan?.state;
          if (st === PlanState.PLAN_STATE_RUNNING) open++;
          else if (st === PlanState.PLAN_STATE_FAILED) failed++;
        }
      }
      const makespan = sim.lastCompletedAt - firstSent;
      const cpu = cpuSeconds(coord.process.pid!) - cpu0;
      const sched1 = schedFigures(coord.process.pid!, pg?.pid);
      const concurrency = Math.min(limits.cluster, planIds.length * limits.source, newNodes.length * limits.destination);
      const bound = Math.ceil(planned / concurrency) * migrationMs;
      out(
        `  ${String(n).padStart(5)} ${String(total).padStart(5)} ${String(planIds.length).padStart(6)}  ${fmt(quantile(lat, 0.5), 1).padStart(10)} / ${fmt(quantile(lat, 0.99), 1).padEnd(9)} ${fmt(planIds.length / (submitMs / 1000), 1).padStart(8)}  ${fmt(planned / (submitMs / 1000), 0).padStart(20)}  ${fmt(makespan / 1000, 1).padStart(10)}  ${fmt(bound / 1000, 1).padStart(7)}  ${fmt(bound / makespan, 3).padStart(14)}  ${fmt(cpu, 1).padStart(17)}`,
      );
      printSlotUse(sim.intervals, firstSent, sim.lastCompletedAt, concurrency, firstSent + submitMs);
      printRamp(firstSent, slotUse(sim.intervals, firstSent, sim.lastCompletedAt, concurrency).fullAtMs, timings.map((t) => t.sentAt + t.latencyMs), sim.announcedAt, sim.intervals, poller.stop());
      if (sim.completed < planned) out(`    (only ${sim.completed}/${planned} migrations completed before the deadline)`);
      if (failed > 0) out(`    (${failed} plan(s) failed)`);
      if (downs > 0) out(`    (the coordinator marked nodes down ${downs} times: heartbeats were not served in time)`);
      if (sim.heartbeatErrors > 0) out(`    (${sim.heartbeatErrors} heartbeats failed)`);
      heartbeatReport();
      const report = await turnReport(`http://${metricsAddr}/debug/turns`);
      printSubmitSplit(latByKey, sentAt, report);
      printTurns(report, benchLoop, submitted?.loopDelay);
      printWriteStatements(report, planned);
      printWriteBreakdown(report, poller.stop(), planned, sched0, sched1);
      if (dbUrl && opts['pg-statements'] > 0) await printPgStatements(dbUrl, opts['pg-statements'], planned);
      printScaleGoals(`${n} nodes, ${dialect}`, [bound / makespan, quantile(lat, 0.99), planned > 0 ? cpu / planned : NaN]);
    } catch (err) {
      out(`  ${String(n).padStart(5)}: failed: ${err instanceof Error ? err.message : String(err)}${downs > 0 ? ` (the coordinator marked nodes down ${downs} times)` : ''}`);
      if (downLines.length > 0) out(`    first marked down: ${downLines.slice(0, 3).join('\n      ')}`);
      heartbeatReport();
    } finally {
      benchLoop?.disable();
      submitter?.close();
      await cb?.close();
      // The coordinator stops first (its runs' node streams still open), with time to write its
      // CPU profile when asked to.
      await coord?.stop(opts['cpu-prof-dir'] ? 60_000 : 5000);
      await sim?.close();
      await stopChild(nats);
      await pg?.dispose();
      await rm(work, { recursive: true, force: true });
    }
  }
}

/** One query on a fresh connection (the bench's own, not the coordinator's). */
async function pgQuery<R extends Record<string, unknown>>(url: string, text: string): Promise<R[]> {
  const { default: pg } = await import('pg');
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<R>(text)).rows;
  } finally {
    await client.end();
  }
}

/**
 * Where the server's time went (pg_stat_statements): the `top` statements by total execution
 * time, and the sum over all, per migration. Set against the write connection's wall time
 * (store.group-commit above), it says how much of a write is the server's work and how much the
 * round trips and the coordinator's own turn.
 */
async function printPgStatements(url: string, top: number, migrations: number): Promise<void> {
  try {
    const all = await pgQuery<{ calls: number; total: number }>(url, "SELECT sum(calls)::float8 AS calls, sum(total_exec_time)::float8 AS total FROM pg_stat_statements WHERE query NOT ILIKE '%pg_stat_statements%'");
    const rows = await pgQuery<{ calls: string; total: number; mean: number; query: string }>(url, `SELECT calls::text, total_exec_time::float8 AS total, mean_exec_time::float8 AS mean, query FROM pg_stat_statements WHERE query NOT ILIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT ${Math.floor(top)}`);
    const a = all[0];
    out(`    postgres server (pg_stat_statements): ${fmt(Number(a?.calls ?? 0), 0)} statements, ${fmt(Number(a?.total ?? 0) / 1000, 1)} s executing (${fmt(Number(a?.calls ?? 0) / Math.max(1, migrations), 1)} statements and ${fmt(Number(a?.total ?? 0) / Math.max(1, migrations), 3)} ms per migration); the longest:`);
    out('        calls   total s  mean ms  statement');
    for (const r of rows) out(`      ${r.calls.padStart(7)} ${fmt(r.total / 1000, 2).padStart(9)} ${fmt(r.mean, 3).padStart(8)}  ${r.query.replace(/\s+/g, ' ').slice(0, 110)}`);
  } catch (err) {
    out(`    (pg_stat_statements: ${(err as Error).message})`);
  }
}

const pq = (v: readonly number[]): string => `${fmt(quantile([...v], 0.5), 1)} / ${fmt(quantile([...v], 0.99), 1)} / ${fmt(v.reduce((a, b) => Math.max(a, b), 0), 1)}`;

/** The coordinator's /debug/turns (services/shared/metrics/turns.ts); undefined when it fails. */
async function turnReport(url: string): Promise<TurnReport | undefined> {
  try {
    const r = await fetch(url);
    return r.ok ? ((await r.json()) as TurnReport) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * SubmitPlan's time split: the wait before its handler ran (the client's latency minus the
 * handler's time: the request sat in a socket while the coordinator's event loop was busy, plus the
 * localhost round trip and this process's own delays) and the handler's phases (planner.ts:
 * lock-wait, read-key, model, plan, write, read-runs, enqueue, read-plan).
 */
function printSubmitSplit(latByKey: ReadonlyMap<string, number>, sentAt: ReadonlyMap<string, number>, report: TurnReport | undefined): void {
  const wait: number[] = [];
  const toHandler: number[] = [];
  const back: number[] = [];
  const handler: number[] = [];
  const phases = new Map<string, number[]>();
  for (const [key, ms] of latByKey) {
    const t = report?.requests[`SubmitPlan ${key}`];
    if (!t) continue;
    handler.push(t.handlerMs);
    wait.push(Math.max(0, ms - t.handlerMs));
    const sent = sentAt.get(key);
    if (sent !== undefined && t.startedAt !== undefined) {
      toHandler.push(t.startedAt - sent);
      back.push(sent + ms - (t.startedAt + t.handlerMs));
    }
    for (const [p, v] of Object.entries(t.phasesMs)) {
      let a = phases.get(p);
      if (!a) phases.set(p, (a = []));
      a.push(v);
    }
  }
  if (handler.length === 0) {
    out('    (no SubmitPlan timings from the coordinator)');
    return;
  }
  out(`    SubmitPlan p50 / p99 / max ms (${handler.length} plans): client ${pq([...latByKey.values()])}; before the handler ${pq(wait)}; in the handler ${pq(handler)}`);
  if (toHandler.length > 0) out(`      of the time outside the handler: send → handler start ${pq(toHandler)}; handler end → response received ${pq(back)}`);
  out(`      handler phases: ${[...phases].map(([p, v]) => `${p} ${pq(v)}`).join('; ')}`);
}

/**
 * The coordinator's event-loop delay and its synchronous turns by cause, this process's loop delay
 * (the simulated nodes; and the SubmitPlan client when inline), and the SubmitPlan client's own
 * when it ran in a process of its own.
 */
function printTurns(report: TurnReport | undefined, benchLoop: IntervalHistogram | undefined, clientLoop: LoopDelay | undefined): void {
  const ms = (ns: number): string => fmt(ns / 1e6, 1);
  if (benchLoop && benchLoop.count > 0) out(`    this process's (${clientLoop ? 'simulated nodes' : 'SubmitPlan client + simulated nodes'}) event-loop delay p50 / p99 / max ms: ${ms(benchLoop.percentile(50))} / ${ms(benchLoop.percentile(99))} / ${ms(benchLoop.max)}`);
  if (clientLoop) out(`    the SubmitPlan client's own process: event-loop delay p50 / p99 / max ms while submitting: ${fmt(clientLoop.p50Ms, 1)} / ${fmt(clientLoop.p99Ms, 1)} / ${fmt(clientLoop.maxMs, 1)}`);
  if (!report) {
    out('    (no turn figures from the coordinator)');
    return;
  }
  const d = report.loopDelay;
  if (d) out(`    coordinator event-loop delay p50 / p99 / max ms: ${fmt(d.p50Ms, 1)} / ${fmt(d.p99Ms, 1)} / ${fmt(d.maxMs, 1)} (mean ${fmt(d.meanMs, 1)})`);
  out('    coordinator time by cause (ms; rpc: whole handler incl. awaits; size: writes, runs started, VMs reported, runs planned):');
  out('      cause                          count   total s      p50      p99      max   size mean/max');
  for (const c of report.causes) {
    out(`      ${c.cause.padEnd(28)} ${String(c.count).padStart(7)} ${fmt(c.totalMs / 1000, 1).padStart(9)} ${fmt(c.p50Ms, 1).padStart(8)} ${fmt(c.p99Ms, 1).padStart(8)} ${fmt(c.maxMs, 1).padStart(8)}   ${fmt(c.sizeMean, 1)}/${fmt(c.sizeMax, 0)}`);
  }
}

/**
 * The statements the coordinator's writes ran on its store's write connection (the group commits'
 * own begin/lock/commit not counted; turn cause `store.group-commit statements`), per planned migration: on
 * Postgres each is a round trip of the one write connection (issue 15 §4).
 */
function printWriteStatements(report: TurnReport | undefined, migrations: number): void {
  const c = report?.causes.find((x) => x.cause === 'store.group-commit statements');
  const g = report?.causes.find((x) => x.cause === 'store.group-commit');
  if (!c || !g || migrations === 0) return;
  const statements = c.sizeMean * c.count;
  const writes = g.sizeMean * g.count;
  out(`    write connection: ${fmt(statements, 0)} statements in ${c.count} group commits (${fmt(writes, 0)} writes): ${fmt(statements / migrations, 2)} statements and ${fmt(c.count / migrations, 3)} groups per migration`);
}

/** CPU and run-queue wait (s) of the coordinator's main thread, of Postgres's processes (the postmaster's children), and of this process. */
interface SchedFigures {
  readonly coordinatorRun: number;
  readonly coordinatorWait: number;
  /** Per process id: CPU (utime + stime) and run-queue wait. */
  readonly postgres: ReadonlyMap<number, { readonly cpu: number; readonly wait: number }>;
  readonly benchRun: number;
  readonly benchWait: number;
}

/** /proc/…/schedstat: time on a CPU and time waiting on a run queue (ns), as seconds; zeros when unreadable. */
function schedstat(path: string): { run: number; wait: number } {
  try {
    const [run, wait] = readFileSync(path, 'utf8').trim().split(/\s+/).map(Number);
    return { run: (run ?? 0) / 1e9, wait: (wait ?? 0) / 1e9 };
  } catch {
    return { run: 0, wait: 0 };
  }
}

function schedFigures(coordinatorPid: number, postmasterPid: number | undefined): SchedFigures {
  const c = schedstat(`/proc/${coordinatorPid}/task/${coordinatorPid}/schedstat`);
  const b = schedstat(`/proc/${process.pid}/task/${process.pid}/schedstat`);
  const postgres = new Map<number, { cpu: number; wait: number }>();
  if (postmasterPid !== undefined) {
    for (const e of readdirSync('/proc')) {
      if (!/^\d+$/.test(e)) continue;
      try {
        const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
        const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        const pid = Number(e);
        if (Number(rest[1]) !== postmasterPid && pid !== postmasterPid) continue;
        postgres.set(pid, { cpu: (Number(rest[11]) + Number(rest[12])) / 100, wait: schedstat(`/proc/${e}/schedstat`).wait });
      } catch {
        // gone meanwhile
      }
    }
  }
  return { coordinatorRun: c.run, coordinatorWait: c.wait, postgres, benchRun: b.run, benchWait: b.wait };
}

/**
 * Where the write connection's time per write went (issue 15): the Postgres write transactions'
 * statements as the coordinator saw them (store/pg-timing.ts: send → answer, of it the event loop
 * idle, answer → resolved, resolved → next send), the coordinator's event-loop use, and the CPU and
 * run-queue waits of the coordinator's main thread and of Postgres over the drain.
 */
function printWriteBreakdown(report: TurnReport | undefined, polled: readonly PolledTurns[], migrations: number, s0: SchedFigures, s1: SchedFigures): void {
  if (!report) return;
  const c = (name: string) => report.causes.find((x) => x.cause === name);
  const g = c('store.group-commit');
  const writes = g ? g.sizeMean * g.count : 0;
  const u = report.loopUse;
  if (u) {
    // After the ramp's last poll (≈ 15 s in) to the end: the steady part of the drain.
    const last = polled[polled.length - 1];
    const steady = last && last.loopActiveMs + last.loopIdleMs > 0 && u.activeMs + u.idleMs > last.loopActiveMs + last.loopIdleMs ? (u.activeMs - last.loopActiveMs) / (u.activeMs + u.idleMs - last.loopActiveMs - last.loopIdleMs) : NaN;
    out(`    coordinator event loop busy (eventLoopUtilization): ${fmt((100 * u.activeMs) / Math.max(1, u.activeMs + u.idleMs), 0)} % since start${Number.isFinite(steady) ? `, ${fmt(100 * steady, 0)} % after the ramp's last poll` : ''}`);
  }
  const pgCpu = (s: SchedFigures, f: 'cpu' | 'wait'): number => [...s.postgres.values()].reduce((a, p) => a + p[f], 0);
  // Processes that ended during the drain are not counted; new ones from zero.
  const pgDelta = (f: 'cpu' | 'wait'): number => [...s1.postgres].reduce((a, [pid, p]) => a + p[f] - (s0.postgres.get(pid)?.[f] ?? 0), 0);
  out(
    `    over the drain: coordinator main thread on a CPU ${fmt(s1.coordinatorRun - s0.coordinatorRun, 1)} s, waiting for one ${fmt(s1.coordinatorWait - s0.coordinatorWait, 1)} s; this process ${fmt(s1.benchRun - s0.benchRun, 1)} s / ${fmt(s1.benchWait - s0.benchWait, 1)} s${s1.postgres.size > 0 ? `; Postgres (${s1.postgres.size} processes) CPU ${fmt(pgDelta('cpu'), 1)} s, waiting for one ${fmt(pgDelta('wait'), 1)} s (${fmt(pgCpu(s1, 'cpu'), 1)} s CPU since start)` : ''}`,
  );
  const rt = c('pg.write send→answer');
  if (!rt || rt.count === 0 || writes === 0) return;
  const idle = c('pg.write send→answer idle');
  const parse = c('pg.write answer→resolved');
  const js = c('pg.write resolved→send');
  const tx = c('pg.write transaction');
  const per = (f: { totalMs: number } | undefined, n: number): string => fmt((f?.totalMs ?? 0) / n, 3);
  out(`    write connection per write (${fmt(writes, 0)} writes, ${rt.count} statements timed, ${tx?.count ?? 0} transactions): group commit ${per(g, writes)} ms, of it in transactions ${per(tx, writes)} ms; statements per write ${fmt(rt.count / writes, 2)}, per migration ${fmt(rt.count / Math.max(1, migrations), 2)}`);
  out(`      per write, ms: send → answer ${per(rt, writes)} (event loop idle ${per(idle, writes)}, busy ${fmt(((rt.totalMs ?? 0) - (idle?.totalMs ?? 0)) / writes, 3)}); answer → resolved ${per(parse, writes)}; resolved → next send ${per(js, writes)}`);
  const compile = c('kysely compile');
  if (compile) out(`      Kysely compiles (every query built with its builders, reads included): ${compile.count}, ${fmt(compile.totalMs / 1000, 2)} s in all, ${fmt((compile.totalMs * 1000) / Math.max(1, compile.count), 0)} µs each`);
  out(`      per statement, ms: send → answer ${per(rt, rt.count)} (p50 ${fmt(rt.p50Ms, 3)}, p99 ${fmt(rt.p99Ms, 2)}; loop idle ${per(idle, rt.count)}; statements in flight at its send, itself included: mean ${fmt(rt.sizeMean, 2)}, max ${fmt(rt.sizeMax, 0)}: above 1, pipelined, the per-write sums overlap); answer → resolved ${per(parse, rt.count)}; resolved → next send ${per(js, js?.count ?? 1)} (p50 ${fmt(js?.p50Ms ?? NaN, 3)}, p99 ${fmt(js?.p99Ms ?? NaN, 2)})`);
}

/** utime + stime of a process, in seconds (Linux /proc). */
function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / 100;
}

async function main(): Promise<void> {
  out(`migd control-plane benchmarks (parts ${[...PARTS].join(',')}, ${REPS} reps${PARTS.has('a') || PARTS.has('b') || PARTS.has('c') ? `, migration MTU ${opts.mtu}` : ''})`);
  if (PARTS.has('a') || PARTS.has('b') || PARTS.has('c')) {
    process.env['MIGD_LOG_LEVEL'] = opts['log-level'];
    const cluster = await startLabCluster({ mode: 'coordinator', onLog: tapLog, migrationMtu: opts.mtu });
    try {
      const cb = cluster.backend as CoordinatorBackend;
      if (PARTS.has('a')) await partA(cluster, cb);
      if (PARTS.has('b')) await partB(cluster, cb);
      if (PARTS.has('c')) await partC(cluster, cb);
    } finally {
      await cluster.close();
    }
  }
  if (PARTS.has('d')) await partD();
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
