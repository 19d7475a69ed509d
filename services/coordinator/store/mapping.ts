/** Conversions between the proto messages and the history tables' rows. */
import {
  HostInfo,
  MigrationPolicy,
  MigrationStats,
  NetworkBlackout,
  PolicyKind,
  VmInfo,
  type GuestPerfSample,
  type PolicyAction,
  type ProgressSample,
} from '../../shared/gen/migd/v1/common.js';
import { HostCpuSample, PlannedMigration, SubmitPlanRequest, type Plan, type Run } from '../../shared/gen/migd/v1/coordinator.js';
import type { StateChange } from '../../shared/gen/migd/v1/node.js';
import type {
  ActionRow,
  GuestRow,
  HostCpuRow,
  NewGuestRow,
  NewHostCpuRow,
  NewProgressRow,
  PlanRow,
  ProgressRow,
  RunRow,
  TransitionRow,
  VmRow,
} from './schema.js';
import { errorInfoFromParts } from '../../shared/policy/error-info.js';

/** Date → ms; `fallback` when undefined. */
export function ms(d: Date | undefined, fallback: number): number {
  return d === undefined ? fallback : d.getTime();
}

/** ms → Date; undefined for null. */
export function date(v: number | null): Date | undefined {
  return v === null ? undefined : new Date(v);
}

/** UNSPECIFIED is "treated as FIXED" (common.proto), so it is stored as FIXED. */
export function normalizePolicyKind(k: PolicyKind): PolicyKind {
  return k === PolicyKind.POLICY_KIND_UNSPECIFIED ? PolicyKind.POLICY_KIND_FIXED : k;
}

export function policyToJson(p: MigrationPolicy): string {
  return JSON.stringify(MigrationPolicy.toJSON(MigrationPolicy.fromPartial(p)));
}

export function transitionToProto(r: TransitionRow): StateChange {
  return { time: new Date(r.at), from: r.from_state, to: r.to_state, reason: r.reason };
}

export function actionToProto(r: ActionRow): PolicyAction {
  return {
    time: new Date(r.at),
    elapsedMs: r.elapsed_ms,
    kind: r.kind,
    value: r.value,
    reason: r.reason,
    actor: r.actor,
  };
}

export function runToProto(r: RunRow, transitions: StateChange[], actions: PolicyAction[]): Run {
  return {
    id: r.id,
    planId: r.plan_id ?? '',
    vmName: r.vm_name,
    sourceNodeId: r.source_node_id,
    destinationNodeId: r.destination_node_id,
    policy: MigrationPolicy.fromJSON(JSON.parse(r.policy_json)),
    state: r.state,
    transitions,
    createdAt: new Date(r.created_at),
    startedAt: date(r.started_at),
    finishedAt: date(r.finished_at),
    stats: r.stats_json === null ? undefined : MigrationStats.fromJSON(JSON.parse(r.stats_json)),
    error:
      r.error_reason === null && r.error_message === null
        ? undefined
        : errorInfoFromParts({ reason: r.error_reason ?? '', message: r.error_message ?? '', code: r.error_code ?? '' }),
    actions,
    memoryMib: r.memory_mib,
    priority: r.priority,
    networkBlackout: r.network_blackout_json == null ? undefined : NetworkBlackout.fromJSON(JSON.parse(r.network_blackout_json)),
  };
}

/**
 * The stored form of an idempotency key: `<scope length>:<scope>:<key>` (unambiguous whatever
 * either part holds), or the bare key for the empty scope (plans stored before keys were scoped).
 */
export function scopedIdempotencyKey(scope: string, key: string): string {
  return scope === '' ? key : `${scope.length}:${scope}:${key}`;
}

/** The caller's key of a stored plan row. */
function clientKey(r: Pick<PlanRow, 'idempotency_key' | 'idempotency_scope'>): string {
  const scope = r.idempotency_scope ?? '';
  return scope === '' ? r.idempotency_key : r.idempotency_key.slice(`${scope.length}:${scope}:`.length);
}

export function planToProto(r: PlanRow): Plan {
  const migrations = (JSON.parse(r.migrations_json) as unknown[]).map((m) => PlannedMigration.fromJSON(m));
  return {
    id: r.id,
    idempotencyKey: clientKey(r),
    createdAt: new Date(r.created_at),
    state: r.state,
    migrations,
    orderingReason: r.ordering_reason,
    request: SubmitPlanRequest.fromJSON(JSON.parse(r.request_json)),
  };
}

export function vmToProto(r: VmRow): VmInfo {
  return VmInfo.fromJSON(JSON.parse(r.info_json));
}

export function hostFromJson(json: string): HostInfo {
  return HostInfo.fromJSON(JSON.parse(json));
}

