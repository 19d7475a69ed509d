/**
 * The host's checks of a migrated guest (services/node/migration/guest-checks.ts): each passes on
 * what a healthy guest shows and fails, naming why, on what a dead or damaged one shows.
 */
import { describe, expect, it } from 'vitest';
import { describeChecks, diskChecks, ioErrorCheck, runningCheck, vcpuCheck, vcpusRan } from '../../../services/node/migration/guest-checks.js';

const digest = (diskId: string, sha256: string, dataBytes = 4 << 20, error = '') => ({ diskId, sha256, dataBytes, ms: 3, error });

describe('guest checks on the destination', () => {
  it('running: only QMP running passes', () => {
    expect(runningCheck({ running: true, status: 'running' }).passed).toBe(true);
    expect(runningCheck({ running: false, status: 'io-error' })).toMatchObject({ passed: false, detail: 'QMP query-status: io-error' });
    expect(runningCheck(undefined)).toMatchObject({ passed: false, detail: 'QMP query-status: no answer' });
  });

  it('vcpus: the threads must have run after the resume', () => {
    expect(vcpuCheck(1_000_000, 13_500_000, 1000)).toMatchObject({ passed: true, detail: 'the vCPU threads ran 12.5 ms of CPU in the 1000 ms after the resume' });
    expect(vcpuCheck(5, 5, 1000).passed).toBe(false);
    expect(vcpuCheck(undefined, 5, 1000).passed).toBe(false);
  });

  it('vcpusRan: the destination stops watching as soon as the threads used CPU, never on a missing reading', () => {
    expect(vcpusRan(1_000_000, 1_000_001)).toBe(true);
    expect(vcpusRan(7, 7)).toBe(false);
    expect(vcpusRan(7, 6)).toBe(false);
    expect(vcpusRan(undefined, 7)).toBe(false);
    expect(vcpusRan(7, undefined)).toBe(false);
  });

  it('io-errors: any failed request on any device fails', () => {
    const ok = { qdev: 'dev-d0', stats: { failed_rd_operations: 0, failed_wr_operations: 0, failed_flush_operations: 0 } };
    expect(ioErrorCheck([ok, ok]).passed).toBe(true);
    expect(ioErrorCheck([ok, { qdev: 'dev-d1', stats: { failed_wr_operations: 3 } }])).toMatchObject({ passed: false, detail: 'failed block requests: dev-d1: 3' });
    expect(ioErrorCheck(undefined).passed).toBe(false);
  });

  it('disk: equal digests pass; a different one, a missing one or an error fails', () => {
    const a = 'a'.repeat(64);
    const b = 'b'.repeat(64);
    const [same, other, missing, failed] = diskChecks(
      [digest('d0', a), digest('d1', a), digest('d2', a), digest('d3', a)],
      [digest('d0', a), digest('d1', b), digest('d3', '', 0, 'too big')],
    );
    expect(same).toMatchObject({ name: 'disk:d0', passed: true });
    expect(same!.detail).toMatch(/^identical to the source at the switch-over: SHA-256 a{16}… over 4\.0 MiB/);
    expect(other).toMatchObject({ name: 'disk:d1', passed: false });
    expect(other!.detail).toMatch(/^differs from the source/);
    expect(missing).toMatchObject({ name: 'disk:d2', passed: false, detail: 'the destination sent no digest for this disk' });
    expect(failed).toMatchObject({ name: 'disk:d3', passed: false, detail: 'no digest on the destination: too big' });
    // Same hash but a different amount of data is not the same disk.
    expect(diskChecks([digest('d0', a, 1)], [digest('d0', a, 2)])[0]!.passed).toBe(false);
    expect(diskChecks([digest('d0', '', 0, 'unreadable')], [digest('d0', a)])[0]).toMatchObject({ passed: false, detail: 'no digest on the source: unreadable' });
  });

  it('describes the checks that passed, or those that failed', () => {
    expect(describeChecks([runningCheck({ running: true }), vcpuCheck(1, 2, 1000)])).toBe('running, vcpus');
    expect(describeChecks([runningCheck({ running: true }), vcpuCheck(2, 2, 1000)])).toBe('vcpus: the vCPU threads did not run in the 1000 ms after the resume');
  });
});
