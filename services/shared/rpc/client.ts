/**
 * One way to call a migd gRPC service: a typed promise client built from a ts-proto service
 * definition. Every unary call has a deadline (default 10 s); a caller's AbortSignal cancels the
 * call; errors come back as MigdErrors of the matching class (see status.ts). A connection that
 * fails because a certificate was refused comes back as UNAUTHENTICATED (reason
 * CERTIFICATE_REJECTED), not as UNAVAILABLE (see tls-probe.ts).
 */
import { Metadata, makeGenericClientConstructor, type Client, type ServiceDefinition, type ServiceError, type ClientReadableStream } from '@grpc/grpc-js';
import { CancelledError, type MigdError } from '../errors.js';
import { fromServiceError } from './status.js';
import { channelCredentials, type TransportSecurity } from './tls.js';
import { probeCertificate } from './tls-probe.js';

type AnyMethod = {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  requestSerialize: (v: never) => Buffer;
  responseDeserialize: (b: Buffer) => unknown;
};
type Req<M> = M extends { requestSerialize: (v: infer R) => Buffer } ? R : never;
type Res<M> = M extends { responseDeserialize: (b: Buffer) => infer R } ? R : never;

/** Per-call options. */
export interface CallOptions {
  /** Deadline in milliseconds from now. Unary default: the client's default; streams: none. */
  readonly deadlineMs?: number;
  /** Cancels the call. */
  readonly signal?: AbortSignal;
  /** Extra metadata. */
  readonly metadata?: Metadata;
  /**
   * Wait (until the deadline) for the channel to connect instead of failing at once while the
   * server is unreachable: the call goes out the moment a reconnect attempt succeeds.
   */
  readonly waitForReady?: boolean;
}

function callMetadata(o: CallOptions): Metadata {
  const md = o.metadata ?? new Metadata();
  if (o.waitForReady) md.setOptions({ waitForReady: true });
  return md;
}

/** A typed client: unary methods return promises, server-streaming ones async iterables. */
export type RpcClient<S> = {
  [K in keyof S]: S[K] extends { requestStream: false; responseStream: true }
    ? (request: Req<S[K]>, options?: CallOptions) => AsyncIterable<Res<S[K]>>
    : S[K] extends { requestStream: false; responseStream: false }
      ? (request: Req<S[K]>, options?: CallOptions) => Promise<Res<S[K]>>
      : never;
} & {
  /** Closes the channel. */
  close(): void;
  /** Resolves when the channel is connected; rejects after `timeoutMs`. */
  waitForReady(timeoutMs: number): Promise<void>;
};

export interface ClientOptions {
  /** Default deadline of unary calls in ms (default 10 000). */
  readonly defaultDeadlineMs?: number;
  /** Transport security; the same rules as servers (mTLS, or plain text on loopback). */
  readonly security: TransportSecurity;
  /**
   * Largest response accepted, in bytes (default 64 MiB; gRPC's own default of 4 MiB is too small
   * for ExportRuns or a long run's timeline).
   */
  readonly maxReceiveBytes?: number;
  /**
   * Longest wait of the channel between connection attempts after failures, in ms (default:
   * gRPC's own, which grows to 120 s). A peer that must be seen again soon after it returns —
   * a node daemon heartbeating to its coordinator — keeps this short.
   */
  readonly maxReconnectBackoffMs?: number;
}

/** Default of {@link ClientOptions.maxReceiveBytes}. */
export const DEFAULT_MAX_RECEIVE_BYTES = 64 * 1024 * 1024;

function deadlineOf(ms: number | undefined): Date | undefined {
  return ms === undefined || ms <= 0 ? undefined : new Date(Date.now() + ms);
}

