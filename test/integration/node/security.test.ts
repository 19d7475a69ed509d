import { readFile } from 'node:fs/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MigrationState, PolicyActionKind, WorkloadPattern } from '../../../services/shared/gen/migd/v1/common.js';
import { followMigration, guestSpec, policy, resetNodeCluster, startMigration, startNodeCluster, waitForGuest, type NodeCluster } from '../../helpers/node-cluster.js';

describe('node daemons: TLS stream, switchover-ack, force-complete, metrics', () => {
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
  const dest = () => ({ nodeId: 'b', managementAddress: c.nodes['b']!.address, migrationAddress: c.tb.host('b').migrationAddress });

  it('encrypts every stream on nodes that require migration TLS: a policy without TLS is upgraded; switchover-ack works over TLS', async () => {
    vmNames = ['tls1'];
    const a = c.clients['a']!;
    const b = c.clients['b']!;
    // One guest, there and back: a→b with a policy without TLS, then b→a with TLS and
    // switchover-ack (booting a second guest for the way back would only add a boot and the
    // workload's first, unverified pass).
    const name = 'tls1';
    await a.createVm({ spec: guestSpec(name, { memoryMib: 256, bytesPerWorker: 32 << 20, rate: 8 << 20 }) });
    // 32 MiB rewritten at 8 MiB/s: what is proven (every stream encrypted, switchover-ack over
    // TLS, the guest intact) does not need more; the workload's first, unverified pass takes 4 s
    // (12 s over 96 MiB). The wait leaves room for boot under load.
    let before = await waitForGuest(a, name, 2, 60_000, (s) => s.pagesVerified > 0);
    for (const tls of [false, true]) {
      const [from, to] = tls ? [b, a] : [a, b];
      const destination = tls ? { nodeId: 'a', managementAddress: c.nodes['a']!.address, migrationAddress: c.tb.host('a').migrationAddress } : dest();
      const runId = `run-${name}-${tls ? 'tls' : 'plain'}`;
      await startMigration(c, tls ? 'b' : 'a', { runId, vmName: name, destination, policy: policy({ tls, switchoverAck: tls }) });
      const trace = await followMigration(from, runId);
      expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
      expect(trace.result.policy?.tls).toBe(true);
      const after = await waitForGuest(to, name, 2, 30_000, (s) => s.pagesVerified > before.at(-1)!.pagesVerified);
      expect(after.at(-1)!.integrityErrors).toBe(0);
      console.log(`TLS stream (policy tls=${tls}${tls ? ', switchover-ack' : ''}): ${trace.result.stats!.totalTimeMs} ms, ${(trace.result.stats!.sourceCpuSeconds + trace.result.stats!.destinationCpuSeconds).toFixed(2)} CPU-s`);
      before = after;
    }
  });

  it('force-complete without post-copy pauses the guest, completes, and resumes it on the destination', async () => {
    vmNames = ['fc1'];
    const a = c.clients['a']!;
    // A 16 MiB hot set on 80 Mbit/s (≈ 1.7 s to send it once, as 8 MiB on 40 Mbit/s): never
    // converges at 300 ms, and the first pass over the guest's memory takes half as long.
    await a.createVm({ spec: guestSpec('fc1', { pattern: WorkloadPattern.WORKLOAD_PATTERN_HOTCOLD, bytesPerWorker: 32 << 20, hotBytes: 16 << 20 }) });
    const before = await waitForGuest(a, 'fc1', 2, 30_000, (s) => s.pagesVerified > 0);
    await c.tb.shape('a', { rateMbit: 80 });
    await startMigration(c, 'a', { runId: 'run-fc1', vmName: 'fc1', destination: dest(), policy: policy({ downtimeLimitMs: 300 }) });
    let forced = false;
    const trace = await followMigration(a, 'run-fc1', async (u) => {
      if (!forced && u.update?.$case === 'progress' && u.update.value.pass >= 3) {
        forced = true;
        await a.forceComplete({ runId: 'run-fc1', actor: 'test', reason: 'maintenance window closing' });
      }
    });
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(trace.result.actions.map((x) => x.kind)).toContain(PolicyActionKind.POLICY_ACTION_KIND_PAUSE_GUEST);
    const after = await waitForGuest(c.clients['b']!, 'fc1', 2, 30_000, (s) => s.pagesVerified > before.at(-1)!.pagesVerified);
    expect(after.at(-1)!.integrityErrors).toBe(0);
    console.log(`force-complete (pause): total ${trace.result.stats!.totalTimeMs} ms, downtime ${trace.result.stats!.downtimeMs} ms`);
  });

  it('serves Prometheus metrics with QMP latency and migration outcomes', async () => {
    // Its own migration (an idle guest: under a second), so it does not lean on the tests above.
    vmNames = ['m1'];
    const a = c.clients['a']!;
    await a.createVm({ spec: guestSpec('m1', { pattern: WorkloadPattern.WORKLOAD_PATTERN_IDLE }) });
    await waitForGuest(a, 'm1', 1, 30_000, (s) => s.pagesVerified > 0);
    // '-sandbox on' is really in force in the running QEMU (not only on its command line): the
    // kernel reports seccomp filter mode (2) for the process, on the source and on the destination.
    const seccompOf = async (node: string): Promise<string> => {
      const vm = (await c.clients[node]!.listVms({})).vms.find((v) => v.spec?.name === 'm1');
      expect(vm?.pid).toBeGreaterThan(0);
      const status = await readFile(`/proc/${vm!.pid}/status`, 'utf8');
      return /^Seccomp:\s*(\d+)$/m.exec(status)?.[1] ?? `no Seccomp line in /proc/${vm!.pid}/status`;
    };
    expect(await seccompOf('a')).toBe('2');
    await startMigration(c, 'a', { runId: 'run-m1', vmName: 'm1', destination: dest(), policy: policy({}) });
    expect((await followMigration(a, 'run-m1')).result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(await seccompOf('b')).toBe('2');
    const res = await fetch(`http://${c.tb.host('a').mgmtAddress}:9464/metrics`);
    const text = await res.text();
    expect(res.status).toBe(200);
    expect(text).toMatch(/migd_qmp_command_duration_seconds_count\{command="migrate",outcome="ok"\} [1-9]/);
    expect(text).toMatch(/migd_node_migrations_total\{outcome="succeeded"\} [1-9]/);
    expect(text).toMatch(/migd_migration_downtime_seconds_count/);
  });
});
