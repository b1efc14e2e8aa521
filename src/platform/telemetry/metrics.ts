import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface Metrics {
  registry: Registry;
  stepDuration: Histogram<'step' | 'replayed'>;
  idempotencyReplays: Counter;
  idempotencyConflicts: Counter<'reason'>;
  queueDepth: Gauge<'queue' | 'state'>;
  runsByStatus: Gauge<'status'>;
}

/** Prometheus metrics of one process; /metrics serves them (collectors fill gauges at scrape time). */
export function createMetrics(): Metrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'dealix_' });
  return {
    registry,
    stepDuration: new Histogram({
      name: 'dealix_step_duration_seconds',
      help: 'Step execution time, by step and whether it replayed from a checkpoint',
      labelNames: ['step', 'replayed'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    idempotencyReplays: new Counter({ name: 'dealix_idempotency_replays_total', help: 'Responses replayed from a completed Idempotency-Key', registers: [registry] }),
    idempotencyConflicts: new Counter({
      name: 'dealix_idempotency_conflicts_total',
      help: 'Idempotency-Key conflicts: in_progress (409) and mismatch (422)',
      labelNames: ['reason'],
      registers: [registry],
    }),
    queueDepth: new Gauge({ name: 'dealix_queue_jobs', help: 'Jobs per queue and state', labelNames: ['queue', 'state'], registers: [registry] }),
    runsByStatus: new Gauge({ name: 'dealix_runs', help: 'Durable runs by status (all tenants)', labelNames: ['status'], registers: [registry] }),
  };
}
