/**
 * Plans, their runs, state transitions and policy actions. Every change writes its rows and its
 * events (RunStateChanged, RunAction, RunCompleted, PlanStateChanged) in one transaction.
 */
import { CompiledQuery, sql } from 'kysely';
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../../shared/errors.js';
import {
  ErrorInfo,
  MigrationPolicy,
  MigrationState,
  MigrationStats,
  migrationStateToJSON,
  NetworkBlackout,
  PolicyAction,
} from '../../shared/gen/migd/v1/common.js';
import { PlannedMigration, PlanState, planStateToJSON, SubmitPlanRequest, type Plan, type Run } from '../../shared/gen/migd/v1/coordinator.js';
import type { StateChange } from '../../shared/gen/migd/v1/node.js';
import { observeRunFinished } from '../../shared/metrics/metrics.js';
import { isTerminalState } from '../../shared/policy/states.js';
import { INSERT_CHUNK, REUSE_CHUNK, runKey, throwFirstFailure, type Db, type OutboxEvent, type StoreDatabase } from './database.js';
import { actionToProto, ms, normalizePolicyKind, planToProto, policyToJson, runToProto, scopedIdempotencyKey, transitionToProto } from './mapping.js';
import type { ActionRow, RunRow, TransitionRow } from './schema.js';
import type { RunCostFigures } from '../domain/policy/measured.js';
import type { ActiveMove, CreatePlanInput, PlanProgress, CreatePlanResult, CreateRunInput, FinishRunInput, PlanRunRepository, TransitionRunInput } from './types.js';

const VALID_STATES = new Set(Object.values(MigrationState).filter((v): v is number => typeof v === 'number'));

/** What ending a run needs from the sample buffer. */
export interface RunSamples {
  /** Writes the buffered samples. */
  flushSamples(): Promise<void>;
  /**
   * Runs `write` (which must ask for its store write at once, in the same turn) right after a
   * write of the buffered samples: both go in one group commit, the samples first.
   */
  writeAfterSamples<T>(write: () => Promise<T>): Promise<T>;
  /** Forgets the run's event rate limits (it will send no more). */
  forgetRun(runId: string): void;
}

export class SqlPlanRunRepository implements PlanRunRepository {
  /**
   * Postgres: a transition's (or an end's) row in run_transitions is written by the run's UPDATE
   * itself, in a data-modifying WITH, only when the UPDATE matched: one statement, so one round
   * trip of the one write connection, instead of two (issue 15 §4). SQLite has no such WITH, and
   * its statements are no round trips: two statements there.
   */
  private readonly transitionWithUpdate: boolean;

  constructor(
    private readonly d: StoreDatabase,
    private readonly samples: RunSamples,
  ) {
    this.transitionWithUpdate = d.dialect.name === 'postgres';
  }

  async createPlan(input: CreatePlanInput): Promise<CreatePlanResult> {
    if (input.idempotencyKey === '') throw new InvalidArgumentError('idempotency_key is required');
    for (const r of input.runs ?? []) validateRunInput(r);
    const now = this.d.now();
    const id = input.id ?? this.d.newId();
    const scope = input.idempotencyScope ?? '';
    const key = scopedIdempotencyKey(scope, input.idempotencyKey);
    // A client waits for this write (SubmitPlan): it goes before the queued writes (see StoreDatabase.write).
    const result = await this.d.write(async (trx, tx) => {
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
      // The plan's row and its runs' asked for together (insertRuns): on a pipelined write
      // connection (Postgres) one round trip, not one each; they are sent in the order asked.
      const plan = trx
        .insertInto('plans')
        .values(row)
        .execute()
        .catch((err: unknown) => {
          if (this.d.dialect.isConstraintViolation(err, 'primary-key')) throw new AlreadyExistsError(`plan ${id} already exists`, { cause: err });
          throw err;
        });
      const { events, runs: created } = await this.insertRuns(trx, (input.runs ?? []).map((r) => ({ ...r, planId: id })), now, true, [plan]);
      const runs = input.runs?.length ?? 0;
      // The runs' events, then the plan's, as few statements as the runs' rows.
      await this.d.enqueueAll(trx, tx, [...events, { payload: { $case: 'planState', value: { planId: id, state: planStateToJSON(state), runsTotal: runs, runsFinished: 0 } }, time: new Date(now) }]);
      return { plan: planToProto(row), existing: false, runs: created };
    }, { first: true });
    return result;
  }

