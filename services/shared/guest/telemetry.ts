/**
 * Streaming parser for the guest workload's serial console (stress/guest/stress.c).
 *
 * ## Line format, version 1
 *
 * ```
 * migd-stress v1 <mono_ms> <kind> key=value key=value ... *<crc>
 * ```
 * - `mono_ms`: the guest's CLOCK_MONOTONIC in ms, taken under the guest's output lock, so it never
 *   decreases within one boot (a decrease means the guest rebooted or was rolled back).
 * - `crc`: 4 lowercase hex digits, FNV-1a-32 of every byte before ` *` folded to 16 bits
 *   (`(h ^ (h >>> 16)) & 0xffff`). Kernel messages can land in the middle of a guest line on the
 *   serial port; the checksum rejects such spliced lines instead of misreading numbers.
 * - values never contain spaces; unknown keys are ignored (v1 may gain keys; a change of
 *   meaning bumps the version).
 *
 * | kind      | keys |
 * |-----------|------|
 * | `start`   | workers, bytes (per worker), pattern, rate (B/s per worker, 0 = none), verify, hot, report_ms, hb_ms, seed (hex), pid, ncpu |
 * | `map`     | w, page, pa (guest-physical address, hex, or `none`) |
 * | `pass`    | w, n (passes completed so far = the generation pages now carry), bytes (written in the window), ms (busy: wall minus rate-limit sleeps), wall, ms_per_gib (ms × 2^30 / bytes: verify+write work) |
 * | `verify`  | w, pages (verified, cumulative), errors (cumulative), dropped (err lines not printed) |
 * | `err`     | w, page, reason (zero/stale/future/misplaced/corrupt), expected, found (generations), word, xor (corrupt), src_w, src_page (misplaced) |
 * | `hb`      | seq, lag (ms the heartbeat woke late), mib (per-worker cumulative MiB written, comma-separated) |
 * | `summary` | verified, errors, dropped, passes (all workers, cumulative) |
 * | `ack`     | cmd, ok, ... (reply to a serial command) |
 * | `modules` | loaded, failed, ms (kernel modules /init loaded from /lib/modules/load.order) |
 * | `net`     | if, ip (A.B.C.D/LEN), mac, echo_port (the NIC is up and the UDP echo answers) |
 * | `dstart`  | dev, bytes, blocks, rate (B/s, 0 = none), direct (O_DIRECT), verify_ms |
 * | `dpass`   | n (disk pass = generation being written), bytes (written in the window), wall |
 * | `dverify` | blocks (verified, cumulative), errors (cumulative), dropped |
 * | `dsweep`  | n (full verifications done), blocks (checked in this one), errors (found in it), ms |
 * | `derr`    | block, reason (as `err`), expected, found, word, xor (corrupt), src_block (misplaced) |
 * | `warn`, `fatal` | reason, ... (fatal: the guest parks; nothing more will come) |
 *
 * A `pass` line covers one report window (`report_ms` of work, default 100 ms): several passes
 * when passes are short (`n` jumps), part of one when a pass is slow (`n` repeats). Heartbeats come every `hb_ms` (≤ 1 s) from their own thread,
 * so a silent stretch on the host side means the guest was stopped or starved.
 *
 * ## What the parser yields
 * Raw events for every valid line, plus derived ones: `sample` ({@link GuestPerfSample}, per
 * worker on each `pass` line and `worker: COMBINED_WORKER` once every worker has reported again),
 * `gap` (no valid line for ≥ `gapThresholdMs` of host time), `anomaly` (restart, pass counter or
 * clock going backwards: a rollback as seen from outside), `kernel-panic`, and `malformed` for
 * lines that carry the magic but fail to parse. Everything else on the line is kernel noise.
 */
import type { GuestPattern } from './workload.js';

export const GUEST_LINE_MAGIC = 'migd-stress';
export const GUEST_LINE_VERSION = 1;
/** `GuestPerfSample.worker` of the combined (all-workers) figure. */
export const COMBINED_WORKER = -1;
/** Longest line kept; anything longer without a newline is dropped as garbage. */
export const GUEST_MAX_LINE = 1024;

