import { Readable } from 'node:stream';

import { describe, expect, it } from 'vitest';

import {
  COMBINED_WORKER,
  formatGuestLine,
  GUEST_MAX_LINE,
  guestEvents,
  guestLineCrc,
  GuestTelemetryParser,
  type GuestEvent,
  type GuestPerfSample,
} from '../../../services/shared/guest/telemetry.js';

// Lines captured from a real guest (musl build of stress.c under QEMU TCG): they pin the C and
// TypeScript checksum implementations to each other.
const REAL_START =
  'migd-stress v1 1264 start workers=2 bytes=33554432 pattern=random rate=0 verify=1 hot=0 report_ms=100 hb_ms=1000 seed=0x6f97c9230e7980c1 pid=1 ncpu=1 *37dc';
const REAL_LINES = [
  REAL_START,
  'migd-stress v1 1372 map w=0 page=0 pa=0x29f9000 *9894',
  'migd-stress v1 1393 pass w=1 n=1 bytes=33554432 ms=15 wall=15 ms_per_gib=511 *985e',
  'migd-stress v1 1397 pass w=0 n=1 bytes=33554432 ms=15 wall=15 ms_per_gib=506 *2123',
  'migd-stress v1 2381 hb seq=1 lag=0 mib=917,915 *5d4c',
  'migd-stress v1 2464 verify w=1 pages=245760 errors=0 dropped=0 *e289',
];

/** A parser on a fake clock that the test advances. */
function fakeClock(start = 1_000): { parser: GuestTelemetryParser; advance: (ms: number) => void } {
  let now = start;
  const parser = new GuestTelemetryParser({ now: () => now });
  return { parser, advance: (ms) => (now += ms) };
}

const ofType = <T extends GuestEvent['type']>(events: GuestEvent[], type: T): Extract<GuestEvent, { type: T }>[] =>
  events.filter((e): e is Extract<GuestEvent, { type: T }> => e.type === type);

const samples = (events: GuestEvent[]): GuestPerfSample[] => ofType(events, 'sample').map((e) => e.sample);

describe('guest line checksum', () => {
  it('matches the checksum the C workload computes', () => {
    for (const line of REAL_LINES) {
      const star = line.lastIndexOf(' *');
      expect(guestLineCrc(line.slice(0, star)).toString(16).padStart(4, '0')).toBe(line.slice(star + 2));
    }
  });

  it('formatGuestLine produces lines the parser accepts', () => {
    const line = formatGuestLine(5, 'hb', { seq: 1, lag: 0, mib: '3,4' });
    expect(line).toMatch(/^migd-stress v1 5 hb seq=1 lag=0 mib=3,4 \*[0-9a-f]{4}\n$/);
    const [ev] = new GuestTelemetryParser().push(line);
    expect(ev).toMatchObject({ type: 'heartbeat', seq: 1, lagMs: 0, mibWritten: [3, 4], guestMonoMs: 5 });
  });
});

