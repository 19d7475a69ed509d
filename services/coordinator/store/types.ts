/**
 * The run-history store as the coordinator sees it: six repositories over one database. Callers
 * depend on the repository interfaces they use only; the implementations (*-repository.ts) are
 * plain Kysely over one `Kysely<HistoryDatabase>`, and a dialect (sqlite.ts) adds the few
 * database-specific parts and the factory. Messages are the proto-generated types.
 *
 * Every state-changing call writes its row(s) and the matching event in the outbox in ONE
 * transaction, so an event is published exactly for the changes that committed (see
 * services/shared/events/relay.ts). Samples are buffered and written in batches.
 */
import type { RunCostFigures } from '../domain/policy/measured.js';
import type {
  ErrorInfo,
  GuestPerfSample,
  HostInfo,
  MigrationPolicy,
  MigrationState,
  MigrationStats,
  NetworkBlackout,
  PolicyAction,
  ProgressSample,
  VmInfo,
} from '../../shared/gen/migd/v1/common.js';
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
  PlannedMigration,
  PlanState,
  Run,
  RunFilter,
  SubmitPlanRequest,
} from '../../shared/gen/migd/v1/coordinator.js';
import type { StateChange } from '../../shared/gen/migd/v1/node.js';
import type { OutboxRecord, OutboxSource } from '../../shared/events/outbox.js';

/** Registers or refreshes a node (RegisterNode, Heartbeat). */
export interface UpsertNodeInput {
  host: HostInfo;
  /** Default NODE_STATUS_UP. */
  status?: NodeStatus;
  /** Default now. */
  heartbeatAt?: Date;
  /** Why the status is what it is (in the NodeStateChanged event). */
  reason?: string;
}

/** A run to create. */
export interface CreateRunInput {
  /** Default a fresh ULID. */
  id?: string;
  /** The plan it belongs to (must exist); empty or absent for none. */
  planId?: string;
  vmName: string;
  sourceNodeId: string;
  destinationNodeId: string;
  policy: MigrationPolicy;
  /**
   * A label telling variants of one policy kind apart (e.g. a lab scenario name), used by the
   * `label` filter and the per-policy comparison. Default ''.
   */
  policyLabel?: string;
  memoryMib?: number;
  priority?: number;
  /** Default now. */
  createdAt?: Date;
  /** The initial state. Default MIGRATION_STATE_QUEUED. */
  state?: MigrationState;
  /** Reason of the initial transition. Default "created". */
  reason?: string;
}

/** A plan to create. */
export interface CreatePlanInput {
  /** Default a fresh ULID. */
  id?: string;
  /** Required; a second create with the same key (and scope) returns the first plan. */
  idempotencyKey: string;
  /** Who owns the key (the submitting identity); keys of different scopes never meet. Default ''. */
  idempotencyScope?: string;
  request: SubmitPlanRequest;
  migrations?: PlannedMigration[];
  orderingReason?: string;
  priority?: number;
  /** Default PLAN_STATE_RUNNING. */
  state?: PlanState;
  /** Default now. */
  createdAt?: Date;
  /** Runs created in the same transaction (their planId is set to the plan's id). */
  runs?: Omit<CreateRunInput, 'planId'>[];
}

/** Result of {@link PlanRunRepository.createPlan}. */
export interface CreatePlanResult {
  plan: Plan;
  /** True when the idempotency key was known and nothing was created. */
  existing: boolean;
  /**
   * The runs created, as {@link PlanRunRepository.listPlanRuns} would return them right after (in
   * the order given); absent when `existing`. SubmitPlan hands them to the run manager without
   * reading them back (issue 15 §4).
   */
  runs?: Run[];
}

/** A state change of a run that is not its end. */
export interface TransitionRunInput {
  to: MigrationState;
  reason?: string;
  /** Default now. */
  at?: Date;
  /** When set, the change applies only if the run is currently in this state. */
  expectedFrom?: MigrationState;
  /**
   * The state the caller last recorded for the run (its supervisor's), a hint: when the run is in
   * it, the change is written without reading the run first (the update checks it: one statement
   * fewer, issue 15 §4); when not, the run is read and the change made as without it. Unlike
   * expectedFrom, it never refuses the change.
   */
  from?: MigrationState;
}

