/**
 * VmManager logic that real processes cannot stage on demand: a recorded pid reused by another
 * process, memory admission, a stale lock — driven through the injected seams (fake /proc, process
 * table, spawner, QMP transport). No QEMU is started.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ResourceExhaustedError } from '../../../services/shared/errors.js';
import { createLogger } from '../../../services/shared/log.js';
import { hostFs } from '../../../services/node/host/fs.js';
import type { ProcStat } from '../../../services/node/host/info.js';
import { VmManager, type VmRecord } from '../../../services/node/vm/manager.js';
import type { ProcessSpawner, ProcessTable } from '../../../services/node/vm/process.js';
import { normalizeVmSpec } from '../../../services/node/vm/spec.js';
import { FakeTransport } from '../../helpers/qemu-fake-qmp.js';

const quiet = createLogger('vm-unit', {}, () => undefined, 'error');
const QEMU = { path: '/usr/bin/qemu-system-x86_64', version: { major: 10, minor: 0, micro: 2, package: '' } };

let dir: string;
let fakeRoot: string;
const managers: VmManager[] = [];

class FakeProcs implements ProcessTable {
  readonly procs = new Map<number, ProcStat>();
  readonly kills: Array<[number, string]> = [];
  add(pid: number, startTimeTicks: number, rssPages = 0): void {
    this.procs.set(pid, { pid, comm: 'qemu-system-x86', state: 'S', ppid: 1, utimeTicks: 0, stimeTicks: 0, startTimeTicks, rssPages });
  }
  stat(pid: number): Promise<ProcStat | undefined> {
    return Promise.resolve(this.procs.get(pid));
  }
  kill(pid: number, signal: NodeJS.Signals): void {
    this.kills.push([pid, signal]);
  }
}

const noSpawn: ProcessSpawner = { spawn: () => Promise.reject(new Error('unexpected spawn')) };

async function writeVm(name: string, pid: number, startTimeTicks: number, memoryMiB = 128): Promise<string> {
  const vmDir = join(dir, 'vms', name);
  await mkdir(vmDir, { recursive: true });
  const record: VmRecord = {
    format: 1,
    spec: normalizeVmSpec({ name, memoryMiB }, 'tcg'),
    role: 'running',
    pid,
    startTimeTicks,
    createdAt: '2025-01-01T00:00:00.000Z',
    qemu: { path: QEMU.path, version: '10.0.2' },
    argv: [QEMU.path],
    accelReason: 'test',
  };
  await writeFile(join(vmDir, 'vm.json'), JSON.stringify(record));
  await writeFile(join(vmDir, 'qmp.sock'), ''); // stale leftovers
  await writeFile(join(vmDir, 'qemu.pid'), String(pid));
  return vmDir;
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'migd-vmu-'));
  fakeRoot = await mkdtemp(join(tmpdir(), 'migd-vmu-root-'));
  await mkdir(join(fakeRoot, 'proc'), { recursive: true });
  await writeFile(join(fakeRoot, 'proc', 'cpuinfo'), 'flags\t\t: fpu sse\n');
  await writeFile(join(fakeRoot, 'proc', 'meminfo'), 'MemTotal: 4194304 kB\nMemFree: 1048576 kB\nMemAvailable: 1048576 kB\n');
});

afterEach(async () => {
  await Promise.all(managers.splice(0).map((m) => m.close()));
  await rm(dir, { recursive: true, force: true });
  await rm(fakeRoot, { recursive: true, force: true });
});

async function open(procs: FakeProcs, transport = new FakeTransport()): Promise<VmManager> {
  const m = await VmManager.open({
    stateDir: dir,
    logger: quiet,
    fs: hostFs(fakeRoot),
    processes: procs,
    spawner: noSpawn,
    qemu: QEMU,
    qmpTransport: () => transport,
    reattachTimeoutMs: 100,
  });
  managers.push(m);
  return m;
}

describe('VmManager reattach decisions', () => {
  it('does not adopt a recorded pid that now belongs to another process (start time differs)', async () => {
    const procs = new FakeProcs();
    procs.add(process.pid, 1);
    procs.add(4242, 999_999); // pid reused since the record was written with start time 1234
    const vmDir = await writeVm('old', 4242, 1234);
    const transport = new FakeTransport();
    const m = await open(procs, transport);
    expect(m.get('old')).toMatchObject({ status: 'exited', exited: { reason: 'dead at reattach' } });
    expect(procs.kills).toEqual([]); // never signal a stranger
    expect(transport.streams).toHaveLength(0); // never talked to its socket
    const record = JSON.parse(await readFile(join(vmDir, 'vm.json'), 'utf8')) as VmRecord;
    expect(record.exited?.reason).toBe('dead at reattach');
    await expect(readFile(join(vmDir, 'qmp.sock'))).rejects.toThrow(); // stale socket removed
  });

  it('treats a zombie as dead', async () => {
    const procs = new FakeProcs();
    procs.add(process.pid, 1);
    procs.add(4243, 50);
    procs.procs.set(4243, { ...procs.procs.get(4243)!, state: 'Z' });
    await writeVm('z', 4243, 50);
    const m = await open(procs);
    expect(m.get('z').status).toBe('exited');
  });

  it('adopts a live QEMU and reconnects QMP through the transport', async () => {
    const procs = new FakeProcs();
    procs.add(process.pid, 1);
    procs.add(5000, 77);
    await writeVm('alive', 5000, 77);
    const transport = new FakeTransport();
    const opening = open(procs, transport);
    const s = await transport.nextStream();
    await s.handshake();
    const m = await opening;
    expect(m.get('alive')).toMatchObject({ status: 'running', adopted: true, qmpState: 'running', pid: 5000 });
    const q = m.qmp('alive').execute('query-status');
    s.reply(await s.nextCommand(), { status: 'running', running: true });
    await expect(q).resolves.toMatchObject({ running: true });
  });

  it('takes over a lock left by a dead daemon', async () => {
    await writeFile(join(dir, 'manager.lock'), JSON.stringify({ pid: 999_999, startTimeTicks: 5 }));
    const procs = new FakeProcs();
    procs.add(process.pid, 1);
    const m = await open(procs);
    expect(JSON.parse(await readFile(join(dir, 'manager.lock'), 'utf8'))).toEqual({ pid: process.pid, startTimeTicks: 1 });
    await m.close();
    await expect(readFile(join(dir, 'manager.lock'))).rejects.toThrow(); // released on close
  });
});

describe('VmManager memory admission', () => {
  it('counts RAM promised to running VMs that they have not touched yet', async () => {
    const procs = new FakeProcs();
    procs.add(process.pid, 1);
    procs.add(6000, 10, (128 * 1024 * 1024) / 4096); // 768 MiB VM with 128 MiB resident
    await writeVm('big', 6000, 10, 768);
    const transport = new FakeTransport();
    const opening = open(procs, transport);
    await (await transport.nextStream()).handshake();
    const m = await opening;
    // Host: 1024 MiB available; 640 MiB promised to 'big' → 384 MiB left.
    const err = (await m.create({ name: 'next', memoryMiB: 512 }).catch((e: unknown) => e)) as ResourceExhaustedError;
    expect(err).toBeInstanceOf(ResourceExhaustedError);
    expect(err.message).toMatch(/needs 512 MiB but the host has 384 MiB available \(1024 MiB free, 640 MiB promised/);
    await expect(readFile(join(dir, 'vms', 'next', 'vm.json'))).rejects.toThrow(); // nothing created
  });
});
