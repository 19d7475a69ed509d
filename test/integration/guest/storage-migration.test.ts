/**
 * Real VMs with a disk and a NIC, migrated by hand-driven QMP between two testbed hosts — the
 * reference sequence the node daemon will follow (docs/storage-migration.md):
 *
 *  1. SHARED storage: both QEMUs open the same qcow2 file (the destination `-incoming defer`, its
 *     image inactive until switch-over), `announce-self` on the destination after it resumes.
 *  2. LOCAL storage copied over NBD as libvirt does: the destination (`-S -incoming defer`) exports
 *     an empty image of the same virtual size, the source mirrors its disk into it (`sync: full`),
 *     the memory migration starts once the mirror is READY, `block-job-cancel` ends the mirror
 *     after the source stopped (never job-complete: that would pivot the source onto the NBD
 *     target), then `nbd-server-stop` and `cont`.
 *
 * The guest (stress/guest) writes generation-tagged blocks to its virtio disk and answers a UDP
 * echo on its virtio NIC (a tap on the host's br-vm); a prober in the testbed's client namespace
 * sends a probe every 10 ms. Asserted: 0 memory and 0 disk integrity errors after arrival (a full
 * disk verification on the destination), probes answered after the migration, an idle guest's
 * a short blackout on a fast link (printed; bounded loosely), and for LOCAL `qemu-img compare` identical and a sparse target.
 * Figures are printed as one JSON line per case (`storage-migration {...}`).
 */
