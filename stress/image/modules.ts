/**
 * The kernel modules a real VM's devices need, taken from the same Debian kernel package as the
 * vmlinux: Debian builds virtio, virtio_pci, virtio_blk, virtio_net and virtio_scsi as modules
 * (=m), so a guest with a disk and a NIC needs them in its initramfs, where the static /init loads
 * them with finit_module(2) in the order of `load.order` (stress/guest/devices.c).
 *
 * Dependencies: the package ships no modules.dep (its postinst runs depmod), so the order comes
 * from each module's own `.modinfo` section, `depends=a,b` — the field depmod itself reads.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * What the guest's devices need; dependencies (virtio, virtio_ring, virtio_pci_modern_dev,
 * virtio_pci_legacy_dev, net_failover, failover, scsi_mod, scsi_common, t10-pi, …) follow.
 */
export const GUEST_MODULE_ROOTS: readonly string[] = Object.freeze(['virtio_pci', 'virtio_blk', 'virtio_net', 'virtio_scsi', 'sd_mod']);

/** The kernel treats `-` and `_` in module names alike. */
export function moduleKey(name: string): string {
  return name.replace(/-/g, '_');
}

/**
 * The `key=value` strings of an ELF64 module's `.modinfo` section, e.g. { depends: ['virtio'] }.
 * @throws Error when `ko` is not a little-endian ELF64 file or has no `.modinfo` section.
 */
export function readModinfo(ko: Buffer): Map<string, string[]> {
  if (ko.length < 64 || ko.readUInt32BE(0) !== 0x7f454c46 || ko[4] !== 2 || ko[5] !== 1) throw new Error('not a little-endian ELF64 file');
  const shoff = Number(ko.readBigUInt64LE(0x28));
  const shentsize = ko.readUInt16LE(0x3a);
  const shnum = ko.readUInt16LE(0x3c);
  const shstrndx = ko.readUInt16LE(0x3e);
  const section = (i: number): { name: number; offset: number; size: number } => {
    const at = shoff + i * shentsize;
    if (at + 64 > ko.length) throw new Error('section header beyond the end of the file');
    return { name: ko.readUInt32LE(at), offset: Number(ko.readBigUInt64LE(at + 0x18)), size: Number(ko.readBigUInt64LE(at + 0x20)) };
  };
  const names = section(shstrndx);
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    const nameStart = names.offset + s.name;
    const name = ko.toString('latin1', nameStart, ko.indexOf(0, nameStart));
    if (name !== '.modinfo') continue;
    const info = new Map<string, string[]>();
    for (const entry of ko.toString('latin1', s.offset, s.offset + s.size).split('\0')) {
      const eq = entry.indexOf('=');
      if (eq <= 0) continue;
      const key = entry.slice(0, eq);
      info.set(key, [...(info.get(key) ?? []), entry.slice(eq + 1)]);
    }
    return info;
  }
  throw new Error('no .modinfo section');
}

/** A module's dependencies from its modinfo (`depends=` is one comma-separated value). */
export function moduleDepends(info: Map<string, string[]>): string[] {
  return (info.get('depends') ?? []).flatMap((d) => d.split(',')).filter((d) => d !== '');
}

/**
 * The load order of `roots` and everything they depend on: each module after its dependencies,
 * otherwise in the order first reached (deterministic).
 * @throws Error naming a dependency no module provides, or a dependency cycle.
 */
export function moduleLoadOrder(roots: readonly string[], dependsOf: (name: string) => readonly string[] | undefined): string[] {
  const order: string[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const visit = (name: string, path: readonly string[]): void => {
    const key = moduleKey(name);
    if (done.has(key)) return;
    if (visiting.has(key)) throw new Error(`module dependency cycle: ${[...path, name].join(' -> ')}`);
    const deps = dependsOf(key);
    if (deps === undefined) throw new Error(path.length ? `module ${path.at(-1)} depends on ${name}, which the kernel package does not have` : `the kernel package has no module ${name}`);
    visiting.add(key);
    for (const d of deps) visit(d, [...path, name]);
    visiting.delete(key);
    done.add(key);
    order.push(key);
  };
  for (const r of roots) visit(r, []);
  return order;
}

export interface ModuleFile {
  /** Normalised name (`_`), also the file name `<name>.ko` in the initramfs. */
  name: string;
  path: string;
  sha256: string;
  depends: string[];
}

/**
 * Finds every `*.ko` under `tree` (an unpacked /lib/modules/<version>), then the closure of
 * `roots`, reading only the modules it needs.
 * @throws Error for a missing module or dependency.
 */
export async function resolveModuleFiles(tree: string, roots: readonly string[]): Promise<ModuleFile[]> {
  const byName = new Map<string, string>();
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.name.endsWith('.ko')) byName.set(moduleKey(e.name.slice(0, -3)), p);
    }
  };
  await walk(tree);
  const files = new Map<string, ModuleFile>();
  // Read lazily while resolving: each module's bytes are needed for its modinfo and its hash.
  const cache = new Map<string, { data: Buffer; depends: string[] }>();
  const load = async (key: string): Promise<{ data: Buffer; depends: string[] } | undefined> => {
    const path = byName.get(key);
    if (path === undefined) return undefined;
    let m = cache.get(key);
    if (!m) {
      const data = await readFile(path);
      m = { data, depends: moduleDepends(readModinfo(data)).map(moduleKey) };
      cache.set(key, m);
    }
    return m;
  };
  // Breadth-first over the closure so every module's deps are loaded before ordering.
  const queue = roots.map(moduleKey);
  for (let i = 0; i < queue.length; i++) {
    const key = queue[i] ?? '';
    const m = await load(key);
    if (m) for (const d of m.depends) if (!queue.includes(d)) queue.push(d);
  }
  const order = moduleLoadOrder(roots, (key) => cache.get(key)?.depends);
  for (const key of order) {
    const m = cache.get(key);
    const path = byName.get(key);
    if (!m || path === undefined) throw new Error(`module ${key} vanished while resolving`);
    files.set(key, { name: key, path, sha256: createHash('sha256').update(m.data).digest('hex'), depends: m.depends });
  }
  return order.map((k) => files.get(k) as ModuleFile);
}
