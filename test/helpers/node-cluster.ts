/**
 * Two (or more) node daemons in their own network namespaces, with the development PKI in a temp
 * folder, for integration tests. Everything is torn down by `close()`, also after failures.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { type MigrationState, type GuestPerfSample, type MigrationPolicy, type VmSpec, WorkloadPattern } from '../../services/shared/gen/migd/v1/common.js';
import type { MigrationInfo, NodeServiceService, WatchMigrationResponse } from '../../services/shared/gen/migd/v1/node.js';
import { createPki } from '../../services/shared/pki.js';
import type { RpcClient } from '../../services/shared/rpc/client.js';
import { startNodeDaemon, type NodeProcess } from '../../services/testbed/nodes.js';
import { Testbed } from '../../services/testbed/testbed.js';
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
export async function startNodeCluster(hosts: string[] = ['a', 'b'], opts: { guestImage?: string } = {}): Promise<NodeCluster> {
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
    tb = await Testbed.create({ hosts });
    const start = async (h: string): Promise<void> => {
      nodes[h] = await startNodeDaemon(tb!.host(h), { stateDir: join(dir, h), certDir, guestImage, env: { MIGD_LOG_LEVEL: process.env['MIGD_LOG_LEVEL'] ?? 'warn' }, args: ['--metrics-listen', `${tb!.host(h).mgmtAddress}:9464`] });
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

/** A small guest running the workload with integrity checking on. */
export function guestSpec(name: string, opts: { memoryMib?: number; pattern?: WorkloadPattern; workers?: number; bytesPerWorker?: number; rate?: number; hotBytes?: number } = {}): VmSpec {
  return {
    name,
    memoryMib: opts.memoryMib ?? 192,
    vcpus: 1,
    accel: 0,
    machineType: '',
    kernelPath: '',
    initrdPath: '',
    extraCmdline: '',
    workload: {
      pattern: opts.pattern ?? WorkloadPattern.WORKLOAD_PATTERN_RANDOM,
      workers: opts.workers ?? 1,
      bytesPerWorker: opts.bytesPerWorker ?? 32 * 1024 * 1024,
      rateBytesPerSec: opts.rate ?? 0,
      hotBytes: opts.hotBytes ?? 0,
      verify: true,
    },
    labels: {},
    antiAffinityGroup: '',
    uuid: '',
  };
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
