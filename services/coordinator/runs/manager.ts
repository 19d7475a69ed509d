/**
 * The coordinator's runs: the domain MigrationQueue (concurrency limits), a dispatcher that starts
 * queued runs as soon as the limits allow, one RunSupervisor per running run, plan states, user
 * requests on runs (cancel, force-complete, adjust), and restart recovery from the store.
 *
 * Slots: a run holds its source, destination and cluster slots from dispatch until its end is
 * recorded in the store, so the recorded start and finish times are exactly the intervals those
 * limits apply to. Its link slot it holds only while it streams: from dispatch until its source
 * reports QEMU's completion (the recorded VERIFYING transition), when the next run on the link is
 * dispatched while this one hands its VM over and verifies it.
 *
 * Held starts (issue 15 §4): a queued run that fits every limit but its link's stream slot is
 * dispatched held (at most `heldPerLink` per link): its supervisor announces it and has the source
 * prepare both ends with StartMigration.hold_ms, and releases it (ReleaseMigration) when the
 * queue promotes it onto its link, so only QEMU's `migrate` is left on the link's critical path.
 * It holds its host and cluster slots from dispatch. A held run that is cancelled, or never
 * released within `holdMs`, ends on its source node with the destination's copy removed.
 */
import { CancelledError, FailedPreconditionError, InvalidArgumentError, MigdError } from '../../shared/errors.js';
import { retry } from '../../shared/retry.js';
import { MigrationState, PolicyActionKind } from '../../shared/gen/migd/v1/common.js';
import { PlanState, type Run } from '../../shared/gen/migd/v1/coordinator.js';
import type { Logger } from '../../shared/log.js';
import { turns } from '../../shared/metrics/turns.js';
import { type ConcurrencyLimits, MigrationQueue, type QueueItem } from '../domain/scheduler.js';
import type { NodeRegistry } from '../registry.js';
import { RunSupervisor, type RunStore } from './supervisor.js';
import { errorInfo } from '../../shared/policy/error-info.js';
import { QEMU_MAX_DOWNTIME_MS, isValidDowntimeLimit } from '../../shared/policy/limits.js';
import type { ConvergencePolicy } from '../domain/policy/types.js';
import type { ActiveMove } from '../store/types.js';
import type { PlannedMove } from '../domain/cluster.js';
import { MiB } from '../domain/units.js';

export interface RunManagerOptions {
  /** Plans and runs; what its supervisors need besides (samples, timelines). */
  /** The repositories it (and its supervisors) use. */
  readonly store: RunStore;
  readonly registry: NodeRegistry;
  readonly log: Logger;
  readonly limits: ConcurrencyLimits;
  /** Deadline of node calls (ms). */
  readonly callDeadlineMs: number;
  /** Policy clock tick of the supervisors (ms). Default 1000. */
  readonly tickMs?: number;
  /**
   * How long a queued run whose source or destination node is down waits for it (without taking
   * a slot) before it fails with NODE_DOWN (ms). Default 120 000.
   */
  readonly nodeDownWaitMs?: number;
  /** How long a failed run's end waits for its destination's clean-up (ms; see SupervisorDeps.cleanupWaitMs). */
  readonly cleanupWaitMs?: number;
  /** Runs that may be dispatched held per link (see the module comment). Default 1; 0: none. */
  readonly heldPerLink?: number;
  /** How long a held run's source waits for its release before it fails (ms). Default 600 000. */
  readonly holdMs?: number;
  readonly now?: () => number;
}

