/**
 * What the source does while it waits for the destination (issue 15 §4, control-plane overhead):
 * its own QEMU is set up (TLS credentials, capabilities, parameters) while the destination
 * prepares, and after the handover its QEMU is removed while the destination's figures are still
 * being asked for. The order that matters stays: `migrate` only once both sides are ready, nothing
 * of the source's set-up still on its way after a failed start, the source copy removed only once
 * the destination confirmed the handover.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { UnavailableError } from '../../../services/shared/errors.js';
import { Broadcast } from '../../../services/shared/broadcast.js';
import { GuestPerfSample, MigrationPolicy, MigrationState as S } from '../../../services/shared/gen/migd/v1/common.js';
import { ConfirmIncomingResponse } from '../../../services/shared/gen/migd/v1/node.js';
import { createLogger } from '../../../services/shared/log.js';
import { resolveMigrationConfig } from '../../../services/shared/policy/index.js';
import { SourceMigration } from '../../../services/node/migration/source.js';
import type { MigratableVm, NodePeer } from '../../../services/node/migration/types.js';
import { FakeQemu, fakeHost, fakePeer, fakeVm, tempRecords, type Cleanups, type FakePeer } from '../../helpers/migration-fakes.js';

const quiet = createLogger('source-overlap-test', {}, () => undefined, 'error');
const cleanups: Cleanups = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const SUPPORTED = new Set(['events', 'return-path']);

/** A promise the test resolves or rejects when it chooses. */
function gate<T = void>(): { promise: Promise<T>; open: (v: T) => void; fail: (e: Error) => void } {
  let open!: (v: T) => void;
  let fail!: (e: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    open = res;
    fail = rej;
  });
  return { promise, open, fail };
}

