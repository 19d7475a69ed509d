/**
 * Storage benchmark and SHARED-vs-LOCAL comparison (issue 13 §7; not part of `npm test`):
 *
 *   npm run build && node dist/scripts/bench-storage.js [--rate-mbit 200] [--reps 2]
 *
 * Two testbed hosts (network namespaces, the migration link shaped to --rate-mbit both ways), a
 * VM network with a client namespace, and a node daemon on each host. Prints side by side:
 *
 *  1. copy rate: an idle guest with a sparse 256 MiB LOCAL raw disk holding 48 MiB of data
 *     (--disk-data-mib N: N MiB in a 16N/3 MiB disk; the storage phase includes a fixed set-up,
 *     the NBD export and the mirrors reaching READY, which weighs less on a larger copy); the
 *     storage phase (every mirror READY) is timed by the source node, the bytes on the wire are
 *     the migration interface's tx counter minus the memory stream's bytes. Ratios: disk data ÷
 *     storage time ÷ link rate (goal ≥ 0.9), and bytes sent for the disk ÷ its allocated size
 *     (sparse regions must not be sent: ≈ 1, far below virtual ÷ allocated). The rate is reported
 *     against its goal; the sparse check fails the run (exit 1) above 1.25×.
 *  2. SHARED vs LOCAL: a guest writing its disk (1 MiB/s) with a NIC, probed every 10 ms from the
 *     client namespace: wall time, QEMU downtime, bytes on the wire, network blackout, probes
 *     lost, integrity errors and the checks the destination passed.
 *
 * Root is needed (namespaces, tc), as for the integration tests. farm-bench times whole
 * processes over repetitions; what matters here is measured inside one run (a phase's time, a
 * link's counters), so this script measures it itself. Everything started is stopped at the end.
 */
import { execFile } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { configError, loadConfig } from '../services/shared/config.js';
import { DiskBus, DiskFormat, MigrationPolicy, MigrationState, StorageMode, WorkloadPattern, type DiskSpec, type VmSpec } from '../services/shared/gen/migd/v1/common.js';
import type { MigrationInfo } from '../services/shared/gen/migd/v1/node.js';
import { createPki } from '../services/shared/pki.js';
import { startNodeDaemon, type NodeProcess } from '../services/testbed/nodes.js';
import { BlackoutProbe, migrationTxBytes } from '../services/testbed/guest-probe.js';
import { Testbed } from '../services/testbed/testbed.js';
import { ensureGuestImageDir } from '../stress/image/build.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
/** Disk bytes on the wire ÷ allocated bytes above which holes were sent (a byte count, not a time). */
const SPARSE_LIMIT = 1.25;

const OPTIONS = {
  'rate-mbit': { type: 'integer', min: 8, max: 10_000, doc: 'migration link rate, Mbit/s (default 200)' },
  reps: { type: 'integer', min: 1, max: 10, doc: 'repetitions of each measurement (default 2)' },
  'disk-data-mib': { type: 'integer', min: 3, max: 4096, doc: 'data in the idle LOCAL disk of the copy-rate measure, MiB (default 48; the disk is 16/3 of it, the rest holes)' },
} as const;

type Client = ReturnType<NodeProcess['client']>;

async function follow(client: Client, runId: string, timeoutMs = 300_000): Promise<MigrationInfo> {
  const ac = new AbortController();
  const t = setTimeout(() => ac.abort(), timeoutMs);
  try {
    for await (const u of client.watchMigration({ runId }, { signal: ac.signal })) {
      if (u.update?.$case === 'result') return u.update.value;
    }
  } finally {
    clearTimeout(t);
    ac.abort();
  }
  throw new Error(`migration ${runId} did not finish within ${timeoutMs} ms`);
}

/** Waits until the guest's console shows `pattern`. */
async function waitConsole(client: Client, name: string, pattern: RegExp, timeoutMs = 120_000): Promise<void> {
  const ac = new AbortController();
  const t = setTimeout(() => ac.abort(), timeoutMs);
  let text = '';
  try {
    for await (const m of client.watchGuest({ name, includeConsole: true }, { signal: ac.signal })) {
      if (m.item?.$case !== 'console') continue;
      text = (text + Buffer.from(m.item.value).toString('latin1')).slice(-20_000);
      if (pattern.test(text)) return;
    }
  } catch (err) {
    if (!ac.signal.aborted) throw err;
  } finally {
    clearTimeout(t);
    ac.abort();
  }
  throw new Error(`console of ${name} did not show ${pattern} within ${timeoutMs} ms`);
}

function policy(): MigrationPolicy {
  return MigrationPolicy.fromPartial({ downtimeLimitMs: 300 });
}

