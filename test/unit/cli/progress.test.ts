import { describe, expect, it } from 'vitest';
import { MigrationState, PolicyActionKind, ProgressSample, type GuestPerfSample } from '../../../services/shared/gen/migd/v1/common.js';
import { GetRunTimelineResponse, Run } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { Event } from '../../../services/shared/gen/migd/v1/events.js';
import { ProgressPrinter, WatchModel, describeEvent, formatProgressLine, progressFraction } from '../../../services/coordinator/cli/progress.js';
import { summarizeTimeline } from '../../../services/coordinator/cli/summary.js';
import { describePolicy, formatRunDetails } from '../../../services/coordinator/cli/views.js';

const MiB = 2 ** 20;
const S = MigrationState;

function progress(p: Partial<ProgressSample>): ProgressSample {
  return ProgressSample.fromPartial({ state: S.MIGRATION_STATE_PRECOPY, totalBytes: 192 * MiB, pageSize: 4096, ...p });
}

const ev = {
  state: (runSequence: number, from: MigrationState, to: MigrationState, reason = ''): Event =>
    Event.fromPartial({ id: `e${runSequence}`, runSequence, payload: { $case: 'runState', value: { runId: 'r1', planId: 'p1', vmName: 'vm1', change: { from, to, reason } } } }),
  progress: (runSequence: number, p: Partial<ProgressSample>): Event => Event.fromPartial({ id: `e${runSequence}`, runSequence, payload: { $case: 'runProgress', value: { runId: 'r1', sample: progress(p) } } }),
  guest: (runSequence: number, g: Partial<GuestPerfSample>): Event => Event.fromPartial({ id: `e${runSequence}`, runSequence, payload: { $case: 'runGuest', value: { runId: 'r1', sample: g } } }),
  action: (runSequence: number): Event =>
    Event.fromPartial({ id: `e${runSequence}`, runSequence, payload: { $case: 'runAction', value: { runId: 'r1', action: { kind: PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME, value: 600, actor: 'policy:adaptive', reason: 'predicted not to converge' } } } }),
  completed: (runSequence: number, state: MigrationState): Event =>
    Event.fromPartial({
      id: `e${runSequence}`,
      runSequence,
      payload: {
        $case: 'runCompleted',
        value: {
          runId: 'r1',
          planId: 'p1',
          vmName: 'vm1',
          state,
          stats: { totalTimeMs: 4200, downtimeMs: 12, transferredBytes: 190 * MiB, passes: 3 },
          error: state === S.MIGRATION_STATE_FAILED ? { reason: 'DESTINATION_UNAVAILABLE', message: 'node b went away', code: 'UNAVAILABLE' } : undefined,
        },
      },
    }),
};

