/**
 * The one place errors become gRPC statuses (server side) and statuses become errors again
 * (client side). Known `MigdError`s keep their code and message; aborts become CANCELLED;
 * anything else becomes INTERNAL with a generic message, and the stack is logged, never sent.
 */
import { Metadata, status, type ServiceError, type StatusObject } from '@grpc/grpc-js';
import {
  AlreadyExistsError,
  CancelledError,
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  isAbortError,
  MigdError,
  NOT_LEADER,
  NotFoundError,
  NotLeaderError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnavailableError,
  type ErrorCode,
} from '../errors.js';
import type { Logger } from '../log.js';

const REASON_KEY = 'migd-reason';
/** The leader's address on a NOT_LEADER refusal (see NotLeaderError). */
const LEADER_KEY = 'migd-leader';

/** Maps a thrown value to the status sent to the client. Logs unexpected errors with stack. */
export function toStatus(err: unknown, log?: Logger, method?: string): Partial<StatusObject> {
  const metadata = new Metadata();
  if (err instanceof MigdError) {
    if (err.reason) metadata.set(REASON_KEY, err.reason);
    if (err instanceof NotLeaderError && err.leader) metadata.set(LEADER_KEY, err.leader);
    return { code: status[err.code], details: err.message, metadata };
  }
  if (isAbortError(err)) {
    return { code: status.CANCELLED, details: 'call cancelled', metadata };
  }
  log?.error('internal error in handler', { method, err });
  return { code: status.INTERNAL, details: 'internal error', metadata };
}

const codeNames = new Map<number, ErrorCode>(
  (Object.entries(status) as [string, number | string][])
    .filter((e): e is [ErrorCode, number] => typeof e[1] === 'number')
    .map(([name, code]) => [code, name]),
);

/** Turns a gRPC client error back into a MigdError of the matching class (keeps `cause`). */
export function fromServiceError(err: ServiceError, method: string): MigdError {
  const reason = err.metadata?.get(REASON_KEY)[0]?.toString();
  const opts = { cause: err, ...(reason ? { reason } : {}) };
  const msg = err.details || err.message;
  switch (err.code) {
    case status.INVALID_ARGUMENT:
      return new InvalidArgumentError(msg, opts);
    case status.NOT_FOUND:
      return new NotFoundError(msg, opts);
    case status.ALREADY_EXISTS:
      return new AlreadyExistsError(msg, opts);
    case status.FAILED_PRECONDITION:
      return new FailedPreconditionError(msg, opts);
    case status.RESOURCE_EXHAUSTED:
      return new ResourceExhaustedError(msg, opts);
    case status.PERMISSION_DENIED:
      return new PermissionDeniedError(msg, opts);
    case status.UNAVAILABLE:
      if (reason === NOT_LEADER) return new NotLeaderError(err.metadata?.get(LEADER_KEY)[0]?.toString() ?? '', { cause: err, message: `${method}: ${msg}` });
      return new UnavailableError(`${method}: ${msg}`, opts);
    case status.CANCELLED:
      return new CancelledError(`${method}: ${msg}`, opts);
    case status.DEADLINE_EXCEEDED:
      return new DeadlineExceededError(`${method}: ${msg}`, opts);
    default:
      return new MigdError(codeNames.get(err.code) ?? 'INTERNAL', `${method}: ${msg}`, opts);
  }
}
