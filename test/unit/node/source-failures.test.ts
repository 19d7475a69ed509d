/**
 * SourceMigration's failure paths over a fake QMP transport and a scripted destination node
 * (test/helpers/migration-fakes.ts): post-copy recovery (retried until the stream flows again,
 * giving up at its deadline, stopped at once by a daemon shutdown), a guest that is not alive on
 * the destination after completion, and a destination lost during pre-copy or post-copy. The slow
 * QEMU tests show the same paths once each; these show every branch in milliseconds.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { FailedPreconditionError, NotFoundError, UnavailableError } from '../../../services/shared/errors.js';
import { MigrationPolicy, MigrationState as S } from '../../../services/shared/gen/migd/v1/common.js';
import { ConfirmIncomingResponse, type StateChange } from '../../../services/shared/gen/migd/v1/node.js';
import { createLogger } from '../../../services/shared/log.js';
import { resolveMigrationConfig } from '../../../services/shared/policy/index.js';
import { SourceMigration, type SourceOptions } from '../../../services/node/migration/source.js';
import type { MigrationEndpoint } from '../../../services/shared/gen/migd/v1/node.js';
import { FakeQemu, FakeQmpError, NO_REPLY, fakeHost, fakePeer, fakeVm, tempRecords, type Cleanups, type FakeHost, type FakePeer, type PeerScript } from '../../helpers/migration-fakes.js';
import { until } from '../../helpers/until.js';

const quiet = createLogger('source-failures-test', {}, () => undefined, 'error');
const cleanups: Cleanups = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const SUPPORTED = new Set(['events', 'postcopy-ram', 'postcopy-preempt', 'return-path', 'auto-converge']);

interface Started {
  q: FakeQemu;
  m: SourceMigration;
  peer: FakePeer;
  host: FakeHost;
  /** Every state change the migration published, in order. */
  changes: StateChange[];
  /** The calls to abort QEMU's connections (`ss -K` in production): the pid and the peers. */
  aborted: { pid: number; peers: readonly string[] }[];
}

/** A source migration started against a scripted destination, its QEMU streaming. */
async function started(script: PeerScript, o: { postcopy?: boolean; tls?: boolean; options?: SourceOptions; destination?: MigrationEndpoint; onAbort?: () => void } = {}): Promise<Started> {
  const q = new FakeQemu({ running: true, migration: 'none', logger: quiet, cleanups });
  await q.connect();
  const host = fakeHost();
  const peer = fakePeer(script);
  const aborted: Started['aborted'] = [];
  const policy = MigrationPolicy.fromPartial({ ...(o.postcopy ? { postcopy: { enabled: true, onDemandOnly: true } } : {}), tls: o.tls ?? false });
  const m = new SourceMigration({
    runId: 'run-1',
    nodeId: 'a',
    vm: fakeVm(q),
    host,
    peer,
    destination: o.destination ?? { nodeId: 'b', managementAddress: 'b:1', migrationAddress: '127.0.0.1' },
    policy,
    config: resolveMigrationConfig(policy, SUPPORTED),
    supportedCapabilities: SUPPORTED,
    log: quiet,
    // No stall detection (the fake moves no bytes) and quick calls to the destination.
    // Never the real `ss -K`: the fake VM's pid is not a QEMU of this test.
    options: { postcopyStallMs: 600_000, progressIntervalMs: 50, peerDeadlineMs: 300, handoverTimeoutMs: 600, destroySockets: async (pid, peers) => (aborted.push({ pid, peers }), o.onAbort?.(), 0), ...o.options },
    records: tempRecords(cleanups),
  });
  cleanups.push(() => m.detach());
  const changes: StateChange[] = [];
  void (async () => {
    for await (const u of m.watch()) if (u.update?.$case === 'stateChange' && u.update.value.reason !== 'current state') changes.push(u.update.value);
  })();
  await m.start();
  q.emit('active');
  return { q, m, peer, host, changes, aborted };
}

async function inPostcopy(s: Started): Promise<void> {
  await s.m.startPostcopy('test', 'switch over');
  s.q.emit('postcopy-active');
  await until(() => s.m.currentState === S.MIGRATION_STATE_POSTCOPY, 'POSTCOPY');
}

