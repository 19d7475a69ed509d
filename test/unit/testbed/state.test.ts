import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  claimSlot,
  claimState,
  isCreatorAlive,
  parseState,
  parseStatStartTime,
  processStartTime,
  readSlotOwners,
  readStates,
  releaseSlot,
  removeState,
  removeStateSync,
  statePath,
  writeState,
  type TestbedState,
} from '../../../services/testbed/state.js';
import { parseNetnsList } from '../../../services/testbed/testbed.js';

const state = (name: string, over: Partial<TestbedState> = {}): TestbedState => ({
  version: 1,
  name,
  prefix: 'migd-',
  id: name.slice(-6),
  pid: 1234,
  pidStart: '42',
  slot: null,
  namespaces: [`${name}-sw`, `${name}-a`],
  rootLinks: [`mgd${name.slice(-6)}`],
  createdAt: '2024-01-01T00:00:00.000Z',
  ...over,
});

describe('process identity', () => {
  it('reads the start time after the last parenthesis (comm may contain ") ")', () => {
    const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
    fields[19] = '987654';
    expect(parseStatStartTime(`77 (weird) name) S ${fields.slice(1).join(' ')}`)).toBe('987654');
    expect(parseStatStartTime('garbage')).toBeNull();
  });

  it('knows this process is alive and a start-time mismatch (pid reuse) is not', () => {
    const me = processStartTime(process.pid);
    expect(me).toMatch(/^\d+$/);
    expect(isCreatorAlive({ pid: process.pid, pidStart: me })).toBe(true);
    expect(isCreatorAlive({ pid: process.pid, pidStart: '1' })).toBe(false);
    expect(isCreatorAlive({ pid: 1234, pidStart: null }, () => null)).toBe(false);
    expect(isCreatorAlive({ pid: 1234, pidStart: null }, () => '5')).toBe(true);
  });
});

describe('state and slot files', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'migd-tb-state-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('claims a name once, updates and removes it', async () => {
    expect(await claimState(dir, state('migd-aaaaaa'))).toBe(true);
    expect(await claimState(dir, state('migd-aaaaaa', { pid: 9 }))).toBe(false);
    await writeState(dir, state('migd-aaaaaa', { slot: 4 }));
    expect(await readStates(dir)).toEqual([state('migd-aaaaaa', { slot: 4 })]);
    await removeState(dir, 'migd-aaaaaa');
    expect(await readStates(dir)).toEqual([]);
  });

  it('skips malformed or misnamed state files', async () => {
    await writeFile(join(dir, 'junk.json'), '{');
    await writeFile(join(dir, 'migd-bbbbbb.json'), JSON.stringify(state('migd-cccccc')));
    await writeFile(join(dir, 'migd-dddddd.json'), JSON.stringify({ ...state('migd-dddddd'), pid: 'x' }));
    expect(await readStates(dir)).toEqual([]);
    expect(parseState(JSON.stringify(state('migd-eeeeee')))).toEqual(state('migd-eeeeee'));
  });

  it('hands a slot to one claimant and releases it only for its owner', async () => {
    expect(await claimSlot(dir, 3, 'migd-aaaaaa')).toBe(true);
    expect(await claimSlot(dir, 3, 'migd-bbbbbb')).toBe(false);
    await releaseSlot(dir, 3, 'migd-bbbbbb');
    expect(await readSlotOwners(dir)).toEqual(new Map([[3, 'migd-aaaaaa']]));
    await releaseSlot(dir, 3, 'migd-aaaaaa');
    expect(await readSlotOwners(dir)).toEqual(new Map());
  });

  it('removes state and slot synchronously', async () => {
    await claimState(dir, state('migd-ffffff', { slot: 9 }));
    await claimSlot(dir, 9, 'migd-ffffff');
    removeStateSync(dir, 'migd-ffffff', 9);
    await expect(readFile(statePath(dir, 'migd-ffffff'))).rejects.toThrow();
    expect(await readSlotOwners(dir)).toEqual(new Map());
  });
});

describe('parseNetnsList', () => {
  it('takes the first word of each line', () => {
    expect(parseNetnsList('migd-abcdef-a (id: 3)\nmigd-abcdef-sw\n\n')).toEqual(['migd-abcdef-a', 'migd-abcdef-sw']);
  });
});
