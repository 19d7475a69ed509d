import { describe, expect, it } from 'vitest';
import { policyFor } from '../../../services/coordinator/domain/policy/factory.js';
import { presetPolicy } from '../../../services/coordinator/domain/policy/presets.js';
import { CancelledError, FailedPreconditionError, InvalidArgumentError } from '../../../services/shared/errors.js';
import { ErrorCode, ErrorInfo, MigrationPolicy, MigrationState, MultifdCompression, PolicyKind } from '../../../services/shared/gen/migd/v1/common.js';
import {
  QEMU_MAX_DOWNTIME_MS,
  TERMINAL_STATES,
  errorCodeOf,
  errorInfo,
  errorInfoFromParts,
  errorInfoOf,
  isTerminalState,
  isValidDowntimeLimit,
  OPTIONAL_CAPABILITIES,
  migrationCapabilities,
  migrationConfigProblems,
  policyProblems,
  resolveMigrationConfig,
} from '../../../services/shared/policy/index.js';

const MiB = 1024 * 1024;
const p = (x: Partial<MigrationPolicy>): MigrationPolicy => MigrationPolicy.fromPartial(x);
const kinds = Object.values(PolicyKind).filter((k): k is PolicyKind => typeof k === 'number' && k >= 0);
const qemu10 = new Set(['events', 'auto-converge', 'postcopy-ram', 'return-path', 'postcopy-preempt', 'xbzrle', 'multifd', 'switchover-ack']);

describe('shared policy: limits and states', () => {
  it('knows QEMU downtime range', () => {
    expect(QEMU_MAX_DOWNTIME_MS).toBe(2_000_000);
    expect([0, 1, 2_000_000, 2_000_001, 1.5].map(isValidDowntimeLimit)).toEqual([false, true, true, false, false]);
  });

  it('terminal states are exactly succeeded, failed and cancelled', () => {
    const all = Object.values(MigrationState).filter((s): s is MigrationState => typeof s === 'number' && s >= 0);
    expect(all.filter(isTerminalState).sort()).toEqual([MigrationState.MIGRATION_STATE_SUCCEEDED, MigrationState.MIGRATION_STATE_FAILED, MigrationState.MIGRATION_STATE_CANCELLED].sort());
    expect(TERMINAL_STATES.size).toBe(3);
  });
});

describe('shared policy: ErrorInfo builder', () => {
  it('fills the enum and the string from one status name', () => {
    expect(errorInfo('UNAVAILABLE', 'NODE_DOWN', 'node a is down')).toEqual({ reason: 'NODE_DOWN', message: 'node a is down', code: 'UNAVAILABLE', errorCode: ErrorCode.ERROR_CODE_UNAVAILABLE });
    expect(errorCodeOf('DATA_LOSS')).toBe(ErrorCode.ERROR_CODE_DATA_LOSS);
    expect(errorCodeOf('NO_SUCH_CODE')).toBe(ErrorCode.ERROR_CODE_UNSPECIFIED);
  });

  it('keeps a MigdError code and reason, and makes anything else INTERNAL', () => {
    expect(errorInfoOf(new FailedPreconditionError('busy', { reason: 'VM_MIGRATING' }))).toMatchObject({ code: 'FAILED_PRECONDITION', errorCode: ErrorCode.ERROR_CODE_FAILED_PRECONDITION, reason: 'VM_MIGRATING' });
    expect(errorInfoOf(new CancelledError())).toMatchObject({ code: 'CANCELLED', reason: 'CANCELLED' });
    expect(errorInfoOf(new CancelledError(), 'START_FAILED').reason).toBe('START_FAILED');
    expect(errorInfoOf(new Error('boom'), 'COORDINATOR_ERROR')).toEqual(errorInfo('INTERNAL', 'COORDINATOR_ERROR', 'boom'));
    expect(errorInfoOf('text')).toEqual(errorInfo('INTERNAL', 'INTERNAL', 'text'));
  });

  it('reads back stored or old-peer errors with the enum filled, and survives the wire', () => {
    const old = errorInfoFromParts({ reason: 'X', message: 'm', code: 'ABORTED' });
    expect(old.errorCode).toBe(ErrorCode.ERROR_CODE_ABORTED);
    expect(errorInfoFromParts({ reason: 'X', message: 'm', errorCode: ErrorCode.ERROR_CODE_INTERNAL }).code).toBe('INTERNAL');
    expect(ErrorInfo.decode(ErrorInfo.encode(old).finish())).toEqual(old);
    // A reader that knows only the string still gets it.
    expect(ErrorInfo.toJSON(old)).toMatchObject({ code: 'ABORTED', errorCode: 'ERROR_CODE_ABORTED' });
  });
});

