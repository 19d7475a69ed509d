import { afterEach, describe, expect, it } from 'vitest';
import { CancelledError, DeadlineExceededError } from '../../../services/shared/errors.js';
import { createLogger } from '../../../services/shared/log.js';
import { QmpClient } from '../../../services/node/qmp/client.js';
import {
  QmpCommandError,
  QmpConnectError,
  QmpDisconnectedError,
  QmpError,
  QmpEventOverflowError,
  QmpProtocolError,
  QmpStateError,
  QmpTimeoutError,
} from '../../../services/node/qmp/errors.js';
import type { QmpEvent } from '../../../services/node/qmp/protocol.js';
import { FakeTransport, GREETING_NO_OOB, GREETING_OOB, type FakeStream } from '../../helpers/qemu-fake-qmp.js';

const quiet = createLogger('qmp-test', {}, () => undefined, 'error');
const clients: QmpClient[] = [];

function newClient(opts: ConstructorParameters<typeof QmpClient>[1] = {}): { client: QmpClient; transport: FakeTransport } {
  const transport = new FakeTransport();
  const client = new QmpClient(transport, { logger: quiet, ...opts });
  clients.push(client);
  return { client, transport };
}

async function connected(
  opts: ConstructorParameters<typeof QmpClient>[1] = {},
  greeting = GREETING_OOB,
): Promise<{ client: QmpClient; transport: FakeTransport; s: FakeStream }> {
  const { client, transport } = newClient(opts);
  const p = client.connect();
  const s = await transport.nextStream();
  await s.handshake(greeting);
  await p;
  return { client, transport, s };
}

const ev = (event: string, data?: Record<string, unknown>): Record<string, unknown> => ({
  event,
  ...(data ? { data } : {}),
  timestamp: { seconds: 1700000000, microseconds: 5 },
});

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.disconnect()));
});

describe('QmpClient connect', () => {
  it('walks idle → connecting → running and enables oob when the greeting offers it', async () => {
    const { client, transport } = newClient();
    expect(client.state).toBe('idle');
    const p = client.connect();
    expect(client.state).toBe('connecting');
    const s = await transport.nextStream();
    const neg = await s.handshake(GREETING_OOB);
    const greeting = await p;
    expect(neg).toEqual({ execute: 'qmp_capabilities', arguments: { enable: ['oob'] }, id: expect.any(Number) });
    expect(client.state).toBe('running');
    expect(client.oobEnabled).toBe(true);
    expect(greeting.version.qemu).toEqual({ major: 10, minor: 0, micro: 2 });
    expect(greeting.capabilities).toEqual(['oob']);
  });

  it('negotiates without arguments when oob is not offered, and then refuses exec-oob clearly', async () => {
    const { client, s } = await connected({}, GREETING_NO_OOB);
    expect(s.sent[0]).toEqual({ execute: 'qmp_capabilities', id: expect.any(Number) });
    expect(client.oobEnabled).toBe(false);
    const err = await client.execute('migrate-pause', undefined, { oob: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpStateError);
    expect((err as QmpStateError).reason).toBe('QMP_OOB_UNAVAILABLE');
    expect((err as Error).message).toMatch(/exec-oob needs the 'oob' capability/);
    expect(s.sent).toHaveLength(1); // nothing went out
  });

  it('rejects a malformed greeting with QmpProtocolError and returns to idle', async () => {
    const { client, transport } = newClient();
    const p = client.connect();
    const s = await transport.nextStream();
    s.push('{"QMP": {"capabilities": []}}\n');
    await expect(p).rejects.toBeInstanceOf(QmpProtocolError);
    expect(client.state).toBe('idle');
    expect(s.closed).toBe(true);
  });

  it('rejects a non-greeting first message', async () => {
    const { client, transport } = newClient();
    const p = client.connect();
    (await transport.nextStream()).send({ return: {} });
    await expect(p).rejects.toThrow(/expected a QMP greeting/);
  });

  it('skips an event that comes before the greeting, and connects', async () => {
    const { client, transport } = newClient();
    const p = client.connect();
    const s = await transport.nextStream();
    s.send(ev('SHUTDOWN', { guest: false }));
    await s.handshake(GREETING_OOB);
    await p;
    expect(client.state).toBe('running');
  });

  it('fails connect with QmpConnectError when no greeting arrives in time', async () => {
    const { client, transport } = newClient();
    const p = client.connect({ timeoutMs: 30 });
    const s = await transport.nextStream();
    const err = await p.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpConnectError);
    expect((err as Error).message).toMatch(/another QMP client/);
    expect((err as Error).cause).toBeInstanceOf(QmpTimeoutError);
    expect(client.state).toBe('idle');
    expect(s.closed).toBe(true);
  });

  it('retries a socket that does not exist yet (QEMU still starting)', async () => {
    const { client, transport } = newClient();
    transport.failNextOpen = ['ENOENT', 'ECONNREFUSED'];
    const p = client.connect({ retryIntervalMs: 5, timeoutMs: 1000 });
    const s = await transport.nextStream();
    await s.handshake();
    await p;
    expect(client.state).toBe('running');
  });

  it('does not retry without retryIntervalMs', async () => {
    const { client, transport } = newClient();
    transport.failNextOpen = ['ENOENT'];
    await expect(client.connect()).rejects.toBeInstanceOf(QmpConnectError);
    expect(transport.streams).toHaveLength(0);
  });

  it('connect honours an AbortSignal', async () => {
    const { client, transport } = newClient();
    const ac = new AbortController();
    const p = client.connect({ signal: ac.signal });
    await transport.nextStream();
    ac.abort();
    await expect(p).rejects.toBeInstanceOf(CancelledError);
    expect(client.state).toBe('idle');
  });

  it('refuses connect while not idle', async () => {
    const { client } = await connected();
    await expect(client.connect()).rejects.toBeInstanceOf(QmpStateError);
  });
});

