/**
 * migctl's commands: each maps its flags to a request (requests.ts), calls the coordinator and
 * prints the answer (views.ts, or proto JSON with --json). Watching follows runs with the Watch
 * stream; a stream that ends before its run finished is resumed, skipping events already seen.
 * Errors propagate to the caller (app.ts), which turns them into messages and exit codes.
 */
import { CancelledError, MigdError, UnavailableError, isAbortError } from '../../shared/errors.js';
import {
  CancelRunResponse,
  ComparePoliciesResponse,
  CoordinatorServiceCreateVmResponse,
  CoordinatorServiceStopVmResponse,
  CoordinatorServiceListVmsResponse,
  ForceCompleteRunResponse,
  AdjustRunResponse,
  GetRunResponse,
  GetRunTimelineResponse,
  ListNodesResponse,
  ListRunsResponse,
  SubmitPlanResponse,
  WatchResponse,
  type CoordinatorServiceService,
  type Run,
} from '../../shared/gen/migd/v1/coordinator.js';
import type { Event } from '../../shared/gen/migd/v1/events.js';
import type { CallOptions, RpcClient } from '../../shared/rpc/client.js';
import { flagBool, flagString, type GlobalOptions, type Invocation } from './args.js';
import { ExitCode, exitCodeForRuns } from './exit-codes.js';
import { stateName } from './format.js';
import { ProgressPrinter, WatchModel, describeEvent, type RunSeed } from './progress.js';
import { adjustRunRequest, createVmRequest, drainRequest, exportRequest, listRunsRequest, migrateRequest, runFilterFromFlags, watchRequest } from './requests.js';
import { UsageError } from './units.js';
import { formatComparison, formatCreatedVm, formatNodes, formatPlan, formatRunDetails, formatRunState, formatRuns, formatVms } from './views.js';
import { isTerminalState } from '../../shared/policy/states.js';
import { retry } from '../../shared/retry.js';

/** The coordinator API as migctl uses it (a narrow seam: tests may pass a fake). */
export type CoordinatorClient = Omit<RpcClient<typeof CoordinatorServiceService>, 'close' | 'waitForReady' | 'registerNode' | 'heartbeat'>;

/** Where a command's output goes, and the little it needs from its surroundings. */
export interface CliIo {
  stdout(s: string): void;
  stderr(s: string): void;
  /** Standard output is a terminal (progress bars redraw in place). */
  readonly isTTY: boolean;
  readonly columns: number;
  now(): number;
  writeFile(path: string, data: Uint8Array): Promise<void>;
}

export interface CommandContext {
  readonly client: CoordinatorClient;
  readonly io: CliIo;
  readonly global: GlobalOptions;
  /** Fires on Ctrl-C. */
  readonly signal: AbortSignal;
  /** Makes an idempotency key when --key is not given. */
  readonly newKey: () => string;
}

/** Default deadline of a unary call. */
export const DEFAULT_DEADLINE_MS = 10_000;
/** create-vm waits for QEMU to start (and the guest image to load) on a busy host. */
export const CREATE_VM_DEADLINE_MS = 90_000;
/** How often a run's watch is resumed when its stream ends early. */
const WATCH_RESUMES = 5;

function unary(ctx: CommandContext, defaultMs = DEFAULT_DEADLINE_MS): CallOptions {
  return { deadlineMs: ctx.global.timeoutMs ?? defaultMs, signal: ctx.signal };
}

function stream(ctx: CommandContext, signal: AbortSignal): CallOptions {
  return ctx.global.timeoutMs !== undefined ? { deadlineMs: ctx.global.timeoutMs, signal } : { signal };
}

function printJson(ctx: CommandContext, value: unknown): void {
  ctx.io.stdout(`${JSON.stringify(value)}\n`);
}

