/**
 * A cancel before QEMU's memory stream has started (issue 13): while StartMigration prepares the
 * destination, or between the LOCAL disks' mirrors reaching READY and QEMU's `migrate`. QEMU has no
 * migration to cancel then, so a migrate_cancel would cancel nothing and the stream would start
 * anyway (and, 5 s later, be yanked: "QEMU reported the migration failed"). The run must end
 * CANCELLED without `migrate` ever going out, its mirrors cancelled and the destination told to
 * drop its copy; a cancel once the stream runs is still QEMU's migrate_cancel. (Each test is
 * bounded at 10 s: before the fix these runs never ended, and the default bound is 120 s.)
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MigrationPolicy, MigrationState as S } from '../../../services/shared/gen/migd/v1/common.js';
import { createLogger } from '../../../services/shared/log.js';
import { resolveMigrationConfig } from '../../../services/shared/policy/index.js';
import { SourceMigration } from '../../../services/node/migration/source.js';
import type { MigrationRecord } from '../../../services/node/migration/record.js';
import { FakeQemu, fakeHost, fakePeer, fakeVm, tempRecords, type Cleanups, type PeerScript } from '../../helpers/migration-fakes.js';

const quiet = createLogger('source-cancel-test', {}, () => undefined, 'error');
const cleanups: Cleanups = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const SUPPORTED = new Set(['events', 'return-path']);
/** One LOCAL disk to copy, and the destination's export of it. */
const DISK = { transfers: [{ id: 'd0', virtualBytes: 1 << 20, allocatedBytes: 1 << 20, basePath: '' }], prepared: { nbdPort: 10809, disks: [{ id: 'd0', export: 'disk-d0', incremental: false }] } };

interface Setup {
  q: FakeQemu;
  m: SourceMigration;
  peer: ReturnType<typeof fakePeer>;
  host: ReturnType<typeof fakeHost>;
  /** Runs before each record write (the phase persisted). */
  onPersist: (rec: MigrationRecord) => Promise<void> | void;
}

/** A source migration over a fake QEMU whose mirror of d0 is READY at once (when `disks`). */
async function setup(o: { disks: boolean; script?: PeerScript }): Promise<Setup> {
  const q = new FakeQemu({ running: true, migration: 'none', logger: quiet, cleanups });
  await q.connect();
  let jobs: { device: string; offset: number; len: number; ready: boolean; status: string }[] = [];
  q.onCommand = (name) => {
    if (name === 'blockdev-mirror') jobs = [{ device: 'mirror-d0', offset: 1 << 20, len: 1 << 20, ready: true, status: 'ready' }];
    if (name === 'block-job-cancel') jobs = [];
    if (name === 'query-block-jobs') return jobs;
    if (name === 'query-named-block-nodes') return jobs.length > 0 || q.commands.includes('blockdev-add') ? [{ 'node-name': 'nbd-d0' }] : [];
    return undefined;
  };
  const host = fakeHost(o.disks ? { transfers: DISK.transfers } : {});
  const peer = fakePeer({ ...o.script, ...(o.disks ? { prepared: DISK.prepared } : {}) });
  const policy = MigrationPolicy.fromPartial({});
  const records = tempRecords(cleanups);
  const s: Setup = { q, host, peer, m: undefined as unknown as SourceMigration, onPersist: () => undefined };
  const write = records.write.bind(records);
  records.write = async (rec) => {
    await s.onPersist(rec);
    return write(rec);
  };
  s.m = new SourceMigration({
    runId: 'run-1',
    nodeId: 'a',
    vm: fakeVm(q),
    host,
    peer,
    destination: { nodeId: 'b', managementAddress: 'b:1', migrationAddress: '127.0.0.1' },
    policy,
    config: resolveMigrationConfig(policy, SUPPORTED),
    supportedCapabilities: SUPPORTED,
    log: quiet,
    options: { progressIntervalMs: 20, peerDeadlineMs: 300, handoverTimeoutMs: 600, cancelStuckMs: 50 },
    records,
  });
  cleanups.push(() => s.m.detach());
  return s;
}

