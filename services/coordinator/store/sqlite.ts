/**
 * The SQLite implementation of {@link HistoryStore}: Kysely over better-sqlite3, one connection
 * per process (Kysely serializes its use), WAL journal, `synchronous=NORMAL`, a busy timeout for
 * other processes writing the same file. Write transactions start with BEGIN IMMEDIATE (so they
 * never fail half-way upgrading a read lock), hold no network I/O and are kept short; samples
 * are buffered and inserted in batches.
 *
 * Open ONE store per process and file: better-sqlite3 is synchronous, so a second connection in
 * the same thread waiting on the first one's write lock would block the very event loop the
 * first needs to commit (a self-deadlock until the busy timeout). Other processes (or worker
 * threads) may write the same file; WAL and the busy timeout handle them.
 */
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { Kysely, Migrator, SqliteDialect, sql } from 'kysely';
import { migrationProvider } from '../../../migrations/index.js';
import {
  AlreadyExistsError,
  ConfigError,
  FailedPreconditionError,
  InvalidArgumentError,
  MigdError,
  NotFoundError,
  ResourceExhaustedError,
} from '../../shared/errors.js';
import { ensurePrivateDir, ensurePrivateFile, restrictFiles } from '../../shared/private-files.js';
import { buildEvent, encodeEvent } from '../../shared/events/codec.js';
import { createIdFactory } from '../../shared/events/ids.js';
import type { OutboxLag, OutboxRecord } from '../../shared/events/outbox.js';
import {
  HostInfo,
  MigrationPolicy,
  MigrationState,
  MigrationStats,
  migrationStateToJSON,
  PolicyAction,
  policyActionKindToJSON,
  policyKindToJSON,
  VmInfo,
  GuestPerfSample,
  ProgressSample,
  ErrorInfo,
} from '../../shared/gen/migd/v1/common.js';
import {
  ExportFormat,
  GetRunTimelineResponse,
  NodeStatus,
  PlannedMigration,
  PlanState,
  planStateToJSON,
  SubmitPlanRequest,
  type ComparePoliciesResponse,
  type ExportRunsResponse,
  type HostCpuSample,
  type ListRunsRequest,
  type ListRunsResponse,
  type Node,
  type Plan,
  type PolicySummary,
  type Run,
  type RunFilter,
} from '../../shared/gen/migd/v1/coordinator.js';
import type { Event } from '../../shared/gen/migd/v1/events.js';
import type { StateChange } from '../../shared/gen/migd/v1/node.js';
import { createLogger, type Logger } from '../../shared/log.js';
import { observeRunFinished, type MigdMetrics } from '../../shared/metrics/metrics.js';
import { toCsv, type CsvValue } from './csv.js';
import { filterConditions, normalizeFilter } from './filters.js';
import {
  actionToProto,
  date,
  guestToProto,
  guestToRow,
  hostCpuToProto,
  hostCpuToRow,
  hostFromJson,
  ms,
  normalizePolicyKind,
  planToProto,
  scopedIdempotencyKey,
  policyToJson,
  progressToProto,
  progressToRow,
  runToProto,
  transitionToProto,
  vmToProto,
} from './mapping.js';
import { decodePageToken, encodePageToken, filterFingerprint } from './page-token.js';
import { SampleWriter, type SampleBatch } from './sample-writer.js';
import type { HistoryDatabase, NodeRow, RunRow } from './schema.js';
import { mean, orZero, quantile } from './stats.js';
import type {
  CompareOptions,
  CreatePlanInput,
  CreatePlanResult,
  CreateRunInput,
  FinishRunInput,
  HistoryStore,
  PruneResult,
  TransitionRunInput,
  UpsertNodeInput,
} from './types.js';
import { isTerminalState } from '../../shared/policy/states.js';

/** Options of {@link openSqliteHistoryStore}; each documents its default. */
export interface SqliteHistoryStoreOptions {
  /** Database file (created if missing); `:memory:` for a throw-away store. Required. */
  filename: string;
  /** How long to wait for another process's write lock, in ms. Default 5000. */
  busyTimeoutMs?: number;
  /** Apply pending schema migrations on open. Default true. */
  migrate?: boolean;
  /** Samples per batch insert: a full batch is written at once. Default 500. */
  sampleBatchSize?: number;
  /** Longest time a sample waits in the buffer, in ms. Default 200. */
  sampleFlushIntervalMs?: number;
  /** Samples kept in memory while writes fail before the oldest are dropped. Default 100 000. */
  maxBufferedSamples?: number;
  /** At most one RunProgress event per run per this many ms; 0 = one per sample. Default 1000. */
  progressEventIntervalMs?: number;
  /** At most one RunGuestPerf event per run per this many ms; 0 = one per sample. Default 1000. */
  guestEventIntervalMs?: number;
  /** Keep samples this long (see pruneSamples), in ms; null keeps them forever. Default 30 days. */
  sampleRetentionMs?: number | null;
  /** Keep published outbox rows this long, in ms. Default 1 day. */
  outboxRetentionMs?: number;
  /** Guest samples this long before a run's start (and after its end) belong to its timeline
   * and to the "before" figure of comparisons, in ms. Default 60 000. */
  guestWindowMs?: number;
  /** Most runs one export may contain. Default 10 000. */
  maxExportRuns?: number;
  /** Clock in ms since the epoch. Default `Date.now`. */
  now?: () => number;
  logger?: Logger;
  /** Finished runs are observed in the duration/downtime histograms when given. */
  metrics?: Pick<MigdMetrics, 'migrationDurationSeconds' | 'migrationDowntimeSeconds'>;
}

/** Fully defaulted options. */
export type ResolvedSqliteHistoryStoreOptions = Readonly<
  Required<Omit<SqliteHistoryStoreOptions, 'metrics' | 'logger'>> & Pick<SqliteHistoryStoreOptions, 'metrics'> & { logger: Logger }
>;

/**
 * Fills in defaults and validates.
 * @throws ConfigError naming the first bad option.
 */
