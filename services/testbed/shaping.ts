/**
 * Pure construction of the link-impairment configuration: `tc` commands for rate limits, the
 * nftables ruleset for cuts and loss, and the NFQUEUE rules plus queue settings for delay. The
 * Testbed applies what these functions return; unit tests check them without a kernel.
 *
 * Where each impairment lives, and why:
 * - rate/burst: HTB on the host's `mig0` egress (in the host namespace). One class per shaped peer
 *   under a parent class holding the host's aggregate rate, so both "this host's NIC is 1 Gbit" and
 *   "this pair is 20 Mbit" hold at once.
 * - loss and cuts: an nftables `bridge` table in the switch namespace, matching on the bridge
 *   ports. Cuts drop every frame (ARP included) while both hosts keep carrier, like a fault in the
 *   middle of the network; TCP just stalls, which is what post-copy recovery has to detect.
 * - delay/jitter: the kernel here has no sch_netem, so delayed traffic is sent by iptables (through
 *   br_netfilter, in the switch namespace) to an NFQUEUE that a small delay-line process releases
 *   on time (see delayline.ts). The switch is the right place: frames there no longer belong to the
 *   sender's socket, so TCP small-queue accounting does not throttle the sender as it would with a
 *   queue on the sender's own egress.
 */
import { InvalidArgumentError } from '../shared/errors.js';
import { MAX_HOSTS, type HostLayout, type Network } from './addressing.js';

/**
 * Impairment of one host's migration egress (or of its egress towards one peer).
 * All fields optional; an empty shape means "no impairment".
 */
export interface LinkShape {
  /** Rate limit in Mbit/s (0.008 .. 100000). */
  readonly rateMbit?: number;
  /** Token-bucket burst in bytes (1600 .. 67108864); needs `rateMbit`. Default: tc's (rate/HZ + MTU). */
  readonly burst?: number;
  /** One-way delay added to each packet, ms (0 .. 60000). */
  readonly delayMs?: number;
  /** Uniform jitter ±ms around `delayMs` (0 .. delayMs). Packets are never reordered. */
  readonly jitterMs?: number;
  /** Random loss in percent (0 .. 100), applied per frame. */
  readonly lossPct?: number;
}

/** The impairments configured on one host: aggregate egress and per-destination overrides. */
export interface HostShaping {
  readonly egress?: LinkShape | undefined;
  /** Peer host name → shape of this host's traffic to that peer (adds to `egress`). */
  readonly peers: ReadonlyMap<string, LinkShape>;
}

/** One cut: the host isolated on a network, or just the pair (host, to). */
export interface Cut {
  readonly network: Network;
  readonly host: string;
  readonly to?: string | undefined;
}

/** A stable key for a cut; a pair cut has the same key whichever end is named first. */
export function cutKey(c: Cut): string {
  if (c.to === undefined) return `${c.network}:${c.host}`;
  const [x, y] = c.host < c.to ? [c.host, c.to] : [c.to, c.host];
  return `${c.network}:${x}|${y}`;
}

const SHAPE_KEYS = new Set(['rateMbit', 'burst', 'delayMs', 'jitterMs', 'lossPct']);
/** Parent class rate when only per-peer rates are set: far above what a veth moves. */
export const UNLIMITED_KBIT = 100_000_000;
const QUANTUM = '60000';

function checkNumber(name: string, v: unknown, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) {
    throw new InvalidArgumentError(`link shape ${name}: must be a number in [${min}, ${max}], got ${String(v)}`);
  }
  return v;
}

/**
 * Checks a shape and returns a frozen copy without undefined fields.
 * @throws InvalidArgumentError naming the offending field.
 */
export function validateShape(shape: LinkShape): Readonly<LinkShape> {
  if (shape === null || typeof shape !== 'object') throw new InvalidArgumentError('link shape must be an object');
  for (const k of Object.keys(shape)) {
    if (!SHAPE_KEYS.has(k)) throw new InvalidArgumentError(`link shape: unknown field ${JSON.stringify(k)}`);
  }
  const rateMbit = checkNumber('rateMbit', shape.rateMbit, 0.008, 100_000);
  const burst = checkNumber('burst', shape.burst, 1600, 64 * 1024 * 1024);
  const delayMs = checkNumber('delayMs', shape.delayMs, 0, 60_000);
  const jitterMs = checkNumber('jitterMs', shape.jitterMs, 0, 60_000);
  const lossPct = checkNumber('lossPct', shape.lossPct, 0, 100);
  if (burst !== undefined && !Number.isInteger(burst)) throw new InvalidArgumentError('link shape burst: must be an integer (bytes)');
  if (burst !== undefined && rateMbit === undefined) throw new InvalidArgumentError('link shape burst: needs rateMbit');
  if (jitterMs !== undefined && jitterMs > (delayMs ?? 0)) {
    throw new InvalidArgumentError(`link shape jitterMs: must not exceed delayMs (${delayMs ?? 0}), got ${jitterMs}`);
  }
  const out: { -readonly [K in keyof LinkShape]: LinkShape[K] } = {};
  if (rateMbit !== undefined) out.rateMbit = rateMbit;
  if (burst !== undefined) out.burst = burst;
  if (delayMs !== undefined && delayMs > 0) out.delayMs = delayMs;
  if (jitterMs !== undefined && jitterMs > 0) out.jitterMs = jitterMs;
  if (lossPct !== undefined && lossPct > 0) out.lossPct = lossPct;
  return Object.freeze(out);
}

