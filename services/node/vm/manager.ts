/**
 * `VmManager`: the QEMU processes of one node, their state folders, and reattaching to them after a
 * node-daemon restart.
 *
 * Layout (dirs 0700, files and sockets 0600 via the spawner's umask):
 *
 *   <stateDir>/manager.lock            pid + start time of the manager owning the dir
 *   <stateDir>/vms/<name>/vm.json      VmRecord: spec, pid, QEMU start time, role, exit
 *                         qmp.sock     QMP (one client at a time: this manager)
 *                         serial.sock  console (one client at a time: this manager, fanned out)
 *                         serial.log   every console byte, also while nobody reads
 *                         qemu.pid     QEMU's own pidfile
 *                         qemu.log     QEMU's stdout/stderr
 *                         ram          guest RAM file (memoryBackend 'file' only)
 *
 * QEMU outlives the manager: `close()` only detaches (QMP and serial connections); QEMU is killed
 * only by `stop()`/`destroy()`. A new manager on the same dir reattaches to every QEMU still
 * running — identified by pid *and* start time (/proc/PID/stat field 22), so a reused pid is never
 * mistaken for the VM — and marks the dead ones exited, removing their stale sockets.
 */
import { constants } from 'node:fs';
import { access, chmod, mkdir, readFile, readdir, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import {
  AlreadyExistsError,
  DependencyError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
} from '../../shared/errors.js';
import { createLogger, type Logger } from '../../shared/log.js';
import { abortError, sleep } from '../qmp/abort.js';
import { QmpClient, type QmpRunstate } from '../qmp/client.js';
import { unixSocketTransport, type QmpTransport } from '../qmp/transport.js';
import { hostFs, type HostFs } from '../host/fs.js';
import { ipTapBackend, tapName, type TapBackend } from '../host/taps.js';
import { isSameLiveProcess, processCpu, readMemInfo, type ProcessCpu } from '../host/info.js';
import { resolveAccel } from './accel.js';
import { buildQemuArgs, vmPaths, type VmPaths } from './cmdline.js';
import { detachedSpawner, procTable, type ProcessExit, type ProcessSpawner, type ProcessTable } from './process.js';
import { assertQemuFitFor, formatQemuVersion, probeQemuBinary, type QemuBinary } from './qemu-binary.js';
import { SerialConsole, type SerialSubscription } from './serial.js';
import { normalizeVmSpec, validateVmName, type VmSpec, type VmSpecInput } from './spec.js';

/** What the VM is doing, from migd's point of view. Set by the manager and migration drivers. */
export type VmRole = 'running' | 'incoming' | 'migrating';
/** Whether its QEMU process is alive. */
export type VmStatus = 'running' | 'exited';

export interface VmExit {
  readonly at: string;
  /** `stopped`, `exited`, `killed`, `dead at reattach`, or QEMU's SHUTDOWN reason (`guest-shutdown`…). */
  readonly reason: string;
  readonly code: number | null;
  readonly signal: string | null;
}

/** vm.json. */
export interface VmRecord {
  readonly format: 1;
  readonly spec: VmSpec;
  role: VmRole;
  /** 0 while QEMU is being started (see `qemu.pid` then). */
  pid: number;
  /** /proc/PID/stat field 22 of QEMU: with `pid`, identifies the process. */
  startTimeTicks: number;
  readonly createdAt: string;
  readonly qemu: { readonly path: string; readonly version: string };
  readonly argv: readonly string[];
  readonly accelReason: string;
  exited?: VmExit;
}

export interface VmInfo {
  readonly name: string;
  readonly spec: VmSpec;
  readonly role: VmRole;
  readonly status: VmStatus;
  readonly pid: number;
  readonly startTimeTicks: number;
  readonly createdAt: string;
  readonly paths: VmPaths;
  /** QEMU's full argv (binary first). */
  readonly argv: readonly string[];
  readonly qmpState: QmpRunstate;
  /** True when this manager instance started the process; false when it reattached. */
  readonly adopted: boolean;
  readonly exited: VmExit | undefined;
}

export interface VmManagerOptions {
  /** Root of the node's state; `vms/` lives under it. Must not contain a comma; keep it short (socket paths ≤ 107 bytes). */
  readonly stateDir: string;
  /** QEMU binary, absolute or looked up in PATH; default `qemu-system-x86_64`. */
  readonly qemuBinary?: string;
  /** An already probed binary (e.g. from `probeHostCapabilities()`); skips the `--version` probe. */
  readonly qemu?: QemuBinary;
  /** Host view for accel detection, /proc/meminfo and /proc/PID/stat; default the real root. */
  readonly fs?: HostFs;
  readonly spawner?: ProcessSpawner;
  readonly processes?: ProcessTable;
  /** QMP transport per socket path; default a unix socket. */
  readonly qmpTransport?: (socketPath: string) => QmpTransport;
  readonly now?: () => Date;
  readonly logger?: Logger;
  /** Spawn → QMP ready deadline; default 15 000 ms. */
  readonly startTimeoutMs?: number;
  /** Graceful `quit` → SIGKILL delay in stop(); default 10 000 ms. */
  readonly stopTimeoutMs?: number;
  /** QMP/serial connect deadline when reattaching; default 5 000 ms. */
  readonly reattachTimeoutMs?: number;
  /** Observes every QMP command's latency (metrics). */
  readonly onQmpCommand?: (command: string, seconds: number, outcome: 'ok' | 'error' | 'timeout') => void;
  /** Network name → bridge of this host (`--network NAME=BRIDGE`); VMs' cards may use only these. Default none. */
  readonly networks?: ReadonlyMap<string, string>;
  /** Creates and removes the cards' taps; default `ip` in this network namespace. */
  readonly taps?: TapBackend;
}

export interface CreateVmOptions {
  /** Start as a migration destination (`-incoming defer`), role `incoming`. */
  readonly incoming?: boolean;
  /** Start with vCPUs stopped (`-S`). */
  readonly paused?: boolean;
  readonly signal?: AbortSignal;
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
}

class VmEntry {
  status: VmStatus = 'running';
  serial: SerialConsole | undefined;
  stopping: Promise<void> | undefined;
  lastShutdownReason: string | undefined;
  childExit: Promise<ProcessExit> | undefined;
  readonly exit: Deferred<VmExit>;

  constructor(
    readonly record: VmRecord,
    readonly paths: VmPaths,
    readonly qmp: QmpClient,
    readonly adopted: boolean,
  ) {
    let res!: (v: VmExit) => void;
    this.exit = { promise: new Promise<VmExit>((r) => (res = r)), resolve: (v) => res(v) };
  }
}

const openStateDirs = new Set<string>();
const PAGE_SIZE = 4096;
const MiB = 1024 * 1024;

/**
 * The VMs of one node. Create with `VmManager.open()`; all methods throw `MigdError`s.
 */
export class VmManager {
  private readonly entries = new Map<string, VmEntry>();
  private readonly creating = new Set<string>();
  /** RAM of VMs being created right now: admitted but not in `entries` yet. */
  private inflightMiB = 0;
  private closed = false;
  private qemuCache: Promise<QemuBinary> | undefined;
  private readonly log: Logger;
  private readonly fs: HostFs;
  private readonly spawner: ProcessSpawner;
  private readonly procs: ProcessTable;
  private readonly transportFor: (socketPath: string) => QmpTransport;
  private readonly now: () => Date;
  private readonly startTimeoutMs: number;
  private readonly stopTimeoutMs: number;
  private readonly reattachTimeoutMs: number;
  private readonly onQmpCommand: VmManagerOptions['onQmpCommand'];
  private readonly networks: ReadonlyMap<string, string>;
  private readonly taps: TapBackend;
  /** MACs of VMs being created right now (not in `entries` yet). */
  private readonly creatingMacs = new Set<string>();
  readonly stateDir: string;

  private constructor(options: VmManagerOptions) {
    this.stateDir = resolve(options.stateDir);
    this.log = options.logger ?? createLogger('vm-manager');
    this.fs = options.fs ?? hostFs();
    this.spawner = options.spawner ?? detachedSpawner;
    this.procs = options.processes ?? procTable(this.fs);
    this.transportFor = options.qmpTransport ?? unixSocketTransport;
    this.now = options.now ?? (() => new Date());
    this.startTimeoutMs = options.startTimeoutMs ?? 15_000;
    this.stopTimeoutMs = options.stopTimeoutMs ?? 10_000;
    this.reattachTimeoutMs = options.reattachTimeoutMs ?? 5_000;
    this.onQmpCommand = options.onQmpCommand;
    this.networks = options.networks ?? new Map();
    this.taps = options.taps ?? ipTapBackend;
    this.qemuBinaryName = options.qemuBinary;
    if (options.qemu !== undefined) this.qemuCache = Promise.resolve(options.qemu);
  }
  private readonly qemuBinaryName: string | undefined;

  /**
   * Opens the state dir (creating it), takes its lock, and reattaches to the VMs recorded there:
   * live QEMUs get their QMP and serial connections back; dead ones are marked exited and cleaned.
   * @throws InvalidArgumentError when stateDir contains a comma.
   * @throws FailedPreconditionError when another live manager (this or another process) holds the dir.
   */
  static async open(options: VmManagerOptions): Promise<VmManager> {
    const m = new VmManager(options);
    if (m.stateDir.includes(',')) throw new InvalidArgumentError(`stateDir ${m.stateDir} must not contain a comma`);
    await mkdir(join(m.stateDir, 'vms'), { recursive: true, mode: 0o700 });
    await m.lock();
    try {
      await m.reattachAll();
    } catch (err) {
      await m.close();
      throw err;
    }
    return m;
  }

  private get lockPath(): string {
    return join(this.stateDir, 'manager.lock');
  }

  private async lock(): Promise<void> {
    if (openStateDirs.has(this.stateDir)) {
      throw new FailedPreconditionError(`state dir ${this.stateDir} is already open in this process; close() that VmManager first`, {
        reason: 'STATE_DIR_LOCKED',
      });
    }
    const me = await this.procs.stat(process.pid);
    const body = JSON.stringify({ pid: process.pid, startTimeTicks: me?.startTimeTicks ?? 0 });
    try {
      await writeFile(this.lockPath, body, { flag: 'wx', mode: 0o600 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = await readFile(this.lockPath, 'utf8')
        .then((t) => JSON.parse(t) as { pid: number; startTimeTicks: number })
        .catch(() => undefined);
      if (holder !== undefined && holder.pid !== process.pid && isSameLiveProcess(await this.procs.stat(holder.pid), holder.startTimeTicks)) {
        throw new FailedPreconditionError(`state dir ${this.stateDir} is in use by the node daemon with pid ${holder.pid}`, {
          reason: 'STATE_DIR_LOCKED',
        });
      }
      this.log.info('taking over stale state dir lock', { holder });
      await writeFile(this.lockPath, body, { mode: 0o600 });
    }
    openStateDirs.add(this.stateDir);
  }

  private qemu(): Promise<QemuBinary> {
    this.qemuCache ??= probeQemuBinary(this.qemuBinaryName);
    this.qemuCache.catch(() => (this.qemuCache = undefined));
    return this.qemuCache;
  }

  /**
   * The QEMU binary and version VMs are started with.
   * @throws DependencyError when QEMU is missing.
   */
  qemuBinary(): Promise<QemuBinary> {
    return this.qemu();
  }

  private checkOpen(): void {
    if (this.closed) throw new FailedPreconditionError('VmManager is closed', { reason: 'MANAGER_CLOSED' });
  }

  private entry(name: string): VmEntry {
    const e = this.entries.get(name);
    if (e === undefined) throw new NotFoundError(`vm ${name} not found`, { reason: 'VM_NOT_FOUND' });
    return e;
  }

  private running(name: string): VmEntry {
    const e = this.entry(name);
    if (e.status !== 'running') throw new FailedPreconditionError(`vm ${name} is not running (${e.record.exited?.reason ?? 'exited'})`, { reason: 'VM_NOT_RUNNING' });
    return e;
  }

  /**
   * Starts a VM and returns once its QMP is connected. `incoming` starts a migration destination
   * (`-incoming defer`) — pass the source's `VmSpec` as input so the device models match.
   * @throws InvalidArgumentError for a bad spec (names the field).
   * @throws AlreadyExistsError when a VM of that name exists (also an exited one: destroy it first).
   * @throws DependencyError when QEMU, the kernel or the initrd is missing, QEMU is too old for TCG,
   *   or accel=kvm is requested without a usable /dev/kvm.
   * @throws ResourceExhaustedError when the host lacks the memory.
   * @throws FailedPreconditionError when QEMU exits or does not answer during start-up (message
   *   carries the tail of qemu.log).
   * @throws CancelledError when `signal` fires (the half-started QEMU is killed).
   */
  async create(input: VmSpecInput, options: CreateVmOptions = {}): Promise<VmInfo> {
    this.checkOpen();
    const name = validateVmName(input.name);
    const paths = vmPaths(this.stateDir, name);
    if (this.entries.has(name) || this.creating.has(name) || (await exists(paths.dir))) {
      throw new AlreadyExistsError(`vm ${name} already exists`, { reason: 'VM_EXISTS' });
    }
    this.creating.add(name);
    try {
      return await this.doCreate(input, paths, options);
    } finally {
      this.creating.delete(name);
    }
  }

  private async doCreate(input: VmSpecInput, paths: VmPaths, options: CreateVmOptions): Promise<VmInfo> {
    const decision = await resolveAccel(input.accel ?? 'auto', this.fs);
    const spec = normalizeVmSpec(input, decision.accel, { networks: this.networks, tap: (i) => tapName(this.stateDir, input.name, i) });
    this.checkMacsFree(spec);
    if (!decision.kvm.stockGuestCapable && decision.accel === 'kvm') this.log.warn('accel=kvm on a host where stock kernels hang', { reason: decision.reason });
    const qemu = await this.qemu();
    assertQemuFitFor(qemu, spec.accel);
    for (const [what, p] of [
      ['kernel', spec.kernel],
      ['initrd', spec.initrd],
    ] as const) {
      if (p !== undefined && !(await readable(p))) throw new DependencyError(what, `${p} does not exist or is not readable`);
    }
    // Reserve first, then check: concurrent creates see each other's reservation.
    this.inflightMiB += spec.memoryMiB;
    for (const n of spec.nics) this.creatingMacs.add(n.mac);
    try {
      await this.admit(spec);
      return await this.spawnVm(spec, decision.reason, qemu, paths, options);
    } finally {
      this.inflightMiB -= spec.memoryMiB;
      for (const n of spec.nics) this.creatingMacs.delete(n.mac);
    }
  }

  /**
   * No two VMs of this node share a MAC (a stopped VM keeps its cards: it may be started again).
   * @throws InvalidArgumentError (reason MAC_IN_USE).
   */
  private checkMacsFree(spec: VmSpec, self?: string): void {
    for (const n of spec.nics) {
      const owner = this.creatingMacs.has(n.mac) ? '(being created)' : [...this.entries.values()].find((e) => e.record.spec.name !== self && (e.record.spec.nics ?? []).some((o) => o.mac === n.mac))?.record.spec.name;
      if (owner !== undefined) throw new InvalidArgumentError(`MAC ${n.mac} is already used by vm ${owner} on this node`, { reason: 'MAC_IN_USE' });
    }
  }

  private async removeTaps(spec: VmSpec): Promise<void> {
    await Promise.all((spec.nics ?? []).map((n) => this.taps.remove(n.tap)));
  }

  private async spawnVm(spec: VmSpec, accelReason: string, qemu: QemuBinary, paths: VmPaths, options: CreateVmOptions, restartOf?: VmEntry): Promise<VmInfo> {
    const signal = options.signal;
    if (signal?.aborted) throw abortError(signal);

    const argv = [qemu.path, ...buildQemuArgs(spec, paths, { incoming: options.incoming === true, paused: options.paused === true })];
    if (restartOf === undefined) await mkdir(paths.dir, { mode: 0o700 });
    const record: VmRecord = {
      format: 1,
      spec,
      role: options.incoming === true ? 'incoming' : 'running',
      pid: 0,
      startTimeTicks: 0,
      createdAt: this.now().toISOString(),
      qemu: { path: qemu.path, version: formatQemuVersion(qemu.version) },
      argv,
      accelReason,
    };
    const t0 = performance.now();
    let pid = 0;
    let entry: VmEntry | undefined;
    try {
      // Recorded before the spawn: a daemon dying right after spawning finds the pid via qemu.pid.
      await writeRecord(paths, record);
      for (const n of spec.nics) await this.taps.add(n.tap, n.bridge);
      const child = await this.spawner.spawn(qemu.path, argv.slice(1), { logPath: paths.qemuLog });
      pid = child.pid;
      const stat = await this.procs.stat(pid);
      record.pid = pid;
      record.startTimeTicks = stat?.startTimeTicks ?? 0;
      await writeRecord(paths, record);
      entry = new VmEntry(record, paths, this.newQmp(spec.name, paths), false);
      entry.childExit = child.exited;

      // Ready = QMP negotiated. Abort the wait as soon as QEMU exits (bad option, missing file…).
      const ctl = new AbortController();
      const onAbort = (): void => ctl.abort(signal?.reason);
      signal?.addEventListener('abort', onAbort, { once: true });
      const timer = setTimeout(() => ctl.abort(new FailedPreconditionError(`QEMU for vm ${spec.name} not ready within ${this.startTimeoutMs} ms`)), this.startTimeoutMs);
      void child.exited.then((exit) => ctl.abort(new QemuExitedEarly(exit)));
      try {
        await entry.qmp.connect({ signal: ctl.signal, timeoutMs: this.startTimeoutMs, retryIntervalMs: 10 });
        entry.serial = new SerialConsole(paths.serialSocket, this.log.child({ vm: spec.name }));
        await entry.serial.start({ signal: ctl.signal, timeoutMs: this.startTimeoutMs });
        // QEMU creates sockets 0777 & ~umask (0700 here); only the owner needs read+write to connect.
        await Promise.all([paths.qmpSocket, paths.serialSocket].map((p) => chmod(p, 0o600)));
      } catch (err) {
        if (signal?.aborted) throw abortError(signal);
        const reason: unknown = ctl.signal.aborted ? ctl.signal.reason : err;
        const tail = await tailFile(paths.qemuLog, 2000);
        if (reason instanceof QemuExitedEarly) {
          throw new FailedPreconditionError(
            `QEMU for vm ${spec.name} exited during start-up (${describeExit(reason.exit)}): ${tail || '(qemu.log empty)'}`,
            { reason: 'QEMU_START_FAILED' },
          );
        }
        throw new FailedPreconditionError(
          `QEMU for vm ${spec.name} did not become ready: ${(reason as Error).message}${tail ? `; qemu.log: ${tail}` : ''}`,
          { reason: 'QEMU_START_FAILED', cause: reason },
        );
      } finally {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      }
      this.entries.set(spec.name, entry);
      this.watch(entry);
      this.log.info('vm started', {
        vm: spec.name,
        pid,
        accel: spec.accel,
        role: record.role,
        readyMs: Math.round(performance.now() - t0),
      });
      return this.info(entry);
    } catch (err) {
      // Leave nothing behind: a half-started VM is killed and its folder removed.
      await entry?.qmp.disconnect();
      await entry?.serial?.close();
      if (pid !== 0) {
        this.procs.kill(pid, 'SIGKILL');
        await this.waitDead(pid, record.startTimeTicks || undefined, 5000, entry?.childExit);
      }
      await this.removeTaps(spec);
      // A restarted VM keeps its folder and its record as it was (stopped); a new one leaves none.
      if (restartOf !== undefined) await writeRecord(paths, restartOf.record).catch(() => undefined);
      else await rm(paths.dir, { recursive: true, force: true });
      throw err;
    }
  }

  private newQmp(name: string, paths: VmPaths): QmpClient {
    return new QmpClient(this.transportFor(paths.qmpSocket), { name, logger: this.log, ...(this.onQmpCommand ? { onCommand: this.onQmpCommand } : {}) });
  }

  /** Refuses a VM whose RAM does not fit in what the host has left after the VMs already promised RAM. */
  private async admit(spec: VmSpec): Promise<void> {
    const mem = await readMemInfo(this.fs);
    let promised = (this.inflightMiB - spec.memoryMiB) * MiB;
    for (const e of this.entries.values()) {
      if (e.status !== 'running') continue;
      const stat = await this.procs.stat(e.record.pid);
      const rss = (stat?.rssPages ?? 0) * PAGE_SIZE;
      // Anonymous guest RAM is touched lazily: what a VM has not touched yet is still "available".
      promised += Math.max(0, e.record.spec.memoryMiB * MiB - rss);
    }
    const free = mem.availableBytes - promised;
    if (spec.memoryMiB * MiB > free) {
      throw new ResourceExhaustedError(
        `vm ${spec.name} needs ${spec.memoryMiB} MiB but the host has ${Math.max(0, Math.floor(free / MiB))} MiB available (${Math.floor(mem.availableBytes / MiB)} MiB free, ${Math.floor(promised / MiB)} MiB promised to running VMs)`,
        { reason: 'HOST_MEMORY' },
      );
    }
  }

  /** Every VM this manager knows, running or exited, by name. */
  list(): VmInfo[] {
    return [...this.entries.values()].map((e) => this.info(e)).sort((a, b) => a.name.localeCompare(b.name));
  }

  /**
   * @throws NotFoundError when there is no such VM.
   */
  get(name: string): VmInfo {
    return this.info(this.entry(name));
  }

  /**
   * The QMP client of a running VM (connected unless QEMU stopped answering; see `ensureQmp`). Do
   * not `disconnect()` it: the manager owns the connection.
   * @throws NotFoundError, FailedPreconditionError when the VM is not running.
   */
  qmp(name: string): QmpClient {
    return this.running(name).qmp;
  }

  /**
   * The QMP client, reconnected first if its session was lost while QEMU lives on.
   * @throws NotFoundError, FailedPreconditionError, QmpConnectError.
   */
  async ensureQmp(name: string, options: { signal?: AbortSignal } = {}): Promise<QmpClient> {
    this.checkOpen();
    const e = this.running(name);
    if (e.qmp.state === 'idle') await this.attachQmp(e, this.reattachTimeoutMs, options.signal);
    return e.qmp;
  }

  /**
   * Records what the VM is doing (migration drivers: `migrating`, back to `running`, …) in vm.json.
   * @throws NotFoundError.
   */
  async setRole(name: string, role: VmRole): Promise<VmInfo> {
    this.checkOpen();
    const e = this.entry(name);
    e.record.role = role;
    await writeRecord(e.paths, e.record);
    return this.info(e);
  }

  /** CPU time QEMU used so far (utime+stime). @throws NotFoundError, FailedPreconditionError. */
  async cpu(name: string): Promise<ProcessCpu> {
    const e = this.running(name);
    const cpu = await processCpu(e.record.pid, this.fs);
    if (cpu === undefined) throw new FailedPreconditionError(`vm ${name}: process ${e.record.pid} is gone`);
    return cpu;
  }

  /** Resolves when the VM's QEMU has exited (at once for an exited VM). @throws NotFoundError. */
  whenExited(name: string): Promise<VmExit> {
    return this.entry(name).exit.promise;
  }

  /**
   * Live console output from now on, as an async iterator of byte chunks (bounded: a reader more
   * than 4 MiB behind is failed with ResourceExhaustedError). Ends when QEMU exits or the manager
   * closes. For output before now, read `serialHistory()`.
   * @throws NotFoundError, FailedPreconditionError when not running or the console is not connected.
   */
  serial(name: string, options: { signal?: AbortSignal } = {}): SerialSubscription {
    const e = this.running(name);
    if (e.serial === undefined || !e.serial.connected) {
      throw new FailedPreconditionError(`vm ${name}: serial console not connected`, { reason: 'SERIAL_UNAVAILABLE' });
    }
    return e.serial.subscribe(options);
  }

  /** Everything the console printed so far (serial.log), also for exited VMs. @throws NotFoundError. */
  async serialHistory(name: string): Promise<Buffer> {
    const e = this.entry(name);
    return readFile(e.paths.serialLog).catch(() => Buffer.alloc(0));
  }

  /** Types into the console. @throws NotFoundError, FailedPreconditionError. */
  async serialWrite(name: string, data: Uint8Array | string): Promise<void> {
    const e = this.running(name);
    if (e.serial === undefined) throw new FailedPreconditionError(`vm ${name}: serial console not connected`);
    await e.serial.write(data);
  }

  /**
   * Stops QEMU: QMP `quit`, then SIGKILL when it is still alive after `timeoutMs` (default from the
   * options). Keeps the VM's folder (vm.json, logs) for inspection; `destroy()` removes it.
   * No-op for an exited VM.
   * @throws NotFoundError; FailedPreconditionError after close().
   */
  async stop(name: string, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<VmExit> {
    this.checkOpen();
    const e = this.entry(name);
    if (e.status === 'exited') return e.exit.promise;
    e.stopping ??= this.doStop(e, options.timeoutMs ?? this.stopTimeoutMs, options.signal);
    await e.stopping;
    return e.exit.promise;
  }

  private async doStop(e: VmEntry, timeoutMs: number, signal: AbortSignal | undefined): Promise<void> {
    const { pid, startTimeTicks } = e.record;
    let how = 'stopped';
    if (e.qmp.state === 'running') {
      await e.qmp.execute('quit', undefined, { timeoutMs: Math.min(timeoutMs, 5000) }).catch(() => undefined);
    } else {
      this.procs.kill(pid, 'SIGTERM');
    }
    if (!(await this.waitDead(pid, startTimeTicks, timeoutMs, e.childExit, signal))) {
      this.log.warn('QEMU ignored quit; killing', { vm: e.record.spec.name, pid });
      this.procs.kill(pid, 'SIGKILL');
      how = 'killed';
      await this.waitDead(pid, startTimeTicks, 10_000, e.childExit);
    }
    await this.markExited(e, { reason: how, code: null, signal: how === 'killed' ? 'SIGKILL' : null });
  }

  /**
   * Starts a stopped VM again, with the device model it had (its recorded spec: same disks, MACs,
   * UUID). No-op for a running VM. On failure the VM stays as it was: stopped, folder kept.
   * @throws NotFoundError; FailedPreconditionError (VM_BUSY while it is being started, an incoming
   *   copy, QEMU_START_FAILED); ResourceExhaustedError when the host lacks the memory;
   *   InvalidArgumentError (MAC_IN_USE) when another VM here took one of its MACs meanwhile.
   */
  async start(name: string, options: { signal?: AbortSignal } = {}): Promise<VmInfo> {
    this.checkOpen();
    const e = this.entry(name);
    if (e.status !== 'exited') return this.info(e);
    if (e.record.role === 'incoming') throw new FailedPreconditionError(`vm ${name} is the stopped incoming copy of a migration; it cannot be started`, { reason: 'VM_INCOMING' });
    if (this.creating.has(name)) throw new FailedPreconditionError(`vm ${name} is being started`, { reason: 'VM_BUSY' });
    this.creating.add(name);
    const spec = e.record.spec;
    try {
      this.checkMacsFree(spec, name);
      const qemu = await this.qemu();
      this.inflightMiB += spec.memoryMiB;
      try {
        await this.admit(spec);
        return await this.spawnVm(spec, e.record.accelReason, qemu, e.paths, options.signal ? { signal: options.signal } : {}, e);
      } finally {
        this.inflightMiB -= spec.memoryMiB;
      }
    } finally {
      this.creating.delete(name);
    }
  }

  /**
   * Stops the VM (if running) and removes its folder.
   * @throws NotFoundError.
   */
  async destroy(name: string, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
    this.checkOpen();
    const e = this.entry(name);
    await this.stop(name, options);
    await this.removeTaps(e.record.spec);
    await rm(e.paths.dir, { recursive: true, force: true });
    if (this.entries.get(name) === e) this.entries.delete(name);
    this.log.info('vm destroyed', { vm: name });
  }

  /**
   * Detaches from every VM (closes QMP and serial connections) and releases the state dir. Never
   * stops QEMU: a later manager reattaches. Idempotent.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(
      [...this.entries.values()].map(async (e) => {
        await e.qmp.disconnect();
        await e.serial?.close();
      }),
    );
    if (openStateDirs.delete(this.stateDir)) await unlink(this.lockPath).catch(() => undefined);
  }

  private info(e: VmEntry): VmInfo {
    const r = e.record;
    return {
      name: r.spec.name,
      spec: r.spec,
      role: r.role,
      status: e.status,
      pid: r.pid,
      startTimeTicks: r.startTimeTicks,
      createdAt: r.createdAt,
      paths: e.paths,
      argv: r.argv,
      qmpState: e.qmp.state,
      adopted: e.adopted,
      exited: r.exited,
    };
  }

  // ── reattach ────────────────────────────────────────────────────────────────────────────────

  private async reattachAll(): Promise<void> {
    const vmsDir = join(this.stateDir, 'vms');
    for (const name of (await readdir(vmsDir)).sort()) {
      try {
        validateVmName(name);
      } catch {
        continue;
      }
      const paths = vmPaths(this.stateDir, name);
      let record: VmRecord;
      try {
        record = JSON.parse(await readFile(paths.record, 'utf8')) as VmRecord;
      } catch (err) {
        this.log.warn('skipping vm folder without a readable vm.json', { vm: name, error: err });
        continue;
      }
      const entry = new VmEntry(record, paths, this.newQmp(name, paths), true);
      this.entries.set(name, entry);
      if (record.exited !== undefined) {
        entry.status = 'exited';
        entry.exit.resolve(record.exited);
        continue;
      }
      if (record.pid === 0) await this.recoverPid(entry);
      const alive = record.pid !== 0 && isSameLiveProcess(await this.procs.stat(record.pid), record.startTimeTicks || undefined);
      if (!alive) {
        this.log.info('vm found dead at reattach', { vm: name, pid: record.pid });
        await this.markExited(entry, { reason: 'dead at reattach', code: null, signal: null });
        continue;
      }
      const t0 = performance.now();
      try {
        await this.attachQmp(entry, this.reattachTimeoutMs);
      } catch (err) {
        this.log.warn('reattach: QMP not reachable; VM kept, retry with ensureQmp()', { vm: name, error: err });
      }
      entry.serial = new SerialConsole(paths.serialSocket, this.log.child({ vm: name }));
      await entry.serial.start({ timeoutMs: this.reattachTimeoutMs }).catch((err: unknown) => {
        this.log.warn('reattach: serial console not reachable', { vm: name, error: err });
        entry.serial = undefined;
      });
      this.watch(entry);
      this.log.info('vm reattached', { vm: name, pid: record.pid, ms: Math.round(performance.now() - t0) });
    }
  }

  /** A record written before its spawn finished: adopt the QEMU named by its own pidfile, if it is ours. */
  private async recoverPid(e: VmEntry): Promise<void> {
    const pid = Number((await readFile(e.paths.pidFile, 'utf8').catch(() => '')).trim());
    if (!Number.isInteger(pid) || pid <= 0) return;
    const stat = await this.procs.stat(pid);
    const cmdline = await this.fs.readFile(`/proc/${pid}/cmdline`).catch(() => '');
    if (stat === undefined || !cmdline.split('\0').some((a) => a.includes(e.paths.qmpSocket))) return;
    e.record.pid = pid;
    e.record.startTimeTicks = stat.startTimeTicks;
    await writeRecord(e.paths, e.record);
  }

  private async attachQmp(e: VmEntry, timeoutMs: number, signal?: AbortSignal): Promise<void> {
    await e.qmp.connect({ timeoutMs, ...(signal ? { signal } : {}) });
  }

  // ── exit detection ──────────────────────────────────────────────────────────────────────────

  /**
   * Watches a running VM. Our own children report their exit directly; for every VM, an unexpected
   * end of the QMP session means QEMU is exiting (it closes QMP only then), confirmed by the pid.
   * QMP's SHUTDOWN event supplies the reason (guest-shutdown, host-qmp-quit…).
   */
  private watch(e: VmEntry): void {
    void e.childExit?.then((exit) => {
      if (e.stopping === undefined && !this.closed) void this.markExited(e, { reason: e.lastShutdownReason ?? 'exited', code: exit.code, signal: exit.signal });
    });
    const loop = async (): Promise<void> => {
      while (!this.closed && e.status === 'running') {
        if (e.qmp.state === 'running') {
          void this.trackShutdown(e);
          const end = await e.qmp.whenDisconnected();
          if (end.expected || this.closed || e.stopping !== undefined) return;
        } else if (e.qmp.state === 'idle') {
          // Not connected (reattach failed): fall through to the liveness check.
        }
        const dead = await this.waitDead(e.record.pid, e.record.startTimeTicks || undefined, 3000, e.childExit);
        if (this.closed || e.stopping !== undefined) return;
        if (dead) {
          // Our own child: its exit status is known (and arrives at once), so report that.
          const exit = e.childExit ? await e.childExit : { code: null, signal: null };
          await this.markExited(e, { reason: e.lastShutdownReason ?? 'exited', ...exit });
          return;
        }
        // QEMU lives but QMP dropped (or never came back): reconnect, gently.
        await this.attachQmp(e, this.reattachTimeoutMs).catch(() => sleep(1000));
      }
    };
    void loop().catch((err: unknown) => this.log.error('vm watcher failed', { vm: e.record.spec.name, error: err }));
  }

  private async trackShutdown(e: VmEntry): Promise<void> {
    try {
      for await (const ev of e.qmp.events({ names: ['SHUTDOWN'] })) {
        const reason = ev.data?.['reason'];
        if (typeof reason === 'string') e.lastShutdownReason = reason;
      }
    } catch {
      // session ended
    }
  }

  /** Resolves true once `pid` is gone (or a zombie, or another process), false after `timeoutMs`. */
  private async waitDead(
    pid: number,
    startTimeTicks: number | undefined,
    timeoutMs: number,
    childExit?: Promise<ProcessExit>,
    signal?: AbortSignal,
  ): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    let exited = false;
    void childExit?.then(() => (exited = true));
    for (;;) {
      if (exited || !isSameLiveProcess(await this.procs.stat(pid), startTimeTicks)) return true;
      if (Date.now() >= deadline) return false;
      await sleep(25, signal);
    }
  }

  private async markExited(e: VmEntry, how: { reason: string; code: number | null; signal: string | null }): Promise<void> {
    // After close() the dir may belong to a newer manager: leave its files alone.
    if (e.status === 'exited' || this.closed) return;
    e.status = 'exited';
    const exit: VmExit = { at: this.now().toISOString(), ...how };
    e.record.exited = exit;
    await e.qmp.disconnect();
    await e.serial?.close();
    // Stale runtime files: sockets nobody serves, a pidfile naming a dead pid, a RAM file.
    await Promise.all(
      [e.paths.qmpSocket, e.paths.serialSocket, e.paths.pidFile, e.paths.ramFile].map((p) => unlink(p).catch(() => undefined)),
    );
    // Taps outlive QEMU (they are persistent): a card nobody serves is removed with its VM's process.
    await this.removeTaps(e.record.spec);
    if (await exists(e.paths.dir)) await writeRecord(e.paths, e.record).catch(() => undefined);
    e.exit.resolve(exit);
    this.log.info('vm exited', { vm: e.record.spec.name, pid: e.record.pid, ...how });
  }
}

class QemuExitedEarly extends Error {
  constructor(readonly exit: ProcessExit) {
    super('QEMU exited during start-up');
  }
}

function describeExit(exit: ProcessExit): string {
  return exit.signal !== null ? `signal ${exit.signal}` : `exit code ${String(exit.code)}`;
}

async function exists(p: string): Promise<boolean> {
  return access(p, constants.F_OK).then(
    () => true,
    () => false,
  );
}

async function readable(p: string): Promise<boolean> {
  return access(p, constants.R_OK).then(
    () => true,
    () => false,
  );
}

async function tailFile(p: string, bytes: number): Promise<string> {
  const text = await readFile(p, 'utf8').catch(() => '');
  return text.slice(-bytes).trim();
}

/** vm.json, replaced atomically (write + rename) so a crash never leaves half a record. */
async function writeRecord(paths: VmPaths, record: VmRecord): Promise<void> {
  const tmp = `${paths.record}.tmp`;
  await writeFile(tmp, JSON.stringify(record, null, 2) + '\n', { mode: 0o600 });
  await rename(tmp, paths.record);
}
