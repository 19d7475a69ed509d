/**
 * migctl's flags → the coordinator's request messages. Pure: everything a command sends is
 * decided here, so it can be checked without a coordinator. Values the coordinator validates
 * (VM names, policy contradictions) are left to it, so there is one source of truth; only what
 * cannot be expressed at all (a malformed number, an unknown policy name) is a UsageError here.
 */
import {
  Accel,
  BootSource,
  DiskAio,
  DiskBus,
  DiskCache,
  DiskFormat,
  MigrationPolicy,
  StorageMode,
  MigrationState,
  MultifdCompression,
  PolicyKind,
  TimeoutAction,
  WorkloadPattern,
  type DiskSpec,
  type NicSpec,
  type Postcopy,
  VmSpec,
} from '../../shared/gen/migd/v1/common.js';
import {
  AdjustRunRequest,
  CoordinatorServiceCreateVmRequest,
  ExportFormat,
  ExportRunsRequest,
  ListRunsRequest,
  RunFilter,
  SubmitPlanRequest,
  WatchRequest,
} from '../../shared/gen/migd/v1/coordinator.js';
import { flagBool, flagString, flagStrings, type FlagValues } from './args.js';
import { UsageError, parseDurationMs, parseInteger, parseList, parseMemoryMib, parseRate, parseSize, parseTime } from './units.js';
import { TERMINAL_STATES, isTerminalState } from '../../shared/policy/states.js';

const UINT32_MAX = 0xffff_ffff;
const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

const POLICIES: Readonly<Record<string, PolicyKind>> = {
  fixed: PolicyKind.POLICY_KIND_FIXED,
  adaptive: PolicyKind.POLICY_KIND_ADAPTIVE,
  nova: PolicyKind.POLICY_KIND_NOVA,
  'ovirt-minimal': PolicyKind.POLICY_KIND_OVIRT_MINIMAL_DOWNTIME,
  'ovirt-minimal-downtime': PolicyKind.POLICY_KIND_OVIRT_MINIMAL_DOWNTIME,
  'ovirt-suspend': PolicyKind.POLICY_KIND_OVIRT_SUSPEND_WORKLOAD,
  'ovirt-suspend-workload': PolicyKind.POLICY_KIND_OVIRT_SUSPEND_WORKLOAD,
  'ovirt-postcopy': PolicyKind.POLICY_KIND_OVIRT_POSTCOPY,
  kubevirt: PolicyKind.POLICY_KIND_KUBEVIRT,
  'kubevirt-stall': PolicyKind.POLICY_KIND_KUBEVIRT_STALL_DETECTOR,
};

/** A policy kind from its migctl name ("adaptive", "ovirt-minimal"…). */
export function parsePolicyKind(name: string, flag = '--policy'): PolicyKind {
  const k = POLICIES[name.trim().toLowerCase()];
  if (k === undefined) throw new UsageError(`${flag}: unknown policy ${JSON.stringify(name)} (known: adaptive, fixed, nova, ovirt-minimal, ovirt-suspend, ovirt-postcopy, kubevirt, kubevirt-stall)`);
  return k;
}

const ACTIVE_STATES = (Object.values(MigrationState).filter((v): v is MigrationState => typeof v === 'number' && v !== 0) as MigrationState[]).filter((s) => !isTerminalState(s));

/** States from "succeeded", "postcopy-paused", "MIGRATION_STATE_FAILED", or the groups active/finished. */
export function parseStates(names: readonly string[]): MigrationState[] {
  const out = new Set<MigrationState>();
  for (const raw of parseList(names)) {
    const n = raw.toLowerCase();
    if (n === 'active') ACTIVE_STATES.forEach((s) => out.add(s));
    else if (n === 'finished' || n === 'done') TERMINAL_STATES.forEach((s) => out.add(s));
    else {
      const key = n.toUpperCase().replace(/-/g, '_').replace(/^(MIGRATION_STATE_)?/, 'MIGRATION_STATE_');
      const v = (MigrationState as unknown as Record<string, MigrationState | undefined>)[key];
      if (v === undefined || v === MigrationState.MIGRATION_STATE_UNSPECIFIED) throw new UsageError(`--state: unknown state ${JSON.stringify(raw)} (e.g. queued, precopy, postcopy, succeeded, failed, cancelled, active, finished)`);
      out.add(v);
    }
  }
  return [...out];
}

function optional<T>(flags: FlagValues, name: string, parse: (raw: string, flag: string) => T): T | undefined {
  const raw = flagString(flags, name);
  return raw === undefined ? undefined : parse(raw, `--${name}`);
}

