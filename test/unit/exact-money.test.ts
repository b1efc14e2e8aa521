import { describe, expect, it } from 'vitest';
import { buildEconomics, paybackMonths } from '../../src/modules/golden-path/economics-model.step.ts';
import { settle } from '../../src/modules/partner-offboarding/partner-offboarding.steps.ts';
import { ratioRounded, roundMinor } from '../../src/platform/money/minor-units.ts';
import { canonicalJson } from '../../src/platform/idempotency/canonical-json.ts';

/** The database's time a step would stamp its output with (StepContext.now). */
const PRODUCED_AT = new Date('2026-12-01T12:00:00.000Z');

/**
 * The money of the economics model and of the offboarding's netting is exact: sums and products of
 * the amounts (and rates) as written, in integers, rounded once to the minor unit — not doubles that
 * drift a minor unit past 2^53 of them, as a cost of 2.68 × 10¹² KWD did. Checked against a bigint
 * reference written here from the documented formulas, on seeded random inputs.
 */

/** mulberry32: a small seeded PRNG, so a failure names inputs that reproduce. */
function prng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A decimal in the reference: `u` / 10^`s`, built alongside the number the model is given. */
type Dec = { u: bigint; s: number };
const pow10 = (n: number) => 10n ** BigInt(n);
const decString = ({ u, s }: Dec) => {
  const digits = (u < 0n ? -u : u).toString().padStart(s + 1, '0');
  return `${u < 0n ? '-' : ''}${digits.slice(0, digits.length - s)}${s ? `.${digits.slice(digits.length - s)}` : ''}`;
};
/** The reference's rounding: `num` ÷ `den` to a whole number, a half away from zero. */
const halfAway = (num: bigint, den: bigint) => {
  const neg = num < 0n;
  const n = neg ? -num : num;
  const q = n / den + (2n * (n % den) >= den ? 1n : 0n);
  return neg ? -q : q;
};
/** `d` to `digits` decimals, as the number JSON would carry (the double nearest it). */
const toMinor = (d: Dec, digits: number) => Number(decString({ u: d.s > digits ? halfAway(d.u, pow10(d.s - digits)) : d.u * pow10(digits - d.s), s: digits })) + 0;
const mul = (...xs: Dec[]): Dec => xs.reduce((p, x) => ({ u: p.u * x.u, s: p.s + x.s }), { u: 1n, s: 0 });
const add = (...xs: Dec[]): Dec => {
  const s = Math.max(...xs.map((x) => x.s));
  return { u: xs.reduce((sum, x) => sum + x.u * pow10(s - x.s), 0n), s };
};
/** Payback in the reference: cost × 12 ÷ profit to 2 decimals, a half up; null without profit. */
const months = (cost: Dec, profit: Dec) => (profit.u === 0n ? null : Number(halfAway(cost.u * 1200n * pow10(profit.s), profit.u * pow10(cost.s))) / 100);

const DIGITS = { JPY: 0, SAR: 2, KWD: 3 } as const;
type Currency = keyof typeof DIGITS;

/** A random amount 0–10¹² to `digits` decimals, at a random magnitude (15 significant digits at most, so the number reads as written): its number and its decimal. */
function amount(rnd: () => number, digits: number): [number, Dec] {
  const magnitude = Math.floor(rnd() * (Math.min(12, 15 - digits) + 1));
  const whole = BigInt(Math.floor(rnd() * 10 ** magnitude));
  const d = { u: whole * pow10(digits) + BigInt(Math.floor(rnd() * 10 ** digits)), s: digits };
  return [Number(decString(d)), d];
}
/** A random rate 0–1 with up to 6 decimals. */
function rate(rnd: () => number): [number, Dec] {
  const s = Math.floor(rnd() * 7);
  const d = { u: BigInt(Math.round(rnd() * 10 ** s)), s };
  return [Number(decString(d)), d];
}