/**
 * Scripts QEMU's answer to each `migrate` resume: the stream takes (postcopy-active) when
 * `takes(uri)`, else falls back to postcopy-paused. Returns the URIs resumed to, in order.
 */
function scriptResumes(s: Started, takes: (uri: string) => boolean): string[] {
  const uris: string[] = [];
  s.q.onCommand = (name, args) => {
    if (name === 'migrate' && args?.['resume'] === true) {
      const uri = String(args['uri']);
      uris.push(uri);
      s.q.migration = takes(uri) ? 'postcopy-active' : 'postcopy-paused';
    }
    return undefined;
  };
  return uris;
}

/** A destination whose management and migration networks differ (the fallback tests). */
const TWO_NETWORKS = { nodeId: 'b', managementAddress: '10.77.0.2:7001', migrationAddress: '10.78.0.2' };

const confirmed = (pages: number): ConfirmIncomingResponse => ConfirmIncomingResponse.fromPartial({ alive: pages > 0, pid: 7, pagesVerifiedAfter: pages });

describe('a cancel in switch-over on a dead link', () => {
  it('yanks the channels out of band when QEMU answers nothing in band, and ends CANCELLED with the guest running on the source', async () => {
    const s = await started({}, { options: { cancelStuckMs: 200 } });
    s.q.emit('device');
    // The migration thread holds QEMU's main lock (device state, multifd sync on a dead link):
    // no in-band command is answered until the channels are shut down.
    let held = true;
    s.q.onCommand = (name) => {
      if (name === 'yank') {
        held = false;
        s.q.running = true; // QEMU resumes the source when the migration ends before completing
        setTimeout(() => s.q.emit('cancelled'), 10);
        return undefined;
      }
      return held && name !== 'migrate-pause' ? NO_REPLY : undefined;
    };
    const t0 = Date.now();
    await s.m.cancel('test', 'progress timeout');
    const info = await s.m.finished();
    expect(info.state).toBe(S.MIGRATION_STATE_CANCELLED);
    expect(Date.now() - t0).toBeLessThan(5000);
    const yank = s.q.sent.find((c) => (c.execute ?? c['exec-oob']) === 'yank');
    expect(yank?.['exec-oob']).toBe('yank');
    expect(yank?.arguments).toEqual({ instances: [{ type: 'migration' }] });
    expect(s.host.destroyed).toEqual([]);
    expect(s.peer.calls).toContain('abort');
  });
});

