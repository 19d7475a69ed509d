/**
 * VmManager against real QEMU 10 (TCG). Guests are the 77-byte multiboot test kernel (prints a
 * banner, halts: no host CPU), 128 MiB, 1 vCPU. Every test's QEMUs and temp dirs are removed in
 * afterEach, also on failure (QemuSandbox sweeps by state-dir path).
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  AlreadyExistsError,
  CancelledError,
  DependencyError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
} from '../../../services/shared/errors.js';
import { createLogger } from '../../../services/shared/log.js';
import { VmManager } from '../../../services/node/vm/manager.js';
import { TEST_GUEST_BANNER, writeTestGuest } from '../../helpers/qemu-guest.js';
import { QemuSandbox, isAlive, qemuPidsMatching, waitFor } from '../../helpers/qemu-process.js';

const quiet = createLogger('vm-it', {}, () => undefined, 'error');
const sandbox = new QemuSandbox();
const managers: VmManager[] = [];
let stateDir: string;
let kernel: string;

async function open(extra: Partial<Parameters<typeof VmManager.open>[0]> = {}): Promise<VmManager> {
  const m = await VmManager.open({ stateDir, logger: quiet, ...extra });
  managers.push(m);
  return m;
}

async function collectUntil(it: AsyncIterator<Uint8Array>, needle: string, timeoutMs: number): Promise<string> {
  let text = '';
  const deadline = Date.now() + timeoutMs;
  while (!text.includes(needle)) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`console did not show ${JSON.stringify(needle)}; got ${JSON.stringify(text)}`);
    const r = await Promise.race([it.next(), new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), left))]);
    if (r === 'timeout') continue;
    if (r.done === true) throw new Error(`console ended before ${JSON.stringify(needle)}; got ${JSON.stringify(text)}`);
    text += Buffer.from(r.value).toString('latin1');
  }
  return text;
}

beforeEach(async () => {
  stateDir = await sandbox.tempDir('migd-vm-');
  kernel = await writeTestGuest(stateDir);
});

afterEach(async () => {
  await Promise.all(managers.splice(0).map((m) => m.close()));
  await sandbox.cleanup();
});

describe('VmManager lifecycle', () => {
  it('creates a VM: layout, modes, vm.json, QMP ready, console logged; list/get/cpu', async () => {
    const m = await open();
    const t0 = performance.now();
    const vm = await m.create({ name: 'vm1', memoryMiB: 128, kernel, append: 'ignored' });
    const readyMs = performance.now() - t0;
    console.log(`[measure] create → QMP ready ${readyMs.toFixed(0)} ms`);

    expect(vm).toMatchObject({ name: 'vm1', status: 'running', role: 'running', adopted: false, qmpState: 'running' });
    expect(vm.spec.accel).toBe('tcg'); // auto on this PVM host
    expect(await isAlive(vm.pid)).toBe(true);
    expect(vm.argv[0]).toMatch(/qemu-system-x86_64$/);
    expect(vm.argv).toContain('pc-i440fx-10.0');

    const mode = async (p: string): Promise<number> => (await stat(p)).mode & 0o777;
    expect(await mode(join(stateDir, 'vms'))).toBe(0o700);
    expect(await mode(vm.paths.dir)).toBe(0o700);
    expect(await mode(vm.paths.qmpSocket)).toBe(0o600);
    expect(await mode(vm.paths.serialSocket)).toBe(0o600);
    expect(await mode(vm.paths.record)).toBe(0o600);
    expect((await stat(vm.paths.qmpSocket)).isSocket()).toBe(true);

    const { readFile } = await import('node:fs/promises');
    const record = JSON.parse(await readFile(vm.paths.record, 'utf8')) as Record<string, unknown>;
    expect(record).toMatchObject({ format: 1, role: 'running', pid: vm.pid, spec: { name: 'vm1', memoryMiB: 128, accel: 'tcg' } });
    expect(record['startTimeTicks']).toBeGreaterThan(0);
    expect(Number((await readFile(vm.paths.pidFile, 'utf8')).trim())).toBe(vm.pid);

    await expect(m.qmp('vm1').execute('query-status')).resolves.toEqual({ status: 'running', running: true });
    await expect(m.qmp('vm1').execute('query-uuid')).resolves.toEqual({ UUID: vm.spec.uuid });
    await waitFor(async () => (await m.serialHistory('vm1')).toString().includes(TEST_GUEST_BANNER), 10_000, 'banner in serial.log');

    expect(m.list().map((v) => v.name)).toEqual(['vm1']);
    expect(m.get('vm1').pid).toBe(vm.pid);
    const cpu = await m.cpu('vm1');
    expect(cpu.clockTicks).toBe(100);
    expect(cpu.totalSeconds).toBeGreaterThanOrEqual(0);
    expect(cpu.totalSeconds).toBeLessThan(30);
  });

  it('streams the console live to several subscribers', async () => {
    const m = await open();
    await m.create({ name: 'con', memoryMiB: 128, kernel }, { paused: true });
    await expect(m.qmp('con').execute('query-status')).resolves.toMatchObject({ status: 'prelaunch' });
    const a = m.serial('con');
    const b = m.serial('con');
    await m.qmp('con').execute('cont');
    expect(await collectUntil(a, TEST_GUEST_BANNER, 10_000)).toContain(TEST_GUEST_BANNER);
    expect(await collectUntil(b, TEST_GUEST_BANNER, 10_000)).toContain(TEST_GUEST_BANNER);
    // Guest reset prints again: the stream is live, not a replay.
    await m.qmp('con').execute('system_reset');
    expect(await collectUntil(a, TEST_GUEST_BANNER, 10_000)).toContain(TEST_GUEST_BANNER);
  });

  it('stops gracefully with quit, keeps the record, cleans runtime files; destroy removes the folder', async () => {
    const m = await open();
    const vm = await m.create({ name: 'st', memoryMiB: 128, kernel });
    const sub = m.serial('st');
    const exited = m.whenExited('st');
    const exit = await m.stop('st');
    expect(exit.reason).toBe('stopped');
    await expect(exited).resolves.toEqual(exit);
    expect(await isAlive(vm.pid)).toBe(false);
    expect(m.get('st')).toMatchObject({ status: 'exited', exited: { reason: 'stopped' } });
    const { access, readFile } = await import('node:fs/promises');
    await expect(access(vm.paths.qmpSocket)).rejects.toThrow();
    await expect(access(vm.paths.serialSocket)).rejects.toThrow();
    expect(JSON.parse(await readFile(vm.paths.record, 'utf8'))).toMatchObject({ exited: { reason: 'stopped' } });
    await expect(sub.next()).resolves.toMatchObject({ done: true });
    expect(() => m.qmp('st')).toThrow(FailedPreconditionError);
    await expect(m.stop('st')).resolves.toEqual(exit); // idempotent
    await expect(m.create({ name: 'st', memoryMiB: 128, kernel })).rejects.toBeInstanceOf(AlreadyExistsError);

    await m.destroy('st');
    await expect(access(vm.paths.dir)).rejects.toThrow();
    expect(() => m.get('st')).toThrow(NotFoundError);
    await m.create({ name: 'st', memoryMiB: 128, kernel }); // the name is free again
  });

  it('falls back to SIGKILL when QEMU does not quit in time', async () => {
    const m = await open();
    const vm = await m.create({ name: 'hung', memoryMiB: 128, kernel });
    process.kill(vm.pid, 'SIGSTOP'); // QEMU cannot answer quit
    const exit = await m.stop('hung', { timeoutMs: 300 });
    expect(exit).toMatchObject({ reason: 'killed', signal: 'SIGKILL' });
    expect(await isAlive(vm.pid)).toBe(false);
  });

  it('notices a QEMU that dies on its own', async () => {
    const m = await open();
    const vm = await m.create({ name: 'doomed', memoryMiB: 128, kernel });
    process.kill(vm.pid, 'SIGKILL');
    const exit = await m.whenExited('doomed');
    expect(exit.signal).toBe('SIGKILL');
    expect(m.get('doomed').status).toBe('exited');
  });

  it('records the guest-visible shutdown reason when QEMU quits via QMP behind the manager', async () => {
    const m = await open();
    await m.create({ name: 'q', memoryMiB: 128, kernel });
    await m.qmp('q').execute('quit');
    await expect(m.whenExited('q')).resolves.toMatchObject({ reason: 'host-qmp-quit' });
  });

  it('starts an incoming destination with the same device model plus -incoming defer', async () => {
    const m = await open();
    const src = await m.create({ name: 'src', memoryMiB: 128, kernel });
    const dst = await m.create({ ...src.spec, name: 'dst' }, { incoming: true });
    expect(dst.role).toBe('incoming');
    await expect(m.qmp('dst').execute('query-status')).resolves.toMatchObject({ status: 'inmigrate', running: false });
    const norm = (argv: readonly string[], name: string): string[] => argv.map((a) => a.replaceAll(`/vms/${name}/`, '/vms/X/').replace(/^(src|dst)$/, 'X'));
    expect(dst.argv.slice(-2)).toEqual(['-incoming', 'defer']);
    expect(norm(dst.argv.slice(0, -2), 'dst')).toEqual(norm(src.argv, 'src'));
    expect(dst.spec.uuid).toBe(src.spec.uuid);
    await expect(m.setRole('dst', 'running')).resolves.toMatchObject({ role: 'running' });
  });

  it('backs RAM with a shared file only when asked', async () => {
    const m = await open();
    const vm = await m.create({ name: 'fileram', memoryMiB: 128, kernel, memoryBackend: 'file' });
    expect((await stat(vm.paths.ramFile)).size).toBe(128 * 1024 * 1024);
    await m.stop('fileram');
    await expect(stat(vm.paths.ramFile)).rejects.toThrow();
  });

  it('refuses bad requests with typed errors and leaves nothing behind', async () => {
    const m = await open();
    await expect(m.create({ name: '../x', memoryMiB: 128 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(m.create({ name: 'big', memoryMiB: 1 << 20, kernel })).rejects.toBeInstanceOf(ResourceExhaustedError);
    const dep = (await m.create({ name: 'nok', memoryMiB: 128, kernel: '/nonexistent/vmlinux' }).catch((e: unknown) => e)) as DependencyError;
    expect(dep).toBeInstanceOf(DependencyError);
    expect(dep.dependency).toBe('kernel');
    expect(dep.message).toMatch(/\/nonexistent\/vmlinux/);
    const bad = (await m.create({ name: 'badmachine', memoryMiB: 128, kernel, machine: 'pc-i440fx-1.99' }).catch((e: unknown) => e)) as FailedPreconditionError;
    expect(bad).toBeInstanceOf(FailedPreconditionError);
    expect(bad.reason).toBe('QEMU_START_FAILED');
    expect(bad.message).toMatch(/exited during start-up .*unsupported machine type/s);
    await m.create({ name: 'dup', memoryMiB: 128, kernel });
    await expect(m.create({ name: 'dup', memoryMiB: 128, kernel })).rejects.toBeInstanceOf(AlreadyExistsError);
    expect(m.list().map((v) => v.name)).toEqual(['dup']);
    expect(await qemuPidsMatching(stateDir)).toEqual([m.get('dup').pid]);
    await expect(m.stop('nope')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('an aborted create kills the half-started QEMU and leaves no folder', async () => {
    const m = await open();
    const ac = new AbortController();
    const p = m.create({ name: 'ab', memoryMiB: 128, kernel }, { signal: ac.signal });
    setTimeout(() => ac.abort(), 5);
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    if (err === undefined) {
      // QEMU was faster than the abort: then the VM is simply there.
      expect(m.get('ab').status).toBe('running');
      return;
    }
    expect(err).toBeInstanceOf(CancelledError);
    expect(() => m.get('ab')).toThrow(NotFoundError);
    const { access } = await import('node:fs/promises');
    await expect(access(join(stateDir, 'vms', 'ab'))).rejects.toThrow();
    expect(await qemuPidsMatching(join(stateDir, 'vms', 'ab'))).toEqual([]);
  });
});

describe('VmManager reattach', () => {
  it('a second manager on the same state dir reattaches (no duplicate QEMU) and marks dead VMs', async () => {
    const m1 = await open();
    const live = await m1.create({ name: 'live', memoryMiB: 128, kernel });
    const dead = await m1.create({ name: 'dead', memoryMiB: 128, kernel });
    // Only one manager per state dir.
    await expect(VmManager.open({ stateDir, logger: quiet })).rejects.toThrow(/already open in this process/);
    await m1.close(); // the daemon goes away; QEMU must not
    expect(await isAlive(live.pid)).toBe(true);
    process.kill(dead.pid, 'SIGKILL'); // one VM dies while nobody watches
    await waitFor(async () => !(await isAlive(dead.pid)), 5000, 'dead VM to die');

    const t0 = performance.now();
    const m2 = await open();
    console.log(`[measure] reattach of 2 VMs ${(performance.now() - t0).toFixed(0)} ms`);
    expect(m2.get('live')).toMatchObject({ status: 'running', pid: live.pid, adopted: true, qmpState: 'running' });
    expect(m2.get('dead')).toMatchObject({ status: 'exited', exited: { reason: 'dead at reattach' } });
    const { access } = await import('node:fs/promises');
    await expect(access(dead.paths.qmpSocket)).rejects.toThrow();
    expect(await qemuPidsMatching(stateDir)).toEqual([live.pid]);

    await expect(m2.qmp('live').execute('query-status')).resolves.toMatchObject({ running: true });
    const con = m2.serial('live');
    await m2.qmp('live').execute('system_reset');
    expect(await collectUntil(con, TEST_GUEST_BANNER, 10_000)).toContain(TEST_GUEST_BANNER);
    await expect(m2.create({ name: 'live', memoryMiB: 128, kernel })).rejects.toBeInstanceOf(AlreadyExistsError);

    await m2.destroy('live');
    expect(await isAlive(live.pid)).toBe(false);
  });
});
