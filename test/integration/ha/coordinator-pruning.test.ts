/**
 * The leader prunes history on its schedule (--prune-every-ms): a coordinator started with a short
 * period removes the samples of a run that finished before the retention cutoff.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, expect, it } from 'vitest';
import { resolveCoordinatorConfig } from '../../../services/coordinator/config.js';
import { Coordinator } from '../../../services/coordinator/coordinator.js';
import { MigrationState } from '../../../services/shared/gen/migd/v1/common.js';
import { createLogger } from '../../../services/shared/log.js';
import { runInput } from '../store/history-store.suite.js';

const quiet = createLogger('test', {}, () => undefined, 'error');
let c: Coordinator | undefined;
let dir: string | undefined;
afterEach(async () => {
  await c?.stop();
  c = undefined;
  if (dir) await rm(dir, { recursive: true, force: true });
});

it('a coordinator started with a short prune period prunes samples past their retention', async () => {
  dir = await mkdtemp(join(tmpdir(), 'migd-prune-'));
  const config = resolveCoordinatorConfig({ listen: '127.0.0.1:0', insecure: true, db: `sqlite:${join(dir, 'history.sqlite')}`, pruneEveryMs: '300' });
  c = await Coordinator.start(config, quiet);
  const old = Date.now() - 40 * 24 * 3600_000;
  const run = await c.store.createRun(runInput({ createdAt: new Date(old) }));
  for (let i = 0; i < 5; i++) c.store.appendProgress(run.id, { time: new Date(old + i), pass: i } as never);
  await c.store.finishRun(run.id, { state: MigrationState.MIGRATION_STATE_SUCCEEDED, at: new Date(old + 1000) });
  await c.store.flushSamples();
  expect((await c.store.getRunTimeline(run.id)).progress).toHaveLength(5);
  let left = 5;
  for (let i = 0; i < 30 && left > 0; i++) {
    await sleep(100);
    left = (await c.store.getRunTimeline(run.id)).progress.length;
  }
  expect(left).toBe(0);
  expect((await c.store.getRun(run.id)).id).toBe(run.id);
});
