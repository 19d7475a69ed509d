/**
 * QEMU's migration limits and defaults (measured on 10.0.2), written once for both services: the
 * node sets them, the coordinator validates and plans against them.
 */

/** QEMU's largest `downtime-limit` (ms): `migrate-set-parameters` refuses more. */
export const QEMU_MAX_DOWNTIME_MS = 2_000_000;

/** QEMU's defaults migd starts from. */
export const QEMU_DEFAULTS = Object.freeze({
  downtimeLimitMs: 300,
  throttleInitialPct: 20,
  throttleIncrementPct: 10,
  throttleMaxPct: 99,
  multifdChannels: 2,
  xbzrleCacheBytes: 64 * 1024 * 1024,
  maxDowntimeMs: QEMU_MAX_DOWNTIME_MS,
});

/** Ranges QEMU accepts for the parameters a policy sets. */
export const QEMU_LIMITS = Object.freeze({
  maxDowntimeMs: QEMU_MAX_DOWNTIME_MS,
  maxMultifdChannels: 255,
  maxZlibLevel: 9,
  maxZstdLevel: 20,
  maxThrottlePct: 99,
  maxThrottleIncrementPct: 100,
});

/** Whether `ms` is a downtime limit QEMU accepts (1..QEMU_MAX_DOWNTIME_MS). */
export function isValidDowntimeLimit(ms: number): boolean {
  return Number.isInteger(ms) && ms >= 1 && ms <= QEMU_MAX_DOWNTIME_MS;
}