function downtimeMs(raw: string, flag: string): number {
  const v = parseDurationMs(raw, flag, 'ms');
  if (v > UINT32_MAX) throw new UsageError(`${flag}: ${raw} is too large`);
  return v;
}

function postcopyOf(flags: FlagValues): Postcopy | undefined {
  const on = flagBool(flags, 'postcopy');
  const after = flagString(flags, 'postcopy-after');
  const onDemand = flagBool(flags, 'postcopy-on-demand');
  const off = flagBool(flags, 'no-postcopy');
  const noPreempt = flagBool(flags, 'no-preempt');
  if (off && (on || after !== undefined || onDemand || noPreempt)) throw new UsageError('--no-postcopy contradicts --postcopy, --postcopy-after, --postcopy-on-demand and --no-preempt');
  if (onDemand && after !== undefined) throw new UsageError('--postcopy-on-demand contradicts --postcopy-after');
  if (off) return { enabled: false, afterPasses: 0, afterMs: 0, onDemandOnly: false };
  if (!on && after === undefined && !onDemand && !noPreempt) return undefined;
  const pc: Postcopy = { enabled: true, afterPasses: 0, afterMs: 0, onDemandOnly: onDemand, ...(noPreempt ? { preempt: false } : {}) };
  if (after !== undefined) {
    if (/^\d+$/.test(after.trim())) pc.afterPasses = parseInteger(after, '--postcopy-after', 1, UINT32_MAX);
    else pc.afterMs = parseDurationMs(after, '--postcopy-after', 'ms');
  }
  return pc;
}

const COMPRESSIONS: Readonly<Record<string, MultifdCompression>> = {
  none: MultifdCompression.MULTIFD_COMPRESSION_NONE,
  zlib: MultifdCompression.MULTIFD_COMPRESSION_ZLIB,
  zstd: MultifdCompression.MULTIFD_COMPRESSION_ZSTD,
};

/**
 * The MigrationPolicy the flags describe. Fields left at zero take the policy preset's defaults
 * on the coordinator; without --policy the coordinator's default (fixed) applies.
 */
export function policyFromFlags(flags: FlagValues): MigrationPolicy {
  const name = flagString(flags, 'policy');
  const kind = name === undefined ? PolicyKind.POLICY_KIND_UNSPECIFIED : parsePolicyKind(name);
  const channels = optional(flags, 'multifd', (r, f) => parseInteger(r, f, 1, 255));
  const compressionName = flagString(flags, 'multifd-compression');
  if (compressionName !== undefined && channels === undefined) throw new UsageError('--multifd-compression needs --multifd N');
  const compression = compressionName === undefined ? MultifdCompression.MULTIFD_COMPRESSION_UNSPECIFIED : COMPRESSIONS[compressionName.toLowerCase()];
  if (compression === undefined) throw new UsageError(`--multifd-compression: ${JSON.stringify(compressionName)} is not none, zlib or zstd`);
  const xbzrle = optional(flags, 'xbzrle', parseSize);
  const onTimeout = flagString(flags, 'on-timeout');
  let timeoutAction = TimeoutAction.TIMEOUT_ACTION_UNSPECIFIED;
  if (onTimeout !== undefined) {
    if (onTimeout === 'abort') timeoutAction = TimeoutAction.TIMEOUT_ACTION_ABORT;
    else if (onTimeout === 'force-complete') timeoutAction = TimeoutAction.TIMEOUT_ACTION_FORCE_COMPLETE;
    else throw new UsageError(`--on-timeout: ${JSON.stringify(onTimeout)} is not abort or force-complete`);
  }
  const progressTimeoutMs = optional(flags, 'progress-timeout', (r, f) => parseDurationMs(r, f, 's'));
  return MigrationPolicy.fromPartial({
    kind,
    downtimeLimitMs: optional(flags, 'downtime', downtimeMs) ?? 0,
    maxDowntimeMs: optional(flags, 'max-downtime', downtimeMs) ?? 0,
    maxBandwidthBytesPerSec: optional(flags, 'bandwidth', parseRate) ?? 0,
    autoConverge: flagBool(flags, 'auto-converge') ? { enabled: true } : undefined,
    postcopy: postcopyOf(flags),
    xbzrle: xbzrle === undefined ? undefined : { enabled: true, cacheBytes: xbzrle },
    multifd: channels === undefined ? undefined : { enabled: true, channels, compression },
    switchoverAck: flagBool(flags, 'switchover-ack'),
    tls: flagBool(flags, 'tls'),
    completionTimeoutSecPerGib: optional(flags, 'completion-timeout', (r, f) => Math.round(parseDurationMs(r, f, 's') / 1000)) ?? 0,
    progressTimeoutSec: progressTimeoutMs === undefined ? 0 : Math.max(1, Math.round(progressTimeoutMs / 1000)),
    timeoutAction,
  });
}

