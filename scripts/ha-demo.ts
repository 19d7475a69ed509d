/**
 * `npm run demo:ha` (`node dist/scripts/ha-demo.js`): replicated coordinators on this machine, in
 * one command (issue 15 §5). It starts a throw-away PostgreSQL, three clustered nats-servers
 * (JetStream; the events stream with 3 replicas), three coordinators
 * on that one database, two hypervisor hosts (network namespaces) with a node daemon each that
 * knows all three coordinators, and two guests of 128 MiB on host a. Then `migctl drain a --to b
 * --watch` runs with all three addresses; while the first migration copies memory the leader is
 * killed with SIGKILL. The demo prints who leads, the measured takeover time, migctl's view
 * throughout (it follows the leader and resumes its watch), and the outcome: every run, how often
 * each started, and whether the drain completed. Everything it started is stopped at the end (also
 * on Ctrl-C or a failure). Needs root (network namespaces), QEMU, nats-server and postgresql, as
 * `npm start` does.
 */
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { MigrationState, WorkloadPattern, type VmSpec } from '../services/shared/gen/migd/v1/common.js';
import { ListRunsRequest, NodeStatus, PlanState } from '../services/shared/gen/migd/v1/coordinator.js';
import { repoRoot } from '../services/shared/paths.js';
import { createPki } from '../services/shared/pki.js';
import { startHaCluster, type HaCluster } from '../services/testbed/ha-cluster.js';
import { ensureGuestImageDir } from '../stress/image/build.js';

