/**
 * The source side of one live migration. It prepares the destination through the destination
 * node daemon, configures and starts QEMU's migration, follows QEMU's MIGRATION / MIGRATION_PASS /
 * STOP / RESUME events (state changes come only from events; `query-migrate` is polled for progress
 * figures), switches to post-copy when its policy says so, recovers a stalled post-copy link, and
 * declares success only after the guest has been seen alive on the destination.
 */
import { setTimeout as sleep, setTimeout as sleepFor } from 'node:timers/promises';
import { Broadcast } from '../../shared/broadcast.js';
import { isTransient, retry } from '../../shared/retry.js';
import { CancelledError, FailedPreconditionError, MigdError, UnavailableError } from '../../shared/errors.js';
import {
  MigrationPolicy as MigrationPolicyCodec,
  MigrationState,
  PolicyActionKind,
  PolicyKind,
  DiskFormat,
  StorageMode,
  type ErrorInfo,
  type GuestCheck,
  type GuestPerfSample,
  type MigrationPolicy,
  type MigrationStats,
  type PolicyAction,
  type ProgressSample,
  ProgressSample as ProgressSampleCodec,
} from '../../shared/gen/migd/v1/common.js';
import { ConfirmIncomingResponse, MigrationInfo as MigrationInfoCodec, type DiskDigest, type DiskTransfer, type PrepareIncomingResponse, type MigrationEndpoint, type MigrationInfo, type StateChange, type WatchMigrationResponse } from '../../shared/gen/migd/v1/node.js';
import type { Logger } from '../../shared/log.js';
import type { QmpEvent } from '../qmp/protocol.js';
import type { StatusInfo } from '../qmp/commands.js';
import { errorInfo, errorInfoOf } from '../../shared/policy/error-info.js';
import { publicMessage } from '../public-error.js';
import type { MigrationConfig } from '../../shared/policy/resolve.js';
import { isTerminalState as isTerminal } from '../../shared/policy/states.js';
import { StallDetector, finalStats, postcopyDowntimeMs, progressSample, stateFromQemuStatus, type QmpMigrationInfo } from './progress.js';
import type { MigrationRecords, SourcePhase, SourceRecord } from './record.js';
import { capabilityList, type MigratableVm, type NodePeer, type VmHost } from './types.js';
import { checkMigrationAddress, managementEndpointOf, streamUri } from './endpoint.js';
import { answers } from '../../shared/net.js';
import { abandonMirrors, SourceStorage } from './storage.js';
import { imageDigest } from '../host/digest.js';
import { destroyTcpSockets } from '../host/sockets.js';
import { DIGEST_MAX_BYTES, describeChecks, diskChecks } from './guest-checks.js';

/** How long one calc-dirty-rate estimate of an adaptive migration's pre-copy samples (ms). */
const DIRTY_RATE_CALC_MS = 1000;
/** Pause between two rounds of dirty-rate measurements during pre-copy (ms). */
const DIRTY_RATE_REFRESH_GAP_MS = 500;
/**
 * How long pre-copy runs before the first round of measurements (ms). The measurements cost the
 * guest and the migration CPU (page sampling hashes the sampled pages twice), and a first pass
 * shorter than this needs no estimate: it is little biased, and QEMU's own rate serves. Measured
 * (docs/lab/policies-front, compressible at 720 Mbit/s, ≈0.35 s migrations): with the first round
 * at once, the 100 ms dirty set ran inside every adaptive run, which took 366–398 ms against
 * 303–351 ms for the same multifd zstd transport without it.
 */
const DIRTY_RATE_FIRST_ROUND_MS = 500;
/**
 * The short window of the dirty-set measurement during pre-copy (ms) and its sample pages per GiB.
 * Unique pages dirtied within 100 ms: a guest that rewrites a bounded set faster than a pass goes
 * shows the whole set here (hot-small's 48 MiB: 43–48 MiB at 100 ms as at 1 s, measured under TCG),
 * a steady writer a tenth of its 1 s figure (moderate: 4–7 against 42–50 MiB). 4096 pages per GiB
 * (QEMU allows 128–16384) keep the sampling noise of a small set near ±10 %; the hashing stays cheap
 * (16 MiB per GiB read twice).
 */
const DIRTY_SET_WINDOW_MS = 100;
const DIRTY_SET_SAMPLE_PAGES = 4096;
/** Guest samples kept for a run nobody watches yet (≈15 s of a two-worker guest reporting every 100 ms). */
const MAX_UNWATCHED_GUEST = 512;
/**
 * The guest's samples from just before the run that go into its record: its pace then is what the
 * harm of the migration is measured against (the coordinator's cost track, the lab). Between runs
 * the store keeps only one sample per heartbeat; a baseline of two such samples (one of them
 * possibly the workload's first fill) misread an unharmed guest as slowed by a quarter.
 */
const BASELINE_BEFORE_MS = 3000;

export interface SourceOptions {
  /** query-migrate polling interval for progress figures (ms). Default 250. */
  readonly progressIntervalMs?: number;
  /** Post-copy is declared stalled when no byte moved for this long (ms). Default 3000. */
  readonly postcopyStallMs?: number;
  /** How long the destination may take to show the guest alive after completion (ms). Default 30 000. */
  readonly confirmTimeoutMs?: number;
  /** Give up recovering a paused post-copy migration after this long (ms). Default 600 000. */
  readonly recoveryTimeoutMs?: number;
  /**
   * A post-copy recovery resumes over the destination's management address when its migration
   * address does not answer (see recoveryProbeMs). A guest in post-copy runs nowhere while its
   * stream is down, so a migration network that stays down must not strand it while the nodes
   * still reach each other. Only for TLS streams. Default true.
   */
  readonly recoveryOverManagement?: boolean;
  /**
   * Before each post-copy recovery attempt the source checks that the destination's migration
   * address answers a TCP connect (accepted or refused) within this long (ms), so QEMU is never
   * sent to a dead address: its connect would hang in postcopy-recover-setup, where migrate-pause
   * is refused, until TCP gives up minutes later. Default 1500.
   */
  readonly recoveryProbeMs?: number;
  /** The reachability check (a seam for tests). Default: a TCP connect (shared/net.ts answers). */
  readonly answers?: (host: string, port: number, timeoutMs: number) => Promise<boolean>;
  /**
   * Aborts the source QEMU's TCP connections to the destination (a seam for tests). Default:
   * `ss -K` on the sockets process `pid` holds to one of `peers` (host/sockets.ts).
   */
  readonly destroySockets?: (pid: number, peers: readonly string[]) => Promise<number>;
  /** Deadline of calls to the destination node (ms). Default 30 000. */
  readonly peerDeadlineMs?: number;
  /**
   * How long the source keeps asking the destination to take the VM over, or to prove its copy
   * gone, before reporting the run failed with the ownership unresolved (ms). Default 300 000.
   * The source never resumes its paused copy without that proof.
   */
  readonly handoverTimeoutMs?: number;
  /**
   * A cancel QEMU has not carried out after this long (ms) — multifd channels blocked on a dead
   * link stay `cancelling` until TCP gives up, many minutes later — has its migration channels
   * shut down with QMP `yank`, which ends the cancel at once. Default 5000.
   */
  readonly cancelStuckMs?: number;
  /**
   * After post-copy was asked for, QEMU's monitor not answering for this long (ms) means the
   * switch is blocked on a dead link: QEMU's postcopy_start writes the last pre-copy data and the
   * device-state package under its main lock, so a stream that carries nothing holds every
   * in-band command. The stream is then shut down out of band (migrate-pause, else yank): QEMU
   * fails the switch and resumes the guest on the source, which the destination cannot have
   * started (it runs the guest only from the whole package). Likewise QEMU still in pre-copy
   * with no byte sent for this long after post-copy was asked for: its migration thread is
   * blocked in a write on a dead link and never begins the switch (the channels are yanked; see
   * unstickPrecopyBeforeSwitch). Default 10 000.
   */
  readonly postcopySwitchStuckMs?: number;
  /**
   * Post-copy recovery pauses the destination first and the source only after it (see recover).
   * When the destination still cannot be paused this long after the recovery began — its switch
   * never arrived, the link being down for good, or it cannot be reached — the source pauses its
   * own stream anyway, as QEMU's switch on a dead link cannot complete. Default 15 000.
   */
  readonly recoverySourcePauseGraceMs?: number;
  /**
   * After QEMU failed the switch to post-copy, how long the source waits for QEMU to finish with
   * the failure (ms) before it settles the guest. QEMU emits `failed` from its switch
   * (postcopy_start) with the guest still stopped here, and resumes it by itself only later, once
   * its migration thread has ended the migration (migration_iteration_finish: the block devices
   * re-activated, then vm_start); the runstate says finish-migrate until then. Default 10 000.
   */
  readonly switchFailureSettleMs?: number;
  /**
   * After a run ended with its ownership unresolved (the source copy paused, the destination
   * neither took the guest over nor proved its copy gone), the source keeps asking in the
   * background for this long (ms), then resumes or removes its copy by the answer. Default
   * 3 600 000.
   */
  readonly resolveTimeoutMs?: number;
  /** The storage copy is declared stalled (link presumed down) when no byte moved for this long (ms). Default 15 000. */
  readonly storageStallMs?: number;
  /** QEMU TLS credentials object id to use for the stream (created by the caller), if any. */
  readonly tlsCredsId?: string;
  /** Host name QEMU verifies in the destination's certificate. */
  readonly tlsHostname?: string;
}

export interface SourceMigrationParams {
  readonly runId: string;
  readonly nodeId: string;
  readonly vm: MigratableVm;
  readonly host: VmHost;
  readonly peer: NodePeer;
  readonly destination: MigrationEndpoint;
  readonly policy: MigrationPolicy;
  readonly config: MigrationConfig;
  readonly supportedCapabilities: ReadonlySet<string>;
  readonly log: Logger;
  readonly options?: SourceOptions;
  readonly now?: () => number;
  /** This node as the destination reaches it (sent with PrepareIncoming). */
  readonly self?: MigrationEndpoint;
  /** Where the migration's phase is persisted. */
  readonly records: MigrationRecords;
  /** The record of a migration adopted after a daemon restart (see adopt()). */
  readonly record?: SourceRecord;
  /**
   * Set-up of the source QEMU still under way when the run is created (its TLS credentials
   * object): start() awaits it, while the destination prepares, before the parameters name it.
   */
  readonly localSetup?: Promise<unknown>;
  /**
   * Held start (StartMigrationRequest.hold_ms; issue 15 §4): once both ends are prepared, the
   * stream (or the LOCAL disk copy) waits for {@link SourceMigration.release}, at most this long
   * (ms), then the run fails with HOLD_EXPIRED (the destination's copy removed, the guest running
   * here). start() returns once the migration is held. 0 or absent: no hold.
   */
  readonly holdMs?: number;
}


