/**
 * Placement: which node a VM may move to, and which one it should.
 *
 * A destination must be up, not the source, support the capabilities the migration policy needs
 * (post-copy needs `postcopy-ram` on both ends…), have the VM's memory free after what already
 * planned inbound migrations reserve, have the storage its LOCAL disks need free (see
 * `localDiskSpace`: a raw disk's virtual size, a qcow2 disk's allocation, plus a margin) after what
 * the migrations in flight to it were promised, and not break anti-affinity: VMs sharing a group
 * never share a node, and neither do the VMs a request names to keep apart. A node that does not
 * report its storage is not checked (its own PrepareIncoming check still is). Among the eligible nodes the one
 * with the most free memory wins, then the one with the fewest inbound migrations (spreading the
 * inbound streams, which compete for the destination's NIC), then the lowest id (determinism).
 */
import { FailedPreconditionError, NotFoundError, ResourceExhaustedError } from '../../shared/errors.js';
import { type ClusterModel, ClusterIndex, type NodeModel, type PlannedMove, storageMargin, type VmModel, vmMemoryBytes } from './cluster.js';
import { formatBytes } from './units.js';

/** What a placement must respect besides the cluster itself. */
export interface PlacementOptions {
  /** The requested destination; omitted lets placement choose. */
  readonly destination?: string | undefined;
  /**
   * Restrict choices to these nodes (a drain's destination_node_ids); empty or omitted: any. A set
   * when one is placing many VMs (a drain builds it once rather than once per VM).
   */
  readonly allowedDestinations?: readonly string[] | ReadonlySet<string> | undefined;
  /** Capabilities both ends must support (see policy `requirements.capabilities`). */
  readonly requiredCapabilities?: readonly string[] | undefined;
  /** VM names whose destinations must be kept apart (SubmitPlanRequest.anti_affinity_vm_names). */
  readonly keepApart?: readonly string[] | undefined;
  /** Moves planned earlier in the same plan, on top of the cluster's own. */
  readonly plannedMoves?: readonly PlannedMove[] | undefined;
  /**
   * A prebuilt index of the same cluster, with the plan's earlier moves already added (a plan
   * placing many VMs builds it once and calls `addMove` after each placement); `plannedMoves` is
   * then ignored.
   */
  readonly index?: ClusterIndex | undefined;
}

function indexFor(cluster: ClusterModel, opts: PlacementOptions): ClusterIndex {
  return opts.index ?? new ClusterIndex(cluster, opts.plannedMoves);
}

/** The allowed destinations as a set; undefined when any node is allowed (none given). */
export function allowedSet(nodes: readonly string[] | ReadonlySet<string> | undefined): ReadonlySet<string> | undefined {
  if (nodes === undefined) return undefined;
  if (isSet(nodes)) return nodes.size > 0 ? nodes : undefined;
  return nodes.length > 0 ? new Set(nodes) : undefined;
}

