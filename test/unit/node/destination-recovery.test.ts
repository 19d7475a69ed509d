/**
 * IncomingMigration's side of post-copy recovery over a fake QMP transport: PauseIncoming on a
 * destination the switch to post-copy has not reached yet pauses nothing (pausing would end the
 * stream there for good: QEMU fails an incoming migration whose stream breaks before post-copy
 * runs, see source.ts recover()); concurrent pauses send one migrate-pause; an incoming QEMU that
 * is gone is reported as such.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MigrationPolicy } from '../../../services/shared/gen/migd/v1/common.js';
import { createLogger } from '../../../services/shared/log.js';
import { resolveMigrationConfig } from '../../../services/shared/policy/index.js';
import { IncomingMigration } from '../../../services/node/migration/destination.js';
import { FakeQemu, fakeHost, fakeVm, tempRecords, type Cleanups } from '../../helpers/migration-fakes.js';
import { until } from '../../helpers/until.js';

const quiet = createLogger('destination-recovery-test', {}, () => undefined, 'error');
const cleanups: Cleanups = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const SUPPORTED = new Set(['events', 'postcopy-ram', 'postcopy-preempt', 'return-path']);

async function incoming(): Promise<{ q: FakeQemu; m: IncomingMigration }> {
  const q = new FakeQemu({ running: false, migration: 'none', logger: quiet, cleanups });
  q.listenPort = 4444;
  await q.connect();
  const policy = MigrationPolicy.fromPartial({ postcopy: { enabled: true, onDemandOnly: true } });
  const now = new Date().toISOString();
  const m = new IncomingMigration({
    runId: 'run-1',
    vm: fakeVm(q),
    host: fakeHost(),
    config: resolveMigrationConfig(policy, SUPPORTED),
    supportedCapabilities: SUPPORTED,
    migrationAddress: '127.0.0.1',
    log: quiet,
    record: { format: 1, role: 'destination', runId: 'run-1', vmName: 'vm1', startedAt: now, updatedAt: now, phase: 'incoming', policy: MigrationPolicy.toJSON(policy) },
    records: tempRecords(cleanups),
  });
  cleanups.push(() => m.detach());
  await m.listen();
  return { q, m };
}

describe('post-copy recovery on the destination', () => {
  it('refuses to pause while its stream is still in pre-copy (the switch has not arrived), and pauses out of band once in post-copy', async () => {
    const { q, m } = await incoming();
    q.emit('active');
    await until(() => m.qemuStatus === 'active', 'active');
    await expect(m.pause()).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', reason: 'NOT_IN_POSTCOPY' });
    expect(q.commands).not.toContain('migrate-pause');
    q.emit('postcopy-active');
    await until(() => m.qemuStatus === 'postcopy-active', 'postcopy-active');
    q.onCommand = (name) => {
      if (name === 'migrate-pause') setTimeout(() => q.emit('postcopy-paused'), 10);
      return undefined;
    };
    await expect(m.pause()).resolves.toBe('postcopy-paused');
    const pause = q.sent.find((c) => (c.execute ?? c['exec-oob']) === 'migrate-pause');
    expect(pause?.['exec-oob']).toBe('migrate-pause');
  });

  it('sends one migrate-pause for two PauseIncoming at once (a late call and its retry): a second one while QEMU pauses crashes it', async () => {
    const { q, m } = await incoming();
    q.emit('postcopy-active');
    await until(() => m.qemuStatus === 'postcopy-active', 'postcopy-active');
    q.onCommand = (name) => {
      if (name === 'migrate-pause') setTimeout(() => q.emit('postcopy-paused'), 50);
      return undefined;
    };
    await expect(Promise.all([m.pause(), m.pause()])).resolves.toEqual(['postcopy-paused', 'postcopy-paused']);
    expect(q.commands.filter((c) => c === 'migrate-pause')).toEqual(['migrate-pause']);
    // Paused already: a later call sends nothing either.
    await expect(m.pause()).resolves.toBe('postcopy-paused');
    expect(q.commands.filter((c) => c === 'migrate-pause')).toEqual(['migrate-pause']);
  });

  it('reports an incoming QEMU that went away (INCOMING_QEMU_GONE) to pause and recover alike', async () => {
    const { q, m } = await incoming();
    q.emit('postcopy-active');
    await until(() => m.qemuStatus === 'postcopy-active', 'postcopy-active');
    // QEMU exits (an incoming post-copy whose stream broke before its RUN command): QMP closes.
    await q.client.disconnect();
    await until(() => m.gone, 'the QEMU seen gone');
    await expect(m.pause()).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', reason: 'INCOMING_QEMU_GONE' });
    await expect(m.recover()).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', reason: 'INCOMING_QEMU_GONE' });
  });
});
