/**
 * Network cards through the node daemons (issue 13): `--network vm=br-vm` on two testbed hosts
 * with a VM network, a tap per card on the mapped bridge, the MAC kept across a migration, the
 * taps removed when the VM goes away (also after a failed incoming), bad input refused with
 * nothing left behind — and the blackout measured from the client namespace while it migrates.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MigrationState, WorkloadPattern, type NicSpec } from '../../../services/shared/gen/migd/v1/common.js';
import { BlackoutProbe } from '../../../services/testbed/guest-probe.js';
import { followMigration, guestSpec, policy, resetNodeCluster, startMigration, startNodeCluster, waitForGuest, type NodeCluster } from '../../helpers/node-cluster.js';

const run = promisify(execFile);

describe('node daemons: NICs on a VM network', () => {
  let c: NodeCluster;
  beforeAll(async () => {
    c = await startNodeCluster(['a', 'b'], { vmNetwork: true });
  }, 120_000);
  afterAll(async () => {
    await c?.close();
  });
  let vmNames: string[] = [];
  const probes: BlackoutProbe[] = [];
  afterEach(async () => {
    for (const p of probes.splice(0)) await p.stop();
    const names = vmNames;
    vmNames = [];
    if (c) await resetNodeCluster(c, names);
  });

  /** The taps on a host's br-vm (its uplink vm0 left out). */
  const taps = async (host: string): Promise<string[]> => {
    const out = await c.tb.host(host).exec('ip', ['-o', 'link', 'show', 'master', 'br-vm']);
    return out.stdout
      .split('\n')
      .map((l) => /^\d+: ([^:@]+)/.exec(l)?.[1] ?? '')
      .filter((n) => n && n !== 'vm0');
  };
  /** The switch port (`v-<host>`) where the VM network's switch learnt `mac`, if it did. */
  const learntAt = async (mac: string): Promise<string | undefined> => {
    const { stdout } = await run('bridge', ['-n', c.tb.switchNetns, 'fdb', 'show', 'br', 'br-vm']);
    return new RegExp(`^${mac} dev (\\S+)`, 'm').exec(stdout)?.[1];
  };
  const nic = (p: Partial<NicSpec>): NicSpec => ({ mac: '', network: 'vm', guestIp: '', ...p });
  const idle = (name: string, nics: NicSpec[]) => ({ ...guestSpec(name, { pattern: WorkloadPattern.WORKLOAD_PATTERN_IDLE, bytesPerWorker: 16 * 1024 * 1024 }), nics });

  it('refuses an unknown network, a malformed or duplicate MAC, and two guest addresses, leaving nothing behind', async () => {
    vmNames = ['bad1', 'bad2'];
    const a = c.clients['a']!;
    const bad = { code: 'INVALID_ARGUMENT' };
    await expect(a.createVm({ spec: idle('bad1', [nic({ network: 'nope' })]) })).rejects.toMatchObject({ ...bad, message: expect.stringContaining('nope') });
    await expect(a.createVm({ spec: idle('bad1', [nic({ mac: '52:54:00:00:00:zz' })]) })).rejects.toMatchObject(bad);
    await expect(a.createVm({ spec: idle('bad1', [nic({ mac: '01:00:5e:00:00:01' })]) })).rejects.toMatchObject(bad);
    await expect(a.createVm({ spec: idle('bad1', [nic({ mac: '52:54:00:aa:00:01' }), nic({ mac: '52:54:00:AA:00:01' })]) })).rejects.toMatchObject({ ...bad, message: expect.stringContaining('52:54:00:aa:00:01') });
    await expect(a.createVm({ spec: idle('bad1', [nic({ guestIp: '10.0.0.1/24' }), nic({ guestIp: '10.0.0.2/24' })]) })).rejects.toMatchObject(bad);
    await expect(a.createVm({ spec: idle('bad1', [nic({ guestIp: '10.0.0.300/24' })]) })).rejects.toMatchObject(bad);
    expect((await a.listVms({})).vms.map((v) => v.spec?.name)).not.toContain('bad1');
    expect(await taps('a')).toEqual([]);

    // A MAC another VM of this node uses: refused before anything starts.
    const mac = c.tb.vm!.guestMac(7);
    await a.createVm({ spec: idle('bad2', [nic({ mac })]) });
    expect(await taps('a')).toHaveLength(1);
    await expect(a.createVm({ spec: idle('bad1', [nic({ mac: mac.toUpperCase() })]) })).rejects.toMatchObject({ ...bad, message: expect.stringContaining('bad2') });
    expect(await taps('a')).toHaveLength(1);
    await a.destroyVm({ name: 'bad2' });
    expect(await taps('a')).toEqual([]);
  }, 120_000);

  it('keeps the MAC across a migration, moves the tap, and the guest answers from outside with a short blackout', async () => {
    vmNames = ['net1'];
    const a = c.clients['a']!;
    const b = c.clients['b']!;
    const vmNet = c.tb.vm!;
    const ip = vmNet.guestAddress(0);
    const created = await a.createVm({ spec: idle('net1', [nic({ guestIp: `${ip}/${vmNet.prefixLength}` }), nic({})]) });
    const macs = created.vm!.spec!.nics.map((n) => n.mac);
    expect(macs).toHaveLength(2);
    for (const m of macs) expect(m).toMatch(/^52:54:00(:[0-9a-f]{2}){3}$/);
    expect(new Set(macs).size).toBe(2);
    expect(await taps('a')).toHaveLength(2);
    await waitForGuest(a, 'net1', 2, 60_000, (s) => s.pagesVerified > 0);

    const probe = await BlackoutProbe.start(vmNet, ip);
    probes.push(probe);

    const dest = { nodeId: 'b', managementAddress: c.nodes['b']!.address, migrationAddress: c.tb.host('b').migrationAddress };
    await startMigration(c, 'a', { runId: 'run-nic-1', vmName: 'net1', destination: dest, policy: policy({ downtimeLimitMs: 300 }) });
    // The second card is never brought up in the guest: it sends nothing, so only the
    // announcement after the switch-over teaches the switch where its MAC lives now.
    expect(await learntAt(macs[1]!)).toBeUndefined();
    const trace = await followMigration(a, 'run-nic-1');
    expect(trace.result.error?.message ?? '').toBe('');
    expect(trace.result.state).toBe(MigrationState.MIGRATION_STATE_SUCCEEDED);
    await probe.answered(30);
    const r = await probe.stop();
    // What the nodes measure themselves: both cards announced once the guest resumed on b.
    expect(trace.result.stats?.nicsAnnounced).toBe(2);
    // Soon after the resume, within the prober's patience (its size is a printed figure; the
    // switch learning the silent card's MAC on b below is what shows the announcement worked).
    expect(trace.result.stats?.announceAfterResumeMs).toBeLessThan(15_000);
    process.stdout.write(`nic-migration ${JSON.stringify({ downtimeMs: trace.result.stats?.downtimeMs, announceAfterResumeMs: trace.result.stats?.announceAfterResumeMs, blackoutMs: Math.round(r.blackoutMs), lost: r.lost, sent: r.sent })}\n`);
    // The blackout's size is a performance figure (printed above; measured by the lab and the
    // storage benchmark), not a timed assertion: at load 20 on this 2-core machine it reached
    // 1.09 s. What must hold is that the guest answers again after one outage, well within the
    // prober's patience, and that the switch learnt both MACs on b (the silent card only from
    // the announcement).
    expect(r.blackoutMs).toBeLessThan(15_000);
    expect(await learntAt(macs[0]!)).toBe('v-b');
    expect(await learntAt(macs[1]!)).toBe('v-b');

    const moved = (await b.getVm({ name: 'net1' })).vm!;
    expect(moved.spec!.nics.map((n) => n.mac)).toEqual(macs);
    expect(await taps('a')).toEqual([]);
    expect(await taps('b')).toHaveLength(2);
    await b.destroyVm({ name: 'net1' });
    expect(await taps('b')).toEqual([]);
  }, 240_000);

  it('removes the destination taps when an incoming migration is aborted', async () => {
    vmNames = ['inc1'];
    const b = c.clients['b']!;
    const spec = idle('inc1', [nic({ mac: c.tb.vm!.guestMac(9) })]);
    await b.prepareIncoming({ runId: 'run-nic-abort', spec, policy: policy({}), disks: [] });
    expect(await taps('b')).toHaveLength(1);
    await b.abortIncoming({ runId: 'run-nic-abort' });
    expect(await taps('b')).toEqual([]);
  }, 120_000);
});
