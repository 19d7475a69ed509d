import { describe, expect, it } from 'vitest';
import { GuestFeed } from '../../../services/node/guest-feed.js';
import type { SerialSubscription } from '../../../services/node/vm/serial.js';
import { COMBINED_WORKER, formatGuestLine } from '../../../services/shared/guest/telemetry.js';
import { createLogger } from '../../../services/shared/log.js';
import { until } from '../../helpers/until.js';

const quiet = createLogger('test', {}, () => undefined, 'error');

/** A serial console that yields `text` once, then stays open until the feed closes. */
function consoleOf(text: string): (signal: AbortSignal) => SerialSubscription {
  return (signal) =>
    (async function* () {
      yield Buffer.from(text);
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    })() as unknown as SerialSubscription;
}

describe('guest feed', () => {
  it('shows the whole guest’s latest pace, not whichever worker reported last', async () => {
    const lines =
      formatGuestLine(10, 'start', { workers: 2, bytes: 4096, pattern: 'random' }) +
      formatGuestLine(20, 'pass', { w: 0, n: 3, bytes: 4096, ms_per_gib: 1000 }) +
      formatGuestLine(30, 'pass', { w: 1, n: 3, bytes: 4096, ms_per_gib: 3000 }) +
      formatGuestLine(40, 'pass', { w: 0, n: 4, bytes: 4096, ms_per_gib: 1200 });
    const feed = new GuestFeed('vm1', consoleOf(lines), quiet);
    try {
      await until(() => feed.latest()?.sample.guestMonoMs === 40, 'the latest sample (guest ms 40)', 1000, 5);
      expect(feed.latest()?.sample).toMatchObject({ worker: 0, msPerGib: 1200 });
      expect(feed.summary()).toMatchObject({ worker: COMBINED_WORKER, msPerGib: 750 });
      // A whole-guest sample too old next to the latest one is not shown.
      expect(feed.summary(-1)).toMatchObject({ worker: 0, msPerGib: 1200 });
    } finally {
      feed.close();
    }
  });

  it('shows the latest sample while no whole-guest one exists yet', async () => {
    const feed = new GuestFeed('vm2', consoleOf(formatGuestLine(10, 'start', { workers: 2, bytes: 4096, pattern: 'random' }) + formatGuestLine(20, 'pass', { w: 0, n: 1, bytes: 4096, ms_per_gib: 1000 })), quiet);
    try {
      await until(() => feed.latest() !== undefined, 'a first sample', 1000, 5);
      expect(feed.summary()).toMatchObject({ worker: 0, msPerGib: 1000 });
    } finally {
      feed.close();
    }
  });

  it('keeps the samples of the last seconds for a run that begins (its baseline), oldest first', async () => {
    const lines =
      formatGuestLine(10, 'start', { workers: 1, bytes: 4096, pattern: 'random' }) +
      formatGuestLine(20, 'pass', { w: 0, n: 1, bytes: 4096, ms_per_gib: 900 }) +
      formatGuestLine(30, 'pass', { w: 0, n: 2, bytes: 4096, ms_per_gib: 800 });
    const feed = new GuestFeed('vm3', consoleOf(lines), quiet);
    try {
      await until(() => feed.latest()?.sample.guestMonoMs === 30, 'the latest sample (guest ms 30)', 1000, 5);
      const kept = feed.recent(5000);
      expect(kept.map((s) => s.guestMonoMs)).toEqual([...kept.map((s) => s.guestMonoMs)].sort((a, b) => a - b));
      expect(kept.filter((s) => s.worker === 0).map((s) => s.msPerGib)).toEqual([900, 800]);
      await new Promise((r) => setTimeout(r, 60));
      // Only what arrived within the window asked for.
      expect(feed.recent(30)).toEqual([]);
      expect(feed.recent(5000)).toEqual(kept);
    } finally {
      feed.close();
    }
  });
});
