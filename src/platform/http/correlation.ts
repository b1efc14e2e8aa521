import { randomUUID } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';
import { requestContext } from '../tenancy/request-context.ts';

export const CORRELATION_HEADER = 'X-Correlation-Id';
const VALID_CORRELATION_ID = /^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$/;

export function isValidCorrelationId(v: unknown): v is string {
  return typeof v === 'string' && VALID_CORRELATION_ID.test(v);
}

/**
 * Takes a valid X-Correlation-Id or makes one, returns it on every response (errors too), and opens
 * the request's AsyncLocalStorage context. An invalid header is replaced, not rejected: a client's
 * tracing mistake should never fail its business request.
 */
export function correlationMiddleware(req: Request, res: Response, next: NextFunction): void {
  const incoming = req.get(CORRELATION_HEADER);
  const correlationId = isValidCorrelationId(incoming) ? incoming : randomUUID();
  const requestId = randomUUID();
  res.setHeader(CORRELATION_HEADER, correlationId);
  res.setHeader('X-Request-Id', requestId);
  res.locals.correlationId = correlationId;
  res.locals.requestId = requestId;
  requestContext.run({ requestId, correlationId }, next);
}
