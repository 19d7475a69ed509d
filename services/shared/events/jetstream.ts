/**
 * The JetStream stream that holds migd's events. Every subject under `migd.v1.>` lands in it;
 * publishers set `Nats-Msg-Id` so re-publishing an event within the duplicate window is dropped.
 */
import { DiscardPolicy, nanos, RetentionPolicy, StorageType, type JetStreamManager, type StreamInfo } from 'nats';
import { ConfigError } from '../errors.js';
import { ALL_EVENTS_SUBJECT } from './subjects.js';

/** Name of the events stream. */
export const EVENTS_STREAM = 'MIGD_EVENTS';

/** Options of the events stream. */
export interface EventStreamOptions {
  /** Stream name. Default `MIGD_EVENTS`. */
  name?: string;
  /** `file` (survives a server restart) or `memory`. Default `file`. */
  storage?: 'file' | 'memory';
  /** De-duplication window for `Nats-Msg-Id`, in milliseconds. Default 120 000 (2 min). */
  duplicateWindowMs?: number;
  /** Drop events older than this, in milliseconds; 0 keeps them until a size limit. Default 7 days. */
  maxAgeMs?: number;
  /** Maximum stream size in bytes; -1 for unlimited. Default 1 GiB. */
  maxBytes?: number;
  /** Replicas (clustered JetStream). Default 1. */
  replicas?: number;
}

/** Fully defaulted stream options. */
export type ResolvedEventStreamOptions = Readonly<Required<EventStreamOptions>>;

/**
 * Fills in defaults and validates.
 * @throws ConfigError naming the bad option.
 */
export function resolveEventStreamOptions(opts: EventStreamOptions = {}): ResolvedEventStreamOptions {
  const r: Required<EventStreamOptions> = {
    name: opts.name ?? EVENTS_STREAM,
    storage: opts.storage ?? 'file',
    duplicateWindowMs: opts.duplicateWindowMs ?? 120_000,
    maxAgeMs: opts.maxAgeMs ?? 7 * 24 * 3600_000,
    maxBytes: opts.maxBytes ?? 1024 ** 3,
    replicas: opts.replicas ?? 1,
  };
  if (!/^[A-Za-z0-9_-]+$/.test(r.name)) throw new ConfigError('events.stream.name', `"${r.name}" is not a valid stream name`);
  if (r.storage !== 'file' && r.storage !== 'memory') throw new ConfigError('events.stream.storage', 'must be "file" or "memory"');
  if (!(r.duplicateWindowMs > 0)) throw new ConfigError('events.stream.duplicateWindowMs', 'must be > 0');
  if (!(r.maxAgeMs >= 0)) throw new ConfigError('events.stream.maxAgeMs', 'must be >= 0');
  if (r.maxAgeMs > 0 && r.duplicateWindowMs > r.maxAgeMs) {
    throw new ConfigError('events.stream.duplicateWindowMs', 'must not exceed events.stream.maxAgeMs');
  }
  if (!Number.isInteger(r.replicas) || r.replicas < 1) throw new ConfigError('events.stream.replicas', 'must be an integer >= 1');
  return Object.freeze(r);
}

/**
 * Creates the events stream, or updates its limits when it exists with other settings. Storage
 * cannot change on an existing stream; a mismatch is kept as is (JetStream refuses the change).
 * @throws ConfigError for bad options; NATS errors when JetStream is unavailable.
 */
export async function ensureEventStream(jsm: JetStreamManager, opts: EventStreamOptions = {}): Promise<StreamInfo> {
  const o = resolveEventStreamOptions(opts);
  const wanted = {
    subjects: [ALL_EVENTS_SUBJECT],
    duplicate_window: nanos(o.duplicateWindowMs),
    max_age: nanos(o.maxAgeMs),
    max_bytes: o.maxBytes,
    num_replicas: o.replicas,
  };
  let info: StreamInfo | undefined;
  try {
    info = await jsm.streams.info(o.name);
  } catch (err) {
    if (!isStreamNotFound(err)) throw err;
  }
  if (info === undefined) {
    return jsm.streams.add({
      name: o.name,
      ...wanted,
      storage: o.storage === 'file' ? StorageType.File : StorageType.Memory,
      retention: RetentionPolicy.Limits,
      discard: DiscardPolicy.Old,
    });
  }
  const c = info.config;
  const same =
    c.subjects.length === 1 &&
    c.subjects[0] === ALL_EVENTS_SUBJECT &&
    c.duplicate_window === wanted.duplicate_window &&
    c.max_age === wanted.max_age &&
    c.max_bytes === wanted.max_bytes &&
    c.num_replicas === wanted.num_replicas;
  return same ? info : jsm.streams.update(o.name, { ...c, ...wanted });
}

/** True for JetStream's "stream not found" (API error 10059). */
export function isStreamNotFound(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const api = (err as { api_error?: { err_code?: number } }).api_error;
  return api?.err_code === 10059 || /stream not found/i.test(err.message);
}
