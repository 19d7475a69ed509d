/**
 * Draining a host: give every VM on it a destination, predict how long each migration takes, and
 * order them so that the host is empty as early as possible.
 *
 * ## Prediction
 * Pre-copy sends the whole memory M once, then in each pass what the guest dirtied during the
 * previous pass: with throughput B and dirty rate D (r = D/B) the passes take M/B, rM/B, r²M/B…,
 * a geometric series summing to ≈ M/(B − D), until the backlog fits the downtime limit
 * (backlog ≤ B × limit) and the guest is switched over. When r ≥ 1 the backlog never shrinks
 * (pre-copy alone never finishes): then post-copy (if the policy may use it) costs the first pass
 * plus the dirty set, auto-converge (if it may throttle) the first pass plus the throttle ramp
 * plus a converging tail at r = ½; otherwise the migration runs until its completion timeout (and
 * is aborted or forced) or, without one, forever.
 *
 * ## Ordering: longest predicted first, for the makespan
 * A drain is maintenance: what matters is when the host is empty (the makespan), not the mean
 * completion of its VMs. The migrations share a few parallel slots (2 outbound from the host,
 * 1 per link…): starting the longest ones first keeps one long migration from starting last and
 * running alone while the other slots idle — Graham's LPT rule, within 4/3 of the optimum on
 * identical slots. We apply it as list scheduling through the real queue (scheduler.ts), so the
 * per-link and per-destination limits shape the order exactly as they will shape dispatch.
 * (Shortest-first would minimise the mean completion time instead — more VMs done early, the host
 * empty later; `objective: 'mean-completion'` selects it.) A migration predicted never to finish
 * goes last: it would only hold a slot the others need.
 *
 * LOCAL disks: the storage copy runs first and alone on the link (the memory migration starts when
 * every mirror is ready), sending the disks' allocation (VmModel.diskTransferBytes): it adds
 * D/B to the prediction, so a VM with big LOCAL disks ranks as the long migration it is. The
 * mirror's later copying of the guest's writes is not modelled (its disk write rate is unknown).
 * The per-link limit covers the storage copy: a run holds its slot from its first disk byte to
 * its source QEMU's completion (the handover and verification after it no longer hold the link).
 *
 * Simplification: each migration is assumed to get its link's estimated bandwidth for its whole
 * run; the per-link limit of 1 is what keeps migrations from sharing a NIC path.
 */
import { FailedPreconditionError, NotFoundError } from '../../shared/errors.js';
import { MigrationPolicy, PolicyKind } from '../../shared/gen/migd/v1/common.js';
import { type ClusterModel, ClusterIndex, findNode, linkBandwidth, vmMemoryBytes } from './cluster.js';
import { allowedSet, placeVm } from './placement.js';
import { policyResolution, type PolicyResolution } from './policy/factory.js';
import { completionBudgetMs } from './policy/timeouts.js';
import type { ConvergencePolicy } from './policy/types.js';
import { type ConcurrencyLimits, MigrationQueue, resolveLimits } from './scheduler.js';
import { formatBytes, formatDuration, formatRate } from './units.js';

/** How migrations are predicted. */
export interface TransferModel {
  /** Bandwidth of a link the cluster has no estimate for (default 1 Gbit/s). */
  readonly defaultBandwidthBytesPerSec: number;
  /** Fixed cost per migration: destination QEMU start, setup, verification (default 3 s). */
  readonly setupMs: number;
  /** Pre-copy passes before a migration counts as not converging (default 30). */
  readonly maxPasses: number;
}

export const DEFAULT_TRANSFER_MODEL: TransferModel = Object.freeze({ defaultBandwidthBytesPerSec: 125_000_000, setupMs: 3000, maxPasses: 30 });

/** What a policy lets a migration do, as far as the prediction cares. */
export interface PolicyCapability {
  /** The downtime limit it reaches at most (ms). */
  readonly downtimeMs: number;
  readonly postcopy: boolean;
  readonly autoConverge: boolean;
  /** Bandwidth cap (0: none). */
  readonly bandwidthCapBytesPerSec: number;
  /** When the policy gives up or forces completion, for the memory (ms; undefined: never). */
  readonly completionTimeoutMs: number | undefined;
  /** What each GiB of LOCAL disks adds to it (s; 0 or undefined: nothing). */
  readonly completionSecPerGib?: number | undefined;
}

