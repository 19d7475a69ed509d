import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { MigrationPolicy, PolicyKind, ProgressSample } from '../../../services/shared/gen/migd/v1/common.js';
import {
  type AdaptivePolicy,
  type AdaptiveState,
  BLEND_PRIOR_SAMPLES,
  type CostModel,
  DEFAULT_COST_MODEL,
  type GuestTally,
  MIN_PACE_SAMPLES,
  PRIOR_WEIGHT,
  type RunCostFigures,
  blendedCostModel,
  enterPhase,
  initialGuestTally,
  measuredPrecopyHarm,
  phaseLostMs,
  policyFor,
  priorFromHistory,
  runCostFigures,
  tallyGuestSample,
  workingSetFromHistory,
} from '../../../services/coordinator/domain/policy/index.js';
import { guestTimeLost } from '../../../services/shared/guest/harm.js';
import { MiB } from '../../../services/coordinator/domain/units.js';
import { loadGuestTrace, loadTrace, replay, replayWithGuest, summary } from './traces.js';

const T0 = 1_800_000_000_000;
type S = { hostMs: number; guestMonoMs: number; msPerGib: number };

/** A guest that writes one pace line every 100 ms of its own clock. */
function guestLines(o: { fromHost: number; fromGuest: number; count: number; pace: number; hostStepMs?: number }): S[] {
  const step = o.hostStepMs ?? 100;
  return Array.from({ length: o.count }, (_, i) => ({ hostMs: o.fromHost + (i + 1) * step, guestMonoMs: o.fromGuest + (i + 1) * 100, msPerGib: o.pace }));
}

function fold(t: GuestTally, samples: readonly S[]): GuestTally {
  return samples.reduce(tallyGuestSample, t);
}

