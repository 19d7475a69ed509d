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
import { MigrationState, VmState, type MigrationPolicy } from '../../../services/shared/gen/migd/v1/common.js';
import { followMigration, guestSpec, policy, resetNodeCluster, startMigration, startNodeCluster, waitForGuest, type NodeClient, type NodeCluster } from '../../helpers/node-cluster.js';
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
  const other = (h: string): string => (h === 'a' ? 'b' : 'a');
  const dest = (h: string) => ({ nodeId: h, managementAddress: c.nodes[h]!.address, migrationAddress: c.tb.host(h).migrationAddress });
  const serialLog = (host: string, vm: string): string => join(c.dir, host, 'vms', vm, 'serial.log');
  const postcopy: Partial<MigrationPolicy> = { downtimeLimitMs: 2000, postcopy: { enabled: true, afterPasses: 1, afterMs: 0, onDemandOnly: false, preempt: false } };

  // One verifying guest is handed from case to case: each migrates it on from the host where the
  // last one left it (a→b, b→a, …), so only the first case pays for a boot and the workload's
  // first (unverified) pass. What the cases prove is about the daemons, not a fresh guest; a case
  // that fails before handing the guest over leaves `held` unset, and the next one starts clean
  // with a new guest on its source.
  const name = 'own';
  let held: { host: string; uuid: string } | undefined;

  /** The guest on `from`, a slow link from→other, the migration started; returns the VM's UUID. */
  async function begin(from: string, runId: string, p: Partial<MigrationPolicy>): Promise<string> {
    const src = c.clients[from]!;
    const prior = held;
    held = undefined;
    const vm = prior?.host === from ? (await src.getVm({ name }).catch(() => undefined))?.vm : undefined;
    if (vm?.state !== VmState.VM_STATE_RUNNING || vm.migrationRunId !== '') {
      await resetNodeCluster(c, [name]);
      await src.createVm({ spec: guestSpec(name, { rate: 2 << 20 }) });
    }
    await waitForGuest(src, name, 2, 90_000, (s) => s.pagesVerified > 0);
    const uuid = (await src.getVm({ name })).vm!.spec!.uuid;
    await c.tb.shape(from, { rateMbit: 40 });
    await startMigration(c, from, { runId, vmName: name, destination: dest(other(from)), policy: policy(p) });
    return uuid;
  }

  async function end(from: string, runId: string, uuid: string): Promise<void> {
    const to = other(from);
    const trace = await followMigration(c.clients[from]!, runId, undefined, 90_000);
    expect(trace.result.error?.message ?? '').toBe('');
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(trace.result.stats!.pagesVerifiedAfter).toBeGreaterThan(0);
    expect(trace.result.stats!.integrityErrors).toBe(0);
    console.log(`[measure] ${runId}: ${MigrationState[trace.result.state]}, ${trace.result.stats!.pagesVerifiedAfter} pages verified on the destination after arrival, total ${trace.result.stats!.totalTimeMs} ms`);
    // exactly one QEMU of this VM, on the destination, running; nothing left on the source
    await waitFor(async () => (await qemuPidsMatching(uuid)).length === 1, 10_000, 'one QEMU of the VM');
    expect((await c.clients[to]!.getVm({ name })).vm!.pid).toBe((await qemuPidsMatching(uuid))[0]);
    expect(await consoleGrows(serialLog(to, name), 2500)).toBe(true);
    expect((await c.clients[from]!.listVms({})).vms.map((v) => v.spec!.name)).not.toContain(name);
    await c.tb.unshape(from);
    held = { host: to, uuid };
  }

  it('destination daemon killed in pre-copy: neither copy runs until it is back, then the handover completes', async () => {
    const [src, dst] = ['a', 'b'];
    const runId = 'run-own-dst-pre';
    const uuid = await begin(src, runId, { downtimeLimitMs: 2000 });
    await untilState(() => c.clients[src]!, runId, MigrationState.MIGRATION_STATE_PRECOPY);
    await c.nodes[dst]!.kill();
    // The slow link was there to land the kill in pre-copy; QEMU now completes the stream without
    // the destination's daemon (at full speed), and the source waits for the handover.
    await c.tb.unshape(src);
    expect(await untilState(() => c.clients[src]!, runId, MigrationState.MIGRATION_STATE_VERIFYING)).toBe(MigrationState.MIGRATION_STATE_VERIFYING);
    expect(await qemuPidsMatching(uuid)).toHaveLength(2);
    const [onSrc, onDst] = await Promise.all([consoleGrows(serialLog(src, name)), consoleGrows(serialLog(dst, name))]);
    expect({ onSrc, onDst }).toEqual({ onSrc: false, onDst: false }); // paused on both: never running twice
    await c.restart(dst);
    await end(src, runId, uuid);
  }, 180_000);

  it('source daemon killed in pre-copy: the restarted daemon finds the migration in QEMU and completes it', async () => {
    const [src, dst] = ['b', 'a'];
    const runId = 'run-own-src-pre';
    const uuid = await begin(src, runId, { downtimeLimitMs: 2000 });
    await untilState(() => c.clients[src]!, runId, MigrationState.MIGRATION_STATE_PRECOPY);
    await c.nodes[src]!.kill();
    expect(await consoleGrows(serialLog(dst, name), 2000)).toBe(false); // the destination copy stays paused
    await c.restart(src);
    await c.tb.unshape(src); // the restarted daemon has found the migration: the rest need not crawl
    await end(src, runId, uuid);
  }, 180_000);

  it('source daemon killed in post-copy: the guest runs on the destination meanwhile, and the run completes after the restart', async () => {
    const [src, dst] = ['a', 'b'];
    const runId = 'run-own-src-post';
    const uuid = await begin(src, runId, postcopy);
    await untilState(() => c.clients[src]!, runId, MigrationState.MIGRATION_STATE_POSTCOPY);
    await c.nodes[src]!.kill();
    // post-copy under load: the guest on the destination may wait seconds for its first faulted pages
    const [onSrc, onDst] = await Promise.all([consoleGrows(serialLog(src, name)), consoleGrows(serialLog(dst, name), 15_000)]);
    expect({ onSrc, onDst }).toEqual({ onSrc: false, onDst: true });
    await c.restart(src);
    await c.tb.unshape(src);
    await end(src, runId, uuid);
  }, 180_000);

  it('destination daemon killed in post-copy: never both copies running, and the restarted daemon takes the guest', async () => {
    const [src, dst] = ['b', 'a'];
    const runId = 'run-own-dst-post';
    const uuid = await begin(src, runId, postcopy);
    await untilState(() => c.clients[src]!, runId, MigrationState.MIGRATION_STATE_POSTCOPY);
    await c.nodes[dst]!.kill();
    expect(await consoleGrows(serialLog(src, name))).toBe(false);
    await c.restart(dst);
    await c.tb.unshape(src);
    await end(src, runId, uuid);
  }, 180_000);
});
