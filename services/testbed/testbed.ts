/**
 * Test hosts for migd on one machine: each "host" is a network namespace with a management and a
 * migration interface, wired through a switch namespace so links can be shaped, delayed, made
 * lossy and cut. Used by integration tests, by `npm start` (nats-server, coordinator, node daemons
 * in namespaces) and by the scenario lab.
 *
 * Topology (slot S, hosts a, b, …; host i gets .10+i; all from RFC 2544's 198.18.0.0/15):
 *
 *   root netns                 switch netns <name>-sw                     host netns <name>-a
 *  ┌───────────────────┐      ┌────────────────────────────────┐        ┌──────────────────────────┐
 *  │ mgd<id>           │ veth │ mgmt-root ─┐                   │        │                          │
 *  │ 198.18.S.1/24     ├──────┤            ├ br-mgmt ── m-a ───┼────────┤ mgmt0 198.18.S.10/24     │
 *  │ (tb.rootAddress)  │      │            └─────────── m-b ───┼──┐     │                          │
 *  └───────────────────┘      │                                │  │     │ mig0  198.19.S.10/24     │
 *                             │   br-mig ─────────────── g-a ──┼──┼─────┤  └ tc htb: rate/burst    │
 *                             │     │ nft bridge: cut, loss    │  │     └──────────────────────────┘
 *                             │     │ NFQUEUE: delay, jitter   │  │     host netns <name>-b
 *                             │     └─────────────────── g-b ──┼──┼──┐  ┌──────────────────────────┐
 *                             └────────────────────────────────┘  └──┼──┤ mgmt0 198.18.S.11/24     │
 *                                                                    └──┤ mig0  198.19.S.11/24     │
 *                                                                       └──────────────────────────┘
 *
 * - Management network 198.18.S.0/24: the root namespace and every host on one bridge, so the
 *   coordinator, nats-server and tests (root namespace) reach each host's `mgmtAddress`, and hosts
 *   reach root services at `rootAddress` (bind them to it or to 0.0.0.0).
 * - Migration network 198.19.S.0/24: hosts only; not routed from the root namespace.
 * - No default routes anywhere and the root namespace does not forward, so nothing created here
 *   can send traffic off the machine; the root namespace only gains `mgd<id>` and its /24 route.
 * - Impairments (see shaping.ts): rate on each host's mig0 egress, the rest in the switch.
 * - MTU (option `migrationMtu`, default 1500): set on everything the migration traffic crosses —
 *   each host's mig0, its switch port g-<host> and br-mig — so jumbo-frame migration networks
 *   (9000) can be modelled; the management and VM networks keep 1500.
 * - VM network (option `vmNetwork`, issue 13) 198.19.S.128/25: `br-vm` in the switch namespace
 *   with a veth `v-<host>` to each host's `vm0`, itself a port of the host's own `br-vm`, where
 *   guests' tap devices join (`addTap`); plus a client namespace `<name>-vmc` (198.19.S.129 on its
 *   `vm0`) from which probes reach the guests. Hosts have no address on it: pure L2, separate from
 *   the management and migration networks. Guest i gets 198.19.S.(140+i) (`vm.guestAddress(i)`).
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import {
  DependencyError,
  FailedPreconditionError,
  InvalidArgumentError,
  MigdError,
  ResourceExhaustedError,
} from '../shared/errors.js';
import { createLogger, type Logger } from '../shared/log.js';
import {
  DEFAULT_MIGRATION_MTU,
  DEFAULT_PREFIX,
  ETHERNET_MTU,
  MGMT_BRIDGE,
  MGMT_IF,
  MIGRATION_BRIDGE,
  MIGRATION_IF,
  ROOT_PORT,
  SLOT_COUNT,
  VM_BRIDGE,
  VM_CLIENT_PORT,
  VM_IF,
  vmGuestAddress,
  vmGuestMac,
  layoutNamespaces,
  namespacePattern,
  planLayout,
  randomId,
  slotsInUse,
  validateHostNames,
  validateMigrationMtu,
  validatePrefix,
  type HostLayout,
  type Layout,
  type Network,
} from './addressing.js';
import { DelayLine } from './delayline.js';
import { CommandFailedError, runChecked, systemRunner, type CommandResult, type CommandRunner, type RunOptions } from './runner.js';
import {
  cutKey,
  delayPlan,
  iptablesRuleset,
  isEmptyShape,
  nftRuleset,
  tcResetArgs,
  tcShapeArgs,
  validateShape,
  type Cut,
  type HostShaping,
  type LinkShape,
} from './shaping.js';
import {
  DEFAULT_STATE_DIR,
  claimSlot,
  claimState,
  isCreatorAlive,
  processStartTime,
  readSlotOwners,
  readStates,
  releaseSlot,
  removeState,
  removeStateSync,
  writeState,
  type TestbedState,
} from './state.js';

export interface TestbedOptions {
  /** Host names, 1..64, each matching /^[a-z][a-z0-9-]{0,11}$/ ("sw" is reserved). */
  readonly hosts: readonly string[];
  /** Namespace-name prefix. Default `migd-`; namespaces are `<prefix><6 hex>-<host>`. */
  readonly prefix?: string;
  /** Initial migration-egress shaping per host (as `shape(host, …)`). Default: none. */
  readonly links?: Readonly<Record<string, LinkShape>>;
  /** Run `Testbed.cleanupStale(prefix)` first. Default true. */
  readonly cleanupStale?: boolean;
  /** Where state and slot files live. Default `/run/migd-testbed`. */
  readonly stateDir?: string;
  /** Python 3 used by the delay line (only started when a delay is set). Default `python3`. */
  readonly python?: string;
  /** Add the VM network (guests' L2 across all hosts, and a client namespace). Default false. */
  readonly vmNetwork?: boolean;
  /**
   * MTU of the migration network (hosts' mig0, the switch ports and br-mig), 1280..9000.
   * Default 1500; 9000 models a jumbo-frame migration network.
   */
  readonly migrationMtu?: number;
  /** Runs ip/tc/nft/iptables. Default: the real system; tests may wrap it. */
  readonly runner?: CommandRunner;
  readonly logger?: Logger;
}

