/**
 * CSV writing per RFC 4180: fields holding a comma, a double quote, CR or LF (or leading or
 * trailing spaces, which spreadsheet tools would trim) are quoted, with `"` doubled; records end
 * with CRLF.
 */

/** A value of one CSV field; null and undefined become an empty field. */
export type CsvValue = string | number | boolean | null | undefined;

/** Formats one field. */
export function csvField(value: CsvValue): string {
  if (value === null || value === undefined) return '';
  const s = typeof value === 'number' ? (Number.isFinite(value) ? String(value) : '') : String(value);
  return /[",\r\n]|^\s|\s$/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** Formats one record (without the line ending). */
export function csvRecord(values: readonly CsvValue[]): string {
  return values.map(csvField).join(',');
}

/** A whole document: header line then rows, each ending in CRLF. */
export function toCsv(header: readonly string[], rows: Iterable<readonly CsvValue[]>): string {
  let out = csvRecord(header) + '\r\n';
  for (const r of rows) out += csvRecord(r) + '\r\n';
  return out;
}
