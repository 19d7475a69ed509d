/**
 * One way to run a gRPC server in migd. Handlers are plain async functions
 * `(request, ctx) => response` (server-streaming ones return an AsyncIterable); this adapter turns
 * them into grpc-js callbacks, maps errors through toStatus(), propagates cancellation as an
 * AbortSignal, and adds grpc.health.v1 health checking and server reflection to every server.
 *
 * Every server is bounded against a caller that tries to exhaust it ({@link ServerLimits}):
 * connections in total and per client address (refused at accept, before TLS), concurrent
 * server streams per identity (RESOURCE_EXHAUSTED), request and response sizes, HTTP/2 streams
 * per connection, keepalive pings that drop dead peers, and idle connections closed.
 */
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { TLSSocket } from 'node:tls';
import { Server, type Metadata, type ServerUnaryCall, type ServerWritableStream, type sendUnaryData, type ServiceDefinition, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import { CancelledError, ResourceExhaustedError, UnavailableError } from '../errors.js';
import type { Logger } from '../log.js';
import { turns } from '../metrics/turns.js';
import { protoDir } from '../paths.js';
import { serverCredentials, splitHostPort, type TransportSecurity } from './tls.js';
import { toStatus } from './status.js';

/** What a handler knows about its call. */
export interface CallContext {
  /** Fires when the client cancels, the deadline passes or the server shuts down. */
  readonly signal: AbortSignal;
  /** The client's deadline, if it set one. */
  readonly deadline: Date | undefined;
  /** Request metadata. */
  readonly metadata: Metadata;
  /** Peer address. */
  readonly peer: string;
  /** Common name of the client certificate (undefined on plain-text loopback). */
  readonly identity: string | undefined;
  /** Full method path, e.g. `/migd.v1.NodeService/CreateVm`. */
  readonly method: string;
}

type AnyMethod = {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  requestDeserialize: (b: Buffer) => unknown;
  responseSerialize: (v: never) => Buffer;
};

type Req<M> = M extends { requestDeserialize: (b: Buffer) => infer R } ? R : never;
type Res<M> = M extends { responseSerialize: (v: infer R) => Buffer } ? R : never;

/** The handlers of a ts-proto service definition, keyed by method. */
export type Handlers<S> = {
  [K in keyof S]: S[K] extends { requestStream: false; responseStream: true }
    ? (request: Req<S[K]>, ctx: CallContext) => AsyncIterable<Res<S[K]>>
    : S[K] extends { requestStream: false; responseStream: false }
      ? (request: Req<S[K]>, ctx: CallContext) => Promise<Res<S[K]>>
      : never;
};

/** Resource bounds of a server; every field has a default. */
export interface ServerLimits {
  /** Open connections in total; more are closed at accept. Default 1024. */
  readonly maxConnections: number;
  /** Open connections from one client address. Default 64. */
  readonly maxConnectionsPerAddress: number;
  /**
   * Concurrent server-streaming calls (Watch, WatchGuest, WatchMigration) of one identity (the
   * certificate's common name; the peer address for plain-text callers); one more is refused
   * with RESOURCE_EXHAUSTED (reason TOO_MANY_STREAMS). Default 64.
   */
  readonly maxStreamsPerIdentity: number;
  /** HTTP/2 streams (calls) at once on one connection. Default 256. */
  readonly maxConcurrentCallsPerConnection: number;
  /** Largest request message (bytes). Default 4 MiB. */
  readonly maxReceiveBytes: number;
  /** Largest response message (bytes). Default 64 MiB (the clients' receive limit). */
  readonly maxSendBytes: number;
  /** Keepalive ping interval (ms); a peer that does not answer within keepaliveTimeoutMs is dropped. Default 30 000. */
  readonly keepaliveMs: number;
  /** Default 10 000. */
  readonly keepaliveTimeoutMs: number;
  /** A connection with no call for this long is closed (clients reconnect on their next call). Default 600 000. */
  readonly idleConnectionMs: number;
}

export const DEFAULT_SERVER_LIMITS: ServerLimits = Object.freeze({
  maxConnections: 1024,
  maxConnectionsPerAddress: 64,
  maxStreamsPerIdentity: 64,
  maxConcurrentCallsPerConnection: 256,
  maxReceiveBytes: 4 * 1024 * 1024,
  maxSendBytes: 64 * 1024 * 1024,
  keepaliveMs: 30_000,
  keepaliveTimeoutMs: 10_000,
  idleConnectionMs: 600_000,
});

/** Called before every handler; throw (e.g. PermissionDeniedError) to refuse the call. */
export type Authorizer = (ctx: CallContext) => void;

export interface RpcServerOptions {
  /** host:port to listen on (port 0 picks a free one). */
  readonly address: string;
  /** mTLS files, or explicit loopback plain text. */
  readonly security: TransportSecurity;
  readonly log: Logger;
  /** Optional authorization hook. */
  readonly authorize?: Authorizer;
  /** Proto files (relative to proto/) served by reflection. Default: every migd contract. */
  readonly reflectionProtos?: readonly string[];
  /** Resource bounds (defaults: {@link DEFAULT_SERVER_LIMITS}). */
  readonly limits?: Partial<ServerLimits>;
}

const allProtos = ['migd/v1/common.proto', 'migd/v1/node.proto', 'migd/v1/coordinator.proto', 'migd/v1/events.proto'];

type AuthCall = { getAuthContext(): { sslPeerCertificate?: { subject?: { CN?: string | string[] } } } };

/** The common name of the caller's certificate, read (and parsed) from the connection now. */
function identityOf(call: AuthCall): string | undefined {
  const cn = call.getAuthContext().sslPeerCertificate?.subject?.CN;
  return Array.isArray(cn) ? cn[0] : cn;
}

/**
 * The TLS socket a call arrived on, or undefined when it cannot be told (plain text, or a grpc-js
 * whose call objects are shaped differently: then every call reads its certificate itself). grpc-js
 * (1.14) keeps it at call.call[.nextCall…].stream.session.socket; the HTTP/2 session, and so
 * the socket, is one client connection.
 */
export function callSocket(call: unknown): TLSSocket | undefined {
  let c = (call as { call?: unknown }).call;
  for (let i = 0; i < 8 && c !== null && typeof c === 'object'; i++) {
    const socket = (c as { stream?: { session?: { socket?: unknown } } }).stream?.session?.socket;
    if (socket !== undefined) return socket instanceof TLSSocket ? socket : undefined;
    c = (c as { nextCall?: unknown }).nextCall;
  }
  return undefined;
}

/**
 * The caller's identity per TLS connection. Reading it (getPeerCertificate) parses the whole
 * certificate and computes its fingerprints: at hundreds of heartbeats a second this was a
 * coordinator's third-largest CPU cost. The certificate a connection's peer presented cannot
 * change under TLS 1.3 (no renegotiation), so it is read once per connection, kept by the socket
 * object (forgotten with it). Connections on an older TLS, or whose socket cannot be told, are
 * read on every call as before. Revocation is unaffected: it is checked at the handshake, so it
 * only ever applied to new connections.
 */
export class PeerIdentityCache {
  private readonly bySocket = new WeakMap<TLSSocket, { identity: string | undefined }>();
  /** Connections whose identity was read (for tests and metrics). */
  reads = 0;

  identity(socket: TLSSocket | undefined, read: () => string | undefined): string | undefined {
    if (!socket || socket.getProtocol() !== 'TLSv1.3') return read();
    const hit = this.bySocket.get(socket);
    if (hit) return hit.identity;
    const identity = read();
    this.reads++;
    this.bySocket.set(socket, { identity });
    return identity;
  }
}

/** The address part of a grpc-js peer string (`1.2.3.4:5678`, `[::1]:5678`). */
function peerHost(peer: string): string {
  const m = /^(?:\[([^\]]+)\]|(.+)):\d+$/.exec(peer);
  return m ? (m[1] ?? m[2] ?? peer) : peer;
}

