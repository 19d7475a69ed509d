/**
 * The adaptive policy's one decision before the start: compress the stream (multifd + zstd) or
 * keep post-copy available. QEMU fixes capabilities before the migration starts and refuses
 * multifd together with post-copy (FACTS.md), so the choice cannot wait for the first pass.
 *
 * ## Model
 * With dirty rate D, the fraction c of a page's bytes that zstd leaves on the wire, and link rate
 * B, compressed pre-copy behaves like plain pre-copy with D·c against B: r = D·c / B. Its first
 * pass sends the guest's memory M in ≈ M·c / B (zero pages cost nothing, so this is an upper
 * bound); the backlog at its end is ≈ D·c·T1 / B of transfer, shrinking by r per pass.
 *
 * **Compressed** (multifd zstd) is chosen when the memory is known to compress (c < 0.8) and, at
 * the link rate:
 *  - r ≤ `maxRatio` (0.5: the backlog halves each pass at least, so noise in the estimates does
 *    not turn a convergence into a stall);
 *  - the backlog fits the downtime limit within `convergeWithinPasses` passes (as the adaptive
 *    policy itself predicts);
 *  - the whole pre-copy (T1 / (1 − r)) fits the completion budget;
 *  - the channels can compress D (zstd throughput per channel, conservative for a shared host).
 *
 * **A quiet guest** gets multifd zstd too, whatever its memory's compressibility: r ≤
 * `quietMaxRatio` (0.2) at c = 1 (as if nothing compressed) and the backlog fits the limit at the
 * end of the first pass or the next (`quietWithinPasses`), within the budget, where the channels
 * can compress at the link's rate. Its migration is one long bulk pass of the whole memory, and
 * the whole memory (kernel, page cache, free pages not yet zero) compresses in part even where
 * the guest's own data does not: idle, 1 GiB whose 512 MiB workload region is random, at 720
 * Mbit/s (docs/lab/policies-720-idle): multifd zstd 555 MB on the wire and 6.6 s, plain multifd
 * 611 MB and 7.2 s, plain pre-copy (post-copy kept available) 611 MB and 7.2 s. What it gives up
 * is post-copy, so the bar is much tighter than for a compressible guest: one that turns busy
 * mid-migration meets the steps the adaptive policy has without post-copy (a bounded raise,
 * auto-converge, the timeout action).
 *
 * Otherwise post-copy stays available (the adaptive policy's usual steps). An unknown dirty rate
 * means post-copy: it is the safe default where the guest's writes are unknown.
 *
 * ## Evidence (the caller gathers it, most specific first)
 * - dirty rate: the largest of the source's calc-dirty-rate estimates (page sampling during the
 *   pre-copy of earlier adaptive migrations of the same VM, recorded in their samples: this run's
 *   own are measured only once its stream runs, after this choice), QEMU's own rate from their
 *   later passes, and the rate the VM's migd workload is configured to write (workers × rate;
 *   unlimited = unknown);
 * - compressibility: the wire bytes ÷ page bytes of an earlier multifd-compressed migration of the
 *   same VM, else the workload's known content (migd's compressible pattern: measured 20 MiB on
 *   the wire for 313 MiB of pages, docs/lab/policies-720-v2, taken as 0.1; random bytes: 1);
 * - link rate: the policy's bandwidth cap, else the median pre-copy throughput of earlier
 *   migrations of the VM, else `assumedLinkBytesPerSec` (100 Mbit/s: the slowest link migd is run
 *   on; a faster link only makes pre-copy converge sooner).
 */
import { MigrationPolicy, MultifdCompression, PolicyKind, WorkloadPattern, type ProgressSample, type WorkloadSpec } from '../../../shared/gen/migd/v1/common.js';
import { formatBytes, formatDuration, formatRate } from '../units.js';
import { dirtyBytesPerSec, isPrecopy, median, throughputBytesPerSec } from './signals.js';

/** One figure and where it came from (for the reason). */
export interface Evidence {
  readonly value: number;
  readonly source: string;
}

export interface TransportEvidence {
  readonly memoryBytes: number;
  readonly dirtyBytesPerSec?: Evidence | undefined;
  /** Wire bytes ÷ page bytes under multifd zstd (1 = incompressible). */
  readonly compressedFraction?: Evidence | undefined;
  readonly linkBytesPerSec?: Evidence | undefined;
  readonly downtimeLimitMs: number;
  /** The policy's completion budget (ms); undefined: none. */
  readonly completionBudgetMs?: number | undefined;
  /** multifd channels that would be used. */
  readonly channels: number;
}

