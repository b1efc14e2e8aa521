import { describe, expect, it } from 'vitest';
import { buildEconomics, paybackMonths, paybackRatio } from '../../src/modules/golden-path/economics-model.step.ts';
import { buildDossier } from '../../src/modules/golden-path/partner-dossier.step.ts';
import { economicsSchema, submissionRequestSchema, submissionSchema, type Submission } from '../../src/modules/golden-path/golden-path.schemas.ts';
import { approvalPolicyBody, classify, DEFAULT_POLICY, loosenedFields, policyToBody, type ApprovalPolicy } from '../../src/modules/approvals/approval.policy.ts';
import { evidenceHash } from '../../src/modules/evidence/evidence.service.ts';
import { canonicalJson, sha256Hex } from '../../src/platform/idempotency/canonical-json.ts';

/** The database's time a step would stamp its output with (StepContext.now). */
const PRODUCED_AT = new Date('2026-12-01T12:00:00.000Z');

const ECONOMICS = {
  expected_deals_per_year: 12,
  average_deal_value: 250000,
  win_rate: 0.3,
  gross_margin: 0.35,
  onboarding_cost: 40000,
  enablement_cost: 15000,
  annual_support_cost: 10000,
};
const PARTNER = { name: 'Acme  Trading', country: 'SA', sector: 'Logistics', website: 'https://acme.example', registration_number: '1010101010' };
const submission = (partner: Partial<Submission['partner']> = {}): Submission => ({ partner: { ...PARTNER, ...partner } as Submission['partner'], economics: ECONOMICS, currency: 'SAR' });

describe("a submission's amounts (POST /api/v1/golden-path/run)", () => {
  const body = (currency: string, patch: Partial<typeof ECONOMICS>) => ({ ...submission(), currency, economics: { ...ECONOMICS, ...patch } });
  it("are refused finer than the currency's minor unit, each named by its path", () => {
    const sar = submissionRequestSchema.safeParse(body('SAR', { onboarding_cost: 50_000.004, average_deal_value: 0.001 }));
    expect(sar.success).toBe(false);
    expect(sar.error!.issues.map((i) => [i.path.join('.'), i.message])).toEqual([
      ['economics.average_deal_value', 'at most 2 decimals in SAR (its ISO 4217 minor unit)'],
      ['economics.onboarding_cost', 'at most 2 decimals in SAR (its ISO 4217 minor unit)'],
    ]);
    expect(submissionRequestSchema.safeParse(body('JPY', { annual_support_cost: 0.5 })).error!.issues[0]!.message).toBe('at most 0 decimals in JPY (its ISO 4217 minor unit)');
    // Past 15 significant digits too (10¹¹ KWD and more: 123,456,789,012.3456 was read as 3 decimals).
    expect(submissionRequestSchema.safeParse(body('KWD', { average_deal_value: 123_456_789_012.3456 })).error!.issues.map((i) => i.path.join('.'))).toEqual(['economics.average_deal_value']);
    expect(submissionRequestSchema.safeParse(body('KWD', { average_deal_value: 999_999_999_999.999 })).success).toBe(true);
  });
  it('are accepted to the minor unit, binary fractions included', () => {
    expect(submissionRequestSchema.safeParse(body('KWD', { onboarding_cost: 50_000.004 })).success).toBe(true);
    expect(submissionRequestSchema.safeParse(body('SAR', { onboarding_cost: 0.1, enablement_cost: 0.29, annual_support_cost: 1e12 })).success).toBe(true);
    expect(submissionRequestSchema.safeParse(body('JPY', { onboarding_cost: 40_000 })).success).toBe(true);
  });
  it('are not held to a minor unit when the currency is refused: its own issue is the only one (no "2 decimals in kwd")', () => {
    const issues = (currency: string) => submissionRequestSchema.safeParse(body(currency, { onboarding_cost: 50_000.004 })).error?.issues.map((i) => i.path.join('.'));
    for (const currency of ['kwd', 'XXX', 'Sar']) expect(issues(currency), currency).toEqual(['currency']);
  });
  it('of a run accepted before the check still parse as its input (the step schema has no such check)', () => {
    expect(submissionSchema.safeParse(body('SAR', { onboarding_cost: 50_000.004 })).success).toBe(true);
  });
});

