/**
 * The coordinator: wires the history store (schema migrated at start-up), the in-process event
 * bus, NATS with the outbox relay (optional, reconnecting: the coordinator starts and works while
 * NATS is down, events wait in the outbox), the node registry, the run manager (queue,
 * dispatcher, supervisors, restart recovery), the planner, the gRPC server (CoordinatorService with
 * role-based authorization, health, reflection) and Prometheus metrics. Replicated (Postgres), a
 * follower's Watch streams are fed from NATS, the leader's from the outbox (event-bus.ts).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, type NatsConnection } from 'nats';
import { natsConnectOptions, redactNatsUrl, type NatsClientAuth } from '../shared/events/nats-security.js';
import { startOutboxRelay, type OutboxRelay } from '../shared/events/relay.js';
import { CoordinatorServiceService } from '../shared/gen/migd/v1/coordinator.js';
import type { Logger } from '../shared/log.js';
import { createMetrics, outboxLagObserver, type MigdMetrics } from '../shared/metrics/metrics.js';
import { startMetricsServer, type MetricsServer } from '../shared/metrics/server.js';
import { turns } from '../shared/metrics/turns.js';
import { RpcServer } from '../shared/rpc/server.js';
import { retry } from '../shared/retry.js';
import { splitHostPort } from '../shared/rpc/tls.js';
import { redactDb, type CoordinatorConfig } from './config.js';
import { EventBus } from './event-bus.js';
import { Planner } from './planner.js';
import { NodeRegistry } from './registry.js';
import { createAuthorizer } from './roles.js';
import { coordinatorHandlers, type CoordinatorParts } from './rpc/handlers.js';
import { RunManager } from './runs/manager.js';
import type { RepositoryHistoryStore } from './store/history-store.js';
import { openPostgresHistoryStore } from './store/postgres.js';
import { schedulePruning, type PruneSchedule } from './store/retention.js';
import { openSqliteHistoryStore } from './store/sqlite.js';
import { Leadership, type LeadershipState } from './leadership/leadership.js';
import { PostgresElection } from './leadership/postgres.js';
import { NotLeaderError } from '../shared/errors.js';
import { VmState } from '../shared/gen/migd/v1/common.js';

/** Knobs for tests; production uses the defaults. */
export interface CoordinatorTuning {
  /** Policy clock tick of run supervisors (ms). Default 1000. */
  readonly tickMs?: number;
  /** Replicated: period of lock attempts and leadership proofs (ms). Default 500. */
  readonly leaderIntervalMs?: number;
}

/** What only the leader runs: node liveness, the queue and supervisors, planning, publishing, pruning. */
interface LeaderParts {
  readonly registry: NodeRegistry;
  readonly runs: RunManager;
  readonly planner: Planner;
  readonly pruning: PruneSchedule;
  readonly term: number | undefined;
}

export class Coordinator {
  private server: RpcServer | undefined;
  private metricsServer: MetricsServer | undefined;
  private nc: NatsConnection | undefined;
  private relay: OutboxRelay | undefined;
  private natsLoop: Promise<void> | undefined;
  private readonly stopper = new AbortController();
  private stopping: Promise<void> | undefined;
  /** Set while this coordinator leads (always, with SQLite), after its runs are recovered. */
  private parts: LeaderParts | undefined;
  /** Leadership changes are taken up one after the other. */
  private transitions: Promise<void> = Promise.resolve();
  /** From the start of lead() until the step-down: Watch streams read the outbox, not NATS. */
  private leading = false;

  private constructor(
    readonly config: CoordinatorConfig,
    readonly store: RepositoryHistoryStore,
    readonly bus: EventBus,
    readonly metrics: MigdMetrics,
    /** Replicated coordinators (Postgres): the election; undefined with SQLite (always the leader). */
    readonly leadership: Leadership | undefined,
    private readonly log: Logger,
    private readonly tuning: CoordinatorTuning,
  ) {}

  /** The leader's part, or NotLeaderError naming the leader. */
  private leaderPart<K extends 'registry' | 'runs' | 'planner'>(k: K): LeaderParts[K] {
    const p = this.parts;
    if (!p) throw this.leadership?.notLeader() ?? new NotLeaderError('');
    return p[k];
  }

  /** The node registry (leader only). @throws NotLeaderError */
  get registry(): NodeRegistry {
    return this.leaderPart('registry');
  }

  /** The run manager (leader only). @throws NotLeaderError */
  get runs(): RunManager {
    return this.leaderPart('runs');
  }

  /** The planner (leader only). @throws NotLeaderError */
  get planner(): Planner {
    return this.leaderPart('planner');
  }

