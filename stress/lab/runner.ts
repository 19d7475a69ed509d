/**
 * The lab runner: runs a comparison's scenarios against a migd cluster (see backend.ts) and keeps
 * the results, then writes the report. For each scenario and repetition not yet recorded:
 *   shape the link → create the VM with the scenario's workload on the source → wait for a
 *   baseline of guest samples → submit the migration with the scenario's policy and label →
 *   follow it live (one progress line) → keep the guest's samples a little longer → fetch the
 *   run's timeline and record scenario → run id → destroy the VM.
 * The report is rewritten after every run, so a long comparison can be looked at while it runs,
 * and an interrupted one resumes where it stopped (`resume`).
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { DiskBus, DiskFormat, StorageMode, WorkloadPattern, type GuestPerfSample, type ProgressSample, VmSpec } from '../../services/shared/gen/migd/v1/common.js';
import { BlackoutProbe, networkBlackoutOf } from '../../services/testbed/guest-probe.js';
import type { TestbedVmNetwork } from '../../services/testbed/testbed.js';
import { type LabBackend, sleep, stateName } from './backend.js';
import { type ReportRun, screenshot, writeReport } from './report.js';
import { type FailedAttempt, type LabResults, isRecorded, loadResults, loadTimeline, newResults, saveResults, saveTimeline } from './results.js';
import type { Comparison, LabLink, Scenario } from './scenarios.js';

const MiB = 1024 * 1024;

/** What scenarios with a disk and a NIC need of the cluster. */
export interface LabStorage {
  /** The VM network the guests' NICs join, with the client namespace the prober runs in. */
  readonly vmNetwork: TestbedVmNetwork;
  /** The network name the nodes map to its bridge (`--network NAME=BRIDGE`). */
  readonly network: string;
  /** Where the source node creates a VM's disk: a path inside its storage root. */
  diskPath(host: string, vmName: string, diskId: string): string;
  /** Bytes a host has sent on its migration link so far (to count a run's bytes on the wire). */
  txBytes(host: string): Promise<number>;
}

/** A guest's disk and NIC, from {@link LabStorage}. */
export interface GuestDevices {
  /** Only for a scenario with a disk. */
  readonly diskPath?: string;
  /** The guest's address with its prefix length, e.g. 198.19.0.140/25. */
  readonly guestIp: string;
  readonly network: string;
}

export interface RunLabOptions {
  readonly comparison: Comparison;
  readonly outDir: string;
  readonly backend: LabBackend;
  readonly source: string;
  readonly destination: string;
  /** Applies a link to one host's migration egress; absent = links are not shaped (e.g. a remote coordinator). */
  readonly shape?: (host: string, link: LabLink) => Promise<void>;
  /** The VM network and storage roots; scenarios with a disk fail without it. */
  readonly storage?: LabStorage;
  /** Keep and extend an existing results file (skip recorded pairs). */
  readonly resume?: boolean;
  readonly quick?: boolean;
  /** Render report.png with Chromium at the end. Default true. */
  readonly png?: boolean;
  readonly environment?: Readonly<Record<string, string>>;
  /** Lines for the log. */
  readonly log?: (line: string) => void;
  /** The live progress line (overwritten in place on a terminal). */
  readonly status?: (line: string) => void;
  readonly signal?: AbortSignal;
}

export interface RunLabResult {
  readonly results: LabResults;
  readonly reportHtml: string;
  /** The summary tables as Markdown (summary.md). */
  readonly summaryMarkdown: string;
  readonly reportPng?: string;
  /** Runs made by this call (not the resumed ones). */
  readonly ran: number;
}

