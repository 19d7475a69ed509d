/**
 * NodeService handlers: thin translations between the proto API and the daemon. Validation and
 * errors live in the daemon and the migration manager; the shared RPC layer maps them to statuses.
 * The server's authorizer (authz.ts) has already refused callers with no rights on a method; the
 * handlers a peer node may call pass its identity on, so it acts only on its own runs.
 */
import { InvalidArgumentError, PermissionDeniedError, ResourceExhaustedError } from '../../shared/errors.js';
import { NodeServiceService, type WatchGuestResponse } from '../../shared/gen/migd/v1/node.js';
import type { Logger } from '../../shared/log.js';
import { toPublicError } from '../public-error.js';
import type { CallContext, Handlers } from '../../shared/rpc/server.js';
import type { NodeConfig } from '../config.js';
import type { HostInfo, VmInfo, VmSpec } from '../../shared/gen/migd/v1/common.js';
import type { MigrationManager } from '../migration/manager.js';
import type { GuestFeed } from '../guest-feed.js';
import { nodeCaller, type NodeCaller } from './authz.js';

function required(v: string, name: string): string {
  if (!v) throw new InvalidArgumentError(`${name} is required`);
  return v;
}

/**
 * Every answer goes through toPublicError: QEMU's output, QMP error texts and socket paths stay
 * in the node's log; the client gets the code, the reason and a sentence.
 */
function publicErrors(handlers: Handlers<typeof NodeServiceService>, log: Logger): Handlers<typeof NodeServiceService> {
  const out: Record<string, unknown> = {};
  for (const [key, method] of Object.entries(NodeServiceService)) {
    const h = (handlers as unknown as Record<string, (req: unknown, ctx: CallContext) => unknown>)[key]!;
    out[key] = method.responseStream
      ? async function* (req: unknown, ctx: CallContext): AsyncIterable<unknown> {
          try {
            yield* h(req, ctx) as AsyncIterable<unknown>;
          } catch (err) {
            throw toPublicError(err, log, method.path);
          }
        }
      : async (req: unknown, ctx: CallContext): Promise<unknown> => {
          try {
            return await (h(req, ctx) as Promise<unknown>);
          } catch (err) {
            throw toPublicError(err, log, method.path);
          }
        };
  }
  return out as Handlers<typeof NodeServiceService>;
}

/** Messages a WatchGuest stream may hold for a client that does not read, before it is ended. */
export const WATCH_GUEST_QUEUE = 1024;

/**
 * A VM's samples (and console bytes) as one stream. Everything it holds for its client is
 * bounded: the feed's per-subscriber queues and the merge queue end the stream with
 * RESOURCE_EXHAUSTED (STREAM_OVERFLOW) once the client is WATCH_GUEST_QUEUE messages behind.
 */
export async function* watchGuest(feed: Pick<GuestFeed, 'samples' | 'console'>, includeConsole: boolean, signal: AbortSignal, limit = WATCH_GUEST_QUEUE): AsyncIterable<WatchGuestResponse> {
  const stop = new AbortController();
  const onAbort = (): void => stop.abort();
  signal.addEventListener('abort', onAbort, { once: true });
  const sub = { signal: stop.signal, overflow: 'fail' as const };
  const queue: WatchGuestResponse[] = [];
  let failure: unknown;
  let wake: (() => void) | undefined;
  let open = 0;
  const pump = async <T>(it: AsyncIterable<T>, wrap: (v: T) => WatchGuestResponse): Promise<void> => {
    open++;
    try {
      for await (const v of it) {
        if (queue.length >= limit) throw new ResourceExhaustedError(`the client fell more than ${limit} messages behind; the stream was ended`, { reason: 'STREAM_OVERFLOW' });
        queue.push(wrap(v));
        wake?.();
      }
    } catch (err) {
      failure ??= err;
      stop.abort();
    } finally {
      open--;
      wake?.();
    }
  };
  try {
    void pump(feed.samples.subscribe([], sub), (s) => ({ item: { $case: 'sample', value: s } }));
    if (includeConsole) void pump(feed.console.subscribe([], sub), (c) => ({ item: { $case: 'console', value: Buffer.from(c) } }));
    while (open > 0 || queue.length > 0) {
      if (failure !== undefined) throw failure;
      const next = queue.shift();
      if (next) {
        yield next;
        continue;
      }
      await new Promise<void>((r) => (wake = r));
      wake = undefined;
    }
    if (failure !== undefined) throw failure;
  } finally {
    signal.removeEventListener('abort', onAbort);
    stop.abort();
  }
}

/**
 * What the handlers need of the node (the daemon provides it): narrow, so the handlers do not
 * depend on the daemon's module and can be served by any implementation.
 */
