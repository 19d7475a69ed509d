/**
 * Node side of the node registry: registers this node daemon with the coordinator and then
 * heartbeats (host info and VMs) at the interval the coordinator asks for. Unreachable
 * coordinator → retries with jittered exponential backoff (0.25 s … 1 s), forever. The cap is
 * short on purpose: a node must heartbeat again within 2 s of its coordinator's return, or plans
 * submitted right then are refused with SOURCE_DOWN (a 10 s cap plus gRPC's own channel backoff
 * once took 16 s); one TLS connection attempt a second to a down coordinator costs nothing. Each
 * call also waits for the channel (waitForReady), so it goes out as soon as a reconnect attempt
 * succeeds rather than at the next retry. A heartbeat
 * the coordinator does not recognise (NOT_FOUND: it lost its database, or never saw us) → register
 * again. Never throws into the daemon: the node works without a coordinator.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { MigdError } from '../shared/errors.js';
import { retry } from '../shared/retry.js';
import type { HostInfo, VmInfo } from '../shared/gen/migd/v1/common.js';
import { CoordinatorServiceService } from '../shared/gen/migd/v1/coordinator.js';
import type { Logger } from '../shared/log.js';
import type { RpcClient } from '../shared/rpc/client.js';
import { createLeaderClient, splitAddresses } from '../shared/rpc/leader-client.js';
import type { TransportSecurity } from '../shared/rpc/tls.js';

export interface RegistrationOptions {
  /** Coordinator address (host:port); replicated coordinators: several, comma-separated (calls go to the leader). */
  readonly coordinator: string;
  /** Transport security (this node's identity; the coordinator verified as `migd-coordinator`). */
  readonly security: TransportSecurity;
  /** Heartbeat period until the coordinator says otherwise (ms). */
  readonly heartbeatMs: number;
  readonly hostInfo: () => Promise<HostInfo>;
  readonly vms: () => Promise<VmInfo[]>;
  readonly log: Logger;
  /** Deadline of each call (ms). Default 5000. */
  readonly deadlineMs?: number;
  /** First retry delay after a failure (ms); doubles up to `retryMaxMs`. Default 250. */
  readonly retryInitialMs?: number;
  /** Longest retry delay (ms), jitter included; also caps the gRPC channel's reconnect backoff. Default 1000. */
  readonly retryMaxMs?: number;
  /** A client of the coordinator (tests inject fakes). Default: a gRPC client. */
  readonly client?: Pick<RpcClient<typeof CoordinatorServiceService>, 'registerNode' | 'heartbeat' | 'close'>;
}

/** A running registration loop. */
export interface Registration {
  /** Resolves once the coordinator has accepted a registration (for tests and logs). */
  readonly registered: Promise<void>;
  /** Stops heartbeating and closes the connection. */
  stop(): Promise<void>;
}

/** Starts registering and heartbeating in the background. */
export function startRegistration(o: RegistrationOptions): Registration {
  const stopper = new AbortController();
  const signal = stopper.signal;
  const retryMax = o.retryMaxMs ?? 1000;
  const client =
    o.client ??
    createLeaderClient('migd.v1.CoordinatorService', CoordinatorServiceService, splitAddresses(o.coordinator), {
      security: { ...o.security, serverName: 'migd-coordinator' },
      maxReconnectBackoffMs: Math.max(100, Math.floor(retryMax / 2)),
      onMove: (from, to, why) => o.log.info('following the coordinator leader', { from, to, why }),
    });
  const deadlineMs = o.deadlineMs ?? 5000;
  let markRegistered!: () => void;
  const registered = new Promise<void>((resolve) => (markRegistered = resolve));
  // Jittered ±25 % around a doubling delay whose top, jitter included, is retryMax.
  const retryOptions = {
    signal,
    initialMs: Math.min(o.retryInitialMs ?? 250, retryMax) * 0.75,
    maxMs: retryMax / 1.25,
    jitter: 0.25,
    retryable: () => true,
  };
  let loggedDown = false;
  const trouble = (what: string, err: unknown, waitMs: number): void => {
    // One warning per outage, then quiet until it works again.
    if (!loggedDown) o.log.warn(`coordinator ${what} failed; retrying`, { coordinator: o.coordinator, err: (err as Error).message, waitMs });
    else o.log.debug(`coordinator ${what} failed; retrying`, { err: (err as Error).message, waitMs });
    loggedDown = true;
  };

  let interval = o.heartbeatMs;
  let needRegister = true;
  const beat = async (): Promise<void> => {
    if (needRegister) {
      const res = await client.registerNode({ host: await o.hostInfo() }, { deadlineMs, signal, waitForReady: true });
      interval = res.heartbeatIntervalMs || o.heartbeatMs;
      needRegister = false;
      o.log.info('registered with the coordinator', { coordinator: o.coordinator, nodeId: res.nodeId, heartbeatMs: interval });
      markRegistered();
    } else {
      const [host, vms] = await Promise.all([o.hostInfo(), o.vms()]);
      await client.heartbeat({ host, vms }, { deadlineMs, signal, waitForReady: true });
    }
  };
  const beatOrRegister = async (): Promise<void> => {
    try {
      await beat();
    } catch (err) {
      // The coordinator does not know this node (it forgot it): register again at once.
      if (!(err instanceof MigdError && err.code === 'NOT_FOUND') || needRegister) throw err;
      needRegister = true;
      await beat();
    }
  };

  const loop = async (): Promise<void> => {
    while (!signal.aborted) {
      try {
        await retry(beatOrRegister, { ...retryOptions, onRetry: (err, _attempt, waitMs) => trouble(needRegister ? 'registration' : 'heartbeat', err, waitMs) });
        if (loggedDown) o.log.info('coordinator reachable again', { coordinator: o.coordinator });
        loggedDown = false;
        await sleep(interval, undefined, { signal });
      } catch (err) {
        if (signal.aborted) return;
        throw err;
      }
    }
  };
  const running = loop().catch((err: unknown) => {
    if (!signal.aborted) o.log.error('registration loop stopped', { err });
  });
  return {
    registered,
    async stop() {
      stopper.abort();
      await running;
      client.close();
    },
  };
}
