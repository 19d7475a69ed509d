import { describe, expect, it } from 'vitest';
import { policyFor } from '../../../services/coordinator/domain/policy/factory.js';
import { presetPolicy } from '../../../services/coordinator/domain/policy/presets.js';
import { extraPolicyProblems, validatePolicy } from '../../../services/coordinator/policy-checks.js';
import { InvalidArgumentError } from '../../../services/shared/errors.js';
import { MigrationPolicy, MultifdCompression, PolicyKind } from '../../../services/shared/gen/migd/v1/common.js';

const MiB = 1024 * 1024;
const p = (x: Partial<MigrationPolicy>): MigrationPolicy => MigrationPolicy.fromPartial(x);

describe('policy checks at submit time', () => {
  it('accepts every preset and a default policy', () => {
    for (const kind of Object.values(PolicyKind).filter((k): k is PolicyKind => typeof k === 'number' && k >= 0)) {
      expect(() => validatePolicy(p({ kind }), 192 * MiB), PolicyKind[kind]).not.toThrow();
      expect(extraPolicyProblems(presetPolicy(kind, { vmMemoryBytes: 192 * MiB })), PolicyKind[kind]).toEqual([]);
    }
  });

  it('reports the domain contradictions and the node-side ones together', () => {
    const bad = p({
      multifd: { enabled: true, channels: 300, compression: MultifdCompression.MULTIFD_COMPRESSION_ZLIB, compressionLevel: 12 },
      postcopy: { enabled: true, afterPasses: 1, afterMs: 0, onDemandOnly: false, preempt: true },
      xbzrle: { enabled: false, cacheBytes: 1 },
    });
    let err: unknown;
    try {
      validatePolicy(bad, 192 * MiB);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidArgumentError);
    const msg = (err as Error).message;
    expect((err as InvalidArgumentError).reason).toBe('INVALID_POLICY');
    expect(msg).toMatch(/multifd cannot be combined with post-copy/);
    expect(msg).toMatch(/multifd.channels must be 1..255/);
    expect(msg).toMatch(/zlib must be 0..9/);
    expect(msg).toMatch(/xbzrle.cache_bytes is set but xbzrle.enabled is false/);
  });

  it('finds fields set for features that are off, and out-of-range limits', () => {
    expect(extraPolicyProblems(p({ multifd: { enabled: false, channels: 4, compression: 0, compressionLevel: 0 } }))).toEqual(['multifd.channels/compression are set but multifd.enabled is false']);
    expect(extraPolicyProblems(p({ autoConverge: { enabled: false, initialPct: 30, incrementPct: 0, maxPct: 0 } }))).toHaveLength(1);
    // The adaptive policy arms auto-converge with percentages but without enabling it.
    expect(extraPolicyProblems(p({ kind: PolicyKind.POLICY_KIND_ADAPTIVE, autoConverge: { enabled: false, initialPct: 30, incrementPct: 10, maxPct: 99 } }))).toEqual([]);
    expect(extraPolicyProblems(p({ downtimeLimitMs: 3_000_000 }))).toHaveLength(1);
  });

  it("a policy's effective form validates to itself (what a restarted coordinator rebuilds from)", () => {
    for (const kind of Object.values(PolicyKind).filter((k): k is PolicyKind => typeof k === 'number')) {
      const first = policyFor(p({ kind }), 192 * MiB).effective;
      const again = validatePolicy(first, 192 * MiB);
      expect(MigrationPolicy.toJSON(again.effective), PolicyKind[kind]).toEqual(MigrationPolicy.toJSON(first));
    }
  });
});