describe('buildEconomics', () => {
  it('computes upside, gross profit, cost and payback from the submission', () => {
    const m = buildEconomics(ECONOMICS, 'SAR', PRODUCED_AT);
    expect(m.currency).toBe('SAR');
    expect(m.revenue_upside).toBe(900_000); // 12 × 250,000 × 0.3
    expect(m.gross_profit).toBe(315_000); // × 0.35
    expect(m.cost).toBe(65_000); // 40,000 + 15,000 + 10,000
    expect(m.payback_months).toBe(2.48); // 65,000 ÷ (315,000 ÷ 12) = 2.476…
    expect(m.provenance.source).toBe('derived');
  });

  it('gives the payback with win rate and deal value each at −20 % and +20 %', () => {
    const m = buildEconomics(ECONOMICS, 'SAR', PRODUCED_AT);
    expect(m.sensitivity).toEqual([
      { label: 'win_rate_-20%', payback_months: 3.1 }, // 65,000 ÷ (252,000 ÷ 12)
      { label: 'win_rate_+20%', payback_months: 2.06 }, // 65,000 ÷ (378,000 ÷ 12)
      { label: 'deal_value_-20%', payback_months: 3.1 },
      { label: 'deal_value_+20%', payback_months: 2.06 },
    ]);
  });

  it('caps the +20 % win rate at 1', () => {
    const m = buildEconomics({ ...ECONOMICS, win_rate: 0.9 }, 'SAR', PRODUCED_AT);
    expect(m.sensitivity[1]!.payback_months).toBe(paybackMonths({ ...ECONOMICS, win_rate: 1 }));
  });

  it('has no payback when there is no gross profit, in every scenario', () => {
    for (const patch of [{ gross_margin: 0 }, { win_rate: 0 }, { expected_deals_per_year: 0 }, { average_deal_value: 0 }]) {
      const m = buildEconomics({ ...ECONOMICS, ...patch }, 'SAR', PRODUCED_AT);
      expect(m.gross_profit).toBe(0);
      expect(m.payback_months).toBeNull();
      expect(m.sensitivity.every((s) => s.payback_months === null)).toBe(true);
    }
  });

  it('has no payback when the profit is too small for the months to be a finite number, so a valid submission never fails its own output schema', () => {
    // Accepted by the submission schema (rates 0–1, amounts 0–10¹²): the profit is 10⁻³¹², a denormal.
    const e = { ...ECONOMICS, expected_deals_per_year: 1, average_deal_value: 1e-12, win_rate: 1e-150, gross_margin: 1e-150, onboarding_cost: 1e12 };
    expect(submissionSchema.safeParse({ ...submission(), economics: e }).success).toBe(true);
    const m = buildEconomics(e, 'SAR', PRODUCED_AT);
    expect(m.payback_months).toBeNull();
    expect(economicsSchema.safeParse(m).success).toBe(true);
    expect(classify(m, { ...DEFAULT_POLICY, slaBSeconds: 1, slaCSeconds: 1 }).cls).toBe('C');
  });

  it("rounds money to the currency's minor unit, not to 2 decimals: 50,000.004 KWD is over a 50,000 KWD bound (class B, not A)", () => {
    const small = { ...ECONOMICS, onboarding_cost: 40_000.004, enablement_cost: 5_000, annual_support_cost: 5_000 };
    const kwd = buildEconomics(small, 'KWD', PRODUCED_AT);
    expect(kwd.cost).toBe(50_000.004);
    const policy: ApprovalPolicy = { ...DEFAULT_POLICY, currency: 'KWD', slaBSeconds: 1, slaCSeconds: 1 };
    expect(classify(kwd, policy).cls).toBe('B');
    expect(buildEconomics({ ...ECONOMICS, onboarding_cost: 40_000.5 }, 'JPY', PRODUCED_AT).cost).toBe(65_001); // half away from zero
    expect(buildEconomics({ ...ECONOMICS, onboarding_cost: 40_000.005 }, 'SAR', PRODUCED_AT).cost).toBe(65_000.01); // as written, not 65,000.00499…
  });

  it('has a zero payback when there is profit and no cost', () => {
    expect(buildEconomics({ ...ECONOMICS, onboarding_cost: 0, enablement_cost: 0, annual_support_cost: 0 }, 'SAR', PRODUCED_AT).payback_months).toBe(0);
  });
});