  /** Whether this coordinator leads and has taken up its duties (runs recovered). */
  get isLeader(): boolean {
    return this.parts !== undefined;
  }

  /**
   * Opens the store, starts serving. With SQLite it leads at once (recovers runs before serving);
   * with Postgres it serves reads as a follower and campaigns, taking up the leader's duties when
   * elected.
   * @throws ConfigError, DependencyError (TLS files), MigdError(INTERNAL) when the schema cannot
   *   be migrated, the listen error
   */
  static async start(config: CoordinatorConfig, log: Logger, tuning: CoordinatorTuning = {}): Promise<Coordinator> {
    // The metrics read the store and the queue at scrape time; both exist before any scrape.
    const late: { store?: RepositoryHistoryStore; c?: Coordinator } = {};
    const metrics = createMetrics({
      sources: {
        runsByState: () => late.store!.plans.countRunsByState(),
        queueDepth: () => (late.c?.isLeader ? late.c.runs.depth() : 0),
        outboxLag: () => late.store!.outbox.outboxLag(),
      },
    });
    const storeLog = log.child({ component: 'store' });
    let leadership: Leadership | undefined;
    let store: RepositoryHistoryStore;
    if (config.store.kind === 'postgres') {
      const election = new PostgresElection({ url: config.store.url });
      leadership = new Leadership({ backend: election, me: config.advertise, log: log.child({ component: 'leadership' }), ...(tuning.leaderIntervalMs ? { intervalMs: tuning.leaderIntervalMs } : {}) });
      // Every write carries this coordinator's term; a deposed leader's writes are refused.
      store = await openPostgresHistoryStore({ url: config.store.url, logger: storeLog, metrics, fence: leadership, pipelineWrites: config.store.pipelineWrites });
    } else {
      store = await openSqliteHistoryStore({ filename: config.store.filename, logger: storeLog, metrics });
    }
    late.store = store;
    const bus = new EventBus(store.outbox, log.child({ component: 'events' }));
    // Replicated: the leader's events reach every coordinator's Watch through the shared outbox.
    await bus.start(leadership ? { pollMs: 200 } : {});
    const c = new Coordinator(config, store, bus, metrics, leadership, log, tuning);
    late.c = c;
    try {
      if (leadership) {
        leadership.onChange((s) => c.onLeadership(s));
      } else {
        // The queue is rebuilt before serving so the first SubmitPlan sees the real slot usage;
        // the supervisors re-attach to their nodes in the background.
        await c.lead(undefined);
      }
      if (config.nats) c.natsLoop = c.connectNats(config.nats, config.natsAuth);
      c.server = new RpcServer({ address: config.listen, security: config.security, log, authorize: createAuthorizer(config.roles, log, { anonymousAllowed: config.insecure }) });
      const parts: CoordinatorParts = {
        store,
        bus,
        requireNodeIdentity: config.requireNodeIdentity,
        log,
        get registry() {
          return c.registry;
        },
        get planner() {
          return c.planner;
        },
        get runs() {
          return c.runs;
        },
        ...(leadership
          ? {
              followerReads: {
                isLeader: () => c.isLeader,
                nodes: () => store.nodes.listNodes(),
                vms: async (nodeId?: string) => (await store.nodes.listVms(nodeId)).filter((v) => v.state !== VmState.VM_STATE_STOPPED),
              },
            }
          : {}),
      };
      c.server.addService('migd.v1.CoordinatorService', CoordinatorServiceService, coordinatorHandlers(parts));
      await c.server.start();
      if (config.metricsListen) {
        // Where the event loop goes, served with the metrics (cheap, and off without them).
        turns.enable();
        turns.register(metrics.registry);
        const { host, port } = splitHostPort(config.metricsListen);
        c.metricsServer = await startMetricsServer({ registry: metrics.registry, host, port, logger: log, debug: { '/debug/turns': () => turns.report() } });
      }
      leadership?.start();
    } catch (err) {
      await c.stop();
      throw err;
    }
    if (!config.requireNodeIdentity && !config.insecure) {
      log.warn('--allow-shared-node-identity: a node holding the shared "migd-node" certificate may speak for any node; give each node its own certificate (migd-node.<node id>) and drop the flag');
    }
    log.info('coordinator serving', { listen: config.listen, port: c.port, db: redactDb(config.db), replicated: leadership !== undefined, nats: config.nats ? redactNatsUrl(config.nats) : null, limits: config.limits });
    return c;
  }

