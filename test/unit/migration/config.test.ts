import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../services/shared/errors.js';
import { MigrationPolicy, MultifdCompression, PolicyKind } from '../../../services/shared/gen/migd/v1/common.js';
import { resolveMigrationConfig } from '../../../services/shared/policy/resolve.js';
import { StallDetector, progressSample, stateFromQemuStatus } from '../../../services/node/migration/progress.js';
import { MigrationState } from '../../../services/shared/gen/migd/v1/common.js';

const qemu10 = new Set(['events', 'auto-converge', 'postcopy-ram', 'return-path', 'postcopy-preempt', 'xbzrle', 'multifd', 'switchover-ack', 'zero-blocks', 'dirty-limit']);
const policy = (p: Partial<MigrationPolicy>) => MigrationPolicy.fromPartial(p);

describe('resolveMigrationConfig', () => {
  it('defaults to plain pre-copy with an explicit bandwidth and downtime', () => {
    const c = resolveMigrationConfig(undefined, qemu10);
    expect(c.capabilities).toEqual({ events: true });
    expect(c.sourceParameters['downtime-limit']).toBe(300);
    expect(c.sourceParameters['max-bandwidth']).toBe(Number.MAX_SAFE_INTEGER);
    expect(c.postcopy.enabled).toBe(false);
  });

  it('enables post-copy with preempt after one pass by default', () => {
    const c = resolveMigrationConfig(policy({ postcopy: { enabled: true, afterPasses: 0, afterMs: 0, onDemandOnly: false } }), qemu10);
    expect(c.capabilities).toMatchObject({ 'postcopy-ram': true, 'postcopy-preempt': true, 'return-path': true });
    expect(c.postcopy).toEqual({ enabled: true, preempt: true, afterPasses: 1, afterMs: undefined });
  });

  it('honours post-copy after N passes, after a timeout, on demand, and preempt off', () => {
    expect(resolveMigrationConfig(policy({ postcopy: { enabled: true, afterPasses: 3, afterMs: 0, onDemandOnly: false } }), qemu10).postcopy.afterPasses).toBe(3);
    const t = resolveMigrationConfig(policy({ postcopy: { enabled: true, afterPasses: 0, afterMs: 5000, onDemandOnly: false } }), qemu10).postcopy;
    expect(t).toMatchObject({ afterPasses: undefined, afterMs: 5000 });
    const d = resolveMigrationConfig(policy({ postcopy: { enabled: true, afterPasses: 0, afterMs: 0, onDemandOnly: true, preempt: false } }), qemu10);
    expect(d.postcopy).toMatchObject({ afterPasses: undefined, afterMs: undefined, preempt: false });
    expect(d.capabilities['postcopy-preempt']).toBeUndefined();
  });

  it('sets multifd channels and compression on both ends', () => {
    const c = resolveMigrationConfig(policy({ multifd: { enabled: true, channels: 4, compression: MultifdCompression.MULTIFD_COMPRESSION_ZSTD, compressionLevel: 3 } }), qemu10);
    expect(c.sourceParameters).toMatchObject({ 'multifd-channels': 4, 'multifd-compression': 'zstd', 'multifd-zstd-level': 3 });
    expect(c.destinationParameters).toEqual({ 'multifd-channels': 4, 'multifd-compression': 'zstd', 'multifd-zstd-level': 3 });
  });

  it.each([
    [{ multifd: { enabled: true, channels: 2, compression: 0, compressionLevel: 0 }, postcopy: { enabled: true, afterPasses: 1, afterMs: 0, onDemandOnly: false } }, /multifd cannot be combined with post-copy/],
    [{ multifd: { enabled: true, channels: 2, compression: 0, compressionLevel: 0 }, xbzrle: { enabled: true, cacheBytes: 0 } }, /xbzrle cannot be combined with multifd/],
    [{ postcopy: { enabled: false, afterPasses: 2, afterMs: 0, onDemandOnly: false } }, /postcopy.enabled is false/],
    [{ autoConverge: { enabled: true, initialPct: 60, incrementPct: 10, maxPct: 50 } }, /exceeds max_pct/],
    [{ downtimeLimitMs: 3_000_000 }, /exceeds QEMU's maximum/],
    [{ postcopy: { enabled: true, afterPasses: 2, afterMs: 0, onDemandOnly: true } }, /on_demand_only contradicts/],
  ])('refuses contradicting policy %#', (p, msg) => {
    expect(() => resolveMigrationConfig(policy(p as Partial<MigrationPolicy>), qemu10)).toThrow(InvalidArgumentError);
    expect(() => resolveMigrationConfig(policy(p as Partial<MigrationPolicy>), qemu10)).toThrow(msg);
  });

  it('refuses a capability the node lacks', () => {
    const qemu72 = new Set([...qemu10].filter((c) => c !== 'switchover-ack'));
    expect(() => resolveMigrationConfig(policy({ switchoverAck: true }), qemu72)).toThrow(/does not support the "switchover-ack" capability/);
  });

  it('arms auto-converge and post-copy for the adaptive policy', () => {
    const c = resolveMigrationConfig(policy({ kind: PolicyKind.POLICY_KIND_ADAPTIVE }), qemu10);
    expect(c.capabilities).toMatchObject({ 'auto-converge': true, 'postcopy-ram': true, 'postcopy-preempt': true });
    expect(c.autoConverge).toMatchObject({ enabled: false, armed: true });
    expect(c.sourceParameters['max-cpu-throttle']).toBe(1);
    expect(c.postcopy.afterPasses).toBeUndefined();
  });
});

describe('progress', () => {
  it('maps QEMU statuses', () => {
    expect(stateFromQemuStatus('active')).toBe(MigrationState.MIGRATION_STATE_PRECOPY);
    expect(stateFromQemuStatus('postcopy-paused')).toBe(MigrationState.MIGRATION_STATE_POSTCOPY_PAUSED);
    expect(stateFromQemuStatus('completed')).toBe(MigrationState.MIGRATION_STATE_VERIFYING);
    expect(stateFromQemuStatus('none')).toBeUndefined();
  });

  it('builds a sample from query-migrate', () => {
    const s = progressSample(
      { status: 'active', ram: { transferred: 10, remaining: 20, total: 30, 'dirty-sync-count': 2, mbps: 99.5, 'dirty-pages-rate': 7 }, 'expected-downtime': 12, 'cpu-throttle-percentage': 40 },
      { now: new Date(2000), startedAt: new Date(500), state: MigrationState.MIGRATION_STATE_PRECOPY, downtimeLimitMs: 300, maxBandwidthBytesPerSec: 0, sourceCpuSeconds: 1, destinationCpuSeconds: 0.5 },
    );
    expect(s).toMatchObject({ elapsedMs: 1500, pass: 2, transferredBytes: 10, remainingBytes: 20, throughputMbps: 99.5, throttlePct: 40, expectedDowntimeMs: 12 });
  });

  it('detects a stalled transfer only after the stall period', () => {
    const d = new StallDetector(1000);
    expect(d.update(100, 0)).toBe(false);
    expect(d.update(100, 900)).toBe(false);
    expect(d.update(100, 1000)).toBe(true);
    expect(d.update(200, 1100)).toBe(false);
    d.reset(2000);
    expect(d.update(200, 2500)).toBe(false);
  });
});