/** The VM spec of a scenario's guest (with its LOCAL disk and NIC when the scenario has a disk; a NIC alone with `nic`). */
export function vmSpecOf(s: Scenario, name: string, devices?: GuestDevices): VmSpec {
  if ((s.disk || s.nic) && !devices) throw new Error(`${s.name} has a ${s.disk ? 'disk' : 'NIC'}: its guest needs ${s.disk ? 'a disk path and ' : ''}a NIC`);
  if (s.disk && devices?.diskPath === undefined) throw new Error(`${s.name} has a disk: its guest needs a disk path`);
  const disk = s.disk && devices?.diskPath !== undefined ? { disk: s.disk, diskPath: devices.diskPath } : undefined;
  return VmSpec.fromPartial({
    name,
    memoryMib: s.guest.memoryMib,
    vcpus: s.guest.vcpus,
    accel: 0,
    machineType: '',
    kernelPath: '',
    initrdPath: '',
    extraCmdline: '',
    disks: disk
      ? [{ id: 'd0', path: disk.diskPath, format: DiskFormat.DISK_FORMAT_RAW, bus: DiskBus.DISK_BUS_VIRTIO_BLK, storage: StorageMode.STORAGE_MODE_LOCAL, serial: 'LAB-D0', create: { sizeBytes: disk.disk.sizeBytes, basePath: '' } }]
      : [],
    workload: {
      pattern: s.workload.pattern,
      workers: s.workload.workers,
      bytesPerWorker: s.workload.bytesPerWorker,
      rateBytesPerSec: s.workload.rateBytesPerSec,
      hotBytes: s.workload.hotBytes ?? 0,
      verify: true,
      phaseAfterMs: s.workload.phase?.afterMs ?? 0,
      phaseRateBytesPerSec: s.workload.phase?.rateBytesPerSec ?? 0,
      ...(disk ? { diskId: 'd0', diskBytes: disk.disk.workloadBytes, diskRateBytesPerSec: disk.disk.rateBytesPerSec } : {}),
    },
    labels: { lab: 'true', scenario: s.name },
    antiAffinityGroup: '',
    uuid: '',
    nics: devices && (s.disk || s.nic) ? [{ mac: '', network: devices.network, guestIp: devices.guestIp }] : [],
  });
}

/** One progress line: time, state, pass, remaining, throughput, dirty rate, throttle, guest pace. */
export function progressLine(prefix: string, p: ProgressSample, guest: GuestPerfSample | undefined): string {
  const dirty = (Number(p.dirtyPagesRate) * (p.pageSize || 4096)) / MiB;
  return [
    prefix,
    `${(Number(p.elapsedMs) / 1000).toFixed(1).padStart(6)}s`,
    stateName(p.state).padEnd(9),
    `pass ${String(p.pass).padStart(2)}`,
    `remaining ${(Number(p.remainingBytes) / MiB).toFixed(0).padStart(4)} MiB`,
    `${p.throughputMbps.toFixed(0).padStart(5)} Mbit/s`,
    `dirty ${dirty.toFixed(0).padStart(4)} MiB/s`,
    `throttle ${String(p.throttlePct).padStart(2)}%`,
    guest ? `guest ${guest.msPerGib.toFixed(0)} ms/GiB` : '',
  ].join('  ');
}

/** Rebuilds the report of a results folder (no cluster needed). */
export async function reportFromResults(dir: string, comparison: Comparison, results: LabResults, opts: { png?: boolean; environment?: Readonly<Record<string, string>> } = {}): Promise<{ html: string; markdown: string; png?: string }> {
  const runs: ReportRun[] = [];
  for (const r of results.runs) {
    runs.push({ scenario: r.scenario, repetition: r.repetition, outcome: r.outcome, timeline: await loadTimeline(dir, r.timelineFile), ...(r.note ? { note: r.note } : {}), ...(r.wireBytes !== undefined ? { wireBytes: r.wireBytes } : {}) });
  }
  const { html, markdown } = await writeReport(dir, {
    comparison,
    scenarios: comparison.scenarios,
    runs,
    environment: { mode: results.mode, ...(results.quick ? { quick: 'yes' } : {}), ...results.environment, ...opts.environment },
  });
  if (opts.png === false) return { html, markdown };
  const png = join(dir, 'report.png');
  await screenshot(html, png);
  return { html, markdown, png };
}

/**
 * Runs the comparison. Failures of one attempt (a VM that does not boot, a refused plan) are
 * recorded as errors and the lab goes on; an abort (`signal`) stops after cleaning up.
 * @throws Error when the results folder holds another comparison, or exists without `resume`
 */
/**
 * (scenario, repetition) pairs, repetition-major: round 1 of every scenario, then round 2… A
 * `sameVm` scenario's repetitions stay together, at its place in round 1: its one VM is migrated
 * back and forth without another scenario's VM running beside it.
 */
export function roundRobin(scenarios: readonly Scenario[]): [Scenario, number][] {
  const out: [Scenario, number][] = [];
  const rounds = scenarios.reduce((m, s) => Math.max(m, s.sameVm ? 1 : s.repetitions), 0);
  for (let rep = 0; rep < rounds; rep++) {
    for (const s of scenarios) {
      if (s.sameVm) {
        if (rep === 0) for (let r = 0; r < s.repetitions; r++) out.push([s, r]);
      } else if (rep < s.repetitions) out.push([s, rep]);
    }
  }
  return out;
}