async function eventually(check: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function source(o: { peer: NodePeer; localSetup?: Promise<unknown>; tls?: boolean; progressIntervalMs?: number; samples?: Broadcast<GuestPerfSample>; before?: readonly GuestPerfSample[] }): Promise<{ q: FakeQemu; m: SourceMigration; host: ReturnType<typeof fakeHost> }> {
  const q = new FakeQemu({ running: true, migration: 'none', logger: quiet, cleanups });
  await q.connect();
  const host = fakeHost();
  const policy = MigrationPolicy.fromPartial({ tls: o.tls === true });
  const m = new SourceMigration({
    runId: 'run-1',
    nodeId: 'a',
    vm: withBefore(fakeVm(q, o.samples), o.samples, o.before),
    host,
    peer: o.peer,
    destination: { nodeId: 'b', managementAddress: 'b:1', migrationAddress: '127.0.0.1' },
    policy,
    config: resolveMigrationConfig(policy, SUPPORTED),
    supportedCapabilities: SUPPORTED,
    log: quiet,
    options: { progressIntervalMs: o.progressIntervalMs ?? 20, peerDeadlineMs: 2000, handoverTimeoutMs: 2000, ...(o.tls ? { tlsCredsId: 'creds-client', tlsHostname: 'migd-node.b' } : {}) },
    records: tempRecords(cleanups),
    ...(o.localSetup ? { localSetup: o.localSetup } : {}),
  });
  cleanups.push(() => m.detach());
  return { q, m, host };
}

/** The VM, whose feed kept `before` (samples from before the run) for a subscriber that asks for recent ones. */
function withBefore(vm: MigratableVm, samples: Broadcast<GuestPerfSample> | undefined, before: readonly GuestPerfSample[] | undefined): MigratableVm {
  if (!samples || !before) return vm;
  return { ...vm, guestSamples: (signal, recentMs) => samples.subscribe(recentMs ? [...before] : [], signal) };
}

/** fakePeer, with PrepareIncoming answering only once `prepared` resolves. */
function slowPrepare(base: FakePeer, prepared: Promise<void>): FakePeer {
  return {
    ...base,
    prepareIncoming: async (req, opts) => {
      await prepared;
      return base.prepareIncoming(req, opts);
    },
  };
}

describe('the source sets its QEMU up while the destination prepares', () => {
  it('sends capabilities and parameters before PrepareIncoming answered, and migrate only after', async () => {
    const prepared = gate();
    const base = fakePeer({});
    const s = await source({ peer: slowPrepare(base, prepared.promise) });
    const started = s.m.start();
    await eventually(() => s.q.commands.includes('migrate-set-parameters'), 'the source parameters while the destination prepares');
    expect(s.q.commands).toContain('migrate-set-capabilities');
    expect(s.q.commands).not.toContain('migrate');
    prepared.open();
    await started;
    expect(s.q.commands).toContain('migrate');
    expect(s.q.commands.indexOf('migrate')).toBeGreaterThan(s.q.commands.indexOf('migrate-set-parameters'));
    expect(s.q.argsOf('migrate')).toEqual([{ uri: 'tcp:127.0.0.1:1' }]);
  });

  it('names the TLS credentials in the parameters only once their object exists, and migrates once both sides are ready', async () => {
    const creds = gate();
    const s = await source({ peer: fakePeer({}), localSetup: creds.promise, tls: true });
    const started = s.m.start();
    // PrepareIncoming answers at once here; the source still waits for its credentials object.
    await new Promise((r) => setTimeout(r, 100));
    expect(s.q.commands).not.toContain('migrate-set-parameters');
    expect(s.q.commands).not.toContain('migrate');
    creds.open();
    await started;
    expect(s.q.argsOf('migrate-set-parameters')[0]).toMatchObject({ 'tls-creds': 'creds-client', 'tls-hostname': 'migd-node.b' });
    expect(s.q.commands).toContain('migrate');
  });

  it('a failed set-up of the source QEMU fails the start after the destination answered: no migrate, the destination drops its copy', async () => {
    const creds = gate();
    const prepared = gate();
    const base = fakePeer({});
    const s = await source({ peer: slowPrepare(base, prepared.promise), localSetup: creds.promise, tls: true });
    const started = s.m.start();
    let settled = false;
    started.then(
      () => (settled = true),
      () => (settled = true),
    );
    creds.fail(new Error('object-add tls-creds-x509: no such file'));
    // The start waits for the destination's answer too: nothing is left on its way.
    await new Promise((r) => setTimeout(r, 100));
    expect(settled).toBe(false);
    prepared.open();
    await expect(started).rejects.toThrow(/tls-creds-x509/);
    const info = await s.m.finished();
    expect(S[info.state]).toBe('MIGRATION_STATE_FAILED');
    expect(s.q.commands).not.toContain('migrate');
    await eventually(() => base.calls.includes('abort'), 'AbortIncoming to the destination');
    expect(s.host.migrating.get('vm1')).toBeUndefined();
  });

  it('a destination that cannot prepare fails the start once the source set-up settled: no migrate', async () => {
    const base = fakePeer({ prepare: () => new UnavailableError('destination down') });
    const s = await source({ peer: base });
    await expect(s.m.start()).rejects.toThrow(/not answering|destination down/);
    const info = await s.m.finished();
    expect(S[info.state]).toBe('MIGRATION_STATE_FAILED');
    expect(s.q.commands).not.toContain('migrate');
  });
});

describe('after the handover', () => {
  it('removes the source QEMU while the destination\'s figures are still being asked for, and only after the handover was confirmed', async () => {
    const figures = gate();
    const confirm = gate();
    const base = fakePeer({});
    const peer: FakePeer = {
      ...base,
      confirmIncoming: async () => {
        base.calls.push('confirm');
        await confirm.promise;
        return ConfirmIncomingResponse.fromPartial({ alive: true, pid: 7, pagesVerifiedAfter: 64 });
      },
      getVm: async () => {
        await figures.promise;
        throw new UnavailableError('no figures');
      },
    };
    const s = await source({ peer });
    await s.m.start();
    s.q.emit('active');
    s.q.emit('completed');
    await eventually(() => base.calls.includes('confirm'), 'the handover');
    await new Promise((r) => setTimeout(r, 50));
    expect(s.host.destroyed).toEqual([]); // not before the destination confirmed
    confirm.open();
    await eventually(() => s.host.destroyed.includes('vm1'), 'the source QEMU removed while GetVm is still out');
    figures.open();
    const info = await s.m.finished();
    expect(S[info.state]).toBe('MIGRATION_STATE_SUCCEEDED');
    expect(info.stats?.pagesVerifiedAfter).toBe(64);
    expect(s.q.commands).not.toContain('cont');
  });
});

describe('progress at a pass boundary', () => {
  it('reads and sends progress as soon as a pass begins, not one interval later', async () => {
    // An interval far longer than the test: only the pass event can bring the sample.
    const s = await source({ peer: fakePeer({}), progressIntervalMs: 60_000 });
    const passes: number[] = [];
    let pass = 1;
    s.q.onCommand = (name) => (name === 'query-migrate' ? { status: s.q.migration, ram: { 'dirty-sync-count': pass, remaining: 4096, total: 8192, transferred: 4096 } } : undefined);
    await s.m.start();
    const seen = (async () => {
      for await (const u of s.m.watch()) if (u.update?.$case === 'progress') passes.push(u.update.value.pass);
    })();
    s.q.emit('active');
    await eventually(() => passes.length >= 1, 'the first progress sample');
    const queries = s.q.commands.filter((c) => c === 'query-migrate').length;
    pass = 2;
    const at = Date.now();
    s.q.emitPass(2);
    await eventually(() => passes.includes(2), 'the sample of pass 2', 2000);
    expect(Date.now() - at).toBeLessThan(1000);
    expect(s.q.commands.filter((c) => c === 'query-migrate').length).toBe(queries + 1);
    s.q.emit('completed');
    await s.m.finished();
    await seen;
  });
});


describe('the guest during the set-up', () => {
  it('keeps the guest samples of the last seconds before the run and of its set-up (before QEMU streams, before anyone watches) for the first watcher, then sends them live', async () => {
    const samples = new Broadcast<GuestPerfSample>();
    const setUp = gate();
    const sample = (mono: number): GuestPerfSample => GuestPerfSample.fromPartial({ time: new Date(), guestMonoMs: mono, worker: -1, msPerGib: 300 });
    const s = await source({ peer: fakePeer({}), localSetup: setUp.promise, samples, before: [sample(50)] });
    const starting = s.m.start();
    // The set-up waits for the node's local preparation: the guest reports meanwhile.
    await new Promise((r) => setTimeout(r, 20));
    samples.publish(sample(100));
    samples.publish(sample(200));
    setUp.open();
    await starting;
    // QEMU streams: pre-copy begins; the guest reports once more before anyone watches.
    await new Promise((r) => setTimeout(r, 20));
    s.q.emit('active');
    await new Promise((r) => setTimeout(r, 20));
    samples.publish(sample(300));
    await new Promise((r) => setTimeout(r, 20));
    const first: number[] = [];
    const order: string[] = [];
    const watcher = new AbortController();
    const seen = (async () => {
      for await (const u of s.m.watch(watcher.signal)) {
        if (u.update?.$case === 'guest') first.push(u.update.value.guestMonoMs);
        if (u.update?.$case === 'guest') order.push(`guest ${u.update.value.guestMonoMs}`);
        if (u.update?.$case === 'stateChange' && u.update.value.reason === 'current state') order.push(`state ${S[u.update.value.to]} at ${u.update.value.time!.getTime() < Date.now() - 30 ? 'entry' : 'now'}`);
      }
    })();
    await eventually(() => first.length >= 4, 'the samples kept for the first watcher');
    expect(first).toEqual([50, 100, 200, 300]);
    // Those from before pre-copy began ahead of the state, the state with the time it was entered.
    expect(order).toEqual(['guest 50', 'guest 100', 'guest 200', 'state MIGRATION_STATE_PRECOPY at entry', 'guest 300']);
    samples.publish(sample(400));
    await eventually(() => first.length >= 5, 'a live sample');
    expect(first).toEqual([50, 100, 200, 300, 400]);
    // A second watcher (a coordinator re-attaching) gets live samples only: none recorded twice.
    const second: number[] = [];
    const again = (async () => {
      for await (const u of s.m.watch(watcher.signal)) if (u.update?.$case === 'guest') second.push(u.update.value.guestMonoMs);
    })();
    await new Promise((r) => setTimeout(r, 20));
    samples.publish(sample(500));
    await eventually(() => second.length >= 1 && first.length >= 6, 'the next live sample at both watchers');
    expect(second).toEqual([500]);
    expect(first).toEqual([50, 100, 200, 300, 400, 500]);
    watcher.abort();
    await Promise.all([seen, again]);
  });
});
