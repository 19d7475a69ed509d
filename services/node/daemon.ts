/**
 * The node daemon: owns the QEMU processes of its host (through the VmManager), keeps VM specs,
 * guest feeds and the "is migrating" state in the VmService (vm/service.ts), drives migrations
 * (MigrationManager) and serves the NodeService API over gRPC with mTLS, health and reflection; the
 * handlers get narrow parts (NodeServiceParts), not the daemon. QEMU outlives the daemon: a restarted daemon reattaches to its VMs.
 */
import { existsSync } from 'node:fs';
import { realpath, rm, rmdir } from 'node:fs/promises';
import { dirname, join, sep } from 'node:path';
import { ConfigError, FailedPreconditionError, InvalidArgumentError, ResourceExhaustedError } from '../shared/errors.js';
import { Accel, BootSource, DiskAio, DiskBus, DiskCache, DiskFormat, StorageMode, VmState, type DiskSpec, type DiskUsage, type HostInfo, type VmInfo as ProtoVmInfo, VmSpec as ProtoVmSpec, WorkloadPattern } from '../shared/gen/migd/v1/common.js';
import { NodeServiceService, type DiskTransfer, type MigrationEndpoint } from '../shared/gen/migd/v1/node.js';
import { GUEST_INITRD_FILE, GUEST_KERNEL_FILE, guestImageFiles } from '../shared/guest/image.js';
import { buildGuestCmdline, type GuestPattern } from '../shared/guest/workload.js';
import type { Logger } from '../shared/log.js';
import { createClient } from '../shared/rpc/client.js';
import { RpcServer } from '../shared/rpc/server.js';
import { startMetricsServer, type MetricsServer } from '../shared/metrics/server.js';
import { splitHostPort, type TransportSecurity } from '../shared/rpc/tls.js';
import { nodeIdentity } from '../shared/pki.js';
import type { NodeConfig } from './config.js';
import { probeHostCapabilities, type HostCapabilities } from './host/capabilities.js';
import { readMemInfo } from './host/info.js';
import { MigrationManager } from './migration/manager.js';
import { prepareQemuTlsDir } from './migration/tls.js';
import type { MigratableVm, NodePeer, VmHost } from './migration/types.js';
import { NodeMetrics } from './metrics.js';
import { confinePath, PathRoots } from './host/confine.js';
import { nodeAuthorizer } from './rpc/authz.js';
import { normalizeNics } from '../shared/nics.js';
import { startRegistration, type Registration } from './registration.js';
import { nodeHandlers, type NodeServiceParts } from './rpc/handlers.js';
import { VmManager, type VmInfo } from './vm/manager.js';
import { VmService } from './vm/service.js';
import { DISK_ID_PATTERN, guestDeviceOf, normalizeDisks, validateVmName, type Disk, type DiskInput } from './vm/spec.js';
import { confineDiskPath, confineNewDiskPath, createImage, DiskUsageProbe, fileSystemOf, freeBytes, imageInfo, storageSpace } from './host/disks.js';

/** The node's disk input from a proto DiskSpec, at `path`. */
function diskInputOf(d: DiskSpec, path: string, basePath?: string): DiskInput {
  const cache = { [DiskCache.DISK_CACHE_NONE]: 'none', [DiskCache.DISK_CACHE_WRITETHROUGH]: 'writethrough', [DiskCache.DISK_CACHE_DIRECTSYNC]: 'directsync', [DiskCache.DISK_CACHE_UNSAFE]: 'unsafe' } as Record<number, DiskInput['cache']>;
  const aio = { [DiskAio.DISK_AIO_NATIVE]: 'native', [DiskAio.DISK_AIO_IO_URING]: 'io_uring' } as Record<number, DiskInput['aio']>;
  return {
    id: d.id,
    path,
    format: d.format === DiskFormat.DISK_FORMAT_QCOW2 ? 'qcow2' : 'raw',
    bus: d.bus === DiskBus.DISK_BUS_VIRTIO_SCSI ? 'virtio-scsi' : 'virtio-blk',
    cache: cache[d.cache] ?? 'writeback',
    aio: aio[d.aio] ?? 'threads',
    readOnly: d.readOnly,
    ...(d.serial ? { serial: d.serial } : {}),
    storage: d.storage === StorageMode.STORAGE_MODE_SHARED ? 'shared' : 'local',
    ...(basePath ? { basePath } : {}),
  };
}



const patternNames: Record<number, GuestPattern> = {
  [WorkloadPattern.WORKLOAD_PATTERN_UNSPECIFIED]: 'random',
  [WorkloadPattern.WORKLOAD_PATTERN_RANDOM]: 'random',
  [WorkloadPattern.WORKLOAD_PATTERN_COMPRESSIBLE]: 'compressible',
  [WorkloadPattern.WORKLOAD_PATTERN_HOTCOLD]: 'hotcold',
  [WorkloadPattern.WORKLOAD_PATTERN_IDLE]: 'idle',
};