function randomCase(rnd: () => number) {
  const currency = (['JPY', 'SAR', 'KWD'] as const)[Math.floor(rnd() * 3)] as Currency;
  const digits = DIGITS[currency];
  const deals = Math.floor(rnd() * (rnd() < 0.5 ? 1_000_001 : 200));
  const [value, valueD] = amount(rnd, digits);
  const [winRate, winRateD] = rate(rnd);
  const [margin, marginD] = rate(rnd);
  const costs = [amount(rnd, digits), amount(rnd, digits), amount(rnd, digits)];
  const e = { expected_deals_per_year: deals, average_deal_value: value, win_rate: winRate, gross_margin: margin, onboarding_cost: costs[0]![0], enablement_cost: costs[1]![0], annual_support_cost: costs[2]![0] };
  const ref = { deals: { u: BigInt(deals), s: 0 }, value: valueD, winRate: winRateD, margin: marginD, cost: add(...costs.map((c) => c[1])) };
  return { currency, digits, e, ref };
}

/** The model as it was (doubles, rounded at the end): outputs for ordinary inputs must stay byte-identical to it. */
function legacyEconomics(e: Parameters<typeof buildEconomics>[0], currency: Currency) {
  const round2 = (n: number) => Math.round(n * 100) / 100;
  const payback = (x: typeof e) => {
    const profit = x.expected_deals_per_year * x.average_deal_value * x.win_rate * x.gross_margin;
    if (profit <= 0) return null;
    const m = round2((x.onboarding_cost + x.enablement_cost + x.annual_support_cost) / (profit / 12));
    return Number.isFinite(m) ? m : null;
  };
  const upside = e.expected_deals_per_year * e.average_deal_value * e.win_rate;
  const digits = DIGITS[currency];
  return {
    currency,
    revenue_upside: roundMinor(upside, digits),
    gross_profit: roundMinor(upside * e.gross_margin, digits),
    cost: roundMinor(e.onboarding_cost + e.enablement_cost + e.annual_support_cost, digits),
    payback_months: payback(e),
    sensitivity: [
      { label: 'win_rate_-20%', payback_months: payback({ ...e, win_rate: e.win_rate * 0.8 }) },
      { label: 'win_rate_+20%', payback_months: payback({ ...e, win_rate: Math.min(1, e.win_rate * 1.2) }) },
      { label: 'deal_value_-20%', payback_months: payback({ ...e, average_deal_value: e.average_deal_value * 0.8 }) },
      { label: 'deal_value_+20%', payback_months: payback({ ...e, average_deal_value: e.average_deal_value * 1.2 }) },
    ],
  };
}

const ECONOMICS = { expected_deals_per_year: 12, average_deal_value: 250000, win_rate: 0.3, gross_margin: 0.35, onboarding_cost: 40000, enablement_cost: 15000, annual_support_cost: 10000 };

