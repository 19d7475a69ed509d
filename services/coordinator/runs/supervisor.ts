/**
 * The run supervisor: carries out one run on its source node and follows it to the end.
 *
 * - start: ExpectIncoming on the destination node (only the run's source may then prepare the
 *   incoming side), StartMigration on the source node (run id = the run's id, so a retry never
 *   starts a second migration), then WatchMigration;
 * - resume (after a coordinator restart): GetMigration first — a finished migration is recorded
 *   as it ended, a running one is followed again, one the node never heard of is started only if
 *   the run had not got past PREPARING;
 * - every update is recorded: state changes, progress samples (and host CPU samples from their
 *   cpu fields), guest samples, actions (from the node, which records every action taken on the
 *   migration, whoever asked: that list is the one truth, reconciled again from the final result);
 * - each progress sample is fed to the run's ConvergencePolicy, and its decisions become node
 *   calls with actor `policy:<name>`; a clock tick keeps timeouts running when samples stop;
 * - the final result ends the run in the store (stats, error).
 *
 * The policy's state is not stored: after a restart it is rebuilt by replaying the run's recorded
 * progress samples through the policy, which is deterministic (domain/policy/types.ts).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { CancelledError, FailedPreconditionError, MigdError, NotFoundError, NotLeaderError, UnavailableError, isAbortError } from '../../shared/errors.js';
import {
  MigrationState,
  PolicyActionKind,
  ProgressSample,
  migrationStateToJSON,
  type ErrorInfo,
  type GuestPerfSample,
  type PolicyAction,
} from '../../shared/gen/migd/v1/common.js';
import type { Run } from '../../shared/gen/migd/v1/coordinator.js';
import type { MigrationInfo, WatchMigrationResponse } from '../../shared/gen/migd/v1/node.js';
import type { Logger } from '../../shared/log.js';
import { policyFor } from '../domain/policy/factory.js';
import { type GuestCostTrack, type RunCostFigures, replayCostTrack, replayTimeline, trackAction, trackGuestSample, trackProgressSample, trackTransition, trackedCostFigures } from '../domain/policy/measured.js';
import { type ConvergencePolicy, type PolicyDecision, isTerminalAction } from '../domain/policy/types.js';
import type { NodeClient } from '../registry.js';
import type { AnalyticsRepository, PlanRunRepository, SampleRepository } from '../store/types.js';

/** The repositories a run's supervision uses: its run, its samples, its recorded progress. */
export interface RunStore {
  readonly plans: PlanRunRepository;
  readonly samples: SampleRepository;
  readonly analytics: Pick<AnalyticsRepository, 'getRunTimeline' | 'guestSamplesBeforeRun'>;
}
import { isTerminalState } from '../../shared/policy/states.js';
import { errorInfo, errorInfoOf } from '../../shared/policy/error-info.js';
import { isTransient, retry } from '../../shared/retry.js';
import { turns } from '../../shared/metrics/turns.js';

const MiB = 1024 * 1024;
/** Earlier runs of a VM the adaptive policy's prior is taken from (domain/policy/measured.ts). */
const PRIOR_RUNS = 20;

/** What a supervisor needs from the rest of the coordinator. */
export interface SupervisorDeps {
  readonly store: RunStore;
  readonly log: Logger;
  /** A client of a node daemon. @throws NotFoundError for an unknown node */
  readonly client: (nodeId: string) => NodeClient;
  /** How the source reaches the destination. @throws NotFoundError */
  readonly endpoint: (nodeId: string) => { nodeId: string; managementAddress: string; migrationAddress: string };
  /** Whether a node is heart-beating. */
  readonly isUp: (nodeId: string) => boolean;
  /** Deadline of node calls (ms); StartMigration gets 6×. */
  readonly callDeadlineMs: number;
  /** Policy clock tick (ms). Default 1000. */
  readonly tickMs?: number;
  /**
   * A failed or cancelled run's end is recorded once its destination has no incoming copy left
   * (AbortIncoming, idempotent), or after this long (ms); the abort is then retried in the
   * background for `cleanupRetryMs`. Default 20 000.
   */
  readonly cleanupWaitMs?: number;
  /** Background bound of the destination clean-up (ms). Default 600 000. */
  readonly cleanupRetryMs?: number;
  /**
   * A store write that fails for a reason other than the request itself (a full disk, a busy
   * database) is retried this long (ms) before the supervisor gives up. Default 600 000.
   */
  readonly storeRetryMs?: number;
  /**
   * Called once, as soon as the source reports that its QEMU completed (VERIFYING: memory and
   * device state are all sent), before the state is recorded: the run's link may carry the next
   * stream while this one hands over and verifies (the manager releases the link slot).
   */
  readonly onStreamDone?: () => void;
  /**
   * The run may have to wait for its link (issue 15 §4): StartMigration asks the source to hold
   * the prepared migration (hold_ms), and ReleaseMigration lets it stream once this resolves (the
   * manager promoted it onto its link). A resumed run in PREPARING gets it too: its source may
   * hold it. Absent: the stream starts at once.
   */
  readonly linkFree?: Promise<void>;
  /** StartMigrationRequest.hold_ms of a held start (ms). Default 600 000. */
  readonly holdMs?: number;
  readonly now?: () => number;
}