describe('a cancel before the memory stream started', () => {
  it('between the mirrors READY and migrate: CANCELLED, no migrate or migrate_cancel, mirrors cancelled, destination dropped', async () => {
    const s = await setup({ disks: true });
    // The cancel lands while the stream is being set up (its phase persisted, `migrate` next).
    s.onPersist = async (rec) => {
      if (rec.phase === 'streaming') await s.m.cancel('test', 'cancel at the switch to the memory stream');
    };
    await s.m.start();
    const info = await s.m.finished();
    expect({ state: S[info.state], error: info.error?.message }).toEqual({ state: 'MIGRATION_STATE_CANCELLED', error: undefined });
    expect(s.q.commands).toContain('blockdev-mirror');
    expect(s.q.commands).not.toContain('migrate');
    expect(s.q.commands).not.toContain('migrate_cancel');
    expect(s.q.argsOf('block-job-cancel')).toContainEqual({ device: 'mirror-d0', force: true });
    expect(s.q.argsOf('blockdev-del')).toContainEqual({ 'node-name': 'nbd-d0' });
    expect(s.peer.calls).toContain('abort');
    expect(s.host.migrating.get('vm1')).toBeUndefined();
    expect(s.host.destroyed).toEqual([]);
  }, 10_000);

  it('while StartMigration prepares the destination (LOCAL disks): no mirror is started, CANCELLED', async () => {
    const ref: { s?: Setup } = {};
    const s = await setup({
      disks: true,
      script: {
        prepare: () => {
          void ref.s!.m.cancel('test', 'cancel while preparing');
          return undefined;
        },
      },
    });
    ref.s = s;
    await s.m.start(); // answers (the run ends in the background), never throws for a cancel
    const info = await s.m.finished();
    expect(S[info.state]).toBe('MIGRATION_STATE_CANCELLED');
    expect(s.q.commands).not.toContain('blockdev-mirror');
    expect(s.q.commands).not.toContain('migrate');
    expect(s.peer.calls).toEqual(['prepare', 'abort']);
  }, 10_000);

  it('while StartMigration prepares the destination (no disks): CANCELLED, migrate never sent', async () => {
    const ref: { s?: Setup } = {};
    const s = await setup({
      disks: false,
      script: {
        prepare: () => {
          void ref.s!.m.cancel('test', 'cancel while preparing');
          return undefined;
        },
      },
    });
    ref.s = s;
    await s.m.start();
    expect(S[(await s.m.finished()).state]).toBe('MIGRATION_STATE_CANCELLED');
    expect(s.q.commands).not.toContain('migrate');
  }, 10_000);

  it('while the mirrors are being started: CANCELLED, the run stays CANCELLING until then (never back to PREPARING), no migrate', async () => {
    const s = await setup({ disks: true });
    const inner = s.q.onCommand!;
    s.q.onCommand = (name, args) => {
      if (name === 'blockdev-mirror') void s.m.cancel('test', 'cancel while the mirrors start');
      return inner(name, args);
    };
    const states: string[] = [];
    const watching = (async () => {
      for await (const u of s.m.watch()) if (u.update?.$case === 'stateChange') states.push(S[u.update.value.to]);
    })();
    await s.m.start();
    expect(S[(await s.m.finished()).state]).toBe('MIGRATION_STATE_CANCELLED');
    await watching;
    expect(states.slice(states.indexOf('MIGRATION_STATE_CANCELLING'))).toEqual(['MIGRATION_STATE_CANCELLING', 'MIGRATION_STATE_CANCELLED']);
    expect(s.q.commands).not.toContain('migrate');
    expect(s.q.argsOf('block-job-cancel')).toContainEqual({ device: 'mirror-d0', force: true });
    expect(s.peer.calls).toEqual(['prepare', 'abort']);
  }, 10_000);

  it('once the stream runs, a cancel is still QEMU\'s migrate_cancel', async () => {
    const s = await setup({ disks: true });
    await s.m.start();
    const until = Date.now() + 5000;
    while (!s.q.commands.includes('migrate') && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    expect(s.q.commands).toContain('migrate');
    s.q.emit('active');
    await s.m.cancel('test', 'cancel during the memory stream');
    expect(s.q.commands).toContain('migrate_cancel');
    s.q.emit('cancelled');
    expect(S[(await s.m.finished()).state]).toBe('MIGRATION_STATE_CANCELLED');
    expect(s.q.argsOf('block-job-cancel')).toContainEqual({ device: 'mirror-d0', force: true });
  }, 10_000);
});
