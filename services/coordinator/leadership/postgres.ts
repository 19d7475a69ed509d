/**
 * The election primitive on Postgres: a session-level advisory lock held on one pinned
 * connection, and the term row `migd_leader` (one row: term, leader address, time). The lock is
 * the database's own mutual exclusion; it is released by the server the moment the holding
 * session ends — at once when the leader's process dies (the kernel closes its socket), within
 * the keepalive bound set below when its host or link dies. Whoever takes the lock bumps the
 * term in the same session: the term is the fencing token the store checks on every write.
 */
import pg from 'pg';
import type { ElectionBackend, LeaderRecord } from './leadership.js';

/** The advisory lock key of coordinator leadership ('migd' 'lead' as two int4). */
const LOCK_CLASS = 0x6d696764;
const LOCK_OBJECT = 0x6c656164;

/**
 * Creates the term row if absent (idempotent, safe when several coordinators start together).
 * The store's migrations create it too; the election does not depend on their order.
 */
export const LEADER_TABLE_SQL = `CREATE TABLE IF NOT EXISTS migd_leader (
  id smallint PRIMARY KEY CHECK (id = 1),
  term bigint NOT NULL,
  leader text NOT NULL,
  elected_at timestamptz NOT NULL DEFAULT now()
)`;

/** Serializes the creation of the term row's table (two coordinators starting at once). */
export const SCHEMA_LOCK: readonly [number, number] = [LOCK_CLASS, LOCK_OBJECT + 1];

export interface PostgresElectionOptions {
  /** postgres://… of the shared database. */
  readonly url: string;
  /** Connect timeout of the pinned session, in ms. Default 3000. */
  readonly connectTimeoutMs?: number;
}

export class PostgresElection implements ElectionBackend {
  private client: pg.Client | undefined;
  private connecting: Promise<pg.Client> | undefined;
  private held = false;

  constructor(private readonly o: PostgresElectionOptions) {}

  private session(): Promise<pg.Client> {
    if (this.client) return Promise.resolve(this.client);
    this.connecting ??= this.open().finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  private async open(): Promise<pg.Client> {
    const c = new pg.Client({
      connectionString: this.o.url,
      connectionTimeoutMillis: this.o.connectTimeoutMs ?? 3000,
      application_name: 'migd-coordinator-election',
      keepAlive: true,
      keepAliveInitialDelayMillis: 1000,
    });
    // A broken session is dropped; the loop notices on its next call and opens a new one.
    c.on('error', () => {
      if (this.client === c) this.drop();
    });
    c.on('end', () => {
      if (this.client === c) this.drop();
    });
    try {
      await c.connect();
      // The server ends a session whose client vanished (host down, link cut) within ~5 s, which
      // frees the lock; a live leader proves itself far more often than that.
      await c.query('SET tcp_keepalives_idle = 2; SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3');
      await c.query('BEGIN');
      await c.query('SELECT pg_advisory_xact_lock($1, $2)', [...SCHEMA_LOCK]);
      await c.query(LEADER_TABLE_SQL);
      await c.query('COMMIT');
    } catch (err) {
      await c.end().catch(() => undefined);
      throw err;
    }
    this.client = c;
    return c;
  }

  private drop(): void {
    const c = this.client;
    this.client = undefined;
    this.held = false;
    if (c) void endQuickly(c);
  }

  async tryAcquire(me: string): Promise<LeaderRecord | undefined> {
    const c = await this.session();
    if (!this.held) {
      const r = await c.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1, $2) AS ok', [LOCK_CLASS, LOCK_OBJECT]);
      if (!r.rows[0]?.ok) return undefined;
      this.held = true;
    }
    // The new term is written by the lock holder only, so terms only grow and are never shared.
    const r = await c.query<{ term: string; leader: string }>(
      `INSERT INTO migd_leader (id, term, leader, elected_at) VALUES (1, 1, $1, now())
       ON CONFLICT (id) DO UPDATE SET term = migd_leader.term + 1, leader = EXCLUDED.leader, elected_at = now()
       RETURNING term, leader`,
      [me],
    );
    const row = r.rows[0]!;
    return { term: Number(row.term), leader: row.leader };
  }

  async confirm(): Promise<void> {
    const c = this.client;
    if (!c || !this.held) throw new Error('the election session is gone');
    // The lock is ours while this session lives; a round trip proves the session does.
    const r = await c.query<{ n: string }>("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND classid = $1 AND objid = $2 AND granted", [LOCK_CLASS, LOCK_OBJECT]);
    if (Number(r.rows[0]?.n) !== 1) throw new Error('the advisory lock is not held by this session');
  }

  async read(): Promise<LeaderRecord | undefined> {
    const c = await this.session();
    const r = await c.query<{ term: string; leader: string }>('SELECT term, leader FROM migd_leader WHERE id = 1');
    const row = r.rows[0];
    return row ? { term: Number(row.term), leader: row.leader } : undefined;
  }

  async release(): Promise<void> {
    const c = this.client;
    this.client = undefined;
    this.held = false;
    // Ending the session releases the lock; no unlock call that could hang on a dead link.
    if (c) await endQuickly(c);
  }
}

/** Ends a session; on a dead link `end()` would wait for TCP, so its socket is destroyed after 1 s. */
async function endQuickly(c: pg.Client): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), 1000)));
  const r = await Promise.race([c.end().then(() => 'ended' as const, () => 'ended' as const), late]);
  clearTimeout(timer);
  if (r === 'late') (c as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
}
