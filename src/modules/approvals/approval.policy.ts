import { randomUUID } from 'node:crypto';
import type { EntityManager } from '@mikro-orm/postgresql';
import { z } from 'zod';
import { addMinorUnitIssues, currencyCode, type AppliedPolicy, type CurrencyMismatch, type Economics } from '../golden-path/golden-path.schemas.ts';
import { toIsoTimeOrNull } from '../../platform/http/iso-time.ts';
import { asWritten, compareMinor, compareRatio, finerThanMinorUnit, minorDigits, ratioCut, roundMinor, type PaybackRatio } from '../../platform/money/minor-units.ts';
import { ISO_NOW } from '../../platform/webhooks/outbox.ts';

export interface ApprovalPolicy {
  classAMaxCost: number;
  classAMaxPaybackMonths: number;
  classCMinCost: number;
  classCMinPaybackMonths: number;
  slaBSeconds: number;
  slaCSeconds: number;
  /** ISO 4217: the currency of the cost thresholds; economics in any other are class C. */
  currency: string;
}

export const DEFAULT_POLICY: Omit<ApprovalPolicy, 'slaBSeconds' | 'slaCSeconds'> = {
  classAMaxCost: 50_000,
  classAMaxPaybackMonths: 6,
  classCMinCost: 250_000,
  classCMinPaybackMonths: 24,
  currency: 'SAR',
};

export type ApprovalClass = 'A' | 'B' | 'C';

export interface Classification {
  cls: ApprovalClass;
  reasons: string[];
  required: number;
  slaSeconds: number | null;
  /** Set when the economics are in another currency than the policy's (the run is then class C). */
  currencyMismatch: CurrencyMismatch | null;
}

/**
 * How an approval packet was classified, its provenance's `method`: `approval-policy@2` on the exact
 * payback (cost × 12 ÷ gross profit, from the submission's economics), `approval-policy@1` — every
 * packet written before it — on the payback rounded to 2 decimals, by which 6.004 months was 6, within
 * a 6-month class A bound (ADR 0010, amendment "classified on the exact payback"). /verify re-derives
 * each packet's class by the rule it names (evidence-records.ts).
 */
export const CLASSIFIED_EXACTLY = 'approval-policy@2';
export const CLASSIFIED_ON_ROUNDED_PAYBACK = 'approval-policy@1';

/**
 * A: cost <= 50,000 and payback <= 6 months (approved automatically, a system decision).
 * C: cost > 250,000, payback > 24 months, or no profit. B: everything else.
 * The cost thresholds are in the policy's currency, and no exchange rate is assumed: economics in
 * another currency are C (the strictest), whatever their cost. Payback, a ratio, still gives its reasons.
 * Cost and cost thresholds compare in the currency's minor units (compareMinor), never as doubles;
 * `digits` is that unit, the policy currency's — other only to re-derive the class of a cost recorded
 * finer than it, before costs were held to it (evidence-records.ts).
 * The payback compares with the month bounds exactly when `payback` (paybackRatio: cost × 12 ÷ gross
 * profit, unrounded) is given — the approval step's rule, CLASSIFIED_EXACTLY: 6.004 months is over 6,
 * though `payback_months` shows 6.00 — and the reasons then show it finely enough to be on its side of
 * the bound (`payback 24.004 > 24 months`). Without it, `payback_months` (2 decimals) is compared: the
 * rule of packets classified before (CLASSIFIED_ON_ROUNDED_PAYBACK), which /verify re-derives so.
 */
