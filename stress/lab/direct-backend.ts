/**
 * The lab's backend without a coordinator: talks to the node daemons directly (NodeService over
 * mTLS), runs the coordinator domain's ConvergencePolicy in-process — the same `policyFor` the
 * coordinator uses, fed every progress sample and a 1 s clock tick, its decisions sent as
 * AdjustMigration / StartPostcopy / ForceComplete / CancelMigration with actor `policy:<name>` —
 * and assembles each run's timeline (proto GetRunTimelineResponse) from what the nodes stream:
 * state changes, progress (with the QEMU CPU counters), actions (the source node records every
 * action taken, whoever asked), and guest samples before, during and after the migration.
 *
 * It is a stand-in for the coordinator's run supervisor, kept small on purpose: no queue, no
 * placement, no persistence. Use the coordinator backend whenever a coordinator is available.
 */
import { policyFor, type ConvergencePolicy, type PolicyDecision } from '../../services/coordinator/domain/policy/index.js';
import { MigdError, NotFoundError } from '../../services/shared/errors.js';
import {
  MigrationState,
  PolicyActionKind,
  type GuestPerfSample,
  type MigrationStats,
  type ErrorInfo,
  type NetworkBlackout,
  type PolicyAction,
  type ProgressSample,
  type VmSpec,
} from '../../services/shared/gen/migd/v1/common.js';
import { Run, type GetRunTimelineResponse, type HostCpuSample } from '../../services/shared/gen/migd/v1/coordinator.js';
import type { MigrationInfo, NodeServiceService, StateChange } from '../../services/shared/gen/migd/v1/node.js';
import type { RpcClient } from '../../services/shared/rpc/client.js';
import { type LabBackend, type MigrateRequest, type MigrateResult, outcomeOf, sleep, stateName } from './backend.js';
import { actionLabel, type LabOutcome } from './metrics.js';
import { isTerminalState } from '../../services/shared/policy/states.js';

type NodeClient = RpcClient<typeof NodeServiceService>;

/** A node daemon the backend drives. */
export interface DirectNode {
  readonly id: string;
  /** host:port of its gRPC server. */
  readonly managementAddress: string;
  /** Its migration-network address. */
  readonly migrationAddress: string;
  readonly client: NodeClient;
}

const MiB = 1024 * 1024;
/** Guest samples kept around a run in its timeline (the coordinator's store uses the same window). */
const GUEST_WINDOW_MS = 60_000;

interface RunRecord {
  id: string;
  vmName: string;
  source: string;
  destination: string;
  policy: ConvergencePolicy;
  memoryMib: number;
  createdAt: Date;
  startedAt?: Date;
  finishedAt?: Date;
  state: MigrationState;
  transitions: StateChange[];
  progress: ProgressSample[];
  actions: PolicyAction[];
  stats?: MigrationStats;
  error?: ErrorInfo;
  blackout?: NetworkBlackout;
}

/** Follows one VM's guest samples on one node, into the VM's log (deduplicated). */
class GuestFeed {
  private readonly ac = new AbortController();
  constructor(client: NodeClient, vmName: string, sink: (s: GuestPerfSample) => void) {
    void (async () => {
      try {
        for await (const m of client.watchGuest({ name: vmName, includeConsole: false }, { signal: this.ac.signal })) {
          if (m.item?.$case === 'sample') sink(m.item.value);
        }
      } catch {
        // The VM went away (migrated or destroyed) or the feed was stopped: nothing to follow.
      }
    })();
  }
  stop(): void {
    this.ac.abort();
  }
}

export class DirectBackend implements LabBackend {
  readonly mode = 'direct' as const;
  private readonly nodes = new Map<string, DirectNode>();
  private readonly where = new Map<string, string>();
  private readonly guest = new Map<string, { samples: GuestPerfSample[]; seen: Set<string> }>();
  private readonly feeds = new Map<string, GuestFeed>();
  private readonly runs = new Map<string, RunRecord>();

