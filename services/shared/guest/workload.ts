/**
 * The guest workload's parameters (stress/guest/stress.c) and the kernel command line that
 * carries them. Shared: the image builder and tests boot guests with it, the node daemon will
 * too, and the telemetry parser reads the same names back from the guest's `start` line.
 */
import { InvalidArgumentError } from '../errors.js';

export type GuestPattern = 'random' | 'compressible' | 'hotcold' | 'idle';
export const GUEST_PATTERNS: readonly GuestPattern[] = Object.freeze(['random', 'compressible', 'hotcold', 'idle']);

export const GUEST_PAGE_SIZE = 4096;
export const GUEST_MAX_WORKERS = 32;

/**
 * What the guest should do. Sizes accept a byte count or a string with a binary suffix
 * (`"64M"`, `"512K"`, `"1G"`). Every field is optional; defaults are the guest's own.
 */
export interface GuestWorkload {
  /** Worker threads, 1..32. Default 1. */
  workers?: number;
  /** Region each worker dirties; a multiple of 4 KiB. Default 64 MiB. */
  bytesPerWorker?: number | string;
  /** Default `random`. */
  pattern?: GuestPattern;
  /** Per-worker write limit in bytes/s; 0 = unlimited (default). */
  rateBytesPerSec?: number | string;
  /** Verify every page before rewriting it. Default true. */
  verify?: boolean;
  /** `hotcold` only: hot set per worker. Default bytesPerWorker/16. */
  hotBytes?: number | string;
  /** At most one `pass` line per worker per this many ms (10..60000). Default 100. */
  reportMs?: number;
  /** Heartbeat period in ms (50..1000). Default 1000. */
  heartbeatMs?: number;
  /** `idle`: period of the verifier sweep in ms (100..600000). Default 2000. */
  idleVerifyMs?: number;
  /** Content seed (positive, < 2^64). Default: chosen by the guest from its clock. */
  seed?: number | bigint;
  /**
   * A phase change: after this many ms of writing (guest clock, from the workload's start) each
   * worker's write limit becomes {@link phaseRateBytesPerSec}. 0 = none (default).
   */
  phaseAfterMs?: number;
  /** The per-worker write limit after the phase change, bytes/s; 0 = unlimited (default). */
  phaseRateBytesPerSec?: number | string;
}

/** A validated workload with every default applied. */
export interface ResolvedGuestWorkload {
  readonly workers: number;
  readonly bytesPerWorker: number;
  readonly pattern: GuestPattern;
  readonly rateBytesPerSec: number;
  readonly verify: boolean;
  /** Undefined unless pattern is `hotcold`. */
  readonly hotBytes: number | undefined;
  readonly reportMs: number;
  readonly heartbeatMs: number;
  readonly idleVerifyMs: number;
  readonly seed: bigint | undefined;
  /** 0: no phase change. */
  readonly phaseAfterMs: number;
  readonly phaseRateBytesPerSec: number;
}

const SIZE_RE = /^(\d+)([KMG])?$/i;
const SHIFT: Record<string, number> = { K: 10, M: 20, G: 30 };

/**
 * Parses `"64M"`-style sizes (binary multiples) or passes a byte count through.
 * @throws InvalidArgumentError naming `what` when the value is not a non-negative safe integer.
 */
export function parseGuestSize(value: number | string, what: string): number {
  let n: number;
  if (typeof value === 'number') {
    n = value;
  } else {
    const m = SIZE_RE.exec(value.trim());
    if (!m) throw new InvalidArgumentError(`${what}: ${JSON.stringify(value)} is not a size (e.g. 4096, 512K, 64M, 1G)`);
    const digits = m[1] ?? '';
    const unit = m[2]?.toUpperCase();
    n = Number(digits) * 2 ** (unit === undefined ? 0 : (SHIFT[unit] ?? 0));
  }
  if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError(`${what}: ${String(value)} is not a non-negative integer byte count`);
  return n;
}

function intIn(value: number | undefined, dflt: number, min: number, max: number, what: string): number {
  const v = value ?? dflt;
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new InvalidArgumentError(`${what}: ${String(value)} must be an integer in ${min}..${max}`);
  }
  return v;
}

function pageMultiple(value: number | string, what: string): number {
  const n = parseGuestSize(value, what);
  if (n < GUEST_PAGE_SIZE || n % GUEST_PAGE_SIZE !== 0) {
    throw new InvalidArgumentError(`${what}: ${String(value)} must be a positive multiple of ${GUEST_PAGE_SIZE} bytes`);
  }
  return n;
}

/**
 * Validates a workload and applies the defaults.
 * @throws InvalidArgumentError naming the offending field.
 */
