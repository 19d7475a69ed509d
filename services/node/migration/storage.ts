/**
 * Copying LOCAL disks during a live migration, as libvirt does (`--copy-storage-all`, see
 * docs/storage-migration.md):
 *
 * - the destination exports an empty sparse target per disk (same virtual size and format) from
 *   its paused `-incoming defer` QEMU over NBD, on its migration address (TLS when the migration
 *   uses TLS: the same credentials and the same authz of the source's certificate);
 * - the source attaches each export as an NBD node and mirrors its disk into it with
 *   `blockdev-mirror` (`sync: full`, or `sync: top` for an overlay whose base the destination has),
 *   `discard: unmap` so sparse regions stay sparse;
 * - the memory migration starts only once every mirror is READY; the mirrors then keep the targets
 *   in sync with the guest's writes;
 * - once the source's guest is stopped for good (QEMU `completed` in pre-copy, `postcopy-active`
 *   in post-copy) each mirror is ended with `block-job-cancel` — a READY mirror drains and ends
 *   with BLOCK_JOB_COMPLETED, without pivoting; never `job-complete`, which would switch the source
 *   onto the NBD target — and the NBD nodes are removed;
 * - only then does the destination stop its NBD server and resume the guest.
 *
 * A failure or cancel before that cancels the mirrors (force) and removes the NBD nodes; the
 * destination's QEMU, exports and target images go with AbortIncoming.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { CancelledError, FailedPreconditionError, UnavailableError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { QmpClient } from '../qmp/client.js';
import { diskNodeName } from '../vm/cmdline.js';

/** QEMU's id of the mirror job of disk `id`. */
export const mirrorJobId = (id: string): string => `mirror-${id}`;
/** QEMU's node name of the NBD target of disk `id` on the source. */
export const nbdNodeName = (id: string): string => `nbd-${id}`;

export interface MirrorDisk {
  readonly id: string;
  /** NBD export name on the destination. */
  readonly export: string;
  /** Mirror only the overlay (`sync: top`): the destination has the same base. */
  readonly incremental: boolean;
  /** Allocated bytes of the source image when the copy started. */
  readonly allocatedBytes: number;
}

export interface DiskProgress {
  /** Sum of the mirror jobs' offsets (bytes copied, zeroed ranges included). */
  readonly transferredBytes: number;
  /** Sum of their lengths (grows while the guest writes). */
  readonly totalBytes: number;
  /** Copy rate over the last reading, bytes per second. */
  readonly rateBytesPerSec: number;
  /** Every mirror is READY. */
  readonly ready: boolean;
}

interface BlockJobInfo {
  device: string;
  offset: number;
  len: number;
  ready?: boolean;
  status?: string;
}

export interface SourceStorageOptions {
  /** The destination's registered migration address and its NBD port. */
  readonly host: string;
  readonly port: number;
  readonly tlsCredsId?: string;
  readonly tlsHostname?: string;
  /** `copy-mode: write-blocking` (guest writes wait for the destination) instead of background. */
  readonly writeBlocking: boolean;
  /** No byte copied for this long (ms) while not READY: the link is presumed down. */
  readonly stallMs: number;
  readonly log: Logger;
}

/** The source's half of a storage copy: one mirror per LOCAL disk. */
export class SourceStorage {
  private started = false;
  private last: { at: number; transferred: number; rate: number } | undefined;
  private readonly final = new Map<string, { offset: number; len: number }>();
  readonly startedAtMs = Date.now();
  readyAtMs: number | undefined;

  constructor(
    private readonly qmp: QmpClient,
    readonly disks: readonly MirrorDisk[],
    private readonly o: SourceStorageOptions,
  ) {}

  /** Bytes allocated in the source images (what the copy can send at most). */
  get allocatedBytes(): number {
    return this.disks.reduce((a, d) => a + d.allocatedBytes, 0);
  }

