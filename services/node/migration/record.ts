/**
 * The persisted phase of every migration this node takes part in (STYLE 18): one small JSON file
 * per run under `<stateDir>/migrations/<runId>.json`, written atomically (temp file + rename), so
 * a node daemon killed at any moment finds, when restarted, which migrations its QEMUs may still
 * be carrying out and what it had promised about them — and reconciles with QEMU before acting.
 *
 * The records live beside the VM folders, not inside them: a source's VM folder goes away with
 * its QEMU at the handover, but the run's outcome must survive until the coordinator has read it.
 *
 * Source phases, in order (a phase is written *before* the step that makes it true):
 *   starting   the destination is being prepared; QEMU's `migrate` not yet issued
 *   streaming  pre-copy: the source keeps running; it may resume only with proof (see source.ts)
 *   postcopy   `migrate-start-postcopy` issued: the source never runs this guest again
 *   completed  QEMU completed; the handover (ConfirmIncoming) is pending
 *   finished   the outcome is in `outcome`; kept so GetMigration answers after a restart
 * Destination phases:
 *   preparing  the incoming QEMU (`-S -incoming defer`) is being started
 *   incoming   listening / receiving; the copy here is paused and owned by the source
 *   running    the guest runs here (post-copy started, or handed over); this node owns it
 *   confirmed  handover done and verification answered (`confirm` keeps the answer: idempotent)
 */
import { mkdirSync } from 'node:fs';
import { readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { MigrationEndpoint } from '../../shared/gen/migd/v1/node.js';

export type SourcePhase = 'starting' | 'streaming' | 'postcopy' | 'completed' | 'finished';
export type DestinationPhase = 'preparing' | 'incoming' | 'running' | 'confirmed';

interface RecordBase {
  readonly format: 1;
  readonly runId: string;
  readonly vmName: string;
  readonly startedAt: string;
  updatedAt: string;
}

export interface SourceRecord extends RecordBase {
  readonly role: 'source';
  phase: SourcePhase;
  /** The destination node. */
  readonly peer: MigrationEndpoint;
  /** MigrationPolicy.toJSON() of the request. */
  readonly policy: unknown;
  /** MigrationInfo.toJSON() once finished. */
  outcome?: unknown;
}

export interface DestinationRecord extends RecordBase {
  readonly role: 'destination';
  phase: DestinationPhase;
  /** The source node, when the source said (older sources do not). */
  readonly peer?: MigrationEndpoint;
  /** The node id of the certificate that prepared the run: only that node may act on it. */
  readonly boundSource?: string;
  /** MigrationPolicy.toJSON() of the request. */
  readonly policy: unknown;
  /** ConfirmIncomingResponse.toJSON() once confirmed. */
  confirm?: unknown;
  /**
   * Target images this node created for the run's LOCAL disks (storage copy), recorded before
   * they are created: removed with the incoming copy when the guest never ran here.
   */
  disks?: { id: string; path: string }[];
}

export type MigrationRecord = SourceRecord | DestinationRecord;

/** The records of one node. Writes are atomic; reads skip files that do not parse. */
export class MigrationRecords {
  readonly dir: string;
  private seq = 0;

  constructor(stateDir: string, private readonly now: () => number = Date.now) {
    this.dir = join(stateDir, 'migrations');
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
  }

  private file(runId: string): string {
    return join(this.dir, `${runId}.json`);
  }

  /** Writes (creates or replaces) a record atomically, stamping updatedAt. */
  async write(rec: MigrationRecord): Promise<void> {
    rec.updatedAt = new Date(this.now()).toISOString();
    const tmp = `${this.file(rec.runId)}.${process.pid}.${++this.seq}.tmp`;
    await writeFile(tmp, JSON.stringify(rec), { mode: 0o600 });
    await rename(tmp, this.file(rec.runId));
  }

  async remove(runId: string): Promise<void> {
    await rm(this.file(runId), { force: true });
  }

  /** Every readable record, oldest first; leftover temp files are removed. */
  async list(): Promise<MigrationRecord[]> {
    const out: MigrationRecord[] = [];
    for (const f of await readdir(this.dir)) {
      if (f.endsWith('.tmp')) {
        await rm(join(this.dir, f), { force: true });
        continue;
      }
      if (!f.endsWith('.json')) continue;
      try {
        const r = JSON.parse(await readFile(join(this.dir, f), 'utf8')) as MigrationRecord;
        if (r.format === 1 && typeof r.runId === 'string' && (r.role === 'source' || r.role === 'destination')) out.push(r);
      } catch {
        // a file that does not parse cannot be a record this code wrote (writes are atomic)
      }
    }
    return out.sort((a, b) => a.startedAt.localeCompare(b.startedAt));
  }

  /** Removes finished source and confirmed destination records older than `maxAgeMs`. */
  async prune(maxAgeMs: number): Promise<void> {
    const cutoff = this.now() - maxAgeMs;
    for (const r of await this.list()) {
      const done = (r.role === 'source' && r.phase === 'finished') || (r.role === 'destination' && r.phase === 'confirmed');
      if (done && Date.parse(r.updatedAt) < cutoff) await this.remove(r.runId);
    }
  }
}
