/**
 * The network blackout of a migrating guest as seen from outside: pure arithmetic over the probes
 * a prober sent (sequence number, send time) and the answers it got (sequence number, receive
 * time). No I/O and no clock here, so every edge case is unit-tested.
 *
 * Definitions (all times host ms, `performance.timeOrigin + performance.now()`, so they line up
 * with the other timestamps of a run):
 * - blackout: the longest gap between two consecutive answers (by receive time). With probes every
 *   10 ms an undisturbed guest shows ~10 ms; a migration's switch-over adds its downtime, the time
 *   until the switch learns the new port (announce-self) and any lost probes' intervals.
 * - lost: probes with no answer within `timeoutMs` of being sent, and probes still unanswered when
 *   the prober stopped if they were sent more than `timeoutMs` before the stop (younger ones are
 *   in flight and counted in `inFlight`, not lost).
 * - outages: each run of consecutive lost probes, with the first and last lost probe's send times
 *   — what a timeline plots as a bar next to QEMU's downtime.
 */

export interface ProbeSent {
  seq: number;
  sentMs: number;
}

export interface ProbeAnswer {
  seq: number;
  receivedMs: number;
}

export interface ProbeOutage {
  /** Sequence numbers of the first and last lost probe of this run. */
  fromSeq: number;
  toSeq: number;
  /** Send times of those probes. */
  fromMs: number;
  toMs: number;
  lost: number;
}

export interface BlackoutResult {
  sent: number;
  answered: number;
  lost: number;
  /** Unanswered but younger than timeoutMs at the stop. */
  inFlight: number;
  /** Answers to a probe already answered (a duplicate on the wire). */
  duplicates: number;
  /** Answers that came back after timeoutMs (counted as lost too). */
  late: number;
  /** Longest gap between consecutive answers (ms); 0 with fewer than two answers. */
  blackoutMs: number;
  /** Receive times bounding the longest gap (undefined with fewer than two answers). */
  blackoutFromMs: number | undefined;
  blackoutToMs: number | undefined;
  /** Round-trip times of the answered probes. */
  rttMaxMs: number;
  rttMedianMs: number;
  outages: ProbeOutage[];
  firstSentMs: number | undefined;
  lastAnswerMs: number | undefined;
}

/**
 * Computes the blackout figures.
 * @param sent every probe sent, in any order (sequence numbers unique)
 * @param answers every answer received, in any order (may contain duplicates and unknown seqs)
 * @param stoppedMs when the prober stopped (host ms)
 * @param timeoutMs an answer later than this counts as lost (default 1000)
 */
export function computeBlackout(sent: readonly ProbeSent[], answers: readonly ProbeAnswer[], stoppedMs: number, timeoutMs = 1000): BlackoutResult {
  const sentBySeq = new Map<number, number>();
  for (const p of sent) sentBySeq.set(p.seq, p.sentMs);
  const firstAnswer = new Map<number, number>();
  let duplicates = 0;
  for (const a of answers) {
    if (!sentBySeq.has(a.seq)) continue; // not ours (or corrupt): ignore
    const prev = firstAnswer.get(a.seq);
    if (prev === undefined) firstAnswer.set(a.seq, a.receivedMs);
    else {
      duplicates++;
      if (a.receivedMs < prev) firstAnswer.set(a.seq, a.receivedMs);
    }
  }

  const ordered = [...sent].sort((x, y) => x.seq - y.seq);
  let answered = 0;
  let lost = 0;
  let inFlight = 0;
  let late = 0;
  const rtts: number[] = [];
  const outages: ProbeOutage[] = [];
  let run: ProbeOutage | undefined;
  for (const p of ordered) {
    const got = firstAnswer.get(p.seq);
    let isLost = false;
    if (got !== undefined && got - p.sentMs <= timeoutMs) {
      answered++;
      rtts.push(got - p.sentMs);
    } else if (got !== undefined) {
      late++;
      isLost = true;
    } else if (stoppedMs - p.sentMs > timeoutMs) {
      isLost = true;
    } else {
      inFlight++;
    }
    if (isLost) {
      lost++;
      if (run) {
        run.toSeq = p.seq;
        run.toMs = p.sentMs;
        run.lost++;
      } else {
        run = { fromSeq: p.seq, toSeq: p.seq, fromMs: p.sentMs, toMs: p.sentMs, lost: 1 };
        outages.push(run);
      }
    } else if (got !== undefined) {
      run = undefined; // an answer ends a run; an in-flight probe neither ends nor extends one
    }
  }

  const times = [...firstAnswer.entries()]
    .filter(([seq, t]) => t - (sentBySeq.get(seq) ?? t) <= timeoutMs)
    .map(([, t]) => t)
    .sort((x, y) => x - y);
  let blackoutMs = 0;
  let blackoutFromMs: number | undefined;
  let blackoutToMs: number | undefined;
  for (let i = 1; i < times.length; i++) {
    const a = times[i - 1] as number;
    const b = times[i] as number;
    if (b - a > blackoutMs || blackoutFromMs === undefined) {
      blackoutMs = b - a;
      blackoutFromMs = a;
      blackoutToMs = b;
    }
  }
  rtts.sort((x, y) => x - y);
  return {
    sent: sent.length,
    answered,
    lost,
    inFlight,
    duplicates,
    late,
    blackoutMs,
    blackoutFromMs,
    blackoutToMs,
    rttMaxMs: rtts.at(-1) ?? 0,
    rttMedianMs: rtts.length ? (rtts[Math.floor((rtts.length - 1) / 2)] as number) : 0,
    outages,
    firstSentMs: ordered[0]?.sentMs,
    lastAnswerMs: times.at(-1),
  };
}
