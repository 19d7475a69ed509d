/**
 * Types for the QMP commands migd uses, transcribed from QEMU 10.0's qapi/migration.json,
 * qapi/run-state.json, qapi/misc.json and qapi/control.json (checked against
 * `query-qmp-schema` of the installed 10.0.2). `QmpClient.execute` is typed by this map; any
 * other command still works and returns `unknown`.
 */

/** qapi RunState. */
export type RunState =
  | 'debug'
  | 'inmigrate'
  | 'internal-error'
  | 'io-error'
  | 'paused'
  | 'postmigrate'
  | 'prelaunch'
  | 'finish-migrate'
  | 'restore-vm'
  | 'running'
  | 'save-vm'
  | 'shutdown'
  | 'suspended'
  | 'watchdog'
  | 'guest-panicked'
  | 'colo';

/** qapi MigrationStatus. */
export type MigrationStatus =
  | 'none'
  | 'setup'
  | 'cancelling'
  | 'cancelled'
  | 'active'
  | 'postcopy-active'
  | 'postcopy-paused'
  | 'postcopy-recover-setup'
  | 'postcopy-recover'
  | 'completed'
  | 'failed'
  | 'colo'
  | 'pre-switchover'
  | 'device'
  | 'wait-unplug';

export interface StatusInfo {
  running: boolean;
  status: RunState;
}

/** qapi MigrationStats (the `ram` member of query-migrate). */
export interface MigrationStats {
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  normal: number;
  'normal-bytes': number;
  'dirty-pages-rate': number;
  mbps: number;
  'dirty-sync-count': number;
  'postcopy-requests': number;
  'page-size': number;
  'multifd-bytes': number;
  'pages-per-second': number;
  'precopy-bytes': number;
  'downtime-bytes': number;
  'postcopy-bytes': number;
  'dirty-sync-missed-zero-copy': number;
}

/** qapi MigrationInfo (query-migrate). Every member is optional: which appear depends on status. */
export interface MigrationInfo {
  status?: MigrationStatus;
  ram?: MigrationStats;
  'xbzrle-cache'?: Record<string, number>;
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  'setup-time'?: number;
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
  'blocked-reasons'?: string[];
  'postcopy-blocktime'?: number;
  'postcopy-vcpu-blocktime'?: number[];
  'socket-address'?: Record<string, unknown>[];
  'dirty-limit-throttle-time-per-round'?: number;
  'dirty-limit-ring-full-time'?: number;
}

/** One entry of query-migrate-capabilities / migrate-set-capabilities. */
export interface MigrationCapabilityStatus {
  capability: string;
  state: boolean;
}

/**
 * qapi MigrationParameters (query-migrate-parameters) — the members migd reads, plus whatever
 * else QEMU reports. Sizes in bytes, times in ms, bandwidth in bytes/s.
 */
export interface MigrationParameters {
  'downtime-limit'?: number;
  'max-bandwidth'?: number;
  'avail-switchover-bandwidth'?: number;
  'max-postcopy-bandwidth'?: number;
  'cpu-throttle-initial'?: number;
  'cpu-throttle-increment'?: number;
  'cpu-throttle-tailslow'?: boolean;
  'max-cpu-throttle'?: number;
  'throttle-trigger-threshold'?: number;
  'multifd-channels'?: number;
  'multifd-compression'?: 'none' | 'zlib' | 'zstd' | 'qatzip' | 'qpl' | 'uadk';
  'multifd-zlib-level'?: number;
  'multifd-zstd-level'?: number;
  'xbzrle-cache-size'?: number;
  'x-vcpu-dirty-limit-period'?: number;
  'vcpu-dirty-limit'?: number;
  'zero-page-detection'?: 'none' | 'legacy' | 'multifd';
  [other: string]: unknown;
}

/** The typed command table: `args` (undefined = takes none) and `ret`. */
export interface QmpCommandMap {
  qmp_capabilities: { args: { enable?: string[] }; ret: Record<string, never> };
  'query-status': { args: undefined; ret: StatusInfo };
  'query-version': {
    args: undefined;
    ret: { qemu: { major: number; minor: number; micro: number }; package: string };
  };
  'query-name': { args: undefined; ret: { name?: string } };
  'query-uuid': { args: undefined; ret: { UUID: string } };
  stop: { args: undefined; ret: Record<string, never> };
  cont: { args: undefined; ret: Record<string, never> };
  quit: { args: undefined; ret: Record<string, never> };
  system_reset: { args: undefined; ret: Record<string, never> };
  system_powerdown: { args: undefined; ret: Record<string, never> };
  'query-migrate': { args: undefined; ret: MigrationInfo };
  'query-migrate-capabilities': { args: undefined; ret: MigrationCapabilityStatus[] };
  'migrate-set-capabilities': { args: { capabilities: MigrationCapabilityStatus[] }; ret: Record<string, never> };
  'query-migrate-parameters': { args: undefined; ret: MigrationParameters };
  'migrate-set-parameters': { args: MigrationParameters; ret: Record<string, never> };
  migrate: { args: { uri?: string; channels?: unknown[]; detach?: boolean; resume?: boolean }; ret: Record<string, never> };
  'migrate-incoming': { args: { uri?: string; channels?: unknown[]; 'exit-on-error'?: boolean }; ret: Record<string, never> };
  'migrate-cancel': { args: undefined; ret: Record<string, never> };
  'migrate-continue': { args: { state: MigrationStatus }; ret: Record<string, never> };
  'migrate-start-postcopy': { args: undefined; ret: Record<string, never> };
  'migrate-pause': { args: undefined; ret: Record<string, never> };
  'migrate-recover': { args: { uri: string }; ret: Record<string, never> };
}

/** Arguments of command `C`: typed for known commands, a plain object otherwise. */
export type QmpArgs<C extends string> = C extends keyof QmpCommandMap
  ? QmpCommandMap[C]['args']
  : Record<string, unknown> | undefined;

/** Return value of command `C`: typed for known commands, `unknown` otherwise. */
export type QmpReturn<C extends string> = C extends keyof QmpCommandMap ? QmpCommandMap[C]['ret'] : unknown;