describe('a switch to post-copy on a dead link', () => {
  /**
   * QEMU set postcopy-active and holds its main lock while it writes the device-state package into
   * a stream that carries nothing: no in-band command is answered until the stream is shut down
   * out of band; then it fails the switch and resumes the guest on the source by itself.
   */
  function holdUntilPause(s: Started): void {
    let held = true;
    s.q.onCommand = (name) => {
      if (name === 'migrate-pause') {
        held = false;
        s.q.running = true;
        setTimeout(() => s.q.emit('failed'), 10);
        return undefined;
      }
      if (held && name === 'migrate-start-postcopy') {
        s.q.running = false;
        setTimeout(() => s.q.emit('postcopy-active'), 10);
        return undefined;
      }
      if (!held && name === 'query-migrate' && s.q.migration === 'failed') return { status: 'failed', 'error-desc': 'postcopy_start: Migration stream errored (pre package)' };
      return held && name !== 'migrate-start-postcopy' ? NO_REPLY : undefined;
    };
  }

  it('shuts the stream down out of band, and ends FAILED with the guest running on the source and the destination copy removed', async () => {
    const s = await started({}, { postcopy: true, options: { postcopySwitchStuckMs: 600 } });
    holdUntilPause(s);
    const t0 = Date.now();
    await s.m.startPostcopy('test', 'after one pass');
    const info = await s.m.finished();
    expect(info.state).toBe(S.MIGRATION_STATE_FAILED);
    expect(info.error?.message).toMatch(/QEMU failed the switch to post-copy before the destination could run the guest, and resumed it on the source: the guest keeps running on the source/);
    expect(Date.now() - t0).toBeLessThan(5000);
    const pause = s.q.sent.find((c) => (c.execute ?? c['exec-oob']) === 'migrate-pause');
    expect(pause?.['exec-oob']).toBe('migrate-pause');
    // migrate-pause was enough: QEMU's connections are left to it.
    expect(s.aborted).toEqual([]);
    expect(s.peer.calls).toContain('abort');
    expect(s.host.destroyed).toEqual([]);
    expect(s.q.running).toBe(true);
    expect(s.q.commands).not.toContain('stop');
  });

  it('aborts the connections when the switch is held where yank does not reach (the preempt channel TLS handshake), and ends FAILED with the guest running on the source', async () => {
    // QEMU 10.0.2, post-copy preempt over TLS: the switch connects the preempt channel and runs its
    // handshake in the main loop on a blocking socket; the link dies before the destination
    // answers. The main loop (monitor, vCPUs) is held in a read; migrate-pause is refused (not yet
    // in post-copy) and yank does not know the channel. Only aborting the socket ends the read:
    // the handshake fails, the switch fails before the guest stopped, and QEMU resumes it.
    let held = false;
    const s = await started({}, {
      postcopy: true,
      tls: true,
      options: { postcopySwitchStuckMs: 600 },
      onAbort: () => {
        held = false;
        s.q.running = true;
        setTimeout(() => s.q.emit('failed'), 10);
      },
    });
    s.q.onCommand = (name) => {
      if (name === 'migrate-start-postcopy') {
        held = true;
        s.q.running = false; // the vCPUs wait for the main lock
        return undefined;
      }
      if (held && name === 'migrate-pause') return new FakeQmpError('migrate-pause is currently only supported during postcopy-active or postcopy-recover state');
      if (held && name === 'yank') return {};
      if (held && name === 'query-migrate') return NO_REPLY;
      return undefined;
    };
    const t0 = Date.now();
    await s.m.startPostcopy('policy', 'post-copy after 1 pass(es)');
    const info = await s.m.finished();
    expect(info.state).toBe(S.MIGRATION_STATE_FAILED);
    expect(info.error?.message).toMatch(/QEMU failed the switch to post-copy before the destination could run the guest, and resumed it on the source/);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(s.q.commands).toContain('yank');
    // QEMU's own connections to the destination's migration address, nothing else.
    expect(s.aborted).toEqual([{ pid: 4242, peers: ['127.0.0.1'] }]);
    expect(s.peer.calls).toContain('abort');
    expect(s.host.destroyed).toEqual([]);
    expect(s.q.running).toBe(true);
  });

  it('pauses the source copy when the destination says the guest runs there (never two running copies)', async () => {
    const s = await started({ abort: () => new FailedPreconditionError('the guest runs here', { reason: 'GUEST_RUNS_HERE' }) }, { postcopy: true, options: { postcopySwitchStuckMs: 600 } });
    holdUntilPause(s);
    await s.m.startPostcopy('test', 'after one pass');
    const info = await s.m.finished();
    expect(info.state).toBe(S.MIGRATION_STATE_FAILED);
    expect(info.error).toMatchObject({ reason: 'POSTCOPY_SWITCH_FAILED' });
    expect(info.error?.message).toMatch(/after the destination had started the guest: the guest is lost in QEMU .*the source copy was paused/);
    expect(s.q.running).toBe(false);
    expect(s.host.destroyed).toEqual([]);
  });

  /**
   * QEMU on the source failing the switch to post-copy: the switch hangs (the monitor answers
   * nothing but migrate-start-postcopy) until the source's migrate-pause; then `failed`, and QEMU's
   * own resume of the guest 400 ms later, with query-status saying finish-migrate meanwhile. A
   * `stop` sent before that resume is undone by it (QEMU's stop leaves a finish-migrate runstate as
   * it is). Returns whether QEMU has resumed the guest yet.
   */
  function failSwitchThenResume(s: Started, errorDesc: string): () => boolean {
    let held = true;
    let resumedByQemu = false;
    s.q.onCommand = (name) => {
      if (name === 'migrate-pause') {
        held = false;
        setTimeout(() => s.q.emit('failed'), 10);
        setTimeout(() => {
          resumedByQemu = true;
          s.q.running = true;
        }, 400);
        return undefined;
      }
      if (held && name === 'migrate-start-postcopy') {
        s.q.running = false;
        setTimeout(() => s.q.emit('postcopy-active'), 10);
        return undefined;
      }
      if (!held && !resumedByQemu && name === 'query-status') return { running: false, status: 'finish-migrate' };
      if (!held && name === 'query-migrate' && s.q.migration === 'failed') return { status: 'failed', 'error-desc': errorDesc };
      return held && name !== 'migrate-start-postcopy' ? NO_REPLY : undefined;
    };
    return () => resumedByQemu;
  }

  /**
   * The chaos campaign's seed 7701568, step 4 (CI, 5 Dec): QEMU emits `failed` from its switch
   * (postcopy_start) while the guest is still stopped here, and resumes it itself only once its
   * migration thread has finished with the failure (migration_iteration_finish: block devices
   * re-activated, then vm_start). A status read in between says finish-migrate. Taking that read
   * for "the guest does not run here" left the destination unasked — its copy, which had the
   * whole device-state package, ran the guest's claim — and the source unpaused: QEMU then ran the
   * guest on the source as well.
   */
  it('waits for QEMU to resume the source after a failed switch, then asks the destination, and pauses the source when the guest runs there', async () => {
    const s = await started({ abort: () => new FailedPreconditionError('the guest runs here', { reason: 'GUEST_RUNS_HERE' }) }, { postcopy: true, options: { postcopySwitchStuckMs: 600 } });
    const resumedByQemu = failSwitchThenResume(s, 'postcopy_start: Migration stream error');
    await s.m.startPostcopy('test', 'after one pass');
    const info = await s.m.finished();
    expect(info.state).toBe(S.MIGRATION_STATE_FAILED);
    expect(s.peer.calls).toContain('abort');
    expect(info.error).toMatchObject({ reason: 'POSTCOPY_SWITCH_FAILED' });
    expect(info.error?.message).not.toMatch(/post-copy had started/);
    // Never two running copies: the source's pause came after QEMU's own resume, and holds.
    await new Promise((r) => setTimeout(r, 500));
    expect(resumedByQemu()).toBe(true);
    expect(s.q.running).toBe(false);
    expect(s.host.destroyed).toEqual([]);
  });

  it('after a failed switch, removes the destination copy once QEMU resumed the source, and leaves the guest running there', async () => {
    const s = await started({}, { postcopy: true, options: { postcopySwitchStuckMs: 600 } });
    failSwitchThenResume(s, 'postcopy_start: Migration stream errored (pre package)');
    await s.m.startPostcopy('test', 'after one pass');
    const info = await s.m.finished();
    expect(info.state).toBe(S.MIGRATION_STATE_FAILED);
    expect(info.error?.message).toMatch(/QEMU failed the switch to post-copy before the destination could run the guest, and resumed it on the source: the guest keeps running on the source/);
    expect(s.peer.calls).toContain('abort');
    expect(s.q.running).toBe(true);
    expect(s.q.commands).not.toContain('stop');
  });

  it('does nothing while the monitor answers: a slow switch is not a dead one', async () => {
    const s = await started({ confirm: () => confirmed(100) }, { postcopy: true, options: { postcopySwitchStuckMs: 600 } });
    await inPostcopy(s);
    await new Promise((r) => setTimeout(r, 1500));
    expect(s.q.commands).not.toContain('migrate-pause');
    expect(s.m.currentState).toBe(S.MIGRATION_STATE_POSTCOPY);
  });
});