export class SourceMigration {
  readonly runId: string;
  private state = MigrationState.MIGRATION_STATE_PREPARING;
  /** When `state` was entered (the run's creation for the first). */
  private stateSinceMs: number;
  private readonly startedAt: Date;
  private finishedAt: Date | undefined;
  private lastProgress: ProgressSample | undefined;
  private stats: MigrationStats | undefined;
  private error: ErrorInfo | undefined;
  private readonly actions: PolicyAction[] = [];
  // A WatchMigration client that stops reading is ended (RESOURCE_EXHAUSTED), not buffered for.
  private readonly updates = new Broadcast<WatchMigrationResponse>({ limit: 4096, overflow: 'fail' });
  private readonly stop = new AbortController();
  /**
   * The guest's samples from the start of the run (its set-up, QEMU's `migrate`) until the first
   * watcher came: the coordinator watches only once StartMigration answered, and without them the
   * run's record had no guest sample from its dispatch to its first progress sample (issue 14: the
   * lab then charged that time at the first in-migration sample's pace). Handed to the first
   * watcher, then undefined.
   */
  private unwatchedGuest: GuestPerfSample[] | undefined = [];
  private readonly done: Promise<MigrationInfo>;
  private resolveDone!: (info: MigrationInfo) => void;
  private downtimeLimitMs: number;
  private maxBandwidth: number;
  private pass = 0;
  /** Ends the progress poll's wait early: a pass began (see pollProgress). */
  private pollWake: (() => void) | undefined;
  /** A pass began while the poll was querying: its next wait is skipped. */
  private pollWakePending = false;
  /** Woken at every MIGRATION status event (the dirty-rate loop waits for `active` on it). */
  private readonly statusWaiters = new Set<() => void>();
  private postcopyStarted = false;
  /** QEMU clock (µs) of the source's last STOP event and of the `completed` event. */
  private stoppedAtUs: number | undefined;
  private completedAtUs: number | undefined;
  private pausedGuest = false;
  /** calc-dirty-rate's latest estimate during pre-copy (bytes/s), 0 until the first one is measured. */
  private estimatedDirty = 0;
  /** Unique bytes dirtied within DIRTY_SET_WINDOW_MS, measured during pre-copy (0: not yet). */
  private dirtySetBytes = 0;
  private recoveries = 0;
  private maxThrottle = 0;
  private destinationCpu = 0;
  private sourceCpuStart = 0;
  private destinationCpuStart: number | undefined;
  private qemuStatus = 'none';
  /** QEMU's error-desc of a failed stream, as read when it failed. */
  private qemuError = '';
  /** The reason code of the run's failure when settle() found a more precise one than its caller. */
  private failReason: string | undefined;
  /** The stream was shut down because the switch to post-copy hung (unstickPostcopySwitch). */
  private switchUnstuck = false;
  private readonly opts: Required<Omit<SourceOptions, 'tlsCredsId' | 'tlsHostname'>> & Pick<SourceOptions, 'tlsCredsId' | 'tlsHostname'>;
  private readonly now: () => number;
  private recovering = false;
  /** The mirrors of the LOCAL disks, when the migration copies storage. */
  private storage: SourceStorage | undefined;
  /** Set while the storage phase waits for the mirrors: aborting it cancels the run. */
  private storageCopying: AbortController | undefined;
  /** The mirrors ended in sync (the guest stopped for good on the source). */
  private storageEnded = false;
  /** Digests of the copied LOCAL disks, taken once the mirrors ended in sync (guest-checks.ts). */
  private sourceDigests: Promise<DiskDigest[]> | undefined;
  private cancelRequested = false;
  /**
   * QEMU's `migrate` has gone out: from then on a cancel is QEMU's (migrate_cancel). Before it —
   * while starting, during the storage copy, or between the mirrors' READY and `migrate` — QEMU
   * has no migration to cancel, and the run's own steps end it when they see cancelRequested.
   */
  private streamIssued = false;
  /** release() was called (before or while the migration is held). */
  private releaseAsked = false;
  /** While held: ends the hold (no error: released; an error: cancelled or expired). */
  private endHold: ((err?: Error) => void) | undefined;
  /** While held: restarts the hold's expiry at the given length (ms) from now (see renewHold). */
  private rearmHold: ((holdMs: number) => void) | undefined;
  /** How long the migration was held (ms). */
  private heldMs = 0;
  private readonly record: SourceRecord;
  private persisting: Promise<void> = Promise.resolve();
  /** What is left to settle in the background once the run has ended (see resolveLater). */
  private unresolved: 'handover' | 'abort' | undefined;
  /** Stops the background settling (daemon shutdown). */
  private readonly background = new AbortController();
  private get detached(): boolean {
    return this.background.signal.aborted;
  }

  constructor(private readonly p: SourceMigrationParams) {
    this.runId = p.runId;
    p.localSetup?.catch(() => undefined); // awaited by start(), which reports its failure
    this.now = p.now ?? Date.now;
    this.startedAt = new Date(p.record ? Date.parse(p.record.startedAt) : this.now());
    this.stateSinceMs = this.startedAt.getTime();
    this.record = p.record ?? {
      format: 1,
      runId: p.runId,
      role: 'source',
      vmName: p.vm.name,
      phase: 'starting',
      peer: p.destination,
      policy: MigrationPolicyCodec.toJSON(p.policy),
      startedAt: this.startedAt.toISOString(),
      updatedAt: this.startedAt.toISOString(),
    };
    this.downtimeLimitMs = p.config.downtimeLimitMs;
    this.maxBandwidth = p.config.maxBandwidthBytesPerSec;
    this.opts = {
      progressIntervalMs: 250,
      postcopyStallMs: 3000,
      confirmTimeoutMs: 30_000,
      recoveryTimeoutMs: 600_000,
      recoveryOverManagement: true,
      recoveryProbeMs: 1500,
      answers,
      destroySockets: async (pid, peers) => {
        const onError = (sock: { local: string; peer: string }, err: Error): void => p.log.warn("ss -K could not abort one of QEMU's migration connections", { local: sock.local, peer: sock.peer, err: err.message });
        return (await destroyTcpSockets(pid, { peers, onError })).length;
      },
      peerDeadlineMs: 30_000,
      handoverTimeoutMs: 300_000,
      cancelStuckMs: 5000,
      postcopySwitchStuckMs: 10_000,
      recoverySourcePauseGraceMs: 15_000,
      switchFailureSettleMs: 10_000,
      resolveTimeoutMs: 3_600_000,
      storageStallMs: 15_000,
      ...p.options,
    };
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
  }

  /** Resolves with the final MigrationInfo once the migration has finished, whatever the outcome. */
  finished(): Promise<MigrationInfo> {
    return this.done;
  }

  get currentState(): MigrationState {
    return this.state;
  }

  /** A snapshot of the migration. */
  info(): MigrationInfo {
    return {
      runId: this.runId,
      vmName: this.p.vm.name,
      sourceNodeId: this.p.nodeId,
      destination: this.p.destination,
      policy: { ...this.p.policy, downtimeLimitMs: this.downtimeLimitMs, maxBandwidthBytesPerSec: this.maxBandwidth },
      state: this.state,
      startedAt: this.startedAt,
      finishedAt: this.finishedAt,
      lastProgress: this.lastProgress,
      stats: this.stats,
      error: this.error,
      actions: [...this.actions],
    };
  }

  /**
   * Updates from now on; a late joiner first gets the current state (with the time it was entered)
   * and the last progress sample. The first watcher also gets the guest's samples kept for it (see
   * unwatchedGuest): those from before the current state ahead of it, so that the coordinator's
   * cost track takes them as the guest's baseline before it learns that pre-copy began (as a
   * replay of the stored run, in time order, does), the later ones after it.
   */
  watch(signal?: AbortSignal): AsyncIterable<WatchMigrationResponse> {
    const kept = this.unwatchedGuest ?? [];
    this.unwatchedGuest = undefined;
    const since = this.stateSinceMs;
    const before = (g: GuestPerfSample): boolean => (g.time?.getTime() ?? 0) <= since;
    const initial: WatchMigrationResponse[] = kept.filter(before).map((g) => ({ update: { $case: 'guest', value: g } }));
    initial.push({ update: { $case: 'stateChange', value: { time: new Date(since), from: this.state, to: this.state, reason: 'current state' } } });
    if (this.lastProgress) initial.push({ update: { $case: 'progress', value: this.lastProgress } });
    for (const g of kept) if (!before(g)) initial.push({ update: { $case: 'guest', value: g } });
    if (isTerminal(this.state)) initial.push({ update: { $case: 'result', value: this.info() } });
    return this.updates.subscribe(initial, signal);
  }

  /**
   * Prepares the destination and starts QEMU's migration. Errors before the stream starts are
   * thrown to the caller, after cleaning up the destination; nothing is left behind.
   * @throws UnavailableError (destination not answering), InvalidArgumentError, QmpError
   */
  async start(): Promise<void> {
    const { vm, peer, log } = this.p;
    this.p.host.setMigration(vm.name, this.runId);
    // Set once PrepareIncoming went out: from then on the destination may hold a copy, even when
    // the call failed (a lost answer, a timeout, a cut link), so a failed start removes it.
    let asked = false;
    void this.forwardLocalGuest(this.stop.signal, BASELINE_BEFORE_MS);
    try {
      await this.persist('starting');
      const transfers = await this.p.host.diskTransfers(vm.name);
      asked = true;
      const preparing = peer
        .prepareIncoming({ runId: this.runId, spec: vm.spec, policy: this.p.policy, disks: transfers, ...(this.p.self ? { source: this.p.self } : {}) }, { deadlineMs: this.opts.peerDeadlineMs })
        .catch((err: unknown) => {
          if (err instanceof MigdError && (err.code === 'UNAVAILABLE' || err.code === 'DEADLINE_EXCEEDED')) {
            throw new UnavailableError(`destination node ${this.p.destination.nodeId} at ${this.p.destination.managementAddress} is not answering: ${err.message}`, { cause: err, reason: 'DESTINATION_UNAVAILABLE' });
          }
          throw err;
        });
      // The source QEMU is set up while the destination prepares its own (issue 15 §4: the two
      // waited for each other before). Both settle before anything else happens: a failure of
      // either leaves no command of the other still on its way.
      const [prepared, local] = await Promise.allSettled([preparing, this.setUpSource()]);
      if (prepared.status === 'rejected') throw prepared.reason;
      if (local.status === 'rejected') throw local.reason;
      const ready = prepared.value;
      // Never the URI the destination sent: tcp to its registered migration address and the port.
      const uri = streamUri(this.p.destination.migrationAddress, ready);
      if (this.p.holdMs) {
        // Held: StartMigration answers now; the transfer starts on release (or the run ends).
        if (this.cancelRequested) throw new CancelledError('cancelled before the migration was held');
        void this.holdThenTransfer(uri, transfers, ready);
        return;
      }
      await this.beginTransfer(uri, transfers, ready);
    } catch (err) {
      if (this.cancelRequested && !this.streamIssued) {
        // Cancelled while starting: QEMU streams nothing, and the destination's copy (if it was
        // asked for one) goes with settle(); the run ends CANCELLED, not as a failed start. In the
        // background, as the storage phase does: StartMigration answers now.
        log.info('cancelled while starting', { err: publicMessage(err) });
        void this.cancelled().catch((e: unknown) => log.error('settling a run cancelled while starting failed', { err: e }));
        return;
      }
      this.p.host.setMigration(vm.name, undefined);
      await this.storage?.abort();
      // Idempotent on the destination, and it refuses a PrepareIncoming still on its way after it;
      // a destination that stays unreachable removes its copy itself once it learns the run ended.
      // In the background: the caller learns the failure at once (an unreachable destination would
      // otherwise hold the answer past the caller's deadline); the coordinator aborts it too.
      if (asked) {
        void this.abortDestination(this.now() + Math.min(this.opts.peerDeadlineMs, 15_000))
          .then((r) => r !== 'gone' && log.warn('abort incoming after failed start', { outcome: r }))
          .catch((e: unknown) => log.warn('abort incoming after failed start failed', { err: e }));
      }
      log.warn('migration could not start', { err });
      this.error = { ...errorInfoOf(err), message: publicMessage(err) };
      this.finish(MigrationState.MIGRATION_STATE_FAILED, `could not start: ${publicMessage(err)}`);
      throw err;
    }
  }

  /**
   * The source QEMU's side of the set-up: capabilities and parameters (they take effect only with
   * `migrate`), the CPU baseline. No dirty-rate estimate here: an adaptive migration measured one
   * for 1 s before `migrate` until issue 14 found that second real to a user draining a host and
   * invisible in QEMU's total-time (and, on phase at 300 Mbit/s, pushing the first pass into the
   * guest's burst). Its measurements start with pre-copy instead (refreshDirtyEstimate).
   */
  private async setUpSource(): Promise<void> {
    const { vm, config } = this.p;
    await this.p.localSetup;
    await vm.qmp.execute('migrate-set-capabilities', { capabilities: capabilityList(config.capabilities, this.p.supportedCapabilities) });
    const params: Record<string, unknown> = { ...config.sourceParameters };
    if (config.tls && this.opts.tlsCredsId) {
      params['tls-creds'] = this.opts.tlsCredsId;
      params['tls-hostname'] = this.opts.tlsHostname ?? 'migd-node';
    } else {
      params['tls-creds'] = '';
    }
    await vm.qmp.execute('migrate-set-parameters', params);
    this.sourceCpuStart = await vm.cpuSeconds();
  }