describe('loosenedFields (ADR 0010: what needs a second admin)', () => {
  const current: ApprovalPolicy = { ...DEFAULT_POLICY, slaBSeconds: 86_400, slaCSeconds: 259_200 };
  const body = (change: Partial<ReturnType<typeof policyToBody>>) => ({ ...policyToBody(current), ...change });
  const sample = { cost: 200_000, payback_months: 10, currency: 'SAR' };

  it('a lowered class C bound moves class B runs to C: a loosening when C then gives them longer than B did', () => {
    // The sample is B under the policy in force (24 h to decide), C under the lowered bound (72 h).
    expect(classify(sample, current)).toMatchObject({ cls: 'B', slaSeconds: 86_400 });
    const lowered = body({ class_c_min_cost: 150_000 });
    expect(classify(sample, { ...current, classCMinCost: 150_000 })).toMatchObject({ cls: 'C', slaSeconds: 259_200 });
    expect(loosenedFields(current, lowered)).toEqual(['class_c_min_cost']);
    expect(loosenedFields(current, body({ class_c_min_payback_months: 12 }))).toEqual(['class_c_min_payback_months']);
    expect(loosenedFields(current, body({ class_c_min_cost: 150_000, class_c_min_payback_months: 12 }))).toEqual(['class_c_min_cost', 'class_c_min_payback_months']);
  });

  it('a lowered class C bound only tightens when C gives no more time than B did; lower class A bounds and shorter SLAs always do', () => {
    expect(loosenedFields(current, body({ class_c_min_cost: 150_000, sla_c_seconds: 86_400 }))).toEqual([]);
    expect(loosenedFields(current, body({ class_c_min_cost: 150_000, sla_b_seconds: 3_600, sla_c_seconds: 7_200 }))).toEqual([]);
    expect(loosenedFields(current, body({ class_a_max_cost: 10_000, class_a_max_payback_months: 1, sla_b_seconds: 60, sla_c_seconds: 60 }))).toEqual([]);
    expect(loosenedFields(current, body({}))).toEqual([]);
  });
});