export type IntegrityReason = 'zero' | 'stale' | 'future' | 'misplaced' | 'corrupt';
const INTEGRITY_REASONS: readonly string[] = ['zero', 'stale', 'future', 'misplaced', 'corrupt'];
const PATTERNS: readonly string[] = ['random', 'compressible', 'hotcold', 'idle'];

/** Time stamps every line-derived event carries. */
export interface GuestLineTimes {
  /** The guest's CLOCK_MONOTONIC in ms (pauses of the VM do not advance it under TCG). */
  guestMonoMs: number;
  /** Host time the line was received (ms; `performance.timeOrigin + performance.now()` by default). */
  hostMs: number;
}

export interface GuestStartParams {
  workers: number;
  bytesPerWorker: number;
  pattern: GuestPattern;
  rateBytesPerSec: number;
  verify: boolean;
  hotBytes: number;
  reportMs: number;
  heartbeatMs: number;
  /** Hex string (64-bit). */
  seed: string;
  pid: number | undefined;
  ncpu: number | undefined;
}

export interface GuestStartEvent extends GuestLineTimes { type: 'start'; params: GuestStartParams }
export interface GuestMapEvent extends GuestLineTimes { type: 'map'; worker: number; page: number; physAddr: number | null }
export interface GuestPassEvent extends GuestLineTimes {
  type: 'pass';
  worker: number;
  pass: number;
  bytes: number;
  busyMs: number;
  wallMs: number;
  msPerGib: number;
}
export interface GuestVerifyEvent extends GuestLineTimes {
  type: 'verify';
  worker: number;
  pagesVerified: number;
  errors: number;
  dropped: number;
}
export interface GuestIntegrityErrorEvent extends GuestLineTimes {
  type: 'integrity-error';
  worker: number;
  page: number;
  reason: IntegrityReason;
  expectedGen: number;
  foundGen: number;
  /** corrupt: first bad 8-byte word and the XOR of expected and found (hex). */
  word?: number;
  xor?: string;
  /** misplaced: whose page landed here. */
  srcWorker?: number;
  srcPage?: number;
}
/** Disk workload (stress/guest/disk.c) started on `dev`. */
export interface GuestDiskStartEvent extends GuestLineTimes {
  type: 'disk-start';
  dev: string;
  bytes: number;
  blocks: number;
  rateBytesPerSec: number;
  direct: boolean;
  verifyMs: number;
}
export interface GuestDiskPassEvent extends GuestLineTimes { type: 'disk-pass'; pass: number; bytes: number; wallMs: number }
export interface GuestDiskVerifyEvent extends GuestLineTimes { type: 'disk-verify'; blocksVerified: number; errors: number; dropped: number }
/** One full verification of every written block (on `dverify` or every verify_ms). */
export interface GuestDiskSweepEvent extends GuestLineTimes { type: 'disk-sweep'; sweep: number; blocks: number; errors: number; ms: number }
export interface GuestDiskErrorEvent extends GuestLineTimes {
  type: 'disk-integrity-error';
  block: number;
  reason: IntegrityReason;
  expectedGen: number;
  foundGen: number;
  word?: number;
  xor?: string;
  /** misplaced: which block's content landed here. */
  srcBlock?: number;
}
/** The guest's NIC is up with its address and the UDP echo listens. */
export interface GuestNetEvent extends GuestLineTimes { type: 'net'; ifname: string; ip: string; prefixLength: number; mac: string; echoPort: number }
export interface GuestModulesEvent extends GuestLineTimes { type: 'modules'; loaded: number; failed: number; ms: number }
export interface GuestHeartbeatEvent extends GuestLineTimes { type: 'heartbeat'; seq: number; lagMs: number; mibWritten: number[] }
export interface GuestSummaryEvent extends GuestLineTimes {
  type: 'summary';
  verified: number;
  errors: number;
  dropped: number;
  passes: number;
}
/** `ack`, `warn`, `fatal` and kinds this parser does not know (forward compatibility). */
export interface GuestMessageEvent extends GuestLineTimes {
  type: 'ack' | 'warn' | 'fatal' | 'other';
  kind: string;
  fields: Readonly<Record<string, string>>;
}

