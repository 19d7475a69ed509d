/**
 * QMP wire format: one JSON object per line (QEMU ends every message with "\r\n" or "\n"), and the
 * message shapes from qapi/control.json and docs/interop/qmp-spec.rst:
 *
 *   greeting  {"QMP": {"version": {"qemu": {"major","minor","micro"}, "package"}, "capabilities": ["oob"]}}
 *   command   {"execute": "query-status", "arguments": {...}, "id": 7}
 *   oob       {"exec-oob": "migrate-pause", "id": 8}          (id mandatory)
 *   success   {"return": {...}, "id": 7}
 *   failure   {"error": {"class": "GenericError", "desc": "..."}, "id": 7}
 *   event     {"event": "STOP", "data": {...}, "timestamp": {"seconds": n, "microseconds": n}}
 *
 * An error without an id is QEMU failing to parse a request (e.g. `JSON parse error, ...`).
 */
import { QmpProtocolError, type QmpErrorBody } from './errors.js';

/** Request ids: the client uses integers; QEMU echoes any JSON value back. */
export type QmpId = number | string;

export interface QmpVersion {
  readonly qemu: { readonly major: number; readonly minor: number; readonly micro: number };
  readonly package: string;
}

/** The parsed greeting. `capabilities` lists what may be enabled (`oob`). */
export interface QmpGreeting {
  readonly version: QmpVersion;
  readonly capabilities: readonly string[];
}

export interface QmpEvent<D = Record<string, unknown>> {
  readonly event: string;
  /** Absent for events without data (STOP, RESUME). */
  readonly data: D | undefined;
  /** QEMU's host clock when it emitted the event, in microseconds since the epoch. */
  readonly timestampUs: number;
}

export type QmpInbound =
  | { readonly kind: 'greeting'; readonly greeting: QmpGreeting }
  | { readonly kind: 'return'; readonly id: QmpId | undefined; readonly value: unknown }
  | { readonly kind: 'error'; readonly id: QmpId | undefined; readonly error: QmpErrorBody }
  | { readonly kind: 'event'; readonly event: QmpEvent };

/** Default longest accepted line: 10 MiB, like python/qemu/qmp and libvirt. */
export const DEFAULT_MAX_LINE_BYTES = 10 * 1024 * 1024;

/**
 * Splits a byte stream into lines. Works on bytes, not strings, so a multi-byte UTF-8 character
 * split across chunks is decoded whole. A line longer than `maxLineBytes` is a protocol error
 * (a stuck or hostile peer must not grow the buffer without bound).
 */
export class LineDecoder {
  private parts: Buffer[] = [];
  private size = 0;

  constructor(private readonly maxLineBytes = DEFAULT_MAX_LINE_BYTES) {}

  /**
   * Feeds a chunk and returns the complete lines it finished (without the line terminator; blank
   * lines dropped).
   * @throws QmpProtocolError when a line exceeds the limit.
   */
  push(chunk: Uint8Array): string[] {
    const lines: string[] = [];
    let buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    for (;;) {
      const nl = buf.indexOf(0x0a);
      if (nl < 0) break;
      const head = buf.subarray(0, nl);
      const whole = this.size === 0 ? head : Buffer.concat([...this.parts, head]);
      this.parts = [];
      this.size = 0;
      if (whole.length > this.maxLineBytes) {
        throw new QmpProtocolError(`QMP line of ${whole.length} bytes exceeds the ${this.maxLineBytes}-byte limit`);
      }
      const line = whole.toString('utf8').replace(/\r$/, '');
      if (line.trim() !== '') lines.push(line);
      buf = buf.subarray(nl + 1);
    }
    if (buf.length > 0) {
      this.size += buf.length;
      if (this.size > this.maxLineBytes) {
        throw new QmpProtocolError(`QMP line exceeds the ${this.maxLineBytes}-byte limit (no newline yet)`);
      }
      // Copy: the caller may reuse the chunk's memory.
      this.parts.push(Buffer.from(buf));
    }
    return lines;
  }

  /** Bytes of an unfinished line held back. */
  get pending(): number {
    return this.size;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isId(v: unknown): v is QmpId {
  return typeof v === 'number' || typeof v === 'string';
}

/**
 * Classifies one line from QEMU.
 * @throws QmpProtocolError for malformed JSON or a shape that is none of greeting, reply, event.
 */
export function parseMessage(line: string): QmpInbound {
  let msg: unknown;
  try {
    msg = JSON.parse(line);
  } catch (err) {
    throw new QmpProtocolError('malformed JSON from QEMU', { cause: err, line });
  }
  if (!isObject(msg)) throw new QmpProtocolError('QMP message is not a JSON object', { line });

  if ('QMP' in msg) return { kind: 'greeting', greeting: parseGreeting(msg, line) };

  if (typeof msg['event'] === 'string') {
    const ts = msg['timestamp'];
    let timestampUs = 0;
    if (isObject(ts) && typeof ts['seconds'] === 'number' && typeof ts['microseconds'] === 'number') {
      timestampUs = ts['seconds'] * 1_000_000 + ts['microseconds'];
    }
    const data = msg['data'];
    if (data !== undefined && !isObject(data)) throw new QmpProtocolError('QMP event data is not an object', { line });
    return { kind: 'event', event: { event: msg['event'], data, timestampUs } };
  }

  const rawId = msg['id'];
  if (rawId !== undefined && !isId(rawId)) {
    throw new QmpProtocolError('QMP reply id is neither a number nor a string', { line });
  }
  const id = rawId;
  if ('return' in msg) return { kind: 'return', id, value: msg['return'] };
  if ('error' in msg) {
    const e = msg['error'];
    if (!isObject(e) || typeof e['class'] !== 'string' || typeof e['desc'] !== 'string') {
      throw new QmpProtocolError('QMP error reply lacks class/desc', { line });
    }
    return { kind: 'error', id, error: { class: e['class'], desc: e['desc'] } };
  }
  throw new QmpProtocolError('QMP message is neither greeting, reply nor event', { line });
}

function parseGreeting(msg: Record<string, unknown>, line: string): QmpGreeting {
  const qmp = msg['QMP'];
  if (!isObject(qmp)) throw new QmpProtocolError('QMP greeting: "QMP" is not an object', { line });
  const version = qmp['version'];
  const caps = qmp['capabilities'];
  if (!isObject(version) || !isObject(version['qemu'])) {
    throw new QmpProtocolError('QMP greeting: missing version.qemu', { line });
  }
  const q = version['qemu'];
  const major = q['major'];
  const minor = q['minor'];
  const micro = q['micro'];
  if (typeof major !== 'number' || typeof minor !== 'number' || typeof micro !== 'number') {
    throw new QmpProtocolError('QMP greeting: version numbers are not numbers', { line });
  }
  if (!Array.isArray(caps) || !caps.every((c): c is string => typeof c === 'string')) {
    throw new QmpProtocolError('QMP greeting: capabilities is not a list of strings', { line });
  }
  const pkg = version['package'];
  return {
    version: { qemu: { major, minor, micro }, package: typeof pkg === 'string' ? pkg : '' },
    capabilities: caps,
  };
}

/** Encodes an in-band (`execute`) or out-of-band (`exec-oob`) command as one line. */
export function encodeCommand(
  command: string,
  args: Record<string, unknown> | undefined,
  id: QmpId,
  oob = false,
): Buffer {
  const msg: Record<string, unknown> = oob ? { 'exec-oob': command } : { execute: command };
  if (args !== undefined) msg['arguments'] = args;
  msg['id'] = id;
  return Buffer.from(JSON.stringify(msg) + '\n', 'utf8');
}
