import type { Request, Response } from 'express';
import type { MikroORM } from '@mikro-orm/postgresql';
import type { Queue } from 'bullmq';
import type { Metrics } from '../telemetry/metrics.ts';
import { systemEm } from '../db/tenant-em.ts';
import { RUN_STATUSES } from '../durable/durable-run.entity.ts';

const STATES = ['waiting', 'active', 'delayed', 'completed', 'failed', 'waiting-children', 'prioritized'] as const;

/**
 * How often a scrape reads the queue depths and run counts again: `/metrics` is public and its run
 * count reads every tenant's runs, so scrapes closer together (or many at once) share one reading.
 */
export const METRICS_REFRESH_MS = 5000;

/**
 * Prometheus text: queue depth by state and runs by status, read at most every METRICS_REFRESH_MS
 * and by one scrape at a time (the others wait for its reading). Every run status is reported, 0
 * when no run has it, so a series never vanishes.
 */
export function metricsHandler(c: { metrics: Metrics; queues: Map<string, Queue>; orm: MikroORM }) {
  let readAt = 0;
  let reading: Promise<void> | undefined;
  const read = async () => {
    for (const [name, q] of c.queues) {
      const counts = await q.getJobCounts(...STATES);
      for (const s of STATES) c.metrics.queueDepth.set({ queue: name, state: s }, counts[s] ?? 0);
    }
    const rows = await systemEm(c.orm).transactional((tx) =>
      tx.execute<{ status: string; n: string }[]>(`select status, count(*) as n from durable_runs group by status`),
    );
    const byStatus = new Map(rows.map((r) => [r.status, Number(r.n)]));
    for (const status of RUN_STATUSES) c.metrics.runsByStatus.set({ status }, byStatus.get(status) ?? 0);
    readAt = Date.now();
    c.metrics.lastRead.set(readAt / 1000);
  };
  return async (_req: Request, res: Response): Promise<void> => {
    if (Date.now() - readAt >= METRICS_REFRESH_MS) {
      reading ??= read().finally(() => (reading = undefined));
      // Serve what we have: a scrape must not fail because one backing service is down
      // (dealix_metrics_last_read_timestamp_seconds then says how old the reading is).
      await reading.catch(() => {});
    }
    res.type(c.metrics.registry.contentType).send(await c.metrics.registry.metrics());
  };
}
