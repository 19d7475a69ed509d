import { describe, expect, it } from 'vitest';
import { MigdError, NotFoundError, PermissionDeniedError, FailedPreconditionError, UnavailableError, DeadlineExceededError, InvalidArgumentError, CancelledError } from '../../../services/shared/errors.js';
import { MigrationState, PolicyKind } from '../../../services/shared/gen/migd/v1/common.js';
import { ExitCode, exitCodeForError, exitCodeForRuns } from '../../../services/coordinator/cli/exit-codes.js';
import { formatTable, policyDisplayName, progressBar, stateName, truncate } from '../../../services/coordinator/cli/format.js';
import { formatBytes, formatDuration, formatRate, mbpsToBytesPerSec } from '../../../services/coordinator/domain/units.js';
import { UsageError, parseDurationMs, parseInteger, parseList, parseMemoryMib, parseRate, parseSize, parseTime } from '../../../services/coordinator/cli/units.js';

const MiB = 2 ** 20;

describe('units', () => {
  it('parses sizes in binary units', () => {
    expect(parseSize('4096', '--x')).toBe(4096);
    expect(parseSize('512K', '--x')).toBe(512 * 1024);
    expect(parseSize('64M', '--x')).toBe(64 * MiB);
    expect(parseSize('64MiB', '--x')).toBe(64 * MiB);
    expect(parseSize('1.5g', '--x')).toBe(1.5 * 2 ** 30);
    expect(parseSize(' 2 GB ', '--x')).toBe(2 * 2 ** 30);
    expect(() => parseSize('lots', '--bytes')).toThrow(/--bytes: "lots" is not a size/);
    expect(() => parseSize('-1M', '--bytes')).toThrow(UsageError);
  });

  it('parses rates as bytes or bits per second', () => {
    expect(parseRate('10M', '--rate')).toBe(10 * MiB);
    expect(parseRate('12.5MiB/s', '--rate')).toBe(12.5 * MiB);
    expect(parseRate('100mbit', '--bandwidth')).toBe(12_500_000);
    expect(parseRate('1gbit/s', '--bandwidth')).toBe(125_000_000);
    expect(parseRate('0', '--bandwidth')).toBe(0);
    expect(() => parseRate('fast', '--bandwidth')).toThrow(/--bandwidth: "fast" is not a rate/);
  });

  it('parses memory as MiB, with an optional unit', () => {
    expect(parseMemoryMib('192', '--memory')).toBe(192);
    expect(parseMemoryMib('1G', '--memory')).toBe(1024);
    expect(() => parseMemoryMib('1.1M', '--memory')).toThrow(/whole number of MiB/);
  });

  it('parses durations with a default unit for bare numbers', () => {
    expect(parseDurationMs('300', '--downtime')).toBe(300);
    expect(parseDurationMs('1.5s', '--downtime')).toBe(1500);
    expect(parseDurationMs('2m', '--x')).toBe(120_000);
    expect(parseDurationMs('30', '--timeout', 's')).toBe(30_000);
    expect(parseDurationMs('250ms', '--timeout', 's')).toBe(250);
    expect(() => parseDurationMs('soon', '--timeout')).toThrow(/--timeout: "soon" is not a duration/);
  });

  it('parses times as ISO dates or ages', () => {
    const now = Date.parse('2025-03-02T12:00:00Z');
    expect(parseTime('2h', '--since', now).toISOString()).toBe('2025-03-02T10:00:00.000Z');
    expect(parseTime('7d', '--since', now).toISOString()).toBe('2025-02-23T12:00:00.000Z');
    expect(parseTime('2025-03-01T08:30:00Z', '--since', now).toISOString()).toBe('2025-03-01T08:30:00.000Z');
    expect(() => parseTime('yesterday', '--since', now)).toThrow(/--since: "yesterday" is not a time/);
    expect(() => parseTime('12', '--since', now)).toThrow(UsageError);
  });

  it('parses integers in range and comma lists', () => {
    expect(parseInteger('-5', '--priority', -10, 10)).toBe(-5);
    expect(() => parseInteger('11', '--priority', -10, 10)).toThrow(/--priority: 11 must be in -10..10/);
    expect(() => parseInteger('1.5', '--n')).toThrow(/not an integer/);
    expect(parseList(['a,b', ' c ', ''])).toEqual(['a', 'b', 'c']);
    expect(parseList(undefined)).toEqual([]);
  });
});

