import type { NextFunction, Request, Response } from 'express';
import { AppError } from '../errors/app-error.ts';
import type { Principal } from '../tenancy/jwt.ts';
import { releaseWhenDone } from './load-shed.ts';

/**
 * Per-tenant fairness at the front door: a tenant may hold at most `perTenant` of this process's
 * in-flight requests (0 disables). Past it the tenant gets 429 with Retry-After before its body is
 * read or any database work is done, so one tenant's slow or bursting clients cannot take every
 * slot of `API_MAX_INFLIGHT` and shed the other tenants' requests with 503. It runs right after
 * authentication: the tenant is known only from the verified token.
 */
export function tenantInFlightLimit(perTenant: number) {
  const inFlight = new Map<string, number>();
  return function limitTenantInFlight(_req: Request, res: Response, next: NextFunction): void {
    const tenantId = (res.locals.principal as Principal | undefined)?.tenantId;
    if (perTenant <= 0 || tenantId === undefined) return next();
    const n = inFlight.get(tenantId) ?? 0;
    if (n >= perTenant) {
      next(
        new AppError('rate_limited', 'Too Many Requests', {
          status: 429,
          retryable: true,
          detail: `The tenant already has ${perTenant} requests in progress on this API instance.`,
          headers: { 'Retry-After': '1' },
        }),
      );
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
