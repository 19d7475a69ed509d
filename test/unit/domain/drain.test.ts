import { describe, expect, it } from 'vitest';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, ResourceExhaustedError } from '../../../services/shared/errors.js';
import { MigrationPolicy, PolicyKind } from '../../../services/shared/gen/migd/v1/common.js';
import { SubmitPlanRequest } from '../../../services/shared/gen/migd/v1/coordinator.js';
import type { ClusterModel, NodeModel } from '../../../services/coordinator/domain/cluster.js';
import { type PolicyCapability, planDrain, predictMigration, simulateDrain } from '../../../services/coordinator/domain/drain.js';
import { draftPlan } from '../../../services/coordinator/domain/plan.js';
import { GiB, MiB } from '../../../services/coordinator/domain/units.js';

const CAPS = ['postcopy-ram', 'return-path', 'postcopy-preempt', 'auto-converge'];
const node = (id: string, freeGib: number, extra: Partial<NodeModel> = {}): NodeModel => ({ id, up: true, memoryTotalBytes: 64 * GiB, memoryFreeBytes: freeGib * GiB, capabilities: CAPS, ...extra });

// 1 GiB takes exactly 10 s at this rate.
const B = 102.4 * MiB;
const MODEL = { defaultBandwidthBytesPerSec: B, setupMs: 0 };
const PRECOPY_ONLY: PolicyCapability = { downtimeMs: 300, postcopy: false, autoConverge: false, bandwidthCapBytesPerSec: 0, completionTimeoutMs: undefined };

/**
 * The worked example: four idle 1 GiB VMs listed first, then a 3 GiB VM dirtying half the link's
 * rate, on a host drained to three empty nodes with the default limits (2 outbound, 1 per link).
 *  - small: 1 GiB / 102.4 MiB/s = 10 s, one pass (nothing dirtied).
 *  - big: r = ½; passes of 30, 15, 7.5 … s until the backlog (3 GiB / 2^7 = 24 MiB) fits
 *    300 ms × 102.4 MiB/s = 30.72 MiB: 30 × (1 − 2^−7)/(1 − ½) = 59.53125 s, plus 24 MiB /
 *    102.4 MiB/s = 0.234375 s of switch-over: 59.765625 s (≈ M/(B − D) = 60 s).
 * First come: small, small (0–10 s), small, small (10–20 s), then big alone from 20 s: 79.77 s.
 * Longest first: big from 0 s alongside the four smalls one after another (0–40 s): 59.77 s.
 */
function example(): ClusterModel {
  return {
    nodes: [node('src', 0), node('a', 32), node('b', 32), node('c', 32)],
    vms: [
      { name: 'vm1', nodeId: 'src', memoryMib: 1024, dirtyRateBytesPerSec: 0 },
      { name: 'vm2', nodeId: 'src', memoryMib: 1024, dirtyRateBytesPerSec: 0 },
      { name: 'vm3', nodeId: 'src', memoryMib: 1024, dirtyRateBytesPerSec: 0 },
      { name: 'vm4', nodeId: 'src', memoryMib: 1024, dirtyRateBytesPerSec: 0 },
      { name: 'big', nodeId: 'src', memoryMib: 3072, dirtyRateBytesPerSec: B / 2 },
    ],
  };
}

