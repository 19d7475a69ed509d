/**
 * The transactional outbox as the relay and the event bus read it. The other repositories write
 * into it, inside their own transactions, through {@link StoreDatabase.enqueue}.
 */
import type { OutboxLag, OutboxRecord } from '../../shared/events/outbox.js';
import { INSERT_CHUNK, PUBLISHED_MARKS, type StoreDatabase } from './database.js';
import type { OutboxRepository } from './types.js';

export class SqlOutboxRepository implements OutboxRepository {
  constructor(private readonly d: StoreDatabase) {}

  async readUnpublished(limit: number): Promise<OutboxRecord[]> {
    this.d.checkOpen();
    const rows = await this.d.db
      .selectFrom('outbox')
      .select(['seq', 'event_id', 'subject', 'payload', 'created_at'])
      .where('published_at', 'is', null)
      .orderBy('seq')
      .limit(Math.max(1, Math.floor(limit)))
      .execute();
    return rows.map(toRecord);
  }

  async markPublished(seqs: readonly number[], at: Date): Promise<void> {
    if (seqs.length === 0) return;
    await this.d.write(async (trx) => {
      for (let i = 0; i < seqs.length; i += INSERT_CHUNK) {
        await trx
          .updateTable('outbox')
          .set({ published_at: at.getTime() })
          .where('seq', 'in', seqs.slice(i, i + INSERT_CHUNK))
          .where('published_at', 'is', null)
          .execute();
      }
      // Rows committed before (the group inserts its own after all of its writes): it commutes with
      // every write but another mark (StoreDatabase.write's keys).
    }, { keys: [PUBLISHED_MARKS] });
  }

  async outboxLag(): Promise<OutboxLag> {
    this.d.checkOpen();
    const r = await this.d.db
      .selectFrom('outbox')
      .select((eb) => [eb.fn.countAll<number>().as('n'), eb.fn.min('created_at').as('oldest')])
      .where('published_at', 'is', null)
      .executeTakeFirstOrThrow();
    return { unpublished: Number(r.n), oldestCreatedAt: r.oldest === null ? null : new Date(Number(r.oldest)) };
  }

  async readOutbox(opts: { afterSeq?: number; runId?: string; limit: number }): Promise<OutboxRecord[]> {
    this.d.checkOpen();
    let q = this.d.db
      .selectFrom('outbox')
      .select(['seq', 'event_id', 'subject', 'payload', 'created_at'])
      .where('seq', '>', opts.afterSeq ?? 0)
      .orderBy('seq')
      .limit(Math.max(1, Math.floor(opts.limit)));
    if (opts.runId !== undefined) q = q.where('run_id', '=', opts.runId);
    return (await q.execute()).map(toRecord);
  }

  async lastOutboxSeq(): Promise<number> {
    this.d.checkOpen();
    return this.d.dialect.lastOutboxSeq(this.d.db);
  }

  onOutboxEnqueued(listener: () => void): () => void {
    return this.d.onOutboxEnqueued(listener);
  }
}

function toRecord(r: { seq: number; event_id: string; subject: string; payload: Uint8Array; created_at: number }): OutboxRecord {
  return { seq: r.seq, eventId: r.event_id, subject: r.subject, payload: r.payload, createdAt: new Date(r.created_at) };
}
