import { describe, expect, it } from 'vitest';
import { nodeCaller, NODE_METHODS, PEER_METHODS, requireRunSource } from '../../../services/node/rpc/authz.js';
import { NodeServiceService } from '../../../services/shared/gen/migd/v1/node.js';

const call = (identity: string | undefined, method: string) => nodeCaller({ identity, method: `/migd.v1.NodeService/${method}` }, ['migd-coordinator'], 'a');

describe('node authorization', () => {
  it('knows every NodeService method', () => {
    expect(new Set(Object.values(NodeServiceService).map((m) => m.path.split('/').pop()))).toEqual(NODE_METHODS);
  });

  it('lets the coordinator call everything, and anonymous callers only in plain-text mode', () => {
    for (const m of NODE_METHODS) {
      expect(call('migd-coordinator', m)).toEqual({ kind: 'coordinator' });
      expect(call(undefined, m)).toEqual({ kind: 'anonymous' });
    }
  });

  it('lets another node call the incoming side only; refuses users, the shared node identity and itself', () => {
    for (const m of NODE_METHODS) {
      if (PEER_METHODS.has(m)) expect(call('migd-node.b', m)).toEqual({ kind: 'peer', nodeId: 'b' });
      else expect(() => call('migd-node.b', m), m).toThrow(expect.objectContaining({ code: 'PERMISSION_DENIED' }));
      for (const who of ['operator', 'viewer', 'migd-node', 'migd-node.a', 'migd-coordinatorx']) expect(() => call(who, m), `${who} ${m}`).toThrow(expect.objectContaining({ code: 'PERMISSION_DENIED' }));
    }
    expect(PEER_METHODS.has('ExpectIncoming')).toBe(false); // only the coordinator announces a run's source
    expect(() => call('migd-coordinator', 'Nope')).toThrow(/not a NodeService method/);
  });

  it("holds a peer to its own runs", () => {
    expect(() => requireRunSource({ kind: 'peer', nodeId: 'b' }, 'c', 'r1')).toThrow(expect.objectContaining({ reason: 'NOT_RUN_SOURCE' }));
    expect(() => requireRunSource({ kind: 'peer', nodeId: 'b' }, undefined, 'r1')).toThrow(expect.objectContaining({ reason: 'NOT_RUN_SOURCE' }));
    expect(() => requireRunSource({ kind: 'peer', nodeId: 'b' }, 'b', 'r1')).not.toThrow();
    expect(() => requireRunSource({ kind: 'coordinator' }, 'c', 'r1')).not.toThrow();
  });
});
