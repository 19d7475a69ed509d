/**
 * MigrationManager over the narrow fakes (test/helpers/migration-fakes.ts: a QEMU behind the fake
 * QMP transport, a scripted destination node, the node's own "is migrating" state, a temp state
 * folder): one VM takes part in one run at a time — two concurrent starts for it, one refused —
 * and a run that fails, cannot start or is cancelled gives the VM back.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FailedPreconditionError, MigdError } from '../../../services/shared/errors.js';
import { MigrationState as S } from '../../../services/shared/gen/migd/v1/common.js';
import { StartMigrationRequest } from '../../../services/shared/gen/migd/v1/node.js';
import { createLogger } from '../../../services/shared/log.js';
import { MigrationManager } from '../../../services/node/migration/manager.js';
import { FakeQemu, fakeHost, fakePeer, fakeVm, type Cleanups, type FakeHost, type FakePeer, type PeerScript } from '../../helpers/migration-fakes.js';
import { until } from '../../helpers/until.js';

const quiet = createLogger('migration-manager-test', {}, () => undefined, 'error');
const cleanups: Cleanups = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const SUPPORTED = new Set(['events', 'postcopy-ram', 'return-path', 'auto-converge']);

interface Node {
  q: FakeQemu;
  host: FakeHost;
  peer: FakePeer;
  mm: MigrationManager;
}

/** A source node with one running VM (vm1) and a manager over it, the destination scripted. */
async function node(script: PeerScript = {}): Promise<Node> {
  const q = new FakeQemu({ running: true, migration: 'none', logger: quiet, cleanups });
  await q.connect();
  const host = fakeHost({ vms: { vm1: fakeVm(q) } });
  const peer = fakePeer(script);
  const stateDir = mkdtempSync(join(tmpdir(), 'migd-mm-'));
  cleanups.push(() => rmSync(stateDir, { recursive: true, force: true }));
  const mm = new MigrationManager({
    nodeId: 'a',
    host,
    supportedCapabilities: SUPPORTED,
    migrationAddress: '127.0.0.1',
    stateDir,
    peer: () => peer,
    log: quiet,
    // No stall detection (the fake moves no bytes), quick calls to the destination.
    sourceOptions: { postcopyStallMs: 600_000, progressIntervalMs: 50, peerDeadlineMs: 300, handoverTimeoutMs: 600 },
  });
  cleanups.push(() => mm.close());
  return { q, host, peer, mm };
}

const start = (runId: string, vmName = 'vm1'): StartMigrationRequest =>
  StartMigrationRequest.fromPartial({ runId, vmName, destination: { nodeId: 'b', managementAddress: 'b:1', migrationAddress: '127.0.0.1' } });

async function reason(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'fulfilled';
  } catch (err) {
    return err instanceof MigdError ? `${err.code} ${err.reason ?? ''}`.trim() : `other: ${String(err)}`;
  }
}

describe('MigrationManager: one run per VM', () => {
  it('refuses the second of two concurrent starts for one VM, and asks the destination once', async () => {
    const n = await node();
    const outcomes = await Promise.all([reason(n.mm.start(start('run-1'))), reason(n.mm.start(start('run-2')))]);
    expect(outcomes).toEqual(['fulfilled', 'FAILED_PRECONDITION VM_ALREADY_MIGRATING']);
    expect(n.peer.calls.filter((c) => c === 'prepare')).toHaveLength(1);
    expect(n.host.marks.runOf('vm1')).toBe('run-1');
    expect(n.mm.busy('vm1')).toBe(true);
    // The refused run left nothing behind: no migration, no QEMU command of its own.
    expect(() => n.mm.get('run-2')).toThrow(/no migration run-2/);
    expect(n.q.argsOf('migrate')).toHaveLength(1);
  });

  it('joins a concurrent retry of the same run id instead of starting twice', async () => {
    const n = await node();
    const [a, b] = await Promise.all([n.mm.start(start('run-1')), n.mm.start(start('run-1'))]);
    expect(a.runId).toBe('run-1');
    expect(b.runId).toBe('run-1');
    expect(n.peer.calls.filter((c) => c === 'prepare')).toHaveLength(1);
    // The same run id for another VM is bad input.
    expect(await reason(n.mm.start(start('run-1', 'vm2')))).toBe('INVALID_ARGUMENT');
  });

  it('gives the VM back when the start fails, and remembers the failure for a repeated start', async () => {
    const n = await node({ prepare: (i) => (i === 1 ? new FailedPreconditionError('no room', { reason: 'NO_ROOM' }) : undefined) });
    expect(await reason(n.mm.start(start('run-1')))).toBe('FAILED_PRECONDITION NO_ROOM');
    expect(n.host.marks.has('vm1')).toBe(false);
    expect(n.mm.busy('vm1')).toBe(false);
    // A repeated StartMigration of the failed run gets its outcome; it never starts again.
    expect((await n.mm.start(start('run-1'))).state).toBe(S.MIGRATION_STATE_FAILED);
    expect(n.peer.calls.filter((c) => c === 'prepare')).toHaveLength(1);
    // Another run may take the VM now.
    expect(await reason(n.mm.start(start('run-2')))).toBe('fulfilled');
    expect(n.host.marks.runOf('vm1')).toBe('run-2');
  });

  it('gives the VM back when QEMU fails the stream', async () => {
    const n = await node();
    await n.mm.start(start('run-1'));
    n.q.emit('active');
    n.q.emit('failed');
    await until(() => n.mm.get('run-1').state === S.MIGRATION_STATE_FAILED, 'FAILED');
    expect(n.host.marks.has('vm1')).toBe(false);
    expect(n.mm.busy('vm1')).toBe(false);
    expect(n.mm.list(true)).toEqual([]);
    expect(await reason(n.mm.start(start('run-2')))).toBe('fulfilled');
  });

  it('gives the VM back when the run is cancelled, and refuses to cancel it twice', async () => {
    const n = await node();
    n.q.onCommand = (name) => {
      // QEMU ends a cancelled stream with a MIGRATION event, after answering.
      if (name === 'migrate_cancel') setTimeout(() => n.q.emit('cancelled'), 5);
      return undefined;
    };
    await n.mm.start(start('run-1'));
    n.q.emit('active');
    await n.mm.cancel('run-1', 'test', 'stop it');
    await until(() => n.mm.get('run-1').state === S.MIGRATION_STATE_CANCELLED, 'CANCELLED');
    expect(n.q.commands).toContain('migrate_cancel');
    expect(n.host.marks.has('vm1')).toBe(false);
    expect(n.host.destroyed).toEqual([]);
    expect(n.q.running).toBe(true);
    expect(await reason(n.mm.cancel('run-1', 'test', 'again'))).toBe('FAILED_PRECONDITION ALREADY_FINISHED');
    expect(await reason(n.mm.start(start('run-2')))).toBe('fulfilled');
  });
});
