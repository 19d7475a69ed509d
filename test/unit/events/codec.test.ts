import { headers } from 'nats';
import { describe, expect, it } from 'vitest';
import {
  buildEvent,
  decodeEvent,
  encodeEvent,
  EventDecodeError,
  EVENT_CONTENT_TYPE,
  eventHeaders,
} from '../../../services/shared/events/codec.js';
import { createIdFactory } from '../../../services/shared/events/ids.js';
import { MigrationState } from '../../../services/shared/gen/migd/v1/common.js';

describe('event codec', () => {
  it('round-trips an event in proto binary with its subject', () => {
    const ev = buildEvent(
      {
        $case: 'runState',
        value: {
          runId: 'R1',
          planId: 'P1',
          vmName: 'vm',
          change: { time: new Date(1000), from: MigrationState.MIGRATION_STATE_QUEUED, to: MigrationState.MIGRATION_STATE_PRECOPY, reason: 'go' },
        },
      },
      { id: 'E1', time: new Date(2000), runSequence: 3 },
    );
    expect(ev.subject).toBe('migd.v1.run.R1.state');
    const bytes = encodeEvent(ev);
    expect(bytes).toBeInstanceOf(Uint8Array);
    expect(decodeEvent(bytes, eventHeaders('E1'))).toEqual(ev);
  });

  it('sets the content type and message id headers', () => {
    const h = eventHeaders('01ABC');
    expect(h.get('Content-Type')).toBe(EVENT_CONTENT_TYPE);
    expect(h.get('Nats-Msg-Id')).toBe('01ABC');
  });

  it('rejects a foreign content type and garbage bytes', () => {
    const h = headers();
    h.set('Content-Type', 'application/json');
    expect(() => decodeEvent(new Uint8Array(), h)).toThrow(EventDecodeError);
    expect(() => decodeEvent(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff]))).toThrow(EventDecodeError);
  });

  it('fills in an id and a time by default', () => {
    const ev = buildEvent({ $case: 'nodeState', value: { nodeId: 'n', up: true, reason: '' } });
    expect(ev.id).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
    expect(ev.time).toBeInstanceOf(Date);
    expect(ev.runSequence).toBe(0);
  });
});

describe('ids', () => {
  it('are strictly increasing within a millisecond and when the clock steps back', () => {
    let t = 1_000_000;
    const next = createIdFactory(() => t);
    const ids: string[] = [];
    for (let i = 0; i < 1000; i++) ids.push(next());
    t -= 500;
    for (let i = 0; i < 10; i++) ids.push(next());
    t += 10_000;
    ids.push(next());
    expect([...ids].sort()).toEqual(ids);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids.every((id) => id.length === 26)).toBe(true);
  });
});