describe('the economics model, exactly', () => {
  it('records the exact total cost above 2.25 × 10¹² KWD (the reported 2,678,818,162,215.360, which doubles made .361)', () => {
    const e = { ...ECONOMICS, onboarding_cost: 863_212_823_867.817, enablement_cost: 835_851_907_730.742, annual_support_cost: 979_753_430_616.801 };
    expect(roundMinor(e.onboarding_cost + e.enablement_cost + e.annual_support_cost, 3)).toBe(2_678_818_162_215.361); // the double sum, rounded
    expect(buildEconomics(e, 'KWD', PRODUCED_AT).cost).toBe(2_678_818_162_215.36);
  });

  it('rounds the upside and profit once, from the exact product: 10⁶ deals of 999,999,999,999.999 KWD at 0.7 and 0.3', () => {
    const e = { ...ECONOMICS, expected_deals_per_year: 1_000_000, average_deal_value: 999_999_999_999.999, win_rate: 0.7, gross_margin: 0.3 };
    const m = buildEconomics(e, 'KWD', PRODUCED_AT);
    // 699,999,999,999,999,299.3 and 209,999,999,999,999,789.79 exactly: the doubles nearest them.
    expect(m.revenue_upside).toBe(Number('699999999999999299.3'));
    expect(m.gross_profit).toBe(Number('209999999999999789.79'));
    expect(m.revenue_upside).not.toBe(roundMinor(1_000_000 * 999_999_999_999.999 * 0.7, 3));
  });

  it('rounds a payback at an exact half up, as documented: 133.125 months is 133.13, where the double quotient made it 133.12', () => {
    // profit 1 × 1,000 × 0.07 × 0.64 = 44.8; cost 497 × 12 ÷ 44.8 = 133.125 exactly.
    const e = { ...ECONOMICS, expected_deals_per_year: 1, average_deal_value: 1000, win_rate: 0.07, gross_margin: 0.64, onboarding_cost: 497, enablement_cost: 0, annual_support_cost: 0 };
    expect(legacyEconomics(e, 'SAR').payback_months).toBe(133.12);
    expect(paybackMonths(e)).toBe(133.13);
    expect(buildEconomics(e, 'SAR', PRODUCED_AT).payback_months).toBe(133.13);
  });

  it('matches a bigint reference on seeded random inputs, every magnitude the API accepts (0–10¹², 10⁶ deals)', () => {
    const rnd = prng(20261205);
    for (let i = 0; i < 3000; i++) {
      const { currency, digits, e, ref } = randomCase(rnd);
      const m = buildEconomics(e, currency, PRODUCED_AT);
      const upside = mul(ref.deals, ref.value, ref.winRate);
      const profitOf = (x: typeof ref) => mul(x.deals, x.value, x.winRate, x.margin);
      const capped = (r: Dec) => (r.u > pow10(r.s) ? { u: 1n, s: 0 } : r);
      const expected = {
        revenue_upside: toMinor(upside, digits),
        gross_profit: toMinor(mul(upside, ref.margin), digits),
        cost: toMinor(ref.cost, digits),
        payback_months: months(ref.cost, profitOf(ref)),
        sensitivity: [
          months(ref.cost, profitOf({ ...ref, winRate: mul(ref.winRate, { u: 8n, s: 1 }) })),
          months(ref.cost, profitOf({ ...ref, winRate: capped(mul(ref.winRate, { u: 12n, s: 1 })) })),
          months(ref.cost, profitOf({ ...ref, value: mul(ref.value, { u: 8n, s: 1 }) })),
          months(ref.cost, profitOf({ ...ref, value: mul(ref.value, { u: 12n, s: 1 }) })),
        ],
      };
      const actual = { ...m, sensitivity: m.sensitivity.map((s) => s.payback_months) };
      expect(actual, `${currency} ${JSON.stringify(e)}`).toMatchObject(expected);
    }
  });

  it('answers byte for byte as the double model did for ordinary inputs (amounts up to 10⁷, rates to the percent)', () => {
    // (Months at an exact half the double quotient missed are the one difference there: the test above.)
    const rnd = prng(7);
    for (let i = 0; i < 3000; i++) {
      const currency = (['JPY', 'SAR', 'KWD'] as const)[Math.floor(rnd() * 3)] as Currency;
      const digits = DIGITS[currency];
      const money = () => Number((Math.floor(rnd() * 10 ** (1 + Math.floor(rnd() * 7))) + Math.floor(rnd() * 10 ** digits) / 10 ** digits).toFixed(digits));
      const percent = () => Math.floor(rnd() * 101) / 100;
      const e = { expected_deals_per_year: Math.floor(rnd() * 200), average_deal_value: money(), win_rate: percent(), gross_margin: percent(), onboarding_cost: money(), enablement_cost: money(), annual_support_cost: money() };
      const { provenance: _, ...m } = buildEconomics(e, currency, PRODUCED_AT);
      expect(canonicalJson(m), `${currency} ${JSON.stringify(e)}`).toBe(canonicalJson(legacyEconomics(e, currency)));
    }
  });

  it('answers a ratio beyond a double as ±Infinity, and the months of rates near 10⁻³⁰⁸ (valid input) as null, as the exact quotient does', () => {
    // The reference divides in full: the quotient to 2 decimals, a half away from zero, read as a number.
    const full = (n: Dec, d: Dec) => Number(decString({ u: halfAway(n.u * pow10(d.s + 2) * (d.u < 0n ? -1n : 1n), (d.u < 0n ? -d.u : d.u) * pow10(n.s)), s: 2 }));
    const rnd = prng(308);
    for (let i = 0; i < 2000; i++) {
      // Ratios from about 10³⁰⁰ to 10³¹⁸, around the largest double (1.8 × 10³⁰⁸) and the 10³⁰⁹ the step tells apart by digits.
      const n = { u: BigInt(Math.floor(rnd() * 10 ** Math.floor(rnd() * 16))) * (rnd() < 0.5 ? -1n : 1n) + 1n, s: Math.floor(rnd() * 20) };
      const d = { u: BigInt(1 + Math.floor(rnd() * 10 ** Math.floor(rnd() * 16))), s: n.s + 300 + Math.floor(rnd() * 20) - Math.floor(rnd() * 15) };
      expect(ratioRounded({ units: n.u, scale: n.s }, { units: d.u, scale: d.s }, 2), `${decString(n)} / ${decString(d)}`).toBe(full(n, d));
    }
    expect(ratioRounded({ units: 17976931348623157n, scale: 0 }, { units: 1n, scale: 292 }, 2)).toBe(1.7976931348623157e308);
    expect(ratioRounded({ units: 1n, scale: 0 }, { units: 1n, scale: 310 }, 2)).toBe(Infinity);
    expect(ratioRounded({ units: -1n, scale: 0 }, { units: 1n, scale: 310 }, 2)).toBe(-Infinity);
    for (const r of [5e-324, 2.2250738585072014e-308, 1.2345678901234567e-200]) {
      const e = { ...ECONOMICS, expected_deals_per_year: 1_000_000, average_deal_value: 999_999_999_999.999, win_rate: r, gross_margin: r };
      const m = buildEconomics(e, 'KWD', PRODUCED_AT);
      expect([m.payback_months, ...m.sensitivity.map((s) => s.payback_months)], `${r}`).toEqual([null, null, null, null, null]);
    }
  });
});

