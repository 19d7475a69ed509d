/**
 * The destination side of one live migration: an incoming QEMU with the identical device model
 * started with `-incoming defer`, the same capabilities as the source, `migrate-incoming` on the
 * node's migration address; out-of-band pause and recover for post-copy recovery; and the check
 * that the guest is alive here (its workload reporting) before the source is told it may go.
 */
import { DeadlineExceededError, FailedPreconditionError } from '../../shared/errors.js';
import type { GuestPerfSample, MigrationPolicy } from '../../shared/gen/migd/v1/common.js';
import type { Logger } from '../../shared/log.js';
import type { MigrationConfig } from './config.js';
import { capabilityList, type MigratableVm, type VmHost } from './types.js';
import { freePort } from '../../shared/net.js';


function uriFor(address: string, port: number): string {
  return address.includes(':') ? `tcp:[${address}]:${port}` : `tcp:${address}:${port}`;
}

export interface IncomingParams {
  readonly runId: string;
  readonly vm: MigratableVm;
  readonly host: VmHost;
  readonly policy: MigrationPolicy;
  readonly config: MigrationConfig;
  readonly supportedCapabilities: ReadonlySet<string>;
  readonly migrationAddress: string;
  readonly log: Logger;
  /** QEMU TLS credentials object id (server endpoint), when the policy asks for TLS. */
  readonly tlsCredsId?: string;
}

export class IncomingMigration {
  readonly runId: string;
  private status = 'none';
  private completedAtMs: number | undefined;
  private resumedHere = false;
  private exited = false;
  private readonly stop = new AbortController();
  private statusWaiters: (() => void)[] = [];

  constructor(private readonly p: IncomingParams) {
    this.runId = p.runId;
  }

  get vmName(): string {
    return this.p.vm.name;
  }

  get pid(): number {
    return this.p.vm.pid;
  }

  /** True once the guest runs here (post-copy started or migration completed). */
  get guestRunsHere(): boolean {
    return this.resumedHere || this.status === 'postcopy-active' || this.status === 'completed';
  }

  /** Applies capabilities and parameters and listens; returns the URI for the source. */
  async listen(): Promise<string> {
    const { vm, config } = this.p;
    await vm.qmp.execute('migrate-set-capabilities', { capabilities: capabilityList(config.capabilities, this.p.supportedCapabilities) });
    const params: Record<string, unknown> = { ...config.destinationParameters };
    if (config.tls && this.p.tlsCredsId) params['tls-creds'] = this.p.tlsCredsId;
    if (Object.keys(params).length > 0) await vm.qmp.execute('migrate-set-parameters', params);
    void this.follow();
    let lastErr: unknown;
    for (let i = 0; i < 3; i++) {
      const uri = uriFor(this.p.migrationAddress, await freePort(this.p.migrationAddress));
      try {
        await vm.qmp.execute('migrate-incoming', { uri });
        return uri;
      } catch (err) {
        lastErr = err; // port taken between probe and bind: try another
      }
    }
    throw lastErr;
  }

  private async follow(): Promise<void> {
    const { vm, log } = this.p;
    const events = vm.qmp.events({ names: ['MIGRATION', 'RESUME'] });
    const onAbort = (): void => events.close();
    this.stop.signal.addEventListener('abort', onAbort, { once: true });
    try {
      for await (const ev of events) {
        if (ev.event === 'RESUME') {
          if (!this.resumedHere) {
            this.resumedHere = true;
            this.p.host.adoptIncoming(vm.name);
            log.info('guest resumed on the destination');
          }
        } else {
          this.status = String((ev.data as { status?: string }).status ?? this.status);
          if (this.status === 'completed') this.completedAtMs ??= Date.now();
          if (this.status === 'postcopy-active' && !this.resumedHere) {
            this.resumedHere = true;
            this.p.host.adoptIncoming(vm.name);
          }
        }
        this.wake();
      }
    } catch (err) {
      log.debug('incoming event stream ended', { err });
    } finally {
      this.exited = !this.stop.signal.aborted;
      this.wake();
    }
  }

  private wake(): void {
    const w = this.statusWaiters;
    this.statusWaiters = [];
    for (const f of w) f();
  }