describe('watch model and lines', () => {
  it('follows a run through its events', () => {
    const m = new WatchModel([{ runId: 'r1', vmName: 'vm1', sourceNodeId: 'a', destinationNodeId: 'b' }]);
    const v = m.apply(ev.state(1, S.MIGRATION_STATE_QUEUED, S.MIGRATION_STATE_PRECOPY, 'started'))!;
    expect(describeEvent(ev.state(1, S.MIGRATION_STATE_QUEUED, S.MIGRATION_STATE_PRECOPY, 'started'), v)).toBe('vm1 a→b: queued → precopy (started)');
    m.apply(ev.progress(2, { pass: 2, remainingBytes: 48 * MiB, throughputMbps: 800, dirtyPagesRate: 2560, throttlePct: 20, elapsedMs: 1500 }));
    m.apply(ev.guest(3, { msPerGib: 1234.4, integrityErrors: 0 }));
    m.apply(ev.guest(4, { msPerGib: 0, integrityErrors: 0 })); // heartbeat-only: keeps the last pass figure
    const line = formatProgressLine(m.get('r1')!, { style: 'ascii', barWidth: 8 });
    expect(line).toBe('vm1 a→b  precopy    [######..]  75%  pass 2  remaining 48.0 MiB  95.4 MiB/s  dirty 10.0 MiB/s  throttle 20%  guest 1234 ms/GiB  1.5 s');
    expect(describeEvent(ev.action(5), m.apply(ev.action(5)))).toBe('vm1 a→b: policy:adaptive set downtime limit 600 ms — predicted not to converge');
    const done = m.apply(ev.completed(6, S.MIGRATION_STATE_SUCCEEDED))!;
    expect(done.completed).toBe(true);
    expect(progressFraction(done.progress, done.state)).toBe(1);
    expect(describeEvent(ev.completed(6, S.MIGRATION_STATE_SUCCEEDED), done)).toBe('vm1 a→b: SUCCEEDED in 4.2 s, downtime 12 ms, 190.0 MiB in 3 passes, 0 integrity errors');
    expect(m.allCompleted(['r1'])).toBe(true);
  });

  it('shows the storage copy (disks copied of total, rate) before the memory stream, and disks in the final stats', () => {
    const m = new WatchModel([{ runId: 'r1', vmName: 'vm1', sourceNodeId: 'a', destinationNodeId: 'b' }]);
    m.apply(ev.state(1, S.MIGRATION_STATE_QUEUED, S.MIGRATION_STATE_PREPARING, 'copying 1 LOCAL disk(s)'));
    const v = m.apply(ev.progress(2, { state: S.MIGRATION_STATE_PREPARING, storagePhase: true, diskTransferredBytes: 16 * MiB, diskTotalBytes: 64 * MiB, diskRateBytesPerSec: 8 * MiB, elapsedMs: 2000 }))!;
    expect(progressFraction(v.progress, v.state)).toBe(0.25);
    expect(formatProgressLine(v, { style: 'ascii', barWidth: 4 })).toBe('vm1 a→b  preparing  [#...]  25%  disks 16.0 MiB/64.0 MiB  8.0 MiB/s  2.0 s');
    m.apply(ev.progress(3, { pass: 1, remainingBytes: 96 * MiB, throughputMbps: 800, diskTransferredBytes: 70 * MiB, diskTotalBytes: 70 * MiB, elapsedMs: 3000 }));
    expect(formatProgressLine(m.get('r1')!, { style: 'ascii', barWidth: 4 })).toContain('throttle 0%  disks 70.0 MiB/70.0 MiB');
    const done = Event.fromPartial({ runSequence: 4, payload: { $case: 'runCompleted', value: { runId: 'r1', vmName: 'vm1', state: S.MIGRATION_STATE_SUCCEEDED, stats: { totalTimeMs: 4200, downtimeMs: 12, transferredBytes: 190 * MiB, passes: 3, disksCopied: 1, diskTransferredBytes: 70 * MiB, storageMs: 1500 } } } });
    expect(describeEvent(done, m.apply(done))).toBe('vm1 a→b: SUCCEEDED in 4.2 s, downtime 12 ms, 190.0 MiB in 3 passes, 1 disk copied (70.0 MiB, storage phase 1.5 s), 0 integrity errors');
  });

  it('describes failures with their reason, and non-run events', () => {
    const m = new WatchModel();
    const v = m.apply(ev.completed(9, S.MIGRATION_STATE_FAILED));
    expect(describeEvent(ev.completed(9, S.MIGRATION_STATE_FAILED), v)).toBe('vm1: FAILED — DESTINATION_UNAVAILABLE: node b went away');
    const node = Event.fromPartial({ payload: { $case: 'nodeState', value: { nodeId: 'b', up: false, reason: 'missed heartbeats' } } });
    expect(describeEvent(node, m.apply(node))).toBe('node b: DOWN (missed heartbeats)');
    const plan = Event.fromPartial({ payload: { $case: 'planState', value: { planId: 'p1', state: 'PLAN_STATE_SUCCEEDED', runsTotal: 2, runsFinished: 2 } } });
    expect(describeEvent(plan, undefined)).toBe('plan p1: succeeded (2/2 runs finished)');
    expect(describeEvent(ev.progress(1, {}), undefined)).toBeUndefined();
  });
});

