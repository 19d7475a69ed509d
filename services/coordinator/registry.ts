/**
 * The node registry: which node daemons exist, whether they are alive, what VMs they run, and a
 * gRPC client for each. Node daemons register and heartbeat (with their host info and VMs); a
 * node that misses `misses` heartbeats is marked down. Node and VM changes go to the store, whose
 * outbox turns them into NodeStateChanged / VmChanged events; the latest heartbeat's VM list is
 * kept in memory as the live view (ListVms, placement), backed by the store after a restart
 * until each node has reported again.
 */
import { InvalidArgumentError, NotFoundError } from '../shared/errors.js';
import { VmState, type GuestPerfSample, type HostInfo, type VmInfo } from '../shared/gen/migd/v1/common.js';
import { NodeStatus, type Node } from '../shared/gen/migd/v1/coordinator.js';
import { NodeServiceService, type MigrationEndpoint } from '../shared/gen/migd/v1/node.js';
import type { Logger } from '../shared/log.js';
import { turns } from '../shared/metrics/turns.js';
import { createClient, type RpcClient } from '../shared/rpc/client.js';
import { nodeIdentity } from '../shared/pki.js';
import { splitHostPort, type TransportSecurity } from '../shared/rpc/tls.js';
import type { NodeVmRepository, PlanRunRepository, SampleRepository } from './store/types.js';
import { VmOrder } from './vm-order.js';

export type NodeClient = RpcClient<typeof NodeServiceService>;

const NODE_ID = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
/** A heart-beating node's row is rewritten at most this often (ms). */
const PERSIST_MS = 10_000;
/** Guest samples from heartbeats are kept at most this often per VM (ms). */
const GUEST_SAMPLE_MS = 5000;
/** A down-detection check later than its period by more than this means the coordinator stalled (ms). */
const STALL_SLACK_MS = 250;
/** Heartbeats share one read of the active runs' moves for this long (ms). */
const ACTIVE_MOVES_MS = 1000;

export interface NodeRegistryOptions {
  /** Nodes and VMs; active runs (to keep a migrating VM where it is); guest samples from heartbeats. */
  /** The repositories it uses: nodes and VMs, active runs, guest samples. */
  readonly store: {
    readonly nodes: NodeVmRepository;
    readonly plans: Pick<PlanRunRepository, 'listActiveMoves'>;
    readonly samples: Pick<SampleRepository, 'appendGuestSample'>;
  };
  readonly log: Logger;
  /** The heartbeat period node daemons are told to keep (ms). */
  readonly heartbeatMs: number;
  /** Missed heartbeats before a node is marked down. */
  readonly misses: number;
  /** Transport security of calls to node daemons. */
  readonly security: TransportSecurity;
  /**
   * Accept a node presenting the shared `migd-node` certificate when dialling it (only with
   * `--allow-shared-node-identity`); otherwise a node must present its own, `migd-node.<id>`.
   * Default false.
   */
  readonly acceptSharedNodeCertificate?: boolean;
  /** Default deadline of calls to node daemons (ms). */
  readonly callDeadlineMs: number;
  /** Clock (ms since the epoch). Default Date.now. */
  readonly now?: () => number;
  /** Builds a node client (tests inject fakes). Default: a gRPC client. */
  readonly connect?: (host: HostInfo) => NodeClient;
}