describe('shared policy: validation, one rule set for both services', () => {
  it('accepts every preset and every preset effective policy, on the coordinator and on the node', () => {
    for (const kind of kinds) {
      expect(policyProblems(presetPolicy(kind, { vmMemoryBytes: 192 * MiB })), PolicyKind[kind]).toEqual([]);
      const effective = policyFor(p({ kind }), 192 * MiB).effective;
      expect(migrationConfigProblems(effective, qemu10), PolicyKind[kind]).toEqual([]);
      expect(() => resolveMigrationConfig(effective, qemu10), PolicyKind[kind]).not.toThrow();
    }
  });

  it('finds fields set for features that are off, and out-of-range limits', () => {
    expect(policyProblems(p({ multifd: { enabled: false, channels: 4, compression: 0, compressionLevel: 0 } }))).toEqual(['multifd.channels/compression are set but multifd.enabled is false']);
    expect(policyProblems(p({ multifd: { enabled: false, channels: 0, compression: 0, compressionLevel: 3 } }))).toHaveLength(1);
    expect(policyProblems(p({ autoConverge: { enabled: false, initialPct: 30, incrementPct: 0, maxPct: 0 } }))).toHaveLength(1);
    // The adaptive policy arms auto-converge with percentages but without enabling it.
    expect(policyProblems(p({ kind: PolicyKind.POLICY_KIND_ADAPTIVE, autoConverge: { enabled: false, initialPct: 30, incrementPct: 10, maxPct: 99 } }))).toEqual([]);
    expect(policyProblems(p({ downtimeLimitMs: 3_000_000 }))).toEqual(["downtime_limit_ms 3000000 exceeds QEMU's maximum 2000000"]);
    expect(policyProblems(p({ maxDowntimeMs: 3_000_000 }))).toHaveLength(1);
    expect(policyProblems(p({ downtimeSteps: [{ downtimeMs: 3_000_000, afterPasses: 1, afterMs: 0 }] }))).toHaveLength(1);
    expect(policyProblems(p({ downtimeSteps: [{ downtimeMs: 0, afterPasses: 1, afterMs: 0 }] }))).toEqual(['every downtime step needs downtime_ms > 0']);
  });

  it('needs QEMU defaults for some contradictions: a lone max below the default initial throttle, a max downtime below 300 ms', () => {
    expect(policyProblems(p({ autoConverge: { enabled: true, initialPct: 0, incrementPct: 0, maxPct: 10 } }))).toEqual([]);
    expect(migrationConfigProblems(p({ autoConverge: { enabled: true, initialPct: 0, incrementPct: 0, maxPct: 10 } }))).toEqual(["auto_converge.initial_pct (20, QEMU's default) exceeds max_pct (10)"]);
    expect(migrationConfigProblems(p({ maxDowntimeMs: 200 }))).toEqual(["max_downtime_ms (200) is below downtime_limit_ms (300, QEMU's default)"]);
    expect(migrationConfigProblems(p({ switchoverAck: true }), new Set(['events', 'return-path']))).toEqual(['this node\'s QEMU does not support the "switchover-ack" capability']);
  });

  it('the coordinator refuses what the node would, listing the domain and QEMU contradictions together', () => {
    const bad = p({
      multifd: { enabled: true, channels: 300, compression: MultifdCompression.MULTIFD_COMPRESSION_ZLIB, compressionLevel: 12 },
      postcopy: { enabled: true, afterPasses: 1, afterMs: 0, onDemandOnly: false, preempt: true },
      xbzrle: { enabled: false, cacheBytes: 1 },
    });
    let err: unknown;
    try {
      policyFor(bad, 192 * MiB);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as InvalidArgumentError).reason).toBe('INVALID_POLICY');
    const msg = (err as Error).message;
    for (const re of [/multifd cannot be combined with post-copy/, /multifd.channels must be 1..255/, /zlib must be 0..9/, /xbzrle.cache_bytes is set but xbzrle.enabled is false/]) expect(msg).toMatch(re);
    // Each contradiction once, though both rule sets once had it.
    expect(msg.match(/multifd cannot be combined/g)).toHaveLength(1);
    // A contradiction only the node's resolver used to find is refused at submission now.
    expect(() => policyFor(p({ autoConverge: { enabled: true, initialPct: 0, incrementPct: 0, maxPct: 10 } }), 192 * MiB)).toThrow(/exceeds max_pct/);
  });

  it("a policy's effective form validates to itself (what a restarted coordinator rebuilds from)", () => {
    for (const kind of kinds) {
      const first = policyFor(p({ kind }), 192 * MiB).effective;
      expect(MigrationPolicy.toJSON(policyFor(first, 192 * MiB).effective), PolicyKind[kind]).toEqual(MigrationPolicy.toJSON(first));
    }
  });

  it('placement requirements are the capabilities the node turns on', () => {
    for (const kind of kinds) {
      for (const extra of [{}, { multifd: { enabled: true, channels: 2, compression: 0, compressionLevel: 0 }, postcopy: undefined }, { switchoverAck: true }]) {
        if (kind === PolicyKind.POLICY_KIND_OVIRT_POSTCOPY && 'multifd' in extra) continue;
        const c = policyFor(p({ kind, ...extra }), 256 * MiB);
        const node = resolveMigrationConfig(c.effective, qemu10).capabilities;
        // Measuring capabilities (postcopy-blocktime) are turned on where supported, not required.
        const required = Object.keys(node).filter((k) => !OPTIONAL_CAPABILITIES.has(k));
        expect([...c.requirements.capabilities, 'events'].sort(), `${PolicyKind[kind]} ${JSON.stringify(extra)}`).toEqual(required.sort());
        if (node['postcopy-ram']) expect(node['postcopy-blocktime']).toBe(true);
        expect(migrationCapabilities(c.effective)).toEqual(node);
      }
    }
  });
});