  async getPlan(planId: string): Promise<Plan> {
    this.d.checkOpen();
    const row = await this.d.db.selectFrom('plans').selectAll().where('id', '=', planId).executeTakeFirst();
    if (row === undefined) throw new NotFoundError(`plan ${planId} not found`);
    return planToProto(row);
  }

  async setPlanState(planId: string, state: PlanState): Promise<Plan> {
    const now = this.d.now();
    await this.d.write(async (trx, tx) => {
      const res = await trx.updateTable('plans').set({ state }).where('id', '=', planId).executeTakeFirst();
      if (Number(res.numUpdatedRows) === 0) throw new NotFoundError(`plan ${planId} not found`);
      const c = await trx
        .selectFrom('runs')
        .select((eb) => [eb.fn.countAll<number>().as('total'), eb.fn.count<number>('finished_at').as('finished')])
        .where('plan_id', '=', planId)
        .executeTakeFirstOrThrow();
      await this.d.enqueue(
        trx,
        tx,
        { $case: 'planState', value: { planId, state: planStateToJSON(state), runsTotal: Number(c.total), runsFinished: Number(c.finished) } },
        new Date(now),
      );
    });
    return this.getPlan(planId);
  }

  async listPlanRuns(planId: string): Promise<Run[]> {
    return this.d.read(async (conn) => {
      const plan = await conn.selectFrom('plans').select('id').where('id', '=', planId).executeTakeFirst();
      if (plan === undefined) throw new NotFoundError(`plan ${planId} not found`);
      const rows = await conn.selectFrom('runs').selectAll().where('plan_id', '=', planId).orderBy('created_at').orderBy('id').execute();
      return loadRuns(conn, rows);
    });
  }

  async planProgress(planId: string): Promise<PlanProgress> {
    // Asked at every run's end: both queries are compiled once.
    return this.d.read(async (conn) => {
      const plan = (await this.d.reuse(conn, 'plans.stateOf', (db, p) => db.selectFrom('plans').select('state').where('id', '=', p(0)), [planId])).rows[0];
      if (plan === undefined) throw new NotFoundError(`plan ${planId} not found`);
      const c = (
        await this.d.reuse(
          conn,
          'runs.progressOfPlan',
          (db, p) =>
            db
              .selectFrom('runs')
              .select((eb) => [
                eb.fn.countAll<number>().as('total'),
                eb.fn.count<number>('finished_at').as('finished'),
                // Literals, not parameters: Postgres cannot type a CASE of untyped parameters (sum(text)).
                eb.fn.sum<number>(eb.case().when('state', '=', sql.lit(MigrationState.MIGRATION_STATE_SUCCEEDED)).then(sql.lit(1)).else(sql.lit(0)).end()).as('succeeded'),
              ])
              .where('plan_id', '=', p(0)),
          [planId],
        )
      ).rows[0]!;
      return { state: plan.state, runs: Number(c.total), finished: Number(c.finished), succeeded: Number(c.succeeded ?? 0) };
    });
  }

  async createRun(input: CreateRunInput): Promise<Run> {
    validateRunInput(input);
    const now = this.d.now();
    const id = await this.d.write(async (trx, tx) => {
      const { ids, events } = await this.insertRuns(trx, [input], now);
      await this.d.enqueueAll(trx, tx, events);
      return ids[0]!;
    });
    return this.getRun(id);
  }

