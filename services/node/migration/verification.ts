/**
 * Proof that a migrated guest verified its memory on the destination after it arrived.
 *
 * The guest's `verify` lines carry cumulative per-worker counters that live in guest memory, so
 * they migrate with it; the destination's console parser starts fresh, so its samples say 0 for a
 * worker until that worker's first `verify` line printed here. The first non-zero count seen here
 * for a worker is therefore a baseline taken after arrival (it includes pages verified on the
 * source), and a later, larger count for the same worker proves pages verified here.
 *
 * Comparing a destination sample with the source's last sample (what was done before) proves
 * nothing and often reads 0: a per-worker sample set against the source's all-workers sum, or a
 * combined sample summed over only the workers that have reported here so far.
 */
import type { GuestPerfSample } from '../../shared/gen/migd/v1/common.js';

export class VerificationTracker {
  private readonly first = new Map<number, number>();
  private readonly latest = new Map<number, number>();
  private errors = 0;
  private last: GuestPerfSample | undefined;

  /** Feeds one sample printed on the destination after the guest resumed here. */
  add(s: GuestPerfSample): void {
    this.last = s;
    this.errors = Math.max(this.errors, s.integrityErrors);
    if (s.pagesVerified <= 0) return;
    if (!this.first.has(s.worker)) this.first.set(s.worker, s.pagesVerified);
    this.latest.set(s.worker, Math.max(this.latest.get(s.worker) ?? 0, s.pagesVerified));
  }

  /**
   * Pages verified here since each worker's first report here: per worker when workers report
   * individually, else (an idle guest reports only whole-guest heartbeats) the whole guest's.
   */
  get pagesVerifiedAfter(): number {
    const workers = [...this.first.keys()].filter((w) => w >= 0);
    const keys = workers.length > 0 ? workers : [...this.first.keys()];
    return keys.reduce((sum, w) => sum + Math.max(0, (this.latest.get(w) ?? 0) - (this.first.get(w) ?? 0)), 0);
  }

  /** True once some pages were verified here after arrival. */
  get proven(): boolean {
    return this.pagesVerifiedAfter > 0;
  }

  /** Highest integrity-error count the guest reported here. */
  get integrityErrors(): number {
    return this.errors;
  }

  /** The latest sample seen here. */
  get lastSample(): GuestPerfSample | undefined {
    return this.last;
  }
}
