/**
 * What `watch` and `--watch` show: a model of the watched runs fed with Watch events, the lines
 * worth printing for each event (state changes, policy actions, completions), the live progress
 * line of a run, and a printer that redraws one line per run in place on a terminal or prints
 * plain lines at a bounded rate otherwise. The model and formatters are pure; the printer writes
 * through an injected function and reads an injected clock.
 */
import { MigrationState, PolicyActionKind, policyActionKindToJSON, vmStateToJSON, type VmState, type GuestPerfSample, type MigrationStats, type PolicyAction, type ProgressSample } from '../../shared/gen/migd/v1/common.js';
import type { Event } from '../../shared/gen/migd/v1/events.js';
import { formatBytes, formatDuration, formatRate, mbpsToBytesPerSec } from '../domain/units.js';
import { progressBar, stateName, truncate } from './format.js';
import { isTerminalState } from '../../shared/policy/states.js';

/** What is known about a run before its events arrive (from the plan or GetRun). */
export interface RunSeed {
  readonly runId: string;
  readonly vmName: string;
  readonly sourceNodeId?: string;
  readonly destinationNodeId?: string;
  readonly state?: MigrationState;
}

/** One watched run as the events so far describe it. */
export interface RunView {
  readonly runId: string;
  vmName: string;
  sourceNodeId: string;
  destinationNodeId: string;
  state: MigrationState;
  progress: ProgressSample | undefined;
  /** The latest guest sample that measured a write pass (ms/GiB > 0). */
  guest: GuestPerfSample | undefined;
  /** Integrity errors in the latest guest sample. */
  integrityErrors: number;
  stats: MigrationStats | undefined;
  errorMessage: string | undefined;
  /** True once a RunCompleted event arrived. */
  completed: boolean;
}

/** The runs a watch follows, updated event by event. */
export class WatchModel {
  private readonly views = new Map<string, RunView>();

  constructor(seeds: readonly RunSeed[] = []) {
    for (const s of seeds) this.seed(s);
  }

  /** Adds (or completes) what is known about a run. */
  seed(s: RunSeed): RunView {
    const v = this.view(s.runId, s.vmName);
    if (s.vmName) v.vmName = s.vmName;
    if (s.sourceNodeId) v.sourceNodeId = s.sourceNodeId;
    if (s.destinationNodeId) v.destinationNodeId = s.destinationNodeId;
    if (s.state !== undefined && v.state === MigrationState.MIGRATION_STATE_UNSPECIFIED) v.state = s.state;
    return v;
  }

  private view(runId: string, vmName = ''): RunView {
    let v = this.views.get(runId);
    if (!v) {
      v = { runId, vmName, sourceNodeId: '', destinationNodeId: '', state: MigrationState.MIGRATION_STATE_UNSPECIFIED, progress: undefined, guest: undefined, integrityErrors: 0, stats: undefined, errorMessage: undefined, completed: false };
      this.views.set(runId, v);
    }
    return v;
  }

  /** Every run seen, in the order first seen. */
  runs(): RunView[] {
    return [...this.views.values()];
  }

  /** A run by id. */
  get(runId: string): RunView | undefined {
    return this.views.get(runId);
  }

  /** True when every run in `runIds` has completed. */
  allCompleted(runIds: readonly string[]): boolean {
    return runIds.every((id) => this.views.get(id)?.completed === true);
  }