describe('settle (the offboarding netting), exactly', () => {
  it('nets balances above 2.25 × 10¹² KWD to the exact sum, not a minor unit off', () => {
    const balances = [863_212_823_867.817, 835_851_907_730.742, 979_753_430_616.801].map((amount) => ({ currency: 'KWD', amount }));
    expect(settle(balances)).toEqual([{ currency: 'KWD', net: 2_678_818_162_215.36, direction: 'pay_partner' }]);
    expect(settle(balances.map((b) => ({ ...b, amount: -b.amount })))).toEqual([{ currency: 'KWD', net: -2_678_818_162_215.36, direction: 'collect_from_partner' }]);
  });

  it('matches a bigint reference on seeded random balances (up to 50, ±10¹², halves away from zero)', () => {
    const rnd = prng(1205);
    for (let i = 0; i < 2000; i++) {
      const currency = (['JPY', 'SAR', 'KWD'] as const)[Math.floor(rnd() * 3)] as Currency;
      const digits = DIGITS[currency];
      // A scale finer than the unit now and then: the step's schema lets through what the API never checked.
      const scale = digits + (rnd() < 0.2 ? 1 : 0);
      const parts = Array.from({ length: 1 + Math.floor(rnd() * 50) }, () => {
        const [, d] = amount(rnd, scale);
        return rnd() < 0.5 ? { u: -d.u, s: d.s } : d;
      });
      const balances = parts.map((d) => ({ currency, amount: Number(decString(d)) }));
      const net = toMinor(add(...parts), digits);
      const [line] = settle(balances);
      expect(line, `${currency} ${JSON.stringify(balances)}`).toEqual({ currency, net, direction: net > 0 ? 'pay_partner' : net < 0 ? 'collect_from_partner' : 'none' });
      expect(Object.is(line!.net, -0)).toBe(false);
    }
  });
});