export class RunManager {
  readonly queue: MigrationQueue<QueueItem>;
  private readonly supervisors = new Map<string, RunSupervisor>();
  /**
   * The runs whose end is not recorded yet (queued, dispatched, running), by id, as they were
   * when queued or recovered: what the store's unfinished runs are, kept here so that SubmitPlan's
   * cluster model and dispatch need not read them back (issue 15 §4: SubmitPlan read every active
   * run from the store, O(runs) per plan; dispatch read each run with its transitions and actions).
   * A queued run's stored row changes only when it ends (its supervisor, which exists from dispatch
   * on, makes every other change), so the copy taken here is what dispatch would read.
   */
  private readonly active = new Map<string, Run>();
  /** VM name → the runs of `active` that move it (one, unless the store holds two unfinished runs of a VM). */
  private readonly activeByVm = new Map<string, Run[]>();
  /** The move of each run of `active` as planning models it, in the same order (see plannedMoves). */
  private readonly moveOf = new Map<string, PlannedMove>();
  /** Policies the planner resolved for queued runs, until their supervisors take them. */
  private readonly resolved = new Map<string, ConvergencePolicy>();
  private readonly running = new Set<Promise<unknown>>();
  /**
   * Runs supervised outside the queue (recovered while over a since-lowered limit), by id → link:
   * nothing else is dispatched on their links until they end.
   */
  private readonly unslotted = new Map<string, string>();
  /** Held runs (dispatched held or recovered held): resolved when the queue promotes them onto their link. */
  private readonly linkWaits = new Map<string, { readonly promise: Promise<void>; readonly resolve: () => void }>();
  private planChain: Promise<void> = Promise.resolve();
  /** Plan updates queued on planChain that have not started yet, by plan. */
  private readonly queuedPlanUpdates = new Map<string, Promise<void>>();
  private stopped = false;
  /** Aborted by close() (a step-down or shutdown): every retry of this manager ends with it. */
  private readonly stopper = new AbortController();
  /** Queued runs held back because a node of theirs is down: since when. */
  private readonly waitingForNode = new Map<string, number>();
  private waitTimer: NodeJS.Timeout | undefined;
  private dispatchImmediate: NodeJS.Immediate | undefined;
  private readonly now: () => number;

  constructor(private readonly o: RunManagerOptions) {
    this.queue = new MigrationQueue(o.limits, { heldPerLink: o.heldPerLink ?? 1 });
    this.now = o.now ?? Date.now;
  }

  /**
   * Queues new runs (state QUEUED), each at its `order` in its plan, then dispatches what fits
   * once. `policy` is the run's policy as the planner resolved it, handed to its supervisor (a run
   * recovered after a restart has its stored effective policy resolved again instead).
   */
  enqueue(runs: readonly { run: Run; order: number; policy?: ConvergencePolicy }[]): void {
    for (const { run, order, policy } of runs) {
      if (policy) this.resolved.set(run.id, policy);
      this.hold(run);
      this.queue.enqueue({ id: run.id, source: run.sourceNodeId, destination: run.destinationNodeId, priority: run.priority, order });
    }
    this.dispatch();
  }

