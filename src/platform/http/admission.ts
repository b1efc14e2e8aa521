import type { EntityManager } from '@mikro-orm/postgresql';
import type { Redis } from 'ioredis';
import { DEFER_UNTIL_NEXT } from '../db/coalescing-client.ts';
import { AppError } from '../errors/app-error.ts';
import type { AdmissionControl } from './route.ts';
import { RateWindow } from './rate-window.ts';
import { TooManyRequestsError } from './refusals.ts';

/**
 * Abuse limits per tenant: a submission rate (fixed one-minute window in Redis) and a cap on runs
 * in flight (counted under RLS; call `admit` inside the transaction that then inserts the run), which
 * a tenant's operator-set override (tenant_limits, ADR 0014) replaces while MAX_RUNS_IN_FLIGHT_PER_TENANT is on.
 * Both answer 429 with Retry-After; 0 disables a limit. A route submits to them by declaring
 * `admission` (RouteDef): the router applies it, and the OpenAPI document lists 429 from it.
 */
export class AdmissionController implements AdmissionControl {
  private readonly o: { redis: Redis; prefix: string; perMinute: number; maxInFlight: number };
  private readonly rate: RateWindow;
  constructor(opts: { redis: Redis; prefix: string; perMinute: number; maxInFlight: number }) {
    this.o = opts;
    this.rate = new RateWindow(opts.redis, `${opts.prefix}:ratelimit`, 60_000);
  }

  async admit(em: EntityManager, tenantId: string, onRollback: (fn: (err: unknown) => Promise<void>) => void): Promise<void> {
    // The in-flight cap first: its statements are the handler's first, so an idempotency claim sent
    // with them (a prelude) that finds its key taken stops the request before it counts against the
    // rate limit — a replay never spends the tenant's budget.
    if (this.o.maxInFlight > 0) {
      // Count-then-insert races: concurrent submissions would each see room under the cap. A lock per
      // tenant, held until the caller's transaction (which inserts the run) ends, serialises them. The
      // lock travels with the count in one message (ADR 0004); PostgreSQL runs them in order, and the
      // count's own snapshot is taken after the lock is granted.
      await em.execute(`${DEFER_UNTIL_NEXT}select pg_advisory_xact_lock(hashtextextended('dealix:admission:' || ?, 0))`, [tenantId]);
      // The tenant's own cap (tenant_limits, set by an operator: ADR 0014) is read in the statement that
      // counts, under the same lock: no round trip more, and a PUT that commits meanwhile applies to the
      // next submission. No row, or a null column: MAX_RUNS_IN_FLIGHT_PER_TENANT — as a bigint: a setting
      // at or past 2^31 - 1 (a large value meaning "practically none") overflowed int in the cast or the
      // `+ 1` and failed every submission of every tenant with a 500.
      const [row] = await em.execute<{ cap: number | string; n: string }[]>(
        `with cap as (select coalesce((select max_runs_in_flight from tenant_limits where tenant_id = ?), ?::bigint) as cap)
         select cap.cap, (select count(*) from (select 1 from durable_runs where tenant_id = ? and status in ('pending', 'running') limit (select cap from cap) + 1) t) as n from cap`,
        [tenantId, this.o.maxInFlight, tenantId],
      );
      const cap = Number(row?.cap ?? this.o.maxInFlight);
      if (Number(row?.n ?? 0) >= cap) throw new TooManyRequestsError('runs_in_flight', `The tenant already has ${cap} runs in flight.`, 5);
    }
    if (this.o.perMinute > 0) {
      // Without the in-flight cap no statement has carried the claim yet: send it (with a statement of
      // nothing) before the counter, so that a replay stops here too and never spends the budget.
      if (this.o.maxInFlight <= 0) await em.execute('select 1');
      const hit = await this.rate.hit(tenantId);
      // The budget is spent by every submission the API processed to a definitive answer: one accepted,
      // and one its handler answered with a 4xx (an unknown run's 404, a 409 run_not_failed: the client
      // has its answer, stored under its key) — else a storm of failing requests, each a transaction and
      // a stored key, would go unbounded. It is given back when the server failed to process it: the
      // transaction did not commit with a 5xx, an error that is not an AppError (a statement or the
      // commit failing, a lost idempotency lease). The rate limit's own 429 gives its hit back too, or
      // refused attempts would keep the counter past the limit and a later refund would free nothing.
      // The refund goes to the window the hit was counted in (RateWindow.unhit): once that window is
      // over it changes nothing, never the next window's budget.
      onRollback(async (err) => {
        if (!answeredByHandler(err)) await this.rate.unhit(hit);
      });
      if (hit.count > this.o.perMinute) {
        throw new TooManyRequestsError('rate_limit', `The tenant's submission rate limit (${this.o.perMinute}/min) is exceeded.`, hit.retryAfter);
      }
    }
  }
}

/**
 * Whether a submission that did not commit was still processed to a definitive answer, and so keeps
 * its rate hit: a 4xx the handler threw. Not the rate limit's own 429 (a refusal, before the handler).
 */
function answeredByHandler(err: unknown): boolean {
  if (err instanceof TooManyRequestsError && err.reason === 'rate_limit') return false;
  return err instanceof AppError && err.status >= 400 && err.status < 500;
}
