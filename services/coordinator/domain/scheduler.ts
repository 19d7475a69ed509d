/**
 * The migration queue: which queued migrations may start now without exceeding any concurrency
 * limit.
 *
 * Four limits, all enforced at once:
 *  - per source host (outbound, default 2) and per cluster (default 5): KubeVirt's defaults
 *    (parallelOutboundMigrationsPerNode 2, parallelMigrationsPerCluster 5);
 *  - per destination host (inbound, default 2): an incoming QEMU writes guest memory as fast as the
 *    stream arrives, so inbound streams compete for the destination's NIC and memory bandwidth;
 *  - per migration link, the ordered (source, destination) pair (default 1): two migrations on one
 *    NIC slow each other so much that neither may converge (seed 002: "little point in attempting
 *    to run migrations in parallel on the same host, unless multiple NICs are available").
 *    The link limit counts *streams*: a running migration leaves its link ({@link
 *    MigrationQueue.leftLink}) once its source QEMU reported `completed` (state VERIFYING: every
 *    byte of memory and device state is sent), so the next migration on the link prepares its
 *    destination while the previous one hands its VM over and verifies it (issue 15 §4: the link
 *    idled ~0.5–0.6 s per migration during the handover). The host and cluster limits still count
 *    the run until its end.
 *
 * Held starts (`heldPerLink`, off by default): a queued migration that fits every limit but its
 * link's may start *held* — it takes its source, destination and cluster slots (its destination
 * QEMU and memory exist from then on) and prepares both ends, but does not stream until it is
 * promoted onto its link ({@link MigrationQueue.promote}) when the link's stream slot frees. At
 * most `heldPerLink` migrations are held per link; a held one goes onto its link before any
 * queued one (it is ready to stream). Issue 15 §4: the next migration's preparation (~0.5 s)
 * then overlaps the previous one's stream instead of idling the link.
 *
 * Order: higher priority first, then position in the plan's dispatch order, then first come first
 * served. Equal-priority plans interleave by plan position, so a second drain at the same priority
 * is not stuck behind the whole of the first. A queued item that does not fit now does not block
 * the items behind it (no head-of-line blocking), except that a blocked item reserves the hosts
 * and link it waits for against strictly lower-priority items: otherwise a stream of low-priority
 * work on its destination could starve it forever.
 */
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../../shared/errors.js';

/** Concurrency limits. Each must be a positive integer. */
export interface ConcurrencyLimits {
  /** Running migrations leaving one host. */
  readonly perSource: number;
  /** Running migrations arriving at one host. */
  readonly perDestination: number;
  /**
   * Running migrations on one ordered (source, destination) pair that still stream (before their
   * source QEMU reported `completed`; see {@link MigrationQueue.leftLink}).
   */
  readonly perLink: number;
  /** Running migrations in the whole cluster. */
  readonly perCluster: number;
}

/** Defaults (see the module comment for where each comes from). */
export const DEFAULT_LIMITS: ConcurrencyLimits = Object.freeze({ perSource: 2, perDestination: 2, perLink: 1, perCluster: 5 });

/**
 * Fills and validates limits.
 * @throws InvalidArgumentError naming the limit that is not a positive integer
 */
export function resolveLimits(partial: Partial<ConcurrencyLimits> = {}): ConcurrencyLimits {
  const limits = { ...DEFAULT_LIMITS, ...partial };
  for (const [name, value] of Object.entries(limits)) {
    if (!Number.isInteger(value) || value < 1) throw new InvalidArgumentError(`concurrency limit ${name} must be a positive integer, got ${value}`);
  }
  return Object.freeze(limits);
}

/** One migration waiting for, or holding, a slot. */
export interface QueueItem {
  /** Run id. */
  readonly id: string;
  readonly source: string;
  readonly destination: string;
  /** Higher first (SubmitPlanRequest.priority; default 0). */
  readonly priority?: number | undefined;
  /** Position in its plan's dispatch order (PlannedMigration.order; default 0). */
  readonly order?: number | undefined;
}

/** Queue depth and slot usage. */
export interface QueueSnapshot {
  readonly limits: ConcurrencyLimits;
  readonly queued: number;
  readonly running: number;
  /** Queued ids in dispatch order. */
  readonly queuedIds: readonly string[];
  readonly runningIds: readonly string[];
  /** Running ids whose stream is done (they count against host and cluster limits, not their link). */
  readonly offLinkIds: readonly string[];
  /** Running ids started held: they wait for their link's stream slot (see {@link MigrationQueue.promote}). */
  readonly heldIds: readonly string[];
  readonly outboundByHost: Readonly<Record<string, number>>;
  readonly inboundByHost: Readonly<Record<string, number>>;
  /** Streaming migrations, keyed "source->destination". */
  readonly runningByLink: Readonly<Record<string, number>>;
}

