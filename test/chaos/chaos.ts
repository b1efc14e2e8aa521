import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { parseDurationMs } from '../../src/platform/config/duration.ts';
import { CHAOS_DEFAULTS, formatChaosReport, runChaos } from './chaos-run.ts';
import { formatSustainedReport, runSustained, SUSTAINED_DEFAULTS } from './sustained.ts';
import { liveEnvironments } from './environment.ts';

/**
 * npm run chaos -- --runs 1000 --workers 4 --kill-every 3 [--flush-redis] [--restart-postgres]
 * npm run chaos -- --sustained 180s --rate 50 [--workers 2]
 *
 * Prints the report and exits non-zero when an invariant is broken (lost or duplicated work, a run
 * left stuck, an unexpected 5xx or crash — the API's, or a booted worker's: verdict.ts). --json <file>
 * also writes the report as JSON.
 */

const { values } = parseArgs({
  options: {
    runs: { type: 'string' },
    workers: { type: 'string' },
    'kill-every': { type: 'string' },
    'flush-redis': { type: 'boolean', default: false },
    'restart-postgres': { type: 'boolean', default: false },
    rate: { type: 'string' },
    concurrency: { type: 'string' },
    'class-b': { type: 'string' },
    tenants: { type: 'string' },
    'drain-timeout': { type: 'string' },
    sustained: { type: 'string' },
    'sample-every': { type: 'string' },
    json: { type: 'string' },
    'keep-logs': { type: 'boolean', default: false },
    env: { type: 'string', multiple: true },
    help: { type: 'boolean', default: false },
  },
});

const num = (v: string | undefined, fallback: number) => (v === undefined ? fallback : Number(v));
const extraEnv = Object.fromEntries((values.env ?? []).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));

// Interrupted: stop our processes, drop our database and keys, stop our own services.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.log(`${signal}: cleaning up`);
    void Promise.allSettled([...liveEnvironments].map((e) => e.stop({ keepDir: true }))).then(() => process.exit(130));
  });
}

if (values.help) {
  console.log(
    'usage: npm run chaos -- [--runs N] [--workers W] [--kill-every S] [--flush-redis] [--restart-postgres] [--rate R] [--concurrency C] [--class-b F] [--tenants T] [--env K=V]... [--json FILE]\n' +
      '       npm run chaos -- --sustained 180s --rate 50 [--workers W] [--sample-every 5s] [--env K=V]... [--json FILE]',
  );
  process.exit(0);
}

let ok: boolean;
let json: unknown;
if (values.sustained) {
  const report = await runSustained({
    durationMs: parseDurationMs(values.sustained),
    rate: num(values.rate, SUSTAINED_DEFAULTS.rate),
    workers: num(values.workers, SUSTAINED_DEFAULTS.workers),
    sampleEveryMs: values['sample-every'] ? parseDurationMs(values['sample-every']) : SUSTAINED_DEFAULTS.sampleEveryMs,
    keepDir: values['keep-logs'],
    env: extraEnv,
  });
  console.log(formatSustainedReport(report));
  ok = report.ok;
  json = report;
} else {
  const report = await runChaos({
    runs: num(values.runs, CHAOS_DEFAULTS.runs),
    workers: num(values.workers, CHAOS_DEFAULTS.workers),
    killEverySec: num(values['kill-every'], CHAOS_DEFAULTS.killEverySec),
    flushRedis: values['flush-redis'],
    restartPostgres: values['restart-postgres'],
    rate: num(values.rate, CHAOS_DEFAULTS.rate),
    concurrency: num(values.concurrency, CHAOS_DEFAULTS.concurrency),
    classB: num(values['class-b'], CHAOS_DEFAULTS.classB),
    tenants: num(values.tenants, CHAOS_DEFAULTS.tenants),
    drainTimeoutMs: values['drain-timeout'] ? parseDurationMs(values['drain-timeout']) : CHAOS_DEFAULTS.drainTimeoutMs,
    keepDir: values['keep-logs'],
    env: extraEnv,
  });
  console.log(formatChaosReport(report));
  ok = report.ok;
  json = report;
}
if (values.json) writeFileSync(values.json, JSON.stringify(json, null, 2));
process.exit(ok ? 0 : 1);