  /**
   * The guest's dirty rate during pre-copy, for the adaptive policy: QEMU's calc-dirty-rate in
   * page-sampling mode (dirty-bitmap mode reports 0 under TCG, FACTS.md) over `windowMs`. Page
   * sampling counts unique pages dirtied per period, so a guest rewriting a small set fast reads
   * low (a lower bound). Bytes/s; 0 when QEMU cannot say.
   */
  private async estimateDirtyRate(signal: AbortSignal, windowMs = DIRTY_RATE_CALC_MS, samplePages = 512): Promise<number> {
    const { vm, log } = this.p;
    const when = `during pre-copy${windowMs === DIRTY_RATE_CALC_MS ? '' : ` over ${windowMs} ms`}`;
    try {
      await vm.qmp.execute('calc-dirty-rate', { 'calc-time': windowMs, 'calc-time-unit': 'millisecond', 'sample-pages': samplePages, mode: 'page-sampling' }, { timeoutMs: 3000 });
      const until = this.now() + windowMs + 2000;
      await sleep(windowMs, undefined, { signal });
      for (;;) {
        const r = (await vm.qmp.execute('query-dirty-rate', undefined, { timeoutMs: 3000 })) as { status?: string; 'dirty-rate'?: number };
        if (r.status === 'measured') {
          const bps = Math.max(0, (r['dirty-rate'] ?? 0) * 1024 * 1024);
          log.info(`dirty rate ${when} (calc-dirty-rate, page sampling)`, { mibPerSec: r['dirty-rate'] ?? null });
          return bps;
        }
        if (this.now() > until) return 0;
        await sleep(100, undefined, { signal });
      }
    } catch (err) {
      if (!signal.aborted) log.info(`no dirty-rate estimate ${when}`, { err: (err as Error).message });
      return 0;
    }
  }

  /**
   * Issue 14: the adaptive policy's dirty-rate evidence, measured while pre-copy runs. QEMU's own
   * dirty-pages-rate says nothing until the first bitmap sync and reads low after a long first
   * pass; a guest that changes pace during pass 1 (a phase change) makes any one earlier figure
   * stale. So the first round starts as soon as QEMU reports `active` (no estimate before
   * `migrate`: see setUpSource) and rounds repeat every DIRTY_RATE_REFRESH_GAP_MS after (page
   * sampling hashes a few hundred pages per GiB: cheap, and it does not touch migration's dirty
   * log); every progress sample carries the latest figures, and the adaptive policy re-decides
   * when the estimate changes materially. Each round first measures the unique pages dirtied
   * within a short window (DIRTY_SET_WINDOW_MS): the adaptive policy's evidence, at the first pass
   * boundary, that the backlog is a set the guest rewrites faster than the next pass goes (it then
   * holds instead of shrinking as the rate says); then the 1 s estimate. Until the first estimate
   * is in (≈1.2 s into pre-copy) samples carry 0: the policy then reads QEMU's own rate alone.
   */
  private async refreshDirtyEstimate(signal: AbortSignal): Promise<void> {
    // One measurement during pre-copy (bytes/s), undefined where it does not count: 0 = not
    // measured (or a stopped guest), and the last figure is kept rather than "quiet" reported; nor
    // does one that ended after the run was aborted or left pre-copy.
    const measure = async (windowMs?: number, samplePages?: number): Promise<number | undefined> => {
      const bps = await this.estimateDirtyRate(signal, windowMs, samplePages);
      return bps > 0 && !signal.aborted && this.qemuStatus === 'active' ? bps : undefined;
    };
    let first = true;
    while (!signal.aborted && !this.postcopyStarted) {
      // Not streaming pre-copy (set-up, switch-over, a pause): wait for QEMU's next status rather
      // than a gap, so the first round begins DIRTY_RATE_FIRST_ROUND_MS after pre-copy does.
      if (this.qemuStatus !== 'active') {
        await this.nextStatus(signal);
        continue;
      }
      if (first) {
        first = false;
        await sleep(DIRTY_RATE_FIRST_ROUND_MS, undefined, { signal }).catch(() => undefined);
        continue;
      }
      const setBps = await measure(DIRTY_SET_WINDOW_MS, DIRTY_SET_SAMPLE_PAGES);
      if (setBps !== undefined) this.dirtySetBytes = Math.round((setBps * DIRTY_SET_WINDOW_MS) / 1000);
      if (signal.aborted || this.postcopyStarted || this.qemuStatus !== 'active') continue;
      const bps = await measure();
      if (bps !== undefined) this.estimatedDirty = bps;
      await sleep(DIRTY_RATE_REFRESH_GAP_MS, undefined, { signal }).catch(() => undefined);
    }
  }

