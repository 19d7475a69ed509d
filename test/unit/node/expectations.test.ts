/**
 * Expected sources (issue 17): a destination lets a peer node prepare a run only when the
 * coordinator announced that node, run and VM with ExpectIncoming. The manager runs over a fake
 * host whose incoming QEMU "start" is counted and fails at once: a refused call never reaches it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { PrepareIncomingRequest, type ExpectIncomingRequest } from '../../../services/shared/gen/migd/v1/node.js';
import { createLogger } from '../../../services/shared/log.js';
import { EXPECTATION_TTL_MS, EXPECTATIONS_MAX, MigrationManager } from '../../../services/node/migration/manager.js';
import { MigrationRecords } from '../../../services/node/migration/record.js';
import type { NodeCaller } from '../../../services/node/rpc/authz.js';
import { fakeHost, fakePeer, fakeSpec, type Cleanups } from '../../helpers/migration-fakes.js';

const quiet = createLogger('expectations-test', {}, () => undefined, 'error');
const cleanups: Cleanups = [];
afterEach(async () => {
  vi.restoreAllMocks();
  for (const c of cleanups.splice(0).reverse()) await c();
});

const peer = (nodeId: string): NodeCaller => ({ kind: 'peer', nodeId });
const denied = { code: 'PERMISSION_DENIED' };

function destination(): { m: MigrationManager; starts: string[]; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'migd-expect-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const starts: string[] = [];
  const host = {
    ...fakeHost(),
    createIncoming: async (spec: { name: string }, runId: string) => {
      starts.push(`${runId}/${spec.name}`);
      throw new Error('incoming QEMU reached');
    },
  };
  const m = new MigrationManager({ nodeId: 'b', host, supportedCapabilities: new Set(['events']), migrationAddress: '127.0.0.1', stateDir: dir, peer: () => fakePeer({}), log: quiet });
  cleanups.push(() => m.close());
  return { m, starts, dir };
}

const prepare = (runId: string, vm: string, source?: string): PrepareIncomingRequest =>
  PrepareIncomingRequest.fromPartial({ runId, spec: fakeSpec(vm), ...(source ? { source: { nodeId: source, managementAddress: `${source}:1`, migrationAddress: source } } : {}) });
const expectReq = (runId: string, sourceNodeId: string, vmName: string): ExpectIncomingRequest => ({ runId, sourceNodeId, vmName });

describe('ExpectIncoming: only the announced source prepares a run', () => {
  it('refuses a peer with no expectation, another node, another VM and a forged source field, before anything starts', async () => {
    const { m, starts, dir } = destination();
    await expect(m.prepareIncoming(prepare('r1', 'vm1'), peer('a'))).rejects.toMatchObject({ ...denied, reason: 'NOT_EXPECTED_SOURCE' });
    m.expectIncoming(expectReq('r1', 'a', 'vm1'));
    await expect(m.prepareIncoming(prepare('r1', 'vm1'), peer('c'))).rejects.toMatchObject({ ...denied, reason: 'NOT_EXPECTED_SOURCE' });
    await expect(m.prepareIncoming(prepare('r1', 'vm1', 'a'), peer('c'))).rejects.toMatchObject(denied);
    await expect(m.prepareIncoming(prepare('r1', 'vm1', 'c'), peer('a'))).rejects.toMatchObject(denied);
    await expect(m.prepareIncoming(prepare('r1', 'other-vm'), peer('a'))).rejects.toMatchObject(denied);
    await expect(m.prepareIncoming(prepare('r2', 'vm1'), peer('a'))).rejects.toMatchObject(denied);
    expect(starts).toEqual([]);
    expect(await new MigrationRecords(dir).list()).toEqual([]);
    // The announced source gets through to the QEMU start.
    await expect(m.prepareIncoming(prepare('r1', 'vm1', 'a'), peer('a'))).rejects.toThrow('incoming QEMU reached');
    expect(starts).toEqual(['r1/vm1']);
    // The coordinator (and plain-text development callers) are not checked.
    await expect(m.prepareIncoming(prepare('r3', 'vm3'), { kind: 'coordinator' })).rejects.toThrow('incoming QEMU reached');
  });

  it('is idempotent for the same run, source and VM, and refuses a conflicting one with ALREADY_EXISTS', () => {
    const { m } = destination();
    const first = m.expectIncoming(expectReq('r1', 'a', 'vm1'));
    const again = m.expectIncoming(expectReq('r1', 'a', 'vm1'));
    expect(again.expiresAt!.getTime()).toBeGreaterThanOrEqual(first.expiresAt!.getTime());
    expect(() => m.expectIncoming(expectReq('r1', 'c', 'vm1'))).toThrow(expect.objectContaining({ code: 'ALREADY_EXISTS', reason: 'EXPECTATION_CONFLICT' }));
    expect(() => m.expectIncoming(expectReq('r1', 'a', 'vm2'))).toThrow(expect.objectContaining({ code: 'ALREADY_EXISTS' }));
    for (const bad of [expectReq('', 'a', 'vm1'), expectReq('r1', '', 'vm1'), expectReq('r1', 'a/../x', 'vm1'), expectReq('r1', 'a', ''), expectReq('r1', 'b', 'vm1')]) {
      expect(() => m.expectIncoming(bad), JSON.stringify(bad)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    }
  });

  it('expires after the TTL (then another source may be announced) and keeps a bounded number', async () => {
    const { m, starts } = destination();
    const t0 = Date.now();
    m.expectIncoming(expectReq('r1', 'a', 'vm1'));
    vi.spyOn(Date, 'now').mockReturnValue(t0 + EXPECTATION_TTL_MS + 1);
    await expect(m.prepareIncoming(prepare('r1', 'vm1'), peer('a'))).rejects.toMatchObject(denied);
    m.expectIncoming(expectReq('r1', 'c', 'vm1'));
    vi.restoreAllMocks();
    for (let i = 0; i < EXPECTATIONS_MAX; i++) m.expectIncoming(expectReq(`fill-${i}`, 'a', `vm-${i}`));
    await expect(m.prepareIncoming(prepare('r1', 'vm1'), peer('c'))).rejects.toMatchObject(denied); // the oldest went
    await expect(m.prepareIncoming(prepare(`fill-${EXPECTATIONS_MAX - 1}`, `vm-${EXPECTATIONS_MAX - 1}`), peer('a'))).rejects.toThrow('incoming QEMU reached');
    expect(starts).toEqual([`fill-${EXPECTATIONS_MAX - 1}/vm-${EXPECTATIONS_MAX - 1}`]);
  });

  it("lets another node neither abort nor drive a run announced for a source, nor block it in advance", async () => {
    const { m, starts } = destination();
    m.expectIncoming(expectReq('r1', 'a', 'vm1'));
    await expect(m.abortIncoming('r1', peer('c'))).rejects.toMatchObject(denied);
    await expect(m.pauseIncoming('r1', peer('c'))).rejects.toMatchObject(denied);
    await expect(m.recoverIncoming('r1', peer('c'))).rejects.toMatchObject(denied);
    await expect(m.resumeIncoming('r1', peer('c'))).rejects.toMatchObject(denied);
    await expect(m.confirmIncoming({ runId: 'r1', timeoutMs: 1, resume: true }, peer('c'))).rejects.toMatchObject(denied);
    // An abort of a run nobody announced yet changes nothing: announced later, it can be prepared.
    await m.abortIncoming('r2', peer('c'));
    m.expectIncoming(expectReq('r2', 'a', 'vm2'));
    await expect(m.prepareIncoming(prepare('r2', 'vm2'), peer('a'))).rejects.toThrow('incoming QEMU reached');
    await expect(m.prepareIncoming(prepare('r1', 'vm1'), peer('a'))).rejects.toThrow('incoming QEMU reached');
    expect(starts).toEqual(['r2/vm2', 'r1/vm1']);
    // The announced source's own abort of a run with no copy here blocks a late PrepareIncoming.
    m.expectIncoming(expectReq('r4', 'a', 'vm4'));
    await m.abortIncoming('r4', peer('a'));
    await expect(m.prepareIncoming(prepare('r4', 'vm4'), peer('a'))).rejects.toMatchObject({ reason: 'RUN_ABORTED' });
  });
});
