/**
 * The seam between a store's transactional outbox and the relay that publishes it. A store
 * writes an outbox row in the same transaction as the change it describes; the relay reads
 * unpublished rows in order, publishes them and marks them published. Kept in `shared` so the
 * relay does not depend on the coordinator's store.
 */

/** One event waiting in (or published from) the outbox. */
export interface OutboxRecord {
  /** Position in the outbox; publication order. */
  seq: number;
  /** The event id (`Nats-Msg-Id`). */
  eventId: string;
  /** The NATS subject. */
  subject: string;
  /** The encoded `migd.v1.Event`. */
  payload: Uint8Array;
  /** When the row was written. */
  createdAt: Date;
}

/** How far the relay is behind. */
export interface OutboxLag {
  /** Rows not yet published. */
  unpublished: number;
  /** Creation time of the oldest unpublished row; null when none. */
  oldestCreatedAt: Date | null;
}

/** What the relay needs from a store. */
export interface OutboxSource {
  /** Up to `limit` unpublished rows, lowest `seq` first. */
  readUnpublished(limit: number): Promise<OutboxRecord[]>;
  /** Marks rows published (idempotent). */
  markPublished(seqs: readonly number[], at: Date): Promise<void>;
  /** The current backlog. */
  outboxLag(): Promise<OutboxLag>;
  /** Calls `listener` after every commit that enqueued events; returns an unsubscribe function. */
  onOutboxEnqueued(listener: () => void): () => void;
}
