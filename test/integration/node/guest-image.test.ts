import { mkdtempSync, rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError } from '../../../services/shared/errors.js';
import { VmState } from '../../../services/shared/gen/migd/v1/common.js';
import { ensureGuestImage, installGuestImage } from '../../../stress/image/build.js';
import { guestSpec, startNodeCluster, type NodeCluster } from '../../helpers/node-cluster.js';

// The node daemon builds nothing: it boots what its --guest-image folder holds, and says which
// command fills that folder when it is empty.
describe('node daemon guest image', () => {
  let c: NodeCluster;
  let folder: string;
  beforeAll(async () => {
    folder = mkdtempSync('/tmp/migd-guest-');
    c = await startNodeCluster(['a'], { guestImage: folder });
  });
  afterAll(async () => {
    await c?.close();
    if (folder) rmSync(folder, { recursive: true, force: true });
  });

  it('refuses a VM with FAILED_PRECONDITION naming the build command, then boots it once the image is installed', async () => {
    const a = c.clients['a']!;
    const err = await a.createVm({ spec: guestSpec('g1') }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FailedPreconditionError);
    expect((err as FailedPreconditionError).reason).toBe('NO_GUEST_IMAGE');
    expect((err as Error).message).toContain(`node dist/stress/image/cli.js --install ${folder}`);
    expect((await a.listVms({})).vms).toHaveLength(0);

    await installGuestImage(await ensureGuestImage(), folder, { link: true });
    const { vm } = await a.createVm({ spec: guestSpec('g1') });
    expect(vm?.state).toBe(VmState.VM_STATE_RUNNING);
    await a.destroyVm({ name: 'g1' });
  });
});