function disk(p: Partial<DiskSpec> & { id: string; path: string }): DiskSpec {
  return { format: DiskFormat.DISK_FORMAT_RAW, bus: DiskBus.DISK_BUS_VIRTIO_BLK, cache: 0, aio: 0, readOnly: false, serial: '', storage: StorageMode.STORAGE_MODE_LOCAL, create: undefined, ...p };
}

function spec(name: string, p: Partial<VmSpec>): VmSpec {
  return {
    name,
    memoryMib: 192,
    vcpus: 1,
    accel: 0,
    machineType: '',
    kernelPath: '',
    initrdPath: '',
    extraCmdline: '',
    disks: [],
    workload: { pattern: WorkloadPattern.WORKLOAD_PATTERN_IDLE, workers: 1, bytesPerWorker: 16 * MiB, rateBytesPerSec: 0, hotBytes: 0, verify: true, phaseAfterMs: 0, phaseRateBytesPerSec: 0 },
    labels: {},
    antiAffinityGroup: '',
    uuid: '',
    nics: [],
    ...p,
  };
}

const fmt = (n: number, d = 2): string => n.toFixed(d);
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function main(): Promise<void> {
  const { values: o } = loadConfig(OPTIONS, process.argv.slice(2));
  const rateMbit = o['rate-mbit'] ?? 200;
  const reps = o.reps ?? 2;
  // The copy-rate disk: `dataMiB` of data in three runs, holes around them (virtual ≈ 5.33× data).
  const dataMiB = o['disk-data-mib'] ?? 48;
  const virtualMiB = Math.ceil((dataMiB * 16) / 3);
  const chunk = Math.floor(dataMiB / 3);
  const runs = [
    { seek: Math.floor(virtualMiB / 32), count: chunk },
    { seek: Math.floor((virtualMiB * 100) / 256), count: chunk },
    { seek: Math.floor((virtualMiB * 200) / 256), count: dataMiB - 2 * chunk },
  ];
  if (process.getuid?.() !== 0) throw configError('rate-mbit', 'bench-storage needs root (network namespaces, tc)');
  const linkBytesPerSec = (rateMbit * 1e6) / 8;
  const work = await mkdtemp(join(tmpdir(), 'migd-bs-'));
  let tb: Testbed | undefined;
  const nodes: NodeProcess[] = [];
  const probes: BlackoutProbe[] = [];
  try {
    const certDir = join(work, 'pki');
    createPki(certDir);
    const guestImage = await ensureGuestImageDir(join(work, 'guest'));
    tb = await Testbed.create({ hosts: ['a', 'b'], vmNetwork: true });
    const shared = join(work, 'shared');
    for (const d of [shared, join(work, 'a-local'), join(work, 'b-local')]) mkdirSync(d, { recursive: true });
    for (const h of ['a', 'b']) {
      nodes.push(
        await startNodeDaemon(tb.host(h), {
          stateDir: join(work, h),
          certDir,
          guestImage,
          env: { MIGD_LOG_LEVEL: 'warn' },
          args: ['--storage-root', join(work, `${h}-local`), '--storage-root', shared, '--network', `vm=${tb.host(h).vmBridge!}`],
        }),
      );
    }
    const [a, b] = [nodes[0]!.client(), nodes[1]!.client()];
    const dest = { nodeId: 'b', managementAddress: nodes[1]!.address, migrationAddress: tb.host('b').migrationAddress };
    // Since issue 17 a destination takes a run only from the source the coordinator announced.
    const migrate = async (runId: string, vmName: string): Promise<void> => {
      await b.expectIncoming({ runId, sourceNodeId: 'a', vmName });
      await a.startMigration({ runId, vmName, destination: dest, policy: policy() });
    };
    const txBytes = (): Promise<number> => migrationTxBytes(tb!.host('a'));
    for (const h of ['a', 'b']) await tb.shape(h, { rateMbit });
    console.log(`bench-storage: link ${rateMbit} Mbit/s (${fmt(linkBytesPerSec / MiB)} MiB/s) both ways, ${reps} repetition(s); QEMU under TCG, 2-core shared machine`);

    // 1. copy rate and sparse disk.
    const copy: { ratio: number; sentVsAllocated: number; storageMs: number; diskWire: number; allocated: number; virtual: number }[] = [];
    for (let r = 0; r < reps; r++) {
      const name = `bs-copy-${r}`;
      const path = join(work, 'a-local', `${name}.raw`);
      await run('qemu-img', ['create', '-q', '-f', 'raw', path, String(virtualMiB * MiB)]);
      // dataMiB of data in three runs, the rest holes.
      for (const x of runs) await run('dd', ['if=/dev/urandom', `of=${path}`, 'bs=1M', `count=${x.count}`, `seek=${x.seek}`, 'conv=notrunc', 'status=none']);
      await a.createVm({ spec: spec(name, { disks: [disk({ id: 'd0', path })] }) });
      await waitConsole(a, name, /heartbeat|verify/);
      const tx0 = await txBytes();
      await migrate(`run-${name}`, name);
      const info = await follow(a, `run-${name}`);
      const tx1 = await txBytes();
      if (info.state !== MigrationState.MIGRATION_STATE_SUCCEEDED) throw new Error(`${name}: ${MigrationState[info.state]} ${info.error?.message ?? ''}`);
      const st = info.stats!;
      const allocated = st.diskAllocatedBytes ?? 0;
      const diskWire = Math.max(0, tx1 - tx0 - st.transferredBytes);
      const storageMs = st.storageMs ?? 0;
      copy.push({ ratio: allocated / (storageMs / 1000) / linkBytesPerSec, sentVsAllocated: diskWire / allocated, storageMs, diskWire, allocated, virtual: virtualMiB * MiB });
      console.log(`  copy #${r + 1}: storage phase ${storageMs} ms for ${fmt(allocated / MiB, 1)} MiB allocated of ${virtualMiB} MiB; disk bytes on the wire ${fmt(diskWire / MiB, 1)} MiB (memory ${fmt(st.transferredBytes / MiB, 1)} MiB)`);
      await b.destroyVm({ name });
    }

    // 2. SHARED vs LOCAL, with a NIC and the prober.
    const vmNet = tb.vm!;
    const rows: Record<string, { wallMs: number[]; downtimeMs: number[]; wireMiB: number[]; blackoutMs: number[]; lost: number[]; errors: number[]; checks: string[] }> = {};
    let guest = 0;
    for (let r = 0; r < reps; r++) {
      for (const mode of ['SHARED', 'LOCAL'] as const) {
        const name = `bs-${mode.toLowerCase()}-${r}`;
        const ip = vmNet.guestAddress(guest);
        const mac = vmNet.guestMac(guest++);
        const path = mode === 'SHARED' ? join(shared, `${name}.qcow2`) : join(work, 'a-local', `${name}.raw`);
        if (mode === 'SHARED') await run('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(64 * MiB)]);
        else {
          await run('qemu-img', ['create', '-q', '-f', 'raw', path, String(64 * MiB)]);
          await run('dd', ['if=/dev/urandom', `of=${path}`, 'bs=1M', 'count=16', 'seek=32', 'conv=notrunc', 'status=none']);
        }
        const s = spec(name, {
          disks: [disk({ id: 'd0', path, format: mode === 'SHARED' ? DiskFormat.DISK_FORMAT_QCOW2 : DiskFormat.DISK_FORMAT_RAW, storage: mode === 'SHARED' ? StorageMode.STORAGE_MODE_SHARED : StorageMode.STORAGE_MODE_LOCAL })],
          nics: [{ mac, network: 'vm', guestIp: `${ip}/${vmNet.prefixLength}` }],
        });
        s.workload = { ...s.workload!, diskId: 'd0', diskBytes: 16 * MiB, diskRateBytesPerSec: MiB };
        await a.createVm({ spec: s });
        await waitConsole(a, name, /dpass n=[1-9]/);
        const probe = await BlackoutProbe.start(vmNet, ip);
        probes.push(probe);
        const tx0 = await txBytes();
        const t0 = Date.now();
        await migrate(`run-${name}`, name);
        const info = await follow(a, `run-${name}`);
        const wallMs = Date.now() - t0;
        const tx1 = await txBytes();
        const bl = await probe.finish();
        probes.splice(probes.indexOf(probe), 1);
        if (info.state !== MigrationState.MIGRATION_STATE_SUCCEEDED) throw new Error(`${name}: ${MigrationState[info.state]} ${info.error?.message ?? ''}`);
        const st = info.stats!;
        const row = (rows[mode] ??= { wallMs: [], downtimeMs: [], wireMiB: [], blackoutMs: [], lost: [], errors: [], checks: [] });
        row.wallMs.push(wallMs);
        row.downtimeMs.push(st.downtimeMs);
        row.wireMiB.push((tx1 - tx0) / MiB);
        row.blackoutMs.push(bl.blackoutMs);
        row.lost.push(bl.lost);
        row.errors.push(st.integrityErrors);
        row.checks = (st.checks ?? []).map((c) => `${c.name}${c.passed ? '' : ' FAILED'}`);
        console.log(`  ${mode} #${r + 1}: ${wallMs} ms wall, downtime ${st.downtimeMs} ms, ${fmt((tx1 - tx0) / MiB, 1)} MiB on the wire, blackout ${Math.round(bl.blackoutMs)} ms (${bl.lost}/${bl.sent} probes lost), ${st.integrityErrors} integrity errors`);
        await b.destroyVm({ name });
      }
    }

    console.log('');
    console.log(`## Storage copy (idle guest, sparse ${virtualMiB} MiB LOCAL raw disk with ${dataMiB} MiB of data)`);
    console.log('');
    console.log('| measure | median | runs | goal |');
    console.log('|---|---|---|---|');
    console.log(`| disk copy rate ÷ link rate (allocated data ÷ storage phase ÷ ${rateMbit} Mbit/s) | ${fmt(median(copy.map((c) => c.ratio)))} | ${copy.map((c) => fmt(c.ratio)).join(', ')} | ≥ 0.9 |`);
    console.log(`| disk bytes on the wire ÷ allocated size | ${fmt(median(copy.map((c) => c.sentVsAllocated)))} | ${copy.map((c) => fmt(c.sentVsAllocated)).join(', ')} | ≈ 1 (sparse regions not sent) |`);
    console.log(`| virtual size ÷ allocated size (what a copy of the holes would cost) | ${fmt(median(copy.map((c) => c.virtual / c.allocated)))} | | |`);
    console.log(`| storage phase, ms | ${median(copy.map((c) => c.storageMs))} | ${copy.map((c) => c.storageMs).join(', ')} | |`);
    console.log('');
    const rate = median(copy.map((c) => c.ratio));
    console.log(`copy rate ÷ link rate: ${fmt(rate)} — goal ≥ 0.9 ${rate >= 0.9 ? 'met' : 'NOT met'} (a rate, reported; the run does not fail on it)`);
    // A copy of the holes would put the virtual size on the wire (5.3× the allocation here); the
    // wire carries the allocation plus NBD and TCP overhead. More than SPARSE_LIMIT× is a failure.
    const sparseFailures = copy.filter((c) => c.sentVsAllocated > SPARSE_LIMIT);
    console.log(
      sparseFailures.length === 0
        ? `sparse check: passed — every copy sent ≤ ${SPARSE_LIMIT}× the allocated bytes (max ${fmt(Math.max(...copy.map((c) => c.sentVsAllocated)))}×; the holes would be ${fmt(copy[0]!.virtual / copy[0]!.allocated)}×)`
        : `sparse check: FAILED — ${sparseFailures.length} of ${copy.length} copies sent more than ${SPARSE_LIMIT}× the allocated bytes (${sparseFailures.map((c) => `${fmt(c.diskWire / MiB, 1)} MiB for ${fmt(c.allocated / MiB, 1)} MiB`).join(', ')}): sparse regions were sent`,
    );
    console.log('');
    console.log(`## SHARED vs LOCAL (guest writing its disk at 1 MiB/s, 192 MiB guest, NIC probed every 10 ms; ${rateMbit} Mbit/s link; medians of ${reps})`);
    console.log('');
    console.log('| storage | wall time ms | QEMU downtime ms | MiB on the wire | network blackout ms | probes lost | integrity errors | checks on the destination |');
    console.log('|---|---|---|---|---|---|---|---|');
    for (const [mode, r] of Object.entries(rows)) {
      console.log(`| ${mode} | ${median(r.wallMs)} | ${median(r.downtimeMs)} | ${fmt(median(r.wireMiB), 1)} | ${Math.round(median(r.blackoutMs))} | ${median(r.lost)} | ${Math.max(...r.errors)} | ${r.checks.join(' ')} |`);
    }
    const sh = rows['SHARED'];
    const lo = rows['LOCAL'];
    if (sh && lo) console.log(`| LOCAL ÷ SHARED | ${fmt(median(lo.wallMs) / median(sh.wallMs))} | ${fmt(median(lo.downtimeMs) / Math.max(1, median(sh.downtimeMs)))} | ${fmt(median(lo.wireMiB) / median(sh.wireMiB))} | ${fmt(median(lo.blackoutMs) / Math.max(1, median(sh.blackoutMs)))} | | | |`);
    if (sparseFailures.length > 0) throw new Error('the sparse check failed: holes of a LOCAL disk went over the wire');
  } finally {
    for (const p of probes) await p.stop().catch(() => undefined);
    await Promise.all(nodes.map((n) => n.stop().catch(() => undefined)));
    await tb?.destroy();
    await rm(work, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench-storage: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);

