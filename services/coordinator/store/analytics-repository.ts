/**
 * Queries over the run history: pages of runs, a run's timeline, the per-policy comparison, and
 * the export (JSON or CSV) of the runs a filter selects.
 */
import { InvalidArgumentError, NotFoundError } from '../../shared/errors.js';
import { type GuestPerfSample, MigrationState } from '../../shared/gen/migd/v1/common.js';
import {
  ExportFormat,
  GetRunTimelineResponse,
  type ComparePoliciesResponse,
  type ExportRunsResponse,
  type ListRunsRequest,
  type ListRunsResponse,
  type PolicySummary,
  type RunFilter,
} from '../../shared/gen/migd/v1/coordinator.js';
import type { Db, StoreDatabase } from './database.js';
import { timelinesToCsv } from './export-csv.js';
import { filterConditions, normalizeFilter } from './filters.js';
import { guestToProto, hostCpuToProto, progressToProto } from './mapping.js';
import { decodePageToken, encodePageToken, filterFingerprint } from './page-token.js';
import { loadRuns } from './plan-run-repository.js';
import { mean, orZero, quantile } from './stats.js';
import type { AnalyticsRepository, CompareOptions, ExportPage } from './types.js';

/** Runs per export page when the caller does not say. */
export const EXPORT_PAGE_DEFAULT = 100;
/** Most runs one export page holds. */
export const EXPORT_PAGE_MAX = 500;

export class SqlAnalyticsRepository implements AnalyticsRepository {
  constructor(private readonly d: StoreDatabase) {}

  async listRuns(request: Partial<ListRunsRequest>): Promise<ListRunsResponse> {
    const filter = normalizeFilter(request.filter);
    const pageSize = Math.min(1000, Math.max(1, request.pageSize || 50));
    const fp = filterFingerprint(filter);
    const cursor = request.pageToken ? decodePageToken(request.pageToken, fp) : null;
    return this.d.read(async (conn) => {
      const rows = await conn
        .selectFrom('runs')
        .selectAll()
        .where((eb) => {
          const c = filterConditions(eb, filter);
          if (cursor !== null) {
            c.push(
              eb.or([
                eb('runs.created_at', '<', cursor.createdAtMs),
                eb.and([eb('runs.created_at', '=', cursor.createdAtMs), eb('runs.id', '<', cursor.id)]),
              ]),
            );
          }
          return eb.and(c);
        })
        .orderBy('created_at', 'desc')
        .orderBy('id', 'desc')
        .limit(pageSize + 1)
        .execute();
      const more = rows.length > pageSize;
      const page = more ? rows.slice(0, pageSize) : rows;
      const last = page[page.length - 1];
      return {
        runs: await loadRuns(conn, page),
        nextPageToken: more && last !== undefined ? encodePageToken({ createdAtMs: last.created_at, id: last.id }, fp) : '',
      };
    });
  }

  async getRunTimeline(runId: string): Promise<GetRunTimelineResponse> {
    return this.d.read((conn) => this.timeline(conn, runId));
  }

  async guestSamplesBeforeRun(runId: string): Promise<GuestPerfSample[]> {
    const now = this.d.now();
    const window = this.d.o.guestWindowMs;
    const rows = await this.d.read((conn) =>
      conn
        .selectFrom('guest_samples as g')
        .innerJoin('runs as r', 'r.vm_name', 'g.vm_name')
        .selectAll('g')
        .where('r.id', '=', runId)
        .where((eb) => eb('g.at', '>=', eb(eb.fn.coalesce('r.started_at', 'r.created_at'), '-', window)))
        .where('g.at', '<=', now)
        .orderBy('g.at')
        .orderBy('g.id')
        .execute(),
    );
    return rows.map(guestToProto);
  }

