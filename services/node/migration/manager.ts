/**
 * All migrations of one node daemon, by run id: the ones it drives as source and the incoming ones
 * it hosts as destination. Validates requests before any QEMU is touched, keeps StartMigration
 * idempotent by run id, and hands out watch streams.
 *
 * Every migration's phase is persisted (record.ts); `reconcile()` — run by a restarted daemon
 * before it serves — adopts the migrations its QEMUs may still be carrying out, restores the
 * outcomes the coordinator may not have read yet, and removes incoming copies nobody owns. A
 * sweep asks the source about incoming copies that wait too long for their handover.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { FailedPreconditionError, InvalidArgumentError, MigdError, NotFoundError } from '../../shared/errors.js';
import { MigrationPolicy, MigrationState, PolicyKind } from '../../shared/gen/migd/v1/common.js';
import {
  ConfirmIncomingResponse,
  MigrationInfo,
  type AdjustMigrationRequest,
  type ConfirmIncomingRequest,
  type MigrationEndpoint,
  type PrepareIncomingRequest,
  type PrepareIncomingResponse,
  type StartMigrationRequest,
  type WatchMigrationResponse,
} from '../../shared/gen/migd/v1/node.js';
import type { Logger } from '../../shared/log.js';
import { errorInfo } from '../../shared/policy/error-info.js';
import { QEMU_MAX_DOWNTIME_MS, isValidDowntimeLimit } from '../../shared/policy/limits.js';
import { resolveMigrationConfig } from '../../shared/policy/resolve.js';
import { isTerminalState as isTerminal } from '../../shared/policy/states.js';
import { IncomingMigration } from './destination.js';
import { MigrationRecords, type DestinationRecord, type SourceRecord } from './record.js';
import { SourceMigration, type SourceOptions } from './source.js';
import { addTlsCreds, TLS_HOSTNAME } from './tls.js';
import type { NodePeer, VmHost } from './types.js';

const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

export interface MigrationManagerDeps {
  readonly nodeId: string;
  readonly host: VmHost;
  readonly supportedCapabilities: ReadonlySet<string>;
  readonly migrationAddress: string;
  /** This node's management address as peers reach it (sent to destinations). */
  readonly managementAddress?: string;
  /** Root of the node's state (migration records live under `migrations/`). */
  readonly stateDir: string;
  /**
   * An incoming copy still not handed over after this long (ms) makes the destination ask its
   * source how the run stands; one the source no longer drives is removed. Default 30 000.
   */
  readonly incomingCheckMs?: number;
  /** A client of another node daemon. */
  readonly peer: (endpoint: MigrationEndpoint) => NodePeer;
  readonly log: Logger;
  readonly sourceOptions?: SourceOptions;
  /** QEMU TLS credential folder (see tls.ts); migrations asking for TLS fail without it. */
  readonly tlsDir?: string;
  /** Called when a migration driven here finishes (metrics, history). */
  readonly onFinished?: (info: MigrationInfo) => void;
}

export class MigrationManager {
  private readonly outgoing = new Map<string, SourceMigration>();
  private readonly incoming = new Map<string, IncomingMigration>();
  /** Outcomes of migrations driven here before the daemon restarted. */
  private readonly past = new Map<string, MigrationInfo>();
  /** Answers of handovers done here (ConfirmIncoming is idempotent). */
  private readonly confirmed = new Map<string, ConfirmIncomingResponse>();
  readonly records: MigrationRecords;
  private readonly closing = new AbortController();

  constructor(private readonly d: MigrationManagerDeps) {
    this.records = new MigrationRecords(d.stateDir);
    void this.sweepIncoming(this.closing.signal);
  }

  private self(): MigrationEndpoint | undefined {
    return this.d.managementAddress ? { nodeId: this.d.nodeId, managementAddress: this.d.managementAddress, migrationAddress: this.d.migrationAddress } : undefined;
  }

