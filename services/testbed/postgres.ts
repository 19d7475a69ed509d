/**
 * A throw-away PostgreSQL cluster on this machine, for tests and the local HA cluster: `initdb`
 * into a temp dir, `pg_ctl start` on a free loopback port (socket in the same dir), trust
 * authentication for the superuser `migd`, `fsync=off`. stop()/start() keep the data (an outage),
 * kill() is a crash (SIGKILL of the postmaster), dispose() stops it and removes the dir. Every
 * cluster started here is stopped when the process exits, as a last resort behind the caller's
 * own teardown.
 *
 * `initdb` refuses to run as root: as root, every program runs as Debian's `postgres` user
 * (runuser) in a dir that user owns. The programs come from Debian's `postgresql` package
 * (scripts/binaries.manifest); $MIGD_PG_BIN overrides their folder.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { chown, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from '../shared/net.js';

const execFileP = promisify(execFile);

/** The folder of initdb, pg_ctl and postgres: $MIGD_PG_BIN, else Debian's newest /usr/lib/postgresql/N/bin. */
export function postgresBinDir(): string {
  const env = process.env['MIGD_PG_BIN'];
  if (env) return env;
  for (const v of [17, 16, 15]) {
    const dir = `/usr/lib/postgresql/${v}/bin`;
    if (existsSync(join(dir, 'initdb'))) return dir;
  }
  throw new Error('PostgreSQL server programs not found (Debian package postgresql; run scripts/setup, or set MIGD_PG_BIN)');
}

/** The superuser of a throw-away cluster (trust authentication on loopback). */
export const PG_TEST_USER = 'migd';

/** A running throw-away PostgreSQL cluster. */
export interface PostgresServer {
  readonly port: number;
  /** Holds the data dir and the socket. */
  readonly dir: string;
  /** `postgres://migd@127.0.0.1:PORT/DB` (default database `postgres`). */
  url(database?: string): string;
  /** Creates a fresh database (a random name unless given) and returns its URL. */
  createDatabase(name?: string): Promise<string>;
  /** True while the postmaster runs. */
  readonly running: boolean;
  /** The postmaster's pid (undefined when stopped). */
  readonly pid: number | undefined;
  /** Stops the server (`pg_ctl stop -m fast`); the data stays. No-op when stopped. */
  stop(): Promise<void>;
  /** Starts it again on the same port and data. */
  start(): Promise<void>;
  /** A crash: SIGKILL to the postmaster (its backends exit on their own), data kept. */
  kill(): Promise<void>;
  /** Stops it (immediate) and removes its dir. Idempotent. */
  dispose(): Promise<void>;
}

const live = new Map<string, () => number | undefined>();
process.once('exit', () => {
  for (const pidOf of live.values()) {
    const pid = pidOf();
    if (pid === undefined) continue;
    try {
      // SIGQUIT: immediate shutdown, the postmaster takes its backends down with it.
      process.kill(pid, 'SIGQUIT');
    } catch {
      // already gone
    }
  }
});

interface Account {
  readonly uid: number;
  readonly gid: number;
}

/** The uid/gid of Debian's `postgres` user (read from /etc/passwd; Node has no getpwnam). */
function postgresAccount(): Account {
  for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
    const f = line.split(':');
    if (f[0] === 'postgres') return { uid: Number(f[2]), gid: Number(f[3]) };
  }
  throw new Error('running as root, but there is no "postgres" user to run PostgreSQL as (Debian package postgresql creates it)');
}

/**
 * Starts a fresh cluster. `settings` are extra `-c name=value` server settings.
 * @throws when the programs are missing or the server does not start (the dir is removed then)
 */