  private async timeline(conn: Db, runId: string): Promise<GetRunTimelineResponse> {
    const row = await conn.selectFrom('runs').selectAll().where('id', '=', runId).executeTakeFirst();
    if (row === undefined) throw new NotFoundError(`run ${runId} not found`);
    const [run] = await loadRuns(conn, [row]);
    const progress = await conn.selectFrom('progress_samples').selectAll().where('run_id', '=', runId).orderBy('at').orderBy('id').execute();
    const from = (row.started_at ?? row.created_at) - this.d.o.guestWindowMs;
    const to = (row.finished_at ?? this.d.now()) + this.d.o.guestWindowMs;
    const guest = await conn
      .selectFrom('guest_samples')
      .selectAll()
      .where('vm_name', '=', row.vm_name)
      .where('at', '>=', from)
      .where('at', '<=', to)
      .orderBy('at')
      .orderBy('id')
      .execute();
    const cpu = await conn.selectFrom('host_cpu_samples').selectAll().where('run_id', '=', runId).orderBy('at').orderBy('id').execute();
    return {
      run,
      progress: progress.map(progressToProto),
      guest: guest.map(guestToProto),
      hostCpu: cpu.map(hostCpuToProto),
    };
  }

  async comparePolicies(filter: Partial<RunFilter> = {}, opts: CompareOptions = {}): Promise<ComparePoliciesResponse> {
    const f = normalizeFilter(filter);
    const window = opts.guestWindowMs ?? this.d.o.guestWindowMs;
    if (!(window >= 0)) throw new InvalidArgumentError('guestWindowMs must be >= 0');
    this.d.checkOpen();
    const rows = await this.d.db
      .selectFrom('runs')
      .select((eb) => [
        'runs.id',
        'runs.policy_kind',
        'runs.policy_label',
        'runs.state',
        'runs.total_time_ms',
        'runs.downtime_ms',
        eb
          .selectFrom('guest_samples as g')
          .select((g) => g.fn.avg<number>('g.ms_per_gib').as('v'))
          .whereRef('g.vm_name', '=', 'runs.vm_name')
          .where('g.ms_per_gib', '>', 0)
          .where((g) => g('g.at', '>=', g(eb.ref('runs.started_at'), '-', window)))
          .whereRef('g.at', '<', 'runs.started_at')
          .as('guest_before'),
        eb
          .selectFrom('guest_samples as g')
          .select((g) => g.fn.avg<number>('g.ms_per_gib').as('v'))
          .whereRef('g.vm_name', '=', 'runs.vm_name')
          .where('g.ms_per_gib', '>', 0)
          .whereRef('g.at', '>=', 'runs.started_at')
          .whereRef('g.at', '<=', 'runs.finished_at')
          .as('guest_during'),
        eb.fn
          .coalesce(
            'runs.host_cpu_seconds',
            eb
              .selectFrom('host_cpu_samples as h')
              .select((h) => h(h.ref('h.source_cpu_seconds'), '+', h.ref('h.destination_cpu_seconds')).as('v'))
              .whereRef('h.run_id', '=', 'runs.id')
              .orderBy('h.at', 'desc')
              .orderBy('h.id', 'desc')
              .limit(1),
          )
          .as('host_cpu'),
        eb.fn
          .coalesce(
            'runs.integrity_errors',
            eb
              .selectFrom('guest_samples as g')
              .select((g) => g.fn.max('g.integrity_errors').as('v'))
              .whereRef('g.run_id', '=', 'runs.id'),
          )
          .as('integrity'),
      ])
      .where((eb) => eb.and([...filterConditions(eb, f), eb('runs.finished_at', 'is not', null)]))
      .execute();

    interface Acc {
      kind: number;
      label: string;
      runs: number;
      succeeded: number;
      total: number[];
      downtime: number[];
      before: number[];
      during: number[];
      cpu: number[];
      integrity: number;
    }
    const groups = new Map<string, Acc>();
    for (const r of rows) {
      const key = `${r.policy_kind}\u0000${r.policy_label}`;
      let g = groups.get(key);
      if (g === undefined) {
        g = { kind: r.policy_kind, label: r.policy_label, runs: 0, succeeded: 0, total: [], downtime: [], before: [], during: [], cpu: [], integrity: 0 };
        groups.set(key, g);
      }
      g.runs++;
      if (r.state === MigrationState.MIGRATION_STATE_SUCCEEDED) {
        g.succeeded++;
        if (r.total_time_ms !== null) g.total.push(r.total_time_ms);
        if (r.downtime_ms !== null) g.downtime.push(r.downtime_ms);
      }
      if (r.guest_before !== null) g.before.push(Number(r.guest_before));
      if (r.guest_during !== null) g.during.push(Number(r.guest_during));
      if (r.host_cpu !== null) g.cpu.push(Number(r.host_cpu));
      if (r.integrity !== null) g.integrity += Number(r.integrity);
    }
    const summaries: PolicySummary[] = [...groups.values()]
      .sort((a, b) => a.kind - b.kind || (a.label < b.label ? -1 : a.label > b.label ? 1 : 0))
      .map((g) => ({
        kind: g.kind,
        label: g.label,
        runs: g.runs,
        succeeded: g.succeeded,
        completionRate: g.runs === 0 ? 0 : g.succeeded / g.runs,
        totalTimeMsP50: orZero(quantile(g.total, 0.5)),
        downtimeMsP50: orZero(quantile(g.downtime, 0.5)),
        downtimeMsP99: orZero(quantile(g.downtime, 0.99)),
        guestMsPerGibBefore: orZero(mean(g.before)),
        guestMsPerGibDuring: orZero(mean(g.during)),
        hostCpuSeconds: orZero(mean(g.cpu)),
        integrityErrors: g.integrity,
      }));
    return { summaries };
  }

