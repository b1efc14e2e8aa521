import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import type { EntityManager, MikroORM } from '@mikro-orm/postgresql';
import type { Logger } from 'pino';
import { AppError } from '../errors/app-error.ts';
import { toProblem } from '../errors/to-problem.ts';
import { authenticate } from '../tenancy/auth.middleware.ts';
import type { Principal, TokenVerifier } from '../tenancy/jwt.ts';
import { idempotencyMiddleware, type IdempotencyMetrics, type IdempotencyState } from '../idempotency/idempotency.middleware.ts';
import { REPLAYABLE_HEADERS, type IdempotencyService } from '../idempotency/idempotency.service.ts';
import { MUTATING_METHODS, type RouteDef, type RouteResult } from './route.ts';
import { parseOrThrow } from './validation.ts';
import { PROBLEM_CONTENT_TYPE } from './problem.middleware.ts';

export interface RouterDeps {
  orm: MikroORM;
  verifier: TokenVerifier;
  idempotency: IdempotencyService;
  logger: Logger;
  idempotencyMetrics?: IdempotencyMetrics;
}

/**
 * Builds the Express router from route declarations. Every route gets, in order: authenticate →
 * validate → (POST/PUT/PATCH) idempotency → handler. The handler runs in one tenant-bound
 * transaction; for an idempotent request its final response is stored in that same transaction.
 */
export function buildRouter(routes: RouteDef[], deps: RouterDeps): Router {
  const router = express.Router();
  for (const def of routes) {
    const chain: Array<(req: Request, res: Response, next: NextFunction) => unknown> = [
      authenticate(deps.verifier, deps.orm, deps.logger, def.roles),
      validate(def),
    ];
    if (MUTATING_METHODS.has(def.method)) {
      chain.push(idempotencyMiddleware(deps.idempotency, { method: def.method, path: def.path, required: def.idempotency === 'required' }, deps.idempotencyMetrics));
    }
    chain.push(runHandler(def, deps));
    router[def.method](def.path, ...chain);
  }
  return router;
}

function validate(def: RouteDef) {
  return function validateRequest(req: Request, res: Response, next: NextFunction): void {
    try {
      if (MUTATING_METHODS.has(def.method) && def.body) {
        if (!req.is('application/json')) {
          throw new AppError('unsupported_media_type', 'Unsupported Media Type', {
            status: 415,
            retryable: false,
            detail: 'Send the body as application/json.',
          });
        }
      }
      res.locals.params = def.params ? parseOrThrow(def.params, req.params, 'path parameters', 404) : req.params;
      res.locals.query = def.query ? parseOrThrow(def.query, req.query, 'query parameters') : req.query;
      res.locals.body = def.body ? parseOrThrow(def.body, req.body, 'request body', 422) : undefined;
      next();
    } catch (e) {
      next(e);
    }
  };
}

function runHandler(def: RouteDef, deps: RouterDeps) {
  return async function handle(req: Request, res: Response, next: NextFunction): Promise<void> {
    const em = res.locals.em as EntityManager;
    const idem = res.locals.idempotency as IdempotencyState | undefined;
    const record = idem?.record;
    const afterCommit: Array<() => Promise<void>> = [];
    let result: RouteResult;
    try {
      result = await em.transactional(async (tx) => {
        const out = await def.handler({
          req,
          res,
          body: res.locals.body,
          params: res.locals.params,
          query: res.locals.query,
          principal: res.locals.principal as Principal,
          em: tx,
          correlationId: res.locals.correlationId as string,
          requestId: res.locals.requestId as string,
          idempotencyHash: idem?.hash ?? '',
          afterCommit: (fn) => afterCommit.push(fn),
        });
        if (record) {
          if (isStoredOutcome(out.status)) await deps.idempotency.store(tx, record, { status: out.status, body: out.body, headers: replayHeaders(out) });
          else await deps.idempotency.release(tx, record);
        }
        return out;
      });
    } catch (err) {
      if (record) {
        // A definitive 4xx from the handler is the request's outcome and replays; a 5xx releases the key.
        const { problem, headers } = toProblem(err, res.locals.requestId as string);
        try {
          if (err instanceof AppError && isStoredOutcome(problem.status)) {
            const { request_id: _omit, ...stored } = problem;
            await em.transactional((tx) => deps.idempotency.store(tx, record, { status: problem.status, body: stored, headers: { ...headers, 'content-type': PROBLEM_CONTENT_TYPE } }));
          } else {
            await deps.idempotency.release(em, record);
          }
        } catch (e) {
          deps.logger.warn({ err: e }, 'could not settle the idempotency key; its lease will expire');
        }
      }
      return next(err);
    }
    for (const fn of afterCommit) {
      try {
        await fn();
      } catch (e) {
        // Postgres already holds the truth; the recovery sweeper finishes what Redis missed.
        deps.logger.error({ err: e }, 'after-commit action failed; the sweeper will repair it');
      }
    }
    for (const [k, v] of Object.entries(result.headers ?? {})) res.setHeader(k, v);
    res.status(result.status);
    if (result.body === undefined) res.end();
    else res.json(result.body);
  };
}

/** 429 and 5xx say "not now", not "this is the answer": they free the key for a retry instead of replaying. */
function isStoredOutcome(status: number): boolean {
  return status < 500 && status !== 429;
}

function replayHeaders(result: RouteResult): Record<string, string> {
  const out: Record<string, string> = { 'content-type': 'application/json; charset=utf-8' };
  for (const [k, v] of Object.entries(result.headers ?? {})) {
    if ((REPLAYABLE_HEADERS as readonly string[]).includes(k.toLowerCase())) out[k.toLowerCase()] = v;
  }
  return out;
}
