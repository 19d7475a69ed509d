/** Nodes and the VMs they run: the registry's persistent view of the cluster. */
import { InvalidArgumentError, NotFoundError } from '../../shared/errors.js';
import { HostInfo, MigrationState, VmInfo } from '../../shared/gen/migd/v1/common.js';
import { NodeStatus, type Node } from '../../shared/gen/migd/v1/coordinator.js';
import { INSERT_CHUNK, nodeKey, vmKey, type Db, type StoreDatabase, type TxState } from './database.js';
import { date, hostFromJson, ms, vmToProto } from './mapping.js';
import type { NodeRow } from './schema.js';
import type { NodeVmRepository, UpsertNodeInput } from './types.js';

export class SqlNodeVmRepository implements NodeVmRepository {
  constructor(private readonly d: StoreDatabase) {}

  async upsertNode(input: UpsertNodeInput): Promise<Node> {
    await this.writeNode(input);
    return this.getNode(input.host?.nodeId ?? '');
  }

  async writeNode(input: UpsertNodeInput): Promise<void> {
    const host = HostInfo.fromPartial(input.host);
    const id = host.nodeId;
    if (id === '') throw new InvalidArgumentError('host.node_id is required');
    const status = input.status ?? NodeStatus.NODE_STATUS_UP;
    const now = this.d.now();
    const heartbeat = ms(input.heartbeatAt, now);
    await this.d.write(async (trx, tx) => {
      const existing = await trx.selectFrom('nodes').select('status').where('id', '=', id).executeTakeFirst();
      const values = {
        management_address: host.managementAddress,
        migration_address: host.migrationAddress,
        host_json: JSON.stringify(HostInfo.toJSON(host)),
        status,
        last_heartbeat_at: heartbeat,
        updated_at: now,
      };
      await trx
        .insertInto('nodes')
        .values({ id, ...values })
        .onConflict((oc) => oc.column('id').doUpdateSet(values))
        .execute();
      if (existing?.status !== status) {
        await this.d.enqueue(
          trx,
          tx,
          { $case: 'nodeState', value: { nodeId: id, up: status === NodeStatus.NODE_STATUS_UP, reason: input.reason ?? (existing ? 'status changed' : 'registered') } },
          new Date(now),
        );
      }
    }, { keys: [nodeKey(id)] });
  }

  async setNodeStatus(nodeId: string, status: NodeStatus, reason = ''): Promise<Node> {
    const now = this.d.now();
    await this.d.write(async (trx, tx) => {
      const existing = await trx.selectFrom('nodes').select('status').where('id', '=', nodeId).executeTakeFirst();
      if (existing === undefined) throw new NotFoundError(`node ${nodeId} not found`);
      if (existing.status === status) return;
      await trx.updateTable('nodes').set({ status, updated_at: now }).where('id', '=', nodeId).execute();
      await this.d.enqueue(trx, tx, { $case: 'nodeState', value: { nodeId, up: status === NodeStatus.NODE_STATUS_UP, reason } }, new Date(now));
    });
    return this.getNode(nodeId);
  }

  async getNode(nodeId: string): Promise<Node> {
    const nodes = await this.loadNodes(nodeId);
    const n = nodes[0];
    if (n === undefined) throw new NotFoundError(`node ${nodeId} not found`);
    return n;
  }

  listNodes(): Promise<Node[]> {
    return this.loadNodes();
  }

  private async loadNodes(onlyId?: string): Promise<Node[]> {
    return this.d.read(async (conn) => {
      let q = conn.selectFrom('nodes').selectAll().orderBy('id');
      if (onlyId !== undefined) q = q.where('id', '=', onlyId);
      const rows: NodeRow[] = await q.execute();
      if (rows.length === 0) return [];
      const ids = rows.map((r) => r.id);
      const vmCounts = await conn
        .selectFrom('vms')
        .select((eb) => ['node_id', eb.fn.countAll<number>().as('n')])
        .where('node_id', 'in', ids)
        .groupBy('node_id')
        .execute();
      const migrating = (col: 'source_node_id' | 'destination_node_id') =>
        conn
          .selectFrom('runs')
          .select((eb) => [eb.ref(col).as('node'), eb.fn.countAll<number>().as('n')])
          .where(col, 'in', ids)
          .where('finished_at', 'is', null)
          .where('state', '!=', MigrationState.MIGRATION_STATE_QUEUED)
          .groupBy(col)
          .execute();
      const out = new Map((await migrating('source_node_id')).map((r) => [r.node, Number(r.n)]));
      const inb = new Map((await migrating('destination_node_id')).map((r) => [r.node, Number(r.n)]));
      const vms = new Map(vmCounts.map((r) => [r.node_id, Number(r.n)]));
      return rows.map((r) => ({
        host: hostFromJson(r.host_json),
        status: r.status,
        lastHeartbeat: date(r.last_heartbeat_at),
        vmCount: vms.get(r.id) ?? 0,
        outboundMigrations: out.get(r.id) ?? 0,
        inboundMigrations: inb.get(r.id) ?? 0,
      }));
    });
  }

  async deleteVm(name: string): Promise<void> {
    await this.d.write(async (trx) => {
      await trx.deleteFrom('vms').where('name', '=', name).execute();
    });
  }

