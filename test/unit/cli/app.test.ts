/**
 * migctl end to end in-process, with a fake coordinator at the client seam: exit codes, messages,
 * JSON output and watching (including a stream that ends early and is resumed).
 */
import { describe, expect, it } from 'vitest';
import { CancelledError, NotFoundError, PermissionDeniedError, UnavailableError } from '../../../services/shared/errors.js';
import { MigrationState, VmState } from '../../../services/shared/gen/migd/v1/common.js';
import { CoordinatorServiceCreateVmResponse, ListNodesResponse, Run, SubmitPlanResponse, type CoordinatorServiceCreateVmRequest, type WatchRequest, type WatchResponse } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { Event } from '../../../services/shared/gen/migd/v1/events.js';
import type { CallOptions } from '../../../services/shared/rpc/client.js';
import { runMigctl, type AppDeps } from '../../../services/coordinator/cli/app.js';
import type { CoordinatorClient } from '../../../services/coordinator/cli/commands.js';

const S = MigrationState;

interface Harness {
  deps: AppDeps;
  out: string[];
  err: string[];
  files: Map<string, Uint8Array>;
  calls: { method: string; request: unknown; options?: CallOptions }[];
  interrupt: AbortController;
}

function harness(fake: Partial<Record<keyof CoordinatorClient, (req: any, o?: CallOptions) => unknown>>, opts: { connectError?: Error } = {}): Harness {
  const h: Harness = { out: [], err: [], files: new Map(), calls: [], interrupt: new AbortController(), deps: undefined as unknown as AppDeps };
  const client = new Proxy({} as CoordinatorClient & { close(): void }, {
    get: (_t, prop: string) => {
      if (prop === 'close') return () => undefined;
      const fn = fake[prop as keyof CoordinatorClient];
      return (req: unknown, o?: CallOptions) => {
        h.calls.push({ method: prop, request: req, options: o });
        if (!fn) throw new Error(`unexpected call ${prop}`);
        return fn(req, o);
      };
    },
  });
  h.deps = {
    env: {},
    defaultCertDir: () => '/certs',
    signal: h.interrupt.signal,
    newKey: () => 'key-1',
    io: { stdout: (s) => void h.out.push(s), stderr: (s) => void h.err.push(s), isTTY: false, columns: 120, now: () => Date.parse('2025-03-02T12:00:00Z'), writeFile: async (p, d) => void h.files.set(p, d) },
    connect: () => {
      if (opts.connectError) throw opts.connectError;
      return client;
    },
  };
  return h;
}

const plan = SubmitPlanResponse.fromPartial({ plan: { id: 'p1', migrations: [{ runId: 'r1', vmName: 'vm1', sourceNodeId: 'a', destinationNodeId: 'b', order: 0, reason: 'most free memory' }] } });

type EventInit = Parameters<typeof Event.fromPartial>[0];

function events(list: EventInit[]): Event[] {
  return list.map((e, i) => Event.fromPartial({ id: `e${i}`, ...e }));
}

const stateEv = (seq: number, from: MigrationState, to: MigrationState): EventInit => ({ runSequence: seq, payload: { $case: 'runState', value: { runId: 'r1', planId: 'p1', vmName: 'vm1', change: { from, to, reason: '' } } } });
const progressEv = (seq: number, elapsedMs: number): EventInit => ({ runSequence: seq, payload: { $case: 'runProgress', value: { runId: 'r1', sample: { state: S.MIGRATION_STATE_PRECOPY, elapsedMs, pass: 1, totalBytes: 100, remainingBytes: 50 } } } });
const doneEv = (seq: number, state: MigrationState): EventInit => ({ runSequence: seq, payload: { $case: 'runCompleted', value: { runId: 'r1', planId: 'p1', vmName: 'vm1', state, stats: { totalTimeMs: 2000, downtimeMs: 10, passes: 1 } } } });

async function* stream(list: Event[], then?: () => Promise<void>): AsyncIterable<WatchResponse> {
  for (const event of list) yield { event };
  await then?.();
}

