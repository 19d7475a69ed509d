// The prober's gap arithmetic (services/testbed/blackout.ts), and the prober itself against a real
// UDP echo on loopback that goes silent for a while, as a migrating guest does.
import { createSocket, type Socket } from 'node:dgram';

import { afterEach, describe, expect, it } from 'vitest';

import { InvalidArgumentError } from '../../../services/shared/errors.js';
import { computeBlackout, type ProbeAnswer, type ProbeSent } from '../../../services/testbed/blackout.js';
import { Prober } from '../../../services/testbed/prober.js';
import { until } from '../../helpers/until.js';

/** Probes every 10 ms from t=1000; `answer(seq)` gives the RTT or undefined for a lost probe. */
function series(n: number, answer: (seq: number) => number | undefined): { sent: ProbeSent[]; answers: ProbeAnswer[] } {
  const sent: ProbeSent[] = [];
  const answers: ProbeAnswer[] = [];
  for (let seq = 0; seq < n; seq++) {
    const sentMs = 1000 + seq * 10;
    sent.push({ seq, sentMs });
    const rtt = answer(seq);
    if (rtt !== undefined) answers.push({ seq, receivedMs: sentMs + rtt });
  }
  return { sent, answers };
}

describe('computeBlackout', () => {
  it('an undisturbed stream: the gap is the probe period, nothing lost', () => {
    const { sent, answers } = series(100, () => 1);
    const r = computeBlackout(sent, answers, 3000);
    expect(r).toMatchObject({ sent: 100, answered: 100, lost: 0, inFlight: 0, duplicates: 0, late: 0, blackoutMs: 10, rttMaxMs: 1, rttMedianMs: 1, outages: [] });
    expect(r.firstSentMs).toBe(1000);
    expect(r.lastAnswerMs).toBe(1991);
  });

  it('a switch-over: probes 40..64 lost; the blackout spans the last answer before to the first after', () => {
    const { sent, answers } = series(100, (s) => (s >= 40 && s <= 64 ? undefined : 2));
    const r = computeBlackout(sent, answers, 5000);
    expect(r.lost).toBe(25);
    expect(r.answered).toBe(75);
    // last answer before: probe 39 at 1390+2; first after: probe 65 at 1650+2
    expect(r.blackoutMs).toBe(260);
    expect([r.blackoutFromMs, r.blackoutToMs]).toEqual([1392, 1652]);
    expect(r.outages).toEqual([{ fromSeq: 40, toSeq: 64, fromMs: 1400, toMs: 1640, lost: 25 }]);
  });

  it('a stall without loss (answers queued, then delivered at once) shows as a gap with no lost probe', () => {
    // probes 30..49 answered only at t=1500 (a paused guest that answers its backlog)
    const { sent, answers } = series(80, (s) => (s >= 30 && s < 50 ? 1500 - (1000 + s * 10) : 1));
    const r = computeBlackout(sent, answers, 5000);
    expect(r.lost).toBe(0);
    expect(r.blackoutMs).toBe(1500 - 1291);
    expect(r.rttMaxMs).toBe(200);
    expect(r.outages).toEqual([]);
  });

  it('separates outages, counts late answers as lost, and ignores duplicates and unknown sequence numbers', () => {
    const { sent, answers } = series(50, (s) => (s === 5 || s === 6 || s === 20 ? undefined : 1));
    answers.push({ seq: 20, receivedMs: 1200 + 1500 }); // 1.5 s late
    answers.push({ seq: 10, receivedMs: 1100 + 3 }); // duplicate, later copy
    answers.push({ seq: 999, receivedMs: 1234 }); // not ours
    const r = computeBlackout(sent, answers, 9000, 1000);
    expect(r.lost).toBe(3);
    expect(r.late).toBe(1);
    expect(r.duplicates).toBe(1);
    expect(r.answered).toBe(47);
    expect(r.outages.map((o) => [o.fromSeq, o.toSeq, o.lost])).toEqual([
      [5, 6, 2],
      [20, 20, 1],
    ]);
    expect(r.blackoutMs).toBe(30); // 4 → 7, and 19 → 21 are 30 ms; the late answer does not count
  });

  it('probes younger than the timeout at the stop are in flight, not lost', () => {
    const { sent, answers } = series(10, (s) => (s >= 8 ? undefined : 1));
    const r = computeBlackout(sent, answers, 1090 + 500, 1000);
    expect(r).toMatchObject({ lost: 0, inFlight: 2, answered: 8, outages: [] });
    expect(computeBlackout(sent, answers, 1090 + 1500, 1000)).toMatchObject({ lost: 2, inFlight: 0 });
  });

  it('nothing sent or one answer: no gap', () => {
    expect(computeBlackout([], [], 0)).toMatchObject({ sent: 0, blackoutMs: 0, blackoutFromMs: undefined, firstSentMs: undefined });
    const { sent, answers } = series(1, () => 1);
    expect(computeBlackout(sent, answers, 5000).blackoutMs).toBe(0);
  });
});

/** How long a wait below may take (generous: the suite runs under load); each polls every 5 ms. */
const WAIT_MS = 30_000;

