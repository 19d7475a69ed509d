/**
 * A real node-daemon crash: a child Node process opens a VmManager and creates a VM, then is
 * SIGKILLed. QEMU (spawned detached) must survive, and a new manager must reattach to it — same
 * pid, working QMP and console, no second QEMU — taking over the dead daemon's lock.
 */
import type { ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FailedPreconditionError } from '../../../services/shared/errors.js';
import { createLogger } from '../../../services/shared/log.js';
import { VmManager } from '../../../services/node/vm/manager.js';
import { startChild, transpileForChild } from '../../helpers/qemu-child.js';
import { TEST_GUEST_BANNER, writeTestGuest } from '../../helpers/qemu-guest.js';
import { QemuSandbox, isAlive, qemuPidsMatching, waitFor } from '../../helpers/qemu-process.js';

const quiet = createLogger('vm-it', {}, () => undefined, 'error');
const sandbox = new QemuSandbox();
const children: ChildProcess[] = [];
const managers: VmManager[] = [];

afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await Promise.all(managers.splice(0).map((m) => m.close()));
  await sandbox.cleanup();
});

describe('node daemon restart', () => {
  it('reattaches to QEMU after the daemon process is SIGKILLed', async () => {
    const stateDir = await sandbox.tempDir('migd-vm-');
    const kernel = await writeTestGuest(stateDir);
    const build = await sandbox.tempDir('migd-child-');
    const script = await transpileForChild('test/helpers/qemu-child-manager.ts', build);

    const { child, first } = await startChild(script, [stateDir, 'survivor', kernel]);
    children.push(child);
    const { pid, daemonPid } = first as { pid: number; daemonPid: number };
    expect(await isAlive(pid)).toBe(true);

    // While the daemon lives, nobody else may open its state dir.
    const err = await VmManager.open({ stateDir, logger: quiet }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FailedPreconditionError);
    expect((err as Error).message).toContain(`pid ${daemonPid}`);

    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await gone;
    await new Promise((r) => setTimeout(r, 200));
    expect(await isAlive(pid)).toBe(true); // QEMU outlived its daemon

    const t0 = performance.now();
    const m = await VmManager.open({ stateDir, logger: quiet });
    managers.push(m);
    const reattachMs = performance.now() - t0;
    console.log(`[measure] reattach after daemon SIGKILL ${reattachMs.toFixed(0)} ms`);
    expect(m.get('survivor')).toMatchObject({ status: 'running', pid, adopted: true, qmpState: 'running' });
    expect(JSON.parse(await readFile(join(stateDir, 'manager.lock'), 'utf8'))).toMatchObject({ pid: process.pid });
    expect(await qemuPidsMatching(stateDir)).toEqual([pid]);

    await expect(m.qmp('survivor').execute('query-status')).resolves.toMatchObject({ status: 'running' });
    const con = m.serial('survivor');
    await m.qmp('survivor').execute('system_reset');
    let text = '';
    for await (const chunk of con) {
      text += Buffer.from(chunk).toString('latin1');
      if (text.includes(TEST_GUEST_BANNER)) break;
    }
    expect(text).toContain(TEST_GUEST_BANNER);
    // History from before the crash is in serial.log.
    expect((await m.serialHistory('survivor')).toString().split(TEST_GUEST_BANNER).length).toBeGreaterThanOrEqual(3);

    await m.destroy('survivor');
    await waitFor(async () => !(await isAlive(pid)), 5000, 'QEMU to stop');
  });
});
