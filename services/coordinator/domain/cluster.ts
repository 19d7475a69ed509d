/**
 * The cluster as placement, the queue and drain planning see it: plain data, built by the caller
 * from the node registry and the run store (see {@link clusterFromProto}). Nothing here talks to a
 * node; a snapshot goes in, a decision comes out.
 */
import { DiskFormat, StorageMode, VmState, type DiskSpec, type VmInfo } from '../../shared/gen/migd/v1/common.js';
import { NodeStatus, type Node } from '../../shared/gen/migd/v1/coordinator.js';
import { MiB } from './units.js';

/** A hypervisor node. */
export interface NodeModel {
  readonly id: string;
  /** Heart-beating; nothing is placed on a down node and nothing can leave it live. */
  readonly up: boolean;
  readonly memoryTotalBytes: number;
  /** Memory available for new guests as the node last reported it. */
  readonly memoryFreeBytes: number;
  /** Migration capabilities the node's QEMU supports (QMP names, e.g. "postcopy-ram"). */
  readonly capabilities: readonly string[];
  /**
   * Free bytes where the node creates the images of LOCAL disks (its first storage root) as it
   * last reported them; undefined when it does not report them (then no disk space is checked).
   */
  readonly storageFreeBytes?: number | undefined;
}

/** A VM on a node. */
export interface VmModel {
  readonly name: string;
  readonly nodeId: string;
  readonly memoryMib: number;
  /** VMs sharing a non-empty group are never placed on the same node. */
  readonly antiAffinityGroup?: string | undefined;
  /** Measured dirty rate in bytes per second (from an earlier migration or a probe), if known. */
  readonly dirtyRateBytesPerSec?: number | undefined;
  /** Already the subject of a queued or running migration. */
  readonly migrating?: boolean | undefined;
  /**
   * Bytes of LOCAL disks a migration copies over the link besides the memory: their allocation,
   * backing chains included (0 or undefined: no LOCAL disk, or not reported).
   */
  readonly diskTransferBytes?: number | undefined;
  /** Storage a destination must have free for the LOCAL disks (see {@link localDiskSpace}). */
  readonly diskSpaceBytes?: number | undefined;
}

/** Measured or configured bandwidth of the migration path from one node to another. */
export interface LinkEstimate {
  readonly from: string;
  readonly to: string;
  readonly bandwidthBytesPerSec: number;
}

/**
 * A migration already planned (queued or running) whose destination memory is not yet visible in
 * the destination's reported free memory. Placement reserves it, and counts the VM as being on
 * `to` for anti-affinity.
 */
export interface PlannedMove {
  readonly vmName: string;
  readonly from: string;
  readonly to: string;
  readonly memoryBytes: number;
  /** Storage the move's LOCAL disks take on `to` (see {@link localDiskSpace}). */
  readonly diskBytes?: number | undefined;
}

/** A snapshot of the cluster. */
export interface ClusterModel {
  readonly nodes: readonly NodeModel[];
  readonly vms: readonly VmModel[];
  readonly links?: readonly LinkEstimate[] | undefined;
  readonly plannedMoves?: readonly PlannedMove[] | undefined;
}

export function vmMemoryBytes(vm: VmModel): number {
  return vm.memoryMib * MiB;
}

/**
 * Storage the LOCAL disks of a VM need on a destination, from what its node reports
 * (VmInfo.local_disks) and the spec's formats. What a user expects of each format:
 *  - raw: the virtual size. Raw has no thin provisioning of its own: a sparse raw file is the file
 *    system's doing, the guest may fill the disk at any time, and whoever sized a raw disk meant
 *    that size (oVirt calls this "preallocated");
 *  - qcow2: the allocation of the image and its backing chain. qcow2 is thin by design: it grows
 *    as the guest writes, and a full copy writes only what is allocated (the chain, flattened, when
 *    the destination lacks the base; counted in full, since placement cannot see which bases a
 *    node has).
 */