  private changed(timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, timeoutMs);
      this.statusWaiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  /**
   * migrate-pause, out of band: an in-band command to a stalled post-copy destination can hang,
   * and query-migrate has no out-of-band form, so the status comes from the MIGRATION events this
   * object follows.
   */
  async pause(): Promise<string> {
    const { vm, log } = this.p;
    if (this.status === 'postcopy-active' || this.status === 'postcopy-recover') {
      await vm.qmp.execute('migrate-pause', undefined, { oob: vm.qmp.oobEnabled, timeoutMs: 5000 }).catch((err: unknown) => log.warn('migrate-pause on destination', { err: (err as Error).message }));
    }
    const deadline = Date.now() + 5000;
    while (this.status !== 'postcopy-paused' && !this.exited && Date.now() < deadline) await this.changed(deadline - Date.now());
    return this.status;
  }

  /** migrate-recover on a fresh port, out of band; returns the URI the source resumes to. */
  async recover(): Promise<string> {
    const { vm } = this.p;
    const uri = uriFor(this.p.migrationAddress, await freePort(this.p.migrationAddress));
    await vm.qmp.execute('migrate-recover', { uri }, { oob: vm.qmp.oobEnabled, timeoutMs: 10_000 });
    return uri;
  }

  /**
   * Waits until the migration completed here and the guest workload reported afterwards.
   * @throws DeadlineExceededError when the guest does not show up in time
   */
  async confirm(timeoutMs: number, resume: boolean): Promise<{ alive: boolean; sample: GuestPerfSample | undefined }> {
    const { vm, log } = this.p;
    const deadline = Date.now() + timeoutMs;
    while (this.status !== 'completed' && !this.exited && Date.now() < deadline) {
      await this.changed(Math.min(1000, Math.max(1, deadline - Date.now())));
      if (this.status !== 'completed') {
        const st = (await vm.qmp.execute('query-migrate', undefined, { timeoutMs: 2000 }).catch(() => undefined)) as { status?: string } | undefined;
        if (st?.status === 'completed') {
          this.status = 'completed';
          this.completedAtMs ??= Date.now();
        }
      }
    }
    if (this.status !== 'completed') return { alive: false, sample: undefined };
    const run = (await vm.qmp.execute('query-status', undefined, { timeoutMs: 5000 })) as { status?: string; running?: boolean };
    if (!run.running) {
      if (resume) {
        log.info('resuming the guest that arrived paused (force-complete paused it on the source)');
        await vm.qmp.execute('cont');
      } else {
        log.warn('guest arrived paused', { status: run.status });
      }
    }
    this.p.host.adoptIncoming(vm.name);
    // Alive means: the workload reported here after the migration, including a verification of
    // its memory (verify lines come at least once a second; this console only carries lines the
    // guest printed on this node).
    const since = this.completedAtMs ?? Date.now();
    const last = vm.lastGuestSample();
    if (last && last.hostMs > since && last.sample.pagesVerified > 0) return { alive: true, sample: last.sample };
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(new DeadlineExceededError('guest did not report')), Math.max(1, deadline - Date.now()));
    let seen: GuestPerfSample | undefined;
    try {
      for await (const s of vm.guestSamples(ac.signal)) {
        seen = s;
        if (s.pagesVerified > 0) return { alive: true, sample: s };
      }
    } catch {
      // deadline
    } finally {
      clearTimeout(timer);
      ac.abort();
    }
    // It reported but never verified in time: alive, but say so through the sample.
    return { alive: seen !== undefined, sample: seen ?? vm.lastGuestSample()?.sample };
  }

  /** Removes the incoming QEMU. @throws FailedPreconditionError once the guest runs here */
  async abort(): Promise<void> {
    if (this.guestRunsHere) {
      throw new FailedPreconditionError(`the guest of run ${this.runId} already runs on this node; refusing to destroy it`, { reason: 'GUEST_RUNS_HERE' });
    }
    this.stop.abort();
    await this.p.host.destroy(this.p.vm.name);
  }

  /** Stops following events (daemon shutdown or migration finished). */
  detach(): void {
    this.stop.abort();
  }
}