describe('GuestTelemetryParser: valid lines', () => {
  it('parses real guest output into typed events', () => {
    const { parser } = fakeClock();
    const events = parser.push(REAL_LINES.join('\r\n') + '\r\n');
    const start = ofType(events, 'start')[0];
    expect(start?.params).toEqual({
      workers: 2,
      bytesPerWorker: 33554432,
      pattern: 'random',
      rateBytesPerSec: 0,
      verify: true,
      hotBytes: 0,
      reportMs: 100,
      heartbeatMs: 1000,
      seed: '0x6f97c9230e7980c1',
      pid: 1,
      ncpu: 1,
    });
    expect(parser.params?.workers).toBe(2);
    expect(ofType(events, 'map')).toMatchObject([{ worker: 0, page: 0, physAddr: 0x29f9000 }]);
    expect(ofType(events, 'pass')).toMatchObject([
      { worker: 1, pass: 1, bytes: 33554432, busyMs: 15, wallMs: 15, msPerGib: 511, guestMonoMs: 1393 },
      { worker: 0, pass: 1, msPerGib: 506 },
    ]);
    expect(ofType(events, 'heartbeat')).toMatchObject([{ seq: 1, lagMs: 0, mibWritten: [917, 915] }]);
    expect(ofType(events, 'verify')).toMatchObject([{ worker: 1, pagesVerified: 245760, errors: 0, dropped: 0 }]);
    expect(ofType(events, 'malformed')).toEqual([]);
    expect(parser.stats).toMatchObject({ lines: 6, workloadLines: 6, malformed: 0, consoleLines: 0 });
  });

  it('yields per-worker samples and a combined one once every worker reported', () => {
    const { parser } = fakeClock();
    parser.push(formatGuestLine(10, 'start', { workers: 2, bytes: 4096, pattern: 'random' }));
    const first = samples(parser.push(formatGuestLine(20, 'pass', { w: 0, n: 3, bytes: 4096, ms_per_gib: 1000 })));
    expect(first).toEqual([
      { worker: 0, msPerGib: 1000, guestMonoMs: 20, hostMs: 1000, pagesVerified: 0, integrityErrors: 0, heartbeatGapMs: 0 },
    ]);
    parser.push(formatGuestLine(25, 'verify', { w: 1, pages: 77, errors: 0 }));
    const second = samples(parser.push(formatGuestLine(30, 'pass', { w: 1, n: 3, bytes: 4096, ms_per_gib: 3000 })));
    expect(second.map((s) => s.worker)).toEqual([1, COMBINED_WORKER]);
    expect(second[0]?.pagesVerified).toBe(77);
    // combined throughput: 1/(1/1000 + 1/3000) = 750 ms per GiB
    expect(second[1]).toMatchObject({ worker: COMBINED_WORKER, msPerGib: 750, pagesVerified: 77 });
    // a worker reporting twice does not complete a round
    expect(samples(parser.push(formatGuestLine(40, 'pass', { w: 0, n: 4, bytes: 4096, ms_per_gib: 1000 }))).map((s) => s.worker)).toEqual([0]);
  });

  it('keeps integrity error details and counters', () => {
    const { parser } = fakeClock();
    const events = parser.push(
      formatGuestLine(1, 'err', { w: 0, page: 17, reason: 'stale', expected: 12, found: 11 }) +
        formatGuestLine(2, 'err', { w: 1, page: 3, reason: 'corrupt', expected: 5, found: 5, word: 100, xor: '0x20000' }) +
        formatGuestLine(3, 'err', { w: 1, page: 9, reason: 'misplaced', expected: 5, found: 5, src_w: 0, src_page: 8 }) +
        formatGuestLine(4, 'verify', { w: 1, pages: 1000, errors: 40, dropped: 38 }),
    );
    expect(ofType(events, 'integrity-error')).toMatchObject([
      { worker: 0, page: 17, reason: 'stale', expectedGen: 12, foundGen: 11 },
      { worker: 1, page: 3, reason: 'corrupt', word: 100, xor: '0x20000' },
      { worker: 1, page: 9, reason: 'misplaced', srcWorker: 0, srcPage: 8 },
    ]);
    const integrity = parser.integrity();
    // worker 0: one err line, no verify line yet; worker 1: its counter (40) beats the 2 lines seen
    expect(integrity).toMatchObject({ pagesVerified: 1000, errors: 41, dropped: 38 });
    expect(integrity.details).toHaveLength(3);
  });

  it('reports ack, warn, fatal and unknown kinds without failing', () => {
    const events = new GuestTelemetryParser().push(
      formatGuestLine(1, 'ack', { cmd: 'corrupt', ok: 1 }) +
        formatGuestLine(2, 'warn', { reason: 'unknown_param', key: 'migd.x' }) +
        formatGuestLine(3, 'fatal', { reason: 'mlock', errno: 12 }) +
        formatGuestLine(4, 'frobnicate', { a: 1 }),
    );
    expect(events.map((e) => e.type)).toEqual(['ack', 'warn', 'fatal', 'other']);
    expect(events[2]).toMatchObject({ kind: 'fatal', fields: { reason: 'mlock', errno: '12' } });
  });
});

