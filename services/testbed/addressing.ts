/**
 * Pure naming and address planning for a testbed: namespace and interface names, the /24 subnets a
 * testbed owns and the addresses inside them. No I/O here, so all of it is unit-tested.
 *
 * Every address comes from the RFC 2544 benchmarking range 198.18.0.0/15, which no real network
 * routes: slot S (0..255) owns 198.18.S.0/24 (management) and 198.19.S.0/24 (migration).
 *
 * The optional VM network (the guests' NICs and a client namespace, issue 13) is 198.19.S.128/25:
 * the upper half of the migration /24, which host addresses (.10 + i, i < 64) never reach. No host
 * namespace has an address on it (its br-vm bridges are pure L2) and the client namespace has
 * nothing else, so no namespace ever routes both: a guest cannot reach the migration network, and
 * a host's mig0 route never carries guest traffic.
 */
import { randomBytes } from 'node:crypto';
import { InvalidArgumentError } from '../shared/errors.js';

/** Default namespace-name prefix; `Testbed.cleanupStale()` looks for it too. */
export const DEFAULT_PREFIX = 'migd-';
/** Hosts per testbed; bounded by the address plan (host i gets .10+i) and the queue numbering. */
export const MAX_HOSTS = 64;
/** Number of testbeds that can exist at once on one machine (one /24 pair each). */
export const SLOT_COUNT = 256;

/** Interface names inside a host namespace. Fixed, so node configs can name them. */
export const MGMT_IF = 'mgmt0';
export const MIGRATION_IF = 'mig0';
/** Names inside the switch namespace. */
export const MGMT_BRIDGE = 'br-mgmt';
export const MIGRATION_BRIDGE = 'br-mig';
export const ROOT_PORT = 'mgmt-root';
/** VM network: the bridge in the switch namespace and in each host namespace (guests' taps join it). */
export const VM_BRIDGE = 'br-vm';
/** A host's veth onto the VM network (a port of its own br-vm); the client's interface too. */
export const VM_IF = 'vm0';
/** Host name of the client namespace `<name>-vmc` on the VM network. */
export const VM_CLIENT = 'vmc';
/** The switch port of the client namespace. */
export const VM_CLIENT_PORT = 'v-client';
/** First guest address on the VM network is 198.19.S.(VM_GUEST_BASE + i). */
export const VM_GUEST_BASE = 140;
/** Guests per testbed on the VM network (.140 .. .253). */
export const VM_MAX_GUESTS = 114;
/** Ethernet's default MTU; the management and VM networks always have it. */
export const ETHERNET_MTU = 1500;
/**
 * MTU of the migration network (every host's mig0, the switch's g-<host> ports and br-mig).
 * Operators give dedicated migration networks jumbo frames (9000), where TCP/IP and Ethernet
 * headers are ~0.7 % of a frame instead of ~4.4 % at 1500. veth accepts 68..65535, but the testbed
 * models real networks: from 1280 (IPv6's minimum link MTU) to 9000 (the jumbo-frame size NICs and
 * switches commonly agree on; some go to 9216, beyond which there is no common size).
 */
export const DEFAULT_MIGRATION_MTU = ETHERNET_MTU;
export const MIN_MIGRATION_MTU = 1280;
export const MAX_MIGRATION_MTU = 9000;
/** Host names that would collide with the switch or client namespace's name. */
export const RESERVED_HOST_NAMES: ReadonlySet<string> = new Set(['sw', VM_CLIENT]);

// The switch-side ports are `m-<host>` / `g-<host>`: 2 + 12 characters fit IFNAMSIZ (15 + NUL).
const HOST_RE = /^[a-z][a-z0-9-]{0,11}$/;
const PREFIX_RE = /^[a-z][a-z0-9-]{0,19}$/;
const ID_RE = /^[0-9a-f]{6}$/;

/** Which of a host's two networks an operation applies to. */
export type Network = 'management' | 'migration';

/** Where one host lives: its namespace, interfaces, addresses and switch ports. */
export interface HostLayout {
  readonly name: string;
  readonly index: number;
  readonly netns: string;
  readonly mgmtAddress: string;
  readonly migrationAddress: string;
  /** Port on br-mgmt in the switch namespace (veth peer of the host's mgmt0). */
  readonly mgmtPort: string;
  /** Port on br-mig in the switch namespace (veth peer of the host's mig0). */
  readonly migrationPort: string;
  /** Port on br-vm in the switch namespace (veth peer of the host's vm0), when the VM network exists. */
  readonly vmPort: string;
}

