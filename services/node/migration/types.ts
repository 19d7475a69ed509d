/**
 * The seams the migration drivers depend on: a VM they can drive over QMP, the host that owns the
 * VMs, and the destination node's API. Narrow on purpose, so the drivers can be read (and tested)
 * without the whole node daemon.
 */
import type { GuestPerfSample, VmSpec } from '../../shared/gen/migd/v1/common.js';
import type {
  AbortIncomingRequest,
  AbortIncomingResponse,
  ConfirmIncomingRequest,
  ConfirmIncomingResponse,
  GetMigrationRequest,
  GetMigrationResponse,
  GetVmRequest,
  GetVmResponse,
  PauseIncomingRequest,
  PauseIncomingResponse,
  DiskTransfer,
  PrepareIncomingRequest,
  PrepareIncomingResponse,
  RecoverIncomingRequest,
  RecoverIncomingResponse,
  ResumeIncomingRequest,
  ResumeIncomingResponse,
  WatchGuestRequest,
  WatchGuestResponse,
} from '../../shared/gen/migd/v1/node.js';
import type { CallOptions } from '../../shared/rpc/client.js';
import type { QmpClient } from '../qmp/client.js';

/** A running QEMU the drivers can command. */
export interface MigratableVm {
  readonly name: string;
  readonly spec: VmSpec;
  readonly pid: number;
  readonly qmp: QmpClient;
  /**
   * Parsed guest-performance samples from now on, until `signal` fires or the VM goes away; with
   * `recentMs`, first those of the last `recentMs` ms (what the node kept of them).
   */
  guestSamples(signal: AbortSignal, recentMs?: number): AsyncIterable<GuestPerfSample>;
  /** The most recent sample and the host time (ms) it arrived, if any. */
  lastGuestSample(): { sample: GuestPerfSample; hostMs: number } | undefined;
  /** CPU seconds (user + system) the QEMU process has used (0 once it is gone). */
  cpuSeconds(): Promise<number>;
}

/** What the migration drivers need from the node's VM manager. */
export interface VmHost {
  /** The VM, for migrating it. @throws NotFoundError, FailedPreconditionError (not running). */
  source(name: string): MigratableVm;
  /** Any VM whose QEMU is alive, whatever its role (a restarted daemon adopting migrations). */
  attach(name: string): MigratableVm | undefined;
  /** The VMs on this node, with their role and whether QEMU is alive. */
  list(): { name: string; role: 'running' | 'incoming' | 'migrating'; alive: boolean }[];
  /** Marks a VM as taking part in a migration (or not, with undefined). */
  setMigration(name: string, runId: string | undefined): void;
  /**
   * Starts an incoming QEMU (`-incoming defer`) with the identical device model.
   * @throws InvalidArgumentError, AlreadyExistsError, ResourceExhaustedError
   */
  createIncoming(spec: VmSpec, runId: string, targets?: ReadonlyMap<string, string>): Promise<MigratableVm>;
  /**
   * The LOCAL disks of a VM a migration must copy, with their sizes now (source side).
   * @throws NotFoundError
   */
  diskTransfers(name: string): Promise<DiskTransfer[]>;
  /**
   * Where the targets of a storage copy go on this node (destination side), checked against the
   * VM's spec: one per LOCAL disk, in a fresh folder of the first storage root, and whether the
   * overlay's base exists here (then the target is an overlay on it and only the top is copied).
   * @throws InvalidArgumentError (transfers that do not match the spec), ResourceExhaustedError
   *   (INSUFFICIENT_STORAGE: the storage root lacks the allocated bytes)
   */
  planTargets(spec: VmSpec, transfers: readonly DiskTransfer[]): Promise<{ id: string; path: string; format: 'raw' | 'qcow2'; virtualBytes: number; base?: string }[]>;
  /** Creates one planned target image (sparse). */
  createTarget(t: { path: string; format: 'raw' | 'qcow2'; virtualBytes: number; base?: string }): Promise<void>;
  /** Removes target images this node created (a storage copy that did not end here). Never throws. */
  removeTargets(paths: readonly string[]): Promise<void>;
  /** The incoming VM has become the running VM on this node. */
  adoptIncoming(name: string): void;
  /** Stops QEMU (quit, then kill) and forgets the VM. */
  destroy(name: string): Promise<void>;
}

/** The destination node daemon's incoming-side API (a subset of NodeService). */
export interface NodePeer {
  prepareIncoming(req: PrepareIncomingRequest, opts?: CallOptions): Promise<PrepareIncomingResponse>;
  pauseIncoming(req: PauseIncomingRequest, opts?: CallOptions): Promise<PauseIncomingResponse>;
  recoverIncoming(req: RecoverIncomingRequest, opts?: CallOptions): Promise<RecoverIncomingResponse>;
  confirmIncoming(req: ConfirmIncomingRequest, opts?: CallOptions): Promise<ConfirmIncomingResponse>;
  abortIncoming(req: AbortIncomingRequest, opts?: CallOptions): Promise<AbortIncomingResponse>;
  resumeIncoming(req: ResumeIncomingRequest, opts?: CallOptions): Promise<ResumeIncomingResponse>;
  getVm(req: GetVmRequest, opts?: CallOptions): Promise<GetVmResponse>;
  /** Asked of a source node by a destination whose incoming copy waits for its handover. */
  getMigration(req: GetMigrationRequest, opts?: CallOptions): Promise<GetMigrationResponse>;
  watchGuest(req: WatchGuestRequest, opts?: CallOptions): AsyncIterable<WatchGuestResponse>;
}

/** Capability names migd manages; each is set explicitly (true or false) on both ends. */
export const MANAGED_CAPABILITIES = ['auto-converge', 'postcopy-ram', 'postcopy-preempt', 'return-path', 'xbzrle', 'multifd', 'switchover-ack', 'events', 'postcopy-blocktime'] as const;

/** The `migrate-set-capabilities` argument for a resolved capability map. */
export function capabilityList(caps: Readonly<Record<string, boolean>>, supported: ReadonlySet<string>): { capability: string; state: boolean }[] {
  return MANAGED_CAPABILITIES.filter((c) => supported.has(c)).map((c) => ({ capability: c, state: caps[c] === true }));
}
