/**
 * Builds (once) and finds (every time after) the test guest: Debian's kernel as an uncompressed
 * PVH vmlinux, and an initramfs whose only program is the static workload /init.
 *
 * Cache layout (default `<repo>/.cache/guest`, or MIGD_CACHE_DIR, or `opts.cacheDir`):
 *   kernel.json                  which kernel is current: { package, version, file }
 *   kernel/<package>_<version>/vmlinux
 *   kernel/<package>_<version>/modules/  the virtio modules (<name>.ko) and modules.json, see modules.ts
 *   init/<hash>/init, initrd.cpio  keyed by the C sources, compiler, flags and module contents
 * Every file is written under a temporary name and renamed into place, so concurrent builders
 * and interrupted builds never leave a half-written image behind.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { access, copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { delimiter, dirname, join, resolve } from 'node:path';

import { DependencyError, throwIfAborted } from '../../services/shared/errors.js';
import { GUEST_INITRD_FILE, GUEST_KERNEL_FILE } from '../../services/shared/guest/image.js';
import { createLogger, type Logger } from '../../services/shared/log.js';
import { cacheDir, repoRoot } from '../../services/shared/paths.js';
import { buildCpio, type CpioEntry } from './cpio.js';
import { findXzStreams, inspectVmlinux, xzDecompressTo } from './kernel.js';
import { GUEST_MODULE_ROOTS, resolveModuleFiles } from './modules.js';

export {
  buildGuestCmdline,
  resolveGuestWorkload,
  type GuestCmdlineOptions,
  type GuestPattern,
  type GuestWorkload,
  type ResolvedGuestWorkload,
} from '../../services/shared/guest/workload.js';

/** Bump when the image layout or build steps change, to invalidate cached initrds. */
const BUILDER_VERSION = 2;
const CFLAGS = ['-static', '-O2', '-pthread', '-s', '-Wall', '-Wextra'];
const C_SOURCES = ['stress.c', 'integrity.c', 'integrity.h', 'guest.h', 'devices.c', 'disk.c'];
const C_UNITS = ['stress.c', 'integrity.c', 'devices.c', 'disk.c'];
/** The meta-package whose dependency names the current kernel. */
const KERNEL_META_PACKAGE = 'linux-image-amd64';

export interface GuestImageOptions {
  /** Cache directory. Default: MIGD_CACHE_DIR, else `<repo>/.cache/guest`. */
  cacheDir?: string;
  /** Directory holding stress.c, integrity.c, integrity.h. Default `<repo>/stress/guest`. */
  sourceDir?: string;
  /**
   * Kernel package to use (e.g. `linux-image-6.1.0-56-amd64`). Default: whatever
   * `linux-image-amd64` depends on, or MIGD_GUEST_KERNEL_PACKAGE.
   */
  kernelPackage?: string;
  /** Re-resolve the kernel package through apt even when a kernel is cached. Default false. */
  refreshKernel?: boolean;
  /** Fall back to a static glibc build with `cc` when musl-gcc is missing. Default true. */
  allowGlibc?: boolean;
  signal?: AbortSignal;
  log?: Logger;
}

export interface GuestImage {
  /** Uncompressed ELF vmlinux with a PVH entry note, for QEMU's `-kernel`. */
  kernel: string;
  /** Uncompressed newc initramfs holding /init, for QEMU's `-initrd`. */
  initrd: string;
  /** The static workload binary inside the initrd (useful for debugging). */
  init: string;
  kernelPackage: string;
  kernelVersion: string;
  /** Kernel modules in the initrd, in load order (virtio, virtio_pci, virtio_blk, virtio_net, …). */
  modules: readonly GuestModule[];
  /** Content hash of the C sources + compiler + flags + modules that produced the initrd. */
  initHash: string;
  /** `musl-gcc` or the glibc compiler used. */
  compiler: string;
  cacheDir: string;
  /** True when nothing had to be built or downloaded. */
  cached: boolean;
}

/** One kernel module carried in the initrd (`/lib/modules/<name>.ko`). */
export interface GuestModule {
  name: string;
  sha256: string;
  depends: readonly string[];
}

/** The module set extracted next to a cached vmlinux. */
export interface GuestModuleSet {
  dir: string;
  modules: readonly GuestModule[];
}

interface ModulesManifest {
  roots: string[];
  modules: GuestModule[];
}

