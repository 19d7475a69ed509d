/**
 * The destination side of one live migration: an incoming QEMU with the identical device model,
 * started paused (`-S -incoming defer`), the same capabilities as the source, `migrate-incoming`
 * on the node's migration address; out-of-band pause and recover for post-copy recovery.
 *
 * Ownership (STYLE 18): the copy here stays paused until the source has handed the VM over.
 * - Pre-copy: QEMU completes the stream and the guest stays paused here; the source, whose own
 *   copy QEMU has stopped for good, calls ConfirmIncoming — only then is `cont` sent here.
 * - Post-copy: the destination enters `postcopy-active` only after the source stopped its guest
 *   (QEMU's LISTEN/RUN commands follow the source's stop), so the guest is resumed here at once,
 *   as libvirt does: otherwise it would run nowhere until post-copy ends.
 * Each step is recorded (record.ts) before it is taken; a restarted daemon adopts the incoming
 * QEMU from its record and QEMU's own `query-status` / `query-migrate` (adopt()).
 *
 * In post-copy, QEMU's in-band monitor here answers only while the pages the guest touches arrive.
 * A TCG vCPU delivers interrupts and exceptions with the BQL held (accel/tcg/cpu-exec.c
 * cpu_handle_interrupt / cpu_handle_exception → x86 do_interrupt_all reads the IDT, the page
 * tables and the stack in guest memory); a page that has not arrived blocks it in userfaultfd
 * (handle_userfault) until the page comes, and the main loop, which runs every in-band command,
 * waits for the BQL meanwhile (read with gdb on QEMU 10.0.2, docs/chaos/README.md). On a cut link
 * that lasts until the recovery: `cont` itself can stay unanswered although QEMU has started the
 * guest (it emits RESUME from vm_start, then writes the reply only after the main loop has
 * dropped and retaken the BQL), and so does any later query. Out-of-band commands run in the
 * monitor's own thread and still answer: migrate-pause and migrate-recover, which is all the
 * recovery needs here. QEMU reads no command at all (out-of-band neither) once 8 in-band ones
 * wait (QMP_REQ_QUEUE_LEN_MAX, monitor/qmp.c handle_qmp_command), and a command whose wait timed
 * out here still waits there: a copy whose monitor does not answer is not asked again in band
 * (adopt()), or its recovery could be locked out.
 */
import { FailedPreconditionError, NotFoundError, UnavailableError } from '../../shared/errors.js';
import { DiskFormat, type GuestCheck } from '../../shared/gen/migd/v1/common.js';
import { ConfirmIncomingResponse, type DiskDigest } from '../../shared/gen/migd/v1/node.js';
import type { Logger } from '../../shared/log.js';
import { freePort } from '../../shared/net.js';
import type { MigrationConfig } from '../../shared/policy/resolve.js';
import type { DestinationRecord, MigrationRecords } from './record.js';
import { capabilityList, type MigratableVm, type VmHost } from './types.js';
import { VerificationTracker } from './verification.js';
import { blocktimeOf } from './progress.js';
import { tcpUri } from './endpoint.js';
import { stopExports } from './storage.js';
import { imageDigest } from '../host/digest.js';
import { diskNodeName } from '../vm/cmdline.js';
import { DIGEST_MAX_BYTES, ioErrorCheck, runningCheck, vcpuCheck, vcpuRunNs, vcpusRan } from './guest-checks.js';
import { QmpCommandError, QmpTimeoutError } from '../qmp/errors.js';

/**
 * How long the vCPU threads are watched after the resume at most (the `vcpus` check): it passes
 * as soon as they used CPU here, read every VCPU_POLL_MS, and fails when they did not within this.
 */
const VCPU_WINDOW_MS = 1000;
const VCPU_POLL_MS = 20;


/** The port of the first listening address `query-migrate` reports on a destination. */
function listeningPort(info: unknown): number | undefined {
  const list = (info as { 'socket-address'?: { type?: string; port?: string | number }[] })['socket-address'];
  const port = Number(list?.find((a) => a.type === 'inet')?.port);
  return Number.isInteger(port) && port > 0 && port < 65536 ? port : undefined;
}

/** QMP announce-self arguments (qapi/net.json AnnounceParameters: all four required). */
export const ANNOUNCE = Object.freeze({ initial: 50, max: 550, rounds: 5, step: 100 });

