/**
 * Test-side QEMU process hygiene: temp dirs, throwaway QEMU processes, and a sweeper that kills
 * every QEMU whose command line mentions one of the test's temp dirs (also QEMUs started by a
 * child process or a VmManager), so a failing test leaves nothing running.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const QEMU = process.env['MIGD_QEMU'] ?? 'qemu-system-x86_64';

/** Parsed /proc/PID/stat state letter, or undefined when the process is gone. */
export async function procState(pid: number): Promise<string | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

/** Alive = exists and is not a zombie (nothing reaps orphans on this machine: PID 1 is not init). */
export async function isAlive(pid: number): Promise<boolean> {
  const s = await procState(pid);
  return s !== undefined && s !== 'Z' && s !== 'X';
}

/** PIDs of live QEMU processes whose argv mentions `needle`. */
export async function qemuPidsMatching(needle: string): Promise<number[]> {
  const out: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    try {
      const cmd = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
      if (!(cmd[0] ?? '').includes('qemu-system') || !cmd.some((a) => a.includes(needle))) continue;
      if (await isAlive(pid)) out.push(pid);
    } catch {
      // raced with exit
    }
  }
  return out;
}

export async function waitFor(cond: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Owns a test's temp dirs and QEMU pids; `cleanup()` in afterEach. */
export class QemuSandbox {
  readonly dirs: string[] = [];
  readonly pids = new Set<number>();

  async tempDir(prefix = 'migd-qemu-'): Promise<string> {
    // Short paths: unix socket paths are limited to 107 bytes.
    const dir = await mkdtemp(join(tmpdir(), prefix));
    this.dirs.push(dir);
    return dir;
  }

  /** Starts a throwaway QEMU serving QMP on `<dir>/qmp.sock` (`-machine none` unless argv says otherwise). */
  async startQmpOnly(extra: string[] = ['-machine', 'none']): Promise<{ pid: number; dir: string; qmpPath: string }> {
    const dir = await this.tempDir();
    const qmpPath = join(dir, 'qmp.sock');
    const child = spawn(
      QEMU,
      ['-nodefaults', '-no-user-config', '-display', 'none', '-qmp', `unix:${qmpPath},server=on,wait=off`, ...extra],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    );
    if (child.pid === undefined) throw new Error('spawn failed');
    this.pids.add(child.pid);
    return { pid: child.pid, dir, qmpPath };
  }

  /** Kills tracked pids and every QEMU mentioning a sandbox dir; removes the dirs. */
  async cleanup(): Promise<void> {
    const victims = new Set(this.pids);
    for (const d of this.dirs) for (const pid of await qemuPidsMatching(d)) victims.add(pid);
    for (const pid of victims) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const pid of victims) await waitFor(async () => !(await isAlive(pid)), 5000, `pid ${pid} to die`).catch(() => undefined);
    this.pids.clear();
    await Promise.all(this.dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
  }
}