  /**
   * After a daemon restart, before serving: takes back every recorded migration (see record.ts).
   * Returns once each has been registered; the work that needs the peer runs in the background.
   */
  async reconcile(): Promise<void> {
    await this.records.prune(24 * 3600_000).catch(() => undefined);
    for (const r of await this.records.list()) {
      try {
        if (r.role === 'source') await this.reconcileSource(r);
        else await this.reconcileDestination(r);
      } catch (err) {
        this.d.log.error('could not reconcile a recorded migration', { runId: r.runId, role: r.role, phase: r.phase, err });
      }
    }
    // An incoming QEMU without a record belongs to no migration: nobody would ever hand it over.
    for (const v of this.d.host.list()) {
      if (v.role !== 'incoming' || [...this.incoming.values()].some((m) => m.vmName === v.name)) continue;
      this.d.log.warn('removing an incoming VM no migration owns', { vm: v.name });
      await this.d.host.destroy(v.name).catch((err: unknown) => this.d.log.warn('could not remove an orphan incoming VM', { vm: v.name, err }));
    }
  }

  private async reconcileSource(r: SourceRecord): Promise<void> {
    if (r.phase === 'finished') {
      if (r.outcome) this.past.set(r.runId, MigrationInfo.fromJSON(r.outcome));
      return;
    }
    const log = this.d.log.child({ runId: r.runId, vm: r.vmName, role: 'source' });
    const peer = this.d.peer(r.peer);
    const policy = MigrationPolicy.fromJSON(r.policy);
    const vm = this.d.host.attach(r.vmName);
    if (!vm) {
      // The source QEMU is gone. After a handover it was removed on purpose: ask the destination
      // (idempotent) what it confirmed; otherwise the guest lived only here and is lost.
      const confirm = r.phase === 'completed' || r.phase === 'postcopy' ? await peer.confirmIncoming({ runId: r.runId, timeoutMs: 30_000, resume: true }, { deadlineMs: 40_000 }).catch(() => undefined) : undefined;
      const info = MigrationInfo.fromPartial({
        runId: r.runId,
        vmName: r.vmName,
        sourceNodeId: this.d.nodeId,
        destination: r.peer,
        policy,
        state: confirm?.alive ? MigrationState.MIGRATION_STATE_SUCCEEDED : MigrationState.MIGRATION_STATE_FAILED,
        startedAt: new Date(r.startedAt),
        finishedAt: new Date(),
        ...(confirm?.alive ? {} : { error: errorInfo('ABORTED', 'SOURCE_LOST', confirm ? 'the guest runs on the destination but did not verify its memory there' : `the source QEMU was gone when the node daemon restarted (phase ${r.phase})`) }),
      });
      if (!confirm && r.phase !== 'postcopy') await peer.abortIncoming({ runId: r.runId }, { deadlineMs: 10_000 }).catch(() => undefined);
      this.past.set(r.runId, info);
      r.phase = 'finished';
      r.outcome = MigrationInfo.toJSON(info);
      await this.records.write(r);
      this.d.onFinished?.(info);
      return;
    }
    const config = resolveMigrationConfig(policy, this.d.supportedCapabilities);
    const m = new SourceMigration({
      runId: r.runId,
      nodeId: this.d.nodeId,
      vm,
      host: this.d.host,
      peer,
      destination: r.peer,
      policy,
      config,
      supportedCapabilities: this.d.supportedCapabilities,
      log,
      options: { ...this.d.sourceOptions },
      records: this.records,
      record: r,
      ...(this.self() ? { self: this.self()! } : {}),
    });
    this.outgoing.set(r.runId, m);
    void m.finished().then((info) => this.d.onFinished?.(info));
    await m.adopt();
  }

  private async reconcileDestination(r: DestinationRecord): Promise<void> {
    if (r.phase === 'confirmed') {
      if (r.confirm) this.confirmed.set(r.runId, ConfirmIncomingResponse.fromJSON(r.confirm));
      return;
    }
    const log = this.d.log.child({ runId: r.runId, vm: r.vmName, role: 'destination' });
    const vm = this.d.host.attach(r.vmName);
    if (!vm || r.phase === 'preparing') {
      // Its QEMU died (a failed or cancelled stream ends it), or the daemon died while starting
      // it: nothing here can be handed over.
      log.info('removing an incoming migration whose QEMU is gone or half-started', { phase: r.phase });
      await this.d.host.destroy(r.vmName).catch(() => undefined);
      await this.records.remove(r.runId);
      return;
    }
    const policy = MigrationPolicy.fromJSON(r.policy);
    const inc = new IncomingMigration({
      runId: r.runId,
      vm,
      host: this.d.host,
      config: resolveMigrationConfig(policy, this.d.supportedCapabilities),
      supportedCapabilities: this.d.supportedCapabilities,
      migrationAddress: this.d.migrationAddress,
      log,
      record: r,
      records: this.records,
    });
    this.incoming.set(r.runId, inc);
    await inc.adopt();
  }

