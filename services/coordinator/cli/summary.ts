/**
 * A run's timeline in a few figures: how fast it moved, how hard the guest dirtied memory, how
 * much the policy throttled, and what the guest felt before, during and after (the workload's
 * ms/GiB, heartbeat gaps, integrity errors). Pure.
 */
import { MigrationState } from '../../shared/gen/migd/v1/common.js';
import type { GetRunTimelineResponse } from '../../shared/gen/migd/v1/coordinator.js';
import { guestTimeLost } from '../../shared/guest/harm.js';
import { mbpsToBytesPerSec } from '../domain/units.js';

/** Mean ms/GiB of the guest's write passes in one phase; NaN without samples. */
export interface GuestPhase {
  readonly samples: number;
  readonly meanMsPerGib: number;
}

export interface TimelineSummary {
  readonly progressSamples: number;
  /** Pre-copy passes: the run's final count, or the highest pass sampled while it runs. */
  readonly passes: number;
  readonly peakThroughputBytesPerSec: number;
  /** Mean of the non-zero throughput readings. */
  readonly meanThroughputBytesPerSec: number;
  readonly peakDirtyBytesPerSec: number;
  readonly maxThrottlePct: number;
  /** The downtime limit in force at the last sample. */
  readonly finalDowntimeLimitMs: number;
  readonly guestBefore: GuestPhase;
  readonly guestDuring: GuestPhase;
  readonly guestAfter: GuestPhase;
  /**
   * Guest time lost during the migration (ms, from the guest's own clock: services/shared/guest/
   * harm.ts): `pausedMs` while its clock stood still (switch-over, forced pauses, a destination
   * kept paused until the handover), `lostMs` that plus the work not done while slowed or stalled
   * against the pace before. NaN when the samples do not bracket the migration.
   */
  readonly guestPausedMs: number;
  readonly guestLongestPauseMs: number;
  readonly guestLostMs: number;
  /** Longest heartbeat gap the guest saw during the migration (a felt pause), in ms. */
  readonly maxHeartbeatGapDuringMs: number;
  /** Highest integrity-error count any guest sample reported. */
  readonly integrityErrors: number;
  /** CPU seconds of both QEMU processes at the last host sample (NaN without samples). */
  readonly hostCpuSeconds: number;
}

function phase(values: readonly number[]): GuestPhase {
  return { samples: values.length, meanMsPerGib: values.length === 0 ? NaN : values.reduce((a, b) => a + b, 0) / values.length };
}

/**
 * Summarises a timeline. The migration's window is the run's started_at..finished_at (falling
 * back to the first and last progress sample, then to everything being "during"). For the
 * guest's pace, "after" starts on arrival: when QEMU reported completion (the run entered
 * VERIFYING), since the guest runs on the destination while migd verifies it there.
 */
export function summarizeTimeline(t: GetRunTimelineResponse): TimelineSummary {
  const progress = t.progress;
  const first = progress[0]?.time?.getTime();
  const last = progress[progress.length - 1]?.time?.getTime();
  const start = t.run?.startedAt?.getTime() ?? first ?? -Infinity;
  const end = t.run?.finishedAt?.getTime() ?? last ?? Infinity;
  const arrived = t.run?.transitions.find((c) => c.to === MigrationState.MIGRATION_STATE_VERIFYING)?.time?.getTime() ?? end;

  const throughputs = progress.map((p) => mbpsToBytesPerSec(p.throughputMbps));
  const moving = throughputs.filter((x) => x > 0);
  const before: number[] = [];
  const during: number[] = [];
  const after: number[] = [];
  let maxGap = 0;
  let integrity = 0;
  for (const g of t.guest) {
    integrity = Math.max(integrity, g.integrityErrors);
    const at = g.time?.getTime();
    const inside = at === undefined || (at >= start && at <= end);
    if (inside) maxGap = Math.max(maxGap, g.heartbeatGapMs);
    if (g.msPerGib <= 0) continue;
    if (at !== undefined && at < start) before.push(g.msPerGib);
    else if (at !== undefined && at > arrived) after.push(g.msPerGib);
    else during.push(g.msPerGib);
  }
  // Whole-guest pace where the guest reports it, else every sample's (one worker's) pace.
  const combined = t.guest.some((g) => g.worker === -1 && g.msPerGib > 0);
  const beforePace = t.guest.filter((g) => g.msPerGib > 0 && (g.time?.getTime() ?? Infinity) < start && (!combined || g.worker === -1)).map((g) => g.msPerGib).sort((a, b) => a - b);
  const baseline = beforePace.length > 0 ? beforePace[Math.floor(beforePace.length / 2)]! : NaN;
  const clocks = t.guest.filter((g) => g.time).map((g) => ({ hostMs: g.time!.getTime(), guestMonoMs: g.guestMonoMs, msPerGib: !combined || g.worker === -1 ? g.msPerGib : 0 }));
  const lost = Number.isFinite(start) && Number.isFinite(end) ? guestTimeLost(clocks, baseline, start, end) : undefined;
  const cpu = t.hostCpu[t.hostCpu.length - 1];
  return {
    progressSamples: progress.length,
    // A short migration may finish between samples: the final figures know better.
    passes: Math.max(t.run?.stats?.passes ?? 0, progress.reduce((m, p) => Math.max(m, p.pass), 0)),
    peakThroughputBytesPerSec: throughputs.reduce((m, x) => Math.max(m, x), 0),
    meanThroughputBytesPerSec: moving.length === 0 ? 0 : moving.reduce((a, b) => a + b, 0) / moving.length,
    peakDirtyBytesPerSec: progress.reduce((m, p) => Math.max(m, p.dirtyPagesRate * (p.pageSize || 4096)), 0),
    maxThrottlePct: progress.reduce((m, p) => Math.max(m, p.throttlePct), 0),
    finalDowntimeLimitMs: progress[progress.length - 1]?.downtimeLimitMs ?? 0,
    guestBefore: phase(before),
    guestDuring: phase(during),
    guestAfter: phase(after),
    guestPausedMs: lost?.stoppedMs ?? NaN,
    guestLongestPauseMs: lost?.longestStopMs ?? NaN,
    guestLostMs: lost?.lostMs ?? NaN,
    maxHeartbeatGapDuringMs: maxGap,
    integrityErrors: integrity,
    hostCpuSeconds: cpu ? cpu.sourceCpuSeconds + cpu.destinationCpuSeconds : NaN,
  };
}