describe('predictMigration', () => {
  it('sums the geometric series of pre-copy passes', () => {
    expect(predictMigration({ memoryBytes: GiB, dirtyBytesPerSec: 0, bandwidthBytesPerSec: B }, PRECOPY_ONLY, { ...MODEL, maxPasses: 30 })).toMatchObject({
      durationMs: 10_000,
      mode: 'precopy',
      passes: 1,
    });
    const big = predictMigration({ memoryBytes: 3 * GiB, dirtyBytesPerSec: B / 2, bandwidthBytesPerSec: B }, PRECOPY_ONLY, { ...MODEL, maxPasses: 30 });
    expect(big.mode).toBe('precopy');
    expect(big.passes).toBe(7);
    expect(big.durationMs).toBeCloseTo(59_765.625, 6);
  });

  it('falls back to post-copy or auto-converge when dirty ≥ bandwidth, else never finishes', () => {
    const input = { memoryBytes: GiB, dirtyBytesPerSec: 2 * B, bandwidthBytesPerSec: B };
    const never = predictMigration(input, PRECOPY_ONLY, { ...MODEL, maxPasses: 30 });
    expect(never).toMatchObject({ durationMs: Infinity, mode: 'never' });
    expect(never.summary).toContain('never to converge');
    // Post-copy after the first pass: 10 s, then the dirty set (all of memory here) another 10 s.
    expect(predictMigration(input, { ...PRECOPY_ONLY, postcopy: true }, { ...MODEL, maxPasses: 30 })).toMatchObject({ durationMs: 20_000, mode: 'postcopy' });
    // Auto-converge: throttle 1 − 1/(2·2) = 75 %, 7 ramp steps from 20 %, then a converging tail.
    const ac = predictMigration(input, { ...PRECOPY_ONLY, autoConverge: true }, { ...MODEL, maxPasses: 30 });
    expect(ac.mode).toBe('auto-converge');
    expect(ac.durationMs).toBeCloseTo((10 + 7 * 10 + 2 * 10) * 1000, 6);
  });

  it('says when the dirty rate is unknown and honours a bandwidth cap', () => {
    const p = predictMigration({ memoryBytes: GiB, dirtyBytesPerSec: undefined, bandwidthBytesPerSec: 10 * B }, { ...PRECOPY_ONLY, bandwidthCapBytesPerSec: B }, { ...MODEL, maxPasses: 30 });
    expect(p.durationMs).toBe(10_000);
    expect(p.summary).toContain('dirty rate unknown, assumed idle');
  });
});

