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
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, MigdError, NotFoundError, PermissionDeniedError } from '../../shared/errors.js';
import { MigrationPolicy, MigrationState, PolicyKind } from '../../shared/gen/migd/v1/common.js';
import {
  ConfirmIncomingResponse,
  MigrationInfo,
  type AdjustMigrationRequest,
  type ConfirmIncomingRequest,
  type ExpectIncomingRequest,
  type ExpectIncomingResponse,
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
import { checkMigrationAddress, managementEndpointOf } from './endpoint.js';
import { TLS_AUTHZ_ID, addTlsAuthz, addTlsCreds, tlsCredsIdOf, tlsDistinguishedNameOf, tlsHostnameOf } from './tls.js';
import type { NodePeer, VmHost } from './types.js';
import { exportTargets } from './storage.js';
import { diskNodeName } from '../vm/cmdline.js';
import { freePort } from '../../shared/net.js';
import { requireRunSource, type NodeCaller } from '../rpc/authz.js';

const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
const NODE_ID = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;

/** How long an ExpectIncoming stays valid (renewed by repeating it), and how many are kept. */
export const EXPECTATION_TTL_MS = 10 * 60_000;
export const EXPECTATIONS_MAX = 1024;
/** The longest hold StartMigrationRequest.hold_ms may ask for (ms). */
export const MAX_HOLD_MS = 3_600_000;

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
   * source how the run stands (every third of it); one the source no longer drives is removed.
   * Default 15 000: a copy whose source never connected or handed over goes within ~20 s of the
   * run's end, also when neither the source nor the coordinator could reach this node then.
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
  /** Every stream uses TLS whatever the policy says (policies without it are upgraded). */
  readonly requireTls?: boolean;
  /**
   * Finished runs whose outcome (source) or handover answer (destination) stays in memory for
   * retries and late readers; older ones are forgotten (their records stay on disk for a day).
   * Default 4096.
   */
  readonly keptFinishedRuns?: number;
}

/** How long a finished source migration stays live (adjust/cancel answer its own way) before it becomes a kept outcome. */
const RETIRE_AFTER_MS = 60_000;

/** Sets `key` as the newest entry of `map` and forgets the oldest beyond `max`. */
function remember<K, V>(map: Map<K, V>, key: K, value: V, max: number): void {
  map.delete(key);
  map.set(key, value);
  while (map.size > max) map.delete(map.keys().next().value as K);
}

/** How long a source node may still read the VM it migrated here (GetVm, WatchGuest) after the run ends. */
const PEER_GRANT_MS = 10 * 60_000;
const PEER_GRANTS_MAX = 1024;

export class MigrationManager {
  private readonly outgoing = new Map<string, SourceMigration>();
  private readonly incoming = new Map<string, IncomingMigration>();
  /** Outcomes of migrations driven here before the daemon restarted. */
  private readonly past = new Map<string, MigrationInfo>();
  /** Answers of handovers done here (ConfirmIncoming is idempotent). */
  private readonly confirmed = new Map<string, ConfirmIncomingResponse>();
  /** The bound source node of each confirmed run (only it may ask again). */
  private readonly confirmedBy = new Map<string, string>();
  readonly records: MigrationRecords;
  private readonly closing = new AbortController();
  /** StartMigration calls in flight, by run id: a concurrent retry joins the first call. */
  private readonly starting = new Map<string, Promise<MigrationInfo>>();
  /** PrepareIncoming calls in flight, by run id, with the source bound to them. */
  private readonly preparing = new Map<string, { done: Promise<unknown>; sourceNodeId: string | undefined }>();
  /**
   * Runs aborted here, by run id → expiry (host ms): a PrepareIncoming that arrives after the
   * abort (a request delayed by a cut link or a stopped daemon) is refused, never left behind.
   */
  private readonly abortedRuns = new Map<string, number>();
  /** VM name → source node id and expiry, for runs that ended here (the source still reads the VM). */
  private readonly peerGrants = new Map<string, { nodeId: string; untilMs: number }>();
  /**
   * Runs the coordinator announced (ExpectIncoming), by run id: only the named source node may
   * prepare them, and only for the named VM. Bounded (oldest first) and expiring.
   */
  private readonly expectations = new Map<string, { sourceNodeId: string; vmName: string; untilMs: number }>();

