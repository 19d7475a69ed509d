import { describe, expect, it } from 'vitest';
import { blocktimeOf, finalStats, postcopyDowntimeMs } from '../../../services/node/migration/progress.js';

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

describe('post-copy blocktime', () => {
  it("reads the destination's postcopy-blocktime and per-vCPU blocktimes (ms)", () => {
    const info = { status: 'completed', 'postcopy-blocktime': 412, 'postcopy-vcpu-blocktime': [412, 37] };
    expect(blocktimeOf(info)).toEqual({ postcopyBlocktimeMs: 412, postcopyVcpuBlocktimeMs: [412, 37] });
    expect(finalStats({}, blocktimeOf(info)!)).toMatchObject({ postcopyBlocktimeMs: 412, postcopyVcpuBlocktimeMs: [412, 37] });
  });

  it('has nothing before completion, without the capability, or from a malformed reply', () => {
    expect(blocktimeOf({ status: 'postcopy-active' })).toBeUndefined();
    expect(blocktimeOf(undefined)).toBeUndefined();
    expect(blocktimeOf({ 'postcopy-blocktime': -1 })).toBeUndefined();
    expect(blocktimeOf({ 'postcopy-blocktime': 'x' })).toBeUndefined();
    expect(blocktimeOf({ 'postcopy-blocktime': 0, 'postcopy-vcpu-blocktime': [3, 'y', -2] })).toEqual({ postcopyBlocktimeMs: 0, postcopyVcpuBlocktimeMs: [3] });
    expect(finalStats({}, {})).toMatchObject({ postcopyBlocktimeMs: 0, postcopyVcpuBlocktimeMs: [] });
  });
});
