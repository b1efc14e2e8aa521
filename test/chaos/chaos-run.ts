import { randomUUID } from 'node:crypto';
import { CLASS_A_SUBMISSION, SAMPLE_SUBMISSION } from '../helpers/stack.ts';
import { checkInvariants, countActive, type InvariantReport } from './checks.ts';
import { ChaosClient, newSubmission, type ClientStats, type Submission } from './client.ts';
import { pollDb, startEnvironment, workerBooted, type Crashes, type Environment } from './environment.ts';
import { chaosVerdict } from './verdict.ts';

/**
 * The chaos run: N submissions over HTTP while random worker processes are SIGKILLed and restarted
 * every S seconds, optionally with one FLUSHALL of (its own) Redis and one immediate restart of (its
 * own) PostgreSQL in the middle. Then it waits for every run to settle and checks the invariants.
 */

export interface ChaosOptions {
  runs: number;
  workers: number;
  killEverySec: number;
  flushRedis: boolean;
  restartPostgres: boolean;
  /** Submissions per second (0: as fast as `concurrency` allows). */
  rate: number;
  concurrency: number;
  /** Fraction of class B submissions (approved through the API by the chaos approver). */
  classB: number;
  tenants: number;
  drainTimeoutMs: number;
  keepDir?: boolean;
  env?: Record<string, string>;
  log?(line: string): void;
}

export const CHAOS_DEFAULTS: ChaosOptions = {
  runs: 100,
  workers: 3,
  killEverySec: 2,
  flushRedis: false,
  restartPostgres: false,
  rate: 0,
  concurrency: 8,
  classB: 0.2,
  tenants: 4,
  drainTimeoutMs: 300_000,
};

