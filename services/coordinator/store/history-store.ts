/**
 * Builds the repositories over one open database, and the {@link HistoryStore} that holds them.
 * A dialect's factory (sqlite.ts) opens the database and migrates it, then calls
 * {@link createHistoryStore}; nothing here knows which database it is.
 */
import type { OutboxLag, OutboxRecord } from '../../shared/events/outbox.js';
import type { GuestPerfSample, MigrationState, NetworkBlackout, PolicyAction, ProgressSample, VmInfo } from '../../shared/gen/migd/v1/common.js';
import type {
  ComparePoliciesResponse,
  ExportFormat,
  ExportRunsResponse,
  GetRunTimelineResponse,
  HostCpuSample,
  ListRunsRequest,
  ListRunsResponse,
  Node,
  NodeStatus,
  Plan,
  PlanState,
  Run,
  RunFilter,
} from '../../shared/gen/migd/v1/coordinator.js';
import type { StateChange } from '../../shared/gen/migd/v1/node.js';
import { SqlAnalyticsRepository } from './analytics-repository.js';
import { StoreDatabase, type Db, type StoreDialect, type WriteStats } from './database.js';
import { SqlNodeVmRepository } from './node-vm-repository.js';
import type { ResolvedHistoryStoreOptions } from './options.js';
import { SqlOutboxRepository } from './outbox-repository.js';
import { SqlPlanRunRepository } from './plan-run-repository.js';
import type { RunCostFigures } from '../domain/policy/measured.js';
import { SqlRetentionRepository } from './retention-repository.js';
import { SqlSampleRepository } from './sample-repository.js';
import type { SampleWriterStats } from './sample-writer.js';
import type {
  ActiveMove,
  CompareOptions,
  ExportPage,
  CreatePlanInput,
  CreatePlanResult,
  CreateRunInput,
  FinishRunInput,
  HistoryStore,
  PlanProgress,
  PruneResult,
  TransitionRunInput,
  UpsertNodeInput,
} from './types.js';

/** The repositories over `db`, which must be migrated already. */
export function createHistoryStore(db: Db, dialect: StoreDialect, options: ResolvedHistoryStoreOptions): RepositoryHistoryStore {
  return new RepositoryHistoryStore(db, dialect, options);
}

/**
 * The six repositories over one database. The methods below only forward to them, so tests and
 * tools can use one object; a service is given the repositories it uses (see coordinator.ts).
 */
export class RepositoryHistoryStore implements HistoryStore {
  readonly nodes: SqlNodeVmRepository;
  readonly plans: SqlPlanRunRepository;
  readonly samples: SqlSampleRepository;
  readonly analytics: SqlAnalyticsRepository;
  readonly outbox: SqlOutboxRepository;
  readonly retention: SqlRetentionRepository;
  private readonly database: StoreDatabase;
  private closing: Promise<void> | undefined;

  /** Use {@link createHistoryStore} (or a dialect's open function). */
  constructor(db: Db, dialect: StoreDialect, options: ResolvedHistoryStoreOptions) {
    const database = new StoreDatabase(db, dialect, options);
    this.database = database;
    this.nodes = new SqlNodeVmRepository(database);
    this.samples = new SqlSampleRepository(database);
    this.plans = new SqlPlanRunRepository(database, this.samples);
    this.analytics = new SqlAnalyticsRepository(database);
    this.outbox = new SqlOutboxRepository(database);
    this.retention = new SqlRetentionRepository(database);
  }

  /** Sample writer counters (written, dropped, failed flushes). */
  sampleStats(): SampleWriterStats {
    return this.samples.stats();
  }

  /** What the write connection has run so far (group commits, writes, their statements): a copy. */
  writeStats(): WriteStats {
    return { ...this.database.writeStats };
  }

