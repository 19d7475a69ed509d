/**
 * The indexed placement (ClusterIndex) against a direct reading of the rules on random clusters:
 * same verdicts, same problems, for every VM and node, with planned moves, anti-affinity groups
 * and kept-apart lists — and a drain's incremental index against placing with the moves so far.
 */
import { describe, expect, it } from 'vitest';
import { type ClusterModel, ClusterIndex, type PlannedMove, type VmModel, vmMemoryBytes } from '../../../services/coordinator/domain/cluster.js';
import { evaluateDestinations, placeVm } from '../../../services/coordinator/domain/placement.js';
import { GiB, MiB } from '../../../services/coordinator/domain/units.js';
import { mulberry32 as rng } from '../../helpers/prng.js';

function randomCluster(seed: number): ClusterModel {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
  const nodes = Array.from({ length: 3 + Math.floor(r() * 10) }, (_, i) => ({
    id: `n${i}`,
    up: r() > 0.15,
    memoryTotalBytes: 64 * GiB,
    memoryFreeBytes: Math.floor(r() * 16) * GiB,
    capabilities: r() > 0.2 ? ['postcopy-ram', 'auto-converge'] : ['auto-converge'],
  }));
  const groups = ['', '', 'web', 'db', 'cache'];
  const vms: VmModel[] = Array.from({ length: 5 + Math.floor(r() * 30) }, (_, i) => ({
    name: `vm${i}`,
    nodeId: pick(nodes).id,
    memoryMib: pick([512, 1024, 2048, 4096]),
    antiAffinityGroup: pick(groups) || undefined,
  }));
  const plannedMoves: PlannedMove[] = [];
  for (const vm of vms) {
    if (r() < 0.15) plannedMoves.push({ vmName: vm.name, from: vm.nodeId, to: pick(nodes).id, memoryBytes: vmMemoryBytes(vm) });
  }
  if (r() < 0.5) plannedMoves.push({ vmName: 'elsewhere', from: 'x', to: pick(nodes).id, memoryBytes: 2 * GiB });
  return { nodes, vms, plannedMoves };
}

/** The rules, read directly (quadratic), as the reference. */
function reference(cluster: ClusterModel, vm: VmModel, keepApart: readonly string[], required: readonly string[], extra: readonly PlannedMove[]): { nodeId: string; problems: string[] }[] {
  const moves = [...(cluster.plannedMoves ?? []), ...extra];
  const at = new Map<string, string>();
  for (const v of cluster.vms) at.set(v.name, v.nodeId);
  for (const m of moves) at.set(m.vmName, m.to);
  return cluster.nodes.map((node) => {
    const problems: string[] = [];
    const inbound = moves.filter((m) => m.to === node.id);
    const reserved = inbound.reduce((a, m) => a + m.memoryBytes, 0);
    if (node.id === vm.nodeId) problems.push('is the source');
    if (!node.up) problems.push('is down');
    const missing = required.filter((c) => !node.capabilities.includes(c));
    if (missing.length > 0) problems.push(`lacks ${missing.join(', ')}`);
    if (node.memoryFreeBytes - reserved < vmMemoryBytes(vm)) problems.push('needs');
    for (const other of cluster.vms) {
      if (other.name === vm.name || at.get(other.name) !== node.id) continue;
      if (vm.antiAffinityGroup && other.antiAffinityGroup === vm.antiAffinityGroup) problems.push(`group ${other.name}`);
      else if (keepApart.includes(vm.name) && keepApart.includes(other.name)) problems.push(`apart ${other.name}`);
    }
    return { nodeId: node.id, problems };
  });
}

/** The index's problems in the reference's shorthand, conflicts sorted (the order is the index's). */
function shorthand(problems: readonly string[]): string[] {
  const out = problems.map((p) => {
    const m = /^would share the node with "([^"]+)" \((anti-affinity|requested)/.exec(p);
    if (m) return `${m[2] === 'anti-affinity' ? 'group' : 'apart'} ${m[1]}`;
    return p.startsWith('needs ') ? 'needs' : p;
  });
  const fixed = out.filter((p) => !/^(group|apart) /.test(p));
  return [...fixed, ...out.filter((p) => /^(group|apart) /.test(p)).sort()];
}

describe('ClusterIndex placement', () => {
  it('gives the same verdicts as the rules read directly, on 300 random clusters', () => {
    for (let seed = 1; seed <= 300; seed++) {
      const c = randomCluster(seed);
      const r = rng(seed * 7919);
      const keepApart = c.vms.filter(() => r() < 0.2).map((v) => v.name);
      const required = r() < 0.3 ? ['postcopy-ram'] : [];
      const extra: PlannedMove[] = r() < 0.5 ? [{ vmName: 'plan-earlier', from: 'x', to: c.nodes[0]!.id, memoryBytes: 512 * MiB }] : [];
      for (const vm of c.vms) {
        const got = evaluateDestinations(c, vm, { keepApart, requiredCapabilities: required, plannedMoves: extra });
        const want = reference(c, vm, keepApart, required, extra);
        const ctx = `seed ${seed}, ${vm.name}`;
        expect(got.map((v) => ({ nodeId: v.nodeId, problems: shorthand(v.problems) })), ctx).toEqual(
          want.map((w) => ({ nodeId: w.nodeId, problems: [...w.problems.filter((p) => !/^(group|apart) /.test(p)), ...w.problems.filter((p) => /^(group|apart) /.test(p)).sort()] })),
        );
        expect(got.every((v) => v.eligible === (v.problems.length === 0))).toBe(true);
      }
    }
  });

  it('placing with an incrementally updated index equals placing with the list of moves so far', () => {
    for (let seed = 1; seed <= 100; seed++) {
      const c = randomCluster(seed);
      const movable = c.vms.filter((v) => !(c.plannedMoves ?? []).some((m) => m.vmName === v.name));
      const index = new ClusterIndex(c);
      const moves: PlannedMove[] = [];
      for (const vm of movable) {
        let viaList: string;
        let viaIndex: string;
        try {
          viaList = placeVm(c, vm.name, { plannedMoves: moves }).destination;
        } catch (err) {
          viaList = `error: ${(err as Error).message}`;
        }
        try {
          const p = placeVm(c, vm.name, { index });
          viaIndex = p.destination;
          index.addMove(p.move);
          moves.push(p.move);
        } catch (err) {
          viaIndex = `error: ${(err as Error).message}`;
        }
        expect(viaIndex, `seed ${seed}, ${vm.name}`).toBe(viaList);
      }
    }
  });
});
