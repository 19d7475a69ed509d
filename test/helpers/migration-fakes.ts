/**
 * Narrow fakes for unit tests of the migration drivers: a QEMU played behind the fake QMP
 * transport (it answers from its own state and records every command), the node's VM host, a
 * scripted peer node daemon, and a records folder. Nothing here runs QEMU or opens a socket.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Broadcast } from '../../services/shared/broadcast.js';
import { NotFoundError, UnavailableError } from '../../services/shared/errors.js';
import { VmSpec, WorkloadSpec, type GuestPerfSample } from '../../services/shared/gen/migd/v1/common.js';
import type { ConfirmIncomingResponse, DiskTransfer, PrepareIncomingResponse, RecoverIncomingRequest } from '../../services/shared/gen/migd/v1/node.js';
import type { Logger } from '../../services/shared/log.js';
import { MigrationRecords, type MigrationRecord } from '../../services/node/migration/record.js';
import type { MigratableVm, NodePeer, VmHost } from '../../services/node/migration/types.js';
import { QmpClient } from '../../services/node/qmp/client.js';
import { MigratingVms } from '../../services/node/vm/migrating.js';
import { FakeTransport, type FakeStream, type SentCommand } from './qemu-fake-qmp.js';

/** Things a test made, undone in its afterEach (last first). */
export type Cleanups = (() => Promise<void> | void)[];

/** What `FakeQemu.onCommand` returns for a command QEMU never answers (its main loop held). */
export const NO_REPLY = Symbol('no reply');

/** What `FakeQemu.onCommand` returns for a command QEMU refuses (a QMP error reply). */
export class FakeQmpError {
  constructor(
    readonly desc: string,
    readonly errorClass = 'GenericError',
  ) {}
}

/**
 * A fake QEMU behind the fake transport: answers `query-status` and `query-migrate` from its state,
 * follows `stop`/`cont`, records every command with its arguments, and lets the test emit events.
 */
export class FakeQemu {
  running: boolean;
  /** What `query-migrate` reports as `status`. */
  migration: string;
  /** The port query-migrate reports an incoming QEMU listens on. */
  listenPort: number | undefined;
  readonly commands: string[] = [];
  readonly sent: SentCommand[] = [];
  readonly client: QmpClient;
  /** Runs before the default answer; a value other than undefined is the reply. */
  onCommand: ((name: string, args: Record<string, unknown> | undefined) => unknown) | undefined;
  private stream!: FakeStream;

  constructor(o: { running: boolean; migration: string; logger: Logger; cleanups: Cleanups }) {
    this.running = o.running;
    this.migration = o.migration;
    const transport = new FakeTransport();
    this.client = new QmpClient(transport, { logger: o.logger });
    o.cleanups.push(() => this.client.disconnect());
    void this.serve(transport);
  }

  private async serve(transport: FakeTransport): Promise<void> {
    this.stream = await transport.nextStream();
    await this.stream.handshake();
    for (;;) {
      const cmd = await this.stream.nextCommand();
      const name = cmd.execute ?? cmd['exec-oob'] ?? '';
      this.commands.push(name);
      this.sent.push(cmd);
      const scripted = this.onCommand?.(name, cmd.arguments);
      if (scripted === NO_REPLY) continue;
      if (scripted instanceof FakeQmpError) {
        this.stream.send({ error: { class: scripted.errorClass, desc: scripted.desc }, id: cmd.id });
        continue;
      }
      if (scripted !== undefined) {
        this.stream.reply(cmd, scripted);
        continue;
      }
      if (name === 'cont') this.running = true;
      if (name === 'stop') this.running = false;
      if (name === 'query-status') this.stream.reply(cmd, { running: this.running, status: this.running ? 'running' : this.migration === 'completed' ? 'postmigrate' : 'paused' });
      else if (name === 'query-migrate') this.stream.reply(cmd, { status: this.migration, ...(this.listenPort ? { 'socket-address': [{ type: 'inet', host: '127.0.0.1', port: String(this.listenPort) }] } : {}) });
      else this.stream.reply(cmd, {});
    }
  }

  async connect(): Promise<void> {
    await this.client.connect({ timeoutMs: 2000 });
  }

  /** QEMU emits a MIGRATION event (and reports that status from then on). */
  emit(status: string): void {
    this.migration = status;
    this.stream.send({ event: 'MIGRATION', data: { status }, timestamp: { seconds: 1, microseconds: 0 } });
  }

  /** QEMU emits another event (RESUME, STOP…), with `data` when given. */
  emitEvent(event: string, data?: Record<string, unknown>): void {
    this.stream.send({ event, ...(data ? { data } : {}), timestamp: { seconds: 1, microseconds: 0 } });
  }

  /** QEMU emits MIGRATION_PASS: pass `pass` began (its bitmap sync is done). */
  emitPass(pass: number): void {
    this.stream.send({ event: 'MIGRATION_PASS', data: { pass }, timestamp: { seconds: 1, microseconds: 0 } });
  }

  /** The arguments of every `name` command sent so far. */
  argsOf(name: string): (Record<string, unknown> | undefined)[] {
    return this.sent.filter((c) => (c.execute ?? c['exec-oob']) === name).map((c) => c.arguments);
  }
}

/** A VM running migd's verifying workload (the fake guest's samples stand for it). */
export function fakeSpec(name: string): VmSpec {
  return VmSpec.fromPartial({ name, memoryMib: 64, vcpus: 1, uuid: 'u-1', workload: WorkloadSpec.fromPartial({ verify: true }) });
}

