import { pino, type DestinationStream, type Logger } from 'pino';
import { trace, context } from '@opentelemetry/api';
import { currentContext } from '../tenancy/request-context.ts';
import { redactUrl } from './attributes.ts';

export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["proxy-authorization"]',
  // A client's replay handle: whoever holds it may replay the stored response of the request it keyed
  // (within the tenant). Spans never carry it either (docs/operations.md); the correlation id names a request.
  'req.headers["idempotency-key"]',
  'res.headers["set-cookie"]',
  // ioredis puts a failed command's arguments on its error (`err.command.args`), and pino's error
  // serializer copies them: the dashboard's sign-in script carries the operator's JWT (a Redis OOM or
  // READONLY logged it whole), and other commands carry job data and stored responses. The name stays.
  'err.command.args',
  'req.query.token',
  'req.query.access_token',
  'req.query.password',
  'headers.authorization',
  'headers.cookie',
  'authorization',
  'cookie',
  'token',
  '*.token',
  'access_token',
  '*.access_token',
  'password',
  '*.password',
];

export { redactUrl };

const NO_TRACE = '00000000000000000000000000000000';
const chindings = pino.symbols.chindingsSym as unknown as string;

/**
 * JSON logs; every line written inside a request or job carries trace_id, span_id, correlation_id,
 * tenant_id and run_id where known (mixin reads the active span and the AsyncLocalStorage context).
 * Fields a child logger already binds are not repeated, so a line never has a key twice.
 */
export function createLogger(opts: { level: string; name: string; destination?: DestinationStream }): Logger {
  const options = {
    name: opts.name,
    level: opts.level,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    base: { service: opts.name },
    timestamp: pino.stdTimeFunctions.isoTime,
    mixin(_obj: object, _level: number, logger: Logger) {
      const out: Record<string, unknown> = {};
      const bound = ((logger as unknown as Record<string, string | undefined>)[chindings] ?? '') as string;
      const put = (k: string, v: unknown) => {
        if (v !== undefined && v !== null && !bound.includes(`"${k}":`)) out[k] = v;
      };
      const sc = trace.getSpan(context.active())?.spanContext();
      if (sc && sc.traceId !== NO_TRACE) {
        put('trace_id', sc.traceId);
        put('span_id', sc.spanId);
      }
      const ctx = currentContext();
      if (ctx) {
        put('correlation_id', ctx.correlationId);
        put('tenant_id', ctx.principal?.tenantId);
        put('run_id', ctx.runId);
      }
      return out;
    },
  };
  // Buffered stdout: lines go out in writes of ~4 KB, and at least every 100 ms, instead of one system
  // call per line (a tenth of a busy worker's CPU on this kind of machine; docs/performance-history.md). pino
  // flushes what is pending at exit; a SIGKILL loses at most the last 100 ms of lines.
  return pino(options, opts.destination ?? pino.destination({ dest: 1, sync: false, minLength: 4096, periodicFlush: 100 }));
}
export type { Logger };