/** Clients of other node daemons kept open at most (see NodeDaemon.peer). */
const PEER_CLIENTS_MAX = 64;
/** Ceiling of a peer client's reconnect backoff (ms): see peer(). */
const PEER_RECONNECT_BACKOFF_MAX_MS = 1000;

export class NodeDaemon {
  /** Specs, created-image records, guest feeds and the single "is migrating" state of this node's VMs. */
  readonly vmService: VmService;
  private readonly peers = new Map<string, NodePeer & { close(): void }>();
  readonly migrations: MigrationManager;
  private server: RpcServer | undefined;
  private metricsServer: MetricsServer | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private registration: Registration | undefined;
  private readonly pathRoots: readonly PathRoots[];
  private readonly diskUsage = new DiskUsageProbe();
  /** True when QEMU's migration TLS credentials are in place. */
  readonly migrationTls: boolean;

  private constructor(
    readonly config: NodeConfig,
    readonly vms: VmManager,
    readonly caps: HostCapabilities,
    private readonly log: Logger,
    readonly metrics: NodeMetrics,
  ) {
    this.vmService = new VmService(vms, log);
    const supported = new Set(Object.keys(caps.migration.capabilities));
    let tlsDir: string | undefined;
    try {
      tlsDir = prepareQemuTlsDir(config.migrationTlsDir, config.stateDir, config.tlsIdentity);
    } catch (err) {
      log.warn('migration TLS unavailable', { err: (err as Error).message });
    }
    this.migrationTls = tlsDir !== undefined;
    this.migrations = new MigrationManager({
      nodeId: config.nodeId,
      host: this.vmHost(),
      supportedCapabilities: supported,
      migrationAddress: config.migrationAddress,
      managementAddress: config.advertise,
      stateDir: config.stateDir,
      peer: (ep) => this.peer(ep),
      log: log.child({ component: 'migration' }),
      sourceOptions: { progressIntervalMs: config.progressIntervalMs, postcopyStallMs: config.postcopyStallMs },
      onFinished: (info) => metrics.migrationFinished(info),
      ...(tlsDir ? { tlsDir } : {}),
      requireTls: config.requireMigrationTls,
    });
    // The guest-image folder usually holds links to where the image was built: the folders they
    // point into count as image roots too (the admin put the links there).
    const imageFiles = [GUEST_KERNEL_FILE, GUEST_INITRD_FILE].map((f) => join(config.guestImageDir, f));
    this.pathRoots = [new PathRoots('image', config.imageRoots, imageFiles), new PathRoots('storage', config.storageRoots)];
  }

  /**
   * Probes the host, reattaches to running VMs and starts serving.
   * @throws DependencyError (QEMU missing), ConfigError
   */
  static async start(config: NodeConfig, log: Logger): Promise<NodeDaemon> {
    const caps = await probeHostCapabilities({ qemuBinary: config.qemuBinary });
    const metrics = new NodeMetrics();
    const vms = await VmManager.open({ stateDir: config.stateDir, qemu: caps.qemu, logger: log.child({ component: 'vm' }), onQmpCommand: metrics.onQmpCommand, networks: new Map(Object.entries(config.networks)) });
    const d = new NodeDaemon(config, vms, caps, log, metrics);
    if (config.requireMigrationTls && !d.migrationTls) {
      d.migrations.close();
      await vms.close();
      throw new ConfigError('requireMigrationTls', `no migration TLS credentials for ${config.tlsIdentity} in ${config.migrationTlsDir}`);
    }
    d.vmService.attach(vms.list().filter((vm) => vm.status === 'running'));
    // Migrations this node took part in when its daemon stopped: adopt, finish or cancel them
    // (reconciled with QEMU and the peer) before serving, so no request sees a half-known state.
    await d.migrations.reconcile();
    for (const vm of vms.list()) {
      // A VM marked migrating that no adopted migration claims: the mark outlived its driver.
      if (vm.status === 'running' && vm.role === 'migrating' && !d.vmService.migrating.has(vm.name)) await vms.setRole(vm.name, 'running');
    }
    d.server = new RpcServer({ address: config.listen, security: config.security, log, authorize: nodeAuthorizer(config.coordinatorIdentities, config.nodeId, log) });
    d.server.addService('migd.v1.NodeService', NodeServiceService, nodeHandlers(d.serviceParts(), log));
    await d.server.start();
    if (config.metricsListen) {
      const { host, port } = splitHostPort(config.metricsListen);
      d.metricsServer = await startMetricsServer({ registry: metrics.registry, host, port, logger: log });
    }
    metrics.vmRoles = () => vms.list().flatMap((v) => (v.status === 'running' ? [v.role] : []));
    if (config.coordinator) {
      const vmInfos = async (): Promise<ProtoVmInfo[]> => (await Promise.all(vms.list().map((v) => d.vmInfo(v.name).catch(() => undefined)))).filter((v) => v !== undefined);
      d.registration = startRegistration({ coordinator: config.coordinator, security: config.clientSecurity, heartbeatMs: config.heartbeatMs, hostInfo: () => d.hostInfo(), vms: vmInfos, log: log.child({ component: 'registration' }) });
    }
    log.info('node daemon serving', { nodeId: config.nodeId, listen: config.listen, migrationAddress: config.migrationAddress, qemu: caps.qemu.version, accel: caps.accel.accel, vms: vms.list().length });
    return d;
  }

