/**
 * IncomingMigration when QEMU's in-band monitor does not answer — a post-copy destination whose
 * vCPU waits in userfaultfd for a page that has not arrived, holding the BQL that the main loop
 * needs for every in-band command (destination.ts, header; docs/chaos/README.md). Played over the
 * fake QMP transport: in-band commands get no reply (NO_REPLY), out-of-band ones still answer.
 * - `cont` is done when QEMU reports RESUME, whether or not its answer follows;
 * - a restarted daemon adopts such a copy without reading its status, keeps it, and pauses and
 *   recovers it out of band (QEMU itself refuses migrate-pause outside post-copy);
 * - one that has no QMP session at all (QEMU negotiates a new session in band, so it takes none
 *   while held) says so (INCOMING_QMP_UNREACHABLE), for the source to keep its stream open.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MigrationPolicy } from '../../../services/shared/gen/migd/v1/common.js';
import { createLogger } from '../../../services/shared/log.js';
import { resolveMigrationConfig } from '../../../services/shared/policy/index.js';
import { IncomingMigration } from '../../../services/node/migration/destination.js';
import type { DestinationRecord } from '../../../services/node/migration/record.js';
import { FakeQemu, FakeQmpError, NO_REPLY, fakeHost, fakeVm, tempRecords, type Cleanups, type FakeHost } from '../../helpers/migration-fakes.js';
import { until } from '../../helpers/until.js';

const quiet = createLogger('destination-held-monitor-test', {}, () => undefined, 'error');
const cleanups: Cleanups = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const SUPPORTED = new Set(['events', 'postcopy-ram', 'postcopy-preempt', 'return-path']);
/** QEMU 10.0's refusal of migrate-pause outside postcopy-active / postcopy-recover (migration.c). */
const PAUSE_REFUSED = 'migrate-pause is currently only supported during postcopy-active or postcopy-recover state';

async function incoming(phase: DestinationRecord['phase'], o: { connected?: boolean } = {}): Promise<{ q: FakeQemu; m: IncomingMigration; host: FakeHost }> {
  const q = new FakeQemu({ running: false, migration: 'none', logger: quiet, cleanups });
  q.listenPort = 4444;
  if (o.connected ?? true) await q.connect();
  const policy = MigrationPolicy.fromPartial({ postcopy: { enabled: true, onDemandOnly: true } });
  const now = new Date().toISOString();
  const host = fakeHost();
  const m = new IncomingMigration({
    runId: 'run-1',
    vm: fakeVm(q),
    host,
    config: resolveMigrationConfig(policy, SUPPORTED),
    supportedCapabilities: SUPPORTED,
    migrationAddress: '127.0.0.1',
    log: quiet,
    record: { format: 1, role: 'destination', runId: 'run-1', vmName: 'vm1', startedAt: now, updatedAt: now, phase, policy: MigrationPolicy.toJSON(policy) },
    records: tempRecords(cleanups),
  });
  cleanups.push(() => m.detach());
  return { q, m, host };
}

/** The commands sent in band (`execute`), in order. */
function inBand(q: FakeQemu): string[] {
  return q.sent.filter((c) => c.execute !== undefined).map((c) => c.execute!);
}

/** From now on QEMU answers nothing in band, as while a vCPU holds the BQL in a userfault. */
function holdMainLoop(q: FakeQemu, oob: (name: string) => unknown = () => undefined): void {
  q.onCommand = (name) => (q.sent.at(-1)?.['exec-oob'] !== undefined ? oob(name) : NO_REPLY);
}