export function classify(
  econ: Pick<Economics, 'cost' | 'payback_months' | 'currency'>,
  policy: ApprovalPolicy,
  opts: { digits?: number; payback?: PaybackRatio | null } = {},
): Classification {
  const digits = opts.digits ?? minorDigits(policy.currency);
  const exact = econ.payback_months === null ? null : (opts.payback ?? null);
  const paybackVs = (t: number): -1 | 0 | 1 => (exact ? compareRatio(exact.numerator, exact.denominator, t) : econ.payback_months! < t ? -1 : econ.payback_months! > t ? 1 : 0);
  const reasons: string[] = [];
  const cost = roundMinor(econ.cost, digits);
  const currencyMismatch = econ.currency === policy.currency ? null : { submission_currency: econ.currency, policy_currency: policy.currency };
  if (currencyMismatch) reasons.push(`currency ${econ.currency} is not the policy's currency ${policy.currency}: its cost thresholds do not apply`);
  if (econ.payback_months === null) reasons.push('no gross profit: payback never reached');
  else if (paybackVs(policy.classCMinPaybackMonths) > 0) reasons.push(`payback ${paybackShown(econ.payback_months, exact, policy.classCMinPaybackMonths, 'over')} > ${policy.classCMinPaybackMonths} months`);
  if (!currencyMismatch && compareMinor(cost, policy.classCMinCost, digits) > 0) reasons.push(`cost ${cost} > ${policy.classCMinCost}`);
  if (reasons.length) return { cls: 'C', reasons, required: 2, slaSeconds: policy.slaCSeconds, currencyMismatch };
  if (compareMinor(cost, policy.classAMaxCost, digits) <= 0 && econ.payback_months !== null && paybackVs(policy.classAMaxPaybackMonths) <= 0) {
    const shown = paybackShown(econ.payback_months, exact, policy.classAMaxPaybackMonths, 'within');
    const reason = `cost ${cost} <= ${policy.classAMaxCost} and payback ${shown} <= ${policy.classAMaxPaybackMonths} months`;
    return { cls: 'A', reasons: [reason], required: 0, slaSeconds: null, currencyMismatch };
  }
  return { cls: 'B', reasons: ['between the automatic and the escalated thresholds'], required: 1, slaSeconds: policy.slaBSeconds, currencyMismatch };
}

/**
 * The payback as a reason shows it against bound `t`: its 2-decimal figure when that is on the same
 * side of `t` as the exact payback, else the exact payback cut to as few decimals (3 or more) as put
 * it there — 24.004 months is over 24 though shown as 24; one within a bound finer than 2 decimals
 * (stored before PUTs held them to 2) may show above it (6.005 within 6.005 shows 6.01).
 */
function paybackShown(rounded: number, exact: PaybackRatio | null, t: number, side: 'over' | 'within'): string {
  if (!exact || (side === 'over' ? rounded > t : rounded <= t)) return String(rounded);
  const bound = asWritten(t);
  let cut = ratioCut(exact.numerator, exact.denominator, 3);
  for (let d = Math.max(3, bound.scale); d <= 40; d++) {
    cut = ratioCut(exact.numerator, exact.denominator, d);
    // Cut, the figure is at most the payback: within, any figure at the bound's decimals is; over, the first above the bound.
    if (side === 'within' || cut.units > bound.units * 10n ** BigInt(d - bound.scale)) break;
  }
  return cut.text;
}

const MAX_SLA_SECONDS = 90 * 24 * 3600;
const amount = z.number().finite().min(0).max(1e12);
const months = z.number().finite().min(0).max(1200);
const slaSeconds = z.number().int().min(1).max(MAX_SLA_SECONDS);

const thresholds = {
  class_a_max_cost: amount,
  class_a_max_payback_months: months,
  class_c_min_cost: amount,
  class_c_min_payback_months: months,
  sla_b_seconds: slaSeconds,
  sla_c_seconds: slaSeconds,
};
const CURRENCY_DESCRIPTION = 'ISO 4217: the currency of the cost thresholds; a run in another currency is class C';

/** A policy as a PUT sets it, and as a change proposes it (its `policy`). */
export const approvalPolicySettings = z.strictObject({ ...thresholds, currency: currencyCode.describe(CURRENCY_DESCRIPTION) });

/**
 * A policy that may be in force: one a PUT set, or the defaults, whose SLAs are configuration
 * (APPROVAL_SLA_B / APPROVAL_SLA_C, not bounded by the most a PUT may set). What GET /approval-policy
 * answers as `policy`, and a change records as its `base_policy`: read back as recorded, so a stored
 * default SLA beyond what a PUT accepts is no 500.
 */
const configuredSla = z.number().int().min(1).describe(`Seconds; at most ${MAX_SLA_SECONDS} when a PUT set it, any configured value for the defaults (APPROVAL_SLA_B / APPROVAL_SLA_C)`);
export const policyInForceSettings = approvalPolicySettings.extend({ sla_b_seconds: configuredSla, sla_c_seconds: configuredSla });

/** The cost thresholds: amounts of money in the policy's currency. */
const COST_FIELDS = ['class_a_max_cost', 'class_c_min_cost'] as const;
/**
 * The month thresholds, held by a PUT to the decimals a payback is shown with: classified exactly,
 * a finer bound (6.001) would still be told apart, but not by anyone reading the payback beside it —
 * 6.00 within 6.001, and a class A reason "payback 6.01 <= 6.005" (ADR 0010).
 */
const MONTH_FIELDS = ['class_a_max_payback_months', 'class_c_min_payback_months'] as const;
const MONTH_DIGITS = 2;