  get port(): number {
    return this.server?.port ?? 0;
  }

  /**
   * How another node is dialled: it must present its own certificate (`migd-node.<id>`); the
   * shared `migd-node` is accepted only while this node itself still uses the shared identity.
   */
  private peerSecurity(nodeId: string): TransportSecurity {
    const sec = this.config.clientSecurity;
    if (!sec.tls) return sec;
    const { serverName: _shared, ...rest } = sec;
    return { ...rest, serverNames: [nodeIdentity(nodeId), ...(this.config.tlsIdentity === 'migd-node' ? ['migd-node'] : [])] };
  }

  /**
   * A client of another node daemon, cached by node and address. The cache is bounded: the least
   * recently used client beyond PEER_CLIENTS_MAX is closed (after a grace, so a call in flight on
   * it finishes).
   */
  private peer(ep: MigrationEndpoint): NodePeer {
    const key = `${ep.nodeId}\u0000${ep.managementAddress}`;
    let p = this.peers.get(key);
    if (p) this.peers.delete(key); // re-inserted below as the most recently used
    // A peer restarts (an upgrade, a crash): with gRPC's default reconnect backoff (up to 120 s)
    // the channel would fail every call fast, "No connection established", for as long as its
    // backoff lasts after the peer is back (seen: a PrepareIncoming refused seconds after the
    // destination's restart). A 1 s ceiling bounds that window to a second.
    else p = createClient('migd.v1.NodeService', NodeServiceService, ep.managementAddress, { security: this.peerSecurity(ep.nodeId), maxReconnectBackoffMs: PEER_RECONNECT_BACKOFF_MAX_MS });
    this.peers.set(key, p);
    while (this.peers.size > PEER_CLIENTS_MAX) {
      const [oldKey, old] = this.peers.entries().next().value as [string, NodePeer & { close(): void }];
      this.peers.delete(oldKey);
      setTimeout(() => old.close(), 120_000).unref();
    }
    return p;
  }

  /** What the NodeService handlers use of this node: narrow parts, not the daemon's fields. */
  private serviceParts(): NodeServiceParts {
    return {
      config: this.config,
      migrations: this.migrations,
      vms: this.vms,
      hostInfo: () => this.hostInfo(),
      createVm: (spec) => this.createVm(spec),
      vmInfo: (name) => this.vmInfo(name),
      destroyVm: (name, opts) => this.destroyVm(name, opts),
      stopVm: (name) => this.stopVm(name),
      startVm: (name) => this.startVm(name),
      guest: (name) => this.vmService.guest(name),
    };
  }

  /** Host description for GetHostInfo and the coordinator. */
  async hostInfo(): Promise<HostInfo> {
    const [mem, storage] = await Promise.all([readMemInfo(), storageSpace(this.config.storageRoots[0] ?? this.config.stateDir)]);
    const reserved = this.vms.list().filter((v) => v.status === 'running').reduce((a, v) => a + v.spec.memoryMiB * 1024 * 1024, 0);
    return {
      nodeId: this.config.nodeId,
      managementAddress: this.config.advertise,
      migrationAddress: this.config.migrationAddress,
      memoryTotalBytes: mem.totalBytes,
      memoryFreeBytes: Math.max(0, Math.min(mem.availableBytes, mem.totalBytes - reserved)),
      cpus: this.caps.host.cpus,
      qemuVersion: `${this.caps.qemu.version.major}.${this.caps.qemu.version.minor}.${this.caps.qemu.version.micro}`,
      resolvedAccel: this.caps.accel.accel === 'kvm' ? Accel.ACCEL_KVM : Accel.ACCEL_TCG,
      migrationCapabilities: Object.keys(this.caps.migration.capabilities).sort(),
      labels: {},
      machineTypes: ['pc-i440fx-10.0'],
      networks: Object.keys(this.config.networks).sort(),
      // Where planTargets creates the images of LOCAL disks coming in: placement checks it.
      ...(storage ? { storageTotalBytes: storage.totalBytes, storageFreeBytes: storage.freeBytes } : {}),
    };
  }