/** The end of a run. */
export interface FinishRunInput {
  /** SUCCEEDED, FAILED or CANCELLED. */
  state: MigrationState;
  stats?: MigrationStats;
  error?: ErrorInfo;
  reason?: string;
  /** Default now. */
  at?: Date;
  /** The state the caller last recorded for the run, a hint (see TransitionRunInput.from). */
  from?: MigrationState;
  /**
   * A succeeded run's measured costs, written with its end (as {@link PlanRunRepository.recordRunCosts}
   * would, without a write of their own): a figure not given, or not finite, leaves its column as it is.
   */
  costs?: RunCostFigures;
}

/** Options of {@link AnalyticsRepository.comparePolicies}. */
export interface CompareOptions {
  /** Guest samples this long before a run's start count as "before". Default: the store's guestWindowMs. */
  guestWindowMs?: number;
}

/** Rows removed by a prune. */
export interface PruneResult {
  progress: number;
  guest: number;
  hostCpu: number;
}

/*
 * The history store is a set of repositories over one database (STYLE 15), one per aggregate:
 * each consumer takes only the ones it uses (the registry nodes and VMs, the planner plans and
 * runs, the event bus the outbox…), so each can be faked on its own.
 */

/** Nodes and the VMs they run. */
export interface NodeVmRepository {
  /** Creates or refreshes a node; emits NodeStateChanged when it is new or its status changed. */
  upsertNode(input: UpsertNodeInput): Promise<Node>;
  /**
   * {@link upsertNode} without reading the node back (its VM and migration counts are aggregates
   * over the VMs and runs): what a heartbeat needs, hundreds of times a second on a large fleet.
   */
  writeNode(input: UpsertNodeInput): Promise<void>;
  /** Sets a node's status; emits NodeStateChanged on a change. @throws NotFoundError */
  setNodeStatus(nodeId: string, status: NodeStatus, reason?: string): Promise<Node>;
  /** @throws NotFoundError */
  getNode(nodeId: string): Promise<Node>;
  /** Every node, ordered by id. */
  listNodes(): Promise<Node[]>;
  /**
   * Creates or refreshes a VM; emits VmChanged when it is new or moved or changed state.
   * @throws InvalidArgumentError without `spec.name`.
   */
  upsertVm(vm: VmInfo): Promise<void>;
  /**
   * {@link upsertVm} of several VMs in one transaction (a node's heartbeat): every row and its
   * VmChanged event commit together, in order. @throws InvalidArgumentError (nothing written)
   */
  upsertVms(vms: readonly VmInfo[]): Promise<void>;
  /** Forgets a deleted VM (its runs stay in the history). No-op for an unknown name. */
  deleteVm(name: string): Promise<void>;
  /** @throws NotFoundError */
  getVm(name: string): Promise<VmInfo>;
  /** VMs ordered by node then name; only those of `nodeId` when given. */
  listVms(nodeId?: string): Promise<VmInfo[]>;
}

/** A plan's state and its runs' counts ({@link PlanRunRepository.planProgress}). */
export interface PlanProgress {
  readonly state: PlanState;
  readonly runs: number;
  readonly finished: number;
  readonly succeeded: number;
}

