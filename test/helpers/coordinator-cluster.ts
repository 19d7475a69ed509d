/**
 * A whole migd cluster for coordinator integration tests: a real nats-server (JetStream), the
 * compiled coordinator as a child process (SQLite file in a temp dir) listening on the testbed's
 * management network, and node daemons in network namespaces that register with it. Everything
 * is torn down by `close()`, also after failures.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { NatsConnection } from 'nats';
import { MigrationState, type GuestPerfSample, type MigrationPolicy, type VmSpec } from '../../services/shared/gen/migd/v1/common.js';
import { CoordinatorServiceService, NodeStatus, PlanState, type Plan, type Run, type SubmitPlanRequest } from '../../services/shared/gen/migd/v1/coordinator.js';
import { createPki, ensurePki, identityFiles, serverIdentity } from '../../services/shared/pki.js';
import { createClient, type RpcClient } from '../../services/shared/rpc/client.js';
import { VM_BRIDGE } from '../../services/testbed/addressing.js';
import { startCoordinatorProcess, type CoordinatorProcess } from '../../services/testbed/cluster.js';
import { startNodeDaemon, type NodeProcess } from '../../services/testbed/nodes.js';
import { Testbed } from '../../services/testbed/testbed.js';
import { ensureGuestImageDir } from '../../stress/image/build.js';
import { closeConnection, connectTest, freePort, startNatsServer, type TestNatsServer } from './nats-server.js';
import { waitForGuest, type NodeClient } from './node-cluster.js';

export type CoordinatorClient = RpcClient<typeof CoordinatorServiceService>;

export interface CoordinatorCluster {
  readonly tb: Testbed;
  readonly dir: string;
  readonly certDir: string;
  readonly nats: TestNatsServer;
  readonly nc: NatsConnection;
  readonly coordinator: CoordinatorProcess;
  readonly nodes: Record<string, NodeProcess>;
  /** Node clients (the coordinator's identity, the only one besides peer nodes a node answers) for checks behind the coordinator's back. */
  readonly nodeClients: Record<string, NodeClient>;
  /** A coordinator client authenticated as `identity` (default operator). */
  client(identity?: string): CoordinatorClient;
  /** Kills (SIGKILL) or stops the coordinator and starts it again on the same port and database. */
  restartCoordinator(how: 'kill' | 'stop'): Promise<void>;
  close(): Promise<void>;
}

/**
 * Coordinator flags the tests use: quick heartbeats so a silent node is down within 1.5 s, and
 * bound node identities (every node daemon of the testbed has its own certificate).
 */
export const TEST_COORDINATOR_ARGS = ['--heartbeat-ms', '500', '--heartbeat-misses', '3', '--require-node-identity'];

/**
 * `vmNetwork`: the testbed's VM network (a client namespace on it), mapped by every node daemon as
 * network `vm` (`--network vm=br-vm`). Default false. `nodeArgs`: extra arguments per node daemon
 * (e.g. `--storage-root`); mounts they name must exist before the call (each daemon's mount
 * namespace sees only those made before it).
 */
export async function startCoordinatorCluster(
  hosts: string[],
  opts: { coordinatorArgs?: readonly string[]; vmNetwork?: boolean; nodeArgs?: (dir: string, host: string) => string[] } = {},
): Promise<CoordinatorCluster> {
  const dir = mkdtempSync('/tmp/migd-c-');
  const certDir = join(dir, 'pki');
  createPki(certDir);
  let tb: Testbed | undefined;
  let nats: TestNatsServer | undefined;
  let nc: NatsConnection | undefined;
  let coordinator: CoordinatorProcess | undefined;
  const nodes: Record<string, NodeProcess> = {};
  const nodeClients: Record<string, NodeClient> = {};
  const clients: CoordinatorClient[] = [];
  const close = async (): Promise<void> => {
    for (const c of clients.splice(0)) c.close();
    for (const c of Object.values(nodeClients)) c.close();
    await coordinator?.kill().catch(() => undefined);
    await Promise.all(Object.values(nodes).map((n) => n.kill().catch(() => undefined)));
    await closeConnection(nc).catch(() => undefined);
    await nats?.dispose().catch(() => undefined);
    await tb?.destroy(); // kills the QEMU processes left in the namespaces
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    nats = await startNatsServer({ certDir });
    // Tests read events as a reader would: the reader's rights must be enough.
    nc = await connectTest(nats, {}, 'reader');
    const guestImage = await ensureGuestImageDir(join(dir, 'guest'));
    tb = await Testbed.create({ hosts, vmNetwork: opts.vmNetwork ?? false });
    const listen = `${tb.rootAddress}:${await freePort(tb.rootAddress)}`;
    // Like the local cluster: the coordinator's certificate names its address (stock clients).
    ensurePki(certDir, [serverIdentity('migd-coordinator', [tb.rootAddress])]);
    const args = [...TEST_COORDINATOR_ARGS, ...(opts.coordinatorArgs ?? [])];
    // Info level: tests read its log lines (CI exports MIGD_LOG_LEVEL=warn).
    const startCoordinator = (): Promise<CoordinatorProcess> =>
      startCoordinatorProcess({
        listen,
        db: join(dir, 'history.sqlite'),
        certDir,
        args: [...nats!.coordinatorArgs(), ...args],
        logLevel: 'info',
        onLog: (l) => {
          if (process.env['MIGD_TEST_LOGS'] === '1') process.stderr.write(`${l}\n`);
        },
      });
    coordinator = await startCoordinator();
    await Promise.all(
      hosts.map(async (h) => {
        const netArgs = opts.vmNetwork ? ['--network', `vm=${VM_BRIDGE}`] : [];
        nodes[h] = await startNodeDaemon(tb!.host(h), { stateDir: join(dir, h), certDir, guestImage, coordinator: listen, env: { MIGD_LOG_LEVEL: process.env['MIGD_LOG_LEVEL'] ?? 'warn' }, args: [...netArgs, ...(opts.nodeArgs?.(dir, h) ?? [])] });
        nodeClients[h] = nodes[h].client();
      }),
    );
    const cluster: CoordinatorCluster = {
      tb,
      dir,
      certDir,
      nats,
      nc,
      get coordinator() {
        return coordinator!;
      },
      nodes,
      nodeClients,
      client(identity = 'operator') {
        const c = createClient('migd.v1.CoordinatorService', CoordinatorServiceService, listen, { security: { tls: identityFiles(certDir, identity), serverName: 'migd-coordinator' } });
        clients.push(c);
        return c;
      },
      async restartCoordinator(how) {
        await (how === 'kill' ? coordinator!.kill() : coordinator!.stop());
        coordinator = await startCoordinator();
      },
      close,
    };
    const admin = cluster.client();
    await waitFor(async () => {
      const { nodes: list } = await admin.listNodes({});
      return hosts.every((h) => list.some((n) => n.host?.nodeId === h && n.status === NodeStatus.NODE_STATUS_UP));
    }, 20_000, 'node daemons registered');
    return cluster;
  } catch (err) {
    await close();
    throw err;
  }
}

