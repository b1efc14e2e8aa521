import type { NextFunction, Request, Response } from 'express';
import { randomUUID } from 'node:crypto';
import type { EntityManager } from '@mikro-orm/postgresql';
import type { Counter } from 'prom-client';
import { AppError, ConflictError, ValidationError } from '../errors/app-error.ts';
import type { Principal } from '../tenancy/jwt.ts';
import { tagMiddleware } from '../tenancy/auth.middleware.ts';
import {
  IDEMPOTENCY_HEADER,
  REPLAYED_HEADER,
  fingerprintedParts,
  parseIdempotencyKey,
  sentMoreThanOnce,
  requestFingerprint,
  submissionHash,
  type ClaimInput,
  type ClaimResult,
  type IdempotencyRecord,
  type IdempotencyService,
  type PendingClaim,
} from './idempotency.service.ts';

export interface IdempotencyState {
  /** The claimed record (set once the claim is known to be this request's). */
  record?: IdempotencyRecord;
  /** A keyed request's claim, to be sent with the handler's first statements (runHandler). */
  pending?: PendingClaim;
  /** What the claim is made of, for `IdempotencyService.claim` when the prelude finds the key taken. */
  input?: ClaimInput;
  hash: string;
}

export interface IdempotencyMetrics {
  replays?: Counter;
  conflicts?: Counter<'reason'>;
}

/**
 * The Idempotency-Key standard for one route (IETF draft + Stripe): 400 when a required key is missing
 * or malformed; a completed key replays its stored response with Idempotent-Replayed: true; another
 * body or route under the same key is 422; a key still in flight is 409 with Retry-After.
 * Runs after authentication and body validation, so nothing is stored for a rejected request. The
 * claim itself travels with the handler's first statements (see IdempotencyService.claimPrelude and
 * the router's runHandler), which answers through {@link answerClaim} when the key is taken.
 */
export function idempotencyMiddleware(service: IdempotencyService, route: { method: string; path: string; required: boolean }) {
  return tagMiddleware(async function idempotency(req: Request, res: Response, next: NextFunction) {
    try {
      const principal = res.locals.principal as Principal;
      const em = res.locals.em as EntityManager;
      // headersDistinct keeps repeated fields apart (req.headers would join them with ", ").
      const values = req.headersDistinct[IDEMPOTENCY_HEADER.toLowerCase()];
      if (values && values.length > 1) {
        throw sentMoreThanOnce();
      }
      const key = parseIdempotencyKey(values?.[0]);
      if (key === undefined) {
        if (route.required) {
          throw new ValidationError(`The ${IDEMPOTENCY_HEADER} header is required for this operation.`, [
            { path: IDEMPOTENCY_HEADER, message: 'required' },
          ]);
        }
        res.locals.idempotency = { hash: submissionHash(principal.tenantId, randomUUID()) } satisfies IdempotencyState;
        return next();
      }
      const method = req.method.toUpperCase();
      // The route template, not the concrete URL, plus the concrete params inside the fingerprint.
      const routeId = `${method} ${route.path}`;
      // Params, query and body as validated: a UUID in lower case (the same run in either case is one
      // request), and a route without a body has none (an empty JSON object sent to it is no body).
      const parts = fingerprintedParts(res.locals.params ?? req.params, res.locals.query as Record<string, unknown> | undefined, res.locals.body);
      const fingerprint = requestFingerprint(method, route.path, parts);
      const input: ClaimInput = { tenantId: principal.tenantId, principal: principal.sub, key, method, route: routeId, fingerprint };
      const pending = service.claimPrelude(em, input);
      res.locals.idempotency = { pending, input, hash: pending.hash } satisfies IdempotencyState;
      return next();
    } catch (e) {
      next(e);
    }
  }, 'idempotency');
}

/**
 * Answers a request whose key another request holds: replays the stored response (true), or throws
 * 422 (another request under the key) or 409 with Retry-After (still in flight). A `claimed` result
 * is not answered here (false): the caller runs the handler with it.
 */
export function answerClaim(res: Response, claim: ClaimResult, metrics: IdempotencyMetrics = {}): boolean {
  switch (claim.outcome) {
    case 'claimed':
      return false;
    case 'replay': {
      metrics.replays?.inc();
      const r = claim.record;
      const bodiless = r.responseBody === null || r.responseBody === undefined;
      for (const [k, v] of Object.entries(r.responseHeaders ?? {})) {
        // No body, no media type: a 204 replayed exactly as it was first answered (a key stored by an
        // earlier release may still hold the JSON type its 204 was stored with).
        if (!(bodiless && k.toLowerCase() === 'content-type')) res.setHeader(k, v);
      }
      res.setHeader(REPLAYED_HEADER, 'true');
      res.status(r.responseStatus ?? 200);
      if (bodiless) res.end();
      else res.send(typeof r.responseBody === 'string' ? r.responseBody : JSON.stringify(r.responseBody));
      return true;
    }
    case 'mismatch':
      metrics.conflicts?.inc({ reason: 'mismatch' });
      throw new AppError('idempotency_key_reused', 'Unprocessable Content', {
        status: 422,
        retryable: false,
        detail: `This ${IDEMPOTENCY_HEADER} was already used with a different request (other body, parameters or route).`,
      });
    case 'in_progress':
      metrics.conflicts?.inc({ reason: 'in_progress' });
      throw new ConflictError('idempotency_key_in_use', `A request with this ${IDEMPOTENCY_HEADER} is still being processed. Retry later.`, {
        retryable: true,
        headers: { 'Retry-After': String(claim.retryAfterSeconds) },
      });
  }
}
