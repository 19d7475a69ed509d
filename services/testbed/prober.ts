/**
 * Measures a guest's network blackout from outside (issue 13 §5): a small process in the client
 * namespace of the testbed's VM network sends a UDP probe to the guest's echo port
 * (stress/guest/devices.c) every 10 ms and reports each probe and each answer with host
 * timestamps; {@link computeBlackout} turns them into the longest gap between answers, the probes
 * lost and the outages, for the run's figures and timeline.
 *
 * The probing process is Node itself (`node -e`, run through `ip netns exec` so its socket lives
 * in the namespace): no extra program to install, and its clock (`performance.timeOrigin +
 * performance.now()`) is the one every other migd timestamp uses.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

import { InvalidArgumentError } from '../shared/errors.js';
import { computeBlackout, type BlackoutResult, type ProbeAnswer, type ProbeSent } from './blackout.js';

export interface ProberOptions {
  /** Guest IPv4 address. */
  target: string;
  /** Guest UDP echo port. Default 7. */
  port?: number;
  /** Network namespace to probe from (e.g. `testbed.vm.client.netns`); omitted = this one. */
  netns?: string;
  /** Probe period. Default 10 ms. */
  intervalMs?: number;
  /** An answer later than this counts as lost. Default 1000 ms. */
  timeoutMs?: number;
  /** Node binary. Default `process.execPath`. */
  node?: string;
}

// The probing process. Lines out: `ready`, `s <seq> <sentMs>`, `r <seq> <receivedMs>`, `e <msg>`.
const AGENT = `
const dgram = require('node:dgram');
const [target, port, interval] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const now = () => performance.timeOrigin + performance.now();
const out = [];
const flush = () => { if (out.length) { process.stdout.write(out.join('')); out.length = 0; } };
const sock = dgram.createSocket('udp4');
sock.on('message', (msg) => {
  const m = /^migd-probe (\\d+) /.exec(msg.toString('latin1'));
  if (m) out.push('r ' + m[1] + ' ' + now().toFixed(3) + '\\n');
});
sock.on('error', (e) => { process.stdout.write('e ' + String(e.message).replace(/\\s+/g, ' ') + '\\n'); });
let seq = 0;
const t0 = now();
const tick = () => {
  const s = seq++;
  const t = now();
  sock.send('migd-probe ' + s + ' ' + t.toFixed(3), port, target, (err) => {
    if (err) out.push('e send ' + String(err.code || err.message) + '\\n');
  });
  out.push('s ' + s + ' ' + t.toFixed(3) + '\\n');
  flush();
  setTimeout(tick, Math.max(0, t0 + seq * interval - now()));
};
setInterval(flush, 5);
sock.bind(0, () => { process.stdout.write('ready\\n'); tick(); });
process.on('SIGTERM', () => { flush(); process.exit(0); });
`;

/** A running prober. Always {@link stop} it (in a finally / afterEach). */
export class Prober {
  private readonly sent: ProbeSent[] = [];
  private readonly answers: ProbeAnswer[] = [];
  private readonly errors: string[] = [];
  private stoppedMs: number | undefined;
  private readonly exited: Promise<void>;
  private waiters: (() => void)[] = [];

  private constructor(
    private readonly child: ChildProcess,
    private readonly timeoutMs: number,
  ) {
    this.exited = new Promise((resolve) => child.once('close', () => resolve()));
  }

  /**
   * Starts probing; resolves once the probing socket is bound.
   * @throws InvalidArgumentError for a bad address, port or period; Error when the process
   *   cannot start (e.g. the namespace does not exist).
   */
  static async start(opts: ProberOptions): Promise<Prober> {
    const port = opts.port ?? 7;
    const intervalMs = opts.intervalMs ?? 10;
    if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(opts.target)) throw new InvalidArgumentError(`prober target ${JSON.stringify(opts.target)} is not an IPv4 address`);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new InvalidArgumentError(`prober port ${port} out of range 1..65535`);
    if (!(intervalMs >= 1 && intervalMs <= 10_000)) throw new InvalidArgumentError(`prober interval ${intervalMs} ms out of range 1..10000`);
    const node = opts.node ?? process.execPath;
    const argv = [node, '-e', AGENT, opts.target, String(port), String(intervalMs)];
    const child = opts.netns === undefined ? spawn(argv[0] as string, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] }) : spawn('ip', ['netns', 'exec', opts.netns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    const p = new Prober(child, opts.timeoutMs ?? 1000);
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => {
      if (stderr.length < 4000) stderr += d.toString();
    });
    const ready = new Promise<void>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (code) => reject(new Error(`prober exited at start (${code}): ${stderr.trim()}`)));
      createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
        if (line === 'ready') resolve();
        else p.onLine(line);
      });
    });
    try {
      await ready;
    } catch (err) {
      child.kill('SIGKILL');
      throw err;
    }
    return p;
  }

  private onLine(line: string): void {
    const [kind, a, b] = line.split(' ');
    if (kind === 's' || kind === 'r') {
      const seq = Number(a);
      const t = Number(b);
      if (!Number.isSafeInteger(seq) || !Number.isFinite(t)) return;
      if (kind === 's') this.sent.push({ seq, sentMs: t });
      else this.answers.push({ seq, receivedMs: t });
      if (kind === 'r') for (const w of this.waiters.splice(0)) w();
    } else if (kind === 'e' && this.errors.length < 100) {
      this.errors.push(line.slice(2));
    }
  }

  /** Socket errors the probing process reported (e.g. `send ENETUNREACH`). */
  get socketErrors(): readonly string[] {
    return this.errors;
  }

  /** The figures so far (probes younger than the timeout count as in flight). */
  result(): BlackoutResult {
    return computeBlackout(this.sent, this.answers, this.stoppedMs ?? performance.timeOrigin + performance.now(), this.timeoutMs);
  }

  /** Every answer received so far (receive order). */
  get answerLog(): readonly ProbeAnswer[] {
    return this.answers;
  }

  /** Resolves once `count` answers arrived in total; rejects after `timeoutMs`. */
  async waitForAnswers(count: number, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.answers.length < count) {
      const left = deadline - Date.now();
      if (left <= 0 || this.stoppedMs !== undefined) throw new Error(`prober: ${this.answers.length} of ${count} answers within ${timeoutMs} ms (errors: ${this.errors.slice(-3).join('; ') || 'none'})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 200));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Stops probing, waits for the process and returns the final figures. Idempotent. */
  async stop(): Promise<BlackoutResult> {
    if (this.stoppedMs === undefined) {
      this.stoppedMs = performance.timeOrigin + performance.now();
      if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGTERM');
      const killer = setTimeout(() => this.child.kill('SIGKILL'), 2000);
      await this.exited;
      clearTimeout(killer);
    }
    return this.result();
  }
}
