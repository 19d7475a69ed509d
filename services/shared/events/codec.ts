/**
 * Wire format of migd events: the proto `migd.v1.Event` in binary encoding, with the headers
 * `Content-Type: application/x-protobuf; proto=migd.v1.Event` and `Nats-Msg-Id: <event id>`
 * (JetStream de-duplicates on the latter).
 */
import { headers as natsHeaders, type MsgHdrs } from 'nats';
import { InvalidArgumentError } from '../errors.js';
import { Event } from '../gen/migd/v1/events.js';
import { newId } from './ids.js';
import { subjectForEvent } from './subjects.js';

export const EVENT_CONTENT_TYPE = 'application/x-protobuf; proto=migd.v1.Event';
export const CONTENT_TYPE_HEADER = 'Content-Type';
export const MSG_ID_HEADER = 'Nats-Msg-Id';

/** A message that is not a well-formed migd event. */
export class EventDecodeError extends InvalidArgumentError {}

/** Options of {@link buildEvent}. */
export interface BuildEventOptions {
  /** Event id; default a fresh ULID. */
  id?: string;
  /** When it happened; default now. */
  time?: Date;
  /** Per-run sequence number; default 0 (not about a run). */
  runSequence?: number;
}

/**
 * Builds an Event around `payload`, with its subject derived from the payload.
 * @throws InvalidArgumentError when the payload lacks the id its subject needs.
 */
export function buildEvent(payload: NonNullable<Event['payload']>, opts: BuildEventOptions = {}): Event {
  const subject = subjectForEvent({ payload });
  return {
    id: opts.id ?? newId(),
    time: opts.time ?? new Date(),
    subject,
    runSequence: opts.runSequence ?? 0,
    payload,
  };
}

/** Encodes an event to its payload bytes. */
export function encodeEvent(event: Event): Uint8Array {
  return Event.encode(event).finish();
}

/** The NATS headers an event is published with. */
export function eventHeaders(eventId: string): MsgHdrs {
  const h = natsHeaders();
  h.set(CONTENT_TYPE_HEADER, EVENT_CONTENT_TYPE);
  h.set(MSG_ID_HEADER, eventId);
  return h;
}

/**
 * Decodes an event's payload bytes. When `headers` are given their Content-Type must be the
 * event content type (a missing header is accepted).
 * @throws EventDecodeError on a foreign content type or undecodable bytes.
 */
export function decodeEvent(data: Uint8Array, headers?: MsgHdrs): Event {
  const ct = headers?.get(CONTENT_TYPE_HEADER) ?? '';
  if (ct !== '' && ct !== EVENT_CONTENT_TYPE) {
    throw new EventDecodeError(`unexpected Content-Type "${ct}" (want "${EVENT_CONTENT_TYPE}")`);
  }
  try {
    return Event.decode(data);
  } catch (cause) {
    throw new EventDecodeError('message is not a valid migd.v1.Event', { cause });
  }
}
