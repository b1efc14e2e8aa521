/**
 * Amounts of money to their currency's ISO 4217 minor unit: 2 decimals for SAR, 3 for KWD, BHD and
 * OMR, 0 for JPY. A submission's amounts are refused finer than that (finerThanMinorUnit), so a
 * threshold is never crossed by a fraction the currency cannot pay; derived sums are rounded to it.
 */

/**
 * ISO 4217's minor units other than 2 (its list A.1; the codes it gives none, such as gold's XAU, and
 * codes it does not know count as 2). Not Intl's `maximumFractionDigits`: V8 takes it from CLDR, which
 * shows IQD with 0 decimals (ISO: 3) and YER, LBP, IRR, HUF, IDR, PKR, COP, … with 0 (ISO: 2).
 */
const MINOR_UNITS: Readonly<Record<string, number>> = {
  ...Object.fromEntries(['BIF', 'CLP', 'DJF', 'GNF', 'ISK', 'JPY', 'KMF', 'KRW', 'PYG', 'RWF', 'UGX', 'UYI', 'VND', 'VUV', 'XAF', 'XOF', 'XPF'].map((c) => [c, 0])),
  ...Object.fromEntries(['BHD', 'IQD', 'JOD', 'KWD', 'LYD', 'OMR', 'TND'].map((c) => [c, 3])),
  CLF: 4,
  UYW: 4,
};

/** The currency's minor unit, as ISO 4217 has it (2 for SAR, 3 for KWD, 0 for JPY; 2 for a code it does not know). */
export function minorDigits(currency: string): number {
  return MINOR_UNITS[currency] ?? 2;
}

/**
 * `n` to `digits` decimals, a half away from zero (so the same whichever side owes it), read at 15
 * significant digits first so that a binary fraction (1.005 × 100 = 100.49999…) rounds as written —
 * below 10¹⁵ minor units only: above it a double has no fraction left to round, and reading it at 15
 * digits would drop integer digits (10⁶ deals × 10¹² is 10¹⁸). Never -0.
 */
export function roundMinor(n: number, digits: number): number {
  if (Number.isInteger(n)) return n + 0; // nothing to round (and × 10^digits ÷ 10^digits could move a 10¹⁸); -0 + 0 is 0
  const f = 10 ** digits;
  const scaled = Math.abs(n) * f;
  const r = Math.round(scaled < 1e15 ? Number(scaled.toPrecision(15)) : scaled) / f;
  return n < 0 && r !== 0 ? -r : r;
}

/**
 * Whether `n` as written has more decimals than `digits`: its shortest decimal form (what JSON.parse
 * read, and what a client's JSON.stringify wrote) — 0.1 has one, though 0.1 × 100 is 10.000000000000002.
 * Not `n × 10^digits` read at 15 significant digits: 123,456,789,012.3456 KWD needs 16 and read so
 * passed as 3 decimals.
 */
export function finerThanMinorUnit(n: number, digits: number): boolean {
  const [mantissa = '', exponent = '0'] = String(Math.abs(n)).split('e');
  const decimals = (mantissa.split('.')[1] ?? '').length - Number(exponent);
  return decimals > digits;
}

/** What a field finer than the currency's minor unit is told (422 validation_failed): a submission's amounts, a policy's cost thresholds. */
export function minorUnitMessage(currency: string): string {
  const digits = minorDigits(currency);
  return `at most ${digits} decimal${digits === 1 ? '' : 's'} in ${currency} (its ISO 4217 minor unit)`;
}

/** A decimal number exactly: `units` / 10^`scale` (`scale` ≥ 0). Money and rates as written, and their sums and products. */
export type Exact = { units: bigint; scale: number };

/** `n` as written (its shortest decimal form, as finerThanMinorUnit reads it), exactly: `units` / 10^`scale`. */
export function asWritten(n: number): Exact {
  const [mantissa = '', exponent = '0'] = String(n).split('e');
  const [whole = '', fraction = ''] = mantissa.split('.');
  const scale = fraction.length - Number(exponent);
  const units = BigInt(whole + fraction);
  return scale >= 0 ? { units, scale } : { units: units * 10n ** BigInt(-scale), scale: 0 };
}

/**
 * An amount against a threshold of its currency (`digits`: its minor unit), exactly: -1 below it, 0 at
 * it, 1 above it. The amount counts as the minor units it rounds to (roundMinor: 0.1 + 0.2 is 0.30,
 * at a 0.30 bound, not over it by a binary fraction), the threshold as written — a whole number of
 * minor units for any policy set since thresholds are held to the unit; one stored before, finer than
 * it (30,000.5 JPY), compares as written: no amount is at it, and the amounts on each side are those
 * that were on each side of it before. Integers (bigint), never doubles, so no drift at any magnitude.
 */
export function compareMinor(amount: number, threshold: number, digits: number): -1 | 0 | 1 {
  const a = asWritten(roundMinor(amount, digits));
  const t = asWritten(threshold);
  const scale = Math.max(a.scale, t.scale);
  const left = a.units * 10n ** BigInt(scale - a.scale);
  const right = t.units * 10n ** BigInt(scale - t.scale);
  return left < right ? -1 : left > right ? 1 : 0;
}

const atScale = (x: Exact, scale: number): bigint => x.units * 10n ** BigInt(scale - x.scale);

