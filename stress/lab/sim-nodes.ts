/**
 * Simulated node daemons for control-plane benchmarks: many NodeService endpoints served by one
 * process, each registering and heart-beating with a real coordinator like a node daemon does, and
 * carrying out StartMigration by streaming timed progress instead of running QEMU. The coordinator
 * sees the real gRPC interface (mTLS, one channel per node address), so what is measured is its own
 * cost: planning, queueing, dispatch, supervision and recording.
 *
 * One grpc-js server listens on one port per simulated node. A call does not say which port it
 * arrived on, but every migration call names its run or VM, and the simulation's shared state knows
 * where each VM is — so one set of handlers serves every node.
 */
import { Server, status, type ServerUnaryCall, type ServerWritableStream, type sendUnaryData } from '@grpc/grpc-js';
import {
  HostInfo,
  MigrationState,
  ProgressSample,
  VmSpec,
  VmState,
  type MigrationPolicy,
  type VmInfo,
} from '../../services/shared/gen/migd/v1/common.js';
import { CoordinatorServiceService } from '../../services/shared/gen/migd/v1/coordinator.js';
import {
  MigrationInfo,
  NodeServiceService,
  type StateChange,
  type WatchMigrationResponse,
} from '../../services/shared/gen/migd/v1/node.js';
import { identityFiles } from '../../services/shared/pki.js';
import { createClient, type RpcClient } from '../../services/shared/rpc/client.js';
import { serverCredentials } from '../../services/shared/rpc/tls.js';

export interface SimClusterOptions {
  /** Number of simulated nodes (ids n0000, n0001, …). */
  readonly nodes: number;
  /** VMs per node, placed on the first `populated` nodes. */
  readonly vmsPerNode: number;
  /** How many nodes hold VMs at the start (default: all). */
  readonly populated?: number;
  readonly vmMemoryMib?: number;
  /** Simulated duration of one migration (default 1000 ms) and progress interval (default 200 ms). */
  readonly migrationMs?: number;
  readonly progressMs?: number;
  /** Coordinator address and the folder with the `migd-node` certificate. */
  readonly coordinator: string;
  readonly certDir: string;
}

interface SimMigration {
  info: MigrationInfo;
  updates: WatchMigrationResponse[];
  listeners: Set<(u: WatchMigrationResponse) => void>;
  done: boolean;
}

const MiB = 1024 * 1024;
/** Connections from the simulated nodes to the coordinator (see SimCluster.start). */
const CLIENT_CONNECTIONS = 24;

/** A running simulation. */
export class SimCluster {
  readonly nodeIds: string[];
  /** VM name → node id. */
  readonly vmNode = new Map<string, string>();
  /** Node id → its VMs (the heartbeat's list). */
  private readonly byNode = new Map<string, Set<string>>();
  private readonly addresses = new Map<string, string>();
  private readonly migrations = new Map<string, SimMigration>();
  private readonly server = new Server();
  private readonly clients: RpcClient<typeof CoordinatorServiceService>[] = [];
  private timers: NodeJS.Timeout[] = [];
  private heartbeatMs = 2000;
  /** Completed migrations and when the last one completed (epoch ms). */
  completed = 0;
  lastCompletedAt = 0;
  /** Each simulated migration's [start, end] (epoch ms; end -1 while it runs), in start order. */
  readonly intervals: [number, number][] = [];
  /**
   * When each ExpectIncoming reached a destination (epoch ms): the coordinator announces a run while
   * it writes the run's PREPARING, and calls StartMigration after both, so the gap between the two
   * is the dispatch write's wait (bench-control-plane d's ramp timeline).
   */
  readonly announcedAt: number[] = [];

  private constructor(private readonly o: SimClusterOptions) {
    this.nodeIds = Array.from({ length: o.nodes }, (_, i) => `n${String(i).padStart(4, '0')}`);
  }

