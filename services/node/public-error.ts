/**
 * What a client may learn from a node's error: its code, its reason and a sentence — never QEMU's
 * own output (qemu.log excerpts), QMP error texts, socket paths or other host detail. Those go to
 * the node's log, where an operator with access to the host reads them. Used at the RPC boundary
 * (every NodeService answer) and for the error a migration records in its history.
 */
import { MigdError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';
import { QmpCommandError, QmpError } from './qmp/errors.js';

/** Reasons whose message carries host detail (QEMU's start-up output). */
const HOST_DETAIL_REASONS = new Set(['QEMU_START_FAILED']);

/** The public sentence for an error whose message is internal, or undefined when it may be shown. */
function replacement(err: MigdError): string | undefined {
  if (err instanceof QmpCommandError) return `QEMU refused ${err.command} (${err.errorClass}); the node's log has the details`;
  if (err instanceof QmpError) {
    switch (err.reason) {
      case 'QMP_TIMEOUT':
        return "QEMU did not answer in time; the node's log has the details";
      case 'QMP_DISCONNECTED':
      case 'QMP_CONNECT_FAILED':
        return "the VM's QEMU is not reachable; the node's log has the details";
      default:
        return "QEMU's monitor failed; the node's log has the details";
    }
  }
  if (err.reason && HOST_DETAIL_REASONS.has(err.reason)) return "QEMU could not start the VM; the node's log has QEMU's output";
  return undefined;
}

/** A message safe for clients and run history. */
export function publicMessage(err: unknown): string {
  if (err instanceof MigdError) return replacement(err) ?? err.message;
  return 'internal error';
}

/**
 * The error to send to a client: the same code and reason, with internal detail replaced (and
 * logged). Errors that are not MigdErrors pass unchanged (the RPC layer turns them into INTERNAL).
 */
export function toPublicError(err: unknown, log: Logger, method: string): unknown {
  if (!(err instanceof MigdError)) return err;
  const text = replacement(err);
  if (text === undefined) return err;
  log.warn('request failed; detail kept from the client', { method, code: err.code, reason: err.reason ?? null, err });
  return new MigdError(err.code, text, { ...(err.reason ? { reason: err.reason } : {}) });
}