const say = (l: string): void => console.log(`ha-demo: ${l}`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function spec(name: string): VmSpec {
  return {
    name,
    memoryMib: 128,
    vcpus: 1,
    accel: 0,
    machineType: '',
    kernelPath: '',
    initrdPath: '',
    extraCmdline: '',
    disks: [],
    workload: { pattern: WorkloadPattern.WORKLOAD_PATTERN_RANDOM, workers: 1, bytesPerWorker: 24 << 20, rateBytesPerSec: 2 << 20, hotBytes: 0, verify: true, phaseAfterMs: 0, phaseRateBytesPerSec: 0 },
    labels: {},
    antiAffinityGroup: '',
    uuid: '',
    nics: [],
  };
}

async function main(): Promise<number> {
  const workDir = join(repoRoot(), '.state', 'ha-demo');
  rmSync(workDir, { recursive: true, force: true });
  const certDir = join(workDir, 'pki');
  createPki(certDir);
  say('starting PostgreSQL, 3 clustered nats-servers, 3 coordinators on that one database and NATS, hosts a and b with a node daemon each…');
  const guestImage = await ensureGuestImageDir(join(workDir, 'guest'));
  let cluster: HaCluster | undefined;
  let migctl: ReturnType<typeof spawn> | undefined;
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      if (migctl && migctl.exitCode === null) migctl.kill('SIGTERM');
      await cluster?.close();
      rmSync(workDir, { recursive: true, force: true });
    })());
  process.once('SIGINT', () => void stop().then(() => process.exit(130)));
  try {
    cluster = await startHaCluster({
      workDir: join(workDir, 'w'),
      certDir,
      guestImage,
      coordinators: 3,
      natsServers: 3,
      // A node is down after 3 s without a heartbeat (the tests' 1.5 s is tight while guests boot).
      coordinatorArgs: ['--heartbeat-misses', '6'],
      onLog: (l) => {
        // Leadership as the coordinators tell it.
        if (/elected leader|leading: runs recovered|leadership lost|no longer leading|re-attached/.test(l)) say(l.replace(/\{"t":"[^"]+",/, '{'));
        if (process.env['MIGD_VERBOSE']) console.error(l);
      },
    });
    const c = cluster;
    const leader = await c.waitForLeader();
    say(`coordinators: ${c.addresses.map((a, i) => `${i}=${a}${i === leader ? ' (leader)' : ''}`).join(', ')}; Postgres ${c.dbUrl}; NATS ${c.natsUrls.join(', ')} (pids ${c.natsServers.map((p) => p?.pid).join(', ')})`);
    const op = c.client();
    say('creating guests g1 and g2 (128 MiB, verifying workload) on host a…');
    await Promise.all(['g1', 'g2'].map((n) => op.createVm({ spec: spec(n), nodeId: 'a' })));
    // Both guests verify their memory, and both nodes are up, before the drain.
    const nodeA = c.nodes['a']!.client();
    for (const n of ['g1', 'g2']) {
      const ac = new AbortController();
      const timer = setTimeout(() => ac.abort(), 90_000);
      try {
        for await (const m of nodeA.watchGuest({ name: n, includeConsole: false }, { signal: ac.signal })) if (m.item?.$case === 'sample' && m.item.value.pagesVerified > 0) break;
      } finally {
        clearTimeout(timer);
      }
    }
    for (let i = 0; i < 300; i++) {
      const { nodes } = await op.listNodes({});
      if (nodes.filter((x) => x.status === NodeStatus.NODE_STATUS_UP).length === 2) break;
      await sleep(200);
    }
    say('guests g1 and g2 run and verify their memory on a; the link a→b is shaped to 40 Mbit/s');
    await c.tb.shape('a', { rateMbit: 40 });

    // migctl, given all three addresses, drains a and watches; it follows the leader.
    const migctlArgs = [join(repoRoot(), 'dist', 'services', 'coordinator', 'cli', 'migctl.js'), '--coordinator', c.addresses.join(','), '--cert-dir', certDir, 'drain', 'a', '--to', 'b', '--key', 'ha-demo', '--watch'];
    say(`$ migctl --coordinator ${c.addresses.join(',')} drain a --to b --watch`);
    migctl = spawn(process.execPath, migctlArgs, { stdio: ['ignore', 'pipe', 'pipe'] });
    for (const stream of [migctl.stdout!, migctl.stderr!]) createInterface({ input: stream }).on('line', (l) => console.log(`  migctl │ ${l}`));
    const migctlDone = new Promise<number>((r) => migctl!.once('exit', (code) => r(code ?? 1)));

    // The plan migctl submitted (idempotency key ha-demo): wait for its first run to copy memory.
    let planId = '';
    let firstRun = '';
    for (let i = 0; i < 600 && !firstRun; i++) {
      await sleep(200);
      const { runs } = await op.listRuns(ListRunsRequest.fromPartial({ pageSize: 10 })).catch(() => ({ runs: [] }));
      const copying = runs.find((r) => r.state === MigrationState.MIGRATION_STATE_PRECOPY);
      if (copying) {
        planId = copying.planId;
        const tl = await op.getRunTimeline({ runId: copying.id }).catch(() => ({ progress: [] }));
        if (tl.progress.length >= 2) firstRun = copying.id;
      }
    }
    if (!firstRun) throw new Error('no migration reached pre-copy within 120 s');

    const old = await c.waitForLeader();
    say(`>>> kill -9 coordinator ${old} (the leader, pid ${c.coordinators[old]!.process.pid}) while run ${firstRun} copies memory`);
    const killedAt = Date.now();
    await c.killCoordinator(old);
    const next = await c.waitForLeader(30_000, c.addresses.map((_, i) => i).filter((i) => i !== old));
    const takeoverMs = Date.now() - killedAt;
    say(`>>> coordinator ${next} leads ${takeoverMs} ms after the kill (goal 5 s, bound 10 s)`);

    const code = await Promise.race([migctlDone, sleep(300_000).then(() => -1)]);
    const { plan } = await op.getPlan({ planId });
    const { runs } = await op.listRuns(ListRunsRequest.fromPartial({ filter: { planId }, pageSize: 10 }));
    const onA = (await c.nodes['a']!.client().listMigrations({ activeOnly: false })).migrations;
    say('outcome:');
    for (const r of runs) {
      const starts = r.transitions.filter((t) => t.to === MigrationState.MIGRATION_STATE_PREPARING).length;
      const onNode = onA.filter((m) => m.runId === r.id).length;
      say(`  ${r.vmName} a→${r.destinationNodeId}: ${MigrationState[r.state]} in ${r.stats?.totalTimeMs ?? '?'} ms (downtime ${r.stats?.downtimeMs ?? '?'} ms, integrity errors ${r.stats?.integrityErrors ?? '?'}); started ${starts}× by the coordinators, ${onNode} migration on the source node`);
    }
    const ok = plan?.state === PlanState.PLAN_STATE_SUCCEEDED && runs.every((r) => r.state === MigrationState.MIGRATION_STATE_SUCCEEDED);
    say(`drain ${ok ? 'completed' : 'did NOT complete'} (plan ${PlanState[plan?.state ?? 0]}); migctl exited ${code}; leader takeover ${takeoverMs} ms after kill -9`);
    return ok ? 0 : 1;
  } finally {
    say('stopping everything…');
    await stop();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`ha-demo: ${(err as Error).stack ?? String(err)}`);
    process.exit(1);
  },
);
