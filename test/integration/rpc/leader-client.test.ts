/**
 * The leader-following client against three real gRPC servers on loopback that play replicated
 * coordinators: followers refuse with NOT_LEADER naming the leader (or nobody, mid-election), a
 * leader can die. The client must land each call on the leader, and keep other errors as they are.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError, MigdError, NotLeaderError } from '../../../services/shared/errors.js';
import { CoordinatorServiceService, Plan } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { createLogger } from '../../../services/shared/log.js';
import { createLeaderClient, splitAddresses } from '../../../services/shared/rpc/leader-client.js';
import { RpcServer, type Handlers } from '../../../services/shared/rpc/server.js';

const log = createLogger('test', {}, () => undefined, 'error');
type Svc = typeof CoordinatorServiceService;

interface Replica {
  server: RpcServer;
  address: string;
  calls: number;
}

describe('leader-following coordinator client', () => {
  const replicas: Replica[] = [];
  const clients: { close(): void }[] = [];
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await Promise.all(replicas.splice(0).map((r) => r.server.stop(0).catch(() => undefined)));
  });

  /** Three replicas; `leader()` says who leads now ('' = nobody). */
  async function cluster(leader: () => string, extra: (me: Replica) => Partial<Record<keyof Svc, unknown>> = () => ({})): Promise<Replica[]> {
    for (let i = 0; i < 3; i++) {
      const server = new RpcServer({ address: '127.0.0.1:0', security: { insecure: true }, log });
      const me: Replica = { server, address: '', calls: 0 };
      const own: Partial<Record<keyof Svc, unknown>> = {
        getPlan: async () => {
          me.calls++;
          if (leader() !== me.address) throw new NotLeaderError(leader());
          return { plan: Plan.fromPartial({ id: me.address }) };
        },
        ...extra(me),
      };
      const handlers = new Proxy(own, {
        get: (t, k: string) =>
          (t as Record<string, unknown>)[k] ??
          (() => {
            throw new MigdError('UNIMPLEMENTED', k);
          }),
      }) as unknown as Handlers<Svc>;
      server.addService('migd.v1.CoordinatorService', CoordinatorServiceService, handlers);
      me.address = `127.0.0.1:${await server.start()}`;
      replicas.push(me);
    }
    return replicas;
  }

  const client = (addresses: string[], deadlineMs = 5000): ReturnType<typeof createLeaderClient<Svc>> => {
    const c = createLeaderClient('migd.v1.CoordinatorService', CoordinatorServiceService, addresses, { security: { insecure: true }, defaultDeadlineMs: deadlineMs });
    clients.push(c);
    return c;
  };

  it('goes where a follower says the leader is, and stays there', async () => {
    const [a, b, c] = await cluster(() => replicas[2]!.address);
    const cl = client([a!.address, b!.address, c!.address]);
    expect((await cl.getPlan({ planId: 'p' })).plan?.id).toBe(c!.address);
    expect(cl.current).toBe(c!.address);
    expect([a!.calls, b!.calls, c!.calls]).toEqual([1, 0, 1]);
    await cl.getPlan({ planId: 'p' });
    expect([a!.calls, b!.calls, c!.calls]).toEqual([1, 0, 2]);
  });

  it('when the leader dies, waits out the election on the others and reaches the new leader', async () => {
    let leader = '';
    const [a, b, c] = await cluster(() => leader);
    leader = c!.address;
    const cl = client([a!.address, b!.address, c!.address]);
    await cl.getPlan({ planId: 'p' });
    // The leader dies; the survivors still name it for 0.5 s, then nobody, then b leads.
    await c!.server.stop(0);
    setTimeout(() => (leader = ''), 500);
    setTimeout(() => (leader = b!.address), 1200);
    const t0 = Date.now();
    expect((await cl.getPlan({ planId: 'p' })).plan?.id).toBe(b!.address);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1100);
    expect(cl.current).toBe(b!.address);
  });

  it('gives up at the deadline with the refusal when no leader is elected', async () => {
    const [a, b] = await cluster(() => '');
    const cl = client([a!.address, b!.address], 800);
    const t0 = Date.now();
    const err = await cl.getPlan({ planId: 'p' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NotLeaderError);
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it('does not retry an error of the leader itself', async () => {
    const [a, b] = await cluster(
      () => replicas[1]!.address,
      (me) => ({
        getRun: async () => {
          me.calls++;
          throw new InvalidArgumentError('bad run id');
        },
      }),
    );
    const cl = client([a!.address, b!.address]);
    await expect(cl.getRun({ runId: 'x' })).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(a!.calls + b!.calls).toBe(1);
  });

  it('moves a stream that has not started to the leader', async () => {
    const [a, b] = await cluster(
      () => replicas[1]!.address,
      (me) => ({
        watch: async function* () {
          if (me.address !== replicas[1]!.address) throw new NotLeaderError(replicas[1]!.address);
          yield {};
          yield {};
        },
      }),
    );
    const cl = client([a!.address, b!.address]);
    let n = 0;
    for await (const _ of cl.watch({ statesOnly: false, scope: { $case: 'cluster', value: true } })) n++;
    expect(n).toBe(2);
    expect(cl.current).toBe(b!.address);
  });

  it('splits an address list', () => {
    expect(splitAddresses(' a:1, b:2,,a:1 ')).toEqual(['a:1', 'b:2']);
  });
});