function isSet(nodes: readonly string[] | ReadonlySet<string>): nodes is ReadonlySet<string> {
  return !Array.isArray(nodes);
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
  /** Set when the node lacks the storage for the VM's LOCAL disks (margin included). */
  readonly storageShort?: { readonly neededBytes: number; readonly freeBytes: number; readonly promisedBytes: number; readonly promisedTo: number } | undefined;
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
export function migratableVm(
  cluster: ClusterModel,
  vmName: string,
  requiredCapabilities: readonly string[] = [],
  index: ClusterIndex = new ClusterIndex(cluster),
): { vm: VmModel; source: NodeModel } {
  const vm = index.vm(vmName);
  if (!vm) throw new NotFoundError(`unknown VM "${vmName}"`, { reason: 'UNKNOWN_VM' });
  if (vm.migrating || index.isMoving(vmName)) {
    throw new FailedPreconditionError(`VM "${vmName}" is already migrating`, { reason: 'VM_ALREADY_MIGRATING' });
  }
  const source = index.node(vm.nodeId);
  if (!source) throw new FailedPreconditionError(`VM "${vmName}" is on unknown node "${vm.nodeId}"`, { reason: 'SOURCE_UNKNOWN' });
  if (!source.up) throw new FailedPreconditionError(`VM "${vmName}" is on node "${source.id}", which is down: it cannot be migrated live`, { reason: 'SOURCE_DOWN' });
  const missing = requiredCapabilities.filter((c) => !source.capabilities.includes(c));
  if (missing.length > 0) {
    throw new FailedPreconditionError(`source node "${source.id}" lacks migration capabilities the policy needs: ${missing.join(', ')}`, { reason: 'MISSING_CAPABILITY' });
  }
  return { vm, source };
}

/**
 * Judges every node as a destination for `vm`. Pure; never throws. With `opts.index` it costs
 * O(nodes + kept-apart VMs); anti-affinity conflicts are listed in the order the VMs were indexed.
 */
export function evaluateDestinations(cluster: ClusterModel, vm: VmModel, opts: PlacementOptions = {}): NodeVerdict[] {
  const index = indexFor(cluster, opts);
  const need = vmMemoryBytes(vm);
  const diskNeed = (vm.diskSpaceBytes ?? 0) > 0 ? vm.diskSpaceBytes! + storageMargin(vm.diskSpaceBytes!) : 0;
  const allowed = allowedSet(opts.allowedDestinations);
  const required = opts.requiredCapabilities ?? [];
  // The other kept-apart VMs, by where they are (or will be).
  const apartOn = new Map<string, string[]>();
  if (opts.keepApart?.includes(vm.name)) {
    for (const name of new Set(opts.keepApart)) {
      const at = name === vm.name || !index.vm(name) ? undefined : index.location(name);
      if (at === undefined) continue;
      const list = apartOn.get(at);
      if (list) list.push(name);
      else apartOn.set(at, [name]);
    }
  }

  return cluster.nodes.map((node) => {
    const problems: string[] = [];
    const reserved = index.reservations(node.id);
    const availableBytes = node.memoryFreeBytes - reserved.bytes;
    if (node.id === vm.nodeId) problems.push('is the source');
    if (allowed && !allowed.has(node.id)) problems.push('is not among the requested destinations');
    if (!node.up) problems.push('is down');
    if (required.length > 0 && !required.every((c) => node.capabilities.includes(c))) {
      problems.push(`lacks ${required.filter((c) => !node.capabilities.includes(c)).join(', ')}`);
    }
    if (availableBytes < need) {
      const reservedNote = reserved.bytes > 0 ? ` after ${formatBytes(reserved.bytes)} reserved by ${reserved.count} planned migration(s)` : '';
      problems.push(`needs ${formatBytes(need)} but has ${formatBytes(Math.max(0, availableBytes))} free${reservedNote}`);
    }
    let storageShort: NodeVerdict['storageShort'];
    if (diskNeed > 0 && node.storageFreeBytes !== undefined && node.storageFreeBytes - reserved.diskBytes < diskNeed) {
      storageShort = { neededBytes: diskNeed, freeBytes: node.storageFreeBytes, promisedBytes: reserved.diskBytes, promisedTo: reserved.count };
      problems.push(`has too little storage: ${storageWords(vm, storageShort)}`);
    }
    // Allocated only for a VM with a group: a drain judges every node for each of its VMs.
    const shared = vm.antiAffinityGroup ? new Set<string>() : undefined;
    if (vm.antiAffinityGroup) {
      for (const other of index.groupOn(vm.antiAffinityGroup, node.id)) {
        if (other === vm.name) continue;
        shared?.add(other);
        problems.push(`would share the node with "${other}" (anti-affinity group "${vm.antiAffinityGroup}")`);
      }
    }
    const apart = apartOn.size > 0 ? apartOn.get(node.id) : undefined;
    for (const other of apart ?? []) {
      if (!shared?.has(other)) problems.push(`would share the node with "${other}" (requested to be kept apart)`);
    }
    const verdict: { -readonly [K in keyof NodeVerdict]: NodeVerdict[K] } = { nodeId: node.id, eligible: problems.length === 0, problems, availableBytes, inbound: reserved.count };
    if (storageShort) verdict.storageShort = storageShort;
    return verdict;
  });
}

/** "the LOCAL disks of … need N bytes … but it has M bytes free …", exact bytes first. */
export function storageWords(vm: Pick<VmModel, 'name' | 'diskSpaceBytes'>, s: NonNullable<NodeVerdict['storageShort']>): string {
  const promised = s.promisedBytes > 0 ? ` of which ${s.promisedBytes} bytes (${formatBytes(s.promisedBytes)}) are promised to ${s.promisedTo} migration(s) in flight to it` : '';
  return (
    `the LOCAL disks of "${vm.name}" need ${s.neededBytes} bytes (${formatBytes(s.neededBytes)}, a ${formatBytes(storageMargin(vm.diskSpaceBytes ?? 0))} margin included) ` +
    `but its storage root has ${s.freeBytes} bytes (${formatBytes(s.freeBytes)}) free${promised}`
  );
}

/** Most free memory first, then fewest inbound, then lowest id. */
function rank(a: NodeVerdict, b: NodeVerdict): number {
  return b.availableBytes - a.availableBytes || a.inbound - b.inbound || (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0);
}

/**
 * The two best eligible verdicts by {@link rank} and how many are eligible, in one pass (a drain
 * ranks every node for each of its VMs: sorting them all was most of a large plan's time).
 */
export function bestTwo(verdicts: readonly NodeVerdict[]): { best: NodeVerdict | undefined; runnerUp: NodeVerdict | undefined; eligible: number } {
  let best: NodeVerdict | undefined;
  let runnerUp: NodeVerdict | undefined;
  let eligible = 0;
  for (const v of verdicts) {
    if (!v.eligible) continue;
    eligible++;
    if (!best || rank(v, best) < 0) {
      runnerUp = best;
      best = v;
    } else if (!runnerUp || rank(v, runnerUp) < 0) runnerUp = v;
  }
  return { best, runnerUp, eligible };
}

/**
 * Chooses (or checks) the destination of one VM.
 * @throws NotFoundError unknown VM or destination node; FailedPreconditionError the VM cannot
 *   leave its node (see {@link migratableVm}), or the requested destination is the source, is
 *   down, lacks a capability or would break anti-affinity; ResourceExhaustedError the requested
 *   destination lacks memory (INSUFFICIENT_MEMORY), storage for the LOCAL disks
 *   (INSUFFICIENT_STORAGE) or both (INSUFFICIENT_RESOURCES), or no node can take the VM
 *   (NO_DESTINATION; the message says why, per node)
 */
export function placeVm(cluster: ClusterModel, vmName: string, opts: PlacementOptions = {}): Placement {
  const index = indexFor(cluster, opts);
  const { vm, source } = migratableVm(cluster, vmName, opts.requiredCapabilities, index);
  const verdicts = evaluateDestinations(cluster, vm, { ...opts, index });
  const memoryBytes = vmMemoryBytes(vm);
  const placed = (destination: string, reason: string): Placement => ({
    vmName,
    source: source.id,
    destination,
    memoryBytes,
    move: { vmName, from: source.id, to: destination, memoryBytes, ...(vm.diskSpaceBytes ? { diskBytes: vm.diskSpaceBytes } : {}) },
    reason,
    verdicts,
  });

  if (opts.destination !== undefined && opts.destination !== '') {
    const dest = opts.destination;
    const node = index.node(dest);
    if (!node) throw new NotFoundError(`unknown destination node "${dest}"`, { reason: 'UNKNOWN_NODE' });
    if (dest === source.id) throw new FailedPreconditionError(`destination "${dest}" is the VM's source node`, { reason: 'DESTINATION_IS_SOURCE' });
    if (!node.up) throw new FailedPreconditionError(`destination "${dest}" is down`, { reason: 'DESTINATION_DOWN' });
    const verdict = verdicts.find((v) => v.nodeId === dest);
    if (verdict && !verdict.eligible) {
      // Too little memory or storage is RESOURCE_EXHAUSTED (as the node's own checks answer);
      // anything else about the node (capabilities, anti-affinity) is FAILED_PRECONDITION.
      if (verdict.storageShort && verdict.problems.length === 1) {
        throw new ResourceExhaustedError(`cannot migrate "${vmName}" to node "${dest}": ${storageWords(vm, verdict.storageShort)}`, { reason: 'INSUFFICIENT_STORAGE' });
      }
      const isMemory = (p: string): boolean => p.startsWith('needs ');
      const isStorage = (p: string): boolean => p.startsWith('has too little storage');
      const msg = `cannot migrate "${vmName}" to "${dest}": it ${verdict.problems.join('; ')}`;
      if (verdict.problems.every(isMemory)) throw new ResourceExhaustedError(msg, { reason: 'INSUFFICIENT_MEMORY' });
      if (verdict.problems.every((p) => isMemory(p) || isStorage(p))) throw new ResourceExhaustedError(msg, { reason: 'INSUFFICIENT_RESOURCES' });
      throw new FailedPreconditionError(msg, { reason: 'DESTINATION_UNSUITABLE' });
    }
    return placed(dest, `${dest}: requested destination (${formatBytes(verdict?.availableBytes ?? 0)} free before this VM)`);
  }

  const { best, runnerUp, eligible } = bestTwo(verdicts);
  if (!best) {
    const perNode = verdicts
      .filter((v) => v.nodeId !== source.id)
      .map((v) => `${v.nodeId} ${v.problems.join(' and ')}`)
      .join('; ');
    throw new ResourceExhaustedError(`no node can take VM "${vmName}" (${formatBytes(memoryBytes)}): ${perNode || 'the cluster has no other node'}`, {
      reason: 'NO_DESTINATION',
    });
  }
  let why: string;
  if (!runnerUp) why = 'the only eligible node';
  else if (runnerUp.availableBytes < best.availableBytes) why = `most free memory of ${eligible} eligible nodes`;
  else if (runnerUp.inbound > best.inbound) why = `tied with ${runnerUp.nodeId} on free memory, fewer inbound migrations`;
  else why = `tied with ${runnerUp.nodeId} on free memory and inbound migrations, lowest id`;
  return placed(best.nodeId, `${best.nodeId}: ${why} (${formatBytes(best.availableBytes)} free after reservations, ${best.inbound} inbound)`);
}