function planCommon(flags: FlagValues, newKey: () => string): Pick<SubmitPlanRequest, 'idempotencyKey' | 'policy' | 'priority' | 'label'> {
  const key = flagString(flags, 'key');
  if (key !== undefined && key.trim() === '') throw new UsageError('--key: must not be empty');
  return {
    idempotencyKey: key ?? newKey(),
    policy: policyFromFlags(flags),
    priority: optional(flags, 'priority', (r, f) => parseInteger(r, f, INT32_MIN, INT32_MAX)) ?? 0,
    label: flagString(flags, 'label') ?? '',
  };
}

/** `migrate VM [--to NODE] …`. `newKey` makes the idempotency key when --key is not given. */
export function migrateRequest(vm: string, flags: FlagValues, newKey: () => string): SubmitPlanRequest {
  return SubmitPlanRequest.fromPartial({
    ...planCommon(flags, newKey),
    target: { $case: 'migrate', value: { vmName: vm, destinationNodeId: flagString(flags, 'to') ?? '' } },
  });
}

/** `drain NODE [--to A,B] …`. */
export function drainRequest(node: string, flags: FlagValues, newKey: () => string): SubmitPlanRequest {
  return SubmitPlanRequest.fromPartial({
    ...planCommon(flags, newKey),
    target: { $case: 'drain', value: { nodeId: node, destinationNodeIds: parseList(flagStrings(flags, 'to')) } },
  });
}

const PATTERNS: Readonly<Record<string, WorkloadPattern>> = {
  random: WorkloadPattern.WORKLOAD_PATTERN_RANDOM,
  compressible: WorkloadPattern.WORKLOAD_PATTERN_COMPRESSIBLE,
  hotcold: WorkloadPattern.WORKLOAD_PATTERN_HOTCOLD,
  idle: WorkloadPattern.WORKLOAD_PATTERN_IDLE,
};
const ACCELS: Readonly<Record<string, Accel>> = { auto: Accel.ACCEL_AUTO, kvm: Accel.ACCEL_KVM, tcg: Accel.ACCEL_TCG };

/** `--nic NETWORK[,mac=MAC][,ip=A.B.C.D/LEN]`; the coordinator and node check the values. */
function parseNic(v: string): NicSpec {
  const [network = '', ...opts] = v.split(',');
  const nic: NicSpec = { network, mac: '', guestIp: '' };
  if (!network || network.includes('=')) throw new UsageError(`--nic: ${JSON.stringify(v)} must start with a network name`);
  for (const o of opts) {
    const [k, val = ''] = o.split('=', 2);
    if (k === 'mac' && val) nic.mac = val;
    else if (k === 'ip' && val) nic.guestIp = val;
    else throw new UsageError(`--nic: ${JSON.stringify(o)} is not mac=MAC or ip=A.B.C.D/LEN`);
  }
  return nic;
}

/** `KEY=VALUE,KEY,…` → [key, value | undefined] pairs; each key at most once. */
function keyValues(v: string, flag: string): Map<string, string | undefined> {
  const out = new Map<string, string | undefined>();
  for (const item of v.split(',')) {
    const eq = item.indexOf('=');
    const k = (eq < 0 ? item : item.slice(0, eq)).trim().toLowerCase();
    if (!k) throw new UsageError(`${flag}: ${JSON.stringify(v)} has an empty item (KEY=VALUE items are separated by commas)`);
    if (out.has(k)) throw new UsageError(`${flag}: ${k} is given twice in ${JSON.stringify(v)}`);
    out.set(k, eq < 0 ? undefined : item.slice(eq + 1));
  }
  return out;
}

/** One of `choices` (keys lower-case), or a UsageError naming them. */
function choice<T>(choices: Readonly<Record<string, T>>, raw: string, what: string): T {
  const v = choices[raw.trim().toLowerCase()];
  if (v === undefined) throw new UsageError(`${what}: ${JSON.stringify(raw)} is not ${Object.keys(choices).join(', ').replace(/, ([^,]*)$/, ' or $1')}`);
  return v;
}