  /** Starts serving, registers every node with the coordinator and starts heart-beating. */
  static async start(o: SimClusterOptions): Promise<SimCluster> {
    const c = new SimCluster(o);
    await c.listen();
    const populated = o.populated ?? o.nodes;
    for (let i = 0; i < populated; i++) for (let v = 0; v < o.vmsPerNode; v++) c.place(`vm-${c.nodeIds[i]}-${String(v).padStart(3, '0')}`, c.nodeIds[i]!);
    // A fleet has a connection per node daemon; the simulation shares CLIENT_CONNECTIONS among its
    // nodes (the coordinator admits 64 per address, and the simulated nodes all call from
    // 127.0.0.1). With 8, a 500-node fleet's heartbeats queued in the simulator's own HTTP/2
    // connections (256 streams each) once the coordinator's answers slowed: late heartbeats that
    // were the simulator's, not the coordinator's.
    for (let k = 0; k < Math.min(CLIENT_CONNECTIONS, o.nodes); k++) {
      c.clients.push(createClient('migd.v1.CoordinatorService', CoordinatorServiceService, o.coordinator, { security: { tls: identityFiles(o.certDir, 'migd-node'), serverName: 'migd-coordinator' }, defaultDeadlineMs: 30_000 }));
    }
    // Register in parallel batches, as a fleet of daemons starting would; each node heartbeats
    // from its registration on, like a node daemon.
    const ids = [...c.nodeIds];
    await Promise.all(
      c.clients.map(async (client, k) => {
        for (let i = k; i < ids.length; i += c.clients.length) {
          const r = await client.registerNode({ host: c.hostInfo(ids[i]!) });
          c.heartbeatMs = r.heartbeatIntervalMs || c.heartbeatMs;
          await c.beat(client, ids[i]!);
          c.timers.push(setInterval(() => void c.beat(client, ids[i]!), c.heartbeatMs));
        }
      }),
    );
    return c;
  }

  /** Failed heartbeats (other than the re-registrations they caused). */
  heartbeatErrors = 0;
  /**
   * Whose fault a missed heartbeat is: the longest gap between two heartbeats one simulated node
   * sent (the simulator's own lateness: > the coordinator's limit means the simulator starved), and
   * the heartbeats' round trips (sent → answered: the coordinator's side).
   */
  maxSendGapMs = 0;
  readonly heartbeatRttMs: number[] = [];
  private readonly lastSent = new Map<string, number>();

  /** One heartbeat; a coordinator that forgot the node (marked down, restarted) gets a registration first, as a node daemon does. */
  private async beat(client: RpcClient<typeof CoordinatorServiceService>, id: string): Promise<void> {
    const sent = Date.now();
    const prev = this.lastSent.get(id);
    if (prev !== undefined) this.maxSendGapMs = Math.max(this.maxSendGapMs, sent - prev);
    this.lastSent.set(id, sent);
    try {
      await client.heartbeat({ host: this.hostInfo(id), vms: this.vmsOf(id) });
      if (this.heartbeatRttMs.length < 1_000_000) this.heartbeatRttMs.push(Date.now() - sent);
    } catch (err) {
      if ((err as { code?: string }).code !== 'NOT_FOUND') {
        this.heartbeatErrors++;
        return;
      }
      await client.registerNode({ host: this.hostInfo(id) }).catch(() => this.heartbeatErrors++);
    }
  }

  private async listen(): Promise<void> {
    const creds = serverCredentials({ tls: identityFiles(this.o.certDir, 'migd-node') }, '127.0.0.1:0');
    this.server.addService(NodeServiceService as never, this.handlers() as never);
    for (const id of this.nodeIds) {
      const port = await new Promise<number>((resolve, reject) => this.server.bindAsync('127.0.0.1:0', creds, (err, p) => (err ? reject(err) : resolve(p))));
      this.addresses.set(id, `127.0.0.1:${port}`);
    }
  }

  /** Built once per node (heartbeats send the same description every time). */
  private readonly hostCache = new Map<string, HostInfo>();
  /** Each node's heartbeat list of VMs, built again only after a VM left or arrived. */
  private readonly vmsCache = new Map<string, VmInfo[]>();

  hostInfo(id: string): HostInfo {
    let h = this.hostCache.get(id);
    if (h === undefined && this.addresses.has(id)) this.hostCache.set(id, (h = this.buildHostInfo(id)));
    return h ?? this.buildHostInfo(id);
  }