export function resolveGuestWorkload(w: GuestWorkload = {}): ResolvedGuestWorkload {
  const pattern = w.pattern ?? 'random';
  if (!GUEST_PATTERNS.includes(pattern)) {
    throw new InvalidArgumentError(`pattern: ${JSON.stringify(pattern)} is not one of ${GUEST_PATTERNS.join(', ')}`);
  }
  const bytesPerWorker = pageMultiple(w.bytesPerWorker ?? 64 * 2 ** 20, 'bytesPerWorker');
  let hotBytes: number | undefined;
  if (w.hotBytes !== undefined) {
    if (pattern !== 'hotcold') throw new InvalidArgumentError(`hotBytes: only meaningful with pattern hotcold, not ${pattern}`);
    hotBytes = pageMultiple(w.hotBytes, 'hotBytes');
    if (hotBytes > bytesPerWorker) throw new InvalidArgumentError(`hotBytes: ${hotBytes} exceeds bytesPerWorker ${bytesPerWorker}`);
  }
  let seed: bigint | undefined;
  if (w.seed !== undefined) {
    if (typeof w.seed === 'number' && !Number.isSafeInteger(w.seed)) throw new InvalidArgumentError(`seed: ${w.seed} is not an integer`);
    seed = BigInt(w.seed);
    if (seed <= 0n || seed >= 2n ** 64n) throw new InvalidArgumentError(`seed: must be in 1..2^64-1`);
  }
  return Object.freeze({
    workers: intIn(w.workers, 1, 1, GUEST_MAX_WORKERS, 'workers'),
    bytesPerWorker,
    pattern,
    rateBytesPerSec: parseGuestSize(w.rateBytesPerSec ?? 0, 'rateBytesPerSec'),
    verify: w.verify ?? true,
    hotBytes,
    reportMs: intIn(w.reportMs, 100, 10, 60_000, 'reportMs'),
    heartbeatMs: intIn(w.heartbeatMs, 1000, 50, 1000, 'heartbeatMs'),
    idleVerifyMs: intIn(w.idleVerifyMs, 2000, 100, 600_000, 'idleVerifyMs'),
    seed,
    phaseAfterMs: intIn(w.phaseAfterMs, 0, 0, 86_400_000, 'phaseAfterMs'),
    phaseRateBytesPerSec: parseGuestSize(w.phaseRateBytesPerSec ?? 0, 'phaseRateBytesPerSec'),
  });
}

/** Options for {@link buildGuestCmdline}. */
export interface GuestCmdlineOptions {
  /** Serial console device. Default `ttyS0`. */
  console?: string;
  /** Pass `quiet` so only kernel warnings reach the serial line. Default true. */
  quiet?: boolean;
  /**
   * `panic=` seconds; default -1 (reboot at once). Pair it with QEMU's `-no-reboot` so a
   * panicking guest makes QEMU exit instead of silently starting over.
   */
  panic?: number;
  /**
   * Guest RAM in bytes: when given, the workload must leave room for the kernel
   * ({@link GUEST_KERNEL_RESERVE_BYTES}).
   */
  guestMemoryBytes?: number;
  /** More kernel parameters, one token each (no whitespace). */
  extra?: readonly string[];
}

/**
 * RAM the kernel and initramfs need beside the workload: a 256 MiB guest has ~183 MiB available
 * at /init, and the workload itself refuses to start with less than 16 MiB to spare (PID 1 cannot
 * be OOM-killed; overcommitting panics the kernel).
 */
export const GUEST_KERNEL_RESERVE_BYTES = 96 * 2 ** 20;

/**
 * Builds the guest kernel command line for a workload, e.g.
 * `console=ttyS0 quiet panic=-1 migd.workers=2 migd.bytes=67108864 migd.pattern=random ...`.
 * @throws InvalidArgumentError for an invalid workload, an `extra` token with whitespace, or a
 *   workload that does not fit `guestMemoryBytes`.
 */
export function buildGuestCmdline(workload: GuestWorkload = {}, opts: GuestCmdlineOptions = {}): string {
  const w = resolveGuestWorkload(workload);
  const console = opts.console ?? 'ttyS0';
  if (!/^[A-Za-z0-9,._-]+$/.test(console)) throw new InvalidArgumentError(`console: ${JSON.stringify(console)} is not a device name`);
  const panic = intIn(opts.panic, -1, -1, 3600, 'panic');
  if (opts.guestMemoryBytes !== undefined) {
    const need = w.workers * w.bytesPerWorker + GUEST_KERNEL_RESERVE_BYTES;
    if (need > opts.guestMemoryBytes) {
      throw new InvalidArgumentError(
        `workload needs ${need >> 20} MiB (${w.workers} x ${w.bytesPerWorker >> 20} MiB + ${GUEST_KERNEL_RESERVE_BYTES >> 20} MiB for the kernel) but the guest has ${Math.floor(opts.guestMemoryBytes / 2 ** 20)} MiB`,
      );
    }
  }
  const tokens = [`console=${console}`];
  if (opts.quiet ?? true) tokens.push('quiet');
  tokens.push(`panic=${panic}`);
  tokens.push(
    `migd.workers=${w.workers}`,
    `migd.bytes=${w.bytesPerWorker}`,
    `migd.pattern=${w.pattern}`,
    `migd.rate=${w.rateBytesPerSec}`,
    `migd.verify=${w.verify ? 1 : 0}`,
    `migd.report_ms=${w.reportMs}`,
    `migd.hb_ms=${w.heartbeatMs}`,
  );
  if (w.pattern === 'hotcold' && w.hotBytes !== undefined) tokens.push(`migd.hot=${w.hotBytes}`);
  if (w.pattern === 'idle') tokens.push(`migd.idle_ms=${w.idleVerifyMs}`);
  if (w.seed !== undefined) tokens.push(`migd.seed=${w.seed}`);
  if (w.phaseAfterMs > 0) tokens.push(`migd.phase_ms=${w.phaseAfterMs}`, `migd.phase_rate=${w.phaseRateBytesPerSec}`);
  for (const t of opts.extra ?? []) {
    if (t === '' || /\s/.test(t)) throw new InvalidArgumentError(`extra: kernel parameter ${JSON.stringify(t)} must be one non-empty token`);
    tokens.push(t);
  }
  return tokens.join(' ');
}
