/**
 * Issue 15 §3, the failover tests: three coordinators on one PostgreSQL and one nats-server, node
 * daemons (two real QEMU guests of 128 MiB) that know all three coordinators. A drain starts and,
 * while its first migration copies memory, (1) the leader is killed with SIGKILL — a follower must
 * lead within 10 s (the measured takeover is printed) — or (2) Postgres is restarted — the
 * coordinators reconnect and one leads again. Either way the new leader picks the in-flight run up
 * from the store and the source node and the drain completes; no guest ever runs on both hosts
 * (the guest's own monotonic clock, printed with its samples on each host, never overlaps), no
 * migration starts twice (one QEMU per VM and host, one PREPARING per run, one migration per run on
 * the source), and every run's events on NATS form one gap-free sequence from 1 to runCompleted.
 * The cases share one cluster of three hosts: the first drains a into b, the second b into c.
 */
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, type NatsConnection } from 'nats';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { natsConnectOptions } from '../../../services/shared/events/nats-security.js';
import { subscribeRun } from '../../../services/shared/events/subscriber.js';
import { MigrationState as S } from '../../../services/shared/gen/migd/v1/common.js';
import { ListRunsRequest, PlanState } from '../../../services/shared/gen/migd/v1/coordinator.js';
import type { Event } from '../../../services/shared/gen/migd/v1/events.js';
import { createPki } from '../../../services/shared/pki.js';
import { coordinatorBuilt } from '../../../services/testbed/cluster.js';
import { startHaCluster, type HaCluster } from '../../../services/testbed/ha-cluster.js';
import { ensureGuestImageDir } from '../../../stress/image/build.js';
import { waitFor, waitForPlan, waitForRunState } from '../../helpers/coordinator-cluster.js';
import { guestSpec, waitForGuest } from '../../helpers/node-cluster.js';

const VMS = ['f1', 'f2'];
const HOSTS = ['a', 'b', 'c'];

/** Pids of live QEMU processes of `vm` that node daemon `host` started (its state dir is in their argv). */
function qemuPids(stateDir: string, vm: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const argv = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      if (!(argv[0] ?? '').includes('qemu-system')) continue;
      const i = argv.indexOf('-name');
      if (i < 0 || argv[i + 1] !== vm || !argv.some((a) => a.includes(`${stateDir}/`))) continue;
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const st = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
      if (st !== 'Z' && st !== 'X') out.push(Number(name));
    } catch {
      // raced with its exit
    }
  }
  return out;
}