export interface ExecOptions extends RunOptions {
  /** Reject with CommandFailedError on a non-zero exit. Default true. */
  readonly check?: boolean;
}

/** One test host: a network namespace with a management and a migration interface. */
export interface TestbedHost {
  readonly name: string;
  /** Network namespace name (for `ip netns exec`, `nsenter --net=/run/netns/<netns>`). */
  readonly netns: string;
  /** Address on the management network, reachable from the root namespace. */
  readonly mgmtAddress: string;
  /** Address on the migration network, reachable from the other hosts only. */
  readonly migrationAddress: string;
  readonly mgmtInterface: string;
  readonly migrationInterface: string;
  /** The host's VM-network bridge (`br-vm`) that guests' taps join; undefined without a VM network. */
  readonly vmBridge: string | undefined;
  /** The argv that runs `cmd args` inside this host (for callers that spawn processes themselves). */
  command(cmd: string, args?: readonly string[]): { readonly cmd: string; readonly args: string[] };
  /**
   * Runs a command inside the host and collects its output.
   * @throws CommandFailedError on a non-zero exit (unless `check: false`), DependencyError when
   *   `ip` is missing, FailedPreconditionError after destroy.
   */
  exec(cmd: string, args?: readonly string[], opts?: ExecOptions): Promise<CommandResult>;
  /**
   * Starts a process inside the host (`ip netns exec` execs it, so the child's pid is the
   * command's). `destroy()` kills whatever still runs in the namespace.
   * @throws FailedPreconditionError after destroy.
   */
  spawn(cmd: string, args?: readonly string[], opts?: SpawnOptions): ChildProcess;
}

/** A namespace on the VM network that is not a host: the client that probes the guests. */
export interface TestbedVmClient {
  readonly netns: string;
  readonly address: string;
  command(cmd: string, args?: readonly string[]): { readonly cmd: string; readonly args: string[] };
  exec(cmd: string, args?: readonly string[], opts?: ExecOptions): Promise<CommandResult>;
  spawn(cmd: string, args?: readonly string[], opts?: SpawnOptions): ChildProcess;
}

/** The VM network of a testbed (option `vmNetwork`). */
export interface TestbedVmNetwork {
  /** 198.19.S.128/25. */
  readonly subnet: string;
  readonly prefixLength: number;
  /** Bridge name in every host namespace (and in the switch namespace). */
  readonly bridge: string;
  readonly client: TestbedVmClient;
  /** Address of guest i (0-based): 198.19.S.(140+i). @throws InvalidArgumentError out of range. */
  guestAddress(i: number): string;
  /** A MAC unique within the testbed for guest i. */
  guestMac(i: number): string;
}

/** Limits an operation to the link between a host and one peer host. */
export interface PeerOptions {
  /** Peer host name; omitted = all of the host's traffic. */
  readonly to?: string;
}

export interface CutOptions extends PeerOptions {
  /** Which network to cut. Default `migration`. */
  readonly network?: Network;
}

interface MutableShaping {
  egress: LinkShape | undefined;
  peers: Map<string, LinkShape>;
}

/** What teardown needs; a live Testbed and a stale state file both provide it. */
interface TeardownTarget {
  readonly name: string;
  readonly namespaces: readonly string[];
  readonly rootLinks: readonly string[];
}

const KILL_GRACE_MS = 2000;
const POLL_MS = 50;

// Live testbeds of this process, destroyed by the exit/signal hooks below.
const live = new Set<Testbed>();
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
const signalHandlers = new Map<NodeJS.Signals, () => void>(SIGNALS.map((s) => [s, () => onSignal(s)]));
let hooked = false;

function destroyAllSync(): void {
  for (const tb of [...live]) tb.destroySync();
}

function onSignal(sig: NodeJS.Signals): void {
  destroyAllSync();
  const othersListen = process.listenerCount(sig) > 1;
  unhook();
  // Nobody else handles it: re-raise so the process dies of the signal as it would have.
  if (!othersListen) process.kill(process.pid, sig);
}

function hook(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', destroyAllSync);
  for (const [sig, h] of signalHandlers) process.on(sig, h);
}

function unhook(): void {
  if (!hooked) return;
  hooked = false;
  process.off('exit', destroyAllSync);
  for (const [sig, h] of signalHandlers) process.off(sig, h);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function parsePids(stdout: string): number[] {
  return stdout
    .split(/\s+/)
    .filter((s) => /^\d+$/.test(s))
    .map(Number)
    .filter((p) => p !== process.pid);
}

function signalAll(pids: readonly number[], sig: NodeJS.Signals): void {
  for (const p of pids) {
    try {
      process.kill(p, sig);
    } catch {
      // already gone
    }
  }
}

async function listNamespaces(runner: CommandRunner): Promise<string[]> {
  const r = await runChecked(runner, 'ip', ['netns', 'list']);
  return parseNetnsList(r.stdout);
}

/** Names from `ip netns list` output (`name (id: N)` or `name`). */
export function parseNetnsList(stdout: string): string[] {
  return stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n !== '');
}

