import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MigrationState, WorkloadPattern } from '../../../services/shared/gen/migd/v1/common.js';
import { followMigration, guestSpec, policy, resetNodeCluster, startMigration, startNodeCluster, waitForGuest, type NodeCluster } from '../../helpers/node-cluster.js';

describe('node daemons: pre-copy between two namespaces', () => {
  let c: NodeCluster;
  beforeAll(async () => {
    c = await startNodeCluster(['a', 'b']);
  });
  afterAll(async () => {
    await c?.close();
  });
  // The VMs of the running test (set at its start), removed after it, also when it fails.
  let vmNames: string[] = [];
  afterEach(async () => {
    const names = vmNames;
    vmNames = [];
    if (c) await resetNodeCluster(c, names);
  });

  it('migrates a guest on a fast link, reports downtime, and the guest keeps verifying on the destination', async () => {
    vmNames = ['vm1'];
    const a = c.clients['a']!;
    const b = c.clients['b']!;
    await a.createVm({ spec: guestSpec('vm1', { rate: 16 * 1024 * 1024 }) });
    const before = await waitForGuest(a, 'vm1', 3, 30_000, (s) => s.pagesVerified > 0);
    expect(before.at(-1)!.integrityErrors).toBe(0);
    const dest = { nodeId: 'b', managementAddress: c.nodes['b']!.address, migrationAddress: c.tb.host('b').migrationAddress };
    const started = await startMigration(c, 'a', { runId: 'run-precopy-1', vmName: 'vm1', destination: dest, policy: policy({ downtimeLimitMs: 300 }) });
    expect(started.migration?.state).not.toBe(MigrationState.MIGRATION_STATE_FAILED);
    const trace = await followMigration(a, 'run-precopy-1');
    expect(trace.result.error?.message ?? '').toBe('');
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(trace.states).toContain(MigrationState.MIGRATION_STATE_VERIFYING);
    expect(trace.result.stats!.totalTimeMs).toBeGreaterThan(0);
    expect(trace.result.stats!.downtimeMs).toBeGreaterThan(0);
    expect(trace.result.stats!.integrityErrors).toBe(0);
    expect(trace.updates.some((u) => u.update?.$case === 'progress')).toBe(true);
    // the guest runs on b, and the source QEMU is gone from a
    const after = await waitForGuest(b, 'vm1', 3, 30_000, (s) => s.pagesVerified > before.at(-1)!.pagesVerified);
    expect(after.at(-1)!.integrityErrors).toBe(0);
    expect(after.at(-1)!.pagesVerified).toBeGreaterThan(before.at(-1)!.pagesVerified);
    await expect(a.getVm({ name: 'vm1' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    const vmOnB = await b.getVm({ name: 'vm1' });
    expect(vmOnB.vm?.state).toBe(2);
    console.log(`pre-copy: total ${trace.result.stats!.totalTimeMs} ms, downtime ${trace.result.stats!.downtimeMs} ms, passes ${trace.result.stats!.passes}, src cpu ${trace.result.stats!.sourceCpuSeconds.toFixed(2)} s, dst cpu ${trace.result.stats!.destinationCpuSeconds.toFixed(2)} s`);
  });

  it('confirms an idle guest (which only verifies, never writes) alive on the destination', async () => {
    vmNames = ['idle1'];
    const a = c.clients['b']!;
    await a.createVm({ spec: guestSpec('idle1', { pattern: WorkloadPattern.WORKLOAD_PATTERN_IDLE }) });
    await waitForGuest(a, 'idle1', 1, 30_000, (s) => s.pagesVerified > 0);
    const dest = { nodeId: 'a', managementAddress: c.nodes['a']!.address, migrationAddress: c.tb.host('a').migrationAddress };
    await startMigration(c, 'b', { runId: 'run-idle-1', vmName: 'idle1', destination: dest, policy: policy({}) });
    const trace = await followMigration(a, 'run-idle-1');
    expect(trace.result.error?.message ?? '').toBe('');
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(trace.result.stats!.integrityErrors).toBe(0);
  });
});
