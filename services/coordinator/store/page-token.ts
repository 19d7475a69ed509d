/**
 * Opaque page tokens for newest-first run listings: base64url of a small JSON keyset
 * `{v, t: created_at ms, i: run id, f: filter fingerprint}`. The fingerprint ties a token to the
 * filter it was issued for, so reusing it with another filter is refused instead of silently
 * skipping rows.
 */
import { createHash } from 'node:crypto';
import { InvalidArgumentError } from '../../shared/errors.js';

/** The position after which the next page starts. */
export interface PageCursor {
  createdAtMs: number;
  id: string;
}

const VERSION = 1;

/** A short, stable fingerprint of a normalized filter. */
export function filterFingerprint(filter: unknown): string {
  return createHash('sha256').update(JSON.stringify(filter)).digest('base64url').slice(0, 12);
}

/** Encodes a cursor for the filter with fingerprint `fp`. */
export function encodePageToken(cursor: PageCursor, fp: string): string {
  return Buffer.from(JSON.stringify({ v: VERSION, t: cursor.createdAtMs, i: cursor.id, f: fp }), 'utf8').toString('base64url');
}

/**
 * Decodes a token issued for the filter with fingerprint `fp`.
 * @throws InvalidArgumentError (reason BAD_PAGE_TOKEN) when the token is malformed or was issued
 *   for another filter.
 */
export function decodePageToken(token: string, fp: string): PageCursor {
  const bad = (why: string): InvalidArgumentError =>
    new InvalidArgumentError(`page_token is invalid: ${why}; pass the next_page_token of a previous response unchanged`, {
      reason: 'BAD_PAGE_TOKEN',
    });
  if (!/^[A-Za-z0-9_-]+$/.test(token)) throw bad('not base64url');
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
  } catch {
    throw bad('not a token this service issued');
  }
  if (typeof parsed !== 'object' || parsed === null) throw bad('not a token this service issued');
  const p = parsed as Record<string, unknown>;
  if (p['v'] !== VERSION) throw bad('unknown token version');
  const t = p['t'];
  const i = p['i'];
  if (typeof t !== 'number' || !Number.isSafeInteger(t) || typeof i !== 'string' || i === '') {
    throw bad('not a token this service issued');
  }
  if (p['f'] !== fp) throw bad('it was issued for a different filter');
  return { createdAtMs: t, id: i };
}