export class NodeRegistry {
  private readonly hosts = new Map<string, HostInfo>();
  private readonly up = new Map<string, boolean>();
  private readonly lastSeen = new Map<string, number>();
  /** When each node last registered or heart-beat (since this coordinator started). */
  private readonly heartbeatAt = new Map<string, number>();
  /** The VMs each node reported in its latest heartbeat (since this coordinator started). */
  private readonly reported = new Map<string, VmInfo[]>();
  /** VM name → the nodes whose latest report (in `reported`) lists it: run ends look VMs up by name. */
  private readonly reportedOn = new Map<string, Set<string>>();
  /** Lists VMs in order, each node's reported list sorted once (see vm-order.ts). */
  private readonly order = new VmOrder();
  /** VM name → where and in what state it was last written to the store (to write only changes). */
  private readonly written = new Map<string, { node: string; state: VmState }>();
  /** Node → names of the VMs last written as being on it. */
  private readonly writtenOn = new Map<string, Set<string>>();
  /** When each node's row was last written (heartbeats refresh it at most every PERSIST_MS). */
  private readonly persistedAt = new Map<string, number>();
  private readonly lastGuestSample = new Map<string, number>();
  /** `node\0vm` pairs whose ownership conflict was logged (logged once until it clears). */
  private readonly conflicts = new Set<string>();
  /**
   * VMs deleted through the coordinator → their node: a heartbeat sent before the delete may
   * still list one; it is ignored until a heartbeat of that node no longer does.
   */
  private readonly deleted = new Map<string, string>();
  private readonly clients = new Map<string, { address: string; client: NodeClient }>();
  private timer: NodeJS.Timeout | undefined;
  private checking = false;
  private readonly now: () => number;
  /** Period of the down-detection check (ms). */
  private readonly checkEveryMs: number;
  /** When the last down-detection check ran, and the coordinator's own stalls so far (ms). */
  private lastCheckAt: number | undefined;
  /** The latest read of the active runs' moves (see activeMoves). */
  private moves: { at: number; byDestination: Promise<Map<string, Set<string>>> } | undefined;
  /** The run manager's own answer to "does an unfinished run move this VM to this node?" (see useRunMoves). */
  private movingTo: ((vmName: string, nodeId: string) => boolean) | undefined;
  /** VM name → the node a run's end is settling it on, while vmSettled records it (see vmSettled). */
  private readonly settling = new Map<string, string>();
  private stalledMs = 0;

  constructor(private readonly o: NodeRegistryOptions) {
    this.now = o.now ?? Date.now;
    this.checkEveryMs = Math.max(50, Math.floor(o.heartbeatMs / 2));
  }

  /** Loads the known nodes and VMs from the store; starts down-detection. */
  async start(): Promise<void> {
    const now = this.now();
    for (const n of await this.o.store.nodes.listNodes()) {
      if (!n.host) continue;
      this.hosts.set(n.host.nodeId, n.host);
      this.up.set(n.host.nodeId, n.status === NodeStatus.NODE_STATUS_UP);
      // A restarted coordinator gives every node a full timeout to heartbeat again.
      this.lastSeen.set(n.host.nodeId, now);
    }
    for (const v of await this.o.store.nodes.listVms()) this.noteWritten(v);
    this.lastCheckAt = this.now();
    this.timer = setInterval(() => void this.checkDown(), this.checkEveryMs);
    this.timer.unref();
  }

  get heartbeatMs(): number {
    return this.o.heartbeatMs;
  }

  private validateHost(host: HostInfo | undefined): HostInfo {
    if (!host) throw new InvalidArgumentError('host is required');
    if (!NODE_ID.test(host.nodeId)) throw new InvalidArgumentError(`host.node_id "${host.nodeId}" must match ${NODE_ID.source}`);
    try {
      splitHostPort(host.managementAddress);
    } catch {
      throw new InvalidArgumentError(`host.management_address "${host.managementAddress}" is not host:port`);
    }
    if (!host.migrationAddress) throw new InvalidArgumentError('host.migration_address is required');
    return host;
  }

  /**
   * A node daemon announces itself (again). @throws InvalidArgumentError for a bad host description
   */
  async register(hostIn: HostInfo | undefined): Promise<{ nodeId: string; heartbeatIntervalMs: number }> {
    const host = this.validateHost(hostIn);
    const wasUp = this.up.get(host.nodeId);
    await this.o.store.nodes.writeNode({ host, status: NodeStatus.NODE_STATUS_UP, reason: wasUp === false ? 'registered again' : 'registered' });
    this.persistedAt.set(host.nodeId, this.now());
    this.seen(host);
    this.o.log.info('node registered', { nodeId: host.nodeId, managementAddress: host.managementAddress, migrationAddress: host.migrationAddress });
    return { nodeId: host.nodeId, heartbeatIntervalMs: this.o.heartbeatMs };
  }