/** Back-off of re-attaching to the source node (its daemon restarting, a broken watch). */
const FOLLOW_BACKOFF = { initialMs: 250, maxMs: 5000 } as const;

/** A store error that says nothing about the request (disk full, I/O, busy): worth retrying. */
function isStoreTransient(err: unknown): boolean {
  if (!(err instanceof MigdError)) return true;
  return isTransient(err) || err.code === 'INTERNAL' || err.code === 'RESOURCE_EXHAUSTED';
}

/** How a run ended, for the caller (queue slot, plan state, VM location). */
export interface RunOutcome {
  readonly run: Run;
}

/** The identity of a recorded action, to recognise it when the node reports it again. */
function actionKey(a: PolicyAction): string {
  return `${a.time?.getTime() ?? 0}|${a.kind}|${a.value}|${a.actor}`;
}

export class RunSupervisor {
  readonly runId: string;
  private state: MigrationState;
  private readonly policy: ConvergencePolicy;
  private policyState: unknown;
  /**
   * The guest's cost over this run, whatever its policy (domain/policy/measured.ts): fed the same
   * guest samples, progress, transitions and actions as the policy, and stored at a succeeded
   * run's end so that the VM's next adaptive runs learn from every earlier migration of it.
   */
  private costTrack: GuestCostTrack = {};
  private readonly recorded = new Set<string>();
  private readonly stopper = new AbortController();
  private chain: Promise<void> = Promise.resolve();
  private lastSample: ProgressSample | undefined;
  private lastSampleAt = 0;
  private startedOnNode = false;
  private streamDone = false;
  /** Waiting for linkFree before releasing the source's held migration. */
  private holding = false;
  private releaseStarted = false;
  /** StartMigration went out (or the run was past QUEUED at a restart): the destination may hold a copy. */
  private dispatched = false;
  private pendingCancel: { actor: string; reason: string } | undefined;
  /**
   * A terminal decision (abort, post-copy, pause) whose node call did not get through
   * (UNAVAILABLE, DEADLINE_EXCEEDED): sent again at every tick until the node carries it out or
   * refuses it. The policy is silent after a terminal decision, so nothing else would end the run.
   */
  private unsentTerminal: PolicyDecision | undefined;
  private lastReason = '';
  private startedAtMs: number | undefined;
  private finished = false;
  /** When the node's result arrived (turns.now(); 0 before, or with the turn profiler off). */
  private resultAt = 0;
  private readonly now: () => number;
  private readonly log: Logger;

  /**
   * @param policy the run's policy as the planner resolved it; when absent (a run recovered after
   *   a restart) it is resolved from the run's stored effective policy
   * @throws InvalidArgumentError when the run's stored policy is invalid (it was validated at submit)
   */
  constructor(
    private run: Run,
    private readonly d: SupervisorDeps,
    policy?: ConvergencePolicy,
  ) {
    this.runId = run.id;
    this.state = run.state;
    this.now = d.now ?? Date.now;
    this.log = d.log.child({ runId: run.id, vm: run.vmName });
    this.policy = policy ?? policyFor(run.policy, Math.max(1, run.memoryMib) * MiB);
    this.policyState = this.policy.initialState();
    this.startedAtMs = run.startedAt?.getTime();
    this.dispatched = run.state !== MigrationState.MIGRATION_STATE_QUEUED && run.state !== MigrationState.MIGRATION_STATE_UNSPECIFIED;
    for (const a of run.actions) this.recorded.add(actionKey(a));
  }

  /** The convergence policy's name ("adaptive", "nova"…). */
  get policyName(): string {
    return this.policy.name;
  }

  get currentState(): MigrationState {
    return this.state;
  }

  /**
   * Carries the run out (`start`) or picks it up again after a restart (`resume`), until it ends
   * or {@link detach} is called. Never throws; resolves with the finished run, or undefined when
   * detached before the end.
   */
  async supervise(mode: 'start' | 'resume'): Promise<Run | undefined> {
    const tick = setInterval(() => void this.serially(() => this.tick()), this.d.tickMs ?? 1000);
    tick.unref();
    // Queued first: every update the node sends is decided on after it.
    void this.serially(() => this.loadPrior(mode));
    try {
      const followNow = mode === 'start' ? await this.startOnNode() : await this.reattach();
      if (followNow) await this.follow();
    } catch (err) {
      if (err instanceof NotLeaderError) {
        // Deposed: the run is the new leader's now. Record nothing, touch no node; the
        // coordinator's step-down detaches this supervisor.
        this.log.warn('no longer the leader: leaving the run to the new leader', { err: err.message });
      } else if (!this.stopper.signal.aborted) {
        this.log.error('run supervisor failed', { err });
        await this.fail(errorInfoOf(err, 'COORDINATOR_ERROR'), `supervisor error: ${(err as Error).message}`).catch((e: unknown) => this.log.error('recording the failure failed', { err: e }));
      }
    } finally {
      clearInterval(tick);
    }
    await this.chain;
    return this.finished ? this.run : undefined;
  }