const linkKey = (source: string, destination: string): string => `${source}->${destination}`;

/** Slot counters; `clone` lets nextDispatchable plan without touching the real ones. */
class Usage {
  total = 0;
  readonly out = new Map<string, number>();
  readonly in = new Map<string, number>();
  readonly link = new Map<string, number>();
  /** Held migrations per link. */
  readonly held = new Map<string, number>();

  clone(): Usage {
    const u = new Usage();
    u.total = this.total;
    for (const [k, v] of this.out) u.out.set(k, v);
    for (const [k, v] of this.in) u.in.set(k, v);
    for (const [k, v] of this.link) u.link.set(k, v);
    for (const [k, v] of this.held) u.held.set(k, v);
    return u;
  }

  /** The host or cluster limit `item` would exceed, or undefined when it fits. */
  hostViolation(item: QueueItem, limits: ConcurrencyLimits): string | undefined {
    if (this.total >= limits.perCluster) return `cluster limit ${limits.perCluster}`;
    if ((this.out.get(item.source) ?? 0) >= limits.perSource) return `outbound limit ${limits.perSource} of ${item.source}`;
    if ((this.in.get(item.destination) ?? 0) >= limits.perDestination) return `inbound limit ${limits.perDestination} of ${item.destination}`;
    return undefined;
  }

  /** Whether `item` may start held: it fits every host limit and its link has a held place free. */
  mayHold(item: QueueItem, limits: ConcurrencyLimits, heldPerLink: number): boolean {
    return this.hostViolation(item, limits) === undefined && (this.held.get(linkKey(item.source, item.destination)) ?? 0) < heldPerLink;
  }

  /** The limit `item` would exceed, or undefined when it fits. */
  violation(item: QueueItem, limits: ConcurrencyLimits): string | undefined {
    const host = this.hostViolation(item, limits);
    if (host !== undefined) return host;
    if ((this.link.get(linkKey(item.source, item.destination)) ?? 0) >= limits.perLink) {
      return `link limit ${limits.perLink} of ${linkKey(item.source, item.destination)}`;
    }
    return undefined;
  }

  /** Counts `item` in (1) or out (-1); `link` false leaves its link's count alone. */
  add(item: QueueItem, delta: 1 | -1, link = true): void {
    this.total += delta;
    bump(this.out, item.source, delta);
    bump(this.in, item.destination, delta);
    if (link) this.bumpLink(item, delta);
  }

  bumpLink(item: QueueItem, delta: 1 | -1): void {
    bump(this.link, linkKey(item.source, item.destination), delta);
  }

  bumpHeld(item: QueueItem, delta: 1 | -1): void {
    bump(this.held, linkKey(item.source, item.destination), delta);
  }
}

function bump(m: Map<string, number>, k: string, delta: 1 | -1): void {
  const v = (m.get(k) ?? 0) + delta;
  if (v === 0) m.delete(k);
  else m.set(k, v);
}

interface QueueEntry<T extends QueueItem> {
  readonly item: T;
  /** Arrival number: FIFO among equals. */
  readonly seq: number;
}

/** Higher priority first, then lower plan order, then first come. */
function dispatchOrder(a: QueueEntry<QueueItem>, b: QueueEntry<QueueItem>): number {
  return (b.item.priority ?? 0) - (a.item.priority ?? 0) || (a.item.order ?? 0) - (b.item.order ?? 0) || a.seq - b.seq;
}

/**
 * The queue of one coordinator. Not persisted itself: after a restart the coordinator rebuilds it
 * from the run store (queued runs → enqueue, running runs → enqueue + started).
 */
export class MigrationQueue<T extends QueueItem = QueueItem> {
  readonly limits: ConcurrencyLimits;
  private readonly queued = new Map<string, QueueEntry<T>>();
  /**
   * Queued entries in dispatch order, kept sorted on insertion (binary search) so dispatching
   * from a queue of thousands does not sort it each time; entries that left the queue stay until
   * they make up half of it (`stale`), and are skipped meanwhile.
   */
  private order: QueueEntry<T>[] = [];
  private stale = 0;
  private readonly running = new Map<string, T>();
  /** Running ids that left their link (stream done): their link count is already released. */
  private readonly offLink = new Set<string>();
  /** Running ids started held, in the order they started: they hold no link slot yet. */
  private readonly held = new Set<string>();
  /** How many migrations may be held per link (0: none; see the module comment). */
  readonly heldPerLink: number;
  private readonly usage = new Usage();
  private seq = 0;