  /**
   * Restart recovery: queued runs go back into the queue; runs that had left it take their slots
   * again and their supervisors re-attach to the source nodes (GetMigration first).
   */
  async recover(): Promise<void> {
    const active = await this.o.store.plans.listActiveRuns();
    const orders = new Map<string, number>();
    for (const planId of new Set(active.map((r) => r.planId).filter(Boolean))) {
      const plan = await this.o.store.plans.getPlan(planId).catch(() => undefined);
      for (const m of plan?.migrations ?? []) orders.set(m.runId, m.order);
    }
    let resumed = 0;
    // Runs past PREPARING take their slots first; then the PREPARING ones in the order they were
    // dispatched, so a run that was held behind another on its link (dispatched after it) is held
    // again rather than taking the link from it.
    const preparing = (r: Run): boolean => r.state === MigrationState.MIGRATION_STATE_PREPARING;
    const ordered = [...active.filter((r) => !preparing(r)), ...active.filter(preparing).sort((a, b) => (a.startedAt?.getTime() ?? 0) - (b.startedAt?.getTime() ?? 0))];
    for (const run of ordered) {
      this.hold(run);
      const item = { id: run.id, source: run.sourceNodeId, destination: run.destinationNodeId, priority: run.priority, order: orders.get(run.id) ?? 0 };
      if (run.state === MigrationState.MIGRATION_STATE_QUEUED) {
        this.queue.enqueue(item);
        continue;
      }
      // A PREPARING run may be held on its source node (it cannot say): it is released once it
      // holds its link — at once when it takes the link now (a release of a run not held changes nothing).
      let linkFree: Promise<void> | undefined = preparing(run) ? Promise.resolve() : undefined;
      try {
        this.queue.enqueue(item);
        try {
          this.queue.started(run.id);
        } catch (err) {
          if (!preparing(run) || this.queue.heldPerLink === 0) throw err;
          this.queue.started(run.id, true);
          linkFree = this.waitForLink(run.id);
        }
        // Its stream was done before the restart: its link is free (see leftLink).
        if (run.state === MigrationState.MIGRATION_STATE_VERIFYING) this.queue.leftLink(run.id);
      } catch (err) {
        this.queue.cancel(run.id);
        this.unslotted.set(run.id, `${run.sourceNodeId}->${run.destinationNodeId}`);
        this.o.log.warn('recovered run exceeds the configured limits; supervising it outside the queue', { runId: run.id, err: (err as Error).message });
      }
      this.supervise(run, 'resume', linkFree);
      resumed++;
    }
    // A plan whose last run ended just before the coordinator stopped is still RUNNING in the
    // store, with nothing left to end it: settle it now.
    const live = new Set(active.map((r) => r.planId));
    let settled = 0;
    for (const planId of await this.o.store.plans.listRunningPlanIds()) {
      if (live.has(planId)) continue;
      await this.updatePlan(planId);
      settled++;
    }
    this.o.log.info('runs recovered', { queued: active.length - resumed, running: resumed, plansSettled: settled });
    this.dispatch();
  }

  /**
   * Dispatches once the current I/O callbacks are done (setImmediate): the runs that end together
   * (a drain's hundreds a second) share one pass over the queue instead of one pass each — a pass
   * reads the queue up to the first run whose nodes have a free slot, thousands of entries deep in
   * a large drain (10 000 passes over a 10 000-run queue were the dispatcher's quadratic cost).
   */
  private dispatchSoon(): void {
    if (this.dispatchImmediate !== undefined || this.stopped) return;
    this.dispatchImmediate = setImmediate(() => {
      this.dispatchImmediate = undefined;
      this.dispatch();
    });
  }

  /** Starts every queued run the limits allow now. */
  dispatch(): void {
    if (this.dispatchImmediate !== undefined) {
      clearImmediate(this.dispatchImmediate);
      this.dispatchImmediate = undefined;
    }
    if (this.stopped) return;
    const t0 = turns.enabled ? turns.now() : 0;
    let started = 0;
    const busyLinks = new Set(this.unslotted.values());
    const now = this.now();
    // A node that is down may be back soon (a daemon restart, a network blip): the run keeps its
    // place, holds no slot, and fails only after nodeDownWaitMs.
    const expired: { id: string; down: string[]; waitedMs: number }[] = [];
    const hold = (item: QueueItem): boolean => {
      const down = [item.source, item.destination].filter((n) => !this.o.registry.isUp(n));
      if (down.length === 0) {
        this.waitingForNode.delete(item.id);
        return false;
      }
      const since = this.waitingForNode.get(item.id) ?? now;
      this.waitingForNode.set(item.id, since);
      if (now - since >= (this.o.nodeDownWaitMs ?? 120_000)) expired.push({ id: item.id, down, waitedMs: now - since });
      return true;
    };
    // Held runs go onto their links first: they are prepared and only wait for the link.
    for (const item of this.queue.promote((i) => busyLinks.has(`${i.source}->${i.destination}`))) {
      this.linkWaits.get(item.id)?.resolve();
      this.linkWaits.delete(item.id);
    }
    for (const { item, held } of this.queue.nextDispatch(hold)) {
      if (busyLinks.has(`${item.source}->${item.destination}`)) continue;
      try {
        this.queue.started(item.id, held);
      } catch {
        continue; // cancelled meanwhile
      }
      const linkFree = held ? this.waitForLink(item.id) : undefined;
      const queued = this.active.get(item.id);
      const p = (queued ? Promise.resolve(queued) : this.o.store.plans.getRun(item.id)).then(
        (run) => this.supervise(run, 'start', linkFree),
        (err: unknown) => {
          this.o.log.error('dispatched run vanished from the store', { runId: item.id, err });
          this.release(item.id);
        },
      );
      this.track(p);
      started++;
    }
    turns.record('runs.dispatch', t0, started);
    for (const e of expired) this.track(this.failWaiting(e.id, e.down, e.waitedMs));
    for (const id of this.waitingForNode.keys()) if (this.queue.status(id) !== 'queued') this.waitingForNode.delete(id);
    if (this.waitingForNode.size > 0 && !this.waitTimer) {
      this.waitTimer = setInterval(() => this.dispatch(), 1000);
      this.waitTimer.unref();
    } else if (this.waitingForNode.size === 0 && this.waitTimer) {
      clearInterval(this.waitTimer);
      this.waitTimer = undefined;
    }
  }