/** The VM network of a testbed: an L2 segment across all hosts plus a client namespace. */
export interface VmLayout {
  /** 198.19.S.128/25. */
  readonly subnet: string;
  readonly prefixLength: number;
  /** The client namespace `<name>-vmc` and its address (198.19.S.129). */
  readonly clientNs: string;
  readonly clientAddress: string;
}

/** The full plan of one testbed, derived from (prefix, id, slot, hosts) alone. */
export interface Layout {
  readonly name: string;
  readonly prefix: string;
  readonly id: string;
  readonly slot: number;
  readonly switchNs: string;
  /** Root-namespace end of the veth joining the root namespace to br-mgmt. */
  readonly rootLink: string;
  readonly rootAddress: string;
  readonly mgmtSubnet: string;
  readonly migrationSubnet: string;
  readonly hosts: readonly HostLayout[];
  /** Present when the testbed has a VM network. */
  readonly vm: VmLayout | undefined;
  /** MTU of the migration network's interfaces and bridge (the management and VM networks keep 1500). */
  readonly migrationMtu: number;
}

export interface LayoutOptions {
  /** Plan the VM network (bridges, client namespace). Default false. */
  readonly vmNetwork?: boolean;
  /** MTU of the migration network, MIN_MIGRATION_MTU..MAX_MIGRATION_MTU. Default 1500. */
  readonly migrationMtu?: number;
}

/** @throws InvalidArgumentError when the prefix cannot start a namespace name. */
export function validatePrefix(prefix: string): void {
  if (!PREFIX_RE.test(prefix)) {
    throw new InvalidArgumentError(`testbed prefix ${JSON.stringify(prefix)} must match ${PREFIX_RE.source}`);
  }
}

/** @throws InvalidArgumentError on an empty, duplicate, reserved, malformed or too long host list. */
export function validateHostNames(hosts: readonly string[]): void {
  if (hosts.length === 0) throw new InvalidArgumentError('testbed hosts: at least one host is required');
  if (hosts.length > MAX_HOSTS) throw new InvalidArgumentError(`testbed hosts: at most ${MAX_HOSTS} hosts, got ${hosts.length}`);
  const seen = new Set<string>();
  for (const h of hosts) {
    if (typeof h !== 'string' || !HOST_RE.test(h)) {
      throw new InvalidArgumentError(`testbed host name ${JSON.stringify(h)} must match ${HOST_RE.source}`);
    }
    if (RESERVED_HOST_NAMES.has(h)) throw new InvalidArgumentError(`testbed host name ${JSON.stringify(h)} is reserved`);
    if (seen.has(h)) throw new InvalidArgumentError(`testbed host name ${JSON.stringify(h)} is listed twice`);
    seen.add(h);
  }
}

/**
 * Checks a migration-network MTU and returns it.
 * @throws InvalidArgumentError unless it is a whole number in MIN_MIGRATION_MTU..MAX_MIGRATION_MTU.
 */
export function validateMigrationMtu(mtu: unknown): number {
  if (typeof mtu !== 'number' || !Number.isInteger(mtu) || mtu < MIN_MIGRATION_MTU || mtu > MAX_MIGRATION_MTU) {
    throw new InvalidArgumentError(
      `testbed migrationMtu: must be a whole number of bytes in ${MIN_MIGRATION_MTU}..${MAX_MIGRATION_MTU} (1500: Ethernet's default, 9000: jumbo frames), got ${typeof mtu === 'number' ? String(mtu) : JSON.stringify(mtu)}`,
    );
  }
  return mtu;
}

/** A fresh 6-hex-digit testbed id. */
export function randomId(): string {
  return randomBytes(3).toString('hex');
}

/** Testbed name (`<prefix><id>`), also the common prefix of all its namespace names. */
export function testbedName(prefix: string, id: string): string {
  return `${prefix}${id}`;
}

