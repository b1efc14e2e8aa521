import type { NextFunction, Request, Response } from 'express';
import type { MikroORM } from '@mikro-orm/postgresql';
import type { Logger } from 'pino';
import { ForbiddenError, UnauthorizedError } from '../errors/app-error.ts';
import { tenantEm } from '../db/tenant-em.ts';
import { KeysUnavailableError, type Principal, type TokenVerifier } from './jwt.ts';
import { currentContext } from './request-context.ts';

export const MIDDLEWARE_KIND = Symbol.for('dealix.middleware.kind');
export type MiddlewareKind = 'authenticate' | 'idempotency' | 'admin-auth';

export function tagMiddleware<F extends (...a: any[]) => any>(fn: F, kind: MiddlewareKind): F {
  Object.defineProperty(fn, MIDDLEWARE_KIND, { value: kind });
  return fn;
}
export function middlewareKind(fn: unknown): MiddlewareKind | undefined {
  return (fn as Record<symbol, MiddlewareKind> | undefined)?.[MIDDLEWARE_KIND];
}

/**
 * A server-side refusal of a token that verified (a signed-out operator token, a used dashboard link's:
 * admin-auth.middleware.ts): throws to refuse, resolves to let it through.
 */
export type TokenRefusal = (token: string, principal: Principal, req: Request) => Promise<void>;

/**
 * Verifies the bearer token and binds the request to its tenant: the principal and a tenant-bound
 * entity manager go into res.locals and the AsyncLocalStorage context. The tenant comes from the
 * verified token and nowhere else.
 */
export function authenticate(verifier: TokenVerifier, orm: MikroORM, logger: Logger, requiredRoles?: string[], refuse?: TokenRefusal) {
  return tagMiddleware(async function authenticateMiddleware(req: Request, res: Response, next: NextFunction) {
    try {
      const header = req.get('authorization');
      const match = header ? /^Bearer\s+([A-Za-z0-9\-_=]+\.[A-Za-z0-9\-_=]*\.[A-Za-z0-9\-_=+/]*)\s*$/i.exec(header) : null;
      if (!match) throw new UnauthorizedError(header ? 'The Authorization header must be "Bearer <jwt>".' : 'A bearer token is required.');
      let principal;
      try {
        principal = await verifier.verify(match[1]!);
      } catch (e) {
        if (e instanceof KeysUnavailableError) logger.error({ err: e.cause, path: req.path }, "the identity provider's keys could not be fetched: token not checked (503)");
        else logger.warn({ security_event: 'token_rejected', reason: (e as Error).message, path: req.path, ip: req.ip }, 'rejected bearer token');
        throw e;
      }
      if (refuse) await refuse(match[1]!, principal, req);
      if (requiredRoles?.length && !requiredRoles.some((r) => principal.roles.includes(r))) {
        throw new ForbiddenError(`This operation needs one of the roles: ${requiredRoles.join(', ')}.`);
      }
      const em = tenantEm(orm, principal.tenantId);
      res.locals.principal = principal;
      res.locals.em = em;
      const ctx = currentContext();
      if (ctx) {
        ctx.principal = principal;
        ctx.em = em;
      }
      next();
    } catch (e) {
      next(e);
    }
  }, 'authenticate');
}