  /**
   * Attaches each NBD export and starts its mirror.
   * @throws QmpCommandError when QEMU refuses (e.g. the export cannot be reached)
   */
  async start(): Promise<void> {
    this.started = true;
    for (const d of this.disks) {
      await this.qmp.execute('blockdev-add', {
        driver: 'nbd',
        'node-name': nbdNodeName(d.id),
        // unmap: zero ranges travel as NBD WRITE_ZEROES that may punch holes (sparse stays sparse)
        discard: 'unmap',
        server: { type: 'inet', host: this.o.host, port: String(this.o.port) },
        export: d.export,
        ...(this.o.tlsCredsId ? { 'tls-creds': this.o.tlsCredsId, 'tls-hostname': this.o.tlsHostname ?? 'migd-node' } : {}),
      } as never);
      await this.qmp.execute('blockdev-mirror', {
        'job-id': mirrorJobId(d.id),
        device: diskNodeName(d.id),
        target: nbdNodeName(d.id),
        sync: d.incremental ? 'top' : 'full',
        'copy-mode': this.o.writeBlocking ? 'write-blocking' : 'background',
      } as never);
    }
  }

  private async jobs(): Promise<BlockJobInfo[]> {
    const all = (await this.qmp.execute('query-block-jobs', undefined, { timeoutMs: 5000 })) as BlockJobInfo[];
    const ids = new Set(this.disks.map((d) => mirrorJobId(d.id)));
    return all.filter((j) => ids.has(j.device));
  }

  /** The mirrors' progress now (jobs that ended count with their final figures). */
  async progress(): Promise<DiskProgress> {
    const jobs = await this.jobs();
    let transferred = 0;
    let total = 0;
    let ready = jobs.length === this.disks.length;
    for (const d of this.disks) {
      const j = jobs.find((x) => x.device === mirrorJobId(d.id)) ?? this.final.get(mirrorJobId(d.id));
      if (!j) continue;
      transferred += j.offset;
      total += j.len;
      if ('ready' in j && !j.ready) ready = false;
    }
    const now = Date.now();
    let rate = this.last?.rate ?? 0;
    if (this.last && now - this.last.at >= 200) rate = Math.max(0, ((transferred - this.last.transferred) * 1000) / (now - this.last.at));
    if (!this.last || now - this.last.at >= 200) this.last = { at: now, transferred, rate };
    return { transferredBytes: transferred, totalBytes: total, rateBytesPerSec: Math.round(rate), ready };
  }