  /** Proto VmInfo of a VM. */
  async vmInfo(name: string): Promise<ProtoVmInfo> {
    const v = this.vms.get(name);
    const cpu = v.status === 'running' ? await this.vms.cpu(name).catch(() => undefined) : undefined;
    const state = vmStateOf(v);
    return {
      spec: this.vmService.spec(name) ?? ProtoVmSpec.fromPartial({ name, memoryMib: v.spec.memoryMiB, vcpus: v.spec.vcpus, accel: Accel.ACCEL_TCG, machineType: v.spec.machine, uuid: v.spec.uuid }),
      nodeId: this.config.nodeId,
      state,
      pid: v.pid,
      startedAt: new Date(v.createdAt),
      migrationRunId: this.vmService.migrating.runOf(name) ?? '',
      lastGuestPerf: this.vmService.guestSummary(name),
      qemuCpuSeconds: cpu?.totalSeconds ?? 0,
      localDisks: await this.localDiskUsage(name),
    };
  }

  /** What the VM's LOCAL disks occupy here (a disk that cannot be measured is left out, and logged). */
  private async localDiskUsage(name: string): Promise<DiskUsage[]> {
    const out: DiskUsage[] = [];
    for (const d of this.vms.get(name).spec.disks ?? []) {
      if (d.storage !== 'local') continue;
      try {
        out.push({ id: d.id, ...(await this.diskUsage.usage(d.path)) });
      } catch (err) {
        this.diskUsage.forget(d.path);
        this.log.debug('cannot measure a LOCAL disk', { vm: name, disk: d.id, err: (err as Error).message });
      }
    }
    return out;
  }

  /**
   * Starts a VM from a proto spec (kernel and initrd default to the `--guest-image` folder; the
   * workload becomes kernel command-line parameters).
   * @throws InvalidArgumentError, AlreadyExistsError, ResourceExhaustedError, DependencyError,
   *   FailedPreconditionError (NO_GUEST_IMAGE: no kernel given and the guest-image folder is empty)
   */
  async createVm(spec: ProtoVmSpec, incoming = false, targets?: ReadonlyMap<string, string>): Promise<ProtoVmInfo> {
    if (!spec.name) throw new InvalidArgumentError('spec.name is required');
    if (!spec.memoryMib) throw new InvalidArgumentError('spec.memory_mib is required');
    const bootDisk = spec.boot === BootSource.BOOT_SOURCE_DISK;
    if (bootDisk && (spec.kernelPath || spec.initrdPath)) throw new InvalidArgumentError('spec.boot DISK boots the first disk through the firmware: give no kernel_path or initrd_path');
    // Every check that needs no file system first (ids, duplicates, modes): bad input changes nothing.
    const protoDisks = spec.disks ?? [];
    const declared = normalizeDisks(protoDisks.map((d) => diskInputOf(d, d.path)));
    if (bootDisk && declared.length === 0) throw new InvalidArgumentError('spec.boot DISK needs a disk', { reason: 'NO_BOOT_DISK' });
    const diskWorkload = this.diskWorkload(spec, declared);
    // MACs are checked (and generated when missing) before anything starts; the manager then maps
    // each network to this node's bridge and refuses a MAC another VM here uses.
    const nics = normalizeNics(spec.nics ?? []);
    const guestNic = nics.findIndex((n) => n.guestIp);
    // Host paths a caller names stay inside the node's image and storage roots (realpath, regular
    // files only); the node's own guest image needs no check.
    const ownKernel = spec.kernelPath ? await confinePath(spec.kernelPath, 'spec.kernel_path', this.pathRoots, this.log) : undefined;
    const ownInitrd = spec.initrdPath ? await confinePath(spec.initrdPath, 'spec.initrd_path', this.pathRoots, this.log) : undefined;
    const mem = await readMemInfo();
    if (spec.memoryMib * 1024 * 1024 > mem.availableBytes) {
      throw new ResourceExhaustedError(`VM ${spec.name} needs ${spec.memoryMib} MiB but this host has ${Math.floor(mem.availableBytes / 1048576)} MiB free`, { reason: 'INSUFFICIENT_MEMORY' });
    }
    const plan = await this.planDisks(protoDisks, incoming, targets);
    await this.checkCreateSpace(spec.name, plan.create);
    const image = ownKernel || bootDisk ? undefined : guestImageFiles(this.config.guestImageDir);
    const kernel = bootDisk ? undefined : (ownKernel ?? image!.kernel);
    const initrd = bootDisk ? undefined : (ownInitrd ?? image?.initrd);
    const w = spec.workload;
    const append = bootDisk
      ? undefined
      : [
          buildGuestCmdline(
            {
              pattern: patternNames[w?.pattern ?? 0] ?? 'random',
              workers: w?.workers || 1,
              bytesPerWorker: w?.bytesPerWorker || 32 * 1024 * 1024,
              rateBytesPerSec: w?.rateBytesPerSec ?? 0,
              verify: w?.verify ?? true,
              ...(w?.hotBytes ? { hotBytes: w.hotBytes } : {}),
              ...(w?.phaseAfterMs ? { phaseAfterMs: w.phaseAfterMs, phaseRateBytesPerSec: w.phaseRateBytesPerSec } : {}),
            },
            { guestMemoryBytes: spec.memoryMib * 1024 * 1024, ...(diskWorkload ? { extra: [diskWorkload] } : {}) },
          ),
          // The migd guest configures the card given an address (eth<i> in PCI order) and answers a
          // UDP echo on it (what the blackout prober talks to).
          guestNic >= 0 ? `migd.ip=${nics[guestNic]?.guestIp ?? ''}${guestNic > 0 ? ` migd.ifname=eth${guestNic}` : ''}` : '',
          spec.extraCmdline,
        ]
          .filter(Boolean)
          .join(' ');
    const accel = spec.accel === Accel.ACCEL_KVM ? 'kvm' : spec.accel === Accel.ACCEL_TCG ? 'tcg' : 'auto';
    // Images to create are created last, just before QEMU, and removed again if QEMU does not start.
    const created: string[] = [];
    let info;
    try {
      for (const c of plan.create) {
        await createImage(c.path, c.format, c.sizeBytes, c.base);
        created.push(c.path);
      }
      info = await this.vms.create(
        {
          name: spec.name,
          memoryMiB: spec.memoryMib,
          vcpus: spec.vcpus || 1,
          machine: spec.machineType || 'pc-i440fx-10.0',
          accel,
          ...(kernel ? { kernel } : {}),
          ...(initrd ? { initrd } : {}),
          ...(append !== undefined ? { append } : {}),
          ...(spec.uuid ? { uuid: spec.uuid } : {}),
          disks: plan.disks,
          boot: bootDisk ? 'disk' : 'kernel',
          nics: nics.map((n) => ({ mac: n.mac, network: n.network })),
        },
        // A migration destination starts paused: it runs only once the source has handed over.
        { incoming, paused: incoming },
      );
    } catch (err) {
      for (const p of created) await rm(p, { force: true }).catch(() => undefined);
      throw err;
    }
    const stored: ProtoVmSpec = {
      ...spec,
      uuid: info.spec.uuid,
      accel: info.spec.accel === 'kvm' ? Accel.ACCEL_KVM : Accel.ACCEL_TCG,
      machineType: info.spec.machine,
      vcpus: info.spec.vcpus,
      nics,
      // The paths as this node uses them (a LOCAL disk lives where this node put its copy); a
      // disk created here is recorded as it is now: present, with its base.
      disks: protoDisks.map((d, i) => ({ ...d, path: plan.disks[i]!.path, create: undefined })),
    };
    this.vmService.record(info.name, stored, [...created, ...(plan.ownedTargets ?? [])]);
    return this.vmInfo(info.name);
  }

