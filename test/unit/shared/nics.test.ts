import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../services/shared/errors.js';
import { normalizeMac, normalizeNics, randomMac } from '../../../services/shared/nics.js';

const nic = (p: { mac?: string; network?: string; guestIp?: string }) => ({ mac: '', network: 'vm', guestIp: '', ...p });

describe('NIC rules shared by coordinator and nodes', () => {
  it('canonicalises MACs and refuses malformed, multicast and zero ones', () => {
    expect(normalizeMac('m', ' 52:54:00:AB:cd:0E ')).toBe('52:54:00:ab:cd:0e');
    for (const bad of ['52:54:00:ab:cd', '52-54-00-ab-cd-ef', '52:54:00:ab:cd:zz', '01:00:5e:00:00:01', 'ff:ff:ff:ff:ff:ff', '00:00:00:00:00:00']) {
      expect(() => normalizeMac('m', bad)).toThrow(InvalidArgumentError);
    }
  });

  it('generates unicast MACs under QEMU\'s OUI', () => {
    for (let i = 0; i < 50; i++) expect(normalizeMac('m', randomMac())).toMatch(/^52:54:00(:[0-9a-f]{2}){3}$/);
  });

  it('fills in missing MACs without duplicates, keeps given ones', () => {
    const seq = ['52:54:00:00:00:01', '52:54:00:00:00:01', '52:54:00:00:00:02'];
    const out = normalizeNics([nic({}), nic({ mac: '52:54:00:00:00:09' }), nic({})], () => seq.shift()!);
    expect(out.map((n) => n.mac)).toEqual(['52:54:00:00:00:01', '52:54:00:00:00:09', '52:54:00:00:00:02']);
  });

  it('refuses a bad network name, a MAC twice, a bad guest address and two guest addresses', () => {
    expect(() => normalizeNics([nic({ network: '' })])).toThrow(/network/);
    expect(() => normalizeNics([nic({ network: 'a b' })])).toThrow(/network/);
    expect(() => normalizeNics([nic({ mac: '52:54:00:00:00:01' }), nic({ mac: '52:54:00:00:00:01' })])).toThrow(/also the MAC of spec.nics\[0\]/);
    for (const ip of ['10.0.0.1', '10.0.0.256/24', '10.0.0.1/33', '10.0.0.1/0', 'a.b.c.d/8']) expect(() => normalizeNics([nic({ guestIp: ip })])).toThrow(/guest_ip/);
    expect(() => normalizeNics([nic({ guestIp: '10.0.0.1/24' }), nic({ guestIp: '10.0.0.2/24' })])).toThrow(/only one card/);
    expect(normalizeNics([nic({ guestIp: '10.0.0.1/24' })])[0]!.guestIp).toBe('10.0.0.1/24');
  });
});
