/**
 * The SubmitPlan client of scripts/bench-control-plane.ts part d, which times each SubmitPlan.
 * In the bench's own process it shared the event loop with the 100 simulated nodes, so a late
 * read of a response there counted as the coordinator's time ("handler end → response received").
 * {@link SubmitChild} runs it in a child process of its own (this file is the child's entry): the
 * child connects first; then the parent sends the requests, and the child submits them one after
 * another and answers with each plan's send time and latency and its own event-loop delay.
 * {@link submitPlans} is the loop itself, for either process.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import type { SubmitPlanRequest } from '../../services/shared/gen/migd/v1/coordinator.js';
import { CoordinatorBackend, type CoordinatorClient } from './coordinator-backend.js';

/** One timed SubmitPlan. */
export interface SubmitTiming {
  /** The request's idempotency key. */
  readonly key: string;
  /** When it was sent, ms since the epoch. */
  readonly sentAt: number;
  /** Send → response, ms. */
  readonly latencyMs: number;
  readonly planId: string;
  /** Migrations of the plan. */
  readonly migrations: number;
}

/** Event-loop delay of the submitting process over the submissions, ms. */
export interface LoopDelay {
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
}

export interface SubmitReport {
  readonly timings: SubmitTiming[];
  /** The submitting process's own event-loop delay while it submitted (child only). */
  readonly loopDelay?: LoopDelay;
}

/** Submits `requests` one after another on `client`, timing each. */
export async function submitPlans(client: CoordinatorClient, requests: readonly SubmitPlanRequest[], deadlineMs: number): Promise<SubmitTiming[]> {
  const timings: SubmitTiming[] = [];
  for (const req of requests) {
    const s = performance.now();
    const { plan } = await client.submitPlan(req, { deadlineMs });
    timings.push({ key: req.idempotencyKey, sentAt: performance.timeOrigin + s, latencyMs: performance.now() - s, planId: plan!.id, migrations: plan!.migrations.length });
  }
  return timings;
}

type ChildRequest = { readonly address: string; readonly certDir: string } | { readonly requests: SubmitPlanRequest[]; readonly deadlineMs: number };
type Reply = { ok: true; report?: SubmitReport } | { ok: false; error: string };

/**
 * {@link submitPlans} in a child process with its own client (identity `operator` of `certDir`),
 * started and connected by {@link SubmitChild.start} before anything is timed.
 */
export class SubmitChild {
  private constructor(private readonly child: ChildProcess) {}

  /** Forks the child and connects it to the coordinator at `address`. @throws Error when it cannot */
  static async start(address: string, certDir: string): Promise<SubmitChild> {
    const child = fork(fileURLToPath(import.meta.url), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' });
    const c = new SubmitChild(child);
    try {
      await c.ask({ address, certDir });
    } catch (err) {
      c.close();
      throw err;
    }
    return c;
  }

  /** Submits `requests` one after another, timing each, and reports the child's event-loop delay meanwhile. */
  async submit(requests: readonly SubmitPlanRequest[], deadlineMs: number): Promise<SubmitReport> {
    return (await this.ask({ requests: [...requests], deadlineMs }))!;
  }

  /** Stops the child. */
  close(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill();
  }

  private ask(req: ChildRequest): Promise<SubmitReport | undefined> {
    return new Promise((resolve, reject) => {
      const onMessage = (m: Reply): void => {
        done();
        if (m.ok) resolve(m.report);
        else reject(new Error(`SubmitPlan client: ${m.error}`));
      };
      const onExit = (code: number | null, signal: string | null): void => {
        done();
        reject(new Error(`SubmitPlan client exited (${signal ?? code}) without an answer`));
      };
      const done = (): void => {
        this.child.off('message', onMessage);
        this.child.off('exit', onExit);
      };
      this.child.on('message', onMessage);
      this.child.on('exit', onExit);
      this.child.send(req);
    });
  }
}

/** The child: the first message connects, each later one submits. */
function childMain(): void {
  let cb: CoordinatorBackend | undefined;
  const answer = (r: Reply): void => {
    process.send!(r);
  };
  const fail = (err: unknown): void => answer({ ok: false, error: err instanceof Error ? err.message : String(err) });
  process.on('message', (req: ChildRequest) => {
    if ('address' in req) {
      cb = new CoordinatorBackend({ address: req.address, certDir: req.certDir });
      const client = cb.client;
      client
        .waitForReady(30_000)
        .then(() => client.listNodes({}))
        .then(() => answer({ ok: true }), fail);
      return;
    }
    const client = cb!.client;
    const loop = monitorEventLoopDelay({ resolution: 10 });
    loop.enable();
    submitPlans(client, req.requests, req.deadlineMs).then((timings) => {
      loop.disable();
      const ms = (ns: number): number => ns / 1e6;
      answer({ ok: true, report: { timings, loopDelay: { p50Ms: ms(loop.percentile(50)), p99Ms: ms(loop.percentile(99)), maxMs: ms(loop.max) } } });
    }, fail);
  });
  // The parent gone: close the client so that this process ends.
  process.on('disconnect', () => void cb?.close());
}

if (process.send && process.argv[1] === fileURLToPath(import.meta.url)) childMain();
