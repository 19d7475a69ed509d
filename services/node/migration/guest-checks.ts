/**
 * What a node can check from the host that a migrated guest is alive and intact on the
 * destination, when the guest runs no migd workload to prove it (a VM booted from its own disk):
 *
 * - `running`: QMP `query-status` says running (not paused, not stopped on an I/O error);
 * - `vcpus`: the vCPU threads (QMP `query-cpus-fast` thread ids) used CPU on this host after the
 *   resume (/proc/PID/task/TID/schedstat, nanoseconds): a paused guest's vCPU threads sleep, so
 *   this is the guest executing here, not just a process being up;
 * - `io-errors`: no failed block request on any of its disks (QMP `query-blockstats`);
 * - `disk:<id>`: each LOCAL disk's contents here equal the source's at the switch-over (digests
 *   taken on both ends while the guest ran on neither, compared by the source).
 *
 * A guest with migd's workload also gets `workload`: it verified its memory (and its disk, when it
 * writes one) here after arriving. The run succeeds only when every check passed.
 */
import { readFile } from 'node:fs/promises';
import type { GuestCheck } from '../../shared/gen/migd/v1/common.js';
import type { DiskDigest } from '../../shared/gen/migd/v1/node.js';
import type { QmpClient } from '../qmp/client.js';

/**
 * The most data a disk comparison reads at the switch-over: the destination's digest is taken
 * while the guest is paused there, so its time adds to the downtime.
 */
export const DIGEST_MAX_BYTES = 1024 * 1024 * 1024;

/** CPU time (ns) the VM's vCPU threads have used so far; undefined when it cannot be read. */
export async function vcpuRunNs(qmp: QmpClient, pid: number): Promise<number | undefined> {
  const reply = await qmp.execute('query-cpus-fast', undefined, { timeoutMs: 5000 }).catch(() => undefined);
  const cpus = Array.isArray(reply) ? (reply as { 'thread-id'?: number }[]) : [];
  const tids = [...new Set(cpus.map((c) => c['thread-id']).filter((t): t is number => typeof t === 'number' && t > 0))];
  if (tids.length === 0) return undefined;
  let ns = 0;
  for (const tid of tids) {
    const text = await readFile(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').catch(() => undefined);
    const v = Number(text?.split(' ')[0]);
    if (!Number.isFinite(v)) return undefined;
    ns += v;
  }
  return ns;
}

export function runningCheck(status: { running?: boolean; status?: string } | undefined): GuestCheck {
  const passed = status?.running === true;
  return { name: 'running', passed, detail: passed ? 'QMP query-status: running' : `QMP query-status: ${status?.status ?? 'no answer'}` };
}

/** True when both readings exist and the vCPU threads used CPU between them (the `vcpus` check passes). */
export function vcpusRan(before: number | undefined, after: number | undefined): boolean {
  return before !== undefined && after !== undefined && after > before;
}

export function vcpuCheck(before: number | undefined, after: number | undefined, windowMs: number): GuestCheck {
  if (before === undefined || after === undefined) return { name: 'vcpus', passed: false, detail: 'the vCPU threads\' CPU time could not be read' };
  const ranMs = (after - before) / 1e6;
  return {
    name: 'vcpus',
    passed: vcpusRan(before, after),
    detail: vcpusRan(before, after) ? `the vCPU threads ran ${ranMs.toFixed(1)} ms of CPU in the ${windowMs} ms after the resume` : `the vCPU threads did not run in the ${windowMs} ms after the resume`,
  };
}

interface BlockStatsEntry {
  qdev?: string;
  device?: string;
  node_name?: string;
  stats?: Record<string, unknown>;
}

const FAILED = ['failed_rd_operations', 'failed_wr_operations', 'failed_flush_operations', 'failed_unmap_operations', 'failed_zone_append_operations'] as const;

export function ioErrorCheck(blockstats: unknown): GuestCheck {
  if (!Array.isArray(blockstats)) return { name: 'io-errors', passed: false, detail: 'QMP query-blockstats gave no answer' };
  const bad: string[] = [];
  for (const e of blockstats as BlockStatsEntry[]) {
    const n = FAILED.reduce((sum, k) => sum + Number(e.stats?.[k] ?? 0), 0);
    if (n > 0) bad.push(`${e.qdev || e.device || e.node_name || '?'}: ${n}`);
  }
  return {
    name: 'io-errors',
    passed: bad.length === 0,
    detail: bad.length === 0 ? `no failed block request on ${blockstats.length} block device(s) (QMP query-blockstats)` : `failed block requests: ${bad.join(', ')}`,
  };
}

/** The source's comparison of each LOCAL disk's digest (its own, the destination's). */
export function diskChecks(source: readonly DiskDigest[], destination: readonly DiskDigest[]): GuestCheck[] {
  return source.map((s) => {
    const d = destination.find((x) => x.diskId === s.diskId);
    const name = `disk:${s.diskId}`;
    if (!s.sha256) return { name, passed: false, detail: `no digest on the source: ${s.error || 'unknown'}` };
    if (!d) return { name, passed: false, detail: 'the destination sent no digest for this disk' };
    if (!d.sha256) return { name, passed: false, detail: `no digest on the destination: ${d.error || 'unknown'}` };
    const mib = (b: number): string => (b / 1048576).toFixed(1);
    return d.sha256 === s.sha256 && d.dataBytes === s.dataBytes
      ? { name, passed: true, detail: `identical to the source at the switch-over: SHA-256 ${s.sha256.slice(0, 16)}… over ${mib(s.dataBytes)} MiB of data on both ends (${s.ms} ms source, ${d.ms} ms destination)` }
      : { name, passed: false, detail: `differs from the source at the switch-over: SHA-256 ${s.sha256.slice(0, 16)}… (${mib(s.dataBytes)} MiB) on the source, ${d.sha256.slice(0, 16)}… (${mib(d.dataBytes)} MiB) here` };
  });
}

/** One line for a run's result: the checks that passed, or the first that failed. */
export function describeChecks(checks: readonly GuestCheck[]): string {
  const failed = checks.filter((c) => !c.passed);
  if (failed.length > 0) return failed.map((c) => `${c.name}: ${c.detail}`).join('; ');
  return checks.map((c) => c.name).join(', ');
}
