/**
 * Leader election among replicated coordinators, over an existing primitive (no home-made
 * consensus): the backend is a lock the database grants to one session at a time (a Postgres
 * advisory lock held on a pinned connection, see postgres.ts), plus a shared record of the term
 * and the leader's address. Taking the lock bumps the term; that term is the fencing token every
 * write of the leader carries, so a deposed leader that has not noticed yet is refused by the
 * store rather than trusted.
 *
 * This class is the pure part: a loop that, as a follower, tries to take the lock every
 * `intervalMs` (and reads who leads), and as the leader proves it still holds the lock every
 * `intervalMs`, stepping down the moment it cannot prove it within `confirmTimeoutMs`. A call
 * that hangs is abandoned and the backend's session dropped, so a lock taken by a late reply is
 * never kept by a coordinator that thinks it is a follower.
 */
import { NotLeaderError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';

/** The shared record: which coordinator leads (its address) in which term. */
export interface LeaderRecord {
  readonly term: number;
  readonly leader: string;
}

/** The election primitive (the narrow seam: Postgres in production, fakes in unit tests). */
export interface ElectionBackend {
  /**
   * Takes the lock without waiting. When taken: bumps the term, records `me` as the leader and
   * returns the new record; undefined when another session holds the lock.
   */
  tryAcquire(me: string): Promise<LeaderRecord | undefined>;
  /** Proves the lock is still held (a round trip on the session that holds it); throws if not. */
  confirm(): Promise<void>;
  /** The shared record (may name a leader that just died, until another takes over). */
  read(): Promise<LeaderRecord | undefined>;
  /** Drops the session (releasing the lock if held); the next call opens a new one. Never throws. */
  release(): Promise<void>;
}

/** This coordinator's view. */
export interface LeadershipState {
  readonly role: 'leader' | 'follower';
  /** This coordinator's term while it leads (the fencing token); undefined as a follower. */
  readonly term: number | undefined;
  /** The latest known leader record (ours while we lead). */
  readonly known: LeaderRecord | undefined;
}

/** Waits `ms`, or rejects when `signal` fires. */
export type Sleep = (ms: number, signal: AbortSignal) => Promise<void>;

export interface LeadershipOptions {
  readonly backend: ElectionBackend;
  /** This coordinator's address as clients and nodes reach it (host:port). */
  readonly me: string;
  /** Period of lock attempts (follower) and proofs (leader), in ms. Default 500. */
  readonly intervalMs?: number;
  /** A backend call not answered within this many ms counts as failed. Default 1500. */
  readonly callTimeoutMs?: number;
  readonly log: Logger;
  /** Injected clock for tests. Default: real timers. */
  readonly sleep?: Sleep;
}

const realSleep: Sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });

class CallTimeout extends Error {}

export class Leadership {
  private state: LeadershipState = { role: 'follower', term: undefined, known: undefined };
  private readonly listeners = new Set<(s: LeadershipState) => void>();
  private readonly stopper = new AbortController();
  private loop: Promise<void> | undefined;
  private readonly intervalMs: number;
  private readonly callTimeoutMs: number;
  private readonly sleep: Sleep;

  constructor(private readonly o: LeadershipOptions) {
    this.intervalMs = o.intervalMs ?? 500;
    this.callTimeoutMs = o.callTimeoutMs ?? 1500;
    this.sleep = o.sleep ?? realSleep;
  }

  /** Starts campaigning in the background. */
  start(): void {
    this.loop ??= this.run();
  }

  /** The current view. */
  get current(): LeadershipState {
    return this.state;
  }

  get isLeader(): boolean {
    return this.state.role === 'leader';
  }

  /** The fencing token while leading. @throws NotLeaderError naming the leader otherwise */
  token(): number {
    if (this.state.role !== 'leader' || this.state.term === undefined) throw this.notLeader();
    return this.state.term;
  }