/** Computes every name and address of a testbed. Inputs are validated. */
export function planLayout(prefix: string, id: string, slot: number, hosts: readonly string[], opts: LayoutOptions = {}): Layout {
  validatePrefix(prefix);
  validateHostNames(hosts);
  if (!ID_RE.test(id)) throw new InvalidArgumentError(`testbed id ${JSON.stringify(id)} must be 6 hex digits`);
  if (!Number.isInteger(slot) || slot < 0 || slot >= SLOT_COUNT) {
    throw new InvalidArgumentError(`testbed slot ${slot} out of range 0..${SLOT_COUNT - 1}`);
  }
  const migrationMtu = validateMigrationMtu(opts.migrationMtu ?? DEFAULT_MIGRATION_MTU);
  const name = testbedName(prefix, id);
  return {
    name,
    prefix,
    id,
    slot,
    switchNs: `${name}-sw`,
    rootLink: `mgd${id}`,
    rootAddress: `198.18.${slot}.1`,
    mgmtSubnet: `198.18.${slot}.0/24`,
    migrationSubnet: `198.19.${slot}.0/24`,
    hosts: hosts.map((h, index) => ({
      name: h,
      index,
      netns: `${name}-${h}`,
      mgmtAddress: `198.18.${slot}.${10 + index}`,
      migrationAddress: `198.19.${slot}.${10 + index}`,
      mgmtPort: `m-${h}`,
      migrationPort: `g-${h}`,
      vmPort: `v-${h}`,
    })),
    vm: opts.vmNetwork ? { subnet: `198.19.${slot}.128/25`, prefixLength: 25, clientNs: `${name}-${VM_CLIENT}`, clientAddress: `198.19.${slot}.129` } : undefined,
    migrationMtu,
  };
}

/**
 * Address of guest `i` (0-based) on the VM network: 198.19.S.(140 + i).
 * @throws InvalidArgumentError without a VM network or for i outside 0..VM_MAX_GUESTS-1.
 */
export function vmGuestAddress(layout: Layout, i: number): string {
  if (!layout.vm) throw new InvalidArgumentError(`testbed ${layout.name} has no VM network`);
  if (!Number.isInteger(i) || i < 0 || i >= VM_MAX_GUESTS) throw new InvalidArgumentError(`VM guest index ${i} out of range 0..${VM_MAX_GUESTS - 1}`);
  return `198.19.${layout.slot}.${VM_GUEST_BASE + i}`;
}

/** All namespaces a layout creates, switch first. */
export function layoutNamespaces(layout: Layout): string[] {
  return [layout.switchNs, ...layout.hosts.map((h) => h.netns), ...(layout.vm ? [layout.vm.clientNs] : [])];
}

/** A locally administered, per-testbed-unique MAC for guest `i` on the VM network: 52:54:00:13:SS:II. */
export function vmGuestMac(layout: Layout, i: number): string {
  vmGuestAddress(layout, i); // validates
  const hex = (n: number): string => n.toString(16).padStart(2, '0');
  return `52:54:00:13:${hex(layout.slot)}:${hex(i)}`;
}

/** Matches the namespace names a testbed with this prefix creates (host or switch). */
export function namespacePattern(prefix: string): RegExp {
  const esc = prefix.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&');
  return new RegExp(`^(${esc}[0-9a-f]{6})-([a-z][a-z0-9-]{0,11})$`);
}

/** An IPv4 prefix as a 32-bit network number and a length. */
export interface Cidr {
  readonly net: number;
  readonly len: number;
}

/** Parses `a.b.c.d` or `a.b.c.d/len`; returns undefined for anything else (e.g. `default`). */
export function parseCidr(s: string): Cidr | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:\/(\d{1,2}))?$/.exec(s);
  if (!m) return undefined;
  const octets = [m[1], m[2], m[3], m[4]].map(Number);
  if (octets.some((o) => o > 255)) return undefined;
  const len = m[5] === undefined ? 32 : Number(m[5]);
  if (len > 32) return undefined;
  const addr = octets.reduce((acc, o) => acc * 256 + o, 0);
  return { net: (addr & mask(len)) >>> 0, len };
}

function mask(len: number): number {
  return len === 0 ? 0 : (~0 << (32 - len)) >>> 0;
}

/** True when the two prefixes share at least one address. */
export function overlaps(a: Cidr, b: Cidr): boolean {
  const len = Math.min(a.len, b.len);
  return ((a.net & mask(len)) >>> 0) === ((b.net & mask(len)) >>> 0);
}

/**
 * The slots whose subnets overlap a route destination already present (e.g. from `ip -j route
 * show table all`). Prefixes shorter than /8 (the default route, VPN split routes) are ignored:
 * they overlap everything and say nothing about who uses 198.18/15.
 */
export function slotsInUse(routeDestinations: readonly string[]): Set<number> {
  const used = new Set<number>();
  const bench = parseCidr('198.18.0.0/15');
  for (const d of routeDestinations) {
    const c = parseCidr(d);
    if (!c || c.len < 8 || !bench || !overlaps(c, bench)) continue;
    for (let s = 0; s < SLOT_COUNT; s++) {
      const mgmt = parseCidr(`198.18.${s}.0/24`);
      const mig = parseCidr(`198.19.${s}.0/24`);
      if ((mgmt && overlaps(c, mgmt)) || (mig && overlaps(c, mig))) used.add(s);
    }
  }
  return used;
}