describe('measured costs: the guest tally (pure)', () => {
  // 1 s before at 1000 ms/GiB, 2 s of pre-copy at 2000 ms/GiB (half speed), a 400 ms stop at the
  // switch (the guest clock stands still), 1 s of post-copy at 4000 ms/GiB, then 1 s after arrival.
  const before = guestLines({ fromHost: T0, fromGuest: 0, count: 10, pace: 1000 });
  const pre = guestLines({ fromHost: T0 + 1000, fromGuest: 1000, count: 20, pace: 2000 });
  const stop = [{ hostMs: T0 + 3000 + 500, guestMonoMs: 3100, msPerGib: 4000 }];
  const post = guestLines({ fromHost: T0 + 3500, fromGuest: 3100, count: 9, pace: 4000 });
  const after = guestLines({ fromHost: T0 + 4400, fromGuest: 4000, count: 10, pace: 1000 });
  const all = [...before, ...pre, ...stop, ...post, ...after];
  const precopyAt = T0 + 1000;
  const switchAt = T0 + 3000;
  const arrivedAt = T0 + 4400;

  function run(samples: readonly S[]): GuestTally {
    let t = initialGuestTally();
    for (const s of samples) {
      if (s.hostMs > precopyAt) t = enterPhase(t, 'precopy', precopyAt);
      if (s.hostMs > switchAt) t = enterPhase(t, 'postcopy', switchAt, 1500);
      if (s.hostMs > arrivedAt) t = enterPhase(t, 'after', arrivedAt);
      t = tallyGuestSample(t, s);
    }
    return t;
  }

  it('measures h as half speed over pre-copy, and the stop in full in post-copy', () => {
    const t = run(all);
    expect(t.baselineMsPerGib).toBe(1000);
    const h = measuredPrecopyHarm(t)!;
    expect(h.samples).toBe(20);
    expect(h.rate).toBeCloseTo(0.5, 3);
    // Post-copy: 400 ms stopped + 3/4 of the 1000 guest ms it ran (its first line's 100 ms included).
    expect(t.postcopy.stoppedMs).toBeCloseTo(400, 6);
    expect(phaseLostMs(t.postcopy)).toBeCloseTo(400 + 0.75 * 1000, 6);
    expect(runCostFigures(t)).toEqual({ precopyHarmRate: h.rate, precopyMs: 2000, postcopyLostMs: phaseLostMs(t.postcopy), postcopyBacklogMs: 1500 });
  });

  it('agrees with harm.ts over the same windows (the definition the lab reports)', () => {
    const t = run(all);
    const pre = guestTimeLost(all, 1000, precopyAt, switchAt);
    const pc = guestTimeLost(all, 1000, switchAt, arrivedAt);
    expect(phaseLostMs(t.precopy)).toBeCloseTo(pre.lostMs, 6);
    expect(phaseLostMs(t.postcopy)).toBeCloseTo(pc.lostMs, 6);
  });

  it('a guest line with no new clock or pace is dropped; a worker line then the whole-guest line of the same moment counts once', () => {
    const t = run(all);
    const dup = all.flatMap((s) => [{ ...s, msPerGib: 0 }, s, s]);
    const u = run(dup);
    expect(u.precopy).toEqual(t.precopy);
    expect(u.postcopy).toEqual(t.postcopy);
  });

  it('has no h without a baseline (no pace before pre-copy) or without pace (heartbeats only)', () => {
    const noBaseline = run(all.filter((s) => s.hostMs > precopyAt));
    expect(measuredPrecopyHarm(noBaseline)).toBeUndefined();
    const heartbeats = run(all.map((s) => ({ ...s, msPerGib: 0 })));
    expect(measuredPrecopyHarm(heartbeats)).toBeUndefined();
    expect(runCostFigures(heartbeats)).toEqual({});
  });

  it('is plain data: a JSON round trip in the middle changes nothing', () => {
    const half = run(all.slice(0, 25));
    const resumed = fold(JSON.parse(JSON.stringify(half)) as GuestTally, []);
    let a = half;
    let b = resumed;
    for (const s of all.slice(25)) {
      for (const [ph, at] of [['postcopy', switchAt], ['after', arrivedAt]] as const) {
        if (s.hostMs > at) {
          a = enterPhase(a, ph, at, 1500);
          b = enterPhase(b, ph, at, 1500);
        }
      }
      a = tallyGuestSample(a, s);
      b = tallyGuestSample(b, s);
    }
    expect(b).toEqual(a);
  });
});

describe('measured costs: blending this run with the prior (pure)', () => {
  const tallyWith = (n: number, pace: number): GuestTally => {
    let t = fold(initialGuestTally(), guestLines({ fromHost: T0, fromGuest: 0, count: 5, pace: 1000 }));
    t = enterPhase(t, 'precopy', T0 + 500);
    return fold(t, guestLines({ fromHost: T0 + 500, fromGuest: 500, count: n, pace }));
  };

  it('keeps the prior below the minimum sample count', () => {
    const t = tallyWith(MIN_PACE_SAMPLES - 1, 4000);
    expect(measuredPrecopyHarm(t)?.samples).toBe(MIN_PACE_SAMPLES - 1);
    expect(blendedCostModel(DEFAULT_COST_MODEL, t).model).toBe(DEFAULT_COST_MODEL);
    expect(blendedCostModel(DEFAULT_COST_MODEL, undefined).model).toBe(DEFAULT_COST_MODEL);
  });

  it('weighs this run by its pace samples against the prior\'s weight', () => {
    const t = tallyWith(40, 4000); // quarter speed: h = 0.75 (the first line's 100 ms straddles the start)
    const m = measuredPrecopyHarm(t)!;
    expect(m.rate).toBeCloseTo(0.75, 2);
    const { model, measured } = blendedCostModel({ ...DEFAULT_COST_MODEL, precopyHarmRate: 0.2 }, t);
    expect(measured).toEqual(m);
    expect(model.precopyHarmRate).toBeCloseTo((BLEND_PRIOR_SAMPLES * 0.2 + 40 * m.rate) / (BLEND_PRIOR_SAMPLES + 40), 9);
    expect(model.postcopyFixedMs).toBe(DEFAULT_COST_MODEL.postcopyFixedMs);
    // A guest that runs at its own pace during pre-copy is harmed by nothing: h falls towards 0.
    expect(blendedCostModel(DEFAULT_COST_MODEL, tallyWith(200, 1000)).model.precopyHarmRate).toBeCloseTo((BLEND_PRIOR_SAMPLES * DEFAULT_COST_MODEL.precopyHarmRate) / (BLEND_PRIOR_SAMPLES + 200), 9);
  });
});