/** Reads a policy's capability (the largest downtime any of its steps may set, and so on). */
export function capabilityOf(policy: ConvergencePolicy): PolicyCapability {
  const e = policy.effective;
  const adaptive = policy.kind === PolicyKind.POLICY_KIND_ADAPTIVE;
  const downtimeMs = Math.max(e.downtimeLimitMs, ...e.downtimeSteps.map((s) => s.downtimeMs), adaptive ? e.maxDowntimeMs : 0);
  return {
    downtimeMs,
    postcopy: policy.requirements.postcopy,
    autoConverge: policy.requirements.autoConverge !== 'off',
    bandwidthCapBytesPerSec: e.maxBandwidthBytesPerSec,
    completionTimeoutMs: policy.timeouts.completionMs,
    completionSecPerGib: policy.timeouts.completionSecPerGib ?? 0,
  };
}

/** One migration's predicted course. */
export interface MigrationPrediction {
  /** Total time including setup (Infinity: never finishes on its own). */
  readonly durationMs: number;
  readonly mode: 'precopy' | 'postcopy' | 'auto-converge' | 'never';
  readonly passes: number;
  /** The prediction in words. */
  readonly summary: string;
}

/**
 * Predicts one migration (see the module comment).
 * @param dirtyBytesPerSec undefined when unknown: then assumed idle, and the summary says so
 */
export function predictMigration(
  input: { memoryBytes: number; dirtyBytesPerSec: number | undefined; bandwidthBytesPerSec: number; diskBytes?: number | undefined },
  capability: PolicyCapability,
  model: TransferModel = DEFAULT_TRANSFER_MODEL,
): MigrationPrediction {
  const m = input.memoryBytes;
  const disk = input.diskBytes ?? 0;
  const b = capability.bandwidthCapBytesPerSec > 0 ? Math.min(input.bandwidthBytesPerSec, capability.bandwidthCapBytesPerSec) : input.bandwidthBytesPerSec;
  const d = input.dirtyBytesPerSec ?? 0;
  const known = input.dirtyBytesPerSec === undefined ? ' (dirty rate unknown, assumed idle)' : '';
  const disks = disk > 0 ? ` after ${formatBytes(disk)} of LOCAL disks` : '';
  const figures = `${formatBytes(m)}${disks} at ${formatRate(b)}, dirty ${formatRate(d)}${known}`;
  if (!(b > 0)) return { durationMs: Infinity, mode: 'never', passes: 0, summary: `no bandwidth to send ${formatBytes(m + disk)}` };

  const threshold = (b * capability.downtimeMs) / 1000;
  // The storage copy first: the memory migration waits for every mirror.
  const storageSeconds = disk / b;
  let backlog = m;
  let seconds = storageSeconds;
  let passes = 0;
  while (passes < model.maxPasses) {
    seconds += backlog / b;
    passes++;
    const next = Math.min(m, (d * backlog) / b);
    if (next <= threshold) {
      seconds += next / b;
      const ms = seconds * 1000 + model.setupMs;
      return { durationMs: ms, mode: 'precopy', passes, summary: `pre-copy in ${passes} pass(es), ≈${formatDuration(ms)} (${figures})` };
    }
    if (next >= backlog) break; // r ≥ 1: the backlog no longer shrinks
    backlog = next;
  }

  const firstPass = storageSeconds + m / b;
  const dirtySet = Math.min(m, (d * m) / b);
  if (capability.postcopy) {
    const ms = (firstPass + dirtySet / b) * 1000 + model.setupMs;
    return { durationMs: ms, mode: 'postcopy', passes: 1, summary: `pre-copy cannot converge; post-copy after the first pass, ≈${formatDuration(ms)} (${figures})` };
  }
  if (capability.autoConverge) {
    // Throttle needed to bring r to ½, reached from 20 % in steps of 10 points, one per pass.
    const r = d / b;
    const needed = Math.min(0.99, 1 - 1 / (2 * r));
    const rampPasses = Math.max(0, Math.ceil((needed - 0.2) / 0.1)) + 1;
    const ms = (firstPass + (rampPasses * dirtySet) / b + (2 * dirtySet) / b) * 1000 + model.setupMs;
    return {
      durationMs: ms,
      mode: 'auto-converge',
      passes: 1 + rampPasses,
      summary: `pre-copy cannot converge; auto-converge to ≈${Math.round(needed * 100)}% throttle, ≈${formatDuration(ms)} (${figures})`,
    };
  }
  return { durationMs: Infinity, mode: 'never', passes, summary: `predicted never to converge: no post-copy or throttling allowed (${figures})` };
}

