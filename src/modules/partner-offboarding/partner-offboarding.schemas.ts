import { z } from 'zod';
import { isoTime } from '../../platform/http/iso-time.ts';
import { addMinorUnitIssues, currencyCode } from '../golden-path/golden-path.schemas.ts';

// Control characters (NUL above all: jsonb cannot store \u0000) are refused as bad input, never a 5xx.
const text = (max: number) =>
  z
    .string()
    .trim()
    .min(1)
    .max(max)
    .refine((s) => !/[\u0000-\u001f\u007f]/.test(s), 'must not contain control characters');

export const OFFBOARDING_REASONS = ['contract_ended', 'compliance', 'inactive', 'partner_request'] as const;

/** One open balance with the partner: positive, the tenant owes the partner; negative, the partner owes the tenant. */
const balance = z.strictObject({
  currency: z.string().regex(/^[A-Z]{3}$/, 'must be a three-letter currency code (upper case)'),
  amount: z.number().finite().min(-1e12).max(1e12),
});

/** POST /api/v1/partner-offboarding/run: strict, bounded; unknown fields are rejected. */
export const offboardingSubmission = z.strictObject({
  partner: z.strictObject({ reference: text(100).describe("The partner's id in the tenant's own systems"), name: text(200) }),
  reason: z.enum(OFFBOARDING_REASONS),
  balances: z.array(balance).max(50).default([]),
});
export type OffboardingSubmission = z.infer<typeof offboardingSubmission>;

/**
 * The body of POST /api/v1/partner-offboarding/run: a submission whose balances each currency can pay,
 * as the golden path's (submissionRequestSchema): an ISO 4217 code (ZZZ, XAU, sar are 422 at
 * `balances.<i>.currency`), and an amount no finer than its minor unit (0.5 JPY, 1.2345 KWD are 422 at
 * `balances.<i>.amount`) — settle-balances rounds each net to it, and 0.5 JPY settled as 1 JPY nobody
 * owed. Only the API's check, as the golden path's: the steps read the run's input with
 * offboardingSubmission, so a run stored before it (or by a producer's `start`) keeps its input and settles as before.
 */
export const offboardingRequest = offboardingSubmission
  .extend({ balances: z.array(balance.extend({ currency: currencyCode })).max(50).default([]) })
  .superRefine((s, ctx) => s.balances.forEach((b, i) => addMinorUnitIssues(ctx, b.currency, b, ['amount'], ['balances', i])));

/** Step 1: the partner is frozen (its offboarding record created). */
export const frozenSchema = z.strictObject({ offboarding_id: z.uuid(), frozen_at: isoTime });
/** Step 2: one settlement line per currency, the balances netted. */
export const settlementSchema = z.strictObject({
  lines: z.array(
    z.strictObject({
      currency: z.string(),
      net: z.number(),
      direction: z.enum(['pay_partner', 'collect_from_partner', 'none']),
    }),
  ),
  settled_at: isoTime,
});
export type Settlement = z.infer<typeof settlementSchema>;
/** Step 3 (and the run's output): the record archived. */
export const archivedSchema = z.strictObject({ offboarding_id: z.uuid(), archived_at: isoTime });
