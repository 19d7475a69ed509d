import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../services/shared/errors.js';
import { planLayout } from '../../../services/testbed/addressing.js';
import {
  UNLIMITED_KBIT,
  cutKey,
  delayPlan,
  iptablesRuleset,
  nftRuleset,
  peerClassMinor,
  queueNumber,
  tcShapeArgs,
  validateShape,
  type HostShaping,
  type LinkShape,
} from '../../../services/testbed/shaping.js';

const L = planLayout('migd-', 'abcdef', 3, ['a', 'b', 'c']);
const [, B, C] = L.hosts as [typeof L.hosts[number], typeof L.hosts[number], typeof L.hosts[number]];
const hs = (egress?: LinkShape, peers: [string, LinkShape][] = []): HostShaping => ({ egress, peers: new Map(peers) });

describe('validateShape', () => {
  it('normalises: drops zero delay/jitter/loss, freezes', () => {
    const s = validateShape({ rateMbit: 20, delayMs: 0, jitterMs: 0, lossPct: 0 });
    expect(s).toEqual({ rateMbit: 20 });
    expect(Object.isFrozen(s)).toBe(true);
    expect(validateShape({})).toEqual({});
  });

  it.each<[LinkShape, RegExp]>([
    [{ rateMbit: 0 }, /rateMbit/],
    [{ rateMbit: -5 }, /rateMbit/],
    [{ rateMbit: Number.NaN }, /rateMbit/],
    [{ rateMbit: Infinity }, /rateMbit/],
    [{ rateMbit: 200_000 }, /rateMbit/],
    [{ burst: 32_000 }, /needs rateMbit/],
    [{ rateMbit: 1, burst: 100 }, /burst/],
    [{ rateMbit: 1, burst: 2000.5 }, /integer/],
    [{ delayMs: -1 }, /delayMs/],
    [{ delayMs: 5, jitterMs: 6 }, /jitterMs/],
    [{ jitterMs: 1 }, /jitterMs/],
    [{ lossPct: 101 }, /lossPct/],
    [{ rateMbit: '10' as unknown as number }, /rateMbit/],
    [{ rate: 10 } as unknown as LinkShape, /unknown field "rate"/],
  ])('rejects %j', (shape, msg) => {
    expect(() => validateShape(shape)).toThrow(InvalidArgumentError);
    expect(() => validateShape(shape)).toThrow(msg);
  });
});

describe('tcShapeArgs', () => {
  it('installs nothing without a rate', () => {
    expect(tcShapeArgs('mig0', hs({ delayMs: 10, lossPct: 1 }), [B, C])).toEqual([]);
  });

  it('builds an aggregate HTB for a host rate', () => {
    expect(tcShapeArgs('mig0', hs({ rateMbit: 20, burst: 32768 }), [B, C]).map((c) => c.join(' '))).toEqual([
      'qdisc add dev mig0 root handle 1: htb default 2',
      'class add dev mig0 parent 1: classid 1:1 htb rate 20000kbit ceil 20000kbit quantum 60000 burst 32768 cburst 32768',
      'class add dev mig0 parent 1:1 classid 1:2 htb rate 20000kbit ceil 20000kbit quantum 60000 burst 32768 cburst 32768',
    ]);
  });

  it('adds a class and a u32 filter per shaped peer, capped by the aggregate', () => {
    const cmds = tcShapeArgs('mig0', hs({ rateMbit: 100 }, [['b', { rateMbit: 500 }], ['c', { delayMs: 3 }]]), [B, C]).map((c) => c.join(' '));
    expect(cmds).toEqual([
      'qdisc add dev mig0 root handle 1: htb default 2',
      'class add dev mig0 parent 1: classid 1:1 htb rate 100000kbit ceil 100000kbit quantum 60000',
      'class add dev mig0 parent 1:1 classid 1:2 htb rate 50000kbit ceil 100000kbit quantum 60000',
      `class add dev mig0 parent 1:1 classid 1:${peerClassMinor(1)} htb rate 50000kbit ceil 100000kbit quantum 60000`,
      `filter add dev mig0 parent 1: protocol ip prio 1 u32 match ip dst ${B.migrationAddress}/32 flowid 1:101`,
    ]);
  });

  it('uses an unlimited parent when only peers are shaped', () => {
    const cmds = tcShapeArgs('mig0', hs(undefined, [['c', { rateMbit: 20 }]]), [B, C]).map((c) => c.join(' '));
    expect(cmds[1]).toContain(`rate ${UNLIMITED_KBIT}kbit`);
    expect(cmds).toContain('class add dev mig0 parent 1:1 classid 1:102 htb rate 10000kbit ceil 20000kbit quantum 60000');
    expect(cmds).toContain(`filter add dev mig0 parent 1: protocol ip prio 1 u32 match ip dst ${C.migrationAddress}/32 flowid 1:102`);
  });

  it('keeps child rates summing to at most the aggregate', () => {
    const cmds = tcShapeArgs('mig0', hs({ rateMbit: 30 }, [['b', { rateMbit: 30 }], ['c', { rateMbit: 10 }]]), [B, C]);
    const rates = cmds.filter((c) => c.includes('parent') && c[c.indexOf('parent') + 1] === '1:1').map((c) => parseInt(c[c.indexOf('rate') + 1]!, 10));
    expect(rates.reduce((x, y) => x + y, 0)).toBeLessThanOrEqual(30_000);
  });
});

