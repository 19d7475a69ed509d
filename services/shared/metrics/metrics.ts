/**
 * migd's Prometheus metrics (prom-client). Every metric lives in an explicit `Registry` (never
 * the global one) so tests and several services in one process do not collide.
 */
import { collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { OutboxLag } from '../events/outbox.js';
import { MigrationState, migrationStateToJSON, policyKindToJSON, type PolicyKind } from '../gen/migd/v1/common.js';

/** Values read at scrape time. */
export interface MetricsSources {
  /** Number of runs per state (states missing from the map are reported as 0). */
  runsByState?: () => Promise<ReadonlyMap<MigrationState, number>> | ReadonlyMap<MigrationState, number>;
  /** Runs waiting for a concurrency slot. */
  queueDepth?: () => Promise<number> | number;
  /**
   * The outbox backlog (e.g. the store's `outboxLag`), read at scrape time so the gauges are right
   * even while no relay runs. Without it only the relay's reports (outboxLagObserver) set them.
   */
  outboxLag?: () => Promise<OutboxLag>;
}

/** The coordinator's metrics. */
export interface MigdMetrics {
  readonly registry: Registry;
  /** `migd_runs{state}`: runs per state (from {@link MetricsSources.runsByState}). */
  readonly runsByState: Gauge<'state'>;
  /** `migd_migration_duration_seconds{policy_kind,outcome}`: total time of finished runs. */
  readonly migrationDurationSeconds: Histogram<'policy_kind' | 'outcome'>;
  /** `migd_migration_downtime_seconds{policy_kind}`: switch-over downtime of succeeded runs. */
  readonly migrationDowntimeSeconds: Histogram<'policy_kind'>;
  /** `migd_queue_depth`: runs waiting for a slot (set it, or give a source). */
  readonly queueDepth: Gauge;
  /** `migd_outbox_unpublished_events`: outbox rows not yet on NATS. */
  readonly outboxUnpublished: Gauge;
  /** `migd_outbox_oldest_unpublished_age_seconds`: age of the oldest of them. */
  readonly outboxOldestAgeSeconds: Gauge;
  /** `migd_qmp_command_duration_seconds{command,outcome}`. */
  readonly qmpCommandLatencySeconds: Histogram<'command' | 'outcome'>;
}

/** Options of {@link createMetrics}. */
export interface CreateMetricsOptions {
  /** Registry to register in. Default a new one. */
  registry?: Registry;
  /** Also collect prom-client's process metrics (CPU, memory, event loop). Default false. */
  defaultMetrics?: boolean;
  sources?: MetricsSources;
}

export const MIGRATION_DURATION_BUCKETS = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600];
export const DOWNTIME_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
export const QMP_LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Creates (and registers) the coordinator's metrics. */
export function createMetrics(opts: CreateMetricsOptions = {}): MigdMetrics {
  const registry = opts.registry ?? new Registry();
  const sources = opts.sources ?? {};
  if (opts.defaultMetrics === true) collectDefaultMetrics({ register: registry, prefix: 'migd_' });
  const runsByStateSource = sources.runsByState;
  const queueDepthSource = sources.queueDepth;
  const lagSource = sources.outboxLag;
  return {
    registry,
    runsByState: new Gauge({
      name: 'migd_runs',
      help: 'Migration runs per state.',
      labelNames: ['state'] as const,
      registers: [registry],
      ...(runsByStateSource && {
        async collect(this: Gauge<'state'>) {
          setRunsByState(this, await runsByStateSource());
        },
      }),
    }),
    migrationDurationSeconds: new Histogram({
      name: 'migd_migration_duration_seconds',
      help: 'Total time of finished migrations, in seconds.',
      labelNames: ['policy_kind', 'outcome'] as const,
      buckets: MIGRATION_DURATION_BUCKETS,
      registers: [registry],
    }),
    migrationDowntimeSeconds: new Histogram({
      name: 'migd_migration_downtime_seconds',
      help: 'Guest downtime at switch-over of succeeded migrations, in seconds.',
      labelNames: ['policy_kind'] as const,
      buckets: DOWNTIME_BUCKETS,
      registers: [registry],
    }),
    queueDepth: new Gauge({
      name: 'migd_queue_depth',
      help: 'Runs waiting for a concurrency slot.',
      registers: [registry],
      ...(queueDepthSource && {
        async collect(this: Gauge) {
          this.set(await queueDepthSource());
        },
      }),
    }),
    outboxUnpublished: new Gauge({
      name: 'migd_outbox_unpublished_events',
      help: 'Events in the outbox not yet published to NATS.',
      registers: [registry],
      ...(lagSource && {
        async collect(this: Gauge) {
          this.set((await lagSource()).unpublished);
        },
      }),
    }),
    outboxOldestAgeSeconds: new Gauge({
      name: 'migd_outbox_oldest_unpublished_age_seconds',
      help: 'Age of the oldest unpublished outbox event, in seconds (0 when none).',
      registers: [registry],
      ...(lagSource && {
        async collect(this: Gauge) {
          const oldest = (await lagSource()).oldestCreatedAt;
          this.set(oldest === null ? 0 : Math.max(0, (Date.now() - oldest.getTime()) / 1000));
        },
      }),
    }),
    qmpCommandLatencySeconds: createQmpCommandLatency(registry),
  };
}