describe('classify', () => {
  const policy: ApprovalPolicy = { ...DEFAULT_POLICY, slaBSeconds: 86_400, slaCSeconds: 259_200 };
  const cls = (cost: number, payback: number | null) => classify({ cost, payback_months: payback, currency: 'SAR' }, policy);

  it('is A at cost <= 50,000 and payback <= 6 months, approved by the system with no SLA', () => {
    expect(cls(50_000, 6)).toMatchObject({ cls: 'A', required: 0, slaSeconds: null });
    expect(cls(0, 0).cls).toBe('A');
  });

  it('is B just above the A bounds and up to the C bounds, with one approver and the B SLA', () => {
    expect(cls(50_000.01, 6)).toMatchObject({ cls: 'B', required: 1, slaSeconds: 86_400 });
    expect(cls(50_000, 6.01).cls).toBe('B');
    expect(cls(250_000, 24).cls).toBe('B');
  });

  it('is C above cost 250,000, above payback 24 months, or without profit, with two approvers and the C SLA', () => {
    expect(cls(250_000.01, 1)).toMatchObject({ cls: 'C', required: 2, slaSeconds: 259_200 });
    expect(cls(1_000, 24.01).cls).toBe('C');
    const noProfit = cls(1_000, null);
    expect(noProfit.cls).toBe('C');
    expect(noProfit.reasons.join(' ')).toMatch(/no gross profit/);
  });

  it('follows a tenant policy instead of the defaults', () => {
    const strict: ApprovalPolicy = { classAMaxCost: 1_000, classAMaxPaybackMonths: 1, classCMinCost: 60_000, classCMinPaybackMonths: 2, slaBSeconds: 2, slaCSeconds: 3, currency: 'SAR' };
    expect(classify({ cost: 50_000, payback_months: 6, currency: 'SAR' }, strict).cls).toBe('C');
    expect(classify({ cost: 50_000, payback_months: 2, currency: 'SAR' }, strict)).toMatchObject({ cls: 'B', slaSeconds: 2 });
  });

  it("has SAR thresholds by default, and classifies C whatever the figures when the economics are in another currency than the policy's", () => {
    expect(DEFAULT_POLICY.currency).toBe('SAR');
    // Class A figures in SAR; in KWD (about 12 SAR each) or JPY the thresholds say nothing, and no rate is assumed.
    expect(classify({ cost: 1_000, payback_months: 1, currency: 'SAR' }, policy).cls).toBe('A');
    for (const currency of ['KWD', 'JPY']) {
      const c = classify({ cost: 1_000, payback_months: 1, currency }, policy);
      expect(c).toMatchObject({ cls: 'C', required: 2, slaSeconds: 259_200, currencyMismatch: { submission_currency: currency, policy_currency: 'SAR' } });
      expect(c.reasons).toEqual([`currency ${currency} is not the policy's currency SAR: its cost thresholds do not apply`]);
    }
    // Payback is a ratio, the same in any currency: its reasons still hold; a cost comparison across currencies does not.
    const late = classify({ cost: 900_000, payback_months: null, currency: 'USD' }, policy);
    expect(late.reasons).toEqual(["currency USD is not the policy's currency SAR: its cost thresholds do not apply", 'no gross profit: payback never reached']);
    expect(classify({ cost: 1_000, payback_months: 1, currency: 'SAR' }, policy).currencyMismatch).toBeNull();
    // A policy in KWD: KWD runs classify by its thresholds, SAR runs are C.
    const kwd: ApprovalPolicy = { ...policy, currency: 'KWD' };
    expect(classify({ cost: 1_000, payback_months: 1, currency: 'KWD' }, kwd).cls).toBe('A');
    expect(classify({ cost: 1_000, payback_months: 1, currency: 'SAR' }, kwd).cls).toBe('C');
  });

  it('compares the cost with the cost thresholds in minor units, not as doubles: a cost of 0.1 + 0.2 is at a bound of 0.3, not over it', () => {
    const tiny: ApprovalPolicy = { ...policy, classAMaxCost: 0.3, classCMinCost: 0.3 };
    const at = classify({ cost: 0.1 + 0.2, payback_months: 1, currency: 'SAR' }, tiny);
    expect(at).toMatchObject({ cls: 'A', reasons: ['cost 0.3 <= 0.3 and payback 1 <= 6 months'] });
    expect(classify({ cost: 0.31, payback_months: 1, currency: 'SAR' }, tiny)).toMatchObject({ cls: 'C', reasons: ['cost 0.31 > 0.3'] });
    // At the bound in each currency's unit, and one unit over it.
    for (const [currency, bound, over] of [['JPY', 30_001, 30_002], ['KWD', 30_000.125, 30_000.126], ['SAR', 30_000.3, 30_000.31]] as const) {
      const p: ApprovalPolicy = { ...policy, currency, classAMaxCost: bound, classCMinCost: bound };
      expect(classify({ cost: bound, payback_months: 1, currency }, p).cls, currency).toBe('A');
      expect(classify({ cost: over, payback_months: 1, currency }, p).cls, currency).toBe('C');
    }
  });

  it("refuses cost thresholds finer than the policy's currency's minor unit, each named by its path, as a submission's amounts", () => {
    const body = { class_a_max_cost: 50_000, class_a_max_payback_months: 6, class_c_min_cost: 250_000, class_c_min_payback_months: 24, sla_b_seconds: 60, sla_c_seconds: 60 };
    const issues = (b: unknown) => approvalPolicyBody.safeParse(b).error?.issues.map((i) => [i.path.join('.'), i.message]);
    expect(issues({ ...body, currency: 'JPY', class_a_max_cost: 1_000.5 })).toEqual([['class_a_max_cost', 'at most 0 decimals in JPY (its ISO 4217 minor unit)']]);
    expect(issues({ ...body, currency: 'KWD', class_a_max_cost: 50_000.0001, class_c_min_cost: 250_000.1234 })).toEqual([
      ['class_a_max_cost', 'at most 3 decimals in KWD (its ISO 4217 minor unit)'],
      ['class_c_min_cost', 'at most 3 decimals in KWD (its ISO 4217 minor unit)'],
    ]);
    // Checked against the body's currency: SAR when absent, the new one when it changes.
    expect(issues({ ...body, class_c_min_cost: 250_000.001 })).toEqual([['class_c_min_cost', 'at most 2 decimals in SAR (its ISO 4217 minor unit)']]);
    expect(issues({ ...body, currency: 'JPY', class_a_max_cost: 50_000.25 })).toEqual([['class_a_max_cost', 'at most 0 decimals in JPY (its ISO 4217 minor unit)']]);
    expect(approvalPolicyBody.safeParse({ ...body, currency: 'KWD', class_a_max_cost: 50_000.25 }).success).toBe(true);
    // To the unit, binary fractions and the largest amounts included; months are no money.
    for (const [currency, cost] of [['SAR', 0.3], ['SAR', 0.29], ['KWD', 999_999_999_999.999], ['JPY', 1e12], ['OMR', 12_345.123]] as const) {
      expect(approvalPolicyBody.safeParse({ ...body, currency, class_a_max_cost: 0, class_c_min_cost: cost }).success, `${cost} ${currency}`).toBe(true);
    }
    expect(approvalPolicyBody.safeParse({ ...body, currency: 'JPY', class_a_max_payback_months: 5.5 }).success).toBe(true);
  });

  it('does not hold cost thresholds to a minor unit when the currency is refused: its own issue is the only one', () => {
    const body = { class_a_max_cost: 50_000.125, class_a_max_payback_months: 6, class_c_min_cost: 250_000.5, class_c_min_payback_months: 24, sla_b_seconds: 60, sla_c_seconds: 60 };
    for (const currency of ['kwd', 'XXX', 'jpy']) {
      expect(approvalPolicyBody.safeParse({ ...body, currency }).error?.issues.map((i) => i.path.join('.')), currency).toEqual(['currency']);
    }
  });

  it('refuses a tenant policy whose A bounds exceed its C bounds', () => {
    const body = { class_a_max_cost: 300_000, class_a_max_payback_months: 6, class_c_min_cost: 250_000, class_c_min_payback_months: 24, sla_b_seconds: 60, sla_c_seconds: 60 };
    expect(approvalPolicyBody.safeParse(body).success).toBe(false);
    expect(approvalPolicyBody.safeParse({ ...body, class_a_max_cost: 50_000 }).success).toBe(true);
    expect(approvalPolicyBody.safeParse({ ...body, class_a_max_cost: 50_000, sla_b_seconds: 0 }).success).toBe(false);
  });

  it("takes an optional ISO 4217 currency, validated as the submission's, SAR when absent", () => {
    const body = { class_a_max_cost: 50_000, class_a_max_payback_months: 6, class_c_min_cost: 250_000, class_c_min_payback_months: 24, sla_b_seconds: 60, sla_c_seconds: 60 };
    expect(approvalPolicyBody.parse(body).currency).toBe('SAR');
    expect(approvalPolicyBody.parse({ ...body, currency: 'KWD' }).currency).toBe('KWD');
    for (const currency of ['kwd', 'XYZ', 'SARS', '', 12]) expect(approvalPolicyBody.safeParse({ ...body, currency }).success, String(currency)).toBe(false);
  });
});

