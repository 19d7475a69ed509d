import { describe, expect, it } from 'vitest';
import {
  type DeepPartial,
  MigrationPolicy,
  MigrationState,
  type PolicyActionKind,
  PolicyKind,
  ProgressSample,
  TimeoutAction,
} from '../../../services/shared/gen/migd/v1/common.js';
import { type AdaptivePolicy, type AdaptiveState, policyFor } from '../../../services/coordinator/domain/policy/index.js';
import { GiB, MiB } from '../../../services/coordinator/domain/units.js';
import { loadTrace, replay, summary } from './traces.js';

const adaptive = (memoryBytes: number, extra: DeepPartial<MigrationPolicy> = {}): AdaptivePolicy =>
  policyFor(MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_ADAPTIVE, ...extra }), memoryBytes) as AdaptivePolicy;

describe('adaptive policy on recorded traces', () => {
  it('leaves a converging migration alone, a one-sample dirty-rate spike included', () => {
    // 512 MiB at 100 Mbit with a 2 MiB/s writer: r ≈ 0.17, predicted to converge in 2 passes.
    const trace = loadTrace('converging');
    expect(trace.some((s) => s.dirtyPagesRate > 5000)).toBe(true); // the spike is there
    expect(replay(adaptive(512 * MiB), trace).actions).toEqual([]);
  });

  it('raises the downtime just enough when that suffices (16.8 MB hot set, 1.4 s backlog)', () => {
    const { actions } = replay(adaptive(256 * MiB), loadTrace('hotset-small'));
    // Pass 1 ends at 22.4 s; the first window whose rates all come from pass ≥ 2 is at 26 s.
    expect(summary(actions)).toEqual([[26_000, 'SET_DOWNTIME', 1550]]);
    expect(actions[0]?.reason).toMatch(/^predicted not to converge at 300 ms \(backlog ≈1\.4 s of transfer/);
    expect(actions[0]?.reason).toContain('raising the downtime limit to 1550 ms');
    // 1550 ms ≥ the 1.4 s the switch-over needs, ≤ max 2000 ms: it would now converge; the rest
    // of this (open-loop) trace draws nothing more.
  });

  it('tries auto-converge, then post-copy when throttling does not shrink the backlog (36 MB hot set)', () => {
    const { actions } = replay(adaptive(256 * MiB), loadTrace('hotset-stall'));
    expect(summary(actions)).toEqual([
      [28_000, 'ENABLE_AUTO_CONVERGE', 0],
      // 4 passes of 3 s later (pass 7 starts at 37.4 s) the backlog is still ≈3 s.
      [38_000, 'START_POSTCOPY', 0],
    ]);
    expect(actions[0]?.reason).toContain('switch-over needs ≈3.0 s > max 2000 ms');
    expect(actions[0]?.reason).toContain('a throttle of ≈34% (≤ 75%): enabling auto-converge');
    expect(actions[1]?.reason).toContain('auto-converge has not shrunk the backlog in 4 passes');
    expect(actions[1]?.reason).toContain('switching to post-copy with preempt');
  });

  it('goes straight to post-copy when the dirty rate far exceeds the link', () => {
    const { actions } = replay(adaptive(512 * MiB), loadTrace('dirty-exceeds-link'));
    // Pass 2 rates are biased (r ≈ 0.5 over the cold first pass): it waits for pass 3 (67.1 s).
    expect(summary(actions)).toEqual([[70_000, 'START_POSTCOPY', 0]]);
    expect(actions[0]?.reason).toContain('throttling would need ≈89% of the guest');
  });

  it('never tries post-copy with multifd: auto-converge, then the timeouts', () => {
    const policy = adaptive(512 * MiB, { multifd: { enabled: true, channels: 4 } });
    expect(policy.requirements.postcopy).toBe(false);
    expect(policy.requirements.capabilities).toEqual(['auto-converge', 'multifd']);
    expect(policy.effective.postcopy).toBeUndefined();
    const { actions } = replay(policy, loadTrace('dirty-exceeds-link'));
    expect(summary(actions)).toEqual([
      [70_000, 'ENABLE_AUTO_CONVERGE', 0],
      // 300 s/GiB × 0.5 GiB
      [150_000, 'ABORT', 0],
    ]);
    expect(actions[0]?.reason).toContain('post-copy is unavailable (multifd is enabled)');
    expect(actions[1]?.reason).toMatch(/^completion timeout/);
  });

  it('takes the last resort once the throttle is exhausted without post-copy', () => {
    // The same trace, as if auto-converge had reached 99 % at 40 s without effect.
    const trace = loadTrace('hotset-stall').map((s) => (s.elapsedMs >= 40_000 ? { ...s, throttlePct: 99 } : s));
    const pause = adaptive(256 * MiB, { multifd: { enabled: true }, timeoutAction: TimeoutAction.TIMEOUT_ACTION_FORCE_COMPLETE });
    expect(summary(replay(pause, trace).actions)).toEqual([
      [28_000, 'ENABLE_AUTO_CONVERGE', 0],
      [40_000, 'PAUSE_GUEST', 0],
    ]);
    const abort = adaptive(256 * MiB, { multifd: { enabled: true } });
    const actions = replay(abort, trace).actions;
    expect(summary(actions)).toEqual([
      [28_000, 'ENABLE_AUTO_CONVERGE', 0],
      [40_000, 'ABORT', 0],
    ]);
    expect(actions[1]?.reason).toContain('auto-converge is at 99%');
  });

  it('respects a downtime limit raised by a user (AdjustRun) and does not act on it twice', () => {
    const trace = loadTrace('hotset-small').map((s) => ({ ...s, downtimeLimitMs: 1800 }));
    expect(replay(adaptive(256 * MiB), trace).actions).toEqual([]);
  });

  it('goes silent once the migration is in post-copy or finished', () => {
    const policy = adaptive(256 * MiB);
    const trace = loadTrace('hotset-stall');
    const cut = trace.filter((s) => s.elapsedMs <= 30_000);
    const post = ProgressSample.fromPartial({ ...trace[31], state: MigrationState.MIGRATION_STATE_POSTCOPY, qemuStatus: 'postcopy-active' });
    const later = trace.filter((s) => s.elapsedMs > 31_000);
    const { actions } = replay(policy, [...cut, post, ...later]);
    expect(summary(actions)).toEqual([[28_000, 'ENABLE_AUTO_CONVERGE', 0]]);
  });

  it('predicts convergence from the window medians', () => {
    const policy = adaptive(512 * MiB);
    let state: AdaptiveState = policy.initialState();
    for (const s of loadTrace('converging').filter((x) => x.elapsedMs <= 45_000)) state = policy.decide(state, s, s.elapsedMs).state;
    // Window: 43, 44, 45 s (45 s carries the 15× spike; the median ignores it).
    const p = policy.predict(state.window, 300);
    expect(p.ratio).toBeGreaterThan(0.15);
    expect(p.ratio).toBeLessThan(0.2);
    expect(p.backlogMs).toBe(7205);
    expect(p.passesToConverge).toBe(2);
    expect(p.convergesSoon).toBe(true);
  });

  it('needs post-copy (on demand, with preempt) and armed auto-converge from the start', () => {
    const policy = adaptive(GiB);
    expect(policy.requirements).toEqual({
      capabilities: ['auto-converge', 'postcopy-preempt', 'postcopy-ram', 'return-path'],
      postcopy: true,
      postcopyPreempt: true,
      autoConverge: 'armed',
    });
    expect(policy.effective.postcopy).toMatchObject({ enabled: true, onDemandOnly: true, afterPasses: 0, preempt: true });
    expect(policy.effective.autoConverge).toEqual({ enabled: false, initialPct: 20, incrementPct: 10, maxPct: 99 });
    expect(policy.effective.maxDowntimeMs).toBe(2000);
    // A user who disables post-copy gets an adaptive that never uses it.
    const noPc = adaptive(GiB, { postcopy: { enabled: false } });
    expect(noPc.requirements.postcopy).toBe(false);
  });

  it('does not act on the first pass alone or before its window is full', () => {
    const policy = adaptive(256 * MiB);
    let state = policy.initialState();
    const actions: PolicyActionKind[] = [];
    for (const s of loadTrace('hotset-stall').filter((x) => x.elapsedMs <= 27_000)) {
      const d = policy.decide(state, s, s.elapsedMs);
      actions.push(...d.actions.map((a) => a.kind));
      state = d.state;
    }
    expect(actions).toEqual([]);
  });
});
