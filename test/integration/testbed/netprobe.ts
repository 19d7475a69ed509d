/**
 * Small TCP probes run inside testbed hosts (there is no ping or iperf here): node scripts passed
 * with `node -e`, talking line-oriented JSON on stdout so the test can wait for what it needs.
 */
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { TestbedHost } from '../../../services/testbed/index.js';

/** Echo server: prints {"port":N} once listening on argv[1] (port 0). */
const ECHO = `
const net = require('node:net');
const s = net.createServer((c) => { c.setNoDelay(true); c.on('error', () => {}); c.pipe(c); });
s.listen(0, process.argv[1], () => console.log(JSON.stringify({ port: s.address().port })));
`;

/**
 * Throughput sink: prints {"port":N}; on the first connection, measures received bytes over
 * [warmup, warmup+window] ms after the first byte, prints {"mbit":X}, and exits.
 */
const SINK = `
const net = require('node:net');
const [addr, warmup, windowMs] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const s = net.createServer((c) => {
  let n = 0, started = false, n1 = 0, t1 = 0n;
  c.on('error', () => {});
  c.on('data', (d) => {
    n += d.length;
    if (started) return;
    started = true;
    setTimeout(() => { n1 = n; t1 = process.hrtime.bigint(); }, warmup);
    setTimeout(() => {
      const ms = Number(process.hrtime.bigint() - t1) / 1e6;
      console.log(JSON.stringify({ mbit: ((n - n1) * 8) / ms / 1e3 }));
      c.destroy(); process.exit(0);
    }, warmup + windowMs);
  });
});
s.listen(0, addr, () => console.log(JSON.stringify({ port: s.address().port })));
`;

/** Bulk sender: writes to argv[1]:argv[2] until the connection goes away. */
const BLAST = `
const net = require('node:net');
const buf = Buffer.alloc(1 << 16, 7);
const c = net.connect(Number(process.argv[2]), process.argv[1]);
c.on('error', () => process.exit(0));
c.on('close', () => process.exit(0));
c.on('connect', function pump() { while (c.write(buf)); c.once('drain', pump); });
`;

/**
 * Interactive echo client: connects to argv[1]:argv[2], prints {"connected":true}; each stdin line
 * is sent, each echoed line printed as {"echo":line,"ms":elapsed since sent}.
 */
const CLIENT = `
const net = require('node:net');
const sent = new Map();
const c = net.connect(Number(process.argv[2]), process.argv[1], () => console.log(JSON.stringify({ connected: true })));
c.setNoDelay(true);
c.on('error', (e) => console.log(JSON.stringify({ error: e.code })));
let buf = '';
c.on('data', (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf('\\n')) >= 0) {
    const l = buf.slice(0, i); buf = buf.slice(i + 1);
    console.log(JSON.stringify({ echo: l, ms: Number(process.hrtime.bigint() - sent.get(l)) / 1e6 }));
  }
});
require('node:readline').createInterface({ input: process.stdin }).on('line', (l) => { sent.set(l, process.hrtime.bigint()); c.write(l + '\\n'); });
`;

/** One-shot connect: prints {"ok":true,"echo":...} or {"ok":false,"error":code} within argv[3] ms. */
const CONNECT = `
const net = require('node:net');
const c = net.connect(Number(process.argv[2]), process.argv[1]);
const t = setTimeout(() => { console.log(JSON.stringify({ ok: false, error: 'TIMEOUT' })); process.exit(0); }, Number(process.argv[3]));
c.on('connect', () => c.write(process.argv[4] + '\\n'));
c.on('data', (d) => { clearTimeout(t); console.log(JSON.stringify({ ok: true, echo: String(d).trim() })); process.exit(0); });
c.on('error', (e) => { clearTimeout(t); console.log(JSON.stringify({ ok: false, error: e.code })); process.exit(0); });
`;

/** Reads a child's stdout as JSON lines. */
export class Probe {
  private readonly queue: Record<string, unknown>[] = [];
  private readonly waiters: (() => void)[] = [];
  private exited = false;

  constructor(readonly child: ChildProcess) {
    const rl = createInterface({ input: child.stdout! });
    rl.on('line', (l) => {
      try {
        this.queue.push(JSON.parse(l) as Record<string, unknown>);
      } catch {
        return;
      }
      this.wake();
    });
    child.on('exit', () => {
      this.exited = true;
      this.wake();
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Next JSON line, or undefined after `timeoutMs` (or when the process exited). */
  async next(timeoutMs: number): Promise<Record<string, unknown> | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = this.queue.shift();
      if (v) return v;
      const left = deadline - Date.now();
      if (left <= 0 || this.exited) return undefined;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Like next(), but throws when nothing arrives. */
  async expect(timeoutMs: number): Promise<Record<string, unknown>> {
    const v = await this.next(timeoutMs);
    if (!v) throw new Error(`probe ${this.child.spawnargs.slice(0, 6).join(' ')}: no output within ${timeoutMs} ms`);
    return v;
  }

  send(line: string): void {
    this.child.stdin!.write(line + '\n');
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

function node(host: TestbedHost, script: string, args: readonly (string | number)[]): Probe {
  return new Probe(host.spawn(process.execPath, ['-e', script, ...args.map(String)], { stdio: ['pipe', 'pipe', 'inherit'] }));
}

/** Starts an echo server in `host` bound to `addr`; resolves with its port. */
export async function echoServer(host: TestbedHost, addr: string): Promise<{ probe: Probe; port: number }> {
  const probe = node(host, ECHO, [addr]);
  const { port } = await probe.expect(5000);
  return { probe, port: Number(port) };
}

/** Measures bulk TCP throughput from `from` to `to`'s migration address, in Mbit/s. */
export async function throughput(from: TestbedHost, to: TestbedHost, warmupMs = 150, windowMs = 500): Promise<number> {
  const sink = node(to, SINK, [to.migrationAddress, warmupMs, windowMs]);
  const blast: Probe[] = [];
  try {
    const { port } = await sink.expect(5000);
    blast.push(node(from, BLAST, [to.migrationAddress, Number(port)]));
    const { mbit } = await sink.expect(warmupMs + windowMs + 5000);
    return Number(mbit);
  } finally {
    sink.kill();
    for (const b of blast) b.kill();
  }
}

/** Starts an interactive echo client in `host`; resolves once connected. */
export async function echoClient(host: TestbedHost, addr: string, port: number): Promise<Probe> {
  const probe = node(host, CLIENT, [addr, port]);
  const first = await probe.expect(5000);
  if (first['connected'] !== true) throw new Error(`echo client did not connect: ${JSON.stringify(first)}`);
  return probe;
}

/** One connection attempt from `host`: sends `msg`, returns the echo or the error. */
export async function tryConnect(host: TestbedHost, addr: string, port: number, timeoutMs: number, msg = 'hello'): Promise<{ ok: boolean; echo?: string; error?: string }> {
  const probe = node(host, CONNECT, [addr, port, timeoutMs, msg]);
  try {
    return (await probe.expect(timeoutMs + 5000)) as { ok: boolean; echo?: string; error?: string };
  } finally {
    probe.kill();
  }
}

/** Median round-trip time of `n` echoes, in ms. */
export async function medianRtt(client: Probe, n = 7): Promise<number> {
  const rtts: number[] = [];
  for (let i = 0; i < n; i++) {
    client.send(`rtt-${Date.now()}-${i}`);
    const r = await client.expect(5000);
    rtts.push(Number(r['ms']));
  }
  rtts.sort((x, y) => x - y);
  return rtts[Math.floor(n / 2)] as number;
}