  /** Stops following without touching the node (coordinator shutdown). */
  detach(): void {
    this.stopper.abort(new CancelledError('coordinator stopping'));
  }

  private get signal(): AbortSignal {
    return this.stopper.signal;
  }

  /** Runs `fn` after everything queued before it (updates, ticks, user requests). */
  private serially(fn: () => Promise<void>): Promise<void> {
    const next = this.chain.then(fn).catch((err: unknown) => {
      if (!isAbortError(err)) this.log.warn('run supervisor step failed', { err });
    });
    this.chain = next;
    return next;
  }

  // --- starting and re-attaching -------------------------------------------------------------

  /** @returns true when the migration runs on the node and must be followed */
  private async startOnNode(): Promise<boolean> {
    const { sourceNodeId: src, destinationNodeId: dst } = this.run;
    if (!this.d.isUp(src)) return this.failed(errorInfo('UNAVAILABLE', 'SOURCE_DOWN', `source node ${src} is down`));
    if (!this.d.isUp(dst)) return this.failed(errorInfo('UNAVAILABLE', 'DESTINATION_DOWN', `destination node ${dst} is down`));
    // The destination accepts the run's incoming side only from the source announced here
    // (issue 17). Idempotent: a re-dispatched run (a retry, a restarted coordinator) renews it.
    // Announced while PREPARING is recorded (issue 15 §4: one store write less before the
    // migration starts): the announcement lets nothing happen by itself, and StartMigration goes
    // out only once both are done.
    const announcing = retry(() => this.d.client(dst).expectIncoming({ runId: this.runId, sourceNodeId: src, vmName: this.run.vmName }, { deadlineMs: this.d.callDeadlineMs, signal: this.signal }), {
      deadlineMs: this.d.callDeadlineMs * 3,
      signal: this.signal,
      onRetry: (e, attempt) => this.log.info('destination did not answer ExpectIncoming; asking again', { attempt, err: (e as Error).message }),
    }).then(
      () => undefined,
      (err: unknown) => ({ err }),
    );
    const t0 = turns.enabled ? turns.now() : 0;
    await this.transition(MigrationState.MIGRATION_STATE_PREPARING, `dispatched: ${src} → ${dst}`);
    turns.record('run.start: PREPARING written', t0);
    this.startedAtMs ??= this.now();
    const client = this.d.client(src);
    const refused = await announcing;
    turns.record('run.start: PREPARING and ExpectIncoming', t0);
    if (refused) {
      const { err } = refused;
      if (this.signal.aborted) throw err;
      this.log.warn('ExpectIncoming refused', { err });
      const info = isTransient(err) ? errorInfo('UNAVAILABLE', 'DESTINATION_UNAVAILABLE', `destination node ${dst} did not accept the run: ${(err as Error).message}`) : errorInfoOf(err, 'START_FAILED');
      return this.failed(info, `could not announce the run to destination ${dst}: ${(err as Error).message}`);
    }
    this.dispatched = true;
    try {
      const held = this.d.linkFree !== undefined;
      if (held) this.holding = true;
      const t1 = turns.enabled ? turns.now() : 0;
      const res = await client.startMigration(
        { runId: this.runId, vmName: this.run.vmName, destination: this.d.endpoint(dst), policy: this.run.policy, ...(held ? { holdMs: this.d.holdMs ?? 600_000 } : {}) },
        { deadlineMs: this.d.callDeadlineMs * 6, signal: this.signal },
      );
      turns.record('run.start: StartMigration', t1);
      this.startedOnNode = true;
      this.log.info(held ? 'migration prepared and held until its link is free' : 'migration started', { source: src, destination: dst, state: migrationStateToJSON(res.migration?.state ?? 0) });
    } catch (err) {
      if (this.signal.aborted) throw err;
      // The node may have started it before the reply was lost: ask before declaring failure.
      // A source daemon that died with the call comes back (supervised) within seconds and
      // reconciles the run from its record: ask it for a while, not once.
      if (isTransient(err)) {
        const info = await retry(() => client.getMigration({ runId: this.runId }, { deadlineMs: this.d.callDeadlineMs, signal: this.signal }), {
          deadlineMs: this.d.callDeadlineMs * 3,
          signal: this.signal,
          onRetry: (e, attempt) => this.log.info('source node did not answer after StartMigration broke; asking again', { attempt, err: (e as Error).message }),
        }).catch(() => undefined);
        if (info?.migration) {
          this.startedOnNode = true;
          return this.handleExisting(info.migration);
        }
      }
      this.log.warn('StartMigration refused', { err });
      return this.failed(errorInfoOf(err, 'START_FAILED'), `could not start: ${(err as Error).message}`);
    }
    if (this.pendingCancel) {
      const { actor, reason } = this.pendingCancel;
      this.pendingCancel = undefined;
      await client.cancelMigration({ runId: this.runId, actor, reason }, { deadlineMs: this.d.callDeadlineMs }).catch((err: unknown) => this.log.warn('cancel after start failed', { err }));
    }
    this.releaseWhenLinkFree();
    return true;
  }

