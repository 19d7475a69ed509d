/**
 * What the campaign looks at, behind the API's back where it can: QEMU processes from `ps` (by
 * the VM name and the node state folder on their command line), whether each guest runs (its
 * console log grows), the guest's own integrity report in that log, leftovers in the nodes' state
 * folders, and a run's events replayed from JetStream.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { NatsConnection } from 'nats';
import { subscribeRun } from '../../services/shared/events/subscriber.js';
import type { MigrationState } from '../../services/shared/gen/migd/v1/common.js';
import { GuestTelemetryParser } from '../../services/shared/guest/telemetry.js';
import type { QemuProcess } from './invariants.js';

const run = promisify(execFile);

/** A QEMU process of the cluster whose node state folders live under `workDir`. */
export interface QemuListing {
  readonly pid: number;
  readonly host: string;
  readonly vm: string;
  /** `ps` state letter (T: stopped by a signal). */
  readonly stat: string;
  readonly incoming: boolean;
}

/** Parses `ps -eo pid=,stat=,args=` output; keeps QEMUs whose -pidfile is under `workDir`. */
export function parseQemuPs(out: string, workDir: string): QemuListing[] {
  const res: QemuListing[] = [];
  const prefix = workDir.endsWith('/') ? workDir : `${workDir}/`;
  for (const line of out.split('\n')) {
    const m = /^\s*(\d+)\s+(\S+)\s+(.*)$/.exec(line);
    if (!m || !m[3]!.includes('qemu-system')) continue;
    const args = m[3]!;
    const pidfile = /\s-pidfile\s+(\S+)/.exec(args)?.[1];
    if (!pidfile?.startsWith(prefix)) continue;
    const rel = pidfile.slice(prefix.length).split('/');
    // <host>/vms/<name>/qemu.pid
    if (rel.length !== 4 || rel[1] !== 'vms') continue;
    const name = /\s-name\s+(\S+)/.exec(args)?.[1] ?? rel[2]!;
    res.push({ pid: Number(m[1]), host: rel[0]!, vm: name, stat: m[2]!, incoming: /\s-incoming\s/.test(args) });
  }
  return res;
}

/** The cluster's QEMU processes now. */
export async function listQemu(workDir: string): Promise<QemuListing[]> {
  const { stdout } = await run('ps', ['-eo', 'pid=,stat=,args='], { maxBuffer: 16 << 20 });
  return parseQemuPs(stdout, workDir);
}

export function serialLogPath(workDir: string, host: string, vm: string): string {
  return join(workDir, host, 'vms', vm, 'serial.log');
}

function sizeOf(p: string): number {
  try {
    return statSync(p).size;
  } catch {
    return -1;
  }
}

/**
 * Which of the listed QEMUs run their guest: the workload heartbeats on the console at least once
 * a second, so a log that does not grow in `windowMs` belongs to a paused or hung guest.
 */
export async function sampleRunning(workDir: string, procs: readonly QemuListing[], windowMs = 2000): Promise<QemuProcess[]> {
  const before = procs.map((p) => sizeOf(serialLogPath(workDir, p.host, p.vm)));
  await new Promise((r) => setTimeout(r, windowMs));
  const alive = new Set((await listQemu(workDir)).map((p) => p.pid));
  return procs
    .filter((p) => alive.has(p.pid))
    .map((p) => {
      const i = procs.indexOf(p);
      const after = sizeOf(serialLogPath(workDir, p.host, p.vm));
      return { pid: p.pid, host: p.host, vm: p.vm, running: before[i]! >= 0 && after > before[i]! && !p.stat.startsWith('T') };
    });
}

/** The guest's integrity report from its console log on `host`. */
export function guestIntegrity(workDir: string, host: string, vm: string): { errors: number; pagesVerified: number; anomalies: string[] } {
  let text: Buffer;
  try {
    text = readFileSync(serialLogPath(workDir, host, vm));
  } catch {
    return { errors: 0, pagesVerified: 0, anomalies: [] };
  }
  // Host time is meaningless for a file read at once: no gap events.
  const parser = new GuestTelemetryParser({ gapThresholdMs: Number.MAX_SAFE_INTEGER });
  const anomalies: string[] = [];
  for (const ev of parser.push(text)) {
    if (ev.type === 'anomaly') anomalies.push(`${ev.kind}: ${ev.detail}`);
    else if (ev.type === 'kernel-panic') anomalies.push(`kernel panic: ${ev.line.slice(0, 120)}`);
  }
  const i = parser.integrity();
  return { errors: i.errors, pagesVerified: i.pagesVerified, anomalies };
}

/**
 * Leftovers in the nodes' state folders: sockets of VMs no QEMU serves on that host.
 * `keep(host, vm)`: records the node may legitimately keep (a FAILED VM it still lists).
 */
export function findLeftovers(workDir: string, hosts: readonly string[], procs: readonly QemuListing[], keep: (host: string, vm: string) => boolean): string[] {
  const out: string[] = [];
  for (const h of hosts) {
    const dir = join(workDir, h, 'vms');
    if (!existsSync(dir)) continue;
    for (const vm of readdirSync(dir)) {
      if (procs.some((p) => p.host === h && p.vm === vm)) continue;
      const socks = ['qmp.sock', 'serial.sock'].filter((s) => existsSync(join(dir, vm, s)));
      if (socks.length > 0 && !keep(h, vm)) out.push(`host ${h}: ${socks.join(', ')} of ${vm}, which no QEMU on ${h} serves`);
    }
  }
  return out;
}

/** A run's events from JetStream (from its start up to RunCompleted, or what came in `timeoutMs`). */
export async function replayRun(nc: NatsConnection, runId: string, timeoutMs = 5000): Promise<{ sequences: number[]; transitions: MigrationState[]; completed: MigrationState | undefined }> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  const sequences: number[] = [];
  const transitions: MigrationState[] = [];
  let completed: MigrationState | undefined;
  try {
    for await (const ev of await subscribeRun(nc, runId, { fromStart: true, untilCompleted: true, signal: ac.signal })) {
      if (ev.runSequence !== 0) sequences.push(ev.runSequence);
      const p = ev.payload;
      if (p?.$case === 'runState' && p.value.change && p.value.change.from !== p.value.change.to) transitions.push(p.value.change.to);
      if (p?.$case === 'runCompleted') completed = p.value.state;
    }
  } catch {
    // aborted: what came so far
  } finally {
    clearTimeout(timer);
  }
  return { sequences, transitions, completed };
}
