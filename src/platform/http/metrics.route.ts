import type { Request, Response } from 'express';
import type { MikroORM } from '@mikro-orm/postgresql';
import type { Queue } from 'bullmq';
import type { Metrics } from '../telemetry/metrics.ts';
import { systemEm } from '../db/tenant-em.ts';

const STATES = ['waiting', 'active', 'delayed', 'completed', 'failed', 'waiting-children', 'prioritized'] as const;

/** Prometheus text: queue depth by state and runs by status are read at scrape time. */
export function metricsHandler(c: { metrics: Metrics; queues: Map<string, Queue>; orm: MikroORM }) {
  return async (_req: Request, res: Response): Promise<void> => {
    try {
      for (const [name, q] of c.queues) {
        const counts = await q.getJobCounts(...STATES);
        for (const s of STATES) c.metrics.queueDepth.set({ queue: name, state: s }, counts[s] ?? 0);
      }
      const rows = await systemEm(c.orm).transactional((tx) =>
        tx.execute<{ status: string; n: string }[]>(`select status, count(*) as n from durable_runs group by status`),
      );
      c.metrics.runsByStatus.reset();
      for (const r of rows) c.metrics.runsByStatus.set({ status: r.status }, Number(r.n));
    } catch {
      // Serve what we have: a scrape must not fail because one backing service is down.
    }
    res.type(c.metrics.registry.contentType).send(await c.metrics.registry.metrics());
  };
}