/** The exact sum (at the finest scale of its terms: no digit is lost, none is made up). */
export function sumExact(terms: readonly Exact[]): Exact {
  const scale = Math.max(0, ...terms.map((t) => t.scale));
  return { units: terms.reduce((sum, t) => sum + atScale(t, scale), 0n), scale };
}

/** The exact product. */
export function productExact(factors: readonly Exact[]): Exact {
  return factors.reduce((p, f) => ({ units: p.units * f.units, scale: p.scale + f.scale }), { units: 1n, scale: 0 });
}

/** `n` ÷ `d` (`d` ≠ 0) to a whole number, a half away from zero — integers, exactly. */
function divideRounded(n: bigint, d: bigint): bigint {
  const negative = n < 0n !== d < 0n;
  const [an, ad] = [n < 0n ? -n : n, d < 0n ? -d : d];
  const q = an / ad + (2n * (an % ad) >= ad ? 1n : 0n);
  return negative ? -q : q;
}

/** `x` in units of 10^-`digits` (the minor units, for a currency's `digits`), rounded once, a half away from zero, exactly. */
export function roundExact(x: Exact, digits: number): bigint {
  return x.scale <= digits ? atScale(x, digits) : divideRounded(x.units, 10n ** BigInt(x.scale - digits));
}

/**
 * `units` × 10^-`digits` as a number: the double nearest to it, read from its decimal form (rounded
 * once; for |`units`| < 2^53 the same double as `units` ÷ 10^`digits`, which JSON writes with those
 * digits). Never -0; beyond a double's range, ±Infinity.
 */
export function unitsToNumber(units: bigint, digits: number): number {
  if (units === 0n) return 0;
  const digitsOf = (units < 0n ? -units : units).toString().padStart(digits + 1, '0');
  const cut = digitsOf.length - digits;
  return Number(`${units < 0n ? '-' : ''}${digitsOf.slice(0, cut)}${digits > 0 ? `.${digitsOf.slice(cut)}` : ''}`);
}

/** The sum of `amounts` as written, rounded once to `digits` decimals (a half away from zero): exact at any magnitude and count. */
export function sumMinor(amounts: readonly number[], digits: number): number {
  return unitsToNumber(roundExact(sumExact(amounts.map(asWritten)), digits), digits);
}

/** The number of decimal digits of |`u`|. */
const digitCount = (u: bigint): number => (u < 0n ? -u : u).toString().length;

/**
 * `n` ÷ `d` (`d` ≠ 0) to `digits` decimals, a half away from zero, computed exactly and then read as the
 * nearest double (a ratio: months, not money). A ratio of at least 10^309 is ±Infinity, beyond any
 * double, told from the digits of `n` and `d` before dividing: rates near 10⁻³⁰⁸ (they pass validation)
 * have scales past 600, and the exact quotient, hundreds of digits divided and printed only for Number
 * to answer Infinity, made the model's step about 20 times slower (200 µs, five ratios a step).
 */
export function ratioRounded(n: Exact, d: Exact, digits: number): number {
  // |n| ≥ 10^(digits of n.units − 1 − n.scale) and |d| < 10^(digits of d.units − d.scale).
  if (n.units !== 0n && digitCount(n.units) - 1 - n.scale - (digitCount(d.units) - d.scale) >= 309) return n.units < 0n !== d.units < 0n ? -Infinity : Infinity;
  // n/d × 10^digits = n.units × 10^(d.scale + digits) ÷ (d.units × 10^n.scale)
  return unitsToNumber(divideRounded(n.units * 10n ** BigInt(d.scale + digits), d.units * 10n ** BigInt(n.scale)), digits);
}

/**
 * The ratio `n` ÷ `d` (`d` ≠ 0) against `t` as written, exactly (bigint, no division): -1 below it, 0 at
 * it, 1 above it. A payback's months against a policy's month bound: 6.004 is over 6 though it is
 * shown as 6 to 2 decimals.
 */
export function compareRatio(n: Exact, d: Exact, t: number): -1 | 0 | 1 {
  const b = asWritten(t);
  // n/d ? b ⇔ n·10^(d.scale + b.scale) ? b.units·d.units·10^n.scale, both sides × d² > 0 to keep the sign of d out.
  const left = n.units * d.units * 10n ** BigInt(d.scale + b.scale);
  const right = b.units * d.units * d.units * 10n ** BigInt(n.scale);
  return left < right ? -1 : left > right ? 1 : 0;
}

/**
 * `n` ÷ `d` (both ≥ 0, `d` > 0) cut (not rounded) to `digits` decimals, as a decimal string — its
 * trailing zeros dropped, and `…` after it when digits were cut off: how far a payback is over a bound
 * its 2-decimal figure is at (24.004, 24.0003…).
 */
export function ratioCut(n: Exact, d: Exact, digits: number): { units: bigint; text: string } {
  const num = n.units * 10n ** BigInt(d.scale + digits);
  const den = d.units * 10n ** BigInt(n.scale);
  const units = num / den;
  const s = units.toString().padStart(digits + 1, '0');
  const fraction = s.slice(s.length - digits).replace(/0+$/, '');
  return { units, text: `${s.slice(0, s.length - digits)}${fraction ? `.${fraction}` : ''}${num % den === 0n ? '' : '…'}` };
}

/** A payback's months exactly: `numerator` ÷ `denominator` (cost × 12 ÷ gross profit, the profit > 0). */
export type PaybackRatio = { numerator: Exact; denominator: Exact };