export class RpcServer {
  readonly health = new HealthImplementation({ '': 'NOT_SERVING' });
  readonly limits: ServerLimits;
  private readonly server: Server;
  private readonly services: string[] = [];
  private readonly inflight = new Set<AbortController>();
  /** Callers' certificate identities, per connection. */
  readonly identities = new PeerIdentityCache();
  /** Open server streams by identity. */
  private readonly streams = new Map<string, number>();
  private tcp: TcpServer | undefined;
  private readonly sockets = new Set<Socket>();
  private readonly perAddress = new Map<string, number>();
  private injector: ReturnType<Server['createConnectionInjector']> | undefined;
  private boundPort: number | undefined;
  private shuttingDown = false;

  constructor(private readonly opts: RpcServerOptions) {
    this.limits = Object.freeze({ ...DEFAULT_SERVER_LIMITS, ...opts.limits });
    const l = this.limits;
    this.server = new Server({
      'grpc.max_receive_message_length': l.maxReceiveBytes,
      'grpc.max_send_message_length': l.maxSendBytes,
      'grpc.max_concurrent_streams': l.maxConcurrentCallsPerConnection,
      'grpc.keepalive_time_ms': l.keepaliveMs,
      'grpc.keepalive_timeout_ms': l.keepaliveTimeoutMs,
      'grpc.max_connection_idle_ms': l.idleConnectionMs,
    });
    this.health.addToServer(this.server);
    const pkg = loadSync((opts.reflectionProtos ?? allProtos).map((p) => join(protoDir(), p)), {
      includeDirs: [protoDir()],
      keepCase: true,
    });
    new ReflectionService(pkg).addToServer(this.server);
  }

