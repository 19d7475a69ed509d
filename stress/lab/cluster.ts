/**
 * The lab's own cluster on this machine: two testbed hosts (network namespaces with a shaped
 * migration link), a node daemon in each, and — in coordinator mode — a nats-server and the
 * coordinator in the root namespace, the nodes registering with it (services/testbed/cluster.ts).
 * `close()` stops all of it (QEMU processes die with their namespaces) and is safe to call after a
 * partial start.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPki } from '../../services/shared/pki.js';
import { VM_BRIDGE } from '../../services/testbed/addressing.js';
import { migrationTxBytes } from '../../services/testbed/guest-probe.js';
import { coordinatorBuilt, LOCAL_VM_NETWORK, startLocalCluster, type LocalCluster } from '../../services/testbed/cluster.js';
import { startNodeDaemon, type NodeProcess } from '../../services/testbed/nodes.js';
import { Testbed } from '../../services/testbed/testbed.js';
import { ensureGuestImageDir } from '../image/build.js';
import type { BackendMode, LabBackend } from './backend.js';
import { CoordinatorBackend } from './coordinator-backend.js';
import { DirectBackend } from './direct-backend.js';
import type { LabStorage } from './runner.js';

export interface LabCluster {
  readonly mode: BackendMode;
  readonly tb: Testbed;
  readonly nodes: readonly NodeProcess[];
  readonly backend: LabBackend;
  /** The coordinator's address (coordinator mode). */
  readonly coordinatorAddress?: string;
  readonly certDir: string;
  readonly source: string;
  readonly destination: string;
  /** The VM network and the nodes' storage roots, for scenarios with a disk and a NIC. */
  readonly storage: LabStorage;
  close(): Promise<void>;
}

export interface LabClusterOptions {
  /** Default: coordinator when it is built (dist/services/coordinator/main.js), else direct. */
  readonly mode?: BackendMode;
  /** Certificates (made if missing). Default: a fresh development PKI in the work dir. */
  readonly certDir?: string;
  /** Daemon log lines (default: dropped). */
  readonly onLog?: (line: string) => void;
  /** MTU of the testbed's migration network (Testbed option `migrationMtu`, 1280..9000). Default 1500. */
  readonly migrationMtu?: number;
}

/**
 * Starts the cluster: in coordinator mode the shared local cluster of services/testbed/cluster.ts
 * (the one `npm start` runs), in direct mode just the testbed hosts and their node daemons.
 * @throws Error when a piece does not come up (everything started so far is stopped)
 */
export async function startLabCluster(opts: LabClusterOptions = {}): Promise<LabCluster> {
  const mode: BackendMode = opts.mode ?? (coordinatorBuilt() ? 'coordinator' : 'direct');
  const onLog = opts.onLog ?? (() => undefined);
  // Short: unix socket paths under the node state dirs are limited to 107 bytes.
  const work = await mkdtemp(join(tmpdir(), 'migd-lab-'));
  const certDir = opts.certDir ?? join(work, 'pki');
  createPki(certDir);
  let backend: LabBackend | undefined;
  let local: LocalCluster | undefined;
  let tb: Testbed | undefined;
  const nodes: NodeProcess[] = [];
  const close = async (): Promise<void> => {
    await backend?.close().catch(() => undefined);
    if (local) await local.close();
    await Promise.all(nodes.map((n) => n.stop().catch(() => undefined)));
    await tb?.destroy(); // kills the QEMU processes left in the namespaces
    await rm(work, { recursive: true, force: true });
  };
  try {
    const guestImage = await ensureGuestImageDir(join(work, 'guest'));
    if (mode === 'coordinator') {
      local = await startLocalCluster({ workDir: join(work, 'cluster'), certDir, guestImage, onLog, migrationMtu: opts.migrationMtu });
      backend = new CoordinatorBackend({ address: local.coordinatorAddress, certDir, nodeIdentity: 'migd-coordinator' });
      // The nodes' storage root is their state dir (<workDir>/<host>).
      const storage = labStorage(local.tb, (h) => join(work, 'cluster', h));
      return { mode, tb: local.tb, nodes: local.nodes, backend, certDir, source: 'a', destination: 'b', storage, close, coordinatorAddress: local.coordinatorAddress };
    }
    tb = await Testbed.create({ hosts: ['a', 'b'], vmNetwork: true, migrationMtu: opts.migrationMtu });
    for (const h of ['a', 'b']) {
      nodes.push(
        await startNodeDaemon(tb.host(h), {
          stateDir: join(work, h),
          certDir,
          guestImage,
          env: { MIGD_LOG_LEVEL: process.env['MIGD_LOG_LEVEL'] ?? 'warn' },
          args: ['--network', `${LOCAL_VM_NETWORK}=${VM_BRIDGE}`],
          onLog: (l) => onLog(`[node ${h}] ${l}`),
        }),
      );
    }
    backend = new DirectBackend(nodes.map((n) => ({ id: n.nodeId, managementAddress: n.address, migrationAddress: n.host.migrationAddress, client: n.client() })));
    return { mode, tb, nodes, backend, certDir, source: 'a', destination: 'b', storage: labStorage(tb, (h) => join(work, h)), close };
  } catch (err) {
    await close();
    throw err;
  }
}

/** Disks go under a node's storage root, as the node itself would place them (`disks/<vm>/<id>.raw`). */
function labStorage(tb: Testbed, stateDir: (host: string) => string): LabStorage {
  if (!tb.vm) throw new Error('the lab cluster has no VM network');
  return {
    vmNetwork: tb.vm,
    network: LOCAL_VM_NETWORK,
    diskPath: (host, vmName, diskId) => join(stateDir(host), 'disks', vmName, `${diskId}.raw`),
    txBytes: (host) => migrationTxBytes(tb.host(host)),
  };
}