describe('measured costs: the prior from the VM\'s earlier runs (pure)', () => {
  const shrunk = (fit: number, n: number, prior: number) => (n * fit + PRIOR_WEIGHT * prior) / (n + PRIOR_WEIGHT);

  it('is the default without usable runs', () => {
    expect(priorFromHistory([]).model).toBe(DEFAULT_COST_MODEL);
    expect(priorFromHistory([{}, { precopyHarmRate: Number.NaN }])).toEqual({ model: DEFAULT_COST_MODEL, precopyRuns: 0, postcopyRuns: 0, raiseRuns: 0 });
  });

  it('h: the median of the runs, shrunk towards the default', () => {
    const p = priorFromHistory([{ precopyHarmRate: 0.2 }, { precopyHarmRate: 0.3 }, { precopyHarmRate: 0.9 }]);
    expect(p.precopyRuns).toBe(3);
    expect(p.model.precopyHarmRate).toBeCloseTo(shrunk(0.3, 3, DEFAULT_COST_MODEL.precopyHarmRate), 9);
    expect(p.model.postcopyFixedMs).toBe(DEFAULT_COST_MODEL.postcopyFixedMs);
  });

  it('c from fewer than three post-copy runs: the median of lost − s·b with the default s', () => {
    const runs: RunCostFigures[] = [
      { postcopyLostMs: 600, postcopyBacklogMs: 400 },
      { postcopyLostMs: 1000, postcopyBacklogMs: 1000 },
    ];
    const { postcopyFixedMs: c0, postcopyHarmRate: s0 } = DEFAULT_COST_MODEL;
    const c = (600 - s0 * 400 + (1000 - s0 * 1000)) / 2;
    expect(c).toBeGreaterThan(0);
    const p = priorFromHistory(runs);
    expect(p.postcopyRuns).toBe(2);
    expect(p.model.postcopyFixedMs).toBeCloseTo(shrunk(c, 2, c0), 9);
    expect(p.model.postcopyHarmRate).toBeCloseTo(s0, 9);
  });

  it('c and s by least squares once three runs spread their backlogs over a second', () => {
    const line = (b: number) => ({ postcopyBacklogMs: b, postcopyLostMs: 300 + 0.5 * b });
    const { postcopyFixedMs: c0, postcopyHarmRate: s0 } = DEFAULT_COST_MODEL;
    const p = priorFromHistory([line(500), line(1500), line(3000)]);
    expect(p.model.postcopyFixedMs).toBeCloseTo(shrunk(300, 3, c0), 6);
    expect(p.model.postcopyHarmRate).toBeCloseTo(shrunk(0.5, 3, s0), 9);
    // A negative slope (noise) is not believed: s stays the default, c from the residuals…
    const noisy = priorFromHistory([{ postcopyBacklogMs: 500, postcopyLostMs: 2500 }, { postcopyBacklogMs: 3000, postcopyLostMs: 2300 }, { postcopyBacklogMs: 1500, postcopyLostMs: 2000 }]);
    expect(noisy.model.postcopyHarmRate).toBeCloseTo(s0, 9);
    expect(noisy.model.postcopyFixedMs).toBeCloseTo(shrunk(2000 - s0 * 1500, 3, c0), 9);
    // …unless their median is below 0 (the runs lost less than s·b alone): then c 0 and s the runs' median lost ÷ b.
    // (lost − s·b: 550 − 0.695 × 500 > 0, 200 − 0.695 × 3000 < 0, 1000 − 0.695 × 1500 < 0.)
    const low = priorFromHistory([line(500), { postcopyBacklogMs: 3000, postcopyLostMs: 200 }, { postcopyBacklogMs: 1500, postcopyLostMs: 1000 }]);
    expect(low.model.postcopyHarmRate).toBeCloseTo(shrunk(1000 / 1500, 3, s0), 9);
    expect(low.model.postcopyFixedMs).toBeCloseTo(shrunk(0, 3, c0), 9);
  });
});