/** The figure the node daemon publishes (proto `GuestPerfSample`). */
export interface GuestPerfSample {
  /** Worker id, or COMBINED_WORKER (-1) for all workers together. */
  worker: number;
  /** Per worker: as reported. Combined: 1 / Σ(1/ms_per_gib of each worker's latest pass). */
  msPerGib: number;
  guestMonoMs: number;
  hostMs: number;
  /** Cumulative pages verified (this worker, or all workers) per the latest `verify` lines. */
  pagesVerified: number;
  /** Cumulative integrity errors (max of the guest's counter and `err` lines seen). */
  integrityErrors: number;
  /** Longest silence between two guest lines (host time) since the previous sample of this worker (or the start line). */
  heartbeatGapMs: number;
}
export interface GuestSampleEvent { type: 'sample'; sample: GuestPerfSample }

export interface GuestGapEvent extends GuestLineTimes {
  type: 'gap';
  /** Host time between the previous valid line and this one. */
  hostGapMs: number;
  /** Guest time between them: small while hostGapMs is large means the VM was stopped. */
  guestGapMs: number;
}
export interface GuestAnomalyEvent extends GuestLineTimes {
  type: 'anomaly';
  /** restart: a second `start` line; pass-regressed / clock-regressed: state went backwards. */
  kind: 'restart' | 'pass-regressed' | 'clock-regressed';
  worker?: number;
  detail: string;
}
export interface GuestKernelPanicEvent { type: 'kernel-panic'; hostMs: number; line: string }
export interface GuestMalformedEvent { type: 'malformed'; hostMs: number; reason: string; line: string }
export interface GuestConsoleEvent { type: 'console'; hostMs: number; line: string }

export type GuestEvent =
  | GuestStartEvent
  | GuestMapEvent
  | GuestPassEvent
  | GuestVerifyEvent
  | GuestIntegrityErrorEvent
  | GuestHeartbeatEvent
  | GuestDiskStartEvent
  | GuestDiskPassEvent
  | GuestDiskVerifyEvent
  | GuestDiskSweepEvent
  | GuestDiskErrorEvent
  | GuestNetEvent
  | GuestModulesEvent
  | GuestSummaryEvent
  | GuestMessageEvent
  | GuestSampleEvent
  | GuestGapEvent
  | GuestAnomalyEvent
  | GuestKernelPanicEvent
  | GuestMalformedEvent
  | GuestConsoleEvent;

export interface GuestTelemetryOptions {
  /** Host clock in ms. Default `performance.timeOrigin + performance.now()`. */
  now?: () => number;
  /** Emit a `gap` event when no valid line came for this long (host ms). Default 1500. */
  gapThresholdMs?: number;
  /** Emit non-workload lines as `console` events. Default false (only counted). */
  emitConsole?: boolean;
  /** How many `integrity-error` details {@link GuestTelemetryParser.integrity} keeps. Default 1000. */
  maxErrorDetails?: number;
}

export interface GuestWorkerState {
  worker: number;
  lastPass: number | undefined;
  lastMsPerGib: number | undefined;
  bytesWritten: number;
  pagesVerified: number;
  errors: number;
}

export interface GuestDiskIntegrityState {
  /** Blocks verified (cumulative, read-before-write and full sweeps). */
  blocksVerified: number;
  /** max(guest's cumulative counter, derr lines seen). */
  errors: number;
  dropped: number;
  /** Full verifications completed, and the latest one (undefined before the first). */
  sweeps: number;
  lastSweep: GuestDiskSweepEvent | undefined;
  details: readonly GuestDiskErrorEvent[];
}

export interface GuestIntegrityState {
  pagesVerified: number;
  /** max(guest's cumulative counters, err lines seen) over all workers, plus the disk's errors. */
  errors: number;
  /** err and derr lines the guest did not print (rate limit). */
  dropped: number;
  details: readonly GuestIntegrityErrorEvent[];
  /** The disk workload's share (all zero without a disk). */
  disk: GuestDiskIntegrityState;
}

export interface GuestTelemetryCounters {
  lines: number;
  workloadLines: number;
  malformed: number;
  consoleLines: number;
  /** Bytes dropped because a line exceeded GUEST_MAX_LINE. */
  overflowBytes: number;
}

/** FNV-1a-32 of a latin1 string, folded to 16 bits: the line checksum. */
export function guestLineCrc(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i) & 0xff;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return (h ^ (h >>> 16)) & 0xffff;
}

