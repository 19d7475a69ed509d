import { describe, expect, it } from 'vitest';
import { VmSpec, VmState, type VmInfo } from '../../../services/shared/gen/migd/v1/common.js';
import { sortVms, VmOrder } from '../../../services/coordinator/vm-order.js';

const vm = (nodeId: string, name: string, state = VmState.VM_STATE_RUNNING, pid = 1): VmInfo => ({
  spec: VmSpec.fromPartial({ name, memoryMib: 256 }),
  nodeId,
  state,
  pid,
  startedAt: undefined,
  migrationRunId: '',
  lastGuestPerf: undefined,
  qemuCpuSeconds: 0,
  localDisks: [],
});

/** A small deterministic generator (tests must not depend on Math.random). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const NODES = ['n1', 'n10', 'n1.a', 'n1-', 'N1', 'n2', 'a', 'a_b', 'z9', 'n100'];
// A name with the separator in it takes the keyed sort (the others the name comparison).
const NAMES = ['vm', 'vm-1', 'vm-10', 'vm-2', 'VM', 'x', 'vm.1', 'a', 'b0', 'v', 'v\u0000a'];
const STATES = [VmState.VM_STATE_RUNNING, VmState.VM_STATE_INCOMING, VmState.VM_STATE_STOPPED, VmState.VM_STATE_MIGRATING];
const notStopped = (v: VmInfo): boolean => v.state !== VmState.VM_STATE_STOPPED;

describe('VmOrder', () => {
  it('lists in the order of a stable sort of every VM by node, name and incoming last, ties as given', () => {
    const order = new VmOrder();
    const r = rng(7);
    const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)]!;
    for (let round = 0; round < 200; round++) {
      const lists = new Map<string, VmInfo[]>();
      const reportedNodes = NODES.filter(() => r() < 0.6);
      let pid = 0;
      for (const node of reportedNodes) lists.set(node, Array.from({ length: Math.floor(r() * 6) }, () => vm(node, pick(NAMES), pick(STATES), pid++)));
      const others = Array.from({ length: Math.floor(r() * 8) }, () => vm(pick(NODES.filter((n) => !lists.has(n)).concat(['s1'])), pick(NAMES), pick(STATES), pid++));
      const all = [...others, ...[...lists.values()].flat()];
      const keep = round % 2 === 0 ? notStopped : () => true;
      // Twice: the second from the cached lists.
      expect(order.list(lists, others, keep)).toEqual(sortVms(all).filter(keep));
      expect(order.list(lists, others, keep)).toEqual(sortVms(all).filter(keep));
    }
  });

  it('a new list for a node is sorted again; the old one is not reused', () => {
    const order = new VmOrder();
    const lists = new Map([['n1', [vm('n1', 'b'), vm('n1', 'a')]]]);
    expect(order.list(lists, [], () => true).map((v) => v.spec?.name)).toEqual(['a', 'b']);
    lists.set('n1', [vm('n1', 'c'), vm('n1', 'a', VmState.VM_STATE_INCOMING), vm('n1', 'a')]);
    expect(order.list(lists, [], () => true).map((v) => `${v.spec?.name}${v.state === VmState.VM_STATE_INCOMING ? '+in' : ''}`)).toEqual(['a', 'a+in', 'c']);
  });

  it('falls back to sorting everything when a list holds another node\'s VM or others share a listed node', () => {
    const order = new VmOrder();
    const lists = new Map([
      ['n2', [vm('n2', 'b'), vm('n0', 'z')]],
      ['n1', [vm('n1', 'a')]],
    ]);
    const others = [vm('n1', 'c'), vm('m', 'x')];
    const all = [...others, ...[...lists.values()].flat()];
    expect(order.list(lists, others, () => true)).toEqual(sortVms(all));
    expect(order.list(lists, others, () => true).map((v) => `${v.nodeId}/${v.spec?.name}`)).toEqual(['m/x', 'n0/z', 'n1/a', 'n1/c', 'n2/b']);
  });
});
