/** The CSV form of an export: one row per progress sample, with its run's columns. */
import { migrationStateToJSON, policyActionKindToJSON, policyKindToJSON } from '../../shared/gen/migd/v1/common.js';
import type { GetRunTimelineResponse } from '../../shared/gen/migd/v1/coordinator.js';
import { toCsv, type CsvValue } from './csv.js';
import { normalizePolicyKind } from './mapping.js';

/** CSV columns: the run's, then the progress sample's. */
export const CSV_HEADER = [
  'run_id',
  'plan_id',
  'vm_name',
  'source_node_id',
  'destination_node_id',
  'policy_kind',
  'policy_label',
  'run_state',
  'priority',
  'memory_mib',
  'created_at',
  'started_at',
  'finished_at',
  'total_time_ms',
  'downtime_ms',
  'run_transferred_bytes',
  'integrity_errors',
  'error_reason',
  'error_message',
  'actions',
  'sample_time',
  'elapsed_ms',
  'sample_state',
  'qemu_status',
  'pass',
  'transferred_bytes',
  'remaining_bytes',
  'total_bytes',
  'throughput_mbps',
  'dirty_pages_rate',
  'page_size',
  'expected_downtime_ms',
  'throttle_pct',
  'postcopy_requests',
  'downtime_limit_ms',
  'max_bandwidth_bytes_per_sec',
  'source_cpu_seconds',
  'destination_cpu_seconds',
  'xbzrle_cache_miss',
  'duplicate_pages',
  'disk_transferred_bytes',
  'disk_total_bytes',
  'disk_rate_bytes_per_sec',
  'storage_phase',
] as const;

const iso = (d: Date | undefined): string => (d === undefined ? '' : d.toISOString());

/**
 * One CSV document for timelines: a row per progress sample (one empty-sample row for a run
 * without any). `labels` maps run ids to their policy labels.
 */
export function timelinesToCsv(timelines: readonly GetRunTimelineResponse[], labels: ReadonlyMap<string, string> = new Map(), opts: { header?: boolean } = {}): string {
  const rows: CsvValue[][] = [];
  for (const t of timelines) {
    const r = t.run;
    if (r === undefined) continue;
    const runCols: CsvValue[] = [
      r.id,
      r.planId,
      r.vmName,
      r.sourceNodeId,
      r.destinationNodeId,
      policyKindToJSON(normalizePolicyKind(r.policy?.kind ?? 0)),
      labels.get(r.id) ?? '',
      migrationStateToJSON(r.state),
      r.priority,
      r.memoryMib,
      iso(r.createdAt),
      iso(r.startedAt),
      iso(r.finishedAt),
      r.stats?.totalTimeMs,
      r.stats?.downtimeMs,
      r.stats?.transferredBytes,
      r.stats?.integrityErrors,
      r.error?.reason,
      r.error?.message,
      r.actions.map((a) => `${policyActionKindToJSON(a.kind)}=${a.value}`).join(';'),
    ];
    if (t.progress.length === 0) {
      rows.push([...runCols, ...new Array<CsvValue>(CSV_HEADER.length - runCols.length).fill('')]);
      continue;
    }
    for (const s of t.progress) {
      rows.push([
        ...runCols,
        iso(s.time),
        s.elapsedMs,
        migrationStateToJSON(s.state),
        s.qemuStatus,
        s.pass,
        s.transferredBytes,
        s.remainingBytes,
        s.totalBytes,
        s.throughputMbps,
        s.dirtyPagesRate,
        s.pageSize,
        s.expectedDowntimeMs,
        s.throttlePct,
        s.postcopyRequests,
        s.downtimeLimitMs,
        s.maxBandwidthBytesPerSec,
        s.sourceCpuSeconds,
        s.destinationCpuSeconds,
        s.xbzrleCacheMiss,
        s.duplicatePages,
        s.diskTransferredBytes,
        s.diskTotalBytes,
        s.diskRateBytesPerSec,
        s.storagePhase === undefined ? undefined : s.storagePhase ? 1 : 0,
      ]);
    }
  }
  const csv = toCsv(CSV_HEADER, rows);
  // Later pages of a paged export leave the header out, so the pages concatenate into one file.
  return opts.header === false ? csv.slice(csv.indexOf('\r\n') + 2) : csv;
}
