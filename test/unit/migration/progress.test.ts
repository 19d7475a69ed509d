import { describe, expect, it } from 'vitest';
import { postcopyDowntimeMs } from '../../../services/node/migration/progress.js';

// Timestamps from a run of the seed-001 lab (512 MiB guest, post-copy after pass 1): the source
// stopped at 50.574 s and QEMU reported completion at 53.794 s.
const stop = 1_795_000_050_574_000;
const completed = 1_795_000_053_794_000;

describe('post-copy downtime correction', () => {
  it('recognises QEMU reporting the whole post-copy phase when its switch-over took under 1 ms', () => {
    expect(postcopyDowntimeMs(3220, stop, completed)).toEqual({ downtimeMs: 0, corrected: true });
    expect(postcopyDowntimeMs(3240, stop, completed)).toEqual({ downtimeMs: 0, corrected: true });
  });

  it('keeps a genuine switch-over downtime, short or long', () => {
    expect(postcopyDowntimeMs(3, stop, completed)).toEqual({ downtimeMs: 3, corrected: false });
    expect(postcopyDowntimeMs(1500, stop, completed)).toEqual({ downtimeMs: 1500, corrected: false });
  });

  it('keeps the value when the events are missing, out of order, or the phase was too short to tell', () => {
    expect(postcopyDowntimeMs(3220, undefined, completed)).toEqual({ downtimeMs: 3220, corrected: false });
    expect(postcopyDowntimeMs(3220, completed, stop)).toEqual({ downtimeMs: 3220, corrected: false });
    expect(postcopyDowntimeMs(20, stop, stop + 20_000)).toEqual({ downtimeMs: 20, corrected: false });
  });
});
