/**
 * Who may call a node daemon. A caller's identity is the common name of its client certificate:
 *
 * | caller                                   | methods                                                 |
 * | ---------------------------------------- | ------------------------------------------------------- |
 * | the coordinator (`--coordinator-identity`) | every NodeService method                              |
 * | another node, `migd-node.<id>`           | PrepareIncoming for a run the coordinator announced     |
 * |                                          | with ExpectIncoming naming that node, run and VM; then  |
 * |                                          | Pause/Recover/Confirm/Abort/ResumeIncoming, GetVm and   |
 * |                                          | WatchGuest — for the runs it prepared and their VMs     |
 * |                                          | only (checked per run by the manager); and GetMigration |
 * |                                          | for runs it is the destination of                       |
 * | anyone else (operator, viewer, the shared `migd-node`) | nothing                                   |
 *
 * A method missing from the table is refused (fail closed). Without a certificate (plain-text
 * loopback development mode) every call is allowed, as on the coordinator. Health and reflection
 * are separate services that describe the API and call nothing; they stay open.
 */
import { PermissionDeniedError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { boundNodeId } from '../../shared/pki.js';
import type { Authorizer, CallContext } from '../../shared/rpc/server.js';

/** Who is calling, as far as the node's handlers care. */
export type NodeCaller = { readonly kind: 'coordinator' } | { readonly kind: 'anonymous' } | { readonly kind: 'peer'; readonly nodeId: string };

/** NodeService methods another node may call (scoped to its own runs by the handlers). */
export const PEER_METHODS: ReadonlySet<string> = new Set(['PrepareIncoming', 'PauseIncoming', 'RecoverIncoming', 'ConfirmIncoming', 'AbortIncoming', 'ResumeIncoming', 'GetVm', 'WatchGuest', 'GetMigration']);

/** Every NodeService method (the coordinator may call them all). */
export const NODE_METHODS: ReadonlySet<string> = new Set([
  'GetHostInfo', 'CreateVm', 'ListVms', 'GetVm', 'DestroyVm', 'StopVm', 'StartVm', 'WatchGuest',
  'ExpectIncoming', 'PrepareIncoming', 'PauseIncoming', 'RecoverIncoming', 'ConfirmIncoming', 'AbortIncoming', 'ResumeIncoming',
  'StartMigration', 'WatchMigration', 'GetMigration', 'ListMigrations', 'AdjustMigration', 'StartPostcopy', 'ForceComplete', 'CancelMigration', 'ReleaseMigration',
]);

function methodName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/**
 * Classifies the caller of `ctx`, or says why it may not call at all.
 * @throws PermissionDeniedError (reason NOT_AUTHORIZED) for an identity with no rights on `method`
 */
export function nodeCaller(ctx: Pick<CallContext, 'identity' | 'method'>, coordinatorIdentities: readonly string[], selfNodeId: string): NodeCaller {
  const name = methodName(ctx.method);
  if (!NODE_METHODS.has(name)) throw new PermissionDeniedError(`${name} is not a NodeService method`, { reason: 'NOT_AUTHORIZED' });
  if (ctx.identity === undefined) return { kind: 'anonymous' };
  if (coordinatorIdentities.includes(ctx.identity)) return { kind: 'coordinator' };
  const peer = boundNodeId(ctx.identity);
  if (peer !== undefined && peer !== selfNodeId && PEER_METHODS.has(name)) return { kind: 'peer', nodeId: peer };
  throw new PermissionDeniedError(`identity "${ctx.identity}" may not call ${name} on this node`, { reason: 'NOT_AUTHORIZED' });
}

/** The RpcServer `authorize` hook: refuses callers with no rights on the method, and logs them. */
export function nodeAuthorizer(coordinatorIdentities: readonly string[], selfNodeId: string, log: Logger): Authorizer {
  return (ctx) => {
    try {
      nodeCaller(ctx, coordinatorIdentities, selfNodeId);
    } catch (err) {
      log.warn('permission denied', { identity: ctx.identity ?? null, method: ctx.method, peer: ctx.peer });
      throw err;
    }
  };
}

/**
 * Per-run check for a peer node: it may act on a run only when it is the run's bound source.
 * @throws PermissionDeniedError (reason NOT_RUN_SOURCE)
 */
export function requireRunSource(caller: NodeCaller, runSource: string | undefined, runId: string): void {
  if (caller.kind !== 'peer') return;
  if (runSource !== caller.nodeId) throw new PermissionDeniedError(`node ${caller.nodeId} is not the source of run ${runId}`, { reason: 'NOT_RUN_SOURCE' });
}