  /**
   * A node daemon reports itself alive with its VMs.
   * @throws InvalidArgumentError for a bad host; NotFoundError when the node never registered
   *   (the node daemon then registers again)
   */
  async heartbeat(hostIn: HostInfo | undefined, vms: readonly VmInfo[]): Promise<void> {
    const host = this.validateHost(hostIn);
    if (!this.hosts.has(host.nodeId)) throw new NotFoundError(`node ${host.nodeId} is not registered: call RegisterNode first`, { reason: 'NODE_NOT_REGISTERED' });
    const wasUp = this.up.get(host.nodeId);
    // The node is alive as of the heartbeat's arrival, not of the end of its store writes: under
    // load those wait for other writes, and that wait is the coordinator's, not the node's.
    if (wasUp) this.lastSeen.set(host.nodeId, this.now());
    // The row is refreshed on a status change and otherwise at most every PERSIST_MS: the live
    // figures (free memory, last heartbeat) are served from memory (see nodes()).
    if (!wasUp || this.now() - (this.persistedAt.get(host.nodeId) ?? 0) >= PERSIST_MS) {
      await this.o.store.nodes.writeNode({ host, status: NodeStatus.NODE_STATUS_UP, reason: wasUp ? 'heartbeat' : 'heartbeats resumed' });
      this.persistedAt.set(host.nodeId, this.now());
    }
    if (!wasUp) this.o.log.info('node is up again', { nodeId: host.nodeId });
    this.seen(host);
    await this.syncVms(host.nodeId, vms);
  }

  private seen(host: HostInfo): void {
    this.hosts.set(host.nodeId, host);
    this.up.set(host.nodeId, true);
    this.lastSeen.set(host.nodeId, this.now());
    this.heartbeatAt.set(host.nodeId, this.now());
  }

  /**
   * Takes a node's report of its VMs. A heartbeat never moves a VM: a name the store places on
   * another node (and not stopped there) is a conflict — logged, left out of the live view and of
   * the store — unless an active run is moving that VM to this node. Ownership changes come only
   * from runs (vmSettled) and from VMs the coordinator created on the node (vmCreated); a report
   * of a VM the coordinator has never seen is taken as that node's.
   */
  private async syncVms(nodeId: string, vms: readonly VmInfo[]): Promise<void> {
    const t0 = turns.enabled ? turns.now() : 0;
    const list: VmInfo[] = [];
    const names = new Set<string>();
    const writes: VmInfo[] = [];
    const movingHere = async (name: string): Promise<boolean> =>
      this.settling.get(name) === nodeId || (this.movingTo !== undefined ? this.movingTo(name, nodeId) : ((await this.activeMoves()).get(nodeId)?.has(name) ?? false));
    for (const name of [...this.deleted.keys()]) {
      if (this.deleted.get(name) === nodeId && !vms.some((v) => v.spec?.name === name)) this.deleted.delete(name);
    }
    for (const reported of vms) {
      const v = { ...reported, nodeId };
      const name = v.spec?.name ?? '';
      if (name && this.deleted.get(name) === nodeId) continue;
      if (name) {
        const owner = this.written.get(name);
        const foreign = owner !== undefined && owner.node !== nodeId && owner.state !== VmState.VM_STATE_STOPPED;
        if (foreign && !(await movingHere(name))) {
          this.conflict(nodeId, name, owner.node);
          continue;
        }
        this.conflicts.delete(`${nodeId}\u0000${name}`);
      }
      list.push(v);
      if (!name) continue;
      names.add(name);
      this.recordGuestSample(name, v.lastGuestPerf);
      // The incoming half of a migration is a transient second VM of the same name: the store
      // keeps one row per name, the source's, until the run ends.
      if (v.state === VmState.VM_STATE_INCOMING) continue;
      writes.push(v);
    }
    this.setReported(nodeId, list);
    for (const name of [...(this.writtenOn.get(nodeId) ?? [])]) {
      if (names.has(name) || this.written.get(name)?.state === VmState.VM_STATE_STOPPED) continue;
      const stored = await this.o.store.nodes.getVm(name).catch(() => undefined);
      if (stored && stored.nodeId === nodeId) writes.push({ ...stored, state: VmState.VM_STATE_STOPPED, pid: 0, migrationRunId: '' });
    }
    turns.record('registry.vm-report', t0, vms.length);
    // One transaction for the whole report (a node's first heartbeat lists every VM it runs).
    await this.write(...writes);
  }