/** The hot-small runs' figures (test/fixtures/costs/hot-small-720.json, from their stored timelines). */
function hotSmallHistory(filter: (run: string) => boolean = () => true): RunCostFigures[] {
  const raw = JSON.parse(readFileSync(new URL('../../fixtures/costs/hot-small-720.json', import.meta.url), 'utf8')) as { runs: (RunCostFigures & { run: string })[] };
  return raw.runs.filter((r) => filter(r.run));
}

const adaptive = (costs: CostModel = DEFAULT_COST_MODEL): AdaptivePolicy =>
  policyFor(MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_ADAPTIVE }), 512 * MiB, { adaptiveTuning: { costs } }) as AdaptivePolicy;

describe('adaptive policy with the VM\'s measured costs (recorded lab fixtures)', () => {
  const v3 = hotSmallHistory((r) => r.includes('-v3 '));

  it('the fixture\'s figures: a hot-small post-copy costs the guest far less than the fitted c says', () => {
    const p = priorFromHistory(hotSmallHistory());
    expect(p.precopyRuns).toBe(10);
    expect(p.postcopyRuns).toBe(5);
    // Measured c ≈ 0.3–0.5 s against the previous default's 1.07 s; h below its 0.74.
    expect(p.model.postcopyFixedMs).toBeLessThan(700);
    expect(p.model.precopyHarmRate).toBeLessThan(0.74);
  });

  /** The cost comparison at every verdict of a replay: [elapsed, pass, nothing, raise, post-copy] (ms of guest time). */
  function verdicts(policy: AdaptivePolicy, trace: readonly ProgressSample[], prepare: (s: AdaptiveState) => AdaptiveState): { at: [number, number, number, number, number][]; actions: ReturnType<typeof summary> } {
    let st = prepare(policy.initialState());
    const at: [number, number, number, number, number][] = [];
    for (const s of trace) {
      const d = policy.decide(st, s, s.elapsedMs);
      const a = d.state.assessment;
      if (a && a !== st.assessment) {
        const p = { ...policy.predict(st.window.length > 0 ? [...st.window] : [], a.limitMs), backlogMs: a.backlogMs, ratio: a.ratio, limitMs: a.limitMs, needMs: a.needMs, convergesSoon: a.convergesSoon, ...(a.workingSetMs !== undefined ? { workingSetMs: a.workingSetMs } : {}) };
        const c = policy.costs(p, a.early, a.target, true, a.model);
        at.push([s.elapsedMs, s.pass, c.nothing?.harmMs ?? Infinity, c.raise?.harmMs ?? Infinity, c.postcopy?.harmMs ?? Infinity]);
      }
      st = d.state;
      if (d.actions.length > 0) return { at, actions: summary(d.actions) };
    }
    return { at, actions: [] };
  }

  // What the numbers showed (docs/lab/policies-720-v6-online): on these recorded timelines the
  // measured costs alone did not move the first verdict to post-copy. QEMU's dirty rate reads low in
  // the early passes (r 0.52 and 0.68 at the first verdict, pass 3), so "nothing" was predicted to
  // converge within a few passes and to cost 0.4–0.7 s, below post-copy's measured ≈1.1 s; only at
  // pass 7 did post-copy win. The error was the predicted number of passes: the backlog found at
  // the boundaries holds at the hot set (adaptive.ts, "Saturation"). With the working-set bound,
  // "nothing" never converges at 300 ms, and the measured costs rank post-copy first (a: 0.82 s
  // against the raise to 950 ms at 1.0 s; b: 0.75 against 1.2 s) as soon as a boundary shows it:
  // pass 3 in a, pass 5 in b (its pass-3 boundary is within the readings' noise).
  for (const [name, verdictAt, pass] of [
    ['lab-hot-small-720-v3-a', 11_904, 3],
    ['lab-hot-small-720-v3-b', 7_438, 5],
  ] as const) {
    it(`${name}: with the hot-small runs' measured costs as the prior, post-copy at pass ${pass} (was 7), once the backlog holds at the working set`, () => {
      const trace = loadTrace(name);
      const policy = adaptive();
      const { at, actions } = verdicts(policy, trace, (s) => policy.withHistory(s, v3));
      const last = at[at.length - 1]!;
      expect(last[0]).toBe(verdictAt);
      const [, p, nothing, raise, postcopy] = last;
      expect(p).toBe(pass);
      expect(nothing).toBe(Infinity);
      expect(postcopy).toBeLessThanOrEqual(raise * 1.05);
      expect(actions).toEqual([[verdictAt, 'START_POSTCOPY', 0]]);
      expect(trace.find((s) => s.elapsedMs === verdictAt)?.pass).toBe(pass);
      // The measured c (≈0.35 s after shrinking towards the default's 156 ms) is what post-copy is charged.
      const { actions: full } = replayWithGuest(policy, trace, undefined, (s) => policy.withHistory(s as AdaptiveState, v3));
      expect(full[0]!.reason).toContain('prior from 4 earlier runs of the VM');
      expect(full[0]!.reason).toMatch(/c 349 ms/);
      expect(full[0]!.reason).toContain('the backlog holds at a working set');
    });
  }

  it('lab-hot-small-300: post-copy at the first boundary (r ≥ 1) with the measured prior as with the fitted one', () => {
    const trace = loadTrace('lab-hot-small-300');
    const policy = adaptive();
    const { actions } = replayWithGuest(policy, trace, undefined, (s) => policy.withHistory(s as AdaptiveState, hotSmallHistory()));
    expect(summary(actions)).toEqual([[12_125, 'START_POSTCOPY', 0]]);
    expect(trace.find((s) => s.elapsedMs === 12_125)?.pass).toBe(2);
  });

  it('lab-hot-small-720 (v2): with the measured (lower) h, waiting is predicted cheapest and nothing is done', () => {
    const trace = loadTrace('lab-hot-small-720');
    const policy = adaptive();
    const { at, actions } = verdicts(policy, trace, (s) => policy.withHistory(s, hotSmallHistory()));
    expect(actions).toEqual([]);
    expect(at.length).toBeGreaterThan(0);
    for (const [, , nothing, raise, postcopy] of at) expect(nothing).toBeLessThanOrEqual(Math.min(raise, postcopy));
  });

  it('a converging migration is still left alone with the cheap measured post-copy', () => {
    const policy = adaptive();
    const prior = (s: unknown) => policy.withHistory(s as AdaptiveState, hotSmallHistory());
    expect(replayWithGuest(policy, loadTrace('converging'), undefined, prior).actions).toEqual([]);
    // Even with post-copy free of any fixed cost.
    expect(replay(adaptive({ ...DEFAULT_COST_MODEL, postcopyFixedMs: 0 }), loadTrace('converging')).actions).toEqual([]);
  });

  it('an idle guest (pre-copy converges in its second pass) is left alone with the cheap measured post-copy', () => {
    // 2 GiB at 34 MiB/s, 0.5 MiB/s dirtied: pass 1 ends at 60 s; pass 2 finds ≈30 MiB (≈0.9 s).
    const samples: ProgressSample[] = [];
    const total = 2048 * MiB;
    for (let t = 1000; t <= 62_000; t += 1000) {
      const pass = t <= 60_000 ? 1 : 2;
      const remaining = pass === 1 ? total - (t / 1000) * 34 * MiB : Math.max(0, 30 * MiB - ((t - 60_000) / 1000) * 34 * MiB);
      samples.push(
        ProgressSample.fromPartial({
          elapsedMs: t,
          time: new Date(T0 + t),
          state: 3,
          qemuStatus: 'active',
          pass,
          remainingBytes: remaining,
          totalBytes: total,
          throughputMbps: (34 * MiB * 8) / 1e6,
          dirtyPagesRate: pass === 1 ? 0 : (0.5 * MiB) / 4096,
          pageSize: 4096,
          downtimeLimitMs: 300,
          expectedDowntimeMs: pass === 1 ? 300 : (((30 * MiB) / (34 * MiB)) * 1000) | 0,
          estimatedDirtyBytesPerSec: 0.5 * MiB,
        }),
      );
    }
    const policy = policyFor(MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_ADAPTIVE }), 2048 * MiB) as AdaptivePolicy;
    const prior = (s: unknown) => policy.withHistory(s as AdaptiveState, [...hotSmallHistory(), { postcopyLostMs: 0, postcopyBacklogMs: 1000 }]);
    expect(replayWithGuest(policy, samples, undefined, prior).actions).toEqual([]);
  });
});