  /** Fails a queued run whose node stayed down too long. */
  private async failWaiting(runId: string, down: readonly string[], waitedMs: number): Promise<void> {
    if (this.queue.status(runId) !== 'queued') return;
    this.queue.cancel(runId);
    this.resolved.delete(runId);
    this.waitingForNode.delete(runId);
    const message = `node ${down.join(' and ')} ${down.length > 1 ? 'were' : 'was'} down for ${Math.round(waitedMs / 1000)} s while the run waited to start`;
    this.o.log.warn('queued run failed: node down', { runId, nodes: down, waitedMs });
    try {
      const ended = await this.o.store.plans.finishRun(runId, { state: MigrationState.MIGRATION_STATE_FAILED, reason: message, error: errorInfo('UNAVAILABLE', 'NODE_DOWN', message) });
      this.unhold(runId);
      if (ended.planId) await this.updatePlan(ended.planId);
    } catch (err) {
      this.o.log.error('failing a queued run failed', { runId, err });
    }
    this.dispatch();
  }

  /** A held run: the promise resolves when the queue promotes it onto its link (see dispatch). */
  private waitForLink(runId: string): Promise<void> {
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    this.linkWaits.set(runId, { promise, resolve });
    return promise;
  }

  private track(p: Promise<unknown>): void {
    this.running.add(p);
    void p.finally(() => this.running.delete(p));
  }

  /** @param linkFree for a run that may be held on its source: resolves when it may stream (see SupervisorDeps.linkFree) */
  private supervise(run: Run, mode: 'start' | 'resume', linkFree?: Promise<void>): void {
    let sup: RunSupervisor;
    const policy = this.resolved.get(run.id);
    this.resolved.delete(run.id);
    try {
      sup = new RunSupervisor(run, {
        store: this.o.store,
        log: this.o.log,
        client: (id) => this.o.registry.client(id),
        endpoint: (id) => this.o.registry.endpoint(id),
        isUp: (id) => this.o.registry.isUp(id),
        callDeadlineMs: this.o.callDeadlineMs,
        ...(this.o.tickMs ? { tickMs: this.o.tickMs } : {}),
        ...(this.o.cleanupWaitMs !== undefined ? { cleanupWaitMs: this.o.cleanupWaitMs } : {}),
        onStreamDone: () => this.streamDone(run.id),
        ...(linkFree ? { linkFree } : {}),
        ...(this.o.holdMs !== undefined ? { holdMs: this.o.holdMs } : {}),
        now: this.now,
      }, policy);
    } catch (err) {
      this.o.log.error('cannot supervise run', { runId: run.id, err });
      this.track(
        this.o.store
          .plans.finishRun(run.id, { state: MigrationState.MIGRATION_STATE_FAILED, reason: 'cannot supervise', error: errorInfo('INVALID_ARGUMENT', 'INVALID_POLICY', (err as Error).message) })
          .catch(() => undefined)
          .then(() => this.ended(run)),
      );
      return;
    }
    this.supervisors.set(run.id, sup);
    this.track(
      sup
        .supervise(mode)
        .then(async (finished) => {
          this.supervisors.delete(run.id);
          if (finished) await this.ended(finished);
          else if (!this.stopped) this.superviseAgain(run.id);
        })
        .catch((err: unknown) => this.o.log.error('run bookkeeping failed', { runId: run.id, err })),
    );
  }