describe('format', () => {
  it('shows bytes, rates and durations in short units', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(812)).toBe('812 B');
    expect(formatBytes(4096)).toBe('4.0 KiB');
    expect(formatBytes(63.94 * MiB)).toBe('63.9 MiB');
    expect(formatBytes(1.5 * 2 ** 30)).toBe('1.50 GiB');
    expect(formatRate(106.3 * MiB)).toBe('106.3 MiB/s');
    expect(mbpsToBytesPerSec(800)).toBe(100_000_000);
    expect(formatDuration(850)).toBe('850 ms');
    expect(formatDuration(12_340)).toBe('12.3 s');
    expect(formatDuration(245_000)).toBe('4m05s');
    expect(formatDuration(7_800_000)).toBe('2h10m');
    expect(formatDuration(NaN)).toBe('-');
    expect(formatDuration(-1)).toBe('-');
    expect(formatDuration(Infinity)).toBe('∞');
    expect(formatBytes(Infinity)).toBe('∞');
    expect(formatRate(NaN)).toBe('-');
  });

  it('draws progress bars in ASCII and with eighth blocks', () => {
    expect(progressBar(0.5, 10)).toBe('[#####.....]');
    expect(progressBar(2, 4)).toBe('[####]');
    expect(progressBar(-1, 4)).toBe('[....]');
    expect(progressBar(NaN, 4)).toBe('[....]');
    const u = progressBar(0.55, 10, 'unicode');
    expect(u).toBe('▕█████▌    ▏'); // 5.5 of 10 cells
    expect([...progressBar(1, 10, 'unicode')]).toHaveLength(12);
    expect([...progressBar(0, 10, 'unicode')]).toHaveLength(12);
  });

  it('aligns table columns, numbers to the right', () => {
    const t = formatTable(['NAME', 'N'], [['a', '1'], ['long-name', '100']], ['left', 'right']);
    expect(t).toBe('NAME         N\na            1\nlong-name  100\n');
  });

  it('names states and policies the way migctl takes them', () => {
    expect(stateName(MigrationState.MIGRATION_STATE_POSTCOPY_PAUSED)).toBe('postcopy-paused');
    expect(stateName(99 as MigrationState)).toBe('state-99');
    expect(policyDisplayName(PolicyKind.POLICY_KIND_OVIRT_MINIMAL_DOWNTIME)).toBe('ovirt-minimal');
    expect(policyDisplayName(PolicyKind.POLICY_KIND_UNSPECIFIED)).toBe('fixed');
    expect(truncate('abcdef', 4)).toBe('abc…');
    expect(truncate('abc', 4)).toBe('abc');
  });
});

describe('exit codes', () => {
  it('maps errors to the documented codes', () => {
    expect(exitCodeForError(new UsageError('x'))).toBe(ExitCode.USAGE);
    expect(exitCodeForError(new NotFoundError('x'))).toBe(3);
    expect(exitCodeForError(new FailedPreconditionError('x'))).toBe(4);
    expect(exitCodeForError(new PermissionDeniedError('x'))).toBe(4);
    expect(exitCodeForError(new InvalidArgumentError('x'))).toBe(4);
    expect(exitCodeForError(new UnavailableError('x'))).toBe(5);
    expect(exitCodeForError(new DeadlineExceededError('x'))).toBe(5);
    expect(exitCodeForError(new CancelledError())).toBe(130);
    expect(exitCodeForError(new MigdError('INTERNAL', 'x'))).toBe(1);
    expect(exitCodeForError(new Error('boom'))).toBe(1);
  });

  it('is 0 only when every watched run succeeded', () => {
    expect(exitCodeForRuns([MigrationState.MIGRATION_STATE_SUCCEEDED, MigrationState.MIGRATION_STATE_SUCCEEDED])).toBe(0);
    expect(exitCodeForRuns([MigrationState.MIGRATION_STATE_SUCCEEDED, MigrationState.MIGRATION_STATE_CANCELLED])).toBe(1);
    expect(exitCodeForRuns([MigrationState.MIGRATION_STATE_FAILED])).toBe(1);
  });
});