interface KernelManifest {
  package: string;
  version: string;
  /** Relative to the cache dir. */
  file: string;
}

/** The repository root: the nearest ancestor of this module holding stress/guest/stress.c. */
/** `<cache>/guest`, where the cache is MIGD_CACHE_DIR or `<repo>/.cache` (see services/shared/paths.ts). */
export function defaultGuestCacheDir(): string {
  return resolve(cacheDir(), 'guest');
}

/**
 * Ensures the guest kernel and initrd exist in the cache, building what is missing.
 * Fast (a few ms: hashes three small files and stats two) when both are present.
 * @throws DependencyError naming the missing tool or the failed step (`musl-gcc`, `xz`,
 *   `apt-get download`, `dpkg-deb`, the kernel image) — nothing half-built is left behind.
 */
export async function ensureGuestImage(opts: GuestImageOptions = {}): Promise<GuestImage> {
  // The kernel first: the initrd carries its modules (both are cached after the first build).
  const kernel = await ensureGuestKernel(opts);
  const init = await ensureGuestInit(opts, kernel.moduleSet);
  return {
    kernel: kernel.kernel,
    initrd: init.initrd,
    init: init.init,
    kernelPackage: kernel.kernelPackage,
    kernelVersion: kernel.kernelVersion,
    initHash: init.initHash,
    modules: init.modules,
    compiler: init.compiler,
    cacheDir: init.cacheDir,
    cached: kernel.cached && init.cached,
  };
}

/**
 * Puts a built image's kernel and initrd into a node daemon's guest-image folder (`--guest-image`,
 * see services/shared/guest/image.ts): copies by default; symlinks with `link` (local clusters and
 * tests, which share one cache). Each file is replaced atomically. Returns `dir`.
 */
export async function installGuestImage(image: Pick<GuestImage, 'kernel' | 'initrd'>, dir: string, opts: { link?: boolean } = {}): Promise<string> {
  await mkdir(dir, { recursive: true });
  for (const [from, name] of [
    [image.kernel, GUEST_KERNEL_FILE],
    [image.initrd, GUEST_INITRD_FILE],
  ] as const) {
    const target = join(dir, name);
    const tmp = `${target}.tmp-${randomBytes(4).toString('hex')}`;
    try {
      if (opts.link) await symlink(resolve(from), tmp);
      else await copyFile(from, tmp);
      await rename(tmp, target);
    } finally {
      await rm(tmp, { force: true });
    }
  }
  return dir;
}

/**
 * {@link ensureGuestImage}, then a guest-image folder at `dir` linking to it: what a local
 * cluster, the lab or a test hands its node daemons as `--guest-image`.
 */
export async function ensureGuestImageDir(dir: string, opts: GuestImageOptions = {}): Promise<string> {
  return installGuestImage(await ensureGuestImage(opts), dir, { link: true });
}

export type GuestKernel = Pick<GuestImage, 'kernel' | 'kernelPackage' | 'kernelVersion' | 'cacheDir' | 'cached'> & { moduleSet: GuestModuleSet };
export type GuestInit = Pick<GuestImage, 'init' | 'initrd' | 'initHash' | 'modules' | 'compiler' | 'cacheDir' | 'cached'>;

/**
 * The kernel half of {@link ensureGuestImage}: the cached vmlinux, or download + extract it.
 * @throws DependencyError (apt-cache/apt-get/dpkg-deb/tar/xz missing or failing, no PVH vmlinux).
 */
export async function ensureGuestKernel(opts: GuestImageOptions = {}): Promise<GuestKernel> {
  const log = opts.log ?? createLogger('guest-image');
  const cacheDir = resolve(opts.cacheDir ?? defaultGuestCacheDir());
  await mkdir(cacheDir, { recursive: true });
  const k = await ensureKernel(cacheDir, opts, log);
  return { kernel: k.path, kernelPackage: k.manifest.package, kernelVersion: k.manifest.version, cacheDir, cached: k.cached, moduleSet: k.modules };
}

/**
 * The initrd half of {@link ensureGuestImage}: compile the workload and pack it, unless an
 * initrd for the same sources, compiler and flags is cached.
 * @throws DependencyError (sources missing, musl-gcc/cc missing, compile failure).
 */
