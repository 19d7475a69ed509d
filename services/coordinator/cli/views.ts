/**
 * The human-readable output of each migctl command, from the coordinator's responses. Pure: the
 * commands print what these return. `now` (ms) makes ages ("2 s ago") reproducible.
 */
import {
  BootSource,
  DiskBus,
  DiskFormat,
  MultifdCompression,
  StorageMode,
  TimeoutAction,
  accelToJSON,
  diskFormatToJSON,
  storageModeToJSON,
  vmStateToJSON,
  workloadPatternToJSON,
  type DiskSpec,
  type MigrationPolicy,
  type VmInfo,
} from '../../shared/gen/migd/v1/common.js';
import {
  NodeStatus,
  type ComparePoliciesResponse,
  type GetRunTimelineResponse,
  type ListNodesResponse,
  type ListRunsResponse,
  type Run,
  type SubmitPlanResponse,
  type CoordinatorServiceListVmsResponse,
} from '../../shared/gen/migd/v1/coordinator.js';
import { describeAction, describeStats, transition } from './progress.js';
import { formatBytes, formatDuration, formatRate } from '../domain/units.js';
import { formatNumber, formatPercent, formatTable, formatTime, policyDisplayName, stateName } from './format.js';
import { summarizeTimeline, type GuestPhase } from './summary.js';

const MiB = 2 ** 20;

function enumName(fn: (v: number) => string, v: number, prefix: string): string {
  try {
    return fn(v).replace(prefix, '').toLowerCase();
  } catch {
    return String(v);
  }
}

function age(d: Date | undefined, now: number): string {
  if (!d) return '-';
  return `${formatDuration(Math.max(0, now - d.getTime()))} ago`;
}

