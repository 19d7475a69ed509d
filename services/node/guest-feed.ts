/**
 * One VM's serial console, parsed: raw bytes and guest-performance samples fanned out to every
 * watcher (WatchGuest streams, migration drivers), and the latest sample kept for late joiners.
 */
import { Broadcast } from '../shared/broadcast.js';
import type { GuestPerfSample } from '../shared/gen/migd/v1/common.js';
import { GuestTelemetryParser, type GuestPerfSample as ParsedSample } from '../shared/guest/telemetry.js';
import type { Logger } from '../shared/log.js';
import { retry } from '../shared/retry.js';
import type { SerialSubscription } from './vm/serial.js';

/** Guest workers whose pass count is tracked at most. */
const MAX_WORKERS = 256;
/** How far back the feed keeps the guest's samples for a late subscriber (see recent). */
const RECENT_KEEP_MS = 10_000;
/** …and at most this many (a guest reports every 100 ms by default; several lines each). */
const RECENT_KEEP_MAX = 1024;

export class GuestFeed {
  readonly samples = new Broadcast<GuestPerfSample>({ limit: 1024 });
  readonly console = new Broadcast<Uint8Array>({ limit: 1024 });
  private last: { sample: GuestPerfSample; hostMs: number } | undefined;
  /** The latest sample of all workers together (worker −1, with a pace). */
  private lastCombined: { sample: GuestPerfSample; hostMs: number } | undefined;
  private readonly stop = new AbortController();
  private passes = new Map<number, number>();
  /** The samples of the last RECENT_KEEP_MS, oldest first, with the host time they arrived. */
  private readonly kept: { sample: GuestPerfSample; hostMs: number }[] = [];

  constructor(
    readonly vmName: string,
    private readonly open: (signal: AbortSignal) => SerialSubscription,
    private readonly log: Logger,
  ) {
    void this.run();
  }

  private async run(): Promise<void> {
    // The serial subscription ends when QEMU exits; a VM that is only being (re)attached may not
    // have its console yet, so retry a few times.
    await retry(() => this.follow(), {
      attempts: 50,
      initialMs: 200,
      factor: 1,
      jitter: 0,
      signal: this.stop.signal,
      retryable: () => true,
      onRetry: (err) => this.log.debug('serial console not readable yet', { vm: this.vmName, err: (err as Error).message }),
    }).catch(() => undefined); // stopped, or the console never came: the feed stays empty
  }

  /** Reads the console until it ends. @throws when it cannot be opened or read */
  private async follow(): Promise<void> {
    const parser = new GuestTelemetryParser();
    for await (const chunk of this.open(this.stop.signal)) {
      this.console.publish(chunk);
      for (const ev of parser.push(Buffer.from(chunk))) {
        // Worker numbers come from the guest: only so many are tracked.
        if (ev.type === 'pass' && (this.passes.has(ev.worker) || this.passes.size < MAX_WORKERS)) this.passes.set(ev.worker, ev.pass);
        if (ev.type === 'verify' && Date.now() - (this.last?.hostMs ?? 0) > 1000) {
          // A guest that writes nothing (idle pattern) still verifies its memory: report
          // that as a heartbeat-only sample (ms_per_gib 0), so it is seen alive and intact.
          const integrity = parser.integrity();
          this.publish({ worker: -1, msPerGib: 0, guestMonoMs: ev.guestMonoMs, hostMs: ev.hostMs, pagesVerified: integrity.pagesVerified, integrityErrors: integrity.errors, heartbeatGapMs: 0 });
          continue;
        }
        if (ev.type !== 'sample') continue;
        this.publish(ev.sample);
      }
    }
  }

  private publish(s: ParsedSample): void {
    const sample: GuestPerfSample = {
      time: new Date(s.hostMs),
      guestMonoMs: Math.round(s.guestMonoMs),
      worker: s.worker,
      msPerGib: s.msPerGib,
      pass: s.worker >= 0 ? (this.passes.get(s.worker) ?? 0) : Math.max(0, ...this.passes.values()),
      pagesVerified: s.pagesVerified,
      integrityErrors: s.integrityErrors,
      heartbeatGapMs: Math.round(s.heartbeatGapMs),
      vmName: this.vmName,
    };
    this.last = { sample, hostMs: Date.now() };
    if (sample.worker === -1 && sample.msPerGib > 0) this.lastCombined = this.last;
    this.kept.push(this.last);
    const old = this.last.hostMs - RECENT_KEEP_MS;
    while (this.kept.length > RECENT_KEEP_MAX || (this.kept.length > 0 && this.kept[0]!.hostMs < old)) this.kept.shift();
    this.samples.publish(sample);
  }

  /**
   * The samples that arrived within the last `ms` (at most RECENT_KEEP_MS), oldest first: the
   * guest's pace just before a migration began, which its harm is measured against.
   */
  recent(ms: number): GuestPerfSample[] {
    const from = Date.now() - Math.min(Math.max(0, ms), RECENT_KEEP_MS);
    return this.kept.filter((k) => k.hostMs >= from).map((k) => k.sample);
  }

  /** The latest sample and when it arrived (host ms). */
  latest(): { sample: GuestPerfSample; hostMs: number } | undefined {
    return this.last;
  }

  /**
   * The sample to show for the VM (ListVms, heartbeats, and so the store's guest history between
   * runs): the latest whole-guest one when it is recent (within `maxAgeMs` of the latest of any
   * kind), since one worker's pace is not the guest's; else the latest.
   */
  summary(maxAgeMs = 5000): GuestPerfSample | undefined {
    const c = this.lastCombined;
    if (c && this.last && this.last.hostMs - c.hostMs <= maxAgeMs) return c.sample;
    return this.last?.sample;
  }

  close(): void {
    this.stop.abort();
    this.samples.close();
    this.console.close();
  }
}