  /**
   * A supervisor gave up without recording the run's end (the store kept failing past its retry
   * bound): the run keeps its slot and is picked up again, as after a restart, until it ends.
   */
  private superviseAgain(runId: string): void {
    this.o.log.warn('run supervisor stopped before the run ended; resuming it', { runId });
    const t = setTimeout(() => {
      if (this.stopped) return;
      this.track(
        this.o.store.plans.getRun(runId).then(
          (run) =>
            run.finishedAt
              ? this.ended(run)
              : this.supervise(run, 'resume', this.linkWaits.get(runId)?.promise ?? (run.state === MigrationState.MIGRATION_STATE_PREPARING ? Promise.resolve() : undefined)),
          (err: unknown) => {
            this.o.log.error('could not read a run to resume it; trying again', { runId, err });
            this.superviseAgain(runId);
          },
        ),
      );
    }, 5000);
    t.unref();
  }

  /**
   * A run's source QEMU completed: its link slot goes to the next queued run on the link at once
   * (the run keeps its host and cluster slots until its end is recorded).
   */
  private streamDone(runId: string): void {
    if (this.stopped) return;
    // A run supervised outside the queue (recovered over a lowered limit) frees its link too.
    if (this.unslotted.has(runId)) {
      this.unslotted.set(runId, '');
    } else if (this.queue.status(runId) !== 'running' || !this.queue.leftLink(runId)) return;
    this.dispatchSoon();
  }

  /** A run has ended in the store: free its slot, move its VM, update its plan, dispatch more. */
  private async ended(run: Run): Promise<void> {
    this.release(run.id);
    // The freed slot goes to the next queued run at once: the VM's new home and the plan's state
    // are bookkeeping that no dispatch decision waits for (each run's slot is its own).
    this.dispatchSoon();
    const moved = run.state === MigrationState.MIGRATION_STATE_SUCCEEDED;
    await this.o.registry.vmSettled(run.vmName, moved ? run.destinationNodeId : run.sourceNodeId, moved).catch((err: unknown) => this.o.log.warn('recording where the VM runs failed', { err }));
    if (run.planId) await this.updatePlan(run.planId);
  }

  private release(runId: string): void {
    this.unhold(runId);
    this.linkWaits.delete(runId);
    if (this.unslotted.delete(runId)) return;
    if (this.queue.status(runId) === 'running') this.queue.finished(runId);
    else if (this.queue.status(runId) === 'queued') this.queue.cancel(runId);
    this.resolved.delete(runId);
  }

  /**
   * Sets a plan's state once all its runs have ended (serialised: one event per change). Calls for
   * a plan whose update is queued and not started yet join that update: it reads the runs when it
   * starts, so it sees what each of them was called for (a drain's runs end by the hundred).
   */
  updatePlan(planId: string): Promise<void> {
    const queued = this.queuedPlanUpdates.get(planId);
    if (queued) return queued;
    const once = async (): Promise<void> => {
      const p = await this.o.store.plans.planProgress(planId);
      let state = PlanState.PLAN_STATE_RUNNING;
      if (p.finished === p.runs) state = p.succeeded === p.runs ? PlanState.PLAN_STATE_SUCCEEDED : PlanState.PLAN_STATE_FAILED;
      if (state !== p.state) await this.o.store.plans.setPlanState(planId, state);
    };
    // A store that cannot write (disk full) is retried: a plan left RUNNING would never end.
    const next = this.planChain.then(() => {
      this.queuedPlanUpdates.delete(planId);
      return retry(once, {
        deadlineMs: 600_000,
        initialMs: 500,
        signal: this.stopper.signal,
        retryable: (err) => !(err instanceof MigdError) || err.code === 'INTERNAL' || err.code === 'UNAVAILABLE',
        onRetry: (err, attempt) => this.o.log.warn('the store failed to update the plan state; retrying', { planId, attempt, err: (err as Error).message }),
      });
    });
    this.planChain = next.catch((err: unknown) => {
      if (this.stopper.signal.aborted) this.o.log.info('plan state left to the next leader', { planId });
      else this.o.log.warn('updating the plan state failed', { planId, err });
    });
    const done = this.planChain;
    this.queuedPlanUpdates.set(planId, done);
    return done;
  }

