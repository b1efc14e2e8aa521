import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { defineStep } from '../../platform/durable/workflow.ts';
import { economicsInput, economicsSchema, submissionSchema, type Economics } from './golden-path.schemas.ts';
import { EconomicsModelRow } from './golden-path.entities.ts';
import { provenance } from './provenance.ts';
import { insertRow } from '../../platform/db/insert-row.ts';
import { minorDigits, roundMinor } from '../../platform/money/minor-units.ts';

type EconomicsInput = z.infer<typeof economicsInput>;

const round2 = (n: number) => Math.round(n * 100) / 100;

/**
 * Months to recover the cost from gross profit; null when there is no profit, or one so small (rates
 * near 10⁻¹⁵⁰ pass validation) that the months are no finite number: never paid back either way.
 */
export function paybackMonths(e: EconomicsInput): number | null {
  const profit = e.expected_deals_per_year * e.average_deal_value * e.win_rate * e.gross_margin;
  if (profit <= 0) return null;
  const months = round2((e.onboarding_cost + e.enablement_cost + e.annual_support_cost) / (profit / 12));
  return Number.isFinite(months) ? months : null;
}

/** Pure: upside, profit and cost (to the currency's minor unit), payback and the ±20 % sensitivity on win rate and deal value. */
export function buildEconomics(e: EconomicsInput, currency: string): Economics {
  const upside = e.expected_deals_per_year * e.average_deal_value * e.win_rate;
  const profit = upside * e.gross_margin;
  const cost = e.onboarding_cost + e.enablement_cost + e.annual_support_cost;
  // Money to the currency's minor unit (3 decimals for KWD: 50,000.004 stays above a 50,000 bound).
  const digits = minorDigits(currency);
  const scenario = (label: string, patch: Partial<EconomicsInput>) => ({ label, payback_months: paybackMonths({ ...e, ...patch }) });
  return {
    currency,
    revenue_upside: roundMinor(upside, digits),
    gross_profit: roundMinor(profit, digits),
    cost: roundMinor(cost, digits),
    payback_months: paybackMonths(e),
    sensitivity: [
      scenario('win_rate_-20%', { win_rate: e.win_rate * 0.8 }),
      scenario('win_rate_+20%', { win_rate: Math.min(1, e.win_rate * 1.2) }),
      scenario('deal_value_-20%', { average_deal_value: e.average_deal_value * 0.8 }),
      scenario('deal_value_+20%', { average_deal_value: e.average_deal_value * 1.2 }),
    ],
    provenance: provenance('derived', 'economics-model@1', { economics: e, currency }),
  };
}

export const economicsModelStep = defineStep({
  name: 'economics-model',
  input: z.object({ submission: submissionSchema }),
  output: economicsSchema,
  async run({ submission }, ctx) {
    const model = buildEconomics(submission.economics, submission.currency);
    await insertRow(ctx.em, EconomicsModelRow, {
      id: randomUUID(),
      tenantId: ctx.run.tenantId,
      runId: ctx.run.id,
      currency: model.currency,
      cost: model.cost,
      paybackMonths: model.payback_months,
      content: model,
      createdAt: new Date(),
    });
    return model;
  },
});
