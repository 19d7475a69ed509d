import { describe, expect, it } from 'vitest';
import { policyFor } from '../../../services/coordinator/domain/policy/index.js';
import { PolicyKind, WorkloadPattern } from '../../../services/shared/gen/migd/v1/common.js';
import {
  COMPARISONS,
  MiB,
  SEED_001,
  SEED_001_SCALE,
  SEED_002_SCALE,
  SMOKE,
  allScenarios,
  requiredGuestBytes,
  resolveTarget,
  scaleFor,
  scaledBytes,
  scaledLinkMbit,
  scaledMs,
  scenarioProblems,
} from '../../../stress/lab/scenarios.js';

describe('scenario table', () => {
  const all = allScenarios();

  it('has unique scenario and comparison names', () => {
    const names = COMPARISONS.flatMap((c) => c.scenarios.map((s) => s.name));
    // A scenario may appear in several comparisons, but then it must be the same object.
    const byName = new Map<string, unknown>();
    for (const c of COMPARISONS) for (const s of c.scenarios) {
      if (byName.has(s.name)) expect(byName.get(s.name)).toBe(s);
      byName.set(s.name, s);
    }
    expect(names.length).toBeGreaterThanOrEqual(all.length);
    expect(new Set(COMPARISONS.map((c) => c.name)).size).toBe(COMPARISONS.length);
  });

  it.each(all.map((s) => [s.name, s] as const))('%s: structurally valid, and its policy passes policyFor', (_n, s) => {
    expect(scenarioProblems(s)).toEqual([]);
    expect(() => policyFor(s.policy, s.guest.memoryMib * MiB)).not.toThrow();
    expect(requiredGuestBytes(s)).toBeLessThanOrEqual(s.guest.memoryMib * MiB);
  });

  it('quick subsets name scenarios of their comparison and run them once', () => {
    for (const c of COMPARISONS) {
      const names = new Set(c.scenarios.map((s) => s.name));
      for (const q of c.quick ?? []) expect(names.has(q), `${c.name}: quick names unknown ${q}`).toBe(true);
      const quick = resolveTarget(c.name, { quick: true })!;
      expect(quick.scenarios.length).toBe(c.quick?.length ?? c.scenarios.length);
      expect(quick.scenarios.every((s) => s.repetitions === 1)).toBe(true);
    }
  });

  it('the repeat comparison migrates one VM per strategy several times; a LOCAL disk cannot go with it', () => {
    const c = resolveTarget('policies-720-repeat')!;
    expect(c.scenarios.map((s) => [s.label, s.repetitions, s.sameVm, s.link.rateMbit])).toEqual([
      ['migd adaptive', 5, true, 720],
      ['post-copy after 1 pass', 5, true, 720],
    ]);
    const disk = allScenarios().find((s) => s.disk)!;
    expect(scenarioProblems({ ...disk, sameVm: true })).toEqual([`${disk.name}: sameVm does not go with a LOCAL disk (it is created on the first source only)`]);
  });

  it('the learn comparison: a control VM under adaptive, and another VM under post-copy twice then adaptive (it continues that VM)', () => {
    const c = resolveTarget('policies-720-learn')!;
    expect(c.scenarios.map((s) => [s.label, s.repetitions, s.sameVm, s.continues, s.policy.kind])).toEqual([
      ['migd adaptive (own runs as history)', 4, true, undefined, PolicyKind.POLICY_KIND_ADAPTIVE],
      ["post-copy after 1 pass (the VM's first 2 runs)", 2, true, undefined, PolicyKind.POLICY_KIND_FIXED],
      ['migd adaptive after 2 post-copy runs', 4, true, c.scenarios[1]!.name, PolicyKind.POLICY_KIND_ADAPTIVE],
    ]);
    expect(c.scenarios.every((s) => scenarioProblems(s).length === 0)).toBe(true);
    expect(scenarioProblems({ ...c.scenarios[2]!, sameVm: false })).toEqual([`${c.scenarios[2]!.name}: continues another scenario's VM only with sameVm`]);
  });

  it('a scenario that continues another VM comes right after that scenario, in every comparison', () => {
    for (const c of COMPARISONS) {
      c.scenarios.forEach((s, i) => {
        if (s.continues !== undefined) expect(c.scenarios[i - 1]?.name, `${c.name}: ${s.name}`).toBe(s.continues);
      });
    }
  });

  it('resolves a single scenario name to a one-scenario comparison', () => {
    const t = resolveTarget('s001-05-pc-after-1');
    expect(t?.scenarios.map((s) => s.name)).toEqual(['s001-05-pc-after-1']);
    expect(resolveTarget('no-such-thing')).toBeUndefined();
  });

  it('overrides the repetitions of every scenario on request, and refuses a bad count', () => {
    const two = resolveTarget('policies', { repetitions: 2 })!;
    expect(two.scenarios.length).toBe(resolveTarget('policies')!.scenarios.length);
    expect(two.scenarios.every((s) => s.repetitions === 2)).toBe(true);
    expect(resolveTarget('seed-001')!.scenarios.every((s) => s.repetitions === 3)).toBe(true);
    expect(() => resolveTarget('policies', { repetitions: 0 })).toThrow(/whole number/);
    expect(() => resolveTarget('policies', { repetitions: 1.5 })).toThrow(/whole number/);
  });

  it('ships the eleven seed-001 scenarios with their strategies', () => {
    expect(SEED_001).toHaveLength(11);
    const ac = (n: number) => SEED_001[n - 1]!.policy.autoConverge;
    expect([ac(1), ac(2), ac(3)].map((a) => [a?.initialPct, a?.incrementPct])).toEqual([[20, 10], [30, 15], [50, 20]]);
    expect(SEED_001[3]!.policy.postcopy?.afterMs).toBe(scaledMs(60_000, SEED_001_SCALE));
    expect(SEED_001[3]!.policy.autoConverge?.enabled).toBe(true);
    expect(SEED_001[4]!.policy.postcopy).toMatchObject({ enabled: true, afterPasses: 1 });
    expect(SEED_001[5]!.policy.xbzrle?.enabled).toBe(true);
    expect(SEED_001.slice(0, 6).every((s) => s.workload.workers === 2)).toBe(true);
    expect(SEED_001.slice(6).every((s) => s.workload.workers === 3)).toBe(true);
    expect(SEED_001.slice(8).map((s) => s.policy.downtimeLimitMs)).toEqual([300, 1000, 5000].map((d) => scaledMs(d, SEED_001_SCALE)));
  });

  it('the policies comparison pits adaptive against every preset on the same workloads', () => {
    const c = COMPARISONS.find((x) => x.name === 'policies')!;
    const groups = new Set(c.scenarios.map((s) => s.group));
    // Seven workloads × three links (issue 14).
    expect(groups.size).toBe(21);
    expect(new Set(c.scenarios.map((s) => s.link.rateMbit))).toEqual(new Set([300, 720, 2000]));
    expect(c.scenarios.every((s) => s.repetitions >= 3)).toBe(true);
    for (const g of groups) {
      const kinds = new Set(c.scenarios.filter((s) => s.group === g).map((s) => s.policy.kind));
      for (const k of [PolicyKind.POLICY_KIND_ADAPTIVE, PolicyKind.POLICY_KIND_NOVA, PolicyKind.POLICY_KIND_OVIRT_MINIMAL_DOWNTIME, PolicyKind.POLICY_KIND_OVIRT_SUSPEND_WORKLOAD, PolicyKind.POLICY_KIND_OVIRT_POSTCOPY, PolicyKind.POLICY_KIND_KUBEVIRT, PolicyKind.POLICY_KIND_FIXED]) {
        expect(kinds.has(k), `${g} lacks ${PolicyKind[k]}`).toBe(true);
      }
      const ws = c.scenarios.filter((s) => s.group === g).map((s) => JSON.stringify([s.workload, s.link, s.guest]));
      expect(new Set(ws).size).toBe(1);
    }
  });

  it('the short sweep runs every workload at 720 Mbit/s under adaptive, post-copy after one pass and auto-converge', () => {
    const c = COMPARISONS.find((x) => x.name === 'policies-720')!;
    const groups = new Set(c.scenarios.map((s) => s.group));
    expect(groups.size).toBe(7);
    for (const g of groups) {
      const labels = new Set(c.scenarios.filter((s) => s.group === g).map((s) => s.label));
      for (const l of ['migd adaptive', 'post-copy after 1 pass', 'seed: auto-converge 20/10']) expect(labels.has(l), `${g} lacks ${l}`).toBe(true);
      const ws = c.scenarios.filter((s) => s.group === g).map((s) => JSON.stringify([s.workload, s.link, s.guest]));
      expect(new Set(ws).size).toBe(1);
    }
    expect(c.scenarios.every((s) => s.link.rateMbit === 720 && s.repetitions >= 3)).toBe(true);
    // The phase workload changes its rate mid-run; the idle one is a large guest.
    expect(c.scenarios.find((s) => s.name === 'pol-s-phase-adaptive')?.workload.phase).toEqual({ afterMs: 12_000, rateBytesPerSec: 0 });
    expect(c.scenarios.find((s) => s.name === 'pol-s-idle-adaptive')?.guest.memoryMib).toBe(1024);
  });

  it('the criterion comparison: every strategy carries the lab\'s scaled downtime limit T(300), adaptive as its starting limit', () => {
    const c = COMPARISONS.find((x) => x.name === 'policies-720-criterion')!;
    const t300 = scaledMs(300, SEED_001_SCALE);
    expect(t300).toBe(104);
    expect(c.scenarios).toHaveLength(28);
    for (const s of c.scenarios) {
      const p = policyFor(s.policy, s.guest.memoryMib * MiB);
      expect(p.effective.downtimeLimitMs, s.name).toBe(t300);
      expect(p.effective.kind === PolicyKind.POLICY_KIND_ADAPTIVE ? p.effective.maxDowntimeMs : t300, s.name).toBe(p.effective.kind === PolicyKind.POLICY_KIND_ADAPTIVE ? 2000 : t300);
    }
    const adaptive = policyFor(c.scenarios.find((s) => s.name === 'pol-crit-idle-adaptive')!.policy, 1024 * MiB);
    expect((adaptive as { initialState(): { downtimeMs: number } }).initialState().downtimeMs).toBe(t300);
    // The other comparisons keep their policies as recorded (QEMU's 300 ms for adaptive and post-copy after one pass).
    const short = COMPARISONS.find((x) => x.name === 'policies-720')!;
    expect(short.scenarios.find((s) => s.name === 'pol-s-idle-seed-pc')?.policy.downtimeLimitMs).toBe(300);
  });

  it('the front comparison: the criterion at 720 Mbit/s without auto-converge', () => {
    const crit = COMPARISONS.find((x) => x.name === 'policies-720-criterion')!;
    const c = COMPARISONS.find((x) => x.name === 'policies-720-front')!;
    expect(c.scenarios).toHaveLength(21);
    expect(c.scenarios.map((s) => s.label)).not.toContain(crit.scenarios.find((s) => s.name === 'pol-crit-idle-seed-ac')!.label);
    expect(new Set(c.scenarios.map((s) => s.name.replace(/^pol-crit-[a-z-]+?-(adaptive|seed-pc|multifd-zstd)$/, '$1')))).toEqual(new Set(['adaptive', 'seed-pc', 'multifd-zstd']));
    for (const s of c.scenarios) expect(crit.scenarios).toContainEqual(s);
  });

  it('the links comparison: the seven workloads at 300 and 2000 Mbit/s, three strategies, T(300), multifd zstd cut at 60 s', () => {
    const c = COMPARISONS.find((x) => x.name === 'policies-links')!;
    expect(c.scenarios).toHaveLength(42);
    expect(new Set(c.scenarios.map((s) => s.link.rateMbit))).toEqual(new Set([300, 2000]));
    expect(new Set(c.scenarios.map((s) => s.group)).size).toBe(14);
    for (const s of c.scenarios) {
      expect(s.policy.downtimeLimitMs, s.name).toBe(scaledMs(300, SEED_001_SCALE));
      expect(s.limits.migrationMs, s.name).toBe(s.name.endsWith('-multifd-zstd') ? 60_000 : 120_000);
    }
    expect(c.scenarios.find((s) => s.name === 'pol-l2000-idle-adaptive')?.guest.memoryMib).toBe(1024);
  });

  it("the criterion over three links: the seven workloads at 300, 720 and 2000 Mbit/s, three strategies, 3 repetitions, T(300), multifd zstd cut at 60 s", () => {
    const c = COMPARISONS.find((x) => x.name === 'policies-front')!;
    expect(c.scenarios).toHaveLength(63);
    expect(new Set(c.scenarios.map((s) => s.link.rateMbit))).toEqual(new Set([300, 720, 2000]));
    expect(new Set(c.scenarios.map((s) => s.group)).size).toBe(21);
    for (const s of c.scenarios) {
      expect(s.repetitions, s.name).toBe(3);
      expect(s.policy.downtimeLimitMs, s.name).toBe(scaledMs(300, SEED_001_SCALE));
      expect(s.limits.migrationMs, s.name).toBe(s.name.endsWith('-multifd-zstd') ? 60_000 : 120_000);
    }
    expect(new Set(c.scenarios.map((s) => s.name.replace(/^.*-(adaptive|seed-pc|multifd-zstd)$/, '$1')))).toEqual(new Set(['adaptive', 'seed-pc', 'multifd-zstd']));
    // The same runs as the links comparison at 300 and 2000, and as the 720 front at 720 (names aside).
    const links = COMPARISONS.find((x) => x.name === 'policies-links')!;
    const strip = (s: { name: string; repetitions: number }) => ({ ...s, name: s.name.replace(/^pol-[a-z]+\d*-/, ''), repetitions: 0 });
    for (const s of links.scenarios) expect(c.scenarios.map(strip)).toContainEqual(strip(s));
    expect(c.scenarios.find((s) => s.name === 'pol-f720-idle-adaptive')?.guest.memoryMib).toBe(1024);
  });

  it('comparisons vary one thing within a group', () => {
    for (const name of ['downtime', 'auto-converge-step', 'post-copy-iters', 'bandwidth']) {
      const c = COMPARISONS.find((x) => x.name === name)!;
      for (const g of new Set(c.scenarios.map((s) => s.group))) {
        const inGroup = c.scenarios.filter((s) => s.group === g);
        expect(new Set(inGroup.map((s) => JSON.stringify(s.guest))).size).toBe(1);
        expect(new Set(inGroup.map((s) => JSON.stringify(s.workload))).size).toBe(1);
        expect(new Set(inGroup.map((s) => s.label)).size).toBe(inGroup.length);
      }
    }
    const compr = COMPARISONS.find((x) => x.name === 'compression')!;
    expect(new Set(compr.scenarios.map((s) => s.workload.pattern))).toEqual(new Set([WorkloadPattern.WORKLOAD_PATTERN_RANDOM, WorkloadPattern.WORKLOAD_PATTERN_COMPRESSIBLE]));
  });

  it('smoke is tiny', () => {
    expect(SMOKE.guest.memoryMib).toBe(128);
    expect(SMOKE.workload.rateBytesPerSec).toBeGreaterThan(0);
    expect(SMOKE.repetitions).toBe(1);
  });
});