  /**
   * Answers the heartbeats' ownership check from the run manager's memory (RunManager.isMovingTo)
   * instead of reading the store's active runs once a second (issue 15 §4). The coordinator calls
   * it once its run manager exists, before any heartbeat is taken (heartbeats reach the registry
   * only once the leader's parts are up, after recovery).
   */
  useRunMoves(movingTo: (vmName: string, nodeId: string) => boolean): void {
    this.movingTo = movingTo;
    this.moves = undefined;
  }

  /**
   * The VMs active runs move, by destination node (without useRunMoves): one read of the store shared by the
   * heartbeats of ACTIVE_MOVES_MS (during a drain every destination reports VMs the store still
   * places on their sources, and reading every active run for each of those heartbeats was the
   * coordinator's largest query: 12 ms a time at 2000 active runs, 100 times a second). A run
   * started since the read makes at most one heartbeat's report of its VM a logged conflict.
   */
  private activeMoves(): Promise<Map<string, Set<string>>> {
    const now = this.now();
    if (this.moves && now - this.moves.at < ACTIVE_MOVES_MS) return this.moves.byDestination;
    const byDestination = this.o.store.plans.listActiveMoves().then((runs) => {
      const m = new Map<string, Set<string>>();
      for (const r of runs) {
        let s = m.get(r.destinationNodeId);
        if (!s) m.set(r.destinationNodeId, (s = new Set()));
        s.add(r.vmName);
      }
      return m;
    });
    this.moves = { at: now, byDestination };
    byDestination.catch(() => {
      if (this.moves?.byDestination === byDestination) this.moves = undefined;
    });
    return byDestination;
  }

  /** Logs (once until it clears) a node reporting a VM that belongs to another node. */
  private conflict(nodeId: string, name: string, owner: string): void {
    const key = `${nodeId}\u0000${name}`;
    if (this.conflicts.has(key)) return;
    this.conflicts.add(key);
    this.o.log.warn('VM ownership conflict: a node reports a VM that runs on another node; the report is ignored', { nodeId, vm: name, owner });
  }

  /** Writes the VMs whose node or state differs from what was last written, in one transaction. */
  private async write(...vms: VmInfo[]): Promise<void> {
    const changed = vms.filter((v) => {
      const w = this.written.get(v.spec?.name ?? '');
      return !(w && w.node === v.nodeId && w.state === v.state);
    });
    if (changed.length === 0) return;
    await this.o.store.nodes.upsertVms(changed);
    for (const v of changed) this.noteWritten(v);
  }

  private noteWritten(v: VmInfo): void {
    const name = v.spec?.name ?? '';
    const before = this.written.get(name);
    if (before) this.writtenOn.get(before.node)?.delete(name);
    this.written.set(name, { node: v.nodeId, state: v.state });
    let set = this.writtenOn.get(v.nodeId);
    if (!set) this.writtenOn.set(v.nodeId, (set = new Set()));
    set.add(name);
  }