  async exportRuns(filter: Partial<RunFilter>, format: ExportFormat, page: ExportPage = {}): Promise<ExportRunsResponse> {
    const f = normalizeFilter(filter);
    if (format !== ExportFormat.EXPORT_FORMAT_UNSPECIFIED && format !== ExportFormat.EXPORT_FORMAT_JSON && format !== ExportFormat.EXPORT_FORMAT_CSV) {
      throw new InvalidArgumentError(`unknown export format ${format}`);
    }
    // A page holds at most this many runs, whatever the caller asks: the timelines of one call
    // are what the coordinator holds in memory for it.
    const pageSize = Math.min(this.d.o.maxExportRuns, EXPORT_PAGE_MAX, Math.max(1, page.pageSize || EXPORT_PAGE_DEFAULT));
    const fp = filterFingerprint({ export: f });
    const cursor = page.pageToken ? decodePageToken(page.pageToken, fp) : null;
    this.d.checkOpen();
    const ids = await this.d.db
      .selectFrom('runs')
      .select(['id', 'policy_label', 'created_at'])
      .where((eb) => {
        const c = filterConditions(eb, f);
        if (cursor !== null) {
          c.push(eb.or([eb('runs.created_at', '>', cursor.createdAtMs), eb.and([eb('runs.created_at', '=', cursor.createdAtMs), eb('runs.id', '>', cursor.id)])]));
        }
        return eb.and(c);
      })
      .orderBy('created_at')
      .orderBy('id')
      .limit(pageSize + 1)
      .execute();
    const more = ids.length > pageSize;
    if (more) ids.length = pageSize;
    const last = ids[ids.length - 1];
    const nextPageToken = more && last !== undefined ? encodePageToken({ createdAtMs: last.created_at, id: last.id }, fp) : '';
    // One short read per run, so a large export never holds the connection (and with it every
    // writer and the relay) for long.
    const labels = new Map<string, string>();
    const timelines: GetRunTimelineResponse[] = [];
    for (const { id, policy_label } of ids) {
      labels.set(id, policy_label);
      try {
        timelines.push(await this.getRunTimeline(id));
      } catch (err) {
        if (!(err instanceof NotFoundError)) throw err; // deleted meanwhile
      }
    }
    if (format === ExportFormat.EXPORT_FORMAT_CSV) {
      return { data: Buffer.from(timelinesToCsv(timelines, labels, { header: cursor === null }), 'utf8'), contentType: 'text/csv', nextPageToken };
    }
    // Each element is a GetRunTimelineResponse in proto3 JSON, plus the run's policy label (which
    // no proto message carries); JSON readers of the proto ignore the extra field.
    const docs = timelines.map((t) => ({
      ...(GetRunTimelineResponse.toJSON(t) as Record<string, unknown>),
      policyLabel: labels.get(t.run?.id ?? '') ?? '',
    }));
    return {
      data: Buffer.from(JSON.stringify(docs), 'utf8'),
      contentType: 'application/json',
      nextPageToken,
    };
  }
}