/** A drain request. */
export interface DrainRequest {
  readonly nodeId: string;
  /** Restrict destinations (empty or omitted: any up node). */
  readonly destinationNodeIds?: readonly string[] | undefined;
  readonly policy?: MigrationPolicy | undefined;
  /** `policy` already resolved by the caller (default: resolved here). */
  readonly policyAt?: PolicyResolution | undefined;
  /** VM names to keep apart (in addition to anti-affinity groups). */
  readonly keepApart?: readonly string[] | undefined;
  readonly limits?: Partial<ConcurrencyLimits> | undefined;
  readonly model?: Partial<TransferModel> | undefined;
  /** "makespan" (default): longest first. "mean-completion": shortest first. */
  readonly objective?: 'makespan' | 'mean-completion' | undefined;
}

/** One VM of a drain plan. */
export interface DrainEntry {
  readonly vmName: string;
  readonly source: string;
  readonly destination: string;
  /** Dispatch position (0 first). */
  readonly order: number;
  readonly memoryBytes: number;
  /** LOCAL-disk bytes the storage copy sends (0: none). */
  readonly diskBytes: number;
  readonly prediction: MigrationPrediction;
  /** How long it is expected to hold its slot: the prediction, or the completion timeout. */
  readonly slotMs: number;
  /** Why this destination and this position, in words. */
  readonly reason: string;
}

/** A drain plan. */
export interface DrainPlan {
  readonly sourceNodeId: string;
  /** In dispatch order. */
  readonly entries: readonly DrainEntry[];
  readonly objective: 'makespan' | 'mean-completion';
  readonly orderingReason: string;
  readonly limits: ConcurrencyLimits;
  readonly predictedMakespanMs: number;
  readonly firstComeMakespanMs: number;
  readonly predictedMeanCompletionMs: number;
  readonly firstComeMeanCompletionMs: number;
}

/** A simulated run of a plan. */
export interface DrainSimulation {
  readonly makespanMs: number;
  readonly meanCompletionMs: number;
  /** Per VM, in start order. */
  readonly timeline: readonly { readonly vmName: string; readonly destination: string; readonly startMs: number; readonly endMs: number }[];
}

/** The part of a plan a simulation needs. */
export type SimulatedEntry = Pick<DrainEntry, 'vmName' | 'source' | 'destination' | 'order' | 'slotMs'>;

/**
 * Runs `entries` through a {@link MigrationQueue} with `limits`, each holding its slot for
 * `durationMs(entry)` (default: its `slotMs`), and reports when each finishes.
 */
