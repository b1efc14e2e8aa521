import type { SlidingBudget } from '../http/rate-window.ts';
import { TooManyRequestsError } from '../http/refusals.ts';

/** The window of WEBHOOK_RESEND_MAX_PER_HOUR: an hour, sliding. */
export const RESEND_BUDGET_WINDOW_MS = 3_600_000;

/** WEBHOOK_RESEND_MAX_PER_HOUR: a tenant's resent deliveries in any sliding hour, in Redis (`window`); 0 = off. */
export interface ResendBudget {
  window: SlidingBudget;
  maxPerHour: number;
}

/**
 * Takes up to `want` deliveries from the tenant's hourly budget of resends, or refuses the request (429
 * `webhook_resend_rate_limited`, Retry-After: until the oldest resend of the hour leaves it) when none is
 * left. Why a budget besides WEBHOOK_RESEND_MAX_PENDING: that one bounds the queue, not the traffic — its
 * backlog drains at the receivers' pace, and an admin could then resend 1,000 signed POSTs again, and
 * again, at any host it set as an endpoint's URL: the platform as an amplifier (the pending bound
 * refilled as fast as the host answered). Counted in deliveries, not requests, since one request resends
 * 1 or 1,000. A test event (test-event.ts) spends one too: it is a POST an admin makes the platform send
 * at a host of its choosing, as a resend is. Taken under the tenant's resend lock (resendRoom), after the checks that refuse with a 4xx,
 * right before the update; what the update did not resend is given back (`keep`), and all of it if the
 * transaction does not commit (nothing was resent) — a commit whose outcome the API never learnt (the
 * connection lost after COMMIT was sent) may so have resent uncounted, once. A give-back that fails
 * (Redis lost meanwhile) leaves the take spent: the tenant resends less, never more. Redis unavailable
 * at the take: the request fails (503, nothing resent, the key not stored) — the bound never opens.
 */
export async function spendBudget(budget: ResendBudget | undefined, ctx: { principal: { tenantId: string }; onRollback(fn: (err: unknown) => Promise<void>): void }, want: number): Promise<{ granted: number; keep(resent: number): Promise<void> } | undefined> {
  if (!budget || budget.maxPerHour <= 0) return undefined;
  const take = await budget.window.take(ctx.principal.tenantId, want, budget.maxPerHour);
  if (take.granted <= 0) {
    throw new TooManyRequestsError(
      'webhook_resend',
      `The tenant has resent (or sent as test events) ${budget.maxPerHour} webhook deliveries in the last hour (WEBHOOK_RESEND_MAX_PER_HOUR): nothing is sent; try again in ${take.retryAfter} s.`,
      take.retryAfter,
      'webhook_resend_rate_limited',
    );
  }
  ctx.onRollback(() => budget.window.keep(take, 0));
  return { granted: take.granted, keep: (resent) => budget.window.keep(take, resent) };
}