describe('a switch to post-copy that never begins: QEMU blocked in pre-copy on a dead link', () => {
  /**
   * migrate-start-postcopy only sets a flag that QEMU's migration thread reads between two writes;
   * blocked in a write of pre-copy pages into a stream that carries nothing (the link cut without
   * a reset), it never reads it. The monitor answers, QEMU reports `active` and sends nothing;
   * the guest runs here, and the destination has no device state. A yank of the channels fails the
   * write, and QEMU fails the migration with the guest still running.
   */
  function blockedUntilYank(s: Started): void {
    s.q.onCommand = (name) => {
      if (name === 'yank') {
        setTimeout(() => s.q.emit('failed'), 10);
        return undefined;
      }
      // QEMU refuses migrate-pause outside post-copy; the fake would accept it.
      if (name === 'migrate-pause') return NO_REPLY;
      return undefined;
    };
  }

  /** The run's end, or 'stuck' after `ms` (the bug left it in pre-copy until TCP gave up, ~15 min). */
  const endOrStuck = (m: SourceMigration, ms: number): Promise<Awaited<ReturnType<SourceMigration['finished']>> | 'stuck'> =>
    Promise.race([m.finished(), new Promise<'stuck'>((r) => setTimeout(() => r('stuck'), ms))]);

  it('shuts the stream down once nothing was sent for postcopySwitchStuckMs, and ends FAILED with the guest running on the source and the destination copy removed (a cancel is refused meanwhile)', async () => {
    const s = await started({}, { postcopy: true, options: { postcopySwitchStuckMs: 600 } });
    blockedUntilYank(s);
    const t0 = Date.now();
    await s.m.startPostcopy('policy', 'post-copy after 1 pass(es)');
    // The coordinator's progress timeout cannot end it: once post-copy was asked for, a cancel is refused.
    await expect(s.m.cancel('policy:fixed', 'progress timeout')).rejects.toMatchObject({ reason: 'POSTCOPY_NOT_CANCELLABLE' });
    const info = await endOrStuck(s.m, 4000);
    expect(info).not.toBe('stuck');
    if (info === 'stuck') return;
    expect(info.state).toBe(S.MIGRATION_STATE_FAILED);
    expect(info.error?.message).toMatch(/QEMU failed the switch to post-copy before the destination could run the guest, and resumed it on the source: the guest keeps running on the source/);
    expect(Date.now() - t0).toBeLessThan(4000);
    expect(s.q.commands).toContain('yank');
    expect(s.aborted).toEqual([{ pid: 4242, peers: ['127.0.0.1'] }]);
    expect(s.peer.calls).toContain('abort');
    expect(s.host.destroyed).toEqual([]);
    expect(s.q.running).toBe(true);
    expect(s.q.commands).not.toContain('stop');
  });

  it('leaves the switch alone while pre-copy still sends: a slow stream is not a dead one', async () => {
    const s = await started({}, { postcopy: true, options: { postcopySwitchStuckMs: 600 } });
    let transferred = 0;
    s.q.onCommand = (name) => (name === 'query-migrate' ? { status: s.q.migration, ram: { transferred: (transferred += 4096) } } : undefined);
    await s.m.startPostcopy('policy', 'post-copy after 1 pass(es)');
    expect(await endOrStuck(s.m, 1500)).toBe('stuck');
    expect(s.q.commands).not.toContain('yank');
    expect(s.aborted).toEqual([]);
    expect(s.m.currentState).toBe(S.MIGRATION_STATE_PRECOPY);
  });
});