export function resolveSqliteStoreOptions(o: SqliteHistoryStoreOptions): ResolvedSqliteHistoryStoreOptions {
  const r = {
    filename: o.filename,
    busyTimeoutMs: o.busyTimeoutMs ?? 5000,
    migrate: o.migrate ?? true,
    sampleBatchSize: o.sampleBatchSize ?? 500,
    sampleFlushIntervalMs: o.sampleFlushIntervalMs ?? 200,
    maxBufferedSamples: o.maxBufferedSamples ?? 100_000,
    progressEventIntervalMs: o.progressEventIntervalMs ?? 1000,
    guestEventIntervalMs: o.guestEventIntervalMs ?? 1000,
    sampleRetentionMs: o.sampleRetentionMs === undefined ? 30 * 24 * 3600_000 : o.sampleRetentionMs,
    outboxRetentionMs: o.outboxRetentionMs ?? 24 * 3600_000,
    guestWindowMs: o.guestWindowMs ?? 60_000,
    maxExportRuns: o.maxExportRuns ?? 10_000,
    now: o.now ?? Date.now,
    logger: o.logger ?? createLogger('history-store'),
    metrics: o.metrics,
  };
  if (typeof r.filename !== 'string' || r.filename === '') throw new ConfigError('store.filename', 'is required');
  const check = (name: string, v: number, min: number): void => {
    if (!Number.isFinite(v) || v < min) throw new ConfigError(`store.${name}`, `must be a number >= ${min}`);
  };
  check('busyTimeoutMs', r.busyTimeoutMs, 0);
  check('sampleBatchSize', r.sampleBatchSize, 1);
  check('sampleFlushIntervalMs', r.sampleFlushIntervalMs, 1);
  check('maxBufferedSamples', r.maxBufferedSamples, r.sampleBatchSize);
  check('progressEventIntervalMs', r.progressEventIntervalMs, 0);
  check('guestEventIntervalMs', r.guestEventIntervalMs, 0);
  if (r.sampleRetentionMs !== null) check('sampleRetentionMs', r.sampleRetentionMs, 1);
  check('outboxRetentionMs', r.outboxRetentionMs, 1);
  check('guestWindowMs', r.guestWindowMs, 0);
  check('maxExportRuns', r.maxExportRuns, 1);
  return Object.freeze(r);
}

/**
 * Opens (creating if needed) the store and applies pending migrations.
 * @throws ConfigError for bad options; MigdError(INTERNAL) when the schema cannot be migrated
 *   (e.g. the file was written by a newer migd).
 */
export async function openSqliteHistoryStore(opts: SqliteHistoryStoreOptions): Promise<SqliteHistoryStore> {
  const o = resolveSqliteStoreOptions(opts);
  const onDisk = o.filename !== ':memory:' && !o.filename.startsWith('file:');
  // The history is private (0600 files in a 0700 folder): SQLite gives the WAL and shared-memory
  // files the database file's mode, and existing ones are tightened after opening.
  if (onDisk) {
    ensurePrivateDir(dirname(o.filename));
    ensurePrivateFile(o.filename);
  }
  const database = new Database(o.filename, { timeout: o.busyTimeoutMs });
  try {
    database.pragma('journal_mode = WAL');
    if (onDisk) restrictFiles([`${o.filename}-wal`, `${o.filename}-shm`]);
    database.pragma('synchronous = NORMAL');
    database.pragma('foreign_keys = ON');
    database.pragma(`busy_timeout = ${Math.floor(o.busyTimeoutMs)}`);
  } catch (err) {
    database.close();
    throw err;
  }
  const db = new Kysely<HistoryDatabase>({ dialect: new SqliteDialect({ database }) });
  if (o.migrate) {
    try {
      await migrateToLatest(db);
    } catch (err) {
      await db.destroy();
      throw err;
    }
  }
  return new SqliteHistoryStore(db, o);
}

/**
 * Applies every pending migration of migrations/index.ts.
 * @throws MigdError(INTERNAL) naming the failed migration.
 */
export async function migrateToLatest<DB>(db: Kysely<DB>): Promise<void> {
  const { error, results } = await new Migrator({ db, provider: migrationProvider }).migrateToLatest();
  if (error !== undefined) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName;
    throw new MigdError('INTERNAL', `schema migration ${failed ?? ''} failed: ${String((error as Error)?.message ?? error)}`.replace('  ', ' '), {
      cause: error,
    });
  }
}

const VALID_STATES = new Set(Object.values(MigrationState).filter((v): v is number => typeof v === 'number'));
/** Rows per INSERT statement (SQLite allows 32 766 bound values per statement). */
const INSERT_CHUNK = 500;
/** Rows per DELETE transaction while pruning, to keep each transaction short. */
const PRUNE_CHUNK = 5000;

type Db = Kysely<HistoryDatabase>;
interface TxState {
  enqueued: number;
}

export class SqliteHistoryStore implements HistoryStore {
  private readonly log: Logger;
  private readonly newId: () => string;
  private readonly listeners = new Set<() => void>();
  private readonly lastProgressEvent = new Map<string, number>();
  private readonly lastGuestEvent = new Map<string, number>();
  private readonly samples: SampleWriter;
  private closed = false;

  /** Use {@link openSqliteHistoryStore}. */
  constructor(
    private readonly db: Db,
    private readonly o: ResolvedSqliteHistoryStoreOptions,
  ) {
    this.log = o.logger;
    this.newId = createIdFactory(o.now);
    this.samples = new SampleWriter({
      persist: (b) => this.persistSamples(b),
      batchSize: o.sampleBatchSize,
      flushIntervalMs: o.sampleFlushIntervalMs,
      maxBuffered: o.maxBufferedSamples,
      logger: o.logger,
    });
  }

  /** The resolved options. */
  get options(): ResolvedSqliteHistoryStoreOptions {
    return this.o;
  }

  /** Sample writer counters (written, dropped, failed flushes). */
  sampleStats(): ReturnType<SampleWriter['stats']> {
    return this.samples.stats();
  }

  // --- transactions ----------------------------------------------------------------------------

