/**
 * The single "is migrating" state of a node's VMs: the run each VM takes part in, as source or as
 * an incoming copy. It is the one place that decides whether a VM may start migrating, so that a
 * second StartMigration for a VM another run already claimed is refused, whoever asks.
 */
import { FailedPreconditionError } from '../../shared/errors.js';

export class MigratingVms {
  private readonly runs = new Map<string, string>();

  /** The run VM `name` takes part in, if any. */
  runOf(name: string): string | undefined {
    return this.runs.get(name);
  }

  has(name: string): boolean {
    return this.runs.has(name);
  }

  /** @throws FailedPreconditionError (VM_ALREADY_MIGRATING) when a run has claimed the VM */
  refuseIfMigrating(name: string): void {
    const run = this.runs.get(name);
    if (run) throw new FailedPreconditionError(`VM ${name} is already migrating (run ${run})`, { reason: 'VM_ALREADY_MIGRATING' });
  }

  /** Marks VM `name` as taking part in run `runId`, or in none (undefined). */
  set(name: string, runId: string | undefined): void {
    if (runId) this.runs.set(name, runId);
    else this.runs.delete(name);
  }
}