/** Plans, their runs, transitions and actions. */
export interface PlanRunRepository {
  /**
   * Creates a plan (and its runs) unless its idempotency key is known, in which case the existing
   * plan is returned with `existing: true`.
   * @throws InvalidArgumentError for an empty key or a bad run.
   */
  createPlan(input: CreatePlanInput): Promise<CreatePlanResult>;
  /** @throws NotFoundError */
  getPlan(planId: string): Promise<Plan>;
  /** Sets a plan's state; emits PlanStateChanged. @throws NotFoundError */
  setPlanState(planId: string, state: PlanState): Promise<Plan>;
  /** The plan's runs, oldest first. @throws NotFoundError for an unknown plan. */
  listPlanRuns(planId: string): Promise<Run[]>;
  /**
   * A plan's state and how many of its runs exist, have finished and have succeeded (one read:
   * what deciding whether the plan has ended needs, without loading its runs).
   * @throws NotFoundError for an unknown plan.
   */
  planProgress(planId: string): Promise<PlanProgress>;
  /**
   * Creates a run with its initial transition; emits RunStateChanged.
   * @throws InvalidArgumentError for missing fields; NotFoundError for an unknown plan;
   *   AlreadyExistsError for a duplicate id.
   */
  createRun(input: CreateRunInput): Promise<Run>;
  /** @throws NotFoundError */
  getRun(runId: string): Promise<Run>;
  /**
   * Appends a transition, updates the run and emits RunStateChanged, in one transaction. Sets
   * `started_at` when the run leaves QUEUED.
   * @throws NotFoundError; FailedPreconditionError when the run has finished or is not in
   *   `expectedFrom`; InvalidArgumentError for UNSPECIFIED or a terminal state (use finishRun).
   */
  transitionRun(runId: string, input: TransitionRunInput): Promise<StateChange>;
  /** Records a policy or user action; emits RunAction. @throws NotFoundError */
  recordAction(runId: string, action: PolicyAction): Promise<void>;
  /**
   * Ends a run: final transition, stats, error; emits RunStateChanged and RunCompleted in one
   * transaction. Flushes the run's buffered samples first.
   * @throws NotFoundError; FailedPreconditionError when already finished; InvalidArgumentError
   *   for a non-terminal state.
   */
  finishRun(runId: string, input: FinishRunInput): Promise<Run>;
  /**
   * Attaches (or replaces) the network blackout measured from outside the guest to a finished run.
   * @throws NotFoundError; FailedPreconditionError (RUN_NOT_FINISHED); InvalidArgumentError for a
   *   blackout that contradicts itself (more lost than sent, nothing sent, an inverted gap)
   */
  recordNetworkBlackout(runId: string, blackout: NetworkBlackout): Promise<Run>;
  /**
   * Stores what a finished run measured of the guest's harm (the adaptive policy's figures, for
   * the VM's next runs). Figures not given are left as they are. @throws NotFoundError
   */
  recordRunCosts(runId: string, figures: RunCostFigures): Promise<void>;
  /**
   * The measured figures of a VM's latest succeeded runs that have any, newest first (at most
   * `limit`): the adaptive policy's prior (domain/policy/measured.ts priorFromHistory).
   */
  vmCostHistory(vmName: string, limit: number): Promise<RunCostFigures[]>;
  /** Runs that have not finished, highest priority first, then oldest (restart recovery). */
  listActiveRuns(): Promise<Run[]>;
  /**
   * The moves of the runs that have not finished, same order as listActiveRuns: only what
   * planning needs, without each run's transitions, actions and policy (read on every SubmitPlan).
   */
  listActiveMoves(): Promise<ActiveMove[]>;
  /** Ids of the plans whose state is still RUNNING, oldest first (restart recovery). */
  listRunningPlanIds(): Promise<string[]>;
  /** Number of runs per state. */
  countRunsByState(): Promise<Map<MigrationState, number>>;
  /** The plan submitted with `idempotencyKey` by `scope` (default ''), or undefined when unknown. */
  findPlanByKey(idempotencyKey: string, scope?: string): Promise<Plan | undefined>;
}

/** Where an unfinished run moves its VM. */
export interface ActiveMove {
  readonly runId: string;
  readonly vmName: string;
  readonly sourceNodeId: string;
  readonly destinationNodeId: string;
  readonly memoryMib: number;
}

/** Progress, guest and host CPU samples, buffered and written in batches. */
export interface SampleRepository {
  /**
   * Buffers a progress sample. At most one RunProgress event per run per progress interval is
   * emitted (written together with its sample). @throws InvalidArgumentError for an empty run id;
   *   FailedPreconditionError after close.
   */
  appendProgress(runId: string, sample: ProgressSample): void;
  /**
   * Buffers a guest sample of `sample.vmName`, attributed to `runId` when given (RunGuestPerf
   * events, rate-limited like progress, only then). @throws InvalidArgumentError without vmName;
   *   FailedPreconditionError after close.
   */
  appendGuestSample(sample: GuestPerfSample, runId?: string): void;
  /** Buffers a host CPU sample. @throws InvalidArgumentError; FailedPreconditionError after close. */
  appendHostCpu(runId: string, sample: HostCpuSample): void;
  /** Writes every buffered sample. @throws the write error (the samples stay buffered). */
  flushSamples(): Promise<void>;
}