/** A path on the node: absolute (a relative path would mean nothing there). */
function nodePath(raw: string, what: string): string {
  if (!raw.startsWith('/')) throw new UsageError(`${what}: ${JSON.stringify(raw)} must be an absolute path on the node`);
  return raw;
}

const STORAGE_MODES: Readonly<Record<string, StorageMode>> = { local: StorageMode.STORAGE_MODE_LOCAL, shared: StorageMode.STORAGE_MODE_SHARED };
const FORMATS: Readonly<Record<string, DiskFormat>> = { raw: DiskFormat.DISK_FORMAT_RAW, qcow2: DiskFormat.DISK_FORMAT_QCOW2 };
const BUSES: Readonly<Record<string, DiskBus>> = { virtio: DiskBus.DISK_BUS_VIRTIO_BLK, 'virtio-blk': DiskBus.DISK_BUS_VIRTIO_BLK, scsi: DiskBus.DISK_BUS_VIRTIO_SCSI, 'virtio-scsi': DiskBus.DISK_BUS_VIRTIO_SCSI };
const CACHES: Readonly<Record<string, DiskCache>> = {
  none: DiskCache.DISK_CACHE_NONE,
  writeback: DiskCache.DISK_CACHE_WRITEBACK,
  writethrough: DiskCache.DISK_CACHE_WRITETHROUGH,
  directsync: DiskCache.DISK_CACHE_DIRECTSYNC,
  unsafe: DiskCache.DISK_CACHE_UNSAFE,
};
const AIOS: Readonly<Record<string, DiskAio>> = { threads: DiskAio.DISK_AIO_THREADS, native: DiskAio.DISK_AIO_NATIVE, io_uring: DiskAio.DISK_AIO_IO_URING };
const DISK_KEYS = ['id', 'path', 'mode', 'format', 'bus', 'cache', 'aio', 'serial', 'readonly', 'create', 'base'] as const;

/**
 * `--disk id=ID,path=PATH[,mode=local|shared][,format=raw|qcow2][,bus=virtio|scsi][,cache=C]
 * [,aio=A][,serial=S][,readonly][,create=SIZE][,base=PATH]`. The format defaults to qcow2 for an
 * overlay (base=) or a path ending in .qcow2, else raw: a qcow2 image opened as raw would show the
 * guest its metadata. The node checks the rest (id syntax, storage roots, files).
 */
export function parseDisk(v: string): DiskSpec {
  const kv = keyValues(v, '--disk');
  for (const k of kv.keys()) if (!(DISK_KEYS as readonly string[]).includes(k)) throw new UsageError(`--disk: unknown key ${JSON.stringify(k)} (known: ${DISK_KEYS.join(', ')})`);
  const value = (k: (typeof DISK_KEYS)[number]): string | undefined => {
    if (!kv.has(k)) return undefined;
    const val = kv.get(k);
    if (val === undefined || val === '') throw new UsageError(`--disk: ${k} needs a value (${k}=…)`);
    return val;
  };
  const id = value('id');
  const path = value('path');
  if (id === undefined || path === undefined) throw new UsageError(`--disk: ${JSON.stringify(v)} needs id=ID and path=PATH`);
  if (kv.has('readonly') && kv.get('readonly') !== undefined) throw new UsageError('--disk: readonly takes no value');
  const size = value('create');
  const base = value('base');
  const fmt = value('format');
  const format = fmt !== undefined ? choice(FORMATS, fmt, '--disk format') : base !== undefined || path.endsWith('.qcow2') ? DiskFormat.DISK_FORMAT_QCOW2 : DiskFormat.DISK_FORMAT_RAW;
  if (base !== undefined && format !== DiskFormat.DISK_FORMAT_QCOW2) throw new UsageError('--disk: base=PATH makes a qcow2 overlay: format must be qcow2');
  const mode = value('mode');
  const bus = value('bus');
  const cache = value('cache');
  const aio = value('aio');
  const create = size !== undefined || base !== undefined ? { sizeBytes: size === undefined ? 0 : parseSize(size, '--disk create'), basePath: base === undefined ? '' : nodePath(base, '--disk base') } : undefined;
  if (create && size !== undefined && create.sizeBytes === 0) throw new UsageError('--disk: create=SIZE must be greater than 0');
  return {
    id,
    path: nodePath(path, '--disk path'),
    format,
    bus: bus === undefined ? DiskBus.DISK_BUS_VIRTIO_BLK : choice(BUSES, bus, '--disk bus'),
    cache: cache === undefined ? DiskCache.DISK_CACHE_UNSPECIFIED : choice(CACHES, cache, '--disk cache'),
    aio: aio === undefined ? DiskAio.DISK_AIO_UNSPECIFIED : choice(AIOS, aio.replace('-', '_'), '--disk aio'),
    readOnly: kv.has('readonly'),
    serial: value('serial') ?? '',
    storage: mode === undefined ? StorageMode.STORAGE_MODE_LOCAL : choice(STORAGE_MODES, mode, '--disk mode'),
    create,
  };
}

