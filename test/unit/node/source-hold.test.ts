/**
 * A held start (StartMigrationRequest.hold_ms) over a fake QMP transport and a scripted
 * destination: the prepared migration waits before QEMU's `migrate` until it is released; it
 * fails HOLD_EXPIRED when its hold runs out, and a renewal (a repeated held StartMigration) moves
 * the expiry, so a hold outlives the run ahead of it on the link as long as its coordinator renews.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MigrationPolicy, MigrationState as S } from '../../../services/shared/gen/migd/v1/common.js';
import { createLogger } from '../../../services/shared/log.js';
import { resolveMigrationConfig } from '../../../services/shared/policy/index.js';
import { SourceMigration } from '../../../services/node/migration/source.js';
import { FakeQemu, fakeHost, fakePeer, fakeVm, tempRecords, type Cleanups } from '../../helpers/migration-fakes.js';
import { until } from '../../helpers/until.js';

const quiet = createLogger('source-hold-test', {}, () => undefined, 'error');
const cleanups: Cleanups = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const SUPPORTED = new Set(['events', 'postcopy-ram', 'postcopy-preempt', 'return-path', 'auto-converge']);

async function held(holdMs: number): Promise<{ q: FakeQemu; m: SourceMigration }> {
  const q = new FakeQemu({ running: true, migration: 'none', logger: quiet, cleanups });
  await q.connect();
  const policy = MigrationPolicy.fromPartial({ tls: false });
  const m = new SourceMigration({
    runId: 'run-1',
    nodeId: 'a',
    vm: fakeVm(q),
    host: fakeHost(),
    peer: fakePeer({}),
    destination: { nodeId: 'b', managementAddress: 'b:1', migrationAddress: '127.0.0.1' },
    policy,
    config: resolveMigrationConfig(policy, SUPPORTED),
    supportedCapabilities: SUPPORTED,
    log: quiet,
    options: { postcopyStallMs: 600_000, progressIntervalMs: 50, peerDeadlineMs: 300, handoverTimeoutMs: 600 },
    records: tempRecords(cleanups),
    holdMs,
  });
  cleanups.push(() => m.detach());
  await m.start();
  await until(() => m.held, 'the migration held');
  return { q, m };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('a held source migration', () => {
  it('waits before migrate until released', async () => {
    const { q, m } = await held(5000);
    await sleep(150);
    expect(m.currentState).toBe(S.MIGRATION_STATE_PREPARING);
    expect(q.commands).not.toContain('migrate');
    m.release();
    await until(() => q.commands.includes('migrate'), 'migrate after the release');
    expect(m.held).toBe(false);
  });

  it('fails HOLD_EXPIRED when nobody releases or renews it', async () => {
    const { q, m } = await held(200);
    await until(() => m.currentState === S.MIGRATION_STATE_FAILED, 'the hold to expire');
    expect(m.info().error?.reason).toBe('HOLD_EXPIRED');
    expect(q.commands).not.toContain('migrate');
    expect(m.renewHold(200)).toBe(false); // over: nothing to renew
  });

  it('stays held past its first expiry while renewed, and streams once released', async () => {
    const { q, m } = await held(200);
    // Five renewals 100 ms apart: 500 ms, well past the first 200 ms hold.
    for (let i = 0; i < 5; i++) {
      await sleep(100);
      expect(m.renewHold(200)).toBe(true);
    }
    expect(m.currentState).toBe(S.MIGRATION_STATE_PREPARING);
    expect(m.held).toBe(true);
    m.release();
    await until(() => q.commands.includes('migrate'), 'migrate after the release');
    expect(m.renewHold(200)).toBe(false); // released: a late renewal changes nothing
  });
});