  /** Registers a service. `name` is the full proto name, e.g. `migd.v1.NodeService`. */
  addService<S extends Record<string, AnyMethod>>(name: string, definition: S, handlers: Handlers<S>): void {
    const impl: UntypedServiceImplementation = {};
    for (const [key, method] of Object.entries(definition)) {
      const handler = (handlers as Record<string, (req: unknown, ctx: CallContext) => unknown>)[key];
      if (!handler) throw new Error(`no handler for ${method.path}`);
      impl[key] = method.responseStream
        ? this.streamAdapter(method.path, handler as (req: unknown, ctx: CallContext) => AsyncIterable<unknown>)
        : this.unaryAdapter(method.path, handler as (req: unknown, ctx: CallContext) => Promise<unknown>);
    }
    this.server.addService(definition as unknown as ServiceDefinition, impl);
    this.services.push(name);
  }

  private context(call: ServerUnaryCall<unknown, unknown> | ServerWritableStream<unknown, unknown>, method: string, ac: AbortController): CallContext {
    const d = call.getDeadline();
    const deadline = d instanceof Date ? d : Number.isFinite(d) ? new Date(d) : undefined;
    call.on('cancelled', () => ac.abort(new CancelledError('call cancelled by client')));
    const identity = this.identities.identity(callSocket(call), () => identityOf(call));
    return { signal: ac.signal, deadline, metadata: call.metadata, peer: call.getPeer(), identity, method };
  }

  private unaryAdapter(method: string, handler: (req: unknown, ctx: CallContext) => Promise<unknown>) {
    return (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>): void => {
      const ac = new AbortController();
      this.inflight.add(ac);
      const ctx = this.context(call, method, ac);
      const t0 = turns.enabled ? turns.now() : 0;
      const run = async (): Promise<unknown> => {
        this.opts.authorize?.(ctx);
        return handler(call.request, ctx);
      };
      run().then(
        (res) => {
          this.inflight.delete(ac);
          // The handler's whole time (its awaits included): with the planner's and the store's
          // own turns it tells waiting from working (see metrics/turns.ts).
          turns.record(`rpc ${method.slice(method.lastIndexOf('/') + 1)}`, t0);
          callback(null, res);
        },
        (err: unknown) => {
          this.inflight.delete(ac);
          callback(toStatus(err, this.opts.log, method), null);
        },
      );
    };
  }

