/**
 * The adaptive policy's working-set evidence as one object (backlogPlateau, predict) and the one
 * fold every replay of a recorded run goes through (measured.ts replayTimeline).
 */
import { describe, expect, it } from 'vitest';
import { GuestPerfSample, MigrationPolicy, MigrationState, PolicyActionKind, PolicyKind, ProgressSample } from '../../../services/shared/gen/migd/v1/common.js';
import { type AdaptivePolicy, type AdaptiveReading, backlogPlateau, policyFor } from '../../../services/coordinator/domain/policy/index.js';
import { replayTimeline } from '../../../services/coordinator/domain/policy/measured.js';
import { MiB } from '../../../services/coordinator/domain/units.js';

const bw = 86 * MiB; // 720 Mbit/s

describe('backlogPlateau: one evidence object', () => {
  const cases: { name: string; boundaries: [number, number][]; ratio: number; prior?: { bytes: number; runs: number; firstBoundaryOnly?: true }; estimate: number; set?: { bytes: number; windowMs: number } }[] = [
    { name: 'the dirty set (hot-small: 45 of 48 MiB within 100 ms)', boundaries: [[2, 48 * MiB]], ratio: 0.5, estimate: 0, set: { bytes: 45 * MiB, windowMs: 100 } },
    { name: "the VM's earlier runs' W", boundaries: [[2, 50 * MiB]], ratio: 0.2, prior: { bytes: 48 * MiB, runs: 2 }, estimate: 0 },
    { name: 'post-copy runs\' one boundary, confirmed by the estimate', boundaries: [[2, 50 * MiB]], ratio: 0.2, prior: { bytes: 48 * MiB, runs: 2, firstBoundaryOnly: true }, estimate: 40 * MiB },
    { name: 'post-copy runs\' one boundary, an estimate too low to confirm it', boundaries: [[2, 50 * MiB]], ratio: 0.2, prior: { bytes: 48 * MiB, runs: 2, firstBoundaryOnly: true }, estimate: 20 * MiB },
  ];
  it('reads the dirty set, the VM\'s earlier runs\' W, and post-copy runs\' one boundary only where the estimate confirms it', () => {
    const got = cases.map((c) => backlogPlateau(c.boundaries, c.ratio, 0.6, 1.5, { prior: c.prior, estimateBytesPerSec: c.estimate, set: c.set, bytesPerSec: bw }));
    expect(got[0]?.rewrittenWithin).toEqual({ bytes: 45 * MiB, windowMs: 100 });
    expect(got[1]?.historyRuns).toBe(2);
    expect(got[2]?.confirmedByEstimate).toBe(40 * MiB);
    expect(got[3]).toBeUndefined();
  });
  it('no evidence object: two boundaries only; an empty one the same', () => {
    expect(backlogPlateau([[2, 48 * MiB]], 0.5, 0.6, 1.5)).toBeUndefined();
    expect(backlogPlateau([[2, 48 * MiB]], 0.5, 0.6, 1.5, {})).toBeUndefined();
    expect(backlogPlateau([[2, 50], [3, 48]], 0.5, 0.6, 1.5, {})?.workingSetBytes).toBe(50);
  });
});