describe('progress printer', () => {
  function sink(isTTY: boolean): { out: string[]; now: number; printer: ProgressPrinter } {
    const s = { out: [] as string[], now: 0, printer: undefined as unknown as ProgressPrinter };
    s.printer = new ProgressPrinter({ write: (x) => s.out.push(x), isTTY, columns: 200, now: () => s.now });
    return s;
  }

  it('prints plain lines at most once a second of migration time, and on pass changes', () => {
    const s = sink(false);
    const m = new WatchModel([{ runId: 'r1', vmName: 'vm1' }]);
    for (const [i, elapsedMs, pass] of [[1, 0, 1], [2, 250, 1], [3, 500, 1], [4, 1000, 1], [5, 1100, 2], [6, 1200, 2]] as const) {
      const v = m.apply(ev.progress(i, { elapsedMs, pass, remainingBytes: 10 * MiB }));
      s.printer.update([], m.runs(), v);
    }
    // 0 ms (first), 1000 ms (a second later), 1100 ms (pass 2); not 250, 500 or 1200 ms.
    expect(s.out).toHaveLength(3);
    expect(s.out.map((l) => / (\d+ ms|[\d.]+ s)\n$/.exec(l)?.[1])).toEqual(['0 ms', '1.0 s', '1.1 s']);
    expect(s.out.every((l) => l.startsWith('vm1  precopy') && l.endsWith('\n') && !l.includes('\x1b'))).toBe(true);
    s.printer.update(['vm1: SUCCEEDED'], m.runs(), undefined);
    expect(s.out.at(-1)).toBe('vm1: SUCCEEDED\n');
  });

  it('prints no stale progress line for a state change, and the outcome once completed', () => {
    const s = sink(false);
    const m = new WatchModel([{ runId: 'r1', vmName: 'vm1' }]);
    s.printer.update([], m.runs(), m.apply(ev.progress(1, { elapsedMs: 0, pass: 1, remainingBytes: 10 * MiB })));
    const change = ev.state(2, S.MIGRATION_STATE_PRECOPY, S.MIGRATION_STATE_SWITCHOVER);
    const v = m.apply(change)!;
    s.printer.update([describeEvent(change, v)!], m.runs(), v);
    expect(s.out).toEqual([expect.stringMatching(/^vm1  precopy /), 'vm1: precopy → switchover\n']);
    const first = ev.state(0, S.MIGRATION_STATE_UNSPECIFIED, S.MIGRATION_STATE_QUEUED, 'created');
    expect(describeEvent(first, m.apply(first))).toBe('vm1: → queued (created)');
    m.apply(ev.completed(3, S.MIGRATION_STATE_SUCCEEDED));
    expect(formatProgressLine(m.get('r1')!, { style: 'ascii', barWidth: 4 })).toBe('vm1  succeeded  [####] 100%  4.2 s, downtime 12 ms, 190.0 MiB in 3 passes, 0 integrity errors');
  });

  it('redraws the progress lines in place on a terminal', () => {
    const s = sink(true);
    const m = new WatchModel([{ runId: 'r1', vmName: 'vm1' }]);
    s.printer.update(['vm1: queued → precopy'], m.runs(), m.apply(ev.progress(1, { elapsedMs: 0, pass: 1 })));
    expect(s.out.join('')).toMatch(/^vm1: queued → precopy\nvm1  precopy .*\n$/);
    s.out.length = 0;
    s.now = 50; // within the redraw interval: nothing
    s.printer.update([], m.runs(), m.apply(ev.progress(2, { elapsedMs: 50, pass: 1 })));
    expect(s.out).toEqual([]);
    s.now = 200;
    s.printer.update([], m.runs(), m.apply(ev.progress(3, { elapsedMs: 200, pass: 1 })));
    expect(s.out[0]).toBe('\x1b[1A\r\x1b[J');
    expect(s.out).toHaveLength(2);
    // Interrupted: the footer is cleared and the last line stays.
    s.out.length = 0;
    s.printer.finish(m.runs());
    expect(s.out).toEqual(['\x1b[1A\r\x1b[J', expect.stringMatching(/^vm1  precopy .*\n$/)]);
    // Completed: its note said how it ended; nothing is left to draw.
    s.out.length = 0;
    const done = m.apply(ev.completed(4, S.MIGRATION_STATE_SUCCEEDED));
    s.printer.update(['vm1: SUCCEEDED'], m.runs(), done);
    expect(s.out).toEqual(['vm1: SUCCEEDED\n']);
    s.printer.finish(m.runs());
    expect(s.out).toEqual(['vm1: SUCCEEDED\n']);
  });
});