/** Runs one parsed command; resolves to its exit code. */
export async function runCommand(inv: Invocation, ctx: CommandContext): Promise<ExitCode> {
  const { client, io, global } = ctx;
  const arg = (i: number): string => inv.args[i] ?? '';
  const f = inv.flags;
  switch (inv.command) {
    case 'nodes': {
      const r = await client.listNodes({}, unary(ctx));
      if (global.json) printJson(ctx, ListNodesResponse.toJSON(r));
      else io.stdout(formatNodes(r, io.now()));
      return ExitCode.OK;
    }
    case 'vms': {
      const r = await client.listVms({ nodeId: flagString(f, 'node') ?? '' }, unary(ctx));
      if (global.json) printJson(ctx, CoordinatorServiceListVmsResponse.toJSON(r));
      else io.stdout(formatVms(r));
      return ExitCode.OK;
    }
    case 'create-vm': {
      const r = await client.createVm(createVmRequest(arg(0), f), unary(ctx, CREATE_VM_DEADLINE_MS));
      if (global.json) printJson(ctx, CoordinatorServiceCreateVmResponse.toJSON(r));
      else io.stdout(formatCreatedVm(r.vm));
      return ExitCode.OK;
    }
    case 'stop-vm':
    case 'start-vm': {
      const req = { vmName: arg(0) };
      const r = inv.command === 'stop-vm' ? await client.stopVm(req, unary(ctx, CREATE_VM_DEADLINE_MS)) : await client.startVm(req, unary(ctx, CREATE_VM_DEADLINE_MS));
      if (global.json) printJson(ctx, CoordinatorServiceStopVmResponse.toJSON(r));
      else io.stdout(formatCreatedVm(r.vm));
      return ExitCode.OK;
    }
    case 'delete-vm': {
      const deleteDisks = flagBool(f, 'delete-disks');
      await client.deleteVm({ vmName: arg(0), deleteDisks }, unary(ctx, CREATE_VM_DEADLINE_MS));
      if (global.json) printJson(ctx, { vmName: arg(0), deleted: true, deleteDisks });
      else io.stdout(`VM ${arg(0)} deleted${deleteDisks ? ' with the disk images its node had created' : ' (disk images kept)'}\n`);
      return ExitCode.OK;
    }
    case 'migrate':
    case 'drain': {
      const req = inv.command === 'migrate' ? migrateRequest(arg(0), f, ctx.newKey) : drainRequest(arg(0), f, ctx.newKey);
      const r = await client.submitPlan(req, unary(ctx));
      if (global.json) printJson(ctx, SubmitPlanResponse.toJSON(r));
      else io.stdout(formatPlan(r));
      if (!flagBool(f, 'watch')) return ExitCode.OK;
      const seeds = (r.plan?.migrations ?? []).map((m) => ({ runId: m.runId, vmName: m.vmName, sourceNodeId: m.sourceNodeId, destinationNodeId: m.destinationNodeId }));
      return watchRuns(ctx, seeds, false);
    }
    case 'watch': {
      const req = watchRequest(inv.args[0], f);
      if (req.scope?.$case === 'cluster') return watchCluster(ctx, req.statesOnly);
      const run = (await client.getRun({ runId: arg(0) }, unary(ctx))).run;
      return watchRuns(ctx, [seedOf(run, arg(0))], req.statesOnly);
    }
    case 'runs': {
      const req = listRunsRequest(f, io.now());
      if (flagBool(f, 'all') && req.pageToken) throw new UsageError('runs: --all starts from the first page; drop --page-token');
      let r = await client.listRuns(req, unary(ctx));
      if (flagBool(f, 'all')) {
        const all = [...r.runs];
        for (let page = 1; r.nextPageToken && page < 10_000; page++) {
          r = await client.listRuns({ ...req, pageToken: r.nextPageToken }, unary(ctx));
          all.push(...r.runs);
        }
        r = { runs: all, nextPageToken: '' };
      }
      if (global.json) printJson(ctx, ListRunsResponse.toJSON(r));
      else io.stdout(formatRuns(r));
      return ExitCode.OK;
    }
    case 'run': {
      const t = await client.getRunTimeline({ runId: arg(0) }, unary(ctx));
      if (global.json) printJson(ctx, GetRunTimelineResponse.toJSON(t));
      else io.stdout(formatRunDetails(t));
      return ExitCode.OK;
    }
    case 'cancel': {
      const r = await client.cancelRun({ runId: arg(0), reason: flagString(f, 'reason') ?? '' }, unary(ctx));
      if (global.json) printJson(ctx, CancelRunResponse.toJSON(r));
      else io.stdout(formatRunState(r.run, 'cancel requested'));
      return ExitCode.OK;
    }
    case 'force-complete': {
      const r = await client.forceCompleteRun({ runId: arg(0), reason: flagString(f, 'reason') ?? '' }, unary(ctx));
      if (global.json) printJson(ctx, ForceCompleteRunResponse.toJSON(r));
      else io.stdout(formatRunState(r.run, 'completion forced'));
      return ExitCode.OK;
    }
    case 'set': {
      const r = await client.adjustRun(adjustRunRequest(arg(0), f), unary(ctx));
      if (global.json) printJson(ctx, AdjustRunResponse.toJSON(r));
      else io.stdout(formatRunState(r.run, 'limits changed'));
      return ExitCode.OK;
    }
    case 'history compare': {
      const r = await client.comparePolicies({ filter: runFilterFromFlags(f, io.now()) }, unary(ctx));
      if (global.json) printJson(ctx, ComparePoliciesResponse.toJSON(r));
      else io.stdout(formatComparison(r));
      return ExitCode.OK;
    }
    case 'export': {
      // The coordinator sends the export in pages (it never builds more than one page of
      // timelines at a time); the pages make one document here.
      const req = exportRequest(f, io.now());
      const parts: Buffer[] = [];
      const docs: unknown[] = [];
      let contentType = '';
      for (let token = ''; ; ) {
        const r = await client.exportRuns({ ...req, pageToken: token }, unary(ctx, 60_000));
        contentType = r.contentType;
        if (r.contentType.includes('json')) docs.push(...(JSON.parse(Buffer.from(r.data).toString('utf8')) as unknown[]));
        else parts.push(Buffer.from(r.data));
        token = r.nextPageToken;
        if (!token) break;
      }
      const data = contentType.includes('json') ? Buffer.from(JSON.stringify(docs), 'utf8') : Buffer.concat(parts);
      const out = flagString(f, 'output');
      if (out !== undefined && out !== '-') {
        await io.writeFile(out, data);
        io.stderr(`wrote ${data.length} bytes (${contentType || 'data'}) to ${out}\n`);
      } else {
        io.stdout(data.toString('utf8'));
      }
      return ExitCode.OK;
    }
  }
}

