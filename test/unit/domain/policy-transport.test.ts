import { describe, expect, it } from 'vitest';
import { MigrationPolicy, MigrationState, MultifdCompression, PolicyActionKind, PolicyKind, ProgressSample, WorkloadPattern, WorkloadSpec } from '../../../services/shared/gen/migd/v1/common.js';
import { type AdaptivePolicy, policyFor } from '../../../services/coordinator/domain/policy/index.js';
import { chooseTransport, transportChoosable, transportEvidence, withCompression, type PastMigration } from '../../../services/coordinator/domain/policy/transport.js';
import { MiB } from '../../../services/coordinator/domain/units.js';
import { loadTrace, replay } from './traces.js';

const adaptive = MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_ADAPTIVE });
const workload = (o: Partial<WorkloadSpec>): WorkloadSpec => WorkloadSpec.fromPartial({ workers: 2, bytesPerWorker: 64 * MiB, ...o });
// The lab's compressible load: 2 × 64 MiB at 24 MiB/s, compressible pages, 512 MiB guest.
const compressibleLoad = workload({ pattern: WorkloadPattern.WORKLOAD_PATTERN_COMPRESSIBLE, rateBytesPerSec: 24 * MiB });
const evidence = (o: Partial<Parameters<typeof transportEvidence>[0]> = {}) => transportEvidence({ memoryBytes: 512 * MiB, policy: adaptive, history: [], ...o });

/** A pre-copy sample of an earlier migration. */
const sample = (o: Partial<ProgressSample>): ProgressSample =>
  ProgressSample.fromPartial({ state: MigrationState.MIGRATION_STATE_PRECOPY, qemuStatus: 'active', pageSize: 4096, totalBytes: 512 * MiB, ...o });

