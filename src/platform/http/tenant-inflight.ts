import type { NextFunction, Request, Response } from 'express';
import type { Principal } from '../tenancy/jwt.ts';
import { releaseWhenDone } from './load-shed.ts';
import { TooManyRequestsError, type OnRefused } from './refusals.ts';

/**
 * Per-tenant fairness at the front door: a tenant may hold at most `perTenant` of this process's
 * in-flight requests (0 disables). Past it the tenant gets 429 with Retry-After before its body is
 * read or any database work is done, so one tenant's slow or bursting clients cannot take every
 * slot of `API_MAX_INFLIGHT` and shed the other tenants' requests with 503. It runs right after
 * authentication: the tenant is known only from the verified token.
 */
export function tenantInFlightLimit(perTenant: number, onRefused?: OnRefused) {
  const inFlight = new Map<string, number>();
  // One map for every route; each route's middleware knows its own label for the refusal counter.
  return (route: string) =>
    function limitTenantInFlight(_req: Request, res: Response, next: NextFunction): void {
      const tenantId = (res.locals.principal as Principal | undefined)?.tenantId;
      if (perTenant <= 0 || tenantId === undefined) return next();
      const n = inFlight.get(tenantId) ?? 0;
      if (n >= perTenant) {
        onRefused?.('tenant_in_flight', route);
        next(new TooManyRequestsError('tenant_in_flight', `The tenant already has ${perTenant} requests in progress on this API instance.`, 1));
        return;
      }
      inFlight.set(tenantId, n + 1);
      releaseWhenDone(res, () => {
        const left = (inFlight.get(tenantId) ?? 1) - 1;
        if (left <= 0) inFlight.delete(tenantId);
        else inFlight.set(tenantId, left);
      });
      next();
    };
}