  /**
   * A held migration (see SupervisorDeps.linkFree): ReleaseMigration once the link is free, in the
   * background (the watch follows the run meanwhile). A release that never gets through leaves
   * the source to end the run when its hold expires (HOLD_EXPIRED, nothing left on the destination).
   */
  private releaseWhenLinkFree(): void {
    const linkFree = this.d.linkFree;
    if (!linkFree || this.releaseStarted) return;
    this.releaseStarted = true;
    this.holding = true;
    const src = this.run.sourceNodeId;
    const stopped = new Promise<void>((resolve) => this.signal.addEventListener('abort', () => resolve(), { once: true }));
    // The run ahead on the link may stream longer than one hold: renew it (a repeated held
    // StartMigration) every third of it while waiting. If this coordinator dies, the hold still
    // expires on the source unless the next leader's supervisor renews or releases it.
    const holdMs = this.d.holdMs ?? 600_000;
    const renew = setInterval(() => {
      // Only a run still held (recorded PREPARING, not ended): a repeat never starts anything new
      // either way, as the source remembers the run ids it has ended.
      if (this.signal.aborted || this.finished || this.state !== MigrationState.MIGRATION_STATE_PREPARING) return;
      const warn = (err: unknown): void => this.log.warn('could not renew the hold; trying again at the next renewal', { err: (err as Error).message });
      try {
        void this.d
          .client(src)
          .startMigration({ runId: this.runId, vmName: this.run.vmName, destination: this.d.endpoint(this.run.destinationNodeId), policy: this.run.policy, holdMs }, { deadlineMs: this.d.callDeadlineMs, signal: this.signal })
          .then(() => this.log.debug('hold renewed', { holdMs }), warn);
      } catch (err) {
        warn(err);
      }
    }, Math.max(1000, Math.floor(holdMs / 3)));
    void Promise.race([linkFree, stopped])
      .finally(() => clearInterval(renew))
      .then(async () => {
        if (this.signal.aborted || this.finished) return;
        const t0 = this.now();
        await retry(() => this.d.client(src).releaseMigration({ runId: this.runId }, { deadlineMs: this.d.callDeadlineMs, signal: this.signal }), {
          deadlineMs: this.d.holdMs ?? 600_000,
          signal: this.signal,
          onRetry: (e, attempt) => this.log.info('source node did not answer ReleaseMigration; asking again', { attempt, err: (e as Error).message }),
        });
        this.log.info('link free: migration released', { ms: this.now() - t0 });
        // The policy's clock starts with the stream, as the source's elapsed times do.
        if (this.startedAtMs !== undefined && this.state === MigrationState.MIGRATION_STATE_PREPARING) this.startedAtMs = Math.max(this.startedAtMs, t0);
      })
      .catch((err: unknown) => {
        if (!this.signal.aborted && !this.finished) this.log.warn('could not release the held migration; its source ends it when the hold expires', { err });
      })
      .finally(() => (this.holding = false));
  }

  /** @returns true when the migration still runs on the node and must be followed */
  private async reattach(): Promise<boolean> {
    const src = this.run.sourceNodeId;
    // Asked until the node answers (it may still be restarting); only NOT_FOUND is an answer.
    const attempt = async (): Promise<boolean> => {
      try {
        const { migration } = await this.d.client(src).getMigration({ runId: this.runId }, { deadlineMs: this.d.callDeadlineMs, signal: this.signal });
        if (!migration) throw new NotFoundError(`node ${src} returned no migration`);
        this.startedOnNode = true;
        this.log.info('re-attached to a migration after restart', { state: migrationStateToJSON(migration.state) });
        return await this.handleExisting(migration);
      } catch (err) {
        if (!(err instanceof NotFoundError) || this.signal.aborted) throw err;
        if (this.state === MigrationState.MIGRATION_STATE_PREPARING) {
          // We stopped between dispatching and the node accepting: start it now (idempotent).
          this.log.info('source node does not know the run: starting it');
          return this.startOnNode();
        }
        return this.failed(
          errorInfo('ABORTED', 'MIGRATION_LOST', `source node ${src} no longer knows migration ${this.runId} (its daemon restarted?)`),
          'migration lost by the source node',
        );
      }
    };
    return retry(attempt, {
      ...FOLLOW_BACKOFF,
      signal: this.signal,
      retryable: () => true,
      onRetry: (err, _attempt, backoff) => this.log.info('source node not reachable yet; retrying', { err: (err as Error).message, backoff }),
    });
  }

  /**
   * A policy with a prior (withHistory) gets the VM's earlier runs' figures and, for a new run,
   * the cost track and a policy that measures the guest itself (observeGuest) the guest's samples
   * stored before it (their pace baseline). A resumed run gets its samples in rebuildPolicy. Best effort: without them the policy keeps its
   * defaults.
   */
  private async loadPrior(mode: 'start' | 'resume'): Promise<void> {
    try {
      if (this.policy.withHistory) {
        const history = await this.d.store.plans.vmCostHistory(this.run.vmName, PRIOR_RUNS);
        if (history.length > 0) this.policyState = this.policy.withHistory(this.policyState, history);
      }
      if (mode === 'start') {
        // Oldest first, as the policy would have received them (the cost track's baseline too).
        const guest = await this.d.store.analytics.guestSamplesBeforeRun(this.runId);
        for (const g of guest) this.foldGuestSample(g);
      }
    } catch (err) {
      if (isAbortError(err)) throw err;
      this.log.warn('could not load the VM\'s earlier measurements for the policy; it keeps its defaults', { err: (err as Error).message });
    }
  }