export async function ensureGuestInit(opts: GuestImageOptions = {}, modules?: GuestModuleSet): Promise<GuestInit> {
  const log = opts.log ?? createLogger('guest-image');
  const cacheDir = resolve(opts.cacheDir ?? defaultGuestCacheDir());
  const sourceDir = resolve(opts.sourceDir ?? join(repoRoot(), 'stress', 'guest'));
  await mkdir(cacheDir, { recursive: true });
  const i = await ensureInit(cacheDir, sourceDir, opts, log, modules);
  return { init: i.init, initrd: i.initrd, initHash: i.hash, modules: modules?.modules ?? [], compiler: i.compiler, cacheDir, cached: i.cached };
}

// ---------------------------------------------------------------------------------- kernel

type KernelResult = { path: string; manifest: KernelManifest; cached: boolean; modules: GuestModuleSet };

async function ensureKernel(cacheDir: string, opts: GuestImageOptions, log: Logger): Promise<KernelResult> {
  const manifestPath = join(cacheDir, 'kernel.json');
  const pinned = opts.kernelPackage ?? (process.env['MIGD_GUEST_KERNEL_PACKAGE'] || undefined);
  const current = await readManifest(manifestPath);
  // A kernel cached before modules were carried gets its modules from a second download.
  const withModules = async (path: string, manifest: KernelManifest): Promise<KernelResult> => {
    const have = await readModules(cacheDir, manifest);
    if (have) return { path, manifest, cached: true, modules: have };
    const work = await mkdtemp(join(cacheDir, '.modules-'));
    try {
      const deb = await downloadPackage(manifest.package, work, opts.signal, log);
      const modules = await extractModules(cacheDir, manifest, deb, work, opts.signal, log);
      return { path, manifest, cached: false, modules };
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  };
  if (current && !opts.refreshKernel && (pinned === undefined || pinned === current.package)) {
    const path = join(cacheDir, current.file);
    if (await isFile(path)) return withModules(path, current);
  }

  const pkg = pinned ?? (await resolveKernelPackage(opts.signal, log));
  if (current && current.package === pkg && (await isFile(join(cacheDir, current.file)))) {
    return withModules(join(cacheDir, current.file), current);
  }
  const work = await mkdtemp(join(cacheDir, '.kernel-'));
  try {
    const deb = await downloadPackage(pkg, work, opts.signal, log);
    const version = debVersion(deb, pkg);
    const dir = join('kernel', `${pkg}_${version}`);
    const file = join(dir, 'vmlinux');
    const path = join(cacheDir, file);
    const manifest: KernelManifest = { package: pkg, version, file };
    if (!(await isFile(path))) {
      await requireTool('dpkg-deb', 'apt-get install dpkg');
      await requireTool('tar', 'apt-get install tar');
      const unpack = join(work, 'root');
      await mkdir(unpack);
      // Only the bzImage: `dpkg -x` would also unpack ~400 MB of modules.
      await run('bash', ['-o', 'pipefail', '-c', 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards "./boot/vmlinuz-*"', '_', deb, unpack], {
        what: 'dpkg-deb --fsys-tarfile | tar (extract /boot/vmlinuz)',
        signal: opts.signal,
      });
      const boot = join(unpack, 'boot');
      const vmlinuz = (await readdir(boot)).find((f) => f.startsWith('vmlinuz-'));
      if (vmlinuz === undefined) throw new DependencyError(pkg, 'package holds no /boot/vmlinuz-*');
      await extractVmlinux(join(boot, vmlinuz), join(work, 'vmlinux'), pkg, opts.signal);
      await mkdir(join(cacheDir, dir), { recursive: true });
      await rename(join(work, 'vmlinux'), path);
      log.info('guest kernel extracted', { package: pkg, version, path });
    }
    const modules = (await readModules(cacheDir, manifest)) ?? (await extractModules(cacheDir, manifest, deb, work, opts.signal, log));
    await writeAtomic(manifestPath, JSON.stringify(manifest, null, 2) + '\n');
    return { path, manifest, cached: false, modules };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

function modulesDir(cacheDir: string, manifest: KernelManifest): string {
  return join(cacheDir, dirname(manifest.file), 'modules');
}

/** The cached module set of `manifest`'s kernel, when complete and for the current roots. */
async function readModules(cacheDir: string, manifest: KernelManifest): Promise<GuestModuleSet | undefined> {
  const dir = modulesDir(cacheDir, manifest);
  try {
    const m = JSON.parse(await readFile(join(dir, 'modules.json'), 'utf8')) as Partial<ModulesManifest>;
    if (!Array.isArray(m.roots) || m.roots.join(',') !== GUEST_MODULE_ROOTS.join(',') || !Array.isArray(m.modules)) return undefined;
    for (const mod of m.modules) if (!(await isFile(join(dir, `${mod.name}.ko`)))) return undefined;
    return { dir, modules: m.modules };
  } catch {
    return undefined;
  }
}

/**
 * Unpacks the package's modules (one pass over its data archive), keeps the closure of
 * GUEST_MODULE_ROOTS under `kernel/<pkg>_<version>/modules/` and returns it.
 * @throws DependencyError when a module or a dependency is missing from the package.
 */
async function extractModules(cacheDir: string, manifest: KernelManifest, deb: string, work: string, signal: AbortSignal | undefined, log: Logger): Promise<GuestModuleSet> {
  await requireTool('dpkg-deb', 'apt-get install dpkg');
  await requireTool('tar', 'apt-get install tar');
  const started = performance.now();
  const unpack = join(work, 'modules-tree');
  await mkdir(unpack, { recursive: true });
  await run('bash', ['-o', 'pipefail', '-c', 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards "./lib/modules/*.ko"', '_', deb, unpack], {
    what: 'dpkg-deb --fsys-tarfile | tar (extract /lib/modules/*.ko)',
    signal,
  });
  let files;
  try {
    files = await resolveModuleFiles(join(unpack, 'lib', 'modules'), GUEST_MODULE_ROOTS);
  } catch (err) {
    throw new DependencyError(manifest.package, (err as Error).message, { cause: err });
  }
  const dir = modulesDir(cacheDir, manifest);
  const staging = join(work, 'modules-out');
  await mkdir(staging, { recursive: true });
  for (const f of files) await copyFile(f.path, join(staging, `${f.name}.ko`));
  const modules: GuestModule[] = files.map((f) => ({ name: f.name, sha256: f.sha256, depends: f.depends }));
  const body: ModulesManifest = { roots: [...GUEST_MODULE_ROOTS], modules };
  await writeFile(join(staging, 'modules.json'), JSON.stringify(body, null, 2) + '\n');
  await rm(dir, { recursive: true, force: true });
  await mkdir(dirname(dir), { recursive: true });
  try {
    await rename(staging, dir);
  } catch (err) {
    // A concurrent builder put the same set in place first: use theirs.
    const theirs = await readModules(cacheDir, manifest);
    if (!theirs) throw err;
    return theirs;
  }
  log.info('guest kernel modules extracted', { package: manifest.package, modules: modules.map((m) => m.name), ms: Math.round(performance.now() - started) });
  return { dir, modules };
}

async function readManifest(path: string): Promise<KernelManifest | undefined> {
  try {
    const m = JSON.parse(await readFile(path, 'utf8')) as Partial<KernelManifest>;
    if (typeof m.package === 'string' && typeof m.version === 'string' && typeof m.file === 'string') {
      return { package: m.package, version: m.version, file: m.file };
    }
  } catch {
    // missing or unreadable: rebuild
  }
  return undefined;
}

/** `apt-cache depends linux-image-amd64` → `linux-image-6.1.0-NN-amd64`; `apt-get update` once if lists are missing. */
async function resolveKernelPackage(signal: AbortSignal | undefined, log: Logger): Promise<string> {
  await requireTool('apt-cache', 'this builder needs a Debian host');
  const lookup = async (): Promise<string | undefined> => {
    const r = await run('apt-cache', ['depends', KERNEL_META_PACKAGE], { what: 'apt-cache depends', signal, allowFailure: true });
    return /Depends:\s*(linux-image-\d\S*)/.exec(r.stdout)?.[1];
  };
  let pkg = await lookup();
  if (pkg === undefined) {
    log.info('apt lists do not name a kernel; running apt-get update');
    await aptUpdate(signal);
    pkg = await lookup();
  }
  if (pkg === undefined) throw new DependencyError(KERNEL_META_PACKAGE, 'apt-cache depends names no linux-image-* package, even after apt-get update');
  return pkg;
}

async function aptUpdate(signal: AbortSignal | undefined): Promise<void> {
  await requireTool('apt-get', 'this builder needs a Debian host');
  await run('apt-get', ['update', '-qq'], { what: 'apt-get update', signal });
}

/** `apt-get download` into `dir` (no system install); retries once after `apt-get update`. */
async function downloadPackage(pkg: string, dir: string, signal: AbortSignal | undefined, log: Logger): Promise<string> {
  await requireTool('apt-get', 'this builder needs a Debian host');
  const attempt = () => run('apt-get', ['download', '-q', pkg], { what: `apt-get download ${pkg}`, cwd: dir, signal, allowFailure: true });
  let r = await attempt();
  if (r.code !== 0) {
    log.info('apt-get download failed; running apt-get update and retrying', { package: pkg, stderr: r.stderr.trim().slice(-300) });
    await aptUpdate(signal);
    r = await attempt();
  }
  const deb = (await readdir(dir)).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('.deb'));
  if (r.code !== 0 || deb === undefined) {
    throw new DependencyError('apt-get download', `failed for ${pkg} (exit ${r.code}): ${r.stderr.trim().slice(-500)}`);
  }
  log.info('kernel package downloaded', { package: pkg, file: deb });
  return join(dir, deb);
}

function debVersion(debPath: string, pkg: string): string {
  const base = debPath.slice(debPath.lastIndexOf('/') + 1);
  const m = /^[^_]+_([^_]+)_[^_]+\.deb$/.exec(base);
  // Debian escapes ':' (epoch) as %3a in file names.
  return m?.[1] !== undefined ? decodeURIComponent(m[1]) : pkg;
}

/**
 * Finds the XZ stream in the bzImage and decompresses it to an ELF vmlinux with a PVH note.
 * @throws DependencyError when no stream decompresses to such an ELF.
 */
export async function extractVmlinux(bzImagePath: string, outFile: string, label: string, signal?: AbortSignal): Promise<void> {
  await requireTool('xz', 'apt-get install xz-utils');
  const image = await readFile(bzImagePath);
  const streams = findXzStreams(image);
  if (streams.length === 0) throw new DependencyError(label, `${bzImagePath} holds no XZ stream (not an XZ-compressed bzImage)`);
  const problems: string[] = [];
  for (const offset of streams.slice(0, 8)) {
    throwIfAborted(signal);
    try {
      await xzDecompressTo(image.subarray(offset), outFile, signal);
    } catch (err) {
      if (err instanceof DependencyError) throw err;
      problems.push(`@${offset}: ${(err as Error).message}`);
      continue;
    }
    const elf = await inspectVmlinux(outFile);
    if (elf.ok && elf.pvh) return;
    problems.push(`@${offset}: ${elf.ok ? 'ELF without a PVH entry note (kernel lacks CONFIG_PVH)' : 'not an x86-64 ELF'}`);
  }
  await rm(outFile, { force: true });
  throw new DependencyError(label, `no XZ stream in ${bzImagePath} yields a PVH vmlinux: ${problems.join('; ')}`);
}

// ------------------------------------------------------------------------------------ init

async function ensureInit(
  cacheDir: string,
  sourceDir: string,
  opts: GuestImageOptions,
  log: Logger,
  modules: GuestModuleSet | undefined,
): Promise<{ init: string; initrd: string; hash: string; compiler: string; cached: boolean }> {
  const compiler = await pickCompiler(opts.allowGlibc ?? true, log);
  const h = createHash('sha256');
  h.update(`builder=${BUILDER_VERSION}\0cc=${compiler.name}\0flags=${CFLAGS.join(' ')}\0`);
  for (const m of modules?.modules ?? []) h.update(`module=${m.name}:${m.sha256}\0`);
  for (const f of C_SOURCES) {
    let text: Buffer;
    try {
      text = await readFile(join(sourceDir, f));
    } catch (err) {
      throw new DependencyError(join(sourceDir, f), 'guest workload source missing', { cause: err });
    }
    h.update(`${f}\0${text.length}\0`).update(text);
  }
  const hash = h.digest('hex').slice(0, 16);
  const dir = join(cacheDir, 'init', hash);
  const init = join(dir, 'init');
  const initrd = join(dir, 'initrd.cpio');
  if ((await isFile(init)) && (await isFile(initrd))) return { init, initrd, hash, compiler: compiler.name, cached: true };

  await mkdir(dir, { recursive: true });
  const tmpBin = `${init}.tmp-${randomBytes(4).toString('hex')}`;
  try {
    await run(compiler.path, [...compiler.extraFlags, ...CFLAGS, '-o', tmpBin, ...C_UNITS.map((f) => join(sourceDir, f))], {
      what: `${compiler.name} (compiling the guest workload)`,
      signal: opts.signal,
    });
    const binary = await readFile(tmpBin);
    const cpio = buildCpio([
      { kind: 'dir', path: 'dev' },
      { kind: 'chardev', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
      { kind: 'dir', path: 'proc', mode: 0o555 },
      { kind: 'dir', path: 'sys', mode: 0o555 },
      { kind: 'dir', path: 'tmp', mode: 0o1777 },
      { kind: 'file', path: 'init', data: binary, mode: 0o755 },
      ...(await moduleEntries(modules)),
    ]);
    await rename(tmpBin, init);
    await writeAtomic(initrd, cpio);
  } finally {
    await rm(tmpBin, { force: true });
  }
  log.info('guest initrd built', { hash, compiler: compiler.name, initrd });
  return { init, initrd, hash, compiler: compiler.name, cached: false };
}

/** `/lib/modules/<name>.ko` for each module and `load.order` (dependencies first) for /init. */
async function moduleEntries(modules: GuestModuleSet | undefined): Promise<CpioEntry[]> {
  if (!modules || modules.modules.length === 0) return [];
  const entries: CpioEntry[] = [
    { kind: 'dir', path: 'lib' },
    { kind: 'dir', path: 'lib/modules' },
  ];
  for (const m of modules.modules) {
    const data = await readFile(join(modules.dir, `${m.name}.ko`));
    if (createHash('sha256').update(data).digest('hex') !== m.sha256) {
      throw new DependencyError(join(modules.dir, `${m.name}.ko`), 'cached module changed since it was extracted (remove the modules folder to extract it again)');
    }
    entries.push({ kind: 'file', path: `lib/modules/${m.name}.ko`, data, mode: 0o644 });
  }
  entries.push({ kind: 'file', path: 'lib/modules/load.order', data: Buffer.from(modules.modules.map((m) => `${m.name}.ko\n`).join('')), mode: 0o644 });
  return entries;
}

interface Compiler {
  name: string;
  path: string;
  extraFlags: string[];
}

async function pickCompiler(allowGlibc: boolean, log: Logger): Promise<Compiler> {
  const musl = await findExecutable('musl-gcc');
  if (musl) return { name: 'musl-gcc', path: musl, extraFlags: [] };
  if (allowGlibc) {
    for (const name of ['cc', 'gcc']) {
      const path = await findExecutable(name);
      if (path) {
        log.warn('musl-gcc not found (apt-get install musl-tools); building the guest /init with glibc static', { compiler: name });
        return { name: `${name}-glibc-static`, path, extraFlags: [] };
      }
    }
  }
  throw new DependencyError('musl-gcc', `not found on PATH (apt-get install musl-tools)${allowGlibc ? ', and no cc/gcc for a static glibc build either' : ''}`);
}

// --------------------------------------------------------------------------------- helpers

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

async function writeAtomic(path: string, data: string | Buffer): Promise<void> {
  const tmp = `${path}.tmp-${randomBytes(4).toString('hex')}`;
  try {
    await writeFile(tmp, data);
    await rename(tmp, path);
  } finally {
    await rm(tmp, { force: true });
  }
}

async function findExecutable(name: string): Promise<string | undefined> {
  for (const dir of (process.env['PATH'] ?? '/usr/bin:/bin').split(delimiter)) {
    if (dir === '') continue;
    const p = join(dir, name);
    try {
      await access(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

async function requireTool(name: string, hint: string): Promise<void> {
  if ((await findExecutable(name)) === undefined) throw new DependencyError(name, `not found on PATH (${hint})`);
}

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion; a non-zero exit throws DependencyError naming `what`. */
function run(
  cmd: string,
  args: readonly string[],
  o: { what: string; cwd?: string; signal?: AbortSignal | undefined; allowFailure?: boolean },
): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { cwd: o.cwd, signal: o.signal, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      if (stdout.length < 1 << 20) stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      if (stderr.length < 1 << 16) stderr += d.toString();
    });
    child.on('error', (err: NodeJS.ErrnoException) => {
      reject(err.code === 'ENOENT' ? new DependencyError(cmd, 'not found on PATH', { cause: err }) : err);
    });
    child.on('close', (code) => {
      const r = { code: code ?? -1, stdout, stderr };
      if (r.code !== 0 && !o.allowFailure) {
        reject(new DependencyError(o.what, `failed (exit ${r.code}): ${stderr.trim().slice(-800)}`));
      } else {
        resolvePromise(r);
      }
    });
  });
}