  private buildHostInfo(id: string): HostInfo {
    return HostInfo.fromPartial({
      nodeId: id,
      managementAddress: this.addresses.get(id)!,
      migrationAddress: `sim-${id}`,
      memoryTotalBytes: 1024 * 1024 * MiB,
      memoryFreeBytes: 1024 * 1024 * MiB,
      cpus: 64,
      qemuVersion: '10.0.2',
      resolvedAccel: 2,
      migrationCapabilities: ['xbzrle', 'auto-converge', 'zero-blocks', 'events', 'postcopy-ram', 'return-path', 'pause-before-switchover', 'multifd', 'postcopy-preempt', 'switchover-ack', 'dirty-limit'],
      machineTypes: ['pc-i440fx-10.0'],
    });
  }

  private place(vm: string, nodeId: string): void {
    const prev = this.vmNode.get(vm);
    if (prev !== undefined) this.byNode.get(prev)?.delete(vm);
    if (prev !== undefined) this.vmsCache.delete(prev);
    this.vmsCache.delete(nodeId);
    this.vmNode.set(vm, nodeId);
    let set = this.byNode.get(nodeId);
    if (!set) this.byNode.set(nodeId, (set = new Set()));
    set.add(vm);
  }

  vmsOf(id: string): VmInfo[] {
    let cached = this.vmsCache.get(id);
    if (cached === undefined) this.vmsCache.set(id, (cached = this.buildVms(id)));
    return cached;
  }

  private buildVms(id: string): VmInfo[] {
    const out: VmInfo[] = [];
    for (const name of this.byNode.get(id) ?? []) {
      out.push({
        spec: VmSpec.fromPartial({ name, memoryMib: this.o.vmMemoryMib ?? 1024, vcpus: 1 }),
        nodeId: id,
        state: VmState.VM_STATE_RUNNING,
        pid: 1,
        startedAt: undefined,
        migrationRunId: '',
        lastGuestPerf: undefined,
        qemuCpuSeconds: 0,
        localDisks: [],
      });
    }
    return out;
  }

  private publish(m: SimMigration, u: WatchMigrationResponse): void {
    m.updates.push(u);
    for (const l of m.listeners) l(u);
  }

  private simulate(m: SimMigration): void {
    const total = this.o.migrationMs ?? 1000;
    const every = this.o.progressMs ?? 200;
    const start = Date.now();
    const interval: [number, number] = [start, -1];
    this.intervals.push(interval);
    const bytes = (this.o.vmMemoryMib ?? 1024) * MiB;
    const change = (from: MigrationState, to: MigrationState, reason: string): void => {
      const c: StateChange = { time: new Date(), from, to, reason };
      m.info.state = to;
      this.publish(m, { update: { $case: 'stateChange', value: c } });
    };
    change(MigrationState.MIGRATION_STATE_PREPARING, MigrationState.MIGRATION_STATE_PRECOPY, 'simulated');
    const t = setInterval(() => {
      const e = Date.now() - start;
      const f = Math.min(1, e / total);
      const p = ProgressSample.fromPartial({
        time: new Date(),
        elapsedMs: e,
        state: MigrationState.MIGRATION_STATE_PRECOPY,
        qemuStatus: 'active',
        pass: 1,
        transferredBytes: Math.round(f * bytes),
        remainingBytes: Math.round((1 - f) * bytes),
        totalBytes: bytes,
        throughputMbps: ((bytes / (total / 1000)) * 8) / 1e6,
        pageSize: 4096,
        downtimeLimitMs: 300,
      });
      m.info.lastProgress = p;
      this.publish(m, { update: { $case: 'progress', value: p } });
      if (f >= 1) {
        clearInterval(t);
        change(MigrationState.MIGRATION_STATE_PRECOPY, MigrationState.MIGRATION_STATE_SUCCEEDED, 'simulated completion');
        m.info.finishedAt = new Date();
        m.info.stats = { totalTimeMs: e, downtimeMs: 20, setupTimeMs: 5, transferredBytes: bytes, passes: 1, postcopyRequests: 0, sourceCpuSeconds: e / 1000, destinationCpuSeconds: e / 4000, integrityErrors: 0, pagesVerifiedAfter: 1, maxThrottlePct: 0, recoveries: 0, postcopyBlocktimeMs: 0, postcopyVcpuBlocktimeMs: [], checks: [] };
        m.done = true;
        this.place(m.info.vmName, m.info.destination?.nodeId ?? '');
        this.completed++;
        this.lastCompletedAt = Date.now();
        interval[1] = this.lastCompletedAt;
        this.publish(m, { update: { $case: 'result', value: m.info } });
      }
    }, every);
    this.timers.push(t);
  }