async function namespacePids(runner: CommandRunner, ns: string): Promise<number[]> {
  const r = await runner.run('ip', ['netns', 'pids', ns]);
  return r.code === 0 ? parsePids(r.stdout) : [];
}

/** SIGTERM everything in `ns`, then SIGKILL what survives the grace period. */
async function killNamespace(runner: CommandRunner, ns: string): Promise<void> {
  for (const sig of ['SIGTERM', 'SIGKILL'] as const) {
    let pids = await namespacePids(runner, ns);
    if (pids.length === 0) return;
    signalAll(pids, sig);
    const deadline = Date.now() + KILL_GRACE_MS;
    while (pids.length > 0 && Date.now() < deadline) {
      await sleep(POLL_MS);
      pids = await namespacePids(runner, ns);
    }
    if (pids.length === 0) return;
  }
}

/**
 * Removes a testbed's processes, root-namespace links and namespaces. Tolerates any of them being
 * absent. @throws MigdError listing what could not be removed.
 */
async function removeResources(runner: CommandRunner, target: TeardownTarget): Promise<void> {
  const existing = new Set(await listNamespaces(runner).catch(() => [...target.namespaces]));
  const mine = target.namespaces.filter((n) => existing.has(n));
  for (const ns of mine) await killNamespace(runner, ns);
  for (const link of target.rootLinks) await runner.run('ip', ['link', 'del', 'dev', link]);
  for (const ns of mine) await runner.run('ip', ['netns', 'del', ns]);
  const after = new Set(await listNamespaces(runner).catch(() => []));
  const left = mine.filter((n) => after.has(n));
  if (left.length > 0) throw new MigdError('INTERNAL', `testbed ${target.name}: could not delete namespaces ${left.join(', ')}`);
}

function removeResourcesSync(runner: CommandRunner, target: TeardownTarget): void {
  for (const ns of target.namespaces) {
    const r = runner.runSync('ip', ['netns', 'pids', ns], { timeoutMs: 5000 });
    if (r.code === 0) signalAll(parsePids(r.stdout), 'SIGKILL');
  }
  for (const link of target.rootLinks) runner.runSync('ip', ['link', 'del', 'dev', link], { timeoutMs: 5000 });
  for (const ns of target.namespaces) runner.runSync('ip', ['netns', 'del', ns], { timeoutMs: 5000 });
}

function shuffled(n: number): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [a[i], a[j]] = [a[j] as number, a[i] as number];
  }
  return a;
}

/** A set of test hosts. Create with `Testbed.create`, always end with `destroy()`. */
export class Testbed {
  /** `<prefix><id>`: common prefix of every namespace of this testbed. */
  readonly name: string;
  /** Address of the root namespace on the management network (where hosts reach root services). */
  readonly rootAddress: string;
  /** Root-namespace interface carrying `rootAddress`. */
  readonly rootInterface: string;
  /** Management and migration subnets (CIDR). */
  readonly mgmtSubnet: string;
  readonly migrationSubnet: string;
  /** Name of the switch namespace (bridges, cuts, loss, delay line). */
  readonly switchNetns: string;
  readonly hosts: readonly TestbedHost[];
  /** The VM network, when created with `vmNetwork: true`. */
  readonly vm: TestbedVmNetwork | undefined;
  /** MTU of the migration network's interfaces and bridge (option `migrationMtu`). */
  readonly migrationMtu: number;

  private readonly hostByName: Map<string, TestbedHost>;
  private readonly layoutByName: Map<string, HostLayout>;
  private shaping = new Map<string, MutableShaping>();
  private cuts = new Map<string, Cut>();
  private readonly appliedTc = new Map<string, string>();
  private appliedNft = '';
  private appliedDelay = '';
  private delayLine: DelayLine | undefined;
  private iptablesRestore: string | undefined;
  private brNetfilterOn = false;
  private tail: Promise<void> = Promise.resolve();
  private destroying: Promise<void> | undefined;
  private isDestroyed = false;

  private constructor(
    private readonly layout: Layout,
    private readonly state: TestbedState,
    private readonly stateDir: string,
    private readonly runner: CommandRunner,
    private readonly log: Logger,
    private readonly python: string,
  ) {
    this.name = layout.name;
    this.rootAddress = layout.rootAddress;
    this.rootInterface = layout.rootLink;
    this.mgmtSubnet = layout.mgmtSubnet;
    this.migrationSubnet = layout.migrationSubnet;
    this.switchNetns = layout.switchNs;
    this.migrationMtu = layout.migrationMtu;
    this.layoutByName = new Map(layout.hosts.map((h) => [h.name, h]));
    this.hosts = layout.hosts.map((h) => this.makeHost(h));
    this.hostByName = new Map(this.hosts.map((h) => [h.name, h]));
    this.vm = this.makeVmNetwork();
    for (const h of layout.hosts) this.shaping.set(h.name, { egress: undefined, peers: new Map() });
  }