/**
 * PUT /api/v1/approval-policy: every threshold explicit (the currency SAR unless given); A's bounds may
 * not exceed C's; the month thresholds at most 2 decimals (MONTH_FIELDS); the cost thresholds at most the minor unit of the currency it sets (the new one, when
 * it changes it), as a submission's amounts: no cost is ever finer, so a finer bound would only hide
 * the one that applies (30,000.5 JPY is 30,000). Only the API's check, as the submission's: a policy or
 * change stored before it still reads (policyInForceSettings, approvalPolicySettings) and classifies
 * as written; a change approved is parsed by it (approveChange).
 */
export const approvalPolicyBody = z
  .strictObject({ ...thresholds, currency: currencyCode.default(DEFAULT_POLICY.currency).describe(`${CURRENCY_DESCRIPTION}; ${DEFAULT_POLICY.currency} when absent`) })
  .refine((b) => b.class_a_max_cost <= b.class_c_min_cost, { path: ['class_a_max_cost'], message: 'must not exceed class_c_min_cost' })
  .refine((b) => b.class_a_max_payback_months <= b.class_c_min_payback_months, {
    path: ['class_a_max_payback_months'],
    message: 'must not exceed class_c_min_payback_months',
  })
  .superRefine((b, ctx) => {
    addMinorUnitIssues(ctx, b.currency, b, COST_FIELDS);
    for (const f of MONTH_FIELDS) if (finerThanMinorUnit(b[f], MONTH_DIGITS)) ctx.addIssue({ code: 'custom', path: [f], message: `at most ${MONTH_DIGITS} decimals (the payback months are shown to ${MONTH_DIGITS})` });
  });
export type ApprovalPolicyBody = z.infer<typeof approvalPolicyBody>;

export function policyToBody(p: ApprovalPolicy): ApprovalPolicyBody {
  return {
    class_a_max_cost: p.classAMaxCost,
    class_a_max_payback_months: p.classAMaxPaybackMonths,
    class_c_min_cost: p.classCMinCost,
    class_c_min_payback_months: p.classCMinPaybackMonths,
    sla_b_seconds: p.slaBSeconds,
    sla_c_seconds: p.slaCSeconds,
    currency: p.currency,
  };
}

/** The fields of a policy, as PUT /approval-policy names them. */
export type PolicyField = keyof ApprovalPolicyBody;

/**
 * The fields in which `proposed` loosens `current` (ADR 0010); none means it only tightens (or keeps)
 * the policy and applies at once. A raised class A bound lets more runs be approved automatically; a
 * raised class C bound lets runs that needed two approvers pass with one; a longer SLA keeps a request
 * open to a decision longer; another currency makes the thresholds apply to other runs (those in the
 * new currency, class C until then, may become A); a lowered class C bound loosens when the proposed C
 * SLA is longer than the B SLA in force (the runs it moves from B to C get more time). Any other
 * lowering of a bound or shortening of an SLA is never loosening: every run gets the same class or a
 * stricter one, so as many approvers or more, and no more time. The database holds a policy written
 * without a second admin to the same rule (POLICY_VERSION_ORDER, approval.entities.ts).
 */
export function loosenedFields(current: ApprovalPolicy, proposed: ApprovalPolicyBody): PolicyField[] {
  const now = policyToBody(current);
  // A lowered C bound moves runs from B to C: two approvers instead of one, but the C SLA instead of the
  // B one, so more time too when the proposed C SLA is longer than the B SLA in force (the defaults: 72 h
  // against 24 h) — a request kept open to a decision longer, as a longer SLA is.
  const longerAsC = proposed.sla_c_seconds > now.sla_b_seconds;
  const loosened = (['class_a_max_cost', 'class_a_max_payback_months', 'class_c_min_cost', 'class_c_min_payback_months', 'sla_b_seconds', 'sla_c_seconds'] as const).filter(
    (f) => proposed[f] > now[f] || (longerAsC && (f === 'class_c_min_cost' || f === 'class_c_min_payback_months') && proposed[f] < now[f]),
  );
  return proposed.currency === now.currency ? loosened : [...loosened, 'currency'];
}

/**
 * Writes the tenant's policy (insert or replace) under RLS, as version `baseVersion + 1`, if the policy
 * in force is still version `baseVersion` (0: none, the defaults) — one statement, so of two changes
 * based on one version only the first applies. Null when the policy changed since (the caller's 409).
 * Updated at this statement's time: after a PUT's wait for the row it locked reading it, which now(),
 * the transaction's start, is not (an approval, whose wait is this statement's own, restamps it after).
 */