function seedOf(run: Run | undefined, runId: string): RunSeed {
  return run ? { runId: run.id, vmName: run.vmName, sourceNodeId: run.sourceNodeId, destinationNodeId: run.destinationNodeId, state: run.state } : { runId, vmName: '' };
}

function printerOf(ctx: CommandContext): ProgressPrinter {
  return new ProgressPrinter({ write: (s) => ctx.io.stdout(s), isTTY: ctx.io.isTTY && !ctx.global.json, columns: ctx.io.columns, now: () => ctx.io.now() });
}

/**
 * Follows `seeds` until every run has finished; exit 0 only when all succeeded. Each run has its
 * own stream (which replays the run from its start), resumed when it ends early.
 */
export async function watchRuns(ctx: CommandContext, seeds: readonly RunSeed[], statesOnly: boolean): Promise<ExitCode> {
  if (seeds.length === 0) return ExitCode.OK;
  const model = new WatchModel(seeds);
  const printer = printerOf(ctx);
  const onEvent = (ev: Event): void => {
    if (ctx.global.json) {
      printJson(ctx, WatchResponse.toJSON({ event: ev }));
      model.apply(ev);
      return;
    }
    const v = model.apply(ev);
    const note = describeEvent(ev, v);
    printer.update(note ? [note] : [], model.runs(), v);
  };
  // One failing stream stops the others.
  const ac = new AbortController();
  const stop = (): void => ac.abort(ctx.signal.reason);
  ctx.signal.addEventListener('abort', stop, { once: true });
  try {
    const finals = await Promise.all(seeds.map((s) => followRun(ctx, s.runId, statesOnly, onEvent, ac.signal)));
    printer.finish(model.runs());
    if (ctx.global.json) for (const run of finals) printJson(ctx, GetRunResponse.toJSON({ run }));
    return exitCodeForRuns(finals.map((r) => r.state));
  } catch (err) {
    printer.finish(model.runs());
    if (ctx.signal.aborted && isAbortError(err)) {
      ctx.io.stderr(`stopped watching; the run${seeds.length > 1 ? 's go' : ' goes'} on (migctl watch ${seeds[0]?.runId ?? 'RUN'}, migctl cancel RUN)\n`);
    }
    throw err;
  } finally {
    ctx.signal.removeEventListener('abort', stop);
    ac.abort();
  }
}

