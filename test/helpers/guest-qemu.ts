/**
 * Minimal QEMU launcher for tests of the guest workload: one TCG guest, serial console on a unix
 * socket parsed by GuestTelemetryParser, optional guest RAM in a shared file for fault
 * injection. The node daemon owns real VM lifecycle; this is only what tests need.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { GuestTelemetryParser, type GuestEvent } from '../../services/shared/guest/telemetry.js';

/** Collects parsed events and lets a test await the first one matching a predicate. */
export class GuestEventLog {
  readonly events: GuestEvent[] = [];
  readonly parser: GuestTelemetryParser;
  private waiters: (() => void)[] = [];
  private closedReason: string | undefined;

  constructor(parser = new GuestTelemetryParser()) {
    this.parser = parser;
  }

  push(chunk: Buffer | string): void {
    this.events.push(...this.parser.push(chunk));
    this.wake();
  }

  /** No more data will come (process exited): pending waits fail at once. */
  close(reason: string): void {
    this.events.push(...this.parser.end());
    this.closedReason = reason;
    this.wake();
  }

  /** Resolves with the first event (from index `from`) matching `pred`; rejects after timeoutMs. */
  async waitFor<T extends GuestEvent>(pred: (e: GuestEvent) => e is T, timeoutMs?: number, from?: number): Promise<T>;
  async waitFor(pred: (e: GuestEvent) => boolean, timeoutMs?: number, from?: number): Promise<GuestEvent>;
  async waitFor(pred: (e: GuestEvent) => boolean, timeoutMs = 10_000, from = 0): Promise<GuestEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.events.slice(from).find(pred);
      if (hit) return hit;
      const left = deadline - Date.now();
      if (left <= 0 || this.closedReason !== undefined) {
        const tail = this.events.slice(-6).map((e) => JSON.stringify(e)).join('\n  ');
        throw new Error(`${this.closedReason ?? `no matching guest event within ${timeoutMs} ms`}; last events:\n  ${tail}`);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
}

export interface GuestQemuOptions {
  kernel: string;
  initrd: string;
  /** Kernel command line (see buildGuestCmdline). */
  cmdline: string;
  /** Guest RAM in MiB. Default 256. */
  memMiB?: number;
  /** Default `pc-i440fx-10.0`. */
  machine?: string;
  /** Back guest RAM with a shared file (`ramPath`) so the test can read and write it. */
  ramFile?: boolean;
  /** Default `qemu-system-x86_64`. */
  qemu?: string;
}

/** A running guest. Always call {@link stop} (in afterEach/afterAll). */
export class GuestQemu {
  readonly log = new GuestEventLog();
  readonly spawnedAt = performance.timeOrigin + performance.now();
  stderr = '';
  private serial: Socket | undefined;
  private readonly exited: Promise<void>;

  private constructor(
    readonly proc: ChildProcess,
    readonly dir: string,
    readonly args: readonly string[],
    readonly ramPath: string | undefined,
  ) {
    proc.stderr?.on('data', (d: Buffer) => {
      if (this.stderr.length < 8192) this.stderr += d.toString();
    });
    this.exited = new Promise((resolve) => {
      proc.once('exit', () => resolve());
      proc.once('error', (err) => {
        this.stderr += String(err);
        resolve();
      });
    });
    void this.exited.then(() => this.log.close(`QEMU exited (${proc.exitCode ?? proc.signalCode}): ${this.stderr.trim()}`));
  }

  /** The QEMU arguments for a guest (exported so tests can report them). */
  static qemuArgs(opts: GuestQemuOptions, dir: string): { args: string[]; ramPath: string | undefined } {
    const mem = opts.memMiB ?? 256;
    const machine = opts.machine ?? 'pc-i440fx-10.0';
    const ramPath = opts.ramFile ? join(dir, 'ram') : undefined;
    const args = ['-accel', 'tcg', '-machine', ramPath ? `${machine},memory-backend=ram0` : machine, '-m', `${mem}M`, '-smp', '1'];
    if (ramPath) args.push('-object', `memory-backend-file,id=ram0,size=${mem}M,mem-path=${ramPath},share=on`);
    args.push(
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      '-kernel', opts.kernel, '-initrd', opts.initrd, '-append', opts.cmdline,
      '-chardev', `socket,id=ser0,path=${join(dir, 'serial.sock')},server=on,wait=on`,
      '-serial', 'chardev:ser0',
    );
    return { args, ramPath };
  }

  /** Starts QEMU and connects to its serial socket (QEMU waits for that connection to run). */
  static async start(opts: GuestQemuOptions): Promise<GuestQemu> {
    // tmpfs when available: the RAM file then costs no disk writeback.
    const dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'migd-guest-'));
    const { args, ramPath } = GuestQemu.qemuArgs(opts, dir);
    const proc = spawn(opts.qemu ?? 'qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const guest = new GuestQemu(proc, dir, args, ramPath);
    try {
      guest.serial = await guest.connectSerial(join(dir, 'serial.sock'));
    } catch (err) {
      await guest.stop();
      throw err;
    }
    guest.serial.on('data', (d: Buffer) => guest.log.push(d));
    return guest;
  }

  private async connectSerial(path: string): Promise<Socket> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) throw new Error(`QEMU exited at start: ${this.stderr.trim()}`);
      try {
        return await new Promise<Socket>((resolve, reject) => {
          const s = connect(path);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`cannot connect to QEMU serial socket ${path}: ${String(err)}; ${this.stderr.trim()}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  /** Sends one command line to the guest workload (serial input). */
  send(cmd: string): void {
    this.serial?.write(`${cmd}\n`);
  }

  /** Reads guest-physical memory from the shared RAM file (needs `ramFile`). */
  async readRam(physAddr: number, length: number): Promise<Buffer> {
    const fh = await open(this.requireRam(), 'r');
    try {
      const buf = Buffer.alloc(length);
      await fh.read(buf, 0, length, physAddr);
      return buf;
    } finally {
      await fh.close();
    }
  }

  /** Writes guest-physical memory behind the guest's back (needs `ramFile`). */
  async writeRam(physAddr: number, data: Buffer): Promise<void> {
    const fh = await open(this.requireRam(), 'r+');
    try {
      await fh.write(data, 0, data.length, physAddr);
    } finally {
      await fh.close();
    }
  }

  /** Freezes / thaws the whole QEMU process (the guest sees nothing; the host sees silence). */
  pause(): void {
    this.proc.kill('SIGSTOP');
  }

  resume(): void {
    this.proc.kill('SIGCONT');
  }

  /** Kills QEMU, waits for it, removes the temp dir. Idempotent. */
  async stop(): Promise<void> {
    this.serial?.destroy();
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGCONT');
      this.proc.kill('SIGKILL');
    }
    await this.exited;
    await rm(this.dir, { recursive: true, force: true });
  }

  private requireRam(): string {
    if (this.ramPath === undefined) throw new Error('guest was started without ramFile');
    return this.ramPath;
  }
}
