/**
 * The election loop's logic against a fake lock (the ElectionBackend seam) and a fake clock: who
 * becomes leader with which fencing token, stepping down when the lock cannot be proven, never
 * keeping a lock that a hung call may have taken, and naming the leader in refusals.
 */
import { describe, expect, it } from 'vitest';
import { NotLeaderError } from '../../../services/shared/errors.js';
import { createLogger } from '../../../services/shared/log.js';
import { Leadership, type ElectionBackend, type LeaderRecord, type LeadershipState, type Sleep } from '../../../services/coordinator/leadership/leadership.js';

const log = createLogger('test', {}, () => undefined, 'error');

/** One lock and term row shared by several fake sessions, like a database. */
class FakeLockServer {
  holder: FakeSession | undefined;
  record: LeaderRecord | undefined;
}

class FakeSession implements ElectionBackend {
  /** When set, calls never answer (a hung link). */
  hang = false;
  /** When set, calls fail (the database is unreachable). */
  down = false;
  releases = 0;
  constructor(private readonly server: FakeLockServer) {}
  private gate(): Promise<void> {
    if (this.hang) return new Promise(() => undefined);
    if (this.down) return Promise.reject(new Error('connection refused'));
    return Promise.resolve();
  }
  async tryAcquire(me: string): Promise<LeaderRecord | undefined> {
    await this.gate();
    if (this.server.holder && this.server.holder !== this) return undefined;
    this.server.holder = this;
    this.server.record = { term: (this.server.record?.term ?? 0) + 1, leader: me };
    return this.server.record;
  }
  async confirm(): Promise<void> {
    await this.gate();
    if (this.server.holder !== this) throw new Error('lock not held');
  }
  async read(): Promise<LeaderRecord | undefined> {
    await this.gate();
    return this.server.record;
  }
  async release(): Promise<void> {
    this.releases++;
    if (this.server.holder === this) this.server.holder = undefined;
  }
}

/** A clock that only moves when told to. */
class FakeClock {
  now = 0;
  private sleepers: { at: number; resolve: () => void }[] = [];
  sleep: Sleep = (ms, signal) =>
    new Promise((resolve, reject) => {
      if (signal.aborted) return reject(signal.reason);
      const s = { at: this.now + ms, resolve };
      this.sleepers.push(s);
      signal.addEventListener('abort', () => {
        this.sleepers = this.sleepers.filter((x) => x !== s);
        reject(signal.reason);
      }, { once: true });
    });
  /** Moves time forward in small steps, letting the loops run in between. */
  async advance(ms: number): Promise<void> {
    const end = this.now + ms;
    while (this.now < end) {
      this.now = Math.min(end, this.now + 50);
      const due = this.sleepers.filter((s) => s.at <= this.now);
      this.sleepers = this.sleepers.filter((s) => s.at > this.now);
      for (const s of due) s.resolve();
      for (let i = 0; i < 20; i++) await Promise.resolve();
    }
  }
}

function setup(n: number): { clock: FakeClock; server: FakeLockServer; sessions: FakeSession[]; nodes: Leadership[]; changes: LeadershipState[][] } {
  const clock = new FakeClock();
  const server = new FakeLockServer();
  const sessions = Array.from({ length: n }, () => new FakeSession(server));
  const changes: LeadershipState[][] = sessions.map(() => []);
  const nodes = sessions.map((backend, i) => {
    const l = new Leadership({ backend, me: `10.0.0.${i + 1}:7000`, intervalMs: 500, callTimeoutMs: 1500, log, sleep: clock.sleep });
    l.onChange((s) => changes[i]!.push(s));
    return l;
  });
  return { clock, server, sessions, nodes, changes };
}

describe('Leadership', () => {
  it('elects exactly one leader, whose term is the fencing token; followers name it', async () => {
    const { clock, nodes } = setup(3);
    nodes.forEach((l) => l.start());
    await clock.advance(1000);
    const leaders = nodes.filter((l) => l.isLeader);
    expect(leaders).toHaveLength(1);
    expect(leaders[0]!.token()).toBe(1);
    for (const f of nodes.filter((l) => !l.isLeader)) {
      expect(f.current.known).toEqual({ term: 1, leader: '10.0.0.1:7000' });
      expect(() => f.token()).toThrow(NotLeaderError);
      expect(f.notLeader().leader).toBe('10.0.0.1:7000');
      expect(f.notLeader().reason).toBe('NOT_LEADER');
    }
    await Promise.all(nodes.map((l) => l.stop()));
  });

  it('a leader that loses its lock steps down at once; another takes over with a higher term', async () => {
    const { clock, server, sessions, nodes, changes } = setup(2);
    nodes[0]!.start();
    await clock.advance(100);
    nodes[1]!.start();
    await clock.advance(600);
    expect(nodes[0]!.isLeader).toBe(true);
    // The database ended the leader's session (e.g. restarted): the lock is gone.
    server.holder = undefined;
    sessions[0]!.down = true;
    await clock.advance(600);
    expect(nodes[0]!.isLeader).toBe(false);
    expect(changes[0]!.at(-1)).toMatchObject({ role: 'follower', term: undefined });
    await clock.advance(600);
    expect(nodes[1]!.isLeader).toBe(true);
    expect(nodes[1]!.token()).toBe(2);
    await Promise.all(nodes.map((l) => l.stop()));
  });

  it('a leader whose proof hangs steps down after the call timeout and drops its session', async () => {
    const { clock, sessions, nodes } = setup(2);
    nodes[0]!.start();
    await clock.advance(600);
    expect(nodes[0]!.isLeader).toBe(true);
    sessions[0]!.hang = true;
    await clock.advance(1000);
    expect(nodes[0]!.isLeader).toBe(true); // not yet: the timeout is 1.5 s
    await clock.advance(1100);
    expect(nodes[0]!.isLeader).toBe(false);
    expect(sessions[0]!.releases).toBe(1);
    // Released: a follower can take over.
    nodes[1]!.start();
    await clock.advance(600);
    expect(nodes[1]!.token()).toBe(2);
    sessions[0]!.hang = false;
    await Promise.all(nodes.map((l) => l.stop()));
  });

  it('a lock attempt that hangs is abandoned and its session dropped, so no follower keeps a lock', async () => {
    const { clock, sessions, nodes } = setup(1);
    sessions[0]!.hang = true;
    nodes[0]!.start();
    await clock.advance(1600);
    expect(nodes[0]!.isLeader).toBe(false);
    expect(sessions[0]!.releases).toBeGreaterThanOrEqual(1);
    sessions[0]!.hang = false;
    await clock.advance(2500);
    expect(nodes[0]!.isLeader).toBe(true);
    await nodes[0]!.stop();
  });

  it('keeps campaigning while the database is down, and stop() releases a held lock', async () => {
    const { clock, server, sessions, nodes } = setup(1);
    sessions[0]!.down = true;
    nodes[0]!.start();
    await clock.advance(3000);
    expect(nodes[0]!.isLeader).toBe(false);
    expect(nodes[0]!.notLeader().leader).toBe('');
    sessions[0]!.down = false;
    await clock.advance(600);
    expect(nodes[0]!.isLeader).toBe(true);
    await nodes[0]!.stop();
    expect(nodes[0]!.isLeader).toBe(false);
    expect(server.holder).toBeUndefined();
  });
});
