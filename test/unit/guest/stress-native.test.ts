// Runs the real guest workload (stress/guest/stress.c) as an ordinary host process: when it is
// not PID 1 it takes its parameters from argv and its serial commands from stdin. This checks
// the C program's output against the TypeScript parser, and its fault detection end to end,
// in a second instead of a VM boot.
import { execFile, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import type { GuestEvent, GuestTelemetryParser } from '../../../services/shared/guest/telemetry.js';
import { GuestEventLog } from '../../helpers/guest-qemu.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));

class Workload {
  readonly log = new GuestEventLog();

  constructor(readonly proc: ChildProcessWithoutNullStreams) {
    proc.stdout.on('data', (chunk: Buffer) => this.log.push(chunk));
    // 'close', not 'exit': a process that fails at once may exit before its last output is read.
    proc.once('close', (code, signal) => this.log.close(`workload exited (${code ?? signal})`));
  }

  get events(): GuestEvent[] {
    return this.log.events;
  }

  get parser(): GuestTelemetryParser {
    return this.log.parser;
  }

  waitFor<T extends GuestEvent>(pred: (e: GuestEvent) => e is T, timeoutMs = 5000): Promise<T> {
    return this.log.waitFor(pred, timeoutMs);
  }

  send(cmd: string): void {
    this.proc.stdin.write(`${cmd}\n`);
  }
}

describe('guest workload, native build', () => {
  let dir: string;
  let bin: string;
  const running: Workload[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'migd-stress-'));
    bin = join(dir, 'stress');
    await promisify(execFile)('cc', ['-O2', '-Wall', '-Wextra', '-Werror', '-pthread', '-o', bin, join(repo, 'stress/guest/stress.c'), join(repo, 'stress/guest/integrity.c')]);
  });

  afterEach(() => {
    for (const w of running.splice(0)) w.proc.kill('SIGKILL');
  });

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const start = (...params: string[]): Workload => {
    const w = new Workload(spawn(bin, params, { stdio: ['pipe', 'pipe', 'pipe'] }));
    running.push(w);
    return w;
  };

  it('random: start, map, pass, heartbeat lines parse; an injected flip is reported once with its word', async () => {
    const w = start('migd.workers=2', 'migd.bytes=4M', 'migd.pattern=random', 'migd.report_ms=50', 'migd.hb_ms=200');
    const st = await w.waitFor((e): e is Extract<GuestEvent, { type: 'start' }> => e.type === 'start');
    expect(st.params).toMatchObject({ workers: 2, bytesPerWorker: 4 << 20, pattern: 'random', verify: true, reportMs: 50, heartbeatMs: 200 });
    await w.waitFor((e): e is GuestEvent => e.type === 'heartbeat');
    await w.waitFor((e): e is GuestEvent => e.type === 'sample' && e.sample.worker === -1);
    expect(w.events.filter((e) => e.type === 'map').length).toBe(2);

    w.send('corrupt 1 7 33');
    const err = await w.waitFor((e): e is Extract<GuestEvent, { type: 'integrity-error' }> => e.type === 'integrity-error');
    expect(err).toMatchObject({ worker: 1, page: 7, reason: 'corrupt', word: 33, xor: '0x20000' });
    expect(err.foundGen).toBe(err.expectedGen);
    await w.waitFor((e): e is GuestEvent => e.type === 'verify' && e.worker === 1 && e.errors === 1);

    w.send('pa 0 3');
    await w.waitFor((e): e is GuestEvent => e.type === 'map' && e.page === 3);
    w.send('bogus');
    await w.waitFor((e): e is GuestEvent => e.type === 'ack' && e.fields['cmd'] === 'bogus' && e.fields['ok'] === '0');
    expect(w.parser.stats.malformed).toBe(0);
    expect(w.parser.integrity().errors).toBe(1);
  });

  it('idle: a corrupted cold page is found by the sweep, reported once, then repaired', async () => {
    const w = start('migd.workers=1', 'migd.bytes=1M', 'migd.pattern=idle', 'migd.idle_ms=100', 'migd.hb_ms=100');
    await w.waitFor((e): e is GuestEvent => e.type === 'pass');
    w.send('corrupt 0 200 0');
    const err = await w.waitFor((e): e is Extract<GuestEvent, { type: 'integrity-error' }> => e.type === 'integrity-error');
    expect(err).toMatchObject({ worker: 0, page: 200, reason: 'corrupt', word: 0, expectedGen: 1 });
    // two more sweeps: still exactly one error
    const sweeps = w.events.filter((e) => e.type === 'verify').length;
    await w.waitFor((e): e is GuestEvent => e.type === 'verify' && w.events.filter((x) => x.type === 'verify').length >= sweeps + 2);
    expect(w.parser.integrity().errors).toBe(1);
  });

  it('rejects a bad parameter with a fatal line', async () => {
    const w = start('migd.workers=99');
    const fatal = await w.waitFor((e): e is GuestEvent => e.type === 'fatal');
    expect(fatal).toMatchObject({ fields: { reason: 'bad_param', key: 'migd.workers' } });
  });
});