/**
 * The reviewer's case: SAR, 1 deal × 40,000, win rate 1, margin 0.3 — gross profit 12,000 a year,
 * 1,000 a month — and the onboarding cost alone: its payback is cost ÷ 1,000 months exactly.
 */
describe('classify on the exact payback (cost × 12 ÷ gross profit), not its 2-decimal figure', () => {
  const policy: ApprovalPolicy = { ...DEFAULT_POLICY, slaBSeconds: 86_400, slaCSeconds: 259_200 };
  const econ = (onboarding: number) => ({ expected_deals_per_year: 1, average_deal_value: 40_000, win_rate: 1, gross_margin: 0.3, onboarding_cost: onboarding, enablement_cost: 0, annual_support_cost: 0 });
  const classOf = (onboarding: number, p: ApprovalPolicy = policy) => classify(buildEconomics(econ(onboarding), 'SAR', PRODUCED_AT), p, { payback: paybackRatio(econ(onboarding)) });

  it('6.004 months, shown as 6, is over a 6-month class A bound: B with one approver, never approved by the system', () => {
    expect(buildEconomics(econ(6_004), 'SAR', PRODUCED_AT).payback_months).toBe(6);
    expect(classOf(6_004)).toMatchObject({ cls: 'B', required: 1, slaSeconds: 86_400 });
    expect(classOf(6_005)).toMatchObject({ cls: 'B', required: 1 });
    expect(classOf(6_000)).toMatchObject({ cls: 'A', reasons: ['cost 6000 <= 50000 and payback 6 <= 6 months'] });
  });

  it('24.004 months, shown as 24, is over a 24-month class C bound: C with two approvers, its reason showing the payback finely enough to be over it', () => {
    expect(buildEconomics(econ(24_004), 'SAR', PRODUCED_AT).payback_months).toBe(24);
    expect(classOf(24_004)).toMatchObject({ cls: 'C', required: 2, slaSeconds: 259_200, reasons: ['payback 24.004 > 24 months'] });
    expect(classOf(24_005)).toMatchObject({ cls: 'C', reasons: ['payback 24.01 > 24 months'] });
    expect(classOf(24_000).cls).toBe('B');
    // A payback that is no terminating decimal: cut, not rounded, and marked as cut.
    const third = { ...econ(72_001), average_deal_value: 120_000 }; // 72,001 ÷ 3,000 = 24.000333…
    expect(classify(buildEconomics(third, 'SAR', PRODUCED_AT), policy, { payback: paybackRatio(third) }).reasons).toEqual(['payback 24.0003… > 24 months']);
  });

  it('is exact in currencies of 0 and 3 decimals, and at the magnitudes and rate scales the API accepts', () => {
    // Gross profit 1,000 JPY or 1 KWD a month: a cost of 6,001 JPY or 6.001 KWD is 6.001 months, shown as 6.
    const at = (currency: string, deal: number, onboarding: number) => {
      const e = { ...econ(onboarding), average_deal_value: deal };
      return classify(buildEconomics(e, currency, PRODUCED_AT), { ...policy, currency }, { payback: paybackRatio(e) });
    };
    expect(at('JPY', 40_000, 6_000)).toMatchObject({ cls: 'A', reasons: ['cost 6000 <= 50000 and payback 6 <= 6 months'] });
    expect(at('JPY', 40_000, 6_001).cls).toBe('B');
    expect(at('KWD', 40, 6)).toMatchObject({ cls: 'A', reasons: ['cost 6 <= 50000 and payback 6 <= 6 months'] });
    expect(at('KWD', 40, 6.001).cls).toBe('B');
    expect(at('KWD', 40, 24.001)).toMatchObject({ cls: 'C', reasons: ['payback 24.001 > 24 months'] });
    // 10⁶ deals × 10¹² at a win rate of 1.5 × 10⁻¹⁰ and a margin of 0.5: 75,000,000 a year; 37,500,000.01 is 6.0000000016 months.
    const huge = (onboarding: number) => ({ expected_deals_per_year: 1_000_000, average_deal_value: 1e12, win_rate: 1.5e-10, gross_margin: 0.5, onboarding_cost: onboarding, enablement_cost: 0, annual_support_cost: 0 });
    const wide: ApprovalPolicy = { ...policy, classAMaxCost: 1e12, classCMinCost: 1e12 };
    const of = (onboarding: number) => classify(buildEconomics(huge(onboarding), 'SAR', PRODUCED_AT), wide, { payback: paybackRatio(huge(onboarding)) });
    expect(buildEconomics(huge(37_500_000.01), 'SAR', PRODUCED_AT).payback_months).toBe(6);
    expect(of(37_500_000).cls).toBe('A');
    expect(of(37_500_000.01).cls).toBe('B');
    // A profit so small that the payback is no finite number: no gross profit, class C, as before.
    expect(classify(buildEconomics({ ...econ(1), win_rate: 1e-300, gross_margin: 1e-300 }, 'SAR', PRODUCED_AT), policy, { payback: paybackRatio({ ...econ(1), win_rate: 1e-300, gross_margin: 1e-300 }) })).toMatchObject({
      cls: 'C',
      reasons: ['no gross profit: payback never reached'],
    });
  });

  it('a month bound finer than 2 decimals, stored before a PUT held it to 2, classifies as written', () => {
    const fine: ApprovalPolicy = { ...policy, classAMaxPaybackMonths: 6.001 };
    expect(classOf(6_001, fine)).toMatchObject({ cls: 'A', reasons: ['cost 6001 <= 50000 and payback 6 <= 6.001 months'] });
    expect(classOf(6_002, fine).cls).toBe('B');
    expect(classOf(6_004, fine).cls).toBe('B');
  });

  it('without the exact payback (packets classified before it, approval-policy@1): on the 2-decimal figure, as they were', () => {
    expect(classify(buildEconomics(econ(6_004), 'SAR', PRODUCED_AT), policy).cls).toBe('A');
    expect(classify(buildEconomics(econ(24_004), 'SAR', PRODUCED_AT), policy).cls).toBe('B');
  });

  it('refuses, in a PUT, month thresholds finer than the payback shown (2 decimals), each named by its path', () => {
    const body = { class_a_max_cost: 50_000, class_a_max_payback_months: 6, class_c_min_cost: 250_000, class_c_min_payback_months: 24, sla_b_seconds: 60, sla_c_seconds: 60 };
    const issues = (b: unknown) => approvalPolicyBody.safeParse(b).error?.issues.map((i) => [i.path.join('.'), i.message]);
    expect(issues({ ...body, class_a_max_payback_months: 6.001, class_c_min_payback_months: 24.125 })).toEqual([
      ['class_a_max_payback_months', 'at most 2 decimals (the payback months are shown to 2)'],
      ['class_c_min_payback_months', 'at most 2 decimals (the payback months are shown to 2)'],
    ]);
    expect(approvalPolicyBody.safeParse({ ...body, class_a_max_payback_months: 6.25, class_c_min_payback_months: 23.99 }).success).toBe(true);
  });
});