/** Polls `check` every 200 ms until it returns true. */
export async function waitFor(check: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < until) {
    try {
      if (await check()) return;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
}

/** Creates a VM through the coordinator and waits until its guest reports verified pages. */
export async function createGuest(c: CoordinatorCluster, nodeId: string, spec: VmSpec): Promise<GuestPerfSample[]> {
  await c.client().createVm({ spec, nodeId });
  return waitForGuest(c.nodeClients[nodeId]!, spec.name, 2, 40_000, (s) => s.pagesVerified > 0);
}

/** A SubmitPlanRequest migrating one VM. */
export function migratePlan(key: string, vmName: string, destinationNodeId: string, policy?: Partial<MigrationPolicy>, extra: Partial<SubmitPlanRequest> = {}): SubmitPlanRequest {
  return {
    idempotencyKey: key,
    target: { $case: 'migrate', value: { vmName, destinationNodeId } },
    policy: policy ? fullPolicy(policy) : undefined,
    priority: 0,
    antiAffinityVmNames: [],
    label: '',
    ...extra,
  };
}

export function fullPolicy(p: Partial<MigrationPolicy>): MigrationPolicy {
  return { kind: 0, downtimeLimitMs: 0, maxBandwidthBytesPerSec: 0, autoConverge: undefined, postcopy: undefined, xbzrle: undefined, multifd: undefined, switchoverAck: false, tls: false, completionTimeoutSecPerGib: 0, progressTimeoutSec: 0, timeoutAction: 0, downtimeSteps: [], maxDowntimeMs: 0, ...p };
}

const TERMINAL = new Set([MigrationState.MIGRATION_STATE_SUCCEEDED, MigrationState.MIGRATION_STATE_FAILED, MigrationState.MIGRATION_STATE_CANCELLED]);

/** Waits until the run has finished; returns it. */
export async function waitForRun(client: CoordinatorClient, runId: string, timeoutMs = 180_000): Promise<Run> {
  let run: Run | undefined;
  await waitFor(async () => {
    run = (await client.getRun({ runId })).run;
    return run !== undefined && TERMINAL.has(run.state);
  }, timeoutMs, `run ${runId} to finish`);
  return run!;
}

/** Waits until the run has reached `state` (or finished). */
export async function waitForRunState(client: CoordinatorClient, runId: string, state: MigrationState, timeoutMs = 60_000): Promise<Run> {
  let run: Run | undefined;
  await waitFor(async () => {
    run = (await client.getRun({ runId })).run;
    return run !== undefined && (run.state === state || TERMINAL.has(run.state));
  }, timeoutMs, `run ${runId} to reach ${MigrationState[state]}`);
  return run!;
}

/** Waits until the plan is no longer running; returns it. */
export async function waitForPlan(client: CoordinatorClient, planId: string, timeoutMs = 240_000): Promise<Plan> {
  let plan: Plan | undefined;
  await waitFor(async () => {
    plan = (await client.getPlan({ planId })).plan;
    return plan !== undefined && plan.state !== PlanState.PLAN_STATE_RUNNING;
  }, timeoutMs, `plan ${planId} to finish`);
  return plan!;
}
