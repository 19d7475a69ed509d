/**
 * The coordinator's cost track live and in a replay: the source node hands the first watcher the
 * guest's samples of the seconds before the run and of its set-up (services/node/migration/source.ts
 * watch), those from before the current state ahead of it. Folded in that order, the track is the
 * one a replay of the stored run (in time order) leaves; the guest's pace during a LOCAL disk copy
 * is not its baseline.
 */
import { describe, expect, it } from 'vitest';
import { GuestPerfSample, MigrationState, ProgressSample } from '../../../services/shared/gen/migd/v1/common.js';
import { type GuestCostTrack, replayCostTrack, trackGuestSample, trackProgressSample, trackTransition } from '../../../services/coordinator/domain/policy/index.js';

const T0 = 1_800_000_000_000;
const PRECOPY_AT = T0 + 2000;

/** The whole guest's pace line every 100 ms: `pace` until `slowFrom`, then `slowPace`. */
function lines(count: number, pace: number, slowFrom: number, slowPace: number): GuestPerfSample[] {
  return Array.from({ length: count }, (_, i) => {
    const t = T0 + (i + 1) * 100;
    return GuestPerfSample.fromPartial({ time: new Date(t), guestMonoMs: 50_000 + (i + 1) * 100, worker: -1, msPerGib: t >= slowFrom ? slowPace : pace });
  });
}

const progress = ProgressSample.fromPartial({ time: new Date(T0 + 2950), elapsedMs: 950, state: MigrationState.MIGRATION_STATE_PRECOPY, qemuStatus: 'active', pass: 1, transferredBytes: 50e6, remainingBytes: 400e6, totalBytes: 512e6, throughputMbps: 400 });

describe('the cost track from a first watch (pure)', () => {
  const guest = lines(30, 300, PRECOPY_AT, 600);
  const replayed = replayCostTrack([progress], guest, [{ time: new Date(PRECOPY_AT), to: MigrationState.MIGRATION_STATE_PRECOPY }], []);

  it("folded in the watch's order (earlier samples, the state at its entry time, progress, later samples) equals the replay", () => {
    let live: GuestCostTrack = {};
    for (const g of guest.filter((x) => x.time!.getTime() <= PRECOPY_AT)) live = trackGuestSample(live, g);
    live = trackTransition(live, MigrationState.MIGRATION_STATE_PRECOPY, PRECOPY_AT);
    live = trackProgressSample(live, progress);
    for (const g of guest.filter((x) => x.time!.getTime() > PRECOPY_AT)) live = trackGuestSample(live, g);
    expect(live).toEqual(replayed);
    expect(replayed.guest?.baselineMsPerGib).toBe(300);
    expect(replayed.guest?.precopy.paced).toBe(10);
    // 600 against 300: half the pre-copy second was work not done.
    expect(replayed.guest?.precopy.slowedMs).toBeCloseTo(500, 0);
  });

  it('the state first (and at the time it was watched) would have left no baseline, and pre-copy shorter', () => {
    let live: GuestCostTrack = trackTransition({}, MigrationState.MIGRATION_STATE_PRECOPY, T0 + 3000);
    live = trackProgressSample(live, progress);
    for (const g of guest) live = trackGuestSample(live, g);
    expect(live.guest?.baselineMsPerGib ?? 0).not.toBe(300);
    expect(live).not.toEqual(replayed);
  });

  it("takes no baseline from the guest's pace during a LOCAL disk copy", () => {
    const copyAt = T0 + 1000;
    const slowed = lines(30, 300, copyAt, 900);
    const storage = ProgressSample.fromPartial({ time: new Date(copyAt), state: MigrationState.MIGRATION_STATE_PREPARING, storagePhase: true, transferredBytes: 1e6 });
    const t = replayCostTrack([storage, progress], slowed, [{ time: new Date(PRECOPY_AT), to: MigrationState.MIGRATION_STATE_PRECOPY }], []);
    expect(t.storageAtMs).toBe(copyAt);
    expect(t.guest?.baselineMsPerGib).toBe(300);
    // Without the copy's mark the write-blocked pace would have been the baseline.
    const unmarked = replayCostTrack([progress], slowed, [{ time: new Date(PRECOPY_AT), to: MigrationState.MIGRATION_STATE_PRECOPY }], []);
    expect(unmarked.guest?.baselineMsPerGib).toBe(900);
  });
});