describe('adaptive: compression or post-copy, decided before the start', () => {
  it('chooses multifd zstd for the compressible load (known workload, no history, link assumed 100 Mbit/s)', () => {
    const c = chooseTransport(evidence({ workload: compressibleLoad }));
    expect(c.compress).toBe(true);
    // 48 MiB/s × 0.1 against 12.5 MB/s: r ≈ 0.4; first pass 512 MiB × 0.1 ≈ 4.3 s.
    expect(c.predicted!.ratio).toBeCloseTo(0.4, 1);
    expect(c.predicted!.passes).toBeLessThanOrEqual(5);
    expect(c.reason).toMatch(/^multifd with zstd \(2 channels\), post-copy off: dirty 48\.0 MiB\/s \(the VM's workload as configured\), 10% of it on the wire/);
    expect(c.reason).toContain('assumed');
  });

  it('keeps post-copy for the same rate of random (incompressible) pages', () => {
    const c = chooseTransport(evidence({ workload: workload({ pattern: WorkloadPattern.WORKLOAD_PATTERN_RANDOM, rateBytesPerSec: 24 * MiB }) }));
    expect(c.compress).toBe(false);
    expect(c.reason).toContain('does not compress');
  });

  it('keeps post-copy when the dirty rate is unknown: an unlimited writer, a phase that turns unlimited, or no workload and no history', () => {
    expect(chooseTransport(evidence({ workload: workload({ pattern: WorkloadPattern.WORKLOAD_PATTERN_COMPRESSIBLE, rateBytesPerSec: 0 }) })).compress).toBe(false);
    const phase = workload({ pattern: WorkloadPattern.WORKLOAD_PATTERN_COMPRESSIBLE, rateBytesPerSec: 2 * MiB, phaseAfterMs: 12_000, phaseRateBytesPerSec: 0 });
    expect(chooseTransport(evidence({ workload: phase })).reason).toContain('dirty rate is not known');
    expect(chooseTransport(evidence()).compress).toBe(false);
  });

  it('keeps post-copy when even compressed the guest dirties faster than half the link', () => {
    // 2 × 200 MiB/s × 0.1 = 40 MiB/s against a measured 30 MiB/s link.
    const fast = workload({ pattern: WorkloadPattern.WORKLOAD_PATTERN_COMPRESSIBLE, rateBytesPerSec: 100 * MiB });
    const c = chooseTransport(evidence({ workload: fast, policy: MigrationPolicy.fromPartial({ ...adaptive, maxBandwidthBytesPerSec: 30 * MiB }) }));
    expect(c.compress).toBe(false);
    expect(c.reason).toMatch(/would not converge safely \(r = 0\.67/);
  });

  it('keeps post-copy when the channels cannot compress the dirty rate', () => {
    const c = chooseTransport({ memoryBytes: 512 * MiB, dirtyBytesPerSec: { value: 400 * MiB, source: 'x' }, compressedFraction: { value: 0.01, source: 'y' }, linkBytesPerSec: { value: 1000 * MiB, source: 'z' }, downtimeLimitMs: 300, channels: 2 });
    expect(c.compress).toBe(false);
    expect(c.reason).toContain('2 channel(s) cannot compress');
  });

  it('keeps post-copy when compressed pre-copy would outlast the completion budget', () => {
    // 64 GiB at 10 % over 100 Mbit/s: ≈ 550 s for the first pass alone (a slow writer: 1 MiB/s).
    const slow = workload({ pattern: WorkloadPattern.WORKLOAD_PATTERN_COMPRESSIBLE, rateBytesPerSec: MiB / 2 });
    const c = chooseTransport({ ...evidence({ workload: slow }), memoryBytes: 64 * 1024 * MiB, completionBudgetMs: 300_000 });
    expect(c.compress).toBe(false);
    expect(c.reason).toContain('exceeds the');
  });

  it('chooses multifd zstd for a guest predicted quiet, whether or not its memory is known to compress', () => {
    // The lab's idle guest: 1 GiB, its region written once and then only read (dirty 0).
    const idle = chooseTransport(evidence({ memoryBytes: 1024 * MiB, workload: workload({ pattern: WorkloadPattern.WORKLOAD_PATTERN_IDLE, workers: 1, bytesPerWorker: 512 * MiB }) }));
    expect(idle.compress).toBe(true);
    expect(idle.predicted).toMatchObject({ ratio: 0, passes: 0 });
    expect(idle.reason).toMatch(/^multifd with zstd \(2 channels\), post-copy off: a quiet guest, dirty 0 B\/s/);
    expect(idle.reason).toContain("the memory's compressibility is not known: its bulk pass takes what compresses");
    // A slow writer of random pages over a measured 90 MiB/s link: r ≈ 0.02, the backlog after the
    // first pass (≈ 5.7 s) ≈ 0.13 s fits 300 ms at once.
    const slow = chooseTransport({ memoryBytes: 512 * MiB, dirtyBytesPerSec: { value: 2 * MiB, source: 'x' }, compressedFraction: { value: 1, source: 'random' }, linkBytesPerSec: { value: 90 * MiB, source: 'y' }, downtimeLimitMs: 300, channels: 2 });
    expect(slow.compress).toBe(true);
    expect(slow.reason).toContain('the memory does not compress (100% left on the wire, random)');
  });

  it('keeps post-copy for an incompressible guest that is not quiet, whose backlog needs more than one more pass, or whose link outruns the channels', () => {
    const incompressible = { memoryBytes: 512 * MiB, compressedFraction: { value: 1, source: 'random' }, downtimeLimitMs: 104, channels: 2 };
    // The moderate load over 720 Mbit/s: r ≈ 0.56.
    const moderate = chooseTransport({ ...incompressible, dirtyBytesPerSec: { value: 48 * MiB, source: 'x' }, linkBytesPerSec: { value: 90_000_000, source: 'y' } });
    expect(moderate.compress).toBe(false);
    expect(moderate.reason).toMatch(/the guest is not quiet: .*r = 0\.56 uncompressed.*a quiet guest has r ≤ 0\.2/);
    // r ≈ 0.08 at the assumed 100 Mbit/s, but 43 s of first pass leave ≈ 3.6 s of backlog: two more passes.
    const slowLink = chooseTransport(evidence({ workload: workload({ pattern: WorkloadPattern.WORKLOAD_PATTERN_RANDOM, rateBytesPerSec: MiB / 2 }) }));
    expect(slowLink.compress).toBe(false);
    expect(slowLink.reason).toMatch(/needs 2 passes to fit 300 ms/);
    // A quiet guest that would outlast the completion budget.
    const big = chooseTransport({ memoryBytes: 64 * 1024 * MiB, dirtyBytesPerSec: { value: 0, source: 'x' }, linkBytesPerSec: { value: 12_500_000, source: 'y' }, downtimeLimitMs: 300, channels: 2, completionBudgetMs: 60_000 });
    expect(big.compress).toBe(false);
    expect(big.reason).toContain('exceeds the');
    // A quiet guest over a 10 Gbit/s link: two channels cannot compress at its rate.
    const fast = chooseTransport({ ...incompressible, dirtyBytesPerSec: { value: 0, source: 'x' }, linkBytesPerSec: { value: 1_250_000_000, source: 'y' } });
    expect(fast.compress).toBe(false);
    expect(fast.reason).toContain("2 channel(s) cannot compress at the link's rate");
  });

  it('reads the history of the same VM: the calc-dirty-rate estimate, the link it got and how well its pages compressed', () => {
    const earlier: PastMigration = {
      policy: withCompression(adaptive),
      succeeded: true,
      // 256 MiB of zero pages, 20 MiB on the wire for the other 256 MiB; 90 MiB/s of link.
      transferredBytes: 20 * MiB,
      samples: [1, 2, 3, 4].map((pass) => sample({ pass, throughputMbps: 755, estimatedDirtyBytesPerSec: 30 * MiB, duplicatePages: (256 * MiB) / 4096, dirtyPagesRate: pass >= 3 ? (20 * MiB) / 4096 : 0 })),
    };
    const e = evidence({ workload: workload({ pattern: WorkloadPattern.WORKLOAD_PATTERN_UNSPECIFIED }), history: [earlier] });
    expect(e.dirtyBytesPerSec).toEqual({ value: 30 * MiB, source: 'calc-dirty-rate in migration 1 back' });
    expect(e.compressedFraction!.value).toBeCloseTo(20 / 256, 5);
    expect(e.linkBytesPerSec!.value).toBeCloseTo(90 * MiB, -5);
    const c = chooseTransport(e);
    expect(c.compress).toBe(true);
    expect(c.reason).toContain('median pre-copy throughput of 1 earlier migration(s)');
    // The same history without compression tells nothing about compressibility.
    expect(chooseTransport(evidence({ history: [{ ...earlier, policy: adaptive }] })).reason).toContain('compressibility is not known');
  });

  it('a measured rate above the configured one wins', () => {
    const earlier: PastMigration = { policy: adaptive, succeeded: true, transferredBytes: 0, samples: [sample({ pass: 2, throughputMbps: 100, estimatedDirtyBytesPerSec: 90 * MiB })] };
    const e = evidence({ workload: compressibleLoad, history: [earlier] });
    expect(e.dirtyBytesPerSec!.source).toBe('calc-dirty-rate in migration 1 back');
  });

  it('applies only to adaptive policies whose user left the transport open; the chosen policy has no post-copy', () => {
    expect(transportChoosable(adaptive)).toBe(true);
    expect(transportChoosable(MigrationPolicy.fromPartial({ kind: PolicyKind.POLICY_KIND_FIXED }))).toBe(false);
    expect(transportChoosable(MigrationPolicy.fromPartial({ ...adaptive, multifd: { enabled: false } }))).toBe(false);
    expect(transportChoosable(MigrationPolicy.fromPartial({ ...adaptive, xbzrle: { enabled: true } }))).toBe(false);
    const p = policyFor(withCompression(adaptive), 512 * MiB) as AdaptivePolicy;
    expect(p.requirements.postcopy).toBe(false);
    expect(p.requirements.capabilities).toContain('multifd');
    expect(p.effective.multifd).toMatchObject({ enabled: true, channels: 2, compression: MultifdCompression.MULTIFD_COMPRESSION_ZSTD });
  });
});

describe('adaptive on a compressed stream (lab timeline)', () => {
  it('gives multifd zstd the passes its prediction allowed: no auto-converge on wire-byte throughput', () => {
    // pol-v3-compressible-adaptive: the planner chose multifd zstd; QEMU's throughput is wire
    // bytes (25–215 Mbit/s) while dirty rate and remaining are pages (26 MiB/s, 37 MiB): read
    // naively r ≈ 3.6 and the policy enabled auto-converge at the first pass-2 sample (7.58 s);
    // the migration completed 0.3 s later on its own.
    const trace = loadTrace('lab-compressible-multifd');
    const policy = policyFor(withCompression(adaptive), 512 * MiB);
    expect(replay(policy, trace).actions).toEqual([]);
    // A compressed stream that keeps failing past those passes still gets the usual steps.
    const stuck = [...trace.filter((s) => s.pass === 2)];
    const later = [6, 7, 8, 9].flatMap((pass) => stuck.map((s, i) => ProgressSample.fromPartial({ ...s, pass, elapsedMs: 8000 + pass * 1000 + i * 100 })));
    const kinds = replay(policy, [...trace.filter((s) => s.pass === 1 || s.qemuStatus === 'setup'), ...later]).actions.map((a) => PolicyActionKind[a.kind]);
    expect(kinds).toEqual(['POLICY_ACTION_KIND_ENABLE_AUTO_CONVERGE']);
  });
});
