import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NodeRegistry } from '../../../services/coordinator/registry.js';
import { openSqliteHistoryStore, type SqliteHistoryStore } from '../../../services/coordinator/store/sqlite.js';
import type { NodeVmRepository } from '../../../services/coordinator/store/types.js';
import { HostInfo, VmSpec, VmState, type VmInfo } from '../../../services/shared/gen/migd/v1/common.js';
import { NodeStatus } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { createLogger } from '../../../services/shared/log.js';

const log = createLogger('test', {}, () => undefined, 'error');
const host = (id: string): HostInfo => HostInfo.fromPartial({ nodeId: id, managementAddress: '198.18.0.10:7001', migrationAddress: '198.19.0.10' });
const vm = (name: string, nodeId: string): VmInfo => ({ spec: VmSpec.fromPartial({ name, memoryMib: 256 }), nodeId, state: VmState.VM_STATE_RUNNING, pid: 1, startedAt: undefined, migrationRunId: '', lastGuestPerf: undefined, qemuCpuSeconds: 0, localDisks: [] });

// Down-detection under load: a node is down when it stopped heart-beating, not when the
// coordinator was too busy to take its heartbeats in (issue 15 §4: at 500 simulated nodes the
// coordinator marked healthy nodes down while its own event loop was starved).
describe('NodeRegistry down-detection', () => {
  let dir: string;
  let store: SqliteHistoryStore;
  let registry: NodeRegistry;
  let now: number;
  let slowWrites: (() => void)[] | undefined;
  const HB = 2000;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'migd-registry-down-'));
    store = await openSqliteHistoryStore({ filename: join(dir, 'history.db'), logger: log });
    now = 1_000_000;
    slowWrites = undefined;
    // The real repository; VM writes can be held (a store busy with other writes).
    const nodes: NodeVmRepository = Object.create(store.nodes) as NodeVmRepository;
    nodes.upsertNode = async (n) => {
      if (slowWrites) await new Promise<void>((r) => slowWrites!.push(r));
      return store.nodes.upsertNode(n);
    };
    registry = new NodeRegistry({ store: { nodes, plans: store, samples: store }, log, heartbeatMs: HB, misses: 3, security: { insecure: true }, callDeadlineMs: 1000, now: () => now });
    await registry.start();
  });

  afterEach(async () => {
    registry.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** Advances the fake clock in down-detection periods (HB / 2), checking after each, as the timer does. */
  const runFor = async (ms: number): Promise<void> => {
    for (let t = 0; t < ms; t += HB / 2) {
      now += HB / 2;
      await registry.checkDown();
    }
  };
  const status = async (id: string): Promise<NodeStatus | undefined> => (await store.listNodes()).find((n) => n.host?.nodeId === id)?.status;

  it('marks a node down after 3 missed heartbeats of running time', async () => {
    await registry.register(host('a'));
    await registry.register(host('b'));
    for (let i = 0; i < 4; i++) {
      await registry.heartbeat(host('a'), []);
      await runFor(HB);
    }
    // b never heart-beat: 8 s > 6 s.
    expect(registry.isUp('a')).toBe(true);
    expect(registry.isUp('b')).toBe(false);
    expect(await status('b')).toBe(NodeStatus.NODE_STATUS_DOWN);
    expect(registry.ownStallMs).toBe(0);
  });

  it('does not count a stall of its own (the check 10 s late) against the nodes', async () => {
    await registry.register(host('a'));
    await registry.heartbeat(host('a'), []);
    await runFor(HB);
    // The event loop got no CPU for 10 s: no check ran, no heartbeat was taken in.
    now += 10_000;
    await registry.checkDown();
    expect(registry.isUp('a')).toBe(true);
    expect(registry.ownStallMs).toBe(10_000 - HB / 2);
    // The heartbeats that waited in the sockets arrive; a keeps beating and stays up.
    await registry.heartbeat(host('a'), []);
    await runFor(3 * HB);
    expect(registry.isUp('a')).toBe(true);
    // Once it really stops, it is down after 3 heartbeats of running time, as before.
    await runFor(3 * HB + HB / 2);
    expect(registry.isUp('a')).toBe(false);
  });

  it("counts a heartbeat from its arrival, not from the end of its store writes", async () => {
    await registry.register(host('a'));
    // 10 s of heartbeats: the next one rewrites the node's row (every 10 s).
    for (let i = 0; i < 5; i++) {
      await registry.heartbeat(host('a'), []);
      await runFor(HB);
    }
    // The store is busy: this heartbeat's row write waits 5 s, checks running on time meanwhile.
    slowWrites = [];
    const beat = registry.heartbeat(host('a'), [vm('v1', 'a')]);
    await new Promise((r) => setTimeout(r, 20));
    await runFor(5 * HB / 2);
    expect(registry.isUp('a')).toBe(true);
    const held = slowWrites;
    slowWrites = undefined;
    for (const r of held) r();
    await beat;
    expect(registry.isUp('a')).toBe(true);
  });
});
