import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeStatus } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { createPki } from '../../../services/shared/pki.js';
import { startLocalCluster, type LocalCluster } from '../../../services/testbed/cluster.js';
import { ensureGuestImageDir } from '../../../stress/image/build.js';
import { guestSpec } from '../../helpers/node-cluster.js';
import { waitFor } from '../../helpers/coordinator-cluster.js';

/** QEMU processes of this cluster running VM `name` (from `ps`, by the state folder on their command line). */
function qemuPids(workDir: string, name: string): number[] {
  const out = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
  return out
    .split('\n')
    .filter((l) => l.includes('qemu-system') && l.includes(`-name ${name} `) && l.includes(`${workDir}/`))
    .map((l) => Number(l.trim().split(/\s+/)[0]));
}

// The local cluster of `npm start` supervises its children: killing nats-server, the coordinator
// or a node daemon (kill -9) is announced and the child is started again, while the guest keeps
// running (once, losing nats-server emptied the event loop and the exit hook destroyed every guest).
describe('local cluster: supervision', () => {
  let dir: string;
  let cluster: LocalCluster;
  const said: string[] = [];

  beforeAll(async () => {
    dir = mkdtempSync('/tmp/migd-sup-');
    const guestImage = await ensureGuestImageDir(join(dir, 'guest'));
    // The CA is made here, as setup does: the launcher only issues identities with it.
    createPki(join(dir, 'pki'));
    cluster = await startLocalCluster({ workDir: join(dir, 'w'), certDir: join(dir, 'pki'), guestImage, restartDelayMs: 200, onSupervisor: (l) => said.push(l) });
    await cluster.client().createVm({ spec: guestSpec('sup1', { memoryMib: 128, bytesPerWorker: 8 << 20, rate: 1 << 20 }), nodeId: 'a' });
  });
  afterAll(async () => {
    await cluster?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('announces and restarts a killed nats-server, coordinator and node daemon; the guest runs on', async () => {
    const work = join(dir, 'w');
    const [qemu] = qemuPids(work, 'sup1');
    expect(qemu).toBeGreaterThan(0);
    for (const [name, pid] of [
      ['nats-server', cluster.pids().nats],
      ['coordinator', cluster.pids().coordinator],
      ['node a', cluster.pids().nodes['a']],
    ] as const) {
      process.kill(pid!, 'SIGKILL');
      await waitFor(() => said.some((l) => l.startsWith(`${name} (pid ${pid}) killed by SIGKILL; restarting it`)), 10_000, `${name}'s death announced`);
      await waitFor(() => said.some((l) => l.startsWith(`${name} restarted`)), 30_000, `${name} restarted`);
      await cluster.settled();
      expect(cluster.restarts()[name]).toBe(1);
      // The guest never stopped: same QEMU process, exactly one.
      expect(qemuPids(work, 'sup1')).toEqual([qemu]);
    }
    const pids = cluster.pids();
    expect([pids.nats, pids.coordinator, pids.nodes['a']].every((p) => p !== undefined && p > 0)).toBe(true);
    // The restarted node daemon re-attached to its guest and the restarted coordinator sees it.
    const op = cluster.client();
    await waitFor(async () => {
      const { nodes } = await op.listNodes({});
      return nodes.filter((n) => n.status === NodeStatus.NODE_STATUS_UP).length === 2;
    }, 20_000, 'both nodes up');
    const { vm } = await cluster.nodes[0]!.client().getVm({ name: 'sup1' });
    expect(vm?.spec?.name).toBe('sup1');
    expect(said.filter((l) => l.includes('killed by SIGKILL'))).toHaveLength(3);
  });
});