export interface IncomingParams {
  readonly runId: string;
  readonly vm: MigratableVm;
  readonly host: VmHost;
  readonly config: MigrationConfig;
  readonly supportedCapabilities: ReadonlySet<string>;
  readonly migrationAddress: string;
  /**
   * This node's management host (no port), where a post-copy recovery may listen when the
   * migration network stays down (see recover()).
   */
  readonly managementHost?: string;
  readonly log: Logger;
  readonly record: DestinationRecord;
  readonly records: MigrationRecords;
  /** QEMU TLS credentials object id (server endpoint), when the policy asks for TLS. */
  readonly tlsCredsId?: string;
  /** QEMU authz object id naming the only client certificate (the source node's) allowed to connect. */
  readonly tlsAuthzId?: string;
  /** The node id of the source that prepared this run (bound from its certificate), if known. */
  readonly sourceNodeId?: string;
}

export class IncomingMigration {
  readonly runId: string;
  private status = 'none';
  /** MIGRATION events seen so far: a polled status is stale when one arrived while the poll was out. */
  private migrationEvents = 0;
  private resumedHere = false;
  /**
   * adopt() could not read QEMU's status: its in-band monitor did not answer (see the header). Until
   * a MIGRATION event says where it stands, pause() leaves the check to QEMU (migrate-pause out of
   * band, which QEMU refuses outside post-copy itself).
   */
  private statusUnread = false;
  /** The incoming QEMU reported post-copy (so blocktime figures are expected at the end). */
  private sawPostcopy = false;
  private exited = false;
  private readonly stop = new AbortController();
  private statusWaiters: (() => void)[] = [];
  private lastChangeMs = Date.now();
  private readonly verification = new VerificationTracker();
  private confirming: Promise<ConfirmIncomingResponse> | undefined;
  private resuming: Promise<void> | undefined;
  /** The pause in progress (see pause()). */
  private pausing: Promise<string> | undefined;
  /** announce-self after the resume here: its figures once QEMU acknowledged it (undefined: failed). */
  private announcing: Promise<{ announceAfterResumeMs: number; nicsAnnounced: number } | undefined> | undefined;
  /** The vCPU threads' CPU time (ns) when the guest resumed here, and when that was read. */
  private vcpuBaseline: Promise<{ ns: number | undefined; at: number }> | undefined;
  /** performance.now() when the guest was seen resumed here. */
  private resumedAtMs: number | undefined;
  private diskDigests: DiskDigest[] = [];

  constructor(private readonly p: IncomingParams) {
    this.runId = p.runId;
  }

  get vmName(): string {
    return this.p.vm.name;
  }

  get pid(): number {
    return this.p.vm.pid;
  }

  get record(): DestinationRecord {
    return this.p.record;
  }

  /** QEMU's latest incoming migration status. */
  get qemuStatus(): string {
    return this.status;
  }

  /** When the status last changed (host ms). */
  get lastChange(): number {
    return this.lastChangeMs;
  }

  /** The node allowed to drive this run (undefined when the coordinator prepared it). */
  get sourceNodeId(): string | undefined {
    return this.p.sourceNodeId;
  }

  /** True once the guest runs here (post-copy started or handed over): it may not be destroyed. */
  get guestRunsHere(): boolean {
    return this.resumedHere || this.p.record.phase === 'running' || this.p.record.phase === 'confirmed';
  }

  /** True when the incoming QEMU went away by itself (failed or cancelled stream). */
  get gone(): boolean {
    return this.exited;
  }

  /**
   * Applies capabilities and parameters and listens on a port QEMU picks itself (port 0, read back
   * with query-migrate: no window in which another process can take the port).
   * @param before steps already under way that must succeed before QEMU listens — the TLS
   *   objects the parameters name (their commands already sent, so QEMU runs them first: it runs
   *   a monitor's commands in order), the record of the incoming phase. Capabilities and
   *   parameters go out in the same round trip; every step settles before anything else happens,
   *   and the first failure is thrown (then nothing listens).
   * @throws FailedPreconditionError (reason NO_LISTEN_PORT) when QEMU does not report its port
   */
  async listen(before: readonly (Promise<unknown> | undefined)[] = []): Promise<{ uri: string; port: number }> {
    const { vm, config } = this.p;
    const params: Record<string, unknown> = { ...config.destinationParameters };
    if (config.tls && this.p.tlsCredsId) {
      params['tls-creds'] = this.p.tlsCredsId;
      if (this.p.tlsAuthzId) params['tls-authz'] = this.p.tlsAuthzId;
    }
    const settled = await Promise.allSettled([
      ...before,
      vm.qmp.execute('migrate-set-capabilities', { capabilities: capabilityList(config.capabilities, this.p.supportedCapabilities) }),
      Object.keys(params).length > 0 ? vm.qmp.execute('migrate-set-parameters', params) : undefined,
    ]);
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    void this.follow();
    await vm.qmp.execute('migrate-incoming', { uri: tcpUri(this.p.migrationAddress, 0) });
    const port = listeningPort(await vm.qmp.execute('query-migrate'));
    if (port === undefined) throw new FailedPreconditionError('the incoming QEMU did not report its listening port', { reason: 'NO_LISTEN_PORT' });
    return { uri: tcpUri(this.p.migrationAddress, port), port };
  }