  /** Resolves at QEMU's next MIGRATION status event or when `signal` aborts. */
  private nextStatus(signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      if (signal.aborted) return resolve();
      const done = (): void => {
        this.statusWaiters.delete(done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      this.statusWaiters.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  /** Records QEMU's migration status and wakes whoever waits for it to change. */
  private setQemuStatus(status: string): void {
    this.qemuStatus = status;
    for (const wake of [...this.statusWaiters]) wake();
  }

  /**
   * The source's mirrors for the destination's answer.
   * @throws FailedPreconditionError (DESTINATION_ENDPOINT_REFUSED) when the destination did not
   *   export a target for every disk
   */
  private storageFor(transfers: readonly DiskTransfer[], ready: PrepareIncomingResponse): SourceStorage {
    const nbdPort = ready.nbdPort ?? 0;
    const byId = new Map(ready.disks.map((d) => [d.id, d]));
    if (!Number.isInteger(nbdPort) || nbdPort < 1 || nbdPort > 65535 || transfers.some((t) => !byId.has(t.id))) {
      throw new FailedPreconditionError('the destination did not export a target for every LOCAL disk', { reason: 'DESTINATION_ENDPOINT_REFUSED' });
    }
    return new SourceStorage(
      this.p.vm.qmp,
      transfers.map((t) => ({ id: t.id, export: byId.get(t.id)!.export, incremental: byId.get(t.id)!.incremental, allocatedBytes: t.allocatedBytes })),
      {
        host: checkMigrationAddress(this.p.destination.migrationAddress),
        port: nbdPort,
        ...(this.p.config.tls && this.opts.tlsCredsId ? { tlsCredsId: this.opts.tlsCredsId, tlsHostname: this.opts.tlsHostname ?? 'migd-node' } : {}),
        writeBlocking: this.p.policy.storageWriteBlocking === true,
        stallMs: this.opts.storageStallMs,
        log: this.p.log,
      },
    );
  }

  /** Starts what uses the link: the LOCAL disk copy (then the stream), or the stream itself. */
  private async beginTransfer(uri: string, transfers: readonly DiskTransfer[], ready: PrepareIncomingResponse): Promise<void> {
    if (transfers.length > 0) {
      this.storage = this.storageFor(transfers, ready);
      if (this.cancelRequested) throw new CancelledError('cancelled before the storage copy started');
      await this.storage.start();
      this.p.log.info('storage copy started', { disks: this.storage.disks.map((d) => ({ id: d.id, incremental: d.incremental, allocated: d.allocatedBytes })), writeBlocking: this.p.policy.storageWriteBlocking === true });
      // The memory migration starts once every mirror is READY (in the background: StartMigration
      // answers now, and the copy can be followed and cancelled like the rest of the run).
      void this.copyThenStream(uri);
      return;
    }
    await this.beginStream(uri);
  }

  /**
   * Lets a held migration go on to its transfer (see SourceMigrationParams.holdMs). Idempotent; a
   * release that comes before the migration is held lets it through without holding.
   */
  release(): void {
    if (this.releaseAsked) return;
    this.releaseAsked = true;
    this.endHold?.();
  }

  /**
   * Where elapsed times (progress samples, actions: what policies time out on) count from: the
   * start, less the time the migration was held (a held run has not begun to migrate).
   */
  private get clockStart(): Date {
    return new Date(this.startedAt.getTime() + this.heldMs);
  }

  /**
   * Renews a held migration's hold: it now expires `holdMs` from now. The coordinator repeats
   * StartMigration (same run id, hold_ms) while the run ahead on the link streams, so a hold
   * outlives a long stream as long as its coordinator is alive, and still expires when no
   * coordinator is left to release it. A migration that is not held is left as it is.
   * @returns whether the migration was held
   */
  renewHold(holdMs: number): boolean {
    if (!this.rearmHold || holdMs <= 0) return false;
    this.rearmHold(holdMs);
    return true;
  }

  /** Whether the migration waits for {@link release} now. */
  get held(): boolean {
    return this.endHold !== undefined;
  }

  /**
   * A held migration: both ends are prepared; waits for release(), a cancel, the daemon's
   * shutdown or the hold's expiry, then starts the transfer or ends the migration; a cancel or
   * expiry removes the destination's copy in settle() (the guest never stopped here).
   */
  private async holdThenTransfer(uri: string, transfers: readonly DiskTransfer[], ready: PrepareIncomingResponse): Promise<void> {
    const { log } = this.p;
    const holdMs = this.p.holdMs ?? 0;
    try {
      if (!this.releaseAsked) {
        const since = this.now();
        await new Promise<void>((resolve, reject) => {
          const onStop = (): void => done(new CancelledError('the migration stopped while held'));
          const expire = (ms: number): NodeJS.Timeout => setTimeout(() => done(new FailedPreconditionError(`held ${ms} ms without being released or renewed`, { reason: 'HOLD_EXPIRED' })), ms);
          let timer = expire(holdMs);
          const done = (err?: Error): void => {
            clearTimeout(timer);
            this.stop.signal.removeEventListener('abort', onStop);
            this.endHold = undefined;
            this.rearmHold = undefined;
            if (err) reject(err);
            else resolve();
          };
          if (this.stop.signal.aborted) return done(new CancelledError('the migration stopped while held'));
          this.stop.signal.addEventListener('abort', onStop, { once: true });
          this.endHold = done;
          this.rearmHold = (ms: number): void => {
            clearTimeout(timer);
            timer = expire(ms);
          };
          log.info('prepared; holding the transfer until released', { holdMs });
        });
        this.heldMs = this.now() - since;
        log.info('released', { heldMs: this.heldMs });
      }
      if (this.cancelRequested) throw new CancelledError('cancelled while held');
      await this.beginTransfer(uri, transfers, ready);
    } catch (err) {
      if (this.stop.signal.aborted && !this.cancelRequested) return; // daemon shutting down: a restart fails it cleanly (adopt)
      if (this.cancelRequested && !this.streamIssued) await this.cancelled();
      else await this.fail(`the held migration did not start: ${publicMessage(err)}`, err instanceof MigdError && err.reason ? err.reason : 'START_FAILED');
    }
  }

  /** Issues QEMU's `migrate` and follows the stream. */
  private async beginStream(uri: string): Promise<void> {
    const { vm, config, log } = this.p;
    const events = vm.qmp.events({ names: ['MIGRATION', 'MIGRATION_PASS', 'STOP', 'RESUME'] });
    try {
      log.info('migration starting', { uri, capabilities: config.capabilities, tls: config.tls });
      await this.persist('streaming');
      // A cancel that came while the stream was being set up: never start it (a migrate_cancel
      // sent before `migrate` cancels nothing, and the stream would run on as if not cancelled).
      if (this.cancelRequested) throw new CancelledError('cancelled before the memory migration started');
      // Set in the same tick as `migrate` goes out: a later cancel's migrate_cancel follows it on
      // the monitor, so QEMU cancels the stream it has just started.
      this.streamIssued = true;
      await vm.qmp.execute('migrate', { uri });
    } catch (err) {
      events.close();
      throw err;
    }
    if (!this.cancelRequested) this.transition(MigrationState.MIGRATION_STATE_SETUP, `streaming to node ${this.p.destination.nodeId}`);
    void this.run(events);
  }

  /** The storage phase: every mirror READY, then the memory stream; a failure or cancel ends the run. */
  private async copyThenStream(uri: string): Promise<void> {
    const storage = this.storage!;
    const ac = new AbortController();
    this.storageCopying = ac;
    if (this.cancelRequested) ac.abort();
    const stop = (): void => ac.abort();
    this.stop.signal.addEventListener('abort', stop, { once: true });
    // A cancel that came while the mirrors were being started keeps the run CANCELLING.
    if (!this.cancelRequested) this.transition(MigrationState.MIGRATION_STATE_PREPARING, `copying ${storage.disks.length} LOCAL disk(s) (${storage.allocatedBytes} bytes allocated) to node ${this.p.destination.nodeId}; the memory migration starts when every mirror is ready`);
    try {
      await storage.waitReady(ac.signal, this.opts.progressIntervalMs, (d) => {
        const sample = ProgressSampleCodec.fromPartial({
          time: new Date(this.now()),
          elapsedMs: this.now() - this.clockStart.getTime(),
          state: this.state,
          qemuStatus: 'storage-copy',
          downtimeLimitMs: this.downtimeLimitMs,
          maxBandwidthBytesPerSec: this.maxBandwidth,
          diskTransferredBytes: d.transferredBytes,
          diskTotalBytes: d.totalBytes,
          diskRateBytesPerSec: d.rateBytesPerSec,
          storagePhase: true,
        });
        this.lastProgress = sample;
        this.updates.publish({ update: { $case: 'progress', value: sample } });
      });
      this.storageCopying = undefined;
      if (ac.signal.aborted) throw new CancelledError('storage copy cancelled');
      this.p.log.info('storage copy ready; starting the memory migration', { ms: (storage.readyAtMs ?? 0) - storage.startedAtMs });
      await this.beginStream(uri);
    } catch (err) {
      this.storageCopying = undefined;
      if (this.stop.signal.aborted && !this.cancelRequested) return; // daemon shutting down
      if (err instanceof CancelledError || this.cancelRequested) await this.cancelled();
      else await this.fail(`the storage copy failed: ${publicMessage(err)}`, err instanceof MigdError && err.reason ? err.reason : 'STORAGE_COPY_FAILED');
    } finally {
      this.stop.signal.removeEventListener('abort', stop);
    }
  }

  /**
   * The source's guest is stopped for good (completed, or post-copy): end the mirrors in sync.
   * @returns undefined when in sync (or nothing to copy), else why not
   */
  private async endStorage(): Promise<string | undefined> {
    if (!this.storage || this.storageEnded) return undefined;
    try {
      await this.storage.finish();
      this.storageEnded = true;
      this.p.log.info('storage mirrors ended in sync', { bytes: this.storage.finalTransferredBytes });
      // The guest is stopped here for good: the images hold the switch-over state. Digested while
      // the handover goes on (it costs no downtime here).
      this.sourceDigests = this.digestDisks(new Set(this.storage.disks.map((d) => d.id)));
      return undefined;
    } catch (err) {
      this.p.log.error('storage mirrors did not end in sync', { err });
      return publicMessage(err);
    }
  }

  /** Digests of the copied disks the guest's workload does not verify itself (never throws). */
  private async digestDisks(copied: ReadonlySet<string>): Promise<DiskDigest[]> {
    const { vm } = this.p;
    const out: DiskDigest[] = [];
    for (const d of vm.spec.disks) {
      if (d.storage !== StorageMode.STORAGE_MODE_LOCAL || !copied.has(d.id) || d.id === vm.spec.workload?.diskId) continue;
      try {
        const r = await imageDigest(d.path, d.format === DiskFormat.DISK_FORMAT_QCOW2 ? 'qcow2' : 'raw', { maxDataBytes: DIGEST_MAX_BYTES });
        out.push({ diskId: d.id, sha256: r.sha256, dataBytes: r.dataBytes, ms: r.ms, error: '' });
      } catch (err) {
        out.push({ diskId: d.id, sha256: '', dataBytes: 0, ms: 0, error: (err as Error).message });
      }
    }
    return out;
  }

  /** Post-copy with LOCAL disks: once the mirrors ended, the destination may resume the guest. */
  private async storageSwitchedOver(): Promise<void> {
    const why = await this.endStorage();
    if (why !== undefined) {
      // The guest can no longer run here, and its disks there are not in sync: lost.
      await this.fail(`the storage copy did not end in sync at the switch to post-copy: ${why}`, 'STORAGE_NOT_SYNCED');
      return;
    }
    await retry(() => this.p.peer.resumeIncoming({ runId: this.runId }, { deadlineMs: 10_000 }), {
      deadlineMs: 60_000,
      retryable: (err) => isTransient(err) || (err instanceof MigdError && (err.code === 'INTERNAL' || err.reason === 'NOT_IN_POSTCOPY')),
    }).catch((err: unknown) => this.p.log.error('could not resume the guest on the destination after post-copy started', { err }));
  }

  private async run(events: AsyncIterable<QmpEvent> & { close?: () => void }): Promise<void> {
    const { log } = this.p;
    const signal = this.stop.signal;
    void this.pollProgress(signal);
    void this.forwardGuest(signal);
    void this.pollDestinationCpu(signal);
    if (this.p.policy.kind === PolicyKind.POLICY_KIND_ADAPTIVE) void this.refreshDirtyEstimate(signal);
    let timer: NodeJS.Timeout | undefined;
    if (this.p.config.postcopy.afterMs !== undefined) {
      timer = setTimeout(() => void this.startPostcopy('policy', `post-copy after ${this.p.config.postcopy.afterMs} ms`).catch(() => undefined), this.p.config.postcopy.afterMs);
    }
    try {
      for await (const ev of events) {
        if (ev.event === 'MIGRATION_PASS') {
          this.pass = Number((ev.data as { pass?: number }).pass ?? this.pass);
          this.wakePoll();
          const n = this.p.config.postcopy.afterPasses;
          // MIGRATION_PASS announces the start of pass `pass`: N passes are complete at N+1.
          if (n !== undefined && this.pass >= n + 1 && !this.postcopyStarted) {
            await this.startPostcopy('policy', `post-copy after ${n} pass(es)`).catch((err: unknown) => log.warn('start post-copy failed', { err }));
          }
          continue;
        }
        if (ev.event === 'STOP' || ev.event === 'RESUME') {
          log.debug('source runstate event', { event: ev.event });
          if (ev.event === 'STOP') this.stoppedAtUs = ev.timestampUs;
          continue;
        }
        const status = String((ev.data as { status?: string }).status ?? '');
        this.setQemuStatus(status);
        if (status === 'completed') {
          this.completedAtUs = ev.timestampUs;
          await this.complete();
          return;
        }
        if (status === 'failed') {
          const info = (await this.p.vm.qmp.execute('query-migrate').catch(() => ({}))) as QmpMigrationInfo;
          this.qemuError = String(info['error-desc'] ?? '');
          log.warn('QEMU reported the migration failed', { errorDesc: info['error-desc'] ?? null, cancelRequested: this.cancelRequested });
          if (this.cancelRequested) {
            // A cancel QEMU could not finish by itself ends as failed once unstickCancel yanked
            // its channels: the stream was cancelled all the same, and settles as a cancel.
            await this.cancelled();
            return;
          }
          await this.fail("QEMU reported the migration failed (the source node's log has QEMU's reason)", 'QEMU_MIGRATION_FAILED');
          return;
        }
        if (status === 'cancelled') {
          await this.cancelled();
          return;
        }
        const st = stateFromQemuStatus(status);
        if (st !== undefined && st !== this.state && !this.recovering) this.transition(st, `QEMU status ${status}`);
        // Post-copy stopped the guest here for good: end the mirrors, then let the destination run it.
        if (status === 'postcopy-active' && this.storage && !this.storageEnded) await this.storageSwitchedOver();
        if (status === 'postcopy-paused' && !this.recovering) void this.recover('QEMU paused post-copy by itself (connection lost)');
      }
      // The event stream ended: QEMU went away or the QMP connection broke.
      await this.fail('the source QEMU or its QMP connection went away during the migration', 'SOURCE_LOST');
    } catch (err) {
      log.warn('migration monitor error', { err });
      await this.fail(`migration monitor error: ${publicMessage(err)}`, 'MONITOR_ERROR');
    } finally {
      if (timer) clearTimeout(timer);
      events.close?.();
    }
  }

  private async pollProgress(signal: AbortSignal): Promise<void> {
    const stall = new StallDetector(this.opts.postcopyStallMs);
    // Post-copy asked for while QEMU stays in pre-copy: the switch waits for its migration thread.
    const switchWait = new StallDetector(this.opts.postcopySwitchStuckMs);
    let answeredAt = this.now();
    // At most half the switch's bound, so an unanswered monitor is seen within it.
    const queryTimeoutMs = Math.min(5000, Math.max(500, this.opts.postcopySwitchStuckMs / 2));
    while (!signal.aborted) {
      try {
        const info = (await this.p.vm.qmp.execute('query-migrate', undefined, { signal, timeoutMs: queryTimeoutMs })) as QmpMigrationInfo;
        if (signal.aborted) break;
        answeredAt = this.now();
        if (info.status === 'completed') break;
        const sample = progressSample(info, {
          now: new Date(this.now()),
          startedAt: this.clockStart,
          state: this.state,
          downtimeLimitMs: this.downtimeLimitMs,
          maxBandwidthBytesPerSec: this.maxBandwidth,
          sourceCpuSeconds: Math.max(0, (await this.p.vm.cpuSeconds()) - this.sourceCpuStart),
          destinationCpuSeconds: this.destinationCpu,
          estimatedDirtyBytesPerSec: this.estimatedDirty,
          dirtySetBytes: this.dirtySetBytes,
          dirtySetWindowMs: DIRTY_SET_WINDOW_MS,
        });
        if (this.storage && !this.storageEnded) {
          // The mirrors keep the targets in sync with the guest's writes during the memory stream.
          const d = await this.storage.progress().catch(() => undefined);
          if (d) Object.assign(sample, { diskTransferredBytes: d.transferredBytes, diskTotalBytes: d.totalBytes, diskRateBytesPerSec: d.rateBytesPerSec, storagePhase: false });
        }
        this.maxThrottle = Math.max(this.maxThrottle, sample.throttlePct);
        this.lastProgress = sample;
        this.updates.publish({ update: { $case: 'progress', value: sample } });
        if (info.status === 'postcopy-active' && !this.recovering) {
          if (stall.update(sample.transferredBytes, this.now())) {
            void this.recover(`no post-copy progress for ${this.opts.postcopyStallMs} ms: link presumed down`);
          }
        } else {
          stall.reset(this.now());
        }
        if (info.status === 'active' && this.postcopyStarted && !this.recovering && !this.switchUnstuck && !isTerminal(this.state)) {
          if (switchWait.update(sample.transferredBytes, this.now())) await this.unstickPrecopyBeforeSwitch();
        } else {
          switchWait.reset(this.now());
        }
      } catch (err) {
        if (signal.aborted) break;
        this.p.log.debug('query-migrate failed', { err });
        const silentMs = this.now() - answeredAt;
        if (this.postcopyStarted && !this.recovering && !this.switchUnstuck && !isTerminal(this.state) && silentMs >= this.opts.postcopySwitchStuckMs) {
          await this.unstickPostcopySwitch(silentMs);
        }
      }
      await this.pollWait(signal);
    }
  }

  /**
   * Progress is read every `progressIntervalMs`, and at once when a pass begins (QEMU's
   * MIGRATION_PASS event follows its bitmap sync, so query-migrate then already reports the new
   * backlog and dirty rate). A policy deciding on the coordinator sees a pass boundary when it
   * happens, not up to one interval later: post-copy after one pass, run on this node, switches
   * on the event itself, and the adaptive policy's verdict at the same boundary came one sample
   * (250 ms) behind it in every lab run on load A (docs/lab/policies-720-criterion-dirtyset).
   */
  private async pollWait(signal: AbortSignal): Promise<void> {
    if (this.pollWakePending) {
      this.pollWakePending = false;
      return;
    }
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        this.pollWake = undefined;
        resolve();
      };
      const timer = setTimeout(done, this.opts.progressIntervalMs);
      signal.addEventListener('abort', done, { once: true });
      this.pollWake = done;
    });
  }

