import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createMetrics, METRIC_OWNERS, type Metrics } from '../../src/platform/telemetry/metrics.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));
type Field = keyof typeof METRIC_OWNERS;

/**
 * Every `metrics.<field>` in src, by the process type whose code path it is on. A new use must be added
 * here, under the process that runs it: the test then holds that process exposes it.
 */
const TOUCHED: Record<'api' | 'worker', Record<string, Field[]>> = {
  api: {
    'src/app.ts': ['requestsRefused', 'idempotencyReplays', 'idempotencyConflicts'],
    'src/platform/http/metrics.route.ts': ['queueDepth', 'queuePaused', 'queueGlobalConcurrency', 'queueGlobalRateMax', 'queueGlobalRateDuration', 'runsByStatus', 'activeRuns', 'lastRead'],
    // The API's routes (routesFor, webhookResendRoutes, webhookTestEventRoutes).
    'src/container.ts': ['runsRetried', 'webhookDeliveriesResent', 'webhookTestEvents'],
  },
  worker: {
    // jobHandlers (only worker-runtime.ts runs them).
    'src/container.ts': ['slaTimersSpent', 'deferredJobs'],
    'src/worker-runtime.ts': [
      'stepDuration', 'stepFailures', 'deferredJobs', 'onFailedErrors', 'runsDeleted', 'webhookDeliveriesDeleted', 'webhookDeliveries',
      'webhookEndpointsAutoDisabled', 'webhookDeliveriesRateLimited', 'webhookTestEventsAhead', 'parkedJobs', 'lostPromotionsRecovered', 'webhookDeliveriesParked',
    ],
  },
};

function sources(dir: string): string[] {
  return readdirSync(join(root, dir), { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));
}

/** `file: field` for every `metrics.<field>` of the Metrics object in src (not its definition, not `registry`). */
function usesInSrc(): string[] {
  const fields = new Set(Object.keys(METRIC_OWNERS));
  return [
    ...new Set(
      sources('src')
        .filter((f) => f !== 'src/platform/telemetry/metrics.ts')
        .flatMap((f) => [...readFileSync(join(root, f), 'utf8').matchAll(/\bmetrics\.(\w+)/g)].map((m) => m[1]!).filter((x) => fields.has(x)).map((x) => `${f}: ${x}`)),
    ),
  ].sort();
}

const exposed = (m: Metrics) => m.registry.getMetricsAsArray().map((x) => (x as unknown as { name: string }).name);
const nameOf = (m: Metrics, field: Field) => (m[field] as unknown as { name: string }).name;

describe('each process type exposes the metrics its code can move, and no other', () => {
  it('every metrics.<field> in src is listed under the process whose code path it is on', () => {
    const listed = [...new Set(Object.values(TOUCHED).flatMap((byFile) => Object.entries(byFile).flatMap(([f, xs]) => xs.map((x) => `${f}: ${x}`))))].sort();
    expect(usesInSrc()).toEqual(listed);
  });

  for (const process of ['api', 'worker'] as const) {
    it(`${process}: exposes exactly what its code paths touch, plus every process's (prom-client defaults, group commit)`, () => {
      const metrics = createMetrics(process);
      const touched = new Set(Object.values(TOUCHED[process]).flat());
      const own = (Object.keys(METRIC_OWNERS) as Field[]).map((f) => nameOf(metrics, f));
      const names = exposed(metrics);
      expect(names.filter((n) => own.includes(n)).sort()).toEqual([...touched].map((f) => nameOf(metrics, f)).sort());
      expect(names.filter((n) => !own.includes(n)).every((n) => /^dealix_(process_|nodejs_|db_group_commit_)/.test(n))).toBe(true);
      // The API's last reading is never on a worker: its staleness alert fired on every worker target from the first scrape.
      expect(names.includes('dealix_metrics_last_read_timestamp_seconds')).toBe(process === 'api');
    });
  }

  it('a tool running both (readiness, bench) exposes every metric', () => {
    const metrics = createMetrics('tool');
    const names = exposed(metrics);
    expect((Object.keys(METRIC_OWNERS) as Field[]).filter((f) => !names.includes(nameOf(metrics, f)))).toEqual([]);
  });
});