  /** The refusal a follower answers writes with, naming the leader when one is known. */
  notLeader(): NotLeaderError {
    const known = this.state.known;
    return new NotLeaderError(known && known.leader !== this.o.me ? known.leader : '');
  }

  /** Called (synchronously, in order) on every change of role or known leader; returns an unsubscribe. */
  onChange(listener: (s: LeadershipState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Gives leadership up now (e.g. this coordinator could not take up its duties) and keeps
   * campaigning: another coordinator, or this one later, takes over.
   */
  async resign(): Promise<void> {
    if (this.state.role !== 'leader') return;
    this.o.log.warn('resigning leadership', { term: this.state.term });
    this.set({ role: 'follower', term: undefined, known: this.state.known });
    await this.o.backend.release();
  }

  /** Stops campaigning; a leader releases the lock (a clean hand-over). */
  async stop(): Promise<void> {
    this.stopper.abort();
    await this.loop;
    if (this.state.role === 'leader') this.set({ role: 'follower', term: undefined, known: this.state.known });
    await this.o.backend.release();
  }

  private set(next: LeadershipState): void {
    const prev = this.state;
    this.state = next;
    if (prev.role === next.role && prev.term === next.term && prev.known?.term === next.known?.term && prev.known?.leader === next.known?.leader) return;
    for (const l of this.listeners) {
      try {
        l(next);
      } catch (err) {
        this.o.log.error('leadership listener failed', { err });
      }
    }
  }

  /** `p`, or a CallTimeout after callTimeoutMs (the stop signal also ends the wait). */
  private async bounded<T>(p: Promise<T>): Promise<T> {
    const timer = new AbortController();
    const onStop = (): void => timer.abort();
    this.stopper.signal.addEventListener('abort', onStop, { once: true });
    try {
      return await Promise.race([
        p,
        this.sleep(this.callTimeoutMs, timer.signal).then(
          () => {
            throw new CallTimeout(`no answer in ${this.callTimeoutMs} ms`);
          },
          // Stopping (or the race already settled): give up waiting.
          () => {
            throw new CallTimeout('stopped');
          },
        ),
      ]);
    } finally {
      timer.abort();
      this.stopper.signal.removeEventListener('abort', onStop);
    }
  }

  private async run(): Promise<void> {
    const signal = this.stopper.signal;
    while (!signal.aborted) {
      if (this.state.role === 'leader') await this.confirmLeadership();
      else await this.campaign();
      try {
        await this.sleep(this.intervalMs, signal);
      } catch {
        return;
      }
    }
  }

  private async confirmLeadership(): Promise<void> {
    try {
      await this.bounded(this.o.backend.confirm());
    } catch (err) {
      if (this.stopper.signal.aborted) return;
      // Cannot prove we hold the lock: act as deposed at once. Dropping the session releases the
      // lock if we still had it, so another coordinator takes over without waiting for us.
      this.o.log.warn('leadership lost; stepping down', { term: this.state.term, err: (err as Error).message });
      this.set({ role: 'follower', term: undefined, known: this.state.known });
      await this.o.backend.release();
    }
  }

  private async campaign(): Promise<void> {
    let won: LeaderRecord | undefined;
    try {
      won = await this.bounded(this.o.backend.tryAcquire(this.o.me));
    } catch (err) {
      // A late answer may still take the lock: drop the session so it cannot be kept by a follower.
      if (err instanceof CallTimeout) await this.o.backend.release();
      if (!this.stopper.signal.aborted) this.o.log.debug('leader election: no lock attempt possible now', { err: (err as Error).message });
      return;
    }
    if (won) {
      this.o.log.info('elected leader', { term: won.term, me: this.o.me });
      this.set({ role: 'leader', term: won.term, known: won });
      return;
    }
    try {
      const known = await this.bounded(this.o.backend.read());
      this.set({ role: 'follower', term: undefined, known });
    } catch (err) {
      if (err instanceof CallTimeout) await this.o.backend.release();
    }
  }
}
