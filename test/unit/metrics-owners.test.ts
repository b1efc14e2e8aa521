import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Registry } from 'prom-client';
import { createMetrics, everyProcessMetrics, METRIC_OWNERS, type Metrics } from '../../src/platform/telemetry/metrics.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));
type Field = keyof typeof METRIC_OWNERS;

/**
 * Every `metrics.<field>` in src, by the process type whose code path it is on. A new use must be added
 * here, under the process that runs it: the test then holds that process exposes it. This list is the
 * only hand-written part: which metrics exist, which have an owner and what each process registers
 * are read from the code (createMetrics, everyProcessMetrics, METRIC_OWNERS), so a metric added
 * without an owner fails below whether or not this list was touched.
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

const METRICS_FILE = 'src/platform/telemetry/metrics.ts';
const namesIn = (registry: Registry) => registry.getMetricsAsArray().map((x) => (x as unknown as { name: string }).name);
const exposed = (m: Metrics) => namesIn(m.registry);
const nameOf = (m: Metrics, field: string) => (m[field as keyof Metrics] as unknown as { name: string }).name;

/**
 * The metrics createMetrics makes, read from what it returns (not from METRIC_OWNERS: a field added to
 * Metrics without an owner entry is one of these, and the owner list is what is checked against them).
 */
const FIELDS = Object.keys(createMetrics('tool'))
  .filter((k) => k !== 'registry')
  .sort();
/** What every process type exposes, owned by none (prom-client's process metrics, group commit's counters), read from the code that registers them. */
const EVERY_PROCESS = (() => {
  const registry = new Registry();
  everyProcessMetrics(registry);
  return new Set(namesIn(registry));
})();
const owned = (m: Metrics) => exposed(m).filter((n) => !EVERY_PROCESS.has(n)).sort();
const ownerOf = (field: string): unknown => (METRIC_OWNERS as Record<string, unknown>)[field];

/** `file: field` for every `metrics.<field>` of the Metrics object in src (not its definition, not `registry`). */
function usesInSrc(): string[] {
  const fields = new Set(FIELDS);
  return [
    ...new Set(
      sources('src')
        .filter((f) => f !== METRICS_FILE)
        .flatMap((f) => [...readFileSync(join(root, f), 'utf8').matchAll(/\bmetrics\.(\w+)/g)].map((m) => m[1]!).filter((x) => fields.has(x)).map((x) => `${f}: ${x}`)),
    ),
  ].sort();
}

describe('every metric has an owner, read from the code', () => {
  it('every field createMetrics returns has an owner (api or worker), and every owner entry names one', () => {
    expect(Object.keys(METRIC_OWNERS).sort()).toEqual(FIELDS);
    expect(FIELDS.filter((f) => ownerOf(f) !== 'api' && ownerOf(f) !== 'worker')).toEqual([]);
  });

  it('every metric the registry holds is a field with an owner, or one every process exposes: none made beside them', () => {
    // The tool registers every metric: each one that is not every process's is some field's, and each field's is registered.
    const metrics = createMetrics('tool');
    expect(owned(metrics)).toEqual(FIELDS.map((f) => nameOf(metrics, f)).sort());
    for (const process of ['api', 'worker'] as const) expect(exposed(createMetrics(process)).filter((n) => EVERY_PROCESS.has(n)).sort()).toEqual([...EVERY_PROCESS].sort());
  });

  it('no metric is made outside metrics.ts (one made elsewhere has no owner entry, nor reaches /metrics)', () => {
    // prom-client in any other file as types only: a Counter made there is not a field of Metrics.
    const makers = sources('src')
      .filter((f) => f !== METRICS_FILE)
      .flatMap((f) =>
        readFileSync(join(root, f), 'utf8')
          .split('\n')
          .filter((line) => /['"]prom-client['"]/.test(line) && !/^\s*import\s+type\b/.test(line))
          .map((line) => `${f}: ${line.trim()}`),
      );
    expect(makers).toEqual([]);
  });
});

describe('each process type exposes the metrics its code can move, and no other', () => {
  it('every metrics.<field> in src is listed under the process whose code path it is on', () => {
    const listed = [...new Set(Object.values(TOUCHED).flatMap((byFile) => Object.entries(byFile).flatMap(([f, xs]) => xs.map((x) => `${f}: ${x}`))))].sort();
    expect(usesInSrc()).toEqual(listed);
  });

  for (const process of ['api', 'worker'] as const) {
    it(`${process}: exposes exactly the metrics it owns, which are what its code paths touch, plus every process's (prom-client defaults, group commit)`, () => {
      const metrics = createMetrics(process);
      const touched = [...new Set(Object.values(TOUCHED[process]).flat())].sort();
      expect(FIELDS.filter((f) => ownerOf(f) === process)).toEqual(touched);
      expect(owned(metrics)).toEqual(touched.map((f) => nameOf(metrics, f)).sort());
      // The API's last reading is never on a worker: its staleness alert fired on every worker target from the first scrape.
      expect(exposed(metrics).includes('dealix_metrics_last_read_timestamp_seconds')).toBe(process === 'api');
    });
  }
});
