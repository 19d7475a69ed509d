/**
 * The error hierarchy every migd package builds on. A `MigdError` carries the gRPC status it maps
 * to, so the RPC layer never guesses: known errors keep their code and message, anything else
 * becomes INTERNAL with a generic message (see rpc/status.ts).
 */

/** The gRPC status codes migd errors map to (subset of grpc.status, by name). */
export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'FAILED_PRECONDITION'
  | 'RESOURCE_EXHAUSTED'
  | 'PERMISSION_DENIED'
  | 'UNAUTHENTICATED'
  | 'UNAVAILABLE'
  | 'DEADLINE_EXCEEDED'
  | 'CANCELLED'
  | 'ABORTED'
  | 'UNIMPLEMENTED'
  | 'INTERNAL';

/** Root of migd's errors. `message` is safe to show to a client. */
export class MigdError extends Error {
  readonly code: ErrorCode;
  /** Machine-readable reason, e.g. `VM_ALREADY_MIGRATING`; stable across releases. */
  readonly reason: string | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; reason?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.reason = options?.reason;
  }
}

/** The caller sent something malformed or contradictory. Nothing was changed. */
export class InvalidArgumentError extends MigdError {
  constructor(message: string, options?: { cause?: unknown; reason?: string }) {
    super('INVALID_ARGUMENT', message, options);
  }
}

/** A named entity (VM, node, run, plan) does not exist. */
export class NotFoundError extends MigdError {
  constructor(message: string, options?: { cause?: unknown; reason?: string }) {
    super('NOT_FOUND', message, options);
  }
}

/** The entity exists already (e.g. a VM of that name). */
export class AlreadyExistsError extends MigdError {
  constructor(message: string, options?: { cause?: unknown; reason?: string }) {
    super('ALREADY_EXISTS', message, options);
  }
}

/** The request is valid but the system is not in a state that allows it (VM already migrating). */
export class FailedPreconditionError extends MigdError {
  constructor(message: string, options?: { cause?: unknown; reason?: string }) {
    super('FAILED_PRECONDITION', message, options);
  }
}

/** Not enough of something (memory on a host, concurrency slots). */
export class ResourceExhaustedError extends MigdError {
  constructor(message: string, options?: { cause?: unknown; reason?: string }) {
    super('RESOURCE_EXHAUSTED', message, options);
  }
}

/** A peer (node daemon, destination QEMU, NATS) does not answer. Retrying may help. */
export class UnavailableError extends MigdError {
  constructor(message: string, options?: { cause?: unknown; reason?: string }) {
    super('UNAVAILABLE', message, options);
  }
}

/** Reason of {@link NotLeaderError}. */
export const NOT_LEADER = 'NOT_LEADER';

/**
 * A replicated coordinator that is not the leader refuses a write (UNAVAILABLE, reason
 * NOT_LEADER). `leader` is the leader's address (host:port) when known, else empty: a client
 * retries there, or on another coordinator after a moment when it is empty.
 */
export class NotLeaderError extends UnavailableError {
  readonly leader: string;
  constructor(leader: string, options?: { cause?: unknown; message?: string }) {
    super(options?.message ?? (leader ? `not the leader; the leader is ${leader}` : 'not the leader; no leader is elected right now'), { reason: NOT_LEADER, ...(options?.cause === undefined ? {} : { cause: options.cause }) });
    this.leader = leader;
  }
}

/** The caller's role does not allow the call. */
export class PermissionDeniedError extends MigdError {
  constructor(message: string, options?: { cause?: unknown; reason?: string }) {
    super('PERMISSION_DENIED', message, options);
  }
}

/** The peer did not accept who we are: e.g. a client certificate from a CA the server does not trust. */
export class UnauthenticatedError extends MigdError {
  constructor(message: string, options?: { cause?: unknown; reason?: string }) {
    super('UNAUTHENTICATED', message, options);
  }
}

/** The operation was cancelled (by the caller's AbortSignal or a cancel request). */
export class CancelledError extends MigdError {
  constructor(message = 'operation cancelled', options?: { cause?: unknown; reason?: string }) {
    super('CANCELLED', message, options);
  }
}

/** A deadline or timeout elapsed. */
export class DeadlineExceededError extends MigdError {
  constructor(message: string, options?: { cause?: unknown; reason?: string }) {
    super('DEADLINE_EXCEEDED', message, options);
  }
}

/** Configuration is invalid; names the option. Raised at start-up, never per request. */
export class ConfigError extends MigdError {
  readonly option: string;
  constructor(option: string, message: string) {
    super('INVALID_ARGUMENT', `config ${option}: ${message}`);
    this.option = option;
  }
}

/** A required external program or file (QEMU, kernel image, nats-server) is missing or unusable. */
export class DependencyError extends MigdError {
  readonly dependency: string;
  constructor(dependency: string, message: string, options?: { cause?: unknown }) {
    super('FAILED_PRECONDITION', `${dependency}: ${message}`, options);
    this.dependency = dependency;
  }
}

/** True when `err` is an abort (AbortSignal fired). */
export function isAbortError(err: unknown): boolean {
  return (
    err instanceof CancelledError ||
    (err instanceof Error && (err.name === 'AbortError' || err.name === 'TimeoutError'))
  );
}

/** Throws a CancelledError carrying the signal's reason when `signal` has fired. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    throw signal.reason instanceof MigdError ? signal.reason : new CancelledError('operation cancelled', { cause: signal.reason });
  }
}
