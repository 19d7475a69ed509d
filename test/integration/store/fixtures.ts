/** Helpers for the history-store integration tests: a store on a real file in a temp dir. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeEvent } from '../../../services/shared/events/codec.js';
import type { Event } from '../../../services/shared/gen/migd/v1/events.js';
import {
  openSqliteHistoryStore,
  type SqliteHistoryStore,
  type SqliteHistoryStoreOptions,
} from '../../../services/coordinator/store/sqlite.js';
import { createLogger } from '../../../services/shared/log.js';

/** A settable clock starting at `start`. */
export class FakeClock {
  constructor(public t: number = Date.UTC(2026, 10, 22, 12, 0, 0)) {}
  now = (): number => this.t;
  advance(ms: number): void {
    this.t += ms;
  }
}

/** A temp dir that tests remove in teardown. */
export async function tempDir(prefix = 'migd-store-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

export async function removeDir(dir: string | undefined): Promise<void> {
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
}

export const quietLogger = createLogger('test', {}, () => undefined, 'error');

/** Opens a store on `<dir>/history.db`. */
export function openStore(dir: string, opts: Partial<SqliteHistoryStoreOptions> = {}): Promise<SqliteHistoryStore> {
  return openSqliteHistoryStore({ filename: join(dir, 'history.db'), logger: quietLogger, ...opts });
}

/** All unpublished outbox events, decoded, in outbox order. */
export async function outboxEvents(store: Pick<SqliteHistoryStore, 'readUnpublished'>): Promise<Event[]> {
  const rows = await store.readUnpublished(100_000);
  return rows.map((r) => {
    const ev = decodeEvent(r.payload);
    if (ev.id !== r.eventId || ev.subject !== r.subject) throw new Error('outbox row and its event disagree');
    return ev;
  });
}
