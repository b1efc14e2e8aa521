import { randomUUID } from 'node:crypto';
import { CLASS_A_SUBMISSION, SAMPLE_SUBMISSION } from '../helpers/stack.ts';
import { checkInvariants, countActive, type InvariantReport } from './checks.ts';
import { ChaosClient, newSubmission, type ClientStats, type Submission } from './client.ts';
import { pollDb, startEnvironment, type Crashes, type Environment } from './environment.ts';
import { heapUsedMb } from './processes.ts';

/**
 * Sustained load: submissions at a fixed rate for several minutes, no faults. Samples the RSS of the
 * API and worker processes, the PostgreSQL connections of the application role and the backlog;
 * then lets the queue drain and checks that no run is left stuck and nothing was lost or doubled.
 */

export interface SustainedOptions {
  durationMs: number;
  /** Submissions per second. */
  rate: number;
  workers: number;
  sampleEveryMs: number;
  classB: number;
  /** Every n-th submission also retries its key on purpose (0: never). */
  retryEvery: number;
  tenants: number;
  drainTimeoutMs: number;
  /** A worker or API whose RSS grows faster than this in the second half of the load fails the run. */
  maxRssSlopeMbPerMin: number;
  /** Accepted submissions per second below this fraction of `rate` fail the run (the rate was not sustained). */
  minGoodput: number;
  keepDir?: boolean;
  env?: Record<string, string>;
  log?(line: string): void;
}

export const SUSTAINED_DEFAULTS: SustainedOptions = {
  durationMs: 180_000,
  rate: 50,
  workers: 2,
  sampleEveryMs: 5_000,
  classB: 0.05,
  retryEvery: 10,
  tenants: 4,
  drainTimeoutMs: 600_000,
  maxRssSlopeMbPerMin: 8,
  minGoodput: 0.9,
};

export interface Sample {
  t: number;
  apiRssMb: number | null;
  workerRssMb: Array<number | null>;
  /** V8 heap in use: separates a leak from a heap that has merely grown and not been returned. */
  apiHeapMb: number | null;
  workerHeapMb: Array<number | null>;
  pgConnections: number | null;
  activeRuns: number | null;
  submitted: number;
}

export interface Slope {
  whole: number;
  secondHalf: number;
  startMb: number | null;
  peakMb: number | null;
  endMb: number | null;
}

