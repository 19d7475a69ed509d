/**
 * Fakes at the coordinator's transport seam: a scripted node daemon client (NodeService) whose
 * migrations are driven by the test, for fast tests of the run supervisor and manager against a
 * real history store.
 */
import { Broadcast } from '../../services/shared/broadcast.js';
import { NotFoundError } from '../../services/shared/errors.js';
import { MigrationPolicy, MigrationState, ProgressSample, VmState, type PolicyAction, type PolicyActionKind, type VmInfo, type VmSpec } from '../../services/shared/gen/migd/v1/common.js';
import type { MigrationInfo, StartMigrationRequest, WatchMigrationResponse } from '../../services/shared/gen/migd/v1/node.js';
import type { NodeClient } from '../../services/coordinator/registry.js';

/** One call the fake node received. */
export interface FakeCall {
  readonly method: string;
  readonly request: Record<string, unknown>;
}

/** A migration on the fake node, moved along by the test. */
export class FakeMigration {
  readonly updates = new Broadcast<WatchMigrationResponse>();
  info: MigrationInfo;

  constructor(req: StartMigrationRequest, nodeId: string) {
    this.info = {
      runId: req.runId,
      vmName: req.vmName,
      sourceNodeId: nodeId,
      destination: req.destination,
      policy: req.policy ?? MigrationPolicy.fromPartial({}),
      state: MigrationState.MIGRATION_STATE_PREPARING,
      startedAt: new Date(),
      finishedAt: undefined,
      lastProgress: undefined,
      stats: undefined,
      error: undefined,
      actions: [],
    };
  }

  state(to: MigrationState, reason = 'test'): void {
    const from = this.info.state;
    this.info.state = to;
    this.updates.publish({ update: { $case: 'stateChange', value: { time: new Date(), from, to, reason } } });
  }

  progress(p: Partial<ProgressSample>): void {
    const s = ProgressSample.fromPartial({ time: new Date(), state: this.info.state, qemuStatus: 'active', pageSize: 4096, totalBytes: 192 << 20, ...p });
    this.info.lastProgress = s;
    this.updates.publish({ update: { $case: 'progress', value: s } });
  }

  action(kind: PolicyActionKind, value: number, actor: string, reason: string): PolicyAction {
    const a: PolicyAction = { time: new Date(), elapsedMs: Date.now() - this.info.startedAt!.getTime(), kind, value, reason, actor };
    this.info.actions.push(a);
    this.updates.publish({ update: { $case: 'action', value: a } });
    return a;
  }

  finish(state: MigrationState, reason = 'done'): void {
    this.state(state, reason);
    this.info.finishedAt = new Date();
    if (state === MigrationState.MIGRATION_STATE_SUCCEEDED) {
      this.info.stats = { totalTimeMs: 1234, downtimeMs: 12, setupTimeMs: 5, transferredBytes: 1 << 20, passes: 3, postcopyRequests: 0, sourceCpuSeconds: 1, destinationCpuSeconds: 0.5, integrityErrors: 0, pagesVerifiedAfter: 100, maxThrottlePct: 0, recoveries: 0, postcopyBlocktimeMs: 0, postcopyVcpuBlocktimeMs: [], checks: [] };
    }
    this.updates.publish({ update: { $case: 'result', value: { ...this.info, actions: [...this.info.actions] } } });
    this.updates.close();
  }
}

/** A scripted NodeService client. */
export class FakeNode {
  readonly calls: FakeCall[] = [];
  readonly migrations = new Map<string, FakeMigration>();
  /** Called for each policy/user request (adjust, post-copy, force-complete, cancel). */
  onRequest: ((method: string, m: FakeMigration, req: { actor: string; reason: string }) => void) | undefined;
  /** AbortIncoming's answer: an Error is thrown (n counts the calls from 1). Default: done. */
  onAbortIncoming: ((n: number) => Error | undefined) | undefined;
  private aborts = 0;

  constructor(readonly nodeId: string) {}

  /** A migration that already runs on the node (as if started before a coordinator restart). */
  adopt(req: StartMigrationRequest): FakeMigration {
    const m = new FakeMigration(req, this.nodeId);
    this.migrations.set(req.runId, m);
    return m;
  }

  private get(runId: string): FakeMigration {
    const m = this.migrations.get(runId);
    if (!m) throw new NotFoundError(`no migration ${runId} driven by this node`);
    return m;
  }

  client(): NodeClient {
    const rec = (method: string, request: object): void => void this.calls.push({ method, request: request as Record<string, unknown> });
    const act = async (method: string, req: { runId: string; actor: string; reason: string }) => {
      rec(method, req);
      const m = this.get(req.runId);
      this.onRequest?.(method, m, req);
      return { migration: m.info };
    };
    const c = {
      startMigration: async (req: StartMigrationRequest) => {
        rec('startMigration', req);
        const m = this.migrations.get(req.runId) ?? this.adopt(req);
        return { migration: m.info };
      },
      getMigration: async (req: { runId: string }) => {
        rec('getMigration', req);
        return { migration: this.get(req.runId).info };
      },
      watchMigration: (req: { runId: string }, opts: { signal?: AbortSignal } = {}) => {
        rec('watchMigration', req);
        const m = this.get(req.runId);
        const initial: WatchMigrationResponse[] = [{ update: { $case: 'stateChange', value: { time: new Date(), from: m.info.state, to: m.info.state, reason: 'current state' } } }];
        if (m.info.lastProgress) initial.push({ update: { $case: 'progress', value: m.info.lastProgress } });
        if (m.info.finishedAt) initial.push({ update: { $case: 'result', value: m.info } });
        return m.updates.subscribe(initial, opts.signal);
      },
      adjustMigration: (req: { runId: string; actor: string; reason: string }) => act('adjustMigration', req),
      startPostcopy: (req: { runId: string; actor: string; reason: string }) => act('startPostcopy', req),
      forceComplete: (req: { runId: string; actor: string; reason: string }) => act('forceComplete', req),
      cancelMigration: (req: { runId: string; actor: string; reason: string }) => act('cancelMigration', req),
      releaseMigration: async (req: { runId: string }) => {
        rec('releaseMigration', req);
        return { migration: this.get(req.runId).info };
      },
      createVm: async (req: { spec: VmSpec }) => {
        rec('createVm', req);
        const vm: VmInfo = { spec: req.spec, nodeId: this.nodeId, state: VmState.VM_STATE_RUNNING, pid: 4242, startedAt: new Date(), migrationRunId: '', lastGuestPerf: undefined, qemuCpuSeconds: 0, localDisks: [] };
        return { vm };
      },
      expectIncoming: async (req: { runId: string; sourceNodeId: string; vmName: string }) => {
        rec('expectIncoming', req);
        return { expiresAt: new Date(Date.now() + 600_000) };
      },
      abortIncoming: async (req: { runId: string }) => {
        rec('abortIncoming', req);
        const err = this.onAbortIncoming?.(++this.aborts);
        if (err) throw err;
        return {};
      },
      close: () => undefined,
    };
    return c as unknown as NodeClient;
  }

  methods(): string[] {
    return this.calls.map((c) => c.method);
  }
}