  /**
   * Inserts runs, their first transitions and returns their RunStateChanged events (sequence 1),
   * for the caller to enqueue with its own. One statement per {@link REUSE_CHUNK} runs for each
   * table, compiled once per row count (a drain plan inserts one run per VM: 3 statements a run
   * were a network round trip each on Postgres, behind which every other write waited). `planKnown`:
   * the plan was inserted in this transaction (createPlan), so it is not looked up again. The
   * statements are asked for all at once (after `before`, statements the caller asked for first),
   * so that on a pipelined write connection they take one round trip; they are sent in the order
   * asked, which the rows' references need (plan, runs, transitions).
   */
  private async insertRuns(trx: Db, inputs: readonly CreateRunInput[], now: number, planKnown = false, before: Promise<unknown>[] = []): Promise<{ ids: string[]; events: OutboxEvent[]; runs: Run[] }> {
    const statements = [...before];
    const checked = new Set<string>();
    const rows: unknown[][] = [];
    const changes: { id: string; at: number; change: StateChange }[] = [];
    const events: OutboxEvent[] = [];
    const runs: Run[] = [];
    for (const input of inputs) {
      const id = input.id ?? this.d.newId();
      const planId = input.planId === undefined || input.planId === '' ? null : input.planId;
      if (planId !== null && !planKnown && !checked.has(planId)) {
        const plan = await trx.selectFrom('plans').select('id').where('id', '=', planId).executeTakeFirst();
        if (plan === undefined) throw new NotFoundError(`plan ${planId} not found`);
        checked.add(planId);
      }
      const createdAt = ms(input.createdAt, now);
      const state = input.state ?? MigrationState.MIGRATION_STATE_QUEUED;
      const policy = MigrationPolicy.fromPartial(input.policy);
      // The run's first event takes sequence 1 here (last_sequence is written with the row rather
      // than counted up by a second statement). In the column order of the insert below.
      rows.push([
        id,
        planId,
        input.vmName,
        input.sourceNodeId,
        input.destinationNodeId,
        policyToJson(policy),
        normalizePolicyKind(policy.kind),
        input.policyLabel ?? '',
        state,
        input.priority ?? 0,
        input.memoryMib ?? 0,
        createdAt,
        state === MigrationState.MIGRATION_STATE_QUEUED ? null : createdAt,
        1,
      ]);
      const change: StateChange = { time: new Date(createdAt), from: MigrationState.MIGRATION_STATE_UNSPECIFIED, to: state, reason: input.reason ?? 'created' };
      changes.push({ id, at: createdAt, change });
      // The run as a read of its rows would return it (runToProto of what is inserted below).
      runs.push({
        id,
        planId: planId ?? '',
        vmName: input.vmName,
        sourceNodeId: input.sourceNodeId,
        destinationNodeId: input.destinationNodeId,
        policy: MigrationPolicy.fromJSON(JSON.parse(rows[rows.length - 1]![5] as string)),
        state,
        transitions: [{ ...change, time: new Date(createdAt) }],
        createdAt: new Date(createdAt),
        startedAt: state === MigrationState.MIGRATION_STATE_QUEUED ? undefined : new Date(createdAt),
        finishedAt: undefined,
        stats: undefined,
        error: undefined,
        actions: [],
        memoryMib: input.memoryMib ?? 0,
        priority: input.priority ?? 0,
        networkBlackout: undefined,
      });
      events.push({ payload: { $case: 'runState', value: { runId: id, planId: planId ?? '', vmName: input.vmName, change } }, time: change.time!, run: { runId: id, sequence: 1 } });
    }
    for (let i = 0; i < rows.length; i += REUSE_CHUNK) {
      const chunk = rows.slice(i, i + REUSE_CHUNK);
      const n = chunk.length;
      statements.push(
        this.d
          .reuse(
          trx,
          `runs.insert×${n}`,
          (db, p) =>
            db.insertInto('runs').values(
              chunk.map((_, k) => ({
                id: p(14 * k),
                plan_id: p(14 * k + 1),
                vm_name: p(14 * k + 2),
                source_node_id: p(14 * k + 3),
                destination_node_id: p(14 * k + 4),
                policy_json: p(14 * k + 5),
                policy_kind: p(14 * k + 6),
                policy_label: p(14 * k + 7),
                state: p(14 * k + 8),
                priority: p(14 * k + 9),
                memory_mib: p(14 * k + 10),
                created_at: p(14 * k + 11),
                started_at: p(14 * k + 12),
                last_sequence: p(14 * k + 13),
                // finished_at, stats and error columns: NULL by default (a literal would be a parameter).
              })),
            ),
          chunk.flat(),
        )
          .catch((err: unknown) => {
            if (this.d.dialect.isConstraintViolation(err, 'primary-key')) {
              const ids = chunk.map((r) => String(r[0]));
              throw new AlreadyExistsError(n === 1 ? `run ${ids[0]} already exists` : `one of runs ${ids.join(', ')} already exists`, { cause: err });
            }
            throw err;
          }),
      );
      const first = changes.slice(i, i + n);
      statements.push(
        this.d.reuse(
          trx,
          `runTransitions.insert×${n}`,
          (db, p) => db.insertInto('run_transitions').values(first.map((_, k) => ({ run_id: p(5 * k), at: p(5 * k + 1), from_state: p(5 * k + 2), to_state: p(5 * k + 3), reason: p(5 * k + 4) }))),
          first.flatMap((c) => [c.id, c.at, c.change.from, c.change.to, c.change.reason]),
        ),
      );
    }
    // Every one answered before the write ends (none left in flight behind a rollback), then the
    // first failure (in the order asked: a run's after its plan's).
    throwFirstFailure(await Promise.allSettled(statements));
    return { ids: changes.map((c) => c.id), events, runs };
  }