/** True when the shape impairs nothing. */
export function isEmptyShape(s: LinkShape | undefined): boolean {
  return s === undefined || Object.keys(s).length === 0;
}

function kbit(mbit: number): number {
  return Math.max(8, Math.round(mbit * 1000));
}

function burstArgs(burst: number | undefined): string[] {
  return burst === undefined ? [] : ['burst', String(burst), 'cburst', String(burst)];
}

/** HTB minor class id (hex, as tc reads it) for traffic to the peer with this host index. */
export function peerClassMinor(peerIndex: number): string {
  return (0x100 + peerIndex).toString(16);
}

/** The `tc` invocation that removes whatever root qdisc `dev` has (fails harmlessly when none). */
export function tcResetArgs(dev: string): string[] {
  return ['qdisc', 'del', 'dev', dev, 'root'];
}

/**
 * The `tc` invocations (argv without `tc`) that install `shaping`'s rate limits on `dev`, to run
 * after `tcResetArgs`. Empty when no rate is configured (the device keeps its default qdisc).
 *
 * Tree: `1:` htb, default class `1:2`
 *       └ `1:1` aggregate (host rate, or unlimited)
 *          ├ `1:2` everything else, ceil = aggregate
 *          └ `1:1xx` traffic to peer xx (u32 match on its migration address), ceil = min(peer, aggregate)
 * Child `rate`s are an equal split of their ceilings, so the children always borrow from `1:1` and
 * the aggregate is enforced (an HTB class at or under its own rate does not consult its parent).
 */
export function tcShapeArgs(dev: string, shaping: HostShaping, peers: readonly HostLayout[]): string[][] {
  const aggregate = shaping.egress?.rateMbit;
  const peerClasses: { peer: HostLayout; ceil: number; burst: number | undefined }[] = [];
  const aggKbit = aggregate === undefined ? UNLIMITED_KBIT : kbit(aggregate);
  for (const peer of peers) {
    const s = shaping.peers.get(peer.name);
    if (s?.rateMbit === undefined) continue;
    peerClasses.push({ peer, ceil: Math.min(aggKbit, kbit(s.rateMbit)), burst: s.burst });
  }
  if (aggregate === undefined && peerClasses.length === 0) return [];
  const share = (ceil: number): string => `${Math.max(8, Math.floor(ceil / (peerClasses.length + 1)))}kbit`;
  const aggBurst = burstArgs(shaping.egress?.burst);
  const cmds: string[][] = [
    ['qdisc', 'add', 'dev', dev, 'root', 'handle', '1:', 'htb', 'default', '2'],
    ['class', 'add', 'dev', dev, 'parent', '1:', 'classid', '1:1', 'htb', 'rate', `${aggKbit}kbit`, 'ceil', `${aggKbit}kbit`, 'quantum', QUANTUM, ...aggBurst],
    ['class', 'add', 'dev', dev, 'parent', '1:1', 'classid', '1:2', 'htb', 'rate', share(aggKbit), 'ceil', `${aggKbit}kbit`, 'quantum', QUANTUM, ...aggBurst],
  ];
  for (const { peer, ceil, burst } of peerClasses) {
    const classid = `1:${peerClassMinor(peer.index)}`;
    cmds.push(
      ['class', 'add', 'dev', dev, 'parent', '1:1', 'classid', classid, 'htb', 'rate', share(ceil), 'ceil', `${ceil}kbit`, 'quantum', QUANTUM, ...burstArgs(burst)],
      ['filter', 'add', 'dev', dev, 'parent', '1:', 'protocol', 'ip', 'prio', '1', 'u32', 'match', 'ip', 'dst', `${peer.migrationAddress}/32`, 'flowid', classid],
    );
  }
  return cmds;
}

/** nftables table (family bridge) in the switch namespace that holds cuts and loss. */
export const NFT_TABLE = 'migd';
const LOSS_SCALE = 1_000_000;

function portOf(h: HostLayout, network: Network): string {
  return network === 'management' ? h.mgmtPort : h.migrationPort;
}

function lossRule(match: string, pct: number): string {
  const threshold = Math.round((pct / 100) * LOSS_SCALE);
  if (threshold <= 0) return '';
  return threshold >= LOSS_SCALE ? `${match} drop` : `${match} numgen random mod ${LOSS_SCALE} < ${threshold} drop`;
}