describe('predict: evidence left out is read from the window', () => {
  const policy = policyFor(MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_ADAPTIVE, downtimeLimitMs: 300, maxDowntimeMs: 2000 }), 512 * MiB) as AdaptivePolicy;
  // One pass-2 boundary of 48 MiB at 720 Mbit/s, r 0.5, the dirty set read as 40–46 MiB within 100 ms.
  const window: AdaptiveReading[] = [44, 40, 46].map((set, i) => ({ t: 1000 + 200 * i, pass: 2, dirty: 43 * MiB, bw, backlogMs: (48 * MiB * 1000) / bw, estimate: 0, setBytes: set * MiB, setWindowMs: 100 }));
  const boundaries: [number, number][] = [[2, 48 * MiB]];
  it('the window\'s median set: the backlog holds at the set', () => {
    const p = policy.predict(window, 300, boundaries);
    expect(p.plateau?.rewrittenWithin).toEqual({ bytes: 44 * MiB, windowMs: 100 });
    expect(policy.predict(window, 300, boundaries, {})).toEqual(p);
  });
  it('a set given overrides the window\'s (the favourable reading\'s smallest)', () => {
    expect(policy.predict(window, 300, boundaries, { set: { bytes: 40 * MiB, windowMs: 100 } }).plateau?.rewrittenWithin).toEqual({ bytes: 40 * MiB, windowMs: 100 });
    // Under 60 % of the backlog: no bound, pre-copy predicted to converge as r says.
    const small = policy.predict(window, 300, boundaries, { set: { bytes: 10 * MiB, windowMs: 100 } });
    expect(small.plateau).toBeUndefined();
    expect(small.workingSetMs).toBeUndefined();
  });
  it('the prior and the estimate: a post-copy run\'s boundary taken only with an estimate that covers it', () => {
    const noSet = window.map(({ setBytes: _s, setWindowMs: _w, ...r }) => r);
    const prior = { bytes: 46 * MiB, runs: 1, firstBoundaryOnly: true as const };
    expect(policy.predict(noSet, 300, boundaries, { prior }).plateau).toBeUndefined();
    expect(policy.predict(noSet, 300, boundaries, { prior, estimateBytesPerSec: 40 * MiB }).plateau?.confirmedByEstimate).toBe(40 * MiB);
    const withEstimate = noSet.map((r) => ({ ...r, estimate: 40 * MiB }));
    expect(policy.predict(withEstimate, 300, boundaries, { prior }).plateau?.confirmedByEstimate).toBe(40 * MiB);
  });
});

describe('replayTimeline', () => {
  const at = (ms: number): Date => new Date(1_800_000_000_000 + ms);
  const progress = [ProgressSample.fromPartial({ time: at(30), elapsedMs: 1 }), ProgressSample.fromPartial({ time: at(10), elapsedMs: 2 }), ProgressSample.fromPartial({ time: at(20), elapsedMs: 3 })];
  const guest = [GuestPerfSample.fromPartial({ time: at(20), guestMonoMs: 1 }), GuestPerfSample.fromPartial({ guestMonoMs: 2 })];
  const transitions = [{ time: at(20), to: MigrationState.MIGRATION_STATE_PRECOPY }];
  const actions = [{ time: at(20), kind: PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME }];
  const timeline = { progress, guest, transitions, actions };
  const folds = {
    progress: (s: string[], p: ProgressSample) => [...s, `p${p.elapsedMs}`],
    guest: (s: string[], g: GuestPerfSample) => [...s, `g${g.guestMonoMs}`],
    transition: (s: string[], _to: MigrationState, atMs: number) => [...s, `t@${atMs - 1_800_000_000_000}`],
    action: (s: string[], _kind: PolicyActionKind, atMs: number) => [...s, `a@${atMs - 1_800_000_000_000}`],
  };
  it('in the order of host times (none: 0, first); equal times progress, guest, transitions, actions, each as stored', () => {
    expect(replayTimeline<string[]>([], timeline, folds)).toEqual(['g2', 'p2', 'p3', 'g1', 't@20', 'a@20', 'p1']);
  });
  it('a kind without a fold is left out', () => {
    expect(replayTimeline<string[]>([], timeline, { progress: folds.progress, transition: folds.transition })).toEqual(['p2', 'p3', 't@20', 'p1']);
  });
  it("'merge': progress alone keeps its stored order; merged with another kind, sorted", () => {
    expect(replayTimeline<string[]>([], timeline, { progress: folds.progress }, 'merge')).toEqual(['p1', 'p2', 'p3']);
    expect(replayTimeline<string[]>([], timeline, { progress: folds.progress }, 'time')).toEqual(['p2', 'p3', 'p1']);
    expect(replayTimeline<string[]>([], { ...timeline, guest: [] }, { progress: folds.progress, guest: folds.guest }, 'merge')).toEqual(['p1', 'p2', 'p3']);
    expect(replayTimeline<string[]>([], timeline, { progress: folds.progress, guest: folds.guest }, 'merge')).toEqual(['g2', 'p2', 'p3', 'g1', 'p1']);
  });
});
