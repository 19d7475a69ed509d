/**
 * Sortable unique ids (ULID: 48-bit millisecond time + 80 random bits, Crockford base32, 26
 * characters). Ids from one factory are strictly increasing even within a millisecond or when
 * the clock steps back, so sorting event ids sorts them by creation. They are safe as NATS
 * subject tokens and as `Nats-Msg-Id` values.
 */
import { randomFillSync } from 'node:crypto';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

/**
 * Random bytes drawn 4 KiB at a time and handed out 10 at a time: one system call per 409 ids
 * instead of one per id (the coordinator makes several ids per migration).
 */
const POOL = new Uint8Array(4096);
let poolAt = POOL.length;
function drawRandom(into: Uint8Array): void {
  if (poolAt + into.length > POOL.length) {
    randomFillSync(POOL);
    poolAt = 0;
  }
  into.set(POOL.subarray(poolAt, poolAt + into.length));
  poolAt += into.length;
}

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
        drawRandom(rand);
      } else {
        rand[i] = rand[i]! + 1;
      }
    } else {
      drawRandom(rand);
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
  // 80 bits -> 16 base32 characters, most significant first (5 bits at a time, no BigInt).
  let out = '';
  let acc = 0;
  let n = 0;
  for (const b of bytes) {
    acc = ((acc << 8) | b) & 0xfff;
    n += 8;
    while (n >= 5) {
      n -= 5;
      out += ALPHABET[(acc >> n) & 31]!;
    }
  }
  return out;
}

/** A process-wide id generator on the system clock. */
export const newId: () => string = createIdFactory();