describe('post-copy recovery', () => {
  it('retries until the stream flows again, then completes, counting one recovery', async () => {
    const s = await started({ confirm: () => confirmed(100) }, { postcopy: true });
    await inPostcopy(s);
    // The first resume falls back to paused (link still down), the second takes.
    const uris: string[] = scriptResumes(s, () => uris.length > 1);
    s.q.emit('postcopy-paused');
    await until(() => uris.length === 2 && s.m.currentState === S.MIGRATION_STATE_POSTCOPY, 'the second resume to take');
    expect(s.peer.calls.filter((c) => c === 'pause' || c === 'recover')).toEqual(['pause', 'recover', 'pause', 'recover']);
    expect(s.q.argsOf('migrate').at(-1)).toEqual({ uri: 'tcp:127.0.0.1:2', resume: true });
    const reasons = s.changes.map((c) => `${S[c.to]}: ${c.reason}`);
    expect(reasons.slice(reasons.indexOf('MIGRATION_STATE_POSTCOPY: QEMU status postcopy-active') + 1)).toEqual([
      'MIGRATION_STATE_POSTCOPY_PAUSED: QEMU status postcopy-paused',
      'MIGRATION_STATE_POSTCOPY_RECOVERING: attempt 1: resuming over the migration network',
      'MIGRATION_STATE_POSTCOPY_PAUSED: recovery attempt 1 failed (the stream did not resume (QEMU status postcopy-paused)); retrying in 500 ms',
      'MIGRATION_STATE_POSTCOPY_RECOVERING: attempt 2: resuming over the migration network',
      'MIGRATION_STATE_POSTCOPY: recovered after 2 attempt(s), over the migration network',
    ]);
    s.q.emit('completed');
    const info = await s.m.finished();
    expect(info.state).toBe(S.MIGRATION_STATE_SUCCEEDED);
    expect(info.stats?.recoveries).toBe(1);
    expect(s.host.destroyed).toEqual(['vm1']);
  });

  it('resumes over the management network while the migration address does not answer (TLS stream), and completes', async () => {
    const probes: string[] = [];
    // The migration network is down for good; the management network answers.
    const answers = async (host: string, port: number): Promise<boolean> => {
      probes.push(`${host}:${port}`);
      return host !== '10.78.0.2';
    };
    const s = await started({ confirm: () => confirmed(100) }, { postcopy: true, tls: true, destination: TWO_NETWORKS, options: { answers } });
    await inPostcopy(s);
    const uris = scriptResumes(s, (uri) => uri.startsWith('tcp:10.77.0.2:'));
    s.q.emit('postcopy-paused');
    await until(() => s.m.currentState === S.MIGRATION_STATE_POSTCOPY && uris.length === 1, 'the resume over the management network');
    // QEMU is never sent to the dead address (its connect would hang in postcopy-recover-setup).
    expect(uris).toEqual(['tcp:10.77.0.2:2']);
    expect(probes).toEqual(['10.78.0.2:7001']);
    expect(s.peer.recovers.map((r) => r.managementNetwork)).toEqual([true]);
    expect(s.changes.at(-1)?.reason).toBe('recovered after 1 attempt(s), over the management network');
    s.q.emit('completed');
    const info = await s.m.finished();
    expect(info.state).toBe(S.MIGRATION_STATE_SUCCEEDED);
    expect(info.stats?.recoveries).toBe(1);
  });

  it('stays on the migration network when its address answers, also with a management network to fall back to', async () => {
    const s = await started({ confirm: () => confirmed(100) }, { postcopy: true, tls: true, destination: TWO_NETWORKS, options: { answers: async () => true } });
    await inPostcopy(s);
    const uris = scriptResumes(s, () => true);
    s.q.emit('postcopy-paused');
    await until(() => s.m.currentState === S.MIGRATION_STATE_POSTCOPY && uris.length === 1, 'the resume');
    expect(uris).toEqual(['tcp:10.78.0.2:2']);
    expect(s.peer.recovers.map((r) => r.managementNetwork)).toEqual([false]);
  });

  it('never sends a clear-text stream over the management network: without TLS it keeps to the migration network', async () => {
    const s = await started({}, { postcopy: true, tls: false, destination: TWO_NETWORKS, options: { recoveryTimeoutMs: 4000, answers: async (host) => host !== '10.78.0.2' } });
    await inPostcopy(s);
    const uris = scriptResumes(s, () => false);
    s.q.emit('postcopy-paused');
    const info = await s.m.finished();
    expect(uris.length).toBeGreaterThanOrEqual(3);
    expect(new Set(uris)).toEqual(new Set(['tcp:10.78.0.2:2']));
    expect(s.peer.recovers.every((r) => !r.managementNetwork)).toBe(true);
    expect(info.error).toMatchObject({ reason: 'RECOVERY_FAILED' });
    expect(s.q.commands).not.toContain('cont');
  }, 20_000);

  it('gives up at its deadline and fails the run, never resuming the source after post-copy', async () => {
    const s = await started({ pause: () => new UnavailableError('destination unreachable') }, { postcopy: true, options: { recoveryTimeoutMs: 1200 } });
    await inPostcopy(s);
    const t0 = Date.now();
    s.q.emit('postcopy-paused');
    const info = await s.m.finished();
    expect(Date.now() - t0).toBeLessThan(4000);
    expect(info.state).toBe(S.MIGRATION_STATE_FAILED);
    expect(info.error).toMatchObject({ code: 'ABORTED', reason: 'RECOVERY_FAILED' });
    expect(info.error?.message).toMatch(/post-copy recovery failed: .*post-copy had started/);
    expect(s.peer.calls.filter((c) => c === 'pause').length).toBeGreaterThanOrEqual(2);
    expect(s.q.commands).not.toContain('cont');
    expect(s.host.destroyed).toEqual([]);
  });

  it("pauses the source's stream only once the destination is paused: a destination not in post-copy yet (its switch still on the cut link) refuses, and the stream stays open", async () => {
    const notYet = () => new FailedPreconditionError('post-copy has not started on this node (QEMU status active); not paused', { reason: 'NOT_IN_POSTCOPY' });
    // The stall detector sees no bytes moving (the fake moves none) and starts the recovery.
    const s = await started({ confirm: () => confirmed(100), pause: (n) => (n <= 2 ? notYet() : undefined) }, { postcopy: true, options: { postcopyStallMs: 300 } });
    await inPostcopy(s);
    const uris = scriptResumes(s, () => true);
    const resume = s.q.onCommand!;
    s.q.onCommand = (name, args) => {
      if (name === 'migrate-pause') {
        s.peer.calls.push('source:migrate-pause');
        s.q.migration = 'postcopy-paused';
      }
      return resume(name, args);
    };
    await until(() => s.m.currentState === S.MIGRATION_STATE_POSTCOPY && uris.length === 1, 'the resume', 10_000);
    expect(s.peer.calls.filter((c) => c !== 'prepare')).toEqual(['pause', 'pause', 'pause', 'source:migrate-pause', 'recover']);
    const pause = s.q.sent.find((c) => (c.execute ?? c['exec-oob']) === 'migrate-pause');
    expect(pause?.['exec-oob']).toBe('migrate-pause');
    expect(s.changes.at(-1)?.reason).toBe('recovered after 3 attempt(s), over the migration network');
    s.q.emit('completed');
    expect((await s.m.finished()).state).toBe(S.MIGRATION_STATE_SUCCEEDED);
  }, 20_000);

  it('keeps its stream open past the pause grace while the destination node has no QMP session with its QEMU (a restarted daemon, the QEMU held by a page wait), and pauses it past the grace otherwise', async () => {
    const sourcePauses = (s: Started): number => s.q.sent.filter((c) => (c.execute ?? c['exec-oob']) === 'migrate-pause').length;
    // The stall detector sees no bytes moving (the fake moves none) and starts the recovery, QEMU
    // still postcopy-active here: a pause of the source's stream is the grace's to decide.
    const options = { postcopyStallMs: 300, recoverySourcePauseGraceMs: 300 };
    const unreachable = () => new UnavailableError('this node has no QMP session with its incoming QEMU; its stream is left open', { reason: 'INCOMING_QMP_UNREACHABLE' });
    const held = await started({ pause: unreachable }, { postcopy: true, options });
    await inPostcopy(held);
    await until(() => held.peer.calls.filter((c) => c === 'pause').length >= 3, 'three attempts past the grace', 10_000);
    expect(held.m.currentState).toBe(S.MIGRATION_STATE_POSTCOPY_PAUSED);
    // Past the grace, and no migrate-pause on the source: the open stream is the destination's
    // one way out (TCP carries on when the link returns).
    expect(sourcePauses(held)).toBe(0);
    expect(held.q.migration).toBe('postcopy-active');
    expect(held.peer.calls).not.toContain('recover');
    held.m.detach();

    const notYet = () => new FailedPreconditionError('post-copy has not started on this node (QEMU status active); not paused', { reason: 'NOT_IN_POSTCOPY' });
    const other = await started({ pause: notYet }, { postcopy: true, options });
    await inPostcopy(other);
    await until(() => sourcePauses(other) >= 1, 'the source paused past the grace', 10_000);
    other.m.detach();
  }, 30_000);

  it("ends at once when the destination's incoming QEMU is gone (QEMU exits when its stream breaks before post-copy runs there), never resuming the source", async () => {
    const gone = () => new FailedPreconditionError('the incoming QEMU on this node is gone; the stream cannot be resumed', { reason: 'INCOMING_QEMU_GONE' });
    const s = await started({ pause: gone, recover: gone }, { postcopy: true });
    await inPostcopy(s);
    const t0 = Date.now();
    s.q.emit('postcopy-paused');
    const info = await s.m.finished();
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(info.state).toBe(S.MIGRATION_STATE_FAILED);
    expect(info.error).toMatchObject({ code: 'ABORTED', reason: 'RECOVERY_FAILED' });
    expect(info.error?.message).toMatch(/post-copy recovery failed: the incoming QEMU on this node is gone/);
    expect(s.peer.calls.filter((c) => c === 'pause')).toEqual(['pause']);
    expect(s.q.commands).not.toContain('cont');
    expect(s.q.argsOf('migrate').filter((a) => a?.['resume'] === true)).toEqual([]);
    expect(s.host.destroyed).toEqual([]);
  });

  it('stops waiting at once when the daemon shuts down, without failing the run', async () => {
    const s = await started({ pause: () => new UnavailableError('destination unreachable') }, { postcopy: true });
    await inPostcopy(s);
    s.q.emit('postcopy-paused');
    await until(() => s.peer.calls.filter((c) => c === 'pause').length >= 2, 'two failed attempts');
    const pauses = s.peer.calls.length;
    s.m.detach();
    await new Promise((r) => setTimeout(r, 1500));
    // No attempt after the shutdown, and the run is not declared failed by this node.
    expect(s.peer.calls.length).toBe(pauses);
    expect(s.m.currentState).toBe(S.MIGRATION_STATE_POSTCOPY_PAUSED);
  });
});

