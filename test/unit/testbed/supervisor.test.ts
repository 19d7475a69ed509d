import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { Supervisor, type SupervisedProcess } from '../../../services/testbed/supervisor.js';

/** A child process stand-in: the seam is the process's `exit` event. */
class FakeChild extends EventEmitter {
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;
  stopped = false;
  constructor(readonly pid: number) {
    super();
  }
  die(signal: NodeJS.Signals | null, code: number | null = null): void {
    this.exitCode = code;
    this.signalCode = signal;
    this.emit('exit', code, signal);
  }
}

function starter(failures = 0) {
  const started: FakeChild[] = [];
  let pid = 100;
  let left = failures;
  const start = async (): Promise<SupervisedProcess> => {
    if (started.length > 0 && left-- > 0) throw new Error('port still in use\nmore detail');
    const c = new FakeChild(pid++);
    started.push(c);
    return {
      process: c as unknown as SupervisedProcess['process'],
      stop: async () => {
        c.stopped = true;
        c.die('SIGTERM');
      },
    };
  };
  return { start, started };
}

describe('Supervisor', () => {
  it('says when a child dies and starts it again, retrying with a capped back-off', async () => {
    const said: string[] = [];
    const delays: number[] = [];
    const sup = new Supervisor({ say: (l) => said.push(l), initialDelayMs: 100, maxDelayMs: 300, sleep: async (ms) => void delays.push(ms) });
    const s = starter(3);
    await sup.add('nats-server', s.start);
    s.started[0]!.die('SIGKILL');
    expect(sup.current('nats-server')).toBeUndefined();
    await sup.settled();
    expect(s.started).toHaveLength(2);
    expect(sup.current('nats-server')?.process.pid).toBe(101);
    expect(sup.restarts()).toEqual({ 'nats-server': 1 });
    expect(delays).toEqual([100, 200, 300, 300]);
    expect(said[0]).toBe('nats-server (pid 100) killed by SIGKILL; restarting it (guests keep running)');
    expect(said.filter((l) => l.includes('restart attempt'))).toHaveLength(3);
    expect(said.at(-1)).toMatch(/^nats-server restarted \(pid 101\) after \d+ ms$/);
    // A second death is handled the same way.
    s.started[1]!.die(null, 1);
    await sup.settled();
    expect(said).toContain('nats-server (pid 101) exited with code 1; restarting it (guests keep running)');
    expect(sup.restarts()).toEqual({ 'nats-server': 2 });
    await sup.close();
  });

  it('restarts nothing on close, and stops children in reverse order', async () => {
    const said: string[] = [];
    const sup = new Supervisor({ say: (l) => said.push(l), sleep: async () => undefined });
    const a = starter();
    const b = starter();
    await sup.add('coordinator', a.start);
    await sup.add('node a', b.start);
    await sup.close();
    expect(a.started[0]!.stopped && b.started[0]!.stopped).toBe(true);
    expect(a.started).toHaveLength(1);
    expect(b.started).toHaveLength(1);
    expect(said).toEqual([]);
  });
});