  /**
   * Heartbeats carry each VM's latest guest sample: kept (one per GUEST_SAMPLE_MS per VM) as the
   * guest's history outside runs — the "before" figure of ComparePolicies and of run timelines.
   */
  private recordGuestSample(name: string, s: GuestPerfSample | undefined): void {
    const t = s?.time?.getTime();
    if (!s || t === undefined || t < (this.lastGuestSample.get(name) ?? 0) + GUEST_SAMPLE_MS) return;
    this.lastGuestSample.set(name, t);
    try {
      this.o.store.samples.appendGuestSample({ ...s, vmName: s.vmName || name });
    } catch (err) {
      this.o.log.debug('guest sample not recorded', { vm: name, err });
    }
  }

  /**
   * A run ended: the VM now runs on `nodeId` (its destination after a success, its source
   * otherwise), outside any migration. Recorded at once rather than at the next heartbeats, so
   * the VM can be planned again right away.
   */
  async vmSettled(name: string, nodeId: string, moved: boolean): Promise<void> {
    // The run manager forgot the run just before this call; until the VM's new home is written, a
    // heartbeat of `nodeId` listing it is not a conflict.
    this.settling.set(name, nodeId);
    try {
      await this.settle(name, nodeId, moved);
    } finally {
      if (this.settling.get(name) === nodeId) this.settling.delete(name);
    }
  }

  private async settle(name: string, nodeId: string, moved: boolean): Promise<void> {
    const entries = [...(this.reportedOn.get(name) ?? [])].flatMap((node) => (this.reported.get(node) ?? []).filter((v) => v.spec?.name === name && v.state !== VmState.VM_STATE_INCOMING).map((v) => ({ node, v })));
    let here = entries.find((e) => e.node === nodeId)?.v;
    let stored: VmInfo | undefined;
    if (!here) {
      stored = await this.o.store.nodes.getVm(name).catch(() => undefined);
      if (stored?.nodeId === nodeId) here = stored;
    }
    const base = here ?? (moved ? (entries[0]?.v ?? stored) : undefined);
    if (!base) return;
    this.dropReported(name);
    const settled: VmInfo = { ...base, nodeId, state: VmState.VM_STATE_RUNNING, migrationRunId: '' };
    const list = this.reported.get(nodeId);
    if (list) this.setReported(nodeId, [...list, settled]);
    await this.write(settled);
  }

  /** Replaces a node's reported VMs, keeping the by-name index. */
  private setReported(nodeId: string, list: VmInfo[]): void {
    for (const v of this.reported.get(nodeId) ?? []) {
      const name = v.spec?.name ?? '';
      const on = this.reportedOn.get(name);
      on?.delete(nodeId);
      if (on?.size === 0) this.reportedOn.delete(name);
    }
    this.reported.set(nodeId, list);
    for (const v of list) {
      const name = v.spec?.name ?? '';
      let on = this.reportedOn.get(name);
      if (!on) this.reportedOn.set(name, (on = new Set()));
      on.add(nodeId);
    }
  }

  /** Removes every reported entry of VM `name` (of any node). */
  private dropReported(name: string): void {
    for (const node of [...(this.reportedOn.get(name) ?? [])]) {
      const list = this.reported.get(node);
      if (list) this.setReported(node, list.filter((v) => v.spec?.name !== name));
    }
    this.reportedOn.delete(name);
  }

  /** A VM was deleted through the coordinator: gone from the live view and the store. */
  async vmDeleted(name: string, nodeId: string): Promise<void> {
    this.deleted.set(name, nodeId);
    this.dropReported(name);
    const w = this.written.get(name);
    if (w) this.writtenOn.get(w.node)?.delete(name);
    this.written.delete(name);
    await this.o.store.nodes.deleteVm(name);
  }

