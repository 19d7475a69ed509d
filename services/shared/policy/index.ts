/**
 * Migration-policy rules both services need, written once (STYLE 14): QEMU's limits, validation,
 * resolution into QEMU capabilities and parameters, terminal states, and the ErrorInfo builder.
 */
export { errorCodeOf, errorInfo, errorInfoFromParts, errorInfoOf, type ErrorCodeName } from './error-info.js';
export { QEMU_DEFAULTS, QEMU_LIMITS, QEMU_MAX_DOWNTIME_MS, isValidDowntimeLimit } from './limits.js';
export { OPTIONAL_CAPABILITIES, migrationCapabilities, migrationConfigProblems, resolveMigrationConfig, type MigrationConfig } from './resolve.js';
export { TERMINAL_STATES, isTerminalState } from './states.js';
export { policyProblems } from './validate.js';