export interface TransportTuning {
  readonly maxRatio: number;
  readonly convergeWithinPasses: number;
  /** zstd (level 1) throughput one channel is counted on, uncompressed bytes per second. */
  readonly zstdBytesPerSecPerChannel: number;
  /** The link rate assumed when nothing is known. */
  readonly assumedLinkBytesPerSec: number;
  /** A quiet guest: the largest r = D / B (nothing compressed). */
  readonly quietMaxRatio: number;
  /** A quiet guest: the backlog fits the limit at the end of pass 1 or within this many more. */
  readonly quietWithinPasses: number;
}

export const DEFAULT_TRANSPORT_TUNING: TransportTuning = Object.freeze({
  maxRatio: 0.5,
  convergeWithinPasses: 5,
  zstdBytesPerSecPerChannel: 100 * 1024 * 1024,
  assumedLinkBytesPerSec: 12_500_000,
  quietMaxRatio: 0.2,
  quietWithinPasses: 1,
});

export interface TransportChoice {
  readonly compress: boolean;
  readonly reason: string;
  /** The predicted compressed pre-copy (when the figures were known). */
  readonly predicted?: { readonly ratio: number; readonly firstPassMs: number; readonly backlogMs: number; readonly passes: number; readonly totalMs: number };
}

/** Pre-copy over the link with D·c against B (see the module comment). */
function predictPrecopy(e: TransportEvidence, d: number, c: number, b: number) {
  const ratio = (d * c) / b;
  const firstPassMs = ((e.memoryBytes * c) / b) * 1000;
  const backlogMs = firstPassMs * ratio;
  const passes = backlogMs <= e.downtimeLimitMs ? 0 : ratio > 0 && ratio < 1 ? Math.ceil(Math.log(e.downtimeLimitMs / backlogMs) / Math.log(ratio)) : Infinity;
  const totalMs = ratio < 1 ? firstPassMs / (1 - ratio) : Infinity;
  return { ratio, firstPassMs, backlogMs, passes, totalMs };
}

