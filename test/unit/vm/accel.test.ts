/**
 * accel=auto against fake hosts: a directory tree standing in for /, with /dev/kvm, /sys/module and
 * /proc/cpuinfo as each host type has them.
 */
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DependencyError } from '../../../services/shared/errors.js';
import { hostFs } from '../../../services/node/host/fs.js';
import { cpuVirtFlag, probeKvm, resolveAccel } from '../../../services/node/vm/accel.js';

const roots: string[] = [];
afterEach(async () => {
  await Promise.all(roots.splice(0).map((r) => rm(r, { recursive: true, force: true })));
});

const FLAGS_PVM_HOST = 'fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch';

async function fakeHost(files: Record<string, string>): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'migd-fakehost-'));
  roots.push(root);
  for (const [p, content] of Object.entries(files)) {
    await mkdir(dirname(join(root, p)), { recursive: true });
    if (p.endsWith('/')) await mkdir(join(root, p), { recursive: true });
    else await writeFile(join(root, p), content);
  }
  return root;
}

const cpuinfo = (flags: string): string =>
  `processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: ${flags}\nbugs\t\t: spectre_v1\n\nprocessor\t: 1\nflags\t\t: ${flags}\n`;

describe('accel detection', () => {
  it('auto → TCG on a PVM host (/dev/kvm present, kvm_pvm loaded, no vmx/svm)', async () => {
    const root = await fakeHost({
      '/dev/kvm': '',
      '/sys/module/kvm_pvm/parameters/': '',
      '/sys/module/kvm/': '',
      '/proc/cpuinfo': cpuinfo(FLAGS_PVM_HOST),
    });
    const d = await resolveAccel('auto', hostFs(root));
    expect(d.accel).toBe('tcg');
    expect(d.kvm).toMatchObject({ devKvm: true, devKvmUsable: true, pvm: true, cpuVirt: undefined, stockGuestCapable: false });
    expect(d.reason).toMatch(/PVM/);
  });

  it('auto → KVM on a vmx host with /dev/kvm', async () => {
    const root = await fakeHost({
      '/dev/kvm': '',
      '/sys/module/kvm_intel/': '',
      '/proc/cpuinfo': cpuinfo(FLAGS_PVM_HOST + ' vmx ept vpid'),
    });
    const d = await resolveAccel('auto', hostFs(root));
    expect(d.accel).toBe('kvm');
    expect(d.kvm.cpuVirt).toBe('vmx');
    expect(d.reason).toBe('auto: /dev/kvm usable with vmx');
  });

  it('auto → KVM on an svm host', async () => {
    const root = await fakeHost({ '/dev/kvm': '', '/proc/cpuinfo': cpuinfo('fpu svm npt') });
    expect((await resolveAccel('auto', hostFs(root))).accel).toBe('kvm');
  });

  it('auto → TCG when the CPU has vmx but there is no /dev/kvm', async () => {
    const root = await fakeHost({ '/proc/cpuinfo': cpuinfo('fpu vmx') });
    const d = await resolveAccel('auto', hostFs(root));
    expect(d.accel).toBe('tcg');
    expect(d.reason).toMatch(/\/dev\/kvm does not exist/);
  });

  it('auto → TCG when PVM is loaded even with vmx (PVM still hangs stock kernels)', async () => {
    const root = await fakeHost({ '/dev/kvm': '', '/sys/module/kvm_pvm/': '', '/proc/cpuinfo': cpuinfo('vmx') });
    expect((await resolveAccel('auto', hostFs(root))).accel).toBe('tcg');
  });

  it('explicit kvm without /dev/kvm is a DependencyError naming /dev/kvm', async () => {
    const root = await fakeHost({ '/proc/cpuinfo': cpuinfo('vmx') });
    const err = (await resolveAccel('kvm', hostFs(root)).catch((e: unknown) => e)) as DependencyError;
    expect(err).toBeInstanceOf(DependencyError);
    expect(err.dependency).toBe('/dev/kvm');
  });

  it('explicit kvm on PVM is honoured, with a warning in the reason', async () => {
    const root = await fakeHost({ '/dev/kvm': '', '/sys/module/kvm_pvm/': '', '/proc/cpuinfo': cpuinfo(FLAGS_PVM_HOST) });
    const d = await resolveAccel('kvm', hostFs(root));
    expect(d.accel).toBe('kvm');
    expect(d.reason).toMatch(/warning: .*PVM/);
  });

  it('explicit tcg is always tcg', async () => {
    const root = await fakeHost({});
    expect((await resolveAccel('tcg', hostFs(root))).accel).toBe('tcg');
  });

  it('treats an unreadable /dev/kvm as unusable', async () => {
    // Root bypasses file modes, so only meaningful for a non-root test run.
    if (process.getuid?.() === 0) {
      const kvm = await probeKvm(hostFs(await fakeHost({ '/dev/kvm': '' })));
      expect(kvm.devKvmUsable).toBe(true);
      return;
    }
    const root = await fakeHost({ '/dev/kvm': '', '/proc/cpuinfo': cpuinfo('vmx') });
    await chmod(join(root, 'dev/kvm'), 0o000);
    expect((await probeKvm(hostFs(root))).devKvmUsable).toBe(false);
  });

  it('cpuVirtFlag reads the flags line only', () => {
    expect(cpuVirtFlag('model name\t: vmx-lookalike CPU\nflags\t\t: fpu sse\n')).toBeUndefined();
    expect(cpuVirtFlag('flags\t\t: fpu svm\n')).toBe('svm');
    expect(cpuVirtFlag('')).toBeUndefined();
  });
});
