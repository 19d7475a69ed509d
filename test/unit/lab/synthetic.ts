/**
 * Synthetic run timelines for the lab's unit tests: shaped like what the coordinator's
 * GetRunTimeline returns (progress every 250 ms, guest samples every 100 ms per worker plus the
 * combined one, host CPU samples, transitions, actions, final stats), with known figures.
 */
import {
  MigrationState,
  PolicyActionKind,
  PolicyKind,
  type GuestPerfSample,
  type MigrationPolicy,
  type PolicyAction,
  type ProgressSample,
} from '../../../services/shared/gen/migd/v1/common.js';
import type { GetRunTimelineResponse, HostCpuSample } from '../../../services/shared/gen/migd/v1/coordinator.js';
import type { StateChange } from '../../../services/shared/gen/migd/v1/node.js';
import { errorInfo } from '../../../services/shared/policy/error-info.js';

const MiB = 1024 * 1024;

export interface SyntheticRun {
  id: string;
  /** Epoch ms the migration starts. */
  start: number;
  /** Migration duration in ms. */
  durationMs: number;
  state?: MigrationState;
  downtimeMs?: number;
  /** Baseline combined ms/GiB; per-worker values are workers × this. */
  baseline?: number;
  /** Combined ms/GiB during the migration (constant). */
  during?: number;
  workers?: number;
  /** Guest samples this long before the start and after the end. */
  beforeMs?: number;
  afterMs?: number;
  postcopyAtMs?: number;
  throttle?: boolean;
  integrityErrors?: number;
  memoryBytes?: number;
  kind?: PolicyKind;
  /** Host CPU: cores used by source and destination during the migration. */
  srcCores?: number;
  dstCores?: number;
}

function progress(at: number, start: number, o: Required<Pick<SyntheticRun, 'durationMs' | 'memoryBytes'>> & SyntheticRun): ProgressSample {
  const e = at - start;
  const f = Math.min(1, e / o.durationMs);
  const post = o.postcopyAtMs !== undefined && e >= o.postcopyAtMs;
  return {
    time: new Date(at),
    elapsedMs: e,
    state: post ? MigrationState.MIGRATION_STATE_POSTCOPY : MigrationState.MIGRATION_STATE_PRECOPY,
    qemuStatus: post ? 'postcopy-active' : 'active',
    pass: 1 + Math.floor(f * 6),
    transferredBytes: Math.round(f * o.memoryBytes * 1.5),
    remainingBytes: Math.round((1 - f) * o.memoryBytes * 0.6),
    totalBytes: o.memoryBytes,
    throughputMbps: 600,
    dirtyPagesRate: 20_000,
    pageSize: 4096,
    expectedDowntimeMs: 300,
    throttlePct: o.throttle ? Math.min(99, 20 + 10 * Math.floor(f * 8)) : 0,
    postcopyRequests: post ? 100 : 0,
    downtimeLimitMs: 300,
    maxBandwidthBytesPerSec: 0,
    sourceCpuSeconds: (e / 1000) * (o.srcCores ?? 1),
    destinationCpuSeconds: (e / 1000) * (o.dstCores ?? 0.25),
    xbzrleCacheMiss: 0,
    duplicatePages: 0,
    estimatedDirtyBytesPerSec: 0,
    dirtySetBytes: 0,
    dirtySetWindowMs: 0,
  };
}