describe('QmpClient execute', () => {
  it('routes replies by id, out of order', async () => {
    const { client, s } = await connected();
    const a = client.execute('query-status');
    const b = client.execute('query-name');
    const ca = await s.nextCommand();
    const cb = await s.nextCommand();
    expect(ca.id).not.toBe(cb.id);
    s.reply(cb, { name: 'vm1' });
    s.reply(ca, { status: 'running', running: true });
    await expect(a).resolves.toEqual({ status: 'running', running: true });
    await expect(b).resolves.toEqual({ name: 'vm1' });
  });

  it('sends arguments and keeps command, arguments, class and desc on QmpCommandError', async () => {
    const { client, s } = await connected();
    const p = client.execute('migrate-set-parameters', { 'downtime-limit': 500 });
    const cmd = await s.nextCommand();
    expect(cmd).toEqual({ execute: 'migrate-set-parameters', arguments: { 'downtime-limit': 500 }, id: cmd.id });
    s.send({ id: cmd.id, error: { class: 'GenericError', desc: 'Parameter out of range' } });
    const err = (await p.catch((e: unknown) => e)) as QmpCommandError;
    expect(err).toBeInstanceOf(QmpCommandError);
    expect(err).toBeInstanceOf(QmpError);
    expect(err.command).toBe('migrate-set-parameters');
    expect(err.arguments).toEqual({ 'downtime-limit': 500 });
    expect(err.errorClass).toBe('GenericError');
    expect(err.desc).toBe('Parameter out of range');
    expect(err.code).toBe('FAILED_PRECONDITION');
  });

  it('maps CommandNotFound to UNIMPLEMENTED', async () => {
    const { client, s } = await connected();
    const p = client.execute('no-such-thing');
    const cmd = await s.nextCommand();
    s.send({ id: cmd.id, error: { class: 'CommandNotFound', desc: 'The command no-such-thing has not been found' } });
    await expect(p).rejects.toMatchObject({ code: 'UNIMPLEMENTED', errorClass: 'CommandNotFound' });
  });

  it('reassembles a reply split across chunks, also inside a multi-byte character', async () => {
    const { client, s } = await connected();
    const p = client.execute('query-name');
    const cmd = await s.nextCommand();
    const bytes = Buffer.from(JSON.stringify({ return: { name: 'vm-é€' }, id: cmd.id }) + '\r\n', 'utf8');
    const euro = bytes.indexOf(0xe2); // first byte of '€'
    s.push(bytes.subarray(0, 5));
    s.push(bytes.subarray(5, euro + 1));
    s.push(bytes.subarray(euro + 1, bytes.length - 1));
    await new Promise((r) => setTimeout(r, 5));
    s.push(bytes.subarray(bytes.length - 1));
    await expect(p).resolves.toEqual({ name: 'vm-é€' });
  });

  it('handles several messages in one chunk, events between a command and its reply, in order', async () => {
    const { client, s } = await connected();
    const sub = client.events();
    const p = client.execute('stop');
    const cmd = await s.nextCommand();
    s.push(
      JSON.stringify(ev('STOP')) + '\r\n' + JSON.stringify({ return: {}, id: cmd.id }) + '\r\n' + JSON.stringify(ev('RESUME')) + '\r\n',
    );
    await expect(p).resolves.toEqual({});
    // The STOP event was queued before the reply resolved the command.
    expect(sub.buffered).toBeGreaterThanOrEqual(1);
    const first = await sub.next();
    const second = await sub.next();
    expect([first.value?.event, second.value?.event]).toEqual(['STOP', 'RESUME']);
    expect(first.value?.timestampUs).toBe(1700000000 * 1_000_000 + 5);
    expect(first.value?.data).toBeUndefined();
  });

  it('sends exec-oob with an id when oob was negotiated', async () => {
    const { client, s } = await connected();
    const inband = client.execute('query-migrate');
    const oob = client.execute('migrate-pause', undefined, { oob: true });
    await s.nextCommand();
    const o = await s.nextCommand();
    expect(o['exec-oob']).toBe('migrate-pause');
    expect(o.execute).toBeUndefined();
    expect(typeof o.id).toBe('number');
    s.reply(o); // OOB reply overtakes the in-band one
    await expect(oob).resolves.toEqual({});
    s.reply(s.sent[1]!, { status: 'postcopy-paused' });
    await expect(inband).resolves.toEqual({ status: 'postcopy-paused' });
  });

  it('rejects with QmpTimeoutError, drops the late reply, and keeps working', async () => {
    const { client, s } = await connected();
    const p = client.execute('query-status', undefined, { timeoutMs: 20 });
    const late = await s.nextCommand();
    const err = (await p.catch((e: unknown) => e)) as QmpTimeoutError;
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect(err.code).toBe('DEADLINE_EXCEEDED');
    expect(err.command).toBe('query-status');
    s.reply(late, { status: 'running', running: true }); // no waiter: dropped
    const q = client.execute('query-name');
    s.reply(await s.nextCommand(), { name: 'x' });
    await expect(q).resolves.toEqual({ name: 'x' });
    expect(client.state).toBe('running');
  });

  it('applies the client default timeout', async () => {
    const { client, s } = await connected({ commandTimeoutMs: 15 });
    const p = client.execute('query-status');
    await s.nextCommand();
    await expect(p).rejects.toBeInstanceOf(QmpTimeoutError);
  });

  it('rejects with CancelledError on abort and leaves the session usable', async () => {
    const { client, s } = await connected();
    const ac = new AbortController();
    const p = client.execute('query-status', undefined, { signal: ac.signal });
    const c1 = await s.nextCommand();
    ac.abort();
    await expect(p).rejects.toBeInstanceOf(CancelledError);
    s.reply(c1, {});
    const q = client.execute('query-name');
    s.reply(await s.nextCommand(), { name: 'y' });
    await expect(q).resolves.toEqual({ name: 'y' });
  });

  it('keeps a MigdError abort reason (a parent deadline) as the rejection', async () => {
    const { client } = await connected();
    const reason = new DeadlineExceededError('parent deadline');
    await expect(client.execute('query-status', undefined, { signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
  });

  it('rejects every pending waiter with QmpDisconnectedError when QEMU goes away mid-command', async () => {
    const { client, s } = await connected();
    const sub = client.events();
    const waiters = [client.execute('query-status'), client.execute('query-migrate'), client.execute('cont')];
    await s.nextCommand();
    const ended = client.whenDisconnected();
    s.end();
    for (const w of waiters) await expect(w).rejects.toBeInstanceOf(QmpDisconnectedError);
    await expect(sub.next()).rejects.toBeInstanceOf(QmpDisconnectedError);
    const end = await ended;
    expect(end.expected).toBe(false);
    expect(end.error).toBeInstanceOf(QmpDisconnectedError);
    expect(client.state).toBe('idle');
    await expect(client.execute('query-status')).rejects.toMatchObject({ reason: 'QMP_NOT_CONNECTED' });
  });

  it('treats a stream error (ECONNRESET) like a disconnect, keeping the cause', async () => {
    const { client, s } = await connected();
    const p = client.execute('query-status');
    await s.nextCommand();
    s.fail(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }));
    const err = (await p.catch((e: unknown) => e)) as QmpDisconnectedError;
    expect(err).toBeInstanceOf(QmpDisconnectedError);
    expect((err.cause as Error).message).toMatch(/ECONNRESET/);
  });

  it('ends the session on malformed JSON: waiters get QmpDisconnectedError caused by QmpProtocolError', async () => {
    const { client, s } = await connected();
    const p = client.execute('query-status');
    await s.nextCommand();
    const ended = client.whenDisconnected();
    s.push('{"return": {}, "id": \n');
    const err = (await p.catch((e: unknown) => e)) as QmpDisconnectedError;
    expect(err).toBeInstanceOf(QmpDisconnectedError);
    expect(err.cause).toBeInstanceOf(QmpProtocolError);
    expect((await ended).error).toBeInstanceOf(QmpProtocolError);
    expect(s.closed).toBe(true);
  });

  it('ends the session on an error reply without id (QEMU could not parse a request)', async () => {
    const { client, s } = await connected();
    const p = client.execute('query-status');
    await s.nextCommand();
    s.send({ error: { class: 'GenericError', desc: "JSON parse error, invalid keyword 'bogus'" } });
    await expect(p).rejects.toMatchObject({ cause: expect.any(QmpProtocolError) });
    expect(client.state).toBe('idle');
  });

  it('ends the session on a line over the size limit', async () => {
    const { client, s } = await connected({ maxLineBytes: 256 });
    const p = client.execute('query-status');
    await s.nextCommand();
    s.push('{"return": "' + 'x'.repeat(300));
    await expect(p).rejects.toMatchObject({ cause: expect.any(QmpProtocolError) });
  });

  it('disconnect() rejects pending waiters and ends subscriptions normally', async () => {
    const { client, s } = await connected();
    const sub = client.events();
    const p = client.execute('query-status');
    await s.nextCommand();
    await client.disconnect();
    await expect(p).rejects.toBeInstanceOf(QmpDisconnectedError);
    await expect(sub.next()).resolves.toEqual({ value: undefined, done: true });
    expect((await client.whenDisconnected()).expected).toBe(true);
    expect(client.state).toBe('idle');
    expect(s.closed).toBe(true);
  });

  it('reconnects to the same endpoint after a disconnect, with a fresh session', async () => {
    const { client, transport, s } = await connected();
    s.end();
    await client.whenDisconnected();
    const p = client.connect();
    const s2 = await transport.nextStream();
    await s2.handshake();
    await p;
    const q = client.execute('query-status');
    const cmd = await s2.nextCommand();
    s2.reply(cmd, { status: 'running', running: true });
    await expect(q).resolves.toMatchObject({ running: true });
    expect(s2).not.toBe(s);
    // Ids keep increasing across sessions, so a stray old reply can never match a new waiter.
    expect(cmd.id as number).toBeGreaterThan(s.sent[0]!.id as number);
  });
});

describe('QmpClient events', () => {
  it('gives each listener its own filtered queue; no consumer steals another’s events', async () => {
    const { client, s } = await connected();
    const all = client.events();
    const mig = client.events({ names: ['MIGRATION'] });
    const stops = client.events({ names: ['STOP'] });
    s.send(ev('STOP'));
    s.send(ev('MIGRATION', { status: 'active' }));
    s.send(ev('RESUME'));
    s.send(ev('MIGRATION', { status: 'completed' }));
    const take = async (it: AsyncIterator<QmpEvent>, n: number): Promise<string[]> => {
      const out: string[] = [];
      for (let i = 0; i < n; i++) {
        const r = await it.next();
        out.push(r.value!.event + (r.value!.data ? `:${String(r.value!.data['status'])}` : ''));
      }
      return out;
    };
    expect(await take(all, 4)).toEqual(['STOP', 'MIGRATION:active', 'RESUME', 'MIGRATION:completed']);
    expect(await take(mig, 2)).toEqual(['MIGRATION:active', 'MIGRATION:completed']);
    expect(await take(stops, 1)).toEqual(['STOP']);
  });

  it('for-await with break unsubscribes', async () => {
    const { client, s } = await connected();
    const sub = client.events({ names: ['STOP'] });
    s.send(ev('STOP'));
    for await (const e of sub) {
      expect(e.event).toBe('STOP');
      break;
    }
    s.send(ev('STOP'));
    await expect(sub.next()).resolves.toEqual({ value: undefined, done: true });
  });

  it('fails a subscriber that falls behind with QmpEventOverflowError after yielding what it holds', async () => {
    const { client, s } = await connected({ eventQueueLimit: 2 });
    const slow = client.events();
    const fast = client.events({ limit: Infinity });
    for (let i = 0; i < 5; i++) s.send(ev('RTC_CHANGE', { offset: i }));
    const q = client.execute('query-status');
    s.reply(await s.nextCommand(), {});
    await q; // all five events have been read by now
    expect((await slow.next()).value?.data).toEqual({ offset: 0 });
    expect((await slow.next()).value?.data).toEqual({ offset: 1 });
    await expect(slow.next()).rejects.toBeInstanceOf(QmpEventOverflowError);
    await expect(slow.next()).resolves.toMatchObject({ done: true });
    expect(fast.buffered).toBe(5);
  });

  it('an aborted subscription throws CancelledError at once', async () => {
    const { client, s } = await connected();
    const ac = new AbortController();
    const sub = client.events({ signal: ac.signal });
    const pending = sub.next();
    ac.abort();
    await expect(pending).rejects.toBeInstanceOf(CancelledError);
    s.send(ev('STOP'));
    await expect(sub.next()).resolves.toMatchObject({ done: true });
  });

  it('a subscription made while idle receives events of the next session', async () => {
    const { client, transport } = newClient();
    const sub = client.events({ names: ['RESUME'] });
    const p = client.connect();
    const s = await transport.nextStream();
    await s.handshake();
    await p;
    s.send(ev('RESUME'));
    await expect(sub.next()).resolves.toMatchObject({ value: { event: 'RESUME' } });
  });
});
