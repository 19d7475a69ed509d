/**
 * The order in which the registry lists VMs (NodeRegistry.vms): by node id, then VM name, the
 * incoming copy of a migrating VM after its resident one, ties in the order given. Listing sorted
 * every VM of the cluster on each call, and SubmitPlan lists them all for its cluster model: on a
 * 500-node cluster (10 000 VMs) ~2 ms of the event loop per plan. {@link VmOrder} sorts each
 * node's list once (the registry replaces a node's list on each heartbeat, never changes one in
 * place) and lists the nodes in order.
 */
import { VmState, type VmInfo } from '../shared/gen/migd/v1/common.js';

/** The sort key: node, name, incoming after resident (the characters order them as strings do). */
export function vmOrderKey(v: VmInfo): string {
  return `${v.nodeId}\u0000${v.spec?.name ?? ''}\u0000${v.state === VmState.VM_STATE_INCOMING ? 1 : 0}`;
}

/** `vms` sorted by {@link vmOrderKey} (stable): the reference order. */
export function sortVms(vms: readonly VmInfo[]): VmInfo[] {
  return vms
    .map((v) => ({ v, k: vmOrderKey(v) }))
    .sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : 0))
    .map((e) => e.v);
}

const incoming = (v: VmInfo): number => (v.state === VmState.VM_STATE_INCOMING ? 1 : 0);

/** One node's VMs (names without the separator) in the order of their keys. */
function byNameThenIncoming(a: VmInfo, b: VmInfo): number {
  const na = a.spec?.name ?? '';
  const nb = b.spec?.name ?? '';
  return na < nb ? -1 : na > nb ? 1 : incoming(a) - incoming(b);
}

export class VmOrder {
  /** Each list given, sorted; undefined when one of its VMs names another node (then sorted whole). */
  private readonly sorted = new WeakMap<readonly VmInfo[], { vms: readonly VmInfo[] } | { vms: undefined }>();

  /**
   * The VMs of `lists` (node id → that node's VMs, which must not change while they are listed
   * here: a new list for new contents) and of `others` (any nodes but those of `lists`), those
   * `keep` accepts, in the order of {@link sortVms}.
   */
  list(lists: ReadonlyMap<string, readonly VmInfo[]>, others: readonly VmInfo[], keep: (v: VmInfo) => boolean): VmInfo[] {
    const groups = new Map<string, readonly VmInfo[]>();
    let whole = false;
    for (const [node, list] of lists) {
      if (list.length === 0) continue;
      const s = this.sortedList(node, list);
      if (s === undefined || node.includes('\u0000')) whole = true;
      else groups.set(node, s);
    }
    if (!whole && others.length > 0) {
      const byNode = new Map<string, VmInfo[]>();
      for (const v of others) {
        if (lists.has(v.nodeId) || v.nodeId.includes('\u0000')) whole = true;
        const g = byNode.get(v.nodeId);
        if (g) g.push(v);
        else byNode.set(v.nodeId, [v]);
      }
      for (const [node, g] of byNode) groups.set(node, sortVms(g));
    }
    if (whole) {
      const all: VmInfo[] = [];
      for (const list of lists.values()) all.push(...list);
      all.push(...others);
      return sortVms(all).filter(keep);
    }
    const out: VmInfo[] = [];
    // Node ids without the separator sort as their VMs' keys do (a prefix first either way).
    for (const node of [...groups.keys()].sort()) for (const v of groups.get(node)!) if (keep(v)) out.push(v);
    return out;
  }

  private sortedList(node: string, list: readonly VmInfo[]): readonly VmInfo[] | undefined {
    let s = this.sorted.get(list);
    if (s === undefined) {
      if (!list.every((v) => v.nodeId === node)) s = { vms: undefined };
      // Names without the separator compare as their keys do: no key built (a node's list is
      // sorted again after each of its heartbeats).
      else if (list.every((v) => !(v.spec?.name ?? '').includes('\u0000'))) s = { vms: [...list].sort(byNameThenIncoming) };
      else s = { vms: sortVms(list) };
      this.sorted.set(list, s);
    }
    return s.vms;
  }
}
