import { randomUUID } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';
import { context as otelContext, trace } from '@opentelemetry/api';
import { requestContext } from '../tenancy/request-context.ts';
import { bindRequestCorrelation, withRequestCorrelation } from '../telemetry/correlation-span-processor.ts';
import { ATTR, isValidCorrelationId } from '../telemetry/attributes.ts';

export { isValidCorrelationId };
export const CORRELATION_HEADER = 'X-Correlation-Id';
const NO_TRACE = '00000000000000000000000000000000';

/**
 * Takes a valid X-Correlation-Id or makes one, returns it on every response (errors too), and opens
 * the request's AsyncLocalStorage context. An invalid header is replaced, not rejected: a client's
 * tracing mistake should never fail its business request. With tracing on, the id is bound to the
 * request (its server span started before the id was known) and the trace ids are kept for the
 * request log line.
 */
export function correlationMiddleware(req: Request, res: Response, next: NextFunction): void {
  const incoming = req.get(CORRELATION_HEADER);
  const correlationId = isValidCorrelationId(incoming) ? incoming : randomUUID();
  const requestId = randomUUID();
  res.setHeader(CORRELATION_HEADER, correlationId);
  res.setHeader('X-Request-Id', requestId);
  res.locals.correlationId = correlationId;
  res.locals.requestId = requestId;
  const span = trace.getActiveSpan();
  const sc = span?.spanContext();
  if (span && sc && sc.traceId !== NO_TRACE) {
    span.setAttribute(ATTR.CORRELATION, correlationId);
    // The request's server span, and what started before this: by request, never by trace (a caller's
    // requests may share one trace, on purpose or not).
    bindRequestCorrelation(otelContext.active(), correlationId);
    res.locals.traceId = sc.traceId;
    res.locals.spanId = sc.spanId;
    const ctx = withRequestCorrelation(otelContext.active(), correlationId);
    requestContext.run({ requestId, correlationId }, () => otelContext.with(ctx, next));
    return;
  }
  requestContext.run({ requestId, correlationId }, next);
}