  /** One guest sample into the run's cost track and, for a policy that measures the guest itself, its state. */
  private foldGuestSample(g: GuestPerfSample): void {
    this.costTrack = trackGuestSample(this.costTrack, g);
    if (this.policy.observeGuest) this.policyState = this.policy.observeGuest(this.policyState, g);
  }

  /** A migration the node already has: finished → record it; running → rebuild the policy. */
  private async handleExisting(info: MigrationInfo): Promise<boolean> {
    if (info.state === MigrationState.MIGRATION_STATE_VERIFYING) this.streamEnded();
    // Possibly held on its source (a restart, a lost StartMigration answer): released with its link.
    if (info.state === MigrationState.MIGRATION_STATE_PREPARING) this.releaseWhenLinkFree();
    else this.holding = false;
    if (isTerminalState(info.state)) {
      await this.serially(() => this.finish(info));
      return false;
    }
    await this.serially(async () => {
      await this.rebuildPolicy(info);
      await this.reconcileActions(info.actions);
    });
    return true;
  }

  /** Replays the run's recorded samples through the policy; takes decisions it missed. */
  private async rebuildPolicy(info: MigrationInfo): Promise<void> {
    const { progress, guest, run } = await this.d.store.analytics.getRunTimeline(this.runId);
    const decided: PolicyDecision[] = [];
    const timeline = { progress, guest, transitions: run?.transitions ?? [], actions: run?.actions ?? this.run.actions };
    // Progress, guest samples and transitions in the order of their times, as they came in; only a
    // policy that observes more than progress needs the merge (the progress keeps its stored order otherwise).
    const { observeGuest, observeState } = this.policy;
    this.policyState = replayTimeline(
      this.policyState,
      timeline,
      {
        progress: (st, s) => {
          const d = this.policy.decide(st, s, s.elapsedMs);
          decided.push(...d.actions);
          return d.state;
        },
        guest: observeGuest && ((st, g) => observeGuest.call(this.policy, st, g)),
        transition: observeState && ((st, to, at) => observeState.call(this.policy, st, to, at)),
      },
      'merge',
    );
    this.costTrack = replayCostTrack(timeline.progress, timeline.guest, timeline.transitions, timeline.actions);
    const mine = [...info.actions, ...this.run.actions].filter((a) => a.actor === `policy:${this.policy.name}`);
    const missed = decided.filter((d) => !mine.some((a) => a.kind === d.kind && a.value === d.value));
    this.lastSample = info.lastProgress ?? progress.at(-1);
    this.lastSampleAt = this.now();
    for (const d of missed) {
      this.log.info('taking a policy decision missed while the coordinator was down', { kind: d.kind, value: d.value });
      await this.execute(d);
    }
  }

  /** The source QEMU completed: tells the manager once (see SupervisorDeps.onStreamDone). */
  private streamEnded(): void {
    if (this.streamDone) return;
    this.streamDone = true;
    this.d.onStreamDone?.();
  }

  // --- following -----------------------------------------------------------------------------

  private async follow(): Promise<void> {
    const src = this.run.sourceNodeId;
    // One watch of the source node; a watch that breaks before any update arrived is retried
    // with back-off. One that broke after updates flowed ends the attempt: the next retry() starts
    // its back-off afresh (after one first step), so a long healthy watch re-attaches quickly.
    const watchOnce = async (): Promise<'flowed' | 'done'> => {
      let flowed = false;
      try {
        for await (const u of this.d.client(src).watchMigration({ runId: this.runId }, { signal: this.signal })) {
          flowed = true;
          if (turns.enabled && u.update?.$case === 'result') this.resultAt = turns.now();
          await this.serially(() => this.onUpdate(u));
          if (this.finished) return 'done';
        }
        if (this.finished) return 'done';
        if (!flowed) throw new UnavailableError(`the watch of source node ${src} ended before any update`);
        this.log.info('watch of the source node ended; re-attaching');
        return 'flowed';
      } catch (err) {
        if (this.signal.aborted) throw err;
        if (err instanceof NotFoundError) {
          await this.failed(
            errorInfo('ABORTED', 'MIGRATION_LOST', `source node ${src} no longer knows migration ${this.runId} (its daemon restarted?)`),
            'migration lost by the source node',
          );
          return 'done';
        }
        if (this.finished) return 'done';
        if (!flowed) throw err;
        this.log.info('watch of the source node broke; re-attaching', { err: (err as Error).message });
        return 'flowed';
      }
    };
    while (!this.finished) {
      const r = await retry(watchOnce, {
        ...FOLLOW_BACKOFF,
        signal: this.signal,
        retryable: () => !this.finished,
        onRetry: (err, _attempt, backoff) => this.log.info('watch of the source node broke; re-attaching', { err: (err as Error).message, backoff }),
      });
      if (r === 'done' || this.finished) return;
      await sleep(FOLLOW_BACKOFF.initialMs, undefined, { signal: this.signal });
    }
  }

