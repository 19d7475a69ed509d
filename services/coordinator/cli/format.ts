/**
 * How migctl shows numbers and tables to people: percentages, times, progress bars and aligned
 * columns (bytes, rates and durations: domain/units.ts, shared with the domain's reasons). Pure
 * functions; the machine-readable output (--json) never goes through here.
 */
import { PolicyKind, migrationStateToJSON, type MigrationState } from '../../shared/gen/migd/v1/common.js';

/** A number with `digits` decimals, or "-" for NaN/∞ (e.g. a summary with no succeeded runs). */
export function formatNumber(v: number, digits = 0): string {
  return Number.isFinite(v) ? v.toFixed(digits) : '-';
}

/** "97%" from 0.97. */
export function formatPercent(fraction: number): string {
  return Number.isFinite(fraction) ? `${Math.round(fraction * 100)}%` : '-';
}

/** Local "2025-03-01 12:00:05", or "-" when unset. */
export function formatTime(d: Date | undefined): string {
  if (d === undefined || Number.isNaN(d.getTime())) return '-';
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

const PARTIAL = ['', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];

/**
 * A progress bar of `width` cells for `fraction` (clamped to 0..1): `[####......]` in ASCII,
 * or eighth-block characters for a terminal.
 */
export function progressBar(fraction: number, width: number, style: 'ascii' | 'unicode' = 'ascii'): string {
  const f = Number.isFinite(fraction) ? Math.max(0, Math.min(1, fraction)) : 0;
  if (style === 'ascii') {
    const n = Math.round(f * width);
    return `[${'#'.repeat(n)}${'.'.repeat(width - n)}]`;
  }
  const eighths = Math.round(f * width * 8);
  const full = Math.floor(eighths / 8);
  const part = full < width ? (PARTIAL[eighths % 8] ?? '') : '';
  return `▕${'█'.repeat(full)}${part}${' '.repeat(width - full - (part ? 1 : 0))}▏`;
}

/** "precopy", "postcopy-paused" from MIGRATION_STATE_PRECOPY… */
export function stateName(state: MigrationState): string {
  try {
    return migrationStateToJSON(state).replace(/^MIGRATION_STATE_/, '').toLowerCase().replace(/_/g, '-');
  } catch {
    return `state-${String(state)}`;
  }
}

const POLICY_NAMES: Readonly<Record<PolicyKind, string>> = {
  [PolicyKind.POLICY_KIND_UNSPECIFIED]: 'fixed',
  [PolicyKind.POLICY_KIND_FIXED]: 'fixed',
  [PolicyKind.POLICY_KIND_ADAPTIVE]: 'adaptive',
  [PolicyKind.POLICY_KIND_NOVA]: 'nova',
  [PolicyKind.POLICY_KIND_OVIRT_MINIMAL_DOWNTIME]: 'ovirt-minimal',
  [PolicyKind.POLICY_KIND_OVIRT_SUSPEND_WORKLOAD]: 'ovirt-suspend',
  [PolicyKind.POLICY_KIND_OVIRT_POSTCOPY]: 'ovirt-postcopy',
  [PolicyKind.POLICY_KIND_KUBEVIRT]: 'kubevirt',
  [PolicyKind.POLICY_KIND_KUBEVIRT_STALL_DETECTOR]: 'kubevirt-stall',
};

/** The name migctl's --policy takes for `kind` ("ovirt-minimal"…). */
export function policyDisplayName(kind: PolicyKind): string {
  return POLICY_NAMES[kind] ?? `policy-${String(kind)}`;
}

/** Column alignment: left for text, right for numbers. */
export type Align = 'left' | 'right';

/** Aligned columns separated by two spaces; a header row first. Trailing spaces trimmed. */
export function formatTable(headers: readonly string[], rows: readonly (readonly string[])[], align: readonly Align[] = []): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    headers
      .map((_, i) => {
        const c = cells[i] ?? '';
        const w = widths[i] ?? 0;
        return align[i] === 'right' ? c.padStart(w) : c.padEnd(w);
      })
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

/** Cuts `s` to `width` characters, ending with "…" when cut. */
export function truncate(s: string, width: number): string {
  if (width <= 0) return '';
  return s.length <= width ? s : `${s.slice(0, Math.max(0, width - 1))}…`;
}
