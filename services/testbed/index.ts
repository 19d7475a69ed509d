/**
 * Test hosts as network namespaces: see testbed.ts for the topology and the API.
 */
export { Testbed } from './testbed.js';
export type { CutOptions, ExecOptions, PeerOptions, TestbedHost, TestbedOptions, TestbedVmClient, TestbedVmNetwork } from './testbed.js';
export type { LinkShape } from './shaping.js';
export type { Network } from './addressing.js';
export { DEFAULT_PREFIX, MGMT_IF, MIGRATION_IF, VM_BRIDGE, VM_IF } from './addressing.js';
export { Prober, type ProberOptions } from './prober.js';
export { BlackoutProbe, migrationTxBytes, networkBlackoutOf, type BlackoutProbeOptions } from './guest-probe.js';
export { computeBlackout, type BlackoutResult, type ProbeOutage } from './blackout.js';
export { CommandFailedError, systemRunner } from './runner.js';
export type { CommandResult, CommandRunner, RunOptions } from './runner.js';
