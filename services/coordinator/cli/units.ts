/**
 * Parsing of the quantities migctl takes on its command line: sizes ("64M", "1.5GiB"), rates
 * ("10M", "12.5MiB/s", "100mbit"), durations ("500ms", "1.5s", "2m") and points in time (ISO
 * dates, or "2h" meaning two hours ago). Every parser throws a UsageError that names the flag.
 * K, M, G and T are binary multiples (KiB, MiB…), as everywhere in migd; "kbit", "mbit" and
 * "gbit" are decimal bits per second, as `tc` and link speeds use them.
 */

/** A command line that cannot be run as given (exit code 2). */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

const BINARY: Readonly<Record<string, number>> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };
const BITS: Readonly<Record<string, number>> = { bit: 1 / 8, kbit: 1e3 / 8, mbit: 1e6 / 8, gbit: 1e9 / 8 };

const SIZE_RE = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i;
const RATE_BITS_RE = /^(\d+(?:\.\d+)?)\s*([kmg]?bit)(?:\/s|ps)?$/i;

function checkedInteger(n: number, flag: string, raw: string): number {
  const v = Math.round(n);
  if (!Number.isSafeInteger(v) || v < 0) throw new UsageError(`${flag}: ${JSON.stringify(raw)} is out of range`);
  return v;
}

/** Bytes from "4096", "512K", "64M", "1.5GiB", "2g". */
export function parseSize(raw: string, flag: string): number {
  const m = SIZE_RE.exec(raw.trim());
  if (!m) throw new UsageError(`${flag}: ${JSON.stringify(raw)} is not a size (e.g. 4096, 512K, 64M, 1.5G)`);
  return checkedInteger(Number(m[1]) * (BINARY[(m[2] ?? '').toLowerCase()] ?? 1), flag, raw);
}

/** Bytes per second from a size with an optional "/s" ("10M", "12.5MiB/s") or bits ("100mbit"). */
export function parseRate(raw: string, flag: string): number {
  const s = raw.trim();
  const bits = RATE_BITS_RE.exec(s);
  if (bits) return checkedInteger(Number(bits[1]) * (BITS[(bits[2] ?? '').toLowerCase()] ?? 0), flag, raw);
  const size = s.replace(/\/s$/i, '');
  if (!SIZE_RE.test(size)) throw new UsageError(`${flag}: ${JSON.stringify(raw)} is not a rate (e.g. 10M, 12.5MiB/s, 100mbit)`);
  return parseSize(size, flag);
}

/** MiB from "512" (MiB) or a size with a unit ("1G" = 1024). */
export function parseMemoryMib(raw: string, flag: string): number {
  const s = raw.trim();
  if (/^\d+$/.test(s)) return checkedInteger(Number(s), flag, raw);
  const bytes = parseSize(s, flag);
  if (bytes % 2 ** 20 !== 0) throw new UsageError(`${flag}: ${JSON.stringify(raw)} is not a whole number of MiB`);
  return bytes / 2 ** 20;
}

const DURATION_UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION_RE = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$/i;

/** Milliseconds from "500ms", "1.5s", "2m", "1h", "7d"; a bare number is in `bareUnit`. */
export function parseDurationMs(raw: string, flag: string, bareUnit: 'ms' | 's' = 'ms'): number {
  const m = DURATION_RE.exec(raw.trim());
  if (!m) throw new UsageError(`${flag}: ${JSON.stringify(raw)} is not a duration (e.g. 500ms, 1.5s, 2m)`);
  const unit = (m[2] ?? bareUnit).toLowerCase();
  return checkedInteger(Number(m[1]) * (DURATION_UNITS[unit] ?? 1), flag, raw);
}

/** A non-negative integer within [min, max]. */
export function parseInteger(raw: string, flag: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const s = raw.trim();
  if (!/^-?\d+$/.test(s)) throw new UsageError(`${flag}: ${JSON.stringify(raw)} is not an integer`);
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`${flag}: ${s} must be in ${min}..${max}`);
  return n;
}

/**
 * A point in time: an ISO 8601 date or date-time ("2025-03-01", "2025-03-01T12:00:00Z"), or a
 * duration meaning that long before `now` ("90m", "2h", "7d").
 */
export function parseTime(raw: string, flag: string, now: number): Date {
  const s = raw.trim();
  if (DURATION_RE.test(s) && /[a-z]$/i.test(s)) return new Date(now - parseDurationMs(s, flag));
  if (/^\d{4}-\d{2}-\d{2}/.test(s)) {
    const t = Date.parse(s);
    if (!Number.isNaN(t)) return new Date(t);
  }
  throw new UsageError(`${flag}: ${JSON.stringify(raw)} is not a time (an ISO date like 2025-03-01T12:00:00Z, or an age like 2h or 7d)`);
}

/** Splits "a,b, c" into ["a", "b", "c"] (empty items dropped); repeated flags are concatenated. */
export function parseList(raw: string | readonly string[] | undefined): string[] {
  if (raw === undefined) return [];
  const items = typeof raw === 'string' ? [raw] : raw;
  return items.flatMap((s) => s.split(',')).map((s) => s.trim()).filter((s) => s !== '');
}
