/**
 * A client of a replicated coordinator: several addresses, every call goes to the leader. A
 * follower refuses a write with UNAVAILABLE, reason NOT_LEADER, naming the leader: the call is
 * sent again there at once (nothing was done by the follower). An address that does not answer
 * (its coordinator died), or a refusal without a leader (an election is under way), sends the call
 * to the next address; after a full round it waits a little (0.1 s doubling to 1 s) and tries
 * again, until the call's deadline. Reads are served by followers too, so they stay where they
 * are. With one address this is exactly createClient().
 *
 * Only refusals and connection failures are retried: a call that reached a leader and failed
 * otherwise keeps its error. A stream is moved only before its first message; once it has
 * delivered something, a failure ends it (the caller resumes, e.g. a run's Watch replays).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { CancelledError, MigdError, NotLeaderError } from '../errors.js';
import { createClient, type CallOptions, type ClientOptions, type RpcClient } from './client.js';

type AnyMethod = Parameters<typeof createClient>[1][string];

/** Splits `a:1,b:2` into addresses (spaces ignored, duplicates dropped). */
export function splitAddresses(list: string): string[] {
  return [...new Set(list.split(',').map((a) => a.trim()).filter(Boolean))];
}

/** Whether another coordinator may take the call: a refusal, or no connection to this one. */
function shouldMove(err: unknown): boolean {
  if (err instanceof NotLeaderError) return true;
  return err instanceof MigdError && err.code === 'UNAVAILABLE';
}

export interface LeaderClientOptions extends ClientOptions {
  /** Told when calls move to another coordinator (for logs). */
  readonly onMove?: (from: string, to: string, why: string) => void;
}

/** A client that follows the leader among `addresses` (see the file comment). */
export type LeaderRpcClient<S> = RpcClient<S> & {
  /** The address calls go to now. */
  readonly current: string;
};

export function createLeaderClient<S extends Record<string, AnyMethod>>(serviceName: string, definition: S, addresses: readonly string[], opts: LeaderClientOptions): LeaderRpcClient<S> {
  if (addresses.length === 0) throw new Error('no coordinator address');
  const clients = new Map<string, RpcClient<S>>();
  const clientOf = (address: string): RpcClient<S> => {
    let c = clients.get(address);
    if (!c) {
      c = createClient(serviceName, definition, address, opts);
      clients.set(address, c);
    }
    return c;
  };
  const known = [...addresses];
  let current = known[0]!;
  if (known.length === 1) {
    const single = clientOf(current) as LeaderRpcClient<S>;
    Object.defineProperty(single, 'current', { value: current });
    return single;
  }
  const defaultDeadline = opts.defaultDeadlineMs ?? 10_000;
  const moveTo = (to: string, why: string): void => {
    if (to === current) return;
    opts.onMove?.(current, to, why);
    current = to;
  };
  /**
   * Where to go after `err` at `from`; 'wait' after a full round of failures. A named leader
   * already tried in this round is stale (it died; no one has taken over yet): not followed again.
   */
  const next = (err: unknown, from: string, tried: Set<string>): string | 'wait' => {
    if (err instanceof NotLeaderError && err.leader && err.leader !== from && !tried.has(err.leader)) {
      if (!known.includes(err.leader)) known.push(err.leader);
      return err.leader;
    }
    const i = known.indexOf(from);
    for (let k = 1; k <= known.length; k++) {
      const cand = known[(i + k) % known.length]!;
      if (!tried.has(cand)) return cand;
    }
    return 'wait';
  };

  const out: Record<string, unknown> = {
    close: () => {
      for (const c of clients.values()) c.close();
    },
    waitForReady: (timeoutMs: number) => clientOf(current).waitForReady(timeoutMs),
  };
  Object.defineProperty(out, 'current', { get: () => current, enumerable: true });

  for (const [key, m] of Object.entries(definition)) {
    if (m.responseStream) {
      out[key] = (request: unknown, o: CallOptions = {}) =>
        (async function* () {
          const tried = new Set<string>();
          let pause = 100;
          for (;;) {
            const at = current;
            tried.add(at);
            let delivered = false;
            try {
              const stream = (clientOf(at) as unknown as Record<string, (r: unknown, o: CallOptions) => AsyncIterable<unknown>>)[key]!(request, o);
              for await (const msg of stream) {
                delivered = true;
                yield msg;
              }
              return;
            } catch (err) {
              if (delivered || !shouldMove(err) || o.signal?.aborted) throw err;
              const to = next(err, at, tried);
              if (to === 'wait') {
                tried.clear();
                await sleep(pause, undefined, o.signal ? { signal: o.signal } : {}).catch(() => {
                  throw new CancelledError(`${m.path}: cancelled`);
                });
                pause = Math.min(pause * 2, 1000);
                continue;
              }
              moveTo(to, (err as Error).message);
            }
          }
        })();
    } else {
      out[key] = async (request: unknown, o: CallOptions = {}) => {
        const budget = o.deadlineMs ?? defaultDeadline;
        const end = Date.now() + budget;
        const tried = new Set<string>();
        let pause = 100;
        let refused: unknown;
        for (;;) {
          const at = current;
          tried.add(at);
          const left = end - Date.now();
          try {
            // waitForReady would sit on a dead coordinator until the deadline: not with several.
            return await (clientOf(at) as unknown as Record<string, (r: unknown, o: CallOptions) => Promise<unknown>>)[key]!(request, { ...o, waitForReady: false, deadlineMs: Math.max(1, left) });
          } catch (err) {
            // Out of time on a retry: the refusal that made us retry says more than the deadline.
            if (refused !== undefined && err instanceof MigdError && err.code === 'DEADLINE_EXCEEDED') throw refused;
            if (!shouldMove(err) || o.signal?.aborted || Date.now() >= end) throw err;
            refused = err;
            const to = next(err, at, tried);
            if (to === 'wait') {
              tried.clear();
              const wait = Math.min(pause, end - Date.now());
              if (wait <= 0) throw err;
              await sleep(wait, undefined, o.signal ? { signal: o.signal } : {}).catch(() => {
                throw new CancelledError(`${m.path}: cancelled`);
              });
              pause = Math.min(pause * 2, 1000);
              continue;
            }
            moveTo(to, (err as Error).message);
          }
        }
      };
    }
  }
  return out as LeaderRpcClient<S>;
}