  private handlers(): Record<string, unknown> {
    const unimplemented = (_call: unknown, cb: sendUnaryData<unknown>): void => cb({ code: status.UNIMPLEMENTED, details: 'not simulated' } as never, null);
    const h: Record<string, unknown> = {};
    for (const k of Object.keys(NodeServiceService)) h[k] = unimplemented;
    h['watchMigration'] = (call: ServerWritableStream<{ runId: string }, WatchMigrationResponse>): void => {
      const m = this.migrations.get(call.request.runId);
      if (!m) return void call.emit('error', { code: status.NOT_FOUND, details: 'unknown run' });
      for (const u of m.updates) call.write(u);
      if (m.done) return void call.end();
      const l = (u: WatchMigrationResponse): void => {
        call.write(u);
        if (u.update?.$case === 'result') {
          m.listeners.delete(l);
          call.end();
        }
      };
      m.listeners.add(l);
      call.on('cancelled', () => m.listeners.delete(l));
    };
    h['startMigration'] = (call: ServerUnaryCall<{ runId: string; vmName: string; destination?: { nodeId: string; managementAddress: string; migrationAddress: string }; policy?: MigrationPolicy }, unknown>, cb: sendUnaryData<unknown>): void => {
      const r = call.request;
      const existing = this.migrations.get(r.runId);
      if (existing) return cb(null, { migration: existing.info });
      const src = this.vmNode.get(r.vmName);
      if (!src) return cb({ code: status.NOT_FOUND, details: `vm ${r.vmName} not found` } as never, null);
      const info = MigrationInfo.fromPartial({ runId: r.runId, vmName: r.vmName, sourceNodeId: src, destination: r.destination, policy: r.policy, state: MigrationState.MIGRATION_STATE_PREPARING, startedAt: new Date() });
      const m: SimMigration = { info, updates: [], listeners: new Set(), done: false };
      this.migrations.set(r.runId, m);
      this.simulate(m);
      cb(null, { migration: info });
    };
    h['getMigration'] = (call: ServerUnaryCall<{ runId: string }, unknown>, cb: sendUnaryData<unknown>): void => {
      const m = this.migrations.get(call.request.runId);
      if (!m) return cb({ code: status.NOT_FOUND, details: 'unknown run' } as never, null);
      cb(null, { migration: m.info });
    };
    const ack = (call: ServerUnaryCall<{ runId: string }, unknown>, cb: sendUnaryData<unknown>): void => {
      const m = this.migrations.get(call.request.runId);
      if (!m) return cb({ code: status.NOT_FOUND, details: 'unknown run' } as never, null);
      cb(null, { migration: m.info });
    };
    for (const k of ['adjustMigration', 'startPostcopy', 'forceComplete', 'cancelMigration', 'releaseMigration']) h[k] = ack;
    h['expectIncoming'] = (_call: unknown, cb: sendUnaryData<unknown>): void => {
      this.announcedAt.push(Date.now());
      cb(null, { expiresAt: new Date(Date.now() + 600_000) });
    };
    h['getHostInfo'] = (_call: unknown, cb: sendUnaryData<unknown>): void => cb(null, { host: this.hostInfo(this.nodeIds[0]!) });
    return h;
  }

  close(): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    this.timers = [];
    for (const c of this.clients) c.close();
    // Watch streams of runs the coordinator gave up on never end by themselves: no graceful wait.
    this.server.forceShutdown();
    return Promise.resolve();
  }
}