describe('buildDossier', () => {
  it('normalises the profile and scores a complete submission 1 with no risk flags', () => {
    const d = buildDossier(submission(), PRODUCED_AT);
    expect(d.profile).toMatchObject({ name: 'Acme Trading', sector: 'logistics', website: 'https://acme.example', registration_number: '1010101010' });
    expect(d.facts.completeness_score).toBe(1);
    expect(d.facts.risk_flags).toEqual([]);
  });

  it('flags a missing registration number and website and lowers completeness', () => {
    const { website: _w, registration_number: _r, ...partner } = PARTNER;
    const d = buildDossier({ partner, economics: ECONOMICS, currency: 'SAR' } as Submission, PRODUCED_AT);
    expect(d.facts.risk_flags).toEqual(['missing_registration_number', 'missing_website']);
    expect(d.facts.completeness_score).toBe(0.6);
    expect(d.profile.website).toBeNull();
  });

  it('flags a plain-http website and a high-risk sector', () => {
    expect(buildDossier(submission({ website: 'http://acme.example' }), PRODUCED_AT).facts.risk_flags).toEqual(['non_https_website']);
    expect(buildDossier(submission({ website: 'HTTPS://acme.example' }), PRODUCED_AT).facts.risk_flags).toEqual([]);
    expect(buildDossier(submission({ sector: 'Gambling' }), PRODUCED_AT).facts.risk_flags).toEqual(['high_risk_sector']);
  });

  it('carries a provenance on every section, hashing the submitted partner', () => {
    const d = buildDossier(submission(), PRODUCED_AT);
    const expected = sha256Hex(canonicalJson(submission().partner));
    expect(d.profile.provenance).toMatchObject({ source: 'submission', inputs_sha256: expected, producer_version: 'golden-path@1' });
    expect(d.facts.provenance).toMatchObject({ source: 'derived', inputs_sha256: expected });
  });
});