/** Formats one v1 line exactly as the guest does (for fakes and tests), newline included. */
export function formatGuestLine(guestMonoMs: number, kind: string, fields: Readonly<Record<string, string | number | bigint>> = {}): string {
  let s = `${GUEST_LINE_MAGIC} v${GUEST_LINE_VERSION} ${guestMonoMs} ${kind}`;
  for (const [k, v] of Object.entries(fields)) s += ` ${k}=${String(v)}`;
  return `${s} *${guestLineCrc(s).toString(16).padStart(4, '0')}\n`;
}

class FieldError extends Error {}

const DEC_RE = /^\d{1,16}$/;
const HEX_RE = /^0x[0-9a-f]{1,16}$/i;

function num(fields: Record<string, string>, key: string, fallback?: number): number {
  const raw = fields[key];
  if (raw === undefined) {
    if (fallback !== undefined) return fallback;
    throw new FieldError(`missing ${key}`);
  }
  const n = DEC_RE.test(raw) ? Number(raw) : HEX_RE.test(raw) ? Number.parseInt(raw.slice(2), 16) : NaN;
  if (!Number.isSafeInteger(n)) throw new FieldError(`bad number ${key}=${raw}`);
  return n;
}

function str(fields: Record<string, string>, key: string): string {
  const raw = fields[key];
  if (raw === undefined) throw new FieldError(`missing ${key}`);
  return raw;
}

interface WorkerTrack extends GuestWorkerState {
  errLines: number;
  dropped: number;
  gapSinceSample: number;
}

/**
 * Turns serial-console bytes into typed guest events. Pure: no I/O, clock injectable; feed it
 * chunks of any size with {@link push} and call {@link end} when the stream closes.
 */
export class GuestTelemetryParser {
  private readonly now: () => number;
  private readonly gapThresholdMs: number;
  private readonly emitConsole: boolean;
  private readonly maxErrorDetails: number;

  private partial = '';
  private overflowing = false;
  private readonly counters: GuestTelemetryCounters = { lines: 0, workloadLines: 0, malformed: 0, consoleLines: 0, overflowBytes: 0 };

  private startParams: GuestStartParams | undefined;
  private starts = 0;
  private lastHostMs: number | undefined;
  private lastGuestMs: number | undefined;
  private maxGapMs = 0;
  /** Largest gap since the latest `start` line: a worker's first sample covers that span. */
  private gapSinceStart = 0;
  private combinedGapMs = 0;
  private readonly workers = new Map<number, WorkerTrack>();
  private readonly reportedSinceCombined = new Set<number>();
  private readonly details: GuestIntegrityErrorEvent[] = [];
  private readonly disk = { blocksVerified: 0, errors: 0, errLines: 0, dropped: 0, sweeps: 0, lastSweep: undefined as GuestDiskSweepEvent | undefined };
  private readonly diskDetails: GuestDiskErrorEvent[] = [];

  constructor(opts: GuestTelemetryOptions = {}) {
    this.now = opts.now ?? (() => performance.timeOrigin + performance.now());
    this.gapThresholdMs = opts.gapThresholdMs ?? 1500;
    this.emitConsole = opts.emitConsole ?? false;
    this.maxErrorDetails = opts.maxErrorDetails ?? 1000;
  }

  /** Feeds bytes from the serial line; returns the events of every line completed by them. */
  push(chunk: Buffer | Uint8Array | string): GuestEvent[] {
    const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString('latin1');
    const hostMs = this.now();
    const out: GuestEvent[] = [];
    let from = 0;
    for (;;) {
      const nl = text.indexOf('\n', from);
      if (nl < 0) break;
      const piece = text.slice(from, nl);
      from = nl + 1;
      if (this.overflowing) {
        // The tail of an overlong line: drop it, resynchronise on the newline.
        this.counters.overflowBytes += piece.length + 1;
        this.overflowing = false;
        this.partial = '';
        continue;
      }
      const line = this.partial + piece;
      this.partial = '';
      this.handleLine(line, hostMs, out);
    }
    const rest = text.slice(from);
    if (this.overflowing) {
      this.counters.overflowBytes += rest.length;
    } else {
      this.partial += rest;
      if (this.partial.length > GUEST_MAX_LINE) {
        this.counters.overflowBytes += this.partial.length;
        this.partial = '';
        this.overflowing = true;
      }
    }
    return out;
  }