  /**
   * Applies one event. Returns the run it concerns (undefined for plan/node/VM events) so the
   * caller can decide what to print.
   */
  apply(ev: Event): RunView | undefined {
    const p = ev.payload;
    switch (p?.$case) {
      case 'runState': {
        const v = this.view(p.value.runId, p.value.vmName);
        if (p.value.vmName) v.vmName = p.value.vmName;
        if (p.value.change && !v.completed) v.state = p.value.change.to;
        return v;
      }
      case 'runProgress': {
        const v = this.view(p.value.runId);
        if (p.value.sample) {
          v.progress = p.value.sample;
          // State events are authoritative; a sample only fills in a state not yet known.
          if (v.state === MigrationState.MIGRATION_STATE_UNSPECIFIED) v.state = p.value.sample.state;
        }
        return v;
      }
      case 'runGuest': {
        const v = this.view(p.value.runId);
        const s = p.value.sample;
        if (s) {
          if (s.msPerGib > 0) v.guest = s;
          v.integrityErrors = Math.max(v.integrityErrors, s.integrityErrors);
        }
        return v;
      }
      case 'runAction':
        return this.view(p.value.runId);
      case 'runCompleted': {
        const v = this.view(p.value.runId, p.value.vmName);
        v.state = p.value.state;
        v.stats = p.value.stats;
        v.errorMessage = p.value.error ? [p.value.error.reason, p.value.error.message].filter((x) => x).join(': ') : undefined;
        v.completed = true;
        return v;
      }
      default:
        return undefined;
    }
  }
}

const route = (v: RunView): string => (v.sourceNodeId || v.destinationNodeId ? ` ${v.sourceNodeId || '?'}→${v.destinationNodeId || '?'}` : '');

/** "set downtime 600 ms", "switched to post-copy"… */
export function describeAction(a: PolicyAction): string {
  switch (a.kind) {
    case PolicyActionKind.POLICY_ACTION_KIND_SET_DOWNTIME:
      return `set downtime limit ${formatDuration(a.value)}`;
    case PolicyActionKind.POLICY_ACTION_KIND_SET_BANDWIDTH:
      return a.value === 0 ? 'removed the bandwidth limit' : `set bandwidth limit ${formatRate(a.value)}`;
    case PolicyActionKind.POLICY_ACTION_KIND_ENABLE_AUTO_CONVERGE:
      return 'enabled auto-converge';
    case PolicyActionKind.POLICY_ACTION_KIND_START_POSTCOPY:
      return 'switched to post-copy';
    case PolicyActionKind.POLICY_ACTION_KIND_PAUSE_GUEST:
      return 'paused the guest to finish';
    case PolicyActionKind.POLICY_ACTION_KIND_ABORT:
      return 'aborted the migration';
    case PolicyActionKind.POLICY_ACTION_KIND_RECOVER:
      return 'started post-copy recovery';
    default: {
      let name: string;
      try {
        name = policyActionKindToJSON(a.kind);
      } catch {
        name = `action ${String(a.kind)}`;
      }
      return `${name}${a.value ? ` ${a.value}` : ''}`;
    }
  }
}

/** "4.2 s, downtime 12 ms, 190.3 MiB in 3 passes, 0 integrity errors". */
export function describeStats(s: MigrationStats | undefined): string {
  if (!s) return '';
  const parts = [formatDuration(s.totalTimeMs), `downtime ${formatDuration(s.downtimeMs)}`, `${formatBytes(s.transferredBytes)} in ${s.passes} pass${s.passes === 1 ? '' : 'es'}`];
  if (s.postcopyRequests > 0) parts.push(`${s.postcopyRequests} post-copy requests`);
  if (s.maxThrottlePct > 0) parts.push(`throttle up to ${s.maxThrottlePct}%`);
  if (s.recoveries > 0) parts.push(`${s.recoveries} recover${s.recoveries === 1 ? 'y' : 'ies'}`);
  if ((s.disksCopied ?? 0) > 0) parts.push(`${s.disksCopied} disk${s.disksCopied === 1 ? '' : 's'} copied (${formatBytes(s.diskTransferredBytes ?? 0)}, storage phase ${formatDuration(s.storageMs ?? 0)})`);
  parts.push(`${s.integrityErrors} integrity errors`);
  const checks = s.checks ?? [];
  if (checks.length > 0) parts.push(`checked on the destination: ${checks.map((c) => (c.passed ? c.name : `${c.name} FAILED`)).join(' ')}`);
  return parts.join(', ');
}

/**
 * The line worth printing for an event, or undefined for samples (they feed the progress line).
 * `v` is the run after the event was applied.
 */
