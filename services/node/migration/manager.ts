/**
 * All migrations of one node daemon, by run id: the ones it drives as source and the incoming ones
 * it hosts as destination. Validates requests before any QEMU is touched, keeps StartMigration
 * idempotent by run id, and hands out watch streams.
 */
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../../shared/errors.js';
import { PolicyKind } from '../../shared/gen/migd/v1/common.js';
import type {
  AdjustMigrationRequest,
  ConfirmIncomingRequest,
  ConfirmIncomingResponse,
  MigrationEndpoint,
  MigrationInfo,
  PrepareIncomingRequest,
  PrepareIncomingResponse,
  StartMigrationRequest,
  WatchMigrationResponse,
} from '../../shared/gen/migd/v1/node.js';
import type { Logger } from '../../shared/log.js';
import { resolveMigrationConfig } from './config.js';
import { IncomingMigration } from './destination.js';
import { SourceMigration, isTerminal, type SourceOptions } from './source.js';
import { addTlsCreds, TLS_HOSTNAME } from './tls.js';
import type { NodePeer, VmHost } from './types.js';

const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

export interface MigrationManagerDeps {
  readonly nodeId: string;
  readonly host: VmHost;
  readonly supportedCapabilities: ReadonlySet<string>;
  readonly migrationAddress: string;
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

  constructor(private readonly d: MigrationManagerDeps) {}

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
    if (existing) throw new FailedPreconditionError(`run ${req.runId} already has an incoming VM on this node`, { reason: 'INCOMING_EXISTS' });
    const config = resolveMigrationConfig(req.policy, this.d.supportedCapabilities);
    const tlsDir = this.tlsDirFor(config.tls);
    const vm = await this.d.host.createIncoming(req.spec, req.runId);
    const log = this.d.log.child({ runId: req.runId, vm: req.spec.name, role: 'destination' });
    try {
      const tlsCredsId = tlsDir ? await addTlsCreds(vm.qmp, tlsDir, 'server') : undefined;
      const inc = new IncomingMigration({
        runId: req.runId,
        vm,
        host: this.d.host,
        policy: req.policy ?? ({} as never),
        config,
        supportedCapabilities: this.d.supportedCapabilities,
        migrationAddress: this.d.migrationAddress,
        log,
        ...(tlsCredsId ? { tlsCredsId } : {}),
      });
      const uri = await inc.listen();
      this.incoming.set(req.runId, inc);
      return { uri, pid: vm.pid };
    } catch (err) {
      await this.d.host.destroy(req.spec.name).catch(() => undefined);
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

  async confirmIncoming(req: ConfirmIncomingRequest): Promise<ConfirmIncomingResponse> {
    const m = this.inc(req.runId);
    const res = await m.confirm(req.timeoutMs || 30_000, req.resume);
    if (res.alive) {
      m.detach();
      this.incoming.delete(req.runId);
    }
    return { alive: res.alive, sample: res.sample, pid: m.pid };
  }

  async abortIncoming(runId: string): Promise<void> {
    const m = this.incoming.get(runId);
    if (!m) return; // already gone (QEMU exits by itself after a failed or cancelled stream)
    await m.abort();
    this.incoming.delete(runId);
  }

  get(runId: string): MigrationInfo {
    return this.out(runId).info();
  }

  list(activeOnly: boolean): MigrationInfo[] {
    return [...this.outgoing.values()]
      .map((m) => m.info())
      .filter((i) => !activeOnly || !isTerminal(i.state))
      .sort((a, b) => (b.startedAt?.getTime() ?? 0) - (a.startedAt?.getTime() ?? 0));
  }

  watch(runId: string, signal?: AbortSignal): AsyncIterable<WatchMigrationResponse> {
    return this.out(runId).watch(signal);
  }

  async adjust(req: AdjustMigrationRequest): Promise<MigrationInfo> {
    const m = this.out(req.runId);
    if (req.downtimeLimitMs !== undefined && (req.downtimeLimitMs <= 0 || req.downtimeLimitMs > 2_000_000)) {
      throw new InvalidArgumentError(`downtime_limit_ms must be 1..2000000, got ${req.downtimeLimitMs}`);
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
    for (const m of this.outgoing.values()) m.detach();
    for (const m of this.incoming.values()) m.detach();
  }
}
