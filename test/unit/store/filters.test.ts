import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../services/shared/errors.js';
import { MigrationState, PolicyKind } from '../../../services/shared/gen/migd/v1/common.js';
import { normalizeFilter } from '../../../services/coordinator/store/filters.js';

describe('normalizeFilter', () => {
  it('canonicalises lists so equal filters fingerprint equally', () => {
    const f = normalizeFilter({
      states: [MigrationState.MIGRATION_STATE_FAILED, MigrationState.MIGRATION_STATE_QUEUED, MigrationState.MIGRATION_STATE_FAILED, 0],
      policyKinds: [PolicyKind.POLICY_KIND_UNSPECIFIED, PolicyKind.POLICY_KIND_NOVA],
      runIds: ['b', 'a', '', 'b'],
    });
    expect(f.states).toEqual([MigrationState.MIGRATION_STATE_QUEUED, MigrationState.MIGRATION_STATE_FAILED]);
    expect(f.policyKinds).toEqual([PolicyKind.POLICY_KIND_FIXED, PolicyKind.POLICY_KIND_NOVA]);
    expect(f.runIds).toEqual(['a', 'b']);
    expect(normalizeFilter(undefined)).toMatchObject({ vmName: '', createdAfterMs: null, createdBeforeMs: null });
  });

  it('rejects an inverted time range naming both bounds', () => {
    expect(() => normalizeFilter({ createdAfter: new Date(2000), createdBefore: new Date(1000) })).toThrow(InvalidArgumentError);
    expect(() => normalizeFilter({ createdAfter: new Date(2000), createdBefore: new Date(1000) })).toThrow(/created_after .* created_before/);
    expect(normalizeFilter({ createdAfter: new Date(1000), createdBefore: new Date(1000) }).createdAfterMs).toBe(1000);
  });

  it('rejects invalid dates and unknown enum values', () => {
    expect(() => normalizeFilter({ createdAfter: new Date(Number.NaN) })).toThrow(/created_after/);
    expect(() => normalizeFilter({ states: [99 as MigrationState] })).toThrow(/unknown state/);
    expect(() => normalizeFilter({ policyKinds: [99 as PolicyKind] })).toThrow(/unknown policy kind/);
  });
});
