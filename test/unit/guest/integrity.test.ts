// Compiles the guest's page-integrity code (stress/guest/integrity.c) natively with the host cc
// and runs a harness that corrupts, drops, rolls back and misplaces pages on purpose: every fault
// must be detected with the right classification, and clean runs must report nothing.
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const repo = fileURLToPath(new URL('../../../', import.meta.url));

interface CaseResult {
  case: string;
  injected: number;
  detected: number;
  false_positives: number;
  wrong: number;
  reasons: Record<string, number>;
}
interface ContentResult {
  case: 'content';
  distinct_random: number;
  changed_random: number;
  distinct_compressible: number;
  changed_compressible: number;
}

describe('guest page integrity (native build of stress/guest/integrity.c)', () => {
  let dir: string;
  const results = new Map<string, CaseResult>();
  let content: ContentResult | undefined;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'migd-integrity-'));
    const bin = join(dir, 'harness');
    await run('cc', [
      '-O2', '-Wall', '-Wextra', '-Werror',
      '-I', join(repo, 'stress/guest'),
      '-o', bin,
      join(repo, 'test/unit/guest/integrity_harness.c'),
      join(repo, 'stress/guest/integrity.c'),
    ]);
    const { stdout } = await run(bin, [], { timeout: 30_000 });
    for (const line of stdout.trim().split('\n')) {
      const parsed = JSON.parse(line) as CaseResult | ContentResult;
      if (parsed.case === 'content') content = parsed as ContentResult;
      else results.set(parsed.case, parsed as CaseResult);
    }
  });

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const get = (name: string): CaseResult => {
    const r = results.get(name);
    if (!r) throw new Error(`harness printed no case ${name}`);
    return r;
  };

  it.each(['clean-random', 'clean-compressible', 'consistent-rollback'])('%s: zero false positives', (name) => {
    const r = get(name);
    expect(r.false_positives).toBe(0);
    expect(r.detected).toBe(0);
    expect(r.reasons).toEqual({});
  });

  it.each([
    ['every-bit-random', 'corrupt', 32768],
    ['every-bit-compressible', 'corrupt', 32768],
    ['lost-writes', 'stale', 11],
    ['partial-rollback', 'stale', 15],
    ['counter-rollback', 'future', 16],
    ['zero-page', 'zero', 1],
    ['misplaced', 'misplaced', 2],
    ['torn-page', 'corrupt', 2],
  ] as const)('%s: every injected fault is detected as %s', (name, reason, count) => {
    const r = get(name);
    expect(r.injected).toBe(count);
    expect(r.detected).toBe(r.injected);
    expect(r.wrong).toBe(0);
    expect(r.false_positives).toBe(0);
    expect(r.reasons).toEqual({ [reason]: count });
  });

  it('random pages are incompressible and fully rewritten; compressible pages barely change', () => {
    expect(content).toBeDefined();
    if (!content) return;
    expect(content.distinct_random).toBe(512);
    // header words 0 and 1 (magic/worker, index) stay; every other word changes
    expect(content.changed_random).toBe(510);
    // 4 header words + 8 generation words + 1 fill word
    expect(content.distinct_compressible).toBeLessThanOrEqual(13);
    // generation, header check and the 8 generation words
    expect(content.changed_compressible).toBeLessThanOrEqual(10);
  });
});