  /** Writes the buffered samples, then closes the database. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    await this.samples.close();
    this.database.markClosed();
    await this.database.settled();
    try {
      await this.database.dialect.optimize(this.database.db);
    } catch {
      // Best effort only.
    }
    await this.database.db.destroy();
  }

  // --- NodeVmRepository
  upsertNode(input: UpsertNodeInput): Promise<Node> {
    return this.nodes.upsertNode(input);
  }
  writeNode(input: UpsertNodeInput): Promise<void> {
    return this.nodes.writeNode(input);
  }
  setNodeStatus(nodeId: string, status: NodeStatus, reason?: string): Promise<Node> {
    return this.nodes.setNodeStatus(nodeId, status, reason);
  }
  getNode(nodeId: string): Promise<Node> {
    return this.nodes.getNode(nodeId);
  }
  listNodes(): Promise<Node[]> {
    return this.nodes.listNodes();
  }
  upsertVm(vm: VmInfo): Promise<void> {
    return this.nodes.upsertVm(vm);
  }
  upsertVms(vms: readonly VmInfo[]): Promise<void> {
    return this.nodes.upsertVms(vms);
  }
  deleteVm(name: string): Promise<void> {
    return this.nodes.deleteVm(name);
  }
  getVm(name: string): Promise<VmInfo> {
    return this.nodes.getVm(name);
  }
  listVms(nodeId?: string): Promise<VmInfo[]> {
    return this.nodes.listVms(nodeId);
  }

  // --- PlanRunRepository
  createPlan(input: CreatePlanInput): Promise<CreatePlanResult> {
    return this.plans.createPlan(input);
  }
  getPlan(planId: string): Promise<Plan> {
    return this.plans.getPlan(planId);
  }
  setPlanState(planId: string, state: PlanState): Promise<Plan> {
    return this.plans.setPlanState(planId, state);
  }
  listPlanRuns(planId: string): Promise<Run[]> {
    return this.plans.listPlanRuns(planId);
  }
  planProgress(planId: string): Promise<PlanProgress> {
    return this.plans.planProgress(planId);
  }
  createRun(input: CreateRunInput): Promise<Run> {
    return this.plans.createRun(input);
  }
  getRun(runId: string): Promise<Run> {
    return this.plans.getRun(runId);
  }
  transitionRun(runId: string, input: TransitionRunInput): Promise<StateChange> {
    return this.plans.transitionRun(runId, input);
  }
  recordAction(runId: string, action: PolicyAction): Promise<void> {
    return this.plans.recordAction(runId, action);
  }
  finishRun(runId: string, input: FinishRunInput): Promise<Run> {
    return this.plans.finishRun(runId, input);
  }
  recordNetworkBlackout(runId: string, blackout: NetworkBlackout): Promise<Run> {
    return this.plans.recordNetworkBlackout(runId, blackout);
  }
  recordRunCosts(runId: string, figures: RunCostFigures): Promise<void> {
    return this.plans.recordRunCosts(runId, figures);
  }
  vmCostHistory(vmName: string, limit: number): Promise<RunCostFigures[]> {
    return this.plans.vmCostHistory(vmName, limit);
  }
  listActiveRuns(): Promise<Run[]> {
    return this.plans.listActiveRuns();
  }
  listActiveMoves(): Promise<ActiveMove[]> {
    return this.plans.listActiveMoves();
  }
  listRunningPlanIds(): Promise<string[]> {
    return this.plans.listRunningPlanIds();
  }
  countRunsByState(): Promise<Map<MigrationState, number>> {
    return this.plans.countRunsByState();
  }
  findPlanByKey(idempotencyKey: string, scope?: string): Promise<Plan | undefined> {
    return this.plans.findPlanByKey(idempotencyKey, scope);
  }

  // --- SampleRepository
  appendProgress(runId: string, sample: ProgressSample): void {
    this.samples.appendProgress(runId, sample);
  }
  appendGuestSample(sample: GuestPerfSample, runId?: string): void {
    this.samples.appendGuestSample(sample, runId);
  }
  appendHostCpu(runId: string, sample: HostCpuSample): void {
    this.samples.appendHostCpu(runId, sample);
  }
  flushSamples(): Promise<void> {
    return this.samples.flushSamples();
  }

  // --- AnalyticsRepository
  listRuns(request: Partial<ListRunsRequest>): Promise<ListRunsResponse> {
    return this.analytics.listRuns(request);
  }
  getRunTimeline(runId: string): Promise<GetRunTimelineResponse> {
    return this.analytics.getRunTimeline(runId);
  }
  guestSamplesBeforeRun(runId: string): Promise<GuestPerfSample[]> {
    return this.analytics.guestSamplesBeforeRun(runId);
  }
  comparePolicies(filter?: Partial<RunFilter>, opts?: CompareOptions): Promise<ComparePoliciesResponse> {
    return this.analytics.comparePolicies(filter, opts);
  }
  exportRuns(filter: Partial<RunFilter>, format: ExportFormat, page?: ExportPage): Promise<ExportRunsResponse> {
    return this.analytics.exportRuns(filter, format, page);
  }

  // --- OutboxRepository
  readUnpublished(limit: number): Promise<OutboxRecord[]> {
    return this.outbox.readUnpublished(limit);
  }
  markPublished(seqs: readonly number[], at: Date): Promise<void> {
    return this.outbox.markPublished(seqs, at);
  }
  outboxLag(): Promise<OutboxLag> {
    return this.outbox.outboxLag();
  }
  onOutboxEnqueued(listener: () => void): () => void {
    return this.outbox.onOutboxEnqueued(listener);
  }
  readOutbox(opts: { afterSeq?: number; runId?: string; limit: number }): Promise<OutboxRecord[]> {
    return this.outbox.readOutbox(opts);
  }
  lastOutboxSeq(): Promise<number> {
    return this.outbox.lastOutboxSeq();
  }

  // --- RetentionRepository
  pruneSamples(now?: Date): Promise<PruneResult> {
    return this.retention.pruneSamples(now);
  }
  pruneOutbox(now?: Date): Promise<number> {
    return this.retention.pruneOutbox(now);
  }
}
