/**
 * Bookkeeping that outlives a crashed process: one JSON file per testbed and one claim file per
 * address slot, under /run/migd-testbed/ (tmpfs: gone after a reboot, as are the namespaces).
 *
 * The state file is claimed (O_EXCL) before anything is created and removed last, so every
 * namespace a testbed creates is covered by a file naming its creator's pid and start time;
 * `Testbed.cleanupStale` uses that to tell leftovers from live testbeds, even across pid reuse.
 */
import { readFileSync, rmSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** Default directory for state and slot files. */
export const DEFAULT_STATE_DIR = '/run/migd-testbed';

/** What a testbed records about itself. */
export interface TestbedState {
  readonly version: 1;
  readonly name: string;
  readonly prefix: string;
  readonly id: string;
  /** Pid of the creating process and its start time (from /proc/PID/stat), null if unknown. */
  readonly pid: number;
  readonly pidStart: string | null;
  /** Address slot, null until claimed. */
  readonly slot: number | null;
  /** Every namespace the testbed may have created. */
  readonly namespaces: readonly string[];
  /** Interfaces it creates in the root namespace. */
  readonly rootLinks: readonly string[];
  readonly createdAt: string;
}

/** Field 22 (starttime, clock ticks since boot) of a /proc/PID/stat line, or null if malformed. */
export function parseStatStartTime(stat: string): string | null {
  // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
  const close = stat.lastIndexOf(')');
  if (close < 0) return null;
  const rest = stat.slice(close + 2).trim().split(/\s+/);
  const v = rest[19];
  return v !== undefined && /^\d+$/.test(v) ? v : null;
}

/** Start time of a live process, or null when there is no such process. */
export function processStartTime(pid: number): string | null {
  try {
    return parseStatStartTime(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return null;
  }
}

/** True while the process that created `state` runs (same pid and same start time). */
export function isCreatorAlive(state: Pick<TestbedState, 'pid' | 'pidStart'>, startTimeOf: (pid: number) => string | null = processStartTime): boolean {
  const now = startTimeOf(state.pid);
  if (now === null) return false;
  return state.pidStart === null || state.pidStart === now;
}

export function statePath(dir: string, name: string): string {
  return join(dir, `${name}.json`);
}

function slotPath(dir: string, slot: number): string {
  return join(dir, 'slots', String(slot));
}

/** Validates parsed JSON as a TestbedState; undefined when it is not one. */
export function parseState(text: string): TestbedState | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null) return undefined;
  const s = v as Record<string, unknown>;
  const strings = (x: unknown): x is string[] => Array.isArray(x) && x.every((e) => typeof e === 'string');
  if (
    s['version'] !== 1 ||
    typeof s['name'] !== 'string' ||
    typeof s['prefix'] !== 'string' ||
    typeof s['id'] !== 'string' ||
    typeof s['pid'] !== 'number' ||
    !(s['pidStart'] === null || typeof s['pidStart'] === 'string') ||
    !(s['slot'] === null || typeof s['slot'] === 'number') ||
    !strings(s['namespaces']) ||
    !strings(s['rootLinks']) ||
    typeof s['createdAt'] !== 'string'
  ) {
    return undefined;
  }
  return s as unknown as TestbedState;
}

/** Creates the state file only if no testbed of that name exists. False when the name is taken. */
export async function claimState(dir: string, state: TestbedState): Promise<boolean> {
  await mkdir(join(dir, 'slots'), { recursive: true, mode: 0o755 });
  let fh;
  try {
    fh = await open(statePath(dir, state.name), 'wx', 0o644);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
  try {
    await fh.writeFile(JSON.stringify(state, null, 2) + '\n');
  } finally {
    await fh.close();
  }
  return true;
}

/** Replaces the state file atomically. */
export async function writeState(dir: string, state: TestbedState): Promise<void> {
  const tmp = `${statePath(dir, state.name)}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(state, null, 2) + '\n', { mode: 0o644 });
  await rename(tmp, statePath(dir, state.name));
}

/** Every readable state file in `dir` (malformed ones are skipped). */
export async function readStates(dir: string): Promise<TestbedState[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const out: TestbedState[] = [];
  for (const n of names) {
    if (!n.endsWith('.json')) continue;
    try {
      const s = parseState(await readFile(join(dir, n), 'utf8'));
      if (s && `${s.name}.json` === n) out.push(s);
    } catch {
      // Removed concurrently by its owner: nothing to clean.
    }
  }
  return out;
}

/** Claims an address slot for `name`. False when another testbed holds it. */
export async function claimSlot(dir: string, slot: number, name: string): Promise<boolean> {
  await mkdir(join(dir, 'slots'), { recursive: true, mode: 0o755 });
  try {
    await writeFile(slotPath(dir, slot), name, { flag: 'wx', mode: 0o644 });
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
}

/** Slot number → name of the testbed holding it. */
export async function readSlotOwners(dir: string): Promise<Map<number, string>> {
  const out = new Map<number, string>();
  let names: string[];
  try {
    names = await readdir(join(dir, 'slots'));
  } catch {
    return out;
  }
  for (const n of names) {
    if (!/^\d+$/.test(n)) continue;
    try {
      out.set(Number(n), (await readFile(join(dir, 'slots', n), 'utf8')).trim());
    } catch {
      // released concurrently
    }
  }
  return out;
}

/** Releases `slot` if `name` still holds it. */
export async function releaseSlot(dir: string, slot: number, name: string): Promise<void> {
  try {
    if ((await readFile(slotPath(dir, slot), 'utf8')).trim() !== name) return;
    await rm(slotPath(dir, slot), { force: true });
  } catch {
    // already released
  }
}

export async function removeState(dir: string, name: string): Promise<void> {
  await rm(statePath(dir, name), { force: true });
}

/** Synchronous release of slot and state, for process-exit hooks. */
export function removeStateSync(dir: string, name: string, slot: number | null): void {
  if (slot !== null) {
    try {
      if (readFileSync(slotPath(dir, slot), 'utf8').trim() === name) rmSync(slotPath(dir, slot), { force: true });
    } catch {
      // already released
    }
  }
  rmSync(statePath(dir, name), { force: true });
}