export function simulateDrain(
  plan: { readonly entries: readonly SimulatedEntry[] },
  limits: Partial<ConcurrencyLimits> = {},
  model: { durationMs?: (entry: SimulatedEntry) => number } = {},
): DrainSimulation {
  const queue = new MigrationQueue(limits);
  const byId = new Map<string, SimulatedEntry>();
  for (const e of plan.entries) {
    byId.set(e.vmName, e);
    queue.enqueue({ id: e.vmName, source: e.source, destination: e.destination, order: e.order });
  }
  const duration = model.durationMs ?? ((e: SimulatedEntry) => e.slotMs);
  const timeline: { vmName: string; destination: string; startMs: number; endMs: number }[] = [];
  const running: { id: string; endMs: number }[] = [];
  let now = 0;
  for (;;) {
    for (const item of queue.nextDispatchable()) {
      queue.started(item.id);
      const e = byId.get(item.id);
      const endMs = now + (e ? duration(e) : 0);
      running.push({ id: item.id, endMs });
      timeline.push({ vmName: item.id, destination: item.destination, startMs: now, endMs });
    }
    if (running.length === 0) break;
    now = Math.min(...running.map((r) => r.endMs));
    for (let i = running.length - 1; i >= 0; i--) {
      const r = running[i];
      if (r && r.endMs <= now) {
        queue.finished(r.id);
        running.splice(i, 1);
      }
    }
    if (!Number.isFinite(now)) break;
  }
  const ends = timeline.map((t) => t.endMs);
  return {
    makespanMs: ends.length === 0 ? 0 : Math.max(...ends),
    meanCompletionMs: ends.length === 0 ? 0 : ends.reduce((a, b) => a + b, 0) / ends.length,
    timeline,
  };
}

/**
 * Plans the drain of `request.nodeId`: destinations (placement, biggest VMs first so they find
 * room), predictions, and the dispatch order (see the module comment). VMs already migrating off
 * the node are left to their runs.
 * @throws NotFoundError unknown node; FailedPreconditionError node down; InvalidArgumentError bad
 *   policy or limits; ResourceExhaustedError a VM fits nowhere (naming it and why, per node)
 */