  /**
   * Incoming copies that wait too long for their handover: ask the source how the run stands.
   * One it no longer drives (finished without handing over, or unknown) is removed — it can never
   * be handed over. An unreachable source changes nothing: the copy stays paused, never resumed.
   */
  private async sweepIncoming(signal: AbortSignal): Promise<void> {
    const every = this.d.incomingCheckMs ?? 30_000;
    while (!signal.aborted) {
      await sleep(Math.max(1000, every / 3), undefined, { signal }).catch(() => undefined);
      for (const [runId, m] of [...this.incoming]) {
        if (signal.aborted) return;
        if (m.gone && !m.guestRunsHere) {
          this.d.log.info('incoming QEMU exited by itself; removing it', { runId });
          await m.abort().catch(() => undefined);
          this.incoming.delete(runId);
          continue;
        }
        if (m.guestRunsHere || Date.now() - m.lastChange < every || !m.record.peer) continue;
        const src = this.d.peer(m.record.peer);
        const state = await src.getMigration({ runId }, { deadlineMs: 5000, signal }).then(
          // A source that could not settle the handover still holds its copy paused for it.
          (r) => (r.migration?.error?.reason === 'OWNERSHIP_UNRESOLVED' ? undefined : r.migration?.state),
          (err: unknown) => (err instanceof MigdError && err.code === 'NOT_FOUND' ? 'unknown' : undefined),
        );
        const ended = state === 'unknown' || (state !== undefined && isTerminal(state) && !m.guestRunsHere);
        if (!ended) continue;
        this.d.log.warn('removing an incoming copy its source no longer drives', { runId, source: m.record.peer.nodeId, state: state === 'unknown' ? 'unknown' : MigrationState[state] });
        await m.abort().catch((err: unknown) => this.d.log.warn('could not remove a stale incoming copy', { runId, err }));
        if (!m.guestRunsHere) this.incoming.delete(runId);
      }
    }
  }

  private validateRunId(runId: string): void {
    if (!RUN_ID.test(runId)) throw new InvalidArgumentError(`run_id "${runId}" must match ${RUN_ID.source}`);
  }

  private tlsDirFor(tls: boolean): string | undefined {
    if (!tls) return undefined;
    if (!this.d.tlsDir) throw new FailedPreconditionError('this node has no migration TLS credentials configured', { reason: 'NO_MIGRATION_TLS' });
    return this.d.tlsDir;
  }

  /**
   * Starts migrating a VM off this node; idempotent by run id.
   * @throws InvalidArgumentError, NotFoundError, FailedPreconditionError, UnavailableError
   */
  async start(req: StartMigrationRequest): Promise<MigrationInfo> {
    this.validateRunId(req.runId);
    const past = this.past.get(req.runId);
    if (past) return past;
    const existing = this.outgoing.get(req.runId);
    if (existing) {
      if (existing.info().vmName !== req.vmName) throw new InvalidArgumentError(`run_id ${req.runId} is already used for VM ${existing.info().vmName}`);
      return existing.info();
    }
    const dest = req.destination;
    if (!dest?.managementAddress) throw new InvalidArgumentError('destination.management_address is required');
    if (dest.nodeId === this.d.nodeId) throw new InvalidArgumentError(`destination ${dest.nodeId} is this node (the source)`);
    if (!req.vmName) throw new InvalidArgumentError('vm_name is required');
    const policy = req.policy ?? { kind: PolicyKind.POLICY_KIND_FIXED } as StartMigrationRequest['policy'];
    const config = resolveMigrationConfig(policy, this.d.supportedCapabilities);
    const vm = this.d.host.source(req.vmName);
    const tlsDir = this.tlsDirFor(config.tls);
    const tlsCredsId = tlsDir ? await addTlsCreds(vm.qmp, tlsDir, 'client') : undefined;
    const log = this.d.log.child({ runId: req.runId, vm: req.vmName, role: 'source' });
    const m = new SourceMigration({
      runId: req.runId,
      nodeId: this.d.nodeId,
      vm,
      host: this.d.host,
      peer: this.d.peer(dest),
      destination: dest,
      policy: policy!,
      config,
      supportedCapabilities: this.d.supportedCapabilities,
      log,
      options: { ...this.d.sourceOptions, ...(tlsCredsId ? { tlsCredsId, tlsHostname: TLS_HOSTNAME } : {}) },
      records: this.records,
      ...(this.self() ? { self: this.self()! } : {}),
    });
    this.outgoing.set(req.runId, m);
    try {
      await m.start();
    } catch (err) {
      this.outgoing.delete(req.runId);
      throw err;
    }
    void m.finished().then((info) => this.d.onFinished?.(info));
    return m.info();
  }

