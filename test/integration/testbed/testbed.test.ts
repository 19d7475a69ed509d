/**
 * The testbed against the real kernel: namespaces, bridges, tc, nftables, the delay line. Needs
 * root. Every testbed is destroyed in afterAll/finally even when assertions fail, and the last test
 * checks nothing with this run's prefixes is left.
 */
import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../services/shared/errors.js';
import { Testbed, systemRunner, type CommandRunner } from '../../../services/testbed/index.js';
import { statePath } from '../../../services/testbed/state.js';
import { Probe, echoClient, echoServer, medianRtt, throughput, tryConnect } from './netprobe.js';

process.env['MIGD_LOG_LEVEL'] ??= 'warn';

async function sh(cmd: string, args: string[]): Promise<string> {
  const r = await systemRunner.run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function namespaces(): Promise<string[]> {
  return (await sh('ip', ['netns', 'list'])).split('\n').map((l) => l.split(' ')[0] ?? '').filter(Boolean);
}

async function rootLinks(): Promise<string[]> {
  return (await sh('ip', ['-o', 'link', 'show'])).split('\n').map((l) => (l.split(': ')[1] ?? '').split('@')[0] ?? '').filter(Boolean);
}

/** The MTU `ip -n NS link show` reports for each device, in order. */
async function linkMtus(ns: string, devs: readonly string[]): Promise<(number | undefined)[]> {
  const links = JSON.parse(await sh('ip', ['-n', ns, '-j', 'link', 'show'])) as { ifname: string; mtu: number }[];
  return devs.map((d) => links.find((l) => l.ifname === d)?.mtu);
}

function hex(n: number): string {
  return Math.floor(Math.random() * 16 ** n).toString(16).padStart(n, '0');
}

// A prefix of our own, so leftover checks never look at other engineers' testbeds.
const PREFIX = `migdt${hex(4)}-`;
const prefixes = [PREFIX];
const newPrefix = (tag: string): string => {
  const p = `migd${tag}${hex(4)}-`;
  prefixes.push(p);
  return p;
};
const probes: Probe[] = [];
const track = <T extends Probe>(p: T): T => {
  probes.push(p);
  return p;
};

describe('Testbed on real namespaces', () => {
  let tb: Testbed | undefined;
  const bed = (): Testbed => {
    if (!tb) throw new Error('testbed not created');
    return tb;
  };

  beforeAll(async () => {
    tb = await Testbed.create({ prefix: PREFIX, hosts: ['a', 'b', 'c'] });
  });

  afterAll(async () => {
    for (const p of probes) p.kill();
    await tb?.destroy();
  });

  it('gives each host a namespace with loopback, a management and a migration address', async () => {
    const ns = await namespaces();
    for (const h of bed().hosts) {
      expect(h.netns).toBe(`${bed().name}-${h.name}`);
      expect(ns).toContain(h.netns);
      const addrs = (await h.exec('ip', ['-o', '-4', 'addr', 'show'])).stdout;
      expect(addrs).toMatch(new RegExp(`lo\\s+inet 127\\.0\\.0\\.1/8`));
      expect(addrs).toContain(`mgmt0    inet ${h.mgmtAddress}/24`);
      expect(addrs).toContain(`mig0    inet ${h.migrationAddress}/24`);
      // Nothing routes off the testbed.
      expect((await h.exec('ip', ['-4', 'route', 'show', 'table', 'all'])).stdout).not.toMatch(/^default/m);
    }
    expect(bed().rootAddress).toMatch(/^198\.18\.\d+\.1$/);
    expect(bed().host('a').migrationAddress).toMatch(/^198\.19\.\d+\.10$/);
    expect(bed().hosts.map((h) => h.name)).toEqual(['a', 'b', 'c']);
    // Without `migrationMtu` every network keeps Ethernet's 1500.
    expect(bed().migrationMtu).toBe(1500);
    for (const h of bed().hosts) expect(await linkMtus(h.netns, ['mig0', 'mgmt0'])).toEqual([1500, 1500]);
    expect(await linkMtus(bed().switchNetns, ['br-mig', 'g-a', 'br-mgmt', 'm-a'])).toEqual([1500, 1500, 1500, 1500]);
  });

  it('lets host a reach host b over the migration network', async () => {
    const b = bed().host('b');
    const { probe, port } = await echoServer(b, b.migrationAddress);
    track(probe);
    expect(await tryConnect(bed().host('a'), b.migrationAddress, port, 3000, 'over-mig')).toEqual({ ok: true, echo: 'over-mig' });
  });

  it('connects the root namespace and every host over the management network', async () => {
    // root -> host
    for (const h of bed().hosts) {
      const { probe, port } = await echoServer(h, h.mgmtAddress);
      track(probe);
      const echoed = await new Promise<string>((resolve, reject) => {
        const c = net.connect(port, h.mgmtAddress, () => c.write(`hi ${h.name}\n`));
        c.setTimeout(3000, () => c.destroy(new Error('timeout')));
        c.once('data', (d) => {
          resolve(String(d).trim());
          c.end();
        });
        c.once('error', reject);
      });
      expect(echoed).toBe(`hi ${h.name}`);
    }
    // host -> root
    const seen: string[] = [];
    const server = net.createServer((c) => c.on('data', (d) => {
      seen.push(String(d).trim());
      c.end(d);
    }));
    await new Promise<void>((r) => server.listen(0, bed().rootAddress, r));
    try {
      const port = (server.address() as net.AddressInfo).port;
      for (const h of bed().hosts) {
        expect(await tryConnect(h, bed().rootAddress, port, 3000, `from-${h.name}`)).toEqual({ ok: true, echo: `from-${h.name}` });
      }
      expect(seen.sort()).toEqual(['from-a', 'from-b', 'from-c']);
    } finally {
      server.close();
    }
  });

  it('rate-limits a host, or only one of its peers', async () => {
    const [a, b, c] = [bed().host('a'), bed().host('b'), bed().host('c')];
    const free = await throughput(a, b);
    await bed().shape('a', { rateMbit: 20 });
    const shaped = await throughput(a, b);
    await bed().unshape('a');
    await bed().shape('a', { rateMbit: 20 }, { to: 'b' });
    const toB = await throughput(a, b);
    const toC = await throughput(a, c);
    await bed().unshape('a');
    const restored = await throughput(a, b);
    console.log(JSON.stringify({ throughputMbit: { unshaped: free, shaped20: shaped, perPeerToB: toB, perPeerToC: toC, afterUnshape: restored } }));
    expect(shaped).toBeLessThan(free * 0.5);
    expect(shaped).toBeGreaterThan(10);
    expect(shaped).toBeLessThan(30);
    expect(toB).toBeLessThan(30);
    expect(toC).toBeGreaterThan(toB * 4);
    expect(restored).toBeGreaterThan(shaped * 4);
  });

  it('adds delay per direction and per peer, and removes it again', async () => {
    const [a, b] = [bed().host('a'), bed().host('b')];
    const { probe: srv, port } = await echoServer(b, b.migrationAddress);
    track(srv);
    const client = track(await echoClient(a, b.migrationAddress, port));
    const base = await medianRtt(client);
    await bed().shape('a', { delayMs: 30 });
    const oneWay = await medianRtt(client);
    await bed().shape('b', { delayMs: 10, jitterMs: 2 }, { to: 'a' });
    const both = await medianRtt(client);
    await bed().unshape('a');
    await bed().unshape('b');
    const after = await medianRtt(client);
    console.log(JSON.stringify({ rttMs: { base, aDelay30: oneWay, plusB10: both, after } }));
    expect(base).toBeLessThan(5);
    expect(oneWay).toBeGreaterThanOrEqual(29);
    expect(oneWay).toBeLessThan(45);
    expect(both).toBeGreaterThanOrEqual(37);
    expect(both).toBeLessThan(60);
    expect(after).toBeLessThan(5);
  });

  it('cut stalls an established connection, restore resumes it', async () => {
    const [a, b] = [bed().host('a'), bed().host('b')];
    const { probe: srv, port } = await echoServer(b, b.migrationAddress);
    track(srv);
    const client = track(await echoClient(a, b.migrationAddress, port));
    client.send('before');
    expect((await client.expect(2000))['echo']).toBe('before');

    await bed().cut('a');
    client.send('during');
    expect(await client.next(800)).toBeUndefined(); // stalled, not failed
    expect((await tryConnect(a, b.migrationAddress, port, 500)).ok).toBe(false);
    // The management network is untouched by a migration cut.
    const mg = await echoServer(b, b.mgmtAddress);
    track(mg.probe);
    expect((await tryConnect(a, b.mgmtAddress, mg.port, 2000)).ok).toBe(true);

    const t0 = Date.now();
    await bed().restore('a');
    const resumed = await client.expect(8000);
    expect(resumed['echo']).toBe('during');
    expect(await tryConnect(a, b.migrationAddress, port, 2000, 'after')).toEqual({ ok: true, echo: 'after' });
    console.log(JSON.stringify({ resumedAfterRestoreMs: Date.now() - t0 }));
  });

  it('cuts a single pair, and the management network when asked', async () => {
    const [a, b, c] = [bed().host('a'), bed().host('b'), bed().host('c')];
    const sb = await echoServer(b, b.migrationAddress);
    const sc = await echoServer(c, c.migrationAddress);
    track(sb.probe);
    track(sc.probe);
    await bed().cut('b', { to: 'a' });
    expect((await tryConnect(a, b.migrationAddress, sb.port, 500)).ok).toBe(false);
    expect((await tryConnect(a, c.migrationAddress, sc.port, 2000)).ok).toBe(true);
    await bed().restore('a', { to: 'b' });
    expect((await tryConnect(a, b.migrationAddress, sb.port, 2000)).ok).toBe(true);

    await bed().cut('c', { network: 'management' });
    const reached = await new Promise<boolean>((resolve) => {
      const s = net.connect(22, c.mgmtAddress);
      s.setTimeout(500, () => {
        s.destroy();
        resolve(false);
      });
      s.on('error', () => resolve(true)); // RST/refused would mean the frame got through
    });
    expect(reached).toBe(false);
    expect((await tryConnect(a, c.migrationAddress, sc.port, 2000)).ok).toBe(true);
    await bed().restore('c', { network: 'management' });
  });

  it('drops frames with lossPct (100% to one peer only)', async () => {
    const [a, b, c] = [bed().host('a'), bed().host('b'), bed().host('c')];
    const sb = await echoServer(b, b.migrationAddress);
    const sc = await echoServer(c, c.migrationAddress);
    track(sb.probe);
    track(sc.probe);
    await bed().shape('a', { lossPct: 100 }, { to: 'b' });
    expect((await tryConnect(a, b.migrationAddress, sb.port, 500)).ok).toBe(false);
    expect((await tryConnect(a, c.migrationAddress, sc.port, 2000)).ok).toBe(true);
    await bed().shape('a', { lossPct: 0 }, { to: 'b' });
    expect((await tryConnect(a, b.migrationAddress, sb.port, 2000)).ok).toBe(true);
  });

  it('rejects invalid arguments without changing anything', async () => {
    await expect(bed().shape('zz', { rateMbit: 1 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(bed().shape('a', { rateMbit: -1 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(bed().shape('a', { delayMs: 5, jitterMs: 10 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(bed().shape('a', { rateMbit: 1 }, { to: 'a' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(bed().cut('a', { network: 'storage' as never })).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(() => bed().host('nope')).toThrow(InvalidArgumentError);
    expect((await bed().host('a').exec('tc', ['qdisc', 'show', 'dev', 'mig0'])).stdout).not.toContain('htb');
  });
});

describe('Testbed with a jumbo-frame migration network', () => {
  it('sets migrationMtu on every device the migration traffic crosses, only there, and TCP uses it', async () => {
    const tb = await Testbed.create({ prefix: PREFIX, hosts: ['j', 'k'], migrationMtu: 9000 });
    const mine: Probe[] = [];
    try {
      expect(tb.migrationMtu).toBe(9000);
      for (const h of tb.hosts) expect(await linkMtus(h.netns, ['mig0', 'mgmt0'])).toEqual([9000, 1500]);
      expect(await linkMtus(tb.switchNetns, ['br-mig', 'g-j', 'g-k', 'br-mgmt', 'm-j', 'm-k', 'mgmt-root'])).toEqual([9000, 9000, 9000, 1500, 1500, 1500, 1500]);
      expect((JSON.parse(await sh('ip', ['-j', 'link', 'show', 'dev', tb.rootInterface])) as { mtu: number }[])[0]?.mtu).toBe(1500);
      // Jumbo frames really cross the bridge: a 20 kB line comes back whole, and the connection's
      // MSS is 9000 − 20 (IP) − 20 (TCP) − 12 (timestamps) = 8948 (1448 at MTU 1500).
      const j = tb.host('j');
      const k = tb.host('k');
      const { probe, port } = await echoServer(k, k.migrationAddress);
      mine.push(probe);
      const client = await echoClient(j, k.migrationAddress, port);
      mine.push(client);
      const line = 'x'.repeat(20_000);
      client.send(line);
      expect((await client.expect(5000))['echo']).toBe(line);
      const ss = (await j.exec('ss', ['-tin', 'dst', k.migrationAddress])).stdout;
      expect(ss).toMatch(/\bmss:8948\b/);
    } finally {
      for (const p of mine) p.kill();
      await tb.destroy();
    }
    expect((await namespaces()).filter((n) => n.startsWith(tb.name))).toEqual([]);
  });

  it('refuses an MTU outside 1280..9000 before creating anything', async () => {
    const prefix = newPrefix('m');
    for (const migrationMtu of [1279, 9001, 1500.5]) {
      await expect(Testbed.create({ prefix, hosts: ['a'], migrationMtu })).rejects.toThrow(/migrationMtu: must be a whole number of bytes in 1280\.\.9000/);
    }
    expect((await namespaces()).filter((n) => n.startsWith(prefix))).toEqual([]);
  });
});

describe('Testbed lifecycle', () => {
  it('destroy removes namespaces, links, processes and state, and is idempotent', async () => {
    const tb = await Testbed.create({ prefix: PREFIX, hosts: ['x', 'y'] });
    let sleeper: ReturnType<typeof spawn> | undefined;
    try {
      await tb.shape('x', { rateMbit: 50, delayMs: 5, lossPct: 1 });
      await tb.cut('y');
      sleeper = tb.host('x').spawn('sleep', ['60'], { stdio: 'ignore' });
      const exited = new Promise<void>((r) => sleeper!.once('exit', () => r()));
      expect(existsSync(statePath('/run/migd-testbed', tb.name))).toBe(true);
      expect(await rootLinks()).toContain(tb.rootInterface);
      await Promise.all([tb.destroy(), tb.destroy()]);
      await exited;
    } finally {
      await tb.destroy();
    }
    await tb.destroy();
    const ns = await namespaces();
    expect(ns.filter((n) => n.startsWith(tb.name))).toEqual([]);
    expect(await rootLinks()).not.toContain(tb.rootInterface);
    expect(existsSync(statePath('/run/migd-testbed', tb.name))).toBe(false);
    expect(sleeper?.exitCode !== null || sleeper?.signalCode !== null).toBe(true);
    expect(() => tb.host('x').spawn('true')).toThrow(/destroyed/);
  });

  it('a create that fails half-way removes what it had created', async () => {
    const prefix = newPrefix('f');
    let calls = 0;
    const failing: CommandRunner = {
      run: (cmd, args, opts) => {
        if (cmd === 'ip' && args.includes('g-q')) {
          calls++;
          return Promise.resolve({ code: 2, signal: null, stdout: '', stderr: 'injected failure' });
        }
        return systemRunner.run(cmd, args, opts);
      },
      runSync: (cmd, args, opts) => systemRunner.runSync(cmd, args, opts),
    };
    await expect(Testbed.create({ prefix, hosts: ['p', 'q'], runner: failing })).rejects.toThrow(/injected failure/);
    expect(calls).toBe(1);
    expect((await namespaces()).filter((n) => n.startsWith(prefix))).toEqual([]);
  });

  it('cleanupStale removes leftovers of dead creators and spares live testbeds', async () => {
    const prefix = newPrefix('s');
    const liveTb = await Testbed.create({ prefix, hosts: ['l'] });
    try {
      // A "crashed" run: namespaces and a process inside, state naming our pid with another start
      // time (what pid reuse looks like), plus an orphan namespace with no state at all.
      const dead = `${prefix}dead00`;
      const orphan = `${prefix}0bad00-z`;
      for (const ns of [`${dead}-sw`, `${dead}-h`, orphan]) await sh('ip', ['netns', 'add', ns]);
      const sleeper = spawn('ip', ['netns', 'exec', `${dead}-h`, 'sleep', '60'], { stdio: 'ignore' });
      const exited = new Promise<void>((r) => sleeper.once('exit', () => r()));
      writeFileSync(
        statePath('/run/migd-testbed', dead),
        JSON.stringify({
          version: 1, name: dead, prefix, id: 'dead00', pid: process.pid, pidStart: '1', slot: null,
          namespaces: [`${dead}-sw`, `${dead}-h`], rootLinks: ['mgddead00'], createdAt: new Date().toISOString(),
        }),
      );
      await new Promise((r) => setTimeout(r, 200));
      const removed = await Testbed.cleanupStale(prefix);
      expect(removed.sort()).toEqual([dead, `${prefix}0bad00`].sort());
      await exited;
      const ns = await namespaces();
      expect(ns.filter((n) => n.startsWith(prefix)).sort()).toEqual([liveTb.host('l').netns, liveTb.switchNetns].sort());
      expect(existsSync(statePath('/run/migd-testbed', dead))).toBe(false);
      expect(existsSync(statePath('/run/migd-testbed', liveTb.name))).toBe(true);
    } finally {
      await liveTb.destroy();
      await Testbed.cleanupStale(prefix);
    }
  });

  describe('when the creating process ends', () => {
    // The hooks act on process exit and signals, so they run in a child process, using the
    // testbed compiled with the project's own tsc.
    let dir = '';
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'migd-testbed-js-'));
      const tsc = await systemRunner.run(process.execPath, [
        'node_modules/typescript/bin/tsc', '--outDir', dir, '--rootDir', '.', '--module', 'nodenext', '--moduleResolution', 'nodenext',
        '--target', 'es2022', '--skipLibCheck', '--types', 'node', 'services/testbed/index.ts',
      ]);
      expect(tsc.stdout + tsc.stderr).toBe('');
      await writeFile(join(dir, 'package.json'), '{"type":"module"}');
      await writeFile(
        join(dir, 'child.js'),
        `import { Testbed } from './services/testbed/index.js';
        const [prefix, mode] = process.argv.slice(2);
        const tb = await Testbed.create({ prefix, hosts: ['a'], cleanupStale: false });
        tb.host('a').spawn('sleep', ['60'], { stdio: 'ignore' });
        console.log(JSON.stringify({ name: tb.name, rootLink: tb.rootInterface }));
        if (mode === 'exit') process.exit(0);
        setInterval(() => {}, 1000);`,
      );
    });
    afterAll(async () => {
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    async function runChild(mode: 'exit' | 'SIGTERM' | 'SIGINT' | 'SIGKILL'): Promise<{ prefix: string; name: string; rootLink: string; signal: string | null }> {
      const prefix = newPrefix('p');
      const child = spawn(process.execPath, [join(dir, 'child.js'), prefix, mode], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, MIGD_LOG_LEVEL: 'warn' } });
      const exited = new Promise<string | null>((r) => child.once('exit', (_c, sig) => r(sig)));
      const first = await new Probe(child).expect(15_000);
      if (mode !== 'exit') child.kill(mode);
      const signal = await exited;
      return { prefix, name: String(first['name']), rootLink: String(first['rootLink']), signal };
    }

    it.each(['exit', 'SIGTERM', 'SIGINT'] as const)('on %s, its hooks destroy the testbed', async (mode) => {
      const r = await runChild(mode);
      if (mode !== 'exit') expect(r.signal).toBe(mode); // re-raised after cleanup
      expect((await namespaces()).filter((n) => n.startsWith(r.prefix))).toEqual([]);
      expect(await rootLinks()).not.toContain(r.rootLink);
      expect(existsSync(statePath('/run/migd-testbed', r.name))).toBe(false);
    });

    it('after SIGKILL, cleanupStale removes what it left', async () => {
      const r = await runChild('SIGKILL');
      expect((await namespaces()).filter((n) => n.startsWith(r.prefix))).toHaveLength(2);
      expect(await Testbed.cleanupStale(r.prefix)).toEqual([r.name]);
      expect((await namespaces()).filter((n) => n.startsWith(r.prefix))).toEqual([]);
      expect(await rootLinks()).not.toContain(r.rootLink);
    });
  });

  it('leaves nothing behind', async () => {
    const ns = await namespaces();
    expect(ns.filter((n) => prefixes.some((p) => n.startsWith(p)))).toEqual([]);
    expect((await rootLinks()).filter((l) => /^mgd[0-9a-f]{6}$/.test(l) && ns.every((n) => !n.includes(l.slice(3))))).toEqual([]);
  });
});
