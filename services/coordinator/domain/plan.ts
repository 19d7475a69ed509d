/**
 * SubmitPlanRequest → the migrations of a plan, in dispatch order, with their reasons: one VM
 * (placement only) or a whole host (drain.ts). The caller assigns run ids and stores the plan;
 * the policy is validated here first so a contradicting policy is refused before anything is
 * placed.
 */
import { InvalidArgumentError } from '../../shared/errors.js';
import { MigrationPolicy } from '../../shared/gen/migd/v1/common.js';
import type { PlannedMigration, SubmitPlanRequest } from '../../shared/gen/migd/v1/coordinator.js';
import { type ClusterModel, findVm, vmMemoryBytes } from './cluster.js';
import { type DrainPlan, type TransferModel, planDrain } from './drain.js';
import { placeVm } from './placement.js';
import { policyResolution, type PolicyResolution } from './policy/factory.js';
import type { ConcurrencyLimits } from './scheduler.js';
import { GiB } from './units.js';

/** A plan before run ids are assigned. */
export interface PlanDraft {
  readonly migrations: readonly Omit<PlannedMigration, 'runId'>[];
  readonly orderingReason: string;
  /** Set for drains. */
  readonly drain?: DrainPlan | undefined;
}

/**
 * Turns a request into a plan draft.
 * @throws InvalidArgumentError no target, or a contradicting policy; NotFoundError unknown VM or
 *   node; FailedPreconditionError destination is the source or down, VM already migrating;
 *   ResourceExhaustedError a VM cannot be placed
 */
export function draftPlan(
  cluster: ClusterModel,
  request: SubmitPlanRequest,
  opts: { limits?: Partial<ConcurrencyLimits>; model?: Partial<TransferModel>; policyAt?: PolicyResolution } = {},
): PlanDraft {
  const policy = request.policy ?? MigrationPolicy.fromPartial({});
  const policyAt = opts.policyAt ?? policyResolution(policy);
  const target = request.target;
  if (target?.$case === 'migrate') {
    const vm = findVm(cluster, target.value.vmName);
    // Validate the policy before looking at the cluster: a contradiction is the caller's error
    // whatever the cluster looks like (an unknown VM is reported by placement below).
    const requirements = policyAt(vm ? vmMemoryBytes(vm) : GiB).requirements;
    const p = placeVm(cluster, target.value.vmName, {
      destination: target.value.destinationNodeId,
      requiredCapabilities: requirements.capabilities,
      keepApart: request.antiAffinityVmNames,
    });
    return {
      migrations: [{ vmName: p.vmName, sourceNodeId: p.source, destinationNodeId: p.destination, order: 0, reason: p.reason }],
      orderingReason: 'a single migration',
    };
  }
  if (target?.$case === 'drain') {
    const drain = planDrain(cluster, {
      nodeId: target.value.nodeId,
      destinationNodeIds: target.value.destinationNodeIds,
      policy,
      policyAt,
      keepApart: request.antiAffinityVmNames,
      limits: opts.limits,
      model: opts.model,
    });
    return {
      migrations: drain.entries.map((e) => ({ vmName: e.vmName, sourceNodeId: e.source, destinationNodeId: e.destination, order: e.order, reason: e.reason })),
      orderingReason: drain.orderingReason,
      drain,
    };
  }
  throw new InvalidArgumentError('the request names no target: set migrate or drain', { reason: 'NO_TARGET' });
}
