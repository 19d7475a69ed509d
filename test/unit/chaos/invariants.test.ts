import { describe, expect, it } from 'vitest';
import { MigrationState as S, VmState } from '../../../services/shared/gen/migd/v1/common.js';
import { checkInvariants, type Observation, type RunObservation, type VmObservation } from '../../../stress/chaos/invariants.js';
import { parseQemuPs } from '../../../stress/chaos/observe.js';

const vm = (name: string, hosts: [string, boolean][], api: VmObservation['api'] = { nodeId: hosts[0]?.[0] ?? 'a', state: VmState.VM_STATE_RUNNING }, extra: Partial<VmObservation> = {}): VmObservation => ({
  name,
  processes: hosts.map(([host, running], i) => ({ pid: 100 + i, host, vm: name, running })),
  api,
  integrityErrors: 0,
  anomalies: [],
  pagesVerified: 10,
  ...extra,
});

const T = [S.MIGRATION_STATE_PREPARING, S.MIGRATION_STATE_PRECOPY, S.MIGRATION_STATE_SUCCEEDED];
const run = (extra: Partial<RunObservation> = {}): RunObservation => ({
  runId: 'r1',
  vm: 'g1',
  source: 'a',
  destination: 'b',
  state: S.MIGRATION_STATE_SUCCEEDED,
  pagesVerifiedAfter: 50,
  error: '',
  storeTransitions: T,
  events: { sequences: [1, 2, 3, 4], transitions: T, completed: S.MIGRATION_STATE_SUCCEEDED },
  ...extra,
});

const obs = (o: Partial<Observation>): Observation => ({ vms: [], runs: [], plans: [], leftovers: [], ...o });
const names = (o: Observation, killed: string[] = [], before = ['g1']) => checkInvariants(o, { runningBefore: before, qemuKilled: killed }).map((v) => `${v.invariant}: ${v.detail}`);

