import { describe, expect, it } from 'vitest';
import { csvField, csvRecord, toCsv } from '../../../services/coordinator/store/csv.js';

describe('CSV quoting', () => {
  it.each([
    ['plain', 'plain'],
    ['a,b', '"a,b"'],
    ['say "hi"', '"say ""hi"""'],
    ['line\nbreak', '"line\nbreak"'],
    ['cr\rhere', '"cr\rhere"'],
    [' padded', '" padded"'],
    ['trailing ', '"trailing "'],
    ['', ''],
    ['"', '""""'],
  ])('%j -> %j', (input, out) => {
    expect(csvField(input)).toBe(out);
  });

  it('formats numbers, booleans and empty values', () => {
    expect(csvField(42)).toBe('42');
    expect(csvField(-1.5)).toBe('-1.5');
    expect(csvField(Number.NaN)).toBe('');
    expect(csvField(true)).toBe('true');
    expect(csvField(null)).toBe('');
    expect(csvField(undefined)).toBe('');
  });

  it('joins records with commas and ends every line with CRLF', () => {
    expect(csvRecord(['a', 'b,c', 1])).toBe('a,"b,c",1');
    expect(toCsv(['x', 'y'], [['1', '2'], ['3', 'multi\nline']])).toBe('x,y\r\n1,2\r\n3,"multi\nline"\r\n');
    expect(toCsv(['only'], [])).toBe('only\r\n');
  });
});