/** `--disk-workload ID[,bytes=SIZE][,rate=RATE]`: the migd guest's disk writer and verifier. */
function diskWorkloadOf(v: string | undefined, disks: readonly DiskSpec[]): { diskId?: string; diskBytes?: number; diskRateBytesPerSec?: number } {
  if (v === undefined) return {};
  const [id = '', ...rest] = v.split(',');
  if (!id || id.includes('=')) throw new UsageError(`--disk-workload: ${JSON.stringify(v)} must start with a disk id`);
  if (!disks.some((d) => d.id === id)) throw new UsageError(`--disk-workload: no --disk has id ${JSON.stringify(id)}`);
  const kv = rest.length > 0 ? keyValues(rest.join(','), '--disk-workload') : new Map<string, string | undefined>();
  const out: { diskId: string; diskBytes?: number; diskRateBytesPerSec?: number } = { diskId: id };
  for (const [k, val] of kv) {
    if (k === 'bytes' && val) out.diskBytes = parseSize(val, '--disk-workload bytes');
    else if (k === 'rate' && val) out.diskRateBytesPerSec = parseRate(val, '--disk-workload rate');
    else throw new UsageError(`--disk-workload: ${JSON.stringify(val === undefined ? k : `${k}=${val}`)} is not bytes=SIZE or rate=RATE`);
  }
  return out;
}

/** `create-vm NAME --memory MIB …`. */
export function createVmRequest(name: string, flags: FlagValues): CoordinatorServiceCreateVmRequest {
  const memory = flagString(flags, 'memory');
  if (memory === undefined) throw new UsageError('create-vm: --memory MIB is required');
  const patternName = flagString(flags, 'pattern') ?? 'random';
  const pattern = PATTERNS[patternName.toLowerCase()];
  if (pattern === undefined) throw new UsageError(`--pattern: ${JSON.stringify(patternName)} is not random, compressible, hotcold or idle`);
  const accelName = flagString(flags, 'accel') ?? 'auto';
  const accel = ACCELS[accelName.toLowerCase()];
  if (accel === undefined) throw new UsageError(`--accel: ${JSON.stringify(accelName)} is not auto, kvm or tcg`);
  const labels: Record<string, string> = {};
  for (const l of flagStrings(flags, 'label')) {
    const eq = l.indexOf('=');
    if (eq <= 0) throw new UsageError(`--label: ${JSON.stringify(l)} is not KEY=VALUE`);
    labels[l.slice(0, eq)] = l.slice(eq + 1);
  }
  const disks = flagStrings(flags, 'disk').map(parseDisk);
  const bootName = flagString(flags, 'boot');
  const boot = bootName === undefined ? undefined : choice({ kernel: BootSource.BOOT_SOURCE_KERNEL, disk: BootSource.BOOT_SOURCE_DISK }, bootName, '--boot');
  if (boot === BootSource.BOOT_SOURCE_DISK) {
    if (disks.length === 0) throw new UsageError('--boot disk: the firmware boots the first --disk, and none is given');
    const kernelFlags = ['kernel', 'initrd', 'append', 'disk-workload'].filter((k) => flagString(flags, k) !== undefined);
    if (kernelFlags.length > 0) throw new UsageError(`--boot disk boots the first disk through the firmware: ${kernelFlags.map((k) => `--${k}`).join(', ')} do not apply`);
  }
  if (flagString(flags, 'initrd') !== undefined && flagString(flags, 'kernel') === undefined) throw new UsageError('--initrd needs --kernel (without --kernel the node boots its migd guest image, kernel and initrd)');
  const diskWorkload = diskWorkloadOf(flagString(flags, 'disk-workload'), disks);
  const spec = VmSpec.fromPartial({
    name,
    memoryMib: parseMemoryMib(memory, '--memory'),
    vcpus: optional(flags, 'vcpus', (r, f) => parseInteger(r, f, 1, 1024)) ?? 1,
    accel,
    machineType: flagString(flags, 'machine') ?? '',
    workload: {
      pattern,
      workers: optional(flags, 'workers', (r, f) => parseInteger(r, f, 1, 1024)) ?? 1,
      bytesPerWorker: optional(flags, 'bytes', parseSize) ?? 0,
      rateBytesPerSec: optional(flags, 'rate', parseRate) ?? 0,
      hotBytes: optional(flags, 'hot-bytes', parseSize) ?? 0,
      verify: !flagBool(flags, 'no-verify'),
      ...diskWorkload,
    },
    labels,
    antiAffinityGroup: flagString(flags, 'anti-affinity') ?? '',
    nics: flagStrings(flags, 'nic').map(parseNic),
    disks,
    boot,
    kernelPath: optional(flags, 'kernel', nodePath) ?? '',
    initrdPath: optional(flags, 'initrd', nodePath) ?? '',
    extraCmdline: flagString(flags, 'append') ?? '',
  });
  if (spec.memoryMib === 0) throw new UsageError('--memory: must be greater than 0');
  return CoordinatorServiceCreateVmRequest.fromPartial({ spec, nodeId: flagString(flags, 'node') ?? '' });
}

