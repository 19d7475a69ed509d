/**
 * What migctl accepts: its commands, their arguments and flags, with the help text for each. The
 * parser (args.ts) and the help (help.ts) are both made from this one table.
 */

/** One flag. */
export interface FlagSpec {
  readonly type: 'string' | 'boolean';
  readonly short?: string;
  /** May be repeated (values collected in order). */
  readonly multiple?: boolean;
  /** Placeholder shown in help for a string flag, e.g. "MS". */
  readonly value?: string;
  readonly help: string;
}

export type FlagSpecs = Readonly<Record<string, FlagSpec>>;

export const GLOBAL_FLAGS: FlagSpecs = {
  coordinator: { type: 'string', value: 'HOST:PORT[,…]', help: 'coordinator address, or the addresses of replicated coordinators (calls follow the leader; env MIGD_COORDINATOR, default 127.0.0.1:7000)' },
  'cert-dir': { type: 'string', value: 'DIR', help: 'folder with ca.crt and IDENTITY.{crt,key} (env MIGD_CERT_DIR, default <repo>/.cache/certs)' },
  identity: { type: 'string', value: 'NAME', help: 'client certificate to use; its name is your role (env MIGD_IDENTITY, default operator)' },
  json: { type: 'boolean', help: 'machine-readable output: proto JSON (one object per line while watching)' },
  timeout: { type: 'string', value: 'DURATION', help: 'deadline of each call (default 10s, create-vm 90s); bounds a watch too when given' },
  help: { type: 'boolean', short: 'h', help: 'show help' },
};

const POLICY_FLAGS: FlagSpecs = {
  policy: { type: 'string', value: 'NAME', help: 'adaptive | fixed | nova | ovirt-minimal | ovirt-suspend | ovirt-postcopy | kubevirt | kubevirt-stall (default: the coordinator\'s, fixed)' },
  downtime: { type: 'string', value: 'MS', help: 'initial downtime limit (e.g. 300, 1.5s)' },
  'max-downtime': { type: 'string', value: 'MS', help: 'upper bound for policies that raise the downtime limit' },
  bandwidth: { type: 'string', value: 'RATE', help: 'bandwidth limit in bytes/s (e.g. 100M, 12.5MiB/s, 800mbit; 0 = unlimited)' },
  postcopy: { type: 'boolean', help: 'enable post-copy (fixed: switch after the first pass)' },
  'postcopy-after': { type: 'string', value: 'N|DURATION', help: 'switch to post-copy after N passes, or after a time (e.g. 20s)' },
  'postcopy-on-demand': { type: 'boolean', help: 'enable post-copy, switch only on force-complete' },
  'no-postcopy': { type: 'boolean', help: 'never use post-copy (also not as the adaptive policy\'s last resort)' },
  'no-preempt': { type: 'boolean', help: 'post-copy without postcopy-preempt' },
  'auto-converge': { type: 'boolean', help: "throttle the guest's vCPUs from the start" },
  multifd: { type: 'string', value: 'N', help: 'use N parallel multifd channels' },
  'multifd-compression': { type: 'string', value: 'ALG', help: 'none | zlib | zstd (with --multifd)' },
  xbzrle: { type: 'string', value: 'SIZE', help: 'xbzrle delta compression with a page cache of SIZE (e.g. 64M)' },
  tls: { type: 'boolean', help: 'encrypt the migration stream with the nodes\' certificates' },
  'switchover-ack': { type: 'boolean', help: 'the destination acknowledges before switch-over' },
  'completion-timeout': { type: 'string', value: 'SEC', help: 'give up (or force) after SEC seconds per GiB of guest memory' },
  'progress-timeout': { type: 'string', value: 'DURATION', help: 'give up (or force) when remaining bytes stop falling this long' },
  'on-timeout': { type: 'string', value: 'ACTION', help: 'abort | force-complete (default abort)' },
  priority: { type: 'string', value: 'N', help: 'higher priorities are dispatched first (default 0)' },
  key: { type: 'string', value: 'KEY', help: 'idempotency key: the same key returns the same plan (default: a new random key)' },
  label: { type: 'string', value: 'LABEL', help: 'label the runs (e.g. an experiment name); runs/history compare --label select by it' },
  watch: { type: 'boolean', short: 'w', help: 'follow the runs until they finish; exit 1 unless all succeeded' },
};