  /** Flushes a final unterminated line (the stream closed). */
  end(): GuestEvent[] {
    const out: GuestEvent[] = [];
    const line = this.partial;
    this.partial = '';
    if (!this.overflowing && line.length > 0) this.handleLine(line, this.now(), out);
    this.overflowing = false;
    return out;
  }

  /** Host ms since the last valid workload line (undefined before the first one). */
  silenceMs(now: number = this.now()): number | undefined {
    return this.lastHostMs === undefined ? undefined : now - this.lastHostMs;
  }

  /** Parameters from the latest `start` line. */
  get params(): GuestStartParams | undefined {
    return this.startParams;
  }

  /** Largest host-side silence between two valid lines so far. */
  get maxHeartbeatGapMs(): number {
    return this.maxGapMs;
  }

  get stats(): Readonly<GuestTelemetryCounters> {
    return { ...this.counters };
  }

  workerStates(): GuestWorkerState[] {
    return [...this.workers.values()]
      .sort((a, b) => a.worker - b.worker)
      .map(({ worker, lastPass, lastMsPerGib, bytesWritten, pagesVerified, errors }) => ({ worker, lastPass, lastMsPerGib, bytesWritten, pagesVerified, errors }));
  }

  integrity(): GuestIntegrityState {
    let pagesVerified = 0;
    let errors = 0;
    let dropped = 0;
    for (const w of this.workers.values()) {
      pagesVerified += w.pagesVerified;
      errors += Math.max(w.errors, w.errLines);
      dropped += w.dropped;
    }
    const d = this.disk;
    const disk: GuestDiskIntegrityState = {
      blocksVerified: d.blocksVerified,
      errors: Math.max(d.errors, d.errLines),
      dropped: d.dropped,
      sweeps: d.sweeps,
      lastSweep: d.lastSweep,
      details: [...this.diskDetails],
    };
    return { pagesVerified, errors: errors + disk.errors, dropped: dropped + disk.dropped, details: [...this.details], disk };
  }

  // ------------------------------------------------------------------------------ internals

  private handleLine(rawLine: string, hostMs: number, out: GuestEvent[]): void {
    this.counters.lines++;
    const line = rawLine.replace(/\r+$/, '').replace(/\r/g, '');
    const at = line.indexOf(`${GUEST_LINE_MAGIC} v`);
    if (at < 0) {
      this.counters.consoleLines++;
      if (line.includes('Kernel panic')) out.push({ type: 'kernel-panic', hostMs, line });
      else if (this.emitConsole && line.length > 0) out.push({ type: 'console', hostMs, line });
      return;
    }
    // Text before the magic is kernel output glued to the front of our line; ignore it.
    const body = line.slice(at);
    const malformed = (reason: string): void => {
      this.counters.malformed++;
      out.push({ type: 'malformed', hostMs, reason, line: body });
    };
    const star = body.lastIndexOf(' *');
    if (star < 0) return malformed('no checksum');
    const crcText = body.slice(star + 2);
    if (!/^[0-9a-f]{4}$/.test(crcText)) return malformed('bad checksum field');
    const signed = body.slice(0, star);
    if (guestLineCrc(signed) !== Number.parseInt(crcText, 16)) return malformed('checksum mismatch');

    const tokens = signed.split(' ');
    const version = tokens[1] ?? '';
    if (version !== `v${GUEST_LINE_VERSION}`) return malformed(`unsupported version ${version}`);
    const monoText = tokens[2] ?? '';
    const kind = tokens[3] ?? '';
    if (!DEC_RE.test(monoText) || kind === '') return malformed('bad header');
    const guestMonoMs = Number(monoText);
    const fields: Record<string, string> = {};
    for (const tok of tokens.slice(4)) {
      const eq = tok.indexOf('=');
      if (eq <= 0) return malformed(`bad field ${JSON.stringify(tok)}`);
      fields[tok.slice(0, eq)] = tok.slice(eq + 1);
    }
    const before = out.length;
    try {
      this.handleRecord(kind, fields, { guestMonoMs, hostMs }, out);
    } catch (err) {
      if (!(err instanceof FieldError)) throw err;
      out.length = before;
      return malformed(`${kind}: ${err.message}`);
    }
    this.counters.workloadLines++;
  }

