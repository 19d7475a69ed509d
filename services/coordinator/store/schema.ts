/**
 * The application's typed view of the history schema (see migrations/). Times are ms since the
 * epoch, enums are proto enum numbers, `*_json` columns hold proto3 JSON.
 */
import type { ColumnType, Generated, Insertable, Selectable } from 'kysely';

export interface NodesTable {
  id: string;
  management_address: string;
  migration_address: string;
  host_json: string;
  status: number;
  last_heartbeat_at: number | null;
  updated_at: number;
}

export interface VmsTable {
  name: string;
  node_id: string | null;
  state: number;
  memory_mib: number;
  info_json: string;
  updated_at: number;
}

export interface PlansTable {
  id: string;
  /** The scoped key (see scopedIdempotencyKey); unique. */
  idempotency_key: string;
  /** The identity that submitted the plan; '' for plans stored before keys were scoped. */
  idempotency_scope: Generated<string>;
  created_at: number;
  state: number;
  priority: number;
  ordering_reason: string;
  request_json: string;
  migrations_json: string;
}

export interface RunsTable {
  id: string;
  plan_id: string | null;
  vm_name: string;
  source_node_id: string;
  destination_node_id: string;
  policy_json: string;
  policy_kind: number;
  policy_label: string;
  state: number;
  priority: number;
  memory_mib: number;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  last_sequence: ColumnType<number, number | undefined, number>;
  stats_json: string | null;
  total_time_ms: number | null;
  downtime_ms: number | null;
  transferred_bytes: number | null;
  host_cpu_seconds: number | null;
  integrity_errors: number | null;
  error_reason: string | null;
  error_message: string | null;
  error_code: string | null;
  /** proto3 JSON of the NetworkBlackout measured from outside (RecordRunBlackout); NULL: none. */
  network_blackout_json: Generated<string | null>;
  network_blackout_ms: Generated<number | null>;
  /** What the run measured of the guest's harm (domain/policy/measured.ts RunCostFigures); NULL: not measured. */
  cost_precopy_harm_rate: Generated<number | null>;
  cost_precopy_ms: Generated<number | null>;
  cost_postcopy_lost_ms: Generated<number | null>;
  cost_postcopy_backlog_ms: Generated<number | null>;
  /** The working set (bytes) the adaptive policy found the backlog held at; NULL: none seen. */
  cost_working_set_bytes: Generated<number | null>;
  /** Guest ms lost from the run's one downtime raise to the end, and the backlog then (transfer ms); NULL: not measured. */
  cost_raise_lost_ms: Generated<number | null>;
  cost_raise_backlog_ms: Generated<number | null>;
  /** A run that switched to post-copy at its first pass boundary: the backlog that boundary found (bytes); NULL: not measured. */
  cost_first_boundary_bytes: Generated<number | null>;
}

export interface RunTransitionsTable {
  id: Generated<number>;
  run_id: string;
  at: number;
  from_state: number;
  to_state: number;
  reason: string;
}

export interface PolicyActionsTable {
  id: Generated<number>;
  run_id: string;
  at: number;
  elapsed_ms: number;
  kind: number;
  value: number;
  reason: string;
  actor: string;
}

export interface ProgressSamplesTable {
  id: Generated<number>;
  run_id: string;
  at: number;
  elapsed_ms: number;
  state: number;
  qemu_status: string;
  pass: number;
  transferred_bytes: number;
  remaining_bytes: number;
  total_bytes: number;
  throughput_mbps: number;
  dirty_pages_rate: number;
  page_size: number;
  expected_downtime_ms: number;
  throttle_pct: number;
  postcopy_requests: number;
  downtime_limit_ms: number;
  max_bandwidth_bytes_per_sec: number;
  source_cpu_seconds: number;
  destination_cpu_seconds: number;
  xbzrle_cache_miss: number;
  duplicate_pages: number;
  estimated_dirty_bytes_per_sec: Generated<number>;
  dirty_set_bytes: Generated<number>;
  dirty_set_window_ms: Generated<number>;
  /** The storage copy's figures (NULL: none in the sample). storage_phase is 0/1. */
  disk_transferred_bytes: number | null;
  disk_total_bytes: number | null;
  disk_rate_bytes_per_sec: number | null;
  storage_phase: number | null;
}

export interface GuestSamplesTable {
  id: Generated<number>;
  vm_name: string;
  run_id: string | null;
  at: number;
  guest_mono_ms: number;
  worker: number;
  ms_per_gib: number;
  pass: number;
  pages_verified: number;
  integrity_errors: number;
  heartbeat_gap_ms: number;
}

export interface HostCpuSamplesTable {
  id: Generated<number>;
  run_id: string;
  at: number;
  source_cpu_seconds: number;
  destination_cpu_seconds: number;
}

export interface OutboxTable {
  seq: Generated<number>;
  event_id: string;
  subject: string;
  payload: Uint8Array;
  run_id: string | null;
  run_sequence: number;
  created_at: number;
  published_at: number | null;
}

export interface HistoryDatabase {
  nodes: NodesTable;
  vms: VmsTable;
  plans: PlansTable;
  runs: RunsTable;
  run_transitions: RunTransitionsTable;
  policy_actions: PolicyActionsTable;
  progress_samples: ProgressSamplesTable;
  guest_samples: GuestSamplesTable;
  host_cpu_samples: HostCpuSamplesTable;
  outbox: OutboxTable;
}

export type RunRow = Selectable<RunsTable>;
export type PlanRow = Selectable<PlansTable>;
export type NodeRow = Selectable<NodesTable>;
export type VmRow = Selectable<VmsTable>;
export type TransitionRow = Selectable<RunTransitionsTable>;
export type ActionRow = Selectable<PolicyActionsTable>;
export type ProgressRow = Selectable<ProgressSamplesTable>;
export type GuestRow = Selectable<GuestSamplesTable>;
export type HostCpuRow = Selectable<HostCpuSamplesTable>;
export type NewProgressRow = Insertable<ProgressSamplesTable>;
export type NewGuestRow = Insertable<GuestSamplesTable>;
export type NewHostCpuRow = Insertable<HostCpuSamplesTable>;
