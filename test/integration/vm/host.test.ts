/**
 * Host probing on this real machine: /dev/kvm here is PVM, so `auto` must resolve to TCG; QEMU is
 * 10.0.x and reports its migration capabilities and defaults.
 */
import { describe, expect, it } from 'vitest';
import { probeHostCapabilities } from '../../../services/node/host/capabilities.js';
import { processCpu, readHostInfo } from '../../../services/node/host/info.js';
import { resolveAccel } from '../../../services/node/vm/accel.js';
import { assertQemuFitFor } from '../../../services/node/vm/qemu-binary.js';

describe('host capabilities (real machine)', () => {
  it('auto resolves to TCG here', async () => {
    const d = await resolveAccel('auto');
    expect(d.accel).toBe('tcg');
    // FACTS.md: /dev/kvm exists but is PVM, and the CPU has no vmx/svm.
    expect(d.kvm.devKvm).toBe(true);
    expect(d.kvm.pvm).toBe(true);
    expect(d.kvm.cpuVirt).toBeUndefined();
    expect(d.reason).toMatch(/PVM/);
  });

  it('reports QEMU, its migration capabilities and defaults, and host memory/CPUs', async () => {
    const t0 = performance.now();
    const caps = await probeHostCapabilities();
    console.log(`[measure] host capability probe ${(performance.now() - t0).toFixed(0)} ms`);
    expect(caps.qemu.version.major).toBeGreaterThanOrEqual(10);
    expect(() => assertQemuFitFor(caps.qemu, 'tcg')).not.toThrow();
    expect(caps.accel.accel).toBe('tcg');
    expect(Object.keys(caps.migration.capabilities)).toEqual(
      expect.arrayContaining(['postcopy-ram', 'postcopy-preempt', 'multifd', 'switchover-ack', 'return-path', 'auto-converge', 'events']),
    );
    expect(caps.migration.capabilities['postcopy-ram']).toBe(false);
    expect(caps.migration.capabilities).not.toHaveProperty('compress');
    expect(caps.migration.parameters).toMatchObject({ 'downtime-limit': 300, 'max-bandwidth': 128 * 1024 * 1024 });
    expect(caps.host.memory.totalBytes).toBeGreaterThan(caps.host.memory.availableBytes - 1);
    expect(caps.host.cpus).toBeGreaterThanOrEqual(1);
    expect(caps.host.clockTicks).toBe(100);
  });

  it('reads this process’s CPU time from /proc/self', async () => {
    const info = await readHostInfo();
    const cpu = await processCpu(process.pid, undefined, info.clockTicks);
    expect(cpu!.totalSeconds).toBeGreaterThan(0);
  });
});