  /**
   * @param opts.heldPerLink how many migrations may start held per link (default 0: none)
   * @throws InvalidArgumentError on a limit that is not a positive integer, or a heldPerLink that
   *   is not a non-negative integer
   */
  constructor(limits: Partial<ConcurrencyLimits> = {}, opts: { heldPerLink?: number } = {}) {
    this.limits = resolveLimits(limits);
    const heldPerLink = opts.heldPerLink ?? 0;
    if (!Number.isInteger(heldPerLink) || heldPerLink < 0) throw new InvalidArgumentError(`heldPerLink must be a non-negative integer, got ${heldPerLink}`);
    this.heldPerLink = heldPerLink;
  }

  /**
   * Adds a migration to the queue.
   * @throws AlreadyExistsError when the id is queued or running; InvalidArgumentError when source
   *   and destination are the same node
   */
  enqueue(item: T): void {
    if (this.queued.has(item.id) || this.running.has(item.id)) throw new AlreadyExistsError(`run ${item.id} is already queued or running`);
    if (item.source === item.destination) throw new InvalidArgumentError(`run ${item.id}: source and destination are both "${item.source}"`);
    const entry = { item, seq: this.seq++ };
    this.queued.set(item.id, entry);
    // Insert after every entry that goes first (upper bound), so equal keys keep FIFO order.
    let lo = 0;
    let hi = this.order.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (dispatchOrder(this.order[mid]!, entry) <= 0) lo = mid + 1;
      else hi = mid;
    }
    this.order.splice(lo, 0, entry);
  }

  /** An entry left the queue: drop it from `order` lazily. */
  private leftQueue(): void {
    if (++this.stale <= 64 || this.stale * 2 < this.order.length) return;
    this.order = this.order.filter((e) => this.queued.get(e.item.id) === e);
    this.stale = 0;
  }

  /** Queued items in dispatch order. */
  private *ordered(): Generator<T> {
    for (const e of this.order) if (this.queued.get(e.item.id) === e) yield e.item;
  }

  /**
   * Everything that may start now, in dispatch order, such that starting all of them exceeds no
   * limit. Does not change the queue: call {@link started} for each one actually started. Items
   * `hold` returns true for (e.g. a node of theirs is down) are passed over: they neither start
   * nor keep a slot from the items behind them.
   */
  nextDispatchable(hold: (item: T) => boolean = () => false): T[] {
    return this.plan(hold, false).map((d) => d.item);
  }

  /**
   * As {@link nextDispatchable}, plus the items that may start held (`held: true`; see the module
   * comment): those that fit every limit but their link's, on links with a held place free. Call
   * {@link started}(id, held) for each one actually started.
   */
  nextDispatch(hold: (item: T) => boolean = () => false): { item: T; held: boolean }[] {
    return this.plan(hold, this.heldPerLink > 0);
  }

  private plan(hold: (item: T) => boolean, withHeld: boolean): { item: T; held: boolean }[] {
    const usage = this.usage.clone();
    // Hosts and links a blocked item waits for, with the highest priority waiting on each.
    const claims = new Map<string, number>();
    const claimed = (key: string, priority: number): boolean => (claims.get(key) ?? -Infinity) > priority;
    const claim = (key: string, priority: number): void => {
      claims.set(key, Math.max(claims.get(key) ?? -Infinity, priority));
    };
    const out: { item: T; held: boolean }[] = [];
    if (usage.total >= this.limits.perCluster) return out;
    for (const item of this.ordered()) {
      if (usage.total >= this.limits.perCluster) break;
      if (hold(item)) continue;
      const priority = item.priority ?? 0;
      const keys = [`out:${item.source}`, `in:${item.destination}`, `link:${linkKey(item.source, item.destination)}`];
      if (usage.violation(item, this.limits) !== undefined) {
        // Only its link is busy: it may prepare now and stream when the link frees (held), unless
        // a higher-priority item waits for one of its hosts.
        if (withHeld && usage.mayHold(item, this.limits, this.heldPerLink) && !keys.slice(0, 2).some((k) => claimed(k, priority))) {
          usage.add(item, 1, false);
          usage.bumpHeld(item, 1);
          out.push({ item, held: true });
          continue;
        }
        for (const k of keys) claim(k, priority);
        continue;
      }
      if (keys.some((k) => claimed(k, priority))) continue;
      usage.add(item, 1);
      out.push({ item, held: false });
    }
    return out;
  }

  /**
   * Marks a queued migration as running.
   * @throws NotFoundError when it is not queued; FailedPreconditionError when starting it would
   *   exceed a limit (the message names which)
   */
  started(id: string, held = false): T {
    const entry = this.queued.get(id);
    if (!entry) throw new NotFoundError(this.running.has(id) ? `run ${id} is already running` : `run ${id} is not queued`);
    if (held) {
      const violation = this.usage.hostViolation(entry.item, this.limits);
      if (violation !== undefined) throw new FailedPreconditionError(`run ${id} cannot start now: it would exceed the ${violation}`, { reason: 'CONCURRENCY_LIMIT' });
      if (!this.usage.mayHold(entry.item, this.limits, this.heldPerLink)) {
        throw new FailedPreconditionError(`run ${id} cannot start held: link ${linkKey(entry.item.source, entry.item.destination)} has ${this.heldPerLink} held already`, { reason: 'CONCURRENCY_LIMIT' });
      }
    } else {
      const violation = this.usage.violation(entry.item, this.limits);
      if (violation !== undefined) throw new FailedPreconditionError(`run ${id} cannot start now: it would exceed the ${violation}`, { reason: 'CONCURRENCY_LIMIT' });
    }
    this.queued.delete(id);
    this.leftQueue();
    this.running.set(id, entry.item);
    this.usage.add(entry.item, 1, !held);
    if (held) {
      this.held.add(id);
      this.usage.bumpHeld(entry.item, 1);
    }
    return entry.item;
  }

  /**
   * Puts held migrations onto their links where a stream slot is free (oldest held first): each
   * returned one now holds its link slot, and may stream. Call it before dispatching queued
   * items, so a held migration goes first on its link. `busy` links are passed over.
   */
  promote(busy: (item: T) => boolean = () => false): T[] {
    const out: T[] = [];
    for (const id of this.held) {
      const item = this.running.get(id)!;
      if (busy(item) || (this.usage.link.get(linkKey(item.source, item.destination)) ?? 0) >= this.limits.perLink) continue;
      this.held.delete(id);
      this.usage.bumpHeld(item, -1);
      this.usage.bumpLink(item, 1);
      out.push(item);
    }
    return out;
  }

  /** Whether `id` runs held (started held, not promoted yet). */
  isHeld(id: string): boolean {
    return this.held.has(id);
  }

  /**
   * A running migration's stream is done (its source QEMU reported `completed`): it releases its
   * link slot, so the next migration on the link may start, and keeps its source, destination
   * and cluster slots until {@link finished} (the handover and verification still load both
   * hosts, and the destination holds the VM's memory from now on either way).
   * @returns false when it had already left its link
   * @throws NotFoundError when it is not running
   */
  leftLink(id: string): boolean {
    const item = this.running.get(id);
    if (!item) throw new NotFoundError(`run ${id} is not running`);
    if (this.offLink.has(id) || this.held.has(id)) return false;
    this.offLink.add(id);
    this.usage.bumpLink(item, -1);
    return true;
  }

  /**
   * Releases a running migration's slots (it succeeded, failed or was cancelled).
   * @throws NotFoundError when it is not running
   */
  finished(id: string): T {
    const item = this.running.get(id);
    if (!item) throw new NotFoundError(`run ${id} is not running`);
    this.running.delete(id);
    const held = this.held.delete(id);
    if (held) this.usage.bumpHeld(item, -1);
    this.usage.add(item, -1, !this.offLink.delete(id) && !held);
    return item;
  }

  /**
   * Cancels a migration: a queued one leaves the queue ("dequeued"); a running one keeps its slots
   * until the node reports it cancelled and {@link finished} is called ("running").
   * @throws NotFoundError when it is neither queued nor running
   */
  cancel(id: string): 'dequeued' | 'running' {
    if (this.queued.delete(id)) {
      this.leftQueue();
      return 'dequeued';
    }
    if (this.running.has(id)) return 'running';
    throw new NotFoundError(`run ${id} is neither queued nor running`);
  }

  /** Whether `id` is queued or running. */
  status(id: string): 'queued' | 'running' | undefined {
    return this.queued.has(id) ? 'queued' : this.running.has(id) ? 'running' : undefined;
  }

  snapshot(): QueueSnapshot {
    return {
      limits: this.limits,
      queued: this.queued.size,
      running: this.running.size,
      queuedIds: [...this.ordered()].map((i) => i.id),
      runningIds: [...this.running.keys()],
      offLinkIds: [...this.offLink],
      heldIds: [...this.held],
      outboundByHost: Object.fromEntries(this.usage.out),
      inboundByHost: Object.fromEntries(this.usage.in),
      runningByLink: Object.fromEntries(this.usage.link),
    };
  }
}
