/**
 * Units and the few formatters the domain uses to explain itself in words (plan reasons, policy
 * action reasons). Binary units throughout: guest memory is sized in MiB/GiB, and rates are shown
 * in MiB/s so a reason compares like with like ("dirty 80.0 MiB/s > link 11.4 MiB/s").
 */

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

/** QEMU's `mbps` figure is megabits per second (10^6 bits), not mebibits. */
export function mbpsToBytesPerSec(mbps: number): number {
  return (mbps * 1_000_000) / 8;
}

/** "1.5 GiB", "512.0 MiB", "800 KiB". */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return '∞';
  const abs = Math.abs(bytes);
  if (abs >= GiB) return `${(bytes / GiB).toFixed(1)} GiB`;
  if (abs >= MiB) return `${(bytes / MiB).toFixed(1)} MiB`;
  if (abs >= KiB) return `${Math.round(bytes / KiB)} KiB`;
  return `${Math.round(bytes)} B`;
}

/** "11.4 MiB/s". */
export function formatRate(bytesPerSec: number): string {
  if (!Number.isFinite(bytesPerSec)) return '∞';
  return `${(bytesPerSec / MiB).toFixed(1)} MiB/s`;
}

/** "850 ms", "12.3 s", "∞". */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return '∞';
  if (Math.abs(ms) < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}