import { execFile, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import type { GuestEvent } from '../../../services/shared/guest/telemetry.js';
import { buildGuestCmdline } from '../../../services/shared/guest/workload.js';
import { BlackoutProbe, migrationTxBytes, Testbed, type TestbedHost } from '../../../services/testbed/index.js';
import { ensureGuestImage, type GuestImage } from '../../../stress/image/build.js';
import { GuestEventLog } from '../../helpers/guest-qemu.js';
import { MiniQmp } from '../../helpers/mini-qmp.js';

process.env['MIGD_LOG_LEVEL'] ??= 'warn';
const run = promisify(execFile);
const MiB = 2 ** 20;
const now = (): number => performance.timeOrigin + performance.now();
const PREFIX = `migds${Math.floor(Math.random() * 0xffff).toString(16).padStart(4, '0')}-`;

interface Vm {
  tag: string;
  proc: ChildProcess;
  qmp: MiniQmp;
  serial: Socket;
  stderr: () => string;
}

interface VmSpec {
  tag: string;
  host: TestbedHost;
  disk: string;
  format: 'raw' | 'qcow2';
  tap: string;
  mac: string;
  cmdline: string;
  /** Destination: `-incoming defer`, and `-S` to stay paused after the migration (LOCAL). */
  incoming?: 'running' | 'paused';
}

describe('real VM with a disk and a NIC, migrated by QMP (no node daemon)', () => {
  let tb: Testbed | undefined;
  let image: GuestImage;
  let dir: string;
  const vms: Vm[] = [];
  const probes: BlackoutProbe[] = [];

  beforeAll(async () => {
    image = await ensureGuestImage();
    tb = await Testbed.create({ prefix: PREFIX, hosts: ['a', 'b'], vmNetwork: true });
    // Sockets and images on tmpfs when available (no disk writeback on a shared machine).
    dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'migd-storage-'));
  }, 180_000);

  afterEach(async () => {
    for (const p of probes.splice(0)) await p.stop();
    for (const vm of vms.splice(0)) await stopVm(vm);
  });

  afterAll(async () => {
    await tb?.destroy();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  const bed = (): Testbed => {
    if (!tb) throw new Error('no testbed');
    return tb;
  };

  async function stopVm(vm: Vm): Promise<void> {
    vm.qmp.close();
    vm.serial.destroy();
    if (vm.proc.exitCode === null && vm.proc.signalCode === null) {
      const exited = new Promise((r) => vm.proc.once('exit', r));
      vm.proc.kill('SIGKILL');
      await exited;
    }
  }

  /** Starts QEMU in `spec.host`'s namespace and connects its serial (into `log`) and QMP. */
  async function startVm(spec: VmSpec, log: GuestEventLog): Promise<Vm> {
    const serialPath = join(dir, `${spec.tag}.serial`);
    const qmpPath = join(dir, `${spec.tag}.qmp`);
    const args = [
      '-name', spec.tag, '-accel', 'tcg', '-machine', 'pc-i440fx-10.0', '-m', '256M', '-smp', '1',
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      '-kernel', image.kernel, '-initrd', image.initrd, '-append', spec.cmdline,
      // wait=on: QEMU starts the guest only once the test reads the serial line (no lost lines).
      '-chardev', `socket,id=ser0,path=${serialPath},server=on,wait=on`, '-serial', 'chardev:ser0',
      '-qmp', `unix:${qmpPath},server=on,wait=off`,
      // discard=unmap: zeroes the mirror writes into the NBD target punch holes instead of
      // allocating, so a sparse disk stays sparse on the destination.
      '-blockdev', JSON.stringify({ driver: spec.format, 'node-name': 'disk0', discard: 'unmap', file: { driver: 'file', filename: spec.disk, discard: 'unmap' } }),
      '-device', 'virtio-blk-pci,drive=disk0,id=vda',
      '-netdev', `tap,id=net0,ifname=${spec.tap},script=no,downscript=no`,
      '-device', `virtio-net-pci,netdev=net0,mac=${spec.mac}`,
      ...(spec.incoming ? ['-incoming', 'defer'] : []),
      ...(spec.incoming === 'paused' ? ['-S'] : []),
    ];
    const proc = spec.host.spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr?.on('data', (d: Buffer) => {
      if (stderr.length < 8000) stderr += d.toString();
    });
    const deadline = Date.now() + 30_000;
    let serial: Socket | undefined;
    while (!serial) {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`QEMU ${spec.tag} exited: ${stderr}`);
      try {
        serial = await new Promise<Socket>((resolve, reject) => {
          const s = connect(serialPath, () => resolve(s));
          s.once('error', reject);
        });
      } catch (err) {
        if (Date.now() > deadline) {
          proc.kill('SIGKILL');
          throw new Error(`QEMU ${spec.tag}: no serial socket: ${String(err)} ${stderr}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    serial.on('data', (d: Buffer) => log.push(d));
    const qmp = await MiniQmp.connect(qmpPath);
    const vm: Vm = { tag: spec.tag, proc, qmp, serial, stderr: () => stderr };
    vms.push(vm);
    return vm;
  }

  const cmdline = (guestIndex: number, diskRate: string): string =>
    buildGuestCmdline(
      { pattern: 'idle', workers: 1, bytesPerWorker: '32M', idleVerifyMs: 500, heartbeatMs: 500 },
      { guestMemoryBytes: 256 * MiB, extra: [`migd.ip=${bed().vm?.guestAddress(guestIndex)}/25`, `migd.disk=/dev/vda,size=32M,rate=${diskRate}`] },
    );

  const is =
    <T extends GuestEvent['type']>(type: T, pred: (e: Extract<GuestEvent, { type: T }>) => boolean = () => true) =>
    (e: GuestEvent): e is Extract<GuestEvent, { type: T }> =>
      e.type === type && pred(e as Extract<GuestEvent, { type: T }>);

  /** Boots the source, waits for its NIC, disk workload and echo; starts the prober. */
  async function bootSource(spec: VmSpec, log: GuestEventLog, guestIndex: number): Promise<{ vm: Vm; probe: BlackoutProbe }> {
    const vm = await startVm(spec, log);
    const net = await log.waitFor(is('net'), 90_000);
    expect(net.ip).toBe(bed().vm?.guestAddress(guestIndex));
    expect(net.mac).toBe(spec.mac);
    expect(await log.waitFor(is('modules'))).toMatchObject({ failed: 0 });
    await log.waitFor(is('disk-start'), 30_000);
    await log.waitFor(is('disk-pass'), 30_000);
    const vmNet = bed().vm;
    if (!vmNet) throw new Error('no VM network');
    const probe = await BlackoutProbe.start(vmNet, net.ip, { port: net.echoPort, readyAnswers: 50 });
    probes.push(probe);
    return { vm, probe };
  }

  /** Memory migration over the migration network; resolves at the source's `completed`. */
  async function migrateMemory(src: Vm, dst: Vm, dstHost: TestbedHost): Promise<{ completedAtMs: number; downtimeMs: number; totalMs: number }> {
    const uri = `tcp:${dstHost.migrationAddress}:${49152 + Math.floor(Math.random() * 10000)}`;
    for (const q of [src.qmp, dst.qmp]) await q.cmd('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
    await dst.qmp.cmd('migrate-incoming', { uri });
    await src.qmp.cmd('migrate-set-parameters', { 'downtime-limit': 300, 'max-bandwidth': 1024 * MiB });
    await src.qmp.cmd('migrate', { uri });
    const done = await src.qmp.waitEvent((e) => e.event === 'MIGRATION' && (e.data['status'] === 'completed' || e.data['status'] === 'failed'), 120_000);
    if (done.data['status'] !== 'completed') throw new Error(`migration failed: ${JSON.stringify(await src.qmp.cmd('query-migrate'))} ${dst.stderr()}`);
    const info = await src.qmp.cmd<{ downtime?: number; 'total-time'?: number }>('query-migrate');
    return { completedAtMs: done.atMs, downtimeMs: info.downtime ?? NaN, totalMs: info['total-time'] ?? NaN };
  }

  /** After arrival: a full disk verification and a memory sweep on the destination, both clean. */
  async function verifyAfterArrival(dst: Vm, log: GuestEventLog): Promise<{ sweepBlocks: number; pagesVerified: number }> {
    const from = log.events.length;
    const sweepsBefore = log.parser.integrity().disk.sweeps;
    dst.serial.write('dverify\n');
    const sweep = await log.waitFor(is('disk-sweep', (e) => e.sweep > sweepsBefore), 60_000, from);
    const verify = await log.waitFor(is('verify', (e) => e.pagesVerified > 0), 30_000, from);
    await log.waitFor(is('disk-pass'), 30_000, from); // the writer carries on, on the destination
    const integrity = log.parser.integrity();
    expect(sweep.errors).toBe(0);
    expect(sweep.blocks).toBeGreaterThan(0);
    expect(integrity.disk.errors).toBe(0);
    expect(integrity.disk.details).toEqual([]);
    expect(integrity.errors).toBe(0);
    expect(integrity.details).toEqual([]);
    expect(log.events.filter((e) => e.type === 'anomaly' || e.type === 'kernel-panic')).toEqual([]);
    return { sweepBlocks: sweep.blocks, pagesVerified: verify.pagesVerified };
  }

  it('SHARED storage: both QEMUs open one qcow2; 0 disk and memory errors, and the guest answers from outside again after one short outage', async () => {
    const t = bed();
    const [a, b] = [t.hosts[0], t.hosts[1]];
    const vmNet = t.vm;
    if (!a || !b || !vmNet) throw new Error('testbed incomplete');
    const disk = join(dir, 'shared.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '64M']);
    await t.addTap('a', 'tap-s0');
    await t.addTap('b', 'tap-s1');
    const log = new GuestEventLog();
    const base = { disk, format: 'qcow2' as const, mac: vmNet.guestMac(0), cmdline: cmdline(0, '4M') };
    const { vm: src, probe } = await bootSource({ ...base, tag: 'shared-src', host: a, tap: 'tap-s0' }, log, 0);

    // The destination opens the very file the running source holds: incoming images stay inactive
    // (no lock conflict) until the switch-over hands them over.
    const dst = await startVm({ ...base, tag: 'shared-dst', host: b, tap: 'tap-s1', incoming: 'running' }, log);
    const m = await migrateMemory(src, dst, b);
    await dst.qmp.waitEvent((e) => e.event === 'RESUME', 30_000);
    await dst.qmp.cmd('announce-self', { initial: 50, max: 550, rounds: 5, step: 100 });
    await stopVm(src); // the source is gone, as after a real migration

    await probe.answered(50);
    const verified = await verifyAfterArrival(dst, log);
    const r = await probe.stop();
    const figures = { case: 'shared', downtimeMs: m.downtimeMs, totalMs: m.totalMs, blackoutMs: Math.round(r.blackoutMs), lost: r.lost, sent: r.sent, outages: r.outages.length, ...verified };
    process.stdout.write(`storage-migration ${JSON.stringify(figures)}\n`);
    // The blackout's size is a figure (printed above; about 0.5 s on a quiet machine), not a timed
    // assertion: this 2-core machine under load stretches it. The bound only catches a guest
    // that was unreachable for long after the switch-over.
    expect(r.blackoutMs).toBeLessThan(5000);
    expect(r.blackoutToMs ?? 0).toBeGreaterThan(0);
    expect(probe.prober.answerLog.at(-1)?.receivedMs ?? 0).toBeGreaterThan(m.completedAtMs);
  }, 300_000);

  it('LOCAL storage copied over NBD (blockdev-mirror sync full, block-job-cancel): identical, sparse, 0 errors', async () => {
    const t = bed();
    const [a, b] = [t.hosts[0], t.hosts[1]];
    const vmNet = t.vm;
    if (!a || !b || !vmNet) throw new Error('testbed incomplete');
    const srcDisk = join(dir, 'local-src.raw');
    const dstDisk = join(dir, 'local-dst.raw');
    const virtual = 64 * MiB;
    await run('qemu-img', ['create', '-q', '-f', 'raw', srcDisk, String(virtual)]);
    // Data the guest did not write (an installed system, say): 16 MiB at 40 MiB, the rest sparse.
    await run('dd', [`if=/dev/urandom`, `of=${srcDisk}`, 'bs=1M', 'count=16', 'seek=40', 'conv=notrunc', 'status=none']);
    // The destination's target: same virtual size, empty and sparse.
    await run('qemu-img', ['create', '-q', '-f', 'raw', dstDisk, String(virtual)]);
    await t.addTap('a', 'tap-l0');
    await t.addTap('b', 'tap-l1');
    const log = new GuestEventLog();
    const base = { format: 'raw' as const, mac: vmNet.guestMac(1), cmdline: cmdline(1, '1M') };
    const { vm: src, probe } = await bootSource({ ...base, disk: srcDisk, tag: 'local-src', host: a, tap: 'tap-l0' }, log, 1);
    const dst = await startVm({ ...base, disk: dstDisk, tag: 'local-dst', host: b, tap: 'tap-l1', incoming: 'paused' }, log);

    // Storage first, on a link shaped to 200 Mbit/s so the mirror rate can be compared with it.
    const linkMbit = 200;
    await t.shape('a', { rateMbit: linkMbit });
    const nbdPort = 10809 + Math.floor(Math.random() * 1000);
    await dst.qmp.cmd('nbd-server-start', { addr: { type: 'inet', data: { host: b.migrationAddress, port: String(nbdPort) } } });
    await dst.qmp.cmd('block-export-add', { type: 'nbd', id: 'export-disk0', 'node-name': 'disk0', writable: true });
    // discard=unmap on the NBD client too: only then may mirror send zeroes as "may punch a hole"
    // (without it QEMU asks NBD_CMD_FLAG_NO_HOLE and the target gets fully allocated).
    await src.qmp.cmd('blockdev-add', { driver: 'nbd', 'node-name': 'target-disk0', discard: 'unmap', server: { type: 'inet', host: b.migrationAddress, port: String(nbdPort) }, export: 'disk0' });
    const tx0 = await migrationTxBytes(a);
    const mirrorStart = now();
    await src.qmp.cmd('blockdev-mirror', { 'job-id': 'mirror-disk0', device: 'disk0', target: 'target-disk0', sync: 'full' });
    const ready = await src.qmp.waitEvent((e) => e.event === 'BLOCK_JOB_READY' && e.data['device'] === 'mirror-disk0', 120_000);
    const mirrorMs = ready.atMs - mirrorStart;
    const jobs = await src.qmp.cmd<{ device: string; offset: number; len: number }[]>('query-block-jobs');
    const copied = jobs.find((j) => j.device === 'mirror-disk0')?.offset ?? 0;
    const wire = (await migrationTxBytes(a)) - tx0;
    await t.unshape('a');

    // Memory next (the mirror keeps the target in sync meanwhile); the destination stays paused.
    const m = await migrateMemory(src, dst, b);
    await dst.qmp.waitEvent((e) => e.event === 'MIGRATION' && e.data['status'] === 'completed', 30_000);
    const status = await dst.qmp.cmd<{ status: string }>('query-status');
    expect(status.status).toBe('paused');
    // End the mirror now that the source is stopped: cancel (no pivot), which drains it first.
    await src.qmp.cmd('block-job-cancel', { device: 'mirror-disk0' });
    await src.qmp.waitEvent((e) => e.event === 'BLOCK_JOB_COMPLETED' && e.data['device'] === 'mirror-disk0', 60_000);
    await dst.qmp.cmd('nbd-server-stop');

    // Both images hold the switch-over state now: compare before the destination writes again.
    const cmp = await run('qemu-img', ['compare', '-U', '-f', 'raw', '-F', 'raw', srcDisk, dstDisk]);
    expect(cmp.stdout).toMatch(/Images are identical/);
    const allocated = async (p: string): Promise<number> => (await stat(p)).blocks * 512;
    const [srcAlloc, dstAlloc] = [await allocated(srcDisk), await allocated(dstDisk)];

    await dst.qmp.cmd('cont');
    await dst.qmp.waitEvent((e) => e.event === 'RESUME', 30_000);
    await dst.qmp.cmd('announce-self', { initial: 50, max: 550, rounds: 5, step: 100 });
    await stopVm(src);

    await probe.answered(50);
    const verified = await verifyAfterArrival(dst, log);
    const r = await probe.stop();
    // The job's offset counts zeroed ranges too (sent as NBD WRITE_ZEROES, no payload): the rate
    // that compares with the link is what crossed it.
    const mirrorRate = wire / (mirrorMs / 1000);
    const linkRate = (linkMbit * 1e6) / 8;
    const figures = {
      case: 'local-nbd',
      jobMiB: +(copied / MiB).toFixed(1),
      wireMiB: +(wire / MiB).toFixed(1),
      mirrorMs: Math.round(mirrorMs),
      mirrorMiBps: +(mirrorRate / MiB).toFixed(1),
      mirrorOverLink: +(mirrorRate / linkRate).toFixed(2),
      srcAllocMiB: +(srcAlloc / MiB).toFixed(1),
      dstAllocMiB: +(dstAlloc / MiB).toFixed(1),
      downtimeMs: m.downtimeMs,
      totalMs: m.totalMs,
      blackoutMs: Math.round(r.blackoutMs),
      lost: r.lost,
      ...verified,
    };
    process.stdout.write(`storage-migration ${JSON.stringify(figures)}\n`);
    // Sparse regions are not materialised on the target.
    expect(dstAlloc).toBeLessThan(virtual / 2);
    expect(dstAlloc).toBeLessThanOrEqual(srcAlloc + 4 * MiB);
    expect(copied).toBeGreaterThanOrEqual(16 * MiB);
    // Sparse regions are not sent: what crossed the link is about the allocated data, not 64 MiB.
    expect(wire).toBeLessThan(srcAlloc + 8 * MiB);
    expect(probe.prober.answerLog.at(-1)?.receivedMs ?? 0).toBeGreaterThan(m.completedAtMs);
    expect(r.blackoutMs).toBeLessThan(5000);
  }, 300_000);
});