describe('run details', () => {
  const t0 = Date.parse('2025-03-02T12:00:00Z');
  const at = (ms: number): Date => new Date(t0 + ms);
  const timeline = GetRunTimelineResponse.fromPartial({
    run: Run.fromPartial({
      id: 'r1',
      planId: 'p1',
      vmName: 'vm1',
      sourceNodeId: 'a',
      destinationNodeId: 'b',
      memoryMib: 192,
      state: S.MIGRATION_STATE_SUCCEEDED,
      policy: { kind: 2, downtimeLimitMs: 300, maxDowntimeMs: 2000, postcopy: { enabled: true, onDemandOnly: true, preempt: true } },
      createdAt: at(0),
      startedAt: at(100),
      finishedAt: at(4100),
      transitions: [
        { time: at(100), from: S.MIGRATION_STATE_QUEUED, to: S.MIGRATION_STATE_PREPARING, reason: 'slot free' },
        { time: at(3000), from: S.MIGRATION_STATE_POSTCOPY, to: S.MIGRATION_STATE_VERIFYING, reason: 'QEMU reported completion' },
      ],
      actions: [{ time: at(2100), kind: PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY, actor: 'policy:adaptive', reason: 'not converging' }],
      stats: { totalTimeMs: 4000, downtimeMs: 5, transferredBytes: 200 * MiB, passes: 2, integrityErrors: 0, pagesVerifiedAfter: 8192 },
    }),
    progress: [
      { time: at(600), pass: 1, throughputMbps: 400, dirtyPagesRate: 1000, pageSize: 4096, throttlePct: 0, downtimeLimitMs: 300 },
      { time: at(1600), pass: 2, throughputMbps: 800, dirtyPagesRate: 3000, pageSize: 4096, throttlePct: 30, downtimeLimitMs: 600 },
    ],
    // The guest's clock (guestMonoMs) stands still for 500 ms around the switch-over (host 2000 →
    // 2500 ms, guest 2000 → 2000 + 0) and runs at the host's pace otherwise.
    guest: [
      { time: at(-2000), guestMonoMs: 10_000 - 2000, msPerGib: 1000 },
      { time: at(-1000), guestMonoMs: 10_000 - 1000, msPerGib: 1100 },
      { time: at(2000), guestMonoMs: 10_000 + 2000, msPerGib: 3000, heartbeatGapMs: 40 },
      { time: at(2500), guestMonoMs: 10_000 + 2000, msPerGib: 0, heartbeatGapMs: 250 },
      { time: at(3500), guestMonoMs: 10_000 + 3000, msPerGib: 1050 },
      { time: at(6000), guestMonoMs: 10_000 + 5500, msPerGib: 1200, heartbeatGapMs: 900 },
    ],
    hostCpu: [{ time: at(4000), sourceCpuSeconds: 3, destinationCpuSeconds: 1.5 }],
  });

  it('summarises the timeline per phase', () => {
    const s = summarizeTimeline(timeline);
    expect(s).toMatchObject({ progressSamples: 2, passes: 2, peakThroughputBytesPerSec: 100_000_000, meanThroughputBytesPerSec: 75_000_000, maxThrottlePct: 30, finalDowntimeLimitMs: 600, maxHeartbeatGapDuringMs: 250, integrityErrors: 0, hostCpuSeconds: 4.5 });
    expect(s.peakDirtyBytesPerSec).toBe(3000 * 4096);
    expect(s.guestBefore).toEqual({ samples: 2, meanMsPerGib: 1050 });
    expect(s.guestDuring).toEqual({ samples: 1, meanMsPerGib: 3000 });
    // After arrival: from the VERIFYING transition (3 s), not from the run's end (4.1 s).
    expect(s.guestAfter).toEqual({ samples: 2, meanMsPerGib: 1125 });
    // The 500 ms pause counts in full; the slow stretch before it (3000 vs 1050 ms/GiB over 3 s of
    // guest time, 100 ms..2 s inside the window) adds the work not done.
    expect(s.guestPausedMs).toBeCloseTo(500, 6);
    expect(s.guestLongestPauseMs).toBeCloseTo(500, 6);
    expect(s.guestLostMs).toBeGreaterThan(500);
  });

  it('prints details, changes, actions and the summary', () => {
    const text = formatRunDetails(timeline);
    expect(text).toContain('route     a → b');
    expect(text).toContain('policy    adaptive (downtime 300 ms, max downtime 2.0 s, bandwidth unlimited, post-copy on demand)');
    expect(text).toContain('result    4.0 s, downtime 5 ms, 200.0 MiB in 2 passes, 0 integrity errors');
    expect(text).toMatch(/\+100 ms {2}queued → preparing {2}\(slot free\)/);
    expect(text).toMatch(/\+2\.1 s {2}policy:adaptive switched to post-copy — not converging/);
    expect(text).toContain('guest     before 1050 ms/GiB (2), during 3000 ms/GiB (1), after 1125 ms/GiB (2); longest heartbeat gap 250 ms; integrity errors 0');
    expect(text).toMatch(/harm {6}guest time lost [\d.]+ s, of it paused 500 ms \(longest 500 ms\)/);
    expect(text).toContain('host cpu  4.5 s');
    expect(text).not.toContain('network');
  });

  it('prints the nodes\' network figures next to the blackout measured outside', () => {
    const run = timeline.run!;
    const withNet = { ...timeline, run: { ...run, stats: { ...run.stats!, announceAfterResumeMs: 4, nicsAnnounced: 2 }, networkBlackout: { blackoutMs: 412, probesSent: 900, probesLost: 38, probeIntervalMs: 10, measuredBy: 'testbed prober', gapStartedAt: at(2000), gapEndedAt: at(2412) } } };
    expect(formatRunDetails(withNet)).toContain(
      '  network   nodes: QEMU downtime 5 ms, announce-self 4 ms after the resume (2 NICs; first RARP 50 ms later); outside: blackout 412 ms at +2.0 s, 38 of 900 probes lost (every 10 ms), testbed prober',
    );
  });

  it('describes a policy by what differs from the defaults', () => {
    expect(describePolicy({ kind: 1, downtimeLimitMs: 0, maxBandwidthBytesPerSec: 100 * MiB, autoConverge: { enabled: true, initialPct: 0, incrementPct: 0, maxPct: 0 }, postcopy: undefined, xbzrle: undefined, multifd: { enabled: true, channels: 4, compression: 3, compressionLevel: 0 }, switchoverAck: false, tls: true, completionTimeoutSecPerGib: 150, progressTimeoutSec: 0, timeoutAction: 0, downtimeSteps: [], maxDowntimeMs: 0 })).toBe(
      'fixed (bandwidth 100.0 MiB/s, auto-converge, multifd 4 zstd, tls, abort after 150 s/GiB)',
    );
  });
});