const FILTER_FLAGS: FlagSpecs = {
  vm: { type: 'string', value: 'NAME', help: 'runs of this VM' },
  node: { type: 'string', value: 'NODE', help: 'runs from or to this node' },
  state: { type: 'string', multiple: true, value: 'STATES', help: 'any of these states, comma-separated (queued, precopy, succeeded, failed, cancelled…, or active/finished)' },
  policy: { type: 'string', multiple: true, value: 'NAMES', help: 'any of these policies, comma-separated' },
  since: { type: 'string', value: 'TIME', help: 'created at or after (ISO time, or an age such as 2h, 7d)' },
  until: { type: 'string', value: 'TIME', help: 'created before (ISO time, or an age)' },
  plan: { type: 'string', value: 'PLAN', help: 'runs of this plan' },
  run: { type: 'string', multiple: true, value: 'RUNS', help: 'only these runs, comma-separated' },
  label: { type: 'string', value: 'LABEL', help: 'runs whose policy carries this label' },
};

/** One command. */
export interface CommandSpec {
  /** How it is called, after `migctl`. */
  readonly synopsis: string;
  readonly summary: string;
  /** Required positional arguments (names, for messages), then optional ones. */
  readonly args: readonly string[];
  readonly optionalArgs?: readonly string[];
  readonly flags: FlagSpecs;
  /** Extra help lines. */
  readonly notes?: readonly string[];
}