export interface ChaosReport {
  options: ChaosOptions;
  durationMs: number;
  kills: number;
  redisFlushes: number;
  postgresRestarts: number;
  crashes: Crashes;
  approvals: number;
  client: ClientStats;
  invariants: InvariantReport;
  queue: Record<string, number>;
  events: string[];
  classes: { A: number; B: number };
  logDir: string;
  ok: boolean;
  /** Why it failed (chaosVerdict), empty on a pass. */
  failures: string[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function runChaos(input: Partial<ChaosOptions>): Promise<ChaosReport> {
  const o: ChaosOptions = { ...CHAOS_DEFAULTS, ...input };
  const log = o.log ?? ((l: string) => console.log(l));
  const setupStart = Date.now();
  const env = await startEnvironment({ workers: o.workers, ownRedis: o.flushRedis, ownPostgres: o.restartPostgres, watchBoot: true, log, ...(o.env ? { env: o.env } : {}) });
  // The clock of the run (pacing, events, duration) starts once the deployment is up.
  const started = Date.now();
  log(`deployment up in ${((started - setupStart) / 1000).toFixed(1)}s`);
  const events: string[] = [];
  const event = (e: string) => {
    const line = `+${((Date.now() - started) / 1000).toFixed(1)}s ${e}`;
    events.push(line);
    log(line);
  };
  let report: ChaosReport | undefined;
  try {
    report = await drive(env, o, started, events, event);
    return report;
  } finally {
    await env.stop({ keepDir: o.keepDir === true || !report?.ok });
  }
}

async function drive(env: Environment, o: ChaosOptions, started: number, events: string[], event: (e: string) => void): Promise<ChaosReport> {
  const client = new ChaosClient(env.baseUrl, { deadlineMs: o.drainTimeoutMs });
  const tenants: string[] = Array.from({ length: o.tenants }, () => randomUUID());
  const submitters = await Promise.all(tenants.map((t) => env.token(t, 'chaos-submitter')));
  const approvers = await Promise.all(tenants.map((t) => env.token(t, 'chaos-approver', ['approver'])));
  const subs: Submission[] = Array.from({ length: o.runs }, (_, i) => newSubmission(tenants[i % o.tenants]!, Math.random() < o.classB ? 'B' : 'A'));
  let finished = false;
  let kills = 0;
  let approvals = 0;
  let redisFlushes = 0;
  let postgresRestarts = 0;

  // SIGKILL a random worker every S seconds while there is work, and start a new one at once. A random
  // one of those that have booted (logged `worker started`): on a loaded machine a start can take longer
  // than S, and killing workers still loading their code kept a whole run from progressing for minutes
  // (no step ran) — the faults this run is for are kills of workers at work.
  const killer = (async () => {
    while (!finished) {
      await sleep(o.killEverySec * 1000);
      if (finished) break;
      let up: number[] = [];
      while (!finished && up.length === 0) {
        up = env.workers.flatMap((w, i) => (workerBooted(w) ? [i] : []));
        if (up.length === 0) await sleep(100);
      }
      if (finished) break;
      const i = up[Math.floor(Math.random() * up.length)]!;
      await env.killWorker(i);
      kills++;
      event(`SIGKILL worker-${i} (kill ${kills}); restarted`);
    }
  })();

  // The human side: approve every pending class B request through the API, retrying by key too.
  const approved = new Set<string>();
  const approver = (async () => {
    while (!finished) {
      for (let t = 0; t < tenants.length; t++) approvals += await client.approvePending(approvers[t]!, approved).catch(() => 0);
      await sleep(300);
    }
  })();

  // Faults in the middle of the submissions, once each, on this run's own services only.
  const faults = async (index: number) => {
    if (o.flushRedis && redisFlushes === 0 && index >= Math.floor(o.runs / 2)) {
      redisFlushes++;
      await env.ownRedis!.flush();
      event('FLUSHALL on the run\'s own Redis: every queue, job, lock and timer gone');
    }
    if (o.restartPostgres && postgresRestarts === 0 && index >= Math.floor(o.runs * 0.7)) {
      postgresRestarts++;
      event('PostgreSQL: immediate shutdown of the run\'s own cluster');
      await env.ownPostgres!.restart(3000);
      event('PostgreSQL: started again after 3 s down');
    }
  };

  // Submissions: `concurrency` at a time, paced at `rate` per second if given.
  let next = 0;
  const submitLoop = async () => {
    for (;;) {
      const i = next++;
      if (i >= subs.length) return;
      if (o.rate > 0) {
        const due = started + (i / o.rate) * 1000;
        if (due > Date.now()) await sleep(due - Date.now());
      }
      const s = subs[i]!;
      const t = tenants.indexOf(s.tenant);
      await client.submit(s, submitters[t]!, s.cls === 'A' ? CLASS_A_SUBMISSION : SAMPLE_SUBMISSION, { concurrentDuplicate: i % 5 === 0 });
      if ((i + 1) % Math.max(1, Math.floor(o.runs / 10)) === 0) event(`${i + 1}/${o.runs} submitted`);
    }
  };
  const faultLoop = (async () => {
    while (!finished && (redisFlushes < (o.flushRedis ? 1 : 0) || postgresRestarts < (o.restartPostgres ? 1 : 0))) {
      await faults(next);
      await sleep(100);
    }
  })();
  await Promise.all(Array.from({ length: o.concurrency }, submitLoop));
  event(`all ${o.runs} submissions answered; waiting for the runs to settle`);

  // Drain: every run terminal (class B approved on the way), kills continuing meanwhile.
  const deadline = Date.now() + o.drainTimeoutMs;
  for (;;) {
    const active = await pollDb(env, countActive);
    if (active === 0) break;
    if (Date.now() > deadline) {
      event(`drain timeout: ${active} runs still active`);
      break;
    }
    await sleep(1000);
  }
  finished = true;
  await Promise.all([killer, approver, faultLoop]);
  event('settled; checking invariants');

  const queue = await waitForQueueDrain(env);
  const invariants = await checkInvariants(env.db.adminDbUrl, subs);
  const stepJobsLeft = (queue.waiting ?? 0) + (queue.active ?? 0) + (queue['waiting-children'] ?? 0) + (queue.prioritized ?? 0);
  const { ok, failures } = chaosVerdict({ invariantsOk: invariants.ok, unexpectedAnswers: client.stats.unexpected.length, crashes: env.crashes, stepJobsLeft, postgresRestarts });
  return {
    options: o,
    durationMs: Date.now() - started,
    kills,
    redisFlushes,
    postgresRestarts,
    crashes: { ...env.crashes },
    approvals,
    client: client.stats,
    invariants,
    queue,
    events,
    classes: { A: subs.filter((s) => s.cls === 'A').length, B: subs.filter((s) => s.cls === 'B').length },
    logDir: env.dir,
    ok,
    failures,
  };
}

/** The step queue holds nothing runnable any more (delayed SLA timers of approved runs may remain). */
async function waitForQueueDrain(env: Environment): Promise<Record<string, number>> {
  const states = ['waiting', 'active', 'delayed', 'waiting-children', 'prioritized', 'failed', 'completed'] as const;
  const deadline = Date.now() + 30_000;
  for (;;) {
    const counts = await env.queue.getJobCounts(...states).catch(() => undefined);
    if (counts && counts.waiting === 0 && counts.active === 0 && counts['waiting-children'] === 0 && counts.prioritized === 0) return counts;
    if (Date.now() > deadline) return counts ?? {};
    await sleep(500);
  }
}

export function formatChaosReport(r: ChaosReport): string {
  const i = r.invariants;
  const o = r.options;
  const refusals = Object.entries(r.client.refusals).map(([k, v]) => `${k}×${v}`).join(', ') || 'none';
  const lines = [
    `chaos: ${o.runs} runs (${r.classes.A} class A, ${r.classes.B} class B, ${o.tenants} tenants), ${o.workers} workers, kill every ${o.killEverySec}s` +
      `${o.flushRedis ? ', Redis flush' : ''}${o.restartPostgres ? ', PostgreSQL restart' : ''} — ${(r.durationMs / 1000).toFixed(1)}s`,
    `  faults:       kills ${r.kills}, redis flushes ${r.redisFlushes}, postgres restarts ${r.postgresRestarts}`,
    `  exits:        unexpected (none killed by the harness): api ${r.crashes.api}, booted workers ${r.crashes.workers}; workers that failed to boot ${r.crashes.failedBoots}` +
      `${r.crashes.failedBoots && r.postgresRestarts ? ' (tolerated: PostgreSQL was restarted)' : ''}`,
    `  submissions:  ${i.accepted}/${i.submitted} accepted; ${r.client.posts} POSTs, ${r.client.replays} idempotent replays; refusals on the way: ${refusals}`,
    `  idempotency:  ${i.idempotency.retries} retries of a submitted key, ${i.idempotency.mismatched} answered with another run; unexpected runs in the database: ${i.unexpectedRuns}`,
    `  approvals:    ${r.approvals} class B requests approved over the API`,
    `  terminal:     ${i.accepted - i.invalidTerminal.length}/${i.accepted} completed as expected; by status ${JSON.stringify(i.byStatus)}; stuck ${i.stuck}`,
    `  checkpoints:  ${i.checkpoints.completed} completed, ${i.checkpoints.missing} missing, ${i.checkpoints.duplicated} duplicated (exactly one per run and sequence_num)`,
    `  domain rows:  ${Object.entries(i.domainRows).map(([t, d]) => `${t} ${d.rows} (${d.missing} missing, ${d.duplicated} dup)`).join('; ')}`,
    `  decisions:    ${i.decisions.missing} missing, ${i.decisions.duplicated} duplicated`,
    `  queue:        ${JSON.stringify(r.queue)}`,
    ...(r.client.unexpected.length ? [`  unexpected answers (${r.client.unexpected.length}):`, ...r.client.unexpected.slice(0, 10).map((u) => `    ${u}`)] : []),
    ...(i.invalidTerminal.length ? [`  invalid terminal states (${i.invalidTerminal.length}):`, ...i.invalidTerminal.slice(0, 10).map((u) => `    ${u}`)] : []),
    `lost: ${i.lost}, duplicated: ${i.duplicated}`,
    r.ok ? 'RESULT: PASS' : `RESULT: FAIL — ${r.failures.join('; ')} (logs kept in ${r.logDir})`,
  ];
  return lines.join('\n');
}