  /**
   * A restarted daemon takes the incoming QEMU back: follows its events again and reads where it
   * stands. A guest found running stays (it was resumed here by a post-copy start or a handover);
   * one found in post-copy but paused (the daemon died between the two) is resumed now.
   *
   * An in-band monitor that does not answer is a post-copy destination waiting for pages (see the
   * header): the copy is kept as recorded (one recorded 'running' was resumed here and may not be
   * destroyed) and the MIGRATION events, which QEMU emits from its migration threads all the same,
   * tell where it stands from then on. Nothing is asked again in band meanwhile (each unanswered
   * command stays in QEMU's queue, and a full queue stops the out-of-band commands too), and
   * pause() and recover() work out of band. Earlier this threw, and left the status at `none`:
   * PauseIncoming then refused (NOT_IN_POSTCOPY) a destination in post-copy, and the recovery of a
   * guest that could still be recovered waited for the link to return, or failed.
   */
  async adopt(): Promise<void> {
    const { vm, log } = this.p;
    void this.follow();
    if (vm.qmp.state !== 'running') {
      // No session: QEMU negotiates a new one in band (qmp_capabilities), so a post-copy copy
      // whose main loop waits for pages takes none until they come (measured: no answer in 5 s).
      // Its events reach this object once the VM manager's reconnect succeeds.
      log.warn('adopted an incoming migration without a QMP session to its QEMU: in post-copy its main loop may wait for pages that have not arrived; its stream is left as it is', { phase: this.p.record.phase });
      if (this.status === 'none') this.statusUnread = true;
      return;
    }
    const read = await Promise.all([
      vm.qmp.execute('query-status', undefined, { timeoutMs: 5000 }) as Promise<{ running?: boolean; status?: string }>,
      vm.qmp.execute('query-migrate', undefined, { timeoutMs: 5000 }) as Promise<{ status?: string }>,
    ]).catch((err: unknown) => {
      if (err instanceof QmpTimeoutError) return undefined;
      throw err;
    });
    if (read === undefined) {
      // An event may have come meanwhile: it is newer than anything this read could have said.
      if (this.status === 'none') this.statusUnread = true;
      log.warn('adopted an incoming migration whose QEMU does not answer in band: in post-copy its main loop waits for pages that have not arrived (the recovery brings them); pause and recover work out of band', { phase: this.p.record.phase, migration: this.status });
      return;
    }
    const [run, mig] = read;
    this.setStatus(mig.status ?? 'none');
    log.info('adopted incoming migration after restart', { phase: this.p.record.phase, qemu: run.status, migration: this.status });
    if (run.running) {
      this.markResumed();
      if (this.p.record.phase === 'incoming') {
        this.p.record.phase = 'running';
        await this.p.records.write(this.p.record);
      }
    } else if (this.status.startsWith('postcopy') && !this.copiesStorage) {
      // (With LOCAL disks the source says when the mirrors ended: ResumeIncoming, retried.)
      await this.resumeHere('post-copy had started before the daemon restarted');
    } else if (this.p.record.phase === 'running' && this.status === 'completed') {
      // The handover was recorded but `cont` may not have been sent before the daemon died.
      await this.resumeHere('handover recorded before the daemon restarted');
    }
  }

  private setStatus(s: string): void {
    this.statusUnread = false;
    if (s !== this.status) this.lastChangeMs = Date.now();
    if (s.startsWith('postcopy')) this.sawPostcopy = true;
    this.status = s;
  }

