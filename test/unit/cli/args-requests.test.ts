import { describe, expect, it } from 'vitest';
import { Accel, BootSource, DiskAio, DiskBus, DiskCache, DiskFormat, MigrationState, MultifdCompression, PolicyKind, StorageMode, TimeoutAction, WorkloadPattern } from '../../../services/shared/gen/migd/v1/common.js';
import { ExportFormat } from '../../../services/shared/gen/migd/v1/coordinator.js';
import { parseCommandLine, type Invocation } from '../../../services/coordinator/cli/args.js';
import {
  adjustRunRequest,
  createVmRequest,
  drainRequest,
  exportRequest,
  listRunsRequest,
  migrateRequest,
  parseStates,
  policyFromFlags,
  watchRequest,
} from '../../../services/coordinator/cli/requests.js';
import { UsageError } from '../../../services/coordinator/cli/units.js';

const env = { env: {}, defaultCertDir: () => '/certs' };
const key = (): string => 'k-1';

function run(argv: string[], e = env): Invocation {
  const r = parseCommandLine(argv, e);
  if (r.kind !== 'run') throw new Error('expected a command');
  return r;
}

describe('command line', () => {
  it('finds the command after global flags and takes global flags anywhere', () => {
    const r = run(['--coordinator', '10.0.0.1:7000', '--json', 'migrate', 'vm1', '--to', 'b', '--identity', 'viewer', '--timeout', '30']);
    expect(r.command).toBe('migrate');
    expect(r.args).toEqual(['vm1']);
    expect(r.flags['to']).toBe('b');
    expect(r.global).toEqual({ coordinator: '10.0.0.1:7000', certDir: '/certs', identity: 'viewer', json: true, timeoutMs: 30_000 });
  });

  it('defaults from the environment, flags winning', () => {
    const e = { env: { MIGD_COORDINATOR: 'coord:7100', MIGD_CERT_DIR: '/etc/migd', MIGD_IDENTITY: 'viewer' }, defaultCertDir: () => '/certs' };
    expect(run(['nodes'], e).global).toMatchObject({ coordinator: 'coord:7100', certDir: '/etc/migd', identity: 'viewer', json: false, timeoutMs: undefined });
    expect(run(['nodes', '--coordinator=127.0.0.1:9'], e).global.coordinator).toBe('127.0.0.1:9');
    expect(run(['nodes']).global.coordinator).toBe('127.0.0.1:7000');
  });

  it('reads the two-word history compare', () => {
    const r = run(['history', 'compare', '--since', '7d']);
    expect(r.command).toBe('history compare');
    expect(r.flags['since']).toBe('7d');
    expect(() => parseCommandLine(['history'], env)).toThrow(/history: say which report/);
    expect(() => parseCommandLine(['history', 'list'], env)).toThrow(/unknown report "list"/);
  });

  it('answers help requests', () => {
    expect(parseCommandLine(['--help'], env)).toEqual({ kind: 'help', command: undefined, asked: true });
    expect(parseCommandLine(['migrate', '-h'], env)).toEqual({ kind: 'help', command: 'migrate', asked: true });
    expect(parseCommandLine(['help', 'drain'], env)).toEqual({ kind: 'help', command: 'drain', asked: true });
    expect(parseCommandLine([], env)).toEqual({ kind: 'help', command: undefined, asked: false });
  });

  it('refuses what it cannot run, naming the problem', () => {
    expect(() => parseCommandLine(['migrat', 'vm1'], env)).toThrow(/unknown command "migrat"/);
    expect(() => parseCommandLine(['migrate'], env)).toThrow(/migrate: missing VM/);
    expect(() => parseCommandLine(['migrate', 'a', 'b'], env)).toThrow(/unexpected argument "b"/);
    expect(() => parseCommandLine(['migrate', 'vm1', '--bogus'], env)).toThrow(/migrate: unknown flag '--bogus'/);
    expect(() => parseCommandLine(['migrate', 'vm1', '--to'], env)).toThrow(UsageError);
    expect(() => parseCommandLine(['nodes', '--coordinator', 'nohost'], env)).toThrow(/--coordinator: "nohost" is not HOST:PORT/);
    expect(() => parseCommandLine(['nodes', '--coordinator', 'a:1,nohost'], env)).toThrow(/--coordinator: "nohost" is not HOST:PORT/);
    const several = parseCommandLine(['nodes', '--coordinator', '10.0.0.1:7000,10.0.0.2:7000'], env);
    expect(several.kind === 'run' && several.global.coordinator).toBe('10.0.0.1:7000,10.0.0.2:7000');
    expect(() => parseCommandLine(['nodes', '--timeout', '0'], env)).toThrow(/--timeout/);
  });
});