  /** See pollWait. */
  private wakePoll(): void {
    if (this.pollWake) this.pollWake();
    else this.pollWakePending = true;
  }

  /**
   * The source guest's samples, from `recentMs` before the start of the run (its baseline): kept
   * for the first watcher until one comes (see unwatchedGuest), published after; none while the
   * run is held (its guest is not migrating: those are no run's samples), at most
   * MAX_UNWATCHED_GUEST kept (the newest).
   */
  private async forwardLocalGuest(signal: AbortSignal, recentMs = 0): Promise<void> {
    try {
      for await (const s of this.p.vm.guestSamples(signal, recentMs)) if (!this.endHold) this.publishGuest(s);
    } catch {
      // the stream ends with the migration or with the VM
    }
  }

  /** The guest's samples on the destination, once it runs there (the stream has begun). */
  private async forwardGuest(signal: AbortSignal): Promise<void> {
    try {
      for await (const m of this.p.peer.watchGuest({ name: this.p.vm.name, includeConsole: false }, { signal })) {
        if (m.item?.$case === 'sample') this.publishGuest(m.item.value);
      }
    } catch {
      // the stream ends with the migration or with the VM
    }
  }

  /** One guest sample to the watchers, or kept for the first one while none came (see unwatchedGuest). */
  private publishGuest(s: GuestPerfSample): void {
    const pending = this.unwatchedGuest;
    if (!pending) {
      this.updates.publish({ update: { $case: 'guest', value: s } });
      return;
    }
    pending.push(s);
    if (pending.length > MAX_UNWATCHED_GUEST) pending.shift();
  }