describe('adaptive policy measuring h within the run (recorded guest samples)', () => {
  const trace = loadTrace('lab-hot-small-720-v3-a');
  const guest = loadGuestTrace('lab-hot-small-720-v3-a');

  it('measures this run\'s pre-copy harm from the guest\'s pace and ranks the steps with it', () => {
    const policy = adaptive();
    const { actions, state, stateAtFirstAction } = replayWithGuest(policy, trace, guest);
    expect(actions.length).toBeGreaterThan(0);
    const at = (stateAtFirstAction as AdaptiveState).assessment!;
    expect(at.measuredHarm?.samples).toBeGreaterThanOrEqual(MIN_PACE_SAMPLES);
    // The run's own h (≈0.35: the guest ran at ≈2/3 of its pace before) pulls the fitted 0.064 up.
    expect(at.measuredHarm!.rate).toBeGreaterThan(0.2);
    expect(at.measuredHarm!.rate).toBeLessThan(0.5);
    expect(at.model!.precopyHarmRate).toBeGreaterThan(DEFAULT_COST_MODEL.precopyHarmRate);
    expect(at.model!.precopyHarmRate).toBeLessThan(at.measuredHarm!.rate);
    expect(actions[0]!.reason).toContain('guest pace samples');
    // Its figures at the end are the fixture's (the same estimator over the same timeline).
    const mine = hotSmallHistory((r) => r.endsWith('lab-pol-v3-hot-small-adaptive-0'))[0]!;
    const f = policy.costFigures(state as AdaptiveState)!;
    expect(f.precopyHarmRate).toBeCloseTo(mine.precopyHarmRate!, 3);
    expect(f.precopyMs).toBeCloseTo(mine.precopyMs!, 0);
    expect(f.postcopyLostMs).toBeUndefined(); // it switched over without post-copy
  });

  it('without a guest pace feed it keeps the prior (no tally, the same steps as before)', () => {
    const policy = adaptive();
    const { actions, state } = replayWithGuest(policy, trace, { transitions: guest.transitions, guest: [] });
    expect((state as AdaptiveState).guest).toBeUndefined();
    // No harm figures without the pace feed; only the working set its boundaries showed (adaptive.ts "Saturation").
    const ws = (state as AdaptiveState).workingSetBytes;
    expect(ws).toBeGreaterThan(40 * MiB);
    expect(policy.costFigures(state as AdaptiveState)).toEqual({ workingSetBytes: ws });
    expect(summary(actions)).toEqual(summary(replay(adaptive(), trace).actions));
  });
});

