/**
 * The node's VM service: what the node keeps about its VMs beside QEMU itself — each VM's proto
 * spec (persisted in the VM's folder, so a restarted daemon answers with the spec it was given),
 * the record of the disk images this node created for a VM, each VM's guest feed (its parsed serial
 * console) and the single "is migrating" state (MigratingVms). The daemon only wires it to the VM
 * manager, the migration manager and the handlers.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Accel, VmSpec as ProtoVmSpec } from '../../shared/gen/migd/v1/common.js';
import type { Logger } from '../../shared/log.js';
import { GuestFeed } from '../guest-feed.js';
import type { VmInfo, VmManager } from './manager.js';
import { MigratingVms } from './migrating.js';

/** The VM's proto spec as given (paths as this node uses them), in the VM's folder. */
const SPEC_FILE = 'migd-spec.json';
/** Disk images this node created for a VM (so only those are ever deleted by it), in the VM's folder. */
const CREATED_DISKS_FILE = 'migd-disks.json';

/** What the VM service needs of the VM manager. */
export type VmServiceVms = Pick<VmManager, 'get' | 'serial'>;

export class VmService {
  /** The single "is migrating" state of this node's VMs. */
  readonly migrating = new MigratingVms();
  private readonly feeds = new Map<string, GuestFeed>();
  private readonly specs = new Map<string, ProtoVmSpec>();

  constructor(
    private readonly vms: VmServiceVms,
    private readonly log: Logger,
  ) {}

  /** The VMs running when the daemon starts: their specs loaded and their consoles followed. */
  attach(running: readonly VmInfo[]): void {
    for (const vm of running) {
      this.loadSpec(vm);
      this.feed(vm.name);
    }
  }

  /** The proto spec recorded for VM `name`, if any. */
  spec(name: string): ProtoVmSpec | undefined {
    return this.specs.get(name);
  }

  /** Loads a VM's recorded spec; a VM with none (or an unreadable one) gets one made from its QEMU spec. */
  loadSpec(vm: VmInfo): void {
    try {
      this.specs.set(vm.name, JSON.parse(readFileSync(this.specFile(vm.name), 'utf8')) as ProtoVmSpec);
    } catch {
      this.specs.set(vm.name, ProtoVmSpec.fromPartial({ name: vm.name, memoryMib: vm.spec.memoryMiB, vcpus: vm.spec.vcpus, accel: vm.spec.accel === 'kvm' ? Accel.ACCEL_KVM : Accel.ACCEL_TCG, machineType: vm.spec.machine, kernelPath: vm.spec.kernel ?? '', initrdPath: vm.spec.initrd ?? '', uuid: vm.spec.uuid, nics: vm.spec.nics.map((n) => ({ mac: n.mac, network: n.network })) }));
    }
  }

  /**
   * Records a VM just created: its spec (as this node runs it) and the images this node created
   * for it; then follows its console.
   */
  record(name: string, spec: ProtoVmSpec, createdImages: readonly string[]): void {
    writeFileSync(this.specFile(name), JSON.stringify(spec));
    writeFileSync(join(this.vms.get(name).paths.dir, CREATED_DISKS_FILE), JSON.stringify(createdImages));
    this.specs.set(name, spec);
    this.feed(name);
  }

  /** Images this node created for a VM (given, or as migration targets), of one storage mode or all. */
  createdImages(name: string, storage?: 'local' | 'shared'): string[] {
    try {
      const v = this.vms.get(name);
      const created = JSON.parse(readFileSync(join(v.paths.dir, CREATED_DISKS_FILE), 'utf8')) as string[];
      const mode = new Map((v.spec.disks ?? []).map((d) => [d.path, d.storage]));
      return created.filter((p) => storage === undefined || mode.get(p) === storage);
    } catch {
      return [];
    }
  }

  /** The guest feed of VM `name`, started on first use. */
  feed(name: string): GuestFeed {
    let f = this.feeds.get(name);
    if (!f) {
      f = new GuestFeed(name, (signal) => this.vms.serial(name, { signal }), this.log);
      this.feeds.set(name, f);
    }
    return f;
  }

  /** Guest samples and console of a VM. @throws NotFoundError */
  guest(name: string): GuestFeed {
    this.vms.get(name);
    return this.feed(name);
  }

  /** The latest guest performance of a VM, if a feed follows it. */
  guestSummary(name: string): ReturnType<GuestFeed['summary']> | undefined {
    return this.feeds.get(name)?.summary();
  }

  /** A new feed for a VM whose QEMU was started again (the old feed ended with the old console). */
  restartFeed(name: string): void {
    this.closeFeed(name);
    this.feed(name);
  }

  /** Forgets a VM that goes away: its feed, its spec and its migrating mark. */
  forget(name: string): void {
    this.closeFeed(name);
    this.specs.delete(name);
    this.migrating.set(name, undefined);
  }

  /** Stops every feed (the daemon stops; QEMU runs on). */
  close(): void {
    for (const f of this.feeds.values()) f.close();
  }

  private closeFeed(name: string): void {
    this.feeds.get(name)?.close();
    this.feeds.delete(name);
  }

  private specFile(name: string): string {
    return join(this.vms.get(name).paths.dir, SPEC_FILE);
  }
}