  private async pollDestinationCpu(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const vm = await this.p.peer.getVm({ name: this.p.vm.name }, { deadlineMs: 3000, signal }).catch(() => undefined);
      if (vm?.vm) {
        this.destinationCpuStart ??= vm.vm.qemuCpuSeconds;
        this.destinationCpu = Math.max(0, vm.vm.qemuCpuSeconds - this.destinationCpuStart);
      }
      await sleep(1000, undefined, { signal }).catch(() => undefined);
    }
  }

  /** Changes limits live. @throws FailedPreconditionError when not running or auto-converge was not armed */
  async adjust(change: { downtimeLimitMs?: number; maxBandwidthBytesPerSec?: number; enableAutoConverge?: boolean }, actor: string, reason: string): Promise<void> {
    this.requireRunning('adjust');
    const params: Record<string, unknown> = {};
    if (change.downtimeLimitMs !== undefined) params['downtime-limit'] = change.downtimeLimitMs;
    if (change.maxBandwidthBytesPerSec !== undefined) params['max-bandwidth'] = change.maxBandwidthBytesPerSec || Number.MAX_SAFE_INTEGER;
    if (change.enableAutoConverge) {
      const ac = this.p.config.autoConverge;
      if (!this.p.config.capabilities['auto-converge']) {
        throw new FailedPreconditionError('auto-converge was not enabled when the migration started, and QEMU cannot enable capabilities during a migration', { reason: 'AUTO_CONVERGE_NOT_ARMED' });
      }
      params['cpu-throttle-initial'] = ac.initialPct;
      params['cpu-throttle-increment'] = ac.incrementPct;
      params['max-cpu-throttle'] = ac.maxPct;
    }
    if (Object.keys(params).length === 0) return;
    await this.p.vm.qmp.execute('migrate-set-parameters', params);
    if (change.downtimeLimitMs !== undefined) {
      this.downtimeLimitMs = change.downtimeLimitMs;
      this.action(PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME, change.downtimeLimitMs, actor, reason);
    }
    if (change.maxBandwidthBytesPerSec !== undefined) {
      this.maxBandwidth = change.maxBandwidthBytesPerSec;
      this.action(PolicyActionKind.POLICY_ACTION_KIND_SET_BANDWIDTH, change.maxBandwidthBytesPerSec, actor, reason);
    }
    if (change.enableAutoConverge) this.action(PolicyActionKind.POLICY_ACTION_KIND_ENABLE_AUTO_CONVERGE, 0, actor, reason);
  }

  /** Switches to post-copy now. @throws FailedPreconditionError when post-copy is not enabled */
  async startPostcopy(actor: string, reason: string): Promise<void> {
    this.requireRunning('start post-copy');
    if (!this.p.config.postcopy.enabled) throw new FailedPreconditionError('post-copy is not enabled in this migration\'s policy', { reason: 'POSTCOPY_NOT_ENABLED' });
    if (this.postcopyStarted) return;
    this.postcopyStarted = true;
    // Recorded first: from here on the source must never resume this guest, even after a restart.
    await this.persist('postcopy');
    await this.p.vm.qmp.execute('migrate-start-postcopy');
    this.action(PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY, 0, actor, reason);
  }

  /** Post-copy when enabled, otherwise pauses the guest so the migration completes. */
  async forceComplete(actor: string, reason: string): Promise<void> {
    this.requireRunning('force-complete');
    if (this.p.config.postcopy.enabled) {
      await this.startPostcopy(actor, reason);
      return;
    }
    if (this.pausedGuest) return;
    this.pausedGuest = true;
    await this.p.vm.qmp.execute('stop');
    this.action(PolicyActionKind.POLICY_ACTION_KIND_PAUSE_GUEST, 0, actor, reason);
  }

  /** Cancels. @throws FailedPreconditionError in post-copy (the guest already runs on the destination) */
  async cancel(actor: string, reason: string): Promise<void> {
    if (isTerminal(this.state)) throw new FailedPreconditionError(`migration ${this.runId} has already finished`, { reason: 'ALREADY_FINISHED' });
    if (this.postcopyStarted || this.state === MigrationState.MIGRATION_STATE_POSTCOPY || this.state === MigrationState.MIGRATION_STATE_POSTCOPY_PAUSED) {
      throw new FailedPreconditionError('cannot cancel a migration in post-copy: the guest already runs on the destination', { reason: 'POSTCOPY_NOT_CANCELLABLE' });
    }
    this.action(PolicyActionKind.POLICY_ACTION_KIND_ABORT, 0, actor, reason);
    this.transition(MigrationState.MIGRATION_STATE_CANCELLING, reason || 'cancel requested');
    this.cancelRequested = true;
    if (!this.streamIssued) {
      // The memory stream has not started: the step under way — start(), the storage phase, or
      // the set-up of the stream — ends the run (mirrors cancelled, the destination's QEMU,
      // exports and images removed with its copy), and QEMU has no migration to cancel.
      this.storageCopying?.abort();
      this.endHold?.(new CancelledError('cancelled while held'));
      return;
    }
    // Watched from the start: migrate_cancel itself may not be answered (see unstickCancel).
    void this.unstickCancel();
    await this.p.vm.qmp.execute('migrate_cancel', undefined, { timeoutMs: this.opts.cancelStuckMs * 2 }).catch((err: unknown) => {
      // Not answered in time: QEMU's main loop is held by the migration thread; unstickCancel
      // shuts the channels down out of band, and the cancel or failure that follows ends the run.
      this.p.log.warn('migrate_cancel was not answered; the migration channels will be shut down', { err: (err as Error).message });
    });
  }

  /**
   * A cancel that QEMU does not finish: its stream threads are blocked on a link that carries
   * nothing (cut without a reset), and QEMU waits for them. `yank` shuts the migration's sockets
   * down, so the threads return and the cancel (or a failure) completes; then settle() decides
   * where the guest runs as after any cancel. Repeated while the cancel stays stuck.
   *
   * In switch-over (`device`) the migration thread holds QEMU's main lock while it writes the
   * device state and syncs the multifd channels, so no in-band command is answered — not
   * query-migrate, not migrate_cancel — until the link or a yank frees it. So an unanswered
   * query-migrate counts as stuck too, and `yank` goes out of band where QEMU allows it.
   */
  private async unstickCancel(): Promise<void> {
    const { vm, log } = this.p;
    const signal = this.stop.signal;
    for (let attempt = 1; !signal.aborted && !isTerminal(this.state); attempt++) {
      await sleepFor(this.opts.cancelStuckMs, undefined, { signal }).catch(() => undefined);
      if (signal.aborted || isTerminal(this.state)) return;
      const st = (await vm.qmp.execute('query-migrate', undefined, { timeoutMs: Math.min(5000, this.opts.cancelStuckMs) }).catch(() => undefined)) as QmpMigrationInfo | undefined;
      if (signal.aborted || isTerminal(this.state)) return;
      if (st && st.status !== 'cancelling' && st.status !== 'active' && st.status !== 'device') return;
      log.warn('QEMU has not finished the cancel; shutting the migration channels down (yank)', { attempt, status: st?.status ?? 'no answer (main loop held)', afterMs: attempt * this.opts.cancelStuckMs });
      await this.yankMigrationChannels();
    }
  }

  /** Shuts the migration's sockets down with QMP `yank`, out of band where QEMU allows it; a failure is logged. */
  private async yankMigrationChannels(): Promise<void> {
    const { vm, log } = this.p;
    await vm.qmp.execute('yank', { instances: [{ type: 'migration' }] }, { oob: vm.qmp.oobEnabled, timeoutMs: 5000 }).catch((err: unknown) => log.warn('yank of the migration channels failed', { err: (err as Error).message }));
  }

  /**
   * Ends a stream that is blocked on a dead link for good: yank, then abort QEMU's TCP
   * connections to the destination in the kernel (`ss -K`). yank alone does not reach a channel
   * QEMU has not registered yet: with post-copy preempt over TLS the switch opens the preempt
   * channel and runs its TLS handshake in QEMU's main loop on a blocking socket, so a link that
   * dies between that channel's connect and the destination's answer holds the main loop, the
   * monitor and the vCPUs in a read until TCP gives up, many minutes later (QEMU 10.0.2; seen
   * in gdb). A connect still in SYN-SENT on the dead link (about a minute of retries) ends the
   * same way. Either channel's error fails the switch before the guest stopped, and QEMU resumes
   * it on the source; the yank fails the main stream as before.
   */
  private async abortMigrationStream(): Promise<void> {
    const { vm, log, destination } = this.p;
    await this.yankMigrationChannels();
    // The switch streams over the migration network (recovery alone may use the management one).
    const peers = [destination.migrationAddress];
    try {
      const sockets = await this.opts.destroySockets(vm.pid, peers);
      log.warn("aborted QEMU's migration connections to the destination (ss -K)", { sockets, peers });
    } catch (err) {
      log.warn("could not abort QEMU's migration connections (ss -K)", { err: (err as Error).message, peers });
    }
  }

  private requireRunning(what: string): void {
    if (isTerminal(this.state) || this.state === MigrationState.MIGRATION_STATE_VERIFYING || this.state === MigrationState.MIGRATION_STATE_CANCELLING) {
      throw new FailedPreconditionError(`cannot ${what}: migration ${this.runId} is ${MigrationState[this.state]}`, { reason: 'NOT_RUNNING' });
    }
  }

  /**
   * The switch to post-copy hangs: QEMU set postcopy-active, stopped the guest and, holding its
   * main lock, writes the rest of pre-copy and the device-state package into a stream that
   * carries nothing (link cut without a reset). No in-band command is answered, so neither the
   * stall detector nor recovery ever sees a status, and a cancel is refused in post-copy: the
   * guest would stay paused on both ends until TCP gives up, many minutes later. migrate-pause
   * (out of band) shuts the stream down: QEMU fails the switch and resumes the guest on the
   * source itself; settle() then removes the destination's copy, which never ran (QEMU there
   * runs the guest only from the whole package). yank is the fallback.
   */
  private async unstickPostcopySwitch(silentMs: number): Promise<void> {
    const { vm, log } = this.p;
    this.switchUnstuck = true;
    log.warn("QEMU's monitor has not answered since post-copy was asked for: the switch is blocked on the stream; shutting it down (migrate-pause, out of band)", { silentMs });
    await vm.qmp.execute('migrate-pause', undefined, { oob: vm.qmp.oobEnabled, timeoutMs: 5000 }).catch(async (err: unknown) => {
      log.warn('migrate-pause refused; yanking the migration channels and aborting their connections', { err: (err as Error).message });
      await this.abortMigrationStream();
    });
  }

  /**
   * The switch to post-copy never begins: post-copy was asked for, yet QEMU stays in pre-copy
   * (`active`) and sends nothing. migrate-start-postcopy only sets a flag that QEMU's migration
   * thread reads between two writes, and the thread is blocked in a write of pre-copy pages into
   * a stream that carries nothing (the link cut without a reset). The monitor answers, so
   * unstickPostcopySwitch's trigger never fires; a cancel is refused once post-copy was asked for,
   * so the coordinator's progress timeout cannot end the run either: it stayed in pre-copy until
   * TCP gave up, about 15 minutes later. The guest still runs here and the destination has no
   * device state (QEMU stops the guest and sends it only once the switch begins): yanking the
   * channels fails the write, QEMU fails the migration with the guest running, and settle()
   * removes the destination's copy (settleFailedSwitch). migrate-pause is refused outside
   * post-copy, so the channels are yanked at once.
   */
  private async unstickPrecopyBeforeSwitch(): Promise<void> {
    this.switchUnstuck = true;
    this.p.log.warn('post-copy was asked for, but QEMU is still in pre-copy and has sent nothing since: its stream is blocked on the link; yanking the migration channels', {
      stuckMs: this.opts.postcopySwitchStuckMs,
    });
    await this.abortMigrationStream();
  }

  /**
   * Post-copy recovery: pause both ends, then repeatedly ask the destination to listen on a fresh
   * port (migrate-recover, out-of-band) and resume the source to it, with backoff, until the
   * stream flows again or recoveryTimeoutMs passes.
   *
   * The destination is paused first, and the source only once the destination has answered: the
   * source's "postcopy-active" does not mean the destination is in post-copy. Its switch (the
   * device-state package, queued behind the last pre-copy data) may still be in flight on the cut
   * link. Shutting the source's stream down then delivers the package followed by the end of the
   * stream once the link is back, and the incoming QEMU fails on it instead of pausing whenever
   * that end arrives before it ran the package's RUN command (savevm.c: only a destination in
   * POSTCOPY_INCOMING_RUNNING pauses; its listen thread exits QEMU otherwise) — the guest was then
   * beyond recovery. A destination that is not in post-copy yet refuses the pause
   * (NOT_IN_POSTCOPY) and the attempt is retried: the stream, still open, carries on when the
   * link returns. A destination whose QEMU is gone (INCOMING_QEMU_GONE) ends the recovery at once.
   */
  private async recover(reason: string): Promise<void> {
    if (this.recovering || isTerminal(this.state)) return;
    this.recovering = true;
    // Every wait below ends as soon as the migration stops (e.g. the daemon shuts down).
    const sleep = (ms: number): Promise<void> => sleepFor(ms, undefined, { signal: this.stop.signal });
    const { vm, peer, log } = this.p;
    const deadline = this.now() + this.opts.recoveryTimeoutMs;
    this.action(PolicyActionKind.POLICY_ACTION_KIND_RECOVER, 0, 'node', reason);
    this.transition(MigrationState.MIGRATION_STATE_POSTCOPY_PAUSED, reason);
    try {
      const status = async (): Promise<string> => String(((await vm.qmp.execute('query-migrate', undefined, { timeoutMs: 5000 })) as QmpMigrationInfo).status);
      const management = this.destinationManagement();
      const fallbackHost = this.recoveryFallbackHost(management);
      const recoveryStart = this.now();
      const pauseSource = async (): Promise<void> => {
        if ((await status()) === 'postcopy-active') await vm.qmp.execute('migrate-pause', undefined, { oob: vm.qmp.oobEnabled, timeoutMs: 5000 }).catch((err: unknown) => log.warn('migrate-pause on source', { err }));
      };
      const attemptRecovery = async (attempt: number): Promise<void> => {
        let network: Awaited<ReturnType<typeof this.recoveryNetwork>>;
        try {
          network = await this.recoveryNetwork(management?.port, fallbackHost);
          await peer.pauseIncoming({ runId: this.runId }, { deadlineMs: 5000 });
        } catch (err) {
          // The destination could not be paused: past the grace its switch is not coming (the
          // link is down for good), so the source stops streaming into it (see the option) —
          // unless its node cannot reach its QEMU at all (INCOMING_QMP_UNREACHABLE: a restarted
          // daemon whose QEMU, held by a page wait, takes no new QMP session). Nothing can pause
          // or recover that copy then, and the open stream is its one way out: TCP carries on
          // when the link returns. A source pause would leave it waiting for a migrate-recover
          // that can never be sent.
          const reason = err instanceof MigdError ? err.reason : undefined;
          if (reason !== 'INCOMING_QEMU_GONE' && reason !== 'INCOMING_QMP_UNREACHABLE' && this.now() - recoveryStart >= this.opts.recoverySourcePauseGraceMs) {
            log.warn('the destination could not be paused within the grace; pausing the source', { attempt, err: (err as Error).message });
            await pauseSource().catch(() => undefined);
          }
          throw err;
        }
        // Only now the source (see above): the destination is in post-copy and paused.
        await pauseSource();
        const reply = await peer.recoverIncoming({ runId: this.runId, managementNetwork: network === 'management' }, { deadlineMs: 10_000 });
        // The source builds the URI itself, on the destination's registered address of that network.
        const uri = streamUri(network === 'management' ? fallbackHost! : this.p.destination.migrationAddress, reply);
        // wait for the source to be paused before resuming
        for (let i = 0; i < 50 && (await status()) !== 'postcopy-paused'; i++) await sleep(100);
        log.info('post-copy recovery: resuming', { attempt, network, uri });
        this.transition(MigrationState.MIGRATION_STATE_POSTCOPY_RECOVERING, `attempt ${attempt}: resuming over the ${network} network`);
        await vm.qmp.execute('migrate', { uri, resume: true });
        // Did it take? Recovery reaches postcopy-active (or completes); a dead link falls back
        // to postcopy-paused, or hangs in recover-setup until we pause it again.
        const until = this.now() + 5000;
        let s = await status();
        while (this.now() < until && (s === 'postcopy-recover-setup' || s === 'postcopy-recover')) {
          await sleep(200);
          s = await status();
        }
        if (s === 'postcopy-active' || s === 'completed') {
          this.recoveries++;
          this.transition(MigrationState.MIGRATION_STATE_POSTCOPY, `recovered after ${attempt} attempt(s), over the ${network} network`);
          return;
        }
        if (s !== 'postcopy-paused') await vm.qmp.execute('migrate-pause', undefined, { oob: vm.qmp.oobEnabled, timeoutMs: 5000 }).catch(() => undefined);
        throw new UnavailableError(`the stream did not resume (QEMU status ${s})`, { reason: 'STREAM_NOT_RESUMED' });
      };
      await retry(attemptRecovery, {
        initialMs: 500,
        maxMs: 5000,
        jitter: 0,
        deadlineMs: Math.max(0, deadline - this.now()),
        now: this.now,
        // Every wait ends as soon as the migration stops (e.g. the daemon shuts down).
        signal: this.stop.signal,
        // A destination whose incoming QEMU is gone cannot take a resumed stream, ever.
        retryable: (err) => !(err instanceof MigdError && err.reason === 'INCOMING_QEMU_GONE'),
        onRetry: (err, attempt, backoff) => {
          log.info('post-copy recovery attempt failed; retrying', { attempt, err: (err as Error).message, backoff });
          this.transition(MigrationState.MIGRATION_STATE_POSTCOPY_PAUSED, `recovery attempt ${attempt} failed (${publicMessage(err)}); retrying in ${backoff} ms`);
        },
      }).catch((err: unknown) => {
        if (this.stop.signal.aborted || (err instanceof MigdError && err.reason === 'INCOMING_QEMU_GONE')) throw err;
        throw new Error(`post-copy recovery gave up after ${this.opts.recoveryTimeoutMs} ms: ${(err as Error).message}`, { cause: err });
      });
    } catch (err) {
      if (this.stop.signal.aborted) return;
      this.p.log.warn('post-copy recovery failed', { err });
      await this.fail(`post-copy recovery failed: ${publicMessage(err)}`, 'RECOVERY_FAILED');
    } finally {
      this.recovering = false;
    }
  }

  /** The destination's registered management host and port; undefined when unusable. */
  private destinationManagement(): { host: string; port: number } | undefined {
    try {
      return managementEndpointOf(this.p.destination.managementAddress);
    } catch {
      return undefined;
    }
  }

  /**
   * The destination's management host, where post-copy recovery may go when the migration
   * network stays down: only for a TLS stream (QEMU keeps tls-creds, tls-hostname and the
   * destination's tls-authz for the resumed channels) to a destination with a registered
   * management address other than its migration address.
   */
  private recoveryFallbackHost(management: { host: string } | undefined): string | undefined {
    if (!this.opts.recoveryOverManagement || !this.p.config.tls || !management) return undefined;
    return management.host === this.p.destination.migrationAddress ? undefined : management.host;
  }

  /**
   * The network of the next recovery attempt: the migration network when the destination's
   * migration address answers a connect to its management port (accepted or refused), else the
   * management network when there is one to fall back to. Without a fallback the migration
   * network is tried all the same (an unanswered probe costs recoveryProbeMs only: a firewall may
   * drop the probe's port).
   */
  private async recoveryNetwork(managementPort: number | undefined, fallbackHost: string | undefined): Promise<'migration' | 'management'> {
    if (!managementPort) return 'migration';
    const ok = await this.opts.answers(this.p.destination.migrationAddress, managementPort, this.opts.recoveryProbeMs);
    if (ok) return 'migration';
    this.p.log.warn("post-copy recovery: the destination's migration address does not answer", { address: this.p.destination.migrationAddress, fallback: fallbackHost ?? null });
    return fallbackHost === undefined ? 'migration' : 'management';
  }

  /**
   * A restarted daemon takes over a migration its QEMU may still be carrying out, from the
   * persisted record and QEMU's own `query-migrate`: completed → hand over; failed or cancelled →
   * settle ownership as after any failure; never started → fail cleanly; still running (pre-copy
   * or post-copy) → follow it to its end as if the daemon had never stopped.
   */
  async adopt(): Promise<void> {
    const { vm, log } = this.p;
    this.p.host.setMigration(vm.name, this.runId);
    if (this.record.phase === 'postcopy') this.postcopyStarted = true;
    const events = vm.qmp.events({ names: ['MIGRATION', 'MIGRATION_PASS', 'STOP', 'RESUME'] });
    let info: QmpMigrationInfo;
    try {
      info = (await vm.qmp.execute('query-migrate', undefined, { timeoutMs: 5000 })) as QmpMigrationInfo;
    } catch (err) {
      events.close?.();
      this.p.log.warn('could not read the migration from QEMU after a daemon restart', { err });
      await this.fail(`could not read the migration from QEMU after a daemon restart: ${publicMessage(err)}`, 'SOURCE_LOST');
      return;
    }
    const status = String(info.status ?? 'none');
    this.setQemuStatus(status);
    this.streamIssued = status !== 'none';
    if (status.startsWith('postcopy')) this.postcopyStarted = true;
    log.info('adopted migration after a daemon restart', { phase: this.record.phase, qemu: status });
    const adopted = `the node daemon restarted; QEMU's migration is ${status}`;
    switch (status) {
      case 'completed':
        events.close?.();
        this.transition(MigrationState.MIGRATION_STATE_VERIFYING, adopted);
        void this.complete();
        return;
      case 'failed':
        events.close?.();
        this.p.log.warn('QEMU reported the migration failed', { errorDesc: info['error-desc'] ?? null });
        void this.fail(`${adopted}: QEMU reported the migration failed`, 'QEMU_MIGRATION_FAILED');
        return;
      case 'cancelled':
        events.close?.();
        void this.cancelled();
        return;
      case 'none':
        events.close?.();
        // A restart during the storage phase: the mirrors of the previous daemon go first.
        await abandonMirrors(vm.qmp, log);
        void this.fail('the node daemon restarted before QEMU\'s migration started', 'SOURCE_RESTARTED');
        return;
      default: {
        const st = stateFromQemuStatus(status);
        if (st !== undefined) this.transition(st, adopted);
        void this.forwardLocalGuest(this.stop.signal);
        void this.run(events);
        if (status === 'postcopy-paused') void this.recover('adopted a paused post-copy migration after a daemon restart');
      }
    }
  }

  /** Persists the phase (writes are serialised; the latest wins). */
  private persist(phase: SourcePhase, outcome?: MigrationInfo): Promise<void> {
    this.record.phase = phase;
    if (outcome) this.record.outcome = MigrationInfoCodec.toJSON(outcome);
    const snapshot = { ...this.record };
    this.persisting = this.persisting.then(() => this.p.records.write(snapshot)).catch((err: unknown) => this.p.log.error('could not persist the migration phase', { err, phase }));
    return this.persisting;
  }

  /**
   * Asks the destination to remove its copy, retrying while it does not answer, until `deadline`.
   * @returns 'gone' (the destination has no copy of this run any more: proof the source may
   *   resume), 'runs-there' (the guest already runs on the destination), or 'unknown'
   */
  private async abortDestination(deadline: number): Promise<'gone' | 'runs-there' | 'unknown'> {
    try {
      await retry(() => this.p.peer.abortIncoming({ runId: this.runId }, { deadlineMs: 10_000 }), {
        deadlineMs: Math.max(0, deadline - this.now()),
        retryable: (err) => isTransient(err) || (err instanceof MigdError && err.code === 'INTERNAL'),
        onRetry: (err, attempt) => this.p.log.info('destination did not answer the abort; retrying', { attempt, err: (err as Error).message }),
      });
      return 'gone';
    } catch (err) {
      if (err instanceof MigdError && err.reason === 'GUEST_RUNS_HERE') return 'runs-there';
      this.p.log.warn('could not make sure the destination copy is gone', { err: (err as Error).message });
      return 'unknown';
    }
  }

  /**
   * Hands the VM over: ConfirmIncoming, retried (idempotent on the destination) until it answers.
   * A destination that says it has nothing to take over (its QEMU died, or never completed) is
   * asked to remove its copy, which proves the source may resume.
   */
  private async handOver(timeoutMs = this.opts.handoverTimeoutMs): Promise<{ kind: 'confirmed'; res: ConfirmIncomingResponse } | { kind: 'refused'; why: string } | { kind: 'unresolved'; why: string }> {
    const deadline = this.now() + timeoutMs;
    try {
      const res = await retry(
        () => this.p.peer.confirmIncoming({ runId: this.runId, timeoutMs: this.opts.confirmTimeoutMs, resume: true }, { deadlineMs: this.opts.confirmTimeoutMs + 10_000 }),
        {
          deadlineMs: timeoutMs,
          retryable: (err) => isTransient(err) || (err instanceof MigdError && err.code === 'INTERNAL'),
          onRetry: (err, attempt) => this.p.log.info('destination did not answer the handover; retrying', { attempt, err: (err as Error).message }),
        },
      );
      return { kind: 'confirmed', res };
    } catch (err) {
      const why = publicMessage(err);
      if (err instanceof MigdError && (err.code === 'NOT_FOUND' || err.reason === 'NOT_HANDED_OVER')) {
        const r = await this.abortDestination(deadline);
        if (r === 'gone') return { kind: 'refused', why };
        if (r === 'runs-there') return { kind: 'confirmed', res: ConfirmIncomingResponse.fromPartial({ alive: false, pid: 0, pagesVerifiedAfter: 0 }) };
      }
      return { kind: 'unresolved', why };
    }
  }

  /** No handover (the destination's disks are not in sync): its copy must go before the source resumes. */
  private async refuseHandover(why: string): Promise<{ kind: 'refused'; why: string } | { kind: 'unresolved'; why: string }> {
    if (this.postcopyStarted) return { kind: 'refused', why };
    const r = await this.abortDestination(this.now() + this.opts.handoverTimeoutMs);
    return r === 'gone' ? { kind: 'refused', why } : { kind: 'unresolved', why };
  }

  private async complete(): Promise<void> {
    const { vm, log } = this.p;
    await this.persist('completed');
    this.transition(MigrationState.MIGRATION_STATE_VERIFYING, 'QEMU reported completion; handing the VM over and checking the guest on the destination');
    // The final figures are read while the VM is handed over: nothing in the handover waits for them.
    const figures = Promise.all([vm.qmp.execute('query-migrate').catch(() => ({})) as Promise<QmpMigrationInfo>, vm.cpuSeconds().catch(() => this.sourceCpuStart)]);
    // The guest is stopped here for good: the mirrors drain and end before the destination runs it.
    const unsynced = await this.endStorage();
    const handover = unsynced === undefined ? await this.handOver() : await this.refuseHandover(`the storage copy did not end in sync: ${unsynced}`);
    const confirm = handover.kind === 'confirmed' ? handover.res : undefined;
    // The destination's CPU figure is asked for while the source copy goes (after its disks'
    // digests are taken: the comparison needs them); the handed-over guest no longer needs it.
    const dstVmAsked = this.p.peer.getVm({ name: vm.name }, { deadlineMs: 3000 }).catch(() => undefined);
    const sourceDigests = handover.kind === 'confirmed' ? await (this.sourceDigests ?? Promise.resolve([])) : [];
    const removed = handover.kind === 'confirmed' ? this.p.host.destroy(vm.name).catch((err: unknown) => log.warn('could not remove the source QEMU', { err })) : undefined;
    const [[info, cpuNow], dstVm] = await Promise.all([figures, dstVmAsked]);
    const srcCpu = Math.max(0, cpuNow - this.sourceCpuStart);
    if (dstVm?.vm && this.destinationCpuStart !== undefined) this.destinationCpu = Math.max(0, dstVm.vm.qemuCpuSeconds - this.destinationCpuStart);
    const downtime = this.postcopyStarted ? postcopyDowntimeMs(info.downtime ?? 0, this.stoppedAtUs, this.completedAtUs) : { downtimeMs: info.downtime ?? 0, corrected: false };
    if (downtime.corrected) log.info('post-copy switch-over took under 1 ms; QEMU reported the post-copy phase as downtime', { reportedMs: info.downtime, runId: this.runId });
    this.stats = finalStats(info, {
      downtimeMs: downtime.downtimeMs,
      sourceCpuSeconds: srcCpu,
      destinationCpuSeconds: this.destinationCpu,
      integrityErrors: confirm?.sample?.integrityErrors ?? 0,
      pagesVerifiedAfter: confirm?.pagesVerifiedAfter ?? 0,
      maxThrottlePct: this.maxThrottle,
      recoveries: this.recoveries,
      postcopyBlocktimeMs: confirm?.postcopyBlocktimeMs ?? 0,
      postcopyVcpuBlocktimeMs: confirm?.postcopyVcpuBlocktimeMs ?? [],
      ...(confirm?.announceAfterResumeMs !== undefined ? { announceAfterResumeMs: confirm.announceAfterResumeMs, nicsAnnounced: confirm.nicsAnnounced ?? 0 } : {}),
    });
    if (this.storage) {
      Object.assign(this.stats, {
        diskTransferredBytes: this.storage.finalTransferredBytes,
        diskAllocatedBytes: this.storage.allocatedBytes,
        storageMs: Math.max(0, (this.storage.readyAtMs ?? this.storage.startedAtMs) - this.storage.startedAtMs),
        disksCopied: this.storage.disks.length,
      });
    }
    if (handover.kind === 'refused') {
      // The destination proved its copy gone: after pre-copy the source holds the whole guest.
      if (!this.postcopyStarted) {
        await vm.qmp.execute('cont').catch((err: unknown) => log.error('could not resume the source guest', { err }));
        this.p.host.setMigration(vm.name, undefined);
        this.error = errorInfo('FAILED_PRECONDITION', 'GUEST_NOT_ALIVE_ON_DESTINATION', `destination did not take the VM over: ${handover.why}; its copy is gone and the guest was resumed on the source`);
      } else {
        this.error = errorInfo('DATA_LOSS', 'GUEST_LOST', `the destination lost the guest during post-copy: ${handover.why}`);
      }
      this.finish(MigrationState.MIGRATION_STATE_FAILED, this.error.message);
      return;
    }
    if (handover.kind === 'unresolved') {
      // Neither handed over nor proven gone: resuming here could run the guest twice. The source
      // copy stays paused (listed as migrating); a daemon restart tries the handover again.
      this.error = errorInfo('UNAVAILABLE', 'OWNERSHIP_UNRESOLVED', `the destination neither took the VM over nor confirmed its copy gone within ${this.opts.handoverTimeoutMs} ms (${handover.why}); the source copy stays paused, and the source node keeps asking for up to ${Math.round(this.opts.resolveTimeoutMs / 60_000)} min (the VM list shows where the guest runs once settled)`);
      this.unresolved = 'handover';
      this.finish(MigrationState.MIGRATION_STATE_FAILED, this.error.message);
      return;
    }
    // Handed over: the destination owns the guest now; the source copy goes (removal started above).
    const checks: GuestCheck[] = [...(confirm!.checks ?? []), ...diskChecks(sourceDigests, confirm!.diskDigests ?? [])];
    this.stats.checks = checks;
    await removed;
    const failed = checks.filter((c) => !c.passed);
    if (!confirm!.alive) {
      this.error = errorInfo('DEADLINE_EXCEEDED', 'GUEST_NOT_VERIFIED', vm.spec.workload ? `the guest runs on the destination but did not verify its memory there within ${this.opts.confirmTimeoutMs} ms` : `the guest was not seen alive on the destination within ${this.opts.confirmTimeoutMs} ms: ${describeChecks(checks) || 'nothing checked'}`);
    } else if (this.stats.integrityErrors > 0) {
      this.error = errorInfo('DATA_LOSS', 'GUEST_MEMORY_CORRUPTED', `the guest reported ${this.stats.integrityErrors} integrity error(s) after the migration`);
    } else if (failed.some((c) => c.name.startsWith('disk:'))) {
      this.error = errorInfo('DATA_LOSS', 'DISK_MISMATCH', `a copied disk differs from the source: ${describeChecks(failed)}`);
    } else if (failed.length > 0) {
      this.error = errorInfo('FAILED_PRECONDITION', 'GUEST_CHECK_FAILED', `a check of the guest on the destination failed: ${describeChecks(failed)}`);
    }
    const verified = vm.spec.workload ? `guest verified ${this.stats.pagesVerifiedAfter} pages on the destination` : 'guest checked on the destination';
    this.finish(this.error ? MigrationState.MIGRATION_STATE_FAILED : MigrationState.MIGRATION_STATE_SUCCEEDED, this.error ? this.error.message : `${verified} (${describeChecks(checks) || 'no checks'}); source QEMU removed`);
  }

  /**
   * After a failed or cancelled migration: where does the guest run now? Decided from QEMU's own
   * state. A running source (QEMU resumes it by itself after a failure before switch-over) keeps
   * the guest and the destination copy — paused, never handed over — is removed. A paused source
   * is resumed only once the destination proved its copy gone. After post-copy started the source
   * never runs the guest again.
   */
  private async settle(): Promise<string> {
    const { vm, log } = this.p;
    // Mirrors that did not end in sync are cancelled first (their NBD nodes go with them).
    if (this.storage && !this.storageEnded && !this.postcopyStarted) await this.storage.abort();
    let st: StatusInfo | undefined = await vm.qmp.execute('query-status', undefined, { timeoutMs: 5000 }).catch(() => undefined);
    // After post-copy was asked for, a `failed` comes from QEMU's switch (a stream that breaks
    // once post-copy runs pauses it instead), and QEMU then resumes the guest here by itself —
    // but only once its migration thread has finished with the failure, a moment after the
    // `failed` event (see switchFailureSettleMs). A status read before that said "not running",
    // and the source then neither asked the destination, whose copy may already run the guest
    // from the device-state package, nor paused its own copy, which QEMU resumed right after:
    // the guest ran on the source while the destination claimed it (chaos seed 7701568, step 4).
    if (this.postcopyStarted && this.qemuStatus === 'failed') {
      if (!st?.running) st = await this.awaitSwitchFailureHandled(st);
      if (st?.running) return this.settleFailedSwitch();
    }
    if (this.postcopyStarted) return 'post-copy had started: the guest continues on the destination, or is lost with it';
    const lost = 'the source QEMU is gone: the guest, which had not been handed over, is lost with it';
    if (st?.running) {
      this.p.host.setMigration(vm.name, undefined);
      const r = await this.abortDestination(this.now() + this.opts.peerDeadlineMs);
      // A killed source QEMU can fail the stream a moment before its own death is seen: look again.
      if (!(await this.sourceAlive())) return lost;
      return `the guest keeps running on the source${r === 'gone' ? '' : ' (the destination copy, paused, is left to the destination to remove)'}`;
    }
    if (!st || !(await this.sourceAlive())) {
      await this.abortDestination(this.now() + this.opts.peerDeadlineMs);
      return lost;
    }
    const r = await this.abortDestination(this.now() + this.opts.handoverTimeoutMs);
    if (r === 'gone') {
      await vm.qmp.execute('cont').catch((err: unknown) => log.error('could not resume the source guest', { err }));
      this.p.host.setMigration(vm.name, undefined);
      return 'the destination copy is gone; the guest was resumed on the source';
    }
    if (r === 'runs-there') {
      await this.p.host.destroy(vm.name).catch((err: unknown) => log.warn('could not remove the source QEMU', { err }));
      return 'the guest runs on the destination; the source copy was removed';
    }
    this.unresolved = 'abort';
    return `the destination did not confirm its copy gone: the source copy stays paused, and the source node keeps asking for up to ${Math.round(this.opts.resolveTimeoutMs / 60_000)} min`;
  }

  /**
   * Post-copy was asked for, yet QEMU failed the stream and runs the guest on the source again:
   * it does so when the switch fails (postcopy_start), e.g. when the stream was shut down because
   * the switch hung (unstickPostcopySwitch). The destination runs the guest only once it has the
   * whole device-state package. Its copy is removed; if it says the guest runs there, or cannot
   * say, the source copy is paused (never two running copies) until the destination answers.
   */
  private async settleFailedSwitch(): Promise<string> {
    const { vm, log } = this.p;
    log.warn('QEMU failed the switch to post-copy and resumed the guest on the source', { errorDesc: this.qemuError || null });
    const r = await this.abortDestination(this.now() + this.opts.handoverTimeoutMs);
    if (r === 'gone') {
      this.p.host.setMigration(vm.name, undefined);
      return 'QEMU failed the switch to post-copy before the destination could run the guest, and resumed it on the source: the guest keeps running on the source, the destination copy was removed';
    }
    await vm.qmp.execute('stop', undefined, { timeoutMs: 5000 }).catch((err: unknown) => log.error('could not pause the source guest', { err }));
    if (r === 'runs-there') {
      // QEMU 10 fails post-copy for good on a stream error between the device-state package
      // (the destination runs the guest from it) and the end of its switch (postcopy_start):
      // neither end can recover, and the destination's copy misses pages. As libvirt does, both
      // copies stay paused for the operator; never two running.
      this.failReason = 'POSTCOPY_SWITCH_FAILED';
      return 'QEMU failed the switch to post-copy after the destination had started the guest: the guest is lost in QEMU (neither end can recover the stream); the source copy was paused, the destination keeps its paused copy, never two running';
    }
    this.postcopyStarted = false; // the destination never ran it unless it says so: a proof of its copy gone resumes the source
    this.unresolved = 'abort';
    return `QEMU failed the switch to post-copy; the destination did not confirm its copy gone: the source copy is paused, and the source node keeps asking for up to ${Math.round(this.opts.resolveTimeoutMs / 60_000)} min`;
  }

  /**
   * Waits (up to switchFailureSettleMs) until QEMU has finished with a failed switch to post-copy:
   * the guest resumed here, or a runstate other than the switch's finish-migrate (QEMU restores a
   * guest that was paused before the migration as paused, and leaves one whose block devices it
   * could not re-activate stopped). Settling earlier is undone by QEMU: a `stop` sent while the
   * runstate is finish-migrate changes nothing, and QEMU's vm_start follows.
   * @returns the last status read (undefined: none answered, or the source QEMU is gone)
   */
  private async awaitSwitchFailureHandled(first: StatusInfo | undefined): Promise<StatusInfo | undefined> {
    const { vm, log } = this.p;
    const deadline = this.now() + this.opts.switchFailureSettleMs;
    let st = first;
    while (!st?.running && (st?.status === undefined || st.status === 'finish-migrate')) {
      if (!this.p.host.attach(vm.name)) return undefined;
      if (this.now() >= deadline) {
        log.warn('QEMU has not finished with the failed switch to post-copy; the guest is left as post-copy leaves it', { waitedMs: this.opts.switchFailureSettleMs, qemu: st?.status ?? null });
        return st;
      }
      await sleep(Math.min(100, Math.max(1, deadline - this.now())));
      st = (await vm.qmp.execute('query-status', undefined, { timeoutMs: 2000 }).catch(() => undefined)) ?? st;
    }
    return st;
  }

  /** The source QEMU still answers and its process is alive (asked a moment later). */
  private async sourceAlive(): Promise<boolean> {
    await sleep(300);
    if (!this.p.host.attach(this.p.vm.name)) return false;
    return this.p.vm.qmp.execute('query-status', undefined, { timeoutMs: 3000 }).then(() => true, () => false);
  }

  private async fail(message: string, reason: string): Promise<void> {
    if (isTerminal(this.state)) return;
    this.p.log.warn('migration failed', { message });
    const where = await this.settle();
    this.error = errorInfo('ABORTED', this.failReason ?? reason, `${message}; ${where}`);
    this.finish(MigrationState.MIGRATION_STATE_FAILED, this.error.message);
  }

  private async cancelled(): Promise<void> {
    const where = await this.settle();
    this.finish(MigrationState.MIGRATION_STATE_CANCELLED, `cancelled; ${where}`);
  }

  private action(kind: PolicyActionKind, value: number, actor: string, reason: string): void {
    const a: PolicyAction = { time: new Date(this.now()), elapsedMs: this.now() - this.clockStart.getTime(), kind, value, reason, actor };
    this.actions.push(a);
    this.updates.publish({ update: { $case: 'action', value: a } });
  }

  private transition(to: MigrationState, reason: string): void {
    if (to === this.state || isTerminal(this.state)) return;
    const change: StateChange = { time: new Date(this.now()), from: this.state, to, reason };
    this.p.log.info('migration state', { from: MigrationState[this.state], to: MigrationState[to], reason });
    this.state = to;
    this.stateSinceMs = change.time!.getTime();
    this.updates.publish({ update: { $case: 'stateChange', value: change } });
  }

  private finish(to: MigrationState, reason: string): void {
    if (isTerminal(this.state)) return;
    this.transition(to, reason);
    this.finishedAt = new Date(this.now());
    this.stop.abort(new CancelledError('migration finished'));
    const info = this.info();
    this.updates.publish({ update: { $case: 'result', value: info } });
    this.updates.close();
    // The outcome survives a daemon restart (GetMigration answers it until the record is pruned).
    // An unresolved handover stays 'completed', an unresolved abort 'streaming': a restarted
    // daemon takes either up again from QEMU's state.
    const phase: SourcePhase = this.unresolved === 'handover' ? 'completed' : this.unresolved === 'abort' ? 'streaming' : 'finished';
    void this.persist(phase, info).then(() => this.resolveDone(info));
    if (this.unresolved) void this.resolveLater(this.unresolved);
  }

  /**
   * The run ended with the source copy paused and the destination's copy unaccounted for: keeps
   * asking the destination (handover, or proof its copy is gone) with back-off, up to
   * resolveTimeoutMs, and acts on the first clear answer — resumes the source copy once the
   * destination's is gone (never before), or removes it once the guest runs there. The outcome
   * (GetMigration, the record) and the log say how it was settled, or that it was not.
   */
  private async resolveLater(kind: 'handover' | 'abort'): Promise<void> {
    const { vm, log } = this.p;
    const started = this.now();
    const until = started + this.opts.resolveTimeoutMs;
    log.warn('ownership unresolved at the end of the run; asking the destination again in the background', { kind, boundMs: this.opts.resolveTimeoutMs });
    let wait = 1000;
    for (let attempt = 1; this.now() < until && !this.detached; attempt++) {
      await sleepFor(wait, undefined, { signal: this.background.signal }).catch(() => undefined);
      wait = Math.min(wait * 2, 30_000);
      if (this.detached) return;
      const slice = Math.max(1000, Math.min(60_000, until - this.now()));
      let outcome: 'confirmed' | 'gone' | 'runs-there' | 'unknown';
      if (kind === 'handover') {
        const h = await this.handOver(slice);
        outcome = h.kind === 'confirmed' ? 'confirmed' : h.kind === 'refused' ? 'gone' : 'unknown';
      } else {
        outcome = await this.abortDestination(this.now() + slice);
      }
      if (outcome === 'unknown') {
        log.info('ownership still unresolved; asking again', { attempt, waitMs: wait });
        continue;
      }
      let how: string;
      if (outcome === 'gone' && !this.postcopyStarted) {
        await vm.qmp.execute('cont').catch((err: unknown) => log.error('could not resume the source guest', { err }));
        this.p.host.setMigration(vm.name, undefined);
        how = 'the destination copy is gone; the guest was resumed on the source';
      } else if (outcome === 'gone') {
        how = 'the destination copy is gone after post-copy had started: the guest is lost';
      } else {
        await this.p.host.destroy(vm.name).catch((err: unknown) => log.warn('could not remove the source QEMU', { err }));
        how = 'the guest runs on the destination; the source copy was removed';
      }
      const afterS = Math.round((this.now() - started) / 1000);
      log.warn('ownership resolved after the run had ended', { how, afterS, attempt });
      this.settleError(`resolved ${afterS} s after the run ended: ${how}`);
      return;
    }
    if (this.detached) return;
    log.error('ownership still unresolved; the source copy stays paused (an operator must decide)', { afterMs: this.now() - started });
    this.settleError(`still unresolved after ${Math.round((this.now() - started) / 60_000)} min of retries: the source copy stays paused`);
  }

  /** True while an unresolved ownership is being settled in the background (see resolveLater). */
  get settling(): boolean {
    return this.unresolved !== undefined && !this.detached;
  }

  /** Appends how an unresolved ownership was settled to the run's error, and records it. */
  private settleError(note: string): void {
    if (this.error) this.error = { ...this.error, message: `${this.error.message}; ${note}` };
    this.unresolved = undefined;
    void this.persist('finished', this.info());
  }

  /** Stops background work without changing QEMU (node daemon shutdown). */
  detach(): void {
    this.background.abort();
    this.stop.abort(new CancelledError('node daemon shutting down'));
    this.updates.close();
  }

  /** QEMU's latest migration status string. */
  get qemuMigrationStatus(): string {
    return this.qemuStatus;
  }
}