export function localDiskSpace(vm: Pick<VmInfo, 'spec' | 'localDisks'>): { spaceBytes: number; transferBytes: number } {
  // Most VMs report no LOCAL disk: no map of their specs (the model is built for every plan, over every VM).
  if (!vm.localDisks || vm.localDisks.length === 0) return NO_DISK_SPACE;
  const specs = new Map((vm.spec?.disks ?? []).map((d) => [d.id, d]));
  let spaceBytes = 0;
  let transferBytes = 0;
  for (const u of vm.localDisks ?? []) {
    const d = specs.get(u.id);
    if (d?.storage === StorageMode.STORAGE_MODE_SHARED) continue;
    transferBytes += u.allocatedBytes;
    spaceBytes += d?.format === DiskFormat.DISK_FORMAT_QCOW2 ? u.allocatedBytes : Math.max(u.virtualBytes, u.allocatedBytes);
  }
  return { spaceBytes, transferBytes };
}

const NO_DISK_SPACE: { readonly spaceBytes: number; readonly transferBytes: number } = Object.freeze({ spaceBytes: 0, transferBytes: 0 });

/**
 * Storage the LOCAL disks a CreateVm spec asks its node to create will take there, by the rule of
 * {@link localDiskSpace}: a new raw disk its size (sparse or not, the guest may fill it), a new
 * qcow2 disk or overlay its allocation, which is next to nothing at creation. Disks that exist
 * already, and SHARED ones (on storage the node's reported root does not describe), count 0.
 */
export function createdDiskSpace(disks: readonly Pick<DiskSpec, 'format' | 'storage' | 'create'>[]): number {
  let bytes = 0;
  for (const d of disks) {
    if (d.storage === StorageMode.STORAGE_MODE_SHARED || !d.create || d.format === DiskFormat.DISK_FORMAT_QCOW2) continue;
    if (!d.create.basePath) bytes += Math.max(0, d.create.sizeBytes);
  }
  return bytes;
}

/**
 * The safety margin on top of {@link localDiskSpace}: 32 MiB plus 5 %, for qcow2 metadata, what
 * the guest writes while its disks are copied and the statfs figure's age (a heartbeat old).
 */
export function storageMargin(diskBytes: number): number {
  return diskBytes > 0 ? 32 * MiB + Math.ceil(diskBytes / 20) : 0;
}

export function findNode(cluster: ClusterModel, id: string): NodeModel | undefined {
  return cluster.nodes.find((n) => n.id === id);
}

export function findVm(cluster: ClusterModel, name: string): VmModel | undefined {
  return cluster.vms.find((v) => v.name === name);
}

/** The bandwidth estimate of the ordered pair (from, to), if one is known. */
export function linkBandwidth(cluster: ClusterModel, from: string, to: string): number | undefined {
  return cluster.links?.find((l) => l.from === from && l.to === to)?.bandwidthBytesPerSec;
}

/** Every planned move: the cluster's own plus `extra` (e.g. earlier entries of the plan being built). */
export function allMoves(cluster: ClusterModel, extra: readonly PlannedMove[] = []): readonly PlannedMove[] {
  return [...(cluster.plannedMoves ?? []), ...extra];
}

/**
 * The model of each VM report without dirty rates and planned moves (see clusterFromProto). A
 * report must not change once modelled (the registry's never do: it replaces them); the models
 * are shared between the clusters built from it and must not change either (VmModel is readonly).
 */
const reportModels = new WeakMap<VmInfo, VmModel>();

/** A move that promises no LOCAL-disk storage (see clusterFromProto). */
const NO_DISK_BYTES: { diskBytes?: number } = Object.freeze({});

/** A node's reservations when no planned move goes there. */
const NO_RESERVATION = Object.freeze({ bytes: 0, count: 0, diskBytes: 0 });

/**
 * Lookups over one snapshot for placement, built once per plan and kept current as the plan adds
 * moves, so placing each VM of a large drain costs O(nodes) instead of O(nodes × (VMs + moves)):
 * nodes and VMs by name, inbound reservations per node, where each VM is (or will be once the
 * planned moves are done), and per anti-affinity group the VMs on each node.
 */
export class ClusterIndex {
  private readonly nodes = new Map<string, NodeModel>();
  private readonly vms = new Map<string, VmModel>();
  private readonly reserved = new Map<string, { bytes: number; count: number; diskBytes: number }>();
  /** Where a VM with a planned move will be (the others are where the cluster has them). */
  private readonly at = new Map<string, string>();
  /** group → node → VM names, in insertion order. */
  private readonly groups = new Map<string, Map<string, Set<string>>>();
  private readonly moving = new Set<string>();