describe('scaling to this machine', () => {
  it('keeps dirty/link: the link shrinks with the dirty rate, time with memory over link', () => {
    const s = scaleFor({ theirMemoryMib: 2048, ourMemoryMib: 512, theirDirty: 2.5, ourDirty: 1.8 });
    expect(s.memory).toBe(0.25);
    expect(s.link).toBeCloseTo(0.72, 10);
    expect(s.time).toBeCloseTo(0.25 / 0.72, 10);
    expect(SEED_001_SCALE).toEqual(s);
    // 1 GbE → 720 Mbit/s; the seed's 60 s post-copy timeout → ~20.8 s; 512 MiB workers → 128 MiB.
    expect(scaledLinkMbit(1000, SEED_001_SCALE)).toBe(720);
    expect(scaledMs(60_000, SEED_001_SCALE)).toBe(20_833);
    expect(scaledBytes(512 * MiB, SEED_001_SCALE)).toBe(128 * MiB);
    for (const sc of SEED_001) expect(sc.link.rateMbit).toBe(720);
  });

  it('dirty/link of the scaled seed equals the seed\'s', () => {
    const seedRatio = 2.5 / (1000 / 8 / 1024); // GiB/s over GiB/s of 1 Gbit
    const ourRatio = 1.8 / (scaledLinkMbit(1000, SEED_001_SCALE) / 8 / 1024);
    expect(ourRatio / seedRatio).toBeCloseTo(1, 2);
  });

  it('scales guestperf (seed 002): 512 MiB for 1 GiB, 5 GiB/s dirty → 1.8', () => {
    expect(SEED_002_SCALE.memory).toBe(0.5);
    expect(SEED_002_SCALE.link).toBeCloseTo(0.36, 10);
    expect([100, 300, 1000, 10_000].map((m) => scaledLinkMbit(m, SEED_002_SCALE))).toEqual([36, 108, 360, 3600]);
  });

  it('rounds bytes down to whole MiB and never below 1 MiB', () => {
    expect(scaledBytes(3 * MiB, { memory: 0.5, link: 1, time: 0.5 })).toBe(MiB);
    expect(scaledBytes(1000, { memory: 0.5, link: 1, time: 0.5 })).toBe(MiB);
  });
});
