import { describe, expect, it } from 'vitest';
import { MigrationPolicy, MigrationState, PolicyActionKind, PolicyKind, ProgressSample, TimeoutAction } from '../../../services/shared/gen/migd/v1/common.js';
import { completionBudgetMs, policyFor } from '../../../services/coordinator/domain/policy/index.js';
import { GiB, MiB } from '../../../services/coordinator/domain/units.js';
import { replay, summary } from './traces.js';

const sample = (elapsedMs: number, fields: Partial<ProgressSample> = {}): ProgressSample =>
  ProgressSample.fromPartial({
    elapsedMs,
    state: MigrationState.MIGRATION_STATE_PRECOPY,
    qemuStatus: 'active',
    pass: 2,
    totalBytes: GiB,
    remainingBytes: 100 * MiB,
    ...fields,
  });

describe('timeouts', () => {
  it('fire on the coordinator’s clock even when the node stops sending new samples', () => {
    const policy = policyFor(MigrationPolicy.fromPartial({ progressTimeoutSec: 60 }), GiB);
    let state = policy.initialState();
    const last = sample(5000);
    state = policy.decide(state, last, 5000).state;
    // The same last sample, re-fed as the clock advances.
    expect(policy.decide(state, last, 64_999).actions).toEqual([]);
    const fired = policy.decide(state, last, 65_000).actions;
    expect(fired.map((a) => [a.kind, a.elapsedMs])).toEqual([[PolicyActionKind.POLICY_ACTION_KIND_ABORT, 65_000]]);
  });

  it('count a migration stuck in setup as making no progress since its start', () => {
    const policy = policyFor(MigrationPolicy.fromPartial({ progressTimeoutSec: 30 }), GiB);
    const setup = [0, 10_000, 20_000, 30_000].map((t) => sample(t, { state: MigrationState.MIGRATION_STATE_SETUP, qemuStatus: 'setup', pass: 0, remainingBytes: 0 }));
    const { actions } = replay(policy, setup);
    expect(summary(actions)).toEqual([[30_000, 'ABORT', 0]]);
    expect(actions[0]?.reason).toContain('no pre-copy progress since the start');
  });

  it('reset the progress timer on every new minimum of remaining bytes', () => {
    const policy = policyFor(MigrationPolicy.fromPartial({ progressTimeoutSec: 30 }), GiB);
    const falling = [1, 2, 3, 4, 5, 6].map((i) => sample(i * 20_000, { remainingBytes: (100 - i) * MiB }));
    expect(replay(policy, falling).actions).toEqual([]);
  });

  it('do not fire in post-copy or after completion', () => {
    const policy = policyFor(MigrationPolicy.fromPartial({ completionTimeoutSecPerGib: 10, progressTimeoutSec: 5, postcopy: { enabled: true } }), GiB);
    const post = [sample(1000), sample(2000, { state: MigrationState.MIGRATION_STATE_POSTCOPY, qemuStatus: 'postcopy-active' }), sample(60_000, { state: MigrationState.MIGRATION_STATE_POSTCOPY_PAUSED, qemuStatus: 'postcopy-paused' })];
    expect(replay(policy, post).actions).toEqual([]);
    const done = [sample(1000), sample(60_000, { state: MigrationState.MIGRATION_STATE_VERIFYING, qemuStatus: 'completed' })];
    expect(replay(policy, done).actions).toEqual([]);
  });

  it('prefer the completion timeout when both are due, and act once', () => {
    const policy = policyFor(MigrationPolicy.fromPartial({ completionTimeoutSecPerGib: 10, progressTimeoutSec: 10, timeoutAction: TimeoutAction.TIMEOUT_ACTION_FORCE_COMPLETE }), GiB);
    const { actions } = replay(policy, [sample(0), sample(12_000), sample(20_000)]);
    expect(summary(actions)).toEqual([[12_000, 'PAUSE_GUEST', 0]]);
    expect(actions[0]?.reason).toMatch(/^completion timeout: not completed after 10\.0 s \(10 s\/GiB × 1\.00 GiB\); pausing the guest/);
  });

  it('scale the completion timeout with guest memory', () => {
    const at = (memoryBytes: number): number | undefined => policyFor(MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_KUBEVIRT }), memoryBytes).timeouts.completionMs;
    expect(at(GiB)).toBe(150_000);
    expect(at(4 * GiB)).toBe(600_000);
    expect(at(512 * MiB)).toBe(75_000);
  });
});

