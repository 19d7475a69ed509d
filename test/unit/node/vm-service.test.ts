/**
 * The node's VM service over a narrow fake of the VM manager (real files in a temp folder, a serial
 * console that yields guest lines): a recorded spec survives a new service (a daemon restart), a VM
 * with no recorded spec gets one from its QEMU spec, only the images this node recorded as created
 * are reported (per storage mode), a VM's feed follows its console, and forget() drops the spec,
 * the feed and the migrating mark.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { VmInfo } from '../../../services/node/vm/manager.js';
import type { SerialSubscription } from '../../../services/node/vm/serial.js';
import { VmService, type VmServiceVms } from '../../../services/node/vm/service.js';
import { NotFoundError } from '../../../services/shared/errors.js';
import { Accel, VmSpec } from '../../../services/shared/gen/migd/v1/common.js';
import { formatGuestLine } from '../../../services/shared/guest/telemetry.js';
import { createLogger } from '../../../services/shared/log.js';
import { until } from '../../helpers/until.js';

const quiet = createLogger('vm-service-test', {}, () => undefined, 'error');
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

/** VMs in a temp folder, each with its own folder, and a console that yields one guest sample. */
function fakeVms(names: string[]): VmServiceVms & { dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'migd-vm-service-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const infos = new Map<string, VmInfo>();
  for (const name of names) {
    const real = mkdtempSync(join(dir, `${name}-`));
    infos.set(name, {
      name,
      spec: { name, memoryMiB: 128, vcpus: 1, machine: 'pc-i440fx-10.0', accel: 'tcg', kernel: '/k', initrd: '/i', uuid: `uuid-${name}`, nics: [], disks: [{ id: 'd0', path: `/s/${name}-local.qcow2`, storage: 'local' }, { id: 'd1', path: `/s/${name}-shared.raw`, storage: 'shared' }] },
      paths: { dir: real },
    } as unknown as VmInfo);
  }
  return {
    dir,
    get: (name) => {
      const v = infos.get(name);
      if (!v) throw new NotFoundError(`VM ${name} not found`);
      return v;
    },
    serial: (_name, opts = {}) =>
      (async function* () {
        yield Buffer.from(formatGuestLine(10, 'start', { workers: 1, bytes: 4096, pattern: 'random' }) + formatGuestLine(20, 'pass', { w: 0, n: 1, bytes: 4096, ms_per_gib: 900 }));
        await new Promise<void>((resolve) => opts.signal?.addEventListener('abort', () => resolve(), { once: true }));
      })() as unknown as SerialSubscription,
  };
}

describe('VmService', () => {
  it('persists a spec and the created images; a new service (a restarted daemon) loads them', async () => {
    const vms = fakeVms(['a']);
    const svc = new VmService(vms, quiet);
    cleanups.push(() => svc.close());
    const spec = VmSpec.fromPartial({ name: 'a', memoryMib: 128, vcpus: 1, accel: Accel.ACCEL_TCG, extraCmdline: 'given' });
    svc.record('a', spec, ['/s/a-local.qcow2', '/s/a-shared.raw']);
    expect(svc.spec('a')).toEqual(spec);
    expect(svc.createdImages('a')).toEqual(['/s/a-local.qcow2', '/s/a-shared.raw']);
    expect(svc.createdImages('a', 'local')).toEqual(['/s/a-local.qcow2']);
    expect(svc.createdImages('a', 'shared')).toEqual(['/s/a-shared.raw']);
    // The feed follows the console from record() on.
    await until(() => svc.guestSummary('a') !== undefined, 'a guest summary for a', 2000, 5);
    expect(svc.guestSummary('a')).toMatchObject({ msPerGib: 900, vmName: 'a' });

    const again = new VmService(vms, quiet);
    cleanups.push(() => again.close());
    expect(again.spec('a')).toBeUndefined();
    again.attach([vms.get('a')]);
    expect(again.spec('a')).toEqual(JSON.parse(JSON.stringify(spec)));
    expect(again.createdImages('a', 'local')).toEqual(['/s/a-local.qcow2']);
  });

  it('gives a VM with no (or an unreadable) recorded spec one made from its QEMU spec', () => {
    const vms = fakeVms(['b']);
    const svc = new VmService(vms, quiet);
    cleanups.push(() => svc.close());
    writeFileSync(join(vms.get('b').paths.dir, 'migd-spec.json'), '{not json');
    svc.loadSpec(vms.get('b'));
    expect(svc.spec('b')).toMatchObject({ name: 'b', memoryMib: 128, vcpus: 1, accel: Accel.ACCEL_TCG, kernelPath: '/k', initrdPath: '/i', uuid: 'uuid-b' });
    // No created-disks record: nothing is this node's to delete.
    expect(svc.createdImages('b')).toEqual([]);
    expect(svc.createdImages('nobody')).toEqual([]);
  });

  it('refuses the feed of an unknown VM; forget() drops spec, feed and migrating mark', async () => {
    const vms = fakeVms(['c']);
    const svc = new VmService(vms, quiet);
    cleanups.push(() => svc.close());
    expect(() => svc.guest('nobody')).toThrow(NotFoundError);
    svc.record('c', VmSpec.fromPartial({ name: 'c', memoryMib: 128 }), []);
    const feed = svc.guest('c');
    expect(svc.feed('c')).toBe(feed);
    svc.migrating.set('c', 'run-1');
    expect(() => svc.migrating.refuseIfMigrating('c')).toThrow(/run-1/);
    svc.restartFeed('c');
    expect(svc.feed('c')).not.toBe(feed);
    svc.forget('c');
    expect(svc.spec('c')).toBeUndefined();
    expect(svc.migrating.has('c')).toBe(false);
    expect(svc.guestSummary('c')).toBeUndefined();
  });
});