  private async onUpdate(u: WatchMigrationResponse): Promise<void> {
    const up = u.update;
    if (!up || this.finished) return;
    switch (up.$case) {
      case 'stateChange': {
        const c = up.value;
        const at = c.time?.getTime() ?? this.now();
        this.costTrack = trackTransition(this.costTrack, c.to, at);
        if (this.policy.observeState) this.policyState = this.policy.observeState(this.policyState, c.to, at);
        if (isTerminalState(c.to)) {
          this.lastReason = c.reason;
          return;
        }
        if (c.to === MigrationState.MIGRATION_STATE_VERIFYING) this.streamEnded();
        await this.transition(c.to, c.from === c.to ? `node reports ${migrationStateToJSON(c.to)}` : c.reason, c.from === c.to ? undefined : c.time);
        return;
      }
      case 'progress': {
        const s = up.value;
        this.lastSample = s;
        this.lastSampleAt = this.now();
        this.d.store.samples.appendProgress(this.runId, s);
        this.d.store.samples.appendHostCpu(this.runId, { time: s.time, sourceCpuSeconds: s.sourceCpuSeconds, destinationCpuSeconds: s.destinationCpuSeconds });
        this.costTrack = trackProgressSample(this.costTrack, s);
        await this.decide(s, s.elapsedMs);
        return;
      }
      case 'guest':
        this.d.store.samples.appendGuestSample({ ...up.value, vmName: up.value.vmName || this.run.vmName }, this.runId);
        this.foldGuestSample(up.value);
        return;
      case 'action':
        await this.reconcileActions([up.value]);
        return;
      case 'result':
        await this.finish(up.value);
        return;
    }
  }

  private async tick(): Promise<void> {
    // A held run has not begun to migrate: no policy time runs for it (the source counts its
    // elapsed time from the release too).
    if (this.finished || !this.startedOnNode || this.holding || this.state === MigrationState.MIGRATION_STATE_QUEUED) return;
    const unsent = this.unsentTerminal;
    if (unsent) {
      this.unsentTerminal = undefined;
      if (this.state !== MigrationState.MIGRATION_STATE_CANCELLING) await this.execute(unsent);
      return;
    }
    const now = this.now();
    if (this.lastSample && now - this.lastSampleAt < 1500) return;
    const startedAt = this.startedAtMs ?? now;
    const sample = this.lastSample ?? ProgressSample.fromPartial({ state: this.state, elapsedMs: now - startedAt });
    const nowMs = this.lastSample ? this.lastSample.elapsedMs + (now - this.lastSampleAt) : now - startedAt;
    await this.decide(sample, nowMs);
  }

  private async decide(sample: ProgressSample, nowMs: number): Promise<void> {
    const d = this.policy.decide(this.policyState, sample, nowMs);
    this.policyState = d.state;
    for (const a of d.actions) await this.execute(a);
  }

  /** A policy decision → the node call that carries it out (the node records the action). */
  private async execute(a: PolicyDecision): Promise<void> {
    const actor = `policy:${this.policy.name}`;
    const base = { runId: this.runId, actor, reason: a.reason };
    const client = this.d.client(this.run.sourceNodeId);
    const opts = { deadlineMs: this.d.callDeadlineMs };
    this.log.info('policy decision', { kind: PolicyActionKind[a.kind], value: a.value, reason: a.reason });
    try {
      switch (a.kind) {
        case PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME:
          await client.adjustMigration({ ...base, downtimeLimitMs: a.value, enableAutoConverge: false }, opts);
          break;
        case PolicyActionKind.POLICY_ACTION_KIND_SET_BANDWIDTH:
          await client.adjustMigration({ ...base, maxBandwidthBytesPerSec: a.value, enableAutoConverge: false }, opts);
          break;
        case PolicyActionKind.POLICY_ACTION_KIND_ENABLE_AUTO_CONVERGE:
          await client.adjustMigration({ ...base, enableAutoConverge: true }, opts);
          break;
        case PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY:
          await client.startPostcopy(base, opts);
          break;
        case PolicyActionKind.POLICY_ACTION_KIND_PAUSE_GUEST:
          await client.forceComplete(base, opts);
          break;
        case PolicyActionKind.POLICY_ACTION_KIND_ABORT:
          await client.cancelMigration(base, opts);
          break;
        default:
          this.log.warn('policy decision of an unknown kind ignored', { kind: a.kind });
      }
    } catch (err) {
      // The migration may have moved on (finished, switched to post-copy): the node says why, and
      // ends the run itself. A call that did not get through is sent again (see unsentTerminal).
      const again = isTerminalAction(a.kind) && isTransient(err) && !this.finished;
      if (again) this.unsentTerminal = a;
      this.log.warn(again ? 'policy action did not reach the node; sending it again at the next tick' : 'policy action failed on the node', { kind: PolicyActionKind[a.kind], err: (err as Error).message });
    }
  }