/** See the module comment. */
export function chooseTransport(e: TransportEvidence, tuning: Partial<TransportTuning> = {}): TransportChoice {
  const t = { ...DEFAULT_TRANSPORT_TUNING, ...tuning };
  const keep = (why: string): TransportChoice => ({ compress: false, reason: `post-copy kept available: ${why}` });
  if (!e.dirtyBytesPerSec || !(e.dirtyBytesPerSec.value >= 0) || !Number.isFinite(e.dirtyBytesPerSec.value)) return keep('the dirty rate is not known before the start');
  const link = e.linkBytesPerSec ?? { value: t.assumedLinkBytesPerSec, source: `assumed: ${formatRate(t.assumedLinkBytesPerSec)}, nothing measured` };
  const d = e.dirtyBytesPerSec.value;
  const b = link.value;
  const cpu = Math.max(1, e.channels) * t.zstdBytesPerSecPerChannel;
  const exceeds = (totalMs: number) => e.completionBudgetMs !== undefined && totalMs > e.completionBudgetMs;
  const known = e.compressedFraction !== undefined && e.compressedFraction.value > 0;
  const c = known ? Math.min(1, e.compressedFraction!.value) : 1;
  if (!known || c >= 0.8) {
    // Nothing is known to compress: compression only for a quiet guest (see the module comment).
    const content = known ? `the memory does not compress (${Math.round(c * 100)}% left on the wire, ${e.compressedFraction!.source})` : 'the memory\'s compressibility is not known';
    const figures = `dirty ${formatRate(d)} (${e.dirtyBytesPerSec.source}), link ${formatRate(b)} (${link.source})`;
    const predicted = predictPrecopy(e, d, 1, b);
    const sums = `r = ${predicted.ratio.toFixed(2)} uncompressed, first pass ≈${formatDuration(predicted.firstPassMs)}, then a backlog of ≈${formatDuration(predicted.backlogMs)}`;
    if (predicted.ratio > t.quietMaxRatio) return { ...keep(`${content}, and the guest is not quiet: ${figures}, ${sums} (a quiet guest has r ≤ ${t.quietMaxRatio})`), predicted };
    if (predicted.passes > t.quietWithinPasses) return { ...keep(`${content}; ${figures}: ${sums} needs ${predicted.passes} passes to fit ${e.downtimeLimitMs} ms`), predicted };
    if (exceeds(predicted.totalMs)) return { ...keep(`${content}; ${figures}: ≈${formatDuration(predicted.totalMs)} of pre-copy exceeds the ${formatDuration(e.completionBudgetMs!)} budget`), predicted };
    if (b > cpu) return { ...keep(`${content}; ${figures}: ${e.channels} channel(s) cannot compress at the link's rate`), predicted };
    return {
      compress: true,
      predicted,
      reason: `multifd with zstd (${e.channels} channels), post-copy off: a quiet guest, ${figures}; ${sums}, within ${e.downtimeLimitMs} ms after ${predicted.passes} more pass(es), ≈${formatDuration(predicted.totalMs)} in all for ${formatBytes(e.memoryBytes)} at most (${content}: its bulk pass takes what compresses)`,
    };
  }
  const figures = `dirty ${formatRate(d)} (${e.dirtyBytesPerSec.source}), ${Math.round(c * 100)}% of it on the wire after zstd (${e.compressedFraction!.source}), link ${formatRate(b)} (${link.source})`;
  if (d > cpu) return keep(`${figures}: ${e.channels} channel(s) cannot compress ${formatRate(d)}`);
  const predicted = predictPrecopy(e, d, c, b);
  const { ratio, passes, totalMs } = predicted;
  const sums = `r = ${ratio.toFixed(2)}, first pass ≈${formatDuration(predicted.firstPassMs)}, then a backlog of ≈${formatDuration(predicted.backlogMs)}`;
  if (ratio > t.maxRatio) return { ...keep(`${figures}: compressed pre-copy would not converge safely (${sums}; needs r ≤ ${t.maxRatio})`), predicted };
  if (passes > t.convergeWithinPasses) return { ...keep(`${figures}: ${sums} needs ${passes} passes to fit ${e.downtimeLimitMs} ms`), predicted };
  if (exceeds(totalMs)) return { ...keep(`${figures}: ≈${formatDuration(totalMs)} of compressed pre-copy exceeds the ${formatDuration(e.completionBudgetMs!)} budget`), predicted };
  return {
    compress: true,
    predicted,
    reason: `multifd with zstd (${e.channels} channels), post-copy off: ${figures}; ${sums}, within ${e.downtimeLimitMs} ms after ${passes} more pass(es), ≈${formatDuration(totalMs)} in all for ${formatBytes(e.memoryBytes)}`,
  };
}

/** An earlier migration of the same VM, as the history store holds it. */
export interface PastMigration {
  readonly policy: MigrationPolicy | undefined;
  readonly succeeded: boolean;
  readonly samples: readonly ProgressSample[];
  readonly transferredBytes: number;
}

/** migd's compressible workload pattern: 20 MiB on the wire for 313 MiB of pages (lab), rounded up. */
export const COMPRESSIBLE_PATTERN_FRACTION = 0.1;

/** The dirty rate a migd workload is configured to write (bytes/s); undefined when unlimited. */
function configuredDirtyRate(w: WorkloadSpec | undefined): number | undefined {
  if (!w || w.pattern === WorkloadPattern.WORKLOAD_PATTERN_UNSPECIFIED) return undefined;
  const workers = Math.max(1, w.workers);
  if (w.pattern === WorkloadPattern.WORKLOAD_PATTERN_IDLE) return 0;
  if (w.rateBytesPerSec <= 0) return undefined;
  // A phase change to unlimited (0) makes the rate unknown; a limited phase counts at its rate.
  if (w.phaseAfterMs > 0 && w.phaseRateBytesPerSec <= 0) return undefined;
  return workers * Math.max(w.rateBytesPerSec, w.phaseAfterMs > 0 ? w.phaseRateBytesPerSec : 0);
}

const compressedMultifd = (p: MigrationPolicy | undefined): boolean =>
  (p?.multifd?.enabled ?? false) && p?.multifd?.compression !== undefined && p.multifd.compression !== MultifdCompression.MULTIFD_COMPRESSION_NONE && p.multifd.compression !== MultifdCompression.MULTIFD_COMPRESSION_UNSPECIFIED;

