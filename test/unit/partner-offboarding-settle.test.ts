import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { settle } from '../../src/modules/partner-offboarding/partner-offboarding.steps.ts';

const steps = new URL('../../src/modules/partner-offboarding/partner-offboarding.steps.ts', import.meta.url).href;

/**
 * settle's currencies in order, and the collation locale ICU took, in a node process started with `lang`
 * as its LANG (Node bundles full ICU: its default locale follows LANG, whatever locales the OS has).
 */
const settledUnder = (lang: string, currencies: string[]) =>
  new Promise<{ locale: string; order: string[] }>((resolve, reject) => {
    const balances = JSON.stringify(currencies.map((currency) => ({ currency, amount: 1 })));
    const script = `const { settle } = await import(${JSON.stringify(steps)});
      console.log(JSON.stringify({ locale: new Intl.Collator().resolvedOptions().locale, order: settle(${balances}).map((l) => l.currency) }));`;
    const p = spawn(process.execPath, ['--input-type=module', '-e', script], { env: { PATH: process.env.PATH ?? '', LANG: lang } });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`exit ${code}: ${err}`))));
  });

const one = (currency: string, ...amounts: number[]) => settle(amounts.map((amount) => ({ currency, amount })))[0]!;

/** The settle-balances step's netting: per currency, to the currency's minor unit, halves away from zero whichever side owes. */
describe('settle', () => {
  it('rounds a half the same way whichever side owes it', () => {
    expect(one('SAR', 0.125)).toEqual({ currency: 'SAR', net: 0.13, direction: 'pay_partner' });
    expect(one('SAR', -0.125)).toEqual({ currency: 'SAR', net: -0.13, direction: 'collect_from_partner' });
  });

  it("rounds to the currency's own minor unit: three decimals for the dinar, none for the yen", () => {
    expect(one('KWD', 1.2345)).toMatchObject({ net: 1.235 });
    expect(one('BHD', -0.5, -0.0005)).toMatchObject({ net: -0.501, direction: 'collect_from_partner' });
    expect(one('JPY', 1000.4, 0.2)).toMatchObject({ net: 1001 });
  });

  it("takes the minor unit from ISO 4217, not from the locale data (CLDR) Intl formats with", () => {
    // CLDR shows these with fewer decimals than ISO 4217 gives them (Intl's maximumFractionDigits: 0).
    expect(one('IQD', 1000.25)).toMatchObject({ net: 1000.25, direction: 'pay_partner' });
    expect(one('IQD', -0.0005)).toMatchObject({ net: -0.001 });
    for (const c of ['YER', 'LBP', 'SYP', 'IRR', 'HUF', 'IDR', 'PKR', 'COP']) expect(one(c, 0.4)).toMatchObject({ net: 0.4, direction: 'pay_partner' });
    for (const c of ['CLP', 'KRW', 'VND', 'XOF', 'UGX']) expect(one(c, -2.5)).toMatchObject({ net: -3 });
    expect(one('CLF', 1.23456)).toMatchObject({ net: 1.2346 });
    // A code ISO 4217 does not know (or gives no minor unit, as gold's): 2 — in a run stored before the API refused them (422).
    for (const c of ['XYZ', 'XAU']) expect(one(c, 0.125)).toMatchObject({ net: 0.13 });
  });

  it('is not thrown off by binary fractions, and nets to a plain zero', () => {
    expect(one('SAR', 1.005)).toMatchObject({ net: 1.01 });
    expect(one('SAR', 0.1, 0.2)).toMatchObject({ net: 0.3 });
    const zero = one('SAR', -0.004);
    expect(Object.is(zero.net, 0)).toBe(true);
    expect(zero.direction).toBe('none');
  });

  it('nets per currency, sorted by currency', () => {
    expect(settle([{ currency: 'USD', amount: -75 }, { currency: 'EUR', amount: 10 }, { currency: 'EUR', amount: -10 }]).map((l) => [l.currency, l.net, l.direction])).toEqual([
      ['EUR', 0, 'none'],
      ['USD', -75, 'collect_from_partner'],
    ]);
  });

  // docs/api.md: "sorted by code". localeCompare followed the worker's locale: Estonian sorts Z after S
  // (ZAR before TRY), Lithuanian sorts Y with I (YER first) — the same run settled in another order per host.
  it.each([
    ['et_EE.UTF-8', 'et'],
    ['lt_LT.UTF-8', 'lt'],
    ['C.UTF-8', 'en'],
  ])('sorts by code (code units), whatever the worker\'s locale: LANG=%s', async (lang, locale) => {
    const currencies = ['ZAR', 'TRY', 'YER', 'EUR'];
    expect(settle(currencies.map((currency) => ({ currency, amount: 1 }))).map((l) => l.currency)).toEqual(['EUR', 'TRY', 'YER', 'ZAR']);
    const child = await settledUnder(lang, currencies);
    // The child's ICU took the locale (else this case would show nothing).
    expect(child.locale.startsWith(locale)).toBe(true);
    expect(child.order).toEqual(['EUR', 'TRY', 'YER', 'ZAR']);
  }, 60_000);
});
