/**
 * Rules for a VM's network cards that the coordinator and the node daemons both apply (STYLE 14):
 * MAC syntax and generation, network names, the lab guest's address, and no MAC twice in a spec.
 * Cluster-wide (coordinator) and per-node (node) uniqueness are checked by their owners on top.
 */
import { randomBytes } from 'node:crypto';
import { InvalidArgumentError } from './errors.js';
import type { NicSpec } from './gen/migd/v1/common.js';

/** Six colon-separated hex bytes. */
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
/** Network names are map keys on the node command line (`--network NAME=BRIDGE`). */
export const NETWORK_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,31}$/;
const IPV4_CIDR = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/;
/** QEMU's own OUI, which libvirt uses too: generated MACs are recognisably a VM's. */
const GENERATED_OUI = '52:54:00';

/**
 * A MAC in canonical form (lower case). @throws InvalidArgumentError when it is not six hex bytes,
 * or is multicast/broadcast (a NIC needs a unicast address) or all zero.
 */
export function normalizeMac(field: string, mac: string): string {
  const m = mac.trim().toLowerCase();
  if (!MAC.test(m)) throw new InvalidArgumentError(`${field} ${JSON.stringify(mac)} is not a MAC address (six hex bytes separated by colons)`, { reason: 'MAC_INVALID' });
  if ((parseInt(m.slice(0, 2), 16) & 1) === 1) throw new InvalidArgumentError(`${field} ${m} is a multicast address; a NIC needs a unicast MAC`, { reason: 'MAC_INVALID' });
  if (m === '00:00:00:00:00:00') throw new InvalidArgumentError(`${field} must not be all zero`, { reason: 'MAC_INVALID' });
  return m;
}

/** A random MAC under QEMU's OUI, 52:54:00:xx:xx:xx. */
export function randomMac(): string {
  return [GENERATED_OUI, ...[...randomBytes(3)].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

/** @throws InvalidArgumentError unless `ip` is A.B.C.D/LEN with octets ≤ 255 and 1 ≤ LEN ≤ 32. */
export function validateGuestIp(field: string, ip: string): string {
  const m = IPV4_CIDR.exec(ip);
  if (!m || m.slice(1, 5).some((o) => Number(o) > 255) || Number(m[5]) < 1 || Number(m[5]) > 32) {
    throw new InvalidArgumentError(`${field} ${JSON.stringify(ip)} is not an IPv4 address with a prefix length (A.B.C.D/LEN)`, { reason: 'GUEST_IP_INVALID' });
  }
  return ip;
}

/**
 * Checks and completes a spec's NICs: every network named, MACs well formed and unique within the
 * spec (a missing one is generated), a guest address on at most one card.
 * @throws InvalidArgumentError naming the card (`spec.nics[i]…`).
 */
export function normalizeNics(nics: readonly NicSpec[], generate: () => string = randomMac): NicSpec[] {
  const seen = new Map<string, number>();
  let withIp = -1;
  return nics.map((n, i) => {
    const at = `spec.nics[${i}]`;
    if (!NETWORK_NAME.test(n.network)) {
      throw new InvalidArgumentError(`${at}.network ${JSON.stringify(n.network)} must match ${NETWORK_NAME.source}`, { reason: 'NETWORK_INVALID' });
    }
    let mac = n.mac ? normalizeMac(`${at}.mac`, n.mac) : generate();
    while (!n.mac && seen.has(mac)) mac = generate();
    const twin = seen.get(mac);
    if (twin !== undefined) throw new InvalidArgumentError(`${at}.mac ${mac} is also the MAC of spec.nics[${twin}]`, { reason: 'MAC_DUPLICATE' });
    seen.set(mac, i);
    if (n.guestIp) {
      validateGuestIp(`${at}.guest_ip`, n.guestIp);
      if (withIp >= 0) throw new InvalidArgumentError(`${at}.guest_ip: only one card may carry a guest address (spec.nics[${withIp}] has one)`, { reason: 'GUEST_IP_INVALID' });
      withIp = i;
    }
    return { mac, network: n.network, guestIp: n.guestIp };
  });
}
