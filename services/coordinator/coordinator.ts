/**
 * The coordinator: wires the history store (schema migrated at start-up), the in-process event
 * bus, NATS with the outbox relay (optional, reconnecting: the coordinator starts and works while
 * NATS is down, events wait in the outbox), the node registry, the run manager (queue,
 * dispatcher, supervisors, restart recovery), the planner, the gRPC server (CoordinatorService with
 * role-based authorization, health, reflection) and Prometheus metrics.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, type NatsConnection } from 'nats';
import { natsConnectOptions, redactNatsUrl, type NatsClientAuth } from '../shared/events/nats-security.js';
import { startOutboxRelay, type OutboxRelay } from '../shared/events/relay.js';
import { CoordinatorServiceService } from '../shared/gen/migd/v1/coordinator.js';
import type { Logger } from '../shared/log.js';
import { createMetrics, outboxLagObserver, type MigdMetrics } from '../shared/metrics/metrics.js';
import { startMetricsServer, type MetricsServer } from '../shared/metrics/server.js';
import { RpcServer } from '../shared/rpc/server.js';
import { retry } from '../shared/retry.js';
import { splitHostPort } from '../shared/rpc/tls.js';
import type { CoordinatorConfig } from './config.js';
import { EventBus } from './event-bus.js';
import { Planner } from './planner.js';
import { NodeRegistry } from './registry.js';
import { createAuthorizer } from './roles.js';
import { coordinatorHandlers } from './rpc/handlers.js';
import { RunManager } from './runs/manager.js';
import { openSqliteHistoryStore, type SqliteHistoryStore } from './store/sqlite.js';

/** Knobs for tests; production uses the defaults. */
export interface CoordinatorTuning {
  /** Policy clock tick of run supervisors (ms). Default 1000. */
  readonly tickMs?: number;
}