export function progressToRow(runId: string, s: ProgressSample, at: number): NewProgressRow {
  return {
    run_id: runId,
    at,
    elapsed_ms: s.elapsedMs,
    state: s.state,
    qemu_status: s.qemuStatus,
    pass: s.pass,
    transferred_bytes: s.transferredBytes,
    remaining_bytes: s.remainingBytes,
    total_bytes: s.totalBytes,
    throughput_mbps: s.throughputMbps,
    dirty_pages_rate: s.dirtyPagesRate,
    page_size: s.pageSize,
    expected_downtime_ms: s.expectedDowntimeMs,
    throttle_pct: s.throttlePct,
    postcopy_requests: s.postcopyRequests,
    downtime_limit_ms: s.downtimeLimitMs,
    max_bandwidth_bytes_per_sec: s.maxBandwidthBytesPerSec,
    source_cpu_seconds: s.sourceCpuSeconds,
    destination_cpu_seconds: s.destinationCpuSeconds,
    xbzrle_cache_miss: s.xbzrleCacheMiss,
    duplicate_pages: s.duplicatePages,
    estimated_dirty_bytes_per_sec: s.estimatedDirtyBytesPerSec,
    dirty_set_bytes: s.dirtySetBytes,
    dirty_set_window_ms: s.dirtySetWindowMs,
    disk_transferred_bytes: s.diskTransferredBytes ?? null,
    disk_total_bytes: s.diskTotalBytes ?? null,
    disk_rate_bytes_per_sec: s.diskRateBytesPerSec ?? null,
    storage_phase: s.storagePhase === undefined ? null : s.storagePhase ? 1 : 0,
  };
}

export function progressToProto(r: ProgressRow): ProgressSample {
  return {
    time: new Date(r.at),
    elapsedMs: r.elapsed_ms,
    state: r.state,
    qemuStatus: r.qemu_status,
    pass: r.pass,
    transferredBytes: r.transferred_bytes,
    remainingBytes: r.remaining_bytes,
    totalBytes: r.total_bytes,
    throughputMbps: r.throughput_mbps,
    dirtyPagesRate: r.dirty_pages_rate,
    pageSize: r.page_size,
    expectedDowntimeMs: r.expected_downtime_ms,
    throttlePct: r.throttle_pct,
    postcopyRequests: r.postcopy_requests,
    downtimeLimitMs: r.downtime_limit_ms,
    maxBandwidthBytesPerSec: r.max_bandwidth_bytes_per_sec,
    sourceCpuSeconds: r.source_cpu_seconds,
    destinationCpuSeconds: r.destination_cpu_seconds,
    xbzrleCacheMiss: r.xbzrle_cache_miss,
    duplicatePages: r.duplicate_pages,
    estimatedDirtyBytesPerSec: r.estimated_dirty_bytes_per_sec,
    dirtySetBytes: r.dirty_set_bytes,
    dirtySetWindowMs: r.dirty_set_window_ms,
    ...(r.disk_transferred_bytes !== null ? { diskTransferredBytes: Number(r.disk_transferred_bytes) } : {}),
    ...(r.disk_total_bytes !== null ? { diskTotalBytes: Number(r.disk_total_bytes) } : {}),
    ...(r.disk_rate_bytes_per_sec !== null ? { diskRateBytesPerSec: Number(r.disk_rate_bytes_per_sec) } : {}),
    ...(r.storage_phase !== null ? { storagePhase: Number(r.storage_phase) !== 0 } : {}),
  };
}

export function guestToRow(s: GuestPerfSample, runId: string | null, at: number): NewGuestRow {
  return {
    vm_name: s.vmName,
    run_id: runId,
    at,
    guest_mono_ms: s.guestMonoMs,
    worker: s.worker,
    ms_per_gib: s.msPerGib,
    pass: s.pass,
    pages_verified: s.pagesVerified,
    integrity_errors: s.integrityErrors,
    heartbeat_gap_ms: s.heartbeatGapMs,
  };
}

export function guestToProto(r: GuestRow): GuestPerfSample {
  return {
    time: new Date(r.at),
    guestMonoMs: r.guest_mono_ms,
    worker: r.worker,
    msPerGib: r.ms_per_gib,
    pass: r.pass,
    pagesVerified: r.pages_verified,
    integrityErrors: r.integrity_errors,
    heartbeatGapMs: r.heartbeat_gap_ms,
    vmName: r.vm_name,
  };
}

export function hostCpuToRow(runId: string, s: HostCpuSample, at: number): NewHostCpuRow {
  return {
    run_id: runId,
    at,
    // Callers outside TypeScript may pass partial messages; the columns are NOT NULL.
    source_cpu_seconds: s.sourceCpuSeconds ?? 0,
    destination_cpu_seconds: s.destinationCpuSeconds ?? 0,
  };
}

export function hostCpuToProto(r: HostCpuRow): HostCpuSample {
  return HostCpuSample.fromPartial({
    time: new Date(r.at),
    sourceCpuSeconds: r.source_cpu_seconds,
    destinationCpuSeconds: r.destination_cpu_seconds,
  });
}
