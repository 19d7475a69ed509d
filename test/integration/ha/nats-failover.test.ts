/**
 * Issue 15 §3, one of three clustered nats-servers killed: three coordinators on one PostgreSQL
 * and a JetStream cluster of three nats-servers (the events stream with 3 replicas; every
 * coordinator and subscriber is given all three URLs), node daemons on hosts a and b, two real
 * guests of 128 MiB on a. A drain of a into b starts and, while its first migration copies
 * memory, the nats-server that leads the events stream is killed with SIGKILL. The drain must
 * complete; no migration starts twice (one PREPARING per run, one migration per run on the
 * source, one QEMU per VM and host); the leader keeps (or regains) leadership; and no event is
 * lost: a NATS subscriber and a follower's Watch, both live through the kill, each saw every run's
 * state changes exactly as the store recorded them, and the subscriber every run event once, in a
 * gap-free sequence from 1 to runCompleted.
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, type NatsConnection } from 'nats';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EVENTS_STREAM } from '../../../services/shared/events/jetstream.js';
import { natsConnectOptions } from '../../../services/shared/events/nats-security.js';
import { subscribeCluster, type EventSubscription } from '../../../services/shared/events/subscriber.js';
import { parseSubject } from '../../../services/shared/events/subjects.js';
import { MigrationState as S } from '../../../services/shared/gen/migd/v1/common.js';
import { ListRunsRequest, PlanState } from '../../../services/shared/gen/migd/v1/coordinator.js';
import type { Event } from '../../../services/shared/gen/migd/v1/events.js';
import { createPki } from '../../../services/shared/pki.js';
import { coordinatorBuilt } from '../../../services/testbed/cluster.js';
import { startHaCluster, type HaCluster } from '../../../services/testbed/ha-cluster.js';
import { ensureGuestImageDir } from '../../../stress/image/build.js';
import { waitFor, waitForPlan, waitForRunState } from '../../helpers/coordinator-cluster.js';
import { guestSpec, waitForGuest } from '../../helpers/node-cluster.js';

const VMS = ['n1', 'n2'];
const HOSTS = ['a', 'b'];

/** Pids of live QEMU processes of `vm` started by the node daemon whose state dir is `stateDir`. */
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

/** "from→to" of each state change, for comparing the store's transitions with the events. */
const changes = (xs: readonly { from: S; to: S }[]): string[] => xs.map((x) => `${S[x.from]}→${S[x.to]}`);