/** `nodes`. */
export function formatNodes(r: ListNodesResponse, now: number): string {
  if (r.nodes.length === 0) return 'no nodes registered\n';
  return formatTable(
    ['NODE', 'STATUS', 'VMS', 'OUT', 'IN', 'MEM FREE', 'MEM TOTAL', 'DISK FREE', 'CPUS', 'QEMU', 'ACCEL', 'ADDRESS', 'HEARTBEAT'],
    r.nodes.map((n) => [
      n.host?.nodeId ?? '?',
      n.status === NodeStatus.NODE_STATUS_UP ? 'up' : n.status === NodeStatus.NODE_STATUS_DOWN ? 'DOWN' : '?',
      String(n.vmCount),
      String(n.outboundMigrations),
      String(n.inboundMigrations),
      formatBytes(n.host?.memoryFreeBytes ?? NaN),
      formatBytes(n.host?.memoryTotalBytes ?? NaN),
      n.host?.storageFreeBytes === undefined ? '-' : formatBytes(n.host.storageFreeBytes),
      String(n.host?.cpus ?? '-'),
      n.host?.qemuVersion || '-',
      n.host ? enumName(accelToJSON, n.host.resolvedAccel, 'ACCEL_') : '-',
      n.host?.managementAddress || '-',
      age(n.lastHeartbeat, now),
    ]),
    ['left', 'left', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
  );
}

function workload(vm: VmInfo): string {
  const w = vm.spec?.workload;
  if (!w) return '-';
  const pattern = enumName(workloadPatternToJSON, w.pattern || 1, 'WORKLOAD_PATTERN_');
  const rate = w.rateBytesPerSec > 0 ? ` @${formatRate(w.rateBytesPerSec)}` : '';
  return `${pattern} ${w.workers || 1}×${formatBytes(w.bytesPerWorker || 64 * MiB)}${rate}`;
}

/** `vms`. */
export function formatVms(r: CoordinatorServiceListVmsResponse): string {
  if (r.vms.length === 0) return 'no VMs\n';
  return formatTable(
    ['VM', 'NODE', 'STATE', 'MEMORY', 'VCPUS', 'WORKLOAD', 'GUEST', 'INTEGRITY', 'MIGRATION'],
    r.vms.map((vm) => [
      vm.spec?.name ?? '?',
      vm.nodeId,
      enumName(vmStateToJSON, vm.state, 'VM_STATE_'),
      `${vm.spec?.memoryMib ?? 0} MiB`,
      String(vm.spec?.vcpus ?? '-'),
      workload(vm),
      vm.lastGuestPerf && vm.lastGuestPerf.msPerGib > 0 ? `${Math.round(vm.lastGuestPerf.msPerGib)} ms/GiB` : '-',
      vm.lastGuestPerf ? String(vm.lastGuestPerf.integrityErrors) : '-',
      vm.migrationRunId || '-',
    ]),
    ['left', 'left', 'left', 'right', 'right', 'left', 'right', 'right'],
  );
}

/** A disk in words: `data /path (qcow2, local, virtio-blk, read-only)`. */
function describeDisk(d: DiskSpec): string {
  const parts = [
    enumName(diskFormatToJSON, d.format || DiskFormat.DISK_FORMAT_RAW, 'DISK_FORMAT_'),
    enumName(storageModeToJSON, d.storage || StorageMode.STORAGE_MODE_LOCAL, 'STORAGE_MODE_'),
    d.bus === DiskBus.DISK_BUS_VIRTIO_SCSI ? 'virtio-scsi' : 'virtio-blk',
    ...(d.readOnly ? ['read-only'] : []),
  ];
  return `${d.id} ${d.path} (${parts.join(', ')})`;
}

/** `create-vm`: the VM, then a line per disk and per NIC (their MACs may have been generated). */
export function formatCreatedVm(vm: VmInfo | undefined): string {
  if (!vm) return 'created\n';
  const boot = vm.spec?.boot === BootSource.BOOT_SOURCE_DISK ? ', boots its first disk' : '';
  const lines = [`vm ${vm.spec?.name ?? '?'} ${enumName(vmStateToJSON, vm.state, 'VM_STATE_')} on ${vm.nodeId} (${vm.spec?.memoryMib ?? 0} MiB, pid ${vm.pid}${boot})`];
  for (const d of vm.spec?.disks ?? []) lines.push(`  disk ${describeDisk(d)}`);
  for (const n of vm.spec?.nics ?? []) lines.push(`  nic  ${n.mac} on network ${n.network}${n.guestIp ? `, guest ${n.guestIp}` : ''}`);
  return `${lines.join('\n')}\n`;
}

/** `migrate` / `drain`: the plan and its runs. */
export function formatPlan(r: SubmitPlanResponse): string {
  const p = r.plan;
  if (!p) return 'no plan returned\n';
  const head = `plan ${p.id}${r.existing ? ' (existing: this idempotency key was submitted before)' : ''}: ${p.migrations.length} migration${p.migrations.length === 1 ? '' : 's'}${p.orderingReason ? `, ${p.orderingReason}` : ''}\n`;
  if (p.migrations.length === 0) return head;
  return (
    head +
    formatTable(
      ['#', 'RUN', 'VM', 'FROM', 'TO', 'WHY'],
      p.migrations.map((m) => [String(m.order), m.runId, m.vmName, m.sourceNodeId, m.destinationNodeId, m.reason]),
      ['right'],
    )
  );
}

/** The policy in words: its kind and the settings that differ from zero. */
export function describePolicy(p: MigrationPolicy | undefined): string {
  if (!p) return 'fixed';
  const parts: string[] = [];
  if (p.downtimeLimitMs) parts.push(`downtime ${formatDuration(p.downtimeLimitMs)}`);
  if (p.maxDowntimeMs) parts.push(`max downtime ${formatDuration(p.maxDowntimeMs)}`);
  parts.push(p.maxBandwidthBytesPerSec ? `bandwidth ${formatRate(p.maxBandwidthBytesPerSec)}` : 'bandwidth unlimited');
  if (p.autoConverge?.enabled) parts.push('auto-converge');
  const pc = p.postcopy;
  if (pc?.enabled) {
    const when = pc.onDemandOnly ? 'on demand' : pc.afterMs ? `after ${formatDuration(pc.afterMs)}` : `after ${pc.afterPasses || 1} pass${(pc.afterPasses || 1) === 1 ? '' : 'es'}`;
    parts.push(`post-copy ${when}${pc.preempt === false ? ' without preempt' : ''}`);
  } else if (pc && !pc.enabled) parts.push('no post-copy');
  if (p.multifd?.enabled) {
    const c = p.multifd.compression;
    const comp = c === MultifdCompression.MULTIFD_COMPRESSION_ZLIB ? ' zlib' : c === MultifdCompression.MULTIFD_COMPRESSION_ZSTD ? ' zstd' : '';
    parts.push(`multifd ${p.multifd.channels || 2}${comp}`);
  }
  if (p.xbzrle?.enabled) parts.push(`xbzrle ${formatBytes(p.xbzrle.cacheBytes || 64 * MiB)}`);
  if (p.tls) parts.push('tls');
  if (p.switchoverAck) parts.push('switchover-ack');
  const action = p.timeoutAction === TimeoutAction.TIMEOUT_ACTION_FORCE_COMPLETE ? 'force-complete' : 'abort';
  if (p.completionTimeoutSecPerGib) parts.push(`${action} after ${p.completionTimeoutSecPerGib} s/GiB`);
  if (p.progressTimeoutSec) parts.push(`${action} after ${p.progressTimeoutSec} s without progress`);
  if (p.downtimeSteps.length) parts.push(`${p.downtimeSteps.length} downtime steps`);
  return `${policyDisplayName(p.kind)} (${parts.join(', ')})`;
}

/** `runs`. */
export function formatRuns(r: ListRunsResponse): string {
  const body =
    r.runs.length === 0
      ? 'no runs\n'
      : formatTable(
          ['RUN', 'VM', 'FROM', 'TO', 'POLICY', 'STATE', 'CREATED', 'TOTAL', 'DOWNTIME', 'TRANSFERRED', 'PASSES'],
          r.runs.map((run) => [
            run.id,
            run.vmName,
            run.sourceNodeId,
            run.destinationNodeId,
            policyDisplayName(run.policy?.kind ?? 0),
            stateName(run.state),
            formatTime(run.createdAt),
            run.stats ? formatDuration(run.stats.totalTimeMs) : '-',
            run.stats ? formatDuration(run.stats.downtimeMs) : '-',
            run.stats ? formatBytes(run.stats.transferredBytes) : '-',
            run.stats ? String(run.stats.passes) : '-',
          ]),
          ['left', 'left', 'left', 'left', 'left', 'left', 'left', 'right', 'right', 'right', 'right'],
        );
  return body + (r.nextPageToken ? `more: --page-token ${r.nextPageToken}\n` : '');
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

function offset(d: Date | undefined, base: Date | undefined): string {
  if (!d || !base) return '';
  return `+${formatDuration(Math.max(0, d.getTime() - base.getTime()))}`.padStart(9);
}

function guestPhase(name: string, g: GuestPhase): string {
  return g.samples === 0 ? `${name} -` : `${name} ${formatNumber(g.meanMsPerGib)} ms/GiB (${g.samples})`;
}

/** The short "run R: state" answer of cancel, force-complete and set. */
export function formatRunState(run: Run | undefined, verb: string): string {
  if (!run) return `${verb}\n`;
  return `run ${run.id} (${run.vmName} ${run.sourceNodeId}→${run.destinationNodeId}): ${verb}; now ${stateName(run.state)}\n`;
}

/** `run RUN`: details, state changes, actions and the timeline summary. */
export function formatRunDetails(t: GetRunTimelineResponse): string {
  const run = t.run;
  if (!run) return 'no run returned\n';
  const s = summarizeTimeline(t);
  const kv: [string, string][] = [
    ['run', run.id],
    ['plan', run.planId],
    ['vm', `${run.vmName} (${run.memoryMib} MiB)`],
    ['route', `${run.sourceNodeId} → ${run.destinationNodeId}`],
    ['policy', describePolicy(run.policy)],
    ['priority', String(run.priority)],
    ['state', stateName(run.state)],
    ['created', formatTime(run.createdAt)],
  ];
  if (run.startedAt) kv.push(['started', `${formatTime(run.startedAt)} (queued ${formatDuration(run.startedAt.getTime() - (run.createdAt?.getTime() ?? run.startedAt.getTime()))})`]);
  if (run.finishedAt) kv.push(['finished', `${formatTime(run.finishedAt)}${run.startedAt ? ` (ran ${formatDuration(run.finishedAt.getTime() - run.startedAt.getTime())})` : ''}`]);
  if (run.stats) {
    kv.push(['result', describeStats(run.stats)]);
    kv.push(['details', `setup ${formatDuration(run.stats.setupTimeMs)}, ${run.stats.pagesVerifiedAfter} pages verified after arrival, QEMU CPU source ${formatNumber(run.stats.sourceCpuSeconds, 1)} s / destination ${formatNumber(run.stats.destinationCpuSeconds, 1)} s`]);
  }
  if (run.error) kv.push(['error', [run.error.code, run.error.reason, run.error.message].filter((x) => x).join(': ')]);
  const w = Math.max(...kv.map(([k]) => k.length));
  let out = kv.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join('\n') + '\n';

  if (run.transitions.length) {
    out += '\nstate changes\n';
    for (const c of run.transitions) out += `  ${offset(c.time, run.createdAt)}  ${transition(c.from, c.to)}${c.reason ? `  (${c.reason})` : ''}\n`;
  }
  if (run.actions.length) {
    out += '\nactions\n';
    for (const a of run.actions) out += `  ${offset(a.time, run.createdAt)}  ${a.actor || 'policy'} ${describeAction(a)}${a.reason ? ` — ${a.reason}` : ''}\n`;
  }
  out += '\ntimeline\n';
  out += `  progress  ${plural(s.progressSamples, 'sample')}, ${plural(s.passes, 'pass', 'passes')}, throughput peak ${formatRate(s.peakThroughputBytesPerSec)} / mean ${formatRate(s.meanThroughputBytesPerSec)}, dirty peak ${formatRate(s.peakDirtyBytesPerSec)}, throttle max ${s.maxThrottlePct}%, final downtime limit ${formatDuration(s.finalDowntimeLimitMs)}\n`;
  out += `  guest     ${guestPhase('before', s.guestBefore)}, ${guestPhase('during', s.guestDuring)}, ${guestPhase('after', s.guestAfter)}; longest heartbeat gap ${formatDuration(s.maxHeartbeatGapDuringMs)}; integrity errors ${s.integrityErrors}\n`;
  if (Number.isFinite(s.guestLostMs)) {
    out += `  harm      guest time lost ${formatDuration(s.guestLostMs)}, of it paused ${formatDuration(s.guestPausedMs)} (longest ${formatDuration(s.guestLongestPauseMs)}), from the guest's own clock\n`;
  }
  if (run.stats && (run.stats.postcopyBlocktimeMs > 0 || run.stats.postcopyVcpuBlocktimeMs.length > 0)) {
    out += `  post-copy blocktime ${formatDuration(run.stats.postcopyBlocktimeMs)} (all vCPUs blocked), per vCPU ${run.stats.postcopyVcpuBlocktimeMs.map((v) => formatDuration(v)).join(', ')}\n`;
  }
  const network = describeNetwork(run);
  if (network) out += `  network   ${network}\n`;
  if (Number.isFinite(s.hostCpuSeconds)) out += `  host cpu  ${formatNumber(s.hostCpuSeconds, 1)} s (both QEMU processes)\n`;
  return out;
}

/**
 * The switch-over's network gap: what the nodes measured (QEMU's downtime, announce-self after
 * the resume) next to the blackout measured from outside, when one was attached. Empty for a run
 * with neither.
 */
export function describeNetwork(run: Run): string {
  const parts: string[] = [];
  const st = run.stats;
  if (st?.announceAfterResumeMs !== undefined) {
    parts.push(`nodes: QEMU downtime ${formatDuration(st.downtimeMs)}, announce-self ${formatDuration(st.announceAfterResumeMs)} after the resume (${plural(st.nicsAnnounced ?? 0, 'NIC')}; first RARP 50 ms later)`);
  }
  const b = run.networkBlackout;
  if (b) {
    const at = b.gapStartedAt ? ` at ${offset(b.gapStartedAt, run.createdAt).trim()}` : '';
    parts.push(`outside: blackout ${formatDuration(b.blackoutMs)}${at}, ${b.probesLost} of ${b.probesSent} probes lost (every ${formatDuration(b.probeIntervalMs)})${b.measuredBy ? `, ${b.measuredBy}` : ''}`);
  }
  return parts.join('; ');
}

/** `history compare`. */
export function formatComparison(r: ComparePoliciesResponse): string {
  if (r.summaries.length === 0) return 'no runs match\n';
  return formatTable(
    ['POLICY', 'LABEL', 'RUNS', 'OK', 'RATE', 'TOTAL p50', 'DOWNTIME p50', 'DOWNTIME p99', 'GUEST BEFORE', 'GUEST DURING', 'HOST CPU', 'INTEGRITY'],
    r.summaries.map((s) => [
      policyDisplayName(s.kind),
      s.label || '-',
      String(s.runs),
      String(s.succeeded),
      formatPercent(s.completionRate),
      s.succeeded ? formatDuration(s.totalTimeMsP50) : '-',
      s.succeeded ? formatDuration(s.downtimeMsP50) : '-',
      s.succeeded ? formatDuration(s.downtimeMsP99) : '-',
      s.guestMsPerGibBefore ? `${formatNumber(s.guestMsPerGibBefore)} ms/GiB` : '-',
      s.guestMsPerGibDuring ? `${formatNumber(s.guestMsPerGibDuring)} ms/GiB` : '-',
      `${formatNumber(s.hostCpuSeconds, 1)} s`,
      String(s.integrityErrors),
    ]),
    ['left', 'left', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
  );
}