describe('GuestTelemetryParser: stream framing', () => {
  const stream = REAL_LINES.map((l) => `${l}\r\n`).join('');

  it('gives the same events whatever the chunking (every split point, byte by byte)', () => {
    const whole = new GuestTelemetryParser({ now: () => 0 }).push(stream);
    for (let cut = 0; cut <= stream.length; cut++) {
      const p = new GuestTelemetryParser({ now: () => 0 });
      const got = [...p.push(stream.slice(0, cut)), ...p.push(stream.slice(cut))];
      expect(got).toEqual(whole);
    }
    const bytes = new GuestTelemetryParser({ now: () => 0 });
    const got: GuestEvent[] = [];
    for (const b of Buffer.from(stream, 'latin1')) got.push(...bytes.push(Buffer.from([b])));
    expect(got).toEqual(whole);
  });

  it('handles interleaved workers line by line', () => {
    const { parser } = fakeClock();
    const lines = [0, 1, 0, 1, 1, 0].map((w, i) => formatGuestLine(i, 'pass', { w, n: i, bytes: 4096, ms_per_gib: 100 + w }));
    const passes = ofType(parser.push(lines.join('')), 'pass');
    expect(passes.map((p) => p.worker)).toEqual([0, 1, 0, 1, 1, 0]);
    expect(parser.workerStates().map((w) => [w.worker, w.lastPass, w.lastMsPerGib])).toEqual([
      [0, 5, 100],
      [1, 4, 101],
    ]);
  });

  it('ignores kernel noise, tolerates text glued before the magic, flags a kernel panic', () => {
    const p = new GuestTelemetryParser({ now: () => 0, emitConsole: true });
    const events = p.push(
      '[    0.123456] Linux version 6.1.0-56-amd64\n' +
        '\x1b[0m\r\n' +
        `[    1.5] random: crng init done${formatGuestLine(9, 'hb', { seq: 2, lag: 0, mib: '1' })}` +
        '[    9.000000] Kernel panic - not syncing: Attempted to kill init!\n',
    );
    expect(events.map((e) => e.type)).toEqual(['console', 'console', 'heartbeat', 'kernel-panic']);
    expect(p.stats).toMatchObject({ workloadLines: 1, consoleLines: 3, malformed: 0 });
  });

  it('survives garbage and invalid UTF-8 and resynchronises on the next newline', () => {
    const p = new GuestTelemetryParser({ now: () => 0 });
    const garbage = Buffer.from([0xff, 0xfe, 0x00, 0xc3, 0x28, 0x0a, 0x80, 0x81, 0x0d, 0x0a]);
    const good = Buffer.from(formatGuestLine(5, 'summary', { verified: 10, errors: 0, dropped: 0, passes: 2 }));
    const events = [...p.push(garbage), ...p.push(Buffer.concat([Buffer.from([0xe2, 0x82]), good]))];
    expect(events.map((e) => e.type)).toEqual(['summary']);
  });

  it('drops an overlong line without a newline and recovers', () => {
    const p = new GuestTelemetryParser({ now: () => 0 });
    expect(p.push('x'.repeat(GUEST_MAX_LINE + 10))).toEqual([]);
    expect(p.push('y'.repeat(5000))).toEqual([]);
    const events = p.push(`zzz\n${formatGuestLine(1, 'hb', { seq: 1, lag: 0, mib: '0' })}`);
    expect(events.map((e) => e.type)).toEqual(['heartbeat']);
    expect(p.stats.overflowBytes).toBeGreaterThan(GUEST_MAX_LINE + 5000);
  });

  it('flushes a final unterminated line at end()', () => {
    const p = new GuestTelemetryParser({ now: () => 0 });
    const line = formatGuestLine(1, 'hb', { seq: 1, lag: 0, mib: '0' }).trimEnd();
    expect(p.push(line)).toEqual([]);
    expect(p.end().map((e) => e.type)).toEqual(['heartbeat']);
    expect(p.end()).toEqual([]);
  });

  it('adapts a Readable stream with guestEvents()', async () => {
    const source = Readable.from([Buffer.from(REAL_LINES.slice(0, 2).join('\n')), Buffer.from('\n' + REAL_LINES[4])]);
    const types: string[] = [];
    for await (const ev of guestEvents(source, new GuestTelemetryParser({ now: () => 0 }))) types.push(ev.type);
    expect(types).toEqual(['start', 'map', 'heartbeat']);
  });
});