  constructor(nodes: readonly DirectNode[]) {
    for (const n of nodes) this.nodes.set(n.id, n);
  }

  async nodeIds(): Promise<string[]> {
    return [...this.nodes.keys()];
  }

  private node(id: string): DirectNode {
    const n = this.nodes.get(id);
    if (!n) throw new NotFoundError(`unknown node ${id}`);
    return n;
  }

  private record(vmName: string, s: GuestPerfSample): void {
    let g = this.guest.get(vmName);
    if (!g) this.guest.set(vmName, (g = { samples: [], seen: new Set() }));
    // The guest's monotonic clock and the worker index identify a sample across both nodes' feeds.
    const key = `${s.guestMonoMs}/${s.worker}/${s.pass}`;
    if (g.seen.has(key)) return;
    g.seen.add(key);
    g.samples.push(s.time ? s : { ...s, time: new Date() });
  }

  private follow(vmName: string, nodeId: string): void {
    this.feeds.get(vmName)?.stop();
    this.feeds.set(vmName, new GuestFeed(this.node(nodeId).client, vmName, (s) => this.record(vmName, s)));
  }

  async createVm(spec: VmSpec, nodeId: string): Promise<void> {
    await this.node(nodeId).client.createVm({ spec }, { deadlineMs: 120_000 });
    this.where.set(spec.name, nodeId);
    this.follow(spec.name, nodeId);
  }

  async waitGuest(vmName: string, opts: { minSamples: number; minMs: number; timeoutMs: number; idle?: boolean; signal?: AbortSignal }): Promise<void> {
    const deadline = Date.now() + opts.timeoutMs;
    for (;;) {
      const s = (this.guest.get(vmName)?.samples ?? []).filter((x) => x.msPerGib > 0 || x.heartbeatGapMs > 0 || x.pagesVerified > 0);
      // An idle guest counts from its first verification (its memory written; see CoordinatorBackend.waitGuest).
      const first = (opts.idle ? s.find((x) => x.pagesVerified > 0) : s[0])?.time?.getTime();
      if (s.length >= opts.minSamples && first !== undefined && Date.now() - first >= opts.minMs) return;
      if (Date.now() > deadline) throw new Error(`guest ${vmName} sent ${s.length} samples in ${opts.timeoutMs} ms`);
      await sleep(200, opts.signal);
    }
  }

