/**
 * npm run bench [-- --quick] [-- --json] [-- --only=phase,phase] [-- --keep-logs] [-- --budget]
 *
 * One run on this machine's PostgreSQL and Redis, in databases and a queue prefix of its own (all
 * removed at the end): ours end to end over HTTP, ours engine only, DBOS Transact, raw BullMQ,
 * overheads (RLS, idempotency, POST at a fixed rate), recovery after SIGKILL, the pgbench floor and
 * growth with load, workers, data and tenants. Prints one table (or JSON with --json) and writes
 * artifacts/bench.json (artifacts/bench-partial.json with --only). See docs/performance.md for the method.
 * BENCH_POST_TIMELINE=file appends every POST of the fixed-rate windows (send time, epoch ms; latency, ms;
 * status) to `file`, one window after another: where the tail's slow requests lie in time.
 * --budget (release gate 3, docs/governance/release-gates.md): exits 2 when a budgeted figure is
 * outside its budget or could not be measured, naming each on stderr.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { parseConfig, poolMaxFor } from '../../src/platform/config/config.ts';
import { workflowsFor } from '../../src/modules/index.ts';
import { servedRunQueues } from '../../src/platform/durable/worker-host.ts';
import { BenchDatabases, deletePrefix } from './lib/bench-db.ts';
import { oursEnv, productionEnv, productionNodeFlags } from './lib/ours.ts';
import { LOG_DIR, ROOT } from './lib/children.ts';
import { setStatsSettleMs } from './lib/measure.ts';
import { machineInfo } from './lib/machine.ts';
import { planFor } from './plan.ts';
import { buildReport, renderTable, type Results } from './report.ts';
import { newPrefix, PHASES, type PhaseContext } from './phases.ts';

const args = process.argv.slice(2);
const asJson = args.includes('--json');
const budget = args.includes('--budget');
const keepLogs = args.includes('--keep-logs');
const only = args.find((a) => a.startsWith('--only='))?.slice(7).split(',');
const plan = planFor(args.includes('--quick'));
setStatsSettleMs(plan.statsSettleMs);
const began = Date.now();
const dbs = new BenchDatabases();
const prefixes: string[] = [];
const progress = (msg: string) => process.stderr.write(`[bench ${((Date.now() - began) / 1000).toFixed(0).padStart(4)}s] ${msg}\n`);
// Our settings as the processes under test see them (production defaults unless BENCH_OURS_ENV overrides).
const placeholder = 'postgres://bench@127.0.0.1/bench';
const defaults = parseConfig(oursEnv({ db: { name: 'bench', appUrl: placeholder, ownerUrl: placeholder, adminUrl: placeholder }, prefix: 'bench' }));
const results: Results = {
  plan,
  errors: {},
  settings: {
    workerConcurrency: defaults.WORKER_CONCURRENCY,
    // A bench worker's pool as createContainer sizes it: the workflow queues it serves and its timers
    // counted (this read WORKER_CONCURRENCY + 2 while the workers pooled more). The queue factory is never called here.
    poolMax: poolMaxFor(defaults, 'worker', servedRunQueues(workflowsFor(defaults, { queue: () => { throw new Error('no queue in the bench driver'); } }), defaults.WORKER_QUEUES).length),
    lockDurationMs: defaults.WORKER_LOCK_DURATION,
    stalledIntervalMs: defaults.WORKER_STALLED_INTERVAL,
    groupCommitInFlight: defaults.DATABASE_GROUP_COMMIT_IN_FLIGHT,
    workerNodeFlags: productionNodeFlags('start:worker').join(' '),
    workerEnv: Object.entries(productionEnv('start:worker')).map(([k, v]) => `${k}=${v}`).join(' '),
  },
};

/** Runs one phase; a failure is recorded and the run goes on. Whatever the phase opened is closed. */
async function runPhase(name: string): Promise<void> {
  const opened: Array<{ close(): Promise<unknown> }> = [];
  const ctx: PhaseContext = {
    plan,
    dbs,
    results,
    concurrency: defaults.WORKER_CONCURRENCY,
    progress,
    newPrefix: () => {
      const p = newPrefix();
      prefixes.push(p);
      return p;
    },
    defer: (target) => {
      opened.push(target);
      return target;
    },
  };
  progress(`${name}…`);
  const mark = dbs.mark();
  const ownPrefixes = prefixes.length;
  try {
    await dbs.settle();
    await PHASES[name]!(ctx);
  } catch (e) {
    results.errors[name] = (e as Error).stack ?? String(e);
    progress(`${name} FAILED: ${(e as Error).message}`);
  } finally {
    await Promise.allSettled(opened.reverse().map((t) => t.close()));
    // Each phase starts from the template alone: no earlier phase's tables, queues or dirty pages.
    await dbs.dropSince(mark).catch(() => {});
    for (const p of prefixes.splice(ownPrefixes)) await deletePrefix(p).catch(() => 0);
  }
}

let cleaning = false;
async function cleanup(): Promise<void> {
  if (cleaning) return;
  cleaning = true;
  await dbs.dropAll();
  for (const p of prefixes) await deletePrefix(p).catch(() => 0);
  if (!keepLogs) rmSync(LOG_DIR, { recursive: true, force: true });
}
process.once('SIGINT', () => void cleanup().finally(() => process.exit(130)));

// The report this run will write: an earlier run's must not outlive a run that fails before writing it
// (CI uploads artifacts/ whatever the outcome; a stale bench.json would pass for this run's).
const reportPath = join(ROOT, 'artifacts', only ? 'bench-partial.json' : 'bench.json');
rmSync(reportPath, { force: true });

try {
  results.machine = await machineInfo();
  await dbs.init();
  for (const name of Object.keys(PHASES)) if (!only || only.includes(name)) await runPhase(name);
} finally {
  if (results.machine) results.machine.loadAverageAtEnd = os.loadavg().map((v) => Math.round(v * 100) / 100);
  results.seconds = Math.round((Date.now() - began) / 1000);
  await cleanup();
}

const report = buildReport(results);
mkdirSync(join(ROOT, 'artifacts'), { recursive: true });
// A run of some phases only (--only) writes bench-partial.json, never replacing a complete report.
writeFileSync(reportPath, `${JSON.stringify(report, null, 2)}\n`);
process.stdout.write(asJson ? `${JSON.stringify(report, null, 2)}\n` : `${renderTable(report)}\n`);
if (Object.keys(results.errors).length) process.exit(1);
if (budget) {
  const outside = report.targets.filter((t) => t.status !== 'PASS');
  for (const t of outside) {
    process.stderr.write(`budget: ${t.figure} = ${t.value ?? 'not measured'} (budget ${t.target}): ${t.status === 'MISS' ? 'outside the budget' : 'not measured in this run'}\n`);
  }
  process.stderr.write(`budget: ${report.targets.length - outside.length} of ${report.targets.length} figures within budget\n`);
  process.exit(outside.length ? 2 : 0);
}
process.exit(0);
