import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { defineStep } from '../../platform/durable/workflow.ts';
import { economicsInput, economicsSchema, submissionSchema, type Economics } from './golden-path.schemas.ts';
import { EconomicsModelRow } from './golden-path.entities.ts';
import { provenance } from './provenance.ts';
import { insertRow } from '../../platform/db/insert-row.ts';
import { asWritten, minorDigits, productExact, ratioRounded, roundExact, sumExact, unitsToNumber, type Exact, type PaybackRatio } from '../../platform/money/minor-units.ts';

type EconomicsInput = z.infer<typeof economicsInput>;

/**
 * The inputs the model computes from, each exactly as written (asWritten: 0.3 is 3/10, not the double
 * nearest it). Every sum and product of them is exact (bigint, no binary fraction, no bound to
 * overflow): money is rounded once, at the end, and the months are a ratio of exact values.
 */
type ExactInputs = { deals: Exact; dealValue: Exact; winRate: Exact; margin: Exact; cost: Exact };

function exactInputs(e: EconomicsInput): ExactInputs {
  return {
    deals: asWritten(e.expected_deals_per_year),
    dealValue: asWritten(e.average_deal_value),
    winRate: asWritten(e.win_rate),
    margin: asWritten(e.gross_margin),
    cost: sumExact([e.onboarding_cost, e.enablement_cost, e.annual_support_cost].map(asWritten)),
  };
}

const upsideOf = (x: ExactInputs) => productExact([x.deals, x.dealValue, x.winRate]);
const profitOf = (x: ExactInputs) => productExact([upsideOf(x), x.margin]);
const TWELVE = asWritten(12);
const ONE = asWritten(1);
const [MINUS_20, PLUS_20] = [asWritten(0.8), asWritten(1.2)];
const atMostOne = (r: Exact): Exact => (r.units > ONE.units * 10n ** BigInt(r.scale) ? ONE : r);

/**
 * Months to recover the cost from gross profit, cost × 12 ÷ profit to 2 decimals (a half up), from
 * the exact values; null when there is no profit, or one so small (rates near 10⁻¹⁵⁰ pass validation)
 * that the months are no finite number: never paid back either way.
 */
function exactPayback(x: ExactInputs): number | null {
  const profit = profitOf(x);
  if (profit.units === 0n) return null;
  const months = ratioRounded(productExact([x.cost, TWELVE]), profit, 2);
  return Number.isFinite(months) ? months : null;
}

/**
 * The payback months of a submission's economics exactly, as the ratio cost × 12 ÷ gross profit of the
 * exact values (neither rounded); null when there is no profit. What a run is classified on
 * (approval.policy.ts): `payback_months`, to 2 decimals, is for people to read.
 */
export function paybackRatio(e: EconomicsInput): PaybackRatio | null {
  const x = exactInputs(e);
  const profit = profitOf(x);
  return profit.units === 0n ? null : { numerator: productExact([x.cost, TWELVE]), denominator: profit };
}

/** The payback months of a submission's economics (exactPayback). */
export function paybackMonths(e: EconomicsInput): number | null {
  return exactPayback(exactInputs(e));
}

/**
 * Pure: upside, profit and cost (to the currency's minor unit), payback and the ±20 % sensitivity on
 * win rate and deal value. Computed exactly from the inputs as written, each amount rounded once;
 * produced at `producedAt` (the database's time, ctx.now).
 */
export function buildEconomics(e: EconomicsInput, currency: string, producedAt: Date): Economics {
  const x = exactInputs(e);
  // Money to the currency's minor unit (3 decimals for KWD: 50,000.004 stays above a 50,000 bound).
  const digits = minorDigits(currency);
  const money = (v: Exact) => unitsToNumber(roundExact(v, digits), digits);
  const scenario = (label: string, patch: Partial<ExactInputs>) => ({ label, payback_months: exactPayback({ ...x, ...patch }) });
  return {
    currency,
    revenue_upside: money(upsideOf(x)),
    gross_profit: money(profitOf(x)),
    cost: money(x.cost),
    payback_months: exactPayback(x),
    sensitivity: [
      scenario('win_rate_-20%', { winRate: productExact([x.winRate, MINUS_20]) }),
      scenario('win_rate_+20%', { winRate: atMostOne(productExact([x.winRate, PLUS_20])) }),
      scenario('deal_value_-20%', { dealValue: productExact([x.dealValue, MINUS_20]) }),
      scenario('deal_value_+20%', { dealValue: productExact([x.dealValue, PLUS_20]) }),
    ],
    provenance: provenance('derived', 'economics-model@1', { economics: e, currency }, producedAt),
  };
}

export const economicsModelStep = defineStep({
  name: 'economics-model',
  input: z.object({ submission: submissionSchema }),
  output: economicsSchema,
  async run({ submission }, ctx) {
    // Stamped with the database's time, never this worker's clock (ctx.now): the row and the provenance alike.
    const model = buildEconomics(submission.economics, submission.currency, ctx.now);
    await insertRow(ctx.em, EconomicsModelRow, {
      id: randomUUID(),
      tenantId: ctx.run.tenantId,
      runId: ctx.run.id,
      currency: model.currency,
      cost: model.cost,
      paybackMonths: model.payback_months,
      content: model,
      createdAt: ctx.now,
    });
    return model;
  },
});