  /** Runs `fn` in a BEGIN IMMEDIATE transaction; notifies outbox listeners after commit. */
  private async write<T>(fn: (trx: Db, tx: TxState) => Promise<T>): Promise<T> {
    this.checkOpen();
    const tx: TxState = { enqueued: 0 };
    const result = await this.db.connection().execute(async (conn) => {
      await sql`begin immediate`.execute(conn);
      try {
        const r = await fn(conn, tx);
        await sql`commit`.execute(conn);
        return r;
      } catch (err) {
        try {
          await sql`rollback`.execute(conn);
        } catch {
          // SQLite already rolled back (e.g. after SQLITE_FULL); nothing to undo.
        }
        throw err;
      }
    });
    if (tx.enqueued > 0) this.notify();
    return result;
  }

  /** Runs `fn` on one consistent snapshot (a deferred read transaction). */
  private async read<T>(fn: (conn: Db) => Promise<T>): Promise<T> {
    this.checkOpen();
    return this.db.connection().execute(async (conn) => {
      await sql`begin`.execute(conn);
      try {
        return await fn(conn);
      } finally {
        await sql`commit`.execute(conn);
      }
    });
  }

  private checkOpen(): void {
    if (this.closed) throw new FailedPreconditionError('history store is closed');
  }

  private notify(): void {
    for (const l of this.listeners) {
      try {
        l();
      } catch (err) {
        this.log.warn('outbox listener threw', { err });
      }
    }
  }

  /** Hands out the run's next event sequence number; null when the run does not exist. */
  private async nextSequence(trx: Db, runId: string): Promise<number | null> {
    const row = await trx
      .updateTable('runs')
      .set((eb) => ({ last_sequence: eb('last_sequence', '+', 1) }))
      .where('id', '=', runId)
      .returning('last_sequence')
      .executeTakeFirst();
    return row?.last_sequence ?? null;
  }