export function planDrain(cluster: ClusterModel, request: DrainRequest): DrainPlan {
  const source = findNode(cluster, request.nodeId);
  if (!source) throw new NotFoundError(`unknown node "${request.nodeId}"`, { reason: 'UNKNOWN_NODE' });
  if (!source.up) throw new FailedPreconditionError(`node "${source.id}" is down: its VMs cannot be migrated live`, { reason: 'SOURCE_DOWN' });
  const limits = resolveLimits(request.limits);
  const model = { ...DEFAULT_TRANSFER_MODEL, ...request.model };
  const objective = request.objective ?? 'makespan';
  const policyAt = request.policyAt ?? policyResolution(request.policy ?? MigrationPolicy.fromPartial({}));
  // One index for the whole drain, each placement's move added to it, so placing n VMs over N
  // nodes costs O(n·N) rather than O(n·N·(VMs + moves)). Before any is added, the VMs it knows
  // as moving are those of the cluster's planned moves.
  const index = new ClusterIndex(cluster);
  const vms = cluster.vms.filter((v) => v.nodeId === source.id && !v.migrating && !index.isMoving(v.name));

  // Placement, first-fit-decreasing: the biggest VMs are the hardest to fit.
  const placed = new Map<string, { destination: string; reason: string; capability: PolicyCapability }>();
  const allowed = allowedSet(request.destinationNodeIds);
  for (const vm of [...vms].sort((a, b) => b.memoryMib - a.memoryMib || (a.name < b.name ? -1 : 1))) {
    const convergence = policyAt(vmMemoryBytes(vm));
    const p = placeVm(cluster, vm.name, {
      allowedDestinations: allowed,
      requiredCapabilities: convergence.requirements.capabilities,
      keepApart: request.keepApart,
      index,
    });
    index.addMove(p.move);
    placed.set(vm.name, { destination: p.destination, reason: p.reason, capability: capabilityOf(convergence) });
  }

  // Predictions, in first-come (listing) order.
  const firstCome = vms.map((vm, i) => {
    const where = placed.get(vm.name);
    const destination = where?.destination ?? '';
    const capability = where?.capability ?? capabilityOf(policyAt(vmMemoryBytes(vm)));
    const prediction = predictMigration(
      {
        memoryBytes: vmMemoryBytes(vm),
        diskBytes: vm.diskTransferBytes ?? 0,
        dirtyBytesPerSec: vm.dirtyRateBytesPerSec,
        bandwidthBytesPerSec: linkBandwidth(cluster, source.id, destination) ?? model.defaultBandwidthBytesPerSec,
      },
      capability,
      model,
    );
    // One that never finishes holds its slot until its completion timeout, LOCAL disks included.
    const budgetMs = completionBudgetMs({ completionMs: capability.completionTimeoutMs, completionSecPerGib: capability.completionSecPerGib }, vm.diskTransferBytes ?? 0);
    const slotMs = Number.isFinite(prediction.durationMs) ? prediction.durationMs : (budgetMs ?? Infinity) + (budgetMs ? model.setupMs : 0);
    return { vmName: vm.name, source: source.id, destination, order: i, memoryBytes: vmMemoryBytes(vm), diskBytes: vm.diskTransferBytes ?? 0, prediction, slotMs, placement: where?.reason ?? '' };
  });

  // Rank by the objective (never-finishing last), then let the queue turn ranks into a start order.
  const finite = (e: { prediction: MigrationPrediction }): number => (Number.isFinite(e.prediction.durationMs) ? 0 : 1);
  const ranked = [...firstCome]
    .sort((a, b) => finite(a) - finite(b) || (objective === 'makespan' ? b.slotMs - a.slotMs : a.slotMs - b.slotMs) || (a.vmName < b.vmName ? -1 : 1))
    .map((e, i) => ({ ...e, order: i }));
  const sim = simulateDrain({ entries: ranked }, limits);
  const startOrder = new Map(sim.timeline.map((t, i) => [t.vmName, { i, startMs: t.startMs, endMs: t.endMs }]));
  const rule = objective === 'makespan' ? 'longest predicted first' : 'shortest predicted first';
  const n = ranked.length;
  const entries: DrainEntry[] = ranked
    .map((e) => ({ e, at: startOrder.get(e.vmName) }))
    .sort((a, b) => (a.at?.i ?? 0) - (b.at?.i ?? 0))
    .map(({ e, at }, order) => {
      const position = !Number.isFinite(e.prediction.durationMs)
        ? `last: ${e.prediction.summary}${Number.isFinite(e.slotMs) ? `, holding a slot until its completion timeout (≈${formatDuration(e.slotMs)})` : ''}`
        : `${rule}: ${e.prediction.summary}`;
      const when = at && Number.isFinite(at.startMs) ? `; expected to run ${formatDuration(at.startMs)} → ${formatDuration(at.endMs)}` : '';
      return {
        vmName: e.vmName,
        source: e.source,
        destination: e.destination,
        order,
        memoryBytes: e.memoryBytes,
        diskBytes: e.diskBytes,
        prediction: e.prediction,
        slotMs: e.slotMs,
        reason: `destination ${e.placement}; position ${order + 1}/${n}, ${position}${when}`,
      };
    });

  const fc = simulateDrain({ entries: firstCome }, limits);
  const planned = simulateDrain({ entries }, limits);
  const slots = `${limits.perSource} outbound from ${source.id}, ${limits.perLink} per link, ${limits.perDestination} inbound per destination, ${limits.perCluster} in the cluster`;
  const orderingReason =
    n === 0
      ? `nothing to drain: ${source.id} has no VM that is not already migrating`
      : objective === 'makespan'
        ? `longest predicted migration first (LPT list scheduling within the limits: ${slots}), so no long migration starts last and runs alone while the other slots idle: host empty after ≈${formatDuration(planned.makespanMs)} predicted vs ≈${formatDuration(fc.makespanMs)} in first-come order`
        : `shortest predicted migration first (minimises the mean completion time within the limits: ${slots}): mean completion ≈${formatDuration(planned.meanCompletionMs)} vs ≈${formatDuration(fc.meanCompletionMs)} in first-come order; host empty after ≈${formatDuration(planned.makespanMs)}`;
  return {
    sourceNodeId: source.id,
    entries,
    objective,
    orderingReason,
    limits,
    predictedMakespanMs: planned.makespanMs,
    firstComeMakespanMs: fc.makespanMs,
    predictedMeanCompletionMs: planned.meanCompletionMs,
    firstComeMeanCompletionMs: fc.meanCompletionMs,
  };
}