  /**
   * The images CreateVm is to create must fit where they go, per file system: a new raw image its
   * size (sparse or not: the guest may fill it, as the coordinator's placement counts it), a new
   * qcow2 image or overlay next to nothing, plus STORAGE_MARGIN_BYTES.
   * @throws ResourceExhaustedError (INSUFFICIENT_STORAGE) before anything is created
   */
  private async checkCreateSpace(vm: string, create: readonly { path: string; format: 'raw' | 'qcow2'; sizeBytes: number; base?: string }[]): Promise<void> {
    const byFs = new Map<number, { need: number; free: number; at: string }>();
    for (const c of create) {
      const need = c.format === 'raw' && c.base === undefined ? c.sizeBytes : 0;
      const fs = need > 0 ? await fileSystemOf(dirname(c.path)) : undefined;
      if (!fs) continue;
      const e = byFs.get(fs.dev) ?? { need: 0, free: fs.freeBytes, at: fs.at };
      e.need += need;
      byFs.set(fs.dev, e);
    }
    for (const e of byFs.values()) {
      if (e.need + STORAGE_MARGIN_BYTES > e.free) {
        throw new ResourceExhaustedError(`the disks VM ${vm} asks node ${this.config.nodeId} to create need ${e.need} bytes (+${STORAGE_MARGIN_BYTES} margin) but the file system of ${e.at} has ${e.free} bytes free`, { reason: 'INSUFFICIENT_STORAGE' });
      }
    }
  }

