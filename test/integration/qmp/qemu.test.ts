/**
 * The QMP client against the installed QEMU (10.0.x), with throwaway `-machine none` processes.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../../services/shared/log.js';
import { QmpClient } from '../../../services/node/qmp/client.js';
import { QmpCommandError, QmpConnectError, QmpDisconnectedError } from '../../../services/node/qmp/errors.js';
import { unixSocketTransport } from '../../../services/node/qmp/transport.js';
import { QemuSandbox, isAlive, waitFor } from '../../helpers/qemu-process.js';

const quiet = createLogger('qmp-it', {}, () => undefined, 'error');
const sandbox = new QemuSandbox();
const clients: QmpClient[] = [];

function client(path: string): QmpClient {
  const c = new QmpClient(unixSocketTransport(path), { logger: quiet });
  clients.push(c);
  return c;
}

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.disconnect()));
  await sandbox.cleanup();
});

describe('QmpClient with real QEMU', () => {
  it('connects (retrying until the socket exists), negotiates oob, and queries status and capabilities', async () => {
    const t0 = performance.now();
    const { qmpPath } = await sandbox.startQmpOnly(['-machine', 'none', '-S']);
    const c = client(qmpPath);
    const greeting = await c.connect({ retryIntervalMs: 10, timeoutMs: 10_000 });
    const readyMs = performance.now() - t0;
    expect(greeting.version.qemu.major).toBeGreaterThanOrEqual(10);
    expect(greeting.capabilities).toContain('oob');
    expect(c.oobEnabled).toBe(true);

    await expect(c.execute('query-status')).resolves.toEqual({ status: 'prelaunch', running: false });
    const caps = await c.execute('query-migrate-capabilities');
    const names = caps.map((x) => x.capability);
    expect(names).toEqual(expect.arrayContaining(['postcopy-ram', 'multifd', 'switchover-ack', 'return-path']));
    expect(names).not.toContain('compress'); // gone in QEMU 10
    const params = await c.execute('query-migrate-parameters');
    expect(params['downtime-limit']).toBe(300);

    // Reconnect timing on an already-running QEMU: the QMP connect cost itself.
    await c.disconnect();
    const t1 = performance.now();
    await c.connect();
    const connectMs = performance.now() - t1;
    console.log(`[measure] spawn→QMP ready ${readyMs.toFixed(1)} ms; QMP connect+negotiate ${connectMs.toFixed(1)} ms`);
    await expect(c.execute('query-status')).resolves.toMatchObject({ status: 'prelaunch' });
  });

  it('maps error replies to QmpCommandError, in band and out of band', async () => {
    const { qmpPath } = await sandbox.startQmpOnly();
    const c = client(qmpPath);
    await c.connect({ retryIntervalMs: 10, timeoutMs: 10_000 });
    const e1 = (await c.execute('no-such-command').catch((e: unknown) => e)) as QmpCommandError;
    expect(e1).toBeInstanceOf(QmpCommandError);
    expect(e1.errorClass).toBe('CommandNotFound');
    expect(e1.code).toBe('UNIMPLEMENTED');
    const e2 = (await c.execute('migrate-pause', undefined, { oob: true }).catch((e: unknown) => e)) as QmpCommandError;
    expect(e2).toBeInstanceOf(QmpCommandError);
    expect(e2.oob).toBe(true);
    expect(e2.errorClass).toBe('GenericError');
    expect(e2.desc).toMatch(/postcopy/);
    const e3 = (await c.execute('query-status', undefined, { oob: true }).catch((e: unknown) => e)) as QmpCommandError;
    expect(e3.desc).toMatch(/does not support OOB/);
    const e4 = (await c
      .execute('migrate-set-capabilities', { capabilities: [{ capability: 'compress', state: true }] })
      .catch((e: unknown) => e)) as QmpCommandError;
    expect(e4).toBeInstanceOf(QmpCommandError);
    expect(e4.arguments).toEqual({ capabilities: [{ capability: 'compress', state: true }] });
    // The session survives command errors.
    await expect(c.execute('query-status')).resolves.toMatchObject({ running: true });
  });

  it('delivers STOP and RESUME to every subscriber', async () => {
    const { qmpPath } = await sandbox.startQmpOnly();
    const c = client(qmpPath);
    await c.connect({ retryIntervalMs: 10, timeoutMs: 10_000 });
    const a = c.events({ names: ['STOP', 'RESUME'] });
    const b = c.events({ names: ['RESUME'] });
    await c.execute('stop');
    await c.execute('cont');
    expect((await a.next()).value?.event).toBe('STOP');
    expect((await a.next()).value?.event).toBe('RESUME');
    const r = (await b.next()).value!;
    expect(r.event).toBe('RESUME');
    expect(Math.abs(r.timestampUs / 1000 - Date.now())).toBeLessThan(60_000);
  });

  it('rejects the pending waiter with QmpDisconnectedError when QEMU is killed mid-command', async () => {
    const { qmpPath, pid } = await sandbox.startQmpOnly();
    const c = client(qmpPath);
    await c.connect({ retryIntervalMs: 10, timeoutMs: 10_000 });
    const sub = c.events();
    // Freeze QEMU so the command is certainly still pending when it dies.
    process.kill(pid, 'SIGSTOP');
    const pending = c.execute('query-status');
    const more = c.execute('query-migrate');
    await new Promise((r) => setTimeout(r, 50));
    process.kill(pid, 'SIGKILL');
    await expect(pending).rejects.toBeInstanceOf(QmpDisconnectedError);
    await expect(more).rejects.toBeInstanceOf(QmpDisconnectedError);
    await expect(sub.next()).rejects.toBeInstanceOf(QmpDisconnectedError);
    const end = await c.whenDisconnected();
    expect(end.expected).toBe(false);
    expect(c.state).toBe('idle');
    await waitFor(async () => !(await isAlive(pid)), 5000, 'QEMU to die');
    // The socket file is left behind by a killed QEMU: reconnect fails fast and typed.
    await expect(c.connect({ timeoutMs: 500 })).rejects.toBeInstanceOf(QmpConnectError);
  });

  it('reconnects to the same socket after a disconnect; a second client waits for the first', async () => {
    const { qmpPath } = await sandbox.startQmpOnly();
    const first = client(qmpPath);
    await first.connect({ retryIntervalMs: 10, timeoutMs: 10_000 });
    // QEMU serves one QMP client per socket: a second one gets no greeting until the first leaves.
    const second = client(qmpPath);
    await expect(second.connect({ timeoutMs: 300 })).rejects.toThrow(/another QMP client/);
    await first.disconnect();
    await second.connect({ timeoutMs: 5000 });
    await expect(second.execute('query-status')).resolves.toMatchObject({ running: true });
    await second.disconnect();
    await first.connect({ timeoutMs: 5000 });
    await expect(first.execute('query-status')).resolves.toMatchObject({ running: true });
  });

  it('sees SHUTDOWN then an unexpected end of session on quit', async () => {
    const { qmpPath, pid } = await sandbox.startQmpOnly();
    const c = client(qmpPath);
    await c.connect({ retryIntervalMs: 10, timeoutMs: 10_000 });
    const sub = c.events({ names: ['SHUTDOWN'] });
    await c.execute('quit');
    const ev = (await sub.next()).value!;
    expect(ev.data).toMatchObject({ guest: false, reason: 'host-qmp-quit' });
    const end = await c.whenDisconnected();
    expect(end.expected).toBe(false);
    await waitFor(async () => !(await isAlive(pid)), 5000, 'QEMU to exit');
  });
});