describe('a post-copy destination whose in-band monitor does not answer', () => {
  it('counts the guest resumed once QEMU reports RESUME, without waiting for the answer to cont', async () => {
    const { q, m, host } = await incoming('incoming');
    await m.listen();
    // query-status answers (paused); `cont` starts the guest (RESUME), then its answer is held.
    q.onCommand = (name) => {
      if (name !== 'cont') return undefined;
      setTimeout(() => q.emitEvent('RESUME'), 10);
      return NO_REPLY;
    };
    q.emit('postcopy-active');
    await until(() => host.adopted.includes('vm1'), 'the RESUME taken');
    expect(m.record.phase).toBe('running');
    expect(m.guestRunsHere).toBe(true);
    // Post-copy completes (the pages came); the source hands over. Without the RESUME rule the
    // handover waited on the first resume, itself waiting for cont's answer (30 s).
    q.onCommand = undefined;
    q.running = true;
    q.emit('completed');
    const t0 = Date.now();
    const res = await m.confirm(2500);
    expect(Date.now() - t0).toBeLessThan(4000);
    expect(res.pid).toBe(4242);
    expect(q.commands.filter((c) => c === 'cont')).toEqual(['cont']);
  });

  it('still fails the resume when QEMU refuses cont before any RESUME', async () => {
    const { q, m } = await incoming('incoming');
    await m.listen();
    q.onCommand = (name) => (name === 'cont' ? new FakeQmpError('Resetting the Virtual Machine is required') : undefined);
    q.emit('postcopy-active');
    q.emit('completed');
    await expect(m.confirm(1000)).rejects.toThrow(/Resetting the Virtual Machine is required/);
    expect(m.record.phase).toBe('running'); // the claim was recorded before `cont`: kept
  });

  it('a restarted daemon adopts a copy resumed here without an in-band answer, keeps it, and pauses and recovers it out of band', async () => {
    const { q, m } = await incoming('running');
    holdMainLoop(q, (name) => {
      if (name === 'migrate-pause') setTimeout(() => q.emit('postcopy-paused'), 10);
      return undefined;
    });
    // Earlier adopt() threw (query-status timed out) and left the status at `none`.
    await expect(m.adopt()).resolves.toBeUndefined();
    expect(m.guestRunsHere).toBe(true);
    await expect(m.abort()).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', reason: 'GUEST_RUNS_HERE' });
    // Earlier: NOT_IN_POSTCOPY, and the recovery of a recoverable guest could not start.
    await expect(m.pause()).resolves.toBe('postcopy-paused');
    const pause = q.sent.find((c) => (c.execute ?? c['exec-oob']) === 'migrate-pause');
    expect(pause?.['exec-oob']).toBe('migrate-pause');
    const { port } = await m.recover();
    expect(q.argsOf('migrate-recover')).toEqual([{ uri: `tcp:127.0.0.1:${port}` }]);
    expect(q.sent.find((c) => (c.execute ?? c['exec-oob']) === 'migrate-recover')?.['exec-oob']).toBe('migrate-recover');
    // Nothing more was asked in band than the adoption's two reads: each unanswered command stays
    // in QEMU's queue, and at 8 QEMU stops reading out-of-band commands too.
    expect(inBand(q)).toEqual(['query-status', 'query-migrate']);
  }, 15_000);

  it('takes QEMU\'s refusal of migrate-pause as paused already for a copy resumed here, and as not in post-copy for one that never was', async () => {
    const refused = (name: string): unknown => (name === 'migrate-pause' ? new FakeQmpError(PAUSE_REFUSED) : undefined);
    const resumed = await incoming('running');
    holdMainLoop(resumed.q, refused);
    await resumed.m.adopt();
    await expect(resumed.m.pause()).resolves.toBe('postcopy-paused');
    await resumed.m.recover();
    expect(resumed.q.commands.filter((c) => c === 'migrate-recover')).toHaveLength(1);

    const waiting = await incoming('incoming');
    holdMainLoop(waiting.q, refused);
    await waiting.m.adopt();
    await expect(waiting.m.pause()).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', reason: 'NOT_IN_POSTCOPY' });
    expect(waiting.m.guestRunsHere).toBe(false);
  }, 20_000);

  it('follows the events after an unanswered adoption: a MIGRATION event sets the status again', async () => {
    const { q, m } = await incoming('running');
    holdMainLoop(q);
    await m.adopt();
    q.emit('postcopy-paused');
    await until(() => m.qemuStatus === 'postcopy-paused', 'postcopy-paused');
    // Known again: paused already, so nothing is sent.
    await expect(m.pause()).resolves.toBe('postcopy-paused');
    expect(q.commands).not.toContain('migrate-pause');
  }, 15_000);

  it('a restarted daemon without a QMP session (a held QEMU takes no new one) keeps the copy and answers pause and recover INCOMING_QMP_UNREACHABLE, then pauses once the session is back', async () => {
    const { q, m } = await incoming('running', { connected: false });
    // Earlier adopt() threw (not connected) and pause() said NOT_IN_POSTCOPY, which the source
    // takes as "pause your own stream past the grace": the one stream that could still resume.
    await expect(m.adopt()).resolves.toBeUndefined();
    expect(m.gone).toBe(false);
    expect(m.guestRunsHere).toBe(true);
    await expect(m.abort()).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', reason: 'GUEST_RUNS_HERE' });
    await expect(m.pause()).rejects.toMatchObject({ code: 'UNAVAILABLE', reason: 'INCOMING_QMP_UNREACHABLE' });
    await expect(m.recover()).rejects.toMatchObject({ code: 'UNAVAILABLE', reason: 'INCOMING_QMP_UNREACHABLE' });
    // The pages came (the link returned): the VM manager's reconnect succeeds, events flow again.
    await q.connect();
    q.onCommand = (name) => {
      if (name === 'migrate-pause') setTimeout(() => q.emit('postcopy-paused'), 10);
      return undefined;
    };
    q.emit('postcopy-active');
    await until(() => m.qemuStatus === 'postcopy-active', 'postcopy-active');
    await expect(m.pause()).resolves.toBe('postcopy-paused');
  });
});