describe('after QEMU completed', () => {
  it('resumes the source when the destination did not take the guest over and proved its copy gone', async () => {
    const s = await started({ confirm: () => new FailedPreconditionError('incoming QEMU died', { reason: 'NOT_HANDED_OVER' }) });
    s.q.running = false;
    s.q.emit('completed');
    const info = await s.m.finished();
    expect(info.state).toBe(S.MIGRATION_STATE_FAILED);
    expect(info.error).toMatchObject({ code: 'FAILED_PRECONDITION', reason: 'GUEST_NOT_ALIVE_ON_DESTINATION' });
    expect(s.peer.calls).toEqual(['prepare', 'confirm', 'abort']);
    expect(s.q.commands.at(-1)).toBe('cont');
    expect(s.host.destroyed).toEqual([]);
    expect(s.host.migrating.get('vm1')).toBeUndefined();
  });

  it('fails as not verified when the guest runs on the destination but never showed its memory intact', async () => {
    const s = await started({ confirm: () => confirmed(0) });
    s.q.emit('completed');
    const info = await s.m.finished();
    expect(info.state).toBe(S.MIGRATION_STATE_FAILED);
    expect(info.error).toMatchObject({ code: 'DEADLINE_EXCEEDED', reason: 'GUEST_NOT_VERIFIED' });
    // Handed over all the same: the destination owns the guest, the source copy goes.
    expect(s.host.destroyed).toEqual(['vm1']);
    expect(s.q.commands).not.toContain('cont');
  });
});