describe('nftRuleset', () => {
  const none = new Map<string, HostShaping>();

  it('only removes the table when nothing is enforced', () => {
    expect(nftRuleset(L.hosts, [], none)).toBe('table bridge migd\ndelete table bridge migd\n');
  });

  it('drops both directions for a host cut and a pair cut', () => {
    const s = nftRuleset(L.hosts, [{ network: 'migration', host: 'a' }, { network: 'management', host: 'b', to: 'c' }], none);
    expect(s).toContain('type filter hook forward priority 0; policy accept;');
    expect(s).toContain('iifname "g-a" drop');
    expect(s).toContain('oifname "g-a" drop');
    expect(s).toContain('iifname "m-b" oifname "m-c" drop');
    expect(s).toContain('iifname "m-c" oifname "m-b" drop');
  });

  it('turns loss percentages into numgen thresholds, peer rules first', () => {
    const shaping = new Map([['a', hs({ lossPct: 1.5 }, [['c', { lossPct: 100 }]])]]);
    const rules = nftRuleset(L.hosts, [], shaping).split('\n').map((l) => l.trim()).filter((l) => l.startsWith('iifname'));
    expect(rules).toEqual(['iifname "g-a" oifname "g-c" drop', 'iifname "g-a" numgen random mod 1000000 < 15000 drop']);
  });

  it('refuses unknown hosts', () => {
    expect(() => nftRuleset(L.hosts, [{ network: 'migration', host: 'zz' }], none)).toThrow(InvalidArgumentError);
  });
});

describe('cutKey', () => {
  it('is symmetric for pairs and distinguishes networks', () => {
    expect(cutKey({ network: 'migration', host: 'a', to: 'b' })).toBe(cutKey({ network: 'migration', host: 'b', to: 'a' }));
    expect(cutKey({ network: 'migration', host: 'a' })).not.toBe(cutKey({ network: 'management', host: 'a' }));
  });
});

describe('delayPlan', () => {
  it('gives each host and each delayed pair its own queue; per-peer delays add to the host delay', () => {
    const shaping = new Map([
      ['a', hs({ delayMs: 10, jitterMs: 1 }, [['b', { delayMs: 5, jitterMs: 2 }], ['c', { rateMbit: 5 }]])],
      ['c', hs(undefined, [['a', { delayMs: 7 }]])],
    ]);
    const plan = delayPlan(L.hosts, shaping);
    expect(plan.rules).toEqual([
      { inPort: 'g-a', outPort: 'g-b', queue: queueNumber(0, 1) },
      { inPort: 'g-a', queue: queueNumber(0) },
      { inPort: 'g-c', outPort: 'g-a', queue: queueNumber(2, 0) },
    ]);
    expect(plan.queues).toEqual(
      new Map([
        [queueNumber(0, 1), { delayMs: 15, jitterMs: 3 }],
        [queueNumber(0), { delayMs: 10, jitterMs: 1 }],
        [queueNumber(2, 0), { delayMs: 7, jitterMs: 0 }],
      ]),
    );
  });

  it('numbers queues uniquely within the 16-bit range', () => {
    const seen = new Set<number>();
    for (let s = 0; s < 64; s++) for (const d of [undefined, ...Array.from({ length: 64 }, (_, i) => i)]) seen.add(queueNumber(s, d));
    expect(seen.size).toBe(64 * 65);
    expect(Math.max(...seen)).toBeLessThan(65536);
    expect(Math.min(...seen)).toBeGreaterThan(0);
  });

  it('renders iptables-restore input', () => {
    expect(iptablesRuleset([{ inPort: 'g-a', outPort: 'g-b', queue: 67 }, { inPort: 'g-a', queue: 1 }])).toBe(
      [
        '*filter',
        ':INPUT ACCEPT [0:0]',
        ':FORWARD ACCEPT [0:0]',
        ':OUTPUT ACCEPT [0:0]',
        '-A FORWARD -m physdev --physdev-in g-a --physdev-out g-b -j NFQUEUE --queue-num 67 --queue-bypass',
        '-A FORWARD -m physdev --physdev-in g-a -j NFQUEUE --queue-num 1 --queue-bypass',
        'COMMIT',
        '',
      ].join('\n'),
    );
  });
});
