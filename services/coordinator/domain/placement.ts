/**
 * Placement: which node a VM may move to, and which one it should.
 *
 * A destination must be up, not the source, support the capabilities the migration policy needs
 * (post-copy needs `postcopy-ram` on both ends…), have the VM's memory free after what already
 * planned inbound migrations reserve, and not break anti-affinity: VMs sharing a group never share
 * a node, and neither do the VMs a request names to keep apart. Among the eligible nodes the one
 * with the most free memory wins, then the one with the fewest inbound migrations (spreading the
 * inbound streams, which compete for the destination's NIC), then the lowest id (determinism).
 */
import { FailedPreconditionError, NotFoundError, ResourceExhaustedError } from '../../shared/errors.js';
import {
  type ClusterModel,
  type NodeModel,
  type PlannedMove,
  type VmModel,
  allMoves,
  effectiveLocations,
  findNode,
  findVm,
  inboundReservations,
  vmMemoryBytes,
} from './cluster.js';
import { formatBytes } from './units.js';

/** What a placement must respect besides the cluster itself. */
export interface PlacementOptions {
  /** The requested destination; omitted lets placement choose. */
  readonly destination?: string | undefined;
  /** Restrict choices to these nodes (a drain's destination_node_ids); empty or omitted: any. */
  readonly allowedDestinations?: readonly string[] | undefined;
  /** Capabilities both ends must support (see policy `requirements.capabilities`). */
  readonly requiredCapabilities?: readonly string[] | undefined;
  /** VM names whose destinations must be kept apart (SubmitPlanRequest.anti_affinity_vm_names). */
  readonly keepApart?: readonly string[] | undefined;
  /** Moves planned earlier in the same plan, on top of the cluster's own. */
  readonly plannedMoves?: readonly PlannedMove[] | undefined;
}

/** The verdict on one candidate node. */
export interface NodeVerdict {
  readonly nodeId: string;
  readonly eligible: boolean;
  /** Why not, in words (empty when eligible). */
  readonly problems: readonly string[];
  /** Free memory after planned inbound reservations, before this VM. */
  readonly availableBytes: number;
  /** Planned or running inbound migrations. */
  readonly inbound: number;
}

/** A chosen destination. */
export interface Placement {
  readonly vmName: string;
  readonly source: string;
  readonly destination: string;
  readonly memoryBytes: number;
  /** The planned move to add to later placements of the same plan. */
  readonly move: PlannedMove;
  /** Why this node, in words. */
  readonly reason: string;
  readonly verdicts: readonly NodeVerdict[];
}

/**
 * Resolves the VM to migrate and checks that it can leave its node.
 * @throws NotFoundError unknown VM; FailedPreconditionError VM already migrating, source node
 *   unknown or down, or the source lacks a required capability
 */
export function migratableVm(cluster: ClusterModel, vmName: string, requiredCapabilities: readonly string[] = []): { vm: VmModel; source: NodeModel } {
  const vm = findVm(cluster, vmName);
  if (!vm) throw new NotFoundError(`unknown VM "${vmName}"`, { reason: 'UNKNOWN_VM' });
  if (vm.migrating || allMoves(cluster).some((m) => m.vmName === vmName)) {
    throw new FailedPreconditionError(`VM "${vmName}" is already migrating`, { reason: 'VM_ALREADY_MIGRATING' });
  }
  const source = findNode(cluster, vm.nodeId);
  if (!source) throw new FailedPreconditionError(`VM "${vmName}" is on unknown node "${vm.nodeId}"`, { reason: 'SOURCE_UNKNOWN' });
  if (!source.up) throw new FailedPreconditionError(`VM "${vmName}" is on node "${source.id}", which is down: it cannot be migrated live`, { reason: 'SOURCE_DOWN' });
  const missing = requiredCapabilities.filter((c) => !source.capabilities.includes(c));
  if (missing.length > 0) {
    throw new FailedPreconditionError(`source node "${source.id}" lacks migration capabilities the policy needs: ${missing.join(', ')}`, { reason: 'MISSING_CAPABILITY' });
  }
  return { vm, source };
}

