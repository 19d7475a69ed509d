/**
 * The seam between the testbed and the system: running `ip`, `tc`, `nft`… A fake runner lets unit
 * tests drive the Testbed without a kernel, and a wrapping runner lets integration tests inject a
 * failure half-way through `Testbed.create`.
 */
import { spawn, spawnSync } from 'node:child_process';
import { DependencyError, MigdError } from '../shared/errors.js';

/** How a command ended. `code` is null when it was killed by `signal`. */
export interface CommandResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface RunOptions {
  /** Written to the command's stdin, which is then closed. */
  readonly input?: string;
  /** Kills the command (SIGKILL) after this long. Default: no limit. */
  readonly timeoutMs?: number;
  /** Kills the command (SIGKILL) when aborted; the promise still resolves with the result. */
  readonly signal?: AbortSignal;
}

/** Runs external programs. Resolves with the result whatever the exit status. */
export interface CommandRunner {
  /** @throws DependencyError when the program cannot be started (not installed). */
  run(cmd: string, args: readonly string[], opts?: RunOptions): Promise<CommandResult>;
  /** Synchronous variant, for process-exit hooks. Same error contract. */
  runSync(cmd: string, args: readonly string[], opts?: Pick<RunOptions, 'input' | 'timeoutMs'>): CommandResult;
}

/** A command exited non-zero (or was killed) where success was required. */
export class CommandFailedError extends MigdError {
  readonly argv: readonly string[];
  readonly result: CommandResult;
  constructor(argv: readonly string[], result: CommandResult) {
    const how = result.code === null ? `killed by ${result.signal ?? 'signal'}` : `exited ${result.code}`;
    const detail = result.stderr.trim() || result.stdout.trim();
    super('INTERNAL', `${argv.join(' ')} ${how}${detail ? `: ${detail.slice(0, 500)}` : ''}`);
    this.argv = argv;
    this.result = result;
  }
}

function notFound(cmd: string, err: unknown): DependencyError {
  return new DependencyError(cmd, 'cannot be started (not installed or not in PATH)', { cause: err });
}

/** The real runner: `child_process.spawn` without a shell. */
export const systemRunner: CommandRunner = {
  run(cmd, args, opts = {}) {
    return new Promise((resolve, reject) => {
      const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let timer: NodeJS.Timeout | undefined;
      const kill = (): void => {
        child.kill('SIGKILL');
      };
      if (opts.timeoutMs !== undefined) timer = setTimeout(kill, opts.timeoutMs);
      opts.signal?.addEventListener('abort', kill, { once: true });
      child.stdout.on('data', (d: Buffer) => out.push(d));
      child.stderr.on('data', (d: Buffer) => err.push(d));
      child.stdin.on('error', () => {
        // EPIPE when the command exits without reading its input; the exit status tells the story.
      });
      child.on('error', (e: NodeJS.ErrnoException) => {
        if (timer) clearTimeout(timer);
        opts.signal?.removeEventListener('abort', kill);
        reject(e.code === 'ENOENT' || e.code === 'EACCES' ? notFound(cmd, e) : e);
      });
      child.on('close', (code, signal) => {
        if (timer) clearTimeout(timer);
        opts.signal?.removeEventListener('abort', kill);
        resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
      });
      child.stdin.end(opts.input ?? '');
    });
  },
  runSync(cmd, args, opts = {}) {
    const r = spawnSync(cmd, args, {
      input: opts.input ?? '',
      encoding: 'utf8',
      ...(opts.timeoutMs === undefined ? {} : { timeout: opts.timeoutMs, killSignal: 'SIGKILL' as const }),
    });
    if (r.error) {
      const e = r.error as NodeJS.ErrnoException;
      if (e.code === 'ENOENT' || e.code === 'EACCES') throw notFound(cmd, e);
      if (e.code !== 'ETIMEDOUT') throw e;
    }
    return { code: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  },
};

/** Runs a command and requires exit status 0. @throws CommandFailedError, DependencyError */
export async function runChecked(runner: CommandRunner, cmd: string, args: readonly string[], opts?: RunOptions): Promise<CommandResult> {
  const r = await runner.run(cmd, args, opts);
  if (r.code !== 0) throw new CommandFailedError([cmd, ...args], r);
  return r;
}
