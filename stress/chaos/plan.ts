/**
 * What a campaign does, drawn from its seed before anything runs: per step, the migration (one
 * VM, two at once, or a drain), its mode, the link, the fault, the moment it lands and how long it
 * lasts. Every step draws the same number of values whatever it picks, so step i is the same for
 * a seed however many steps run and wherever the replay starts (`--from-step`). Pure.
 */
import { createRng, type Rng } from './prng.js';

/** Every fault the campaign injects. */
export const FAULT_KINDS = [
  'kill-coordinator',
  'kill-source-daemon',
  'kill-destination-daemon',
  'kill-nats',
  'kill-source-qemu',
  'kill-destination-qemu',
  'cut-migration-link',
  'cut-migration-link-for-good',
  'migration-link-loss',
  'cut-management-link',
  'coordinator-disk-full',
  'sigstop-node-daemon',
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/** Migration modes the campaign cycles through. */
export const MODES = ['pre-copy', 'auto-converge', 'post-copy-preempt', 'xbzrle', 'multifd'] as const;
export type Mode = (typeof MODES)[number];

/** Whether a fault destroys a guest by design (then FAILED with a reason is a correct outcome). */
export function destroysGuest(kind: FaultKind): boolean {
  return kind === 'kill-source-qemu' || kind === 'kill-destination-qemu';
}

export interface StepSpec {
  /** 0-based step number. */
  readonly index: number;
  /** One VM, two VMs at once, or every VM of the source host. */
  readonly action: 'migrate' | 'migrate-two' | 'drain';
  /** Picks the VM(s): index modulo the VMs available. */
  readonly vmSlot: number;
  readonly mode: Mode;
  /** Migration link rate (both directions). */
  readonly rateMbit: number;
  readonly fault: FaultKind;
  /** Delay from the plan's submission to the fault. */
  readonly faultAtMs: number;
  /** How long a temporary fault lasts (cut, loss, management cut, disk full, SIGSTOP). */
  readonly durationMs: number;
  /** Loss for migration-link-loss. */
  readonly lossPct: number;
  /** Which node a management cut or SIGSTOP hits. */
  readonly side: 'source' | 'destination';
  /** A second fault in the same step (injected when the campaign runs two faults per step). */
  readonly second: FaultDraw;
}

/** One fault of a step. */
export interface FaultDraw {
  readonly fault: FaultKind;
  readonly faultAtMs: number;
  readonly durationMs: number;
  readonly lossPct: number;
  readonly side: 'source' | 'destination';
}

/** The campaign's bounds on random choices. */
export interface PlanLimits {
  /** Latest fault moment after submission (ms). Default 7000. */
  readonly maxFaultAtMs?: number;
  /** Shortest and longest temporary fault (ms). Default 1000..8000. */
  readonly minDurationMs?: number;
  readonly maxDurationMs?: number;
  /** Restrict the faults drawn (default: all). */
  readonly faults?: readonly FaultKind[];
}

function drawStep(rng: Rng, index: number, limits: PlanLimits): StepSpec {
  const faults = limits.faults && limits.faults.length > 0 ? limits.faults : FAULT_KINDS;
  // Fixed draw order and count: keep it so for replayability.
  const actionRoll = rng.next();
  const vmSlot = rng.int(0, 9999);
  const mode = rng.pick(MODES);
  const rateMbit = rng.int(70, 180);
  const fault = rng.pick(faults);
  const faultAtMs = rng.int(0, limits.maxFaultAtMs ?? 7000);
  const durationMs = rng.int(limits.minDurationMs ?? 1000, limits.maxDurationMs ?? 8000);
  const lossPct = rng.int(5, 40);
  const side = rng.chance(0.5) ? 'source' : 'destination';
  const second: FaultDraw = {
    fault: rng.pick(faults),
    faultAtMs: rng.int(0, limits.maxFaultAtMs ?? 7000),
    durationMs: rng.int(limits.minDurationMs ?? 1000, limits.maxDurationMs ?? 8000),
    lossPct: rng.int(5, 40),
    side: rng.chance(0.5) ? 'source' : 'destination',
  };
  const action = actionRoll < 0.2 ? 'drain' : actionRoll < 0.4 ? 'migrate-two' : 'migrate';
  return { index, action, vmSlot, mode, rateMbit, fault, faultAtMs, durationMs, lossPct, side, second };
}

/** Steps `from` .. `from + count - 1` of the campaign with `seed`. */
export function planSteps(seed: number, count: number, from = 0, limits: PlanLimits = {}): StepSpec[] {
  if (!Number.isInteger(seed) || seed < 0) throw new RangeError(`seed must be a non-negative integer, got ${seed}`);
  const rng = createRng(seed);
  const out: StepSpec[] = [];
  for (let i = 0; i < from + count; i++) {
    const s = drawStep(rng, i, limits);
    if (i >= from) out.push(s);
  }
  return out;
}

/** The command that replays a campaign (or one step of it). */
export function replayCommand(seed: number, opts: { fromStep?: number; faults?: number; perStep?: number; onlyFaults?: readonly FaultKind[] } = {}): string {
  const parts = ['npm run chaos --', `--seed ${seed}`];
  if (opts.fromStep !== undefined && opts.fromStep > 0) parts.push(`--from-step ${opts.fromStep}`);
  if (opts.faults !== undefined) parts.push(`--faults ${opts.faults}`);
  if (opts.perStep !== undefined && opts.perStep !== 1) parts.push(`--per-step ${opts.perStep}`);
  if (opts.onlyFaults && opts.onlyFaults.length > 0) parts.push(`--only ${opts.onlyFaults.join(',')}`);
  return parts.join(' ');
}
