/**
 * The adaptive policy's dirty-rate measurements on the source (issue 14): QEMU's `migrate` goes out
 * at once, with no calc-dirty-rate estimate before it (that second was real to a user draining a
 * host and invisible in QEMU's total-time), and the first round of measurements during pre-copy
 * starts 500 ms after QEMU reports `active` (a shorter first pass needs no estimate, and the
 * measurement slowed sub-second migrations): the 100 ms dirty set first, then the 1 s estimate,
 * each carried by the progress samples once measured.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MigrationPolicy, PolicyKind, type ProgressSample } from '../../../services/shared/gen/migd/v1/common.js';
import { createLogger } from '../../../services/shared/log.js';
import { resolveMigrationConfig } from '../../../services/shared/policy/index.js';
import { SourceMigration } from '../../../services/node/migration/source.js';
import { FakeQemu, fakeHost, fakePeer, fakeVm, tempRecords, type Cleanups } from '../../helpers/migration-fakes.js';

const quiet = createLogger('source-dirty-rate-test', {}, () => undefined, 'error');
const cleanups: Cleanups = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const SUPPORTED = new Set(['events', 'return-path', 'postcopy-ram', 'postcopy-preempt', 'auto-converge']);
const MiB = 1024 * 1024;

async function eventually(check: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe("an adaptive migration's dirty-rate measurements", () => {
  it('sends migrate first, and the first calc-dirty-rate (the 100 ms set, then the 1 s estimate) 500 ms into pre-copy', async () => {
    const q = new FakeQemu({ running: true, migration: 'none', logger: quiet, cleanups });
    await q.connect();
    // When each command came, and what QEMU "measured" for the calc-dirty-rate last asked for:
    // 40 MiB/s over the 100 ms set window (4 MiB), 60 MiB/s over the 1 s estimate.
    const sent: { name: string; at: number; calcMs?: number }[] = [];
    let calcMs = 0;
    q.onCommand = (name, args) => {
      if (name === 'calc-dirty-rate') calcMs = Number(args?.['calc-time'] ?? 0);
      sent.push({ name, at: Date.now(), ...(name === 'calc-dirty-rate' ? { calcMs } : {}) });
      if (name === 'query-dirty-rate') return { status: 'measured', 'dirty-rate': calcMs === 100 ? 40 : 60 };
      if (name === 'query-migrate') return { status: q.migration, ram: { 'dirty-sync-count': 1, remaining: 64 * MiB, total: 128 * MiB, transferred: 64 * MiB, mbps: 700 } };
      return undefined;
    };
    const policy = MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_ADAPTIVE, downtimeLimitMs: 300 });
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
      options: { progressIntervalMs: 20, peerDeadlineMs: 2000, handoverTimeoutMs: 2000 },
      records: tempRecords(cleanups),
    });
    cleanups.push(() => m.detach());
    const samples: ProgressSample[] = [];
    const watching = (async () => {
      for await (const u of m.watch()) if (u.update?.$case === 'progress') samples.push(u.update.value);
    })().catch(() => undefined);

    await m.start();
    const names = sent.map((c) => c.name);
    expect(names).toContain('migrate');
    // No estimate before the stream: nothing of calc-dirty-rate up to and including `migrate`.
    expect(names.slice(0, names.indexOf('migrate') + 1)).not.toContain('calc-dirty-rate');

    // QEMU's set-up phase is not pre-copy: no measurement yet.
    q.emit('setup');
    await new Promise((r) => setTimeout(r, 150));
    expect(sent.some((c) => c.name === 'calc-dirty-rate')).toBe(false);

    const activeAt = Date.now();
    q.emit('active');
    await eventually(() => sent.some((c) => c.name === 'calc-dirty-rate'), 'the first calc-dirty-rate');
    const calcs = (): typeof sent => sent.filter((c) => c.name === 'calc-dirty-rate');
    const first = calcs()[0]!;
    // Not during the first 500 ms of pre-copy (a first pass that short needs no estimate, and the
    // measurement slows it), then at once: not 1 s before `migrate`, as before issue 14's fix.
    expect(first.at - activeAt).toBeGreaterThanOrEqual(490);
    expect(first.at - activeAt).toBeLessThan(800);
    expect(first.calcMs).toBe(100);
    await eventually(() => calcs().length >= 2, 'the 1 s estimate');
    expect(calcs()[1]!.calcMs).toBe(1000);

    // Samples carry the set first (40 MiB/s over 100 ms = 4 MiB) and the estimate once measured;
    // until then they carry 0, which the policy reads as "no estimate yet".
    await eventually(() => samples.some((s) => s.dirtySetBytes > 0), 'a sample carrying the dirty set');
    const firstSet = samples.find((s) => s.dirtySetBytes > 0)!;
    expect(firstSet.dirtySetBytes).toBe(4 * MiB);
    expect(firstSet.estimatedDirtyBytesPerSec).toBe(0);
    await eventually(() => samples.some((s) => s.estimatedDirtyBytesPerSec > 0), 'a sample carrying the 1 s estimate', 4000);
    expect(samples.find((s) => s.estimatedDirtyBytesPerSec > 0)!.estimatedDirtyBytesPerSec).toBe(60 * MiB);

    m.detach(); // ends the loops and the watch
    await watching;
  });
});
