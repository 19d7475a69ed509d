import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FailedPreconditionError } from '../../../services/shared/errors.js';
import { guestImageFiles } from '../../../services/shared/guest/image.js';
import { installGuestImage } from '../../../stress/image/build.js';

let dir: string | undefined;
afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

describe('guest-image folder', () => {
  it('refuses an empty folder with FAILED_PRECONDITION naming the folder and the command that builds it', () => {
    dir = mkdtempSync(join(tmpdir(), 'migd-guest-'));
    const err = (() => {
      try {
        guestImageFiles(dir);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(FailedPreconditionError);
    expect((err as FailedPreconditionError).reason).toBe('NO_GUEST_IMAGE');
    expect((err as Error).message).toContain(join(dir, 'vmlinux'));
    expect((err as Error).message).toContain(`node dist/stress/image/cli.js --install ${dir}`);
  });

  it('refuses a dangling link, and reads what installGuestImage copied or linked', async () => {
    dir = mkdtempSync(join(tmpdir(), 'migd-guest-'));
    const built = { kernel: join(dir, 'k'), initrd: join(dir, 'i') };
    writeFileSync(built.kernel, 'kernel');
    writeFileSync(built.initrd, 'initrd');
    const linked = join(dir, 'linked');
    await installGuestImage(built, linked, { link: true });
    expect(guestImageFiles(linked)).toEqual({ kernel: join(linked, 'vmlinux'), initrd: join(linked, 'initrd.cpio') });
    const copied = join(dir, 'copied');
    await installGuestImage(built, copied);
    rmSync(built.kernel);
    expect(guestImageFiles(copied).kernel).toBe(join(copied, 'vmlinux'));
    expect(() => guestImageFiles(linked)).toThrow(/vmlinux is missing/);
    const dangling = join(dir, 'dangling');
    await installGuestImage({ kernel: join(dir, 'nope'), initrd: built.initrd }, dangling, { link: true });
    expect(() => guestImageFiles(dangling)).toThrow(FailedPreconditionError);
  });
});