describe('the working set from the VM\'s history (adaptive.ts "Saturation")', () => {
  const policy = (): AdaptivePolicy => policyFor(MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_ADAPTIVE }), 512 * MiB) as AdaptivePolicy;
  /** Replays a trace and returns the first action, its pass, and the figures the run leaves for the next. */
  function firstAction(name: string, history: RunCostFigures[] = []): { action: ReturnType<typeof summary>[number] | undefined; pass: number | undefined; figures: RunCostFigures | undefined } {
    const p = policy();
    let st = p.withHistory(p.initialState(), history);
    let first: { action: ReturnType<typeof summary>[number]; pass: number } | undefined;
    for (const s of loadTrace(name)) {
      const d = p.decide(st, s, s.elapsedMs);
      st = d.state;
      if (d.actions.length > 0 && !first) first = { action: summary(d.actions)[0]!, pass: s.pass };
    }
    return { action: first?.action, pass: first?.pass, figures: p.costFigures(st) };
  }

  it('workingSetFromHistory: the median of the runs that saw a bound', () => {
    expect(workingSetFromHistory([{ workingSetBytes: 40 * MiB }, { precopyHarmRate: 0.5 }, { workingSetBytes: 60 * MiB }, { workingSetBytes: 50 * MiB }])).toEqual({ bytes: 50 * MiB, runs: 3 });
    expect(workingSetFromHistory([{ precopyHarmRate: 0.5 }, { workingSetBytes: Number.NaN }])).toBeUndefined();
  });

  it('a hot-small run leaves its W; the VM\'s next run recognises it at its first boundary and acts in pass 2 instead of 3 or 5', () => {
    const a = firstAction('lab-hot-small-720-v3-a');
    const b = firstAction('lab-hot-small-720-v3-b');
    expect(a.pass).toBe(3);
    expect(b.pass).toBe(5);
    const wa = a.figures?.workingSetBytes;
    const wb = b.figures?.workingSetBytes;
    expect(wa! / MiB).toBeCloseTo(59.5, 0);
    expect(wb! / MiB).toBeCloseTo(51.9, 0);
    // b after a, a after b: each the other's earlier run of the same VM (same guest, same workload).
    const bAfterA = firstAction('lab-hot-small-720-v3-b', [{ workingSetBytes: wa }]);
    const aAfterB = firstAction('lab-hot-small-720-v3-a', [{ workingSetBytes: wb }]);
    expect(bAfterA.pass).toBe(2);
    expect(aAfterB.pass).toBe(2);
    for (const r of [bAfterA, aAfterB]) expect(['SET_DOWNTIME', 'START_POSTCOPY']).toContain(r.action?.[1]);
    const p = policy();
    const reason = replayWithGuest(p, loadTrace('lab-hot-small-720-v3-b'), undefined, (s) => p.withHistory(s as AdaptiveState, [{ workingSetBytes: wa }])).actions[0]?.reason;
    expect(reason).toContain('the backlog holds at the working set this VM\'s earlier runs found');
  });

  it('a W from history that the first boundary does not match changes nothing: converging, heavy and hot-small at 300 Mbit/s keep their steps', () => {
    const w = { workingSetBytes: 48 * MiB };
    // converging: 87 MiB at pass 2, more than W ÷ 0.6 — another set; its backlog then shrinks.
    expect(firstAction('converging', [w]).action).toBeUndefined();
    expect(firstAction('lab-heavy-720', [w])).toMatchObject({ action: firstAction('lab-heavy-720').action, pass: 2 });
    expect(firstAction('lab-hot-small-300', [w])).toMatchObject({ action: firstAction('lab-hot-small-300').action, pass: 2 });
  });
});
