/**
 * Units, and the one set of byte, rate and duration formatters of the coordinator: the domain
 * explains itself with them (plan reasons, policy action reasons) and migctl shows figures with
 * them. Binary units throughout: guest memory is sized in MiB/GiB, and rates are shown in MiB/s so
 * a reason compares like with like ("dirty 80.0 MiB/s > link 11.4 MiB/s"). Pure.
 */

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'] as const;

/** QEMU's `mbps` figure is megabits per second (10^6 bits), not mebibits. */
export function mbpsToBytesPerSec(mbps: number): number {
  return (mbps * 1_000_000) / 8;
}

/** Infinity (a prediction that never ends) as "∞"; NaN (no figure) as "-". */
function notFinite(v: number): string {
  return Number.isNaN(v) ? '-' : '∞';
}

/** "0 B", "812 B", "4.0 KiB", "63.9 MiB", "1.50 GiB", "∞". */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return notFinite(bytes);
  let v = Math.abs(bytes);
  let i = 0;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  const sign = bytes < 0 ? '-' : '';
  if (i === 0) return `${sign}${Math.round(v)} B`;
  return `${sign}${v.toFixed(i >= 3 ? 2 : 1)} ${UNITS[i]}`;
}

/** "106.3 MiB/s". */
export function formatRate(bytesPerSec: number): string {
  return Number.isFinite(bytesPerSec) ? `${formatBytes(bytesPerSec)}/s` : notFinite(bytesPerSec);
}

/** "850 ms", "12.3 s", "4m05s", "2h10m", "∞"; a negative duration (no figure) is "-". */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return notFinite(ms);
  if (ms < 0) return '-';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.round(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
