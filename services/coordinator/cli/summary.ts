/**
 * A run's timeline in a few figures: how fast it moved, how hard the guest dirtied memory, how
 * much the policy throttled, and what the guest felt before, during and after (the workload's
 * ms/GiB, heartbeat gaps, integrity errors). Pure.
 */
import type { GetRunTimelineResponse } from '../../shared/gen/migd/v1/coordinator.js';
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
 * back to the first and last progress sample, then to everything being "during").
 */
export function summarizeTimeline(t: GetRunTimelineResponse): TimelineSummary {
  const progress = t.progress;
  const first = progress[0]?.time?.getTime();
  const last = progress[progress.length - 1]?.time?.getTime();
  const start = t.run?.startedAt?.getTime() ?? first ?? -Infinity;
  const end = t.run?.finishedAt?.getTime() ?? last ?? Infinity;

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
    else if (at !== undefined && at > end) after.push(g.msPerGib);
    else during.push(g.msPerGib);
  }
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
    maxHeartbeatGapDuringMs: maxGap,
    integrityErrors: integrity,
    hostCpuSeconds: cpu ? cpu.sourceCpuSeconds + cpu.destinationCpuSeconds : NaN,
  };
}
