import { describe, expect, it } from 'vitest';
import { compareMinor, finerThanMinorUnit, roundMinor } from '../../src/platform/money/minor-units.ts';

describe("an amount finer than its currency's minor unit", () => {
  it('is seen at every magnitude the API accepts (up to 10¹²), not only below 15 significant digits', () => {
    // 3 decimals (KWD) from 10¹¹ and 4 (CLF) from 10¹⁰ need more than 15 significant digits: read at 15 they passed.
    expect(finerThanMinorUnit(123_456_789_012.3456, 3)).toBe(true);
    expect(finerThanMinorUnit(100_000_000_000.0004, 3)).toBe(true); // would round to 100,000,000,000.000: at a 10¹¹ bound, not over it
    expect(finerThanMinorUnit(12_345_678_901.12345, 4)).toBe(true);
    expect(finerThanMinorUnit(999_999_999_999.5, 0)).toBe(true);
  });
  it('is not claimed of an amount written to the minor unit, binary fractions and exponents included', () => {
    for (const [n, d] of [[123_456_789_012.345, 3], [999_999_999_999.999, 3], [1e12, 0], [1e12, 3], [0.1, 2], [0.29, 2], [1.05, 2], [0, 0], [12_345_678.1234, 4], [1e-2, 2], [-0, 2]] as const) {
      expect(finerThanMinorUnit(n, d), `${n} to ${d}`).toBe(false);
    }
    expect(finerThanMinorUnit(1e-7, 4)).toBe(true);
    expect(finerThanMinorUnit(0.1 + 0.2, 2)).toBe(true); // written 0.30000000000000004: 17 decimals
  });
});

describe('roundMinor', () => {
  it('keeps every digit a double holds above 10¹⁵ minor units (a product of 10⁶ deals × 10¹² is not read at 15 digits)', () => {
    expect(roundMinor(123_456_789_012_345_678, 2)).toBe(123_456_789_012_345_678);
    expect(roundMinor(-699_999_999_999_993_100, 3)).toBe(-699_999_999_999_993_100);
  });
  it('still rounds as written below it, a half away from zero', () => {
    expect(roundMinor(1.005, 2)).toBe(1.01);
    expect(roundMinor(-2.5, 0)).toBe(-3);
    expect(roundMinor(123_456_789_012.3456, 3)).toBe(123_456_789_012.346);
    expect(Object.is(roundMinor(-0.001, 2), 0)).toBe(true);
  });
});

describe('compareMinor (an amount against a threshold of its currency, as classify compares them)', () => {
  it('compares in minor units: an amount off the unit by binary arithmetic is the amount it rounds to', () => {
    expect(0.1 + 0.2 > 0.3).toBe(true); // the drift a plain comparison of doubles sees
    expect(compareMinor(0.1 + 0.2, 0.3, 2)).toBe(0);
    expect(compareMinor(0.1 + 0.2, 0.29, 2)).toBe(1);
    expect(compareMinor(0.1 + 0.2, 0.31, 2)).toBe(-1);
    expect(compareMinor(50_000.1 + 0.2, 50_000.3, 2)).toBe(0);
    expect(compareMinor(1.005, 1.01, 2)).toBe(0); // rounds as written, as the model does
  });
  it('is exact at the boundary in JPY, KWD and SAR, one minor unit either side included, at every magnitude the API accepts', () => {
    for (const [at, unit, digits] of [[30_001, 1, 0], [30_000.125, 0.001, 3], [30_000.3, 0.01, 2], [999_999_999_999.999, 0.001, 3], [1e12, 1, 0]] as const) {
      expect(compareMinor(at, at, digits), `${at}`).toBe(0);
      expect(compareMinor(roundMinor(at + unit, digits), at, digits), `${at} + ${unit}`).toBe(1);
      expect(compareMinor(roundMinor(at - unit, digits), at, digits), `${at} - ${unit}`).toBe(-1);
    }
    expect(compareMinor(123_456_789_012.346, 123_456_789_012.345, 3)).toBe(1);
    expect(compareMinor(0, 0, 0)).toBe(0);
    expect(compareMinor(3e12, 1e12, 3)).toBe(1); // a cost is a sum of three amounts up to 10¹² each
  });
  it('compares a threshold finer than the unit (a policy stored before it was refused) exactly as written', () => {
    // 1,000.5 JPY: no amount is at it; 1,000 is under it and 1,001 over it, as before.
    expect(compareMinor(1_000, 1_000.5, 0)).toBe(-1);
    expect(compareMinor(1_001, 1_000.5, 0)).toBe(1);
    expect(compareMinor(50_000.123, 50_000.1234, 3)).toBe(-1);
    expect(compareMinor(50_000.124, 50_000.1234, 3)).toBe(1);
    expect(compareMinor(1, 1e-7, 2)).toBe(1);
  });
});