export function describeEvent(ev: Event, v: RunView | undefined): string | undefined {
  const p = ev.payload;
  const who = v ? `${v.vmName || v.runId}${route(v)}` : '';
  switch (p?.$case) {
    case 'runState': {
      const c = p.value.change;
      if (!c) return undefined;
      return `${who}: ${transition(c.from, c.to)}${c.reason ? ` (${c.reason})` : ''}`;
    }
    case 'runAction': {
      const a = p.value.action;
      if (!a) return undefined;
      return `${who}: ${a.actor || 'policy'} ${describeAction(a)}${a.reason ? ` — ${a.reason}` : ''}`;
    }
    case 'runCompleted': {
      const r = p.value;
      const outcome = stateName(r.state).toUpperCase();
      if (r.state === MigrationState.MIGRATION_STATE_SUCCEEDED) return `${who}: ${outcome} in ${describeStats(r.stats)}`;
      const err = r.error ? [r.error.reason, r.error.message].filter((x) => x).join(': ') : '';
      return `${who}: ${outcome}${err ? ` — ${err}` : ''}`;
    }
    case 'planState':
      return `plan ${p.value.planId}: ${p.value.state.replace(/^PLAN_STATE_/, '').toLowerCase()} (${p.value.runsFinished}/${p.value.runsTotal} runs finished)`;
    case 'nodeState':
      return `node ${p.value.nodeId}: ${p.value.up ? 'up' : 'DOWN'}${p.value.reason ? ` (${p.value.reason})` : ''}`;
    case 'vmChanged': {
      const vm = p.value.vm;
      if (!vm) return undefined;
      return `vm ${vm.spec?.name ?? '?'} on ${vm.nodeId || '?'}: ${vmStateName(vm.state)}`;
    }
    default:
      return undefined;
  }
}

function vmStateName(s: VmState): string {
  try {
    return vmStateToJSON(s).replace(/^VM_STATE_/, '').toLowerCase();
  } catch {
    return `state-${String(s)}`;
  }
}

/** "precopy → switchover"; a run's first state has no "from". */
export function transition(from: MigrationState, to: MigrationState): string {
  return from === MigrationState.MIGRATION_STATE_UNSPECIFIED ? `→ ${stateName(to)}` : `${stateName(from)} → ${stateName(to)}`;
}

/** Share of the guest's memory that is no longer outstanding (0..1). */
export function progressFraction(p: ProgressSample | undefined, state: MigrationState): number {
  if (state === MigrationState.MIGRATION_STATE_SUCCEEDED) return 1;
  // The storage copy runs before the memory stream: its bar is the disks' share copied.
  if (p?.storagePhase) return (p.diskTotalBytes ?? 0) > 0 ? Math.max(0, Math.min(1, (p.diskTransferredBytes ?? 0) / p.diskTotalBytes!)) : 0;
  if (!p || p.totalBytes <= 0) return 0;
  return Math.max(0, Math.min(1, 1 - p.remainingBytes / p.totalBytes));
}

/**
 * The live line of a run: VM, route, state, bar, pass, remaining bytes, throughput, dirty rate,
 * throttle, the guest's ms/GiB and the elapsed time. Cut to `width` when given.
 */
export function formatProgressLine(v: RunView, opts: { style: 'ascii' | 'unicode'; width?: number; barWidth?: number } = { style: 'ascii' }): string {
  const p = v.progress;
  const parts = [`${v.vmName || v.runId}${route(v)}`, stateName(v.state).padEnd(9), `${progressBar(progressFraction(p, v.state), opts.barWidth ?? 20, opts.style)} ${String(Math.floor(progressFraction(p, v.state) * 100)).padStart(3)}%`];
  if (v.completed) {
    // The last sample is stale by now: show the outcome instead.
    parts.push(v.state === MigrationState.MIGRATION_STATE_SUCCEEDED ? describeStats(v.stats) : (v.errorMessage ?? ''));
    const done = parts.filter((x) => x).join('  ');
    return opts.width !== undefined ? truncate(done, opts.width) : done;
  }
  if (p?.storagePhase) {
    parts.push(`disks ${formatBytes(p.diskTransferredBytes ?? 0)}/${formatBytes(p.diskTotalBytes ?? 0)}`, formatRate(p.diskRateBytesPerSec ?? 0));
  } else if (p) {
    parts.push(
      `pass ${p.pass}`,
      `remaining ${formatBytes(p.remainingBytes)}`,
      `${formatRate(mbpsToBytesPerSec(p.throughputMbps))}`,
      `dirty ${formatRate(p.dirtyPagesRate * (p.pageSize || 4096))}`,
      `throttle ${p.throttlePct}%`,
    );
    if ((p.diskTotalBytes ?? 0) > 0) parts.push(`disks ${formatBytes(p.diskTransferredBytes ?? 0)}/${formatBytes(p.diskTotalBytes ?? 0)}`);
  }
  if (v.guest) parts.push(`guest ${Math.round(v.guest.msPerGib)} ms/GiB`);
  if (v.integrityErrors > 0) parts.push(`${v.integrityErrors} INTEGRITY ERRORS`);
  if (p) parts.push(formatDuration(p.elapsedMs));
  const line = parts.join('  ');
  return opts.width !== undefined ? truncate(line, opts.width) : line;
}