export const COMMANDS = {
  nodes: { synopsis: 'nodes', summary: 'list the cluster\'s nodes', args: [], flags: {} },
  vms: { synopsis: 'vms [--node NODE]', summary: 'list VMs', args: [], flags: { node: { type: 'string', value: 'NODE', help: 'only VMs on this node' } } },
  'create-vm': {
    synopsis: 'create-vm NAME --memory MIB [--node NODE] [--pattern P --workers N --bytes SIZE --rate RATE] [--disk id=ID,path=PATH,…] [--nic NETWORK…] [--boot disk]',
    summary: 'start a VM: the memory-verifying migd guest, or one of your own booted from its disk',
    args: ['NAME'],
    flags: {
      memory: { type: 'string', value: 'MIB', help: 'guest memory in MiB (or with a unit: 1G); required' },
      node: { type: 'string', value: 'NODE', help: 'start it on this node (default: placement chooses)' },
      vcpus: { type: 'string', value: 'N', help: 'virtual CPUs (default 1)' },
      pattern: { type: 'string', value: 'P', help: 'random | compressible | hotcold | idle (default random)' },
      workers: { type: 'string', value: 'N', help: 'workload threads (default 1)' },
      bytes: { type: 'string', value: 'SIZE', help: 'memory each worker rewrites (default 64M)' },
      rate: { type: 'string', value: 'RATE', help: 'per-worker write rate limit, e.g. 10M (default unlimited)' },
      'hot-bytes': { type: 'string', value: 'SIZE', help: 'hot set size for --pattern hotcold' },
      'no-verify': { type: 'boolean', help: 'do not verify page contents in the guest' },
      accel: { type: 'string', value: 'A', help: 'auto | kvm | tcg (default auto)' },
      machine: { type: 'string', value: 'TYPE', help: 'QEMU machine type (default: the node\'s)' },
      label: { type: 'string', multiple: true, value: 'K=V', help: 'a label (repeatable)' },
      'anti-affinity': { type: 'string', value: 'GROUP', help: 'never place on a node with another VM of GROUP' },
      nic: { type: 'string', multiple: true, value: 'NETWORK[,mac=MAC][,ip=A.B.C.D/LEN]', help: 'a virtio network card on NETWORK (repeatable; MAC default generated; ip: the migd guest configures it and answers a UDP echo)' },
      disk: {
        type: 'string',
        multiple: true,
        value: 'id=ID,path=PATH[,KEY=VALUE…]',
        help: 'a disk image at PATH on the node (absolute, inside its storage roots); keys: mode=local|shared (default local: a migration copies it; shared: both nodes see PATH), format=raw|qcow2 (default qcow2 for base= or a .qcow2 path, else raw), bus=virtio|scsi, cache=none|writeback|writethrough|directsync|unsafe, aio=threads|native|io_uring, serial=S, readonly, create=SIZE (the node creates a sparse image), base=PATH (the node creates a qcow2 overlay on PATH)',
      },
      'disk-workload': { type: 'string', value: 'ID[,bytes=SIZE][,rate=RATE]', help: 'the migd guest writes generation-tagged blocks to disk ID (default 32M of it, at 1M/s) and verifies them after every migration' },
      boot: { type: 'string', value: 'kernel|disk', help: 'kernel (default): the migd guest image, or --kernel; disk: the firmware boots the first --disk (no kernel, no migd workload)' },
      kernel: { type: 'string', value: 'PATH', help: 'boot this kernel (a path on the node) instead of the migd guest image' },
      initrd: { type: 'string', value: 'PATH', help: 'its initramfs (with --kernel)' },
      append: { type: 'string', value: 'ARGS', help: 'extra kernel command-line arguments' },
    },
    notes: [
      'Disk paths are on the node, inside its storage roots (--storage-root; default its --state-dir). A LOCAL disk',
      "is copied live over NBD when the VM migrates (the copy lands in the destination's first storage root,",
      'under disks/VM/); a SHARED disk is opened by both nodes at the same path and never copied.',
    ],
  },
  'stop-vm': { synopsis: 'stop-vm VM', summary: 'stop a VM (QEMU exits) and keep it, with its disks and MACs, to start again', args: ['VM'], flags: {} },
  'start-vm': { synopsis: 'start-vm VM', summary: 'start a stopped VM again on its node', args: ['VM'], flags: {} },
  'delete-vm': {
    synopsis: 'delete-vm VM [--delete-disks]',
    summary: 'delete a VM (stopping it first); its disk images stay unless --delete-disks',
    args: ['VM'],
    flags: { 'delete-disks': { type: 'boolean', help: 'also delete the disk images its node created for it (never images given by path)' } },
  },
  migrate: {
    synopsis: 'migrate VM [--to NODE] [--policy NAME] [policy flags] [--priority N] [--key KEY] [--watch]',
    summary: 'live-migrate one VM',
    args: ['VM'],
    flags: { to: { type: 'string', value: 'NODE', help: 'destination (default: placement chooses)' }, ...POLICY_FLAGS },
  },
  drain: {
    synopsis: 'drain NODE [--to NODE,…] [--policy NAME] [policy flags] [--watch]',
    summary: 'migrate every VM off a node',
    args: ['NODE'],
    flags: { to: { type: 'string', multiple: true, value: 'NODES', help: 'allowed destinations, comma-separated (default: any up node)' }, ...POLICY_FLAGS },
  },
  watch: {
    synopsis: 'watch RUN | watch --cluster',
    summary: 'follow a run (replayed from its start) with a live progress bar, or every event of the cluster',
    args: [],
    optionalArgs: ['RUN'],
    flags: {
      cluster: { type: 'boolean', help: 'every run and node of the cluster, live (until Ctrl-C)' },
      'states-only': { type: 'boolean', help: 'state changes, actions and completions only' },
    },
    notes: ['On a terminal the progress is one line per run, redrawn in place; otherwise one line per second per run.'],
  },
  runs: {
    synopsis: 'runs [filters] [--limit N] [--page-token T | --all]',
    summary: 'list runs, newest first',
    args: [],
    flags: {
      ...FILTER_FLAGS,
      limit: { type: 'string', value: 'N', help: 'runs per page (default 50, at most 1000)' },
      'page-token': { type: 'string', value: 'TOKEN', help: 'continue from a previous page' },
      all: { type: 'boolean', help: 'fetch every page' },
    },
  },
  run: { synopsis: 'run RUN', summary: 'a run\'s details, state changes, actions and a summary of its timeline', args: ['RUN'], flags: {} },
  cancel: { synopsis: 'cancel RUN [--reason TEXT]', summary: 'cancel a queued or running run', args: ['RUN'], flags: { reason: { type: 'string', value: 'TEXT', help: 'why (recorded with the run)' } } },
  'force-complete': {
    synopsis: 'force-complete RUN [--reason TEXT]',
    summary: 'make a running migration finish now (post-copy when enabled, else pause the guest)',
    args: ['RUN'],
    flags: { reason: { type: 'string', value: 'TEXT', help: 'why (recorded with the run)' } },
  },
  set: {
    synopsis: 'set RUN [--downtime MS] [--bandwidth RATE]',
    summary: 'change the downtime or bandwidth limit of a running migration',
    args: ['RUN'],
    flags: {
      downtime: { type: 'string', value: 'MS', help: 'new downtime limit' },
      bandwidth: { type: 'string', value: 'RATE', help: 'new bandwidth limit in bytes/s (0 = unlimited)' },
      reason: { type: 'string', value: 'TEXT', help: 'why (recorded with the run)' },
    },
  },
  'history compare': {
    synopsis: 'history compare [filters]',
    summary: 'compare policies over past runs: completion, times, downtime, guest harm, host CPU',
    args: [],
    flags: FILTER_FLAGS,
  },
  export: {
    synopsis: 'export [filters] --format json|csv [-o FILE]',
    summary: 'export runs with their timelines',
    args: [],
    flags: {
      ...FILTER_FLAGS,
      format: { type: 'string', value: 'FMT', help: 'json (an array of timelines) or csv (one row per progress sample); default json' },
      output: { type: 'string', short: 'o', value: 'FILE', help: 'write to FILE instead of standard output' },
    },
  },
} as const satisfies Readonly<Record<string, CommandSpec>>;

export type CommandName = keyof typeof COMMANDS;

export function isCommandName(s: string): s is CommandName {
  return Object.hasOwn(COMMANDS, s);
}