  private async reconcileActions(actions: readonly PolicyAction[]): Promise<void> {
    for (const a of actions) {
      const key = actionKey(a);
      if (this.recorded.has(key)) continue;
      this.recorded.add(key);
      // The node carried it out after all (an answer lost on its way back).
      if (this.unsentTerminal?.kind === a.kind && a.actor === `policy:${this.policy.name}`) this.unsentTerminal = undefined;
      this.costTrack = trackAction(this.costTrack, a.kind, a.time?.getTime() ?? this.now());
      await this.d.store.plans.recordAction(this.runId, a);
    }
  }

  // --- recording -----------------------------------------------------------------------------

  /**
   * Records an intermediate state. A store that cannot write (disk full) is retried for a while;
   * after that the state change is logged and skipped — the run goes on, and its end is recorded
   * when the store is back ({@link end} retries longer).
   */
  private async transition(to: MigrationState, reason: string, at?: Date): Promise<void> {
    if (this.finished || to === this.state || isTerminalState(to) || to === MigrationState.MIGRATION_STATE_UNSPECIFIED) return;
    try {
      await this.storeWrite('record a state change', () => this.d.store.plans.transitionRun(this.runId, { to, reason, from: this.state, ...(at ? { at } : {}) }), 10_000);
      this.state = to;
    } catch (err) {
      if (err instanceof FailedPreconditionError) return;
      if (isAbortError(err) || !isStoreTransient(err)) throw err;
      this.log.error('could not record a state change of the run; going on without it', { to: migrationStateToJSON(to), err });
    }
  }

  /** A store write, retried while the store fails for reasons of its own (see isStoreTransient). */
  private storeWrite<T>(what: string, fn: () => Promise<T>, deadlineMs = this.d.storeRetryMs ?? 600_000): Promise<T> {
    return retry(fn, {
      deadlineMs,
      initialMs: 500,
      signal: this.signal,
      retryable: isStoreTransient,
      onRetry: (err, attempt, delayMs) => this.log.warn(`the store failed to ${what}; retrying`, { attempt, delayMs, err: (err as Error).message }),
    });
  }

  /**
   * A failed or cancelled run may leave its destination holding the paused incoming copy: the
   * source could not reach it, or died while preparing it. AbortIncoming (idempotent; refused
   * with GUEST_RUNS_HERE once the guest runs there, so it never destroys a running guest) is
   * retried up to cleanupWaitMs before the end is recorded, then in the background.
   * Not after OWNERSHIP_UNRESOLVED: then the destination's copy may be the only complete one, and
   * the source, which knows whether its own copy lives, settles it (it keeps trying).
   */
  private async cleanDestination(error: ErrorInfo | undefined): Promise<void> {
    if (!this.dispatched || error?.reason === 'OWNERSHIP_UNRESOLVED') return;
    const dst = this.run.destinationNodeId;
    const attempt = async (): Promise<void> => {
      await this.d.client(dst).abortIncoming({ runId: this.runId }, { deadlineMs: this.d.callDeadlineMs });
    };
    const retryable = (err: unknown): boolean => isTransient(err) || (err instanceof MigdError && err.code === 'INTERNAL');
    const settled = (err: unknown): boolean => {
      if (err instanceof MigdError && err.reason === 'GUEST_RUNS_HERE') {
        this.log.info('the destination runs the guest of this failed run; leaving it', { destination: dst });
        return true;
      }
      if (!retryable(err)) {
        this.log.warn('the destination refused to remove the copy of a failed run', { destination: dst, err: (err as Error).message });
        return true;
      }
      return false;
    };
    try {
      await retry(attempt, { deadlineMs: this.d.cleanupWaitMs ?? 20_000, signal: this.signal, retryable });
      return;
    } catch (err) {
      if (isAbortError(err) || settled(err)) return;
    }
    this.log.warn('the destination did not confirm the copy of a failed run removed; retrying in the background', { destination: dst });
    // Stops with the supervisor (a step-down or shutdown): a deposed leader touches no node.
    void retry(attempt, { deadlineMs: this.d.cleanupRetryMs ?? 600_000, maxMs: 15_000, retryable, signal: this.signal }).then(
      () => this.log.info('destination copy of a failed run removed', { destination: dst }),
      (err: unknown) => {
        if (isAbortError(err) || this.signal.aborted) this.log.info('background clean-up of the destination stopped with the supervisor', { destination: dst });
        else if (!settled(err)) this.log.error('could not remove the destination copy of a failed run; the destination removes it once its source says the run ended', { destination: dst, err: (err as Error).message });
      },
    );
  }

  private async finish(info: MigrationInfo): Promise<void> {
    if (this.finished) return;
    await this.reconcileActions(info.actions);
    const state = isTerminalState(info.state) ? info.state : MigrationState.MIGRATION_STATE_FAILED;
    const reason = this.lastReason || (info.error?.message ?? migrationStateToJSON(state));
    await this.end(state, { stats: info.stats, error: info.error, reason, at: info.finishedAt });
  }