describe('planDrain', () => {
  it('orders longest-predicted first and beats first-come order on the makespan', () => {
    const plan = planDrain(example(), { nodeId: 'src', model: MODEL });
    expect(plan.entries.map((e) => [e.vmName, e.destination, e.order])).toEqual([
      ['big', 'a', 0],
      ['vm1', 'b', 1],
      ['vm2', 'c', 2],
      ['vm3', 'b', 3],
      ['vm4', 'c', 4],
    ]);
    expect(plan.predictedMakespanMs).toBeCloseTo(59_765.625, 6);
    expect(plan.firstComeMakespanMs).toBeCloseTo(79_765.625, 6);
    expect(plan.predictedMakespanMs).toBeLessThan(plan.firstComeMakespanMs);

    // The same, computed by hand with simulateDrain: first-come is the listing order.
    const firstCome = ['vm1', 'vm2', 'vm3', 'vm4', 'big'].map((name, order) => ({ ...plan.entries.find((e) => e.vmName === name)!, order }));
    const fc = simulateDrain({ entries: firstCome }, plan.limits);
    expect(fc.makespanMs).toBeCloseTo(79_765.625, 6);
    expect(fc.timeline.map((t) => [t.vmName, t.startMs])).toEqual([
      ['vm1', 0],
      ['vm2', 0],
      ['vm3', 10_000],
      ['vm4', 10_000],
      ['big', 20_000],
    ]);
    const ours = simulateDrain(plan, plan.limits);
    expect(ours.makespanMs).toBeCloseTo(59_765.625, 6);
    expect(ours.timeline.map((t) => [t.vmName, t.startMs])).toEqual([
      ['big', 0],
      ['vm1', 0],
      ['vm2', 10_000],
      ['vm3', 20_000],
      ['vm4', 30_000],
    ]);

    // The plan says why, in words.
    expect(plan.orderingReason).toMatch(/^longest predicted migration first/);
    expect(plan.orderingReason).toContain('≈59.8 s predicted vs ≈1m20s in first-come order');
    expect(plan.entries[0]?.reason).toContain('position 1/5, longest predicted first: pre-copy in 7 pass(es), ≈59.8 s');
    expect(plan.entries[0]?.reason).toMatch(/^destination a: /);
  });

  it('can minimise the mean completion time instead (shortest first)', () => {
    const plan = planDrain(example(), { nodeId: 'src', model: MODEL, objective: 'mean-completion' });
    expect(plan.entries.map((e) => e.vmName)).toEqual(['vm1', 'vm2', 'vm3', 'vm4', 'big']);
    expect(plan.orderingReason).toMatch(/^shortest predicted migration first/);
  });

  it('puts a migration predicted never to finish last, and says so', () => {
    const c = example();
    const hot = { ...c, vms: [{ name: 'hot', nodeId: 'src', memoryMib: 1024, dirtyRateBytesPerSec: 4 * B }, ...c.vms] };
    const plan = planDrain(hot, { nodeId: 'src', model: MODEL });
    const last = plan.entries[plan.entries.length - 1];
    expect(last?.vmName).toBe('hot');
    expect(last?.reason).toContain('last: predicted never to converge');
    expect(plan.predictedMakespanMs).toBe(Infinity);
    // With a completion timeout it holds its slot until then (FIXED + 150 s/GiB: 150 s).
    const timed = planDrain(hot, { nodeId: 'src', model: MODEL, policy: MigrationPolicy.fromPartial({ completionTimeoutSecPerGib: 150 }) });
    expect(timed.entries.find((e) => e.vmName === 'hot')?.slotMs).toBe(150_000);
    // LOCAL disks extend that timeout at the same pace: 1 GiB of memory + 2 GiB of disks, 450 s.
    const withDisks = { ...hot, vms: hot.vms.map((v) => (v.name === 'hot' ? { ...v, diskTransferBytes: 2 * GiB } : v)) };
    const timedDisks = planDrain(withDisks, { nodeId: 'src', model: MODEL, policy: MigrationPolicy.fromPartial({ completionTimeoutSecPerGib: 150 }) });
    expect(timedDisks.entries.find((e) => e.vmName === 'hot')?.slotMs).toBe(450_000);
  });

  it('uses post-copy-capable predictions for an adaptive drain', () => {
    const c = example();
    const hot = { ...c, vms: [{ name: 'hot', nodeId: 'src', memoryMib: 1024, dirtyRateBytesPerSec: 4 * B }, ...c.vms] };
    const plan = planDrain(hot, { nodeId: 'src', model: MODEL, policy: MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_ADAPTIVE }) });
    expect(plan.entries.find((e) => e.vmName === 'hot')?.prediction.mode).toBe('postcopy');
    expect(Number.isFinite(plan.predictedMakespanMs)).toBe(true);
  });

  it('restricts destinations, respects anti-affinity and reports what cannot be placed', () => {
    const plan = planDrain(example(), { nodeId: 'src', model: MODEL, destinationNodeIds: ['c'] });
    expect(new Set(plan.entries.map((e) => e.destination))).toEqual(new Set(['c']));
    const tight = { ...example(), nodes: [node('src', 0), node('a', 2)] };
    expect(() => planDrain(tight, { nodeId: 'src', model: MODEL })).toThrow(ResourceExhaustedError);
    expect(() => planDrain(example(), { nodeId: 'zz' })).toThrow(NotFoundError);
    const down = { ...example(), nodes: [node('src', 0, { up: false }), node('a', 32)] };
    expect(() => planDrain(down, { nodeId: 'src' })).toThrow(FailedPreconditionError);
  });

  it('counts the LOCAL disks a migration copies: in the prediction, the order and the destinations\' storage', () => {
    // vm1 with 4 GiB of LOCAL disk allocated: 40 s of storage copy, then 10 s of memory = 50 s,
    // second after big (59.8 s); with 6 GiB it takes 70 s and goes first.
    const withDisk = (gib: number): ClusterModel => ({ ...example(), vms: example().vms.map((v) => (v.name === 'vm1' ? { ...v, diskTransferBytes: gib * GiB, diskSpaceBytes: gib * GiB } : v)) });
    const p4 = planDrain(withDisk(4), { nodeId: 'src', model: MODEL });
    const vm1 = p4.entries.find((e) => e.vmName === 'vm1')!;
    expect(vm1.diskBytes).toBe(4 * GiB);
    expect(vm1.prediction.durationMs).toBeCloseTo(50_000, 6);
    expect(vm1.prediction.summary).toContain('after 4.00 GiB of LOCAL disks');
    expect(p4.entries.map((e) => e.vmName).slice(0, 2)).toEqual(['big', 'vm1']);
    const p6 = planDrain(withDisk(6), { nodeId: 'src', model: MODEL });
    expect(p6.entries[0]?.vmName).toBe('vm1');
    expect(p6.entries[0]?.prediction.durationMs).toBeCloseTo(70_000, 6);
    // Post-copy still waits for the storage copy: 20 s of disk, 10 s of memory, 10 s dirty set.
    expect(predictMigration({ memoryBytes: GiB, diskBytes: 2 * GiB, dirtyBytesPerSec: 2 * B, bandwidthBytesPerSec: B }, { ...PRECOPY_ONLY, postcopy: true }, { ...MODEL, maxPasses: 30 })).toMatchObject({
      durationMs: 40_000,
      mode: 'postcopy',
    });

    // Only a and b have the storage for vm1's disk; none has it: the drain fails naming vm1.
    const roomy = (id: string, storage: number): NodeModel => node(id, 32, { storageFreeBytes: storage });
    const placed = planDrain({ ...withDisk(4), nodes: [node('src', 0), roomy('a', 5 * GiB), roomy('b', 5 * GiB), roomy('c', GiB)] }, { nodeId: 'src', model: MODEL });
    expect(placed.entries.find((e) => e.vmName === 'vm1')?.destination).not.toBe('c');
    const full = { ...withDisk(4), nodes: [node('src', 0), roomy('a', GiB), roomy('b', GiB), roomy('c', GiB)] };
    expect(() => planDrain(full, { nodeId: 'src', model: MODEL })).toThrow(expect.objectContaining({ code: 'RESOURCE_EXHAUSTED', message: expect.stringMatching(/no node can take VM "vm1".*has too little storage/) }));
  });

  it('plans nothing for an empty host', () => {
    const plan = planDrain(example(), { nodeId: 'a' });
    expect(plan.entries).toEqual([]);
    expect(plan.orderingReason).toContain('nothing to drain');
  });
});