/** The VM being migrated, over the fake QEMU's QMP client. */
export function fakeVm(q: FakeQemu, samples = new Broadcast<GuestPerfSample>()): MigratableVm {
  return { name: 'vm1', spec: fakeSpec('vm1'), pid: 4242, qmp: q.client, guestSamples: (signal) => samples.subscribe([], signal), lastGuestSample: () => undefined, cpuSeconds: async () => 0 };
}

export type FakeHost = VmHost & { destroyed: string[]; migrating: Map<string, string | undefined>; adopted: string[]; marks: MigratingVms };

/**
 * The node's VM manager: records destroys, migration marks and adoptions. The "is migrating" state
 * is the node's own (MigratingVms): `source()` refuses a VM a run has claimed, as the daemon does.
 */
export function fakeHost(o: { qemuGone?: boolean; vms?: Readonly<Record<string, MigratableVm>>; transfers?: readonly DiskTransfer[] } = {}): FakeHost {
  const destroyed: string[] = [];
  const migrating = new Map<string, string | undefined>();
  const adopted: string[] = [];
  const marks = new MigratingVms();
  return {
    destroyed,
    migrating,
    adopted,
    marks,
    source: (name) => {
      const vm = destroyed.includes(name) ? undefined : o.vms?.[name];
      if (!vm) throw new NotFoundError(`VM ${name} not found`);
      marks.refuseIfMigrating(name);
      return vm;
    },
    attach: (name) => (o.qemuGone || destroyed.includes(name) ? undefined : (o.vms?.[name] ?? ({ name } as MigratableVm))),
    list: () => [],
    setMigration: (name, runId) => {
      migrating.set(name, runId);
      marks.set(name, runId);
    },
    createIncoming: () => Promise.reject(new Error('unused')),
    adoptIncoming: (name) => {
      adopted.push(name);
      marks.set(name, undefined);
    },
    destroy: async (name) => {
      destroyed.push(name);
      marks.set(name, undefined);
    },
    diskTransfers: async () => [...(o.transfers ?? [])],
    planTargets: async () => [],
    createTarget: () => Promise.reject(new Error('unused')),
    removeTargets: async () => undefined,
  };
}

/** What a scripted peer answers; a returned Error is thrown. `n` counts the calls of that method. */
export interface PeerScript {
  confirm?: (n: number) => ConfirmIncomingResponse | Error;
  abort?: (n: number) => Error | undefined;
  prepare?: (n: number) => Error | undefined;
  /** What PrepareIncoming answers besides the stream's endpoint (e.g. the NBD port and disks). */
  prepared?: Partial<PrepareIncomingResponse>;
  pause?: (n: number) => Error | undefined;
  recover?: (n: number) => Error | undefined;
}

export type FakePeer = NodePeer & { calls: string[]; recovers: RecoverIncomingRequest[] };

/** A peer node daemon answering from `script`; unscripted confirms fail as UNAVAILABLE. */
export function fakePeer(script: PeerScript): FakePeer {
  const calls: string[] = [];
  const recovers: RecoverIncomingRequest[] = [];
  const count = new Map<string, number>();
  const next = (m: string): number => {
    calls.push(m);
    const n = (count.get(m) ?? 0) + 1;
    count.set(m, n);
    return n;
  };
  const never = (): AsyncIterable<never> => ({ [Symbol.asyncIterator]: () => ({ next: () => new Promise(() => undefined) }) });
  const raise = (e: Error | undefined): void => {
    if (e) throw e;
  };
  return {
    calls,
    recovers,
    prepareIncoming: async () => {
      const n = next('prepare');
      raise(script.prepare?.(n));
      return { uri: 'tcp:127.0.0.1:1', pid: 1, port: 1, disks: [], ...script.prepared };
    },
    pauseIncoming: async () => {
      const n = next('pause');
      raise(script.pause?.(n));
      return { qemuStatus: 'postcopy-paused' };
    },
    recoverIncoming: async (req) => {
      recovers.push(req);
      const n = next('recover');
      raise(script.recover?.(n));
      return { uri: 'tcp:127.0.0.1:2', port: 2 };
    },
    confirmIncoming: async () => {
      const n = next('confirm');
      const r = script.confirm?.(n) ?? new UnavailableError('down');
      if (r instanceof Error) throw r;
      return r;
    },
    resumeIncoming: async () => ({ qemuStatus: 'postcopy-active' }),
    abortIncoming: async () => {
      const n = next('abort');
      raise(script.abort?.(n));
      return {};
    },
    getVm: async () => {
      throw new UnavailableError('down');
    },
    getMigration: async () => {
      throw new UnavailableError('down');
    },
    watchGuest: () => never(),
  };
}

/** A records folder in a temp dir, removed in cleanup. */
export function tempRecords(cleanups: Cleanups): MigrationRecords {
  const dir = mkdtempSync(join(tmpdir(), 'migd-records-'));
  const records = new ClosableRecords(dir);
  // A migration left running by a test can still write a record while the folder is removed
  // (ENOTEMPTY in CI): the clean-up closes the records first and waits for writes under way.
  cleanups.push(async () => {
    await records.close();
    rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 });
  });
  return records;
}

/** Records that ignore writes once closed; close() waits for the writes already under way. */
class ClosableRecords extends MigrationRecords {
  private closed = false;
  private readonly pending = new Set<Promise<void>>();

  override async write(rec: MigrationRecord): Promise<void> {
    if (this.closed) return;
    const p = super.write(rec);
    this.pending.add(p);
    try {
      await p;
    } finally {
      this.pending.delete(p);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.pending]);
  }
}