export async function applyPolicy(
  em: EntityManager,
  tenantId: string,
  body: ApprovalPolicyBody,
  by: { baseVersion: number; updatedBy: string; approvedBy: string | null },
): Promise<{ version: number; updatedAt: Date } | null> {
  const [row] = await em.execute<{ version: number; updated_at: Date }[]>(
    `insert into approval_policies as p (id, tenant_id, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months,
            sla_bseconds, sla_cseconds, currency, updated_at, updated_by, approved_by, version)
     values (?, ?, ?, ?, ?, ?, ?, ?, ?, statement_timestamp(), ?, ?, ? + 1)
     on conflict (tenant_id) do update set class_amax_cost = excluded.class_amax_cost, class_amax_payback_months = excluded.class_amax_payback_months,
            class_cmin_cost = excluded.class_cmin_cost, class_cmin_payback_months = excluded.class_cmin_payback_months, sla_bseconds = excluded.sla_bseconds,
            sla_cseconds = excluded.sla_cseconds, currency = excluded.currency, updated_at = excluded.updated_at, updated_by = excluded.updated_by,
            approved_by = excluded.approved_by, version = p.version + 1
      where p.version = ?
     returning version, updated_at`,
    [
      randomUUID(),
      tenantId,
      body.class_a_max_cost,
      body.class_a_max_payback_months,
      body.class_c_min_cost,
      body.class_c_min_payback_months,
      body.sla_b_seconds,
      body.sla_c_seconds,
      body.currency,
      by.updatedBy,
      by.approvedBy,
      by.baseVersion,
      by.baseVersion,
    ],
  );
  return row ? { version: row.version, updatedAt: new Date(row.updated_at) } : null;
}

/** approval_policies as loadPolicyWithSource reads it (columns named by ApprovalPolicyRow). */
interface PolicyColumns {
  a_cost: number | string;
  a_payback: number | string;
  c_cost: number | string;
  c_payback: number | string;
  sla_b: number | string;
  sla_c: number | string;
  currency: string;
  updated_at: Date | string;
  updated_by: string | null;
  approved_by: string | null;
  version: number | string;
}

/**
 * The approval step's read of the tenant's policy as a prefetch (StepDef.prefetch): fetched with the
 * run's state when the run job starts, under the same tenant and RLS. JSON: `policy`, the tenant's
 * PolicyColumns or null (none: the defaults), and `read_at`, the database's time of the transaction
 * that read it (`now()`, to the millisecond as an ISO string): the time a class A run is approved by
 * the policy it read (approval-packet.step.ts), never a worker's clock. After the run was created, and
 * never after the approval step's checkpoint: that transaction is the approval step's own or an
 * earlier one of the job (a new run's step 1, whose checkpoint statement carries the prefetch). An
 * aggregate (of the one row the tenant may have), so one row whether or not it has a policy.
 */
export const POLICY_PREFETCH = `select json_build_object('read_at', ${ISO_NOW}, 'policy', (array_agg(json_build_object('a_cost', p.class_amax_cost,
            'a_payback', p.class_amax_payback_months, 'c_cost', p.class_cmin_cost, 'c_payback', p.class_cmin_payback_months, 'sla_b', p.sla_bseconds,
            'sla_c', p.sla_cseconds, 'currency', p.currency, 'updated_at', p.updated_at, 'updated_by', p.updated_by, 'approved_by', p.approved_by, 'version', p.version)))[1])
       from approval_policies p where p.tenant_id = r.tenant_id`;

/**
 * The policy a POLICY_PREFETCH read found (none: the defaults with the configured SLAs), and when the
 * database read it (`readAt`, ISO).
 */
export function policyFromPrefetch(prefetched: unknown, defaults: { slaBSeconds: number; slaCSeconds: number }): { loaded: LoadedPolicy; readAt: string } {
  const { policy, read_at: readAt } = prefetched as { policy: PolicyColumns | null; read_at: string };
  return { loaded: policy ? { ...loadedFromColumns(policy), updatedAt: policy.updated_at } : defaultPolicy(defaults), readAt };
}

/**
 * POLICY_PREFETCH read by the step itself, in its transaction: for an approval step that ran without
 * what was prefetched. One statement, as a read of the policy alone would be.
 */
export async function readPolicyPrefetch(em: EntityManager, tenantId: string): Promise<unknown> {
  const [row] = await em.execute<{ prefetched: unknown }[]>(`select (${POLICY_PREFETCH}) as prefetched from (select ?::uuid as tenant_id) r`, [tenantId]);
  return row!.prefetched;
}

/** The configured SLAs of the defaults (APPROVAL_SLA_B / APPROVAL_SLA_C), in seconds. */
export interface SlaDefaults {
  slaBSeconds: number;
  slaCSeconds: number;
}