/** The run filter of `runs`, `history compare` and `export`. `now` anchors ages like "2h". */
export function runFilterFromFlags(flags: FlagValues, now: number): RunFilter {
  const since = optional(flags, 'since', (r, f) => parseTime(r, f, now));
  const until = optional(flags, 'until', (r, f) => parseTime(r, f, now));
  if (since && until && since.getTime() > until.getTime()) throw new UsageError('--since is later than --until');
  return RunFilter.fromPartial({
    vmName: flagString(flags, 'vm') ?? '',
    nodeId: flagString(flags, 'node') ?? '',
    states: parseStates(flagStrings(flags, 'state')),
    policyKinds: [...new Set(parseList(flagStrings(flags, 'policy')).map((p) => parsePolicyKind(p)))],
    createdAfter: since,
    createdBefore: until,
    planId: flagString(flags, 'plan') ?? '',
    runIds: parseList(flagStrings(flags, 'run')),
    label: flagString(flags, 'label') ?? '',
  });
}

/** `runs [filters] [--limit N] [--page-token T]`. */
export function listRunsRequest(flags: FlagValues, now: number): ListRunsRequest {
  return ListRunsRequest.fromPartial({
    filter: runFilterFromFlags(flags, now),
    pageSize: optional(flags, 'limit', (r, f) => parseInteger(r, f, 1, 1000)) ?? 0,
    pageToken: flagString(flags, 'page-token') ?? '',
  });
}

/** `export [filters] --format json|csv`. */
export function exportRequest(flags: FlagValues, now: number): ExportRunsRequest {
  const fmt = (flagString(flags, 'format') ?? 'json').toLowerCase();
  if (fmt !== 'json' && fmt !== 'csv') throw new UsageError(`--format: ${JSON.stringify(fmt)} is not json or csv`);
  return ExportRunsRequest.fromPartial({ filter: runFilterFromFlags(flags, now), format: fmt === 'csv' ? ExportFormat.EXPORT_FORMAT_CSV : ExportFormat.EXPORT_FORMAT_JSON });
}

/** `set RUN --downtime MS | --bandwidth RATE`. */
export function adjustRunRequest(runId: string, flags: FlagValues): AdjustRunRequest {
  const downtime = optional(flags, 'downtime', downtimeMs);
  const bandwidth = optional(flags, 'bandwidth', parseRate);
  if (downtime === undefined && bandwidth === undefined) throw new UsageError('set: give --downtime MS and/or --bandwidth RATE');
  return AdjustRunRequest.fromPartial({
    runId,
    ...(downtime !== undefined ? { downtimeLimitMs: downtime } : {}),
    ...(bandwidth !== undefined ? { maxBandwidthBytesPerSec: bandwidth } : {}),
    reason: flagString(flags, 'reason') ?? '',
  });
}

/** `watch RUN` or `watch --cluster`. */
export function watchRequest(run: string | undefined, flags: FlagValues): WatchRequest {
  const cluster = flagBool(flags, 'cluster');
  if (cluster && run !== undefined) throw new UsageError('watch: give either RUN or --cluster, not both');
  if (!cluster && run === undefined) throw new UsageError('watch: give RUN or --cluster');
  return WatchRequest.fromPartial({
    scope: cluster ? { $case: 'cluster', value: true } : { $case: 'runId', value: run ?? '' },
    statesOnly: flagBool(flags, 'states-only'),
  });
}
