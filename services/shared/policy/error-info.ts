/**
 * The one ErrorInfo builder: the `error_code` enum and the `code` string (its name, kept for
 * older readers) always agree.
 */
import { MigdError } from '../errors.js';
import { ErrorCode, ErrorInfo } from '../gen/migd/v1/common.js';

/** A gRPC status name, e.g. `FAILED_PRECONDITION`. */
export type ErrorCodeName = Exclude<keyof typeof ErrorCode, 'ERROR_CODE_UNSPECIFIED'> extends `ERROR_CODE_${infer N}` ? N : never;

/** The enum value of a status name; UNSPECIFIED for a name it does not know. */
export function errorCodeOf(name: string): ErrorCode {
  const v = (ErrorCode as unknown as Record<string, ErrorCode | undefined>)[`ERROR_CODE_${name}`];
  return typeof v === 'number' ? v : ErrorCode.ERROR_CODE_UNSPECIFIED;
}

/** An ErrorInfo from its parts. */
export function errorInfo(code: ErrorCodeName, reason: string, message: string): ErrorInfo {
  return { reason, message, code, errorCode: errorCodeOf(code) };
}

/**
 * An ErrorInfo read back from storage or an older peer that only set the `code` string: the enum
 * is filled in from it.
 */
export function errorInfoFromParts(parts: { reason?: string; message?: string; code?: string; errorCode?: ErrorCode }): ErrorInfo {
  const code = parts.code || (parts.errorCode ? ErrorCode[parts.errorCode].replace(/^ERROR_CODE_/, '') : '');
  return ErrorInfo.fromPartial({ reason: parts.reason ?? '', message: parts.message ?? '', code, errorCode: parts.errorCode || errorCodeOf(code) });
}

/**
 * The ErrorInfo of a thrown value: a MigdError keeps its code and reason (when it has none,
 * `fallbackReason`, else its code); anything else is INTERNAL with reason `fallbackReason`
 * (default INTERNAL).
 */
export function errorInfoOf(err: unknown, fallbackReason?: string): ErrorInfo {
  if (err instanceof MigdError) return errorInfo(err.code, err.reason ?? fallbackReason ?? err.code, err.message);
  return errorInfo('INTERNAL', fallbackReason ?? 'INTERNAL', err instanceof Error ? err.message : String(err));
}

/** An ErrorInfo being written (the enum is filled in by {@link errorInfoFromParts} when sent). */
export interface ErrorDraft {
  reason: string;
  message: string;
  /** A gRPC status name ({@link ErrorCodeName}). */
  code: string;
}
