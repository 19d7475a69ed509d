import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../services/shared/errors.js';
import {
  MAX_HOSTS,
  layoutNamespaces,
  namespacePattern,
  overlaps,
  parseCidr,
  planLayout,
  randomId,
  slotsInUse,
  validateHostNames,
  validatePrefix,
  vmGuestAddress,
  vmGuestMac,
  VM_MAX_GUESTS,
} from '../../../services/testbed/addressing.js';

describe('planLayout', () => {
  const L = planLayout('migd-', 'a1b2c3', 7, ['a', 'b', 'node-1']);

  it('names namespaces <prefix><id>-<host> and the switch <name>-sw', () => {
    expect(L.name).toBe('migd-a1b2c3');
    expect(L.switchNs).toBe('migd-a1b2c3-sw');
    expect(L.hosts.map((h) => h.netns)).toEqual(['migd-a1b2c3-a', 'migd-a1b2c3-b', 'migd-a1b2c3-node-1']);
    expect(layoutNamespaces(L)).toEqual(['migd-a1b2c3-sw', 'migd-a1b2c3-a', 'migd-a1b2c3-b', 'migd-a1b2c3-node-1']);
  });

  it('puts management on 198.18.S.0/24 and migration on 198.19.S.0/24', () => {
    expect(L.rootAddress).toBe('198.18.7.1');
    expect(L.mgmtSubnet).toBe('198.18.7.0/24');
    expect(L.migrationSubnet).toBe('198.19.7.0/24');
    expect(L.hosts.map((h) => [h.mgmtAddress, h.migrationAddress])).toEqual([
      ['198.18.7.10', '198.19.7.10'],
      ['198.18.7.11', '198.19.7.11'],
      ['198.18.7.12', '198.19.7.12'],
    ]);
  });

  it('keeps every interface name within IFNAMSIZ', () => {
    const big = planLayout('migd-', 'ffffff', 255, ['abcdefghijkl']);
    const names = [big.rootLink, ...big.hosts.flatMap((h) => [h.mgmtPort, h.migrationPort])];
    for (const n of names) expect(n.length).toBeLessThanOrEqual(15);
    expect(big.rootLink).toBe('mgdffffff');
  });

  it('rejects bad ids and slots', () => {
    expect(() => planLayout('migd-', 'xyz', 0, ['a'])).toThrow(InvalidArgumentError);
    expect(() => planLayout('migd-', 'abcdef', 256, ['a'])).toThrow(InvalidArgumentError);
    expect(() => planLayout('migd-', 'abcdef', -1, ['a'])).toThrow(InvalidArgumentError);
  });
});

describe('VM network plan', () => {
  it('is absent unless asked for, and then adds the client namespace last', () => {
    const plain = planLayout('migd-', 'a1b2c3', 7, ['a', 'b']);
    expect(plain.vm).toBeUndefined();
    expect(() => vmGuestAddress(plain, 0)).toThrow(/no VM network/);
    const L = planLayout('migd-', 'a1b2c3', 7, ['a', 'b'], { vmNetwork: true });
    expect(L.vm).toEqual({ subnet: '198.19.7.128/25', prefixLength: 25, clientNs: 'migd-a1b2c3-vmc', clientAddress: '198.19.7.129' });
    expect(layoutNamespaces(L)).toEqual(['migd-a1b2c3-sw', 'migd-a1b2c3-a', 'migd-a1b2c3-b', 'migd-a1b2c3-vmc']);
    expect(L.hosts.map((h) => h.vmPort)).toEqual(['v-a', 'v-b']);
    expect(namespacePattern('migd-').test(L.vm?.clientNs ?? '')).toBe(true);
  });

  it('gives guests addresses and MACs inside the /25, disjoint from every host address', () => {
    const L = planLayout('migd-', 'ffffff', 255, Array.from({ length: MAX_HOSTS }, (_, i) => `h${i}`), { vmNetwork: true });
    const vm = parseCidr(L.vm?.subnet ?? '');
    expect(vm).toBeDefined();
    const guests = Array.from({ length: VM_MAX_GUESTS }, (_, i) => vmGuestAddress(L, i));
    expect(guests[0]).toBe('198.19.255.140');
    expect(guests.at(-1)).toBe('198.19.255.253');
    for (const g of [...guests, L.vm?.clientAddress ?? '']) {
      const c = parseCidr(g);
      expect(c && vm && overlaps(c, vm)).toBe(true);
    }
    for (const h of L.hosts) {
      const mig = parseCidr(h.migrationAddress);
      expect(mig && vm && overlaps(mig, vm)).toBe(false); // hosts stay in the lower half
      expect(h.vmPort.length).toBeLessThanOrEqual(15);
    }
    expect(new Set(guests).size).toBe(VM_MAX_GUESTS);
    expect(() => vmGuestAddress(L, VM_MAX_GUESTS)).toThrow(InvalidArgumentError);
    expect(() => vmGuestAddress(L, -1)).toThrow(InvalidArgumentError);
    expect(vmGuestMac(L, 0)).toBe('52:54:00:13:ff:00');
    expect(vmGuestMac(L, 17)).toBe('52:54:00:13:ff:11');
  });

  it('reserves the client namespace name', () => {
    expect(() => validateHostNames(['a', 'vmc'])).toThrow(/reserved/);
  });
});