export async function runComparison(o: RunLabOptions): Promise<RunLabResult> {
  const log = o.log ?? (() => undefined);
  const existing = await loadResults(o.outDir, o.comparison.name);
  if (existing && !o.resume && existing.runs.length + existing.errors.length > 0) {
    throw new Error(`${o.outDir} already holds results of "${o.comparison.name}": pass --resume to continue them, or another --out`);
  }
  const results = existing ?? newResults(o.comparison.name, o.quick ?? false, o.backend.mode);
  if (o.environment) results.environment = { ...results.environment, ...o.environment };
  await saveResults(o.outDir, results);
  const session = randomBytes(3).toString('hex');
  const total = o.comparison.scenarios.reduce((n, s) => n + s.repetitions, 0);
  let ran = 0;
  let index = 0;
  // Repetition by repetition: every scenario once before any twice, so a comparison cut short
  // (a long sweep on a shared machine) still compares every strategy on every workload.
  const order = roundRobin(o.comparison.scenarios);
  // A sameVm scenario's VM between its repetitions (destroyed when the next scenario starts, unless that one continues it).
  let kept: LabVm | undefined;
  const drop = async (): Promise<void> => {
    const vm = kept;
    kept = undefined;
    if (vm) await o.backend.destroyVm(vm.name).catch((err: unknown) => log(`destroying ${vm.name} failed: ${err instanceof Error ? err.message : String(err)}`));
  };
  try {
    for (const [s, rep] of order) {
      index++;
      if (kept && kept.scenario !== s.name && kept.scenario !== s.continues) await drop();
      if (isRecorded(results, s.name, rep)) {
        log(`[${index}/${total}] ${s.name} #${rep + 1}: recorded already, skipped`);
        continue;
      }
      if (o.signal?.aborted) break;
      const tag = `[${index}/${total}] ${s.name} #${rep + 1}`;
      log(`${tag}: ${s.title}; link ${linkText(s.link)}; policy ${s.label}`);
      try {
        const reuse = kept;
        kept = undefined;
        const { run: recorded, keep } = await runOne(o, s, rep, session, tag, reuse);
        kept = keep;
        results.runs.push(recorded);
        results.errors = results.errors.filter((e) => !(e.scenario === s.name && e.repetition === rep));
        ran++;
        log(`${tag}: ${recorded.outcome}${recorded.note ? ` (${recorded.note})` : ''}, run ${recorded.runId}`);
      } catch (err) {
        if (o.signal?.aborted) break;
        const e: FailedAttempt = { scenario: s.name, repetition: rep, error: err instanceof Error ? err.message : String(err), at: new Date().toISOString() };
        results.errors.push(e);
        log(`${tag}: error: ${e.error}`);
      }
      await saveResults(o.outDir, results);
      // The report in between is for looking at a long comparison while it runs: a failure to write
      // it (once, Chart.js vanished while node_modules was reinstalled) must not end the comparison.
      if (results.runs.length > 0) {
        await reportFromResults(o.outDir, o.comparison, results, { png: false, ...(o.environment ? { environment: o.environment } : {}) }).catch((err: unknown) => log(`report not updated: ${err instanceof Error ? err.message : String(err)}`));
      }
    }
  } finally {
    await drop();
  }
  await saveResults(o.outDir, results);
  const rep = await reportFromResults(o.outDir, o.comparison, results, { png: o.png ?? true, ...(o.environment ? { environment: o.environment } : {}) });
  return { results, reportHtml: rep.html, summaryMarkdown: rep.markdown, ...(rep.png ? { reportPng: rep.png } : {}), ran };
}

function linkText(l: LabLink): string {
  const parts = [l.rateMbit !== undefined ? `${l.rateMbit} Mbit/s` : 'unshaped', l.delayMs ? `${l.delayMs} ms` : '', l.lossPct ? `${l.lossPct} % loss` : ''];
  return parts.filter((p) => p !== '').join(', ');
}

/** Guest addresses are handed out round-robin over the lab's life (see runOne). */
let guestCounter = 0;

/** A VM the lab created: where it runs now (a sameVm scenario's VM moves back and forth). */
interface LabVm {
  readonly scenario: string;
  readonly name: string;
  readonly host: string;
  /** The guest's address on the VM network, when it has a NIC. */
  readonly guestIp?: string;
}

/** Boots a scenario's VM on the lab's source host. */
async function createLabVm(o: RunLabOptions, s: Scenario, name: string): Promise<LabVm> {
  let devices: GuestDevices | undefined;
  let guestIp: string | undefined;
  if (s.disk || s.nic) {
    const st = o.storage;
    if (!st) throw new Error(`${s.name} has a ${s.disk ? 'LOCAL disk and a ' : ''}NIC: it needs the lab's own cluster (a VM network${s.disk ? " and the nodes' storage roots" : ''}), not --coordinator`);
    // A fresh address per VM: the switch and the client's neighbour table may still remember the last guest's MAC.
    guestIp = st.vmNetwork.guestAddress(guestCounter++ % 100);
    devices = { ...(s.disk ? { diskPath: st.diskPath(o.source, name, 'd0') } : {}), guestIp: `${guestIp}/${st.vmNetwork.prefixLength}`, network: st.network };
  }
  await o.backend.createVm(vmSpecOf(s, name, devices), o.source);
  return { scenario: s.name, name, host: o.source, ...(guestIp !== undefined ? { guestIp } : {}) };
}