  /** Indexes `cluster` with its own planned moves, then `extra` (see {@link allMoves}). */
  constructor(cluster: ClusterModel, extra: readonly PlannedMove[] = []) {
    for (const n of cluster.nodes) if (!this.nodes.has(n.id)) this.nodes.set(n.id, n);
    // Per VM only its name (a 500-node cluster's 10 000 VMs are indexed on every SubmitPlan):
    // where it is comes from the VM itself until a move places it elsewhere.
    // The first VM of a name wins: set from the last to the first, one map operation each.
    const vms = cluster.vms;
    for (let i = vms.length - 1; i >= 0; i--) this.vms.set(vms[i]!.name, vms[i]!);
    const grouped = new Set<string>();
    for (const v of vms) {
      if (!v.antiAffinityGroup || grouped.has(v.name)) continue;
      grouped.add(v.name);
      if (this.vms.get(v.name) === v) this.place(v.name, v.nodeId);
    }
    for (const m of allMoves(cluster, extra)) this.addMove(m);
  }

  node(id: string): NodeModel | undefined {
    return this.nodes.get(id);
  }

  vm(name: string): VmModel | undefined {
    return this.vms.get(name);
  }

  /** A planned move of this VM is known (the cluster's, or one added since). */
  isMoving(vmName: string): boolean {
    return this.moving.has(vmName);
  }

  /** Memory, LOCAL-disk storage and count of planned moves into `nodeId`. */
  reservations(nodeId: string): { readonly bytes: number; readonly count: number; readonly diskBytes: number } {
    return this.reserved.get(nodeId) ?? NO_RESERVATION;
  }

  /**
   * Where the VM is, or will be once the planned moves are done. Anti-affinity is judged against
   * this, so two VMs of one group planned onto the same node in the same plan are caught too.
   */
  location(vmName: string): string | undefined {
    return this.at.get(vmName) ?? this.vms.get(vmName)?.nodeId;
  }

  /** The VMs of `group` on `nodeId`, counting planned moves. */
  groupOn(group: string, nodeId: string): Iterable<string> {
    return this.groups.get(group)?.get(nodeId) ?? [];
  }

  /** Records one more planned move: reserves its memory and storage on `to` and relocates the VM there. */
  addMove(m: PlannedMove): void {
    this.moving.add(m.vmName);
    const r = this.reserved.get(m.to);
    if (r) {
      r.bytes += m.memoryBytes;
      r.diskBytes += m.diskBytes ?? 0;
      r.count++;
    } else this.reserved.set(m.to, { bytes: m.memoryBytes, count: 1, diskBytes: m.diskBytes ?? 0 });
    this.place(m.vmName, m.to, true);
  }

  /** Places the VM on `nodeId`: moved there (`move`), or where the cluster has it. */
  private place(vmName: string, nodeId: string, move = false): void {
    const group = this.vms.get(vmName)?.antiAffinityGroup;
    if (!group) {
      if (move) this.at.set(vmName, nodeId);
      return;
    }
    const was = this.location(vmName);
    if (move) this.at.set(vmName, nodeId);
    let byNode = this.groups.get(group);
    if (!byNode) this.groups.set(group, (byNode = new Map()));
    if (was !== undefined) byNode.get(was)?.delete(vmName);
    let names = byNode.get(nodeId);
    if (!names) byNode.set(nodeId, (names = new Set()));
    names.add(vmName);
  }
}

/**
 * Builds the model from the coordinator's proto view of the cluster. The incoming half of a
 * running migration (a VM_STATE_INCOMING entry on the destination) becomes a {@link PlannedMove}
 * rather than a second VM of the same name, so its memory is reserved and anti-affinity sees the
 * VM where it is going.
 * @param dirtyRates measured dirty rates by VM name (e.g. from the VM's last migration's samples)
 */
