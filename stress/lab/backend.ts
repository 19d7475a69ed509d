/**
 * What the lab runner needs from a migd cluster, as one narrow interface with two implementations:
 * - {@link ./coordinator-backend.ts}: through the coordinator's public API (CreateVm, SubmitPlan,
 *   Watch, CancelRun, GetRunTimeline) — the real thing: the coordinator's policy engine runs the
 *   migration and its history store records it;
 * - {@link ./direct-backend.ts}: straight to the node daemons, with the coordinator domain's
 *   convergence policy driven in-process and the timeline assembled by the lab — for when no
 *   coordinator is available.
 * Both hand back proto GetRunTimelineResponse, so the report cannot tell them apart.
 */
import { MigrationState, type GuestPerfSample, type MigrationPolicy, type NetworkBlackout, type ProgressSample, type VmSpec } from '../../services/shared/gen/migd/v1/common.js';
import type { GetRunTimelineResponse } from '../../services/shared/gen/migd/v1/coordinator.js';
import type { LabOutcome } from './metrics.js';

export type BackendMode = 'coordinator' | 'direct';

export interface MigrateRequest {
  /** Idempotency key of the plan (direct mode: the run id). Unique per attempt. */
  readonly key: string;
  readonly vmName: string;
  readonly memoryMib: number;
  readonly sourceNodeId: string;
  readonly destinationNodeId: string;
  readonly policy: MigrationPolicy;
  /** The strategy label stored with the run. */
  readonly label: string;
  /** Past it the run is cancelled and reported as 'timed-out'. */
  readonly timeLimitMs: number;
  /** Each progress sample, with the guest's latest combined sample. */
  readonly onProgress?: (p: ProgressSample, guest: GuestPerfSample | undefined) => void;
  /** State changes and actions, in words. */
  readonly onEvent?: (line: string) => void;
  readonly signal?: AbortSignal;
}

export interface MigrateResult {
  readonly runId: string;
  readonly outcome: LabOutcome;
  readonly note?: string;
}

export interface LabBackend {
  readonly mode: BackendMode;
  /** Node ids the backend knows, in a stable order. */
  nodeIds(): Promise<string[]>;
  /** Starts a VM on `nodeId`. @throws MigdError from the cluster */
  createVm(spec: VmSpec, nodeId: string): Promise<void>;
  /**
   * Waits until the VM's guest has reported at least `minSamples` samples with a rate and `minMs`
   * have passed since the first one (the baseline before a migration). With `idle`, a guest that
   * writes nothing (so reports no rate) counts once it has run that long.
   * @throws Error when that does not happen within `timeoutMs`
   */
  waitGuest(vmName: string, opts: { minSamples: number; minMs: number; timeoutMs: number; idle?: boolean; signal?: AbortSignal }): Promise<void>;
  /** Runs one migration to its end (or the time limit). */
  migrate(req: MigrateRequest): Promise<MigrateResult>;
  /**
   * Attaches the network blackout the lab measured from outside the guest to a finished run (its
   * timeline then carries it in `run.networkBlackout`).
   */
  recordBlackout(runId: string, blackout: NetworkBlackout): Promise<void>;
  /** The run's timeline. @throws NotFoundError */
  timeline(runId: string): Promise<GetRunTimelineResponse>;
  /** Destroys the VM wherever it runs, with the disk images the nodes created for it; no error when it is gone. */
  destroyVm(vmName: string): Promise<void>;
  /** Closes clients and streams (not the cluster's processes). */
  close(): Promise<void>;
}

/** A cancellable sleep. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal?.reason instanceof Error ? signal.reason : new Error('aborted'));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The lab's outcome for a finished run's state. */
export function outcomeOf(state: MigrationState): LabOutcome {
  return state === MigrationState.MIGRATION_STATE_SUCCEEDED ? 'succeeded' : state === MigrationState.MIGRATION_STATE_CANCELLED ? 'cancelled' : 'failed';
}

/** "precopy", "succeeded"… */
export function stateName(s: MigrationState): string {
  return (MigrationState[s] ?? String(s)).replace('MIGRATION_STATE_', '').toLowerCase();
}