  private track(worker: number): WorkerTrack {
    let w = this.workers.get(worker);
    if (!w) {
      w = { worker, lastPass: undefined, lastMsPerGib: undefined, bytesWritten: 0, pagesVerified: 0, errors: 0, errLines: 0, dropped: 0, gapSinceSample: this.gapSinceStart };
      this.workers.set(worker, w);
    }
    return w;
  }

  /** Gap and clock bookkeeping common to every valid line; runs after the line parsed. */
  private noteTimes(t: GuestLineTimes, kind: string, out: GuestEvent[]): void {
    if (this.lastHostMs !== undefined && this.lastGuestMs !== undefined) {
      const hostGapMs = t.hostMs - this.lastHostMs;
      const guestGapMs = t.guestMonoMs - this.lastGuestMs;
      if (hostGapMs > this.maxGapMs) this.maxGapMs = hostGapMs;
      if (hostGapMs > this.gapSinceStart) this.gapSinceStart = hostGapMs;
      if (hostGapMs > this.combinedGapMs) this.combinedGapMs = hostGapMs;
      for (const w of this.workers.values()) if (hostGapMs > w.gapSinceSample) w.gapSinceSample = hostGapMs;
      if (hostGapMs >= this.gapThresholdMs) out.push({ type: 'gap', ...t, hostGapMs, guestGapMs });
      if (guestGapMs < 0 && kind !== 'start') {
        out.push({ type: 'anomaly', ...t, kind: 'clock-regressed', detail: `guest clock went from ${this.lastGuestMs} to ${t.guestMonoMs} ms` });
      }
    }
    this.lastHostMs = t.hostMs;
    this.lastGuestMs = t.guestMonoMs;
  }

