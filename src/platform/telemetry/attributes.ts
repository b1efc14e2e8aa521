/** Span and log attribute names, in one place. */
export const ATTR = {
  TENANT: 'dealix.tenant_id',
  RUN: 'dealix.run_id',
  STEP: 'dealix.step',
  SEQUENCE: 'dealix.sequence_num',
  ATTEMPT: 'dealix.attempt',
  REPLAYED: 'dealix.replayed',
  CORRELATION: 'dealix.correlation_id',
  WORKFLOW: 'dealix.workflow',
} as const;

const VALID_CORRELATION_ID = /^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$/;

/** A business correlation id the platform accepts (from X-Correlation-Id, or baggage): 1–128 safe characters. */
export function isValidCorrelationId(v: unknown): v is string {
  return typeof v === 'string' && VALID_CORRELATION_ID.test(v);
}

/** Version reported by the platform's own tracers (BullMQ telemetry, durable steps). */
export const INSTRUMENTATION_VERSION = '0.1.0';

/** Paths whose requests are not traced: probes, scrapes, and the operator dashboard's polling. */
export const IGNORED_HTTP_PATHS = ['/healthz', '/readyz', '/metrics', '/admin/queues', '/docs', '/openapi.json'];

/**
 * A request URL's path as Express routes it: without the query, lower case (routing ignores case),
 * without a trailing slash. What decides whether a path is traced, logged or shed must read it so, or
 * `/ADMIN/QUEUES?token=…` reaches the dashboard while escaping what guards `/admin/queues`.
 */
export function routedPath(url: string | undefined): string {
  const path = (url ?? '').split('?')[0]!.toLowerCase();
  return path.length > 1 ? path.replace(/\/+$/, '') : path;
}

/** True for `prefix` itself and every path under it, as Express routes them. */
export const isUnder = (url: string | undefined, prefix: string): boolean => {
  const path = routedPath(url);
  return path === prefix || path.startsWith(`${prefix}/`);
};