/**
 * The complete `nft -f -` script for the switch namespace: replaces table `bridge migd`
 * atomically (or just removes it when there is nothing to enforce).
 */
export function nftRuleset(hosts: readonly HostLayout[], cuts: Iterable<Cut>, shaping: ReadonlyMap<string, HostShaping>): string {
  const byName = new Map(hosts.map((h) => [h.name, h]));
  const lookup = (name: string): HostLayout => {
    const h = byName.get(name);
    if (!h) throw new InvalidArgumentError(`unknown host ${JSON.stringify(name)}`);
    return h;
  };
  const rules: string[] = [];
  for (const c of cuts) {
    const a = portOf(lookup(c.host), c.network);
    if (c.to === undefined) {
      rules.push(`iifname "${a}" drop`, `oifname "${a}" drop`);
    } else {
      const b = portOf(lookup(c.to), c.network);
      rules.push(`iifname "${a}" oifname "${b}" drop`, `iifname "${b}" oifname "${a}" drop`);
    }
  }
  for (const h of hosts) {
    const s = shaping.get(h.name);
    if (!s) continue;
    for (const peer of hosts) {
      const pct = s.peers.get(peer.name)?.lossPct;
      if (pct !== undefined) rules.push(lossRule(`iifname "${h.migrationPort}" oifname "${peer.migrationPort}"`, pct));
    }
    if (s.egress?.lossPct !== undefined) rules.push(lossRule(`iifname "${h.migrationPort}"`, s.egress.lossPct));
  }
  const body = rules.filter((r) => r !== '');
  const reset = `table bridge ${NFT_TABLE}\ndelete table bridge ${NFT_TABLE}\n`;
  if (body.length === 0) return reset;
  return (
    reset +
    `table bridge ${NFT_TABLE} {\n` +
    `\tchain links {\n` +
    `\t\ttype filter hook forward priority 0; policy accept;\n` +
    body.map((r) => `\t\t${r}\n`).join('') +
    `\t}\n}\n`
  );
}

/** Delay applied by one NFQUEUE. */
export interface QueueDelay {
  readonly delayMs: number;
  readonly jitterMs: number;
}

/** One iptables rule sending a host's egress (optionally only towards one peer) to a queue. */
export interface DelayRule {
  readonly inPort: string;
  readonly outPort?: string | undefined;
  readonly queue: number;
}

/** What the delay line must do: the rules to install and the delay each queue applies. */
export interface DelayPlan {
  readonly rules: readonly DelayRule[];
  readonly queues: ReadonlyMap<number, QueueDelay>;
}

/** NFQUEUE number for traffic from host `src` (to `dst`, or to anyone when undefined). */
export function queueNumber(src: number, dst?: number): number {
  return 1 + src * (MAX_HOSTS + 1) + (dst === undefined ? 0 : dst + 1);
}

/**
 * Per-peer delays add to the host's egress delay (as two links in series would); a peer-specific
 * rule is emitted only when the peer has its own delay, otherwise the host's rule covers it.
 */
export function delayPlan(hosts: readonly HostLayout[], shaping: ReadonlyMap<string, HostShaping>): DelayPlan {
  const rules: DelayRule[] = [];
  const queues = new Map<number, QueueDelay>();
  for (const h of hosts) {
    const s = shaping.get(h.name);
    if (!s) continue;
    const base = { delayMs: s.egress?.delayMs ?? 0, jitterMs: s.egress?.jitterMs ?? 0 };
    for (const peer of hosts) {
      const p = s.peers.get(peer.name);
      if (p?.delayMs === undefined) continue;
      const q = queueNumber(h.index, peer.index);
      rules.push({ inPort: h.migrationPort, outPort: peer.migrationPort, queue: q });
      queues.set(q, { delayMs: base.delayMs + p.delayMs, jitterMs: base.jitterMs + (p.jitterMs ?? 0) });
    }
    if (base.delayMs > 0) {
      const q = queueNumber(h.index);
      rules.push({ inPort: h.migrationPort, queue: q });
      queues.set(q, base);
    }
  }
  return { rules, queues };
}

/** `iptables-restore` input replacing the switch namespace's filter table with the delay rules. */
export function iptablesRuleset(rules: readonly DelayRule[]): string {
  const lines = ['*filter', ':INPUT ACCEPT [0:0]', ':FORWARD ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]'];
  for (const r of rules) {
    const out = r.outPort === undefined ? '' : ` --physdev-out ${r.outPort}`;
    lines.push(`-A FORWARD -m physdev --physdev-in ${r.inPort}${out} -j NFQUEUE --queue-num ${r.queue} --queue-bypass`);
  }
  lines.push('COMMIT', '');
  return lines.join('\n');
}
