import type { Request, Response } from 'express';
import type { MikroORM } from '@mikro-orm/postgresql';
import type { Queue } from 'bullmq';
import type { Metrics } from '../telemetry/metrics.ts';
import { systemEm } from '../db/tenant-em.ts';
import { queueState } from './health.ts';
import { ACTIVE_RUN_STATUSES, RUN_STATUSES } from '../durable/durable-run.entity.ts';
import type { WorkflowRegistry } from '../durable/registry.ts';

const STATES = ['waiting', 'active', 'delayed', 'completed', 'failed', 'waiting-children', 'prioritized'] as const;

/**
 * How often a scrape reads the queue depths and run counts again: `/metrics` is public and its run
 * count reads every tenant's runs, so scrapes closer together (or many at once) share one reading.
 */
export const METRICS_REFRESH_MS = 5000;

/**
 * Prometheus text: queue depth by state and whether each queue is paused, runs by status and active runs by workflow version, read at
 * most every METRICS_REFRESH_MS and by one scrape at a time (the others wait for its reading). Every
 * run status is reported, 0 when no run has it, so a series never vanishes; so is every registered
 * workflow version, and an unregistered one while it has active runs (`registered="false"`: no
 * definition here can carry them on, ADR 0008).
 */
export function metricsHandler(c: { metrics: Metrics; queues: Map<string, Queue>; orm: MikroORM; runtime: { workflows: WorkflowRegistry } }) {
  let readAt = 0;
  let reading: Promise<void> | undefined;
  const read = async () => {
    for (const [name, q] of c.queues) {
      const counts = await q.getJobCounts(...STATES);
      for (const s of STATES) c.metrics.queueDepth.set({ queue: name, state: s }, counts[s] ?? 0);
      // One series per queue the process knows (as dealix_queue_jobs): a paused queue holds every run on it.
      const state = await queueState(q);
      c.metrics.queuePaused.set({ queue: name }, state.paused ? 1 : 0);
      // A global limit left in Redis (health.ts queuesCheck): its series only while one is set. 0 is a
      // limit BullMQ enforces (a concurrency of 0 starts none of the queue's jobs), not "none", so none
      // is no series, as Prometheus exporters report an unset limit; dealix_queue_paused is always there.
      const concurrency = state.limits?.concurrency;
      const rate = state.limits?.rate_limit;
      if (concurrency === undefined) c.metrics.queueGlobalConcurrency.remove({ queue: name });
      else c.metrics.queueGlobalConcurrency.set({ queue: name }, concurrency);
      if (rate === undefined) {
        c.metrics.queueGlobalRateMax.remove({ queue: name });
        c.metrics.queueGlobalRateDuration.remove({ queue: name });
      } else {
        c.metrics.queueGlobalRateMax.set({ queue: name }, rate.max);
        c.metrics.queueGlobalRateDuration.set({ queue: name }, rate.duration_ms / 1000);
      }
    }
    // One count for both gauges: by status, and the active ones by workflow version.
    const rows = await systemEm(c.orm).transactional((tx) =>
      tx.execute<{ status: string; workflow: string; workflow_version: number; n: string }[]>(
        `select status, workflow, workflow_version, count(*) as n from durable_runs group by status, workflow, workflow_version`,
      ),
    );
    // Every registered workflow has a series per status (0 when none); another workflow's while it has runs.
    const byStatus = new Map<string, number>();
    for (const wf of c.runtime.workflows.all()) for (const status of RUN_STATUSES) byStatus.set(`${wf.name}\u0000${status}`, 0);
    const active = new Map(c.runtime.workflows.all().map((wf) => [`${wf.name}\u0000${wf.version}`, 0]));
    for (const r of rows) {
      const byKey = `${r.workflow}\u0000${r.status}`;
      byStatus.set(byKey, (byStatus.get(byKey) ?? 0) + Number(r.n));
      const key = `${r.workflow}\u0000${r.workflow_version}`;
      if ((ACTIVE_RUN_STATUSES as readonly string[]).includes(r.status)) active.set(key, (active.get(key) ?? 0) + Number(r.n));
    }
    c.metrics.runsByStatus.reset();
    for (const [key, n] of byStatus) {
      const [workflow, status] = key.split('\u0000') as [string, string];
      c.metrics.runsByStatus.set({ workflow, status }, n);
    }
    // A version that is neither registered nor active any more drops out of the series.
    c.metrics.activeRuns.reset();
    for (const [key, n] of active) {
      const [workflow, version] = key.split('\u0000') as [string, string];
      const registered = c.runtime.workflows.get(workflow, Number(version)) !== undefined;
      c.metrics.activeRuns.set({ workflow, version, registered: String(registered) }, n);
    }
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