  private handleRecord(kind: string, f: Record<string, string>, t: GuestLineTimes, out: GuestEvent[]): void {
    // Parse first (may throw FieldError, leaving no trace), then update state.
    switch (kind) {
      case 'start': {
        const pattern = str(f, 'pattern');
        if (!PATTERNS.includes(pattern)) throw new FieldError(`bad pattern ${pattern}`);
        const params: GuestStartParams = {
          workers: num(f, 'workers'),
          bytesPerWorker: num(f, 'bytes'),
          pattern: pattern as GuestPattern,
          rateBytesPerSec: num(f, 'rate', 0),
          verify: num(f, 'verify', 1) !== 0,
          hotBytes: num(f, 'hot', 0),
          reportMs: num(f, 'report_ms', 100),
          heartbeatMs: num(f, 'hb_ms', 1000),
          seed: f['seed'] ?? '',
          pid: f['pid'] === undefined ? undefined : num(f, 'pid'),
          ncpu: f['ncpu'] === undefined ? undefined : num(f, 'ncpu'),
        };
        this.noteTimes(t, kind, out);
        this.starts++;
        if (this.starts > 1) {
          out.push({ type: 'anomaly', ...t, kind: 'restart', detail: `guest workload started again (start #${this.starts}): the guest rebooted` });
          this.workers.clear();
          this.reportedSinceCombined.clear();
          // The rebooted guest counts from zero again; its disk table (in RAM) is gone too.
          Object.assign(this.disk, { blocksVerified: 0, errors: 0, errLines: 0, dropped: 0, sweeps: 0, lastSweep: undefined });
        }
        this.gapSinceStart = 0;
        this.startParams = params;
        out.push({ type: 'start', ...t, params });
        return;
      }
      case 'map': {
        const worker = num(f, 'w');
        const page = num(f, 'page');
        const pa = str(f, 'pa');
        const physAddr = pa === 'none' ? null : num(f, 'pa');
        this.noteTimes(t, kind, out);
        out.push({ type: 'map', ...t, worker, page, physAddr });
        return;
      }
      case 'pass': {
        const ev: GuestPassEvent = {
          type: 'pass',
          ...t,
          worker: num(f, 'w'),
          pass: num(f, 'n'),
          bytes: num(f, 'bytes'),
          busyMs: num(f, 'ms', 0),
          wallMs: num(f, 'wall', 0),
          msPerGib: num(f, 'ms_per_gib'),
        };
        this.noteTimes(t, kind, out);
        const w = this.track(ev.worker);
        if (w.lastPass !== undefined && ev.pass < w.lastPass) {
          out.push({ type: 'anomaly', ...t, kind: 'pass-regressed', worker: ev.worker, detail: `worker ${ev.worker} pass counter went from ${w.lastPass} to ${ev.pass}: guest memory rolled back` });
        }
        w.lastPass = ev.pass;
        w.lastMsPerGib = ev.msPerGib;
        w.bytesWritten += ev.bytes;
        out.push(ev);
        out.push({ type: 'sample', sample: this.workerSample(w, ev.msPerGib, t) });
        this.reportedSinceCombined.add(ev.worker);
        const expected = this.startParams?.workers ?? this.workers.size;
        if (this.reportedSinceCombined.size >= expected) {
          this.reportedSinceCombined.clear();
          out.push({ type: 'sample', sample: this.combinedSample(t) });
        }
        return;
      }
      case 'verify': {
        const worker = num(f, 'w');
        const pagesVerified = num(f, 'pages');
        const errors = num(f, 'errors');
        const dropped = num(f, 'dropped', 0);
        this.noteTimes(t, kind, out);
        const w = this.track(worker);
        w.pagesVerified = pagesVerified;
        w.errors = errors;
        w.dropped = dropped;
        out.push({ type: 'verify', ...t, worker, pagesVerified, errors, dropped });
        return;
      }
      case 'err': {
        const reason = str(f, 'reason');
        if (!INTEGRITY_REASONS.includes(reason)) throw new FieldError(`bad reason ${reason}`);
        const ev: GuestIntegrityErrorEvent = {
          type: 'integrity-error',
          ...t,
          worker: num(f, 'w'),
          page: num(f, 'page'),
          reason: reason as IntegrityReason,
          expectedGen: num(f, 'expected'),
          foundGen: num(f, 'found', 0),
        };
        if (f['word'] !== undefined) ev.word = num(f, 'word');
        if (f['xor'] !== undefined) ev.xor = str(f, 'xor');
        if (f['src_w'] !== undefined) ev.srcWorker = num(f, 'src_w');
        if (f['src_page'] !== undefined) ev.srcPage = num(f, 'src_page');
        this.noteTimes(t, kind, out);
        const w = this.track(ev.worker);
        w.errLines++;
        if (this.details.length < this.maxErrorDetails) this.details.push(ev);
        out.push(ev);
        return;
      }
      case 'hb': {
        const seq = num(f, 'seq');
        const lagMs = num(f, 'lag', 0);
        const mibText = f['mib'] ?? '';
        const mibWritten = mibText === '' ? [] : mibText.split(',').map((m) => {
          if (!DEC_RE.test(m)) throw new FieldError(`bad number mib=${mibText}`);
          return Number(m);
        });
        this.noteTimes(t, kind, out);
        out.push({ type: 'heartbeat', ...t, seq, lagMs, mibWritten });
        return;
      }
      case 'dstart': {
        const ev: GuestDiskStartEvent = {
          type: 'disk-start',
          ...t,
          dev: str(f, 'dev'),
          bytes: num(f, 'bytes'),
          blocks: num(f, 'blocks'),
          rateBytesPerSec: num(f, 'rate', 0),
          direct: num(f, 'direct', 1) !== 0,
          verifyMs: num(f, 'verify_ms', 0),
        };
        this.noteTimes(t, kind, out);
        out.push(ev);
        return;
      }
      case 'dpass': {
        const ev: GuestDiskPassEvent = { type: 'disk-pass', ...t, pass: num(f, 'n'), bytes: num(f, 'bytes'), wallMs: num(f, 'wall', 0) };
        this.noteTimes(t, kind, out);
        out.push(ev);
        return;
      }
      case 'dverify': {
        const ev: GuestDiskVerifyEvent = { type: 'disk-verify', ...t, blocksVerified: num(f, 'blocks'), errors: num(f, 'errors'), dropped: num(f, 'dropped', 0) };
        this.noteTimes(t, kind, out);
        this.disk.blocksVerified = ev.blocksVerified;
        this.disk.errors = ev.errors;
        this.disk.dropped = ev.dropped;
        out.push(ev);
        return;
      }
      case 'dsweep': {
        const ev: GuestDiskSweepEvent = { type: 'disk-sweep', ...t, sweep: num(f, 'n'), blocks: num(f, 'blocks'), errors: num(f, 'errors'), ms: num(f, 'ms', 0) };
        this.noteTimes(t, kind, out);
        this.disk.sweeps = ev.sweep;
        this.disk.lastSweep = ev;
        out.push(ev);
        return;
      }
      case 'derr': {
        const reason = str(f, 'reason');
        if (!INTEGRITY_REASONS.includes(reason)) throw new FieldError(`bad reason ${reason}`);
        const ev: GuestDiskErrorEvent = {
          type: 'disk-integrity-error',
          ...t,
          block: num(f, 'block'),
          reason: reason as IntegrityReason,
          expectedGen: num(f, 'expected'),
          foundGen: num(f, 'found', 0),
        };
        if (f['word'] !== undefined) ev.word = num(f, 'word');
        if (f['xor'] !== undefined) ev.xor = str(f, 'xor');
        if (f['src_block'] !== undefined) ev.srcBlock = num(f, 'src_block');
        this.noteTimes(t, kind, out);
        this.disk.errLines++;
        if (this.diskDetails.length < this.maxErrorDetails) this.diskDetails.push(ev);
        out.push(ev);
        return;
      }
      case 'net': {
        const ip = str(f, 'ip');
        const m = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(ip);
        if (!m) throw new FieldError(`bad ip ${ip}`);
        const ev: GuestNetEvent = { type: 'net', ...t, ifname: str(f, 'if'), ip: m[1] ?? '', prefixLength: Number(m[2]), mac: str(f, 'mac'), echoPort: num(f, 'echo_port') };
        this.noteTimes(t, kind, out);
        out.push(ev);
        return;
      }
      case 'modules': {
        const ev: GuestModulesEvent = { type: 'modules', ...t, loaded: num(f, 'loaded'), failed: num(f, 'failed', 0), ms: num(f, 'ms', 0) };
        this.noteTimes(t, kind, out);
        out.push(ev);
        return;
      }
      case 'summary': {
        const ev: GuestSummaryEvent = { type: 'summary', ...t, verified: num(f, 'verified'), errors: num(f, 'errors'), dropped: num(f, 'dropped', 0), passes: num(f, 'passes', 0) };
        this.noteTimes(t, kind, out);
        out.push(ev);
        return;
      }
      default: {
        this.noteTimes(t, kind, out);
        const type = kind === 'ack' || kind === 'warn' || kind === 'fatal' ? kind : 'other';
        out.push({ type, ...t, kind, fields: Object.freeze({ ...f }) });
      }
    }
  }