describe('a lost destination', () => {
  it('during pre-copy: the guest keeps running on the source, the destination copy left to it', async () => {
    const s = await started({ abort: () => new UnavailableError('destination gone') });
    s.q.emit('failed');
    const info = await s.m.finished();
    expect(info.state).toBe(S.MIGRATION_STATE_FAILED);
    expect(info.error).toMatchObject({ code: 'ABORTED', reason: 'QEMU_MIGRATION_FAILED' });
    expect(info.error?.message).toMatch(/the guest keeps running on the source \(the destination copy, paused, is left to the destination to remove\)/);
    expect(s.peer.calls.filter((c) => c === 'abort').length).toBeGreaterThanOrEqual(1);
    expect(s.host.destroyed).toEqual([]);
    expect(s.host.migrating.get('vm1')).toBeUndefined();
  });

  it('during post-copy: the guest is reported lost, and the source never resumes it', async () => {
    const s = await started({ confirm: () => new NotFoundError('no incoming migration run-1') }, { postcopy: true });
    await inPostcopy(s);
    s.q.running = false;
    s.q.emit('completed');
    const info = await s.m.finished();
    expect(info.state).toBe(S.MIGRATION_STATE_FAILED);
    expect(info.error).toMatchObject({ code: 'DATA_LOSS', reason: 'GUEST_LOST' });
    expect(s.q.commands).not.toContain('cont');
  });
});