  /** A VM was created, stopped or started through the coordinator: its node's answer. */
  async vmCreated(vm: VmInfo): Promise<void> {
    const name = vm.spec?.name;
    if (name && this.deleted.get(name) === vm.nodeId) this.deleted.delete(name);
    const list = this.reported.get(vm.nodeId);
    if (list) {
      const i = list.findIndex((v) => v.spec?.name === name && v.state !== VmState.VM_STATE_INCOMING);
      this.setReported(vm.nodeId, i < 0 ? [...list, vm] : list.map((v, k) => (k === i ? vm : v)));
    }
    await this.write(vm);
  }

  /**
   * Local health awareness (as HashiCorp's Lifeguard does for memberlist): time during which this
   * coordinator itself could not take heartbeats in does not count against the nodes. The check
   * runs every `checkEveryMs`; when it runs late, its event loop was busy or the process got no
   * CPU for that long, and heartbeats that arrived meanwhile were waiting in its sockets, not
   * missing. Every node's last-seen time is moved forward by the lateness, so a coordinator
   * starved of CPU for 10 s marks no node down for it; a node that really stopped is still
   * marked down after `misses` heartbeats of time the coordinator was running.
   * @returns the lateness forgiven (ms)
   */
  private forgiveOwnStall(now: number): number {
    const last = this.lastCheckAt;
    this.lastCheckAt = now;
    if (last === undefined) return 0;
    const late = now - last - this.checkEveryMs;
    // Timer jitter and short pauses are not a stall.
    if (late <= STALL_SLACK_MS) return 0;
    for (const [id, seen] of this.lastSeen) this.lastSeen.set(id, Math.min(now, seen + late));
    this.stalledMs += late;
    return late;
  }

  /** Total time this coordinator was too busy to take heartbeats in (ms; see forgiveOwnStall). */
  get ownStallMs(): number {
    return this.stalledMs;
  }

  /** One down-detection pass (every `heartbeatMs / 2`; public for tests with a fake clock). */
  async checkDown(): Promise<void> {
    const forgiven = this.forgiveOwnStall(this.now());
    if (forgiven > 0) this.o.log[forgiven >= this.o.heartbeatMs ? 'warn' : 'debug']('coordinator stalled: heartbeat deadlines extended', { stallMs: forgiven, totalStallMs: this.stalledMs });
    if (this.checking) return;
    this.checking = true;
    try {
      const limit = this.o.heartbeatMs * this.o.misses;
      const now = this.now();
      for (const [id, seen] of this.lastSeen) {
        if (!this.up.get(id) || now - seen <= limit) continue;
        this.up.set(id, false);
        const reason = `no heartbeat for ${now - seen} ms (${this.o.misses} missed at ${this.o.heartbeatMs} ms)`;
        this.o.log.warn('node marked down', { nodeId: id, reason, coordinatorStallMs: this.stalledMs });
        await this.o.store.nodes.setNodeStatus(id, NodeStatus.NODE_STATUS_DOWN, reason).catch((err: unknown) => this.o.log.warn('marking a node down failed', { nodeId: id, err }));
      }
    } finally {
      this.checking = false;
    }
  }

  /** Whether the node is known and heart-beating. */
  isUp(nodeId: string): boolean {
    return this.up.get(nodeId) === true;
  }

  /** The node's last reported description. @throws NotFoundError */
  host(nodeId: string): HostInfo {
    const h = this.hosts.get(nodeId);
    if (!h) throw new NotFoundError(`unknown node "${nodeId}"`, { reason: 'UNKNOWN_NODE' });
    return h;
  }

  /** How a source node reaches `nodeId` for a migration. @throws NotFoundError */
  endpoint(nodeId: string): MigrationEndpoint {
    const h = this.host(nodeId);
    return { nodeId, managementAddress: h.managementAddress, migrationAddress: h.migrationAddress };
  }

