/**
 * A process's TCP connections, and their forced close with `ss -K` (the kernel's SOCK_DESTROY:
 * the socket is aborted at once, whatever its state, and every read, write or connect blocked on
 * it returns an error).
 *
 * The node uses it on a source QEMU whose migration is blocked on a dead link where QMP `yank`
 * cannot reach: with post-copy preempt over TLS, QEMU opens the preempt channel as the switch
 * begins and runs its TLS handshake in the main loop on a blocking socket. When the link dies
 * between the channel's connect and the destination's answer, the main loop (and with it the
 * monitor and every vCPU) blocks in a read until TCP gives up, many minutes later, and the
 * channel is not registered for yank before its handshake ends (QEMU 10.0.2, seen in
 * gdb: gnutls_handshake → qio_channel_read → recvmsg on the main thread).
 */
import { execFile } from 'node:child_process';
import { readdir, readlink } from 'node:fs/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface TcpSocket {
  readonly state: string;
  /** Local address and port as `ss` prints them (`A.B.C.D:P`, `[v6]:P`). */
  readonly local: string;
  readonly peer: string;
  readonly inode: number;
}

/**
 * Parses `ss -tanHe` output (no header, extended: `ino:N`). Lines without an inode (time-wait,
 * orphans) are skipped: they belong to no process.
 */
export function parseSsSockets(text: string): TcpSocket[] {
  const out: TcpSocket[] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length < 5) continue;
    const ino = /\bino:(\d+)\b/.exec(line);
    if (!ino || ino[1] === '0') continue;
    out.push({ state: f[0]!, local: f[3]!, peer: f[4]!, inode: Number(ino[1]) });
  }
  return out;
}

/** The host part of an `ss` address (`A.B.C.D:P` → `A.B.C.D`, `[v6]:P` → `v6`). */
export function ssHost(addr: string): string {
  const i = addr.lastIndexOf(':');
  const host = i < 0 ? addr : addr.slice(0, i);
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
}

/** The inodes of the sockets process `pid` holds open (empty once it is gone). */
export async function socketInodes(pid: number): Promise<Set<number>> {
  const inodes = new Set<number>();
  let fds: string[];
  try {
    fds = await readdir(`/proc/${pid}/fd`);
  } catch {
    return inodes;
  }
  for (const fd of fds) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m) inodes.add(Number(m[1]));
  }
  return inodes;
}

/**
 * Aborts the connected TCP sockets (any state but LISTEN) of process `pid` in the caller's
 * network namespace, optionally only those whose peer host is in `peers`. Returns what it
 * aborted; a socket `ss -K` could not abort is reported through `onError` and skipped.
 */
export async function destroyTcpSockets(pid: number, opts: { peers?: readonly string[]; onError?: (sock: TcpSocket, err: Error) => void } = {}): Promise<TcpSocket[]> {
  const mine = await socketInodes(pid);
  if (mine.size === 0) return [];
  const { stdout } = await run('ss', ['-tanHe'], { maxBuffer: 16 << 20 });
  const peers = opts.peers ? new Set(opts.peers) : undefined;
  const targets = parseSsSockets(stdout).filter((s) => s.state !== 'LISTEN' && mine.has(s.inode) && (!peers || peers.has(ssHost(s.peer))));
  const done: TcpSocket[] = [];
  for (const s of targets) {
    try {
      await run('ss', ['-K', '-tn', 'src', s.local, 'dst', s.peer]);
      done.push(s);
    } catch (err) {
      opts.onError?.(s, err as Error);
    }
  }
  return done;
}