  /** One row of a run's state history (a query compiled once: every migration writes several). */
  private async insertTransition(trx: Db, runId: string, at: number, from: MigrationState, to: MigrationState, reason: string): Promise<void> {
    await this.d.reuse(
      trx,
      'runTransitions.insert',
      (db, p) => db.insertInto('run_transitions').values({ run_id: p(0), at: p(1), from_state: p(2), to_state: p(3), reason: p(4) }),
      [runId, at, from, to, reason],
    );
  }

  async getRun(runId: string): Promise<Run> {
    return this.d.read(async (conn) => {
      const run = await this.loadRun(conn, runId);
      if (run === undefined) throw new NotFoundError(`run ${runId} not found`);
      return run;
    });
  }

  /** One run with its transitions and actions: three queries compiled once (read at every run's end). */
  private async loadRun(conn: Db, runId: string): Promise<Run | undefined> {
    const row = (await this.d.reuse(conn, 'runs.byId', (db, p) => db.selectFrom('runs').selectAll().where('id', '=', p(0)), [runId])).rows[0];
    return row === undefined ? undefined : this.loadRunOf(conn, row);
  }

  /** A run row with its transitions and actions (two queries compiled once). */
  private async loadRunOf(conn: Db, row: RunRow): Promise<Run> {
    const runId = row.id;
    const transitions = await this.d.reuse(conn, 'runTransitions.ofRun', (db, p) => db.selectFrom('run_transitions').selectAll().where('run_id', '=', p(0)).orderBy('id'), [runId]);
    const actions = await this.d.reuse(conn, 'policyActions.ofRun', (db, p) => db.selectFrom('policy_actions').selectAll().where('run_id', '=', p(0)).orderBy('id'), [runId]);
    return runToProto(row, transitions.rows.map(transitionToProto), actions.rows.map(actionToProto));
  }

  async transitionRun(runId: string, input: TransitionRunInput): Promise<StateChange> {
    const to = input.to;
    if (!VALID_STATES.has(to) || to === MigrationState.MIGRATION_STATE_UNSPECIFIED) {
      throw new InvalidArgumentError(`transition target ${to} is not a valid state`);
    }
    if (isTerminalState(to)) {
      throw new InvalidArgumentError(`${migrationStateToJSON(to)} ends a run: use finishRun, not transitionRun`);
    }
    const now = this.d.now();
    const at = ms(input.at, now);
    const startedAt = to === MigrationState.MIGRATION_STATE_QUEUED ? null : at;
    return this.d.write(async (trx, tx) => {
      // The state the run is believed to be in (a condition or the caller's hint): the update
      // checks it, so a right guess needs no read first (issue 15 §4: on Postgres each statement
      // is a round trip of the one write connection, and a run's transitions are on its slot's
      // critical path). A wrong guess, or none, reads the run and updates from what it holds.
      const reason = input.reason ?? '';
      const { from, row: updated } = await this.updateFrom(trx, runId, input.expectedFrom ?? input.from, input.expectedFrom, (f) => this.setState(trx, runId, f, to, startedAt, at, reason));
      const change: StateChange = { time: new Date(at), from, to, reason };
      // On Postgres the UPDATE wrote the transition's row too (one round trip, see setState).
      if (!this.transitionWithUpdate) await this.insertTransition(trx, runId, at, change.from, to, change.reason);
      await this.d.enqueue(
        trx,
        tx,
        { $case: 'runState', value: { runId, planId: updated.plan_id ?? '', vmName: updated.vm_name, change } },
        change.time!,
        { runId, sequence: Number(updated.last_sequence) },
      );
      return change;
    }, { keys: [runKey(runId)] });
  }