describe('submission validation', () => {
  const valid = submission();
  it('accepts the documented example', () => expect(submissionSchema.safeParse(valid).success).toBe(true));
  it.each([
    ['an unknown field', { ...valid, extra: 1 }],
    ['an unknown partner field', { ...valid, partner: { ...valid.partner, ceo: 'x' } }],
    ['a win rate above 1', { ...valid, economics: { ...ECONOMICS, win_rate: 1.2 } }],
    ['a negative cost', { ...valid, economics: { ...ECONOMICS, onboarding_cost: -1 } }],
    ['fractional deals', { ...valid, economics: { ...ECONOMICS, expected_deals_per_year: 1.5 } }],
    ['a lower-case country', { ...valid, partner: { ...valid.partner, country: 'sa' } }],
    ['an unknown currency', { ...valid, currency: 'XXX' }],
    ['a NUL character', { ...valid, partner: { ...valid.partner, name: 'Acme\u0000' } }],
    ['an over-long name', { ...valid, partner: { ...valid.partner, name: 'x'.repeat(201) } }],
    ['a non-http website', { ...valid, partner: { ...valid.partner, website: 'javascript:alert(1)' } }],
  ])('refuses %s', (_label, body) => expect(submissionSchema.safeParse(body).success).toBe(false));
});