  private onLeadership(s: LeadershipState): void {
    this.transitions = this.transitions
      .then(async () => {
        if (this.stopper.signal.aborted) return;
        if (s.role === 'leader' && this.leadership?.current.term === s.term) {
          if (this.parts?.term === s.term) return;
          if (this.parts) await this.stepDown();
          try {
            await this.lead(s.term);
          } catch (err) {
            this.log.error('could not take up the leader\'s duties; resigning', { term: s.term, err });
            await this.stepDown();
            await this.leadership?.resign();
          }
        } else if (s.role === 'follower' && this.parts) {
          await this.stepDown();
        }
      })
      .catch((err: unknown) => this.log.error('leadership change failed', { err }));
  }

  /** Takes up the leader's duties: registry, queue and supervisors recovered from the store, planner, relay, pruning. */
  private async lead(term: number | undefined): Promise<void> {
    const { config, store, log } = this;
    const t0 = Date.now();
    // The leader's Watch streams read the outbox it writes (a follower's read NATS).
    this.leading = true;
    await this.bus.followOutbox();
    const registry = new NodeRegistry({
      store,
      log: log.child({ component: 'registry' }),
      heartbeatMs: config.heartbeatMs,
      misses: config.heartbeatMisses,
      security: config.nodeClientSecurity,
      acceptSharedNodeCertificate: !config.requireNodeIdentity,
      callDeadlineMs: config.nodeCallDeadlineMs,
    });
    await registry.start();
    const runs = new RunManager({ store, registry, log: log.child({ component: 'runs' }), limits: config.limits, heldPerLink: config.heldPerLink, callDeadlineMs: config.nodeCallDeadlineMs, nodeDownWaitMs: config.nodeDownWaitMs, ...(this.tuning.tickMs ? { tickMs: this.tuning.tickMs } : {}) });
    registry.useRunMoves((vm, node) => runs.isMovingTo(vm, node));
    const planner = new Planner({ store, registry, runs, limits: config.limits, log: log.child({ component: 'planner' }), createVmDeadlineMs: config.nodeCallDeadlineMs * 6 });
    try {
      await runs.recover();
    } catch (err) {
      await runs.close();
      registry.stop();
      throw err;
    }
    const pruning = schedulePruning(store.retention, { everyMs: config.pruneEveryMs, logger: log.child({ component: 'retention' }) });
    this.parts = { registry, runs, planner, pruning, term };
    if (this.nc && !this.relay) this.startRelay(this.nc);
    if (term !== undefined) log.info('leading: runs recovered from the store', { term, tookMs: Date.now() - t0 });
  }

  /** Gives the leader's duties up: running migrations keep running on their nodes, for the next leader. */
  private async stepDown(): Promise<void> {
    const p = this.parts;
    this.parts = undefined;
    const wasLeading = this.leading;
    this.leading = false;
    if (!p) {
      if (wasLeading && this.nc && !this.stopper.signal.aborted) this.bus.followNats(this.nc);
      return;
    }
    this.log.warn('no longer leading: detaching from runs', { term: p.term });
    await p.pruning.stop();
    const relay = this.relay;
    this.relay = undefined;
    await relay?.stop().catch((err: unknown) => this.log.warn('stopping the outbox relay', { err }));
    await p.runs.close();
    p.registry.stop();
    if (this.nc && !this.stopper.signal.aborted) this.bus.followNats(this.nc);
  }

  private startRelay(nc: NatsConnection): void {
    this.relay = startOutboxRelay({ source: this.store.outbox, nc, stream: { replicas: this.config.natsStreamReplicas }, onLag: outboxLagObserver(this.metrics), logger: this.log.child({ component: 'nats' }) });
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
      // noAsyncTraces: the client otherwise builds two Errors with stack traces for every request
      // (each JetStream publish of the relay), in case it times out: ~3% of the coordinator's CPU
      // in a drain (issue 15 §4). Its errors keep their messages and codes.
      nc = await retry(() => connect({ ...natsConnectOptions(servers.split(','), auth), name: 'migd-coordinator', maxReconnectAttempts: -1, reconnectTimeWait: 1000, timeout: 3000, noAsyncTraces: true }), {
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
    // Only the leader publishes the outbox (it marks rows published: a write); a follower's Watch
    // streams take the leader's events from NATS.
    if (this.parts) this.startRelay(nc);
    else if (this.leadership && !this.leading) this.bus.followNats(nc);
    log.info('connected to NATS', { server: redactNatsUrl(nc.getServer()), publishing: this.parts !== undefined });
  }

  /** Stops serving and detaches from running migrations (they keep running on their nodes). */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    this.stopper.abort();
    await this.server?.stop(1000).catch((err: unknown) => this.log.warn('stopping the gRPC server', { err }));
    await this.transitions;
    await this.stepDown();
    // Releasing the lock hands over at once instead of after the session times out.
    await this.leadership?.stop();
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