/**
 * The evidence for {@link chooseTransport} from what the coordinator knows before the start: the
 * VM's workload spec (migd's own workloads), its earlier migrations (newest first) and the policy.
 */
export function transportEvidence(o: { memoryBytes: number; policy: MigrationPolicy; workload?: WorkloadSpec | undefined; history: readonly PastMigration[]; completionBudgetMs?: number | undefined; channels?: number }): TransportEvidence {
  const dirty: Evidence[] = [];
  const conf = configuredDirtyRate(o.workload);
  if (conf !== undefined) dirty.push({ value: conf, source: 'the VM\'s workload as configured' });
  const throughputs: number[] = [];
  let compressed: Evidence | undefined;
  for (const [i, m] of o.history.entries()) {
    const estimate = Math.max(0, ...m.samples.map((s) => s.estimatedDirtyBytesPerSec));
    if (estimate > 0) dirty.push({ value: estimate, source: `calc-dirty-rate in migration ${i + 1} back` });
    // QEMU's own rate from pass 3 on (the first passes read low, see adaptive.ts).
    const late = m.samples.filter((s) => s.pass >= 3 && isPrecopy(s)).map((s) => dirtyBytesPerSec(s));
    if (late.length > 0) dirty.push({ value: median(late), source: `QEMU's rate in migration ${i + 1} back` });
    const bw = m.samples.filter((s) => isPrecopy(s) && s.throughputMbps > 0).map((s) => throughputBytesPerSec(s));
    if (bw.length > 0) throughputs.push(median(bw));
    if (!compressed && m.succeeded && compressedMultifd(m.policy)) {
      const last = m.samples.filter((s) => s.totalBytes > 0).at(-1);
      const pages = last ? last.totalBytes - last.duplicatePages * (last.pageSize || 4096) : 0;
      if (pages > 0 && m.transferredBytes > 0) compressed = { value: m.transferredBytes / pages, source: `migration ${i + 1} back, multifd-compressed` };
    }
  }
  if (!compressed && o.workload) {
    if (o.workload.pattern === WorkloadPattern.WORKLOAD_PATTERN_COMPRESSIBLE) compressed = { value: COMPRESSIBLE_PATTERN_FRACTION, source: 'the workload writes compressible pages' };
    else if (o.workload.pattern === WorkloadPattern.WORKLOAD_PATTERN_RANDOM || o.workload.pattern === WorkloadPattern.WORKLOAD_PATTERN_HOTCOLD) compressed = { value: 1, source: 'the workload writes random bytes' };
  }
  const top = dirty.reduce<Evidence | undefined>((a, x) => (!a || x.value > a.value ? x : a), undefined);
  // An unlimited workload with no measurement: unknown, whatever else says less.
  const unlimited = o.workload && conf === undefined && o.workload.pattern !== WorkloadPattern.WORKLOAD_PATTERN_UNSPECIFIED && dirty.length === 0;
  const cap = o.policy.maxBandwidthBytesPerSec;
  const link: Evidence | undefined = cap > 0 ? { value: cap, source: 'the policy\'s bandwidth cap' } : throughputs.length > 0 ? { value: median(throughputs), source: `median pre-copy throughput of ${throughputs.length} earlier migration(s)` } : undefined;
  return {
    memoryBytes: o.memoryBytes,
    dirtyBytesPerSec: unlimited ? undefined : top,
    compressedFraction: compressed,
    linkBytesPerSec: link,
    downtimeLimitMs: o.policy.downtimeLimitMs || 300,
    completionBudgetMs: o.completionBudgetMs,
    channels: o.channels ?? 2,
  };
}

/** The request's policy with multifd zstd on (the factory then leaves post-copy out). */
export function withCompression(p: MigrationPolicy, channels = 2): MigrationPolicy {
  return MigrationPolicy.fromPartial({ ...p, multifd: { enabled: true, channels, compression: MultifdCompression.MULTIFD_COMPRESSION_ZSTD }, postcopy: undefined });
}

/** Whether the pre-start choice applies: an adaptive policy that may still choose its transport. */
export function transportChoosable(p: MigrationPolicy | undefined): boolean {
  if (!p || p.kind !== PolicyKind.POLICY_KIND_ADAPTIVE) return false;
  // The user chose already: multifd or xbzrle set, or post-copy explicitly off.
  if (p.multifd !== undefined || p.xbzrle?.enabled) return false;
  return true;
}