  async migrate(req: MigrateRequest): Promise<MigrateResult> {
    const policy = policyFor(req.policy, req.memoryMib * MiB);
    const src = this.node(req.sourceNodeId);
    const dst = this.node(req.destinationNodeId);
    const runId = req.key.replace(/[^A-Za-z0-9_.-]/g, '-');
    const rec: RunRecord = {
      id: runId,
      vmName: req.vmName,
      source: src.id,
      destination: dst.id,
      policy,
      memoryMib: req.memoryMib,
      createdAt: new Date(),
      state: MigrationState.MIGRATION_STATE_QUEUED,
      transitions: [],
      progress: [],
      actions: [],
    };
    this.runs.set(runId, rec);
    const actor = `policy:${policy.name}`;
    let pstate = policy.initialState();
    let chain: Promise<void> = Promise.resolve();
    let startMs = Date.now();
    let last: ProgressSample | undefined;
    let acted = false;
    let timedOut = false;
    const apply = async (d: PolicyDecision): Promise<void> => {
      const base = { runId, actor, reason: d.reason };
      switch (d.kind) {
        case PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME:
          await src.client.adjustMigration({ ...base, downtimeLimitMs: d.value, enableAutoConverge: false });
          break;
        case PolicyActionKind.POLICY_ACTION_KIND_SET_BANDWIDTH:
          await src.client.adjustMigration({ ...base, maxBandwidthBytesPerSec: d.value, enableAutoConverge: false });
          break;
        case PolicyActionKind.POLICY_ACTION_KIND_ENABLE_AUTO_CONVERGE:
          await src.client.adjustMigration({ ...base, enableAutoConverge: true });
          break;
        case PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY:
          await src.client.startPostcopy(base);
          break;
        case PolicyActionKind.POLICY_ACTION_KIND_PAUSE_GUEST:
          await src.client.forceComplete(base);
          break;
        case PolicyActionKind.POLICY_ACTION_KIND_ABORT:
          await src.client.cancelMigration(base);
          break;
        default:
          // RECOVER is the node's own business (it detects stalls and recovers by itself).
          break;
      }
    };
    const decide = (sample: ProgressSample, nowMs: number): void => {
      if (isTerminalState(rec.state) || acted) return;
      const d = policy.decide(pstate, sample, nowMs);
      pstate = d.state;
      for (const a of d.actions) {
        req.onEvent?.(`policy:${policy.name}: ${actionLabel(a.kind, a.value)} — ${a.reason}`);
        chain = chain.then(() => apply(a)).catch((err: unknown) => req.onEvent?.(`policy action failed: ${err instanceof Error ? err.message : String(err)}`));
      }
    };

    // The lab plays the coordinator: it announces the run to the destination first (issue 17).
    await dst.client.expectIncoming({ runId, sourceNodeId: src.id, vmName: req.vmName }, { deadlineMs: 30_000 });
    const info = await src.client.startMigration(
      { runId, vmName: req.vmName, destination: { nodeId: dst.id, managementAddress: dst.managementAddress, migrationAddress: dst.migrationAddress }, policy: policy.effective },
      { deadlineMs: 120_000 },
    );
    rec.startedAt = info.migration?.startedAt ?? new Date();
    startMs = rec.startedAt.getTime();
    const tick = setInterval(() => {
      if (last) decide(last, Date.now() - startMs);
    }, 1000);
    const limit = setTimeout(() => {
      timedOut = true;
      req.onEvent?.(`lab time limit of ${req.timeLimitMs / 1000} s reached: cancelling`);
      acted = true;
      chain = chain.then(() => src.client.cancelMigration({ runId, actor: 'user:lab', reason: `lab time limit ${req.timeLimitMs / 1000} s` })).then(
        () => undefined,
        () => undefined,
      );
    }, req.timeLimitMs);
    const ac = new AbortController();
    const onAbort = (): void => ac.abort();
    req.signal?.addEventListener('abort', onAbort, { once: true });
    let result: MigrationInfo | undefined;
    try {
      try {
        for await (const u of src.client.watchMigration({ runId }, { signal: ac.signal })) {
          const up = u.update;
          if (!up) continue;
          if (up.$case === 'progress') {
            const p = up.value;
            rec.progress.push(p);
            last = p;
            const g = this.guest.get(req.vmName)?.samples;
            req.onProgress?.(p, g ? [...g].reverse().find((s) => s.worker === -1) : undefined);
            decide(p, Math.max(Number(p.elapsedMs), Date.now() - startMs));
          } else if (up.$case === 'stateChange') {
            const c = up.value;
            if (rec.transitions.some((x) => x.to === c.to && x.time?.getTime() === c.time?.getTime())) continue;
            rec.transitions.push(c);
            rec.state = c.to;
            req.onEvent?.(`${stateName(c.to)}: ${c.reason}`);
          } else if (up.$case === 'action') {
            if (!rec.actions.some((a) => a.time?.getTime() === up.value.time?.getTime() && a.kind === up.value.kind)) rec.actions.push(up.value);
          } else if (up.$case === 'guest') {
            this.record(req.vmName, up.value);
          } else if (up.$case === 'result') {
            result = up.value;
            break;
          }
        }
      } catch (err) {
        if (req.signal?.aborted) throw err;
        // The stream broke (daemon restart, network): ask for the outcome instead.
      }
      while (!result || !isTerminalState(result.state)) {
        if (req.signal?.aborted) throw new Error('aborted');
        const r = await src.client.getMigration({ runId }).catch(() => undefined);
        if (r?.migration && isTerminalState(r.migration.state)) result = r.migration;
        else await sleep(1000, req.signal);
      }
    } finally {
      clearInterval(tick);
      clearTimeout(limit);
      req.signal?.removeEventListener('abort', onAbort);
      ac.abort();
      await chain;
    }
    rec.state = result.state;
    rec.finishedAt = result.finishedAt ?? new Date();
    rec.stats = result.stats;
    rec.error = result.error;
    for (const a of result.actions) if (!rec.actions.some((x) => x.time?.getTime() === a.time?.getTime() && x.kind === a.kind)) rec.actions.push(a);
    rec.actions.sort((a, b) => Number(a.elapsedMs) - Number(b.elapsedMs));
    if (!rec.transitions.some((c) => c.to === result.state)) rec.transitions.push({ time: rec.finishedAt, from: rec.transitions.at(-1)?.to ?? MigrationState.MIGRATION_STATE_UNSPECIFIED, to: result.state, reason: result.error?.message ?? '' });
    if (result.state === MigrationState.MIGRATION_STATE_SUCCEEDED) {
      this.where.set(req.vmName, dst.id);
      this.follow(req.vmName, dst.id);
    }
    const outcome: LabOutcome = timedOut && result.state !== MigrationState.MIGRATION_STATE_SUCCEEDED ? 'timed-out' : outcomeOf(result.state);
    return { runId, outcome, ...(timedOut ? { note: `cancelled by the lab after ${req.timeLimitMs / 1000} s` } : {}) };
  }