  /** Destination: starts the incoming QEMU and listens. Idempotent by run id. */
  async prepareIncoming(req: PrepareIncomingRequest): Promise<PrepareIncomingResponse> {
    this.validateRunId(req.runId);
    if (!req.spec) throw new InvalidArgumentError('spec is required');
    const existing = this.incoming.get(req.runId);
    if (existing || this.confirmed.has(req.runId)) throw new FailedPreconditionError(`run ${req.runId} already has an incoming VM on this node`, { reason: 'INCOMING_EXISTS' });
    const config = resolveMigrationConfig(req.policy, this.d.supportedCapabilities);
    const tlsDir = this.tlsDirFor(config.tls);
    const now = new Date().toISOString();
    const record: DestinationRecord = {
      format: 1,
      runId: req.runId,
      role: 'destination',
      vmName: req.spec.name,
      phase: 'preparing',
      ...(req.source?.managementAddress ? { peer: req.source } : {}),
      policy: MigrationPolicy.toJSON(req.policy ?? MigrationPolicy.fromPartial({})),
      startedAt: now,
      updatedAt: now,
    };
    // Recorded before QEMU starts: a restarted daemon never finds an incoming QEMU it cannot place.
    await this.records.write(record);
    let vm;
    try {
      vm = await this.d.host.createIncoming(req.spec, req.runId);
    } catch (err) {
      await this.records.remove(req.runId);
      throw err;
    }
    const log = this.d.log.child({ runId: req.runId, vm: req.spec.name, role: 'destination' });
    try {
      const tlsCredsId = tlsDir ? await addTlsCreds(vm.qmp, tlsDir, 'server') : undefined;
      const inc = new IncomingMigration({
        runId: req.runId,
        vm,
        host: this.d.host,
        config,
        supportedCapabilities: this.d.supportedCapabilities,
        migrationAddress: this.d.migrationAddress,
        log,
        record,
        records: this.records,
        ...(tlsCredsId ? { tlsCredsId } : {}),
      });
      record.phase = 'incoming';
      await this.records.write(record);
      const uri = await inc.listen();
      this.incoming.set(req.runId, inc);
      return { uri, pid: vm.pid };
    } catch (err) {
      await this.d.host.destroy(req.spec.name).catch(() => undefined);
      await this.records.remove(req.runId);
      throw err;
    }
  }

  private inc(runId: string): IncomingMigration {
    const m = this.incoming.get(runId);
    if (!m) throw new NotFoundError(`no incoming migration ${runId} on this node`);
    return m;
  }

  private out(runId: string): SourceMigration {
    const m = this.outgoing.get(runId);
    if (!m) throw new NotFoundError(`no migration ${runId} driven by this node`);
    return m;
  }

  async pauseIncoming(runId: string): Promise<string> {
    return this.inc(runId).pause();
  }

  async recoverIncoming(runId: string): Promise<string> {
    return this.inc(runId).recover();
  }