  /**
   * Runs `update` (an UPDATE of the unfinished run in the state it is given, returning a row, or
   * undefined when the run is not in it) with `guess`, the state the run is believed to be in, so
   * that a right guess needs no read first. Without a guess, or with a wrong one, reads the run —
   * NotFoundError, RUN_FINISHED, or UNEXPECTED_STATE when it is not in `expected` — and updates
   * from the state it holds: in the write transaction nothing else changes the row in between.
   */
  private async updateFrom<R>(trx: Db, runId: string, guess: MigrationState | undefined, expected: MigrationState | undefined, update: (from: MigrationState) => Promise<R | undefined>): Promise<{ from: MigrationState; row: R }> {
    const guessed = guess === undefined ? undefined : await update(guess);
    if (guessed !== undefined) return { from: guess!, row: guessed };
    const run = (await this.d.reuse(trx, 'runs.stateOf', (db, p) => db.selectFrom('runs').select(['state', 'finished_at']).where('id', '=', p(0)), [runId])).rows[0];
    if (run === undefined) throw new NotFoundError(`run ${runId} not found`);
    if (run.finished_at !== null) {
      throw new FailedPreconditionError(`run ${runId} has already finished (${migrationStateToJSON(run.state)})`, { reason: 'RUN_FINISHED' });
    }
    if (expected !== undefined && run.state !== expected) {
      throw new FailedPreconditionError(`run ${runId} is ${migrationStateToJSON(run.state)}, not ${migrationStateToJSON(expected)}`, { reason: 'UNEXPECTED_STATE' });
    }
    return { from: run.state, row: (await update(run.state))! };
  }

  /**
   * Moves an unfinished run in state `from` to `to` and counts its event sequence up by one, in one
   * statement (a query compiled once); `startedAt` is kept when the run has started already.
   * Undefined when the run does not exist, has finished or is not in `from`.
   */
  private async setState(trx: Db, runId: string, from: MigrationState, to: MigrationState, startedAt: number | null, at: number, reason: string): Promise<{ plan_id: string | null; vm_name: string; last_sequence: number } | undefined> {
    if (this.transitionWithUpdate) {
      const r = await trx.executeQuery<{ plan_id: string | null; vm_name: string; last_sequence: number }>(CompiledQuery.raw(PG_SET_STATE, [to, startedAt, runId, from, at, reason]));
      return r.rows[0];
    }
    const r = await this.d.reuse(
      trx,
      'runs.setState',
      (db, p) =>
        db
          .updateTable('runs')
          .set((eb) => ({ state: p(0), started_at: eb.fn.coalesce('started_at', eb.val(p(1))), last_sequence: eb('last_sequence', '+', p(2)) }))
          .where('id', '=', p(3))
          .where('state', '=', p(4))
          .where('finished_at', 'is', null)
          .returning(['plan_id', 'vm_name', 'last_sequence']),
      [to, startedAt, 1, runId, from],
    );
    return r.rows[0];
  }

