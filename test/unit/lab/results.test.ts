import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { isRecorded, loadResults, loadTimeline, newResults, saveResults, saveTimeline } from '../../../stress/lab/results.js';
import { progressLine, vmSpecOf } from '../../../stress/lab/runner.js';
import { SEED_001, SMOKE } from '../../../stress/lab/scenarios.js';
import { syntheticTimeline } from './synthetic.js';

const dirs: string[] = [];
const tmp = (): string => {
  const d = mkdtempSync(join(tmpdir(), 'migd-lab-results-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('lab results file', () => {
  it('round-trips results and timelines, and knows which pairs are recorded', async () => {
    const dir = tmp();
    expect(await loadResults(dir)).toBeUndefined();
    const r = newResults('seed-001', true, 'coordinator');
    const t = syntheticTimeline({ id: '01RUN/x', start: 1_000_000, durationMs: 5000, postcopyAtMs: 2000 });
    const file = await saveTimeline(dir, t);
    expect(file).toBe(join('runs', '01RUN-x.json'));
    r.runs.push({ scenario: 'a', repetition: 1, runId: '01RUN/x', label: 'l', outcome: 'succeeded', vmName: 'vm', timelineFile: file, link: { rateMbit: 720 }, recordedAt: new Date().toISOString() });
    await saveResults(dir, r);
    const back = (await loadResults(dir, 'seed-001'))!;
    expect(back.runs).toHaveLength(1);
    expect(isRecorded(back, 'a', 1)).toBe(true);
    expect(isRecorded(back, 'a', 0)).toBe(false);
    const t2 = await loadTimeline(dir, file);
    expect(t2.run?.id).toBe('01RUN/x');
    expect(t2.progress.length).toBe(t.progress.length);
    expect(t2.guest[0]?.time?.getTime()).toBe(t.guest[0]?.time?.getTime());
    expect(t2.run?.transitions.map((c) => c.to)).toEqual(t.run?.transitions.map((c) => c.to));
  });

  it('refuses a results folder of another comparison', async () => {
    const dir = tmp();
    await saveResults(dir, newResults('downtime', false, 'direct'));
    await expect(loadResults(dir, 'seed-001')).rejects.toThrow(/holds results of "downtime"/);
  });
});

describe('runner helpers', () => {
  it('turns a scenario into a verifying VM spec', () => {
    const s = SEED_001[6]!;
    const spec = vmSpecOf(s, 'lab-x');
    expect(spec).toMatchObject({ name: 'lab-x', memoryMib: 512, vcpus: 1, workload: { workers: 3, bytesPerWorker: 128 * 1024 * 1024, verify: true } });
    expect(spec.labels['scenario']).toBe(s.name);
    expect(vmSpecOf(SMOKE, 'y').workload?.rateBytesPerSec).toBe(4 * 1024 * 1024);
  });

  it('gives a scenario with `nic` a NIC on the VM network and no disk', () => {
    const s = { ...SMOKE, nic: true };
    expect(() => vmSpecOf(s, 'n')).toThrow(/has a NIC/);
    const spec = vmSpecOf(s, 'n', { guestIp: '198.19.0.140/25', network: 'vm' });
    expect(spec.nics).toEqual([{ mac: '', network: 'vm', guestIp: '198.19.0.140/25' }]);
    expect(spec.disks).toEqual([]);
    expect(vmSpecOf(SMOKE, 'p').nics).toEqual([]);
  });

  it('formats a progress line', () => {
    const t = syntheticTimeline({ id: 'r', start: 0, durationMs: 2000, throttle: true });
    const line = progressLine('[1/1] x', t.progress[3]!, t.guest.find((g) => g.worker === -1));
    expect(line).toMatch(/\[1\/1\] x +1\.0s +precopy +pass +\d+ +remaining +\d+ MiB +600 Mbit\/s +dirty +78 MiB\/s +throttle \d+% +guest 560 ms\/GiB/);
  });
});