  /**
   * The handover (see destination.ts). Idempotent: a repeated confirm — the source retrying after
   * a lost answer, or after either daemon restarted — gets the first answer again.
   * @throws NotFoundError (no such incoming migration), FailedPreconditionError NOT_HANDED_OVER
   */
  async confirmIncoming(req: ConfirmIncomingRequest): Promise<ConfirmIncomingResponse> {
    const done = this.confirmed.get(req.runId);
    if (done) return done;
    const m = this.inc(req.runId);
    const res = await m.confirm(req.timeoutMs || 30_000);
    this.confirmed.set(req.runId, res);
    if (this.incoming.get(req.runId) === m) {
      m.detach();
      this.incoming.delete(req.runId);
    }
    return res;
  }

  /**
   * Kills the incoming QEMU of a run and forgets it. Idempotent: a run with no incoming copy here
   * succeeds, which is the source's proof that no copy of the guest runs here.
   * @throws FailedPreconditionError GUEST_RUNS_HERE once the guest runs here
   */
  async abortIncoming(runId: string): Promise<void> {
    if (this.confirmed.has(runId)) {
      throw new FailedPreconditionError(`the guest of run ${runId} was handed over and runs on this node; refusing to destroy it`, { reason: 'GUEST_RUNS_HERE' });
    }
    const m = this.incoming.get(runId);
    if (!m) return; // already gone (QEMU exits by itself after a failed or cancelled stream)
    await m.abort();
    this.incoming.delete(runId);
  }

  get(runId: string): MigrationInfo {
    return this.past.get(runId) ?? this.out(runId).info();
  }

  list(activeOnly: boolean): MigrationInfo[] {
    return [...this.outgoing.values()]
      .map((m) => m.info())
      .concat([...this.past.values()].filter((p) => !this.outgoing.has(p.runId)))
      .filter((i) => !activeOnly || !isTerminal(i.state))
      .sort((a, b) => (b.startedAt?.getTime() ?? 0) - (a.startedAt?.getTime() ?? 0));
  }

  watch(runId: string, signal?: AbortSignal): AsyncIterable<WatchMigrationResponse> {
    const past = this.past.get(runId);
    if (past) {
      return (async function* (): AsyncIterable<WatchMigrationResponse> {
        yield { update: { $case: 'stateChange', value: { time: past.finishedAt ?? new Date(), from: past.state, to: past.state, reason: 'current state' } } };
        yield { update: { $case: 'result', value: past } };
      })();
    }
    return this.out(runId).watch(signal);
  }

  async adjust(req: AdjustMigrationRequest): Promise<MigrationInfo> {
    const m = this.out(req.runId);
    if (req.downtimeLimitMs !== undefined && !isValidDowntimeLimit(req.downtimeLimitMs)) {
      throw new InvalidArgumentError(`downtime_limit_ms must be 1..${QEMU_MAX_DOWNTIME_MS}, got ${req.downtimeLimitMs}`);
    }
    await m.adjust(
      { ...(req.downtimeLimitMs !== undefined ? { downtimeLimitMs: req.downtimeLimitMs } : {}), ...(req.maxBandwidthBytesPerSec !== undefined ? { maxBandwidthBytesPerSec: req.maxBandwidthBytesPerSec } : {}), enableAutoConverge: req.enableAutoConverge },
      req.actor || 'user',
      req.reason,
    );
    return m.info();
  }

  async startPostcopy(runId: string, actor: string, reason: string): Promise<MigrationInfo> {
    const m = this.out(runId);
    await m.startPostcopy(actor || 'user', reason || 'requested');
    return m.info();
  }

  async forceComplete(runId: string, actor: string, reason: string): Promise<MigrationInfo> {
    const m = this.out(runId);
    await m.forceComplete(actor || 'user', reason || 'force-complete requested');
    return m.info();
  }

  async cancel(runId: string, actor: string, reason: string): Promise<MigrationInfo> {
    const m = this.out(runId);
    await m.cancel(actor || 'user', reason || 'cancel requested');
    return m.info();
  }

  /** True when a VM takes part in a migration on this node. */
  busy(vmName: string): boolean {
    for (const m of this.outgoing.values()) if (!isTerminal(m.currentState) && m.info().vmName === vmName) return true;
    for (const m of this.incoming.values()) if (m.vmName === vmName) return true;
    return false;
  }

  /** Stops background work; QEMU processes and their migrations keep running. */
  close(): void {
    this.closing.abort();
    for (const m of this.outgoing.values()) m.detach();
    for (const m of this.incoming.values()) m.detach();
  }
}
