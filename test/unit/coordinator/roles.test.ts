import { describe, expect, it } from 'vitest';
import { DEFAULT_ROLES, METHOD_ROLES, authorizeCall, checkNodeIdentity, createAuthorizer, methodName, parseRoleMap } from '../../../services/coordinator/roles.js';
import { boundNodeId, nodeIdentity } from '../../../services/shared/pki.js';
import { PermissionDeniedError } from '../../../services/shared/errors.js';
import { CoordinatorServiceService } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { createLogger } from '../../../services/shared/log.js';
import type { CallContext } from '../../../services/shared/rpc/server.js';

const path = (m: string): string => `/migd.v1.CoordinatorService/${m}`;
const reads = ['ListNodes', 'ListVms', 'GetPlan', 'GetRun', 'ListRuns', 'GetRunTimeline', 'ComparePolicies', 'ExportRuns', 'Watch'];
const writes = ['SubmitPlan', 'CreateVm', 'StopVm', 'StartVm', 'DeleteVm', 'CancelRun', 'ForceCompleteRun', 'AdjustRun', 'RecordRunBlackout'];
const nodeOnly = ['RegisterNode', 'Heartbeat'];

describe('roles', () => {
  it('covers every CoordinatorService method, and nothing else', () => {
    const methods = Object.values(CoordinatorServiceService).map((m) => methodName(m.path)).sort();
    expect(Object.keys(METHOD_ROLES).sort()).toEqual(methods);
    expect([...reads, ...writes, ...nodeOnly].sort()).toEqual(methods);
  });

  it('viewer reads; operator reads and acts; node only registers and heartbeats', () => {
    const allowed = (id: string, m: string): boolean => authorizeCall(DEFAULT_ROLES, id, path(m)).allowed;
    for (const m of reads) {
      expect(allowed('viewer', m), m).toBe(true);
      expect(allowed('operator', m), m).toBe(true);
      expect(allowed('migd-coordinator', m), m).toBe(true);
      expect(allowed('migd-node', m), m).toBe(false);
    }
    for (const m of writes) {
      expect(allowed('viewer', m), m).toBe(false);
      expect(allowed('operator', m), m).toBe(true);
      expect(allowed('migd-node', m), m).toBe(false);
    }
    for (const m of nodeOnly) {
      expect(allowed('viewer', m), m).toBe(false);
      expect(allowed('operator', m), m).toBe(false);
      expect(allowed('migd-node', m), m).toBe(true);
    }
  });

  it('refuses unknown identities, missing certificates and unknown methods', () => {
    expect(authorizeCall(DEFAULT_ROLES, 'mallory', path('ListRuns'))).toMatchObject({ allowed: false, reason: expect.stringContaining('no role') });
    expect(authorizeCall(DEFAULT_ROLES, undefined, path('ListRuns'))).toMatchObject({ allowed: false });
    expect(authorizeCall(DEFAULT_ROLES, undefined, path('ListRuns'), true)).toEqual({ allowed: true, role: 'anonymous' });
    expect(authorizeCall(DEFAULT_ROLES, 'operator', '/migd.v1.CoordinatorService/DropTables')).toMatchObject({ allowed: false });
  });

  it('the hook throws PermissionDeniedError and logs the denial', () => {
    const lines: string[] = [];
    const authorize = createAuthorizer(DEFAULT_ROLES, createLogger('t', {}, (l) => lines.push(l), 'debug'));
    const ctx = (identity: string | undefined, m: string): CallContext => ({ identity, method: path(m), peer: 'ipv4:127.0.0.1:1', signal: new AbortController().signal, deadline: undefined, metadata: undefined as never });
    expect(() => authorize(ctx('operator', 'SubmitPlan'))).not.toThrow();
    expect(() => authorize(ctx('viewer', 'SubmitPlan'))).toThrow(PermissionDeniedError);
    try {
      authorize(ctx('viewer', 'SubmitPlan'));
    } catch (err) {
      expect((err as PermissionDeniedError).code).toBe('PERMISSION_DENIED');
      expect((err as PermissionDeniedError).reason).toBe('ROLE_NOT_ALLOWED');
    }
    expect(lines.some((l) => l.includes('permission denied') && l.includes('"identity":"viewer"') && l.includes('SubmitPlan'))).toBe(true);
  });

  it('parses role maps from strings and objects', () => {
    expect([...parseRoleMap('alice=operator, bob = viewer,')]).toEqual([
      ['alice', 'operator'],
      ['bob', 'viewer'],
    ]);
    expect([...parseRoleMap({ n1: 'node' })]).toEqual([['n1', 'node']]);
    expect(() => parseRoleMap('alice')).toThrow(/identity=role/);
    expect(() => parseRoleMap('=viewer')).toThrow(/empty identity/);
    expect(() => parseRoleMap({ a: 'admin' })).toThrow(/roles are/);
    expect(() => parseRoleMap(['x'])).toThrow();
  });
  it('gives per-node identities the node role, bound to their node', () => {
    expect(nodeIdentity('a')).toBe('migd-node.a');
    expect(boundNodeId('migd-node.a')).toBe('a');
    expect(boundNodeId('migd-node.')).toBeUndefined();
    expect(boundNodeId('migd-node')).toBeUndefined();
    expect(boundNodeId(undefined)).toBeUndefined();
    expect(authorizeCall(DEFAULT_ROLES, 'migd-node.a', path('Heartbeat'))).toEqual({ allowed: true, role: 'node' });
    expect(authorizeCall(DEFAULT_ROLES, 'migd-node.a', path('SubmitPlan')).allowed).toBe(false);
    // An explicit map entry wins over the prefix rule.
    expect(authorizeCall(new Map([['migd-node.x', 'viewer' as const]]), 'migd-node.x', path('Heartbeat')).allowed).toBe(false);

    expect(() => checkNodeIdentity('migd-node.a', 'a', { requireBound: true })).not.toThrow();
    expect(() => checkNodeIdentity('migd-node.b', 'a', { requireBound: false })).toThrow(expect.objectContaining({ code: 'PERMISSION_DENIED', reason: 'NODE_IDENTITY_MISMATCH' }));
    expect(() => checkNodeIdentity('migd-node', 'a', { requireBound: false })).not.toThrow();
    expect(() => checkNodeIdentity('migd-node', 'a', { requireBound: true })).toThrow(expect.objectContaining({ reason: 'NODE_IDENTITY_REQUIRED', message: expect.stringContaining('migd-node.a') }));
    expect(() => checkNodeIdentity(undefined, 'a', { requireBound: true })).not.toThrow(); // plain-text development mode
  });
});
