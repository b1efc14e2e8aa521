import { z } from 'zod';
import { isoTime } from '../../platform/http/iso-time.ts';
import { finerThanMinorUnit, minorDigits, minorUnitMessage } from '../../platform/money/minor-units.ts';

const ISO_COUNTRIES = new Set(
  ('AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ ' +
    'DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT ' +
    'JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG ' +
    'NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH ' +
    'TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW').split(' '),
);
const ISO_CURRENCIES = new Set(
  ('AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ' +
    'ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL ' +
    'LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD ' +
    'SHP SLE SOS SRD SSP STN SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWL').split(' '),
);

// Control characters (NUL above all: jsonb cannot store \u0000) are refused as bad input, never a 5xx.
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;
const noControl = (s: string) => !CONTROL_CHARS.test(s);
const text = (max: number) => z.string().trim().min(1).max(max).refine(noControl, 'must not contain control characters');
const amount = z.number().finite().min(0).max(1e12);
const rate = z.number().finite().min(0).max(1);

export const partnerInput = z.strictObject({
  name: text(200),
  // The pattern is what the OpenAPI document can say of the list (a refine is not converted).
  country: z.string().max(2).refine((c) => ISO_COUNTRIES.has(c), 'must be an ISO 3166-1 alpha-2 code (upper case)').meta({ pattern: '^[A-Z]{2}$' }),
  sector: text(100),
  website: z.string().max(2048).refine(noControl, 'must not contain control characters').url().refine((u) => /^https?:\/\//i.test(u), 'must be an http(s) URL').optional(),
  registration_number: z.string().trim().min(1).max(64).regex(/^[A-Za-z0-9\-\/ ]+$/, 'letters, digits, - / and spaces only').optional(),
});

export const economicsInput = z.strictObject({
  expected_deals_per_year: z.number().int().min(0).max(1_000_000),
  average_deal_value: amount,
  win_rate: rate,
  gross_margin: rate,
  onboarding_cost: amount,
  enablement_cost: amount,
  annual_support_cost: amount,
});

/** An ISO 4217 currency code, upper case: a submission's, and an approval policy's. */
// The pattern is what the OpenAPI document can say of the list (a refine is not converted).
export const currencyCode = z.string().max(3).refine((c) => ISO_CURRENCIES.has(c), 'must be an ISO 4217 currency code (upper case)').meta({ pattern: '^[A-Z]{3}$' });

/** POST /api/v1/golden-path/run: strict, bounded; unknown fields are rejected. */
export const submissionSchema = z.strictObject({
  partner: partnerInput,
  economics: economicsInput,
  currency: currencyCode,
});
export type Submission = z.infer<typeof submissionSchema>;

/** The submission's amounts of money: at most the currency's minor unit (2 decimals for SAR, 3 for KWD, 0 for JPY). */
const MONEY_FIELDS = ['average_deal_value', 'onboarding_cost', 'enablement_cost', 'annual_support_cost'] as const;

/**
 * The body of POST /api/v1/golden-path/run: a submission whose amounts the currency can pay. Finer
 * ones are 422: the economics model rounds its sums to the minor unit, so 50,000.004 SAR would have
 * been class A at a 50,000 bound. Only the API's check: a run submitted before it keeps its input.
 */
export const submissionRequestSchema = submissionSchema.superRefine((s, ctx) => addMinorUnitIssues(ctx, s.currency, s.economics, MONEY_FIELDS, ['economics']));

/**
 * An issue (at `path`, the field) for each of `fields` finer than the minor unit of `currency`: a
 * submission's amounts, a policy's cost thresholds. None when the currency is itself refused (its own
 * issue names it): it has no minor unit to hold them to, and "at most 2 decimals in kwd" would be told
 * of an amount KWD accepts with 3.
 */
export function addMinorUnitIssues<F extends string>(ctx: z.RefinementCtx, currency: string, amounts: Record<F, number>, fields: readonly F[], path: Array<string | number> = []): void {
  if (!ISO_CURRENCIES.has(currency)) return;
  const digits = minorDigits(currency);
  for (const field of fields) {
    if (finerThanMinorUnit(amounts[field], digits)) ctx.addIssue({ code: 'custom', path: [...path, field], message: minorUnitMessage(currency) });
  }
}

/** A SHA-256 in lower-case hex. */
export const sha256Schema = z.string().regex(/^[0-9a-f]{64}$/);

/** Where a piece of a step's output came from, so every figure can be traced and re-derived. */
export const provenanceSchema = z.strictObject({
  source: z.enum(['submission', 'derived', 'policy', 'human', 'system']),
  method: z.string().min(1).max(200),
  inputs_sha256: sha256Schema,
  producer_version: z.string().min(1).max(40),
  produced_at: z.string().datetime(),
});
export type Provenance = z.infer<typeof provenanceSchema>;

export const RISK_FLAGS = ['missing_registration_number', 'missing_website', 'high_risk_sector', 'non_https_website'] as const;

export const dossierSchema = z.strictObject({
  profile: z.strictObject({
    name: z.string(),
    country: z.string(),
    sector: z.string(),
    website: z.string().nullable(),
    registration_number: z.string().nullable(),
    provenance: provenanceSchema,
  }),
  facts: z.strictObject({
    completeness_score: z.number().min(0).max(1),
    risk_flags: z.array(z.enum(RISK_FLAGS)),
    provenance: provenanceSchema,
  }),
});
export type Dossier = z.infer<typeof dossierSchema>;

const scenario = z.strictObject({ label: z.string(), payback_months: z.number().nullable() });
export const economicsSchema = z.strictObject({
  currency: z.string(),
  revenue_upside: z.number(),
  gross_profit: z.number(),
  cost: z.number(),
  payback_months: z.number().nullable(),
  sensitivity: z.array(scenario).length(4),
  provenance: provenanceSchema,
});
export type Economics = z.infer<typeof economicsSchema>;

export const decisionRecord = z.strictObject({
  decided_by: z.string(),
  decision: z.enum(['approve', 'reject']),
  comment: z.string().nullable(),
  decided_at: z.string().datetime(),
  kind: z.enum(['human', 'system']),
});

/**
 * The approval policy a packet was classified under, as GET /approval-policy answered then: the
 * tenant may replace its policy later, so the packet (and the evidence pack) keeps what its class rests on.
 */
export const appliedPolicySchema = z.strictObject({
  source: z.enum(['default', 'tenant']),
  policy: z.strictObject({
    class_a_max_cost: z.number(),
    class_a_max_payback_months: z.number(),
    class_c_min_cost: z.number(),
    class_c_min_payback_months: z.number(),
    sla_b_seconds: z.number().int(),
    sla_c_seconds: z.number().int(),
    // Absent from packets written before policies had a currency (their thresholds were applied to any).
    currency: z.string().optional().describe('The currency of the cost thresholds'),
  }),
  updated_at: isoTime.nullable(),
  // Absent from packets written before it was recorded.
  updated_by: z.string().nullable().optional().describe('The admin (token sub) whose PUT set the policy, or proposed the change a second admin approved; null for the defaults'),
  // Absent from packets written before policy changes needed a second admin (ADR 0010).
  version: z.number().int().min(0).optional().describe("The policy's version: 0 for the defaults, 1 for the tenant's first policy, one more for each change applied"),
  approved_by: z
    .string()
    .nullable()
    .optional()
    .describe('The second admin (token sub) who approved the change, which loosened the policy (four-eyes); null when it applied at once (it only tightened), and for the defaults'),
});
export type AppliedPolicy = z.infer<typeof appliedPolicySchema>;

/** Why a run was class C whatever its figures: its economics are in another currency than the policy's thresholds. */
export const currencyMismatchSchema = z.strictObject({ submission_currency: z.string(), policy_currency: z.string() });
export type CurrencyMismatch = z.infer<typeof currencyMismatchSchema>;

export const approvalPacketSchema = z.strictObject({
  approval_request_id: z.string().uuid(),
  approval_class: z.enum(['A', 'B', 'C']),
  reasons: z.array(z.string()),
  required_approvals: z.number().int().min(0).max(2),
  sla_deadline: z.string().datetime().nullable(),
  outcome: z.enum(['pending', 'approved', 'rejected', 'expired']),
  decisions: z.array(decisionRecord),
  // Absent from packets written before it was recorded.
  policy: appliedPolicySchema.optional().describe('The policy the class and SLA were derived from, as GET /approval-policy answered then'),
  // Absent from packets written before it was recorded.
  currency_mismatch: currencyMismatchSchema
    .nullable()
    .optional()
    .describe("Set when the submission's currency is not the policy's: the cost thresholds do not apply, so the run is class C; null when they match"),
  provenance: provenanceSchema,
});
export type ApprovalPacket = z.infer<typeof approvalPacketSchema>;

const decidedOutcome = z.enum(['approved', 'rejected']);

export const evidenceSchema = z.strictObject({
  evidence_pack_id: z.string().uuid(),
  sha256: sha256Schema,
  outcome: decidedOutcome,
  provenance: provenanceSchema,
});
export type Evidence = z.infer<typeof evidenceSchema>;

/** An evidence pack's content: everything the decision rests on; its SHA-256 is over its RFC 8785 canonical JSON. */
export const evidencePackContentSchema = z.strictObject({
  schema: z.literal('dealix.evidence-pack/v1'),
  run: z.strictObject({
    id: z.uuid(),
    tenant_id: z.uuid(),
    workflow: z.string().describe('<workflow>@v<version>'),
    correlation_id: z.string(),
    submitted_by: z.string(),
    submitted_at: isoTime,
  }),
  submission: submissionSchema,
  partner_dossier: dossierSchema,
  economics_model: economicsSchema,
  approval_packet: approvalPacketSchema,
  outcome: decidedOutcome,
});
export type EvidencePackContent = z.infer<typeof evidencePackContentSchema>;

export const PRODUCER_VERSION = 'golden-path@1';
