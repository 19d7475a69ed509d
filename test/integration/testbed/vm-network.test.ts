/**
 * The testbed's VM network (issue 13 §3) on real namespaces: br-vm in the switch and in each host,
 * the client namespace, taps for guests, isolation from the management and migration networks,
 * and the prober measuring a real outage across it. Needs root; everything it creates goes with
 * the testbed in afterAll.
 */
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Testbed, systemRunner } from '../../../services/testbed/index.js';
import { Prober } from '../../../services/testbed/prober.js';

process.env['MIGD_LOG_LEVEL'] ??= 'warn';

const PREFIX = `migdv${Math.floor(Math.random() * 0xffff).toString(16).padStart(4, '0')}-`;

// A UDP echo (what the guest's /init runs) for a host namespace standing in for a guest.
const ECHO = `
const s = require('node:dgram').createSocket('udp4');
s.on('message', (m, r) => s.send(m, r.port, r.address));
s.bind(Number(process.argv[1]), () => process.stdout.write('ready\\n'));
`;

describe('testbed VM network', () => {
  let tb: Testbed | undefined;
  const children: ChildProcess[] = [];
  const bed = (): Testbed => {
    if (!tb) throw new Error('testbed not created');
    return tb;
  };

  beforeAll(async () => {
    tb = await Testbed.create({ prefix: PREFIX, hosts: ['a', 'b'], vmNetwork: true });
  }, 60_000);

  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    const name = tb?.name;
    await tb?.destroy();
    if (name) {
      const left = (await systemRunner.run('ip', ['netns', 'list'])).stdout;
      expect(left).not.toContain(name);
    }
  }, 60_000);

  const links = async (ns: string, args: string[]): Promise<string> => (await systemRunner.run('ip', ['-n', ns, '-o', ...args])).stdout;

  it('wires br-vm in every host to the switch, with no host address on it, and a client on the /25', async () => {
    const t = bed();
    const vm = t.vm;
    expect(vm).toBeDefined();
    if (!vm) return;
    expect(vm.subnet).toMatch(/^198\.19\.\d+\.128\/25$/);
    for (const h of t.hosts) {
      expect(h.vmBridge).toBe('br-vm');
      expect(await links(h.netns, ['link', 'show', 'master', 'br-vm'])).toMatch(/\bvm0@/);
      expect(await links(h.netns, ['addr', 'show', 'dev', 'br-vm'])).not.toMatch(/inet /);
      expect(await links(h.netns, ['addr', 'show', 'dev', 'vm0'])).not.toMatch(/inet /);
    }
    const ports = await links(t.switchNetns, ['link', 'show', 'master', 'br-vm']);
    expect(ports).toMatch(/v-a@/);
    expect(ports).toMatch(/v-b@/);
    expect(ports).toMatch(/v-client@/);
    expect(await links(vm.client.netns, ['addr', 'show', 'dev', 'vm0'])).toContain(`inet ${vm.client.address}/25`);
    // The client routes nothing but its /25: not the management, not the migration network.
    const routes = (await vm.client.exec('ip', ['-4', 'route', 'show'])).stdout.trim().split('\n');
    expect(routes).toHaveLength(1);
    expect(routes[0]).toMatch(new RegExp(`^${vm.subnet.replace(/\./g, '\\.')} dev vm0`));
  });

  it('carries a probe from the client to a "guest" behind host b, and shows a 400 ms outage as the blackout', async () => {
    const t = bed();
    const vm = t.vm;
    if (!vm) throw new Error('no VM network');
    const b = t.hosts[1];
    if (!b) throw new Error('no host b');
    // Stand-in guest: host b's br-vm gets guest 0's address for this test only.
    const guest = vm.guestAddress(0);
    await b.exec('ip', ['addr', 'add', `${guest}/25`, 'dev', 'br-vm']);
    const echo = b.spawn(process.execPath, ['-e', ECHO, '7'], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(echo);
    await new Promise<void>((resolve, reject) => {
      echo.stdout?.once('data', () => resolve());
      echo.once('exit', (c) => reject(new Error(`echo exited ${c}`)));
    });
    const prober = await Prober.start({ target: guest, port: 7, netns: vm.client.netns, intervalMs: 10, timeoutMs: 300 });
    try {
      await prober.waitForAnswers(30, 10_000);
      // Cut the guest's side of the L2 path for 400 ms (its switch port down), then restore.
      await systemRunner.run('ip', ['-n', t.switchNetns, 'link', 'set', 'v-b', 'down']);
      await new Promise((r) => setTimeout(r, 400));
      await systemRunner.run('ip', ['-n', t.switchNetns, 'link', 'set', 'v-b', 'up']);
      await prober.waitForAnswers(prober.answerLog.length + 30, 10_000);
      const r = await prober.stop();
      expect(r.blackoutMs).toBeGreaterThanOrEqual(380);
      expect(r.blackoutMs).toBeLessThan(3000);
      expect(r.lost).toBeGreaterThanOrEqual(25);
      expect(r.outages.length).toBeGreaterThanOrEqual(1);
      expect(r.rttMedianMs).toBeLessThan(250); // no shaping on this path (a loaded host adds ms, not 100s of ms)
    } finally {
      await prober.stop();
      echo.kill('SIGKILL');
      await b.exec('ip', ['addr', 'del', `${guest}/25`, 'dev', 'br-vm'], { check: false });
    }
  }, 60_000);

  it('cannot reach the hosts on management or migration from the client', async () => {
    const t = bed();
    const vm = t.vm;
    const a = t.hosts[0];
    if (!vm || !a) throw new Error('no VM network');
    for (const target of [a.migrationAddress, a.mgmtAddress]) {
      const prober = await Prober.start({ target, port: 7, netns: vm.client.netns, intervalMs: 20, timeoutMs: 100 });
      await new Promise((r) => setTimeout(r, 200));
      const r = await prober.stop();
      expect(r.answered).toBe(0);
      expect(prober.socketErrors.join(' ')).toMatch(/ENETUNREACH/);
    }
  });

  it('adds taps to a host\'s br-vm for guests, and refuses bad names and unknown hosts', async () => {
    const t = bed();
    await t.addTap('a', 'tap-g0');
    const a = t.hosts[0];
    if (!a) throw new Error('no host a');
    expect(await links(a.netns, ['link', 'show', 'master', 'br-vm'])).toMatch(/tap-g0/);
    await expect(t.addTap('a', 'bad name')).rejects.toThrow(/not an interface name/);
    await expect(t.addTap('zz', 'tap1')).rejects.toThrow(/unknown host/);
  });

  it('a testbed without the option has no VM network', async () => {
    const plain = await Testbed.create({ prefix: PREFIX, hosts: ['a'] });
    try {
      expect(plain.vm).toBeUndefined();
      expect(plain.hosts[0]?.vmBridge).toBeUndefined();
      await expect(plain.addTap('a', 'tap0')).rejects.toThrow(/no VM network/);
    } finally {
      await plain.destroy();
    }
  }, 60_000);
});