  async recordBlackout(runId: string, blackout: NetworkBlackout): Promise<void> {
    const r = this.runs.get(runId);
    if (!r) throw new NotFoundError(`run ${runId} not found`);
    r.blackout = blackout;
  }

  async timeline(runId: string): Promise<GetRunTimelineResponse> {
    const r = this.runs.get(runId);
    if (!r) throw new NotFoundError(`run ${runId} not found`);
    const from = (r.startedAt ?? r.createdAt).getTime() - GUEST_WINDOW_MS;
    const to = (r.finishedAt?.getTime() ?? Date.now()) + GUEST_WINDOW_MS;
    const guest = (this.guest.get(r.vmName)?.samples ?? []).filter((s) => {
      const t = s.time?.getTime() ?? 0;
      return t >= from && t <= to;
    });
    const hostCpu: HostCpuSample[] = r.progress.map((p) => ({ time: p.time, sourceCpuSeconds: p.sourceCpuSeconds, destinationCpuSeconds: p.destinationCpuSeconds }));
    return {
      run: Run.fromPartial({
        id: r.id,
        vmName: r.vmName,
        sourceNodeId: r.source,
        destinationNodeId: r.destination,
        policy: r.policy.effective,
        state: r.state,
        transitions: r.transitions,
        createdAt: r.createdAt,
        startedAt: r.startedAt,
        finishedAt: r.finishedAt,
        stats: r.stats,
        error: r.error,
        actions: r.actions,
        memoryMib: r.memoryMib,
        networkBlackout: r.blackout,
      }),
      progress: [...r.progress],
      guest: [...guest].sort((a, b) => (a.time?.getTime() ?? 0) - (b.time?.getTime() ?? 0)),
      hostCpu,
    };
  }

  async destroyVm(vmName: string): Promise<void> {
    this.feeds.get(vmName)?.stop();
    this.feeds.delete(vmName);
    // Try where we believe it is first, then everywhere (a failed post-copy can leave it anywhere).
    const order = [this.where.get(vmName), ...this.nodes.keys()].filter((x, i, a): x is string => x !== undefined && a.indexOf(x) === i);
    for (const id of order) {
      await this.node(id)
        .client.destroyVm({ name: vmName, deleteDisks: true }, { deadlineMs: 30_000 })
        .catch((err: unknown) => {
          if (!(err instanceof MigdError) || err.code !== 'NOT_FOUND') throw err;
        });
    }
    this.where.delete(vmName);
    this.guest.delete(vmName);
  }

  async close(): Promise<void> {
    for (const f of this.feeds.values()) f.stop();
    this.feeds.clear();
  }
}