  private async activeRun(runId: string): Promise<Run> {
    if (!runId) throw new InvalidArgumentError('run_id is required');
    const run = await this.o.store.plans.getRun(runId);
    if (run.finishedAt) throw new FailedPreconditionError(`run ${runId} has already finished (${MigrationState[run.state]})`, { reason: 'RUN_FINISHED' });
    return run;
  }

  private supervisorOf(run: Run, what: string): RunSupervisor {
    const sup = this.supervisors.get(run.id);
    if (sup) return sup;
    if (this.queue.status(run.id) === 'queued') {
      throw new FailedPreconditionError(`cannot ${what} run ${run.id}: it is queued (waiting for a concurrency slot), not migrating yet`, { reason: 'RUN_QUEUED' });
    }
    throw new FailedPreconditionError(`cannot ${what} run ${run.id} right now: it is being dispatched or recovered; retry`, { reason: 'RUN_NOT_SUPERVISED' });
  }

  /**
   * Cancels a run: a queued one leaves the queue without touching any node; a running one is
   * cancelled on its source node (the run ends CANCELLED when the node reports it).
   * @throws InvalidArgumentError, NotFoundError, FailedPreconditionError (finished; in post-copy)
   */
  async cancel(runId: string, actor: string, reason: string, signal?: AbortSignal): Promise<Run> {
    const run = await this.activeRun(runId);
    const why = reason || 'cancel requested';
    if (this.queue.status(run.id) === 'queued') {
      this.queue.cancel(run.id);
      this.resolved.delete(run.id);
      await this.o.store.plans.recordAction(run.id, { time: new Date(this.now()), elapsedMs: 0, kind: PolicyActionKind.POLICY_ACTION_KIND_ABORT, value: 0, reason: why, actor });
      const ended = await this.o.store.plans.finishRun(run.id, { state: MigrationState.MIGRATION_STATE_CANCELLED, reason: `cancelled while queued: ${why}` });
      this.unhold(run.id);
      if (ended.planId) await this.updatePlan(ended.planId);
      this.dispatch();
      return ended;
    }
    await this.supervisorOf(run, 'cancel').cancel(actor, why, signal);
    return this.o.store.plans.getRun(run.id);
  }

  /** @throws InvalidArgumentError, NotFoundError, FailedPreconditionError (queued, finished) */
  async forceComplete(runId: string, actor: string, reason: string, signal?: AbortSignal): Promise<Run> {
    const run = await this.activeRun(runId);
    await this.supervisorOf(run, 'force-complete').forceComplete(actor, reason || 'force-complete requested', signal);
    return this.o.store.plans.getRun(run.id);
  }

