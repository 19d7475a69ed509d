/**
 * The node daemon's Prometheus metrics: QMP command latency, migrations driven here (duration,
 * downtime, outcome) and VMs running. Served on `/metrics` when `metricsListen` is configured.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { MigrationState, type PolicyKind } from '../shared/gen/migd/v1/common.js';
import type { MigrationInfo } from '../shared/gen/migd/v1/node.js';
import { createQmpCommandLatency, DOWNTIME_BUCKETS, MIGRATION_DURATION_BUCKETS, observeQmpCommand, policyKindLabel, stateLabel } from '../shared/metrics/metrics.js';

export class NodeMetrics {
  readonly registry = new Registry();
  private readonly qmp = createQmpCommandLatency(this.registry);
  private readonly duration = new Histogram({ name: 'migd_migration_duration_seconds', help: 'Total time of migrations driven by this node, in seconds.', labelNames: ['policy_kind', 'outcome'] as const, buckets: MIGRATION_DURATION_BUCKETS, registers: [this.registry] });
  private readonly downtime = new Histogram({ name: 'migd_migration_downtime_seconds', help: 'Switch-over downtime of succeeded migrations driven by this node, in seconds.', labelNames: ['policy_kind'] as const, buckets: DOWNTIME_BUCKETS, registers: [this.registry] });
  private readonly finished = new Counter({ name: 'migd_node_migrations_total', help: 'Migrations driven by this node, by outcome.', labelNames: ['outcome'] as const, registers: [this.registry] });
  /** Roles of the running VMs, read at scrape time. */
  vmRoles: () => string[] = () => [];
  private readonly vms = new Gauge({
    name: 'migd_node_vms',
    help: 'Running QEMU processes this node daemon manages, by role.',
    labelNames: ['role'] as const,
    registers: [this.registry],
    collect: () => {
      this.vms.reset();
      for (const role of this.vmRoles()) this.vms.inc({ role });
    },
  });

  /** For VmManager's onQmpCommand. */
  readonly onQmpCommand = (command: string, seconds: number, outcome: 'ok' | 'error' | 'timeout'): void => observeQmpCommand(this.qmp, command, seconds, outcome);

  migrationFinished(info: MigrationInfo): void {
    const outcome = stateLabel(info.state);
    const kind = policyKindLabel((info.policy?.kind ?? 0) as PolicyKind);
    this.finished.inc({ outcome });
    if (info.stats) {
      this.duration.observe({ policy_kind: kind, outcome }, info.stats.totalTimeMs / 1000);
      if (info.state === MigrationState.MIGRATION_STATE_SUCCEEDED) this.downtime.observe({ policy_kind: kind }, info.stats.downtimeMs / 1000);
    }
  }
}