  /** A client of the node daemon (cached per address). @throws NotFoundError for an unknown node */
  /** Dialling node `nodeId`: its certificate must name it (`migd-node.<id>`), not just any node. */
  private nodeSecurity(nodeId: string): TransportSecurity {
    const sec = this.o.security;
    if (!sec.tls) return sec;
    const { serverName: _shared, ...rest } = sec;
    return { ...rest, serverNames: [nodeIdentity(nodeId), ...(this.o.acceptSharedNodeCertificate ? ['migd-node'] : [])] };
  }

  client(nodeId: string): NodeClient {
    const h = this.host(nodeId);
    const cached = this.clients.get(nodeId);
    if (cached && cached.address === h.managementAddress) return cached.client;
    cached?.client.close();
    const client = this.o.connect?.(h) ?? createClient('migd.v1.NodeService', NodeServiceService, h.managementAddress, { security: this.nodeSecurity(nodeId), defaultDeadlineMs: this.o.callDeadlineMs });
    this.clients.set(nodeId, { address: h.managementAddress, client });
    return client;
  }

  /**
   * Every known node as this coordinator sees it now, from memory: its latest host description
   * and whether it is up (ordered by id; no VM or migration counts). What planning needs: the
   * store's {@link nodes} adds counts aggregated over every VM and run, which a SubmitPlan on a
   * 500-node fleet paid for on each call.
   */
  liveNodes(): Node[] {
    return [...this.hosts.keys()].sort().map((id) => ({
      host: this.hosts.get(id),
      status: this.up.get(id) ? NodeStatus.NODE_STATUS_UP : NodeStatus.NODE_STATUS_DOWN,
      lastHeartbeat: this.heartbeatAt.has(id) ? new Date(this.heartbeatAt.get(id)!) : undefined,
      vmCount: 0,
      outboundMigrations: 0,
      inboundMigrations: 0,
    }));
  }

  /**
   * Every node as the store knows it, with its latest heartbeat's figures and VM count (from
   * `vms`, default {@link vms}()).
   */
  async nodes(vms?: readonly VmInfo[]): Promise<Node[]> {
    const nodes = await this.o.store.nodes.listNodes();
    const counts = new Map<string, number>();
    for (const v of vms ?? (await this.vms())) if (v.state !== VmState.VM_STATE_INCOMING) counts.set(v.nodeId, (counts.get(v.nodeId) ?? 0) + 1);
    return nodes.map((n) => {
      const id = n.host?.nodeId ?? '';
      const seen = this.heartbeatAt.get(id);
      return { ...n, host: this.hosts.get(id) ?? n.host, lastHeartbeat: seen ? new Date(seen) : n.lastHeartbeat, vmCount: counts.get(id) ?? 0 };
    });
  }

  /**
   * VMs across the cluster (or on one node), ordered by node then name: each node's latest
   * heartbeat, or the store's record for nodes that have not reported since this coordinator
   * started. Stopped VMs are left out.
   */
  async vms(nodeId?: string, opts: { includeStopped?: boolean } = {}): Promise<VmInfo[]> {
    const stored: VmInfo[] = [];
    const unreported = nodeId ? !this.reported.has(nodeId) : [...this.hosts.keys()].some((id) => !this.reported.has(id));
    if (unreported) {
      for (const v of await this.o.store.nodes.listVms(nodeId)) if (!this.reported.has(v.nodeId) && v.state !== VmState.VM_STATE_STOPPED) stored.push(v);
    }
    // A node reports a VM stopped through StopVm (kept to be started again) as STOPPED; the store's
    // STOPPED also marks VMs gone from their node, so only the nodes' own reports are shown.
    const lists = nodeId ? new Map(this.reported.has(nodeId) ? [[nodeId, this.reported.get(nodeId)!]] : []) : this.reported;
    return this.order.list(lists, stored, (v) => opts.includeStopped === true || v.state !== VmState.VM_STATE_STOPPED);
  }

  /** Stops down-detection and closes the node clients. */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    for (const { client } of this.clients.values()) client.close();
    this.clients.clear();
  }
}