  /**
   * Checks that testbeds can be created here: Linux, root, network namespaces, iproute2.
   * @throws DependencyError naming what is missing.
   */
  static async preflight(runner: CommandRunner = systemRunner): Promise<void> {
    if (process.platform !== 'linux') throw new DependencyError('linux', 'network namespaces need Linux');
    if (process.getuid?.() !== 0) {
      throw new DependencyError('root', 'creating network namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)');
    }
    if (!existsSync('/proc/self/ns/net')) throw new DependencyError('netns', 'this kernel has no network namespace support');
    const v = await runner.run('ip', ['-V']);
    if (v.code !== 0) throw new DependencyError('ip', `\`ip -V\` failed: ${v.stderr.trim()}`);
    const l = await runner.run('ip', ['netns', 'list']);
    if (l.code !== 0) throw new DependencyError('netns', `\`ip netns list\` failed: ${l.stderr.trim()}`);
  }

  /**
   * Creates the namespaces, bridges, links and addresses. On any failure everything created so
   * far is removed before the error is rethrown.
   * @throws InvalidArgumentError (bad options), DependencyError (preflight), ResourceExhaustedError
   *   (all 256 address slots taken), CommandFailedError (a setup command failed).
   */
  static async create(opts: TestbedOptions): Promise<Testbed> {
    const prefix = opts.prefix ?? DEFAULT_PREFIX;
    validatePrefix(prefix);
    if (!Array.isArray(opts.hosts)) throw new InvalidArgumentError('testbed hosts must be an array of names');
    validateHostNames(opts.hosts);
    const links = Object.entries(opts.links ?? {});
    for (const [h, s] of links) {
      if (!opts.hosts.includes(h)) throw new InvalidArgumentError(`testbed links: unknown host ${JSON.stringify(h)}`);
      validateShape(s);
    }
    // Checked here, before preflight and before any state is claimed, so a bad value names the
    // option and leaves nothing behind.
    const migrationMtu = validateMigrationMtu(opts.migrationMtu ?? DEFAULT_MIGRATION_MTU);
    const runner = opts.runner ?? systemRunner;
    const log = opts.logger ?? createLogger('testbed');
    const stateDir = opts.stateDir ?? DEFAULT_STATE_DIR;
    await Testbed.preflight(runner);
    if (opts.cleanupStale ?? true) await Testbed.cleanupStale(prefix, { stateDir, runner, logger: log });

    // Claim a name: the state file is written before anything exists, so nothing can leak.
    const existing = await listNamespaces(runner);
    let state: TestbedState | undefined;
    for (let attempt = 0; attempt < 32 && !state; attempt++) {
      const plan = planLayout(prefix, randomId(), 0, opts.hosts, { vmNetwork: opts.vmNetwork ?? false, migrationMtu });
      if (existing.some((n) => n.startsWith(`${plan.name}-`))) continue;
      if ((await runner.run('ip', ['link', 'show', 'dev', plan.rootLink])).code === 0) continue;
      const candidate: TestbedState = {
        version: 1,
        name: plan.name,
        prefix,
        id: plan.id,
        pid: process.pid,
        pidStart: processStartTime(process.pid),
        slot: null,
        namespaces: layoutNamespaces(plan),
        rootLinks: [plan.rootLink],
        createdAt: new Date().toISOString(),
      };
      if (await claimState(stateDir, candidate)) state = candidate;
    }
    if (!state) throw new ResourceExhaustedError('testbed: could not find an unused testbed id');

    let slot: number | undefined;
    try {
      const routes = await runner.run('ip', ['-j', '-4', 'route', 'show', 'table', 'all']);
      let dsts: string[] = [];
      try {
        dsts = (JSON.parse(routes.stdout || '[]') as { dst?: unknown }[]).map((r) => String(r.dst ?? ''));
      } catch {
        // unparsable: rely on the slot files alone
      }
      const used = slotsInUse(dsts);
      const owners = await readSlotOwners(stateDir);
      for (const s of shuffled(SLOT_COUNT)) {
        if (used.has(s) || owners.has(s)) continue;
        if (await claimSlot(stateDir, s, state.name)) {
          slot = s;
          break;
        }
      }
      if (slot === undefined) throw new ResourceExhaustedError(`testbed: all ${SLOT_COUNT} address slots in 198.18.0.0/15 are in use`);
      state = { ...state, slot };
      await writeState(stateDir, state);
    } catch (e) {
      if (slot !== undefined) await releaseSlot(stateDir, slot, state.name);
      await removeState(stateDir, state.name);
      throw e;
    }

    const layout = planLayout(prefix, state.id, slot, opts.hosts, { vmNetwork: opts.vmNetwork ?? false, migrationMtu });
    const tb = new Testbed(layout, state, stateDir, runner, log, opts.python ?? 'python3');
    live.add(tb);
    hook();
    try {
      await tb.build();
      for (const [h, s] of links) await tb.shape(h, s);
    } catch (e) {
      await tb.destroy().catch((d: unknown) => log.error('testbed cleanup after failed create failed', { testbed: tb.name, err: d }));
      throw e;
    }
    log.info('testbed created', { testbed: tb.name, hosts: opts.hosts, rootAddress: tb.rootAddress, migrationMtu });
    return tb;
  }

