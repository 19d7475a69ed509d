/**
 * The ownership protocol's decisions (issue 16), over a fake QMP transport that plays QEMU and a
 * scripted destination node: the source never sends `cont` without proof that the destination's
 * copy is gone, hands over through retried confirms, and a restarted daemon adopts what QEMU is
 * still doing; the destination resumes its paused copy only at the handover or in post-copy.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { FailedPreconditionError, NotFoundError, UnavailableError } from '../../../services/shared/errors.js';
import { MigrationPolicy, MigrationState, PolicyKind, type GuestPerfSample } from '../../../services/shared/gen/migd/v1/common.js';
import { ConfirmIncomingResponse, MigrationInfo, PrepareIncomingRequest, StartMigrationRequest } from '../../../services/shared/gen/migd/v1/node.js';
import { createLogger } from '../../../services/shared/log.js';
import { Broadcast } from '../../../services/shared/broadcast.js';
import { resolveMigrationConfig } from '../../../services/shared/policy/index.js';
import { IncomingMigration } from '../../../services/node/migration/destination.js';
import { MigrationManager } from '../../../services/node/migration/manager.js';
import { MigrationRecords, type DestinationRecord, type SourceRecord } from '../../../services/node/migration/record.js';
import { SourceMigration } from '../../../services/node/migration/source.js';
import type { NodePeer, VmHost } from '../../../services/node/migration/types.js';
import { FakeQemu as BaseFakeQemu, fakeHost, fakePeer, fakeSpec, fakeVm, tempRecords, type Cleanups } from '../../helpers/migration-fakes.js';

const quiet = createLogger('ownership-test', {}, () => undefined, 'error');
const cleanups: Cleanups = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** The fake QEMU of test/helpers/migration-fakes.ts, cleaned up after each test. */
class FakeQemu extends BaseFakeQemu {
  constructor(o: { running: boolean; migration: string }) {
    super({ ...o, logger: quiet, cleanups });
  }
}
const spec = fakeSpec;
const vmOf = fakeVm;
const records = (): MigrationRecords => tempRecords(cleanups);

function sourceRecord(phase: SourceRecord['phase']): SourceRecord {
  return { format: 1, runId: 'run-1', role: 'source', vmName: 'vm1', phase, peer: { nodeId: 'b', managementAddress: 'b:1', migrationAddress: 'b' }, policy: {}, startedAt: new Date().toISOString(), updatedAt: new Date().toISOString() };
}

function adoptedSource(q: FakeQemu, peer: NodePeer, host: VmHost, recs: MigrationRecords, record: SourceRecord, handoverTimeoutMs = 5000, resolveTimeoutMs = 60_000): SourceMigration {
  const policy = { kind: 0, downtimeLimitMs: 0, maxBandwidthBytesPerSec: 0, autoConverge: undefined, postcopy: undefined, xbzrle: undefined, multifd: undefined, switchoverAck: false, tls: false, completionTimeoutSecPerGib: 0, progressTimeoutSec: 0, timeoutAction: 0, downtimeSteps: [], maxDowntimeMs: 0 };
  const m = new SourceMigration({
    runId: 'run-1',
    nodeId: 'a',
    vm: vmOf(q),
    host,
    peer,
    destination: record.peer,
    policy,
    config: resolveMigrationConfig(policy, new Set(['events'])),
    supportedCapabilities: new Set(['events']),
    log: quiet,
    options: { handoverTimeoutMs, resolveTimeoutMs, progressIntervalMs: 50 },
    records: recs,
    record,
  });
  cleanups.push(() => m.detach());
  cleanups.push(() => m.detach());
  return m;
}

/**
 * Waits until `check` holds. The background work these tests follow (a resume after QEMU answered,
 * a record written, a sweep) ends at a moment no fixed sleep predicts on a loaded machine.
 */