export class Coordinator {
  private server: RpcServer | undefined;
  private metricsServer: MetricsServer | undefined;
  private nc: NatsConnection | undefined;
  private relay: OutboxRelay | undefined;
  private natsLoop: Promise<void> | undefined;
  private readonly stopper = new AbortController();
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly config: CoordinatorConfig,
    readonly store: SqliteHistoryStore,
    readonly bus: EventBus,
    readonly registry: NodeRegistry,
    readonly runs: RunManager,
    readonly planner: Planner,
    readonly metrics: MigdMetrics,
    private readonly log: Logger,
  ) {}

  /**
   * Opens the store, recovers runs, starts serving.
   * @throws ConfigError, DependencyError (TLS files), MigdError(INTERNAL) when the schema cannot
   *   be migrated, the listen error
   */
  static async start(config: CoordinatorConfig, log: Logger, tuning: CoordinatorTuning = {}): Promise<Coordinator> {
    // The metrics read the store and the queue at scrape time; both exist before any scrape.
    const late: { store?: SqliteHistoryStore; runs?: RunManager } = {};
    const metrics = createMetrics({
      sources: {
        runsByState: () => late.store!.plans.countRunsByState(),
        queueDepth: () => late.runs?.depth() ?? 0,
        outboxLag: () => late.store!.outbox.outboxLag(),
      },
    });
    const store = await openSqliteHistoryStore({ filename: config.db, logger: log.child({ component: 'store' }), metrics });
    const bus = new EventBus(store.outbox, log.child({ component: 'events' }));
    await bus.start();
    const registry = new NodeRegistry({
      store,
      log: log.child({ component: 'registry' }),
      heartbeatMs: config.heartbeatMs,
      misses: config.heartbeatMisses,
      security: config.nodeClientSecurity,
      callDeadlineMs: config.nodeCallDeadlineMs,
    });
    await registry.start();
    const runs = new RunManager({ store, registry, log: log.child({ component: 'runs' }), limits: config.limits, callDeadlineMs: config.nodeCallDeadlineMs, nodeDownWaitMs: config.nodeDownWaitMs, ...(tuning.tickMs ? { tickMs: tuning.tickMs } : {}) });
    late.store = store;
    late.runs = runs;
    const planner = new Planner({ store, registry, runs, limits: config.limits, log: log.child({ component: 'planner' }), createVmDeadlineMs: config.nodeCallDeadlineMs * 6 });
    const c = new Coordinator(config, store, bus, registry, runs, planner, metrics, log);
    try {
      // The queue is rebuilt before serving so the first SubmitPlan sees the real slot usage;
      // the supervisors re-attach to their nodes in the background.
      await runs.recover();
      if (config.nats) c.natsLoop = c.connectNats(config.nats, config.natsAuth);
      c.server = new RpcServer({ address: config.listen, security: config.security, log, authorize: createAuthorizer(config.roles, log, { anonymousAllowed: config.insecure }) });
      c.server.addService('migd.v1.CoordinatorService', CoordinatorServiceService, coordinatorHandlers({ store, registry, planner, runs, bus, requireNodeIdentity: config.requireNodeIdentity, log }));
      await c.server.start();
      if (config.metricsListen) {
        const { host, port } = splitHostPort(config.metricsListen);
        c.metricsServer = await startMetricsServer({ registry: metrics.registry, host, port, logger: log });
      }
    } catch (err) {
      await c.stop();
      throw err;
    }
    if (!config.requireNodeIdentity && !config.insecure) {
      log.warn('--allow-shared-node-identity: a node holding the shared "migd-node" certificate may speak for any node; give each node its own certificate (migd-node.<node id>) and drop the flag');
    }
    log.info('coordinator serving', { listen: config.listen, port: c.port, db: config.db, nats: config.nats ? redactNatsUrl(config.nats) : null, limits: config.limits });
    return c;
  }

  /** The bound gRPC port. */
  get port(): number {
    return this.server?.port ?? 0;
  }

  /** The bound metrics port (0 when off). */
  get metricsPort(): number {
    return this.metricsServer?.port ?? 0;
  }

  /** Whether the outbox relay is connected to NATS. */
  get natsConnected(): boolean {
    return this.nc !== undefined && !this.nc.isClosed();
  }

  /**
   * Connects to NATS, retrying with backoff until it succeeds or the coordinator stops; once
   * connected the client reconnects by itself forever and the relay publishes the outbox.
   */
  private async connectNats(servers: string, auth: NatsClientAuth): Promise<void> {
    const log = this.log.child({ component: 'nats' });
    const signal = this.stopper.signal;
    let nc: NatsConnection;
    try {
      nc = await retry(() => connect({ ...natsConnectOptions(servers.split(','), auth), name: 'migd-coordinator', maxReconnectAttempts: -1, reconnectTimeWait: 1000, timeout: 3000 }), {
        initialMs: 500,
        maxMs: 10_000,
        signal,
        retryable: () => true,
        // Warn once per outage; the outbox keeps every event meanwhile.
        onRetry: (err, attempt, retryInMs) => (attempt === 1 ? log.warn : log.debug)('NATS not reachable; events wait in the outbox', { err: (err as Error).message, retryInMs }),
      });
    } catch (err) {
      if (signal.aborted) return;
      throw err;
    }
    if (signal.aborted) {
      await nc.close();
      return;
    }
    this.nc = nc;
    this.relay = startOutboxRelay({ source: this.store.outbox, nc, onLag: outboxLagObserver(this.metrics), logger: log });
    log.info('connected to NATS; publishing the outbox', { server: redactNatsUrl(nc.getServer()) });
  }

  /** Stops serving and detaches from running migrations (they keep running on their nodes). */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    this.stopper.abort();
    await this.server?.stop(1000).catch((err: unknown) => this.log.warn('stopping the gRPC server', { err }));
    await this.runs.close();
    this.registry.stop();
    await this.natsLoop;
    await this.relay?.stop().catch((err: unknown) => this.log.warn('stopping the outbox relay', { err }));
    if (this.nc && !this.nc.isClosed()) {
      await Promise.race([this.nc.drain(), sleep(2000)]).catch(() => undefined);
      if (!this.nc.isClosed()) await this.nc.close().catch(() => undefined);
    }
    await this.bus.stop();
    await this.store.close();
    await this.metricsServer?.close();
    this.log.info('coordinator stopped');
  }
}
