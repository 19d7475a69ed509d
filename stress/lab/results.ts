/**
 * The lab's results file (`<out>/results.json`): which scenario/repetition pairs have been run,
 * with the run id the coordinator gave each, and where its timeline is kept (`runs/<id>.json`,
 * proto JSON of GetRunTimelineResponse) so a report can be rebuilt without the cluster. A run is
 * "recorded" once its migration ended, however it ended; attempts that broke before a run existed
 * (VM did not boot…) are kept as errors and retried on `--resume`. Writes are atomic (temp file +
 * rename), so an interrupted lab never leaves a torn file.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GetRunTimelineResponse } from '../../services/shared/gen/migd/v1/coordinator.js';
import type { LabOutcome } from './metrics.js';
import type { LabLink } from './scenarios.js';

export interface RecordedRun {
  readonly scenario: string;
  readonly repetition: number;
  readonly runId: string;
  readonly label: string;
  readonly outcome: LabOutcome;
  readonly note?: string;
  readonly vmName: string;
  /** Relative to the results folder. */
  readonly timelineFile: string;
  readonly link: LabLink;
  /** Bytes the source sent on its migration link during the migration (scenarios with a disk). */
  readonly wireBytes?: number;
  readonly recordedAt: string;
}

export interface FailedAttempt {
  readonly scenario: string;
  readonly repetition: number;
  readonly error: string;
  readonly at: string;
}

export interface LabResults {
  readonly version: 1;
  readonly comparison: string;
  readonly quick: boolean;
  readonly mode: string;
  readonly createdAt: string;
  updatedAt: string;
  /** Where the runs were made (QEMU version, host, Node), merged in by each session. */
  environment?: Record<string, string>;
  runs: RecordedRun[];
  errors: FailedAttempt[];
}

export const RESULTS_FILE = 'results.json';

export function newResults(comparison: string, quick: boolean, mode: string): LabResults {
  const now = new Date().toISOString();
  return { version: 1, comparison, quick, mode, createdAt: now, updatedAt: now, runs: [], errors: [] };
}

/** The results in `dir`, or undefined when there are none. @throws Error for a file of another comparison or version */
export async function loadResults(dir: string, comparison?: string): Promise<LabResults | undefined> {
  const file = join(dir, RESULTS_FILE);
  if (!existsSync(file)) return undefined;
  const r = JSON.parse(await readFile(file, 'utf8')) as LabResults;
  if (r.version !== 1) throw new Error(`${file}: unknown results version ${String(r.version)}`);
  if (comparison !== undefined && r.comparison !== comparison) throw new Error(`${file} holds results of "${r.comparison}", not "${comparison}": use another --out`);
  return r;
}

async function writeAtomic(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  await writeFile(tmp, text);
  await rename(tmp, file);
}

export async function saveResults(dir: string, r: LabResults): Promise<void> {
  await mkdir(dir, { recursive: true });
  r.updatedAt = new Date().toISOString();
  await writeAtomic(join(dir, RESULTS_FILE), JSON.stringify(r, null, 2) + '\n');
}

/** True when this scenario/repetition pair already has a recorded run (resume skips it). */
export function isRecorded(r: LabResults, scenario: string, repetition: number): boolean {
  return r.runs.some((x) => x.scenario === scenario && x.repetition === repetition);
}

/** Stores a timeline as proto JSON; returns its path relative to `dir`. */
export async function saveTimeline(dir: string, t: GetRunTimelineResponse): Promise<string> {
  const rel = join('runs', `${(t.run?.id ?? 'unknown').replace(/[^A-Za-z0-9_.-]/g, '-')}.json`);
  await mkdir(join(dir, 'runs'), { recursive: true });
  await writeAtomic(join(dir, rel), JSON.stringify(GetRunTimelineResponse.toJSON(t)) + '\n');
  return rel;
}

export async function loadTimeline(dir: string, rel: string): Promise<GetRunTimelineResponse> {
  return GetRunTimelineResponse.fromJSON(JSON.parse(await readFile(join(dir, rel), 'utf8')));
}