  /** `migd.disk=DEV,size=…,rate=…` for the workload's disk, if it names one. @throws InvalidArgumentError */
  private diskWorkload(spec: ProtoVmSpec, disks: readonly Disk[]): string | undefined {
    const w = spec.workload;
    if (!w?.diskId) return undefined;
    const i = disks.findIndex((d) => d.id === w.diskId);
    if (i < 0) throw new InvalidArgumentError(`spec.workload.disk_id ${w.diskId} names no disk of the VM`, { reason: 'DISK_INVALID' });
    if (disks[i]!.readOnly) throw new InvalidArgumentError(`spec.workload.disk_id ${w.diskId} is read-only; the disk workload writes`, { reason: 'DISK_INVALID' });
    const bytes = w.diskBytes || 32 * 1024 * 1024;
    const rate = w.diskRateBytesPerSec || 1024 * 1024;
    // A full verification every 3 s, so every migration is followed by one on the destination.
    return `migd.disk=${guestDeviceOf(disks, i)},size=${bytes},rate=${rate},verify_ms=3000`;
  }

  /**
   * Where each disk's image is, after confinement, and which images to create. An incoming VM
   * opens SHARED disks at the source's path and LOCAL ones at the targets the migration created.
   */
  private async planDisks(protoDisks: readonly DiskSpec[], incoming: boolean, targets?: ReadonlyMap<string, string>): Promise<{ disks: Disk[]; create: { path: string; format: 'raw' | 'qcow2'; sizeBytes: number; base?: string }[]; ownedTargets?: string[] }> {
    const create: { path: string; format: 'raw' | 'qcow2'; sizeBytes: number; base?: string }[] = [];
    const inputs: DiskInput[] = [];
    const ownedTargets: string[] = [];
    for (const [i, d] of protoDisks.entries()) {
      const field = `spec.disks[${i}].path`;
      const local = (d.storage ?? 0) !== StorageMode.STORAGE_MODE_SHARED;
      const target = incoming && local ? targets?.get(d.id) : undefined;
      if (incoming && local && target === undefined) throw new FailedPreconditionError(`disk ${d.id}: no target image prepared for the LOCAL disk`, { reason: 'NO_DISK_TARGET' });
      let path: string;
      let basePath = d.create?.basePath || undefined;
      if (target !== undefined) {
        path = target;
        ownedTargets.push(target);
      } else if (!incoming && d.create && (d.create.sizeBytes || d.create.basePath)) {
        path = await confineNewDiskPath(d.path, field, this.pathRoots.filter((r) => r.kind === 'storage'), this.log);
        if (basePath !== undefined) basePath = await confineDiskPath(basePath, `spec.disks[${i}].create.base_path`, this.pathRoots, this.log);
        const format = d.format === DiskFormat.DISK_FORMAT_QCOW2 ? 'qcow2' : 'raw';
        if (basePath !== undefined && format !== 'qcow2') throw new InvalidArgumentError(`spec.disks[${i}]: an overlay on a base image must have format QCOW2`, { reason: 'DISK_INVALID' });
        create.push({ path, format, sizeBytes: d.create.sizeBytes, ...(basePath !== undefined ? { base: basePath } : {}) });
      } else {
        path = await confineDiskPath(d.path, field, this.pathRoots.filter((r) => r.kind === 'storage'), this.log);
      }
      inputs.push(diskInputOf(d, path, basePath));
    }
    // Two names for one file (a link) are one disk twice.
    const disks = normalizeDisks(inputs);
    return { disks, create, ownedTargets };
  }

  /** @throws FailedPreconditionError (VM_MIGRATING) while `name` takes part in a migration */
  private refuseMigrating(name: string): void {
    if (this.vmService.migrating.has(name) || this.migrations.busy(name)) {
      throw new FailedPreconditionError(`VM ${name} is taking part in migration ${this.vmService.migrating.runOf(name) ?? ''}; cancel it first`, { reason: 'VM_MIGRATING' });
    }
  }

  /**
   * Stops and forgets a VM; with `deleteDisks` also deletes the images this node created for it.
   * @throws NotFoundError, FailedPreconditionError (migrating)
   */
  async destroyVm(name: string, opts: { deleteDisks?: boolean } = {}): Promise<void> {
    this.vms.get(name);
    this.refuseMigrating(name);
    const images = opts.deleteDisks ? this.vmService.createdImages(name) : [];
    await this.removeVm(name);
    const removed = await this.deleteDisks(images);
    if (removed.length > 0) this.log.info('deleted the disk images this node had created', { vm: name, images: removed });
  }

  /**
   * Stops a VM's QEMU and keeps the VM (spec, disks, MACs) to be started again. No-op when stopped.
   * @throws NotFoundError, FailedPreconditionError (VM_MIGRATING)
   */
  async stopVm(name: string): Promise<ProtoVmInfo> {
    this.vms.get(name);
    this.refuseMigrating(name);
    await this.vms.stop(name);
    return this.vmInfo(name);
  }

  /**
   * Starts a stopped VM again with its recorded device model. No-op when running.
   * @throws NotFoundError, FailedPreconditionError (VM_MIGRATING, VM_INCOMING, QEMU_START_FAILED),
   *   ResourceExhaustedError, InvalidArgumentError (MAC_IN_USE)
   */
  async startVm(name: string): Promise<ProtoVmInfo> {
    this.vms.get(name);
    this.refuseMigrating(name);
    await this.vms.start(name);
    // The old feed ended with the old QEMU's console.
    this.vmService.restartFeed(name);
    return this.vmInfo(name);
  }

