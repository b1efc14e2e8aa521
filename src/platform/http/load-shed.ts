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
    let held = true;
    const release = () => {
      if (held) {
        held = false;
        inFlight--;
      }
    };
    (res.locals as Record<symbol, unknown>)[SHED_PLACE] = release;
    releaseWhenDone(res, release);
    next();
  };
}

const SHED_PLACE = Symbol('dealix.shedPlace');

/**
 * Gives the request's place among API_MAX_INFLIGHT back now, for a request that is counted elsewhere:
 * the dashboard's sign-in exchange reads its form before any credential is checked, so anyone could
 * hold it open by sending the form slowly; it has a small pool and a deadline of its own
 * (admin-auth.middleware.ts) and must not take a place the tenants' requests need. Nothing when the
 * request holds none (shedding off, an exempt path).
 */
export function leaveLoadShedding(res: Response): void {
  (res.locals as Record<symbol, (() => void) | undefined>)[SHED_PLACE]?.();
}

/**
 * A pool of `max` places: `take` gives the request one until it is done with (releaseWhenDone), or
 * returns false when all are taken.
 */
export function inFlightPlaces(max: number): { take(res: Response): boolean } {
  let inFlight = 0;
  return {
    take(res) {
      if (inFlight >= max) return false;
      inFlight++;
      releaseWhenDone(res, () => inFlight--);
      return true;
    },
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
