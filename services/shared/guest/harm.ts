/**
 * Guest time lost to a migration, measured from the guest's own clock. Pure.
 *
 * Every guest sample carries two times: when the host read the line (`hostMs`) and the guest's
 * CLOCK_MONOTONIC when the guest wrote it (`guestMonoMs`). Under TCG the guest's clock stands
 * still while the VM is stopped (switch-over, a forced pause, a destination kept paused until the
 * handover), and it runs on while the VM runs but cannot make progress (a vCPU blocked on a
 * post-copy page fault, a throttled vCPU asleep). So:
 *
 * - **stopped**: host time minus guest time between consecutive samples. Summed over a window it
 *   telescopes to (host span − guest span), so the host's read jitter cancels except at the two
 *   ends; every pause counts in full, however few samples the guest wrote around it.
 * - **slowed**: while the guest clock runs, the work not done: each whole-guest pace sample
 *   (ms per GiB written, measured by the guest over its own report window, which stretches over a
 *   stall) stands for the guest time since the previous one, and loses
 *   `guest time × max(0, 1 − baseline / pace)` of it (half speed for 10 s = 5 s).
 *
 * lost = stopped + slowed, in milliseconds of wall-clock guest time. Both need samples on both
 * sides of what they measure: a pause after the last sample of the window is only seen once a
 * sample after it is (the run's after-arrival sample).
 */

/** The two clocks of one guest sample, and its whole-guest pace when it has one. */
export interface GuestClockSample {
  /** Host time the line was read (epoch ms). */
  readonly hostMs: number;
  /** The guest's monotonic clock when it wrote the line (ms). */
  readonly guestMonoMs: number;
  /** Whole-guest ms per GiB written over the report window; 0 or undefined = no pace (heartbeat, single worker). */
  readonly msPerGib?: number;
}

export interface GuestTimeLost {
  /** Host time in the window during which the guest's clock stood still (ms, ≥ 0). */
  readonly stoppedMs: number;
  /** The longest single stretch of it between two consecutive samples (ms). */
  readonly longestStopMs: number;
  /** Running but slowed or stalled, as lost work (ms); NaN without a baseline or pace samples. */
  readonly slowedMs: number;
  /** stoppedMs + slowedMs (slowed counted as 0 when unknown); NaN when the window has no clock pair. */
  readonly lostMs: number;
  /** Host time of the window covered by clock pairs (ms): how much of it was observed. */
  readonly coveredMs: number;
}

/**
 * Overlap of [a, b] with [from, to] as a fraction of b − a. Two lines read out of order (b ≤ a:
 * the host read one late) count wholly where a lies, so the telescoping sum stays intact.
 */
function share(a: number, b: number, from: number, to: number): number {
  if (!(b > a)) return a >= from && a <= to ? 1 : 0;
  const o = Math.min(b, to) - Math.max(a, from);
  return o <= 0 ? 0 : o / (b - a);
}

/**
 * Orders samples by the guest's clock (monotonic across a migration: it migrates with the guest)
 * and drops duplicates (the same line recorded twice: as a run sample and from a heartbeat).
 */
export function orderByGuestClock<T extends GuestClockSample>(samples: readonly T[]): T[] {
  const seen = new Set<string>();
  const out: T[] = [];
  for (const s of [...samples].filter((x) => Number.isFinite(x.hostMs) && Number.isFinite(x.guestMonoMs)).sort((a, b) => a.guestMonoMs - b.guestMonoMs || a.hostMs - b.hostMs)) {
    const key = `${s.guestMonoMs}|${s.msPerGib ?? 0}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(s);
  }
  return out;
}

/**
 * Guest time lost over the host-time window [fromMs, toMs].
 * @param samples every guest sample of the VM around the window (any worker; pace only from the
 *   whole-guest ones the caller marks with msPerGib)
 * @param baselineMsPerGib the guest's pace before the migration; NaN or ≤ 0 = unknown
 */
export function guestTimeLost(samples: readonly GuestClockSample[], baselineMsPerGib: number, fromMs: number, toMs: number): GuestTimeLost {
  const s = orderByGuestClock(samples);
  let stopped = 0;
  let longest = 0;
  let covered = 0;
  let pairs = 0;
  for (let i = 1; i < s.length; i++) {
    const a = s[i - 1]!;
    const b = s[i]!;
    const dg = b.guestMonoMs - a.guestMonoMs;
    const f = share(a.hostMs, b.hostMs, fromMs, toMs);
    if (f <= 0 || dg < 0) continue;
    const dh = b.hostMs - a.hostMs;
    pairs++;
    covered += f * dh;
    stopped += f * (dh - dg);
    longest = Math.max(longest, f * (dh - dg));
  }
  const known = Number.isFinite(baselineMsPerGib) && baselineMsPerGib > 0;
  let slowed = 0;
  let paced = 0;
  let prev: GuestClockSample | undefined;
  for (const p of s) {
    if (!(p.msPerGib !== undefined && p.msPerGib > 0)) continue;
    if (prev) {
      const f = share(prev.hostMs, p.hostMs, fromMs, toMs);
      const dg = p.guestMonoMs - prev.guestMonoMs;
      if (f > 0 && dg > 0) {
        paced++;
        if (known) slowed += f * dg * Math.max(0, 1 - baselineMsPerGib / p.msPerGib);
      }
    }
    prev = p;
  }
  const stoppedMs = Math.max(0, stopped);
  const slowedMs = known && paced > 0 ? slowed : NaN;
  return {
    stoppedMs,
    longestStopMs: Math.max(0, longest),
    slowedMs,
    lostMs: pairs === 0 ? NaN : stoppedMs + (Number.isFinite(slowedMs) ? slowedMs : 0),
    coveredMs: covered,
  };
}