describe('timeouts of a run that copies LOCAL disks (issue 13)', () => {
  // A storage-copy sample: the source reports PREPARING with the mirrors' figures until every mirror is ready.
  const copying = (elapsedMs: number, transferred: number, total: number): ProgressSample =>
    ProgressSample.fromPartial({ elapsedMs, state: MigrationState.MIGRATION_STATE_PREPARING, qemuStatus: 'storage-copy', storagePhase: true, diskTransferredBytes: transferred, diskTotalBytes: total });

  it('add the disks to the completion budget at the same seconds per GiB (Nova: RAM plus disk; KubeVirt: the migrating disks)', () => {
    expect(completionBudgetMs({ completionMs: 10_000, completionSecPerGib: 10 }, 2 * GiB)).toBe(30_000);
    expect(completionBudgetMs({ completionMs: 10_000, completionSecPerGib: 10 }, 0)).toBe(10_000);
    expect(completionBudgetMs({ completionMs: undefined, completionSecPerGib: 10 }, 2 * GiB)).toBeUndefined();
    expect(policyFor(MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_KUBEVIRT }), GiB).timeouts.completionSecPerGib).toBe(150);

    // 1 GiB guest at 10 s/GiB with 2 GiB of LOCAL disks: 30 s, not 10 s.
    const policy = policyFor(MigrationPolicy.fromPartial({ completionTimeoutSecPerGib: 10 }), GiB);
    const copy = [0, 5_000, 10_000, 15_000, 20_000, 25_000].map((t) => copying(t, (t / 25_000) * 2 * GiB, 2 * GiB));
    expect(replay(policy, copy).actions).toEqual([]);
    const late = [...copy, sample(29_999, { diskTotalBytes: 2 * GiB, diskTransferredBytes: 2 * GiB }), sample(30_000, { diskTotalBytes: 2 * GiB, diskTransferredBytes: 2 * GiB })];
    const { actions } = replay(policy, late);
    expect(summary(actions)).toEqual([[30_000, 'ABORT', 0]]);
    expect(actions[0]?.reason).toMatch(/^completion timeout: not completed after 30\.0 s \(10 s\/GiB × 1\.00 GiB \+ 10 s\/GiB × 2\.00 GiB of LOCAL disks\)/);
    // Without disks the same guest times out at 10 s.
    expect(summary(replay(policy, [sample(0), sample(10_000)]).actions)).toEqual([[10_000, 'ABORT', 0]]);
  });

  it('count a storage copy that advances as progress, and one the guest outruns as a stall', () => {
    const policy = policyFor(MigrationPolicy.fromPartial({ progressTimeoutSec: 30 }), GiB);
    // 200 s of copying 8 GiB: far longer than the progress timeout, but every sample is a new minimum.
    const long = Array.from({ length: 11 }, (_, i) => copying(i * 20_000, i * 0.8 * GiB, 8 * GiB));
    expect(replay(policy, long).actions).toEqual([]);
    // Then memory pre-copy starts: its own first minimum resets nothing wrongly.
    expect(replay(policy, [...long, sample(210_000), sample(220_000, { remainingBytes: 50 * MiB })]).actions).toEqual([]);
    // A copy whose remaining stops shrinking (the guest writes as fast as the link) is a stall.
    const stuck = [copying(0, 0, GiB), copying(10_000, 512 * MiB, GiB), copying(20_000, 700 * MiB, GiB + 188 * MiB), copying(40_000, 900 * MiB, GiB + 388 * MiB)];
    const { actions } = replay(policy, stuck);
    expect(summary(actions)).toEqual([[40_000, 'ABORT', 0]]);
    expect(actions[0]?.reason).toMatch(/storage copy's remaining has not gone below 512\.0 MiB since 10\.0 s/);
  });
});