/** Creates a typed client for `definition` at `address`. */
export function createClient<S extends Record<string, AnyMethod>>(serviceName: string, definition: S, address: string, opts: ClientOptions): RpcClient<S> {
  const Ctor = makeGenericClientConstructor(definition as unknown as ServiceDefinition, serviceName);
  const { creds, options } = channelCredentials(opts.security, address);
  const backoff = opts.maxReconnectBackoffMs === undefined ? {} : { 'grpc.initial_reconnect_backoff_ms': Math.min(250, opts.maxReconnectBackoffMs), 'grpc.max_reconnect_backoff_ms': opts.maxReconnectBackoffMs };
  const client: Client = new Ctor(address, creds, { ...options, ...backoff, 'grpc.max_receive_message_length': opts.maxReceiveBytes ?? DEFAULT_MAX_RECEIVE_BYTES });
  const defaultDeadline = opts.defaultDeadlineMs ?? 10_000;
  const tlsFiles = opts.security.tls;
  // gRPC says UNAVAILABLE both when nobody listens and when the TLS handshake was refused:
  // one probe connection tells them apart.
  // (A waitForReady call never sees UNAVAILABLE: it waits for a connection until its deadline.)
  const explain = async (err: MigdError, o: CallOptions): Promise<MigdError> => {
    const noConnection = err.code === 'UNAVAILABLE' ? /No connection established|handshake|certificate/i.test(err.message) : err.code === 'DEADLINE_EXCEEDED' && o.waitForReady === true;
    if (!tlsFiles || !noConnection) return err;
    return (await probeCertificate(address, tlsFiles, opts.security.serverName)) ?? err;
  };
  const out: Record<string, unknown> = {
    close: () => client.close(),
    waitForReady: (timeoutMs: number) =>
      new Promise<void>((resolve, reject) => client.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve()))),
  };
  for (const [key, m] of Object.entries(definition)) {
    const serialize = m.requestSerialize as (v: unknown) => Buffer;
    const deserialize = m.responseDeserialize;
    if (m.responseStream) {
      out[key] = (request: unknown, o: CallOptions = {}) => streamCall(client, m.path, serialize, deserialize, request, o, explain);
    } else {
      out[key] = (request: unknown, o: CallOptions = {}) =>
        new Promise((resolve, reject) => {
          if (o.signal?.aborted) return reject(new CancelledError(`${m.path}: cancelled before start`, { cause: o.signal.reason }));
          const deadline = deadlineOf(o.deadlineMs ?? defaultDeadline);
          const call = client.makeUnaryRequest(m.path, serialize, deserialize, request, callMetadata(o), deadline ? { deadline } : {}, (err: ServiceError | null, res?: unknown) => {
            o.signal?.removeEventListener('abort', onAbort);
            if (err) explain(fromServiceError(err, m.path), o).then(reject, reject);
            else resolve(res);
          });
          const onAbort = (): void => call.cancel();
          o.signal?.addEventListener('abort', onAbort, { once: true });
        });
    }
  }
  return out as RpcClient<S>;
}

async function* streamCall(
  client: Client,
  path: string,
  serialize: (v: unknown) => Buffer,
  deserialize: (b: Buffer) => unknown,
  request: unknown,
  o: CallOptions,
  explain: (err: MigdError, o: CallOptions) => Promise<MigdError>,
): AsyncGenerator<unknown> {
  if (o.signal?.aborted) throw new CancelledError(`${path}: cancelled before start`, { cause: o.signal.reason });
  const deadline = deadlineOf(o.deadlineMs);
  const call: ClientReadableStream<unknown> = client.makeServerStreamRequest(path, serialize, deserialize, request, callMetadata(o), deadline ? { deadline } : {});
  const onAbort = (): void => call.cancel();
  o.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    for await (const msg of call) yield msg;
  } catch (err) {
    if (o.signal?.aborted) throw new CancelledError(`${path}: cancelled`, { cause: err });
    throw isServiceError(err) ? await explain(fromServiceError(err, path), o) : err;
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
    call.cancel();
  }
}

function isServiceError(err: unknown): err is ServiceError {
  return typeof err === 'object' && err !== null && 'code' in err && typeof (err as { code: unknown }).code === 'number' && 'metadata' in err;
}
