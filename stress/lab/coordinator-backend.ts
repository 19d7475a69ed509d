/**
 * The lab's backend through the coordinator's public API (CoordinatorService, operator role):
 * CreateVm on the chosen node, the baseline from ListVms' latest guest samples, SubmitPlan (one
 * MigrateVm, the scenario's policy and label), Watch of the run to its RunCompleted event (with a
 * live progress line), CancelRun at the lab's time limit, GetRunTimeline for the report. The
 * coordinator's policy engine runs the migration and its history store keeps everything.
 *
 * CoordinatorService has no DestroyVm, so VMs are destroyed on their node daemon (found through
 * ListVms and ListNodes) with the same operator certificate.
 */
import { MigdError } from '../../services/shared/errors.js';
import { MigrationState, type GuestPerfSample, type NetworkBlackout, type VmSpec } from '../../services/shared/gen/migd/v1/common.js';
import { CoordinatorServiceService, NodeStatus, type GetRunTimelineResponse } from '../../services/shared/gen/migd/v1/coordinator.js';
import { NodeServiceService } from '../../services/shared/gen/migd/v1/node.js';
import { identityFiles, nodeIdentity } from '../../services/shared/pki.js';
import { createClient, type RpcClient } from '../../services/shared/rpc/client.js';
import { type LabBackend, type MigrateRequest, type MigrateResult, outcomeOf, sleep, stateName } from './backend.js';
import { actionLabel } from './metrics.js';
import { isTerminalState } from '../../services/shared/policy/states.js';

export type CoordinatorClient = RpcClient<typeof CoordinatorServiceService>;

export interface CoordinatorBackendOptions {
  /** host:port of the coordinator. */
  readonly address: string;
  /** Folder with ca.crt and the identity's certificate and key. */
  readonly certDir: string;
  /** Client identity (default `operator`). */
  readonly identity?: string;
  /**
   * Identity for the node daemons (VMs are destroyed there): node daemons answer only the
   * coordinator's identity (issue 17), so an `operator` gets PERMISSION_DENIED and the lab's VMs
   * stayed behind. The lab's own cluster passes `migd-coordinator`. Default: `identity`.
   */
  readonly nodeIdentity?: string;
}


export class CoordinatorBackend implements LabBackend {
  readonly mode = 'coordinator' as const;
  readonly client: CoordinatorClient;
  private readonly nodeClients = new Map<string, RpcClient<typeof NodeServiceService>>();

  constructor(private readonly o: CoordinatorBackendOptions) {
    this.client = createClient('migd.v1.CoordinatorService', CoordinatorServiceService, o.address, {
      security: { tls: identityFiles(o.certDir, o.identity ?? 'operator'), serverName: 'migd-coordinator' },
    });
  }

  async nodeIds(): Promise<string[]> {
    const r = await this.client.listNodes({});
    return r.nodes.map((n) => n.host?.nodeId ?? '').filter((id) => id !== '');
  }

  /** Waits until `n` nodes are registered and up. @throws Error after `timeoutMs` */
  async waitForNodes(n: number, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let seen = 0;
    while (Date.now() < deadline) {
      const r = await this.client.listNodes({}).catch(() => undefined);
      seen = r?.nodes.filter((x) => x.status === NodeStatus.NODE_STATUS_UP).length ?? 0;
      if (seen >= n) return;
      await sleep(300);
    }
    throw new Error(`only ${seen} of ${n} nodes registered with the coordinator within ${timeoutMs} ms`);
  }

  async createVm(spec: VmSpec, nodeId: string): Promise<void> {
    await this.client.createVm({ spec, nodeId }, { deadlineMs: 120_000 });
  }

  async waitGuest(vmName: string, opts: { minSamples: number; minMs: number; timeoutMs: number; idle?: boolean; signal?: AbortSignal }): Promise<void> {
    const deadline = Date.now() + opts.timeoutMs;
    const seen = new Set<number>();
    let first: number | undefined;
    let running: number | undefined;
    for (;;) {
      const r = await this.client.listVms({ nodeId: '' }).catch(() => undefined);
      const vm = r?.vms.find((v) => v.spec?.name === vmName);
      const g: GuestPerfSample | undefined = vm?.lastGuestPerf;
      // Only samples with a pace make a baseline: a guest still booting (a loaded host can take
      // longer than the baseline window) has none yet, and a migration started then has nothing
      // to compare the guest's pace with.
      // An idle guest counts once it has written its memory and verified it once (pages verified):
      // before that it is still filling its region, and a migration started then meets a burst
      // writer over mostly zero pages (policies-720-v4, first idle runs: 50 MiB of a 1 GiB guest
      // sent in pass 1, then 120 MiB/s dirtied), not a large, mostly idle guest.
      const filled = !opts.idle || (g?.pagesVerified ?? 0) > 0;
      if (g && g.guestMonoMs > 0 && (g.msPerGib > 0 || opts.idle) && filled) {
        seen.add(Number(g.guestMonoMs));
        first ??= Date.now();
      }
      // Heartbeats carry only the latest sample, and an idle guest reports none after its first
      // pass: an idle VM running long enough counts too (the history store has what samples there are).
      if (vm?.state === 2 && opts.idle && filled) running ??= Date.now();
      const since = first ?? running;
      const now = Date.now();
      if (since !== undefined && now - since >= opts.minMs && (seen.size >= Math.min(opts.minSamples, 2) || (running !== undefined && now - running >= opts.minMs + 5000))) return;
      if (Date.now() > deadline) throw new Error(`guest ${vmName} did not report within ${opts.timeoutMs} ms`);
      await sleep(500, opts.signal);
    }
  }

