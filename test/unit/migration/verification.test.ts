import { describe, expect, it } from 'vitest';
import type { GuestPerfSample } from '../../../services/shared/gen/migd/v1/common.js';
import { VerificationTracker } from '../../../services/node/migration/verification.js';

const s = (worker: number, pagesVerified: number, integrityErrors = 0): GuestPerfSample => ({ worker, pagesVerified, integrityErrors, msPerGib: 600, guestMonoMs: 0, heartbeatGapMs: 0, pass: 0, vmName: 'vm' });

describe('VerificationTracker: proof of verification after arrival', () => {
  it('is not proven by the first counts seen on the destination (they include work done on the source)', () => {
    const v = new VerificationTracker();
    v.add(s(0, 0)); // pass line before this worker's first verify line here
    v.add(s(0, 5000));
    v.add(s(1, 7000));
    v.add(s(-1, 12000));
    expect(v.proven).toBe(false);
    expect(v.pagesVerifiedAfter).toBe(0);
  });

  it('counts per-worker growth, ignoring the combined sample summed over partial workers', () => {
    const v = new VerificationTracker();
    v.add(s(0, 5000));
    v.add(s(-1, 5000)); // only worker 0 reported yet
    v.add(s(1, 7000));
    v.add(s(-1, 12000)); // grows because worker 1 appeared, not because of verification
    expect(v.proven).toBe(false);
    v.add(s(0, 5300));
    expect(v.proven).toBe(true);
    expect(v.pagesVerifiedAfter).toBe(300);
    v.add(s(1, 7100));
    expect(v.pagesVerifiedAfter).toBe(400);
  });

  it('uses whole-guest heartbeats for an idle guest, and keeps the highest error count', () => {
    const v = new VerificationTracker();
    v.add(s(-1, 8192));
    v.add(s(-1, 16384, 2));
    v.add(s(-1, 16384, 0));
    expect(v.pagesVerifiedAfter).toBe(8192);
    expect(v.integrityErrors).toBe(2);
    expect(v.lastSample?.pagesVerified).toBe(16384);
  });
});