  private async removeVm(name: string, opts: { localImages?: boolean } = {}): Promise<void> {
    const images = opts.localImages ? this.vmService.createdImages(name, 'local') : [];
    this.vmService.forget(name);
    await this.vms.destroy(name);
    await this.deleteDisks(images);
  }

  private migratable(name: string): MigratableVm {
    const v = this.vms.get(name);
    const feed = this.vmService.feed(name);
    const vms = this.vms;
    return {
      name,
      spec: this.vmService.spec(name) ?? ProtoVmSpec.fromPartial({ name, memoryMib: v.spec.memoryMiB, vcpus: v.spec.vcpus, machineType: v.spec.machine, uuid: v.spec.uuid }),
      pid: v.pid,
      qmp: vms.qmp(name),
      guestSamples: (signal, recentMs) => feed.samples.subscribe(recentMs ? feed.recent(recentMs) : [], signal),
      lastGuestSample: () => feed.latest(),
      cpuSeconds: async () => (await vms.cpu(name).catch(() => undefined))?.totalSeconds ?? 0,
    };
  }

  private vmHost(): VmHost {
    return {
      attach: (name) => {
        const v = this.vms.list().find((x) => x.name === name);
        return v?.status === 'running' ? this.migratable(name) : undefined;
      },
      list: () => this.vms.list().map((v) => ({ name: v.name, role: v.role, alive: v.status === 'running' })),
      source: (name) => {
        const v = this.vms.get(name);
        if (v.status !== 'running') throw new FailedPreconditionError(`VM ${name} is not running`, { reason: 'VM_NOT_RUNNING' });
        if (v.role === 'incoming') throw new FailedPreconditionError(`VM ${name} is an incoming migration target`, { reason: 'VM_INCOMING' });
        this.vmService.migrating.refuseIfMigrating(name);
        return this.migratable(name);
      },
      setMigration: (name, runId) => {
        this.vmService.migrating.set(name, runId);
        void this.vms.setRole(name, runId ? 'migrating' : 'running').catch(() => undefined);
      },
      createIncoming: async (spec, runId, targets) => {
        await this.createVm(spec, true, targets); // paused (-S): resumed only at the handover
        this.vmService.migrating.set(spec.name, runId);
        return this.migratable(spec.name);
      },
      adoptIncoming: (name) => {
        this.vmService.migrating.set(name, undefined);
        void this.vms.setRole(name, 'running').catch(() => undefined);
      },
      // A VM a migration removes (the source after its handover, an incoming copy that never ran)
      // takes the LOCAL images this node created with it: they were copied, or never used.
      destroy: (name) => this.removeVm(name, { localImages: true }),
      diskTransfers: (name) => this.diskTransfers(name),
      planTargets: (spec, transfers) => this.planTargets(spec, transfers),
      createTarget: (t) => createImage(t.path, t.format, t.virtualBytes, t.base),
      removeTargets: async (paths) => {
        await this.deleteDisks(paths);
      },
    };
  }

  /** The LOCAL disks of a VM, as a storage copy sends them. */
  private async diskTransfers(name: string): Promise<DiskTransfer[]> {
    const out: DiskTransfer[] = [];
    for (const d of this.vms.get(name).spec.disks ?? []) {
      if (d.storage !== 'local') continue;
      const top = await imageInfo(d.path);
      // The allocation of the whole chain: what a full copy sends at most (an overlay whose base
      // the destination has sends only its own share).
      let allocated = top.allocatedBytes;
      for (let b = top.backingFile, depth = 0; b !== undefined && depth < 8; depth++) {
        const info = await imageInfo(b);
        allocated += info.allocatedBytes;
        b = info.backingFile;
      }
      out.push({ id: d.id, virtualBytes: top.virtualBytes, allocatedBytes: allocated, basePath: top.backingFile ?? '' });
    }
    return out;
  }

