/**
 * The fault campaign: a local cluster of real QEMU guests (services/testbed/cluster.ts, the one
 * `npm start` runs), many migrations in every mode, and one fault per step at a moment drawn from
 * the seed (plan.ts). After each fault, once the system has settled (within a bound), the
 * invariants are checked (invariants.ts) on what `ps`, the guests' consoles, the coordinator,
 * JetStream and the nodes' state folders show (observe.ts). Used by `npm run chaos` and, short, by
 * the integration test.
 */
import { execFile, execFileSync } from 'node:child_process';
import { appendFileSync, closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { connect, type NatsConnection } from 'nats';
import { MigrationState as S, PolicyKind, VmState, WorkloadPattern, type MigrationPolicy, VmSpec } from '../../services/shared/gen/migd/v1/common.js';
import { NodeStatus, PlanState, type SubmitPlanRequest } from '../../services/shared/gen/migd/v1/coordinator.js';
import { natsConnectOptions } from '../../services/shared/events/nats-security.js';
import { createPki, identityFiles } from '../../services/shared/pki.js';
import { startLocalCluster, type CoordinatorClient, type LocalCluster } from '../../services/testbed/cluster.js';
import { ensureGuestImageDir } from '../image/build.js';
import { LOST_IN_QEMU_REASON, checkInvariants, type Observation, type RunObservation, type Violation, type VmObservation } from './invariants.js';
import { findLeftovers, guestIntegrity, listQemu, replayRun, sampleRunning, type QemuListing } from './observe.js';
import { leadingPhase, phaseLabel, phaseOf, type Phase } from './phase.js';
import { planSteps, replayCommand, type FaultDraw, type FaultKind, type Mode, type PlanLimits, type StepSpec } from './plan.js';

const execp = promisify(execFile);
const MiB = 1024 * 1024;
const HOSTS = ['a', 'b'] as const;

export interface CampaignOptions {
  readonly seed: number;
  /** Faults to inject in all (steps × faultsPerStep). */
  readonly faults: number;
  /** Faults per step (1 or 2; default 1): two faults at two moments of the same migrations. */
  readonly faultsPerStep?: number;
  /** First step (replaying part of a campaign). Default 0. */
  readonly fromStep?: number;
  /** Stop starting new steps after this long (ms). */
  readonly maxDurationMs?: number;
  /** Draw only these faults. */
  readonly only?: readonly FaultKind[];
  /** Guests kept in the cluster. Default 3. */
  readonly vms?: number;
  /** Bound for the system to settle after a fault (ms). Default 180 000. */
  readonly settleBoundMs?: number;
  readonly limits?: PlanLimits;
  /** Progress lines. */
  readonly log: (line: string) => void;
  /** Daemon log lines (default dropped). */
  readonly onClusterLog?: (line: string) => void;
  /** Called after every step with the results so far (a long campaign saves them as it goes). */
  readonly onProgress?: (partial: CampaignResult) => void;
}

/** One injected fault and what came of it. */
export interface FaultRecord {
  readonly step: number;
  readonly fault: FaultKind;
  readonly mode: Mode;
  readonly action: StepSpec['action'];
  /** Phase label when the fault landed ("pre-copy pass 2"…). */
  readonly phase: string;
  readonly phaseName: Phase['name'];
  /** What was hit ("coordinator pid 123", "link a↔b"…); empty when nothing could be (not applied). */
  readonly target: string;
  readonly applied: boolean;
  /** No invariant was violated in this fault's step. */
  readonly survived: boolean;
  readonly atMs: number;
  readonly runs: readonly { runId: string; vm: string; from: string; to: string; state: string; error: string }[];
  /** The step's violations (on its first fault's record only, so each is counted once). */
  readonly violations: readonly Violation[];
  readonly replay: string;
  readonly elapsedMs: number;
}

export interface CampaignResult {
  readonly seed: number;
  readonly fromStep: number;
  readonly faultsPerStep: number;
  readonly only: readonly FaultKind[];
  readonly startedAt: string;
  readonly durationMs: number;
  readonly records: readonly FaultRecord[];
  /** Violations found at the end (after the last step). */
  readonly finalViolations: readonly Violation[];
  readonly restarts: Record<string, number>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function policyFor(mode: Mode): MigrationPolicy {
  const base: MigrationPolicy = { kind: PolicyKind.POLICY_KIND_FIXED, downtimeLimitMs: 500, maxBandwidthBytesPerSec: 0, autoConverge: undefined, postcopy: undefined, xbzrle: undefined, multifd: undefined, switchoverAck: false, tls: false, completionTimeoutSecPerGib: 0, progressTimeoutSec: 15, timeoutAction: 0, downtimeSteps: [], maxDowntimeMs: 0 };
  switch (mode) {
    case 'auto-converge':
      return { ...base, autoConverge: { enabled: true, initialPct: 20, incrementPct: 10, maxPct: 99 } };
    case 'post-copy-preempt':
      return { ...base, postcopy: { enabled: true, afterPasses: 1, afterMs: 0, onDemandOnly: false, preempt: true } };
    case 'xbzrle':
      return { ...base, xbzrle: { enabled: true, cacheBytes: 16 * MiB } };
    case 'multifd':
      return { ...base, multifd: { enabled: true, channels: 2, compression: 0, compressionLevel: 0 } };
    default:
      return base;
  }
}

function guest(name: string): VmSpec {
  return VmSpec.fromPartial({
    name,
    memoryMib: 128,
    vcpus: 1,
    accel: 0,
    machineType: '',
    kernelPath: '',
    initrdPath: '',
    extraCmdline: '',
    disks: [],
    workload: { pattern: WorkloadPattern.WORKLOAD_PATTERN_RANDOM, workers: 1, bytesPerWorker: 16 * MiB, rateBytesPerSec: 2 * MiB, hotBytes: 0, verify: true, phaseAfterMs: 0, phaseRateBytesPerSec: 0 },
    labels: {},
    antiAffinityGroup: '',
    uuid: '',
    nics: [],
  });
}

/** A tmpfs for the coordinator's store, so "disk full" is a file away. */
async function mountStore(dir: string, sizeMib: number): Promise<void> {
  mkdirSync(dir, { recursive: true });
  await execp('mount', ['-t', 'tmpfs', '-o', `size=${sizeMib}m,mode=0700`, 'migd-chaos-store', dir]);
}

/** Fills the file system of `dir` with `file` until ENOSPC. */
function fillDisk(file: string): void {
  const fd = openSync(file, 'w');
  const chunk = Buffer.alloc(MiB, 0x5a);
  try {
    for (;;) writeSync(fd, chunk);
  } catch {
    // ENOSPC: full
  } finally {
    closeSync(fd);
  }
}

class Campaign {
  private cluster!: LocalCluster;
  private op!: CoordinatorClient;
  private nc: NatsConnection | undefined;
  private work!: string;
  private clusterDir!: string;
  private storeDir!: string;
  private storeMounted = false;
  private vmCounter = 0;
  /** VMs the campaign keeps (names), with the last placement it saw. */
  private readonly population = new Map<string, string>();
  private readonly restores: Promise<void>[] = [];
  private readonly started = Date.now();

  constructor(private readonly o: CampaignOptions) {}

  private readonly onSignal = (sig: NodeJS.Signals): void => {
    this.say(`${sig}: stopping (the cluster and its guests are removed)`);
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };

  private readonly unmountSync = (): void => {
    if (!this.storeMounted) return;
    try {
      execFileSync('umount', ['-l', this.storeDir], { stdio: 'ignore' });
      rmSync(this.work, { recursive: true, force: true });
    } catch {
      // exiting anyway
    }
  };

  private say(l: string): void {
    this.o.log(`[chaos +${((Date.now() - this.started) / 1000).toFixed(0)}s] ${l}`);
  }

  async setUp(): Promise<void> {
    // Short: unix socket paths under node state folders are limited to 107 bytes.
    this.work = mkdtempSync('/tmp/migd-chaos-');
    this.clusterDir = join(this.work, 'c');
    this.storeDir = join(this.work, 'store');
    await mountStore(this.storeDir, 48);
    this.storeMounted = true;
    // Ended early (a signal, process.exit): the testbed's and supervisor's exit hooks remove the
    // namespaces and children; this removes the tmpfs. A signal becomes process.exit so they run.
    process.once('exit', this.unmountSync);
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(sig, this.onSignal);
    const certDir = join(this.work, 'pki');
    createPki(certDir);
    const guestImage = await ensureGuestImageDir(join(this.work, 'guest'));
    this.cluster = await startLocalCluster({
      hosts: [...HOSTS],
      workDir: this.clusterDir,
      certDir,
      guestImage,
      storeDir: this.storeDir,
      restartDelayMs: 1000,
      coordinatorArgs: ['--heartbeat-ms', '1000', '--heartbeat-misses', '3'],
      onSupervisor: (l) => this.say(`supervisor: ${l}`),
      ...(this.o.onClusterLog ? { onLog: this.o.onClusterLog } : {}),
    });
    this.op = this.cluster.client();
    // nats-server requires TLS with a client certificate and a user: the campaign only replays
    // events, so it connects as the read-only user.
    const reader = this.cluster.natsReader;
    this.nc = await connect({
      ...natsConnectOptions([this.cluster.natsUrl], { tls: identityFiles(this.cluster.certDir, 'operator'), user: reader.user, passwordFile: reader.passwordFile }),
      reconnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
    });
    this.say(`cluster up: coordinator ${this.cluster.coordinatorAddress}, nats ${this.cluster.natsUrl}, work ${this.work}`);
  }

  async tearDown(): Promise<void> {
    await Promise.allSettled(this.restores);
    await this.nc?.close().catch(() => undefined);
    await this.cluster?.close().catch((e: unknown) => this.say(`cluster close: ${(e as Error).message}`));
    if (this.storeMounted) await execp('umount', ['-l', this.storeDir]).catch(() => undefined);
    this.storeMounted = false;
    process.off('exit', this.unmountSync);
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(sig, this.onSignal);
    rmSync(this.work, { recursive: true, force: true });
  }

  /** Retries a coordinator call through restarts and outages. */
  private async api<T>(what: string, f: () => Promise<T>, timeoutMs = 60_000): Promise<T> {
    const until = Date.now() + timeoutMs;
    let last: unknown;
    while (Date.now() < until) {
      try {
        return await f();
      } catch (err) {
        last = err;
        await sleep(300);
      }
    }
    throw new Error(`${what}: ${(last as Error)?.message ?? 'timed out'}`);
  }

  /** Boots VMs until the population is back to its size; waits until each runs. */
  private async fillPopulation(): Promise<string[]> {
    const want = this.o.vms ?? 3;
    const created: string[] = [];
    while (this.population.size < want) {
      const counts = HOSTS.map((h) => [...this.population.values()].filter((x) => x === h).length);
      const host = HOSTS[counts[0]! <= counts[1]! ? 0 : 1]!;
      const name = `g${++this.vmCounter}`;
      await this.api(`create ${name}`, () => this.op.createVm({ spec: guest(name), nodeId: host }));
      this.population.set(name, host);
      created.push(name);
    }
    for (const name of created) {
      const until = Date.now() + 90_000;
      for (;;) {
        const procs = (await listQemu(this.clusterDir)).filter((p) => p.vm === name);
        if (procs.length === 1 && (await sampleRunning(this.clusterDir, procs, 1500)).some((p) => p.running) && guestIntegrity(this.clusterDir, procs[0]!.host, name).pagesVerified > 0) break;
        if (Date.now() > until) throw new Error(`guest ${name} did not start within 90 s`);
        await sleep(500);
      }
    }
    if (created.length) this.say(`booted ${created.join(', ')}`);
    return created;
  }

  /** Where the coordinator places each VM of the population (RUNNING only). */
  private async placements(): Promise<Map<string, { node: string; state: VmState }>> {
    const { vms } = await this.api('list VMs', () => this.op.listVms({ nodeId: '' }));
    return new Map(vms.filter((v) => v.spec && this.population.has(v.spec.name)).map((v) => [v.spec!.name, { node: v.nodeId, state: v.state }]));
  }

  private async shapeLinks(rateMbit: number, lossPct = 0): Promise<void> {
    for (const h of HOSTS) await this.cluster.tb.shape(h, lossPct > 0 ? { rateMbit, lossPct } : { rateMbit });
  }

  private later(ms: number, what: string, f: () => Promise<void>): void {
    this.restores.push(
      sleep(ms)
        .then(f)
        .then(() => this.say(`restored: ${what}`))
        .catch((e: unknown) => this.say(`restoring ${what} failed: ${(e as Error).message}`)),
    );
  }

  private async phaseNow(runs: readonly { runId: string; from: string }[]): Promise<Phase> {
    const phases: Phase[] = [];
    for (const r of runs) {
      const node = this.cluster.nodes[HOSTS.indexOf(r.from as 'a')];
      let got: Phase | undefined;
      const c = node!.client();
      try {
        const { migration } = await c.getMigration({ runId: r.runId }, { deadlineMs: 1000 });
        got = phaseOf(migration?.state, migration?.lastProgress?.pass);
      } catch {
        try {
          const { run } = await this.op.getRun({ runId: r.runId }, { deadlineMs: 1000 });
          got = phaseOf(run?.state, undefined);
        } catch {
          got = undefined;
        }
      } finally {
        c.close();
      }
      if (got) phases.push(got);
    }
    // Not yet on the node and the coordinator unsure: still setting up.
    return phases.length ? leadingPhase(phases) : { name: 'setup' };
  }

  private async injectFault(s: FaultDraw & { rateMbit: number }, runs: readonly { runId: string; vm: string; from: string; to: string }[], killed: Set<string>): Promise<{ target: string; applied: boolean }> {
    const primary = runs[0]!;
    const src = primary.from;
    const dst = primary.to;
    const pids = this.cluster.pids();
    const kill = (pid: number | undefined, what: string): { target: string; applied: boolean } => {
      if (pid === undefined) return { target: `${what} (not running)`, applied: false };
      try {
        process.kill(pid, 'SIGKILL');
        return { target: `${what} pid ${pid}`, applied: true };
      } catch {
        return { target: `${what} pid ${pid} (gone)`, applied: false };
      }
    };
    const tb = this.cluster.tb;
    switch (s.fault) {
      case 'kill-coordinator':
        return kill(pids.coordinator, 'coordinator');
      case 'kill-nats':
        return kill(pids.nats, 'nats-server');
      case 'kill-source-daemon':
        return kill(pids.nodes[src], `node daemon ${src}`);
      case 'kill-destination-daemon':
        return kill(pids.nodes[dst], `node daemon ${dst}`);
      case 'kill-source-qemu':
      case 'kill-destination-qemu': {
        const host = s.fault === 'kill-source-qemu' ? src : dst;
        const until = Date.now() + 2000;
        let p: QemuListing | undefined;
        while (!p && Date.now() < until) {
          p = (await listQemu(this.clusterDir)).find((q) => q.host === host && q.vm === primary.vm);
          if (!p) await sleep(200);
        }
        if (!p) return { target: `QEMU of ${primary.vm} on ${host} (none)`, applied: false };
        killed.add(primary.vm);
        return kill(p.pid, `QEMU of ${primary.vm} on ${host}`);
      }
      case 'cut-migration-link':
        await tb.cut(src, { to: dst });
        this.later(s.durationMs, `migration link ${src}↔${dst}`, () => tb.restore(src, { to: dst }));
        return { target: `migration link ${src}↔${dst} for ${s.durationMs} ms`, applied: true };
      case 'cut-migration-link-for-good': {
        await tb.cut(src, { to: dst });
        // For good as far as the runs are concerned: restored only once they have ended.
        this.restores.push(
          this.waitRunsFinal(runs.map((r) => r.runId), this.o.settleBoundMs ?? 180_000)
            .then(() => tb.restore(src, { to: dst }))
            .then(() => this.say(`restored: migration link ${src}↔${dst} (after the runs ended)`)),
        );
        return { target: `migration link ${src}↔${dst} until the runs end`, applied: true };
      }
      case 'migration-link-loss':
        await this.shapeLinks(s.rateMbit, s.lossPct);
        this.later(s.durationMs, `${s.lossPct}% loss`, () => this.shapeLinks(s.rateMbit));
        return { target: `migration links ${s.lossPct}% loss for ${s.durationMs} ms`, applied: true };
      case 'cut-management-link': {
        const h = s.side === 'source' ? src : dst;
        await tb.cut(h, { network: 'management' });
        this.later(s.durationMs, `management link of ${h}`, () => tb.restore(h, { network: 'management' }));
        return { target: `management link of ${h} for ${s.durationMs} ms`, applied: true };
      }
      case 'coordinator-disk-full': {
        const filler = join(this.storeDir, 'filler');
        fillDisk(filler);
        this.later(s.durationMs, 'coordinator disk', async () => rmSync(filler, { force: true }));
        return { target: `coordinator store full for ${s.durationMs} ms`, applied: true };
      }
      case 'sigstop-node-daemon': {
        const h = s.side === 'source' ? src : dst;
        const pid = pids.nodes[h];
        if (pid === undefined) return { target: `node daemon ${h} (not running)`, applied: false };
        process.kill(pid, 'SIGSTOP');
        this.later(s.durationMs, `node daemon ${h} (SIGCONT)`, async () => {
          try {
            process.kill(pid, 'SIGCONT');
          } catch {
            // gone meanwhile
          }
        });
        return { target: `node daemon ${h} pid ${pid} stopped for ${s.durationMs} ms`, applied: true };
      }
    }
  }

  private async waitRunsFinal(runIds: readonly string[], boundMs: number): Promise<boolean> {
    const until = Date.now() + boundMs;
    const final = new Set([S.MIGRATION_STATE_SUCCEEDED, S.MIGRATION_STATE_FAILED, S.MIGRATION_STATE_CANCELLED]);
    while (Date.now() < until) {
      let all = true;
      for (const id of runIds) {
        try {
          const { run } = await this.op.getRun({ runId: id }, { deadlineMs: 2000 });
          if (!run || !final.has(run.state)) all = false;
        } catch {
          all = false;
        }
        if (!all) break;
      }
      if (all) return true;
      await sleep(500);
    }
    return false;
  }

  /** Waits for the system to settle: restores done, children up, runs and plans final, nodes up. */
  private async settle(runIds: readonly string[], planIds: readonly string[]): Promise<string[]> {
    const bound = this.o.settleBoundMs ?? 180_000;
    const until = Date.now() + bound;
    const problems: string[] = [];
    await Promise.allSettled(this.restores.splice(0));
    await this.cluster.settled();
    if (!(await this.waitRunsFinal(runIds, Math.max(1000, until - Date.now())))) problems.push(`runs not final within ${bound} ms`);
    for (;;) {
      try {
        const plansDone = await Promise.all(planIds.map(async (id) => (await this.op.getPlan({ planId: id }, { deadlineMs: 2000 })).plan?.state !== PlanState.PLAN_STATE_RUNNING));
        const { nodes } = await this.op.listNodes({}, { deadlineMs: 2000 });
        const up = nodes.filter((n) => n.status === NodeStatus.NODE_STATUS_UP).length === HOSTS.length;
        if (plansDone.every(Boolean) && up) break;
      } catch {
        // coordinator restarting
      }
      if (Date.now() > until) {
        problems.push(`plans or nodes not settled within ${bound} ms`);
        break;
      }
      await sleep(500);
    }
    // Heartbeats carry the nodes' VM lists: give the coordinator one round to catch up.
    await sleep(1500);
    return problems;
  }

  /** Observes everything and checks the invariants. */
  private async check(runs: readonly { runId: string; vm: string; from: string; to: string }[], plans: readonly string[], runningBefore: readonly string[], killed: ReadonlySet<string>): Promise<{ violations: Violation[]; runStates: Map<string, RunObservation> }> {
    const listing = await listQemu(this.clusterDir);
    const sampled = await sampleRunning(this.clusterDir, listing);
    const placed = await this.placements().catch(() => new Map<string, { node: string; state: VmState }>());
    const names = new Set([...this.population.keys(), ...sampled.map((p) => p.vm)]);
    const vms: VmObservation[] = [...names].map((name) => {
      const procs = sampled.filter((p) => p.vm === name);
      const live = procs.find((p) => p.running) ?? procs[0];
      const integ = live ? guestIntegrity(this.clusterDir, live.host, name) : { errors: 0, pagesVerified: 0, anomalies: [] };
      const api = placed.get(name);
      return { name, processes: procs, api: api ? { nodeId: api.node, state: api.state } : undefined, integrityErrors: integ.errors, anomalies: integ.anomalies, pagesVerified: integ.pagesVerified };
    });
    const runObs: RunObservation[] = [];
    for (const r of runs) {
      let state: S | undefined;
      let pagesVerifiedAfter = 0;
      let error = '';
      let storeTransitions: S[] = [];
      try {
        const { run } = await this.api('get run', () => this.op.getRun({ runId: r.runId }), 10_000);
        state = run?.state;
        pagesVerifiedAfter = run?.stats?.pagesVerifiedAfter ?? 0;
        // A run the policy cancelled says why in its last action (e.g. no progress for 15 s).
        const lastAction = run?.actions.at(-1);
        error = run?.error ? `${run.error.reason}: ${run.error.message}` : run?.state === S.MIGRATION_STATE_CANCELLED && lastAction?.reason ? `cancelled by ${lastAction.actor}: ${lastAction.reason}` : '';
        storeTransitions = (run?.transitions ?? []).filter((t) => t.from !== t.to).map((t) => t.to);
      } catch {
        state = undefined;
      }
      const events = this.nc ? await replayRun(this.nc, r.runId) : undefined;
      runObs.push({ runId: r.runId, vm: r.vm, source: r.from, destination: r.to, state, pagesVerifiedAfter, error, storeTransitions, events });
    }
    const planObs = await Promise.all(
      plans.map(async (id) => {
        try {
          const { plan } = await this.op.getPlan({ planId: id });
          return { planId: id, final: plan?.state !== PlanState.PLAN_STATE_RUNNING, state: plan ? PlanState[plan.state] : 'unknown' };
        } catch {
          return { planId: id, final: false, state: 'unknown (coordinator unreachable)' };
        }
      }),
    );
    const leftovers = findLeftovers(this.clusterDir, HOSTS, listing, (h, vm) => placed.get(vm)?.node === h && placed.get(vm)?.state === VmState.VM_STATE_FAILED);
    const obs: Observation = { vms, runs: runObs, plans: planObs, leftovers };
    const lostInQemu = runObs.filter((r) => r.state === S.MIGRATION_STATE_FAILED && r.error.startsWith(`${LOST_IN_QEMU_REASON}:`)).map((r) => r.vm);
    for (const vm of lostInQemu) this.say(`${vm}: lost in QEMU's switch to post-copy (both copies paused, never two running): reported, not a migd violation`);
    const violations = checkInvariants(obs, { runningBefore, qemuKilled: [...killed], lostInQemu });
    return { violations, runStates: new Map(runObs.map((r) => [r.runId, r])) };
  }

  /** Puts the population back in order after a step: drops destroyed VMs, notes placements. */
  private async repair(violations: readonly Violation[]): Promise<void> {
    const listing = await listQemu(this.clusterDir);
    const placed = await this.placements().catch(() => new Map<string, { node: string; state: VmState }>());
    const broken = new Set(violations.map((v) => v.subject).filter((s) => this.population.has(s)));
    for (const name of [...this.population.keys()]) {
      const procs = listing.filter((p) => p.vm === name);
      if (procs.length === 1 && !broken.has(name)) {
        this.population.set(name, procs[0]!.host);
        continue;
      }
      // Destroyed by a QEMU kill, or in a state the campaign cannot reason about any more: remove
      // it everywhere so the next steps start clean (replacements are booted).
      this.say(`retiring ${name} (${procs.length} QEMU processes${broken.has(name) ? ', violated an invariant' : ''}; coordinator: ${placed.get(name) ? VmState[placed.get(name)!.state] : 'not listed'})`);
      for (const n of this.cluster.nodes) {
        const c = n.client();
        await c.destroyVm({ name }, { deadlineMs: 10_000 }).catch(() => undefined);
        c.close();
      }
      for (const p of (await listQemu(this.clusterDir)).filter((q) => q.vm === name)) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      this.population.delete(name);
    }
  }

  async step(s: StepSpec): Promise<FaultRecord[]> {
    const t0 = Date.now();
    await this.fillPopulation();
    await this.shapeLinks(s.rateMbit);
    const placed = await this.placements();
    const live = [...this.population.keys()].filter((n) => placed.get(n)?.state === VmState.VM_STATE_RUNNING);
    if (live.length === 0) throw new Error('no running VM to migrate');
    const runningBefore = [...live];
    const other = (h: string): string => (h === 'a' ? 'b' : 'a');
    const requests: SubmitPlanRequest[] = [];
    const key = (k: string): string => `chaos-${this.o.seed}-${s.index}-${k}-${this.started}`;
    const base = { policy: policyFor(s.mode), priority: 0, antiAffinityVmNames: [], label: `chaos step ${s.index}` };
    if (s.action === 'drain') {
      const src = placed.get(live[s.vmSlot % live.length]!)!.node;
      requests.push({ ...base, idempotencyKey: key('drain'), target: { $case: 'drain', value: { nodeId: src, destinationNodeIds: [other(src)] } } });
    } else {
      const picks = s.action === 'migrate-two' && live.length > 1 ? [live[s.vmSlot % live.length]!, live[(s.vmSlot + 1) % live.length]!] : [live[s.vmSlot % live.length]!];
      for (const vm of picks) requests.push({ ...base, idempotencyKey: key(vm), target: { $case: 'migrate', value: { vmName: vm, destinationNodeId: other(placed.get(vm)!.node) } } });
    }
    const runs: { runId: string; vm: string; from: string; to: string }[] = [];
    const plans: string[] = [];
    const submitted = Date.now();
    for (const req of requests) {
      const { plan } = await this.api('submit plan', () => this.op.submitPlan(req));
      plans.push(plan!.id);
      for (const m of plan!.migrations) if (m.runId) runs.push({ runId: m.runId, vm: m.vmName, from: m.sourceNodeId, to: m.destinationNodeId });
    }
    const killed = new Set<string>();
    const draws: FaultDraw[] = [s, ...((this.o.faultsPerStep ?? 1) >= 2 ? [s.second] : [])].sort((x, y) => x.faultAtMs - y.faultAtMs);
    const landed: { draw: FaultDraw; phase: Phase; target: string; applied: boolean; atMs: number }[] = [];
    for (const d of draws) {
      let phase: Phase = { name: 'setup' };
      let fault = { target: 'no migration planned', applied: false };
      if (runs.length > 0) {
        await sleep(Math.max(0, submitted + d.faultAtMs - Date.now()));
        phase = await this.phaseNow(runs);
        fault = await this.injectFault({ ...d, rateMbit: s.rateMbit }, runs, killed);
      }
      const atMs = Date.now() - submitted;
      landed.push({ draw: d, phase, ...fault, atMs });
      this.say(`step ${s.index}: ${s.action} ${runs.map((r) => `${r.vm} ${r.from}→${r.to}`).join(', ')} (${s.mode}, ${s.rateMbit} Mbit/s); fault ${d.fault} at ${atMs} ms in ${phaseLabel(phase)}: ${fault.target}`);
    }
    const problems = await this.settle(
      runs.map((r) => r.runId),
      plans,
    );
    const { violations, runStates } = await this.check(runs, plans, runningBefore, killed);
    for (const p of problems) violations.push({ invariant: 'settled', subject: `step ${s.index}`, detail: p });
    const perStep = this.o.faultsPerStep ?? 1;
    const replay = replayCommand(this.o.seed, { fromStep: s.index, faults: perStep, perStep, ...(this.o.only ? { onlyFaults: this.o.only } : {}) });
    for (const v of violations) this.say(`VIOLATION [${v.invariant}] ${v.subject}: ${v.detail} (seed ${this.o.seed}, step ${s.index}; replay: ${replay})`);
    await this.repair(violations);
    await this.shapeLinks(s.rateMbit);
    const runSummary = runs.map((r) => {
      const o = runStates.get(r.runId);
      return { ...r, state: o?.state === undefined ? 'unknown' : S[o.state].replace('MIGRATION_STATE_', ''), error: o?.error ?? '' };
    });
    const records: FaultRecord[] = landed.map((l, i) => ({
      step: s.index,
      fault: l.draw.fault,
      mode: s.mode,
      action: s.action,
      phase: phaseLabel(l.phase),
      phaseName: l.phase.name,
      target: l.target,
      applied: l.applied,
      survived: violations.length === 0,
      atMs: l.atMs,
      runs: runSummary,
      violations: i === 0 ? violations : [],
      replay,
      elapsedMs: Date.now() - t0,
    }));
    this.say(`step ${s.index} done in ${((Date.now() - t0) / 1000).toFixed(0)} s: ${runSummary.map((r) => `${r.vm} ${r.state}${r.error ? ` (${r.error.slice(0, 100)})` : ''}`).join(', ')}; ${violations.length} violations`);
    return records;
  }

  /** The invariants once more at the end, with no step running. */
  async finalCheck(): Promise<Violation[]> {
    await this.settle([], []);
    const placed = await this.placements();
    const running = [...this.population.keys()].filter((n) => placed.get(n)?.state === VmState.VM_STATE_RUNNING);
    const { violations } = await this.check([], [], running, new Set());
    for (const v of violations) this.say(`VIOLATION at the end [${v.invariant}] ${v.subject}: ${v.detail} (seed ${this.o.seed})`);
    return violations;
  }

  restarts(): Record<string, number> {
    return this.cluster.restarts();
  }
}

/** Runs a campaign: sets the cluster up, runs the steps, checks at the end, tears everything down. */
export async function runCampaign(o: CampaignOptions): Promise<CampaignResult> {
  const startedAt = new Date();
  const from = o.fromStep ?? 0;
  const perStep = Math.min(2, Math.max(1, o.faultsPerStep ?? 1));
  const steps = planSteps(o.seed, Math.ceil(o.faults / perStep), from, { ...o.limits, ...(o.only ? { faults: o.only } : {}) });
  const c = new Campaign({ ...o, faultsPerStep: perStep });
  const records: FaultRecord[] = [];
  let finalViolations: Violation[] = [];
  let restarts: Record<string, number> = {};
  try {
    await c.setUp();
    for (const s of steps) {
      if (o.maxDurationMs !== undefined && Date.now() - startedAt.getTime() > o.maxDurationMs) {
        o.log(`[chaos] time is up after ${records.length} faults`);
        break;
      }
      records.push(...(await c.step(s)));
      o.onProgress?.({ seed: o.seed, fromStep: from, faultsPerStep: perStep, only: o.only ?? [], startedAt: startedAt.toISOString(), durationMs: Date.now() - startedAt.getTime(), records: [...records], finalViolations: [], restarts: c.restarts() });
    }
    finalViolations = await c.finalCheck();
    restarts = c.restarts();
  } finally {
    await c.tearDown();
  }
  return { seed: o.seed, fromStep: from, faultsPerStep: perStep, only: o.only ?? [], startedAt: startedAt.toISOString(), durationMs: Date.now() - startedAt.getTime(), records, finalViolations, restarts };
}

/** Appends a line to a file (for the campaign's own log). */
export function appendLine(file: string, line: string): void {
  appendFileSync(file, `${line}\n`);
}