describe('GuestTelemetryParser: rejected lines', () => {
  const cases: [string, string, string][] = [
    ['bad checksum', REAL_LINES[1]!.replace(/\*[0-9a-f]{4}$/, '*0000'), 'checksum mismatch'],
    ['missing checksum', 'migd-stress v1 5 hb seq=1 lag=0 mib=1', 'no checksum'],
    ['spliced kernel message', 'migd-stress v1 1393 pass w=1 n=1 bytes=3355[   4.2] foo4432 ms=15 wall=15 ms_per_gib=511 *985e', 'checksum mismatch'],
    ['future version', formatGuestLine(1, 'hb', { seq: 1 }).replace(' v1 ', ' v2 ').trimEnd(), 'checksum mismatch'],
  ];
  it.each(cases)('%s', (_name, line, reason) => {
    const p = new GuestTelemetryParser({ now: () => 0 });
    const events = p.push(`${line}\n`);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ type: 'malformed', reason });
    expect(p.stats.malformed).toBe(1);
  });

  it('rejects a correctly signed line of an unsupported version', () => {
    const body = 'migd-stress v2 1 hb seq=1';
    const line = `${body} *${guestLineCrc(body).toString(16).padStart(4, '0')}\n`;
    expect(new GuestTelemetryParser().push(line)).toMatchObject([{ type: 'malformed', reason: 'unsupported version v2' }]);
  });

  it.each([
    ['non-numeric', { w: 0, n: 1, bytes: 4096, ms_per_gib: '12x' }, 'bad number ms_per_gib=12x'],
    ['negative', { w: 0, n: 1, bytes: 4096, ms_per_gib: '-5' }, 'bad number ms_per_gib=-5'],
    ['too large', { w: 0, n: 1, bytes: '99999999999999999', ms_per_gib: 5 }, 'bad number bytes=99999999999999999'],
    ['missing key', { w: 0, n: 1, bytes: 4096 }, 'missing ms_per_gib'],
    ['empty value', { w: '', n: 1, bytes: 4096, ms_per_gib: 5 }, 'bad number w='],
  ])('pass line with a %s number is malformed and changes no state', (_name, fields, reason) => {
    const p = new GuestTelemetryParser({ now: () => 0 });
    const events = p.push(formatGuestLine(1, 'pass', fields));
    expect(events).toEqual([{ type: 'malformed', hostMs: 0, reason: `pass: ${reason}`, line: expect.any(String) }]);
    expect(p.workerStates()).toEqual([]);
    expect(p.silenceMs()).toBeUndefined();
  });

  it('rejects unknown integrity reasons and patterns, and fields without "="', () => {
    const p = new GuestTelemetryParser({ now: () => 0 });
    const events = p.push(
      formatGuestLine(1, 'err', { w: 0, page: 1, reason: 'gremlins', expected: 1 }) +
        formatGuestLine(1, 'start', { workers: 1, bytes: 4096, pattern: 'zigzag' }) +
        'migd-stress v1 1 hb seq=1 junk *' + guestLineCrc('migd-stress v1 1 hb seq=1 junk').toString(16).padStart(4, '0') + '\n',
    );
    expect(events.map((e) => (e.type === 'malformed' ? e.reason : e.type))).toEqual(['err: bad reason gremlins', 'start: bad pattern zigzag', 'bad field "junk"']);
  });
});