export function clusterFromProto(
  nodes: readonly Node[],
  vms: readonly VmInfo[],
  opts: { links?: readonly LinkEstimate[]; plannedMoves?: readonly PlannedMove[]; dirtyRates?: ReadonlyMap<string, number> } = {},
): ClusterModel {
  // Built for every plan over every VM (10 000 on a 500-node cluster): one pass, no per-VM map
  // entries but for the VMs with LOCAL disks and the names the planned moves ask about.
  const residents: VmInfo[] = [];
  const incoming: VmInfo[] = [];
  for (const v of vms) (v.state === VmState.VM_STATE_INCOMING ? incoming : residents).push(v);
  const disksOf = new Map<VmInfo, { spaceBytes: number; transferBytes: number }>();
  for (const r of residents) {
    const disks = localDiskSpace(r);
    if (disks.spaceBytes > 0) disksOf.set(r, disks);
  }
  // The names whose first resident's node and LOCAL disks are asked for: the incoming VMs' (their
  // source), and the moves' when any VM has LOCAL disks (diskBytesOf; else every move promises 0).
  const asked = new Set<string>();
  if (disksOf.size > 0) for (const m of opts.plannedMoves ?? []) if (m.diskBytes === undefined) asked.add(m.vmName);
  for (const v of incoming) asked.add(v.spec?.name ?? '');
  const residentNode = new Map<string, string>();
  const residentDisks = new Map<string, number>();
  if (asked.size > 0) {
    for (const r of residents) {
      const name = r.spec?.name ?? '';
      if (!asked.has(name) || residentNode.has(name)) continue;
      residentNode.set(name, r.nodeId);
      const disks = disksOf.get(r);
      if (disks) residentDisks.set(name, disks.spaceBytes);
    }
  }
  // What the incoming copy of a VM already occupies on its destination (its target images, as
  // that node reports them with the free storage they have taken from).
  const arrived = new Map<string, number>();
  for (const v of incoming) arrived.set(`${v.nodeId}\u0000${v.spec?.name ?? ''}`, localDiskSpace(v).transferBytes);
  // A run's LOCAL disks take their space on its destination until they are there (a VM already
  // reported by its destination has its disks counted in that node's free storage). While the
  // copy is under way, what has arrived is already out of the destination's reported free
  // storage: only the rest is still promised (counting both would refuse space that exists).
  const diskBytesOf = (vmName: string, to: string): { diskBytes?: number } => {
    if (residentDisks.size === 0) return NO_DISK_BYTES;
    const promised = residentNode.get(vmName) === to ? 0 : (residentDisks.get(vmName) ?? 0);
    const bytes = Math.max(0, promised - (arrived.get(`${to}\u0000${vmName}`) ?? 0));
    return bytes > 0 ? { diskBytes: bytes } : NO_DISK_BYTES;
  };
  const moves: PlannedMove[] = (opts.plannedMoves ?? []).map((m) => {
    if (m.diskBytes !== undefined) return m;
    const promised = diskBytesOf(m.vmName, m.to);
    return promised === NO_DISK_BYTES ? m : { ...m, ...promised };
  });
  const moved = new Set(moves.map((m) => m.vmName));
  for (const v of incoming) {
    const name = v.spec?.name ?? '';
    if (moved.has(name)) continue;
    moves.push({ vmName: name, from: residentNode.get(name) ?? '', to: v.nodeId, memoryBytes: (v.spec?.memoryMib ?? 0) * MiB, ...diskBytesOf(name, v.nodeId) });
    moved.add(name);
  }
  const dirtyRates = opts.dirtyRates;
  return {
    nodes: nodes.map((n) => ({
      id: n.host?.nodeId ?? '',
      up: n.status === NodeStatus.NODE_STATUS_UP,
      memoryTotalBytes: n.host?.memoryTotalBytes ?? 0,
      memoryFreeBytes: n.host?.memoryFreeBytes ?? 0,
      capabilities: n.host?.migrationCapabilities ?? [],
      storageFreeBytes: n.host?.storageFreeBytes,
    })),
    vms: residents.map((v) => {
      const name = v.spec?.name ?? '';
      const own = v.state === VmState.VM_STATE_MIGRATING || v.migrationRunId !== '';
      // Without dirty rates a VM's model is its report's alone, but for a planned move: kept per
      // report (the registry replaces a node's reports, never changes one), so a plan builds the
      // models of the VMs reported since the last one only.
      let model = dirtyRates === undefined ? reportModels.get(v) : undefined;
      if (model === undefined) {
        model = { name, nodeId: v.nodeId, memoryMib: v.spec?.memoryMib ?? 0, antiAffinityGroup: v.spec?.antiAffinityGroup || undefined, dirtyRateBytesPerSec: dirtyRates?.get(name), migrating: own };
        const disks = disksOf.get(v);
        if (disks) model = { ...model, diskTransferBytes: disks.transferBytes, diskSpaceBytes: disks.spaceBytes };
        if (dirtyRates === undefined) reportModels.set(v, model);
      }
      return !own && moved.has(name) ? { ...model, migrating: true } : model;
    }),
    links: opts.links,
    plannedMoves: moves,
  };
}
