/**
 * Two (or more) node daemons in their own network namespaces, with the development PKI in a temp
 * folder, for integration tests. Everything is torn down by `close()`, also after failures.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { type MigrationState, type GuestPerfSample, type MigrationPolicy, type VmInfo, VmSpec, WorkloadPattern } from '../../services/shared/gen/migd/v1/common.js';
import type { MigrationInfo, NodeServiceService, StartMigrationRequest, StartMigrationResponse, WatchMigrationResponse } from '../../services/shared/gen/migd/v1/node.js';
import { createPki } from '../../services/shared/pki.js';
import type { RpcClient } from '../../services/shared/rpc/client.js';
import { startNodeDaemon, type NodeProcess } from '../../services/testbed/nodes.js';
import { Testbed } from '../../services/testbed/testbed.js';
import { VM_BRIDGE } from '../../services/testbed/addressing.js';
import { ensureGuestImageDir } from '../../stress/image/build.js';

export type NodeClient = RpcClient<typeof NodeServiceService>;

export interface NodeCluster {
  readonly tb: Testbed;
  readonly dir: string;
  readonly certDir: string;
  readonly nodes: Record<string, NodeProcess>;
  readonly clients: Record<string, NodeClient>;
  /** Restart a node daemon (after kill/stop) on the same state dir. */
  restart(name: string): Promise<void>;
  close(): Promise<void>;
}

/**
 * Starts the daemons. Their `--guest-image` folder links to the built guest image (built when
 * missing) unless `opts.guestImage` names another folder.
 */
