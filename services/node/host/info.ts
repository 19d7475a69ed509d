/**
 * Host facts for admission and cost accounting: memory from /proc/meminfo, CPUs, and per-process
 * CPU time and start time from /proc/PID/stat.
 */
import { execFile } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { promisify } from 'node:util';
import { hostFs, type HostFs } from './fs.js';

export interface MemInfo {
  readonly totalBytes: number;
  /** MemFree: unused right now. */
  readonly freeBytes: number;
  /** MemAvailable: what can be allocated without swapping (free + reclaimable cache). */
  readonly availableBytes: number;
}

/**
 * Parses /proc/meminfo text.
 * @throws Error when MemTotal or MemFree is missing (not a Linux meminfo).
 */
export function parseMemInfo(text: string): MemInfo {
  const kib = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^(\w+(?:\(\w+\))?):\s+(\d+)(?:\s+kB)?/.exec(line);
    if (m) kib.set(m[1]!, Number(m[2]));
  }
  const total = kib.get('MemTotal');
  const free = kib.get('MemFree');
  if (total === undefined || free === undefined) throw new Error('meminfo: MemTotal/MemFree missing');
  // Kernels before 3.14 have no MemAvailable; free is the conservative stand-in.
  const avail = kib.get('MemAvailable') ?? free;
  return { totalBytes: total * 1024, freeBytes: free * 1024, availableBytes: avail * 1024 };
}

export async function readMemInfo(fs: HostFs = hostFs()): Promise<MemInfo> {
  return parseMemInfo(await fs.readFile('/proc/meminfo'));
}

/** The fields of /proc/PID/stat migd uses (man 5 proc; field numbers 1-based). */
export interface ProcStat {
  readonly pid: number;
  /** (2) executable name, without parentheses. */
  readonly comm: string;
  /** (3) R, S, D, Z (zombie), T, X … */
  readonly state: string;
  /** (4) */
  readonly ppid: number;
  /** (14) user-mode CPU time in clock ticks. */
  readonly utimeTicks: number;
  /** (15) kernel-mode CPU time in clock ticks. */
  readonly stimeTicks: number;
  /** (22) start time after boot in clock ticks: with the pid, identifies a process (pid reuse). */
  readonly startTimeTicks: number;
  /** (24) resident set size in pages. */
  readonly rssPages: number;
}

/**
 * Parses /proc/PID/stat. `comm` may contain spaces and parentheses, so fields are counted from the
 * last ')'.
 * @throws Error when the text is not a stat line.
 */
export function parseProcStat(text: string): ProcStat {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) throw new Error('proc stat: no (comm)');
  const rest = text.slice(close + 2).trim().split(/\s+/);
  // rest[0] is field 3.
  const field = (n: number): string => {
    const v = rest[n - 3];
    if (v === undefined) throw new Error(`proc stat: field ${n} missing`);
    return v;
  };
  return {
    pid: Number(text.slice(0, open).trim()),
    comm: text.slice(open + 1, close),
    state: field(3),
    ppid: Number(field(4)),
    utimeTicks: Number(field(14)),
    stimeTicks: Number(field(15)),
    startTimeTicks: Number(field(22)),
    rssPages: Number(field(24)),
  };
}

/** Reads /proc/PID/stat; undefined when the process does not exist. */
export async function readProcStat(pid: number, fs: HostFs = hostFs()): Promise<ProcStat | undefined> {
  try {
    return parseProcStat(await fs.readFile(`/proc/${pid}/stat`));
  } catch {
    return undefined;
  }
}

/**
 * True when `pid` runs and is the same process as recorded (same start time). A zombie counts as
 * dead: on hosts where PID 1 does not reap orphans, a killed detached QEMU lingers as `Z`.
 */
export function isSameLiveProcess(stat: ProcStat | undefined, startTimeTicks: number | undefined): boolean {
  if (stat === undefined || stat.state === 'Z' || stat.state === 'X' || stat.state === 'x') return false;
  return startTimeTicks === undefined || stat.startTimeTicks === startTimeTicks;
}

let ticksCache: Promise<number> | undefined;

/**
 * sysconf(_SC_CLK_TCK) via `getconf CLK_TCK`, read once. Node has no sysconf binding; on Linux the
 * value is the USER_HZ ABI constant 100, which is the fallback.
 */
export function clockTicksPerSecond(): Promise<number> {
  ticksCache ??= promisify(execFile)('getconf', ['CLK_TCK']).then(
    ({ stdout }) => {
      const n = Number(stdout.trim());
      return Number.isInteger(n) && n > 0 ? n : 100;
    },
    () => 100,
  );
  return ticksCache;
}

export interface ProcessCpu {
  readonly userSeconds: number;
  readonly systemSeconds: number;
  /** utime + stime in seconds: the host-CPU cost of the process so far. */
  readonly totalSeconds: number;
  readonly clockTicks: number;
}

/** CPU time a process has used so far; undefined when it does not exist. */
export async function processCpu(pid: number, fs: HostFs = hostFs(), ticks?: number): Promise<ProcessCpu | undefined> {
  const stat = await readProcStat(pid, fs);
  if (stat === undefined) return undefined;
  const hz = ticks ?? (await clockTicksPerSecond());
  return {
    userSeconds: stat.utimeTicks / hz,
    systemSeconds: stat.stimeTicks / hz,
    totalSeconds: (stat.utimeTicks + stat.stimeTicks) / hz,
    clockTicks: hz,
  };
}

export interface HostInfo {
  readonly memory: MemInfo;
  /** CPUs this process may use. */
  readonly cpus: number;
  readonly clockTicks: number;
}

export async function readHostInfo(fs: HostFs = hostFs()): Promise<HostInfo> {
  const [memory, clockTicks] = await Promise.all([readMemInfo(fs), clockTicksPerSecond()]);
  return { memory, cpus: availableParallelism(), clockTicks };
}