/** Where the printer writes, and what it knows about the terminal. */
export interface PrinterOutput {
  write(s: string): void;
  readonly isTTY: boolean;
  /** Terminal width (TTY only). */
  readonly columns: number;
  now(): number;
}

/**
 * Prints a watch: notes (state changes, actions, completions) as lines, and each active run's
 * progress — on a terminal as lines at the bottom redrawn in place (at most every `redrawMs`),
 * otherwise as a plain line per run at most every `plainEveryMs` of migration time, and whenever
 * the pass or state changes.
 */
export class ProgressPrinter {
  private footer = 0;
  private lastDraw = -Infinity;
  private readonly lastPlain = new Map<string, ProgressSample>();

  constructor(
    private readonly out: PrinterOutput,
    private readonly opts: { redrawMs?: number; plainEveryMs?: number } = {},
  ) {}

  /** Prints `notes` and refreshes the progress of `runs`. */
  update(notes: readonly string[], runs: readonly RunView[], changed?: RunView): void {
    if (this.out.isTTY) {
      const now = this.out.now();
      if (notes.length === 0 && now - this.lastDraw < (this.opts.redrawMs ?? 100)) return;
      this.lastDraw = now;
      this.clearFooter();
      // Notes are printed above the footer and never redrawn, so the terminal may wrap them.
      for (const n of notes) this.out.write(`${n}\n`);
      this.drawFooter(runs);
      return;
    }
    for (const n of notes) this.out.write(`${n}\n`);
    // Only a new sample makes a new line (a state change alone is a note already).
    if (changed?.progress && !changed.completed) {
      const p = changed.progress;
      const last = this.lastPlain.get(changed.runId);
      if (p !== last && (!last || p.elapsedMs - last.elapsedMs >= (this.opts.plainEveryMs ?? 1000) || p.pass !== last.pass || p.state !== last.state)) {
        this.lastPlain.set(changed.runId, p);
        this.out.write(`${formatProgressLine(changed, { style: 'ascii' })}\n`);
      }
    }
  }

  /** Width of a progress line: one less than the terminal's, so it never wraps. */
  private get width(): number {
    return Math.max(40, (this.out.columns || 100) - 1);
  }

  /**
   * Stops redrawing. Completed runs have said how they ended in a note; runs still going (the
   * watch was interrupted) keep their last progress line on screen.
   */
  finish(runs: readonly RunView[]): void {
    if (!this.out.isTTY) return;
    this.clearFooter();
    for (const v of runs) if (v.progress && !v.completed) this.out.write(`${formatProgressLine(v, { style: 'unicode', width: this.width })}\n`);
  }

  private clearFooter(): void {
    if (this.footer > 0) this.out.write(`\x1b[${this.footer}A\r\x1b[J`);
    this.footer = 0;
  }

  private drawFooter(runs: readonly RunView[]): void {
    const live = runs.filter((v) => !v.completed && (v.progress !== undefined || !isTerminalState(v.state)));
    for (const v of live) this.out.write(`${formatProgressLine(v, { style: 'unicode', width: this.width })}\n`);
    this.footer = live.length;
  }
}