  private streamAdapter(method: string, handler: (req: unknown, ctx: CallContext) => AsyncIterable<unknown>) {
    return (call: ServerWritableStream<unknown, unknown>): void => {
      const ac = new AbortController();
      this.inflight.add(ac);
      const ctx = this.context(call, method, ac);
      const who = ctx.identity ?? `address:${peerHost(ctx.peer)}`;
      let counted = false;
      const release = (): void => {
        if (!counted) return;
        counted = false;
        const n = (this.streams.get(who) ?? 1) - 1;
        if (n <= 0) this.streams.delete(who);
        else this.streams.set(who, n);
      };
      const run = async (): Promise<void> => {
        this.opts.authorize?.(ctx);
        const open = this.streams.get(who) ?? 0;
        if (open >= this.limits.maxStreamsPerIdentity) {
          this.opts.log.warn('stream refused: too many open streams', { identity: ctx.identity ?? null, peer: ctx.peer, method, open });
          throw new ResourceExhaustedError(`${ctx.identity ? `identity "${ctx.identity}"` : 'this client'} already has ${open} open streams on this server (at most ${this.limits.maxStreamsPerIdentity}); close one first`, { reason: 'TOO_MANY_STREAMS' });
        }
        this.streams.set(who, open + 1);
        counted = true;
        for await (const msg of handler(call.request, ctx)) {
          if (ac.signal.aborted) break;
          if (!call.write(msg)) {
            await new Promise<void>((resolve) => {
              const done = (): void => {
                call.off('drain', done);
                ac.signal.removeEventListener('abort', done);
                resolve();
              };
              call.on('drain', done);
              ac.signal.addEventListener('abort', done);
            });
          }
        }
      };
      run().then(
        () => {
          release();
          this.inflight.delete(ac);
          if (this.shuttingDown) call.emit('error', toStatus(new UnavailableError('server shutting down'), this.opts.log, method));
          else if (!ac.signal.aborted) call.end();
        },
        (err: unknown) => {
          release();
          this.inflight.delete(ac);
          if (this.shuttingDown) call.emit('error', toStatus(new UnavailableError('server shutting down'), this.opts.log, method));
          else if (!ac.signal.aborted) call.emit('error', toStatus(err, this.opts.log, method));
        },
      );
    };
  }

  /**
   * Binds and starts serving; returns the bound port. Health turns SERVING. The listening socket
   * is this server's own (connections are handed to gRPC after the connection limits passed).
   */
  async start(): Promise<number> {
    const creds = serverCredentials(this.opts.security, this.opts.address);
    const { host, port } = splitHostPort(this.opts.address);
    this.injector = this.server.createConnectionInjector(creds);
    const injector = this.injector;
    const tcp = createTcpServer({ pauseOnConnect: false }, (socket) => this.accept(socket, injector));
    this.tcp = tcp;
    this.boundPort = await new Promise<number>((resolve, reject) => {
      tcp.once('error', reject);
      tcp.listen({ host, port }, () => {
        tcp.off('error', reject);
        const a = tcp.address();
        resolve(typeof a === 'object' && a ? a.port : port);
      });
    });
    tcp.on('error', (err) => this.opts.log.warn('gRPC listener error', { err }));
    this.health.setStatus('', 'SERVING');
    for (const s of this.services) this.health.setStatus(s, 'SERVING');
    return this.boundPort;
  }

  /** Open client connections (for tests and metrics). */
  get connections(): number {
    return this.sockets.size;
  }

  private accept(socket: Socket, injector: { injectConnection(c: Socket): void }): void {
    const addr = socket.remoteAddress ?? 'unknown';
    const fromAddr = this.perAddress.get(addr) ?? 0;
    if (this.shuttingDown || this.sockets.size >= this.limits.maxConnections || fromAddr >= this.limits.maxConnectionsPerAddress) {
      if (!this.shuttingDown) this.opts.log.warn('connection refused: connection limit', { peer: addr, open: this.sockets.size, fromAddress: fromAddr });
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    this.perAddress.set(addr, fromAddr + 1);
    socket.once('close', () => {
      this.sockets.delete(socket);
      const n = (this.perAddress.get(addr) ?? 1) - 1;
      if (n <= 0) this.perAddress.delete(addr);
      else this.perAddress.set(addr, n);
    });
    socket.on('error', () => undefined); // reset by the peer: the close above still counts it
    injector.injectConnection(socket);
  }

  /** The bound port (after start). */
  get port(): number {
    if (this.boundPort === undefined) throw new Error('server not started');
    return this.boundPort;
  }

  /** Stops accepting calls, aborts running handlers (their streams end), waits up to graceMs. */
  async stop(graceMs = 2000): Promise<void> {
    this.shuttingDown = true;
    this.health.setStatus('', 'NOT_SERVING');
    for (const s of this.services) this.health.setStatus(s, 'NOT_SERVING');
    for (const ac of this.inflight) ac.abort(new CancelledError('server shutting down'));
    const tcp = this.tcp;
    const listenerClosed = tcp ? new Promise<void>((resolve) => tcp.close(() => resolve())) : Promise.resolve();
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    });
    this.injector?.destroy();
    for (const s of this.sockets) s.destroy();
    await listenerClosed;
  }
}