/**
 * One repetition: boot the VM (or take `reuse`, a sameVm scenario's VM from its last repetition),
 * migrate it to the other host, record the run. The VM is destroyed afterwards unless the scenario
 * keeps it (sameVm, the run succeeded): then it is handed back as `keep`, now on the other host.
 */
async function runOne(o: RunLabOptions, s: Scenario, rep: number, session: string, tag: string, reuse?: LabVm): Promise<{ run: LabResults['runs'][number]; keep?: LabVm }> {
  const b = o.backend;
  if (o.shape) {
    // Both directions: the stream goes source → destination, acknowledgements and post-copy page
    // requests come back.
    await o.shape(o.source, s.link);
    await o.shape(o.destination, s.link);
  }
  // One name for all of a sameVm scenario's repetitions (and those of the scenario it continues):
  // the history store knows a VM by its name.
  const vmName = (s.sameVm ? `lab-${s.continues ?? s.name}-${session}` : `lab-${s.name}-${rep}-${session}`).slice(0, 63);
  let keep: LabVm | undefined;
  let probe: BlackoutProbe | undefined;
  try {
    const vm = reuse ?? (await createLabVm(o, s, vmName));
    const from = vm.host;
    const to = from === o.source ? o.destination : o.source;
    const guestIp = vm.guestIp;
    await b.waitGuest(vmName, {
      minSamples: 5,
      minMs: s.limits.baselineMs,
      timeoutMs: s.limits.bootMs + s.limits.baselineMs,
      idle: s.workload.pattern === WorkloadPattern.WORKLOAD_PATTERN_IDLE,
      ...(o.signal ? { signal: o.signal } : {}),
    });
    if (guestIp !== undefined && o.storage) {
      // The guest's NIC is probed from outside through the migration (the network blackout).
      probe = await BlackoutProbe.start(o.storage.vmNetwork, guestIp, { readyAnswers: 30, readyTimeoutMs: 60_000 });
    }
    const tx0 = probe && o.storage ? await o.storage.txBytes(from) : undefined;
    let lastStatus = 0;
    const result = await b.migrate({
      key: `lab.${o.comparison.name}.${s.name}.${rep}.${session}`,
      vmName,
      memoryMib: s.guest.memoryMib,
      sourceNodeId: from,
      destinationNodeId: to,
      policy: s.policy,
      label: s.label,
      timeLimitMs: s.limits.migrationMs,
      onProgress: (p, g) => {
        const now = Date.now();
        if (now - lastStatus < 500) return;
        lastStatus = now;
        o.status?.(progressLine(tag, p, g));
      },
      onEvent: (line) => o.log?.(`${tag}: ${line}`),
      ...(o.signal ? { signal: o.signal } : {}),
    });
    const wireBytes = tx0 !== undefined && o.storage ? (await o.storage.txBytes(from)) - tx0 : undefined;
    if (probe) {
      const p = probe;
      probe = undefined;
      const bl = await p.finish(30, 20_000);
      await b.recordBlackout(result.runId, networkBlackoutOf(bl, p.intervalMs, p.describe('migd lab prober'))).catch((err: unknown) => o.log?.(`${tag}: recording the blackout failed: ${err instanceof Error ? err.message : String(err)}`));
      o.log?.(`${tag}: network blackout ${Math.round(bl.blackoutMs)} ms, ${bl.lost}/${bl.sent} probes lost`);
    }
    // The guest's samples after the switch-over belong to the run (post-copy and throttle tails).
    await sleep(s.limits.afterMs, o.signal);
    const timeline = await b.timeline(result.runId);
    const file = await saveTimeline(o.outDir, timeline);
    const run: LabResults['runs'][number] = {
      scenario: s.name,
      repetition: rep,
      runId: result.runId,
      label: s.label,
      outcome: result.outcome,
      ...(result.note ? { note: result.note } : {}),
      vmName,
      timelineFile: file,
      link: s.link,
      ...(wireBytes !== undefined ? { wireBytes } : {}),
      recordedAt: new Date().toISOString(),
    };
    if (s.sameVm && result.outcome === 'succeeded') keep = { ...vm, host: to };
    return keep ? { run, keep } : { run };
  } finally {
    await probe?.stop();
    if (!keep) await b.destroyVm(vmName).catch((err: unknown) => o.log?.(`${tag}: destroying ${vmName} failed: ${err instanceof Error ? err.message : String(err)}`));
  }
}
