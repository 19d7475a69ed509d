/**
 * CoordinatorService handlers: thin translations between the proto API and the coordinator's
 * parts (registry, planner, runs, store, event bus). Validation and errors live in those parts;
 * the shared RPC layer maps the errors to statuses, and the authorizer (roles.ts) has already
 * checked the caller's role.
 */
import { InvalidArgumentError } from '../../shared/errors.js';
import type { VmInfo } from '../../shared/gen/migd/v1/common.js';
import type { CoordinatorServiceService, Node, WatchResponse } from '../../shared/gen/migd/v1/coordinator.js';
import type { Event } from '../../shared/gen/migd/v1/events.js';
import type { Logger } from '../../shared/log.js';
import type { CallContext, Handlers } from '../../shared/rpc/server.js';
import { eventsFromRun, type EventBus } from '../event-bus.js';
import type { Planner } from '../planner.js';
import type { NodeRegistry } from '../registry.js';
import { boundNodeId, nodeIdentity } from '../../shared/pki.js';
import { checkNodeIdentity } from '../roles.js';
import type { RunManager } from '../runs/manager.js';
import type { AnalyticsRepository, PlanRunRepository } from '../store/types.js';

export interface CoordinatorParts {
  /** The repositories read directly: runs and plans, and the history queries. */
  readonly store: { readonly plans: Pick<PlanRunRepository, 'getPlan' | 'getRun' | 'recordNetworkBlackout'>; readonly analytics: AnalyticsRepository };
  /**
   * The leader's parts: on a replicated coordinator that does not lead, reading `registry`,
   * `planner` or `runs` throws NotLeaderError naming the leader (writes are refused with it).
   */
  readonly registry: NodeRegistry;
  /**
   * Replicated coordinators: while `isLeader()` is false, ListNodes and ListVms are answered from
   * the shared store (the leader's registry writes it) instead of the registry.
   */
  readonly followerReads?: {
    isLeader(): boolean;
    nodes(): Promise<Node[]>;
    vms(nodeId?: string): Promise<VmInfo[]>;
  };
  readonly planner: Planner;
  readonly runs: RunManager;
  readonly bus: EventBus;
  /** Refuse node calls made with the shared `migd-node` identity (see roles.ts). Default true. */
  readonly requireNodeIdentity?: boolean;
  /** Told once per node that speaks with a shared identity. */
  readonly log?: Logger;
}

function required(v: string, name: string): string {
  if (!v) throw new InvalidArgumentError(`${name} is required`);
  return v;
}

/** "user:<identity>" — recorded as the actor of actions a caller asks for. */
export function actorOf(ctx: CallContext): string {
  return `user:${ctx.identity ?? 'anonymous'}`;
}

async function* asWatchResponses(events: AsyncIterable<Event>): AsyncIterable<WatchResponse> {
  for await (const event of events) yield { event };
}

export function coordinatorHandlers(p: CoordinatorParts): Handlers<typeof CoordinatorServiceService> {
  const warned = new Set<string>();
  /** The caller may speak for `host.nodeId` (per-node certificates are bound to their node). */
  const speaksFor = (ctx: CallContext, nodeId: string | undefined): void => {
    const id = nodeId ?? '';
    checkNodeIdentity(ctx.identity, id, { requireBound: p.requireNodeIdentity ?? true });
    if (ctx.identity !== undefined && boundNodeId(ctx.identity) === undefined && id && !warned.has(id)) {
      warned.add(id);
      p.log?.warn('node speaks with a shared identity: any holder of that certificate may speak for any node; give it its own certificate and drop --allow-shared-node-identity', {
        nodeId: id,
        identity: ctx.identity,
        expected: nodeIdentity(id),
      });
    }
  };
  return {
    registerNode: async (req, ctx) => {
      speaksFor(ctx, req.host?.nodeId);
      return p.registry.register(req.host);
    },
    heartbeat: async (req, ctx) => {
      speaksFor(ctx, req.host?.nodeId);
      await p.registry.heartbeat(req.host, req.vms);
      return {};
    },
    listNodes: async () => ({ nodes: p.followerReads && !p.followerReads.isLeader() ? await p.followerReads.nodes() : await p.registry.nodes() }),
    listVms: async (req) => ({ vms: p.followerReads && !p.followerReads.isLeader() ? await p.followerReads.vms(req.nodeId || undefined) : await p.registry.vms(req.nodeId || undefined, { includeStopped: true }) }),
    // Calls that reach a node pass the caller's signal on: a caller that goes away cancels them.
    createVm: async (req, ctx) => ({ vm: await p.planner.createVm(req, ctx.signal) }),
    stopVm: async (req, ctx) => ({ vm: await p.planner.stopVm(req.vmName, ctx.signal) }),
    startVm: async (req, ctx) => ({ vm: await p.planner.startVm(req.vmName, ctx.signal) }),
    deleteVm: async (req, ctx) => {
      await p.planner.deleteVm(req.vmName, req.deleteDisks === true, ctx.signal);
      return {};
    },

    // Idempotency keys are scoped to the caller: another identity's key is never shared.
    submitPlan: async (req, ctx) => p.planner.submit(req, ctx.identity ?? ''),
    getPlan: async (req) => ({ plan: await p.store.plans.getPlan(required(req.planId, 'plan_id')) }),
    getRun: async (req) => ({ run: await p.store.plans.getRun(required(req.runId, 'run_id')) }),
    listRuns: async (req) => p.store.analytics.listRuns(req),
    getRunTimeline: async (req) => p.store.analytics.getRunTimeline(required(req.runId, 'run_id')),
    comparePolicies: async (req) => p.store.analytics.comparePolicies(req.filter ?? {}),
    exportRuns: async (req) => p.store.analytics.exportRuns(req.filter ?? {}, req.format, { pageSize: req.pageSize, pageToken: req.pageToken }),
    watch: (req, ctx) => {
      const scope = req.scope;
      if (scope?.$case === 'cluster' && scope.value) {
        return asWatchResponses(p.bus.watchCluster({ statesOnly: req.statesOnly, signal: ctx.signal }));
      }
      if (scope?.$case === 'runId') {
        const runId = required(scope.value, 'run_id');
        return (async function* () {
          await p.store.plans.getRun(runId); // NOT_FOUND before streaming anything
          const fallback = async (before?: Date): Promise<Event[]> => eventsFromRun(await p.store.plans.getRun(runId), before);
          yield* asWatchResponses(p.bus.watchRun(runId, { statesOnly: req.statesOnly, signal: ctx.signal, fallback }));
        })();
      }
      throw new InvalidArgumentError('set scope: run_id, or cluster = true');
    },

    cancelRun: async (req, ctx) => ({ run: await p.runs.cancel(required(req.runId, 'run_id'), actorOf(ctx), req.reason, ctx.signal) }),
    forceCompleteRun: async (req, ctx) => ({ run: await p.runs.forceComplete(required(req.runId, 'run_id'), actorOf(ctx), req.reason, ctx.signal) }),
    adjustRun: async (req, ctx) => ({ run: await p.runs.adjust({ ...req, runId: required(req.runId, 'run_id') }, actorOf(ctx), ctx.signal) }),
    recordRunBlackout: async (req) => {
      const runId = required(req.runId, 'run_id');
      if (!req.blackout) throw new InvalidArgumentError('blackout is required');
      return { run: await p.store.plans.recordNetworkBlackout(runId, req.blackout) };
    },
  };
}