export async function startPostgres(opts: { settings?: Readonly<Record<string, string>> } = {}): Promise<PostgresServer> {
  const bin = postgresBinDir();
  const asRoot = process.getuid?.() === 0;
  const account = asRoot ? postgresAccount() : undefined;
  const dir = await mkdtemp(join(tmpdir(), 'migd-pg-'));
  const data = join(dir, 'data');
  // As root the programs run as `postgres` (runuser, util-linux); otherwise as ourselves.
  const run = async (program: string, args: string[]): Promise<string> => {
    const file = join(bin, program);
    const { stdout } = account ? await execFileP('runuser', ['-u', 'postgres', '--', file, ...args], { cwd: dir, timeout: 60_000 }) : await execFileP(file, args, { cwd: dir, timeout: 60_000 });
    return stdout;
  };
  const postmasterPid = (): number | undefined => {
    try {
      const pid = Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
      if (!Number.isInteger(pid) || pid <= 0) return undefined;
      process.kill(pid, 0);
      return pid;
    } catch {
      return undefined;
    }
  };
  let port = 0;
  let started = false;
  try {
    if (account) await chown(dir, account.uid, account.gid);
    await run('initdb', ['-D', data, '-A', 'trust', '-U', PG_TEST_USER, '-E', 'UTF8', '--no-locale']);
    const settings = { listen_addresses: '127.0.0.1', fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off', max_connections: '200', ...opts.settings };
    const serverOptions = (): string => [`-p ${port}`, `-k ${dir}`, ...Object.entries(settings).map(([k, v]) => `-c ${k}=${v}`)].join(' ');
    const pgStart = (): Promise<string> => run('pg_ctl', ['-D', data, '-l', join(dir, 'server.log'), '-o', serverOptions(), '-w', '-t', '30', 'start']);
    let lastError: unknown;
    // The port is free when picked but could be taken before the server binds: retry a few times.
    for (let attempt = 0; attempt < 5 && !started; attempt++) {
      port = await freePort();
      try {
        await pgStart();
        started = true;
      } catch (err) {
        lastError = err;
      }
    }
    if (!started) throw new Error(`PostgreSQL did not start: ${(lastError as Error).message}\n${serverLog(dir)}`);
    live.set(dir, postmasterPid);
    let disposed = false;
    const handle: PostgresServer = {
      port,
      dir,
      url: (database = 'postgres') => `postgres://${PG_TEST_USER}@127.0.0.1:${port}/${database}`,
      async createDatabase(name) {
        const db = name ?? `t_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`;
        if (!/^[a-z_][a-z0-9_]{0,62}$/.test(db)) throw new Error(`not a plain database name: ${db}`);
        const client = new pg.Client({ connectionString: handle.url() });
        await client.connect();
        try {
          await client.query(`CREATE DATABASE ${db}`);
        } finally {
          await client.end();
        }
        return handle.url(db);
      },
      get running() {
        return postmasterPid() !== undefined;
      },
      get pid() {
        return postmasterPid();
      },
      async stop() {
        if (postmasterPid() === undefined) return;
        await run('pg_ctl', ['-D', data, '-m', 'fast', '-w', '-t', '30', 'stop']);
      },
      async start() {
        if (disposed) throw new Error('PostgreSQL handle disposed');
        if (postmasterPid() !== undefined) return;
        await pgStart();
      },
      async kill() {
        const pid = postmasterPid();
        if (pid === undefined) return;
        process.kill(pid, 'SIGKILL');
        // Wait until it is gone: a start() right after must not see the old postmaster.
        const until = Date.now() + 10_000;
        while (Date.now() < until) {
          try {
            process.kill(pid, 0);
          } catch {
            break;
          }
          await new Promise((r) => setTimeout(r, 50));
        }
        // Backends of a killed postmaster notice and exit; the next start waits for the port.
      },
      async dispose() {
        if (disposed) return;
        disposed = true;
        try {
          if (postmasterPid() !== undefined) await run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', '-t', '30', 'stop']);
        } finally {
          live.delete(dir);
          await rm(dir, { recursive: true, force: true });
        }
      },
    };
    return handle;
  } catch (err) {
    if (started) {
      try {
        execFileSync(account ? 'runuser' : join(bin, 'pg_ctl'), account ? ['-u', 'postgres', '--', join(bin, 'pg_ctl'), '-D', data, '-m', 'immediate', 'stop'] : ['-D', data, '-m', 'immediate', 'stop'], { stdio: 'ignore' });
      } catch {
        // not running
      }
    }
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

function serverLog(dir: string): string {
  try {
    return readFileSync(join(dir, 'server.log'), 'utf8').slice(-2000);
  } catch {
    return '';
  }
}