describe('validation', () => {
  it('accepts ordinary host lists', () => {
    expect(() => validateHostNames(['a', 'b', 'node-2'])).not.toThrow();
    expect(() => validateHostNames(Array.from({ length: MAX_HOSTS }, (_, i) => `h${i}`))).not.toThrow();
  });

  it.each([
    [[], /at least one/],
    [['a', 'a'], /twice/],
    [['sw'], /reserved/],
    [['A'], /must match/],
    [['1a'], /must match/],
    [['a b'], /must match/],
    [['abcdefghijklm'], /must match/],
    [Array.from({ length: MAX_HOSTS + 1 }, (_, i) => `h${i}`), /at most/],
  ])('rejects %j', (hosts, msg) => {
    expect(() => validateHostNames(hosts)).toThrow(msg);
    expect(() => validateHostNames(hosts)).toThrow(InvalidArgumentError);
  });

  it('checks prefixes', () => {
    expect(() => validatePrefix('migd-')).not.toThrow();
    for (const p of ['', '-x', 'a/b', 'Migd', 'a'.repeat(21)]) expect(() => validatePrefix(p)).toThrow(InvalidArgumentError);
  });

  it('makes 6-hex ids', () => {
    expect(randomId()).toMatch(/^[0-9a-f]{6}$/);
  });
});

describe('namespacePattern', () => {
  const re = namespacePattern('migd-');
  it('matches only this prefix plus a 6-hex id and a host part', () => {
    expect(re.exec('migd-0a1b2c-a')?.[1]).toBe('migd-0a1b2c');
    expect(re.exec('migd-0a1b2c-sw')?.[1]).toBe('migd-0a1b2c');
    expect(re.test('migd-0a1b2-a')).toBe(false);
    expect(re.test('migd-0a1b2g-a')).toBe(false);
    expect(re.test('xmigd-0a1b2c-a')).toBe(false);
    expect(re.test('migd-0a1b2c')).toBe(false);
  });
  it('escapes regex characters in the prefix', () => {
    expect(namespacePattern('m.d-').test('mxd-0a1b2c-a')).toBe(false);
  });
});

describe('CIDR helpers', () => {
  it('parses addresses and prefixes', () => {
    expect(parseCidr('198.18.3.0/24')).toEqual({ net: ((198 << 24) >>> 0) + (18 << 16) + (3 << 8), len: 24 });
    expect(parseCidr('10.0.0.1')?.len).toBe(32);
    expect(parseCidr('10.1.2.3/8')).toEqual(parseCidr('10.0.0.0/8'));
    for (const bad of ['default', '300.1.1.1', '1.2.3.4/33', 'fe80::1/64']) expect(parseCidr(bad)).toBeUndefined();
  });

  it('detects overlap', () => {
    const c = (s: string) => parseCidr(s)!;
    expect(overlaps(c('198.18.0.0/15'), c('198.19.4.0/24'))).toBe(true);
    expect(overlaps(c('198.18.4.0/24'), c('198.18.5.0/24'))).toBe(false);
    expect(overlaps(c('198.18.4.7'), c('198.18.4.0/24'))).toBe(true);
  });

  it('finds slots taken by existing routes, ignoring the default route and very short prefixes', () => {
    expect([...slotsInUse(['default', '0.0.0.0/0', '128.0.0.0/1', '192.0.2.0/24'])]).toEqual([]);
    expect([...slotsInUse(['198.18.5.0/24', '198.19.9.77'])].sort((a, b) => a - b)).toEqual([5, 9]);
    expect(slotsInUse(['198.18.0.0/16']).size).toBe(256);
  });
});