  private async follow(): Promise<void> {
    const { vm, log } = this.p;
    const events = vm.qmp.events({ names: ['MIGRATION', 'RESUME'] });
    const onAbort = (): void => events.close();
    this.stop.signal.addEventListener('abort', onAbort, { once: true });
    try {
      for await (const ev of events) {
        if (ev.event === 'RESUME') {
          this.markResumed();
        } else {
          this.migrationEvents++;
          this.setStatus(String((ev.data as { status?: string }).status ?? this.status));
          // With LOCAL disks the mirrors may still be writing here: the source says when they
          // ended (ResumeIncoming), and only then does the guest run here.
          if (this.status === 'postcopy-active' && !this.resumedHere && !this.copiesStorage) {
            void this.resumeHere('post-copy started: the source has stopped its guest').catch((err: unknown) => log.error('could not resume the guest at the start of post-copy', { err }));
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

  /** Milliseconds since the guest was seen resumed here (undefined before). */
  private sinceResume(): number | undefined {
    return this.resumedAtMs === undefined ? undefined : Math.round(performance.now() - this.resumedAtMs);
  }

  private markResumed(): void {
    if (this.resumedHere) return;
    this.resumedHere = true;
    this.p.host.adoptIncoming(this.p.vm.name);
    this.resumedAtMs = performance.now();
    this.p.log.info('guest resumed on the destination');
    this.vcpuBaseline = vcpuRunNs(this.p.vm.qmp, this.p.vm.pid).then((ns) => ({ ns, at: Date.now() }));
    void this.trackVerification();
    this.announcing = this.announce(performance.now());
  }

  /**
   * Once the guest runs here, its cards announce their MACs from this host (QMP `announce-self`:
   * RARP/GARP rounds at 50, 150, 250… ms), so the switches learn the new port at once instead of
   * waiting for the guest to send. QEMU's own announce at the end of an incoming migration does
   * the same; libvirt sends this one explicitly, and so does migd.
   */
  private async announce(resumedAt: number): Promise<{ announceAfterResumeMs: number; nicsAnnounced: number } | undefined> {
    const { vm, log } = this.p;
    const nics = (vm.spec.nics ?? []).length;
    if (nics === 0) return undefined;
    try {
      await vm.qmp.execute('announce-self', ANNOUNCE, { timeoutMs: 5000 });
      const announceAfterResumeMs = Math.round(performance.now() - resumedAt);
      log.info('announced the guest\'s MACs from this host', { nics, announceAfterResumeMs });
      return { announceAfterResumeMs, nicsAnnounced: nics };
    } catch (err) {
      log.warn('announce-self failed', { err: (err as Error).message });
      return undefined;
    }
  }

  /** Records that this node owns the guest, then resumes it here (once). */
  private resumeHere(why: string): Promise<void> {
    this.resuming ??= (async () => {
      const { vm, log } = this.p;
      if (this.p.record.phase === 'incoming' || this.p.record.phase === 'preparing') {
        this.p.record.phase = 'running';
        await this.p.records.write(this.p.record);
      }
      // No writer but the guest from here on: the source's mirrors have ended.
      if (this.copiesStorage) {
        await stopExports(vm.qmp);
        this.diskDigests = await this.digestTargets();
      }
      const run = (await vm.qmp.execute('query-status', undefined, { timeoutMs: 5000 })) as { running?: boolean };
      if (!run.running) {
        log.info('resuming the guest here', { why });
        await this.cont();
      }
      this.markResumed();
    })();
    this.resuming.catch(() => (this.resuming = undefined));
    return this.resuming;
  }

  /**
   * `cont`, done when QEMU answers it or reports RESUME, whichever comes first. RESUME is QEMU's
   * own word that the guest runs here (vm_start emits it, system/cpus.c vm_prepare_start); the
   * answer to `cont` comes later and, in post-copy, may not come until the recovery (see the
   * header): `cont` runs in a bottom half (qapi/qmp-dispatch.c do_qmp_dispatch_bh) and its reply
   * is written only once the main loop has dropped and retaken the BQL, which a vCPU blocked on a
   * missing page holds in between. Waiting for that answer kept the resume pending, and then
   * failed it, while the guest ran here (chaos seed 7701568 step 4 in CI on 5 Dec: `cont`
   * unanswered until the campaign killed QEMU; a handover would have waited on it as well).
   * @throws what `cont` throws before RESUME came (QEMU refused it, or is gone)
   */
  private async cont(): Promise<void> {
    const { vm, log } = this.p;
    let answered = false;
    const reply = vm.qmp.execute('cont').then(() => {
      answered = true;
    });
    while (!answered && !this.resumedHere) {
      if (this.exited) break;
      await Promise.race([reply, this.changed(1000)]);
    }
    if (answered || !this.resumedHere) return reply;
    // Resumed: a late failure of the reply (its timeout, QEMU exiting) says nothing new.
    const settled = reply.catch(() => undefined);
    await Promise.race([settled, new Promise((r) => setTimeout(r, 1000).unref())]);
    if (!answered) log.warn('QEMU reported RESUME but has not answered cont: its main loop waits for a page that has not arrived (the recovery brings it); out-of-band commands still answer');
  }

  /**
   * Digests of the LOCAL disks copied here, taken after the source's mirrors ended and before
   * the guest resumes (so they hold the switch-over state): the source compares them with its own.
   * Disks the guest's workload verifies itself are left out, and so is a disk with more than
   * DIGEST_MAX_BYTES of data (the time is downtime). QEMU's caches are flushed to the files first.
   */
  private async digestTargets(): Promise<DiskDigest[]> {
    const { vm, log } = this.p;
    const out: DiskDigest[] = [];
    for (const t of this.p.record.disks ?? []) {
      if (t.id === vm.spec.workload?.diskId) continue;
      const spec = vm.spec.disks.find((d) => d.id === t.id);
      const format = spec?.format === DiskFormat.DISK_FORMAT_QCOW2 ? 'qcow2' : 'raw';
      await vm.qmp.execute('human-monitor-command', { 'command-line': `qemu-io -d ${diskNodeName(t.id)} "flush"` }, { timeoutMs: 10_000 }).catch((err: unknown) => log.warn('could not flush a disk before its digest', { disk: t.id, err: (err as Error).message }));
      try {
        const d = await imageDigest(t.path, format, { maxDataBytes: DIGEST_MAX_BYTES });
        out.push({ diskId: t.id, sha256: d.sha256, dataBytes: d.dataBytes, ms: d.ms, error: '' });
      } catch (err) {
        out.push({ diskId: t.id, sha256: '', dataBytes: 0, ms: 0, error: (err as Error).message });
      }
    }
    if (out.length > 0) log.info('digested the copied disks before resuming', { disks: out.map((d) => ({ id: d.diskId, ms: d.ms, error: d.error || undefined })) });
    return out;
  }

  /**
   * The host's checks of the guest here (guest-checks.ts): the vCPU threads are watched from the
   * resume until they used CPU here (at most VCPU_WINDOW_MS), then the point-in-time checks.
   */
  private async hostChecks(deadline: number): Promise<GuestCheck[]> {
    const { vm } = this.p;
    let base: { ns: number | undefined; at: number } = await (this.vcpuBaseline ?? Promise.resolve({ ns: undefined, at: Date.now() }));
    // A baseline read at the resume may find no answer: in post-copy the guest resumes here while
    // its pages still arrive, and a paused stream (a cut link, until recovery) can hold QEMU's
    // monitor past the read's timeout. The window then starts now.
    if (base.ns === undefined) base = { ns: await vcpuRunNs(vm.qmp, vm.pid), at: Date.now() };
    const until = Math.min(base.at + VCPU_WINDOW_MS, Math.max(Date.now(), deadline));
    let after = await vcpuRunNs(vm.qmp, vm.pid);
    while (!vcpusRan(base.ns, after) && !this.exited && Date.now() < until) {
      await new Promise((r) => setTimeout(r, Math.max(1, Math.min(VCPU_POLL_MS, until - Date.now()))));
      after = await vcpuRunNs(vm.qmp, vm.pid);
    }
    const window = Date.now() - base.at;
    const status = (await vm.qmp.execute('query-status', undefined, { timeoutMs: 5000 }).catch(() => undefined)) as { running?: boolean; status?: string } | undefined;
    const stats = await vm.qmp.execute('query-blockstats', undefined, { timeoutMs: 5000 }).catch(() => undefined);
    return [runningCheck(status), vcpuCheck(base.ns, after, window), ioErrorCheck(stats)];
  }

  private async trackVerification(): Promise<void> {
    try {
      for await (const s of this.p.vm.guestSamples(this.stop.signal)) {
        this.verification.add(s);
        this.wake();
      }
    } catch {
      // the feed ends with the VM or when this object stops
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
   * @throws FailedPreconditionError (reason INCOMING_QEMU_GONE) once the incoming QEMU went away:
   *   QEMU ends an incoming migration whose stream breaks before post-copy runs here (exit 1), and
   *   nothing can resume a stream into a QEMU that is gone. The source stops recovering on it.
   */
  private requireRecoverable(): void {
    if (this.exited) {
      throw new FailedPreconditionError(`run ${this.runId}: the incoming QEMU on this node is gone (QEMU ends an incoming migration whose stream breaks before post-copy runs here); the stream cannot be resumed`, { reason: 'INCOMING_QEMU_GONE' });
    }
  }

  /**
   * @throws UnavailableError (reason INCOMING_QMP_UNREACHABLE) while this daemon has no QMP session
   *   with the incoming QEMU: after a daemon restart QEMU negotiates the new session in band
   *   (qmp_capabilities), which a post-copy copy waiting for pages does not run, and a monitor
   *   without out-of-band reads nothing more while that one command waits (monitor/qmp.c
   *   handle_qmp_command; measured on QEMU 10.0.2, docs/chaos/README.md). Neither a
   *   pause nor a recovery can reach that QEMU; its stream, left open, still resumes by itself
   *   when the link returns (TCP carries on) — which a pause of the source's stream would end for
   *   good: QEMU then needs migrate-recover here. The source keeps its stream open on this reason.
   */
  private requireSession(): void {
    if (this.p.vm.qmp.state === 'running') return;
    throw new UnavailableError(`run ${this.runId}: this node has no QMP session with its incoming QEMU (a post-copy copy waiting for pages does not take a new one until they come); its stream is left open`, { reason: 'INCOMING_QMP_UNREACHABLE' });
  }

  /**
   * migrate-pause, out of band: an in-band command to a stalled post-copy destination can hang,
   * and query-migrate has no out-of-band form, so the status comes from the MIGRATION events this
   * object follows.
   */
  async pause(): Promise<string> {
    this.requireRecoverable();
    this.requireSession();
    // One pause at a time: a PauseIncoming that outlived its caller's deadline on a cut link
    // arrives together with the retry once the link is back. A second migrate-pause while QEMU
    // is pausing crashes it (QEMU 10.0: the listen thread frees from_src_file before it sets
    // postcopy-paused, and the out-of-band migrate-pause shuts that file down again: SIGSEGV).
    this.pausing ??= this.doPause().finally(() => (this.pausing = undefined));
    return this.pausing;
  }

  private async doPause(): Promise<string> {
    const { vm, log } = this.p;
    if (this.statusUnread) return this.pauseUnread();
    if (!this.status.startsWith('postcopy') && this.status !== 'completed') {
      // The switch to post-copy has not reached this node (its package may still be in flight
      // on a cut link): pausing the stream now would end it here for good (see recover() in
      // source.ts). The source leaves its stream open and asks again.
      throw new FailedPreconditionError(`run ${this.runId}: post-copy has not started on this node (QEMU status ${this.status}); not paused`, { reason: 'NOT_IN_POSTCOPY' });
    }
    if (this.status === 'postcopy-active' || this.status === 'postcopy-recover') {
      await vm.qmp.execute('migrate-pause', undefined, { oob: vm.qmp.oobEnabled, timeoutMs: 5000 }).catch((err: unknown) => log.warn('migrate-pause on destination', { err: (err as Error).message }));
    }
    return this.pausedWithin(5000);
  }

  /** Waits (up to `ms`) for QEMU's postcopy-paused, from the MIGRATION events this object follows. */
  private async pausedWithin(ms: number): Promise<string> {
    const deadline = Date.now() + ms;
    while (this.status !== 'postcopy-paused' && !this.exited && Date.now() < deadline) await this.changed(deadline - Date.now());
    return this.status;
  }

  /**
   * pause() when QEMU's status could not be read (see adopt()): migrate-pause out of band, and QEMU
   * checks the state itself — it pauses an incoming migration in postcopy-active or
   * postcopy-recover only, and refuses anything else (migration.c qmp_migrate_pause), so a stream
   * still in pre-copy is left alone as above. A refusal from a copy recorded as resumed here means
   * it is past postcopy-active: paused already (a completed migration would have answered in band).
   * @throws FailedPreconditionError (NOT_IN_POSTCOPY) when QEMU refuses and post-copy never
   *   started here as far as the record knows
   */
  private async pauseUnread(): Promise<string> {
    const { vm, log } = this.p;
    try {
      await vm.qmp.execute('migrate-pause', undefined, { oob: vm.qmp.oobEnabled, timeoutMs: 5000 });
    } catch (err) {
      if (!(err instanceof QmpCommandError)) throw err;
      if (this.p.record.phase !== 'running') {
        throw new FailedPreconditionError(`run ${this.runId}: QEMU refused to pause its stream (${err.desc}); post-copy has not started on this node as far as it recorded`, { reason: 'NOT_IN_POSTCOPY' });
      }
      log.info('QEMU refused migrate-pause on a copy resumed here whose status it does not answer in band: paused already', { desc: err.desc });
      if (this.statusUnread) this.setStatus('postcopy-paused');
      return this.status;
    }
    return this.pausedWithin(5000);
  }

  /**
   * migrate-recover on a fresh port, out of band; returns the port the source resumes to. The
   * port is probed, not picked by QEMU: reading it back needs query-migrate, an in-band command
   * that can hang on a paused post-copy destination until the stream resumes. With migration TLS
   * (tls-creds and tls-authz stay set) a process that takes the port cannot feed the VM.
   *
   * `network: 'management'` listens on this node's management host instead: the source's other
   * path when the migration network stays down. Refused for a stream without TLS, which would
   * otherwise carry guest memory in clear over a network the operator did not choose for it.
   * @throws FailedPreconditionError (reason RECOVERY_NETWORK_REFUSED)
   */
  async recover(network: 'migration' | 'management' = 'migration'): Promise<{ uri: string; port: number }> {
    const { vm } = this.p;
    this.requireRecoverable();
    this.requireSession();
    let address = this.p.migrationAddress;
    if (network === 'management') {
      if (!this.p.config.tls) {
        throw new FailedPreconditionError('post-copy recovery over the management network needs a TLS migration stream', { reason: 'RECOVERY_NETWORK_REFUSED' });
      }
      if (!this.p.managementHost) throw new FailedPreconditionError('this node has no management address to recover on', { reason: 'RECOVERY_NETWORK_REFUSED' });
      address = this.p.managementHost;
    }
    const port = await freePort(address);
    const uri = tcpUri(address, port);
    this.p.log.info('post-copy recovery: listening', { network, uri });
    await vm.qmp.execute('migrate-recover', { uri }, { oob: vm.qmp.oobEnabled, timeoutMs: 10_000 });
    return { uri, port };
  }

  /**
   * The handover: the source's copy is stopped for good, so the guest is resumed here; then waits
   * (up to `timeoutMs`) until the guest has verified memory here. Idempotent: a retried confirm
   * shares the first one's answer.
   * @throws FailedPreconditionError (reason NOT_HANDED_OVER) when the migration did not complete
   *   here in time, or the incoming QEMU is gone: nothing was resumed here.
   */
  confirm(timeoutMs: number): Promise<ConfirmIncomingResponse> {
    this.confirming ??= this.doConfirm(timeoutMs);
    this.confirming.catch(() => (this.confirming = undefined));
    return this.confirming;
  }

  private async doConfirm(timeoutMs: number): Promise<ConfirmIncomingResponse> {
    const { vm } = this.p;
    const deadline = Date.now() + timeoutMs;
    while (!this.resumedHere && this.status !== 'completed' && !this.exited && Date.now() < deadline) {
      await this.changed(Math.min(1000, Math.max(1, deadline - Date.now())));
      if (this.status !== 'completed' && !this.exited) {
        // A MIGRATION event that arrives while the poll is out is newer than its answer: QEMU may
        // have built the answer ("active") before emitting the event ("completed"). Applying the
        // answer then would overwrite `completed` and hold the handover for another second.
        const seen = this.migrationEvents;
        const st = (await vm.qmp.execute('query-migrate', undefined, { timeoutMs: 2000 }).catch(() => undefined)) as { status?: string } | undefined;
        if (st?.status && this.migrationEvents === seen) this.setStatus(st.status);
      }
    }
    if (!this.resumedHere && (this.status !== 'completed' || this.exited)) {
      throw new FailedPreconditionError(`run ${this.runId}: the migration did not complete on this node (QEMU ${this.exited ? 'gone' : `status ${this.status}`}); nothing was resumed here`, { reason: 'NOT_HANDED_OVER' });
    }
    await this.resumeHere('the source handed the VM over');
    // Proven alive: a guest with migd's workload verified pages here after its arrival (see
    // verification.ts); one without is checked from the host (guest-checks.ts).
    const workload = vm.spec.workload !== undefined;
    const checks = this.hostChecks(deadline);
    while (workload && !this.verification.proven && !this.exited && Date.now() < deadline) await this.changed(Math.max(1, deadline - Date.now()));
    const v = this.verification;
    const provenMs = this.sinceResume();
    const host = await checks;
    const all: GuestCheck[] = workload
      ? [{ name: 'workload', passed: v.proven && v.integrityErrors === 0, detail: `the guest verified ${v.pagesVerifiedAfter} pages${vm.spec.workload?.diskId ? ` and its disk ${vm.spec.workload.diskId}` : ''} here after arriving; ${v.integrityErrors} integrity error(s)` }, ...host]
      : host;
    const blocktime = await this.postcopyBlocktime(deadline);
    const announced = await this.announcing;
    const res = ConfirmIncomingResponse.fromPartial({
      ...(announced ?? {}),
      checks: all,
      diskDigests: this.diskDigests,
      alive: workload ? v.proven : host.every((c) => c.passed),
      pid: vm.pid,
      pagesVerifiedAfter: v.pagesVerifiedAfter,
      ...(v.lastSample ? { sample: { ...v.lastSample, integrityErrors: v.integrityErrors } } : {}),
      ...blocktime,
    });
    this.p.record.phase = 'confirmed';
    this.p.record.confirm = ConfirmIncomingResponse.toJSON(res);
    await this.p.records.write(this.p.record);
    // The time the checks of the guest here added after its resume (the workload's proof, the
    // host's checks): the handover's verification, apart from the migration itself.
    this.p.log.info('guest confirmed on the destination', { alive: res.alive, workloadProvenAfterResumeMs: workload ? provenMs : undefined, confirmedAfterResumeMs: this.sinceResume() });
    return res;
  }

  /**
   * After post-copy, the destination QEMU's blocktime figures (capability postcopy-blocktime):
   * QEMU reports them on the incoming side once its own migration state is `completed`, which can
   * come a moment after the source's. Waits for that until `deadline`; nothing without post-copy.
   */
  private async postcopyBlocktime(deadline: number): Promise<{ postcopyBlocktimeMs?: number; postcopyVcpuBlocktimeMs?: number[] }> {
    if (!this.sawPostcopy || this.p.config.capabilities['postcopy-blocktime'] !== true) return {};
    const { vm, log } = this.p;
    for (;;) {
      const info = (await vm.qmp.execute('query-migrate', undefined, { timeoutMs: 2000 }).catch(() => undefined)) as Record<string, unknown> | undefined;
      const b = blocktimeOf(info);
      if (b || this.exited || Date.now() >= deadline) {
        if (!b) log.info('the destination reported no post-copy blocktime', { status: info?.['status'] ?? null });
        return b ?? {};
      }
      await this.changed(Math.min(200, Math.max(1, deadline - Date.now())));
    }
  }

  /**
   * Kills the incoming QEMU and forgets the run.
   * @throws FailedPreconditionError (GUEST_RUNS_HERE) once the guest runs here
   */
  async abort(): Promise<void> {
    if (this.guestRunsHere) {
      throw new FailedPreconditionError(`the guest of run ${this.runId} already runs on this node; refusing to destroy it`, { reason: 'GUEST_RUNS_HERE' });
    }
    this.stop.abort();
    await this.p.host.destroy(this.p.vm.name).catch((err: unknown) => {
      if (!(err instanceof NotFoundError)) throw err; // already gone
    });
    // The storage copy's targets (the NBD server went with QEMU): nothing ran on them.
    await this.p.host.removeTargets((this.p.record.disks ?? []).map((d) => d.path));
    await this.p.records.remove(this.runId);
  }

  /** True when LOCAL disks are copied into this node's targets over NBD. */
  private get copiesStorage(): boolean {
    return (this.p.record.disks ?? []).length > 0;
  }

  /**
   * Post-copy with LOCAL disks: the source has switched to post-copy (its guest is stopped for
   * good) and ended its mirrors in sync, so the guest resumes here (the NBD server stops first).
   * @throws FailedPreconditionError (NOT_IN_POSTCOPY) before post-copy started here
   */
  async resumeAfterStorage(): Promise<string> {
    if (!this.status.startsWith('postcopy') && this.status !== 'completed') {
      const st = (await this.p.vm.qmp.execute('query-migrate', undefined, { timeoutMs: 5000 }).catch(() => undefined)) as { status?: string } | undefined;
      if (st?.status) this.setStatus(st.status);
    }
    if (!this.status.startsWith('postcopy') && this.status !== 'completed') {
      throw new FailedPreconditionError(`run ${this.runId}: post-copy has not started on this node (QEMU status ${this.status}); nothing was resumed`, { reason: 'NOT_IN_POSTCOPY' });
    }
    await this.resumeHere('post-copy started and the source ended its storage mirrors');
    return this.status;
  }

  /** Stops following events (daemon shutdown or migration finished). */
  detach(): void {
    this.stop.abort();
  }
}
