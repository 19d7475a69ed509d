/**
 * QEMU's migration figures → migd's ProgressSample and MigrationState. Pure.
 */
import { MigrationState, type MigrationStats, type ProgressSample } from '../../shared/gen/migd/v1/common.js';

/** The part of `query-migrate`'s reply migd reads (QAPI MigrationInfo). */
export interface QmpMigrationInfo {
  status?: string;
  ram?: {
    transferred?: number;
    remaining?: number;
    total?: number;
    duplicate?: number;
    normal?: number;
    'dirty-pages-rate'?: number;
    mbps?: number;
    'dirty-sync-count'?: number;
    'postcopy-requests'?: number;
    'page-size'?: number;
  };
  'xbzrle-cache'?: { 'cache-miss'?: number; bytes?: number; pages?: number };
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  'setup-time'?: number;
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
  /** Destination only, with capability postcopy-blocktime, once its state is `completed` (ms). */
  'postcopy-blocktime'?: number;
  'postcopy-vcpu-blocktime'?: number[];
}

/**
 * The post-copy blocktime figures of a destination's `query-migrate` reply (capability
 * postcopy-blocktime; QEMU fills them in on the incoming side once its state is `completed`):
 * total time all vCPUs were blocked on missing pages at once, and per vCPU, in ms. Undefined
 * when the reply has none (not completed yet, no post-copy, or capability off).
 */
export function blocktimeOf(info: unknown): { postcopyBlocktimeMs: number; postcopyVcpuBlocktimeMs: number[] } | undefined {
  if (typeof info !== 'object' || info === null) return undefined;
  const i = info as QmpMigrationInfo;
  const total = i['postcopy-blocktime'];
  if (typeof total !== 'number' || !Number.isFinite(total) || total < 0) return undefined;
  const perVcpu = Array.isArray(i['postcopy-vcpu-blocktime']) ? i['postcopy-vcpu-blocktime'].filter((x) => typeof x === 'number' && Number.isFinite(x) && x >= 0) : [];
  return { postcopyBlocktimeMs: Math.round(total), postcopyVcpuBlocktimeMs: perVcpu.map((x) => Math.round(x)) };
}

/** Maps QEMU's migration status to migd's state (undefined for "none"). */
export function stateFromQemuStatus(status: string | undefined): MigrationState | undefined {
  switch (status) {
    case 'setup':
      return MigrationState.MIGRATION_STATE_SETUP;
    case 'active':
    case 'pre-switchover':
    case 'wait-unplug':
      return MigrationState.MIGRATION_STATE_PRECOPY;
    case 'device':
      return MigrationState.MIGRATION_STATE_SWITCHOVER;
    case 'postcopy-active':
      return MigrationState.MIGRATION_STATE_POSTCOPY;
    case 'postcopy-paused':
      return MigrationState.MIGRATION_STATE_POSTCOPY_PAUSED;
    case 'postcopy-recover-setup':
    case 'postcopy-recover':
      return MigrationState.MIGRATION_STATE_POSTCOPY_RECOVERING;
    case 'completed':
      return MigrationState.MIGRATION_STATE_VERIFYING;
    case 'failed':
      return MigrationState.MIGRATION_STATE_FAILED;
    case 'cancelling':
      return MigrationState.MIGRATION_STATE_CANCELLING;
    case 'cancelled':
      return MigrationState.MIGRATION_STATE_CANCELLED;
    default:
      return undefined;
  }
}

/** Context a sample needs besides QEMU's reply. */
export interface SampleContext {
  readonly now: Date;
  readonly startedAt: Date;
  readonly state: MigrationState;
  readonly downtimeLimitMs: number;
  readonly maxBandwidthBytesPerSec: number;
  readonly sourceCpuSeconds: number;
  readonly destinationCpuSeconds: number;
  /** The source's latest dirty-rate estimate, measured during pre-copy (bytes/s), 0 until the first. */
  readonly estimatedDirtyBytesPerSec?: number;
  /** Unique bytes dirtied within `dirtySetWindowMs`, measured during pre-copy (0 or absent: not yet; the window is then reported as 0). */
  readonly dirtySetBytes?: number;
  readonly dirtySetWindowMs?: number;
}