/** A timeline with the given shape; see {@link SyntheticRun}. */
export function syntheticTimeline(r: SyntheticRun): GetRunTimelineResponse {
  const o = { memoryBytes: 512 * MiB, ...r };
  const end = r.start + r.durationMs;
  const state = r.state ?? MigrationState.MIGRATION_STATE_SUCCEEDED;
  const baseline = r.baseline ?? 560;
  const during = r.during ?? 1120;
  const workers = r.workers ?? 2;
  const prog: ProgressSample[] = [];
  for (let t = r.start + 250; t <= end; t += 250) prog.push(progress(t, r.start, o));
  const guest: GuestPerfSample[] = [];
  for (let t = r.start - (r.beforeMs ?? 6000); t <= end + (r.afterMs ?? 3000); t += 100) {
    const combined = t > r.start && t <= end ? during : baseline;
    const sample = (worker: number, ms: number): GuestPerfSample => ({
      time: new Date(t),
      guestMonoMs: t - r.start + 100_000,
      worker,
      msPerGib: ms,
      pass: 1,
      pagesVerified: 1000,
      integrityErrors: t > end ? (r.integrityErrors ?? 0) : 0,
      heartbeatGapMs: 0,
      vmName: 'vm',
    });
    for (let w = 0; w < workers; w++) guest.push(sample(w, combined * workers));
    guest.push(sample(-1, combined));
  }
  const hostCpu: HostCpuSample[] = prog.map((p) => ({ time: p.time, sourceCpuSeconds: p.sourceCpuSeconds, destinationCpuSeconds: p.destinationCpuSeconds }));
  const transitions: StateChange[] = [
    { time: new Date(r.start - 500), from: MigrationState.MIGRATION_STATE_QUEUED, to: MigrationState.MIGRATION_STATE_PREPARING, reason: '' },
    { time: new Date(r.start), from: MigrationState.MIGRATION_STATE_PREPARING, to: MigrationState.MIGRATION_STATE_PRECOPY, reason: '' },
  ];
  const actions: PolicyAction[] = [];
  if (r.postcopyAtMs !== undefined) {
    transitions.push({ time: new Date(r.start + r.postcopyAtMs), from: MigrationState.MIGRATION_STATE_PRECOPY, to: MigrationState.MIGRATION_STATE_POSTCOPY, reason: 'post-copy' });
    actions.push({ time: new Date(r.start + r.postcopyAtMs), elapsedMs: r.postcopyAtMs, kind: PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY, value: 0, reason: 'test', actor: 'policy:adaptive' });
  }
  transitions.push({ time: new Date(end), from: MigrationState.MIGRATION_STATE_PRECOPY, to: state, reason: 'done' });
  const policy: MigrationPolicy = {
    kind: r.kind ?? PolicyKind.POLICY_KIND_FIXED,
    downtimeLimitMs: 300,
    maxBandwidthBytesPerSec: 0,
    autoConverge: undefined,
    postcopy: undefined,
    xbzrle: undefined,
    multifd: undefined,
    switchoverAck: false,
    tls: false,
    completionTimeoutSecPerGib: 0,
    progressTimeoutSec: 0,
    timeoutAction: 0,
    downtimeSteps: [],
    maxDowntimeMs: 0,
  };
  const last = prog[prog.length - 1]!;
  const ok = state === MigrationState.MIGRATION_STATE_SUCCEEDED;
  return {
    run: {
      id: r.id,
      planId: 'plan',
      vmName: 'vm',
      sourceNodeId: 'a',
      destinationNodeId: 'b',
      policy,
      state,
      transitions,
      createdAt: new Date(r.start - 1000),
      startedAt: new Date(r.start),
      finishedAt: new Date(end),
      stats: {
        totalTimeMs: r.durationMs,
        downtimeMs: ok ? (r.downtimeMs ?? 50) : 0,
        setupTimeMs: 10,
        transferredBytes: last.transferredBytes,
        passes: 5,
        postcopyRequests: 0,
        sourceCpuSeconds: last.sourceCpuSeconds,
        destinationCpuSeconds: last.destinationCpuSeconds,
        integrityErrors: r.integrityErrors ?? 0,
        pagesVerifiedAfter: ok ? 1000 : 0,
        maxThrottlePct: Math.max(0, ...prog.map((p) => p.throttlePct)),
        recoveries: 0,
        postcopyBlocktimeMs: 0,
        postcopyVcpuBlocktimeMs: [],
        checks: [],
      },
      error: ok ? undefined : errorInfo('DEADLINE_EXCEEDED', 'TIMEOUT', 'completion timeout'),
      actions,
      memoryMib: o.memoryBytes / MiB,
      priority: 0,
    },
    progress: prog,
    guest,
    hostCpu,
  };
}
