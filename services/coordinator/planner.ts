/**
 * Turning requests into work: SubmitPlan (validate, draft with the domain planner, store the plan
 * and its runs in one transaction, queue the runs) and CreateVm (on a node, or where placement
 * says). Both read one snapshot of the cluster — the registry's nodes and VMs plus the moves that
 * active runs will make and the VMs being created — and plan one at a time, so two requests never
 * plan the same VM or the same free memory twice. No lock is held across a call to a node: CreateVm
 * reserves its VM in the snapshot, releases the lock, then calls the node.
 */
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError, ResourceExhaustedError } from '../shared/errors.js';
import { createIdFactory } from '../shared/events/ids.js';
import { MigrationPolicy, MigrationState, VmState, type VmInfo } from '../shared/gen/migd/v1/common.js';
import { RunFilter, SubmitPlanRequest, type CoordinatorServiceCreateVmRequest, type Plan, type SubmitPlanResponse } from '../shared/gen/migd/v1/coordinator.js';
import type { Logger } from '../shared/log.js';
import { turns } from '../shared/metrics/turns.js';
import { type ClusterModel, clusterFromProto, createdDiskSpace, findVm } from './domain/cluster.js';
import { draftPlan } from './domain/plan.js';
import { policyFor, policyResolution } from './domain/policy/factory.js';
import { chooseTransport, transportChoosable, transportEvidence, withCompression, type PastMigration } from './domain/policy/transport.js';
import { evaluateDestinations, storageWords } from './domain/placement.js';
import type { ConvergencePolicy } from './domain/policy/types.js';
import type { ConcurrencyLimits } from './domain/scheduler.js';
import { GiB, MiB, formatBytes } from './domain/units.js';
import { normalizeNics } from '../shared/nics.js';
import type { NodeRegistry } from './registry.js';
import type { RunManager } from './runs/manager.js';
import type { AnalyticsRepository, CreateRunInput, PlanRunRepository } from './store/types.js';

const VM_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
const MAX_KEY = 256;

export interface PlannerOptions {
  /**
   * The repositories it uses: plans and runs; the run history (earlier migrations of a VM, for
   * the adaptive policy's choice of transport before the start) when given.
   */
  readonly store: { readonly plans: PlanRunRepository; readonly analytics?: Pick<AnalyticsRepository, 'listRuns' | 'getRunTimeline'> };
  readonly registry: NodeRegistry;
  readonly runs: RunManager;
  readonly limits: ConcurrencyLimits;
  readonly log: Logger;
  /** Deadline of CreateVm on a node (ms). */
  readonly createVmDeadlineMs: number;
  readonly newId?: () => string;
}