export interface SustainedReport {
  options: SustainedOptions;
  submitted: number;
  achievedRate: number;
  loadSeconds: number;
  drainSeconds: number;
  samples: Sample[];
  rss: { api: Slope; workers: Slope[] };
  heap: { api: Slope; workers: Slope[] };
  pgConnections: { max: number; budget: number };
  client: ClientStats;
  crashes: Crashes;
  invariants: InvariantReport;
  queue: Record<string, number>;
  ok: boolean;
  failures: string[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mb = (kb: number | undefined) => (kb === undefined ? null : Math.round((kb / 1024) * 10) / 10);

/** Least-squares slope in MB per minute of (t seconds, MB) points. */
export function slopeMbPerMin(points: Array<[number, number]>): number {
  if (points.length < 2) return 0;
  const n = points.length;
  const mx = points.reduce((a, [x]) => a + x, 0) / n;
  const my = points.reduce((a, [, y]) => a + y, 0) / n;
  const sxx = points.reduce((a, [x]) => a + (x - mx) ** 2, 0);
  const sxy = points.reduce((a, [x, y]) => a + (x - mx) * (y - my), 0);
  return sxx === 0 ? 0 : Math.round((sxy / sxx) * 60 * 100) / 100;
}

function slopeOf(samples: Sample[], pick: (s: Sample) => number | null, loadSeconds: number): Slope {
  const pts = samples.filter((s) => s.t <= loadSeconds).map((s) => [s.t, pick(s)] as const).filter((p): p is [number, number] => p[1] !== null);
  const values = samples.map(pick).filter((v): v is number => v !== null);
  return {
    whole: slopeMbPerMin(pts),
    secondHalf: slopeMbPerMin(pts.filter(([t]) => t >= loadSeconds / 2)),
    startMb: values[0] ?? null,
    peakMb: values.length ? Math.max(...values) : null,
    endMb: values[values.length - 1] ?? null,
  };
}

async function appConnections(env: Environment): Promise<number | null> {
  const n = await pollDb(env, async (db) => (await db.query<{ n: number }>(`select count(*)::int as n from pg_stat_activity where datname = $1 and usename = 'dealix_app'`, [env.db.name])).rows[0]!.n);
  return n ?? null;
}

export async function runSustained(input: Partial<SustainedOptions>): Promise<SustainedReport> {
  const o: SustainedOptions = { ...SUSTAINED_DEFAULTS, ...input };
  const log = o.log ?? ((l: string) => console.log(l));
  const env = await startEnvironment({ workers: o.workers, ownRedis: false, ownPostgres: false, logLevel: 'warn', log, ...(o.env ? { env: o.env } : {}) });
  let report: SustainedReport | undefined;
  try {
    report = await load(env, o, log);
    return report;
  } finally {
    await env.stop({ keepDir: o.keepDir === true || !report?.ok });
  }
}

async function load(env: Environment, o: SustainedOptions, log: (l: string) => void): Promise<SustainedReport> {
  const client = new ChaosClient(env.baseUrl, { deadlineMs: o.drainTimeoutMs });
  const tenants: string[] = Array.from({ length: o.tenants }, () => randomUUID());
  const submitters = await Promise.all(tenants.map((t) => env.token(t, 'load-submitter')));
  const approvers = await Promise.all(tenants.map((t) => env.token(t, 'load-approver', ['approver'])));
  const total = Math.round((o.durationMs / 1000) * o.rate);
  const subs: Submission[] = [];
  const samples: Sample[] = [];
  const t0 = Date.now();
  let draining = true;

  const sample = async () => {
    const s: Sample = {
      t: Math.round((Date.now() - t0) / 100) / 10,
      apiRssMb: mb(env.api().rssKb()),
      workerRssMb: env.workers.map((w) => mb(w.rssKb())),
      apiHeapMb: (await heapUsedMb(env.api().metricsUrl)) ?? null,
      workerHeapMb: await Promise.all(env.workers.map(async (w) => (await heapUsedMb(w.metricsUrl)) ?? null)),
      pgConnections: await appConnections(env),
      activeRuns: (await pollDb(env, countActive)) ?? null,
      submitted: subs.length,
    };
    samples.push(s);
    log(
      `t=${s.t}s submitted ${s.submitted} active ${s.activeRuns} pg ${s.pgConnections} rss api ${s.apiRssMb} MB workers ${s.workerRssMb.join('/')} MB` +
        ` heap api ${s.apiHeapMb} MB workers ${s.workerHeapMb.join('/')} MB`,
    );
  };
  const sampler = (async () => {
    while (draining) {
      await sample();
      await sleep(o.sampleEveryMs);
    }
  })();
  const approved = new Set<string>();
  const approver = (async () => {
    while (draining) {
      for (let t = 0; t < tenants.length; t++) await client.approvePending(approvers[t]!, approved).catch(() => 0);
      await sleep(500);
    }
  })();

  // Open-loop arrivals at the fixed rate: a slow answer does not slow the arrivals down.
  const inFlight = new Set<Promise<void>>();
  for (let i = 0; i < total; i++) {
    const due = t0 + (i / o.rate) * 1000;
    if (due > Date.now()) await sleep(due - Date.now());
    const sub = newSubmission(tenants[i % o.tenants]!, Math.random() < o.classB ? 'B' : 'A');
    subs.push(sub);
    const p = client
      .submit(sub, submitters[i % o.tenants]!, sub.cls === 'A' ? CLASS_A_SUBMISSION : SAMPLE_SUBMISSION, { concurrentDuplicate: false, retry: o.retryEvery > 0 && i % o.retryEvery === 0 })
      .finally(() => inFlight.delete(p));
    inFlight.add(p);
  }
  await Promise.all(inFlight);
  const loadSeconds = (Date.now() - t0) / 1000;
  log(`load phase over: ${total} submissions in ${loadSeconds.toFixed(1)}s; draining`);

  const drainStart = Date.now();
  while (Date.now() - drainStart < o.drainTimeoutMs) {
    if ((await pollDb(env, countActive)) === 0) break;
    await sleep(1000);
  }
  const drainSeconds = (Date.now() - drainStart) / 1000;
  await sample();
  draining = false;
  await Promise.all([sampler, approver]);

  const queue = (await env.queue.getJobCounts('waiting', 'active', 'delayed', 'waiting-children', 'prioritized', 'failed', 'completed').catch(() => ({}))) as Record<string, number>;
  const invariants = await checkInvariants(env.db.adminDbUrl, subs);
  const rss = {
    api: slopeOf(samples, (s) => s.apiRssMb, loadSeconds),
    workers: env.workers.map((_, i) => slopeOf(samples, (s) => s.workerRssMb[i] ?? null, loadSeconds)),
  };
  const heap = {
    api: slopeOf(samples, (s) => s.apiHeapMb, loadSeconds),
    workers: env.workers.map((_, i) => slopeOf(samples, (s) => s.workerHeapMb[i] ?? null, loadSeconds)),
  };
  const maxConn = Math.max(0, ...samples.map((s) => s.pgConnections ?? 0));
  const failures: string[] = [];
  // Goodput: the load phase lasts until every submission is accepted, so this is what got through.
  const achievedRate = Math.round((total / loadSeconds) * 10) / 10;
  if (achievedRate < o.minGoodput * o.rate) failures.push(`achieved ${achievedRate}/s of ${o.rate}/s: the deployment did not sustain the rate (refusals ${JSON.stringify(client.stats.refusals)})`);
  if (!invariants.ok) failures.push(`invariants: lost ${invariants.lost}, duplicated ${invariants.duplicated}, stuck ${invariants.stuck}`);
  if (client.stats.unexpected.length) failures.push(`${client.stats.unexpected.length} unexpected answers`);
  // No faults here: a worker failing to boot is as unexpected as one dying at work.
  if (env.crashes.api || env.crashes.workers || env.crashes.failedBoots) failures.push(`unexpected exits: api ${env.crashes.api}, booted workers ${env.crashes.workers}, failed worker boots ${env.crashes.failedBoots}`);
  if (maxConn > env.poolBudget) failures.push(`PostgreSQL connections ${maxConn} over the pool budget ${env.poolBudget}`);
  if ((queue.waiting ?? 0) + (queue.active ?? 0) + (queue['waiting-children'] ?? 0) > 0) failures.push('the step queue did not drain');
  for (const [name, s] of [['api', rss.api], ...rss.workers.map((w, i) => [`worker-${i}`, w] as const)] as const) {
    if (s.secondHalf > o.maxRssSlopeMbPerMin) failures.push(`${name} RSS grows ${s.secondHalf} MB/min in the second half of the load`);
  }
  return {
    options: o,
    submitted: total,
    achievedRate,
    loadSeconds: Math.round(loadSeconds * 10) / 10,
    drainSeconds: Math.round(drainSeconds * 10) / 10,
    samples,
    rss,
    heap,
    pgConnections: { max: maxConn, budget: env.poolBudget },
    client: client.stats,
    crashes: { ...env.crashes },
    invariants,
    queue,
    ok: failures.length === 0,
    failures,
  };
}

export function formatSustainedReport(r: SustainedReport): string {
  const fmt = (s: Slope) => `${s.whole} MB/min overall, ${s.secondHalf} MB/min in the second half (start ${s.startMb}, peak ${s.peakMb}, end ${s.endMb} MB)`;
  const i = r.invariants;
  return [
    `sustained load: ${r.submitted} submissions at ${r.options.rate}/s for ${r.options.durationMs / 1000}s (achieved ${r.achievedRate}/s), ${r.options.workers} workers`,
    `  drain:        all runs settled ${r.drainSeconds}s after the last submission; stuck ${i.stuck}; queue ${JSON.stringify(r.queue)}`,
    `  api RSS:      ${fmt(r.rss.api)}`,
    ...r.rss.workers.map((w, n) => `  worker-${n} RSS: ${fmt(w)}`),
    `  api heap:     ${fmt(r.heap.api)}`,
    ...r.heap.workers.map((w, n) => `  worker-${n} heap: ${fmt(w)}`),
    `  postgres:     at most ${r.pgConnections.max} connections of the application role (pool budget ${r.pgConnections.budget})`,
    `  answers:      ${r.client.posts} POSTs, refusals ${JSON.stringify(r.client.refusals)}, unexpected ${r.client.unexpected.length}; exits api ${r.crashes.api}, booted workers ${r.crashes.workers}, failed worker boots ${r.crashes.failedBoots}`,
    `  terminal:     ${JSON.stringify(i.byStatus)}; checkpoints missing ${i.checkpoints.missing}, duplicated ${i.checkpoints.duplicated}`,
    `lost: ${i.lost}, duplicated: ${i.duplicated}`,
    r.ok ? 'RESULT: PASS' : `RESULT: FAIL — ${r.failures.join('; ')}`,
  ].join('\n');
}
