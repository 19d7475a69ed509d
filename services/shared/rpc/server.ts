/**
 * One way to run a gRPC server in migd. Handlers are plain async functions
 * `(request, ctx) => response` (server-streaming ones return an AsyncIterable); this adapter turns
 * them into grpc-js callbacks, maps errors through toStatus(), propagates cancellation as an
 * AbortSignal, and adds grpc.health.v1 health checking and server reflection to every server.
 */
import { join } from 'node:path';
import { Server, type Metadata, type ServerUnaryCall, type ServerWritableStream, type sendUnaryData, type ServiceDefinition, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import { CancelledError, UnavailableError } from '../errors.js';
import type { Logger } from '../log.js';
import { protoDir } from '../paths.js';
import { serverCredentials, type TransportSecurity } from './tls.js';
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
}

const allProtos = ['migd/v1/common.proto', 'migd/v1/node.proto', 'migd/v1/coordinator.proto', 'migd/v1/events.proto'];

function identityOf(call: { getAuthContext(): { sslPeerCertificate?: { subject?: { CN?: string | string[] } } } }): string | undefined {
  const cn = call.getAuthContext().sslPeerCertificate?.subject?.CN;
  return Array.isArray(cn) ? cn[0] : cn;
}

export class RpcServer {
  readonly health = new HealthImplementation({ '': 'NOT_SERVING' });
  private readonly server = new Server({ 'grpc.max_receive_message_length': 16 * 1024 * 1024 });
  private readonly services: string[] = [];
  private readonly inflight = new Set<AbortController>();
  private boundPort: number | undefined;
  private shuttingDown = false;

  constructor(private readonly opts: RpcServerOptions) {
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
    return { signal: ac.signal, deadline, metadata: call.metadata, peer: call.getPeer(), identity: identityOf(call), method };
  }

  private unaryAdapter(method: string, handler: (req: unknown, ctx: CallContext) => Promise<unknown>) {
    return (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>): void => {
      const ac = new AbortController();
      this.inflight.add(ac);
      const ctx = this.context(call, method, ac);
      const run = async (): Promise<unknown> => {
        this.opts.authorize?.(ctx);
        return handler(call.request, ctx);
      };
      run().then(
        (res) => {
          this.inflight.delete(ac);
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
      const run = async (): Promise<void> => {
        this.opts.authorize?.(ctx);
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
          this.inflight.delete(ac);
          if (this.shuttingDown) call.emit('error', toStatus(new UnavailableError('server shutting down'), this.opts.log, method));
          else if (!ac.signal.aborted) call.end();
        },
        (err: unknown) => {
          this.inflight.delete(ac);
          if (this.shuttingDown) call.emit('error', toStatus(new UnavailableError('server shutting down'), this.opts.log, method));
          else if (!ac.signal.aborted) call.emit('error', toStatus(err, this.opts.log, method));
        },
      );
    };
  }

  /** Binds and starts serving; returns the bound port. Health turns SERVING. */
  async start(): Promise<number> {
    const creds = serverCredentials(this.opts.security, this.opts.address);
    this.boundPort = await new Promise<number>((resolve, reject) => {
      this.server.bindAsync(this.opts.address, creds, (err, port) => (err ? reject(err) : resolve(port)));
    });
    this.health.setStatus('', 'SERVING');
    for (const s of this.services) this.health.setStatus(s, 'SERVING');
    return this.boundPort;
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
  }
}
