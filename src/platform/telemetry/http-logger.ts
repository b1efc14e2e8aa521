import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Response } from 'express';
import { pinoHttp, type HttpLogger } from 'pino-http';
import { redactUrl, type Logger } from './logger.ts';
import { isValidCorrelationId, redactQuery, routedPath } from './attributes.ts';

const PROBES = ['/healthz', '/readyz', '/metrics'];
/** Probes, scrapes and the dashboard's assets and polling (GETs under /admin/queues/) would drown the request log. */
const quiet = (req: IncomingMessage) => {
  const path = routedPath(req.url);
  return PROBES.includes(path) || (req.method === 'GET' && path.startsWith('/admin/queues/'));
};

/**
 * One JSON line per request (pino-http). The completion line is written when the response finishes,
 * outside the request's async context, so the ids the request learned on its way (correlation, trace,
 * tenant) are added from res.locals. Authorization, cookies, the Idempotency-Key, secret query values
 * and a refused X-Correlation-Id are redacted.
 */
export function httpLogger(logger: Logger): HttpLogger {
  const fields = (_req: IncomingMessage, res: ServerResponse, val: object) => {
    const locals = (res as Response).locals ?? {};
    const principal = locals.principal as { tenantId?: string } | undefined;
    return {
      ...val,
      ...(locals.correlationId ? { correlation_id: locals.correlationId } : {}),
      ...(locals.traceId ? { trace_id: locals.traceId, span_id: locals.spanId } : {}),
      ...(principal?.tenantId ? { tenant_id: principal.tenantId } : {}),
      ...(locals.runId ? { run_id: locals.runId } : {}),
    };
  };
  return pinoHttp({
    logger,
    genReqId: (_req, res) => res.getHeader('X-Request-Id') as string,
    customLogLevel: (_req, res, err) => (err || res.statusCode >= 500 ? 'error' : res.statusCode >= 400 ? 'warn' : 'info'),
    autoLogging: { ignore: quiet },
    customSuccessObject: fields,
    customErrorObject: (req, res, _err, val) => fields(req, res, val),
    serializers: {
      req: (req: { url?: string; query?: Record<string, unknown>; headers?: Record<string, unknown> }) => {
        if (req.url) req.url = redactUrl(req.url);
        // An X-Correlation-Id the API refused (and replaced: the line's correlation_id) is any text a
        // client sent, not an id: it is not written. A copy: `headers` is the request's own object.
        const cid = req.headers?.['x-correlation-id'];
        if (cid !== undefined && !isValidCorrelationId(cid)) req.headers = { ...req.headers, 'x-correlation-id': '[invalid]' };
        // The parsed query too, by the same rules as the URL (any case: `?Token=`; `token[]`; a JWT under any name), not only REDACT_PATHS' exact names.
        if (req.query) req.query = redactQuery(req.query);
        return req;
      },
      // A redirect's Location by the same rules: one that reflects the request's query (serve-static's `/static` →
      // `/static/?…` under the dashboard, any res.redirect built from req.url) carried its secrets into the log whole.
      res: (res: { headers?: Record<string, unknown> }) => {
        const location = res.headers?.location;
        if (typeof location === 'string') res.headers = { ...res.headers, location: redactUrl(location) };
        return res;
      },
    },
  });
}
