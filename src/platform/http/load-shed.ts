import type { NextFunction, Request, Response } from 'express';
import { ServiceUnavailableError } from '../errors/app-error.ts';
import { sendProblem } from './problem.middleware.ts';
import { routedPath } from '../telemetry/attributes.ts';

const EXEMPT = new Set(['/healthz', '/readyz', '/metrics']);

/**
 * Front-door load shedding: past `maxInFlight` concurrent requests, answer 503 with Retry-After before
 * any database work. Under overload this keeps the requests that are admitted fast (they get pool
 * connections) instead of letting every request wait out the pool timeout after its idempotency key
 * was already claimed. 0 disables it. Probes and metrics are never shed. `onShed` counts each request shed.
 */
export function loadShedding(maxInFlight: number, onShed?: (req: Request) => void) {
  let inFlight = 0;
  return function shed(req: Request, res: Response, next: NextFunction): void {
    if (maxInFlight <= 0 || EXEMPT.has(routedPath(req.path))) return next();
    if (inFlight >= maxInFlight) {
      onShed?.(req);
      sendProblem(res, new ServiceUnavailableError('The API is at capacity. Retry after the indicated delay.', undefined, 1));
      return;
    }
    inFlight++;
    releaseWhenDone(res, () => inFlight--);
    next();
  };
}

const HANDLER_WORK = Symbol('dealix.handlerWork');

/**
 * Marks the route handler's work for the in-flight limits (router.ts): a slot is held until it ends,
 * even when the client goes away first. Returns false, and the handler must not run, when the client
 * is already gone — nothing of the request has been done and no answer can reach it (a keyed retry
 * runs it); its slot was released when it went.
 */
export function startHandlerWork(res: Response, work: () => Promise<void>): Promise<void> | undefined {
  if (res.closed && !res.writableFinished) return undefined;
  const p = work();
  (res.locals as Record<symbol, unknown>)[HANDLER_WORK] = p;
  return p;
}

/**
 * Calls `release` once the request is done with: when its response is sent, or when its connection
 * closes — then after the handler's work, if it started, has ended (a client that hangs up does not
 * end the database work it caused, so it must not free the slot that bounds that work). A slot taken
 * after the connection already closed (the client hung up while an earlier step awaited, e.g. its
 * token's check) is released at once: 'close' has been emitted and comes no more, and the handler
 * will not run (startHandlerWork).
 */
export function releaseWhenDone(res: Response, release: () => void): void {
  let done = false;
  const once = () => {
    if (!done) {
      done = true;
      release();
    }
  };
  const closed = () => {
    const work = (res.locals as Record<symbol, Promise<void> | undefined>)[HANDLER_WORK];
    if (work && !res.writableFinished) void work.then(once, once);
    else once();
  };
  if (res.closed) return closed();
  res.once('finish', once);
  res.once('close', closed);
}
