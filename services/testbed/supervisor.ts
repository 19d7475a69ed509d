/**
 * Keeps the local cluster's children running: when nats-server, the coordinator or a node daemon
 * exits without being asked to, the supervisor says so and starts it again (same port, store and
 * state folder), retrying with a capped back-off until it is back. It never stops anything else:
 * QEMU guests keep running while a daemon is away, and a restarted node daemon re-attaches to them.
 * Used by services/testbed/cluster.ts (`npm start`, the lab, the chaos campaign).
 */
import type { ChildProcess } from 'node:child_process';

/** A started child: its process, and how to stop it on purpose. */
export interface SupervisedProcess {
  readonly process: Pick<ChildProcess, 'pid' | 'once' | 'exitCode' | 'signalCode'>;
  stop(): Promise<void>;
}

export interface SupervisorOptions {
  /** Supervision messages ("nats-server exited …; restarting it"). */
  readonly say: (line: string) => void;
  /** First delay before a restart (ms, default 500); doubles per failed attempt up to `maxDelayMs`. */
  readonly initialDelayMs?: number;
  /** Longest delay between restart attempts (ms, default 5000). */
  readonly maxDelayMs?: number;
  /** Injected for tests. */
  readonly sleep?: (ms: number) => Promise<void>;
}

interface Entry {
  readonly name: string;
  readonly start: () => Promise<SupervisedProcess>;
  current: SupervisedProcess | undefined;
  restarts: number;
  restarting: Promise<void> | undefined;
}

/** Watches named children and restarts the ones that die. */
export class Supervisor {
  private readonly entries = new Map<string, Entry>();
  private closing = false;
  private readonly sleep: (ms: number) => Promise<void>;

  constructor(private readonly o: SupervisorOptions) {
    this.sleep = o.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  // Last resort when the process exits without close() (a crash, process.exit): children in the
  // root namespace (nats-server, the coordinator) would outlive it; the testbed's own hook kills
  // what runs in its namespaces.
  private readonly killAllSync = (): void => {
    this.closing = true;
    for (const e of this.entries.values()) {
      const pid = e.current?.process.pid;
      if (pid === undefined) continue;
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  };

  /** Starts `name` with `start` and keeps it running. @throws whatever the first start throws */
  async add(name: string, start: () => Promise<SupervisedProcess>): Promise<SupervisedProcess> {
    const entry: Entry = { name, start, current: undefined, restarts: 0, restarting: undefined };
    if (this.entries.size === 0) process.on('exit', this.killAllSync);
    this.entries.set(name, entry);
    const p = await start();
    this.watch(entry, p);
    return p;
  }

  /** The running process of `name`, undefined while it is being restarted. */
  current(name: string): SupervisedProcess | undefined {
    return this.entries.get(name)?.current;
  }

  /** How often each child has been restarted. */
  restarts(): Record<string, number> {
    return Object.fromEntries([...this.entries.values()].map((e) => [e.name, e.restarts]));
  }

  /** Resolves once no restart is under way (immediately when all run). */
  async settled(): Promise<void> {
    for (;;) {
      const pending = [...this.entries.values()].map((e) => e.restarting).filter((p): p is Promise<void> => p !== undefined);
      if (pending.length === 0) return;
      await Promise.all(pending);
    }
  }

  /** Stops supervising and stops every child (in reverse order of `add`). */
  async close(): Promise<void> {
    this.closing = true;
    await Promise.allSettled([...this.entries.values()].map((e) => e.restarting));
    for (const e of [...this.entries.values()].reverse()) await e.current?.stop().catch(() => undefined);
    process.off('exit', this.killAllSync);
  }

  private watch(entry: Entry, p: SupervisedProcess): void {
    entry.current = p;
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      if (entry.current !== p) return;
      entry.current = undefined;
      if (this.closing) return;
      const how = signal ? `killed by ${signal}` : `exited with code ${code}`;
      this.o.say(`${entry.name} (pid ${p.process.pid}) ${how}; restarting it (guests keep running)`);
      entry.restarting = this.restart(entry).finally(() => (entry.restarting = undefined));
    };
    if (p.process.exitCode !== null || p.process.signalCode !== null) onExit(p.process.exitCode, p.process.signalCode);
    else p.process.once('exit', onExit);
  }

  private async restart(entry: Entry): Promise<void> {
    const max = this.o.maxDelayMs ?? 5000;
    let delay = Math.min(this.o.initialDelayMs ?? 500, max);
    const since = Date.now();
    for (let attempt = 1; !this.closing; attempt++) {
      await this.sleep(delay);
      if (this.closing) return;
      try {
        const p = await entry.start();
        if (this.closing) {
          await p.stop().catch(() => undefined);
          return;
        }
        entry.restarts++;
        this.o.say(`${entry.name} restarted (pid ${p.process.pid}) after ${Date.now() - since} ms`);
        this.watch(entry, p);
        return;
      } catch (err) {
        this.o.say(`${entry.name}: restart attempt ${attempt} failed (${(err as Error).message.split('\n')[0]}); retrying in ${Math.min(delay * 2, max)} ms`);
        delay = Math.min(delay * 2, max);
      }
    }
  }
}
