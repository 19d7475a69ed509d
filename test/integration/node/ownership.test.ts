/**
 * Ownership across node-daemon crashes (issue 16): a node daemon SIGKILLed in the middle of a
 * migration — source or destination, pre-copy or post-copy — never leads to the guest running
 * twice, and the restarted daemon carries the migration to its end. "Running" is checked without
 * the API: QEMU processes are counted in /proc by the VM's UUID, and a copy runs when its console
 * log (written by QEMU itself) grows — the guest prints every second.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrationState, type MigrationPolicy } from '../../../services/shared/gen/migd/v1/common.js';
import { followMigration, guestSpec, policy, startMigration, startNodeCluster, waitForGuest, type NodeClient, type NodeCluster } from '../../helpers/node-cluster.js';
import { qemuPidsMatching, waitFor } from '../../helpers/qemu-process.js';

/** Resolves once the migration reaches `want` (or finished); tolerates the watch breaking. */
async function untilState(client: () => NodeClient, runId: string, want: MigrationState, timeoutMs = 60_000): Promise<MigrationState> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ac = new AbortController();
    const t = setTimeout(() => ac.abort(), Math.max(1, deadline - Date.now()));
    try {
      for await (const u of client().watchMigration({ runId }, { signal: ac.signal })) {
        if (u.update?.$case === 'stateChange' && u.update.value.to === want) return want;
        if (u.update?.$case === 'result') return u.update.value.state;
      }
    } catch {
      // the daemon is restarting or the watch was cut: ask again
    } finally {
      clearTimeout(t);
      ac.abort();
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`migration ${runId} did not reach ${MigrationState[want]} within ${timeoutMs} ms`);
}

async function size(path: string): Promise<number> {
  return stat(path).then((s) => s.size, () => -1);
}

/** True when the guest prints on this copy's console within `ms` (the guest runs there). */
async function consoleGrows(path: string, ms = 3000): Promise<boolean> {
  const before = await size(path);
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 250));
    if ((await size(path)) > before) return true;
  }
  return false;
}

describe('node daemons: ownership survives a daemon crash mid-migration', () => {
  let c: NodeCluster;
  beforeAll(async () => {
    c = await startNodeCluster(['a', 'b']);
  });
  afterAll(async () => {
    await c?.close();
  });
  const dest = () => ({ nodeId: 'b', managementAddress: c.nodes['b']!.address, migrationAddress: c.tb.host('b').migrationAddress });
  const serialLog = (host: string, vm: string): string => join(c.dir, host, 'vms', vm, 'serial.log');
  const postcopy: Partial<MigrationPolicy> = { downtimeLimitMs: 2000, postcopy: { enabled: true, afterPasses: 1, afterMs: 0, onDemandOnly: false, preempt: false } };

  /** A verifying guest on a, a slow link a→b, the migration started; returns the VM's UUID. */
  async function begin(name: string, runId: string, p: Partial<MigrationPolicy>): Promise<string> {
    const a = c.clients['a']!;
    await a.createVm({ spec: guestSpec(name, { rate: 2 << 20 }) });
    await waitForGuest(a, name, 2, 90_000, (s) => s.pagesVerified > 0);
    const uuid = (await a.getVm({ name })).vm!.spec!.uuid;
    await c.tb.shape('a', { rateMbit: 40 });
    await startMigration(c, 'a', { runId, vmName: name, destination: dest(), policy: policy(p) });
    return uuid;
  }

  async function end(name: string, runId: string, uuid: string): Promise<void> {
    const trace = await followMigration(c.clients['a']!, runId, undefined, 90_000);
    expect(trace.result.error?.message ?? '').toBe('');
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(trace.result.stats!.pagesVerifiedAfter).toBeGreaterThan(0);
    expect(trace.result.stats!.integrityErrors).toBe(0);
    console.log(`[measure] ${runId}: ${MigrationState[trace.result.state]}, ${trace.result.stats!.pagesVerifiedAfter} pages verified on the destination after arrival, total ${trace.result.stats!.totalTimeMs} ms`);
    // exactly one QEMU of this VM, on b, running; nothing left on a
    await waitFor(async () => (await qemuPidsMatching(uuid)).length === 1, 10_000, 'one QEMU of the VM');
    expect((await c.clients['b']!.getVm({ name })).vm!.pid).toBe((await qemuPidsMatching(uuid))[0]);
    expect(await consoleGrows(serialLog('b', name), 2500)).toBe(true);
    expect((await c.clients['a']!.listVms({})).vms.map((v) => v.spec!.name)).not.toContain(name);
    await c.tb.unshape('a');
    await c.clients['b']!.destroyVm({ name });
  }

  it('destination daemon killed in pre-copy: neither copy runs until it is back, then the handover completes', async () => {
    const name = 'own-dst-pre';
    const runId = 'run-own-dst-pre';
    const uuid = await begin(name, runId, { downtimeLimitMs: 2000 });
    await untilState(() => c.clients['a']!, runId, MigrationState.MIGRATION_STATE_PRECOPY);
    await c.nodes['b']!.kill();
    // QEMU completes the stream without b's daemon; the source waits for the handover.
    expect(await untilState(() => c.clients['a']!, runId, MigrationState.MIGRATION_STATE_VERIFYING)).toBe(MigrationState.MIGRATION_STATE_VERIFYING);
    expect(await qemuPidsMatching(uuid)).toHaveLength(2);
    const [onA, onB] = await Promise.all([consoleGrows(serialLog('a', name)), consoleGrows(serialLog('b', name))]);
    expect({ onA, onB }).toEqual({ onA: false, onB: false }); // paused on both: never running twice
    await c.restart('b');
    await end(name, runId, uuid);
  }, 180_000);

  it('source daemon killed in pre-copy: the restarted daemon finds the migration in QEMU and completes it', async () => {
    const name = 'own-src-pre';
    const runId = 'run-own-src-pre';
    const uuid = await begin(name, runId, { downtimeLimitMs: 2000 });
    await untilState(() => c.clients['a']!, runId, MigrationState.MIGRATION_STATE_PRECOPY);
    await c.nodes['a']!.kill();
    expect(await consoleGrows(serialLog('b', name), 2000)).toBe(false); // the destination copy stays paused
    await c.restart('a');
    await end(name, runId, uuid);
  }, 180_000);

  it('source daemon killed in post-copy: the guest runs on the destination meanwhile, and the run completes after the restart', async () => {
    const name = 'own-src-post';
    const runId = 'run-own-src-post';
    const uuid = await begin(name, runId, postcopy);
    await untilState(() => c.clients['a']!, runId, MigrationState.MIGRATION_STATE_POSTCOPY);
    await c.nodes['a']!.kill();
    // post-copy under load: the guest on b may wait seconds for its first faulted pages
    const [onA, onB] = await Promise.all([consoleGrows(serialLog('a', name)), consoleGrows(serialLog('b', name), 15_000)]);
    expect({ onA, onB }).toEqual({ onA: false, onB: true });
    await c.restart('a');
    await end(name, runId, uuid);
  }, 180_000);

  it('destination daemon killed in post-copy: never both copies running, and the restarted daemon takes the guest', async () => {
    const name = 'own-dst-post';
    const runId = 'run-own-dst-post';
    const uuid = await begin(name, runId, postcopy);
    await untilState(() => c.clients['a']!, runId, MigrationState.MIGRATION_STATE_POSTCOPY);
    await c.nodes['b']!.kill();
    expect(await consoleGrows(serialLog('a', name))).toBe(false);
    await c.restart('b');
    await end(name, runId, uuid);
  }, 180_000);
});
