/**
 * Leader election on a real PostgreSQL server (throw-away cluster): the advisory lock on a pinned
 * session, the term row as the fencing token, and what happens when the leader's session ends, when
 * the leader's process is killed with SIGKILL, and when the server restarts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Leadership } from '../../../services/coordinator/leadership/leadership.js';
import { PostgresElection } from '../../../services/coordinator/leadership/postgres.js';
import { createLogger } from '../../../services/shared/log.js';
import { startPostgres, type PostgresServer } from '../../helpers/postgres.js';
import { until } from '../../helpers/until.js';

const log = createLogger('test', {}, () => undefined, 'error');
const POLL_MS = 20;

describe('leader election on PostgreSQL', () => {
  let server: PostgresServer;
  let url: string;
  const nodes: Leadership[] = [];
  const children: ChildProcess[] = [];
  beforeAll(async () => {
    server = await startPostgres();
  }, 60_000);
  afterAll(async () => {
    await server?.dispose();
  });
  afterEach(async () => {
    for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await Promise.all(nodes.splice(0).map((l) => l.stop()));
  });
  const node = (me: string): Leadership => {
    const l = new Leadership({ backend: new PostgresElection({ url }), me, intervalMs: 200, callTimeoutMs: 1000, log });
    nodes.push(l);
    l.start();
    return l;
  };

  it('one leader per term; when its session ends another takes over with the next term', async () => {
    url = await server.createDatabase();
    const a = node('127.0.0.1:7001');
    await until(() => a.isLeader, 'a to lead', 5000, POLL_MS);
    const b = node('127.0.0.1:7002');
    const c = node('127.0.0.1:7003');
    await until(() => b.current.known?.leader === '127.0.0.1:7001' && c.current.known !== undefined, 'followers to see a', 5000, POLL_MS);
    expect(a.token()).toBe(1);
    expect([b.isLeader, c.isLeader]).toEqual([false, false]);
    expect(b.notLeader().leader).toBe('127.0.0.1:7001');

    // The server ends the leader's session (as on a lost link): it must notice and step down.
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      await admin.query("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = $1", [0x6c656164]);
    } finally {
      await admin.end();
    }
    await until(() => !a.isLeader, 'a to step down', 2000, POLL_MS);
    await until(() => [a, b, c].some((l) => l.isLeader), 'a new leader', 3000, POLL_MS);
    const leaders = [a, b, c].filter((l) => l.isLeader);
    expect(leaders).toHaveLength(1);
    expect(leaders[0]!.token()).toBe(2);
  });

  it('takes over within seconds when the leading process is killed with SIGKILL', async () => {
    url = await server.createDatabase();
    // Another process holds the lock, exactly as a coordinator does (same key, pinned session).
    const script = `
      const pg = require('pg');
      const c = new pg.Client({ connectionString: process.argv[1] });
      c.connect().then(async () => {
        await c.query("SELECT pg_advisory_lock(${0x6d696764}, ${0x6c656164})");
        process.stdout.write('locked\\n');
      });`;
    const child = spawn(process.execPath, ['-e', script, url], { stdio: ['ignore', 'pipe', 'inherit'], cwd: process.cwd() });
    children.push(child);
    await once(child.stdout!, 'data');
    const b = node('127.0.0.1:7002');
    await sleep(600);
    expect(b.isLeader).toBe(false);
    child.kill('SIGKILL');
    const killedAt = Date.now();
    await until(() => b.isLeader, 'b to take over', 5000, POLL_MS);
    const took = Date.now() - killedAt;
    // About a second on a quiet machine (printed); the bound is half of issue 15's 10 s takeover
    // budget, so a loaded host does not fail it while a lock that is not released at once does.
    console.log(`postgres leadership: b took over ${took} ms after the holder's SIGKILL`);
    expect(took).toBeLessThan(5000);
    expect(b.token()).toBe(1);
  });

  it('survives a server restart: the leader steps down, and one coordinator leads again with a higher term', async () => {
    url = await server.createDatabase();
    const a = node('127.0.0.1:7001');
    const b = node('127.0.0.1:7002');
    await until(() => a.isLeader || b.isLeader, 'a leader', 5000, POLL_MS);
    const before = (a.isLeader ? a : b).token();
    await server.stop();
    await until(() => !a.isLeader && !b.isLeader, 'both to step down', 3000, POLL_MS);
    await server.start();
    await until(() => a.isLeader || b.isLeader, 'a leader again', 10_000, POLL_MS);
    expect([a, b].filter((l) => l.isLeader)).toHaveLength(1);
    expect((a.isLeader ? a : b).token()).toBeGreaterThan(before);
  }, 60_000);
});