  /** Writes an event into the outbox (inside the caller's transaction). */
  private async enqueue(
    trx: Db,
    tx: TxState,
    payload: NonNullable<Event['payload']>,
    time: Date,
    run?: { runId: string; sequence: number },
  ): Promise<void> {
    const event = buildEvent(payload, { id: this.newId(), time, runSequence: run?.sequence ?? 0 });
    const bytes = encodeEvent(event);
    await trx
      .insertInto('outbox')
      .values({
        event_id: event.id,
        subject: event.subject,
        payload: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength),
        run_id: run?.runId ?? null,
        run_sequence: run?.sequence ?? 0,
        created_at: this.o.now(),
      })
      .execute();
    tx.enqueued++;
  }

  /** Enqueues a run event with the run's next sequence number. @throws NotFoundError */
  private async enqueueRunEvent(trx: Db, tx: TxState, runId: string, payload: NonNullable<Event['payload']>, time: Date): Promise<void> {
    const sequence = await this.nextSequence(trx, runId);
    if (sequence === null) throw new NotFoundError(`run ${runId} not found`);
    await this.enqueue(trx, tx, payload, time, { runId, sequence });
  }

  // --- OutboxSource ------------------------------------------------------------------------------

  async readUnpublished(limit: number): Promise<OutboxRecord[]> {
    this.checkOpen();
    const rows = await this.db
      .selectFrom('outbox')
      .select(['seq', 'event_id', 'subject', 'payload', 'created_at'])
      .where('published_at', 'is', null)
      .orderBy('seq')
      .limit(Math.max(1, Math.floor(limit)))
      .execute();
    return rows.map((r) => ({
      seq: r.seq,
      eventId: r.event_id,
      subject: r.subject,
      payload: r.payload,
      createdAt: new Date(r.created_at),
    }));
  }

  async markPublished(seqs: readonly number[], at: Date): Promise<void> {
    if (seqs.length === 0) return;
    await this.write(async (trx) => {
      for (let i = 0; i < seqs.length; i += INSERT_CHUNK) {
        await trx
          .updateTable('outbox')
          .set({ published_at: at.getTime() })
          .where('seq', 'in', seqs.slice(i, i + INSERT_CHUNK))
          .where('published_at', 'is', null)
          .execute();
      }
    });
  }

  async outboxLag(): Promise<OutboxLag> {
    this.checkOpen();
    const r = await this.db
      .selectFrom('outbox')
      .select((eb) => [eb.fn.countAll<number>().as('n'), eb.fn.min('created_at').as('oldest')])
      .where('published_at', 'is', null)
      .executeTakeFirstOrThrow();
    return { unpublished: Number(r.n), oldestCreatedAt: r.oldest === null ? null : new Date(r.oldest) };
  }

  async readOutbox(opts: { afterSeq?: number; runId?: string; limit: number }): Promise<OutboxRecord[]> {
    this.checkOpen();
    let q = this.db
      .selectFrom('outbox')
      .select(['seq', 'event_id', 'subject', 'payload', 'created_at'])
      .where('seq', '>', opts.afterSeq ?? 0)
      .orderBy('seq')
      .limit(Math.max(1, Math.floor(opts.limit)));
    if (opts.runId !== undefined) q = q.where('run_id', '=', opts.runId);
    const rows = await q.execute();
    return rows.map((r) => ({ seq: r.seq, eventId: r.event_id, subject: r.subject, payload: r.payload, createdAt: new Date(r.created_at) }));
  }

  async lastOutboxSeq(): Promise<number> {
    this.checkOpen();
    // AUTOINCREMENT keeps the high-water mark in sqlite_sequence even after the rows are pruned.
    const r = await sql<{ seq: number }>`select seq from sqlite_sequence where name = 'outbox'`.execute(this.db);
    return Number(r.rows[0]?.seq ?? 0);
  }

  async findPlanByKey(idempotencyKey: string, scope = ''): Promise<Plan | undefined> {
    this.checkOpen();
    const row = await this.db.selectFrom('plans').selectAll().where('idempotency_key', '=', scopedIdempotencyKey(scope, idempotencyKey)).executeTakeFirst();
    return row === undefined ? undefined : planToProto(row);
  }

  onOutboxEnqueued(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // --- nodes and VMs -----------------------------------------------------------------------------

  async upsertNode(input: UpsertNodeInput): Promise<Node> {
    const host = HostInfo.fromPartial(input.host);
    const id = host.nodeId;
    if (id === '') throw new InvalidArgumentError('host.node_id is required');
    const status = input.status ?? NodeStatus.NODE_STATUS_UP;
    const now = this.o.now();
    const heartbeat = ms(input.heartbeatAt, now);
    await this.write(async (trx, tx) => {
      const existing = await trx.selectFrom('nodes').select('status').where('id', '=', id).executeTakeFirst();
      const values = {
        management_address: host.managementAddress,
        migration_address: host.migrationAddress,
        host_json: JSON.stringify(HostInfo.toJSON(host)),
        status,
        last_heartbeat_at: heartbeat,
        updated_at: now,
      };
      await trx
        .insertInto('nodes')
        .values({ id, ...values })
        .onConflict((oc) => oc.column('id').doUpdateSet(values))
        .execute();
      if (existing?.status !== status) {
        await this.enqueue(
          trx,
          tx,
          { $case: 'nodeState', value: { nodeId: id, up: status === NodeStatus.NODE_STATUS_UP, reason: input.reason ?? (existing ? 'status changed' : 'registered') } },
          new Date(now),
        );
      }
    });
    return this.getNode(id);
  }

  async setNodeStatus(nodeId: string, status: NodeStatus, reason = ''): Promise<Node> {
    const now = this.o.now();
    await this.write(async (trx, tx) => {
      const existing = await trx.selectFrom('nodes').select('status').where('id', '=', nodeId).executeTakeFirst();
      if (existing === undefined) throw new NotFoundError(`node ${nodeId} not found`);
      if (existing.status === status) return;
      await trx.updateTable('nodes').set({ status, updated_at: now }).where('id', '=', nodeId).execute();
      await this.enqueue(trx, tx, { $case: 'nodeState', value: { nodeId, up: status === NodeStatus.NODE_STATUS_UP, reason } }, new Date(now));
    });
    return this.getNode(nodeId);
  }

  async getNode(nodeId: string): Promise<Node> {
    const nodes = await this.loadNodes(nodeId);
    const n = nodes[0];
    if (n === undefined) throw new NotFoundError(`node ${nodeId} not found`);
    return n;
  }

  listNodes(): Promise<Node[]> {
    return this.loadNodes();
  }

  private async loadNodes(onlyId?: string): Promise<Node[]> {
    return this.read(async (conn) => {
      let q = conn.selectFrom('nodes').selectAll().orderBy('id');
      if (onlyId !== undefined) q = q.where('id', '=', onlyId);
      const rows: NodeRow[] = await q.execute();
      if (rows.length === 0) return [];
      const ids = rows.map((r) => r.id);
      const vmCounts = await conn
        .selectFrom('vms')
        .select((eb) => ['node_id', eb.fn.countAll<number>().as('n')])
        .where('node_id', 'in', ids)
        .groupBy('node_id')
        .execute();
      const migrating = (col: 'source_node_id' | 'destination_node_id') =>
        conn
          .selectFrom('runs')
          .select((eb) => [eb.ref(col).as('node'), eb.fn.countAll<number>().as('n')])
          .where(col, 'in', ids)
          .where('finished_at', 'is', null)
          .where('state', '!=', MigrationState.MIGRATION_STATE_QUEUED)
          .groupBy(col)
          .execute();
      const out = new Map((await migrating('source_node_id')).map((r) => [r.node, Number(r.n)]));
      const inb = new Map((await migrating('destination_node_id')).map((r) => [r.node, Number(r.n)]));
      const vms = new Map(vmCounts.map((r) => [r.node_id, Number(r.n)]));
      return rows.map((r) => ({
        host: hostFromJson(r.host_json),
        status: r.status,
        lastHeartbeat: date(r.last_heartbeat_at),
        vmCount: vms.get(r.id) ?? 0,
        outboundMigrations: out.get(r.id) ?? 0,
        inboundMigrations: inb.get(r.id) ?? 0,
      }));
    });
  }

  async upsertVm(vm: VmInfo): Promise<void> {
    const info = VmInfo.fromPartial(vm);
    const name = info.spec?.name ?? '';
    if (name === '') throw new InvalidArgumentError('vm.spec.name is required');
    const now = this.o.now();
    const nodeId = info.nodeId === '' ? null : info.nodeId;
    await this.write(async (trx, tx) => {
      const existing = await trx.selectFrom('vms').select(['node_id', 'state']).where('name', '=', name).executeTakeFirst();
      const values = {
        node_id: nodeId,
        state: info.state,
        memory_mib: info.spec?.memoryMib ?? 0,
        info_json: JSON.stringify(VmInfo.toJSON(info)),
        updated_at: now,
      };
      await trx
        .insertInto('vms')
        .values({ name, ...values })
        .onConflict((oc) => oc.column('name').doUpdateSet(values))
        .execute();
      const changed = existing === undefined || existing.node_id !== nodeId || existing.state !== info.state;
      if (changed && nodeId !== null) {
        await this.enqueue(trx, tx, { $case: 'vmChanged', value: { vm: info } }, new Date(now));
      }
    });
  }

  async getVm(name: string): Promise<VmInfo> {
    this.checkOpen();
    const row = await this.db.selectFrom('vms').selectAll().where('name', '=', name).executeTakeFirst();
    if (row === undefined) throw new NotFoundError(`VM ${name} not found`);
    return vmToProto(row);
  }

  async listVms(nodeId?: string): Promise<VmInfo[]> {
    this.checkOpen();
    let q = this.db.selectFrom('vms').selectAll().orderBy('node_id').orderBy('name');
    if (nodeId !== undefined && nodeId !== '') q = q.where('node_id', '=', nodeId);
    return (await q.execute()).map(vmToProto);
  }

  // --- plans and runs ----------------------------------------------------------------------------

  async createPlan(input: CreatePlanInput): Promise<CreatePlanResult> {
    if (input.idempotencyKey === '') throw new InvalidArgumentError('idempotency_key is required');
    for (const r of input.runs ?? []) validateRunInput(r);
    const now = this.o.now();
    const id = input.id ?? this.newId();
    const scope = input.idempotencyScope ?? '';
    const key = scopedIdempotencyKey(scope, input.idempotencyKey);
    const result = await this.write(async (trx, tx) => {
      const existing = await trx.selectFrom('plans').selectAll().where('idempotency_key', '=', key).executeTakeFirst();
      if (existing !== undefined) return { plan: planToProto(existing), existing: true };
      const state = input.state ?? PlanState.PLAN_STATE_RUNNING;
      const row = {
        id,
        idempotency_key: key,
        idempotency_scope: scope,
        created_at: ms(input.createdAt, now),
        state,
        priority: input.priority ?? 0,
        ordering_reason: input.orderingReason ?? '',
        request_json: JSON.stringify(SubmitPlanRequest.toJSON(SubmitPlanRequest.fromPartial(input.request))),
        migrations_json: JSON.stringify((input.migrations ?? []).map((m) => PlannedMigration.toJSON(PlannedMigration.fromPartial(m)))),
      };
      try {
        await trx.insertInto('plans').values(row).execute();
      } catch (err) {
        if (isConstraint(err, 'PRIMARYKEY')) throw new AlreadyExistsError(`plan ${id} already exists`, { cause: err });
        throw err;
      }
      for (const r of input.runs ?? []) await this.insertRun(trx, tx, { ...r, planId: id }, now);
      const runs = input.runs?.length ?? 0;
      await this.enqueue(
        trx,
        tx,
        { $case: 'planState', value: { planId: id, state: planStateToJSON(state), runsTotal: runs, runsFinished: 0 } },
        new Date(now),
      );
      return { plan: planToProto(row), existing: false };
    });
    return result;
  }

  async getPlan(planId: string): Promise<Plan> {
    this.checkOpen();
    const row = await this.db.selectFrom('plans').selectAll().where('id', '=', planId).executeTakeFirst();
    if (row === undefined) throw new NotFoundError(`plan ${planId} not found`);
    return planToProto(row);
  }

  async setPlanState(planId: string, state: PlanState): Promise<Plan> {
    const now = this.o.now();
    await this.write(async (trx, tx) => {
      const res = await trx.updateTable('plans').set({ state }).where('id', '=', planId).executeTakeFirst();
      if (Number(res.numUpdatedRows) === 0) throw new NotFoundError(`plan ${planId} not found`);
      const c = await trx
        .selectFrom('runs')
        .select((eb) => [eb.fn.countAll<number>().as('total'), eb.fn.count<number>('finished_at').as('finished')])
        .where('plan_id', '=', planId)
        .executeTakeFirstOrThrow();
      await this.enqueue(
        trx,
        tx,
        { $case: 'planState', value: { planId, state: planStateToJSON(state), runsTotal: Number(c.total), runsFinished: Number(c.finished) } },
        new Date(now),
      );
    });
    return this.getPlan(planId);
  }

  async listPlanRuns(planId: string): Promise<Run[]> {
    return this.read(async (conn) => {
      const plan = await conn.selectFrom('plans').select('id').where('id', '=', planId).executeTakeFirst();
      if (plan === undefined) throw new NotFoundError(`plan ${planId} not found`);
      const rows = await conn.selectFrom('runs').selectAll().where('plan_id', '=', planId).orderBy('created_at').orderBy('id').execute();
      return this.loadRuns(conn, rows);
    });
  }

  async createRun(input: CreateRunInput): Promise<Run> {
    validateRunInput(input);
    const now = this.o.now();
    const id = await this.write((trx, tx) => this.insertRun(trx, tx, input, now));
    return this.getRun(id);
  }

  private async insertRun(trx: Db, tx: TxState, input: CreateRunInput, now: number): Promise<string> {
    const id = input.id ?? this.newId();
    const planId = input.planId === undefined || input.planId === '' ? null : input.planId;
    if (planId !== null) {
      const plan = await trx.selectFrom('plans').select('id').where('id', '=', planId).executeTakeFirst();
      if (plan === undefined) throw new NotFoundError(`plan ${planId} not found`);
    }
    const createdAt = ms(input.createdAt, now);
    const state = input.state ?? MigrationState.MIGRATION_STATE_QUEUED;
    const policy = MigrationPolicy.fromPartial(input.policy);
    try {
      await trx
        .insertInto('runs')
        .values({
          id,
          plan_id: planId,
          vm_name: input.vmName,
          source_node_id: input.sourceNodeId,
          destination_node_id: input.destinationNodeId,
          policy_json: policyToJson(policy),
          policy_kind: normalizePolicyKind(policy.kind),
          policy_label: input.policyLabel ?? '',
          state,
          priority: input.priority ?? 0,
          memory_mib: input.memoryMib ?? 0,
          created_at: createdAt,
          started_at: state === MigrationState.MIGRATION_STATE_QUEUED ? null : createdAt,
          finished_at: null,
          stats_json: null,
          total_time_ms: null,
          downtime_ms: null,
          transferred_bytes: null,
          host_cpu_seconds: null,
          integrity_errors: null,
          error_reason: null,
          error_message: null,
          error_code: null,
        })
        .execute();
    } catch (err) {
      if (isConstraint(err, 'PRIMARYKEY')) throw new AlreadyExistsError(`run ${id} already exists`, { cause: err });
      throw err;
    }
    const change: StateChange = {
      time: new Date(createdAt),
      from: MigrationState.MIGRATION_STATE_UNSPECIFIED,
      to: state,
      reason: input.reason ?? 'created',
    };
    await trx
      .insertInto('run_transitions')
      .values({ run_id: id, at: createdAt, from_state: change.from, to_state: change.to, reason: change.reason })
      .execute();
    await this.enqueueRunEvent(
      trx,
      tx,
      id,
      { $case: 'runState', value: { runId: id, planId: planId ?? '', vmName: input.vmName, change } },
      change.time!,
    );
    return id;
  }

  async getRun(runId: string): Promise<Run> {
    return this.read(async (conn) => {
      const row = await conn.selectFrom('runs').selectAll().where('id', '=', runId).executeTakeFirst();
      if (row === undefined) throw new NotFoundError(`run ${runId} not found`);
      const [run] = await this.loadRuns(conn, [row]);
      return run!;
    });
  }

  /** Attaches transitions and actions to run rows (two queries for the whole list). */
  private async loadRuns(conn: Db, rows: RunRow[]): Promise<Run[]> {
    if (rows.length === 0) return [];
    const ids = rows.map((r) => r.id);
    const transitions = new Map<string, StateChange[]>();
    const actions = new Map<string, PolicyAction[]>();
    for (let i = 0; i < ids.length; i += INSERT_CHUNK) {
      const chunk = ids.slice(i, i + INSERT_CHUNK);
      for (const t of await conn.selectFrom('run_transitions').selectAll().where('run_id', 'in', chunk).orderBy('id').execute()) {
        push(transitions, t.run_id, transitionToProto(t));
      }
      for (const a of await conn.selectFrom('policy_actions').selectAll().where('run_id', 'in', chunk).orderBy('id').execute()) {
        push(actions, a.run_id, actionToProto(a));
      }
    }
    return rows.map((r) => runToProto(r, transitions.get(r.id) ?? [], actions.get(r.id) ?? []));
  }

  async transitionRun(runId: string, input: TransitionRunInput): Promise<StateChange> {
    const to = input.to;
    if (!VALID_STATES.has(to) || to === MigrationState.MIGRATION_STATE_UNSPECIFIED) {
      throw new InvalidArgumentError(`transition target ${to} is not a valid state`);
    }
    if (isTerminalState(to)) {
      throw new InvalidArgumentError(`${migrationStateToJSON(to)} ends a run: use finishRun, not transitionRun`);
    }
    const now = this.o.now();
    const at = ms(input.at, now);
    return this.write(async (trx, tx) => {
      const run = await trx
        .selectFrom('runs')
        .select(['state', 'finished_at', 'started_at', 'plan_id', 'vm_name'])
        .where('id', '=', runId)
        .executeTakeFirst();
      if (run === undefined) throw new NotFoundError(`run ${runId} not found`);
      if (run.finished_at !== null) {
        throw new FailedPreconditionError(`run ${runId} has already finished (${migrationStateToJSON(run.state)})`, { reason: 'RUN_FINISHED' });
      }
      if (input.expectedFrom !== undefined && run.state !== input.expectedFrom) {
        throw new FailedPreconditionError(
          `run ${runId} is ${migrationStateToJSON(run.state)}, not ${migrationStateToJSON(input.expectedFrom)}`,
          { reason: 'UNEXPECTED_STATE' },
        );
      }
      const change: StateChange = { time: new Date(at), from: run.state, to, reason: input.reason ?? '' };
      await trx.insertInto('run_transitions').values({ run_id: runId, at, from_state: run.state, to_state: to, reason: change.reason }).execute();
      await trx
        .updateTable('runs')
        .set({
          state: to,
          started_at: run.started_at ?? (to === MigrationState.MIGRATION_STATE_QUEUED ? null : at),
        })
        .where('id', '=', runId)
        .execute();
      await this.enqueueRunEvent(
        trx,
        tx,
        runId,
        { $case: 'runState', value: { runId, planId: run.plan_id ?? '', vmName: run.vm_name, change } },
        change.time!,
      );
      return change;
    });
  }

  async recordAction(runId: string, action: PolicyAction): Promise<void> {
    const a = PolicyAction.fromPartial(action);
    const now = this.o.now();
    const at = ms(a.time, now);
    a.time = new Date(at);
    await this.write(async (trx, tx) => {
      await this.enqueueRunEvent(trx, tx, runId, { $case: 'runAction', value: { runId, action: a } }, a.time!);
      await trx
        .insertInto('policy_actions')
        .values({ run_id: runId, at, elapsed_ms: a.elapsedMs, kind: a.kind, value: a.value, reason: a.reason, actor: a.actor })
        .execute();
    });
  }

  async finishRun(runId: string, input: FinishRunInput): Promise<Run> {
    if (!isTerminalState(input.state)) {
      throw new InvalidArgumentError(`finishRun needs SUCCEEDED, FAILED or CANCELLED, not ${migrationStateToJSON(input.state)}`);
    }
    // The run's samples should be in before its end is; a failing sample write must not block it.
    await this.samples.flush().catch((err: unknown) => this.log.warn('flushing samples before finishing a run failed', { err, runId }));
    const now = this.o.now();
    const at = ms(input.at, now);
    const stats = input.stats === undefined ? undefined : MigrationStats.fromPartial(input.stats);
    const error = input.error === undefined ? undefined : ErrorInfo.fromPartial(input.error);
    const finished = await this.write(async (trx, tx) => {
      const run = await trx
        .selectFrom('runs')
        .select(['state', 'finished_at', 'plan_id', 'vm_name', 'policy_kind', 'started_at'])
        .where('id', '=', runId)
        .executeTakeFirst();
      if (run === undefined) throw new NotFoundError(`run ${runId} not found`);
      if (run.finished_at !== null) {
        throw new FailedPreconditionError(`run ${runId} has already finished (${migrationStateToJSON(run.state)})`, { reason: 'RUN_FINISHED' });
      }
      const change: StateChange = { time: new Date(at), from: run.state, to: input.state, reason: input.reason ?? '' };
      await trx.insertInto('run_transitions').values({ run_id: runId, at, from_state: run.state, to_state: input.state, reason: change.reason }).execute();
      await trx
        .updateTable('runs')
        .set({
          state: input.state,
          finished_at: at,
          stats_json: stats === undefined ? null : JSON.stringify(MigrationStats.toJSON(stats)),
          total_time_ms: stats?.totalTimeMs ?? null,
          downtime_ms: stats?.downtimeMs ?? null,
          transferred_bytes: stats?.transferredBytes ?? null,
          host_cpu_seconds: stats === undefined ? null : stats.sourceCpuSeconds + stats.destinationCpuSeconds,
          integrity_errors: stats?.integrityErrors ?? null,
          error_reason: error?.reason ?? null,
          error_message: error?.message ?? null,
          error_code: error?.code ?? null,
        })
        .where('id', '=', runId)
        .execute();
      const base = { runId, planId: run.plan_id ?? '', vmName: run.vm_name };
      await this.enqueueRunEvent(trx, tx, runId, { $case: 'runState', value: { ...base, change } }, change.time!);
      await this.enqueueRunEvent(
        trx,
        tx,
        runId,
        { $case: 'runCompleted', value: { ...base, state: input.state, stats, error } },
        change.time!,
      );
      return run;
    });
    this.lastProgressEvent.delete(runId);
    this.lastGuestEvent.delete(runId);
    if (this.o.metrics !== undefined) {
      const total = stats !== undefined && stats.totalTimeMs > 0 ? stats.totalTimeMs : finished.started_at === null ? null : at - finished.started_at;
      observeRunFinished(this.o.metrics, {
        policyKind: finished.policy_kind,
        state: input.state,
        totalTimeMs: total,
        downtimeMs: stats?.downtimeMs ?? null,
      });
    }
    return this.getRun(runId);
  }

  async listActiveRuns(): Promise<Run[]> {
    return this.read(async (conn) => {
      const rows = await conn
        .selectFrom('runs')
        .selectAll()
        .where('finished_at', 'is', null)
        .orderBy('priority', 'desc')
        .orderBy('created_at')
        .orderBy('id')
        .execute();
      return this.loadRuns(conn, rows);
    });
  }

  async listRunningPlanIds(): Promise<string[]> {
    this.checkOpen();
    const rows = await this.db.selectFrom('plans').select('id').where('state', '=', PlanState.PLAN_STATE_RUNNING).orderBy('created_at').orderBy('id').execute();
    return rows.map((r) => r.id);
  }

  async countRunsByState(): Promise<Map<MigrationState, number>> {
    this.checkOpen();
    const rows = await this.db
      .selectFrom('runs')
      .select((eb) => ['state', eb.fn.countAll<number>().as('n')])
      .groupBy('state')
      .execute();
    return new Map(rows.map((r) => [r.state as MigrationState, Number(r.n)]));
  }

  // --- samples -----------------------------------------------------------------------------------

  appendProgress(runId: string, input: ProgressSample): void {
    if (runId === '') throw new InvalidArgumentError('run id is required');
    this.checkOpen();
    const sample = ProgressSample.fromPartial(input);
    const now = this.o.now();
    const at = ms(sample.time, now);
    const emit = this.due(this.lastProgressEvent, runId, now, this.o.progressEventIntervalMs);
    this.samples.addProgress(
      progressToRow(runId, sample, at),
      emit ? { runId, time: new Date(at), payload: { $case: 'runProgress', value: { runId, sample: { ...sample, time: new Date(at) } } } } : undefined,
    );
  }

  appendGuestSample(input: GuestPerfSample, runId?: string): void {
    const sample = GuestPerfSample.fromPartial(input);
    if (sample.vmName === '') throw new InvalidArgumentError('guest sample vm_name is required');
    this.checkOpen();
    const now = this.o.now();
    const at = ms(sample.time, now);
    const run = runId === undefined || runId === '' ? null : runId;
    const emit = run !== null && this.due(this.lastGuestEvent, run, now, this.o.guestEventIntervalMs);
    this.samples.addGuest(
      guestToRow(sample, run, at),
      emit && run !== null
        ? { runId: run, time: new Date(at), payload: { $case: 'runGuest', value: { runId: run, sample: { ...sample, time: new Date(at) } } } }
        : undefined,
    );
  }

  appendHostCpu(runId: string, sample: HostCpuSample): void {
    if (runId === '') throw new InvalidArgumentError('run id is required');
    this.checkOpen();
    this.samples.addHostCpu(hostCpuToRow(runId, sample, ms(sample.time, this.o.now())));
  }

  flushSamples(): Promise<void> {
    return this.samples.flush();
  }

  private due(last: Map<string, number>, runId: string, now: number, interval: number): boolean {
    const prev = last.get(runId);
    if (prev !== undefined && now - prev < interval) return false;
    last.set(runId, now);
    return true;
  }

  private async persistSamples(b: SampleBatch): Promise<void> {
    await this.write(async (trx, tx) => {
      for (let i = 0; i < b.progress.length; i += INSERT_CHUNK) {
        await trx.insertInto('progress_samples').values(b.progress.slice(i, i + INSERT_CHUNK)).execute();
      }
      for (let i = 0; i < b.guest.length; i += INSERT_CHUNK) {
        await trx.insertInto('guest_samples').values(b.guest.slice(i, i + INSERT_CHUNK)).execute();
      }
      for (let i = 0; i < b.hostCpu.length; i += INSERT_CHUNK) {
        await trx.insertInto('host_cpu_samples').values(b.hostCpu.slice(i, i + INSERT_CHUNK)).execute();
      }
      for (const e of b.events) {
        // Samples of an unknown (or already deleted) run are kept; they just get no event.
        const sequence = await this.nextSequence(trx, e.runId);
        if (sequence === null) continue;
        await this.enqueue(trx, tx, e.payload, e.time, { runId: e.runId, sequence });
      }
    });
  }

  // --- queries -----------------------------------------------------------------------------------

  async listRuns(request: Partial<ListRunsRequest>): Promise<ListRunsResponse> {
    const filter = normalizeFilter(request.filter);
    const pageSize = Math.min(1000, Math.max(1, request.pageSize || 50));
    const fp = filterFingerprint(filter);
    const cursor = request.pageToken ? decodePageToken(request.pageToken, fp) : null;
    return this.read(async (conn) => {
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
        runs: await this.loadRuns(conn, page),
        nextPageToken: more && last !== undefined ? encodePageToken({ createdAtMs: last.created_at, id: last.id }, fp) : '',
      };
    });
  }

  async getRunTimeline(runId: string): Promise<GetRunTimelineResponse> {
    return this.read((conn) => this.timeline(conn, runId));
  }

  private async timeline(conn: Db, runId: string): Promise<GetRunTimelineResponse> {
    const row = await conn.selectFrom('runs').selectAll().where('id', '=', runId).executeTakeFirst();
    if (row === undefined) throw new NotFoundError(`run ${runId} not found`);
    const [run] = await this.loadRuns(conn, [row]);
    const progress = await conn.selectFrom('progress_samples').selectAll().where('run_id', '=', runId).orderBy('at').orderBy('id').execute();
    const from = (row.started_at ?? row.created_at) - this.o.guestWindowMs;
    const to = (row.finished_at ?? this.o.now()) + this.o.guestWindowMs;
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
    const window = opts.guestWindowMs ?? this.o.guestWindowMs;
    if (!(window >= 0)) throw new InvalidArgumentError('guestWindowMs must be >= 0');
    this.checkOpen();
    const rows = await this.db
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

  async exportRuns(filter: Partial<RunFilter>, format: ExportFormat): Promise<ExportRunsResponse> {
    const f = normalizeFilter(filter);
    if (format !== ExportFormat.EXPORT_FORMAT_UNSPECIFIED && format !== ExportFormat.EXPORT_FORMAT_JSON && format !== ExportFormat.EXPORT_FORMAT_CSV) {
      throw new InvalidArgumentError(`unknown export format ${format}`);
    }
    this.checkOpen();
    const ids = await this.db
      .selectFrom('runs')
      .select(['id', 'policy_label'])
      .where((eb) => eb.and(filterConditions(eb, f)))
      .orderBy('created_at')
      .orderBy('id')
      .limit(this.o.maxExportRuns + 1)
      .execute();
    if (ids.length > this.o.maxExportRuns) {
      throw new ResourceExhaustedError(`the filter selects more than ${this.o.maxExportRuns} runs; narrow it (e.g. a time range) and export in parts`);
    }
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
      return { data: Buffer.from(timelinesToCsv(timelines, labels), 'utf8'), contentType: 'text/csv' };
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
    };
  }

  // --- maintenance -------------------------------------------------------------------------------

  async pruneSamples(now: Date = new Date(this.o.now())): Promise<PruneResult> {
    const result: PruneResult = { progress: 0, guest: 0, hostCpu: 0 };
    if (this.o.sampleRetentionMs === null) return result;
    const cutoff = now.getTime() - this.o.sampleRetentionMs;
    const oldRuns = (db: Db) =>
      db.selectFrom('runs').select('id').where('finished_at', 'is not', null).where('finished_at', '<', cutoff);
    result.progress = await this.deleteInChunks((trx) =>
      trx
        .deleteFrom('progress_samples')
        .where('id', 'in', trx.selectFrom('progress_samples').select('id').where('run_id', 'in', oldRuns(trx)).limit(PRUNE_CHUNK))
        .executeTakeFirst(),
    );
    result.hostCpu = await this.deleteInChunks((trx) =>
      trx
        .deleteFrom('host_cpu_samples')
        .where('id', 'in', trx.selectFrom('host_cpu_samples').select('id').where('run_id', 'in', oldRuns(trx)).limit(PRUNE_CHUNK))
        .executeTakeFirst(),
    );
    result.guest = await this.deleteInChunks((trx) =>
      trx
        .deleteFrom('guest_samples')
        .where(
          'id',
          'in',
          trx
            .selectFrom('guest_samples')
            .select('id')
            .where('at', '<', cutoff)
            .where((eb) =>
              eb.or([
                eb('run_id', 'is', null),
                eb('run_id', 'not in', eb.selectFrom('runs').select('runs.id').where('runs.finished_at', 'is', null)),
              ]),
            )
            .limit(PRUNE_CHUNK),
        )
        .executeTakeFirst(),
    );
    return result;
  }

  async pruneOutbox(now: Date = new Date(this.o.now())): Promise<number> {
    const cutoff = now.getTime() - this.o.outboxRetentionMs;
    return this.deleteInChunks((trx) =>
      trx
        .deleteFrom('outbox')
        .where(
          'seq',
          'in',
          trx.selectFrom('outbox').select('seq').where('published_at', 'is not', null).where('published_at', '<', cutoff).limit(PRUNE_CHUNK),
        )
        .executeTakeFirst(),
    );
  }

  /** Repeats a chunked DELETE, one short transaction each, until it deletes nothing. */
  private async deleteInChunks(del: (trx: Db) => Promise<{ numDeletedRows: bigint }>): Promise<number> {
    let total = 0;
    for (;;) {
      const r = await this.write((trx) => del(trx));
      const n = Number(r.numDeletedRows);
      total += n;
      if (n < PRUNE_CHUNK) return total;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      await this.samples.close();
    } catch (err) {
      this.log.error('samples lost at close: the final write failed', { err, lost: this.samples.size });
    }
    this.closed = true;
    this.listeners.clear();
    try {
      await sql`pragma optimize`.execute(this.db);
    } catch {
      // Best effort only.
    }
    await this.db.destroy();
  }
}