describe.skipIf(!coordinatorBuilt())('replicated coordinators: failover during a drain', () => {
  let c: HaCluster | undefined;
  let nc: NatsConnection | undefined;
  const dir = mkdtempSync('/tmp/migd-ha-');
  const verified: Record<string, number> = {};

  beforeAll(async () => {
    const certDir = join(dir, 'pki');
    createPki(certDir);
    const guestImage = await ensureGuestImageDir(join(dir, 'guest'));
    c = await startHaCluster({
      hosts: HOSTS,
      coordinators: 3,
      workDir: join(dir, 'w'),
      certDir,
      guestImage,
      onLog: process.env['MIGD_TEST_LOGS'] === '1' ? (l) => process.stderr.write(`${l}\n`) : undefined,
    });
    const op = c.client();
    // A 12 MiB working set at 2 MiB/s: the workload's first, unverified pass (waited out here)
    // takes 6 s (12 s with 24 MiB); the migrations still take several seconds each on 40 Mbit/s.
    await Promise.all(
      VMS.map(async (name) => {
        await op.createVm({ spec: guestSpec(name, { memoryMib: 128, bytesPerWorker: 12 << 20, rate: 2 << 20 }), nodeId: 'a' });
        const s = await waitForGuest(c!.nodes['a']!.client(), name, 2, 60_000, (x) => x.pagesVerified > 0);
        verified[name] = s.at(-1)!.pagesVerified;
      }),
    );
    // Each migration takes several seconds, so the leader dies in the middle of one.
    await c.tb.shape('a', { rateMbit: 40 });
    nc = await connect({ ...natsConnectOptions([c.natsUrl], c.natsReader), name: 'ha-failover-test' });
  }, 240_000);

  afterAll(async () => {
    await nc?.close().catch(() => undefined);
    await c?.close();
    const { rmSync } = await import('node:fs');
    rmSync(dir, { recursive: true, force: true });
  }, 120_000);

  /**
   * Drains `from` into `to` and, during the first migration's pre-copy, injects `fault` (which
   * returns what it measured, for the log); then checks the drain's outcome as the file comment says.
   */
  async function drainThrough(from: string, to: string, key: string, fault: () => Promise<string>): Promise<void> {
    const cl = c!;
    const stateDir = (h: string): string => cl.nodes[h]!.stateDir;
    const caseStart = Date.now();

    // Watch both hosts throughout: every QEMU process per VM and host, and every sample the guest
    // workload prints on each host (from now on), stamped with the guest's own monotonic clock
    // (migrated with the guest). Had a guest run on both hosts, the source would have printed
    // samples past the guest time at which the destination started printing.
    const pidsSeen = new Map<string, Set<number>>();
    const guestMono = new Map<string, number[]>();
    const violations: string[] = [];
    const stopWatching = new AbortController();
    const nodeClients = Object.fromEntries(HOSTS.map((h) => [h, cl.nodes[h]!.client()]));
    const processes = (async () => {
      while (!stopWatching.signal.aborted) {
        for (const vm of VMS) {
          for (const h of HOSTS) {
            const pids = qemuPids(stateDir(h), vm);
            if (pids.length > 1) violations.push(`${vm}: ${pids.length} QEMU processes on ${h} at once (${pids.join(', ')})`);
            const seen = pidsSeen.get(`${h}/${vm}`) ?? new Set<number>();
            for (const p of pids) seen.add(p);
            pidsSeen.set(`${h}/${vm}`, seen);
          }
        }
        await sleep(150);
      }
    })();
    const feeds = HOSTS.flatMap((h) =>
      VMS.map(async (vm) => {
        const got = guestMono.get(`${h}/${vm}`) ?? [];
        guestMono.set(`${h}/${vm}`, got);
        while (!stopWatching.signal.aborted) {
          try {
            for await (const m of nodeClients[h]!.watchGuest({ name: vm, includeConsole: false }, { signal: stopWatching.signal })) {
              if (m.item?.$case === 'sample' && (m.item.value.time?.getTime() ?? 0) >= caseStart) got.push(m.item.value.guestMonoMs);
            }
          } catch {
            // not on this host (yet, or any more): ask again
          }
          await sleep(200).catch(() => undefined);
        }
      }),
    );

    const op = cl.client();
    let runIds: string[] = [];
    try {
      const plan = (await op.submitPlan({ idempotencyKey: key, target: { $case: 'drain', value: { nodeId: from, destinationNodeIds: [to] } }, policy: undefined, priority: 0, antiAffinityVmNames: [], label: '' })).plan!;
      expect(plan.migrations).toHaveLength(2);
      runIds = plan.migrations.map((m) => m.runId);
      const first = [...plan.migrations].sort((x, y) => x.order - y.order)[0]!.runId;
      // In the middle of the first migration: memory being copied, a few samples recorded.
      await waitForRunState(op, first, S.MIGRATION_STATE_PRECOPY, 60_000);
      await waitFor(async () => (await op.getRunTimeline({ runId: first })).progress.length >= 2, 30_000, 'progress samples of the first run');
      const before = (await op.getRun({ runId: first })).run!;
      expect(before.finishedAt).toBeUndefined();

      const measured = await fault();
      process.stderr.write(`ha ${key}: ${measured} (first run was ${S[before.state]})\n`);
      // The slow link was there to land the fault in the first run's pre-copy. Once the leader
      // after the fault follows that run (a progress sample recorded after the fault, or the run
      // over), the rest of the drain need not crawl.
      const faultOver = new Date();
      await waitFor(async () => {
        const tl = await op.getRunTimeline({ runId: first });
        return tl.run?.finishedAt !== undefined || tl.progress.some((s) => s.time!.getTime() > faultOver.getTime());
      }, 60_000, 'the leader after the fault to follow the first run');
      await cl.tb.unshape(from);

      const done = await waitForPlan(op, plan.id, 240_000);
      const { runs } = await op.listRuns(ListRunsRequest.fromPartial({ filter: { planId: plan.id }, pageSize: 10 }));
      const outcome = runs.map((r) => `${r.vmName}: ${S[r.state]} ${r.error?.reason ?? ''} ${r.error?.message ?? ''} (${r.transitions.map((t) => `${S[t.to]}: ${t.reason}`).join(' → ')})`).join('\n');
      expect(done.state, outcome).toBe(PlanState.PLAN_STATE_SUCCEEDED);
      expect(runs).toHaveLength(2);
      for (const r of runs) {
        expect(r.state, outcome).toBe(S.MIGRATION_STATE_SUCCEEDED);
        expect(r.stats!.integrityErrors).toBe(0);
        // Started once.
        expect(r.transitions.filter((t) => t.to === S.MIGRATION_STATE_PREPARING)).toHaveLength(1);
      }
      const onSource = (await nodeClients[from]!.listMigrations({ activeOnly: false })).migrations;
      for (const r of runs) expect(onSource.filter((m) => m.runId === r.id), r.vmName).toHaveLength(1);

      // Every event of every run on NATS, gap-free from 1 to runCompleted across both leaders.
      for (const runId of runIds) {
        const ac = new AbortController();
        const timer = setTimeout(() => ac.abort(), 20_000);
        const events: Event[] = [];
        try {
          for await (const ev of await subscribeRun(nc!, runId, { fromStart: true, untilCompleted: true, signal: ac.signal })) events.push(ev);
        } finally {
          clearTimeout(timer);
        }
        expect(events.at(-1)?.payload?.$case, runId).toBe('runCompleted');
        const seqs = events.map((e) => e.runSequence);
        expect(seqs, runId).toEqual(seqs.map((_, i) => i + 1));
      }
    } finally {
      stopWatching.abort();
      await Promise.all([processes, ...feeds]);
    }

    // Nothing ran twice; `from` is empty; each guest runs intact on `to`, in the one QEMU started for it.
    expect(violations).toEqual([]);
    for (const vm of VMS) {
      const onFrom = guestMono.get(`${from}/${vm}`)!;
      const onTo = guestMono.get(`${to}/${vm}`)!;
      // The check could see the guest run: on `from` before the drain, on `to` after it.
      expect(onFrom.length, `samples of ${vm} on ${from}`).toBeGreaterThan(0);
      expect(onTo.length, `samples of ${vm} on ${to}`).toBeGreaterThan(0);
      expect(Math.max(...onFrom), `${vm}: latest guest time on ${from} must precede the first on ${to}`).toBeLessThan(Math.min(...onTo));
      expect(pidsSeen.get(`${from}/${vm}`)!.size, `QEMU processes of ${vm} seen on ${from}`).toBe(1);
      expect(pidsSeen.get(`${to}/${vm}`)!.size, `QEMU processes of ${vm} seen on ${to}`).toBe(1);
      expect(qemuPids(stateDir(from), vm)).toEqual([]);
      expect(qemuPids(stateDir(to), vm)).toEqual([...pidsSeen.get(`${to}/${vm}`)!]);
      const after = await waitForGuest(nodeClients[to]!, vm, 2, 30_000, (s) => s.pagesVerified > verified[vm]!);
      expect(after.at(-1)!.integrityErrors).toBe(0);
      verified[vm] = after.at(-1)!.pagesVerified;
    }
    expect((await nodeClients[from]!.listVms({})).vms).toHaveLength(0);
  }

  it('a follower takes over within 10 s after kill -9 of the leader; the drain completes, nothing runs or starts twice, no event is lost', async () => {
    const cl = c!;
    await drainThrough('a', 'b', 'kill-leader', async () => {
      const leader = await cl.waitForLeader();
      const killedAt = Date.now();
      await cl.killCoordinator(leader);
      const others = cl.addresses.map((_, i) => i).filter((i) => i !== leader);
      const next = await cl.waitForLeader(30_000, others);
      const takeoverMs = Date.now() - killedAt;
      expect(takeoverMs).toBeLessThan(10_000);
      // The new leader took the runs up from the store.
      expect(cl.coordinators[next]!.logs.some((l) => l.includes('leading: runs recovered from the store'))).toBe(true);
      // Back to three coordinators for the next case.
      await cl.startCoordinator(leader);
      return `coordinator ${next} leads ${takeoverMs} ms after kill -9 of coordinator ${leader}`;
    });
  }, 300_000);

  it('Postgres restarted mid-drain: the coordinators reconnect, one leads again, the drain completes, nothing runs or starts twice, no event is lost', async () => {
    const cl = c!;
    await cl.tb.unshape('a');
    await cl.tb.shape('b', { rateMbit: 40 });
    await drainThrough('b', 'c', 'restart-postgres', async () => {
      const before = await cl.waitForLeader();
      await cl.pg.stop();
      await sleep(2000);
      // No database, no leader: nobody may act on the runs meanwhile.
      const roles = await Promise.all(cl.addresses.map((_, i) => cl.role(i)));
      expect(roles).not.toContain('leader');
      const restartedAt = Date.now();
      await cl.pg.start();
      const next = await cl.waitForLeader(60_000);
      const backMs = Date.now() - restartedAt;
      return `Postgres down 2 s; coordinator ${next} (was ${before}) leads ${backMs} ms after it came back`;
    });
  }, 300_000);
});