  /** See VmHost.planTargets. */
  private async planTargets(spec: ProtoVmSpec, transfers: readonly DiskTransfer[]): Promise<{ id: string; path: string; format: 'raw' | 'qcow2'; virtualBytes: number; base?: string }[]> {
    const local = (spec.disks ?? []).filter((d) => d.storage !== StorageMode.STORAGE_MODE_SHARED);
    const ids = new Set(transfers.map((t) => t.id));
    if (ids.size !== transfers.length || local.length !== transfers.length || local.some((d) => !ids.has(d.id))) {
      throw new InvalidArgumentError('disks must name each LOCAL disk of the spec once', { reason: 'DISK_TRANSFER_MISMATCH' });
    }
    const root = this.config.storageRoots[0] ?? this.config.stateDir;
    validateVmName(spec.name);
    const folder = join(root, 'disks', spec.name);
    const plan: { id: string; path: string; format: 'raw' | 'qcow2'; virtualBytes: number; base?: string }[] = [];
    let need = 0;
    for (const t of transfers) {
      const d = local.find((x) => x.id === t.id)!;
      if (!DISK_ID_PATTERN.test(t.id)) throw new InvalidArgumentError(`disk id ${JSON.stringify(t.id)} is invalid`, { reason: 'DISK_INVALID' });
      if (!Number.isSafeInteger(t.virtualBytes) || t.virtualBytes < 512) throw new InvalidArgumentError(`disk ${t.id}: virtual size ${t.virtualBytes} is invalid`, { reason: 'DISK_INVALID' });
      const format = d.format === DiskFormat.DISK_FORMAT_QCOW2 ? 'qcow2' : 'raw';
      // The same base here (same path, inside this node's roots): the target is an overlay on it.
      const base = t.basePath && format === 'qcow2' ? await confineDiskPath(t.basePath, `disks.${t.id}.base_path`, this.pathRoots, this.log).catch(() => undefined) : undefined;
      let path = join(folder, `${t.id}.${format}`);
      for (let n = 1; existsSync(path); n++) path = join(folder, `${t.id}.${n}.${format}`);
      plan.push({ id: t.id, path, format, virtualBytes: t.virtualBytes, ...(base ? { base } : {}) });
      need += t.allocatedBytes;
    }
    let existing = folder;
    while (!existsSync(existing) && existing !== dirname(existing)) existing = dirname(existing);
    const free = await freeBytes(existing);
    // A margin for qcow2 metadata and what the guest writes during the copy.
    const margin = STORAGE_MARGIN_BYTES;
    if (need + margin > free) {
      throw new ResourceExhaustedError(`the LOCAL disks of ${spec.name} need ${need} bytes (+${margin} margin) but node ${this.config.nodeId}'s storage root has ${free} bytes free`, { reason: 'INSUFFICIENT_STORAGE' });
    }
    return plan;
  }

  /**
   * Deletes disk images this node created (callers pass only paths from its created-disks record),
   * and only inside its storage roots (resolved: a link cannot lead outside), and their folder once
   * empty. Returns the images deleted; never throws (a failure is logged and the image stays).
   */
  async deleteDisks(paths: readonly string[]): Promise<string[]> {
    const roots = (await Promise.all(this.pathRoots.filter((r) => r.kind === 'storage').map((r) => r.real()))).flat();
    const deleted: string[] = [];
    for (const p of paths) {
      const real = await realpath(p).catch(() => undefined);
      if (real === undefined || !roots.some((r) => real.startsWith(r.endsWith(sep) ? r : r + sep))) continue;
      try {
        await rm(real, { force: true });
        deleted.push(real);
      } catch (err) {
        this.log.warn('could not remove a disk image', { path: real, err });
      }
      await rmdir(dirname(real)).catch(() => undefined); // only when empty
    }
    return deleted;
  }

  /** Stops serving; QEMU processes keep running (a restarted daemon reattaches). */
  async stop(): Promise<void> {
    if (this.heartbeat) clearInterval(this.heartbeat);
    await this.registration?.stop();
    await this.server?.stop(1000);
    await this.metricsServer?.close();
    this.migrations.close();
    this.vmService.close();
    for (const p of this.peers.values()) p.close();
    await this.vms.close();
  }
}

/** Free space a node keeps beyond what the images it creates need (qcow2 metadata, writes during a copy). */
const STORAGE_MARGIN_BYTES = 16 * 1024 * 1024;

/** Exit reasons of a QEMU that ended without migd or the guest asking it to (see VmExit.reason). */
const UNEXPECTED_EXITS = new Set(['exited', 'dead at reattach', 'host-signal', 'guest-panic']);

/**
 * The proto state of a VM. A QEMU that died on its own — killed from outside, crashed, found dead
 * when the daemon restarted — is FAILED, so the coordinator keeps listing it and the loss is
 * reported, never silently gone (STOPPED VMs drop out of the coordinator's list). One migd
 * stopped, a guest that shut down, or an incoming copy whose migration ended, is STOPPED.
 */
export function vmStateOf(v: Pick<VmInfo, 'status' | 'role' | 'exited'>): VmState {
  if (v.status === 'exited') return v.role !== 'incoming' && UNEXPECTED_EXITS.has(v.exited?.reason ?? 'exited') ? VmState.VM_STATE_FAILED : VmState.VM_STATE_STOPPED;
  return v.role === 'incoming' ? VmState.VM_STATE_INCOMING : v.role === 'migrating' ? VmState.VM_STATE_MIGRATING : VmState.VM_STATE_RUNNING;
}