describe('Prober on loopback', () => {
  let server: Socket | undefined;
  let prober: Prober | undefined;
  afterEach(async () => {
    await prober?.stop();
    prober = undefined;
    server?.close();
    server = undefined;
  });

  it('measures a 300 ms silence of a real UDP echo as the blackout, with the probes lost in it', async () => {
    // Every bound here follows from what the echo saw and when, not from how fast this machine is
    // (the suite runs at load 10-15 on 2 cores, where a fixed 300 ms sleep can last 700 ms and
    // either process can stall): the silence lasts until the prober's own clock is 300 ms past
    // the last answer it got, and until 20 probes were dropped; the prober is stopped once every
    // dropped probe is older than its timeout, so each one is lost, none in flight.
    const SILENCE_MS = 300;
    const TIMEOUT_MS = 1000;
    // performance.timeOrigin + performance.now() of two processes on one host agree to well under a millisecond.
    const CLOCK_SLACK_MS = 5;
    const now = (): number => performance.timeOrigin + performance.now();
    const sentAt = new Map<number, number>(); // seq -> when the echo answered it
    const dropped: number[] = [];
    let lastAnswered = -1;
    let silent = false;
    const s = createSocket('udp4');
    server = s;
    s.on('message', (msg, from) => {
      const seq = Number(/^migd-probe (\d+) /.exec(msg.toString('latin1'))?.[1]);
      if (silent) {
        dropped.push(seq);
        return;
      }
      sentAt.set(seq, now());
      lastAnswered = seq;
      s.send(msg, from.port, from.address);
    });
    const port = await new Promise<number>((resolve) => s.bind(0, '127.0.0.1', () => resolve(s.address().port)));
    const p = await Prober.start({ target: '127.0.0.1', port, intervalMs: 10, timeoutMs: TIMEOUT_MS });
    prober = p;
    const answerTo = (seq: number): ProbeAnswer | undefined => p.answerLog.find((a) => a.seq === seq);
    await p.waitForAnswers(20, 30_000);

    silent = true;
    const a = lastAnswered; // the last answer before the silence
    await until(() => answerTo(a) !== undefined, `the answer to probe ${a}`, WAIT_MS, 5);
    const rA = (answerTo(a) as ProbeAnswer).receivedMs;
    await until(() => now() >= rA + SILENCE_MS && dropped.length >= 20, 'the silence', WAIT_MS, 5);
    silent = false;
    const resumedMs = now();
    const before = p.answerLog.length;
    await p.waitForAnswers(before + 20, 30_000);
    const b = p.answerLog[before] as ProbeAnswer; // the first answer after the silence
    const seenB = now();
    await until(() => now() > resumedMs + TIMEOUT_MS + CLOCK_SLACK_MS, 'the dropped probes to time out', WAIT_MS, 5);
    const r = await p.stop();

    // The prober's timestamps are on the host clock the rest of migd uses: an answer arrives after
    // the echo sent it, and before this process read it from the prober.
    expect(rA).toBeGreaterThanOrEqual((sentAt.get(a) as number) - CLOCK_SLACK_MS);
    // Loopback keeps order: the echo dropped every probe after `a` up to the one `b` answers.
    expect(dropped[0]).toBe(a + 1);
    expect(b.seq).toBe((dropped.at(-1) as number) + 1);
    expect(b.receivedMs).toBeGreaterThanOrEqual((sentAt.get(b.seq) as number) - CLOCK_SLACK_MS);
    expect(b.receivedMs).toBeLessThanOrEqual(seenB + CLOCK_SLACK_MS);
    // The blackout is at least the silence: no answer came between rA and b.
    expect(b.receivedMs - rA).toBeGreaterThanOrEqual(SILENCE_MS - CLOCK_SLACK_MS);
    expect(r.blackoutMs).toBeGreaterThanOrEqual(b.receivedMs - rA);
    // ... and a gap the prober really saw: two answers with none between them but late ones.
    const from = r.blackoutFromMs as number;
    const to = r.blackoutToMs as number;
    expect(to - from).toBe(r.blackoutMs);
    expect(p.answerLog.map((x) => x.receivedMs)).toEqual(expect.arrayContaining([from, to]));
    expect(p.answerLog.filter((x) => x.receivedMs > from && x.receivedMs < to).length).toBeLessThanOrEqual(r.late);
    // Every dropped probe is lost, in one outage; any other lost probe was answered late.
    const lostSeqs = r.outages.flatMap((o) => Array.from({ length: o.toSeq - o.fromSeq + 1 }, (_, i) => o.fromSeq + i));
    expect(dropped).toEqual(Array.from({ length: dropped.length }, (_, i) => a + 1 + i));
    expect(lostSeqs).toEqual(expect.arrayContaining(dropped));
    expect(r.outages.filter((o) => o.fromSeq <= (dropped[0] as number) && o.toSeq >= (dropped.at(-1) as number))).toHaveLength(1);
    expect(r.lost).toBe(lostSeqs.length);
    expect(r.lost - dropped.length).toBeLessThanOrEqual(r.late);
    expect(r.answered + r.lost + r.inFlight).toBe(r.sent);
  });

  it('refuses bad options and fails clearly for a namespace that does not exist', async () => {
    await expect(Prober.start({ target: 'guest', port: 7 })).rejects.toThrow(InvalidArgumentError);
    await expect(Prober.start({ target: '127.0.0.1', port: 70000 })).rejects.toThrow(/port 70000/);
    await expect(Prober.start({ target: '127.0.0.1', netns: 'migd-no-such-namespace-w13' })).rejects.toThrow(/prober exited at start/);
  });
});