/**
 * One run's stream to its end; resolves to the run as the coordinator has it then. A stream that
 * ends (or fails as unavailable) before the run has finished is opened again, after a short
 * back-off, at most {@link WATCH_RESUMES} times.
 */
async function followRun(ctx: CommandContext, runId: string, statesOnly: boolean, onEvent: (ev: Event) => void, signal: AbortSignal): Promise<Run> {
  let lastSeq = 0;
  return retry(
    async (attempt) => {
      let completed = false;
      for await (const m of ctx.client.watch({ scope: { $case: 'runId', value: runId }, statesOnly }, stream(ctx, signal))) {
        const ev = m.event;
        if (!ev) continue;
        // A resumed stream replays the run from its start: skip what was shown already.
        if (ev.runSequence > 0 && ev.runSequence <= lastSeq) continue;
        lastSeq = Math.max(lastSeq, ev.runSequence);
        onEvent(ev);
        if (ev.payload?.$case === 'runCompleted' && ev.payload.value.runId === runId) {
          completed = true;
          break;
        }
      }
      const run = (await ctx.client.getRun({ runId }, { ...unary(ctx), signal })).run;
      if (run && (completed || isTerminalState(run.state))) return run;
      throw new UnavailableError(`the watch of run ${runId} ended ${attempt} times before the run finished (now ${run ? stateName(run.state) : 'unknown'})`);
    },
    { attempts: WATCH_RESUMES + 1, initialMs: 100, maxMs: 2000, signal, retryable: (err) => err instanceof MigdError && err.code === 'UNAVAILABLE' },
  ).catch((err: unknown) => {
    // Stopped (Ctrl-C, or another run's stream failed): say so as a cancellation.
    throw signal.aborted && !(err instanceof CancelledError) ? new CancelledError(`stopped watching run ${runId}`, { cause: err }) : err;
  });
}

/** Every event of the cluster until Ctrl-C (exit 0) or the coordinator ends the stream (exit 5). */
export async function watchCluster(ctx: CommandContext, statesOnly: boolean): Promise<ExitCode> {
  const model = new WatchModel();
  const printer = printerOf(ctx);
  try {
    for await (const m of ctx.client.watch({ scope: { $case: 'cluster', value: true }, statesOnly }, stream(ctx, ctx.signal))) {
      const ev = m.event;
      if (!ev) continue;
      if (ctx.global.json) {
        printJson(ctx, WatchResponse.toJSON(m));
        continue;
      }
      const v = model.apply(ev);
      const note = describeEvent(ev, v);
      // Finished runs leave the live display.
      printer.update(note ? [note] : [], model.runs().filter((r) => !r.completed), v);
    }
  } catch (err) {
    printer.finish([]);
    if (ctx.signal.aborted && isAbortError(err)) return ExitCode.OK;
    throw err;
  }
  printer.finish([]);
  throw new UnavailableError('the coordinator ended the cluster watch');
}