describe('chaos invariants', () => {
  it('accept a migration that ended as it should', () => {
    expect(names(obs({ vms: [vm('g1', [['b', true]])], runs: [run()], plans: [{ planId: 'p', final: true, state: 'SUCCEEDED' }] }))).toEqual([]);
  });

  it('see a guest running twice, a stale paused copy, and a guest with no running copy', () => {
    expect(names(obs({ vms: [vm('g1', [['a', true], ['b', true]])] }))[0]).toMatch(/^exactly-once: runs 2 times/);
    expect(names(obs({ vms: [vm('g1', [['a', true], ['b', false]])] }))[0]).toMatch(/^exactly-once: 2 QEMU processes/);
    expect(names(obs({ vms: [vm('g1', [['a', false]])] }))).toContain('exactly-once: its only QEMU (a pid 100) is not running (paused with no owner?)');
    expect(names(obs({ vms: [vm('g1', [['b', true]], { nodeId: 'a', state: VmState.VM_STATE_RUNNING })] }))[0]).toMatch(/coordinator places it on a/);
  });

  it('require a guest destroyed by a QEMU kill to be reported FAILED, and any other to run on', () => {
    expect(names(obs({ vms: [vm('g1', [], { nodeId: 'a', state: VmState.VM_STATE_FAILED })] }), ['g1'])).toEqual([]);
    expect(names(obs({ vms: [{ ...vm('g1', []), api: undefined }] }), ['g1'])[0]).toMatch(/^not-lost: .*not at all, not FAILED/);
    expect(names(obs({ vms: [vm('g1', [], { nodeId: 'a', state: VmState.VM_STATE_FAILED })] }))[0]).toMatch(/^not-lost: was running before/);
  });

  it('accept two paused copies of a guest QEMU lost in its switch to post-copy, never a running one', () => {
    const F = [S.MIGRATION_STATE_PREPARING, S.MIGRATION_STATE_PRECOPY, S.MIGRATION_STATE_POSTCOPY, S.MIGRATION_STATE_FAILED];
    const lost = (o: Observation) => checkInvariants(o, { runningBefore: ['g1'], qemuKilled: [], lostInQemu: ['g1'] }).map((v) => `${v.invariant}: ${v.detail}`);
    const failed = run({ state: S.MIGRATION_STATE_FAILED, error: 'POSTCOPY_SWITCH_FAILED: QEMU failed the switch to post-copy', storeTransitions: F, events: { sequences: [1, 2, 3, 4], transitions: F, completed: S.MIGRATION_STATE_FAILED } });
    expect(lost(obs({ vms: [vm('g1', [['a', false], ['b', false]])], runs: [failed] }))).toEqual([]);
    expect(lost(obs({ vms: [vm('g1', [['a', true], ['b', false]])], runs: [failed] }))[0]).toMatch(/^exactly-once: 2 QEMU processes/);
    expect(lost(obs({ vms: [vm('g1', [['a', true], ['b', true]])], runs: [failed] }))[0]).toMatch(/^exactly-once: runs 2 times/);
    // without that outcome the same two paused copies are a lost guest
    expect(names(obs({ vms: [vm('g1', [['a', false], ['b', false]])], runs: [failed] }))).toEqual(expect.arrayContaining([expect.stringMatching(/^exactly-once: 2 QEMU processes/), expect.stringMatching(/^not-lost:/)]));
  });

  it('count integrity errors and anomalies of the running copy', () => {
    expect(names(obs({ vms: [vm('g1', [['a', true]], undefined, { integrityErrors: 3 })] }))).toEqual(['integrity: 3 integrity errors']);
    expect(names(obs({ vms: [vm('g1', [['a', true]], undefined, { anomalies: ['restart: second start line'] })] }))[0]).toMatch(/restart/);
  });

  it('check runs: final, proven, placed as recorded, with a reason when they fail', () => {
    expect(names(obs({ vms: [vm('g1', [['b', true]])], runs: [run({ state: S.MIGRATION_STATE_PRECOPY })] }))).toEqual(['final-state: not final: MIGRATION_STATE_PRECOPY']);
    expect(names(obs({ vms: [vm('g1', [['b', true]])], runs: [run({ pagesVerifiedAfter: 0 })] }))).toEqual(['outcome: SUCCEEDED with 0 pages verified after arrival']);
    expect(names(obs({ vms: [vm('g1', [['a', true]])], runs: [run()] }))).toContain('outcome: SUCCEEDED but the guest runs on a');
    const failed = run({ state: S.MIGRATION_STATE_FAILED, error: '', storeTransitions: [S.MIGRATION_STATE_FAILED], events: { sequences: [1, 2], transitions: [S.MIGRATION_STATE_FAILED], completed: S.MIGRATION_STATE_FAILED } });
    expect(names(obs({ vms: [vm('g1', [['b', true]])], runs: [failed] }))).toEqual(['outcome: MIGRATION_STATE_FAILED (no reason) but the guest runs on the destination', 'outcome: MIGRATION_STATE_FAILED without a reason']);
    expect(names(obs({ plans: [{ planId: 'p', final: false, state: 'RUNNING' }] }), [], [])).toEqual(['final-state: still RUNNING']);
  });

  it('check the events replayed from JetStream against the store', () => {
    const base = { vms: [vm('g1', [['b', true]])] };
    expect(names(obs({ ...base, runs: [run({ events: { sequences: [1, 2, 4], transitions: T, completed: S.MIGRATION_STATE_SUCCEEDED } })] }))[0]).toMatch(/^events: run sequence not contiguous at position 3/);
    expect(names(obs({ ...base, runs: [run({ events: { sequences: [1, 2, 3], transitions: T.slice(1), completed: S.MIGRATION_STATE_SUCCEEDED } })] }))[0]).toMatch(/^events: state changes on NATS/);
    expect(names(obs({ ...base, runs: [run({ events: { sequences: [1, 2, 3], transitions: T, completed: undefined } })] }))[0]).toMatch(/RunCompleted on NATS says nothing/);
    expect(names(obs({ ...base, runs: [run({ events: undefined })] }))[0]).toMatch(/no events/);
  });

  it('report leftovers', () => {
    expect(names(obs({ leftovers: ['host a: qmp.sock of g9, which no QEMU on a serves'] }), [], [])).toEqual(['leftovers: host a: qmp.sock of g9, which no QEMU on a serves']);
  });

  it('find the cluster QEMUs in ps output by their state folder', () => {
    const out = [
      ' 101 Sl   /usr/bin/qemu-system-x86_64 -name g1 -uuid x -pidfile /tmp/migd-chaos-X/c/a/vms/g1/qemu.pid -msg timestamp=on',
      ' 102 Sl   /usr/bin/qemu-system-x86_64 -name g1 -uuid x -pidfile /tmp/migd-chaos-X/c/b/vms/g1/qemu.pid -incoming defer',
      ' 103 Tl   /usr/bin/qemu-system-x86_64 -name g2 -pidfile /tmp/migd-chaos-X/c/b/vms/g2/qemu.pid',
      ' 104 Sl   /usr/bin/qemu-system-x86_64 -name g1 -pidfile /tmp/someone-else/a/vms/g1/qemu.pid',
      ' 105 S    node dist/services/node/main.js --state-dir /tmp/migd-chaos-X/c/a',
    ].join('\n');
    expect(parseQemuPs(out, '/tmp/migd-chaos-X/c')).toEqual([
      { pid: 101, host: 'a', vm: 'g1', stat: 'Sl', incoming: false },
      { pid: 102, host: 'b', vm: 'g1', stat: 'Sl', incoming: true },
      { pid: 103, host: 'b', vm: 'g2', stat: 'Tl', incoming: false },
    ]);
  });
});