describe('evidence hashing (RFC 8785 + SHA-256)', () => {
  it('is stable under key order and whitespace', () => {
    const a = { outcome: 'approved', run: { id: 'r', tenant_id: 't' }, numbers: [1, 2.5, 1e21] };
    const b = JSON.parse('{ "numbers": [1, 2.50, 1E21], "run": {"tenant_id":"t","id":"r"}, "outcome":"approved" }');
    expect(evidenceHash(b)).toBe(evidenceHash(a));
    expect(evidenceHash(a)).toMatch(/^[0-9a-f]{64}$/);
  });

  it('changes when any value changes', () => {
    expect(evidenceHash({ outcome: 'approved' })).not.toBe(evidenceHash({ outcome: 'rejected' }));
  });

  it('serialises like the RFC 8785 example', () => {
    const input = JSON.parse('{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"string":"\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/","literals":[null,true,false]}');
    expect(canonicalJson(input)).toBe('{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}');
  });

  it('writes numbers as RFC 8785 (appendix B) does, sorts keys by UTF-16 code units, and refuses what has no form', () => {
    const numbers: Array<[number, string]> = [
      [-0, '0'], [1e21, '1e+21'], [1e20, '100000000000000000000'], [1e-7, '1e-7'], [0.000001, '0.000001'], [5e-324, '5e-324'],
      [Number.MAX_VALUE, '1.7976931348623157e+308'], [9007199254740992, '9007199254740992'], [295147905179352830000, '295147905179352830000'],
      [-1.0, '-1'], [0.1 + 0.2, '0.30000000000000004'],
    ];
    for (const [n, text] of numbers) expect(canonicalJson(n), String(n)).toBe(text);
    // RFC 8785 3.2.3: "\u20ac", "\r", "\ufb33", "1", "\ud83d\ude00", "\u0080", "\u00f6" sort by UTF-16 code units.
    const sorted = canonicalJson({ '\u20ac': 'Euro Sign', '\r': 'Carriage Return', '\ufb33': 'Hebrew Letter Dalet With Dagesh', '1': 'One', '\ud83d\ude00': 'Emoji: Grinning Face', '\u0080': 'Control', '\u00f6': 'Latin Small Letter O With Diaeresis' });
    expect(sorted).toBe(
      '{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign","\ud83d\ude00":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}',
    );
    // Text is not normalised: NFC and NFD hash apart.
    expect(evidenceHash({ name: 'Caf\u00e9' })).not.toBe(evidenceHash({ name: 'Cafe\u0301' }));
    for (const bad of [NaN, Infinity, { s: '\ud800' }, ['\udc00x']]) expect(() => canonicalJson(bad)).toThrow();
  });
});
