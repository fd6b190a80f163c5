/**
 * Sizes and percentages print exactly as on the Python side: both are checked against one table,
 * tests/fixtures/size_cases.json (tests/unit/test_quantities.py reads it too).
 */
import { describe, expect, it } from 'vitest';

import cases from '../../../tests/fixtures/size_cases.json';
import { formatBytes, formatBytesPair, formatPercent } from '../format';

const GiB = 1024 ** 3;

describe('formatBytes (shared table)', () => {
  it.each(cases.bytes)('$bytes bytes -> $text', c => {
    expect(formatBytes(c.bytes), 'note' in c ? c.note : '').toBe(c.text);
  });
});

describe('formatPercent (shared table)', () => {
  it.each(cases.percent)('$percent -> $text', c => {
    expect(formatPercent(c.percent), 'note' in c ? c.note : '').toBe(c.text);
  });
});

describe('rounding', () => {
  it('rounds every exact tie (x.25, x.75 of a unit) half away from zero', () => {
    for (const [exponent, unit] of [
      [1, 'KiB'],
      [2, 'MiB'],
      [3, 'GiB'],
      [4, 'TiB']
    ] as const) {
      for (let quarters = 5; quarters < 400; quarters += 2) {
        const tenths = Math.floor((quarters * 25 + 5) / 10);
        const expected = tenths % 10 ? `${Math.floor(tenths / 10)}.${tenths % 10}` : `${tenths / 10}`;
        expect(formatBytes((quarters * 1024 ** exponent) / 4)).toBe(`${expected} ${unit}`);
      }
    }
  });

  it('prints a used/limit pair in one unit with the same rule', () => {
    expect(formatBytesPair(1.25 * GiB, 8 * GiB)).toBe('1.3 / 8.0 GiB');
    expect(formatBytesPair(3.1 * GiB, 8 * GiB)).toBe('3.1 / 8.0 GiB');
    expect(formatBytesPair(0, 512)).toBe('0 / 512 B');
  });
});