/** Dotted paths (proto JSON names) where `a` and `b` differ. */
function differences(a: unknown, b: unknown, path: string): string[] {
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  if (isObject(a) && isObject(b)) {
    return [...new Set([...Object.keys(a), ...Object.keys(b)])].flatMap((k) => differences(a[k], b[k], path ? `${path}.${k}` : k));
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [path];
}

/**
 * Returns `plan` when `req` asks for what the plan was submitted with.
 * @throws AlreadyExistsError naming the fields that differ
 */
function sameRequest(plan: Plan, req: SubmitPlanRequest): Plan {
  const stored = SubmitPlanRequest.toJSON(SubmitPlanRequest.fromPartial(plan.request ?? {})) as Record<string, unknown>;
  const now = SubmitPlanRequest.toJSON(SubmitPlanRequest.fromPartial(req)) as Record<string, unknown>;
  const differ = differences(stored, now, '').sort();
  if (differ.length === 0) return plan;
  throw new AlreadyExistsError(`idempotency key "${req.idempotencyKey}" was used for plan ${plan.id} with a different request (differs in: ${differ.join(', ')}); use a new key`, {
    reason: 'IDEMPOTENCY_KEY_REUSED',
  });
}

export class Planner {
  private lock: Promise<unknown> = Promise.resolve();
  /** VMs whose CreateVm call to a node is in flight, by name (reserved in the model meanwhile). */
  private readonly creating = new Map<string, { name: string; nodeId: string; memoryMib: number; antiAffinityGroup: string | undefined; diskBytes: number }>();
  private readonly newId: () => string;

  constructor(private readonly o: PlannerOptions) {
    this.newId = o.newId ?? createIdFactory();
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.lock.then(fn);
    this.lock = result.catch(() => undefined);
    return result;
  }

  /**
   * The cluster as placement sees it now. VMs being created (their node call is in flight) are
   * in it: their name is taken, their memory reserved on their node, their anti-affinity group
   * counted there, and they cannot be migrated yet.
   */
  async model(): Promise<ClusterModel> {
    const vms = await this.o.registry.vms();
    // The run manager holds every unfinished run (queued or running): no read of them all per plan.
    const plannedMoves = this.o.runs.plannedMoves();
    // The registry's live view (host, up/down) is all placement reads of a node.
    const nodes = this.o.registry.liveNodes();
    const creating = [...this.creating.values()];
    const cluster = clusterFromProto(nodes, vms, { plannedMoves: creating.length === 0 ? plannedMoves : [...plannedMoves, ...creating.map((c) => ({ vmName: c.name, from: '', to: c.nodeId, memoryBytes: c.memoryMib * MiB, diskBytes: c.diskBytes }))] });
    // Built on every SubmitPlan over every VM: the names are only looked up when a VM is being created.
    if (creating.length === 0) return cluster;
    const known = new Set(cluster.vms.map((v) => v.name));
    const pending = creating.filter((c) => !known.has(c.name)).map((c) => ({ name: c.name, nodeId: c.nodeId, memoryMib: c.memoryMib, antiAffinityGroup: c.antiAffinityGroup, dirtyRateBytesPerSec: undefined, migrating: true }));
    return { ...cluster, vms: [...cluster.vms, ...pending] };
  }

  /**
   * The adaptive policy's choice before the start (domain/policy/transport.ts): for each VM whose
   * evidence — its workload as configured, the calc-dirty-rate estimates, throughput and
   * compression of its earlier migrations in the history — says compressed pre-copy converges,
   * the policy with multifd zstd (and without post-copy). VMs not in the map keep the request's.
   */
  private async chooseTransports(policy: MigrationPolicy | undefined, vms: readonly { vmName: string; memoryMib: number }[]): Promise<Map<string, MigrationPolicy>> {
    const out = new Map<string, MigrationPolicy>();
    if (!policy || !transportChoosable(policy) || vms.length === 0) return out;
    const specs = new Map((await this.o.registry.vms(undefined, { includeStopped: true }).catch(() => [])).map((v) => [v.spec?.name ?? '', v.spec]));
    for (const { vmName, memoryMib } of vms) {
      const memoryBytes = Math.max(1, memoryMib) * MiB;
      const history = await this.pastMigrations(vmName).catch((err: unknown) => {
        this.o.log.warn('run history unavailable for the transport choice', { vm: vmName, err });
        return [];
      });
      const effective = policyFor(policy, memoryBytes).effective;
      const budget = effective.completionTimeoutSecPerGib > 0 ? (effective.completionTimeoutSecPerGib * memoryBytes * 1000) / GiB : undefined;
      const choice = chooseTransport(transportEvidence({ memoryBytes, policy: effective, workload: specs.get(vmName)?.workload, history, completionBudgetMs: budget }));
      this.o.log.info('adaptive transport chosen before the start', { vm: vmName, compress: choice.compress, reason: choice.reason });
      if (choice.compress) out.set(vmName, withCompression(policy));
    }
    return out;
  }

  /** The last few finished migrations of `vmName`, newest first, with their progress samples. */
  private async pastMigrations(vmName: string): Promise<PastMigration[]> {
    const analytics = this.o.store.analytics;
    if (!analytics) return [];
    const { runs } = await analytics.listRuns({ filter: RunFilter.fromPartial({ vmName, states: [MigrationState.MIGRATION_STATE_SUCCEEDED] }), pageSize: 3 });
    const out: PastMigration[] = [];
    for (const r of runs) {
      const t = await analytics.getRunTimeline(r.id);
      out.push({ policy: r.policy, succeeded: r.state === MigrationState.MIGRATION_STATE_SUCCEEDED, samples: t.progress, transferredBytes: r.stats?.transferredBytes ?? 0 });
    }
    return out;
  }

  /**
   * Submits a plan. Idempotency keys belong to the submitting identity (`scope`): the same key
   * with the same request returns the stored plan (`existing: true`) and starts nothing; another
   * identity's use of the same key is a different plan.
   * @throws InvalidArgumentError (no key, no target, contradicting policy), NotFoundError (unknown
   *   VM or node), FailedPreconditionError (destination is the source or down, VM already
   *   migrating, source down), ResourceExhaustedError (a VM cannot be placed), AlreadyExistsError
   *   (reason IDEMPOTENCY_KEY_REUSED: the key was used for a different request). Nothing is stored
   *   when one is raised.
   */
  async submit(req: SubmitPlanRequest, scope = ''): Promise<SubmitPlanResponse> {
    const key = req.idempotencyKey;
    if (!key) throw new InvalidArgumentError('idempotency_key is required', { reason: 'NO_IDEMPOTENCY_KEY' });
    if (key.length > MAX_KEY) throw new InvalidArgumentError(`idempotency_key is longer than ${MAX_KEY} characters`);
    // With the turn profiler on, each phase's time (the wait for the planner's lock, the reads, the
    // planning, the plan's write, the dispatch) is recorded and kept per plan (served at /debug/turns).
    const laps = turns.laps('submit');
    return this.exclusive(async () => {
      laps?.lap('lock-wait');
      const existing = await this.o.store.plans.findPlanByKey(key, scope);
      laps?.lap('read-key');
      if (existing) return { plan: sameRequest(existing, req), existing: true };
      const target = req.target;
      if (!target) throw new InvalidArgumentError('the request names no target: set migrate or drain', { reason: 'NO_TARGET' });
      // Parsed once per guest size and passed along: placement, drain, the runs, their supervisors.
      const policyAt = policyResolution(req.policy ?? MigrationPolicy.fromPartial({}));
      // Contradictions are the caller's error whatever the cluster looks like.
      policyAt(GiB);
      const cluster = await this.model();
      laps?.lap('model');
      if (target.$case === 'migrate') {
        if (!target.value.vmName) throw new InvalidArgumentError('migrate.vm_name is required');
      } else {
        if (!target.value.nodeId) throw new InvalidArgumentError('drain.node_id is required');
        for (const id of target.value.destinationNodeIds) {
          if (!cluster.nodes.some((n) => n.id === id)) throw new NotFoundError(`unknown destination node "${id}"`, { reason: 'UNKNOWN_NODE' });
        }
      }
      const draft = draftPlan(cluster, req, { limits: this.o.limits, policyAt });
      const planId = this.newId();
      // The planned VMs' memory (the last VM of a name, as a map of every VM gave it): not a map of
      // every VM of the cluster per plan.
      const planned = new Set(draft.migrations.map((m) => m.vmName));
      const memoryOf = new Map<string, number>();
      for (const v of cluster.vms) if (planned.has(v.name)) memoryOf.set(v.name, v.memoryMib);
      const transport = await this.chooseTransports(req.policy, draft.migrations.map((m) => ({ vmName: m.vmName, memoryMib: memoryOf.get(m.vmName) ?? 0 })));
      const runs: (Omit<CreateRunInput, 'planId'> & { id: string; order: number; convergence: ConvergencePolicy })[] = draft.migrations.map((m) => {
        const memoryMib = memoryOf.get(m.vmName) ?? 0;
        const chosen = transport.get(m.vmName);
        const convergence = chosen ? policyFor(chosen, Math.max(1, memoryMib) * MiB) : policyAt(Math.max(1, memoryMib) * MiB);
        return {
          id: this.newId(),
          order: m.order,
          vmName: m.vmName,
          sourceNodeId: m.sourceNodeId,
          destinationNodeId: m.destinationNodeId,
          // The effective policy (preset defaults filled in, e.g. Nova's ramp for this guest) is
          // what the node is sent and what a restarted coordinator rebuilds the policy from.
          policy: convergence.effective,
          convergence,
          policyLabel: req.label,
          memoryMib,
          priority: req.priority,
        };
      });
      laps?.lap('plan', runs.length);
      const created = await this.o.store.plans.createPlan({
        id: planId,
        idempotencyKey: key,
        idempotencyScope: scope,
        request: req,
        migrations: draft.migrations.map((m, i) => ({ ...m, runId: runs[i]?.id ?? '' })),
        orderingReason: draft.orderingReason,
        priority: req.priority,
        runs: runs.map(({ order: _order, convergence: _convergence, ...r }) => r),
      });
      laps?.lap('write');
      if (created.existing) return { plan: sameRequest(created.plan, req), existing: true };
      this.o.log.info('plan submitted', { planId, key, target: target.$case, runs: runs.length, order: draft.orderingReason });
      const stored = new Map((created.runs ?? (await this.o.store.plans.listPlanRuns(planId))).map((s) => [s.id, s]));
      laps?.lap('read-runs');
      this.o.runs.enqueue(runs.flatMap((r) => {
        const run = stored.get(r.id);
        return run ? [{ run, order: r.order, policy: r.convergence }] : [];
      }));
      laps?.lap('enqueue');
      // The plan as written, unless an empty plan has just ended (then read again).
      let plan = created.plan;
      if (runs.length === 0) {
        await this.o.runs.updatePlan(planId);
        plan = await this.o.store.plans.getPlan(planId);
      }
      if (laps) {
        laps.lap('read-plan');
        turns.keep(`SubmitPlan ${key}`, { startedAt: laps.startedAtEpoch(), handlerMs: laps.total(), phasesMs: laps.ms, size: runs.length });
      }
      return { plan, existing: false };
    });
  }

  /**
   * Starts a VM on `node_id`, or on the up node with the most free memory that keeps the spec's
   * anti-affinity group apart and has the space for the disks it is to create.
   * @throws InvalidArgumentError (bad spec), NotFoundError (unknown node), FailedPreconditionError
   *   (node down), AlreadyExistsError (name in use), ResourceExhaustedError (no node can take it;
   *   INSUFFICIENT_STORAGE: the named node lacks the space for the disks to create), and the
   *   node's own errors. Nothing is created when one is raised here.
   */
  async createVm(req: CoordinatorServiceCreateVmRequest, signal?: AbortSignal): Promise<VmInfo> {
    if (!req.spec) throw new InvalidArgumentError('spec is required');
    // MACs are generated here when missing, so the cluster-wide check below sees the final ones.
    const spec = { ...req.spec, nics: normalizeNics(req.spec.nics ?? []) };
    if (!VM_NAME.test(spec.name)) throw new InvalidArgumentError(`spec.name "${spec.name}" must match ${VM_NAME.source}`);
    if (!(spec.memoryMib > 0)) throw new InvalidArgumentError('spec.memory_mib is required');
    // Placement runs under the lock and reserves the VM; the node call (up to a minute and a
    // half) runs outside it, so a slow node never holds up planning for anyone else.
    const nodeId = await this.exclusive(async () => {
      const cluster = await this.model();
      // A stopped VM keeps its name (it may be started again).
      if (findVm(cluster, spec.name) || (await this.o.registry.vms(undefined, { includeStopped: true })).some((v) => v.spec?.name === spec.name)) {
        throw new AlreadyExistsError(`a VM named "${spec.name}" already exists`, { reason: 'VM_EXISTS' });
      }
      const vms = await this.o.registry.vms();
      for (const [i, n] of spec.nics.entries()) {
        const owner = vms.find((v) => v.spec?.nics?.some((o) => o.mac.toLowerCase() === n.mac));
        if (owner) throw new InvalidArgumentError(`spec.nics[${i}].mac ${n.mac} is already the MAC of VM "${owner.spec?.name ?? ''}"`, { reason: 'MAC_IN_USE' });
      }
      const networks = [...new Set(spec.nics.map((n) => n.network))];
      const missing = (id: string): string[] => {
        const has = new Set(this.o.registry.host(id).networks ?? []);
        return networks.filter((n) => !has.has(n));
      };
      // The disks the node is to create need their space there (raw: the size; see
      // createdDiskSpace), checked against what the node last reported and what runs and other
      // creations in flight were promised, before anything is created.
      const diskSpaceBytes = createdDiskSpace(spec.disks ?? []);
      const candidate = { name: spec.name, nodeId: '', memoryMib: spec.memoryMib, antiAffinityGroup: spec.antiAffinityGroup || undefined, ...(diskSpaceBytes > 0 ? { diskSpaceBytes } : {}) };
      let chosen = req.nodeId;
      if (chosen) {
        this.o.registry.host(chosen);
        if (!this.o.registry.isUp(chosen)) throw new FailedPreconditionError(`node "${chosen}" is down`, { reason: 'NODE_DOWN' });
        const lacking = missing(chosen);
        if (lacking.length > 0) throw new InvalidArgumentError(`node "${chosen}" has no network ${lacking.join(', ')} (its networks: ${this.o.registry.host(chosen).networks.join(', ') || 'none'})`, { reason: 'NETWORK_UNKNOWN' });
        const short = diskSpaceBytes > 0 ? evaluateDestinations(cluster, candidate).find((v) => v.nodeId === chosen)?.storageShort : undefined;
        if (short) throw new ResourceExhaustedError(`cannot create VM "${spec.name}" on node "${chosen}": ${storageWords(candidate, short)}`, { reason: 'INSUFFICIENT_STORAGE' });
      } else {
        if (networks.length > 0 && cluster.nodes.every((n) => missing(n.id).length > 0)) {
          throw new InvalidArgumentError(`no node has network${networks.length > 1 ? 's' : ''} ${networks.join(', ')}`, { reason: 'NETWORK_UNKNOWN' });
        }
        const verdicts = evaluateDestinations(cluster, candidate).map((v) => {
          const lacking = missing(v.nodeId);
          return lacking.length === 0 ? v : { ...v, eligible: false, problems: [...v.problems, `has no network ${lacking.join(', ')}`] };
        });
        const best = verdicts.filter((v) => v.eligible).sort((a, b) => b.availableBytes - a.availableBytes || a.inbound - b.inbound || (a.nodeId < b.nodeId ? -1 : 1))[0];
        if (!best) {
          const why = verdicts.map((v) => `${v.nodeId} ${v.problems.join(' and ')}`).join('; ') || 'the cluster has no node';
          throw new ResourceExhaustedError(`no node can take VM "${spec.name}" (${formatBytes(spec.memoryMib * MiB)}): ${why}`, { reason: 'NO_NODE' });
        }
        chosen = best.nodeId;
      }
      this.creating.set(spec.name, { name: spec.name, nodeId: chosen, memoryMib: spec.memoryMib, antiAffinityGroup: spec.antiAffinityGroup || undefined, diskBytes: diskSpaceBytes });
      return chosen;
    });
    try {
      const res = await this.o.registry.client(nodeId).createVm({ spec }, { deadlineMs: this.o.createVmDeadlineMs, ...(signal ? { signal } : {}) });
      const vm: VmInfo = res.vm ?? { spec, nodeId, state: VmState.VM_STATE_STARTING, pid: 0, startedAt: new Date(), migrationRunId: '', lastGuestPerf: undefined, qemuCpuSeconds: 0, localDisks: [] };
      await this.o.registry.vmCreated({ ...vm, nodeId });
      this.o.log.info('VM created', { vm: spec.name, nodeId });
      return vm;
    } finally {
      this.creating.delete(spec.name);
    }
  }

  /**
   * The node of VM `name`, which must not take part in a queued or running run (nor be being
   * created) and whose node must be up.
   * @throws InvalidArgumentError, NotFoundError (UNKNOWN_VM), FailedPreconditionError (VM_MIGRATING,
   *   VM_BEING_CREATED, NODE_DOWN)
   */
  private async nodeOfIdleVm(name: string): Promise<string> {
    if (!name) throw new InvalidArgumentError('vm_name is required');
    if (!VM_NAME.test(name)) throw new InvalidArgumentError(`vm_name "${name}" must match ${VM_NAME.source}`);
    return this.exclusive(async () => {
      if (this.creating.has(name)) throw new FailedPreconditionError(`VM "${name}" is being created`, { reason: 'VM_BEING_CREATED' });
      const vm = (await this.o.registry.vms(undefined, { includeStopped: true })).find((v) => v.spec?.name === name && v.state !== VmState.VM_STATE_INCOMING);
      if (!vm) throw new NotFoundError(`VM "${name}" not found`, { reason: 'UNKNOWN_VM' });
      const runId = this.o.runs.activeRunOf(name);
      if (runId !== undefined) throw new FailedPreconditionError(`VM "${name}" takes part in run ${runId} (queued or running); cancel it or wait for it to end`, { reason: 'VM_MIGRATING' });
      if (!this.o.registry.isUp(vm.nodeId)) throw new FailedPreconditionError(`node "${vm.nodeId}" of VM "${name}" is down`, { reason: 'NODE_DOWN' });
      return vm.nodeId;
    });
  }

  /**
   * Stops a VM on its node and keeps it there (stopped). @throws see {@link nodeOfIdleVm}, and the
   * node's errors (FailedPreconditionError VM_MIGRATING when a migration started meanwhile)
   */
  async stopVm(name: string, signal?: AbortSignal): Promise<VmInfo> {
    const nodeId = await this.nodeOfIdleVm(name);
    const res = await this.o.registry.client(nodeId).stopVm({ name }, { deadlineMs: this.o.createVmDeadlineMs, ...(signal ? { signal } : {}) });
    const vm = { ...res.vm!, nodeId };
    await this.o.registry.vmCreated(vm);
    this.o.log.info('VM stopped', { vm: name, nodeId });
    return vm;
  }

  /** Starts a stopped VM again on its node. @throws as {@link stopVm}, ResourceExhaustedError */
  async startVm(name: string, signal?: AbortSignal): Promise<VmInfo> {
    const nodeId = await this.nodeOfIdleVm(name);
    const res = await this.o.registry.client(nodeId).startVm({ name }, { deadlineMs: this.o.createVmDeadlineMs, ...(signal ? { signal } : {}) });
    const vm = { ...res.vm!, nodeId };
    await this.o.registry.vmCreated(vm);
    this.o.log.info('VM started', { vm: name, nodeId });
    return vm;
  }

  /**
   * Deletes a VM (its node stops it first), with the disk images its node created when
   * `deleteDisks`. A VM its node no longer knows is forgotten here too. @throws as {@link stopVm}
   */
  async deleteVm(name: string, deleteDisks: boolean, signal?: AbortSignal): Promise<void> {
    const nodeId = await this.nodeOfIdleVm(name);
    try {
      await this.o.registry.client(nodeId).destroyVm({ name, deleteDisks }, { deadlineMs: this.o.createVmDeadlineMs, ...(signal ? { signal } : {}) });
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
      this.o.log.info('the node no longer knows the VM; forgetting it', { vm: name, nodeId });
    }
    await this.o.registry.vmDeleted(name, nodeId);
    this.o.log.info('VM deleted', { vm: name, nodeId, deleteDisks });
  }
}
