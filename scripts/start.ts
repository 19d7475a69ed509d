/**
 * `npm start`: brings up a local migd cluster — two hypervisor "hosts" as network namespaces with
 * separate management and migration networks, a node daemon in each (mTLS) — boots a guest running
 * the verifying workload on host a and migrates it live to host b over a shaped link, with a live
 * progress display. Then it keeps serving until Ctrl-C (`npm start -- --once` exits instead).
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { MigrationState, WorkloadPattern, type GuestPerfSample, type ProgressSample } from '../services/shared/gen/migd/v1/common.js';
import { MigdError } from '../services/shared/errors.js';
import { certDir, repoRoot } from '../services/shared/paths.js';
import { startNodeDaemon, type NodeProcess } from '../services/testbed/nodes.js';
import { Testbed } from '../services/testbed/testbed.js';

const once = process.argv.includes('--once');
const tty = process.stdout.isTTY;
const MiB = 1024 * 1024;

function bar(fraction: number, width = 24): string {
  const f = Math.max(0, Math.min(1, fraction));
  const n = Math.round(f * width);
  return '[' + '#'.repeat(n) + '.'.repeat(width - n) + ']';
}

function line(p: ProgressSample, guest: GuestPerfSample | undefined): string {
  const done = p.totalBytes ? 1 - p.remainingBytes / p.totalBytes : 0;
  const dirty = (p.dirtyPagesRate * p.pageSize) / MiB;
  return [
    `${(p.elapsedMs / 1000).toFixed(1).padStart(5)}s`,
    MigrationState[p.state]!.replace('MIGRATION_STATE_', '').toLowerCase().padEnd(9),
    bar(done),
    `pass ${String(p.pass).padStart(2)}`,
    `remaining ${(p.remainingBytes / MiB).toFixed(0).padStart(4)} MiB`,
    `${p.throughputMbps.toFixed(0).padStart(4)} Mbit/s`,
    `dirty ${dirty.toFixed(0).padStart(4)} MiB/s`,
    `throttle ${String(p.throttlePct).padStart(2)}%`,
    guest ? `guest ${guest.msPerGib.toFixed(0)} ms/GiB, ${guest.integrityErrors} integrity errors` : '',
  ].join('  ');
}

async function main(): Promise<void> {
  const root = repoRoot();
  const stateRoot = join(root, '.state', 'local-cluster');
  rmSync(stateRoot, { recursive: true, force: true });
  mkdirSync(stateRoot, { recursive: true });
  console.log('migd: creating hosts a and b (network namespaces; management and migration networks)…');
  const tb = await Testbed.create({ hosts: ['a', 'b'] });
  const nodes: NodeProcess[] = [];
  let closing = false;
  const close = async (code: number): Promise<never> => {
    if (!closing) {
      closing = true;
      for (const n of nodes) await n.stop().catch(() => undefined);
      await tb.destroy();
      rmSync(stateRoot, { recursive: true, force: true });
    }
    process.exit(code);
  };
  process.on('SIGINT', () => void close(0));
  process.on('SIGTERM', () => void close(0));
  try {
    for (const h of ['a', 'b']) {
      const n = await startNodeDaemon(tb.host(h), { stateDir: join(stateRoot, h), certDir: certDir(), env: { MIGD_LOG_LEVEL: 'warn' }, onLog: (l) => process.env['MIGD_VERBOSE'] && console.error(`[${h}] ${l}`) });
      nodes.push(n);
      console.log(`migd: node daemon ${h} serving at ${n.address} (mTLS), migrating over ${tb.host(h).migrationAddress}`);
    }
    const [a, b] = nodes.map((n) => n.client()) as [ReturnType<NodeProcess['client']>, ReturnType<NodeProcess['client']>];
    const spec = {
      name: 'demo',
      memoryMib: 384,
      vcpus: 1,
      accel: 0,
      machineType: '',
      kernelPath: '',
      initrdPath: '',
      extraCmdline: '',
      workload: { pattern: WorkloadPattern.WORKLOAD_PATTERN_RANDOM, workers: 2, bytesPerWorker: 64 * MiB, rateBytesPerSec: 10 * MiB, hotBytes: 0, verify: true },
      labels: {},
      antiAffinityGroup: '',
      uuid: '',
    };
    console.log('migd: booting guest "demo" on a (384 MiB, workload: 2 workers × 64 MiB random, 10 MiB/s each, verifying every page)…');
    await a.createVm({ spec });
    let guest: GuestPerfSample | undefined;
    const watchGuest = async (client: typeof a, signal: AbortSignal): Promise<void> => {
      for await (const m of client.watchGuest({ name: 'demo', includeConsole: false }, { signal })) if (m.item?.$case === 'sample' && m.item.value.worker === -1) guest = m.item.value;
    };
    const ga = new AbortController();
    void watchGuest(a, ga.signal).catch(() => undefined);
    while (!guest) await new Promise((r) => setTimeout(r, 200));
    console.log(`migd: guest is up: ${guest.msPerGib.toFixed(0)} ms to write 1 GiB before the migration`);
    await tb.shape('a', { rateMbit: 300 });
    console.log('migd: migrating demo a → b over a 300 Mbit/s link (pre-copy, downtime limit 500 ms)…');
    const runId = `demo-${Date.now()}`;
    const gb = new AbortController();
    void watchGuest(b, gb.signal).catch(() => undefined);
    await a.startMigration({
      runId,
      vmName: 'demo',
      destination: { nodeId: 'b', managementAddress: nodes[1]!.address, migrationAddress: tb.host('b').migrationAddress },
      policy: { kind: 1, downtimeLimitMs: 500, maxBandwidthBytesPerSec: 0, autoConverge: undefined, postcopy: undefined, xbzrle: undefined, multifd: undefined, switchoverAck: false, tls: false, completionTimeoutSecPerGib: 0, progressTimeoutSec: 0, timeoutAction: 0, downtimeSteps: [], maxDowntimeMs: 0 },
    });
    let lastPrint = 0;
    for await (const u of a.watchMigration({ runId })) {
      if (u.update?.$case === 'progress') {
        const now = Date.now();
        if (tty) process.stdout.write('\r' + line(u.update.value, guest) + '   ');
        else if (now - lastPrint >= 1000) {
          console.log(line(u.update.value, guest));
          lastPrint = now;
        }
      } else if (u.update?.$case === 'stateChange' && u.update.value.from !== u.update.value.to) {
        if (tty) process.stdout.write('\n');
        console.log(`migd: ${MigrationState[u.update.value.to]!.replace('MIGRATION_STATE_', '').toLowerCase()}: ${u.update.value.reason}`);
      } else if (u.update?.$case === 'result') {
        const r = u.update.value;
        const s = r.stats;
        if (r.state !== MigrationState.MIGRATION_STATE_SUCCEEDED) {
          console.error(`migd: migration ${MigrationState[r.state]}: ${r.error?.message ?? ''}`);
          await close(1);
        }
        console.log(`migd: done in ${s?.totalTimeMs} ms, downtime ${s?.downtimeMs} ms, ${s?.passes} passes, max throttle ${s?.maxThrottlePct}%, host CPU ${((s?.sourceCpuSeconds ?? 0) + (s?.destinationCpuSeconds ?? 0)).toFixed(1)} s; guest verified ${s?.pagesVerifiedAfter} pages on b with ${s?.integrityErrors} integrity errors`);
      }
    }
    ga.abort();
    if (once) {
      gb.abort();
      await close(0);
    }
    console.log('migd: the guest now runs on b. Ctrl-C stops the cluster (and its QEMU processes).');
    setInterval(() => guest && console.log(`migd: guest on b: ${guest.msPerGib.toFixed(0)} ms/GiB, ${guest.pagesVerified} pages verified, ${guest.integrityErrors} integrity errors`), 10_000);
  } catch (err) {
    console.error(`migd: ${err instanceof MigdError ? err.message : (err as Error).stack}`);
    await close(1);
  }
}

void main();
