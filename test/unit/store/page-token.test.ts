import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../services/shared/errors.js';
import { decodePageToken, encodePageToken, filterFingerprint } from '../../../services/coordinator/store/page-token.js';

describe('page tokens', () => {
  const fp = filterFingerprint({ vmName: 'a' });

  it('round-trips a keyset cursor as opaque base64url', () => {
    const token = encodePageToken({ createdAtMs: 1_790_000_000_123, id: '01ABC' }, fp);
    expect(token).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(decodePageToken(token, fp)).toEqual({ createdAtMs: 1_790_000_000_123, id: '01ABC' });
  });

  it('fingerprints filters stably and distinctly', () => {
    expect(filterFingerprint({ vmName: 'a' })).toBe(fp);
    expect(filterFingerprint({ vmName: 'b' })).not.toBe(fp);
  });

  it.each([
    ['not base64url', 'a+b/c='],
    ['not JSON', Buffer.from('hello').toString('base64url')],
    ['JSON but not an object', Buffer.from('42').toString('base64url')],
    ['wrong version', Buffer.from(JSON.stringify({ v: 9, t: 1, i: 'x', f: fp })).toString('base64url')],
    ['missing id', Buffer.from(JSON.stringify({ v: 1, t: 1, f: fp })).toString('base64url')],
    ['fractional time', Buffer.from(JSON.stringify({ v: 1, t: 1.5, i: 'x', f: fp })).toString('base64url')],
    ['empty', ''],
  ])('rejects a token that is %s', (_why, token) => {
    expect(() => decodePageToken(token, fp)).toThrow(InvalidArgumentError);
    expect(() => decodePageToken(token, fp)).toThrow(/page_token is invalid/);
  });

  it('rejects a token issued for another filter, with a reason', () => {
    const token = encodePageToken({ createdAtMs: 1, id: 'x' }, filterFingerprint({ vmName: 'other' }));
    try {
      decodePageToken(token, fp);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect((err as InvalidArgumentError).reason).toBe('BAD_PAGE_TOKEN');
      expect((err as Error).message).toMatch(/different filter/);
    }
  });
});