/** Judges every node as a destination for `vm`. Pure; never throws. */
export function evaluateDestinations(cluster: ClusterModel, vm: VmModel, opts: PlacementOptions = {}): NodeVerdict[] {
  const moves = allMoves(cluster, opts.plannedMoves);
  const at = effectiveLocations(cluster, moves);
  const need = vmMemoryBytes(vm);
  const allowed = opts.allowedDestinations && opts.allowedDestinations.length > 0 ? new Set(opts.allowedDestinations) : undefined;
  const keepApart = new Set(opts.keepApart ?? []);
  const required = opts.requiredCapabilities ?? [];

  return cluster.nodes.map((node) => {
    const problems: string[] = [];
    const reserved = inboundReservations(moves, node.id);
    const availableBytes = node.memoryFreeBytes - reserved.bytes;
    if (node.id === vm.nodeId) problems.push('is the source');
    if (allowed && !allowed.has(node.id)) problems.push('is not among the requested destinations');
    if (!node.up) problems.push('is down');
    const missing = required.filter((c) => !node.capabilities.includes(c));
    if (missing.length > 0) problems.push(`lacks ${missing.join(', ')}`);
    if (availableBytes < need) {
      const reservedNote = reserved.bytes > 0 ? ` after ${formatBytes(reserved.bytes)} reserved by ${reserved.count} planned migration(s)` : '';
      problems.push(`needs ${formatBytes(need)} but has ${formatBytes(Math.max(0, availableBytes))} free${reservedNote}`);
    }
    for (const other of cluster.vms) {
      if (other.name === vm.name || at.get(other.name) !== node.id) continue;
      if (vm.antiAffinityGroup && other.antiAffinityGroup === vm.antiAffinityGroup) {
        problems.push(`would share the node with "${other.name}" (anti-affinity group "${vm.antiAffinityGroup}")`);
      } else if (keepApart.has(vm.name) && keepApart.has(other.name)) {
        problems.push(`would share the node with "${other.name}" (requested to be kept apart)`);
      }
    }
    return { nodeId: node.id, eligible: problems.length === 0, problems, availableBytes, inbound: reserved.count };
  });
}

/** Most free memory first, then fewest inbound, then lowest id. */
function rank(a: NodeVerdict, b: NodeVerdict): number {
  return b.availableBytes - a.availableBytes || a.inbound - b.inbound || (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0);
}

/**
 * Chooses (or checks) the destination of one VM.
 * @throws NotFoundError unknown VM or destination node; FailedPreconditionError the VM cannot
 *   leave its node (see {@link migratableVm}), or the requested destination is the source, is
 *   down, lacks a capability or would break anti-affinity; ResourceExhaustedError the requested
 *   destination lacks memory, or no node can take the VM (the message says why, per node)
 */
export function placeVm(cluster: ClusterModel, vmName: string, opts: PlacementOptions = {}): Placement {
  const { vm, source } = migratableVm(cluster, vmName, opts.requiredCapabilities);
  const verdicts = evaluateDestinations(cluster, vm, opts);
  const memoryBytes = vmMemoryBytes(vm);
  const placed = (destination: string, reason: string): Placement => ({
    vmName,
    source: source.id,
    destination,
    memoryBytes,
    move: { vmName, from: source.id, to: destination, memoryBytes },
    reason,
    verdicts,
  });

  if (opts.destination !== undefined && opts.destination !== '') {
    const dest = opts.destination;
    const node = findNode(cluster, dest);
    if (!node) throw new NotFoundError(`unknown destination node "${dest}"`, { reason: 'UNKNOWN_NODE' });
    if (dest === source.id) throw new FailedPreconditionError(`destination "${dest}" is the VM's source node`, { reason: 'DESTINATION_IS_SOURCE' });
    if (!node.up) throw new FailedPreconditionError(`destination "${dest}" is down`, { reason: 'DESTINATION_DOWN' });
    const verdict = verdicts.find((v) => v.nodeId === dest);
    if (verdict && !verdict.eligible) {
      const memoryOnly = verdict.problems.every((p) => p.startsWith('needs '));
      const msg = `cannot migrate "${vmName}" to "${dest}": it ${verdict.problems.join('; ')}`;
      if (memoryOnly) throw new ResourceExhaustedError(msg, { reason: 'INSUFFICIENT_MEMORY' });
      throw new FailedPreconditionError(msg, { reason: 'DESTINATION_UNSUITABLE' });
    }
    return placed(dest, `${dest}: requested destination (${formatBytes(verdict?.availableBytes ?? 0)} free before this VM)`);
  }

  const eligible = verdicts.filter((v) => v.eligible).sort(rank);
  const best = eligible[0];
  if (!best) {
    const perNode = verdicts
      .filter((v) => v.nodeId !== source.id)
      .map((v) => `${v.nodeId} ${v.problems.join(' and ')}`)
      .join('; ');
    throw new ResourceExhaustedError(`no node can take VM "${vmName}" (${formatBytes(memoryBytes)}): ${perNode || 'the cluster has no other node'}`, {
      reason: 'NO_DESTINATION',
    });
  }
  const runnerUp = eligible[1];
  let why: string;
  if (!runnerUp) why = 'the only eligible node';
  else if (runnerUp.availableBytes < best.availableBytes) why = `most free memory of ${eligible.length} eligible nodes`;
  else if (runnerUp.inbound > best.inbound) why = `tied with ${runnerUp.nodeId} on free memory, fewer inbound migrations`;
  else why = `tied with ${runnerUp.nodeId} on free memory and inbound migrations, lowest id`;
  return placed(best.nodeId, `${best.nodeId}: ${why} (${formatBytes(best.availableBytes)} free after reservations, ${best.inbound} inbound)`);
}
