import { describe, expect, it } from 'vitest';
import { QmpProtocolError } from '../../../services/node/qmp/errors.js';
import { LineDecoder, encodeCommand, parseMessage } from '../../../services/node/qmp/protocol.js';

describe('LineDecoder', () => {
  it('splits on \\n, strips \\r, keeps partial lines across chunks and drops blank lines', () => {
    const d = new LineDecoder();
    expect(d.push(Buffer.from('{"a":1}\r\n{"b"'))).toEqual(['{"a":1}']);
    expect(d.pending).toBe(4);
    expect(d.push(Buffer.from(':2}\n\r\n\n{"c":3}\n'))).toEqual(['{"b":2}', '{"c":3}']);
    expect(d.pending).toBe(0);
  });

  it('does not keep a reference to the caller’s chunk memory', () => {
    const d = new LineDecoder();
    const chunk = Buffer.from('{"x":');
    d.push(chunk);
    chunk.fill(0x20);
    expect(d.push(Buffer.from('1}\n'))).toEqual(['{"x":1}']);
  });

  it('throws QmpProtocolError when a line outgrows the limit', () => {
    const d = new LineDecoder(8);
    expect(() => d.push(Buffer.from('123456789'))).toThrow(QmpProtocolError);
    const e = new LineDecoder(8);
    expect(() => e.push(Buffer.from('1234\n123456789\n'))).toThrow(/exceeds/);
  });
});

describe('parseMessage', () => {
  it('parses a real QEMU 10.0.2 greeting', () => {
    const m = parseMessage(
      '{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}',
    );
    expect(m).toEqual({
      kind: 'greeting',
      greeting: { version: { qemu: { major: 10, minor: 0, micro: 2 }, package: 'Debian 1:10.0.2+ds-2+deb13u1~bpo12+1' }, capabilities: ['oob'] },
    });
  });

  it('classifies replies, errors and events', () => {
    expect(parseMessage('{"return": {"status": "running", "running": true}, "id": 1}')).toEqual({
      kind: 'return',
      id: 1,
      value: { status: 'running', running: true },
    });
    expect(parseMessage('{"id": "x", "error": {"class": "CommandNotFound", "desc": "nope"}}')).toEqual({
      kind: 'error',
      id: 'x',
      error: { class: 'CommandNotFound', desc: 'nope' },
    });
    expect(parseMessage('{"timestamp": {"seconds": 2, "microseconds": 3}, "event": "SHUTDOWN", "data": {"guest": false}}')).toEqual({
      kind: 'event',
      event: { event: 'SHUTDOWN', data: { guest: false }, timestampUs: 2_000_003 },
    });
  });

  it.each([
    ['not json', 'malformed JSON'],
    ['[1,2]', 'not a JSON object'],
    ['{"foo": 1}', 'neither greeting'],
    ['{"error": {"class": 1}, "id": 1}', 'class/desc'],
    ['{"return": {}, "id": {"a": 1}}', 'id is neither'],
    ['{"QMP": {"version": {"qemu": {"major": "10"}}, "capabilities": []}}', 'version numbers'],
    ['{"QMP": {"version": {"qemu": {"major": 1, "minor": 0, "micro": 0}}, "capabilities": "oob"}}', 'capabilities'],
  ])('rejects %s', (line, msg) => {
    expect(() => parseMessage(line)).toThrow(QmpProtocolError);
    expect(() => parseMessage(line)).toThrow(new RegExp(msg));
  });

  it('keeps the offending line on the error', () => {
    try {
      parseMessage('{"broken"');
      expect.unreachable();
    } catch (e) {
      expect((e as QmpProtocolError).line).toBe('{"broken"');
    }
  });
});

describe('encodeCommand', () => {
  it('encodes execute and exec-oob, one line each', () => {
    expect(encodeCommand('query-status', undefined, 3).toString()).toBe('{"execute":"query-status","id":3}\n');
    expect(encodeCommand('migrate-recover', { uri: 'tcp:0:4444' }, 'r', true).toString()).toBe(
      '{"exec-oob":"migrate-recover","arguments":{"uri":"tcp:0:4444"},"id":"r"}\n',
    );
  });
});
