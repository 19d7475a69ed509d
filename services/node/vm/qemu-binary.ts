/**
 * The QEMU binary: where it is, which version, whether it may run TCG guests, and which migration
 * capabilities it offers.
 *
 * QEMU older than 9.1 is refused for TCG guests: Debian 12's QEMU 7.2 loses dirty bits under TCG,
 * so a multi-pass pre-copy reports `completed` and the guest crashes on the destination (FACTS.md;
 * 8/8 runs). QEMU 10.0 from bookworm-backports is clean.
 */
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, isAbsolute, join } from 'node:path';
import { spawn } from 'node:child_process';
import { DependencyError } from '../../shared/errors.js';
import { createLogger } from '../../shared/log.js';
import { QmpClient } from '../qmp/client.js';
import type { MigrationParameters } from '../qmp/commands.js';
import { unixSocketTransport } from '../qmp/transport.js';
import type { Accel } from './accel.js';

export const QEMU_SYSTEM = 'qemu-system-x86_64';
/** Oldest QEMU trusted to migrate TCG guests. */
export const MIN_TCG_VERSION = { major: 9, minor: 1 } as const;
export const QEMU_INSTALL_HINT =
  "install QEMU 10 from bookworm-backports: echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/backports.list && apt-get update && apt-get install -y -t bookworm-backports qemu-system-x86 qemu-utils";

export interface QemuVersion {
  readonly major: number;
  readonly minor: number;
  readonly micro: number;
  /** The distribution's package string, e.g. `Debian 1:10.0.2+ds-2+deb13u1~bpo12+1`. */
  readonly package: string;
}

export interface QemuBinary {
  readonly path: string;
  readonly version: QemuVersion;
}

/**
 * Parses the first line of `qemu-system-x86_64 --version`, e.g.
 * `QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)`.
 * @throws DependencyError when the text has no version.
 */
export function parseQemuVersion(text: string): QemuVersion {
  const m = /QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?(?:\s*\(([^)]*)\))?/.exec(text);
  if (!m) throw new DependencyError(QEMU_SYSTEM, `cannot read a version from ${JSON.stringify(text.slice(0, 200))}`);
  return { major: Number(m[1]), minor: Number(m[2]), micro: Number(m[3] ?? 0), package: m[4] ?? '' };
}

export function formatQemuVersion(v: QemuVersion): string {
  return `${v.major}.${v.minor}.${v.micro}${v.package ? ` (${v.package})` : ''}`;
}

/**
 * Refuses a QEMU that cannot be trusted with `accel`.
 * @throws DependencyError naming the version and the fix when TCG is asked of QEMU < 9.1.
 */
export function assertQemuFitFor(qemu: QemuBinary, accel: Accel): void {
  const v = qemu.version;
  const old = v.major < MIN_TCG_VERSION.major || (v.major === MIN_TCG_VERSION.major && v.minor < MIN_TCG_VERSION.minor);
  if (accel === 'tcg' && old) {
    throw new DependencyError(
      qemu.path,
      `QEMU ${formatQemuVersion(v)} is older than ${MIN_TCG_VERSION.major}.${MIN_TCG_VERSION.minor}: it silently corrupts TCG guests during live migration (lost dirty bits); ${QEMU_INSTALL_HINT}`,
    );
  }
}

/** Runs a program and returns its stdout (the seam for unit tests). */
export type CommandRunner = (file: string, args: readonly string[], options: { timeoutMs: number }) => Promise<string>;

export const execRunner: CommandRunner = (file, args, { timeoutMs }) =>
  new Promise((resolve, reject) => {
    execFile(file, [...args], { timeout: timeoutMs, encoding: 'utf8' }, (err, stdout) => (err ? reject(err) : resolve(stdout)));
  });

/** True when `path` is an executable file. */
export type IsExecutable = (path: string) => Promise<boolean>;

const isExecutable: IsExecutable = (p) =>
  access(p, constants.X_OK).then(
    () => true,
    () => false,
  );

/**
 * Locates the QEMU binary: `explicit` when given (absolute, or a name looked up in PATH), else
 * `qemu-system-x86_64` in PATH.
 * @throws DependencyError naming the binary and how to install it when not found.
 */
export async function findQemuBinary(
  explicit?: string,
  env: NodeJS.ProcessEnv = process.env,
  exec: IsExecutable = isExecutable,
): Promise<string> {
  const name = explicit ?? QEMU_SYSTEM;
  if (isAbsolute(name)) {
    if (await exec(name)) return name;
    throw new DependencyError(name, `not found or not executable; ${QEMU_INSTALL_HINT}`);
  }
  for (const dir of (env['PATH'] ?? '').split(delimiter)) {
    if (dir === '') continue;
    const candidate = join(dir, name);
    if (await exec(candidate)) return candidate;
  }
  throw new DependencyError(name, `not found in PATH; ${QEMU_INSTALL_HINT}`);
}

/**
 * Finds the binary and reads its version.
 * @throws DependencyError when missing, not runnable, or its version is unreadable.
 */
export async function probeQemuBinary(
  explicit?: string,
  deps: { env?: NodeJS.ProcessEnv; run?: CommandRunner; isExecutable?: IsExecutable } = {},
): Promise<QemuBinary> {
  const path = await findQemuBinary(explicit, deps.env ?? process.env, deps.isExecutable ?? isExecutable);
  let out: string;
  try {
    out = await (deps.run ?? execRunner)(path, ['--version'], { timeoutMs: 10_000 });
  } catch (err) {
    throw new DependencyError(path, `--version failed: ${(err as Error).message}`, { cause: err });
  }
  return { path, version: parseQemuVersion(out) };
}

export interface QemuMigrationSupport {
  /** Every capability QEMU knows, with its default state. */
  readonly capabilities: Readonly<Record<string, boolean>>;
  /** Default migration parameters (downtime-limit 300 ms, max-bandwidth 128 MiB/s, …). */
  readonly parameters: MigrationParameters;
}

/**
 * Starts a throwaway `-machine none` QEMU, reads `query-migrate-capabilities` and
 * `query-migrate-parameters`, and quits it. Takes ~50 ms; waits up to 30 s for QMP (a loaded
 * 2-core host once took over 10 s to start it while many guests ran).
 * @throws DependencyError when QEMU cannot be started or does not answer.
 */
export async function probeQemuMigration(binary: string, options: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<QemuMigrationSupport> {
  const dir = await mkdtemp(join(tmpdir(), 'migd-probe-'));
  const sock = join(dir, 'qmp.sock');
  const child = spawn(binary, ['-machine', 'none', '-nodefaults', '-no-user-config', '-display', 'none', '-qmp', `unix:${sock},server=on,wait=off`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d.slice(0, 4096)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.once('error', () => undefined);
  const qmp = new QmpClient(unixSocketTransport(sock), { name: 'probe', logger: createLogger('qemu-probe') });
  try {
    await qmp.connect({ retryIntervalMs: 10, timeoutMs: options.timeoutMs ?? 30_000, ...(options.signal ? { signal: options.signal } : {}) });
    const caps = await qmp.execute('query-migrate-capabilities');
    const parameters = await qmp.execute('query-migrate-parameters');
    await qmp.execute('quit').catch(() => undefined);
    return { capabilities: Object.fromEntries(caps.map((c) => [c.capability, c.state])), parameters };
  } catch (err) {
    throw new DependencyError(binary, `capability probe failed: ${(err as Error).message}${stderr ? `; stderr: ${stderr.trim()}` : ''}`, {
      cause: err,
    });
  } finally {
    await qmp.disconnect();
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    await rm(dir, { recursive: true, force: true });
  }
}
