/**
 * The real guest (Debian kernel, PVH vmlinux + the migd-stress initramfs from stress/image/) under
 * the VmManager: boot to the workload's first line, then a daemon restart while the guest runs —
 * the console keeps flowing after reattach. Runs only once `.cache/guest/` has been built
 * (`npm run setup`); otherwise vitest reports it as skipped.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../../services/shared/log.js';
import { VmManager } from '../../../services/node/vm/manager.js';
import { stressGuest } from '../../helpers/qemu-guest.js';
import { QemuSandbox, isAlive, qemuPidsMatching } from '../../helpers/qemu-process.js';

const quiet = createLogger('vm-it', {}, () => undefined, 'error');
const sandbox = new QemuSandbox();
const managers: VmManager[] = [];
const guest = stressGuest();

afterEach(async () => {
  await Promise.all(managers.splice(0).map((m) => m.close()));
  await sandbox.cleanup();
});

/** Reads console chunks until `count` lines starting with `prefix` arrived; returns exactly those lines. */
async function lines(it: AsyncIterator<Uint8Array>, prefix: string, count: number, timeoutMs: number): Promise<string[]> {
  let buf = '';
  const found: string[] = [];
  const deadline = Date.now() + timeoutMs;
  while (found.length < count) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`only ${found.length}/${count} "${prefix}" lines within ${timeoutMs} ms; tail: ${JSON.stringify(buf.slice(-500))}`);
    const r = await Promise.race([it.next(), new Promise<'t'>((res) => setTimeout(() => res('t'), left))]);
    if (r === 't') continue;
    if (r.done === true) throw new Error('console ended');
    buf += Buffer.from(r.value).toString('utf8');
    let nl: number;
    // one chunk can carry several lines (the guest prints a line per 100 ms report window): take
    // only the first `count`, the rest are not ours to count
    while (found.length < count && (nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      if (line.startsWith(prefix)) found.push(line);
    }
  }
  return found;
}

describe('stress guest under the VmManager', () => {
  it.runIf(guest !== undefined)('boots the stress guest (TCG, 256 MiB) and keeps its console across a daemon restart', async () => {
    const g = guest!;
    const stateDir = await sandbox.tempDir('migd-vm-');
    const m1 = await VmManager.open({ stateDir, logger: quiet });
    managers.push(m1);
    // Idle pattern, small region: the guest heartbeats but barely dirties memory (cheap under TCG).
    const append = 'console=ttyS0 quiet panic=-1 migd.workers=1 migd.bytes=16777216 migd.pattern=idle migd.hb_ms=500';
    const vm = await m1.create({ name: 'g1', memoryMiB: 256, kernel: g.kernel, initrd: g.initrd, append }, { paused: true });
    const con = m1.serial('g1');
    const t0 = performance.now();
    await m1.qmp('g1').execute('cont');
    const first = await lines(con, 'migd-stress v1', 1, 90_000);
    console.log(`[measure] stress guest: cont → first workload line ${(performance.now() - t0).toFixed(0)} ms: ${first[0]!.slice(0, 100)}`);

    await m1.close();
    const m2 = await VmManager.open({ stateDir, logger: quiet });
    managers.push(m2);
    expect(m2.get('g1')).toMatchObject({ pid: vm.pid, status: 'running', adopted: true });
    const after = await lines(m2.serial('g1'), 'migd-stress v1', 2, 30_000);
    expect(after).toHaveLength(2);
    expect(await qemuPidsMatching(stateDir)).toEqual([vm.pid]);
    const cpu = await m2.cpu('g1');
    console.log(`[measure] stress guest QEMU CPU so far ${cpu.totalSeconds.toFixed(2)} s`);

    await m2.destroy('g1');
    expect(await isAlive(vm.pid)).toBe(false);
  });

});
