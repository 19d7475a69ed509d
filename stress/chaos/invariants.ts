/**
 * The campaign's invariants, as pure checks over what was observed once the system settled:
 * processes from `ps` (not the API), guests' own console output, the coordinator's records,
 * events replayed from JetStream, and the nodes' state folders. Each violation names the
 * invariant, the VM or run, and what was seen.
 */
import { MigrationState as S, VmState } from '../../services/shared/gen/migd/v1/common.js';

export const INVARIANTS = ['exactly-once', 'not-lost', 'integrity', 'final-state', 'outcome', 'events', 'leftovers', 'settled'] as const;
export type InvariantName = (typeof INVARIANTS)[number];

export interface Violation {
  readonly invariant: InvariantName;
  readonly subject: string;
  readonly detail: string;
}

/** One QEMU process of this cluster, from `ps`. */
export interface QemuProcess {
  readonly pid: number;
  /** Host (node) whose state folder the process uses. */
  readonly host: string;
  readonly vm: string;
  /** Its console log grew during the observation window: the guest runs. */
  readonly running: boolean;
}

export interface VmObservation {
  readonly name: string;
  readonly processes: readonly QemuProcess[];
  /** As the coordinator lists it (undefined: not listed). */
  readonly api: { readonly nodeId: string; readonly state: VmState } | undefined;
  /** Integrity errors and anomalies (reboot, rollback) in the console of the running copy. */
  readonly integrityErrors: number;
  readonly anomalies: readonly string[];
  /** Pages the guest verified in total (0: the workload never checked anything). */
  readonly pagesVerified: number;
}

export interface RunObservation {
  readonly runId: string;
  readonly vm: string;
  readonly source: string;
  readonly destination: string;
  /** undefined when the coordinator could not say. */
  readonly state: S | undefined;
  readonly pagesVerifiedAfter: number;
  readonly error: string;
  /** State transitions (to-states) as the history store has them. */
  readonly storeTransitions: readonly S[];
  /** From JetStream, in delivery order: run sequence numbers, state changes, final state. */
  readonly events: { readonly sequences: readonly number[]; readonly transitions: readonly S[]; readonly completed: S | undefined } | undefined;
}

export interface PlanObservation {
  readonly planId: string;
  readonly final: boolean;
  readonly state: string;
}

export interface Observation {
  readonly vms: readonly VmObservation[];
  readonly runs: readonly RunObservation[];
  readonly plans: readonly PlanObservation[];
  /** Things left on nodes: "host a: socket vms/x/qmp.sock of no QEMU"… */
  readonly leftovers: readonly string[];
}

export interface Expectation {
  /** VMs running before the step. */
  readonly runningBefore: readonly string[];
  /** VMs whose QEMU the step killed on purpose: FAILED with a reason is fine for them. */
  readonly qemuKilled: readonly string[];
  /**
   * VMs QEMU itself lost: a run failed with POSTCOPY_SWITCH_FAILED (the stream broke between the
   * device-state package and the end of QEMU's switch to post-copy, which no end can recover).
   * Two paused copies are then the right outcome (as libvirt leaves them); a running one is not.
   */
  readonly lostInQemu?: readonly string[];
}

/** The reason code a run fails with when QEMU lost the guest in its switch to post-copy. */
export const LOST_IN_QEMU_REASON = 'POSTCOPY_SWITCH_FAILED';

const FINAL = new Set([S.MIGRATION_STATE_SUCCEEDED, S.MIGRATION_STATE_FAILED, S.MIGRATION_STATE_CANCELLED]);