describe('GuestTelemetryParser: gaps and anomalies', () => {
  it('reports host-side silences as gaps and in the next sample', () => {
    const { parser, advance } = fakeClock();
    parser.push(formatGuestLine(100, 'hb', { seq: 1, lag: 0, mib: '1' }));
    advance(900);
    expect(ofType(parser.push(formatGuestLine(1100, 'hb', { seq: 2, lag: 0, mib: '1' })), 'gap')).toEqual([]);
    advance(4000); // e.g. the VM was stopped: the guest clock did not move
    expect(parser.silenceMs()).toBe(4000);
    const events = parser.push(formatGuestLine(1150, 'pass', { w: 0, n: 2, bytes: 4096, ms_per_gib: 900 }));
    expect(ofType(events, 'gap')).toMatchObject([{ hostGapMs: 4000, guestGapMs: 50 }]);
    expect(samples(events)[0]?.heartbeatGapMs).toBe(4000);
    expect(parser.maxHeartbeatGapMs).toBe(4000);
    advance(100);
    expect(samples(parser.push(formatGuestLine(1250, 'pass', { w: 0, n: 3, bytes: 4096, ms_per_gib: 900 })))[0]?.heartbeatGapMs).toBe(100);
  });

  it('flags a pass counter or guest clock going backwards (rollback seen from outside)', () => {
    const { parser } = fakeClock();
    parser.push(formatGuestLine(100, 'pass', { w: 0, n: 9, bytes: 4096, ms_per_gib: 900 }));
    const events = parser.push(formatGuestLine(90, 'pass', { w: 0, n: 7, bytes: 4096, ms_per_gib: 900 }));
    expect(ofType(events, 'anomaly').map((a) => a.kind)).toEqual(['clock-regressed', 'pass-regressed']);
    // n may repeat (a report window inside one long pass): not an anomaly
    expect(ofType(parser.push(formatGuestLine(95, 'pass', { w: 0, n: 7, bytes: 4096, ms_per_gib: 900 })), 'anomaly')).toEqual([]);
  });

  it('flags a second start line as a guest restart and resets worker state', () => {
    const { parser } = fakeClock();
    parser.push(formatGuestLine(5000, 'start', { workers: 1, bytes: 4096, pattern: 'idle' }));
    parser.push(formatGuestLine(5001, 'pass', { w: 0, n: 1, bytes: 4096, ms_per_gib: 900 }));
    const events = parser.push(formatGuestLine(1200, 'start', { workers: 1, bytes: 4096, pattern: 'idle' }));
    expect(events.map((e) => (e.type === 'anomaly' ? `anomaly:${e.kind}` : e.type))).toEqual(['anomaly:restart', 'start']);
    expect(parser.workerStates()).toEqual([]);
  });

  it('parses the disk, NIC and module lines, and counts disk errors among the integrity errors', () => {
    const { parser } = fakeClock();
    const events = [
      formatGuestLine(10, 'modules', { loaded: 12, failed: 0, ms: 40 }),
      formatGuestLine(11, 'net', { if: 'eth0', ip: '198.18.64.5/24', mac: '52:54:00:12:34:56', echo_port: 7 }),
      formatGuestLine(12, 'dstart', { dev: '/dev/vda', bytes: 33554432, blocks: 8192, rate: 4194304, direct: 1, verify_ms: 0 }),
      formatGuestLine(13, 'dpass', { n: 2, bytes: 4194304, wall: 1000 }),
      formatGuestLine(14, 'err', { w: 0, page: 3, reason: 'stale', expected: 5, found: 4 }),
      formatGuestLine(15, 'derr', { block: 7, reason: 'zero', expected: 3, found: 0 }),
      formatGuestLine(16, 'derr', { block: 9, reason: 'misplaced', expected: 3, found: 3, src_block: 8 }),
      formatGuestLine(17, 'derr', { block: 11, reason: 'corrupt', expected: 3, found: 3, word: 100, xor: '0x1' }),
      formatGuestLine(18, 'dsweep', { n: 1, blocks: 8192, errors: 3, ms: 250 }),
      formatGuestLine(19, 'dverify', { blocks: 9000, errors: 3, dropped: 0 }),
    ].flatMap((l) => parser.push(l));
    expect(parser.stats.malformed).toBe(0);
    expect(ofType(events, 'modules')).toMatchObject([{ loaded: 12, failed: 0, ms: 40 }]);
    expect(ofType(events, 'net')).toMatchObject([{ ifname: 'eth0', ip: '198.18.64.5', prefixLength: 24, mac: '52:54:00:12:34:56', echoPort: 7 }]);
    expect(ofType(events, 'disk-start')).toMatchObject([{ dev: '/dev/vda', bytes: 33554432, blocks: 8192, rateBytesPerSec: 4194304, direct: true, verifyMs: 0 }]);
    expect(ofType(events, 'disk-pass')).toMatchObject([{ pass: 2, bytes: 4194304, wallMs: 1000 }]);
    expect(ofType(events, 'disk-integrity-error').map((e) => [e.block, e.reason, e.srcBlock, e.word, e.xor])).toEqual([
      [7, 'zero', undefined, undefined, undefined],
      [9, 'misplaced', 8, undefined, undefined],
      [11, 'corrupt', undefined, 100, '0x1'],
    ]);
    const integrity = parser.integrity();
    expect(integrity.disk).toMatchObject({ blocksVerified: 9000, errors: 3, dropped: 0, sweeps: 1, lastSweep: { sweep: 1, blocks: 8192, errors: 3 } });
    expect(integrity.errors).toBe(4); // one memory page + three disk blocks
    expect(integrity.details).toHaveLength(1);

    // A disk line with a bad field is malformed and changes nothing.
    expect(ofType(parser.push(formatGuestLine(20, 'derr', { block: 1, reason: 'melted', expected: 1 })), 'malformed')).toHaveLength(1);
    expect(ofType(parser.push(formatGuestLine(21, 'net', { if: 'eth0', ip: '198.18.64.5', mac: 'x', echo_port: 7 })), 'malformed')).toHaveLength(1);
    expect(parser.integrity().errors).toBe(4);

    // A reboot forgets the disk counters with the rest (the generation table was in guest RAM).
    parser.push(formatGuestLine(1, 'start', { workers: 1, bytes: 4096, pattern: 'idle' }));
    parser.push(formatGuestLine(2, 'start', { workers: 1, bytes: 4096, pattern: 'idle' }));
    expect(parser.integrity().disk).toMatchObject({ blocksVerified: 0, errors: 0, sweeps: 0, lastSweep: undefined });
  });
});
