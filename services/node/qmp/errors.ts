/**
 * QMP errors. One root, `QmpError`, so a caller can tell "QEMU's control channel failed" apart from
 * everything else; the subclasses say how (modelled on python/qemu/qmp: ExecuteError,
 * ExecInterruptedError, ProtocolError).
 *
 * Aborts are not QMP errors: an AbortSignal that fires rejects with the shared `CancelledError`
 * (or with the signal's reason when that is already a `MigdError`, e.g. a parent deadline), so the
 * RPC layer maps it to CANCELLED like every other abort.
 */
import { MigdError, type ErrorCode } from '../../shared/errors.js';

/** Root of every error raised by the QMP client. */
export class QmpError extends MigdError {
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; reason?: string }) {
    super(code, message, options);
  }
}

/** QEMU's `error` member of a reply: `{"class": "GenericError", "desc": "..."}`. */
export interface QmpErrorBody {
  readonly class: string;
  readonly desc: string;
}

/**
 * QEMU answered a command with an error. Keeps what was sent (command, arguments) and what came
 * back (QEMU's error class and description) — enough to log, retry or explain.
 */
export class QmpCommandError extends QmpError {
  readonly command: string;
  readonly arguments: Readonly<Record<string, unknown>> | undefined;
  /** QEMU's error class, e.g. `GenericError`, `CommandNotFound`, `DeviceNotFound`. */
  readonly errorClass: string;
  /** QEMU's human-readable description. */
  readonly desc: string;
  /** True when the command went out as `exec-oob`. */
  readonly oob: boolean;

  constructor(command: string, args: Record<string, unknown> | undefined, error: QmpErrorBody, oob = false) {
    super(codeForClass(error.class), `QMP ${command}: ${error.class}: ${error.desc}`, { reason: 'QMP_COMMAND_FAILED' });
    this.command = command;
    this.arguments = args;
    this.errorClass = error.class;
    this.desc = error.desc;
    this.oob = oob;
  }
}

function codeForClass(cls: string): ErrorCode {
  switch (cls) {
    case 'CommandNotFound':
      return 'UNIMPLEMENTED';
    case 'DeviceNotFound':
      return 'NOT_FOUND';
    default:
      // GenericError covers "not now" (wrong migration state, VM not running…) far more often
      // than "malformed": FAILED_PRECONDITION is the honest default.
      return 'FAILED_PRECONDITION';
  }
}

/**
 * The connection to QEMU is gone (QEMU exited, the socket closed, the client disconnected) or was
 * never there. A command that was pending when this happened may or may not have run.
 */
export class QmpDisconnectedError extends QmpError {
  constructor(message: string, options?: { cause?: unknown; reason?: string }) {
    super('UNAVAILABLE', message, { reason: 'QMP_DISCONNECTED', ...options });
  }
}

/** Could not open the QMP socket (missing, refused) or QEMU sent no greeting in time. */
export class QmpConnectError extends QmpError {
  readonly address: string;
  constructor(address: string, message: string, options?: { cause?: unknown }) {
    super('UNAVAILABLE', `QMP ${address}: ${message}`, { reason: 'QMP_CONNECT_FAILED', ...options });
    this.address = address;
  }
}

/**
 * A command (or the connect handshake) got no reply in time. QMP has no cancel: the command may
 * still run in QEMU; a late reply is dropped.
 */
export class QmpTimeoutError extends QmpError {
  readonly command: string;
  readonly timeoutMs: number;
  constructor(command: string, timeoutMs: number) {
    super('DEADLINE_EXCEEDED', `QMP ${command}: no reply within ${timeoutMs} ms`, { reason: 'QMP_TIMEOUT' });
    this.command = command;
    this.timeoutMs = timeoutMs;
  }
}

/**
 * QEMU sent something that is not QMP: malformed JSON, a line over the size limit, a bad greeting,
 * an error reply without an id (QEMU could not parse what we sent). The session is torn down,
 * like python/qemu/qmp does, because the stream can no longer be trusted.
 */
export class QmpProtocolError extends QmpError {
  /** The offending line (truncated), when there was one. */
  readonly line: string | undefined;
  constructor(message: string, options?: { cause?: unknown; line?: string }) {
    super('INTERNAL', message, { reason: 'QMP_PROTOCOL', cause: options?.cause });
    this.line = options?.line === undefined ? undefined : options.line.slice(0, 512);
  }
}

/**
 * The call does not fit the client's state: `exec-oob` when the greeting did not offer `oob`,
 * `connect()` while already connected.
 */
export class QmpStateError extends QmpError {
  constructor(message: string, reason: string) {
    super('FAILED_PRECONDITION', message, { reason });
  }
}

/** An event subscriber fell too far behind: its queue limit was reached and events were lost. */
export class QmpEventOverflowError extends QmpError {
  readonly limit: number;
  constructor(limit: number) {
    super('RESOURCE_EXHAUSTED', `QMP event queue overflow: more than ${limit} events not consumed`, {
      reason: 'QMP_EVENT_OVERFLOW',
    });
    this.limit = limit;
  }
}