  /**
   * Removes leftovers of testbeds whose creating process is dead (crashed runs): their processes,
   * namespaces, root links, state and slot files; also namespaces matching `<prefix><6 hex>-…`
   * that no state file accounts for. Live testbeds (of any process) are left alone.
   * @returns names of the testbeds removed.
   */
  static async cleanupStale(
    prefix: string = DEFAULT_PREFIX,
    opts: { stateDir?: string; runner?: CommandRunner; logger?: Logger } = {},
  ): Promise<string[]> {
    validatePrefix(prefix);
    const runner = opts.runner ?? systemRunner;
    const log = opts.logger ?? createLogger('testbed');
    const stateDir = opts.stateDir ?? DEFAULT_STATE_DIR;
    const removed: string[] = [];
    const accounted = new Set<string>();
    // Read order matters for racing creators: a testbed claims its state file before its slot and
    // its namespaces, so listing slots and namespaces *before* reading the state files guarantees
    // every slot or namespace of a live testbed seen here also has its state file seen here.
    const slotOwners = await readSlotOwners(stateDir);
    const namespaces = await listNamespaces(runner);
    const states = await readStates(stateDir);
    for (const s of states) {
      for (const n of s.namespaces) accounted.add(n);
      if (!s.name.startsWith(prefix) || isCreatorAlive(s)) continue;
      try {
        await removeResources(runner, s);
        if (s.slot !== null) await releaseSlot(stateDir, s.slot, s.name);
        await removeState(stateDir, s.name);
        removed.push(s.name);
        log.info('removed stale testbed', { testbed: s.name, creatorPid: s.pid });
      } catch (e) {
        log.warn('could not remove stale testbed', { testbed: s.name, err: e });
      }
    }
    // Namespaces without a state file (e.g. /run/migd-testbed wiped by hand).
    const orphans = new Map<string, string[]>();
    const re = namespacePattern(prefix);
    for (const ns of namespaces) {
      const m = re.exec(ns);
      if (!m || accounted.has(ns)) continue;
      const group = m[1] as string;
      orphans.set(group, [...(orphans.get(group) ?? []), ns]);
    }
    for (const [group, namespaces] of orphans) {
      const id = group.slice(prefix.length);
      try {
        await removeResources(runner, { name: group, namespaces, rootLinks: [`mgd${id}`] });
        removed.push(group);
        log.info('removed orphaned testbed namespaces', { testbed: group, namespaces });
      } catch (e) {
        log.warn('could not remove orphaned namespaces', { testbed: group, err: e });
      }
    }
    // Slot claims whose testbed no longer has a state file.
    const names = new Set(states.filter((s) => !removed.includes(s.name)).map((s) => s.name));
    for (const [slot, owner] of slotOwners) {
      if (owner.startsWith(prefix) && !names.has(owner)) await releaseSlot(stateDir, slot, owner);
    }
    return removed;
  }

  /** Destroys every live testbed of this process (e.g. from a global teardown). */
  static async destroyAll(): Promise<void> {
    await Promise.allSettled([...live].map((tb) => tb.destroy()));
  }

  /** True once `destroy()` has been called. */
  get destroyed(): boolean {
    return this.isDestroyed;
  }

  /** @throws InvalidArgumentError for an unknown host name. */
  host(name: string): TestbedHost {
    const h = this.hostByName.get(name);
    if (!h) throw new InvalidArgumentError(`testbed ${this.name}: unknown host ${JSON.stringify(name)}`);
    return h;
  }

  /**
   * Sets the impairment of `host`'s migration egress (or, with `to`, of its traffic to that peer),
   * replacing the previous one for the same scope. Per-peer settings stack on the host's: the
   * rate is capped by both, delays and losses add up. Shape both ends for symmetric links.
   * @throws InvalidArgumentError (bad shape or host), DependencyError (python3, br_netfilter or
   *   iptables missing: needed for delay), CommandFailedError, FailedPreconditionError after destroy.
   */
  async shape(host: string, shape: LinkShape, opts: PeerOptions = {}): Promise<void> {
    const { h, to } = this.scope(host, opts.to);
    const s = validateShape(shape);
    return this.mutate([h.name], () => {
      const hs = this.shapingOf(h.name);
      if (to) {
        if (isEmptyShape(s)) hs.peers.delete(to);
        else hs.peers.set(to, s);
      } else {
        hs.egress = isEmptyShape(s) ? undefined : s;
      }
    });
  }

  /**
   * Removes `host`'s impairments: all of them, or with `to` only those towards that peer.
   * @throws InvalidArgumentError, CommandFailedError, FailedPreconditionError after destroy.
   */
  async unshape(host: string, opts: PeerOptions = {}): Promise<void> {
    const { h, to } = this.scope(host, opts.to);
    return this.mutate([h.name], () => {
      const hs = this.shapingOf(h.name);
      if (to) {
        hs.peers.delete(to);
      } else {
        hs.egress = undefined;
        hs.peers.clear();
      }
    });
  }

  /**
   * Cuts `host` off its migration (or management) network, or with `to` just the link between the
   * two hosts, in both directions. Frames are dropped in the switch while both interfaces stay up:
   * established TCP connections stall (retransmitting) rather than fail, new ones time out.
   * @throws InvalidArgumentError, DependencyError (nft missing), FailedPreconditionError after destroy.
   */
  async cut(host: string, opts: CutOptions = {}): Promise<void> {
    const { h, to } = this.scope(host, opts.to);
    const network = this.networkOf(opts.network);
    return this.mutate([], () => {
      const c: Cut = { network, host: h.name, to };
      this.cuts.set(cutKey(c), c);
    });
  }