describe('draftPlan', () => {
  it('turns a migrate request into one placed migration', () => {
    const req = SubmitPlanRequest.fromPartial({ idempotencyKey: 'k', target: { $case: 'migrate', value: { vmName: 'big' } } });
    const draft = draftPlan(example(), req);
    expect(draft.migrations).toEqual([{ vmName: 'big', sourceNodeId: 'src', destinationNodeId: 'a', order: 0, reason: expect.stringContaining('a: ') }]);
  });

  it('turns a drain request into the ordered drain', () => {
    const req = SubmitPlanRequest.fromPartial({ idempotencyKey: 'k', target: { $case: 'drain', value: { nodeId: 'src' } } });
    const draft = draftPlan(example(), req, { model: MODEL });
    expect(draft.migrations.map((m) => m.vmName)).toEqual(['big', 'vm1', 'vm2', 'vm3', 'vm4']);
    expect(draft.orderingReason).toMatch(/^longest predicted/);
  });

  it('refuses a contradicting policy before placing anything, and a request without target', () => {
    const bad = SubmitPlanRequest.fromPartial({
      idempotencyKey: 'k',
      target: { $case: 'migrate', value: { vmName: 'ghost' } },
      policy: { multifd: { enabled: true }, postcopy: { enabled: true } },
    });
    expect(() => draftPlan(example(), bad)).toThrow(InvalidArgumentError);
    expect(() => draftPlan(example(), SubmitPlanRequest.fromPartial({ idempotencyKey: 'k' }))).toThrow(InvalidArgumentError);
    const ghost = SubmitPlanRequest.fromPartial({ idempotencyKey: 'k', target: { $case: 'migrate', value: { vmName: 'ghost' } } });
    expect(() => draftPlan(example(), ghost)).toThrow(NotFoundError);
  });
});
