/**
 * Tap devices for VMs' network cards, in the node daemon's own network namespace: one persistent
 * tap per NIC (`ip tuntap add … mode tap`), a port of the bridge the NIC's network maps to, which
 * QEMU opens by name (`-netdev tap,ifname=…,script=no`). QEMU runs with spawn=deny, so it cannot
 * run a bridge helper itself; the node creates the tap before QEMU starts and deletes it when the
 * VM goes away. Names are derived from the state dir, VM name and card index, so the daemon (also
 * a restarted one) always knows which taps are a VM's.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { access } from 'node:fs/promises';
import { promisify } from 'node:util';
import { FailedPreconditionError } from '../../shared/errors.js';

const run = promisify(execFile);

/** Creates and removes tap devices. The production one runs `ip`; tests may record calls instead. */
export interface TapBackend {
  /**
   * Creates tap `tap` (replacing a stale one of that name) as a port of `bridge`, up.
   * @throws FailedPreconditionError when the bridge does not exist or `ip` fails.
   */
  add(tap: string, bridge: string): Promise<void>;
  /** Deletes tap `tap`; no-op when it does not exist. */
  remove(tap: string): Promise<void>;
}

/** Linux interface names: at most 15 bytes. */
export const TAP_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$/;

/** The tap of card `index` of VM `vm` under `stateDir`: `mt` + 12 hex digits (14 bytes). */
export function tapName(stateDir: string, vm: string, index: number): string {
  return 'mt' + createHash('sha256').update(`${stateDir}\0${vm}\0${index}`).digest('hex').slice(0, 12);
}

async function ip(args: readonly string[]): Promise<void> {
  try {
    await run('ip', args, { timeout: 10_000 });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new FailedPreconditionError(`ip ${args.join(' ')} failed: ${(e.stderr ?? e.message).trim()}`, { reason: 'TAP_FAILED', cause: err });
  }
}

/** The production backend: `ip` in this process's network namespace. */
export const ipTapBackend: TapBackend = {
  async add(tap, bridge) {
    // /sys/class/net/<bridge>/bridge exists only for a bridge (of this namespace: `ip netns exec`
    // remounts /sys).
    if (!(await access(`/sys/class/net/${bridge}/bridge`).then(() => true, () => false))) {
      throw new FailedPreconditionError(`bridge ${bridge} does not exist on this host`, { reason: 'BRIDGE_MISSING' });
    }
    await this.remove(tap);
    await ip(['tuntap', 'add', 'dev', tap, 'mode', 'tap']);
    try {
      await ip(['link', 'set', tap, 'master', bridge, 'up']);
    } catch (err) {
      await this.remove(tap);
      throw err;
    }
  },
  async remove(tap) {
    await run('ip', ['link', 'del', tap], { timeout: 10_000 }).catch(() => undefined);
  },
};