/** Queries over finished and running runs: pages, timelines, per-policy comparison, export. */
export interface AnalyticsRepository {
  /**
   * A page of runs, newest first.
   * @throws InvalidArgumentError for a bad page token or an inverted time range.
   */
  listRuns(request: Partial<ListRunsRequest>): Promise<ListRunsResponse>;
  /** A run with its transitions, actions and samples. @throws NotFoundError */
  getRunTimeline(runId: string): Promise<GetRunTimelineResponse>;
  /**
   * The guest samples the store holds of a run's VM from the guest window before the run's start
   * (started, else created) up to now, oldest first (by time, then as stored): the guest's pace
   * before a run that is starting. Only the samples, in one query; none for an unknown run.
   */
  guestSamplesBeforeRun(runId: string): Promise<GuestPerfSample[]>;
  /**
   * Per-policy (kind + label) summary of the finished runs the filter selects.
   * @throws InvalidArgumentError for an inverted time range.
   */
  comparePolicies(filter?: Partial<RunFilter>, opts?: CompareOptions): Promise<ComparePoliciesResponse>;
  /**
   * One page of the selected runs with their timelines, oldest first, as JSON (array of
   * timelines) or CSV (one row per progress sample with the run's columns; a run without samples
   * gets one row; the header on the first page only), and the token of the next page.
   * @throws InvalidArgumentError for an inverted time range or a bad page token (BAD_PAGE_TOKEN)
   */
  exportRuns(filter: Partial<RunFilter>, format: ExportFormat, page?: ExportPage): Promise<ExportRunsResponse>;
}

/** One page of an export: runs oldest first after `pageToken`, at most `pageSize` (capped). */
export interface ExportPage {
  readonly pageSize?: number;
  readonly pageToken?: string;
}

/** The transactional outbox of events: publishing (OutboxSource) and replay. */
export interface OutboxRepository extends OutboxSource {
  /**
   * Outbox rows, published or not, with `seq` above `afterSeq` (default 0), lowest first, at most
   * `limit`; only the events of `runId` when given. Published rows are kept for the outbox
   * retention (see pruneOutbox), so a run's events can be replayed from here while it is young.
   */
  readOutbox(opts: { afterSeq?: number; runId?: string; limit: number }): Promise<OutboxRecord[]>;
  /** The highest outbox `seq` written so far; 0 when the outbox has never held a row. */
  lastOutboxSeq(): Promise<number>;
}

/** Retention of samples and published events. */
export interface RetentionRepository {
  /**
   * Deletes samples past retention: progress and host CPU samples of runs finished before
   * `now - sampleRetentionMs`, guest samples older than that (unless their run is still active).
   */
  pruneSamples(now?: Date): Promise<PruneResult>;
  /** Deletes outbox rows published before `now - outboxRetentionMs`. */
  pruneOutbox(now?: Date): Promise<number>;
}

/** The repositories of one open store, as a dialect's factory returns them (see sqlite.ts). */
export interface HistoryRepositories {
  readonly nodes: NodeVmRepository;
  readonly plans: PlanRunRepository;
  readonly samples: SampleRepository;
  readonly analytics: AnalyticsRepository;
  readonly outbox: OutboxRepository;
  readonly retention: RetentionRepository;
  /** Flushes samples and closes the database. Idempotent. */
  close(): Promise<void>;
}

/**
 * The whole run history in one object: the repositories, and each of their methods directly
 * (for tests and tools that use most of them). Services take only the repositories they use.
 */
export interface HistoryStore
  extends HistoryRepositories, NodeVmRepository, PlanRunRepository, SampleRepository, AnalyticsRepository, OutboxRepository, RetentionRepository {}
