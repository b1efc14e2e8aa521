import { describe, expect, it } from 'vitest';
import { settle } from '../../src/modules/partner-offboarding/partner-offboarding.steps.ts';

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
});