  private async failed(error: ErrorInfo, reason?: string): Promise<false> {
    await this.serially(() => this.fail(error, reason ?? error.message));
    return false;
  }

  private async fail(error: ErrorInfo, reason: string): Promise<void> {
    await this.end(MigrationState.MIGRATION_STATE_FAILED, { error, reason });
  }

  private async end(state: MigrationState, input: { stats?: MigrationInfo['stats']; error?: ErrorInfo | undefined; reason: string; at?: Date | undefined }): Promise<void> {
    if (this.finished) return;
    this.signal.throwIfAborted();
    if (state !== MigrationState.MIGRATION_STATE_SUCCEEDED) await this.cleanDestination(input.error);
    this.signal.throwIfAborted();
    // Written by the end's own UPDATE, not after it (the run's slots are freed once this method
    // returns, and a write of its own after the end would hold them for one more group commit) nor
    // beside it (one statement more on the write connection per migration; issue 15 §4).
    const costs = state === MigrationState.MIGRATION_STATE_SUCCEEDED ? this.costFigures() : undefined;
    const t0 = turns.enabled ? turns.now() : 0;
    if (this.resultAt > 0) turns.record('run.end: result to its write', this.resultAt);
    let costsWritten = false;
    try {
      this.run = await this.storeWrite('record the end of the run', () => this.d.store.plans.finishRun(this.runId, { state, from: this.state, reason: input.reason, ...(input.stats ? { stats: input.stats } : {}), ...(input.error ? { error: input.error } : {}), ...(input.at ? { at: input.at } : {}), ...(costs ? { costs } : {}) }));
      costsWritten = costs !== undefined;
    } catch (err) {
      if (!(err instanceof FailedPreconditionError)) throw err;
      this.run = await this.storeWrite('read the run', () => this.d.store.plans.getRun(this.runId));
    }
    this.finished = true;
    this.state = this.run.state;
    turns.record('run.end: end written', t0);
    if (costsWritten) this.log.info('measured guest harm recorded', { ...costs });
    this.log.info('run finished', { state: migrationStateToJSON(this.run.state), totalTimeMs: this.run.stats?.totalTimeMs, downtimeMs: this.run.stats?.downtimeMs, error: this.run.error?.message });
  }

  /**
   * What the run measured of the guest's harm (the cost track, whatever the policy) and what its
   * policy found (the adaptive policy's working set), stored with a succeeded run's end for the
   * VM's next runs (FinishRunInput.costs). Best effort: undefined when there is none to store.
   */
  private costFigures(): RunCostFigures | undefined {
    try {
      const figures: RunCostFigures = { ...this.policy.costFigures?.(this.policyState), ...trackedCostFigures(this.costTrack) };
      return Object.keys(figures).length === 0 ? undefined : figures;
    } catch (err) {
      this.log.warn('could not work out the measured guest harm', { err: (err as Error).message });
      return undefined;
    }
  }

  // --- user requests -------------------------------------------------------------------------

  /**
   * Cancels the migration on the node (or as soon as the node has accepted it).
   * @throws FailedPreconditionError (finished, or in post-copy: the node refuses), UnavailableError
   */
  async cancel(actor: string, reason: string, signal?: AbortSignal): Promise<void> {
    if (this.finished) throw new FailedPreconditionError(`run ${this.runId} has already finished`, { reason: 'RUN_FINISHED' });
    if (!this.startedOnNode) {
      this.pendingCancel = { actor, reason };
      return;
    }
    await this.d.client(this.run.sourceNodeId).cancelMigration({ runId: this.runId, actor, reason }, { deadlineMs: this.d.callDeadlineMs, ...(signal ? { signal } : {}) });
  }

  /**
   * Forces completion on the node; `signal` is the caller's, so a caller that goes away cancels
   * the node call. @throws FailedPreconditionError (not started, finished)
   */
  async forceComplete(actor: string, reason: string, signal?: AbortSignal): Promise<void> {
    this.requireOnNode('force-complete');
    await this.d.client(this.run.sourceNodeId).forceComplete({ runId: this.runId, actor, reason }, { deadlineMs: this.d.callDeadlineMs, ...(signal ? { signal } : {}) });
  }

  /** Changes limits on the node. @throws FailedPreconditionError (not started, finished), InvalidArgumentError */
  async adjust(change: { downtimeLimitMs?: number; maxBandwidthBytesPerSec?: number }, actor: string, reason: string, signal?: AbortSignal): Promise<void> {
    this.requireOnNode('adjust');
    await this.d.client(this.run.sourceNodeId).adjustMigration({ runId: this.runId, ...change, enableAutoConverge: false, actor, reason }, { deadlineMs: this.d.callDeadlineMs, ...(signal ? { signal } : {}) });
  }

  private requireOnNode(what: string): void {
    if (this.finished) throw new FailedPreconditionError(`cannot ${what}: run ${this.runId} has already finished`, { reason: 'RUN_FINISHED' });
    if (!this.startedOnNode) throw new FailedPreconditionError(`cannot ${what}: run ${this.runId} has not started on its source node yet`, { reason: 'NOT_STARTED' });
  }
}