  async recordAction(runId: string, action: PolicyAction): Promise<void> {
    const a = PolicyAction.fromPartial(action);
    const now = this.d.now();
    const at = ms(a.time, now);
    a.time = new Date(at);
    await this.d.write(async (trx, tx) => {
      await this.d.enqueueRunEvent(trx, tx, runId, { $case: 'runAction', value: { runId, action: a } }, a.time!);
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
    const now = this.d.now();
    const at = ms(input.at, now);
    const stats = input.stats === undefined ? undefined : MigrationStats.fromPartial(input.stats);
    const error = input.error === undefined ? undefined : ErrorInfo.fromPartial(input.error);
    // The run's samples go in before its end, asked for in the same turn (one group commit; see
    // RunSamples.writeAfterSamples), not awaited first (one more group commit between a run's end
    // and its slots' release) nor inside the end's transaction (5–7 statements more per end).
    const { finished, ended } = await this.samples.writeAfterSamples(() => this.d.write(async (trx, tx) => {
      // As in transitionRun: the state the caller last recorded is checked by the update itself;
      // without it, or when it is wrong, the run is read first.
      const reason = input.reason ?? '';
      // A succeeded run's measured costs (RunCostFigures) in the same UPDATE; a figure not given
      // leaves its column as it is (recordRunCosts).
      const costs = costColumns(input.costs ?? {});
      const finishArgs = (from: MigrationState): unknown[] => [
        input.state,
        at,
        stats === undefined ? null : JSON.stringify(MigrationStats.toJSON(stats)),
        stats?.totalTimeMs ?? null,
        stats?.downtimeMs ?? null,
        stats?.transferredBytes ?? null,
        stats === undefined ? null : stats.sourceCpuSeconds + stats.destinationCpuSeconds,
        stats?.integrityErrors ?? null,
        error?.reason ?? null,
        error?.message ?? null,
        error?.code ?? null,
        2,
        runId,
        from,
        ...COST_COLUMNS.map((c) => costs[c]),
      ];
      const finish = (from: MigrationState): Promise<FinishedRow | undefined> =>
        this.transitionWithUpdate
          ? trx.executeQuery<FinishedRow>(CompiledQuery.raw(PG_FINISH, [...finishArgs(from), reason])).then((r) => r.rows[0])
          : this.d
          .reuse(
            trx,
            'runs.finish',
            (db, p) =>
              db
                .updateTable('runs')
                .set((eb) => ({
                  state: p(0),
                  finished_at: p(1),
                  stats_json: p(2),
                  total_time_ms: p(3),
                  downtime_ms: p(4),
                  transferred_bytes: p(5),
                  host_cpu_seconds: p(6),
                  integrity_errors: p(7),
                  error_reason: p(8),
                  error_message: p(9),
                  error_code: p(10),
                  last_sequence: eb('last_sequence', '+', p(11)),
                  ...Object.fromEntries(COST_COLUMNS.map((c, k) => [c, eb.fn.coalesce(eb.val(p(14 + k)), eb.ref(c))])),
                }))
                .where('id', '=', p(12))
                .where('state', '=', p(13))
                .where('finished_at', 'is', null)
                .returningAll(),
            finishArgs(from),
          )
          .then((r) => r.rows[0]);
      // The end, the two events' sequence numbers and the row to return in one statement (issue 15 §4).
      const { from, row } = await this.updateFrom(trx, runId, input.from, undefined, finish);
      const change: StateChange = { time: new Date(at), from, to: input.state, reason };
      if (!this.transitionWithUpdate) await this.insertTransition(trx, runId, at, change.from, input.state, change.reason);
      const last = Number(row.last_sequence);
      const base = { runId, planId: row.plan_id ?? '', vmName: row.vm_name };
      await this.d.enqueueAll(trx, tx, [
        { payload: { $case: 'runState', value: { ...base, change } }, time: change.time!, run: { runId, sequence: last - 1 } },
        { payload: { $case: 'runCompleted', value: { ...base, state: input.state, stats, error } }, time: change.time!, run: { runId, sequence: last } },
      ]);
      // The row came back from the UPDATE; on SQLite its transitions and actions are read in the
      // same transaction (no read transaction of its own per run's end). On Postgres the UPDATE
      // returned them (as they were before it) with the row: the end's transition is added here.
      const ended =
        row.transitions_json !== undefined && row.actions_json !== undefined
          ? runToProto(row, [...row.transitions_json.map(transitionToProto), change], row.actions_json.map(actionToProto))
          : await this.loadRunOf(trx, row);
      return { finished: row, ended };
    }, { keys: [runKey(runId)] }));
    this.samples.forgetRun(runId);
    if (this.d.o.metrics !== undefined) {
      const total = stats !== undefined && stats.totalTimeMs > 0 ? stats.totalTimeMs : finished.started_at === null ? null : at - finished.started_at;
      observeRunFinished(this.d.o.metrics, {
        policyKind: finished.policy_kind,
        state: input.state,
        totalTimeMs: total,
        downtimeMs: stats?.downtimeMs ?? null,
      });
    }
    return ended;
  }

  async recordNetworkBlackout(runId: string, blackout: NetworkBlackout): Promise<Run> {
    const b = NetworkBlackout.fromPartial(blackout);
    checkBlackout(b);
    await this.d.write(async (trx) => {
      const run = await trx.selectFrom('runs').select(['state', 'finished_at']).where('id', '=', runId).executeTakeFirst();
      if (run === undefined) throw new NotFoundError(`run ${runId} not found`);
      if (run.finished_at === null) {
        throw new FailedPreconditionError(`run ${runId} has not finished (${migrationStateToJSON(run.state)}): attach a blackout once the prober has stopped`, { reason: 'RUN_NOT_FINISHED' });
      }
      await trx
        .updateTable('runs')
        .set({ network_blackout_json: JSON.stringify(NetworkBlackout.toJSON(b)), network_blackout_ms: b.blackoutMs })
        .where('id', '=', runId)
        .execute();
    });
    return this.getRun(runId);
  }

  async recordRunCosts(runId: string, f: RunCostFigures): Promise<void> {
    const set = Object.fromEntries(Object.entries(costColumns(f)).filter(([, v]) => v !== null));
    await this.d.write(async (trx) => {
      const q = Object.keys(set).length > 0 ? trx.updateTable('runs').set(set).where('id', '=', runId) : undefined;
      const r = q ? await q.executeTakeFirst() : undefined;
      if (q ? Number(r?.numUpdatedRows ?? 0) === 0 : (await trx.selectFrom('runs').select('id').where('id', '=', runId).executeTakeFirst()) === undefined) throw new NotFoundError(`run ${runId} not found`);
    });
  }

  async vmCostHistory(vmName: string, limit: number): Promise<RunCostFigures[]> {
    if (!(limit > 0)) return [];
    const rows = await this.d.read((conn) =>
      conn
        .selectFrom('runs')
        .select(['cost_precopy_harm_rate', 'cost_precopy_ms', 'cost_postcopy_lost_ms', 'cost_postcopy_backlog_ms', 'cost_working_set_bytes', 'cost_raise_lost_ms', 'cost_raise_backlog_ms', 'cost_first_boundary_bytes'])
        .where('vm_name', '=', vmName)
        .where('state', '=', MigrationState.MIGRATION_STATE_SUCCEEDED)
        .where((eb) => eb.or([eb('cost_precopy_harm_rate', 'is not', null), eb('cost_postcopy_lost_ms', 'is not', null), eb('cost_working_set_bytes', 'is not', null), eb('cost_raise_lost_ms', 'is not', null), eb('cost_first_boundary_bytes', 'is not', null)]))
        .orderBy('finished_at', 'desc')
        .limit(Math.floor(limit))
        .execute(),
    );
    const n = (x: number | string | null): number | undefined => (x === null ? undefined : Number(x));
    return rows.map((r) => ({
      precopyHarmRate: n(r.cost_precopy_harm_rate),
      precopyMs: n(r.cost_precopy_ms),
      postcopyLostMs: n(r.cost_postcopy_lost_ms),
      postcopyBacklogMs: n(r.cost_postcopy_backlog_ms),
      workingSetBytes: n(r.cost_working_set_bytes),
      raiseLostMs: n(r.cost_raise_lost_ms),
      raiseBacklogMs: n(r.cost_raise_backlog_ms),
      firstBoundaryBytes: n(r.cost_first_boundary_bytes),
    }));
  }

  async listActiveRuns(): Promise<Run[]> {
    return this.d.read(async (conn) => {
      const rows = await conn
        .selectFrom('runs')
        .selectAll()
        .where('finished_at', 'is', null)
        .orderBy('priority', 'desc')
        .orderBy('created_at')
        .orderBy('id')
        .execute();
      return loadRuns(conn, rows);
    });
  }

  async listActiveMoves(): Promise<ActiveMove[]> {
    this.d.checkOpen();
    const rows = await this.d.db
      .selectFrom('runs')
      .select(['id', 'vm_name', 'source_node_id', 'destination_node_id', 'memory_mib'])
      .where('finished_at', 'is', null)
      .orderBy('priority', 'desc')
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map((r) => ({ runId: r.id, vmName: r.vm_name, sourceNodeId: r.source_node_id, destinationNodeId: r.destination_node_id, memoryMib: r.memory_mib }));
  }

  async listRunningPlanIds(): Promise<string[]> {
    this.d.checkOpen();
    const rows = await this.d.db.selectFrom('plans').select('id').where('state', '=', PlanState.PLAN_STATE_RUNNING).orderBy('created_at').orderBy('id').execute();
    return rows.map((r) => r.id);
  }

  async countRunsByState(): Promise<Map<MigrationState, number>> {
    this.d.checkOpen();
    const rows = await this.d.db
      .selectFrom('runs')
      .select((eb) => ['state', eb.fn.countAll<number>().as('n')])
      .groupBy('state')
      .execute();
    return new Map(rows.map((r) => [r.state as MigrationState, Number(r.n)]));
  }

  async findPlanByKey(idempotencyKey: string, scope = ''): Promise<Plan | undefined> {
    this.d.checkOpen();
    const row = await this.d.db.selectFrom('plans').selectAll().where('idempotency_key', '=', scopedIdempotencyKey(scope, idempotencyKey)).executeTakeFirst();
    return row === undefined ? undefined : planToProto(row);
  }
}

/**
 * Postgres: runs.setState and the transition's row in one statement. $1 to, $2 started_at, $3 run
 * id, $4 from, $5 at, $6 reason (typed: parameters only in a SELECT list would be taken as text).
 */
const PG_SET_STATE = `with u as (
  update runs set state = $1, started_at = coalesce(started_at, $2), last_sequence = last_sequence + 1
  where id = $3 and state = $4 and finished_at is null
  returning plan_id, vm_name, last_sequence
), t as (
  insert into run_transitions (run_id, at, from_state, to_state, reason) select $3, $5::bigint, $4, $1, $6::text from u
)
select plan_id, vm_name, last_sequence from u`;

/**
 * Postgres: runs.finish, the end's transition row and the reads of the run's transitions and
 * actions in one statement. $1–$14 as runs.finish (state, finished_at, stats…, sequence step, run
 * id, from), $15–$22 the cost columns, $23 the transition's reason.
 */
/** The runs columns of RunCostFigures, in the order of runs.finish's arguments. */
const COST_COLUMNS = [
  'cost_precopy_harm_rate',
  'cost_precopy_ms',
  'cost_postcopy_lost_ms',
  'cost_postcopy_backlog_ms',
  'cost_working_set_bytes',
  'cost_first_boundary_bytes',
  'cost_raise_lost_ms',
  'cost_raise_backlog_ms',
] as const;

/** Each cost column's value: null for a figure not given or not finite (the raise's two only together). */
function costColumns(f: RunCostFigures): Record<(typeof COST_COLUMNS)[number], number | null> {
  const num = (x: number | undefined): number | null => (x !== undefined && Number.isFinite(x) ? x : null);
  const raise = num(f.raiseLostMs) !== null && num(f.raiseBacklogMs) !== null;
  return {
    cost_precopy_harm_rate: num(f.precopyHarmRate),
    cost_precopy_ms: num(f.precopyMs),
    cost_postcopy_lost_ms: num(f.postcopyLostMs),
    cost_postcopy_backlog_ms: num(f.postcopyBacklogMs),
    cost_working_set_bytes: num(f.workingSetBytes),
    cost_first_boundary_bytes: num(f.firstBoundaryBytes),
    cost_raise_lost_ms: raise ? num(f.raiseLostMs) : null,
    cost_raise_backlog_ms: raise ? num(f.raiseBacklogMs) : null,
  };
}

const PG_FINISH = `with u as (
  update runs set state = $1, finished_at = $2, stats_json = $3, total_time_ms = $4, downtime_ms = $5,
    transferred_bytes = $6, host_cpu_seconds = $7, integrity_errors = $8, error_reason = $9,
    error_message = $10, error_code = $11, last_sequence = last_sequence + $12,
    ${COST_COLUMNS.map((c, k) => `${c} = coalesce($${15 + k}, ${c})`).join(', ')}
  where id = $13 and state = $14 and finished_at is null
  returning *
), t as (
  insert into run_transitions (run_id, at, from_state, to_state, reason) select $13, $2, $14, $1, $${15 + COST_COLUMNS.length}::text from u
)
select u.*,
  (select coalesce(json_agg(r order by r.id), '[]'::json) from run_transitions r where r.run_id = $13) as transitions_json,
  (select coalesce(json_agg(a order by a.id), '[]'::json) from policy_actions a where a.run_id = $13) as actions_json
from u`;

/**
 * What PG_FINISH returns: the run's row and its transitions and actions before this statement (its
 * own transition row is not visible to it: one snapshot for the whole statement).
 */
type FinishedRow = RunRow & { transitions_json?: TransitionRow[]; actions_json?: ActionRow[] };

/** Attaches transitions and actions to run rows (two queries for the whole list). */
/**
 * A measured blackout must make sense before it is stored.
 * @throws InvalidArgumentError naming the field
 */
export function checkBlackout(b: NetworkBlackout): void {
  if (b.probesLost > b.probesSent) throw new InvalidArgumentError(`blackout.probes_lost (${b.probesLost}) exceeds blackout.probes_sent (${b.probesSent})`);
  if (b.probesSent === 0) throw new InvalidArgumentError('blackout.probes_sent is 0: nothing was measured');
  if (b.gapStartedAt !== undefined && b.gapEndedAt !== undefined && b.gapEndedAt.getTime() < b.gapStartedAt.getTime()) {
    throw new InvalidArgumentError('blackout.gap_ended_at is before blackout.gap_started_at');
  }
  if (b.gapStartedAt !== undefined && b.gapEndedAt !== undefined && Math.abs(b.gapEndedAt.getTime() - b.gapStartedAt.getTime() - b.blackoutMs) > 1) {
    throw new InvalidArgumentError(`blackout.blackout_ms (${b.blackoutMs}) is not the time between gap_started_at and gap_ended_at (${b.gapEndedAt.getTime() - b.gapStartedAt.getTime()} ms)`);
  }
  if (b.measuredBy.length > 200) throw new InvalidArgumentError('blackout.measured_by is longer than 200 characters');
}

export async function loadRuns(conn: Db, rows: RunRow[]): Promise<Run[]> {
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
