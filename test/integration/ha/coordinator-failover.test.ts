/**
 * Replicated coordinators on one Postgres (a throw-away cluster): three real coordinator processes
 * (dist/, plain text on loopback). Exactly one leads; followers serve reads and refuse writes with
 * UNAVAILABLE naming the leader; after `kill -9` of the leader a follower takes over, and a
 * leader-following client's write lands on it. The store refuses a deposed leader's writes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Leadership } from '../../../services/coordinator/leadership/leadership.js';
import { PostgresElection } from '../../../services/coordinator/leadership/postgres.js';
import { openPostgresHistoryStore } from '../../../services/coordinator/store/postgres.js';
import { NotFoundError, NotLeaderError } from '../../../services/shared/errors.js';
import { CoordinatorServiceService, ListRunsRequest } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { createLogger } from '../../../services/shared/log.js';
import { freePort } from '../../../services/shared/net.js';
import { createClient } from '../../../services/shared/rpc/client.js';
import { createLeaderClient } from '../../../services/shared/rpc/leader-client.js';
import { coordinatorBuilt, coordinatorEntry } from '../../../services/testbed/cluster.js';
import { startPostgres, type PostgresServer } from '../../helpers/postgres.js';
import { runInput } from '../store/history-store.suite.js';

const log = createLogger('test', {}, () => undefined, 'error');

interface Replica {
  readonly address: string;
  readonly proc: ChildProcess;
}

async function startReplica(url: string): Promise<Replica> {
  const address = `127.0.0.1:${await freePort()}`;
  const proc = spawn(process.execPath, [coordinatorEntry(), '--listen', address, '--insecure', '--db', url, '--heartbeat-ms', '500'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MIGD_LOG_LEVEL: 'warn' } });
  proc.stderr!.resume();
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('coordinator not ready in 30 s')), 30_000);
    createInterface({ input: proc.stdout! }).on('line', (l) => {
      if (l.includes('"ready":true')) {
        clearTimeout(timer);
        resolve();
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`coordinator exited (${code}) before it was ready`));
    });
  });
  return { address, proc };
}

/** Who answers a write as the leader: NOT_FOUND for an unknown run means "I lead". */
async function probe(address: string): Promise<'leader' | { follower: string } | 'down'> {
  const c = createClient('migd.v1.CoordinatorService', CoordinatorServiceService, address, { security: { insecure: true }, defaultDeadlineMs: 2000 });
  try {
    await c.cancelRun({ runId: 'no-such-run', reason: 'probe' });
    return 'leader';
  } catch (err) {
    if (err instanceof NotFoundError) return 'leader';
    if (err instanceof NotLeaderError) return { follower: err.leader };
    return 'down';
  } finally {
    c.close();
  }
}

describe.skipIf(!coordinatorBuilt())('replicated coordinators on Postgres', () => {
  let server: PostgresServer;
  const replicas: Replica[] = [];
  beforeAll(async () => {
    server = await startPostgres();
  }, 60_000);
  afterAll(async () => {
    for (const r of replicas) if (r.proc.exitCode === null && r.proc.signalCode === null) r.proc.kill('SIGKILL');
    await server?.dispose();
  });

  it('one leader; followers read and name it; after kill -9 of the leader a follower leads within 10 s', async () => {
    const url = await server.createDatabase();
    for (let i = 0; i < 3; i++) replicas.push(await startReplica(url));
    const roles = async (): Promise<Awaited<ReturnType<typeof probe>>[]> => Promise.all(replicas.map((r) => probe(r.address)));
    let seen = await roles();
    for (let i = 0; i < 50 && seen.filter((r) => r === 'leader').length !== 1; i++) {
      await sleep(200);
      seen = await roles();
    }
    const leaderIdx = seen.indexOf('leader');
    expect(seen.filter((r) => r === 'leader')).toHaveLength(1);
    const leader = replicas[leaderIdx]!;
    for (const [i, r] of seen.entries()) if (i !== leaderIdx) expect(r).toEqual({ follower: leader.address });

    // Followers serve reads from the shared store.
    const follower = replicas.find((_, i) => i !== leaderIdx)!;
    const reader = createClient('migd.v1.CoordinatorService', CoordinatorServiceService, follower.address, { security: { insecure: true } });
    try {
      expect((await reader.listRuns(ListRunsRequest.fromPartial({ pageSize: 10 }))).runs).toEqual([]);
      expect((await reader.listNodes({})).nodes).toEqual([]);
    } finally {
      reader.close();
    }

    // kill -9 the leader; a client that knows all three addresses reaches the new leader.
    const client = createLeaderClient('migd.v1.CoordinatorService', CoordinatorServiceService, replicas.map((r) => r.address), { security: { insecure: true }, defaultDeadlineMs: 20_000 });
    try {
      const t0 = Date.now();
      leader.proc.kill('SIGKILL');
      const err = await client.cancelRun({ runId: 'no-such-run', reason: 'probe' }).catch((e: unknown) => e);
      const tookMs = Date.now() - t0;
      expect(err).toBeInstanceOf(NotFoundError);
      expect(client.current).not.toBe(leader.address);
      expect(tookMs).toBeLessThan(10_000);
      process.stderr.write(`failover: a write reached the new leader ${tookMs} ms after kill -9 of the old one\n`);
    } finally {
      client.close();
    }
  }, 120_000);

  it('the store refuses the writes of a deposed leader (fencing by term)', async () => {
    const url = await server.createDatabase();
    const a = new Leadership({ backend: new PostgresElection({ url }), me: 'a:1', intervalMs: 100, log });
    const storeA = await openPostgresHistoryStore({ url, logger: log, fence: a });
    try {
      a.start();
      for (let i = 0; i < 50 && !a.isLeader; i++) await sleep(100);
      expect(a.token()).toBe(1);
      const run = await storeA.createRun(runInput());
      // Another coordinator takes the term (as after a partition: a has not noticed yet).
      const b = new PostgresElection({ url });
      await a.stop();
      // a still believes its term 1 (simulated by a fence that keeps answering 1).
      const stale = { token: () => 1, notLeader: () => new NotLeaderError('b:1') };
      const storeStale = await openPostgresHistoryStore({ url, logger: log, fence: stale });
      try {
        expect(await b.tryAcquire('b:1')).toEqual({ term: 2, leader: 'b:1' });
        await expect(storeStale.createRun(runInput())).rejects.toBeInstanceOf(NotLeaderError);
        await expect(storeStale.upsertNode({ host: { nodeId: 'n1', managementAddress: '127.0.0.1:1', migrationAddress: '127.0.0.1' } as never })).rejects.toBeInstanceOf(NotLeaderError);
        // Nothing was written; reads still work.
        expect((await storeStale.listRuns(ListRunsRequest.fromPartial({ pageSize: 10 }))).runs.map((r) => r.id)).toEqual([run.id]);
        expect(await storeStale.listNodes()).toEqual([]);
      } finally {
        await storeStale.close();
        await b.release();
      }
    } finally {
      await a.stop();
      await storeA.close();
    }
  }, 60_000);
});