describe.skipIf(!coordinatorBuilt())('replicated coordinators on three clustered nats-servers', () => {
  let c: HaCluster | undefined;
  let nc: NatsConnection | undefined;
  const dir = mkdtempSync('/tmp/migd-han-');
  const verified: Record<string, number> = {};

  beforeAll(async () => {
    const certDir = join(dir, 'pki');
    createPki(certDir);
    const guestImage = await ensureGuestImageDir(join(dir, 'guest'));
    c = await startHaCluster({
      hosts: HOSTS,
      coordinators: 3,
      natsServers: 3,
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
    // Each migration takes several seconds, so the server dies in the middle of one.
    await c.tb.shape('a', { rateMbit: 40 });
    nc = await connect({ ...natsConnectOptions(c.natsUrls, c.natsReader), name: 'ha-nats-test', maxReconnectAttempts: -1, reconnectTimeWait: 250 });
  }, 240_000);

  afterAll(async () => {
    await nc?.close().catch(() => undefined);
    await c?.close();
    rmSync(dir, { recursive: true, force: true });
  }, 120_000);

  it('kill -9 of the nats-server leading the events stream mid-drain: the drain completes, nothing starts twice, the leader leads on, no event is lost', async () => {
    const cl = c!;
    const op = cl.client();
    const jsm = await nc!.jetstreamManager();
    // The leader's relay made the stream: 3 replicas, all current.
    let streamLeader = '';
    await waitFor(
      async () => {
        const info = await jsm.streams.info(EVENTS_STREAM).catch(() => undefined);
        streamLeader = info?.cluster?.leader ?? '';
        return info?.config.num_replicas === 3 && streamLeader !== '' && (info.cluster?.replicas ?? []).filter((r) => r.current).length === 2;
      },
      30_000,
      'the events stream with 3 current replicas',
    );

    // Live through the kill: a NATS subscriber of every event, and a Watch on a follower (whose
    // live events come from NATS).
    const leaderBefore = await cl.waitForLeader();
    const follower = [0, 1, 2].find((i) => i !== leaderBefore)!;
    await waitFor(() => cl.coordinators[follower]!.logs.some((l) => l.includes('event bus: live events from NATS')), 20_000, 'the follower to read live events from NATS');
    const seen: Event[] = [];
    const watched: Event[] = [];
    const sub: EventSubscription = await subscribeCluster(nc!, {});
    const subscribing = (async () => {
      for await (const ev of sub) seen.push(ev);
    })();
    const stopWatch = new AbortController();
    let watchEnded = '';
    const watching = (async () => {
      try {
        for await (const r of cl.clientAt(follower).watch({ scope: { $case: 'cluster', value: true }, statesOnly: true }, { signal: stopWatch.signal })) if (r.event) watched.push(r.event);
        watchEnded = 'ended';
      } catch (err) {
        if (!stopWatch.signal.aborted) watchEnded = `failed: ${(err as Error).message}`;
      }
    })();

    // One QEMU process per VM and host throughout.
    const pidsSeen = new Map<string, Set<number>>();
    const violations: string[] = [];
    const stopProcs = new AbortController();
    const processes = (async () => {
      while (!stopProcs.signal.aborted) {
        for (const vm of VMS) {
          for (const h of HOSTS) {
            const pids = qemuPids(cl.nodes[h]!.stateDir, vm);
            if (pids.length > 1) violations.push(`${vm}: ${pids.length} QEMU processes on ${h} at once (${pids.join(', ')})`);
            const s = pidsSeen.get(`${h}/${vm}`) ?? new Set<number>();
            for (const p of pids) s.add(p);
            pidsSeen.set(`${h}/${vm}`, s);
          }
        }
        await sleep(250);
      }
    })();

    try {
      const plan = (await op.submitPlan({ idempotencyKey: 'kill-nats', target: { $case: 'drain', value: { nodeId: 'a', destinationNodeIds: ['b'] } }, policy: undefined, priority: 0, antiAffinityVmNames: [], label: '' })).plan!;
      expect(plan.migrations).toHaveLength(2);
      const runIds = plan.migrations.map((m) => m.runId);
      const first = [...plan.migrations].sort((x, y) => x.order - y.order)[0]!.runId;
      await waitForRunState(op, first, S.MIGRATION_STATE_PRECOPY, 60_000);
      await waitFor(async () => (await op.getRunTimeline({ runId: first })).progress.length >= 2, 30_000, 'progress samples of the first run');
      expect((await op.getRun({ runId: first })).run!.finishedAt).toBeUndefined();

      // kill -9 the server that leads the stream (its server name is migd-<client port>).
      const victim = cl.natsUrls.findIndex((u) => streamLeader === `migd-${u.split(':').at(-1)}`);
      expect(victim, `stream leader ${streamLeader}`).toBeGreaterThanOrEqual(0);
      await cl.killNats(victim);
      const leaderAfter = await cl.waitForLeader(30_000);
      process.stderr.write(`ha kill-nats: killed nats-server ${victim} (${streamLeader}, the stream leader); coordinator ${leaderBefore} led before, ${leaderAfter} after\n`);
      // The slow link was there to land the kill in the first run's pre-copy; the rest of the
      // drain (its events published through the stream's new leader) need not crawl.
      await cl.tb.unshape('a');

      const done = await waitForPlan(op, plan.id, 240_000);
      const { runs } = await op.listRuns(ListRunsRequest.fromPartial({ filter: { planId: plan.id }, pageSize: 10 }));
      const outcome = runs.map((r) => `${r.vmName}: ${S[r.state]} ${r.error?.message ?? ''} (${changes(r.transitions).join(', ')})`).join('\n');
      expect(done.state, outcome).toBe(PlanState.PLAN_STATE_SUCCEEDED);
      expect(runs).toHaveLength(2);
      for (const r of runs) {
        expect(r.state, outcome).toBe(S.MIGRATION_STATE_SUCCEEDED);
        expect(r.stats!.integrityErrors).toBe(0);
        expect(r.transitions.filter((t) => t.to === S.MIGRATION_STATE_PREPARING)).toHaveLength(1);
      }
      const onSource = (await cl.nodes['a']!.client().listMigrations({ activeOnly: false })).migrations;
      for (const r of runs) expect(onSource.filter((m) => m.runId === r.id), r.vmName).toHaveLength(1);
      // The coordinators lead on: one leader now.
      await cl.waitForLeader(30_000);

      // No event lost: both live readers reach each run's completion and saw what the store holds.
      const ofRun = (evs: readonly Event[], runId: string): Event[] =>
        evs.filter((e) => {
          const s = parseSubject(e.subject);
          return s.scope === 'run' && s.id === runId;
        });
      const completed = (evs: readonly Event[]): boolean => runIds.every((id) => ofRun(evs, id).some((e) => e.payload?.$case === 'runCompleted'));
      await waitFor(() => completed(seen), 30_000, 'the NATS subscriber to see every run complete');
      await waitFor(() => completed(watched), 30_000, 'the follower\'s Watch to see every run complete').catch((err: unknown) => {
        throw new Error(`${(err as Error).message} (Watch ${watchEnded || 'open'}; it saw ${watched.length} events: ${watched.map((e) => e.payload?.$case).join(' ')})`);
      });
      expect(watchEnded).toBe('');
      for (const r of runs) {
        const stored = changes(r.transitions);
        for (const [who, evs] of [['subscriber', ofRun(seen, r.id)], ['watch', ofRun(watched, r.id)]] as const) {
          const states = evs.flatMap((e) => (e.payload?.$case === 'runState' && e.payload.value.change ? [e.payload.value.change] : []));
          expect(changes(states), `${who}: ${r.vmName}`).toEqual(stored);
          expect(evs.filter((e) => e.payload?.$case === 'runCompleted'), `${who}: ${r.vmName}`).toHaveLength(1);
        }
        // The subscriber saw every event of the run once, samples included.
        const seqs = ofRun(seen, r.id).map((e) => e.runSequence);
        expect(seqs, r.vmName).toEqual(seqs.map((_, i) => i + 1));
        expect(ofRun(seen, r.id).at(-1)?.payload?.$case).toBe('runCompleted');
      }
    } finally {
      stopProcs.abort();
      stopWatch.abort();
      sub.stop();
      await Promise.all([processes, subscribing, watching]);
    }

    expect(violations).toEqual([]);
    for (const vm of VMS) {
      expect(pidsSeen.get(`a/${vm}`)!.size, `QEMU processes of ${vm} seen on a`).toBe(1);
      expect(pidsSeen.get(`b/${vm}`)!.size, `QEMU processes of ${vm} seen on b`).toBe(1);
      expect(qemuPids(cl.nodes['a']!.stateDir, vm)).toEqual([]);
      const after = await waitForGuest(cl.nodes['b']!.client(), vm, 2, 30_000, (s) => s.pagesVerified > verified[vm]!);
      expect(after.at(-1)!.integrityErrors).toBe(0);
    }
    expect((await cl.nodes['a']!.client().listVms({})).vms).toHaveLength(0);
  }, 300_000);
});