/** The platform defaults with the configured SLAs: the policy of a tenant that has set none (version 0). */
export function defaultPolicy(defaults: { slaBSeconds: number; slaCSeconds: number }): LoadedPolicy {
  return { policy: { ...DEFAULT_POLICY, ...defaults }, source: 'default', version: 0, updatedAt: null, updatedBy: null, approvedBy: null };
}

/** A policy with where it came from (a tenant's row, or the defaults), its version, when the row was last written and by whom. */
export interface LoadedPolicy {
  policy: ApprovalPolicy;
  source: 'default' | 'tenant';
  /** 0 for the defaults; 1 for the tenant's first policy, one more for each change applied. */
  version: number;
  updatedAt: Date | string | null;
  /** The sub of the admin whose PUT wrote the row (or proposed the change applied); null for the defaults. */
  updatedBy: string | null;
  /** The sub of the second admin who approved the change applied; null when it applied at once, and for the defaults. */
  approvedBy: string | null;
}

/** AppliedPolicy as written now (packets written before recorded no currency, updated_by, version or approved_by). */
export type CurrentAppliedPolicy = AppliedPolicy & { policy: ApprovalPolicyBody; version: number; updated_by: string | null; approved_by: string | null };

/** The policy as GET /approval-policy answers it, and as an approval packet records the one it was classified under. */
export function appliedPolicy(loaded: LoadedPolicy): CurrentAppliedPolicy {
  return {
    source: loaded.source,
    policy: policyToBody(loaded.policy),
    version: loaded.version,
    updated_at: toIsoTimeOrNull(loaded.updatedAt),
    updated_by: loaded.updatedBy,
    approved_by: loaded.approvedBy,
  };
}

/**
 * What an approval packet's class rests on, and so its provenance's inputs: the economics' cost,
 * payback and currency, and the policy applied (its thresholds, currency and SLAs).
 */
export function packetBasis(econ: Pick<Economics, 'cost' | 'payback_months' | 'currency'>, policy: AppliedPolicy) {
  return { economics: { cost: econ.cost, payback_months: econ.payback_months, currency: econ.currency }, policy };
}

function loadedFromColumns(row: PolicyColumns): Omit<LoadedPolicy, 'updatedAt'> {
  return { policy: policyFromColumns(row), source: 'tenant', version: Number(row.version), updatedBy: row.updated_by, approvedBy: row.approved_by };
}

/** The policy of a PUT's body (the currency filled in by its schema). */
export function policyFromBody(b: ApprovalPolicyBody): ApprovalPolicy {
  return {
    classAMaxCost: b.class_a_max_cost,
    classAMaxPaybackMonths: b.class_a_max_payback_months,
    classCMinCost: b.class_c_min_cost,
    classCMinPaybackMonths: b.class_c_min_payback_months,
    slaBSeconds: b.sla_b_seconds,
    slaCSeconds: b.sla_c_seconds,
    currency: b.currency,
  };
}

function policyFromColumns(row: PolicyColumns): ApprovalPolicy {
  return {
    classAMaxCost: Number(row.a_cost),
    classAMaxPaybackMonths: Number(row.a_payback),
    classCMinCost: Number(row.c_cost),
    classCMinPaybackMonths: Number(row.c_payback),
    slaBSeconds: Number(row.sla_b),
    slaCSeconds: Number(row.sla_c),
    currency: row.currency,
  };
}

/**
 * The tenant's policy in force (the defaults when it has no row). With `forUpdate` its row, if any, is
 * locked until the transaction ends, and read as last committed (a write that held it is waited for):
 * what a PUT decides on cannot change before it applies (approval-policy.changes.ts, lock order).
 */
export async function loadPolicyWithSource(
  em: EntityManager,
  tenantId: string,
  defaults: { slaBSeconds: number; slaCSeconds: number },
  opts: { forUpdate?: boolean } = {},
): Promise<LoadedPolicy> {
  // A plain read, nothing to hydrate or track: it runs in every approval-packet step. RLS scopes it.
  const [row] = await em.execute<PolicyColumns[]>(
    `select class_amax_cost as a_cost, class_amax_payback_months as a_payback, class_cmin_cost as c_cost,
            class_cmin_payback_months as c_payback, sla_bseconds as sla_b, sla_cseconds as sla_c, currency, updated_at, updated_by, approved_by, version
       from approval_policies where tenant_id = ?${opts.forUpdate ? ' for update' : ''}`,
    [tenantId],
  );
  if (!row) return defaultPolicy(defaults);
  return { ...loadedFromColumns(row), updatedAt: new Date(row.updated_at) };
}