  private workerSample(w: WorkerTrack, msPerGib: number, t: GuestLineTimes): GuestPerfSample {
    const sample: GuestPerfSample = {
      worker: w.worker,
      msPerGib,
      guestMonoMs: t.guestMonoMs,
      hostMs: t.hostMs,
      pagesVerified: w.pagesVerified,
      integrityErrors: Math.max(w.errors, w.errLines),
      heartbeatGapMs: w.gapSinceSample,
    };
    w.gapSinceSample = 0;
    return sample;
  }

  private combinedSample(t: GuestLineTimes): GuestPerfSample {
    let inverse = 0;
    for (const w of this.workers.values()) if (w.lastMsPerGib !== undefined && w.lastMsPerGib > 0) inverse += 1 / w.lastMsPerGib;
    const integrity = this.integrity();
    const sample: GuestPerfSample = {
      worker: COMBINED_WORKER,
      msPerGib: inverse > 0 ? Math.round(1 / inverse) : 0,
      guestMonoMs: t.guestMonoMs,
      hostMs: t.hostMs,
      pagesVerified: integrity.pagesVerified,
      integrityErrors: integrity.errors,
      heartbeatGapMs: this.combinedGapMs,
    };
    this.combinedGapMs = 0;
    return sample;
  }
}

/**
 * Adapts a byte stream (a Node Readable, a socket) to guest events; flushes at the end.
 * The parser is passed in so callers can keep reading its state while iterating.
 */
export async function* guestEvents(
  source: AsyncIterable<Buffer | Uint8Array | string>,
  parser: GuestTelemetryParser = new GuestTelemetryParser(),
): AsyncGenerator<GuestEvent, void, undefined> {
  for await (const chunk of source) yield* parser.push(chunk);
  yield* parser.end();
}