  private readonly kept: number;

  constructor(private readonly d: MigrationManagerDeps) {
    this.kept = d.keptFinishedRuns ?? 4096;
    this.records = new MigrationRecords(d.stateDir);
    void this.sweepIncoming(this.closing.signal);
  }

  /**
   * Reports a source migration's end, and a while later keeps only its outcome (bounded), so the
   * driver objects of finished runs do not pile up.
   */
  private whenFinished(runId: string, m: SourceMigration): void {
    void m.finished().then((info) => {
      this.d.onFinished?.(info);
      const retire = (): void => {
        if (this.outgoing.get(runId) !== m) return;
        // Still settling an unresolved ownership in the background: it stays live (GetMigration
        // shows how it is settled; close() stops it).
        if (m.settling) {
          setTimeout(retire, RETIRE_AFTER_MS).unref();
          return;
        }
        remember(this.past, runId, m.info(), this.kept);
        this.outgoing.delete(runId);
      };
      setTimeout(retire, RETIRE_AFTER_MS).unref();
    });
  }

  /** Runs held in memory (live and finished), for tests and metrics. */
  get sizes(): { outgoing: number; incoming: number; past: number; confirmed: number; peerGrants: number } {
    return { outgoing: this.outgoing.size, incoming: this.incoming.size, past: this.past.size, confirmed: this.confirmed.size, peerGrants: this.peerGrants.size };
  }

  /** This node's management host, where a post-copy recovery may listen (see IncomingMigration.recover). */
  private get managementHost(): string | undefined {
    if (!this.d.managementAddress) return undefined;
    try {
      return managementEndpointOf(this.d.managementAddress).host;
    } catch {
      return undefined;
    }
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
      if (r.outcome) remember(this.past, r.runId, MigrationInfo.fromJSON(r.outcome), this.kept);
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
      remember(this.past, r.runId, info, this.kept);
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
    this.whenFinished(r.runId, m);
    await m.adopt();
  }

