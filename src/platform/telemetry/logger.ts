import { pino, type Logger } from 'pino';
import { trace, context } from '@opentelemetry/api';
import { currentContext } from '../tenancy/request-context.ts';

export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'res.headers["set-cookie"]',
  'headers.authorization',
  'authorization',
  'token',
  '*.token',
  'password',
  '*.password',
];

/**
 * JSON logs; every line written inside a request or job carries trace_id, span_id, correlation_id,
 * tenant_id and run_id where known (mixin reads the active span and the AsyncLocalStorage context).
 */
export function createLogger(opts: { level: string; name: string }): Logger {
  return pino({
    name: opts.name,
    level: opts.level,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    base: { service: opts.name },
    timestamp: pino.stdTimeFunctions.isoTime,
    mixin() {
      const out: Record<string, unknown> = {};
      const span = trace.getSpan(context.active());
      const sc = span?.spanContext();
      if (sc && sc.traceId !== '00000000000000000000000000000000') {
        out.trace_id = sc.traceId;
        out.span_id = sc.spanId;
      }
      const ctx = currentContext();
      if (ctx) {
        out.correlation_id = ctx.correlationId;
        if (ctx.principal) out.tenant_id = ctx.principal.tenantId;
        if (ctx.runId) out.run_id = ctx.runId;
      }
      return out;
    },
  });
}
export type { Logger };