  async migrate(req: MigrateRequest): Promise<MigrateResult> {
    const { plan } = await this.client.submitPlan(
      {
        idempotencyKey: req.key,
        target: { $case: 'migrate', value: { vmName: req.vmName, destinationNodeId: req.destinationNodeId } },
        policy: req.policy,
        priority: 0,
        antiAffinityVmNames: [],
        label: req.label,
      },
      { deadlineMs: 60_000 },
    );
    const runId = plan?.migrations[0]?.runId;
    if (!runId) throw new Error(`plan ${plan?.id ?? '?'} has no run`);
    let timedOut = false;
    const limit = setTimeout(() => {
      timedOut = true;
      req.onEvent?.(`lab time limit of ${req.timeLimitMs / 1000} s reached: cancelling`);
      void this.client.cancelRun({ runId, reason: `lab time limit ${req.timeLimitMs / 1000} s` }).catch(() => undefined);
    }, req.timeLimitMs);
    const ac = new AbortController();
    const onAbort = (): void => ac.abort();
    req.signal?.addEventListener('abort', onAbort, { once: true });
    let final: MigrationState | undefined;
    let guest: GuestPerfSample | undefined;
    try {
      try {
        for await (const { event } of this.client.watch({ scope: { $case: 'runId', value: runId }, statesOnly: false }, { signal: ac.signal })) {
          const p = event?.payload;
          if (!p) continue;
          if (p.$case === 'runProgress' && p.value.sample) req.onProgress?.(p.value.sample, guest);
          else if (p.$case === 'runGuest' && p.value.sample?.worker === -1) guest = p.value.sample;
          else if (p.$case === 'runState' && p.value.change) req.onEvent?.(`${stateName(p.value.change.to)}: ${p.value.change.reason}`);
          else if (p.$case === 'runAction' && p.value.action) req.onEvent?.(`${p.value.action.actor}: ${actionLabel(p.value.action.kind, Number(p.value.action.value))} — ${p.value.action.reason}`);
          else if (p.$case === 'runCompleted') {
            final = p.value.state;
            break;
          }
        }
      } catch (err) {
        if (req.signal?.aborted) throw err;
        // The stream ended early (coordinator restart): poll the run instead.
      }
      while (final === undefined || !isTerminalState(final)) {
        const r = await this.client.getRun({ runId }).catch(() => undefined);
        if (r?.run && isTerminalState(r.run.state)) final = r.run.state;
        else await sleep(1000, req.signal);
      }
    } finally {
      clearTimeout(limit);
      req.signal?.removeEventListener('abort', onAbort);
      ac.abort();
    }
    const outcome = timedOut && final !== MigrationState.MIGRATION_STATE_SUCCEEDED ? 'timed-out' : outcomeOf(final);
    return { runId, outcome, ...(timedOut ? { note: `cancelled by the lab after ${req.timeLimitMs / 1000} s` } : {}) };
  }

  async recordBlackout(runId: string, blackout: NetworkBlackout): Promise<void> {
    await this.client.recordRunBlackout({ runId, blackout }, { deadlineMs: 30_000 });
  }

  async timeline(runId: string): Promise<GetRunTimelineResponse> {
    return this.client.getRunTimeline({ runId }, { deadlineMs: 60_000 });
  }

  private async nodeClient(nodeId: string): Promise<RpcClient<typeof NodeServiceService> | undefined> {
    const cached = this.nodeClients.get(nodeId);
    if (cached) return cached;
    const nodes = await this.client.listNodes({});
    const addr = nodes.nodes.find((n) => n.host?.nodeId === nodeId)?.host?.managementAddress;
    if (!addr) return undefined;
    const c = createClient('migd.v1.NodeService', NodeServiceService, addr, { security: { tls: identityFiles(this.o.certDir, this.o.nodeIdentity ?? this.o.identity ?? 'operator'), serverNames: [nodeIdentity(nodeId)] } });
    this.nodeClients.set(nodeId, c);
    return c;
  }

  async destroyVm(vmName: string): Promise<void> {
    const vms = await this.client.listVms({ nodeId: '' });
    const ids = [...new Set([...vms.vms.filter((v) => v.spec?.name === vmName).map((v) => v.nodeId), ...(await this.nodeIds())])];
    for (const id of ids) {
      const c = await this.nodeClient(id);
      await c?.destroyVm({ name: vmName, deleteDisks: true }, { deadlineMs: 30_000 }).catch((err: unknown) => {
        if (!(err instanceof MigdError) || err.code !== 'NOT_FOUND') throw err;
      });
    }
  }

  async close(): Promise<void> {
    for (const c of this.nodeClients.values()) c.close();
    this.nodeClients.clear();
    this.client.close();
  }
}