export interface NodeServiceParts {
  readonly config: Pick<NodeConfig, 'coordinatorIdentities' | 'nodeId'>;
  readonly migrations: Pick<
    MigrationManager,
    'peerMayRead' | 'expectIncoming' | 'prepareIncoming' | 'pauseIncoming' | 'recoverIncoming' | 'confirmIncoming' | 'abortIncoming' | 'resumeIncoming' | 'start' | 'watch' | 'get' | 'list' | 'adjust' | 'startPostcopy' | 'forceComplete' | 'cancel' | 'release'
  >;
  readonly vms: { list(): readonly { readonly name: string }[] };
  hostInfo(): Promise<HostInfo>;
  createVm(spec: VmSpec): Promise<VmInfo>;
  vmInfo(name: string): Promise<VmInfo>;
  destroyVm(name: string, opts?: { deleteDisks?: boolean }): Promise<void>;
  stopVm(name: string): Promise<VmInfo>;
  startVm(name: string): Promise<VmInfo>;
  guest(name: string): Pick<GuestFeed, 'samples' | 'console'>;
}

export function nodeHandlers(d: NodeServiceParts, log: Logger): Handlers<typeof NodeServiceService> {
  return publicErrors(handlers(d), log);
}

function handlers(d: NodeServiceParts): Handlers<typeof NodeServiceService> {
  const m = d.migrations;
  const caller = (ctx: CallContext): NodeCaller => nodeCaller(ctx, d.config.coordinatorIdentities, d.config.nodeId);
  /** A peer node reads only the VM it migrates (or just migrated) here. */
  const mayRead = (ctx: CallContext, name: string): string => {
    const c = caller(ctx);
    if (c.kind === 'peer' && !m.peerMayRead(c.nodeId, name)) throw new PermissionDeniedError(`node ${c.nodeId} has no migration of VM ${name} on this node`, { reason: 'NOT_RUN_SOURCE' });
    return name;
  };
  return {
    getHostInfo: async () => ({ host: await d.hostInfo() }),
    createVm: async (req) => {
      if (!req.spec) throw new InvalidArgumentError('spec is required');
      return { vm: await d.createVm(req.spec) };
    },
    listVms: async () => ({ vms: await Promise.all(d.vms.list().map((v) => d.vmInfo(v.name))) }),
    getVm: async (req, ctx) => ({ vm: await d.vmInfo(mayRead(ctx, required(req.name, 'name'))) }),
    destroyVm: async (req) => {
      await d.destroyVm(required(req.name, 'name'), { deleteDisks: req.deleteDisks });
      return {};
    },
    stopVm: async (req) => ({ vm: await d.stopVm(required(req.name, 'name')) }),
    startVm: async (req) => ({ vm: await d.startVm(required(req.name, 'name')) }),
    watchGuest: (req, ctx) => watchGuest(d.guest(mayRead(ctx, required(req.name, 'name'))), req.includeConsole, ctx.signal),
    expectIncoming: async (req) => m.expectIncoming(req),
    prepareIncoming: async (req, ctx) => m.prepareIncoming(req, caller(ctx)),
    pauseIncoming: async (req, ctx) => ({ qemuStatus: await m.pauseIncoming(required(req.runId, 'run_id'), caller(ctx)) }),
    recoverIncoming: async (req, ctx) => m.recoverIncoming(required(req.runId, 'run_id'), caller(ctx), req.managementNetwork ? 'management' : 'migration'),
    confirmIncoming: async (req, ctx) => m.confirmIncoming({ ...req, runId: required(req.runId, 'run_id') }, caller(ctx)),
    resumeIncoming: async (req, ctx) => ({ qemuStatus: await m.resumeIncoming(required(req.runId, 'run_id'), caller(ctx)) }),
    abortIncoming: async (req, ctx) => {
      await m.abortIncoming(required(req.runId, 'run_id'), caller(ctx));
      return {};
    },
    startMigration: async (req) => ({ migration: await m.start(req) }),
    watchMigration: (req, ctx) => m.watch(required(req.runId, 'run_id'), ctx.signal),
    getMigration: async (req, ctx) => ({ migration: m.get(required(req.runId, 'run_id'), caller(ctx)) }),
    listMigrations: async (req) => ({ migrations: m.list(req.activeOnly) }),
    adjustMigration: async (req) => ({ migration: await m.adjust({ ...req, runId: required(req.runId, 'run_id') }) }),
    startPostcopy: async (req) => ({ migration: await m.startPostcopy(required(req.runId, 'run_id'), req.actor, req.reason) }),
    forceComplete: async (req) => ({ migration: await m.forceComplete(required(req.runId, 'run_id'), req.actor, req.reason) }),
    cancelMigration: async (req) => ({ migration: await m.cancel(required(req.runId, 'run_id'), req.actor, req.reason) }),
    releaseMigration: async (req) => ({ migration: m.release(required(req.runId, 'run_id')) }),
  };
}
