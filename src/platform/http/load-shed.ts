import type { NextFunction, Request, Response } from 'express';
import { ServiceUnavailableError } from '../errors/app-error.ts';
import { sendProblem } from './problem.middleware.ts';
import { routedPath } from '../telemetry/attributes.ts';

const EXEMPT = new Set(['/healthz', '/readyz', '/metrics']);

/**
 * Front-door load shedding: past `maxInFlight` concurrent requests, answer 503 with Retry-After before
 * any database work. Under overload this keeps the requests that are admitted fast (they get pool
 * connections) instead of letting every request wait out the pool timeout after its idempotency key
 * was already claimed. 0 disables it. Probes and metrics are never shed.
 */
export function loadShedding(maxInFlight: number) {
  let inFlight = 0;
  return function shed(req: Request, res: Response, next: NextFunction): void {
    if (maxInFlight <= 0 || EXEMPT.has(routedPath(req.path))) return next();
    if (inFlight >= maxInFlight) {
      sendProblem(res, new ServiceUnavailableError('The API is at capacity. Retry after the indicated delay.', undefined, 1));
      return;
    }
    inFlight++;
    releaseWhenDone(res, () => inFlight--);
    next();
  };
}

/** Calls `release` once, when the response is sent or its connection closes, whichever comes first. */
export function releaseWhenDone(res: Response, release: () => void): void {
  let done = false;
  const once = () => {
    if (!done) {
      done = true;
      release();
    }
  };
  res.once('finish', once);
  res.once('close', once);
}