describe('migctl', () => {
  it('prints proto JSON with --json', async () => {
    const h = harness({ listNodes: async () => ListNodesResponse.fromPartial({ nodes: [{ host: { nodeId: 'a', memoryTotalBytes: 1024 }, status: 1 }] }) });
    expect(await runMigctl(['nodes', '--json'], h.deps)).toBe(0);
    expect(JSON.parse(h.out.join(''))).toEqual({ nodes: [{ host: { nodeId: 'a', memoryTotalBytes: 1024 }, status: 'NODE_STATUS_UP' }] });
    expect(h.calls[0]?.options?.deadlineMs).toBe(10_000);
  });

  it('exits 3 with a clear message for an unknown VM', async () => {
    const h = harness({ submitPlan: async () => Promise.reject(new NotFoundError('VM "ghost" is not known to the cluster')) });
    expect(await runMigctl(['migrate', 'ghost', '--to', 'b'], h.deps)).toBe(3);
    expect(h.err.join('')).toBe('migctl: not found: VM "ghost" is not known to the cluster\n');
    expect(h.out).toEqual([]);
  });

  it('exits 4 when the role may not do it, naming the identity', async () => {
    const h = harness({ submitPlan: async () => Promise.reject(new PermissionDeniedError('role viewer may not call SubmitPlan')) });
    expect(await runMigctl(['--identity', 'viewer', 'migrate', 'vm1'], h.deps)).toBe(4);
    expect(h.err.join('')).toContain('permission denied for identity "viewer"');
  });

  it('exits 5 when the coordinator is not there, and reports JSON errors with --json', async () => {
    const h = harness({ listRuns: async () => Promise.reject(new UnavailableError('/migd.v1.CoordinatorService/ListRuns: No connection established')) });
    expect(await runMigctl(['runs', '--json'], h.deps)).toBe(5);
    expect(JSON.parse(h.err.join(''))).toMatchObject({ error: { code: 'UNAVAILABLE', exitCode: 5 } });
  });

  it('exits 2 for usage errors and unreadable certificates, 0 for --help', async () => {
    const h = harness({});
    expect(await runMigctl(['migrate'], h.deps)).toBe(2);
    expect(h.err.join('')).toMatch(/^migctl: migrate: missing VM/);
    expect(await runMigctl(['--help'], h.deps)).toBe(0);
    expect(h.out.join('')).toMatch(/Exit codes:[\s\S]*3 {4}not found/);
    expect(await runMigctl([], h.deps)).toBe(2);
    const bad = harness({}, { connectError: new Error('/certs/ca.crt is missing') });
    expect(await runMigctl(['nodes'], bad.deps)).toBe(2);
    expect(bad.err.join('')).toContain('cannot set up the connection: /certs/ca.crt is missing');
    expect(h.calls).toEqual([]);
  });

  it('create-vm: a bad --disk exits 2 and sends nothing; a good one prints the disks and NICs the node set up', async () => {
    const h = harness({
      createVm: async (req: CoordinatorServiceCreateVmRequest) =>
        CoordinatorServiceCreateVmResponse.fromPartial({ vm: { spec: { ...req.spec!, nics: [{ network: 'vm', mac: '52:54:00:aa:bb:cc', guestIp: '' }] }, nodeId: 'a', state: VmState.VM_STATE_RUNNING, pid: 42 } }),
    });
    expect(await runMigctl(['create-vm', 'db1', '--memory', '256', '--disk', 'id=data,path=db1.qcow2'], h.deps)).toBe(2);
    expect(h.err.join('')).toBe('migctl: --disk path: "db1.qcow2" must be an absolute path on the node\n');
    expect(h.calls).toEqual([]);
    expect(await runMigctl(['create-vm', 'db1', '--memory', '256', '--node', 'a', '--disk', 'id=data,path=/srv/a/db1.qcow2,create=1G', '--disk', 'id=iso,path=/nfs/tools.raw,mode=shared,readonly', '--nic', 'vm'], h.deps)).toBe(0);
    expect(h.calls.map((c) => c.method)).toEqual(['createVm']);
    expect(h.out.join('')).toBe(
      [
        'vm db1 running on a (256 MiB, pid 42)',
        '  disk data /srv/a/db1.qcow2 (qcow2, local, virtio-blk)',
        '  disk iso /nfs/tools.raw (raw, shared, virtio-blk, read-only)',
        '  nic  52:54:00:aa:bb:cc on network vm',
        '',
      ].join('\n'),
    );
  });

  it('submits and watches a migration to success, resuming a stream that ends early', async () => {
    let watches = 0;
    let finished = false;
    const h = harness({
      submitPlan: async () => plan,
      watch: (req: WatchRequest) => {
        watches++;
        expect(req.scope).toEqual({ $case: 'runId', value: 'r1' });
        // The first stream breaks off mid-run; the second replays from the start.
        if (watches === 1) return stream(events([stateEv(1, S.MIGRATION_STATE_QUEUED, S.MIGRATION_STATE_PRECOPY), progressEv(2, 100)]));
        finished = true;
        return stream(events([stateEv(1, S.MIGRATION_STATE_QUEUED, S.MIGRATION_STATE_PRECOPY), progressEv(2, 100), progressEv(3, 1500), stateEv(4, S.MIGRATION_STATE_PRECOPY, S.MIGRATION_STATE_SUCCEEDED), doneEv(5, S.MIGRATION_STATE_SUCCEEDED)]));
      },
      getRun: async () => ({ run: Run.fromPartial({ id: 'r1', state: finished ? S.MIGRATION_STATE_SUCCEEDED : S.MIGRATION_STATE_PRECOPY }) }),
    });
    expect(await runMigctl(['migrate', 'vm1', '--to', 'b', '--watch'], h.deps)).toBe(0);
    const out = h.out.join('');
    expect(out).toContain('plan p1: 1 migration');
    expect(out.match(/queued → precopy/g)).toHaveLength(1);
    expect(out).toContain('vm1 a→b: SUCCEEDED in 2.0 s, downtime 10 ms');
    expect(watches).toBe(2);
    const submit = h.calls.find((c) => c.method === 'submitPlan')?.request as { idempotencyKey: string };
    expect(submit.idempotencyKey).toBe('key-1');
  });

  it('resumes a watch whose stream fails as unavailable, and gives up (exit 5) after six streams end early', async () => {
    let watches = 0;
    const h = harness({
      getRun: async () => ({ run: Run.fromPartial({ id: 'r1', vmName: 'vm1', state: watches >= 2 ? S.MIGRATION_STATE_SUCCEEDED : S.MIGRATION_STATE_PRECOPY }) }),
      watch: () => {
        watches++;
        if (watches === 1) {
          return stream(events([progressEv(1, 100)]), async () => {
            throw new UnavailableError('coordinator restarting');
          });
        }
        return stream(events([progressEv(1, 100), doneEv(2, S.MIGRATION_STATE_SUCCEEDED)]));
      },
    });
    expect(await runMigctl(['watch', 'r1'], h.deps)).toBe(0);
    expect(watches).toBe(2);

    let ended = 0;
    const never = harness({
      getRun: async () => ({ run: Run.fromPartial({ id: 'r1', vmName: 'vm1', state: S.MIGRATION_STATE_PRECOPY }) }),
      watch: () => {
        ended++;
        return stream(events([progressEv(1, 100)]));
      },
    });
    expect(await runMigctl(['watch', 'r1'], never.deps)).toBe(5);
    expect(ended).toBe(6);
    expect(never.err.join('')).toContain('the watch of run r1 ended 6 times before the run finished (now precopy)');
  });

  it('exits 1 when a watched run fails, and prints one JSON object per line with --json', async () => {
    const h = harness({
      getRun: async () => ({ run: Run.fromPartial({ id: 'r1', vmName: 'vm1', state: S.MIGRATION_STATE_FAILED }) }),
      watch: () => stream(events([stateEv(1, S.MIGRATION_STATE_PRECOPY, S.MIGRATION_STATE_FAILED), doneEv(2, S.MIGRATION_STATE_FAILED)])),
    });
    expect(await runMigctl(['watch', 'r1', '--json'], h.deps)).toBe(1);
    const lines = h.out.join('').trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>);
    expect(lines).toHaveLength(3);
    expect(lines[1]?.['event']?.runCompleted?.state).toBe('MIGRATION_STATE_FAILED');
    expect(lines[2]?.['run']?.state).toBe('MIGRATION_STATE_FAILED');
  });

  it('stops watching on Ctrl-C with 130, saying the run goes on', async () => {
    const h = harness({
      getRun: async () => ({ run: Run.fromPartial({ id: 'r1', vmName: 'vm1', state: S.MIGRATION_STATE_PRECOPY }) }),
      watch: (_req: WatchRequest, o?: CallOptions) =>
        stream(events([progressEv(1, 0)]), async () => {
          h.interrupt.abort();
          expect(o?.signal?.aborted).toBe(true);
          throw new CancelledError('watch: cancelled');
        }),
    });
    expect(await runMigctl(['watch', 'r1'], h.deps)).toBe(130);
    expect(h.err.join('')).toContain('stopped watching; the run goes on');
  });

  it('writes an export to a file', async () => {
    const h = harness({ exportRuns: async () => ({ data: Buffer.from('run_id,vm\nr1,vm1\n'), contentType: 'text/csv' }) });
    expect(await runMigctl(['export', '--format', 'csv', '-o', '/tmp/x.csv', '--vm', 'vm1'], h.deps)).toBe(0);
    expect(Buffer.from(h.files.get('/tmp/x.csv')!).toString()).toBe('run_id,vm\nr1,vm1\n');
    expect(h.calls[0]?.request).toMatchObject({ format: 2, filter: { vmName: 'vm1' } });
  });
});
