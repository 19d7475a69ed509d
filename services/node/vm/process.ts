/**
 * Starting and signalling QEMU processes, behind narrow interfaces so the manager's logic can be
 * driven by fakes.
 *
 * QEMU must outlive the node daemon: it is spawned detached (own session, so a signal to the
 * daemon's process group does not reach it), with stdio on its qemu.log, and unref()'d.
 */
import { spawn } from 'node:child_process';
import { open } from 'node:fs/promises';
import { hostFs, type HostFs } from '../host/fs.js';
import { readProcStat, type ProcStat } from '../host/info.js';

export interface ProcessExit {
  readonly code: number | null;
  readonly signal: string | null;
}

export interface SpawnedProcess {
  readonly pid: number;
  /** Settles when the process exits — only observable for our own children. */
  readonly exited: Promise<ProcessExit>;
}

export interface ProcessSpawner {
  /**
   * Starts `file args`, detached, with stdout and stderr appended to `logPath`.
   * @throws Error when the program cannot be started.
   */
  spawn(file: string, args: readonly string[], options: { logPath: string }): Promise<SpawnedProcess>;
}

/** Looks at and signals processes by pid. */
export interface ProcessTable {
  stat(pid: number): Promise<ProcStat | undefined>;
  /** Sends a signal; no-op when the process is gone. */
  kill(pid: number, signal: NodeJS.Signals): void;
}

/**
 * The production spawner. Runs QEMU through `sh -c 'umask 077 && exec "$0" "$@"'` so that every
 * file QEMU creates (sockets, serial.log, pidfile, RAM file) is private to the owner; `exec` keeps
 * the pid, so the pid we get is QEMU's.
 */
export const detachedSpawner: ProcessSpawner = {
  async spawn(file, args, { logPath }) {
    const log = await open(logPath, 'a', 0o600);
    try {
      const child = spawn('/bin/sh', ['-c', 'umask 077 && exec "$0" "$@"', file, ...args], {
        detached: true,
        stdio: ['ignore', log.fd, log.fd],
      });
      const exited = new Promise<ProcessExit>((resolve) => {
        child.once('exit', (code, signal) => resolve({ code, signal }));
        child.once('error', () => resolve({ code: null, signal: null }));
      });
      const pid = child.pid;
      if (pid === undefined) {
        const err = await new Promise<Error>((resolve) => child.once('error', resolve));
        throw err;
      }
      child.unref();
      return { pid, exited };
    } finally {
      await log.close();
    }
  },
};

export function procTable(fs: HostFs = hostFs()): ProcessTable {
  return {
    stat: (pid) => readProcStat(pid, fs),
    kill: (pid, signal) => {
      try {
        process.kill(pid, signal);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
      }
    },
  };
}
