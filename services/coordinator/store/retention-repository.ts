/** Retention: deletes samples and published outbox rows past their time, in short chunks. */
import type { Db, StoreDatabase } from './database.js';
import type { PruneResult, RetentionRepository } from './types.js';

/** Rows per DELETE transaction while pruning, to keep each transaction short. */
const PRUNE_CHUNK = 5000;

export class SqlRetentionRepository implements RetentionRepository {
  constructor(private readonly d: StoreDatabase) {}

  async pruneSamples(now: Date = new Date(this.d.now())): Promise<PruneResult> {
    const result: PruneResult = { progress: 0, guest: 0, hostCpu: 0 };
    if (this.d.o.sampleRetentionMs === null) return result;
    const cutoff = now.getTime() - this.d.o.sampleRetentionMs;
    const oldRuns = (db: Db) =>
      db.selectFrom('runs').select('id').where('finished_at', 'is not', null).where('finished_at', '<', cutoff);
    result.progress = await this.deleteInChunks((trx) =>
      trx
        .deleteFrom('progress_samples')
        .where('id', 'in', trx.selectFrom('progress_samples').select('id').where('run_id', 'in', oldRuns(trx)).limit(PRUNE_CHUNK))
        .executeTakeFirst(),
    );
    result.hostCpu = await this.deleteInChunks((trx) =>
      trx
        .deleteFrom('host_cpu_samples')
        .where('id', 'in', trx.selectFrom('host_cpu_samples').select('id').where('run_id', 'in', oldRuns(trx)).limit(PRUNE_CHUNK))
        .executeTakeFirst(),
    );
    result.guest = await this.deleteInChunks((trx) =>
      trx
        .deleteFrom('guest_samples')
        .where(
          'id',
          'in',
          trx
            .selectFrom('guest_samples')
            .select('id')
            .where('at', '<', cutoff)
            .where((eb) =>
              eb.or([
                eb('run_id', 'is', null),
                eb('run_id', 'not in', eb.selectFrom('runs').select('runs.id').where('runs.finished_at', 'is', null)),
              ]),
            )
            .limit(PRUNE_CHUNK),
        )
        .executeTakeFirst(),
    );
    return result;
  }

  async pruneOutbox(now: Date = new Date(this.d.now())): Promise<number> {
    const cutoff = now.getTime() - this.d.o.outboxRetentionMs;
    return this.deleteInChunks((trx) =>
      trx
        .deleteFrom('outbox')
        .where(
          'seq',
          'in',
          trx.selectFrom('outbox').select('seq').where('published_at', 'is not', null).where('published_at', '<', cutoff).limit(PRUNE_CHUNK),
        )
        .executeTakeFirst(),
    );
  }

  /** Repeats a chunked DELETE, one short transaction each, until it deletes nothing. */
  private async deleteInChunks(del: (trx: Db) => Promise<{ numDeletedRows: bigint }>): Promise<number> {
    let total = 0;
    for (;;) {
      const r = await this.d.write((trx) => del(trx));
      const n = Number(r.numDeletedRows);
      total += n;
      if (n < PRUNE_CHUNK) return total;
    }
  }
}
