/**
 * Accelerator choice. `auto` picks KVM only when KVM can run a stock Linux guest: /dev/kvm must be
 * usable, the CPU must have hardware virtualization (vmx/svm), and /dev/kvm must not be PVM.
 * PVM (module `kvm_pvm`, a paravirtualized KVM for hosts without vmx/svm) exposes /dev/kvm but
 * hangs a stock kernel right after "Booting from ROM" (FACTS.md) — on such a host `auto` is TCG.
 */
import { DependencyError } from '../../shared/errors.js';
import { hostFs, type HostFs } from '../host/fs.js';

export type AccelRequest = 'kvm' | 'tcg' | 'auto';
export type Accel = 'kvm' | 'tcg';

export interface KvmProbe {
  /** /dev/kvm exists. */
  readonly devKvm: boolean;
  /** /dev/kvm can be opened read-write by this process. */
  readonly devKvmUsable: boolean;
  /** The KVM behind /dev/kvm is PVM (`/sys/module/kvm_pvm` exists). */
  readonly pvm: boolean;
  /** Hardware virtualization flag of the CPU, from /proc/cpuinfo. */
  readonly cpuVirt: 'vmx' | 'svm' | undefined;
  /** KVM can boot a stock Linux kernel here. */
  readonly stockGuestCapable: boolean;
  /** One line explaining the verdict. */
  readonly reason: string;
}

/** Reads the facts behind the KVM verdict from `fs` (the real host by default). */
export async function probeKvm(fs: HostFs = hostFs()): Promise<KvmProbe> {
  const [devKvm, devKvmUsable, pvm, cpuinfo] = await Promise.all([
    fs.exists('/dev/kvm'),
    fs.canReadWrite('/dev/kvm'),
    fs.exists('/sys/module/kvm_pvm'),
    fs.readFile('/proc/cpuinfo').catch(() => ''),
  ]);
  const cpuVirt = cpuVirtFlag(cpuinfo);
  let reason: string;
  if (!devKvm) reason = '/dev/kvm does not exist';
  else if (!devKvmUsable) reason = '/dev/kvm is not readable and writable by this process';
  else if (pvm) reason = '/dev/kvm is PVM (kvm_pvm loaded): stock Linux kernels hang under it';
  else if (cpuVirt === undefined) reason = 'the CPU has no vmx/svm flag (no hardware virtualization)';
  else reason = `/dev/kvm usable with ${cpuVirt}`;
  return {
    devKvm,
    devKvmUsable,
    pvm,
    cpuVirt,
    stockGuestCapable: devKvm && devKvmUsable && !pvm && cpuVirt !== undefined,
    reason,
  };
}

/** The vmx/svm flag on the first `flags` line of /proc/cpuinfo, if any. */
export function cpuVirtFlag(cpuinfo: string): 'vmx' | 'svm' | undefined {
  const line = cpuinfo.split('\n').find((l) => /^flags\s*:/.test(l));
  if (line === undefined) return undefined;
  const flags = new Set(line.slice(line.indexOf(':') + 1).trim().split(/\s+/));
  if (flags.has('vmx')) return 'vmx';
  if (flags.has('svm')) return 'svm';
  return undefined;
}

export interface AccelDecision {
  readonly requested: AccelRequest;
  readonly accel: Accel;
  /** Why; for `kvm` on a PVM host, a warning worth logging. */
  readonly reason: string;
  readonly kvm: KvmProbe;
}

/**
 * Resolves the requested accelerator on this host. An explicit `kvm` is honoured even on PVM (a
 * PVM-aware guest kernel can run there); the reason then carries the warning.
 * @throws DependencyError naming /dev/kvm when `kvm` is requested and /dev/kvm is missing or unusable.
 */
export async function resolveAccel(requested: AccelRequest, fs: HostFs = hostFs()): Promise<AccelDecision> {
  const kvm = await probeKvm(fs);
  switch (requested) {
    case 'tcg':
      return { requested, accel: 'tcg', reason: 'tcg requested', kvm };
    case 'kvm':
      if (!kvm.devKvm || !kvm.devKvmUsable) {
        throw new DependencyError('/dev/kvm', `accel=kvm requested but ${kvm.reason}; use accel=tcg or auto`);
      }
      return {
        requested,
        accel: 'kvm',
        reason: kvm.stockGuestCapable ? kvm.reason : `kvm requested; warning: ${kvm.reason}`,
        kvm,
      };
    case 'auto':
      return kvm.stockGuestCapable
        ? { requested, accel: 'kvm', reason: `auto: ${kvm.reason}`, kvm }
        : { requested, accel: 'tcg', reason: `auto: TCG because ${kvm.reason}`, kvm };
  }
}