function push<T>(m: Map<string, T[]>, k: string, v: T): void {
  const a = m.get(k);
  if (a === undefined) m.set(k, [v]);
  else a.push(v);
}

function validateRunInput(r: CreateRunInput): void {
  if (r.vmName === '') throw new InvalidArgumentError('run vm_name is required');
  if (r.sourceNodeId === '') throw new InvalidArgumentError('run source_node_id is required');
  if (r.destinationNodeId === '') throw new InvalidArgumentError('run destination_node_id is required');
  if (r.policy === undefined) throw new InvalidArgumentError('run policy is required');
  if (r.id !== undefined && r.id === '') throw new InvalidArgumentError('run id must not be empty when given');
  if (r.state !== undefined && (isTerminalState(r.state) || !VALID_STATES.has(r.state) || r.state === MigrationState.MIGRATION_STATE_UNSPECIFIED)) {
    throw new InvalidArgumentError(`a run cannot start in state ${r.state}`);
  }
}

function isConstraint(err: unknown, kind: 'PRIMARYKEY' | 'UNIQUE'): boolean {
  return (err as { code?: unknown } | null)?.code === `SQLITE_CONSTRAINT_${kind}`;
}

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
] as const;

const iso = (d: Date | undefined): string => (d === undefined ? '' : d.toISOString());

/**
 * One CSV document for timelines: a row per progress sample (one empty-sample row for a run
 * without any). `labels` maps run ids to their policy labels.
 */
export function timelinesToCsv(timelines: readonly GetRunTimelineResponse[], labels: ReadonlyMap<string, string> = new Map()): string {
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
      ]);
    }
  }
  return toCsv(CSV_HEADER, rows);
}