async function eventually(check: () => boolean | Promise<boolean>, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const confirmed = (pages: number): ConfirmIncomingResponse => ConfirmIncomingResponse.fromPartial({ alive: pages > 0, pid: 7, pagesVerifiedAfter: pages });

describe('source ownership after QEMU completed (adopted by a restarted daemon)', () => {
  it('retries the handover while the destination is down, never resumes its own copy, then removes it', async () => {
    const q = new FakeQemu({ running: false, migration: 'completed' });
    await q.connect();
    const host = fakeHost();
    const recs = records();
    const peer = fakePeer({ confirm: (n) => (n < 3 ? new UnavailableError('destination daemon down') : confirmed(512)) });
    const m = adoptedSource(q, peer, host, recs, sourceRecord('streaming'));
    await m.adopt();
    const info = await m.finished();
    expect(info.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(info.stats?.pagesVerifiedAfter).toBe(512);
    expect(peer.calls).toEqual(['confirm', 'confirm', 'confirm']);
    expect(q.commands).not.toContain('cont');
    expect(host.destroyed).toEqual(['vm1']);
    const [rec] = await recs.list();
    expect(rec).toMatchObject({ runId: 'run-1', role: 'source', phase: 'finished' });
    expect(MigrationInfo.fromJSON((rec as SourceRecord).outcome).state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
  });

  it('resumes its copy only after the destination proved its copy gone', async () => {
    const q = new FakeQemu({ running: false, migration: 'completed' });
    await q.connect();
    const host = fakeHost();
    const peer = fakePeer({
      confirm: () => new FailedPreconditionError('incoming QEMU gone', { reason: 'NOT_HANDED_OVER' }),
      abort: (n) => (n < 2 ? new UnavailableError('down') : undefined),
    });
    const m = adoptedSource(q, peer, host, records(), sourceRecord('completed'));
    await m.adopt();
    const info = await m.finished();
    expect(info.state).toBe(MigrationState.MIGRATION_STATE_FAILED);
    expect(peer.calls).toEqual(['confirm', 'abort', 'abort']);
    expect(q.commands.at(-1)).toBe('cont');
    expect(host.destroyed).toEqual([]);
  });

  it('keeps its copy paused when the destination never answers (ownership unresolved)', async () => {
    const q = new FakeQemu({ running: false, migration: 'completed' });
    await q.connect();
    const host = fakeHost();
    const peer = fakePeer({});
    const m = adoptedSource(q, peer, host, records(), sourceRecord('completed'), 800);
    await m.adopt();
    const info = await m.finished();
    expect(info.state).toBe(MigrationState.MIGRATION_STATE_FAILED);
    expect(info.error?.reason).toBe('OWNERSHIP_UNRESOLVED');
    expect(peer.calls.length).toBeGreaterThan(1);
    expect(q.commands).not.toContain('cont');
    expect(host.destroyed).toEqual([]);
  });

  it('settles an unresolved handover in the background once the destination answers, and says so', async () => {
    const q = new FakeQemu({ running: false, migration: 'completed' });
    await q.connect();
    const host = fakeHost();
    let destinationBack = false;
    const peer = fakePeer({ confirm: () => (destinationBack ? confirmed(12) : new UnavailableError('down')) });
    const recs = records();
    const m = adoptedSource(q, peer, host, recs, sourceRecord('completed'), 600);
    await m.adopt();
    const info = await m.finished();
    expect(info.error?.reason).toBe('OWNERSHIP_UNRESOLVED');
    expect((await recs.list())[0]).toMatchObject({ phase: 'completed' }); // a restart would try again
    expect(host.destroyed).toEqual([]);
    destinationBack = true;
    await eventually(() => !m.settling, 'the ownership settled');
    expect(host.destroyed).toEqual(['vm1']); // handed over late: the source copy goes
    expect(q.commands).not.toContain('cont');
    expect(m.info().error?.message).toMatch(/resolved \d+ s after the run ended: the guest runs on the destination/);
    await eventually(async () => (await recs.list())[0]?.phase === 'finished', 'the record of the settled run');
  });

  it('an unresolved handover resumes the source copy only once the destination proved its copy gone', async () => {
    const q = new FakeQemu({ running: false, migration: 'completed' });
    await q.connect();
    const host = fakeHost();
    let destinationBack = false;
    const peer = fakePeer({
      confirm: () => (destinationBack ? new FailedPreconditionError('did not complete here', { reason: 'NOT_HANDED_OVER' }) : new UnavailableError('down')),
      abort: () => (destinationBack ? undefined : new UnavailableError('down')),
    });
    const m = adoptedSource(q, peer, host, records(), sourceRecord('completed'), 600);
    await m.adopt();
    expect((await m.finished()).error?.reason).toBe('OWNERSHIP_UNRESOLVED');
    expect(q.commands).not.toContain('cont');
    destinationBack = true;
    // Settled once QEMU answered the resume (seeing `cont` sent is not yet that).
    await eventually(() => !m.settling, 'the ownership settled');
    expect(q.commands).toContain('cont');
    expect(peer.calls.filter((c) => c === 'abort').length).toBeGreaterThan(0);
    expect(host.destroyed).toEqual([]);
    expect(m.info().error?.message).toMatch(/the destination copy is gone; the guest was resumed on the source/);
  });

  it('a handed-over guest that verifies nothing fails the run, and stays on the destination', async () => {
    const q = new FakeQemu({ running: false, migration: 'completed' });
    await q.connect();
    const host = fakeHost();
    const m = adoptedSource(q, fakePeer({ confirm: () => confirmed(0) }), host, records(), sourceRecord('completed'));
    await m.adopt();
    const info = await m.finished();
    expect(info.error?.reason).toBe('GUEST_NOT_VERIFIED');
    expect(q.commands).not.toContain('cont');
    expect(host.destroyed).toEqual(['vm1']);
  });
});

describe('source ownership on failures and restarts', () => {
  it('a daemon that died before QEMU started migrating fails the run; the running guest stays and the destination is told', async () => {
    const q = new FakeQemu({ running: true, migration: 'none' });
    await q.connect();
    const host = fakeHost();
    const peer = fakePeer({});
    const m = adoptedSource(q, peer, host, records(), sourceRecord('starting'), 500);
    await m.adopt();
    const info = await m.finished();
    expect(info.state).toBe(MigrationState.MIGRATION_STATE_FAILED);
    expect(info.error?.reason).toBe('SOURCE_RESTARTED');
    expect(q.commands).not.toContain('cont');
    expect(peer.calls).toContain('abort');
    expect(host.migrating.get('vm1')).toBeUndefined();
  });

  it('a failure after post-copy started never resumes the source', async () => {
    const q = new FakeQemu({ running: false, migration: 'failed' });
    await q.connect();
    const peer = fakePeer({ abort: () => undefined });
    const m = adoptedSource(q, peer, fakeHost(), records(), sourceRecord('postcopy'));
    await m.adopt();
    const info = await m.finished();
    expect(info.state).toBe(MigrationState.MIGRATION_STATE_FAILED);
    expect(q.commands).not.toContain('cont');
    expect(peer.calls).not.toContain('abort');
  });

  it('a pre-copy failure with the source paused (switch-over) resumes it only after the abort succeeded', async () => {
    const q = new FakeQemu({ running: false, migration: 'failed' });
    await q.connect();
    const peer = fakePeer({ abort: (n) => (n < 3 ? new UnavailableError('down') : undefined) });
    const m = adoptedSource(q, peer, fakeHost(), records(), sourceRecord('streaming'));
    await m.adopt();
    await m.finished();
    expect(peer.calls).toEqual(['abort', 'abort', 'abort']);
    expect(q.commands.filter((c) => c === 'cont')).toHaveLength(1);
    expect(q.commands.indexOf('cont')).toBeGreaterThan(q.commands.lastIndexOf('query-status'));
  });

  it('says the guest is lost when the source QEMU died, not that it keeps running', async () => {
    const q = new FakeQemu({ running: true, migration: 'failed' });
    await q.connect();
    const m = adoptedSource(q, fakePeer({ abort: () => undefined }), fakeHost({ qemuGone: true }), records(), sourceRecord('streaming'));
    await m.adopt();
    const info = await m.finished();
    expect(info.error?.message).toContain('the source QEMU is gone');
    expect(info.error?.message).not.toContain('keeps running');
    expect(q.commands).not.toContain('cont');
  });

  it('follows a migration still streaming after a restart, and hands over when QEMU completes', async () => {
    const q = new FakeQemu({ running: true, migration: 'active' });
    await q.connect();
    const host = fakeHost();
    const m = adoptedSource(q, fakePeer({ confirm: () => confirmed(100) }), host, records(), sourceRecord('streaming'));
    await m.adopt();
    expect(m.currentState).toBe(MigrationState.MIGRATION_STATE_PRECOPY);
    expect(host.migrating.get('vm1')).toBe('run-1');
    q.running = false;
    q.emit('completed');
    const info = await m.finished();
    expect(info.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(host.destroyed).toEqual(['vm1']);
  });
});

function incoming(q: FakeQemu, phase: DestinationRecord['phase'], samples: Broadcast<GuestPerfSample>): { m: IncomingMigration; host: ReturnType<typeof fakeHost>; recs: MigrationRecords } {
  const host = fakeHost();
  const recs = records();
  const record: DestinationRecord = { format: 1, runId: 'run-1', role: 'destination', vmName: 'vm1', phase, policy: {}, startedAt: new Date().toISOString(), updatedAt: new Date().toISOString() };
  const m = new IncomingMigration({ runId: 'run-1', vm: vmOf(q, samples), host, config: resolveMigrationConfig(undefined, new Set(['events'])), supportedCapabilities: new Set(['events']), migrationAddress: '127.0.0.1', log: quiet, record, records: recs });
  cleanups.push(() => m.detach());
  return { m, host, recs };
}

const sample = (worker: number, pagesVerified: number): GuestPerfSample => ({ worker, pagesVerified, integrityErrors: 0, msPerGib: 600, guestMonoMs: 0, heartbeatGapMs: 0, pass: 0, vmName: 'vm1' });

describe('destination ownership', () => {
  it('a completed incoming copy stays paused until the handover, then verifies after arrival; confirm is idempotent', async () => {
    const q = new FakeQemu({ running: false, migration: 'completed' });
    await q.connect();
    const samples = new Broadcast<GuestPerfSample>();
    const { m, host, recs } = incoming(q, 'incoming', samples);
    await m.adopt();
    expect(q.commands).not.toContain('cont');
    expect(m.guestRunsHere).toBe(false);
    const first = m.confirm(5000);
    const again = m.confirm(5000);
    await eventually(() => q.commands.includes('cont'), 'the resume at the handover');
    expect(host.adopted).toEqual(['vm1']);
    samples.publish(sample(0, 4000));
    samples.publish(sample(0, 4300));
    const res = await first;
    expect(await again).toBe(res);
    expect(res).toMatchObject({ alive: true, pagesVerifiedAfter: 300 });
    expect((await recs.list())[0]).toMatchObject({ phase: 'confirmed' });
    await expect(m.abort()).rejects.toMatchObject({ reason: 'GUEST_RUNS_HERE' });
  });

  it('hands over at once when QEMU completes while a status poll is out (the older answer of the poll does not win)', async () => {
    const q = new FakeQemu({ running: false, migration: 'active' });
    await q.connect();
    const samples = new Broadcast<GuestPerfSample>();
    const { m } = incoming(q, 'incoming', samples);
    await m.adopt();
    const before = q.commands.length;
    // QEMU builds the poll's answer ("active"), then emits `completed`, then sends the answer:
    // the order seen in a lab run, where the stale answer held the handover for another second.
    q.onCommand = (name) => {
      if (name !== 'query-migrate' || q.migration !== 'active') return undefined;
      q.emit('completed');
      return { status: 'active' };
    };
    const res = m.confirm(5000);
    await vi.waitFor(() => expect(q.commands).toContain('cont'), { timeout: 3000 });
    // One poll (answered stale), then the handover: no second poll a second later.
    expect(q.commands.slice(before).filter((c) => c === 'query-migrate')).toHaveLength(1);
    samples.publish(sample(0, 4000));
    samples.publish(sample(0, 4300));
    expect(await res).toMatchObject({ alive: true });
  });

  it('refuses the handover when the stream did not complete here, and can then be aborted', async () => {
    const q = new FakeQemu({ running: false, migration: 'active' });
    await q.connect();
    const { m, host, recs } = incoming(q, 'incoming', new Broadcast());
    await m.adopt();
    await expect(m.confirm(300)).rejects.toMatchObject({ reason: 'NOT_HANDED_OVER' });
    expect(q.commands).not.toContain('cont');
    await recs.write(m.record);
    await m.abort();
    expect(host.destroyed).toEqual(['vm1']);
    expect(await recs.list()).toEqual([]);
  });

  it('resumes a paused copy found in post-copy after a restart (the source has stopped)', async () => {
    const q = new FakeQemu({ running: false, migration: 'postcopy-active' });
    await q.connect();
    const { m, recs } = incoming(q, 'incoming', new Broadcast());
    await m.adopt();
    expect(q.commands).toContain('cont');
    expect(m.guestRunsHere).toBe(true);
    expect((await recs.list())[0]).toMatchObject({ phase: 'running' });
  });

  it('resumes the guest as soon as QEMU reports post-copy', async () => {
    const q = new FakeQemu({ running: false, migration: 'active' });
    await q.connect();
    const { m } = incoming(q, 'incoming', new Broadcast());
    await m.adopt();
    expect(q.commands).not.toContain('cont');
    q.emit('postcopy-active');
    // The copy counts as running here (its record) a moment before `cont` goes out: wait for both.
    await eventually(() => m.guestRunsHere && q.commands.includes('cont'), 'the resume in post-copy');
    expect(q.commands).toContain('cont');
    await expect(m.abort()).rejects.toMatchObject({ reason: 'GUEST_RUNS_HERE' });
  });
});

describe('a restarted daemon reconciles its records (MigrationManager)', () => {
  function manager(host: VmHost, peer: NodePeer, stateDir: string): MigrationManager {
    const m = new MigrationManager({ nodeId: 'b', host, supportedCapabilities: new Set(['events']), migrationAddress: '127.0.0.1', stateDir, incomingCheckMs: 300, peer: () => peer, log: quiet });
    cleanups.push(() => m.close());
    return m;
  }

  it('removes an incoming copy nobody owns, and one whose source no longer knows the run; answers finished runs from their record', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'migd-own-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const recs = new MigrationRecords(dir);
    const now = new Date().toISOString();
    await recs.write({ format: 1, runId: 'run-in', role: 'destination', vmName: 'vm1', phase: 'incoming', peer: { nodeId: 'a', managementAddress: 'a:1', migrationAddress: 'a' }, policy: {}, startedAt: now, updatedAt: now });
    const outcome = MigrationInfo.fromPartial({ runId: 'run-done', vmName: 'vm9', state: MigrationState.MIGRATION_STATE_SUCCEEDED });
    await recs.write({ format: 1, runId: 'run-done', role: 'source', vmName: 'vm9', phase: 'finished', peer: { nodeId: 'c', managementAddress: 'c:1', migrationAddress: 'c' }, policy: {}, outcome: MigrationInfo.toJSON(outcome), startedAt: now, updatedAt: now });
    const q = new FakeQemu({ running: false, migration: 'completed' });
    await q.connect();
    const base = fakeHost();
    const host: typeof base = { ...base, attach: (name) => (name === 'vm1' && !base.destroyed.includes(name) ? vmOf(q) : undefined), list: () => [{ name: 'vm1', role: 'incoming', alive: true }, { name: 'orphan', role: 'incoming', alive: true }] };
    const peer = fakePeer({});
    peer.getMigration = async () => {
      throw new NotFoundError('no migration run-in on this node');
    };
    const m = manager(host, peer, dir);
    await m.reconcile();
    expect(base.destroyed).toEqual(['orphan']);
    expect(m.get('run-done').state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(q.commands).not.toContain('cont');
    // The sweep (every second here) asks the source, which no longer knows the run.
    await eventually(() => base.destroyed.length === 2, 'the sweep removing the stale copy');
    expect(base.destroyed).toEqual(['orphan', 'vm1']);
    expect((await recs.list()).map((r) => r.runId)).toEqual(['run-done']);
  });

  it('an abort that arrives while the incoming QEMU starts waits for it and removes it; a PrepareIncoming after an abort is refused', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'migd-own-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const recs = new MigrationRecords(dir);
    const q = new FakeQemu({ running: false, migration: 'setup' });
    q.listenPort = 4444;
    await q.connect();
    const base = fakeHost();
    let release!: () => void;
    const qemuStarting = new Promise<void>((r) => (release = r));
    let started!: () => void;
    const createStarted = new Promise<void>((r) => (started = r));
    const host: typeof base = {
      ...base,
      createIncoming: async () => {
        started();
        await qemuStarting;
        return vmOf(q);
      },
    };
    const m = manager(host, fakePeer({}), dir);
    const prepare = m.prepareIncoming(PrepareIncomingRequest.fromPartial({ runId: 'run-p', spec: spec('vm1') }));
    const prepared = prepare.then(
      () => 'listening',
      (err: { reason?: string }) => err.reason,
    );
    await createStarted; // the abort comes while the QEMU starts (a fixed 50 ms sleep was not always enough under load)
    let answered = false;
    const abort = m.abortIncoming('run-p').then(() => void (answered = true));
    await new Promise((r) => setTimeout(r, 100));
    expect(answered).toBe(false); // "gone" is not said while the QEMU is still starting
    release();
    await abort;
    expect(await prepared).toBe('RUN_ABORTED');
    expect(base.destroyed).toEqual(['vm1']);
    expect(m.busy('vm1')).toBe(false);
    expect(await recs.list()).toEqual([]);
    expect(q.commands).not.toContain('cont');
    // A PrepareIncoming delayed past the abort (a cut link, a stopped daemon) starts nothing.
    await expect(m.prepareIncoming(PrepareIncomingRequest.fromPartial({ runId: 'run-p', spec: spec('vm1') }))).rejects.toMatchObject({ reason: 'RUN_ABORTED' });
    await m.abortIncoming('run-late');
    await expect(m.prepareIncoming(PrepareIncomingRequest.fromPartial({ runId: 'run-late', spec: spec('vm2') }))).rejects.toMatchObject({ reason: 'RUN_ABORTED' });
    expect(base.destroyed).toEqual(['vm1']);
  });

  it('keeps a bounded number of finished runs in memory: the oldest handovers and outcomes are forgotten', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'migd-own-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const recs = new MigrationRecords(dir);
    const now = new Date().toISOString();
    const confirm = ConfirmIncomingResponse.toJSON(ConfirmIncomingResponse.fromPartial({ alive: true, pid: 7 }));
    for (let i = 0; i < 12; i++) {
      await recs.write({ format: 1, runId: `in-${i}`, role: 'destination', vmName: `vm-in-${i}`, phase: 'confirmed', boundSource: 'a', confirm, policy: {}, startedAt: now, updatedAt: now });
      const outcome = MigrationInfo.fromPartial({ runId: `out-${i}`, vmName: `vm-out-${i}`, state: MigrationState.MIGRATION_STATE_SUCCEEDED });
      await recs.write({ format: 1, runId: `out-${i}`, role: 'source', vmName: `vm-out-${i}`, phase: 'finished', peer: { nodeId: 'c', managementAddress: 'c:1', migrationAddress: 'c' }, policy: {}, outcome: MigrationInfo.toJSON(outcome), startedAt: now, updatedAt: now });
    }
    const m = new MigrationManager({ nodeId: 'b', host: fakeHost(), supportedCapabilities: new Set(['events']), migrationAddress: '127.0.0.1', stateDir: dir, peer: () => fakePeer({}), log: quiet, keptFinishedRuns: 5 });
    cleanups.push(() => m.close());
    await m.reconcile();
    expect(m.sizes).toMatchObject({ past: 5, confirmed: 5 });
    // What is kept still answers; what was forgotten is unknown.
    let answered = 0;
    for (let i = 0; i < 12; i++) {
      const res = await m.confirmIncoming({ runId: `in-${i}`, timeoutMs: 10, resume: false }).then(() => true, (err: unknown) => {
        expect(err).toBeInstanceOf(NotFoundError);
        return false;
      });
      if (res) answered++;
    }
    expect(answered).toBe(5);
    expect(m.list(false)).toHaveLength(5);
  });

  it('a start that failed after asking the destination tells it to drop its copy, and a repeated StartMigration gets the failure, not a second start', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'migd-own-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const q = new FakeQemu({ running: true, migration: 'none' });
    await q.connect();
    const base = fakeHost();
    const host: typeof base = { ...base, source: () => vmOf(q) };
    const peer = fakePeer({});
    let prepares = 0;
    peer.prepareIncoming = async () => {
      prepares++;
      throw new UnavailableError('the answer was lost'); // the destination may have prepared anyway
    };
    const m = manager(host, peer, dir);
    const req = StartMigrationRequest.fromPartial({ runId: 'run-s', vmName: 'vm1', policy: MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_FIXED }), destination: { nodeId: 'c', managementAddress: 'c:1', migrationAddress: '127.0.0.2' } });
    await expect(m.start(req)).rejects.toMatchObject({ reason: 'DESTINATION_UNAVAILABLE' });
    expect(peer.calls).toContain('abort');
    const again = await m.start(req);
    expect(again.state).toBe(MigrationState.MIGRATION_STATE_FAILED);
    expect(again.error?.reason).toBe('DESTINATION_UNAVAILABLE');
    expect(prepares).toBe(1);
    expect(m.get('run-s').state).toBe(MigrationState.MIGRATION_STATE_FAILED);
    expect(q.commands).not.toContain('migrate');
  });
});