  upsertVm(vm: VmInfo): Promise<void> {
    return this.upsertVms([vm]);
  }

  async upsertVms(vms: readonly VmInfo[]): Promise<void> {
    const infos = vms.map((vm) => {
      const info = VmInfo.fromPartial(vm);
      if ((info.spec?.name ?? '') === '') throw new InvalidArgumentError('vm.spec.name is required');
      return info;
    });
    if (infos.length === 0) return;
    const now = this.d.now();
    if (infos.length === 1) {
      await this.d.write((trx, tx) => this.upsertOne(trx, tx, infos[0]!, now), { keys: [vmKey(infos[0]!.spec!.name)] });
      return;
    }
    const names = [...new Set(infos.map((i) => i.spec!.name))];
    await this.d.write(async (trx, tx) => {
      // Where each VM was before this transaction (then as this batch leaves it).
      const existing = new Map<string, { node_id: string | null; state: number }>();
      for (let i = 0; i < names.length; i += INSERT_CHUNK) {
        const rows = await trx.selectFrom('vms').select(['name', 'node_id', 'state']).where('name', 'in', names.slice(i, i + INSERT_CHUNK)).execute();
        for (const r of rows) existing.set(r.name, { node_id: r.node_id, state: r.state });
      }
      for (const info of infos) {
        const name = info.spec!.name;
        const nodeId = info.nodeId === '' ? null : info.nodeId;
        const values = {
          node_id: nodeId,
          state: info.state,
          memory_mib: info.spec?.memoryMib ?? 0,
          info_json: JSON.stringify(VmInfo.toJSON(info)),
          updated_at: now,
        };
        await trx
          .insertInto('vms')
          .values({ name, ...values })
          .onConflict((oc) => oc.column('name').doUpdateSet(values))
          .execute();
        const before = existing.get(name);
        existing.set(name, { node_id: nodeId, state: info.state });
        const changed = before === undefined || before.node_id !== nodeId || before.state !== info.state;
        if (changed && nodeId !== null) {
          await this.d.enqueue(trx, tx, { $case: 'vmChanged', value: { vm: info } }, new Date(now));
        }
      }
    }, { keys: names.map(vmKey) });
  }

  /**
   * One VM (a run's end settling its VM, a VM created through the coordinator): its row is written
   * with no read first. The registry writes a VM only when its node or state changed, so the first
   * statement, an UPDATE of a row that differs in either, is nearly always the only one before the
   * event; a VM not stored yet is inserted, one whose node and state are unchanged gets its other
   * columns. Same rows and VmChanged events as the batch path; statements compiled once (on
   * Postgres each is a round trip of the one write connection; issue 15 §4).
   */
  private async upsertOne(trx: Db, tx: TxState, info: VmInfo, now: number): Promise<void> {
    const name = info.spec!.name;
    const nodeId = info.nodeId === '' ? null : info.nodeId;
    const memory = info.spec?.memoryMib ?? 0;
    const json = JSON.stringify(VmInfo.toJSON(info));
    const moved = await this.d.reuse(
      trx,
      'vms.updateChanged',
      (db, p) =>
        db
          .updateTable('vms')
          .set({ node_id: p(0), state: p(1), memory_mib: p(2), info_json: p(3), updated_at: p(4) })
          .where('name', '=', p(5))
          .where((eb) => eb.or([eb('node_id', 'is distinct from', p(6)), eb('state', '<>', p(7))]))
          .returning('name'),
      [nodeId, info.state, memory, json, now, name, nodeId, info.state],
    );
    let changed = moved.rows.length > 0;
    if (!changed) {
      const inserted = await this.d.reuse(
        trx,
        'vms.insertNew',
        (db, p) =>
          db
            .insertInto('vms')
            .values({ name: p(0), node_id: p(1), state: p(2), memory_mib: p(3), info_json: p(4), updated_at: p(5) })
            .onConflict((oc) => oc.column('name').doNothing())
            .returning('name'),
        [name, nodeId, info.state, memory, json, now],
      );
      changed = inserted.rows.length > 0;
      if (!changed) {
        await this.d.reuse(trx, 'vms.refresh', (db, p) => db.updateTable('vms').set({ memory_mib: p(0), info_json: p(1), updated_at: p(2) }).where('name', '=', p(3)), [memory, json, now, name]);
      }
    }
    if (changed && nodeId !== null) await this.d.enqueue(trx, tx, { $case: 'vmChanged', value: { vm: info } }, new Date(now));
  }

  async getVm(name: string): Promise<VmInfo> {
    this.d.checkOpen();
    const row = await this.d.db.selectFrom('vms').selectAll().where('name', '=', name).executeTakeFirst();
    if (row === undefined) throw new NotFoundError(`VM ${name} not found`);
    return vmToProto(row);
  }

  async listVms(nodeId?: string): Promise<VmInfo[]> {
    this.d.checkOpen();
    let q = this.d.db.selectFrom('vms').selectAll().orderBy('node_id').orderBy('name');
    if (nodeId !== undefined && nodeId !== '') q = q.where('node_id', '=', nodeId);
    return (await q.execute()).map(vmToProto);
  }
}
