import { describe, expect, it } from 'vitest';
import { guestTimeLost, orderByGuestClock, type GuestClockSample } from '../../../services/shared/guest/harm.js';
import { guestHarm } from '../../../stress/lab/metrics.js';

/**
 * A fake guest on a fake host clock: `steps` advance both clocks (running) or only the host's
 * (stopped); the guest reports its pace every `reportMs` of its own time.
 */
class FakeGuest {
  host = 1_000_000;
  guest = 50_000;
  readonly samples: GuestClockSample[] = [];
  constructor(private readonly reportMs = 100) {}
  /** Runs for `ms` at `pace` ms/GiB (one sample per report window). */
  run(ms: number, pace: number): this {
    for (let t = 0; t < ms; t += this.reportMs) {
      const d = Math.min(this.reportMs, ms - t);
      this.host += d;
      this.guest += d;
      this.samples.push({ hostMs: this.host, guestMonoMs: this.guest, msPerGib: pace });
    }
    return this;
  }
  /** The VM is stopped for `ms`: the guest's clock stands still, it writes nothing. */
  stop(ms: number): this {
    this.host += ms;
    return this;
  }
  /** The vCPU is blocked for `ms` (post-copy fault): the clock runs; the next report covers it. */
  stall(ms: number, pace: number): this {
    this.host += ms + this.reportMs;
    this.guest += ms + this.reportMs;
    // Work of one report window at `pace` spread over ms + reportMs of guest time.
    this.samples.push({ hostMs: this.host, guestMonoMs: this.guest, msPerGib: (pace * (ms + this.reportMs)) / this.reportMs });
    return this;
  }
}

describe('guest time lost from the guest clock', () => {
  it('is zero for a guest running at its baseline pace', () => {
    const g = new FakeGuest().run(10_000, 500);
    const r = guestTimeLost(g.samples, 500, 1_000_000, g.host);
    expect(r.stoppedMs).toBeCloseTo(0, 6);
    expect(r.slowedMs).toBeCloseTo(0, 6);
    expect(r.lostMs).toBeCloseTo(0, 6);
  });

  it('counts a forced pause in full (oVirt suspend: 3.16 s), where the sample-held estimate did not', () => {
    const g = new FakeGuest().run(2000, 500);
    const from = g.host;
    g.run(1000, 500).stop(3160).run(1000, 500);
    const to = g.host;
    g.run(2000, 500);
    const r = guestTimeLost(g.samples, 500, from, to);
    expect(r.stoppedMs).toBeCloseTo(3160, 6);
    expect(r.longestStopMs).toBeCloseTo(3160, 6);
    expect(r.lostMs).toBeCloseTo(3160, 6);
    // The old estimate holds a sample for at most 2 s and sees no slowdown in it: 0 here.
    const old = guestHarm(
      g.samples.map((s) => ({ t: s.hostMs, v: s.msPerGib ?? 0 })),
      500,
      from,
      to,
    );
    expect(old.guestSecondsLost * 1000).toBeLessThan(100);
  });

  it('counts a post-copy stall (clock running, vCPU blocked) as slowed time', () => {
    const g = new FakeGuest().run(2000, 500);
    const from = g.host;
    g.run(500, 500).stall(2000, 500).run(500, 500);
    const to = g.host;
    const r = guestTimeLost(g.samples, 500, from, to);
    expect(r.stoppedMs).toBeCloseTo(0, 6);
    expect(r.slowedMs).toBeCloseTo(2000, 6);
    expect(r.lostMs).toBeCloseTo(2000, 6);
  });

  it('counts half speed for 10 s as 5 s', () => {
    const g = new FakeGuest().run(1000, 500);
    const from = g.host;
    g.run(10_000, 1000);
    const r = guestTimeLost(g.samples, 500, from, g.host);
    expect(r.slowedMs).toBeCloseTo(5000, 6);
    expect(r.lostMs).toBeCloseTo(5000, 6);
  });

  it('adds pauses and slowdowns of one run', () => {
    const g = new FakeGuest().run(1000, 500);
    const from = g.host;
    g.run(4000, 1000).stop(250).run(2000, 500);
    const r = guestTimeLost(g.samples, 500, from, g.host);
    expect(r.stoppedMs).toBeCloseTo(250, 6);
    expect(r.slowedMs).toBeCloseTo(2000, 6);
    expect(r.lostMs).toBeCloseTo(2250, 6);
  });

  it("keeps the host's read jitter out: it cancels between samples and only the ends remain", () => {
    const g = new FakeGuest().run(20_000, 500);
    let seed = 7;
    const noise = (): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return (seed / 2 ** 31) * 40; // 0..40 ms late
    };
    const jittered = g.samples.map((s) => ({ ...s, hostMs: s.hostMs + noise() }));
    const r = guestTimeLost(jittered, 500, 1_000_000, g.host);
    expect(Math.abs(r.stoppedMs)).toBeLessThan(80);
    // A real pause still shows through the same jitter.
    const p = new FakeGuest().run(5000, 500).stop(1500).run(5000, 500);
    const pj = p.samples.map((s) => ({ ...s, hostMs: s.hostMs + noise() }));
    expect(guestTimeLost(pj, 500, 1_000_000, p.host).stoppedMs).toBeGreaterThan(1500 - 80);
    expect(guestTimeLost(pj, 500, 1_000_000, p.host).stoppedMs).toBeLessThan(1500 + 80);
  });

  it('counts only the part of a pause inside the window', () => {
    const g = new FakeGuest().run(1000, 500).stop(1000).run(1000, 500);
    // The pause spans host [1_001_000, 1_002_100) between two samples; the window ends halfway.
    const r = guestTimeLost(g.samples, 500, 1_000_000, 1_001_550);
    expect(r.stoppedMs).toBeCloseTo(500, 0);
  });

  it('drops duplicate lines (recorded by the run and by a heartbeat) and lines read out of order', () => {
    const g = new FakeGuest().run(1000, 500).stop(2000).run(1000, 500);
    const dup = [...g.samples, ...g.samples.slice(3, 6)].reverse();
    expect(orderByGuestClock(dup)).toHaveLength(g.samples.length);
    expect(guestTimeLost(dup, 500, 1_000_000, g.host).stoppedMs).toBeCloseTo(2000, 6);
  });

  it('says NaN when there is nothing to measure, and no slowdown without a baseline', () => {
    expect(guestTimeLost([], 500, 0, 1000).lostMs).toBeNaN();
    const g = new FakeGuest().run(1000, 500).stop(300).run(1000, 500);
    const r = guestTimeLost(g.samples, NaN, 1_000_000, g.host);
    expect(r.slowedMs).toBeNaN();
    expect(r.lostMs).toBeCloseTo(300, 6);
  });
});