/** Every invariant over one observation. */
export function checkInvariants(obs: Observation, exp: Expectation): Violation[] {
  const out: Violation[] = [];
  const v = (invariant: InvariantName, subject: string, detail: string): void => void out.push({ invariant, subject, detail });
  const byName = new Map(obs.vms.map((x) => [x.name, x]));
  const lostInQemu = new Set(exp.lostInQemu ?? []);

  for (const vm of obs.vms) {
    const procs = vm.processes;
    const running = procs.filter((p) => p.running);
    const keptPaused = lostInQemu.has(vm.name) && running.length === 0;
    if (procs.length > 1 && !keptPaused) {
      const where = procs.map((p) => `${p.host} pid ${p.pid} ${p.running ? 'running' : 'not running'}`).join(', ');
      v('exactly-once', vm.name, running.length > 1 ? `runs ${running.length} times: ${where}` : `${procs.length} QEMU processes: ${where}`);
    }
    if (procs.length === 1 && running.length === 0 && !keptPaused) v('exactly-once', vm.name, `its only QEMU (${procs[0]!.host} pid ${procs[0]!.pid}) is not running (paused with no owner?)`);
    if (running.length >= 1 && vm.api && running.every((p) => p.host !== vm.api!.nodeId)) {
      v('exactly-once', vm.name, `runs on ${running.map((p) => p.host).join(', ')} but the coordinator places it on ${vm.api.nodeId}`);
    }
    if (running.length >= 1 && (vm.integrityErrors > 0 || vm.anomalies.length > 0)) {
      v('integrity', vm.name, `${vm.integrityErrors} integrity errors${vm.anomalies.length ? `; ${vm.anomalies.join('; ')}` : ''}`);
    }
  }

  const killed = new Set(exp.qemuKilled);
  for (const name of exp.runningBefore) {
    const vm = byName.get(name);
    const runs = vm ? vm.processes.filter((p) => p.running).length : 0;
    if (runs >= 1 || lostInQemu.has(name)) continue;
    const failed = vm?.api?.state === VmState.VM_STATE_FAILED;
    if (killed.has(name)) {
      if (!failed) v('not-lost', name, `its QEMU was killed and it no longer runs, but the coordinator reports it ${vm?.api ? VmState[vm.api.state] : 'not at all'}, not FAILED`);
    } else {
      v('not-lost', name, `was running before the fault and is not running now (coordinator: ${vm?.api ? `${VmState[vm.api.state]} on ${vm.api.nodeId}` : 'not listed'})`);
    }
  }

  for (const r of obs.runs) {
    const subject = `run ${r.runId} (${r.vm} ${r.source}→${r.destination})`;
    if (r.state === undefined || !FINAL.has(r.state)) {
      v('final-state', subject, `not final: ${r.state === undefined ? 'unknown' : S[r.state]}`);
      continue;
    }
    const vm = byName.get(r.vm);
    const runningOn = vm ? vm.processes.filter((p) => p.running).map((p) => p.host) : [];
    if (r.state === S.MIGRATION_STATE_SUCCEEDED) {
      if (r.pagesVerifiedAfter <= 0) v('outcome', subject, 'SUCCEEDED with 0 pages verified after arrival');
      if (runningOn.length > 0 && !runningOn.includes(r.destination) && !killed.has(r.vm)) v('outcome', subject, `SUCCEEDED but the guest runs on ${runningOn.join(', ')}`);
      if (runningOn.length === 0 && !killed.has(r.vm)) v('outcome', subject, 'SUCCEEDED but the guest runs nowhere');
    } else if (runningOn.includes(r.destination) && !runningOn.includes(r.source) && !killed.has(r.vm)) {
      // A later run may have moved it back: only flag when this run is the VM's latest.
      const later = obs.runs.some((o) => o.vm === r.vm && o !== r && obs.runs.indexOf(o) > obs.runs.indexOf(r));
      if (!later) v('outcome', subject, `${S[r.state]} (${r.error || 'no reason'}) but the guest runs on the destination`);
    }
    if (r.state !== S.MIGRATION_STATE_SUCCEEDED && r.error.trim() === '') v('outcome', subject, `${S[r.state]} without a reason`);
    if (!r.events) {
      v('events', subject, 'no events could be replayed from JetStream');
    } else {
      const seq = r.events.sequences;
      const gap = seq.findIndex((s, i) => s !== i + 1);
      if (gap >= 0) v('events', subject, `run sequence not contiguous at position ${gap + 1}: …${seq.slice(Math.max(0, gap - 2), gap + 2).join(',')}…`);
      if (r.events.completed !== r.state) v('events', subject, `RunCompleted on NATS says ${r.events.completed === undefined ? 'nothing' : S[r.events.completed]}, the store ${S[r.state]}`);
      const a = r.events.transitions.join(',');
      const b = r.storeTransitions.join(',');
      if (a !== b) v('events', subject, `state changes on NATS [${r.events.transitions.map((s) => S[s]).join(' ')}] differ from the store [${r.storeTransitions.map((s) => S[s]).join(' ')}]`);
    }
  }
  for (const p of obs.plans) if (!p.final) v('final-state', `plan ${p.planId}`, `still ${p.state}`);
  for (const l of obs.leftovers) v('leftovers', l.split(':')[0] ?? l, l);
  return out;
}