export async function startNodeCluster(hosts: string[] = ['a', 'b'], opts: { guestImage?: string; nodeArgs?: (dir: string, host: string) => string[]; vmNetwork?: boolean } = {}): Promise<NodeCluster> {
  const dir = mkdtempSync('/tmp/migd-');
  const certDir = join(dir, 'pki');
  createPki(certDir);
  let tb: Testbed | undefined;
  const nodes: Record<string, NodeProcess> = {};
  const clients: Record<string, NodeClient> = {};
  const close = async (): Promise<void> => {
    for (const c of Object.values(clients)) c.close();
    await Promise.all(Object.values(nodes).map((n) => n.kill().catch(() => undefined)));
    await tb?.destroy(); // kills the QEMU processes left in the namespaces
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const guestImage = opts.guestImage ?? (await ensureGuestImageDir(join(dir, 'guest')));
    // With a VM network every daemon maps it as network `vm` (`--network vm=br-vm`).
    tb = await Testbed.create({ hosts, vmNetwork: opts.vmNetwork ?? false });
    const netArgs = opts.vmNetwork ? ['--network', `vm=${VM_BRIDGE}`] : [];
    const start = async (h: string): Promise<void> => {
      nodes[h] = await startNodeDaemon(tb!.host(h), { stateDir: join(dir, h), certDir, guestImage, env: { MIGD_LOG_LEVEL: process.env['MIGD_LOG_LEVEL'] ?? 'warn' }, args: ['--metrics-listen', `${tb!.host(h).mgmtAddress}:9464`, ...(opts.nodeArgs?.(dir, h) ?? []), ...netArgs] });
      clients[h] = nodes[h].client();
    };
    await Promise.all(hosts.map(start));
    return {
      tb,
      dir,
      certDir,
      nodes,
      clients,
      restart: async (h) => {
        clients[h]?.close();
        await start(h);
      },
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

/**
 * Starts a migration as the coordinator does: announces the run to its destination
 * (ExpectIncoming: only the source named there may prepare the incoming side, issue 17), then
 * StartMigration on `source` (a host of the cluster). A destination outside the cluster (a fake)
 * is not announced to.
 */
export async function startMigration(c: NodeCluster, source: string, req: StartMigrationRequest): Promise<StartMigrationResponse> {
  const dst = req.destination?.nodeId;
  const dstClient = dst !== undefined ? c.clients[dst] : undefined;
  if (dstClient) await dstClient.expectIncoming({ runId: req.runId, sourceNodeId: c.nodes[source]!.nodeId, vmName: req.vmName });
  return c.clients[source]!.startMigration(req);
}

/** A small guest running the workload with integrity checking on. */
export function guestSpec(name: string, opts: { memoryMib?: number; pattern?: WorkloadPattern; workers?: number; bytesPerWorker?: number; rate?: number; hotBytes?: number } = {}): VmSpec {
  return VmSpec.fromPartial({
    name,
    memoryMib: opts.memoryMib ?? 192,
    vcpus: 1,
    workload: {
      pattern: opts.pattern ?? WorkloadPattern.WORKLOAD_PATTERN_RANDOM,
      workers: opts.workers ?? 1,
      bytesPerWorker: opts.bytesPerWorker ?? 32 * 1024 * 1024,
      rateBytesPerSec: opts.rate ?? 0,
      hotBytes: opts.hotBytes ?? 0,
      verify: true,
    },
  });
}

/**
 * Waits until the guest has produced at least `n` performance samples and, when given, a sample
 * satisfying `until` (e.g. pages verified since the migration).
 */
export async function waitForGuest(client: NodeClient, name: string, n = 2, timeoutMs = 30_000, until?: (s: GuestPerfSample) => boolean): Promise<GuestPerfSample[]> {
  const ac = new AbortController();
  const t = setTimeout(() => ac.abort(), timeoutMs);
  const got: GuestPerfSample[] = [];
  try {
    for await (const m of client.watchGuest({ name, includeConsole: false }, { signal: ac.signal })) {
      if (m.item?.$case === 'sample') got.push(m.item.value);
      if (got.length >= n && (!until || got.some(until))) return got;
    }
  } finally {
    clearTimeout(t);
    ac.abort();
  }
  throw new Error(`guest ${name} produced only ${got.length} samples in ${timeoutMs} ms`);
}

export interface MigrationTrace {
  readonly result: MigrationInfo;
  readonly updates: WatchMigrationResponse[];
  readonly states: MigrationState[];
}

/** Follows a migration to its end. `onUpdate` may act on it (e.g. raise the downtime). */
export async function followMigration(client: NodeClient, runId: string, onUpdate?: (u: WatchMigrationResponse) => void | Promise<void>, timeoutMs = 180_000): Promise<MigrationTrace> {
  const ac = new AbortController();
  const t = setTimeout(() => ac.abort(), timeoutMs);
  const updates: WatchMigrationResponse[] = [];
  try {
    for await (const u of client.watchMigration({ runId }, { signal: ac.signal })) {
      updates.push(u);
      await onUpdate?.(u);
      if (u.update?.$case === 'result') {
        const states = updates.flatMap((x) => (x.update?.$case === 'stateChange' ? [x.update.value.to] : []));
        return { result: u.update.value, updates, states };
      }
    }
  } finally {
    clearTimeout(t);
    ac.abort();
  }
  throw new Error(`migration ${runId} did not finish within ${timeoutMs} ms`);
}

export function policy(p: Partial<MigrationPolicy>): MigrationPolicy {
  return { kind: 0, downtimeLimitMs: 0, maxBandwidthBytesPerSec: 0, autoConverge: undefined, postcopy: undefined, xbzrle: undefined, multifd: undefined, switchoverAck: false, tls: false, completionTimeoutSecPerGib: 0, progressTimeoutSec: 0, timeoutAction: 0, downtimeSteps: [], maxDowntimeMs: 0, ...p };
}

/**
 * Puts a shared cluster back for the next test, whatever state the last one left (use it in
 * `afterEach`): every host's daemon is running again (a killed one is restarted on its state
 * dir), no link is cut or shaped, and the VMs named `vmNames` are gone from every node — a
 * migration one of them takes part in is cancelled first, since a migrating VM cannot be destroyed.
 * Only the named VMs are touched, so a test counting VMs can count its own.
 * @throws Error naming what could not be removed (the next test would otherwise see it).
 */
export async function resetNodeCluster(c: NodeCluster, vmNames: Iterable<string>): Promise<void> {
  const names = new Set(vmNames);
  const hosts = Object.keys(c.nodes);
  for (const h of hosts) {
    const p = c.nodes[h]!.process;
    if (p.exitCode !== null || p.signalCode !== null) await c.restart(h);
  }
  for (const h of hosts) {
    for (const network of ['migration', 'management'] as const) await c.tb.restore(h, { network });
    await c.tb.unshape(h);
  }
  const mine = async (h: string): Promise<VmInfo[]> => (await c.clients[h]!.listVms({})).vms.filter((v) => names.has(v.spec?.name ?? ''));
  // Sources first: cancelling there ends the destination's incoming QEMU too.
  for (const h of hosts) {
    for (const v of await mine(h)) {
      if (!v.migrationRunId) continue;
      const cancelled = await c.clients[h]!.cancelMigration({ runId: v.migrationRunId, actor: 'test', reason: 'test cleanup' }).then(
        () => true,
        () => false, // not this node's migration (the destination's side), or already over
      );
      if (cancelled) await followMigration(c.clients[h]!, v.migrationRunId, undefined, 60_000).catch(() => undefined);
    }
  }
  const destroyAll = async (): Promise<string[]> => {
    const left: string[] = [];
    for (const h of hosts) {
      for (const v of await mine(h)) {
        await c.clients[h]!.destroyVm({ name: v.spec!.name }).catch((e: unknown) => left.push(`${v.spec!.name} on ${h}: ${(e as Error).message}`));
      }
    }
    return left;
  };
  if ((await destroyAll()).length === 0) return;
  // A migration that cannot be cancelled (post-copy: the guest's memory is split between both
  // ends) ends when its QEMU processes die: kill them (they are this cluster's), let the daemons
  // notice, and destroy the records.
  for (const h of hosts) for (const v of await mine(h)) if (v.pid > 0) killQuietly(v.pid);
  for (const until = Date.now() + 5000; Date.now() < until; await new Promise((r) => setTimeout(r, 500))) {
    if ((await destroyAll()).length === 0) return;
  }
  // A daemon still holding a dead VM in a migration (e.g. waiting to recover a paused post-copy)
  // lets go once restarted: it reattaches and finds the QEMU gone.
  for (const h of hosts) {
    if ((await mine(h)).length === 0) continue;
    await c.nodes[h]!.kill();
    await c.restart(h);
  }
  const left = await destroyAll();
  if (left.length > 0) throw new Error(`test cleanup could not remove: ${left.join('; ')}`);
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}
