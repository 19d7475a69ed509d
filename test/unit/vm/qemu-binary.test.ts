import { describe, expect, it } from 'vitest';
import { DependencyError } from '../../../services/shared/errors.js';
import {
  assertQemuFitFor,
  findQemuBinary,
  parseQemuVersion,
  probeQemuBinary,
  type QemuBinary,
} from '../../../services/node/vm/qemu-binary.js';

const V10 = 'QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\n';
const V72 = 'QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)\nCopyright (c) 2003-2022 Fabrice Bellard\n';

const bin = (version: string): QemuBinary => ({ path: '/usr/bin/qemu-system-x86_64', version: parseQemuVersion(version) });

describe('parseQemuVersion', () => {
  it('reads Debian backports 10.0.2', () => {
    expect(parseQemuVersion(V10)).toEqual({ major: 10, minor: 0, micro: 2, package: 'Debian 1:10.0.2+ds-2+deb13u1~bpo12+1' });
  });
  it('reads bookworm 7.2.22 and an upstream build without package string', () => {
    expect(parseQemuVersion(V72)).toMatchObject({ major: 7, minor: 2, micro: 22 });
    expect(parseQemuVersion('QEMU emulator version 9.1.0\n')).toEqual({ major: 9, minor: 1, micro: 0, package: '' });
    expect(parseQemuVersion('QEMU emulator version 9.2\n')).toMatchObject({ major: 9, minor: 2, micro: 0 });
  });
  it('refuses text without a version', () => {
    expect(() => parseQemuVersion('bash: qemu: command not found')).toThrow(DependencyError);
  });
});

describe('assertQemuFitFor', () => {
  it('refuses QEMU 7.2 for TCG, naming the version and the fix', () => {
    let err: unknown;
    try {
      assertQemuFitFor(bin(V72), 'tcg');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DependencyError);
    const msg = (err as Error).message;
    expect(msg).toMatch(/QEMU 7\.2\.22 \(Debian 1:7\.2\+dfsg-7\+deb12u18\) is older than 9\.1/);
    expect(msg).toMatch(/corrupts TCG guests/);
    expect(msg).toMatch(/apt-get install -y -t bookworm-backports qemu-system-x86/);
    expect((err as DependencyError).dependency).toBe('/usr/bin/qemu-system-x86_64');
    expect((err as DependencyError).code).toBe('FAILED_PRECONDITION');
  });
  it('refuses 9.0.x for TCG but accepts 9.1.0 and 10.0.2', () => {
    expect(() => assertQemuFitFor(bin('QEMU emulator version 9.0.4'), 'tcg')).toThrow(/older than 9\.1/);
    expect(() => assertQemuFitFor(bin('QEMU emulator version 9.1.0'), 'tcg')).not.toThrow();
    expect(() => assertQemuFitFor(bin(V10), 'tcg')).not.toThrow();
  });
  it('does not apply the TCG rule to KVM guests', () => {
    expect(() => assertQemuFitFor(bin(V72), 'kvm')).not.toThrow();
  });
});

describe('findQemuBinary / probeQemuBinary', () => {
  const only =
    (...present: string[]) =>
    (p: string): Promise<boolean> =>
      Promise.resolve(present.includes(p));

  it('searches PATH in order', async () => {
    const env = { PATH: '/opt/qemu/bin::/usr/bin' };
    await expect(findQemuBinary(undefined, env, only('/usr/bin/qemu-system-x86_64'))).resolves.toBe('/usr/bin/qemu-system-x86_64');
    await expect(
      findQemuBinary(undefined, env, only('/usr/bin/qemu-system-x86_64', '/opt/qemu/bin/qemu-system-x86_64')),
    ).resolves.toBe('/opt/qemu/bin/qemu-system-x86_64');
  });

  it('a missing binary is a DependencyError naming it, with the install hint', async () => {
    const err = (await findQemuBinary(undefined, { PATH: '/usr/bin' }, only()).catch((e: unknown) => e)) as DependencyError;
    expect(err).toBeInstanceOf(DependencyError);
    expect(err.dependency).toBe('qemu-system-x86_64');
    expect(err.message).toMatch(/not found in PATH.*bookworm-backports/);
    const abs = (await findQemuBinary('/nope/qemu', {}, only()).catch((e: unknown) => e)) as DependencyError;
    expect(abs.dependency).toBe('/nope/qemu');
  });

  it('reads the version through the injected runner', async () => {
    const q = await probeQemuBinary(undefined, {
      env: { PATH: '/usr/bin' },
      isExecutable: only('/usr/bin/qemu-system-x86_64'),
      run: (file, args) => {
        expect([file, ...args]).toEqual(['/usr/bin/qemu-system-x86_64', '--version']);
        return Promise.resolve(V10);
      },
    });
    expect(q.version.major).toBe(10);
  });

  it('wraps a failing --version in a DependencyError', async () => {
    await expect(
      probeQemuBinary('/usr/bin/qemu-system-x86_64', {
        isExecutable: only('/usr/bin/qemu-system-x86_64'),
        run: () => Promise.reject(new Error('exec format error')),
      }),
    ).rejects.toThrow(/--version failed: exec format error/);
  });
});
