/**
 * NodeDaemon only wires its parts together: a daemon started on a temp state folder (the host
 * probed for real: the QEMU binary answers its capability probe; no VM is started) serves gRPC and
 * /metrics, registers with a coordinator, and stop() releases everything it took — its ports, the
 * state folder's lock, the registration's retries and the migration sweep's timer — so the event
 * loop holds nothing more than before, and a new daemon can take the same folder at once.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadNodeConfig } from '../../../services/node/config.js';
import { NodeDaemon } from '../../../services/node/daemon.js';
import { createLogger } from '../../../services/shared/log.js';
import { freePort } from '../../../services/shared/net.js';

const quiet = createLogger('daemon-wiring-test', {}, () => undefined, 'error');
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** The kinds of resources keeping the event loop alive, counted. */
function resources(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of process.getActiveResourcesInfo()) out[r] = (out[r] ?? 0) + 1;
  return out;
}

/**
 * The resources held beyond `baseline`, once they settle (a closed socket goes on the next turns;
 * an abandoned connect or file read finishes on its own). Returns as soon as nothing is extra; the
 * deadline is generous because the suite runs at load 10-15 on 2 cores.
 */
async function extra(baseline: Record<string, number>, ms = 30_000): Promise<Record<string, number>> {
  const end = Date.now() + ms;
  for (;;) {
    const more = Object.fromEntries(Object.entries(resources()).filter(([k, n]) => n > (baseline[k] ?? 0)));
    if (Object.keys(more).length === 0 || Date.now() > end) return more;
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('NodeDaemon wiring', () => {
  it('starts its parts and stop() releases every one of them', async () => {
    const baseline = resources();
    const stateDir = mkdtempSync(join(tmpdir(), 'migd-daemon-'));
    cleanups.push(() => rmSync(stateDir, { recursive: true, force: true }));
    const metricsPort = await freePort();
    // A coordinator nobody answers at: the registration keeps retrying until stopped.
    const nobody = await freePort();
    const config = loadNodeConfig(['--node-id', 'wiring', '--listen', '127.0.0.1:0', '--insecure', '--state-dir', stateDir, '--guest-image', stateDir, '--metrics-listen', `127.0.0.1:${metricsPort}`, '--coordinator', `127.0.0.1:${nobody}`, '--heartbeat-ms', '100'], {});

    const d = await NodeDaemon.start(config, quiet);
    let stopped = false;
    cleanups.push(async () => {
      if (!stopped) await d.stop();
    });
    expect(d.port).toBeGreaterThan(0);
    expect(await listening(d.port)).toBe(true);
    expect(await listening(metricsPort)).toBe(true);
    expect(d.vms.list()).toEqual([]);
    expect(d.migrations.list(false)).toEqual([]);
    expect((await d.hostInfo()).nodeId).toBe('wiring');
    // The state folder is this daemon's: a second one is refused while it runs.
    await expect(NodeDaemon.start({ ...config }, quiet)).rejects.toThrow(/already open/);

    await d.stop();
    stopped = true;
    expect(await listening(d.port)).toBe(false);
    expect(await listening(metricsPort)).toBe(false);
    expect(await extra(baseline)).toEqual({});

    // Everything released: a new daemon takes the same folder and ports at once.
    const again = await NodeDaemon.start(config, quiet);
    await again.stop();
    expect(await extra(baseline)).toEqual({});
  });
});