  /**
   * Undoes `cut`. Without `to`, removes every cut involving `host` on that network (its own and
   * its pair cuts); with `to`, only the pair cut. Stalled TCP connections resume on their next
   * retransmission (the backoff can reach seconds after a long cut).
   * @throws InvalidArgumentError, CommandFailedError, FailedPreconditionError after destroy.
   */
  async restore(host: string, opts: CutOptions = {}): Promise<void> {
    const { h, to } = this.scope(host, opts.to);
    const network = this.networkOf(opts.network);
    return this.mutate([], () => {
      if (to) {
        this.cuts.delete(cutKey({ network, host: h.name, to }));
        return;
      }
      for (const [k, c] of this.cuts) {
        if (c.network === network && (c.host === h.name || c.to === h.name)) this.cuts.delete(k);
      }
    });
  }

  /**
   * Removes everything the testbed created, killing processes still running in its namespaces
   * (SIGTERM, SIGKILL after 2 s). Idempotent; concurrent calls share one teardown.
   * @throws MigdError when some namespace could not be deleted (a later call retries).
   */
  destroy(): Promise<void> {
    this.isDestroyed = true;
    if (!this.destroying) {
      this.destroying = this.teardown().catch((e: unknown) => {
        this.destroying = undefined;
        throw e;
      });
    }
    return this.destroying;
  }

  /** Synchronous, best-effort destroy (SIGKILL at once) for process-exit hooks. */
  destroySync(): void {
    this.isDestroyed = true;
    if (!live.has(this)) return;
    try {
      this.delayLine?.stop();
      removeResourcesSync(this.runner, this.teardownTarget());
      removeStateSync(this.stateDir, this.name, this.state.slot);
    } catch {
      // exiting anyway; cleanupStale removes what is left
    }
    live.delete(this);
  }

  private teardownTarget(): TeardownTarget {
    return { name: this.name, namespaces: this.state.namespaces, rootLinks: this.state.rootLinks };
  }

  private async teardown(): Promise<void> {
    if (!live.has(this)) return;
    this.delayLine?.stop();
    this.delayLine = undefined;
    await removeResources(this.runner, this.teardownTarget());
    if (this.state.slot !== null) await releaseSlot(this.stateDir, this.state.slot, this.name);
    await removeState(this.stateDir, this.name);
    live.delete(this);
    if (live.size === 0) unhook();
    this.log.info('testbed destroyed', { testbed: this.name });
  }

