/**
 * The Postgres store's write path as the coordinator runs it (issue 15): the timing of a write
 * transaction's statements (store/pg-timing.ts) on a throw-away server.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openPostgresHistoryStore, type PostgresHistoryStore } from '../../../services/coordinator/store/postgres.js';
import { turns } from '../../../services/shared/metrics/turns.js';
import { VmSpec, VmState, type VmInfo } from '../../../services/shared/gen/migd/v1/common.js';
import { startPostgres, type PostgresServer } from '../../helpers/postgres.js';
import { quietLogger } from './fixtures.js';

let server: PostgresServer;
beforeAll(async () => {
  server = await startPostgres();
}, 60_000);
afterAll(async () => {
  await server?.dispose();
});

const vm = (name: string): VmInfo => ({ spec: VmSpec.fromPartial({ name, memoryMib: 256 }), nodeId: 'a', state: VmState.VM_STATE_RUNNING, pid: 1, startedAt: undefined, migrationRunId: '', lastGuestPerf: undefined, qemuCpuSeconds: 0, localDisks: [] });

describe('write statement timing on Postgres', () => {
  let store: PostgresHistoryStore | undefined;
  afterEach(async () => {
    await store?.close();
    store = undefined;
    turns.disable();
  });

  const cause = (name: string) => turns.causesSnapshot().find((c) => c.cause === name);

  it('times each statement of the write transactions, and nothing of the reads', async () => {
    turns.enable();
    store = await openPostgresHistoryStore({ url: await server.createDatabase(), logger: quietLogger });
    await store.nodes.upsertVm(vm('a'));
    await store.nodes.listVms();
    await Promise.all([store.nodes.upsertVm(vm('b')), store.nodes.upsertVm(vm('c'))]);
    const stats = store.writeStats();
    const tx = cause('pg.write transaction');
    // One transaction per group commit; each holds the writes' statements (their outbox insert
    // counted with them) and the group's own: begin, write lock, commit (no fence here).
    expect(stats.groups).toBe(2);
    expect(tx?.count).toBe(stats.groups);
    const statements = stats.statements + 2 * stats.groups;
    expect(tx!.sizeMean * tx!.count).toBe(statements + stats.groups);
    // Every statement but the begins (sent before the lock marks the transaction a write's).
    expect(cause('pg.write send→answer')?.count).toBe(statements);
    expect(cause('pg.write send→answer idle')?.count).toBe(statements);
    expect(cause('pg.write answer→resolved')?.count).toBe(statements);
    // From each statement's result to the next one's send, within a transaction.
    expect(cause('pg.write resolved→send')?.count).toBe(statements - stats.groups);
  });

  it('records nothing while the profiler is off', async () => {
    store = await openPostgresHistoryStore({ url: await server.createDatabase(), logger: quietLogger });
    await store.nodes.upsertVm(vm('a'));
    turns.enable();
    expect(cause('pg.write transaction')).toBeUndefined();
  });
});
