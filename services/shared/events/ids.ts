/**
 * Sortable unique ids (ULID: 48-bit millisecond time + 80 random bits, Crockford base32, 26
 * characters). Ids from one factory are strictly increasing even within a millisecond or when
 * the clock steps back, so sorting event ids sorts them by creation. They are safe as NATS
 * subject tokens and as `Nats-Msg-Id` values.
 */
import { randomBytes } from 'node:crypto';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

/** Creates a monotonic ULID generator reading time from `now` (ms since the epoch). */
export function createIdFactory(now: () => number = Date.now): () => string {
  let lastTime = -1;
  const rand = new Uint8Array(10);
  return () => {
    let t = Math.floor(now());
    if (t <= lastTime) {
      t = lastTime;
      // Same (or earlier) millisecond: increment the 80-bit random part instead of redrawing.
      let i = rand.length - 1;
      while (i >= 0 && rand[i] === 0xff) rand[i--] = 0;
      if (i < 0) {
        t = lastTime + 1;
        rand.set(randomBytes(10));
      } else {
        rand[i] = rand[i]! + 1;
      }
    } else {
      rand.set(randomBytes(10));
    }
    lastTime = t;
    return encodeTime(t) + encodeRandom(rand);
  };
}

function encodeTime(t: number): string {
  let out = '';
  for (let i = 0; i < 10; i++) {
    out = ALPHABET[t % 32]! + out;
    t = Math.floor(t / 32);
  }
  return out;
}

function encodeRandom(bytes: Uint8Array): string {
  // 80 bits -> 16 base32 characters, most significant first.
  let bits = 0n;
  for (const b of bytes) bits = (bits << 8n) | BigInt(b);
  let out = '';
  for (let i = 0; i < 16; i++) {
    out = ALPHABET[Number(bits & 31n)]! + out;
    bits >>= 5n;
  }
  return out;
}

/** A process-wide id generator on the system clock. */
export const newId: () => string = createIdFactory();