  /**
   * Resolves once every mirror is READY. Calls `onProgress` every `intervalMs`.
   * @throws CancelledError when `signal` fires; UnavailableError (STORAGE_COPY_STALLED) when no
   *   byte moved for `stallMs`; FailedPreconditionError (STORAGE_COPY_FAILED) when a mirror fails
   */
  async waitReady(signal: AbortSignal, intervalMs: number, onProgress: (p: DiskProgress) => void): Promise<void> {
    const pending = new Set(this.disks.map((d) => mirrorJobId(d.id)));
    const events = this.qmp.events({ names: ['BLOCK_JOB_READY', 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED', 'BLOCK_JOB_ERROR'], signal });
    let failure: Error | undefined;
    // The last READY (or a failure) ends the wait at once, not at the next reading: the memory
    // migration starts up to `intervalMs` sooner, and the storage phase is timed to the event.
    const wake = new AbortController();
    const watch = (async (): Promise<void> => {
      try {
        for await (const ev of events) {
          const dev = String(ev.data?.['device'] ?? '');
          if (!pending.has(dev) && ev.event === 'BLOCK_JOB_READY') continue;
          if (ev.event === 'BLOCK_JOB_READY') pending.delete(dev);
          else if (this.disks.some((d) => mirrorJobId(d.id) === dev)) {
            failure ??= new FailedPreconditionError(`the storage copy of disk ${dev.replace(/^mirror-/, '')} failed (${ev.event}${ev.data?.['error'] ? `: ${String(ev.data['error'])}` : ''})`, { reason: 'STORAGE_COPY_FAILED' });
          }
          if (pending.size === 0 || failure) {
            wake.abort();
            return;
          }
        }
      } catch {
        // cancelled with the signal
      }
    })();
    // A job READY before the subscription started is seen by the first reading.
    let lastMove = Date.now();
    let lastBytes = -1;
    try {
      for (;;) {
        if (signal.aborted) throw new CancelledError('storage copy cancelled');
        if (failure) throw failure;
        const p = await this.progress();
        onProgress(p);
        if (p.ready) {
          for (const d of this.disks) pending.delete(mirrorJobId(d.id));
        }
        if (pending.size === 0) break;
        if (p.transferredBytes !== lastBytes) {
          lastBytes = p.transferredBytes;
          lastMove = Date.now();
        } else if (Date.now() - lastMove > this.o.stallMs) {
          throw new UnavailableError(`the storage copy made no progress for ${this.o.stallMs} ms (${p.transferredBytes} of ${p.totalBytes} bytes): the link to the destination is presumed down`, { reason: 'STORAGE_COPY_STALLED' });
        }
        await sleep(intervalMs, undefined, { signal: AbortSignal.any([signal, wake.signal]) }).catch(() => undefined);
      }
      this.readyAtMs = Date.now();
    } finally {
      events.close();
      await watch;
    }
  }

  /**
   * The switch-over end: the guest is stopped on the source for good, so each READY mirror is
   * cancelled (it drains what the guest wrote last and ends with BLOCK_JOB_COMPLETED, no pivot),
   * then the NBD nodes are removed.
   * @throws FailedPreconditionError (STORAGE_NOT_SYNCED) when a mirror did not end in sync: the
   *   destination's disk must not be used
   */
  async finish(timeoutMs = 60_000): Promise<void> {
    const events = this.qmp.events({ names: ['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED', 'BLOCK_JOB_ERROR'] });
    const ended = new Map<string, { event: string; data: Record<string, unknown> | undefined }>();
    try {
      const live = await this.jobs();
      for (const j of live) await this.qmp.execute('block-job-cancel', { device: j.device } as never);
      const want = new Set(live.map((j) => j.device));
      const deadline = Date.now() + timeoutMs;
      const it = events[Symbol.asyncIterator]();
      while ([...want].some((w) => !ended.has(w))) {
        const left = deadline - Date.now();
        if (left <= 0) throw new FailedPreconditionError(`the storage mirrors did not end within ${timeoutMs} ms`, { reason: 'STORAGE_NOT_SYNCED' });
        const next = await Promise.race([it.next(), sleep(left).then(() => undefined)]);
        if (!next || next.done) continue;
        const dev = String(next.value.data?.['device'] ?? '');
        if (want.has(dev)) ended.set(dev, { event: next.value.event, data: next.value.data });
      }
    } finally {
      events.close();
    }
    const bad = [...ended].filter(([, e]) => e.event !== 'BLOCK_JOB_COMPLETED' || e.data?.['error'] !== undefined);
    for (const [dev, e] of ended) this.final.set(dev, { offset: Number(e.data?.['offset'] ?? 0), len: Number(e.data?.['len'] ?? 0) });
    await this.removeTargets();
    if (bad.length > 0) {
      throw new FailedPreconditionError(`the storage copy of ${bad.map(([d]) => d.replace(/^mirror-/, '')).join(', ')} did not end in sync (${bad.map(([, e]) => e.event).join(', ')})`, { reason: 'STORAGE_NOT_SYNCED' });
    }
  }

  /** Final bytes copied (after finish()). */
  get finalTransferredBytes(): number {
    return [...this.final.values()].reduce((a, j) => a + j.offset, 0);
  }

  /**
   * Failure or cancel before the switch-over: cancels the mirrors (force, no drain), waits a
   * little for them to end, and removes the NBD nodes. Never throws; idempotent.
   */
  async abort(): Promise<void> {
    if (!this.started) return;
    await abandonMirrors(this.qmp, this.o.log, this.disks.map((d) => d.id));
  }

  private async removeTargets(): Promise<void> {
    for (const d of this.disks) await this.qmp.execute('blockdev-del', { 'node-name': nbdNodeName(d.id) } as never).catch((err: unknown) => this.o.log.warn('could not remove an NBD target node', { disk: d.id, err: (err as Error).message }));
  }
}

/**
 * Cancels (force) every migd mirror job and removes every migd NBD node of a source QEMU — the
 * named disks, or, with `ids` undefined, whatever a previous daemon left (a restart during the
 * storage phase). Never throws.
 */
export async function abandonMirrors(qmp: QmpClient, log: Logger, ids?: readonly string[]): Promise<void> {
  try {
    const jobs = ((await qmp.execute('query-block-jobs', undefined, { timeoutMs: 5000 })) as BlockJobInfo[]).filter((j) => (ids ? ids.map(mirrorJobId).includes(j.device) : j.device.startsWith('mirror-')));
    const events = qmp.events({ names: ['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED', 'BLOCK_JOB_ERROR'] });
    try {
      for (const j of jobs) await qmp.execute('block-job-cancel', { device: j.device, force: true } as never).catch(() => undefined);
      const deadline = Date.now() + 10_000;
      let yanked = false;
      while (Date.now() < deadline) {
        const left = ((await qmp.execute('query-block-jobs', undefined, { timeoutMs: 5000 })) as BlockJobInfo[]).filter((j) => jobs.some((x) => x.device === j.device));
        if (left.length === 0) break;
        if (!yanked && Date.now() > deadline - 8000) {
          // A mirror waiting on a link that carries nothing (cut without a reset) ends only when
          // its NBD request fails: yank shuts the NBD connections down, so it fails at once.
          yanked = true;
          const instances = left.map((j) => ({ type: 'block-node', 'node-name': nbdNodeName(j.device.replace(/^mirror-/, '')) }));
          log.warn('storage mirrors do not end; shutting their NBD connections down (yank)', { jobs: left.map((j) => j.device) });
          await qmp.execute('yank', { instances } as never, { timeoutMs: 5000 }).catch((err: unknown) => log.warn('yank of the NBD connections failed', { err: (err as Error).message }));
        }
        await sleep(100);
      }
    } finally {
      events.close();
    }
    const nodes = (await qmp.execute('query-named-block-nodes', { flat: true } as never, { timeoutMs: 5000 })) as { 'node-name': string }[];
    for (const n of nodes) {
      const name = n['node-name'];
      if (ids ? ids.map(nbdNodeName).includes(name) : name.startsWith('nbd-')) await qmp.execute('blockdev-del', { 'node-name': name } as never).catch((err: unknown) => log.warn('could not remove an NBD target node', { node: name, err: (err as Error).message }));
    }
  } catch (err) {
    log.warn('could not abandon the storage mirrors', { err: (err as Error).message });
  }
}

/**
 * The destination's half: an NBD server on the migration address exporting each target
 * (writable), TLS with the migration's credentials and source authz. The port is probed (QEMU
 * cannot report the port of an NBD server it picked), retried when taken meanwhile.
 * @returns the NBD port
 */
export async function exportTargets(qmp: QmpClient, address: string, diskIds: readonly string[], tls: { credsId?: string; authzId?: string }, pickPort: () => Promise<number>): Promise<number> {
  let port = 0;
  for (let attempt = 1; ; attempt++) {
    port = await pickPort();
    try {
      await qmp.execute('nbd-server-start', {
        addr: { type: 'inet', data: { host: address, port: String(port) } },
        ...(tls.credsId ? { 'tls-creds': tls.credsId } : {}),
        ...(tls.authzId ? { 'tls-authz': tls.authzId } : {}),
      } as never);
      break;
    } catch (err) {
      if (attempt >= 3) throw err;
    }
  }
  for (const id of diskIds) {
    await qmp.execute('block-export-add', { type: 'nbd', id: `export-${id}`, 'node-name': diskNodeName(id), name: diskNodeName(id), writable: true } as never);
  }
  return port;
}

/** Stops the destination's NBD server (and with it every export). Idempotent. */
export async function stopExports(qmp: QmpClient): Promise<void> {
  await qmp.execute('nbd-server-stop', undefined as never).catch((err: unknown) => {
    if (!/not running|no nbd server/i.test((err as Error).message)) throw err;
  });
}
