/**
 * Who may call what. A caller's identity is the common name of its client certificate; the
 * configured role map turns it into a role, and each CoordinatorService method names the roles
 * allowed to call it:
 *
 * | role     | methods                                                                         |
 * | -------- | ------------------------------------------------------------------------------- |
 * | viewer   | ListNodes, ListVms, GetPlan, GetRun, ListRuns, GetRunTimeline, ComparePolicies, |
 * |          | ExportRuns, Watch                                                               |
 * | operator | everything a viewer may, plus SubmitPlan, CreateVm, StopVm, StartVm, DeleteVm,   |
 * |          | CancelRun, ForceCompleteRun, AdjustRun, RecordRunBlackout                       |
 * | node     | RegisterNode, Heartbeat only                                                    |
 *
 * A method missing from the table is refused (fail closed). Pure apart from the log line.
 *
 * Node identities: a per-node certificate `migd-node.<node id>` has the node role and speaks for
 * that node only — RegisterNode and Heartbeat for any other id are refused ({@link checkNodeIdentity}),
 * so a stolen node certificate cannot re-point another node's address at itself. The shared
 * development identity `migd-node` may speak for any node unless the coordinator requires bound
 * identities (the default; `--allow-shared-node-identity` turns it off).
 */
import { PermissionDeniedError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';
import { boundNodeId, nodeIdentity } from '../shared/pki.js';
import type { Authorizer, CallContext } from '../shared/rpc/server.js';

export type Role = 'viewer' | 'operator' | 'node';

const ROLES: readonly Role[] = ['viewer', 'operator', 'node'];

/** The default identity → role map (dev PKI identities). */
export const DEFAULT_ROLES: ReadonlyMap<string, Role> = new Map<string, Role>([
  ['operator', 'operator'],
  ['viewer', 'viewer'],
  ['migd-node', 'node'],
  ['migd-coordinator', 'operator'],
]);

/** The role of `identity`: the map's, else node for a per-node identity. */
export function roleOf(roles: ReadonlyMap<string, Role>, identity: string): Role | undefined {
  return roles.get(identity) ?? (boundNodeId(identity) !== undefined ? 'node' : undefined);
}

/**
 * Checks that the caller may speak for node `nodeId` (RegisterNode, Heartbeat): a per-node
 * identity only for its own node; another node-role identity (the shared `migd-node`) only when
 * bound identities are not required. Anonymous callers (plain-text development mode) pass.
 * @throws PermissionDeniedError (reason NODE_IDENTITY_MISMATCH or NODE_IDENTITY_REQUIRED)
 */
export function checkNodeIdentity(identity: string | undefined, nodeId: string, opts: { requireBound: boolean }): void {
  if (identity === undefined) return;
  const bound = boundNodeId(identity);
  if (bound !== undefined) {
    if (bound !== nodeId) throw new PermissionDeniedError(`identity "${identity}" speaks for node "${bound}", not "${nodeId}"`, { reason: 'NODE_IDENTITY_MISMATCH' });
    return;
  }
  if (opts.requireBound) {
    throw new PermissionDeniedError(`node "${nodeId}" must present its own certificate ("${nodeIdentity(nodeId)}"), not "${identity}": this coordinator requires bound node identities`, { reason: 'NODE_IDENTITY_REQUIRED' });
  }
}

const read: readonly Role[] = ['viewer', 'operator'];
const write: readonly Role[] = ['operator'];
const node: readonly Role[] = ['node'];

/** CoordinatorService method name → roles allowed to call it. */
export const METHOD_ROLES: Readonly<Record<string, readonly Role[]>> = Object.freeze({
  RegisterNode: node,
  Heartbeat: node,
  ListNodes: read,
  ListVms: read,
  GetPlan: read,
  GetRun: read,
  ListRuns: read,
  GetRunTimeline: read,
  ComparePolicies: read,
  ExportRuns: read,
  Watch: read,
  SubmitPlan: write,
  CreateVm: write,
  StopVm: write,
  StartVm: write,
  DeleteVm: write,
  CancelRun: write,
  ForceCompleteRun: write,
  AdjustRun: write,
  RecordRunBlackout: write,
});

/**
 * Parses "identity=role,identity=role" (flags, env) or an object {identity: role} (JSON config).
 * @throws Error naming the bad entry (the caller wraps it into a ConfigError)
 */
export function parseRoleMap(raw: unknown): ReadonlyMap<string, Role> {
  const out = new Map<string, Role>();
  const add = (identity: string, role: unknown): void => {
    const id = identity.trim();
    if (!id) throw new Error('an entry has an empty identity');
    if (typeof role !== 'string' || !(ROLES as readonly string[]).includes(role.trim())) {
      throw new Error(`identity "${id}" has role "${String(role)}"; roles are ${ROLES.join(', ')}`);
    }
    out.set(id, role.trim() as Role);
  };
  if (typeof raw === 'string') {
    for (const entry of raw.split(',')) {
      if (!entry.trim()) continue;
      const eq = entry.indexOf('=');
      if (eq < 0) throw new Error(`"${entry.trim()}" is not identity=role`);
      add(entry.slice(0, eq), entry.slice(eq + 1));
    }
  } else if (typeof raw === 'object' && raw !== null && !Array.isArray(raw)) {
    for (const [id, role] of Object.entries(raw)) add(id, role);
  } else {
    throw new Error('must be "identity=role,…" or an object {identity: role}');
  }
  return out;
}

/** The method name of a full gRPC path: `/migd.v1.CoordinatorService/SubmitPlan` → `SubmitPlan`. */
export function methodName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/** The decision on one call: allowed, or why not. */
export type Verdict = { readonly allowed: true; readonly role: Role | 'anonymous' } | { readonly allowed: false; readonly reason: string };

/**
 * Decides whether `identity` may call `method`. Without an identity (plain-text loopback mode)
 * a call is allowed only when `anonymousAllowed` (the coordinator's `--insecure` development mode).
 */
export function authorizeCall(roles: ReadonlyMap<string, Role>, identity: string | undefined, method: string, anonymousAllowed = false): Verdict {
  const name = methodName(method);
  const allowed = METHOD_ROLES[name];
  if (!allowed) return { allowed: false, reason: `${name} is not a CoordinatorService method` };
  if (identity === undefined) {
    return anonymousAllowed ? { allowed: true, role: 'anonymous' } : { allowed: false, reason: `${name} needs a client certificate` };
  }
  const role = roleOf(roles, identity);
  if (!role) return { allowed: false, reason: `identity "${identity}" has no role` };
  if (!allowed.includes(role)) return { allowed: false, reason: `identity "${identity}" (role ${role}) may not call ${name} (needs ${allowed.join(' or ')})` };
  return { allowed: true, role };
}

/**
 * The RpcServer `authorize` hook.
 * @throws PermissionDeniedError (PERMISSION_DENIED) when the caller's role does not allow the call;
 *   a warning is logged with the identity, method and peer
 */
export function createAuthorizer(roles: ReadonlyMap<string, Role>, log: Logger, opts: { anonymousAllowed?: boolean } = {}): Authorizer {
  return (ctx: CallContext) => {
    const v = authorizeCall(roles, ctx.identity, ctx.method, opts.anonymousAllowed ?? false);
    if (v.allowed) return;
    log.warn('permission denied', { identity: ctx.identity ?? null, method: ctx.method, peer: ctx.peer, reason: v.reason });
    throw new PermissionDeniedError(v.reason, { reason: 'ROLE_NOT_ALLOWED' });
  };
}