  private async reconcileDestination(r: DestinationRecord): Promise<void> {
    if (r.phase === 'confirmed') {
      if (r.confirm) remember(this.confirmed, r.runId, ConfirmIncomingResponse.fromJSON(r.confirm), this.kept);
      if (r.boundSource) remember(this.confirmedBy, r.runId, r.boundSource, this.kept);
      return;
    }
    const log = this.d.log.child({ runId: r.runId, vm: r.vmName, role: 'destination' });
    const vm = this.d.host.attach(r.vmName);
    if (!vm || r.phase === 'preparing') {
      // Its QEMU died (a failed or cancelled stream ends it), or the daemon died while starting
      // it: nothing here can be handed over.
      log.info('removing an incoming migration whose QEMU is gone or half-started', { phase: r.phase });
      await this.d.host.destroy(r.vmName).catch(() => undefined);
      // Storage-copy targets are garbage unless the guest ran here (then they are its disks).
      if (r.phase === 'preparing' || r.phase === 'incoming') await this.d.host.removeTargets((r.disks ?? []).map((d) => d.path));
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
      ...(this.managementHost ? { managementHost: this.managementHost } : {}),
      log,
      record: r,
      records: this.records,
      ...(r.boundSource ? { sourceNodeId: r.boundSource } : {}),
    });
    this.incoming.set(r.runId, inc);
    if (r.boundSource) this.grant(r.vmName, r.boundSource, Number.POSITIVE_INFINITY);
    await inc.adopt();
  }

  /**
   * Incoming copies that wait too long for their handover: ask the source how the run stands.
   * One it no longer drives (finished without handing over, or unknown) is removed — it can never
   * be handed over. An unreachable source changes nothing: the copy stays paused, never resumed.
   */
  private async sweepIncoming(signal: AbortSignal): Promise<void> {
    const every = this.d.incomingCheckMs ?? 15_000;
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

  /** The policy with TLS forced on when this node requires it. */
  private effectivePolicy<P extends { tls?: boolean } | undefined>(policy: P): P {
    if (!this.d.requireTls || !policy || policy.tls) return policy;
    return { ...policy, tls: true };
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
      // A repeated held start renews the hold (see SourceMigration.renewHold).
      const holdMs = req.holdMs ?? 0;
      if (holdMs > 0 && Number.isInteger(holdMs) && holdMs <= MAX_HOLD_MS) existing.renewHold(holdMs);
      return existing.info();
    }
    const pending = this.starting.get(req.runId);
    if (pending) return pending;
    const dest = req.destination;
    if (!dest?.managementAddress) throw new InvalidArgumentError('destination.management_address is required');
    if (!dest.nodeId) throw new InvalidArgumentError('destination.node_id is required');
    if (dest.nodeId === this.d.nodeId) throw new InvalidArgumentError(`destination ${dest.nodeId} is this node (the source)`);
    checkMigrationAddress(dest.migrationAddress);
    if (!req.vmName) throw new InvalidArgumentError('vm_name is required');
    const holdMs = req.holdMs ?? 0;
    if (!Number.isInteger(holdMs) || holdMs < 0 || holdMs > MAX_HOLD_MS) throw new InvalidArgumentError(`hold_ms must be 0..${MAX_HOLD_MS}, got ${holdMs}`);
    // A request without a policy (the field is optional on the wire) migrates with the fixed defaults.
    const policy = this.effectivePolicy(req.policy ?? MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_FIXED }));
    const config = resolveMigrationConfig(policy, this.d.supportedCapabilities);
    const tlsDir = this.tlsDirFor(config.tls);
    // Check and claim the VM in one synchronous step: a concurrent StartMigration for the same VM
    // (another run id) finds it claimed and is refused.
    const vm = this.d.host.source(req.vmName);
    this.d.host.setMigration(req.vmName, req.runId);
    const run = (async (): Promise<MigrationInfo> => {
      let m: SourceMigration | undefined;
      try {
        // The source QEMU's credentials object is added while the destination prepares: the run
        // awaits it before its migration parameters name it.
        const tlsCreds = tlsDir ? addTlsCreds(vm.qmp, tlsDir, 'client') : undefined;
        const tlsCredsId = tlsDir ? tlsCredsIdOf('client') : undefined;
        const log = this.d.log.child({ runId: req.runId, vm: req.vmName, role: 'source' });
        m = new SourceMigration({
          runId: req.runId,
          nodeId: this.d.nodeId,
          vm,
          host: this.d.host,
          peer: this.d.peer(dest),
          destination: dest,
          policy,
          config,
          supportedCapabilities: this.d.supportedCapabilities,
          log,
          options: { ...this.d.sourceOptions, ...(tlsCredsId ? { tlsCredsId, tlsHostname: tlsHostnameOf(dest.nodeId) } : {}) },
          records: this.records,
          ...(this.self() ? { self: this.self()! } : {}),
          ...(tlsCreds ? { localSetup: tlsCreds } : {}),
          ...(holdMs > 0 ? { holdMs } : {}),
        });
        this.outgoing.set(req.runId, m);
        await m.start();
      } catch (err) {
        if (m) {
          // The run failed here (the destination was told to drop its copy): a StartMigration
          // repeated with this run id — a coordinator restarted while the first was in flight —
          // gets this outcome, as GetMigration does, never a second start of a run that failed.
          this.outgoing.delete(req.runId);
          remember(this.past, req.runId, m.info(), this.kept);
        } else this.d.host.setMigration(req.vmName, undefined);
        throw err;
      }
      this.whenFinished(req.runId, m);
      return m.info();
    })();
    this.starting.set(req.runId, run);
    try {
      return await run;
    } finally {
      this.starting.delete(req.runId);
    }
  }

  /**
   * Destination: starts the incoming QEMU and listens. A run prepared by a peer node is bound to
   * it: only that node may act on the run afterwards, and with TLS only its certificate may
   * connect to the stream.
   * @throws InvalidArgumentError, FailedPreconditionError (INCOMING_EXISTS, NO_MIGRATION_TLS), …
   */
  async prepareIncoming(req: PrepareIncomingRequest, caller: NodeCaller = { kind: 'anonymous' }): Promise<PrepareIncomingResponse> {
    this.validateRunId(req.runId);
    if (!req.spec) throw new InvalidArgumentError('spec is required');
    // Before anything else: a node the coordinator did not announce for this run learns nothing.
    this.requireExpected(req.runId, caller, req.spec.name, req.source?.nodeId);
    const existing = this.incoming.get(req.runId);
    if (existing || this.confirmed.has(req.runId) || this.preparing.has(req.runId)) throw new FailedPreconditionError(`run ${req.runId} already has an incoming VM on this node`, { reason: 'INCOMING_EXISTS' });
    this.refuseAborted(req.runId);
    const sourceNodeId = caller.kind === 'peer' ? caller.nodeId : undefined;
    const done = this.doPrepareIncoming({ ...req, spec: req.spec }, sourceNodeId);
    this.preparing.set(req.runId, { done: done.catch(() => undefined), sourceNodeId });
    try {
      return await done;
    } finally {
      this.preparing.delete(req.runId);
    }
  }

  /**
   * Destination: the coordinator announces which node will migrate which VM here as run `runId`
   * (see {@link requireExpected}). Idempotent; repeating it renews the expiry.
   * @throws InvalidArgumentError, AlreadyExistsError (the run is expected from another source or for another VM)
   */
  expectIncoming(req: ExpectIncomingRequest): ExpectIncomingResponse {
    this.validateRunId(req.runId);
    if (!NODE_ID.test(req.sourceNodeId)) throw new InvalidArgumentError(`source_node_id "${req.sourceNodeId}" must match ${NODE_ID.source}`);
    if (req.sourceNodeId === this.d.nodeId) throw new InvalidArgumentError(`source ${req.sourceNodeId} is this node (the destination)`);
    if (!req.vmName) throw new InvalidArgumentError('vm_name is required');
    const now = Date.now();
    const had = this.expectations.get(req.runId);
    if (had && had.untilMs > now && (had.sourceNodeId !== req.sourceNodeId || had.vmName !== req.vmName)) {
      throw new AlreadyExistsError(`run ${req.runId} is already expected from node ${had.sourceNodeId} for VM ${had.vmName}, not from node ${req.sourceNodeId} for VM ${req.vmName}`, { reason: 'EXPECTATION_CONFLICT' });
    }
    for (const [id, e] of this.expectations) if (e.untilMs <= now) this.expectations.delete(id);
    const untilMs = now + EXPECTATION_TTL_MS;
    remember(this.expectations, req.runId, { sourceNodeId: req.sourceNodeId, vmName: req.vmName, untilMs }, EXPECTATIONS_MAX);
    this.d.log.info('incoming migration expected', { runId: req.runId, source: req.sourceNodeId, vm: req.vmName });
    return { expiresAt: new Date(untilMs) };
  }

  /**
   * A peer node may prepare run `runId` only when the coordinator announced it as the run's
   * source, for VM `vmName` (and it may not name another node as the source). The coordinator
   * and plain-text development callers are not checked.
   * @throws PermissionDeniedError (reason NOT_EXPECTED_SOURCE)
   */
  private requireExpected(runId: string, caller: NodeCaller, vmName: string, claimedSource: string | undefined): void {
    if (caller.kind !== 'peer') return;
    const e = this.expectations.get(runId);
    const ok = e !== undefined && e.untilMs > Date.now() && e.sourceNodeId === caller.nodeId && e.vmName === vmName && (!claimedSource || claimedSource === caller.nodeId);
    if (!ok) {
      this.d.log.warn('refused an incoming migration nobody announced', { runId, caller: caller.nodeId, vm: vmName, ...(claimedSource ? { claimedSource } : {}) });
      throw new PermissionDeniedError(`node ${caller.nodeId} is not the expected source of run ${runId} for VM ${vmName} on this node`, { reason: 'NOT_EXPECTED_SOURCE' });
    }
  }

  /**
   * A peer acting on a run that has no incoming copy here: refused when the coordinator announced
   * another node as the run's source.
   * @throws PermissionDeniedError (reason NOT_RUN_SOURCE)
   */
  private refuseOtherSource(runId: string, caller: NodeCaller): void {
    if (caller.kind !== 'peer') return;
    const e = this.expectations.get(runId);
    if (e && e.untilMs > Date.now() && e.sourceNodeId !== caller.nodeId) throw new PermissionDeniedError(`node ${caller.nodeId} is not the source of run ${runId}`, { reason: 'NOT_RUN_SOURCE' });
  }

  /** True when peer `caller` is the announced source of run `runId` (still valid). */
  private isExpectedSource(runId: string, caller: NodeCaller): boolean {
    if (caller.kind !== 'peer') return true;
    const e = this.expectations.get(runId);
    return e !== undefined && e.untilMs > Date.now() && e.sourceNodeId === caller.nodeId;
  }

  /** @throws FailedPreconditionError (reason RUN_ABORTED) for a run aborted here */
  private refuseAborted(runId: string): void {
    const until = this.abortedRuns.get(runId);
    if (until !== undefined && until > Date.now()) throw new FailedPreconditionError(`run ${runId} was aborted on this node; it cannot be prepared again`, { reason: 'RUN_ABORTED' });
  }

  private noteAborted(runId: string): void {
    const now = Date.now();
    for (const [id, until] of this.abortedRuns) if (until <= now || this.abortedRuns.size > PEER_GRANTS_MAX) this.abortedRuns.delete(id);
    this.abortedRuns.set(runId, now + PEER_GRANT_MS);
  }

  private async doPrepareIncoming(req: PrepareIncomingRequest & { spec: NonNullable<PrepareIncomingRequest['spec']> }, sourceNodeId: string | undefined): Promise<PrepareIncomingResponse> {
    const policy = this.effectivePolicy(req.policy);
    const config = resolveMigrationConfig(policy, this.d.supportedCapabilities);
    const tlsDir = this.tlsDirFor(config.tls);
    const now = new Date().toISOString();
    const record: DestinationRecord = {
      format: 1,
      runId: req.runId,
      role: 'destination',
      vmName: req.spec.name,
      phase: 'preparing',
      ...(req.source?.managementAddress ? { peer: req.source } : {}),
      ...(sourceNodeId ? { boundSource: sourceNodeId } : {}),
      policy: MigrationPolicy.toJSON(policy ?? MigrationPolicy.fromPartial({})),
      startedAt: now,
      updatedAt: now,
    };
    // LOCAL disks: where their targets go, and whether they fit — checked before anything starts.
    const targets = req.disks.length > 0 ? await this.d.host.planTargets(req.spec, req.disks) : [];
    if (targets.length > 0) record.disks = targets.map((t) => ({ id: t.id, path: t.path }));
    // Recorded before QEMU starts: a restarted daemon never finds an incoming QEMU it cannot place.
    await this.records.write(record);
    let vm;
    try {
      for (const t of targets) await this.d.host.createTarget(t);
      vm = await this.d.host.createIncoming(req.spec, req.runId, new Map(targets.map((t) => [t.id, t.path])));
    } catch (err) {
      await this.d.host.removeTargets(targets.map((t) => t.path));
      await this.records.remove(req.runId);
      throw err;
    }
    const log = this.d.log.child({ runId: req.runId, vm: req.spec.name, role: 'destination', ...(sourceNodeId ? { source: sourceNodeId } : {}) });
    try {
      // The TLS objects' ids are fixed: the objects themselves are added in listen()'s round trip.
      const tlsCredsId = tlsDir ? tlsCredsIdOf('server') : undefined;
      const tlsAuthzId = tlsDir && sourceNodeId ? TLS_AUTHZ_ID : undefined;
      const inc = new IncomingMigration({
        runId: req.runId,
        vm,
        host: this.d.host,
        config,
        supportedCapabilities: this.d.supportedCapabilities,
        migrationAddress: this.d.migrationAddress,
        ...(this.managementHost ? { managementHost: this.managementHost } : {}),
        log,
        record,
        records: this.records,
        ...(tlsCredsId ? { tlsCredsId } : {}),
        ...(tlsAuthzId ? { tlsAuthzId } : {}),
        ...(sourceNodeId ? { sourceNodeId } : {}),
      });
      record.phase = 'incoming';
      // One round trip (issue 15: the first migration of a drain waits for this): the TLS
      // objects (this QEMU was just started: no authz object to replace), capabilities and
      // parameters, while the incoming phase is recorded; QEMU listens only once all succeeded.
      const { uri, port } = await inc.listen([
        tlsDir ? addTlsCreds(vm.qmp, tlsDir, 'server') : undefined,
        tlsDir && sourceNodeId ? addTlsAuthz(vm.qmp, tlsDistinguishedNameOf(sourceNodeId), { fresh: true }) : undefined,
        this.records.write(record),
      ]);
      // The storage copy's way in: the targets over NBD on the migration address, with the
      // stream's TLS (and the same source-only authz).
      const nbdPort = targets.length > 0 ? await exportTargets(vm.qmp, this.d.migrationAddress, targets.map((t) => t.id), { ...(tlsCredsId ? { credsId: tlsCredsId } : {}), ...(tlsAuthzId ? { authzId: tlsAuthzId } : {}) }, () => freePort(this.d.migrationAddress)) : undefined;
      // Aborted while QEMU was starting: the abort waits for this call, which removes the copy.
      this.refuseAborted(req.runId);
      this.incoming.set(req.runId, inc);
      if (sourceNodeId) this.grant(req.spec.name, sourceNodeId, Number.POSITIVE_INFINITY);
      log.info('incoming migration listening', { uri, tls: config.tls, ...(nbdPort ? { nbdPort, disks: targets.map((t) => t.id) } : {}) });
      return {
        uri,
        pid: vm.pid,
        port,
        ...(nbdPort ? { nbdPort } : {}),
        disks: targets.map((t) => ({ id: t.id, export: diskNodeName(t.id), incremental: t.base !== undefined })),
      };
    } catch (err) {
      await this.d.host.destroy(req.spec.name).catch(() => undefined);
      await this.d.host.removeTargets(targets.map((t) => t.path));
      await this.records.remove(req.runId);
      throw err;
    }
  }

  /**
   * Post-copy with LOCAL disks: the source ended its mirrors after the switch, so the guest may
   * run here now (see destination.ts).
   * @throws NotFoundError, PermissionDeniedError, FailedPreconditionError (NOT_IN_POSTCOPY)
   */
  async resumeIncoming(runId: string, caller: NodeCaller = { kind: 'anonymous' }): Promise<string> {
    return this.incFor(runId, caller).resumeAfterStorage();
  }

  private grant(vmName: string, nodeId: string, untilMs: number): void {
    this.peerGrants.delete(vmName);
    this.peerGrants.set(vmName, { nodeId, untilMs });
    for (const [name, g] of this.peerGrants) {
      if (this.peerGrants.size <= PEER_GRANTS_MAX && g.untilMs > Date.now()) break;
      this.peerGrants.delete(name);
    }
  }

  /**
   * May peer node `nodeId` read VM `vmName` (GetVm, WatchGuest)? Only while it migrates that VM
   * here, and for a while after, so it can follow the guest it handed over.
   */
  peerMayRead(nodeId: string, vmName: string): boolean {
    const g = this.peerGrants.get(vmName);
    return g !== undefined && g.nodeId === nodeId && g.untilMs > Date.now();
  }

  private incFor(runId: string, caller: NodeCaller): IncomingMigration {
    const m = this.incoming.get(runId);
    if (!m) {
      this.refuseOtherSource(runId, caller);
      throw new NotFoundError(`no incoming migration ${runId} on this node`);
    }
    requireRunSource(caller, m.sourceNodeId, runId);
    return m;
  }

  private ended(m: IncomingMigration): void {
    this.incoming.delete(m.runId);
    if (m.sourceNodeId) this.grant(m.vmName, m.sourceNodeId, Date.now() + PEER_GRANT_MS);
  }

  private out(runId: string): SourceMigration {
    const m = this.outgoing.get(runId);
    if (!m) throw new NotFoundError(`no migration ${runId} driven by this node`);
    return m;
  }

  /**
   * @throws NotFoundError, PermissionDeniedError (a peer that is not the run's source),
   *   FailedPreconditionError (NOT_IN_POSTCOPY, INCOMING_QEMU_GONE), UnavailableError
   *   (INCOMING_QMP_UNREACHABLE: no QMP session with the incoming QEMU, see destination.ts)
   */
  async pauseIncoming(runId: string, caller: NodeCaller = { kind: 'anonymous' }): Promise<string> {
    return this.incFor(runId, caller).pause();
  }

  /**
   * @throws NotFoundError, PermissionDeniedError (a peer that is not the run's source),
   *   FailedPreconditionError (INCOMING_QEMU_GONE, RECOVERY_NETWORK_REFUSED), UnavailableError
   *   (INCOMING_QMP_UNREACHABLE)
   */
  async recoverIncoming(runId: string, caller: NodeCaller = { kind: 'anonymous' }, network: 'migration' | 'management' = 'migration'): Promise<{ uri: string; port: number }> {
    return this.incFor(runId, caller).recover(network);
  }

  /**
   * The handover (see destination.ts). Idempotent: a repeated confirm — the source retrying after
   * a lost answer, or after either daemon restarted — gets the first answer again.
   * @throws NotFoundError (no such incoming migration), FailedPreconditionError NOT_HANDED_OVER,
   *   PermissionDeniedError (a peer that is not the run's source)
   */
  async confirmIncoming(req: ConfirmIncomingRequest, caller: NodeCaller = { kind: 'anonymous' }): Promise<ConfirmIncomingResponse> {
    const done = this.confirmed.get(req.runId);
    if (done) {
      requireRunSource(caller, this.confirmedBy.get(req.runId), req.runId);
      return done;
    }
    const m = this.incFor(req.runId, caller);
    const res = await m.confirm(req.timeoutMs || 30_000);
    remember(this.confirmed, req.runId, res, this.kept);
    if (m.sourceNodeId) remember(this.confirmedBy, req.runId, m.sourceNodeId, this.kept);
    if (this.incoming.get(req.runId) === m) {
      m.detach();
      this.ended(m);
    }
    return res;
  }

  /**
   * Kills the incoming QEMU of a run and forgets it. Idempotent: a run with no incoming copy here
   * succeeds, which is the source's proof that no copy of the guest runs here.
   * @throws FailedPreconditionError GUEST_RUNS_HERE once the guest runs here, PermissionDeniedError
   *   (a peer that is not the run's source)
   */
  async abortIncoming(runId: string, caller: NodeCaller = { kind: 'anonymous' }): Promise<void> {
    if (this.confirmed.has(runId)) {
      requireRunSource(caller, this.confirmedBy.get(runId), runId);
      throw new FailedPreconditionError(`the guest of run ${runId} was handed over and runs on this node; refusing to destroy it`, { reason: 'GUEST_RUNS_HERE' });
    }
    const pending = this.preparing.get(runId);
    if (pending) {
      // PrepareIncoming still starting the QEMU: it sees the abort before it registers the copy,
      // removes it and fails; the answer waits for that, so "gone" is true when it is given.
      requireRunSource(caller, pending.sourceNodeId, runId);
      this.noteAborted(runId);
      await pending.done;
    }
    const m = this.incoming.get(runId);
    if (!m) {
      // Already gone (QEMU exits by itself after a failed or cancelled stream), or never here:
      // nothing to change, except that a PrepareIncoming still on its way is refused — when the
      // caller may prepare the run at all (another node cannot block a run it does not own).
      this.refuseOtherSource(runId, caller);
      if (!this.confirmed.has(runId) && this.isExpectedSource(runId, caller)) this.noteAborted(runId);
      return;
    }
    requireRunSource(caller, m.sourceNodeId, runId);
    this.noteAborted(runId);
    await m.abort();
    this.ended(m);
  }

  /**
   * A migration driven here. A peer node may ask only about runs it is the destination of (an
   * incoming copy waiting for its handover asks how the run stands).
   * @throws NotFoundError, PermissionDeniedError
   */
  get(runId: string, caller: NodeCaller = { kind: 'anonymous' }): MigrationInfo {
    const info = this.past.get(runId) ?? this.out(runId).info();
    if (caller.kind === 'peer' && info.destination?.nodeId !== caller.nodeId) {
      throw new PermissionDeniedError(`node ${caller.nodeId} is not the destination of run ${runId}`, { reason: 'NOT_RUN_DESTINATION' });
    }
    return info;
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

  /**
   * Lets a migration started with hold_ms go on to its stream. Idempotent: a migration that is not
   * held (or has finished since the daemon started) is returned as it is.
   * @throws NotFoundError
   */
  release(runId: string): MigrationInfo {
    const past = this.past.get(runId);
    if (past) return past;
    const m = this.out(runId);
    m.release();
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