/** Builds a ProgressSample from a `query-migrate` reply. */
export function progressSample(info: QmpMigrationInfo, ctx: SampleContext): ProgressSample {
  const ram = info.ram ?? {};
  return {
    time: ctx.now,
    elapsedMs: Math.max(0, ctx.now.getTime() - ctx.startedAt.getTime()),
    state: ctx.state,
    qemuStatus: info.status ?? 'none',
    pass: ram['dirty-sync-count'] ?? 0,
    transferredBytes: ram.transferred ?? 0,
    remainingBytes: ram.remaining ?? 0,
    totalBytes: ram.total ?? 0,
    throughputMbps: ram.mbps ?? 0,
    dirtyPagesRate: ram['dirty-pages-rate'] ?? 0,
    pageSize: ram['page-size'] ?? 4096,
    expectedDowntimeMs: info['expected-downtime'] ?? 0,
    throttlePct: info['cpu-throttle-percentage'] ?? 0,
    postcopyRequests: ram['postcopy-requests'] ?? 0,
    downtimeLimitMs: ctx.downtimeLimitMs,
    maxBandwidthBytesPerSec: ctx.maxBandwidthBytesPerSec,
    sourceCpuSeconds: ctx.sourceCpuSeconds,
    destinationCpuSeconds: ctx.destinationCpuSeconds,
    xbzrleCacheMiss: info['xbzrle-cache']?.['cache-miss'] ?? 0,
    estimatedDirtyBytesPerSec: Math.round(ctx.estimatedDirtyBytesPerSec ?? 0),
    dirtySetBytes: Math.round(ctx.dirtySetBytes ?? 0),
    dirtySetWindowMs: ctx.dirtySetBytes ? (ctx.dirtySetWindowMs ?? 0) : 0,
    duplicatePages: ram.duplicate ?? 0,
  };
}

/** Final figures from the `query-migrate` reply read after the MIGRATION completed event. */
export function finalStats(info: QmpMigrationInfo, extra: Partial<MigrationStats>): MigrationStats {
  const ram = info.ram ?? {};
  return {
    totalTimeMs: info['total-time'] ?? 0,
    downtimeMs: info.downtime ?? 0,
    setupTimeMs: info['setup-time'] ?? 0,
    transferredBytes: ram.transferred ?? 0,
    passes: ram['dirty-sync-count'] ?? 0,
    postcopyRequests: ram['postcopy-requests'] ?? 0,
    sourceCpuSeconds: 0,
    destinationCpuSeconds: 0,
    integrityErrors: 0,
    pagesVerifiedAfter: 0,
    maxThrottlePct: 0,
    recoveries: 0,
    postcopyBlocktimeMs: 0,
    postcopyVcpuBlocktimeMs: [],
    checks: [],
    ...extra,
  };
}

/**
 * QEMU's downtime after a post-copy migration, corrected for a QEMU quirk: the post-copy
 * switch-over records its downtime in whole milliseconds, and completion fills it in again when it
 * is still 0 (`migration_downtime_end`: "if (!s->downtime)"), so a switch-over under 1 ms is
 * reported as the whole time from the source's STOP to completion — the post-copy phase, during
 * which the guest runs on the destination. Seen here as bimodal downtimes of 1–4 ms or ≈ the
 * post-copy phase (3.2 s) for identical runs with identical guest harm.
 * @param reportedMs QEMU's `downtime`
 * @param stopUs the source's STOP event (QEMU clock, µs); undefined when not seen
 * @param completedUs the source's `completed` MIGRATION event (µs)
 * @returns the downtime to report, and whether it was corrected (then 0: under 1 ms)
 */
export function postcopyDowntimeMs(reportedMs: number, stopUs: number | undefined, completedUs: number | undefined): { downtimeMs: number; corrected: boolean } {
  if (stopUs === undefined || completedUs === undefined || completedUs <= stopUs) return { downtimeMs: reportedMs, corrected: false };
  const spanMs = (completedUs - stopUs) / 1000;
  // A genuine switch-over ends when the device state is sent, well before completion; the quirk
  // reports STOP → completion itself (QEMU reads its clock a little after the event).
  const quirk = spanMs >= 50 && reportedMs >= spanMs - 5 && reportedMs <= spanMs + Math.max(50, spanMs * 0.05);
  return quirk ? { downtimeMs: 0, corrected: true } : { downtimeMs: reportedMs, corrected: false };
}

/**
 * Detects a stalled post-copy link: QEMU does not notice a dead TCP connection by itself (both
 * ends stay postcopy-active), so migd watches the transferred-bytes counter. A stall is declared
 * when it has not moved for `stallMs` while the migration is in post-copy.
 */
export class StallDetector {
  private lastBytes = -1;
  private lastChangeMs = 0;

  constructor(private readonly stallMs: number) {}

  /** Feeds a reading; returns true when the transfer has been stuck for stallMs. */
  update(transferredBytes: number, nowMs: number): boolean {
    if (transferredBytes !== this.lastBytes) {
      this.lastBytes = transferredBytes;
      this.lastChangeMs = nowMs;
      return false;
    }
    return nowMs - this.lastChangeMs >= this.stallMs;
  }

  /** Forgets history (after a recovery). */
  reset(nowMs: number): void {
    this.lastBytes = -1;
    this.lastChangeMs = nowMs;
  }
}