describe('requests', () => {
  it('maps migrate flags to a SubmitPlanRequest', () => {
    const r = run(['migrate', 'vm1', '--to', 'b', '--policy', 'adaptive', '--downtime', '500', '--bandwidth', '100M', '--priority', '5', '--key', 'deploy-42', '--tls', '--label', 'exp1']);
    const req = migrateRequest(r.args[0]!, r.flags, key);
    expect(req.idempotencyKey).toBe('deploy-42');
    expect(req.priority).toBe(5);
    expect(req.label).toBe('exp1');
    expect(req.target).toEqual({ $case: 'migrate', value: { vmName: 'vm1', destinationNodeId: 'b' } });
    expect(req.policy).toMatchObject({ kind: PolicyKind.POLICY_KIND_ADAPTIVE, downtimeLimitMs: 500, maxBandwidthBytesPerSec: 100 * 2 ** 20, tls: true });
    expect(req.policy?.postcopy).toBeUndefined();
  });

  it('leaves the policy to the coordinator when no policy flag is given, and makes a key', () => {
    const req = migrateRequest('vm1', run(['migrate', 'vm1']).flags, key);
    expect(req.idempotencyKey).toBe('k-1');
    expect(req.policy).toMatchObject({ kind: PolicyKind.POLICY_KIND_UNSPECIFIED, downtimeLimitMs: 0, maxBandwidthBytesPerSec: 0 });
    expect(req.target).toEqual({ $case: 'migrate', value: { vmName: 'vm1', destinationNodeId: '' } });
  });

  it('maps capability flags', () => {
    const p = policyFromFlags(run(['migrate', 'v', '--auto-converge', '--multifd', '4', '--multifd-compression', 'zstd', '--completion-timeout', '150', '--progress-timeout', '2m', '--on-timeout', 'force-complete', '--switchover-ack']).flags);
    expect(p.autoConverge).toEqual({ enabled: true, initialPct: 0, incrementPct: 0, maxPct: 0 });
    expect(p.multifd).toEqual({ enabled: true, channels: 4, compression: MultifdCompression.MULTIFD_COMPRESSION_ZSTD, compressionLevel: 0 });
    expect(p.completionTimeoutSecPerGib).toBe(150);
    expect(p.progressTimeoutSec).toBe(120);
    expect(p.timeoutAction).toBe(TimeoutAction.TIMEOUT_ACTION_FORCE_COMPLETE);
    expect(p.switchoverAck).toBe(true);
    expect(policyFromFlags(run(['migrate', 'v', '--xbzrle', '32M']).flags).xbzrle).toEqual({ enabled: true, cacheBytes: 32 * 2 ** 20 });
  });

  it('maps the post-copy flags', () => {
    const pc = (...a: string[]) => policyFromFlags(run(['migrate', 'v', ...a]).flags).postcopy;
    expect(pc('--postcopy')).toMatchObject({ enabled: true, afterPasses: 0, afterMs: 0, onDemandOnly: false });
    expect(pc('--postcopy')?.preempt).toBeUndefined();
    expect(pc('--postcopy-after', '2')).toMatchObject({ enabled: true, afterPasses: 2, afterMs: 0 });
    expect(pc('--postcopy-after', '20s')).toMatchObject({ enabled: true, afterPasses: 0, afterMs: 20_000 });
    expect(pc('--postcopy-on-demand', '--no-preempt')).toMatchObject({ enabled: true, onDemandOnly: true, preempt: false });
    expect(pc('--no-postcopy')).toMatchObject({ enabled: false });
    expect(() => pc('--no-postcopy', '--postcopy')).toThrow(/--no-postcopy contradicts/);
    expect(() => pc('--postcopy-after', '0')).toThrow(/--postcopy-after/);
  });

  it('refuses values it cannot express', () => {
    expect(() => policyFromFlags(run(['migrate', 'v', '--policy', 'yolo']).flags)).toThrow(/unknown policy "yolo"/);
    expect(() => policyFromFlags(run(['migrate', 'v', '--multifd-compression', 'zstd']).flags)).toThrow(/needs --multifd/);
    expect(() => policyFromFlags(run(['migrate', 'v', '--on-timeout', 'panic']).flags)).toThrow(/--on-timeout/);
    expect(() => migrateRequest('v', run(['migrate', 'v', '--priority', '99999999999']).flags, key)).toThrow(/--priority/);
    expect(policyFromFlags(run(['migrate', 'v', '--policy', 'ovirt-minimal']).flags).kind).toBe(PolicyKind.POLICY_KIND_OVIRT_MINIMAL_DOWNTIME);
    expect(policyFromFlags(run(['migrate', 'v', '--policy', 'ovirt-suspend-workload']).flags).kind).toBe(PolicyKind.POLICY_KIND_OVIRT_SUSPEND_WORKLOAD);
  });

  it('maps drain with a destination list', () => {
    const r = run(['drain', 'a', '--to', 'b,c', '--to', 'd', '--policy', 'kubevirt']);
    const req = drainRequest(r.args[0]!, r.flags, key);
    expect(req.target).toEqual({ $case: 'drain', value: { nodeId: 'a', destinationNodeIds: ['b', 'c', 'd'] } });
    expect(req.policy?.kind).toBe(PolicyKind.POLICY_KIND_KUBEVIRT);
  });

  it('maps create-vm', () => {
    const r = run(['create-vm', 'web1', '--memory', '192', '--node', 'a', '--pattern', 'hotcold', '--workers', '2', '--bytes', '32M', '--rate', '10M', '--label', 'tier=web', '--accel', 'tcg']);
    const req = createVmRequest(r.args[0]!, r.flags);
    expect(req.nodeId).toBe('a');
    expect(req.spec).toMatchObject({ name: 'web1', memoryMib: 192, vcpus: 1, accel: Accel.ACCEL_TCG, labels: { tier: 'web' } });
    expect(req.spec?.workload).toEqual({ pattern: WorkloadPattern.WORKLOAD_PATTERN_HOTCOLD, workers: 2, bytesPerWorker: 32 * 2 ** 20, rateBytesPerSec: 10 * 2 ** 20, hotBytes: 0, verify: true, phaseAfterMs: 0, phaseRateBytesPerSec: 0 });
    expect(() => createVmRequest('x', run(['create-vm', 'x']).flags)).toThrow(/--memory MIB is required/);
    expect(() => createVmRequest('x', run(['create-vm', 'x', '--memory', '64', '--pattern', 'wild']).flags)).toThrow(/--pattern/);
    expect(() => createVmRequest('x', run(['create-vm', 'x', '--memory', '64', '--label', 'novalue']).flags)).toThrow(/KEY=VALUE/);
  });

  it('maps create-vm --nic NETWORK[,mac=…][,ip=…] (repeatable)', () => {
    const r = run(['create-vm', 'web1', '--memory', '64', '--nic', 'vm,ip=198.19.0.140/25', '--nic', 'lan,mac=52:54:00:00:00:01']);
    expect(createVmRequest('web1', r.flags).spec?.nics).toEqual([
      { network: 'vm', mac: '', guestIp: '198.19.0.140/25' },
      { network: 'lan', mac: '52:54:00:00:00:01', guestIp: '' },
    ]);
    expect(createVmRequest('x', run(['create-vm', 'x', '--memory', '64']).flags).spec?.nics).toEqual([]);
    expect(() => createVmRequest('x', run(['create-vm', 'x', '--memory', '64', '--nic', 'mac=52:54:00:00:00:01']).flags)).toThrow(/network name/);
    expect(() => createVmRequest('x', run(['create-vm', 'x', '--memory', '64', '--nic', 'vm,speed=10']).flags)).toThrow(/mac=MAC or ip=/);
  });

  it('maps create-vm --disk (repeatable) onto DiskSpec and DiskCreate', () => {
    const GiB = 2 ** 30;
    const r = run([
      'create-vm', 'db1', '--memory', '256',
      '--disk', 'id=data,path=/srv/a/db1.qcow2,mode=local,create=8G,bus=scsi,cache=none,aio=native,serial=DB1-DATA',
      '--disk', 'id=os,path=/nfs/os.img,mode=shared,format=raw,readonly',
      '--disk', 'id=over,path=/srv/a/over.img,base=/srv/a/debian.qcow2',
    ]);
    const spec = createVmRequest('db1', r.flags).spec!;
    expect(spec.disks).toEqual([
      { id: 'data', path: '/srv/a/db1.qcow2', format: DiskFormat.DISK_FORMAT_QCOW2, bus: DiskBus.DISK_BUS_VIRTIO_SCSI, cache: DiskCache.DISK_CACHE_NONE, aio: DiskAio.DISK_AIO_NATIVE, readOnly: false, serial: 'DB1-DATA', storage: StorageMode.STORAGE_MODE_LOCAL, create: { sizeBytes: 8 * GiB, basePath: '' } },
      { id: 'os', path: '/nfs/os.img', format: DiskFormat.DISK_FORMAT_RAW, bus: DiskBus.DISK_BUS_VIRTIO_BLK, cache: DiskCache.DISK_CACHE_UNSPECIFIED, aio: DiskAio.DISK_AIO_UNSPECIFIED, readOnly: true, serial: '', storage: StorageMode.STORAGE_MODE_SHARED, create: undefined },
      // An overlay is qcow2 whatever its name; size 0 keeps the base's.
      { id: 'over', path: '/srv/a/over.img', format: DiskFormat.DISK_FORMAT_QCOW2, bus: DiskBus.DISK_BUS_VIRTIO_BLK, cache: DiskCache.DISK_CACHE_UNSPECIFIED, aio: DiskAio.DISK_AIO_UNSPECIFIED, readOnly: false, serial: '', storage: StorageMode.STORAGE_MODE_LOCAL, create: { sizeBytes: 0, basePath: '/srv/a/debian.qcow2' } },
    ]);
    expect(spec.boot).toBeUndefined();
    expect(spec.workload?.diskId).toBeUndefined();
    // A raw image by default, an existing one (no create), LOCAL, with the guest's disk workload on it.
    const w = createVmRequest('x', run(['create-vm', 'x', '--memory', '64', '--disk', 'id=d0,path=/srv/a/x.raw', '--disk-workload', 'd0,bytes=16M,rate=2M']).flags).spec!;
    expect(w.disks[0]).toMatchObject({ format: DiskFormat.DISK_FORMAT_RAW, storage: StorageMode.STORAGE_MODE_LOCAL, create: undefined });
    expect(w.workload).toMatchObject({ diskId: 'd0', diskBytes: 16 * 2 ** 20, diskRateBytesPerSec: 2 * 2 ** 20 });
    expect(createVmRequest('x', run(['create-vm', 'x', '--memory', '64']).flags).spec?.disks).toEqual([]);
  });

  it('boots a VM from its disk, or from a kernel of the node', () => {
    const d = createVmRequest('x', run(['create-vm', 'x', '--memory', '64', '--boot', 'disk', '--disk', 'id=os,path=/srv/a/os.qcow2']).flags).spec!;
    expect(d.boot).toBe(BootSource.BOOT_SOURCE_DISK);
    expect([d.kernelPath, d.initrdPath, d.extraCmdline]).toEqual(['', '', '']);
    const k = createVmRequest('x', run(['create-vm', 'x', '--memory', '64', '--boot', 'kernel', '--kernel', '/srv/a/vmlinuz', '--initrd', '/srv/a/initrd', '--append', 'root=/dev/vda ro', '--disk', 'id=root,path=/srv/a/root.raw']).flags).spec!;
    expect(k).toMatchObject({ boot: BootSource.BOOT_SOURCE_KERNEL, kernelPath: '/srv/a/vmlinuz', initrdPath: '/srv/a/initrd', extraCmdline: 'root=/dev/vda ro' });
  });

  it.each([
    [['--disk', 'path=/srv/a/x.raw'], /needs id=ID and path=PATH/],
    [['--disk', 'id=d0'], /needs id=ID and path=PATH/],
    [['--disk', 'id=d0,path=disks/x.raw'], /--disk path: "disks\/x.raw" must be an absolute path on the node/],
    [['--disk', 'id=d0,path=/a,size=1G'], /unknown key "size" \(known: id, path, mode/],
    [['--disk', 'id=d0,path=/a,mode=nfs'], /--disk mode: "nfs" is not local or shared/],
    [['--disk', 'id=d0,path=/a,format=vmdk'], /--disk format: "vmdk" is not raw or qcow2/],
    [['--disk', 'id=d0,path=/a,bus=ide'], /--disk bus: "ide" is not/],
    [['--disk', 'id=d0,path=/a,cache=fast'], /--disk cache/],
    [['--disk', 'id=d0,path=/a,aio=posix'], /--disk aio/],
    [['--disk', 'id=d0,path=/a,create=big'], /--disk create: "big" is not a size/],
    [['--disk', 'id=d0,path=/a,create=0'], /create=SIZE must be greater than 0/],
    [['--disk', 'id=d0,path=/a,create='], /create needs a value/],
    [['--disk', 'id=d0,path=/a,base=/b,format=raw'], /base=PATH makes a qcow2 overlay/],
    [['--disk', 'id=d0,path=/a,base=b.qcow2'], /--disk base: "b.qcow2" must be an absolute path/],
    [['--disk', 'id=d0,path=/a,id=d1'], /id is given twice/],
    [['--disk', 'id=d0,path=/a,,readonly'], /empty item/],
    [['--disk', 'id=d0,path=/a,readonly=no'], /readonly takes no value/],
    [['--boot', 'disk'], /--boot disk: the firmware boots the first --disk, and none is given/],
    [['--boot', 'pxe', '--disk', 'id=d0,path=/a'], /--boot: "pxe" is not kernel or disk/],
    [['--boot', 'disk', '--disk', 'id=d0,path=/a', '--kernel', '/k'], /--kernel do not apply/],
    [['--boot', 'disk', '--disk', 'id=d0,path=/a', '--disk-workload', 'd0'], /--disk-workload do not apply/],
    [['--initrd', '/i'], /--initrd needs --kernel/],
    [['--kernel', 'vmlinuz'], /--kernel: "vmlinuz" must be an absolute path/],
    [['--disk', 'id=d0,path=/a', '--disk-workload', 'd1'], /no --disk has id "d1"/],
    [['--disk', 'id=d0,path=/a', '--disk-workload', 'd0,speed=1M'], /is not bytes=SIZE or rate=RATE/],
  ])('refuses create-vm %j with a UsageError', (extra, message) => {
    const flags = run(['create-vm', 'x', '--memory', '64', ...extra]).flags;
    expect(() => createVmRequest('x', flags)).toThrow(UsageError);
    expect(() => createVmRequest('x', flags)).toThrow(message);
  });

  it('maps run filters, pagination and export', () => {
    const now = Date.parse('2025-03-02T12:00:00Z');
    const r = run(['runs', '--vm', 'vm1', '--node', 'a', '--state', 'failed,cancelled', '--policy', 'nova,adaptive', '--since', '1d', '--until', '2025-03-02T11:00:00Z', '--limit', '20', '--page-token', 'tok']);
    const req = listRunsRequest(r.flags, now);
    expect(req.pageSize).toBe(20);
    expect(req.pageToken).toBe('tok');
    expect(req.filter).toMatchObject({
      vmName: 'vm1',
      nodeId: 'a',
      states: [MigrationState.MIGRATION_STATE_FAILED, MigrationState.MIGRATION_STATE_CANCELLED],
      policyKinds: [PolicyKind.POLICY_KIND_NOVA, PolicyKind.POLICY_KIND_ADAPTIVE],
      createdAfter: new Date('2025-03-01T12:00:00Z'),
      createdBefore: new Date('2025-03-02T11:00:00Z'),
    });
    expect(() => listRunsRequest(run(['runs', '--since', '1h', '--until', '2h']).flags, now)).toThrow(/--since is later than --until/);
    expect(() => listRunsRequest(run(['runs', '--limit', '5000']).flags, now)).toThrow(/--limit/);
    expect(exportRequest(run(['export', '--format', 'csv']).flags, now).format).toBe(ExportFormat.EXPORT_FORMAT_CSV);
    expect(exportRequest(run(['export']).flags, now).format).toBe(ExportFormat.EXPORT_FORMAT_JSON);
    expect(() => exportRequest(run(['export', '--format', 'xml']).flags, now)).toThrow(/--format/);
  });

  it('expands state groups', () => {
    expect(parseStates(['finished'])).toEqual([MigrationState.MIGRATION_STATE_SUCCEEDED, MigrationState.MIGRATION_STATE_FAILED, MigrationState.MIGRATION_STATE_CANCELLED]);
    const active = parseStates(['active']);
    expect(active).toContain(MigrationState.MIGRATION_STATE_PRECOPY);
    expect(active).not.toContain(MigrationState.MIGRATION_STATE_SUCCEEDED);
    expect(parseStates(['postcopy-paused', 'MIGRATION_STATE_QUEUED'])).toEqual([MigrationState.MIGRATION_STATE_POSTCOPY_PAUSED, MigrationState.MIGRATION_STATE_QUEUED]);
    expect(() => parseStates(['sleeping'])).toThrow(/unknown state "sleeping"/);
  });

  it('maps set and watch', () => {
    const a = adjustRunRequest('r1', run(['set', 'r1', '--downtime', '2s']).flags);
    expect(a).toEqual({ runId: 'r1', downtimeLimitMs: 2000, maxBandwidthBytesPerSec: undefined, reason: '' });
    const b = adjustRunRequest('r1', run(['set', 'r1', '--bandwidth', '0']).flags);
    expect(b.maxBandwidthBytesPerSec).toBe(0);
    expect(b.downtimeLimitMs).toBeUndefined();
    expect(() => adjustRunRequest('r1', run(['set', 'r1']).flags)).toThrow(/--downtime MS and\/or --bandwidth/);
    expect(watchRequest('r1', run(['watch', 'r1']).flags).scope).toEqual({ $case: 'runId', value: 'r1' });
    expect(watchRequest(undefined, run(['watch', '--cluster', '--states-only']).flags)).toEqual({ scope: { $case: 'cluster', value: true }, statesOnly: true });
    expect(() => watchRequest(undefined, run(['watch']).flags)).toThrow(/give RUN or --cluster/);
    expect(() => watchRequest('r1', run(['watch', 'r1', '--cluster']).flags)).toThrow(/not both/);
  });
});
