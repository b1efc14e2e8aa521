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
