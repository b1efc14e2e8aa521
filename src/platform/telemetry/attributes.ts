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

/** Version reported by the platform's own tracers (BullMQ telemetry, durable steps). */
export const INSTRUMENTATION_VERSION = '0.1.0';

/** Paths whose requests are not traced: probes, scrapes, and the operator dashboard's polling. */
export const IGNORED_HTTP_PATHS = ['/healthz', '/readyz', '/metrics', '/admin/queues', '/docs', '/openapi.json'];