  private async build(): Promise<void> {
    const L = this.layout;
    const ip = (...args: string[]): Promise<CommandResult> => this.sh('ip', args);
    for (const ns of layoutNamespaces(L)) {
      await ip('netns', 'add', ns);
      // No IPv6: keeps router solicitations and DAD chatter off the links being measured.
      await this.runner.run('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
      await ip('-n', ns, 'link', 'set', 'lo', 'up');
    }
    const sw = L.switchNs;
    // The migration network's MTU goes on both ends of every veth and on br-mig itself: a bridge
    // given an MTU keeps it (it no longer follows its ports), and a frame crossing it must fit
    // the sender's mig0, both veth ends and the receiver's mig0 alike. Management keeps 1500.
    const bridges = [
      { br: MGMT_BRIDGE, mtu: String(ETHERNET_MTU) },
      { br: MIGRATION_BRIDGE, mtu: String(L.migrationMtu) },
    ];
    for (const { br, mtu } of bridges) {
      await ip('-n', sw, 'link', 'add', br, 'mtu', mtu, 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0', 'mcast_snooping', '0');
      await ip('-n', sw, 'link', 'set', br, 'up');
    }
    await ip('link', 'add', L.rootLink, 'type', 'veth', 'peer', 'name', ROOT_PORT, 'netns', sw);
    try {
      writeFileSync(`/proc/sys/net/ipv6/conf/${L.rootLink}/disable_ipv6`, '1');
    } catch {
      // no IPv6 in this kernel
    }
    await ip('addr', 'add', `${L.rootAddress}/24`, 'dev', L.rootLink);
    await ip('link', 'set', L.rootLink, 'up');
    await ip('-n', sw, 'link', 'set', ROOT_PORT, 'master', MGMT_BRIDGE, 'up');
    for (const h of L.hosts) {
      const wires = [
        { port: h.mgmtPort, bridge: MGMT_BRIDGE, dev: MGMT_IF, addr: h.mgmtAddress, mtu: String(ETHERNET_MTU) },
        { port: h.migrationPort, bridge: MIGRATION_BRIDGE, dev: MIGRATION_IF, addr: h.migrationAddress, mtu: String(L.migrationMtu) },
      ];
      for (const w of wires) {
        await ip('-n', sw, 'link', 'add', w.port, 'mtu', w.mtu, 'type', 'veth', 'peer', 'name', w.dev, 'netns', h.netns, 'mtu', w.mtu);
        await ip('-n', sw, 'link', 'set', w.port, 'master', w.bridge, 'up');
        await ip('-n', h.netns, 'addr', 'add', `${w.addr}/24`, 'dev', w.dev);
        await ip('-n', h.netns, 'link', 'set', w.dev, 'up');
      }
    }
    await this.buildVmNetwork();
  }

  /** br-vm in the switch and in every host, joined by veths; the client namespace on it. */
  private async buildVmNetwork(): Promise<void> {
    const L = this.layout;
    if (!L.vm) return;
    const ip = (...args: string[]): Promise<CommandResult> => this.sh('ip', args);
    const bridge = async (ns: string): Promise<void> => {
      await ip('-n', ns, 'link', 'add', VM_BRIDGE, 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0', 'mcast_snooping', '0');
      await ip('-n', ns, 'link', 'set', VM_BRIDGE, 'up');
    };
    await bridge(L.switchNs);
    for (const h of L.hosts) {
      await bridge(h.netns);
      await ip('-n', L.switchNs, 'link', 'add', h.vmPort, 'type', 'veth', 'peer', 'name', VM_IF, 'netns', h.netns);
      await ip('-n', L.switchNs, 'link', 'set', h.vmPort, 'master', VM_BRIDGE, 'up');
      await ip('-n', h.netns, 'link', 'set', VM_IF, 'master', VM_BRIDGE, 'up');
    }
    const c = L.vm.clientNs;
    await ip('-n', L.switchNs, 'link', 'add', VM_CLIENT_PORT, 'type', 'veth', 'peer', 'name', VM_IF, 'netns', c);
    await ip('-n', L.switchNs, 'link', 'set', VM_CLIENT_PORT, 'master', VM_BRIDGE, 'up');
    await ip('-n', c, 'addr', 'add', `${L.vm.clientAddress}/${L.vm.prefixLength}`, 'dev', VM_IF);
    await ip('-n', c, 'link', 'set', VM_IF, 'up');
  }

  /**
   * Creates a tap device `name` in `host`'s namespace on its br-vm, for a QEMU
   * `-netdev tap,ifname=NAME,script=no,downscript=no` there. It goes with the namespace.
   * @throws InvalidArgumentError (unknown host, bad name, no VM network), CommandFailedError.
   */
  async addTap(host: string, name: string): Promise<void> {
    this.assertUsable();
    const h = this.layoutByName.get(host);
    if (!h) throw new InvalidArgumentError(`testbed ${this.name}: unknown host ${JSON.stringify(host)}`);
    if (!this.layout.vm) throw new InvalidArgumentError(`testbed ${this.name} has no VM network (create it with vmNetwork: true)`);
    if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$/.test(name)) throw new InvalidArgumentError(`tap name ${JSON.stringify(name)} is not an interface name`);
    await this.sh('ip', ['-n', h.netns, 'tuntap', 'add', 'dev', name, 'mode', 'tap']);
    await this.sh('ip', ['-n', h.netns, 'link', 'set', name, 'master', VM_BRIDGE, 'up']);
  }

  private makeVmNetwork(): TestbedVmNetwork | undefined {
    const vm = this.layout.vm;
    if (!vm) return undefined;
    const wrap = (cmd: string, args: readonly string[]): string[] => ['netns', 'exec', vm.clientNs, cmd, ...args];
    const client: TestbedVmClient = Object.freeze({
      netns: vm.clientNs,
      address: vm.clientAddress,
      command: (cmd: string, args: readonly string[] = []) => ({ cmd: 'ip', args: wrap(cmd, args) }),
      exec: async (cmd: string, args: readonly string[] = [], opts: ExecOptions = {}) => {
        this.assertUsable();
        const r = await this.runner.run('ip', wrap(cmd, args), opts);
        if ((opts.check ?? true) && r.code !== 0) throw new CommandFailedError(['ip', ...wrap(cmd, args)], r);
        return r;
      },
      spawn: (cmd: string, args: readonly string[] = [], opts: SpawnOptions = {}) => {
        this.assertUsable();
        return spawn('ip', wrap(cmd, args), opts);
      },
    });
    const layout = this.layout;
    return Object.freeze({
      subnet: vm.subnet,
      prefixLength: vm.prefixLength,
      bridge: VM_BRIDGE,
      client,
      guestAddress: (i: number) => vmGuestAddress(layout, i),
      guestMac: (i: number) => vmGuestMac(layout, i),
    });
  }

  private makeHost(h: HostLayout): TestbedHost {
    const wrap = (cmd: string, args: readonly string[]): string[] => ['netns', 'exec', h.netns, cmd, ...args];
    return Object.freeze({
      name: h.name,
      netns: h.netns,
      mgmtAddress: h.mgmtAddress,
      migrationAddress: h.migrationAddress,
      mgmtInterface: MGMT_IF,
      migrationInterface: MIGRATION_IF,
      vmBridge: this.layout.vm ? VM_BRIDGE : undefined,
      command: (cmd: string, args: readonly string[] = []) => ({ cmd: 'ip', args: wrap(cmd, args) }),
      exec: async (cmd: string, args: readonly string[] = [], opts: ExecOptions = {}) => {
        this.assertUsable();
        const r = await this.runner.run('ip', wrap(cmd, args), opts);
        if ((opts.check ?? true) && r.code !== 0) throw new CommandFailedError(['ip', ...wrap(cmd, args)], r);
        return r;
      },
      spawn: (cmd: string, args: readonly string[] = [], opts: SpawnOptions = {}) => {
        this.assertUsable();
        return spawn('ip', wrap(cmd, args), opts);
      },
    });
  }

  private assertUsable(): void {
    if (this.isDestroyed) throw new FailedPreconditionError(`testbed ${this.name} has been destroyed`);
  }

  private scope(host: string, to: string | undefined): { h: HostLayout; to: string | undefined } {
    const h = this.layoutByName.get(host);
    if (!h) throw new InvalidArgumentError(`testbed ${this.name}: unknown host ${JSON.stringify(host)}`);
    if (to === undefined) return { h, to };
    if (!this.layoutByName.has(to)) throw new InvalidArgumentError(`testbed ${this.name}: unknown peer host ${JSON.stringify(to)}`);
    if (to === host) throw new InvalidArgumentError(`testbed ${this.name}: a host has no link to itself (${host})`);
    return { h, to };
  }

  private networkOf(n: Network | undefined): Network {
    if (n === undefined) return 'migration';
    if (n !== 'migration' && n !== 'management') {
      throw new InvalidArgumentError(`network must be "migration" or "management", got ${JSON.stringify(n)}`);
    }
    return n;
  }

  private shapingOf(host: string): MutableShaping {
    let s = this.shaping.get(host);
    if (!s) {
      s = { egress: undefined, peers: new Map() };
      this.shaping.set(host, s);
    }
    return s;
  }

  /**
   * Serialises model changes: applies `change` to the model, pushes what changed to the kernel,
   * and on failure rolls the model back and re-applies it (best effort).
   */
  private mutate(tcHosts: readonly string[], change: () => void): Promise<void> {
    const run = this.tail.then(async () => {
      this.assertUsable();
      const prevShaping = new Map([...this.shaping].map(([k, v]) => [k, { egress: v.egress, peers: new Map(v.peers) }]));
      const prevCuts = new Map(this.cuts);
      change();
      try {
        await this.apply(tcHosts);
      } catch (e) {
        this.shaping = prevShaping;
        this.cuts = prevCuts;
        await this.apply(tcHosts).catch((r: unknown) => this.log.warn('could not re-apply previous link state', { testbed: this.name, err: r }));
        throw e;
      }
    });
    this.tail = run.catch(() => undefined);
    return run;
  }

  private async apply(tcHosts: readonly string[]): Promise<void> {
    const L = this.layout;
    const shaping = this.shaping as ReadonlyMap<string, HostShaping>;
    for (const name of tcHosts) {
      const h = this.layoutByName.get(name) as HostLayout;
      const cmds = tcShapeArgs(MIGRATION_IF, this.shapingOf(name), L.hosts.filter((p) => p !== h));
      const key = JSON.stringify(cmds);
      if ((this.appliedTc.get(name) ?? '[]') === key) continue;
      this.appliedTc.delete(name);
      await this.runner.run('tc', ['-n', h.netns, ...tcResetArgs(MIGRATION_IF)]);
      if (cmds.length > 0) await this.sh('tc', ['-n', h.netns, '-batch', '-'], { input: cmds.map((c) => c.join(' ')).join('\n') + '\n' });
      this.appliedTc.set(name, key);
    }

    const nft = nftRuleset(L.hosts, this.cuts.values(), shaping);
    if (nft !== (this.appliedNft || nftRuleset(L.hosts, [], new Map()))) {
      await this.sh('ip', ['netns', 'exec', L.switchNs, 'nft', '-f', '-'], { input: nft });
      this.appliedNft = nft;
    }

    const plan = delayPlan(L.hosts, shaping);
    const delayKey = JSON.stringify({ rules: plan.rules, queues: [...plan.queues] });
    if (delayKey !== (this.appliedDelay || JSON.stringify({ rules: [], queues: [] }))) {
      if (plan.rules.length > 0) {
        if (this.delayLine && !this.delayLine.alive) {
          this.log.warn('delay line died; restarting it', { testbed: this.name });
          this.delayLine = undefined;
        }
        this.delayLine ??= await DelayLine.start(L.switchNs, this.log.child({ testbed: this.name }), this.python);
        await this.delayLine.configure(plan.queues);
        await this.enableBrNetfilter();
      }
      await this.iptables(iptablesRuleset(plan.rules));
      if (plan.rules.length === 0 && this.delayLine) {
        this.delayLine.stop();
        this.delayLine = undefined;
      }
      this.appliedDelay = delayKey;
    }
  }

  private async enableBrNetfilter(): Promise<void> {
    if (this.brNetfilterOn) return;
    const r = await this.runner.run('ip', ['netns', 'exec', this.layout.switchNs, 'sysctl', '-qw', 'net.bridge.bridge-nf-call-iptables=1']);
    if (r.code !== 0) {
      throw new DependencyError('br_netfilter', `delay needs bridged traffic to pass iptables (load br_netfilter): ${r.stderr.trim()}`);
    }
    this.brNetfilterOn = true;
  }

  private async iptables(ruleset: string): Promise<void> {
    const argv = (bin: string): string[] => ['netns', 'exec', this.layout.switchNs, bin, '-w', '5'];
    // xt_NFQUEUE via the legacy backend works even where nft's native `queue` is not built.
    const candidates = this.iptablesRestore ? [this.iptablesRestore] : ['iptables-legacy-restore', 'iptables-restore'];
    let last: CommandResult | undefined;
    for (const bin of candidates) {
      const r = await this.runner.run('ip', argv(bin), { input: ruleset });
      if (r.code === 0) {
        this.iptablesRestore = bin;
        return;
      }
      last = r;
    }
    throw new DependencyError('iptables', `cannot install delay rules: ${last?.stderr.trim() ?? ''}`);
  }

  private async sh(cmd: string, args: readonly string[], opts?: RunOptions): Promise<CommandResult> {
    this.log.debug('run', { testbed: this.name, argv: [cmd, ...args] });
    return runChecked(this.runner, cmd, args, opts);
  }
}