  /**
   * Changes a running migration's limits.
   * @throws InvalidArgumentError (nothing to change, out of range), NotFoundError, FailedPreconditionError
   */
  async adjust(req: { runId: string; downtimeLimitMs?: number | undefined; maxBandwidthBytesPerSec?: number | undefined; reason: string }, actor: string, signal?: AbortSignal): Promise<Run> {
    if (req.downtimeLimitMs === undefined && req.maxBandwidthBytesPerSec === undefined) {
      throw new InvalidArgumentError('set downtime_limit_ms and/or max_bandwidth_bytes_per_sec');
    }
    if (req.downtimeLimitMs !== undefined && !isValidDowntimeLimit(req.downtimeLimitMs)) {
      throw new InvalidArgumentError(`downtime_limit_ms must be 1..${QEMU_MAX_DOWNTIME_MS}, got ${req.downtimeLimitMs}`);
    }
    const run = await this.activeRun(req.runId);
    const change = {
      ...(req.downtimeLimitMs !== undefined ? { downtimeLimitMs: req.downtimeLimitMs } : {}),
      ...(req.maxBandwidthBytesPerSec !== undefined ? { maxBandwidthBytesPerSec: req.maxBandwidthBytesPerSec } : {}),
    };
    await this.supervisorOf(run, 'adjust').adjust(change, actor, req.reason || 'adjusted', signal);
    return this.o.store.plans.getRun(run.id);
  }

  /**
   * The moves of {@link activeMoves} as planning models them, in the same order: each built once
   * per run (SubmitPlan models every queued and running run: thousands during a large drain).
   */
  plannedMoves(): PlannedMove[] {
    return [...this.moveOf.values()];
  }

  /**
   * Where the runs whose end is not recorded yet move their VMs: what the store's listActiveMoves
   * returns (in the order the runs were queued or recovered, not by priority), without reading it.
   */
  activeMoves(): ActiveMove[] {
    const out: ActiveMove[] = [];
    for (const r of this.active.values()) out.push({ runId: r.id, vmName: r.vmName, sourceNodeId: r.sourceNodeId, destinationNodeId: r.destinationNodeId, memoryMib: r.memoryMib });
    return out;
  }

  /**
   * Whether a run whose end is not recorded yet moves VM `vmName` to node `nodeId`: the node
   * registry's check of a heartbeat that reports a VM the store still places elsewhere. From
   * memory, like activeMoves(): a run is held from its enqueue (after its row is committed, before
   * it can be dispatched) or recovery until its end is recorded, so this covers the store's
   * unfinished runs.
   */
  isMovingTo(vmName: string, nodeId: string): boolean {
    return this.activeByVm.get(vmName)?.some((r) => r.destinationNodeId === nodeId) ?? false;
  }

  /** The id of a run whose end is not recorded yet and that moves VM `vmName`, if any. */
  activeRunOf(vmName: string): string | undefined {
    return this.activeByVm.get(vmName)?.[0]?.id;
  }

  /** Holds a queued or recovered run in `active` (and its VM's index entry). */
  private hold(run: Run): void {
    this.unhold(run.id);
    this.active.set(run.id, run);
    this.moveOf.set(run.id, { vmName: run.vmName, from: run.sourceNodeId, to: run.destinationNodeId, memoryBytes: run.memoryMib * MiB });
    const of = this.activeByVm.get(run.vmName);
    if (of === undefined) this.activeByVm.set(run.vmName, [run]);
    else of.push(run);
  }

  /** Forgets a run of `active` (its end is recorded). */
  private unhold(runId: string): void {
    const run = this.active.get(runId);
    if (run === undefined) return;
    this.active.delete(runId);
    this.moveOf.delete(runId);
    const rest = (this.activeByVm.get(run.vmName) ?? []).filter((r) => r.id !== runId);
    if (rest.length > 0) this.activeByVm.set(run.vmName, rest);
    else this.activeByVm.delete(run.vmName);
  }

  /** Queued and running counts (metrics). */
  depth(): number {
    return this.queue.snapshot().queued;
  }

  /** Stops dispatching and detaches every supervisor; migrations keep running on their nodes. */
  async close(): Promise<void> {
    this.stopped = true;
    this.stopper.abort(new CancelledError('run manager closed'));
    if (this.waitTimer) clearInterval(this.waitTimer);
    this.waitTimer = undefined;
    if (this.dispatchImmediate) clearImmediate(this.dispatchImmediate);
    this.dispatchImmediate = undefined;
    for (const s of this.supervisors.values()) s.detach();
    await Promise.allSettled([...this.running]);
    await this.planChain;
  }
}