/**
 * The QMP command latency histogram alone, for the node daemon:
 * `migd_qmp_command_duration_seconds{command,outcome}` (outcome: ok | error | timeout).
 */
export function createQmpCommandLatency(registry: Registry): Histogram<'command' | 'outcome'> {
  return new Histogram({
    name: 'migd_qmp_command_duration_seconds',
    help: 'Latency of QMP commands from send to reply, in seconds.',
    labelNames: ['command', 'outcome'] as const,
    buckets: QMP_LATENCY_BUCKETS,
    registers: [registry],
  });
}

/** Records one QMP command's latency. */
export function observeQmpCommand(
  histogram: Histogram<'command' | 'outcome'>,
  command: string,
  seconds: number,
  outcome: 'ok' | 'error' | 'timeout',
): void {
  histogram.observe({ command, outcome }, seconds);
}

/** Sets the runs-by-state gauge, reporting 0 for every state absent from `counts`. */
export function setRunsByState(gauge: Gauge<'state'>, counts: ReadonlyMap<MigrationState, number>): void {
  for (const s of Object.values(MigrationState)) {
    if (typeof s !== 'number' || s === MigrationState.MIGRATION_STATE_UNSPECIFIED) continue;
    gauge.set({ state: stateLabel(s) }, counts.get(s) ?? 0);
  }
}

/** Records a finished run in the duration and downtime histograms. */
export function observeRunFinished(
  metrics: Pick<MigdMetrics, 'migrationDurationSeconds' | 'migrationDowntimeSeconds'>,
  run: { policyKind: PolicyKind; state: MigrationState; totalTimeMs: number | null; downtimeMs: number | null },
): void {
  const policy_kind = policyKindLabel(run.policyKind);
  if (run.totalTimeMs !== null) {
    metrics.migrationDurationSeconds.observe({ policy_kind, outcome: stateLabel(run.state) }, run.totalTimeMs / 1000);
  }
  if (run.state === MigrationState.MIGRATION_STATE_SUCCEEDED && run.downtimeMs !== null) {
    metrics.migrationDowntimeSeconds.observe({ policy_kind }, run.downtimeMs / 1000);
  }
}

/** A callback for the outbox relay's `onLag` that sets the outbox gauges. */
export function outboxLagObserver(
  metrics: Pick<MigdMetrics, 'outboxUnpublished' | 'outboxOldestAgeSeconds'>,
): (lag: { unpublished: number; oldestAgeMs: number }) => void {
  return (lag) => {
    metrics.outboxUnpublished.set(lag.unpublished);
    metrics.outboxOldestAgeSeconds.set(lag.oldestAgeMs / 1000);
  };
}

/** `MIGRATION_STATE_PRECOPY` → `precopy`. */
export function stateLabel(s: MigrationState): string {
  return migrationStateToJSON(s).replace(/^MIGRATION_STATE_/, '').toLowerCase();
}

/** `POLICY_KIND_ADAPTIVE` → `adaptive`. */
export function policyKindLabel(k: PolicyKind): string {
  return policyKindToJSON(k).replace(/^POLICY_KIND_/, '').toLowerCase();
}
