/**
 * The recovery sweeper behind a deep backlog. BullMQ's `getJobState` finds a job by LPOS over the
 * active, wait and paused lists: a job id it does not hold (a finished job removeOnComplete took)
 * scans the whole wait list, on Redis's one thread. A sweep that asked it, for every `running` run
 * (a decided approval's run job queued behind the backlog, a job handed back at a SIGTERM, a parked
 * one), about each of the run's jobs from step 1 cost seconds of Redis every SWEEPER_INTERVAL with
 * 50,000 jobs waiting: the workers' lock renewals (WORKER_LOCK_DURATION 2 s) missed and healthy jobs
 * stalled. A sweep must cost Redis about the same whatever the backlog, and decide a running run with
 * a live job from its one listing of the queue's live jobs.
 *
 * No worker runs here: the backlog stays where it is, and the sweeps are called directly. Redis's
 * work is read as the commands the sweep sends on the stack's connection (the sweeper's and its
 * queues'), never from INFO or MONITOR: other test files share this Redis.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomUUID } from 'node:crypto';
import { pino } from 'pino';
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { startStack, newTenant, CLASS_A_SUBMISSION, type TestStack } from '../helpers/stack.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { GOLDEN_PATH, GOLDEN_PATH_QUEUE } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { waitFor, within } from '../helpers/poll.ts';
import { capturedLog } from '../helpers/log-capture.ts';
import { failingOnce } from '../helpers/recovery.ts';
import { slowWorkflow, SLOW_QUEUE, SLOW_TAG } from '../helpers/slow-workflow.ts';
import { createSlowRun, SLOW_STEPS, stackSweeper } from '../helpers/recovery.ts';
import { stepJobId } from '../../src/platform/queue/job-ids.ts';
import type { RunRow } from '../../src/platform/durable/runtime.ts';

const LONG = 180_000;
const BACKLOG = 3000;

type Sent = { name: string; args: string[] };

describe('a sweep over running runs behind a deep backlog', () => {
  let stack: TestStack;
  let queue: Queue;
  let clients: Redis[];
  beforeAll(async () => {
    stack = await startStack({ api: false, extraWorkflows: [slowWorkflow()] });
    queue = stack.container.queues.get(SLOW_QUEUE)!;
    clients = [...new Set([stack.container.redis, (await queue.getBackend().client) as unknown as Redis])];
  }, LONG);
  afterAll(async () => stack?.stop());

  /** Waiting jobs nobody takes (no worker runs), ahead of what the test adds next. */
  async function addBacklog(n: number): Promise<void> {
    for (let i = 0; i < n; i += 1000) {
      await queue.addBulk(Array.from({ length: Math.min(1000, n - i) }, () => ({ name: 'backlog', data: {}, opts: { jobId: `backlog-${randomUUID()}` } })));
    }
  }

  /**
   * A gp-slow run `running` with steps 1-3 completed (retried `retry` times), untouched for an hour;
   * with `jobFrom`, its run job of generation `jobRetry` (default: the run's) from that step, queued
   * behind the backlog (`delayed`: put off instead).
   */
  async function runningRun(tenant: string, opts: { retry?: number; jobFrom?: number; jobRetry?: number; delayed?: boolean } = {}): Promise<RunRow> {
    const run = await createSlowRun(stack, tenant, { enqueue: false });
    const retry = opts.retry ?? 0;
    for (let seq = 1; seq <= 3; seq++) {
      await stack.db.admin(
        `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, attempt, created_at, updated_at, completed_at)
         values (gen_random_uuid(), $1, $2, $3, $4, 'completed', '{}', 1, now(), now(), now())`,
        [tenant, run.id, seq, SLOW_STEPS[seq - 1]],
      );
    }
    await stack.db.admin(`update durable_runs set status = 'running', sequence_num = 1, retry_count = $2, updated_at = now() - interval '1 hour' where id = $1`, [run.id, retry]);
    const row = { ...run, status: 'running' as const, retry_count: retry };
    if (opts.jobFrom) {
      const generation = opts.jobRetry ?? retry;
      await queue.add(SLOW_STEPS[opts.jobFrom - 1]!, { run_id: run.id, tenant_id: tenant, ...(generation ? { retry: generation } : {}) }, {
        jobId: stepJobId(SLOW_TAG, run.idempotency_hash, opts.jobFrom, SLOW_STEPS[opts.jobFrom - 1]!, generation),
        ...(opts.delayed ? { delay: 3_600_000 } : {}),
      });
    }
    return row;
  }

  /** The commands `fn` sends on the stack's Redis connections (pipelined ones one by one). */
  async function sentBy<T>(fn: () => Promise<T>): Promise<{ result: T; sent: Sent[] }> {
    const sent: Sent[] = [];
    const originals = clients.map((c) => c.sendCommand);
    clients.forEach((c, i) => {
      c.sendCommand = function (this: Redis, cmd: any, ...rest: any[]) {
        sent.push({ name: String(cmd.name).toLowerCase(), args: (cmd.args ?? []).map((a: unknown) => String(a)) });
        return (originals[i] as any).call(this, cmd, ...rest);
      } as Redis['sendCommand'];
    });
    try {
      return { result: await fn(), sent };
    } finally {
      clients.forEach((c, i) => (c.sendCommand = originals[i]!));
    }
  }

  /**
   * BullMQ's scripts that find a job by LPOS over the active, wait and paused lists (getState, and
   * isJobInState): each one a scan of the whole wait list for a job it does not hold. (Adding a job
   * runs a script with an LPOS too, once per job added: not a look-up.)
   */
  function lposScripts(sent: Sent[]): Sent[] {
    const shas = new Map<string, string>();
    for (const c of clients) {
      for (const [name, script] of Object.entries(((c as any).scriptsSet ?? {}) as Record<string, { lua: string; sha: string }>)) {
        if (/^(getState|isJobInState)/.test(name) && /LPOS/.test(script.lua)) shas.set(script.sha, name);
      }
    }
    expect([...shas.values()].some((name) => name.startsWith('getStateV2'))).toBe(true);
    return sent.filter((s) => s.name === 'evalsha' && shas.has(s.args[0]!));
  }

  const prefixOf = (run: RunRow) => `${SLOW_TAG}-${run.idempotency_hash.slice(0, 40)}-`;
  const jobState = (run: RunRow, seq: number, retry = run.retry_count) => queue.getJobState(stepJobId(SLOW_TAG, run.idempotency_hash, seq, SLOW_STEPS[seq - 1]!, retry));
  /** Runs of earlier tests out of the way: every sweep lists every tenant's incomplete runs. */
  const endRuns = (runs: RunRow[]) => stack.db.admin(`update durable_runs set status = 'completed', completed_at = now() where id = any($1::uuid[])`, [runs.map((r) => r.id)]);

  it("decides running runs from its one listing of the queue's live jobs: none re-enqueued while a job of its generation lives, none looked up one by one, and a run whose only live job is of an older generation recovered", { timeout: LONG }, async () => {
    const tenant = newTenant();
    await addBacklog(BACKLOG);
    const alive = [
      // A job handed back (SIGTERM) or started by a sweep at step 1, going on from its checkpoints.
      await runningRun(tenant, { jobFrom: 1 }),
      // A decided approval's job, queued behind the backlog.
      await runningRun(tenant, { jobFrom: 4 }),
      // Put off (a parked job, a step's backoff).
      await runningRun(tenant, { jobFrom: 2, delayed: true }),
      // A retried run's job, of its generation.
      await runningRun(tenant, { retry: 1, jobFrom: 4 }),
    ];
    // Retried since its job was added: that job ends without a step (executor: superseded), and nothing carries the run.
    const staleGeneration = await runningRun(tenant, { retry: 1, jobFrom: 4, jobRetry: 0 });
    // No job at all (a crash between a commit and its enqueue).
    const jobless = await runningRun(tenant);
    const markerKey = `${stack.prefix}:backlog-marker`;
    await stack.redis.set(markerKey, 'kept');
    const sweeper = stackSweeper(stack, 'backlog-sweeper-lock', { markerKey });

    const first = await sentBy(() => sweeper.sweep());
    expect(first.result.reenqueued).toBe(2);
    expect(await jobState(staleGeneration, 4)).toBe('waiting');
    expect(await jobState(jobless, 4)).toBe('waiting');
    // The live runs: no job added, nothing of theirs asked for.
    expect(await queue.getJobCountByTypes('wait', 'delayed')).toBe(BACKLOG + alive.length + 1 + 2);
    expect(first.sent.filter((s) => s.args.some((a) => alive.some((r) => a.includes(prefixOf(r)))))).toEqual([]);
    expect(lposScripts(first.sent)).toEqual([]);

    // Nothing left to do: a sweep costs Redis the same commands with twice the backlog.
    const before = await sentBy(() => sweeper.sweep());
    await addBacklog(BACKLOG);
    const after = await sentBy(() => sweeper.sweep());
    expect(before.result.reenqueued).toBe(0);
    expect(after.result.reenqueued).toBe(0);
    expect(after.sent.map((s) => s.name)).toEqual(before.sent.map((s) => s.name));
    expect(lposScripts(after.sent)).toEqual([]);
    await endRuns([...alive, staleGeneration, jobless]);
  });

  it('above liveSnapshotMax it looks each run\'s jobs up without scanning the backlog: a job that exists unfinished (waiting, delayed) is alive, one gone is not', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const alive = [await runningRun(tenant, { jobFrom: 1 }), await runningRun(tenant, { jobFrom: 4 }), await runningRun(tenant, { jobFrom: 2, delayed: true }), await runningRun(tenant, { retry: 1, jobFrom: 4 })];
    const staleGeneration = await runningRun(tenant, { retry: 1, jobFrom: 4, jobRetry: 0 });
    const jobless = await runningRun(tenant);
    const markerKey = `${stack.prefix}:fallback-marker`;
    await stack.redis.set(markerKey, 'kept');
    const sweeper = stackSweeper(stack, 'fallback-sweeper-lock', { markerKey, liveSnapshotMax: 0 });
    const waitingBefore = await queue.getJobCountByTypes('wait', 'delayed');

    const first = await sentBy(() => sweeper.sweep());
    expect(first.result.reenqueued).toBe(2);
    expect(await jobState(staleGeneration, 4)).toBe('waiting');
    expect(await jobState(jobless, 4)).toBe('waiting');
    expect(await queue.getJobCountByTypes('wait', 'delayed')).toBe(waitingBefore + 2);
    expect(lposScripts(first.sent)).toEqual([]);

    const before = await sentBy(() => sweeper.sweep());
    await addBacklog(BACKLOG);
    const after = await sentBy(() => sweeper.sweep());
    expect(after.result.reenqueued).toBe(0);
    expect(after.sent.map((s) => s.name)).toEqual(before.sent.map((s) => s.name));
    expect(lposScripts(after.sent)).toEqual([]);
    await endRuns([...alive, staleGeneration, jobless]);
  });

  it("a listing of the queue's live jobs that fails once decides nothing about that queue's runs: no run taken for jobless, none looked up one by one, the queue not listed again in that pass, and the next sweep decides them", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const alive = [await runningRun(tenant, { jobFrom: 1 }), await runningRun(tenant, { jobFrom: 4 }), await runningRun(tenant, { jobFrom: 2, delayed: true })];
    const jobless = await runningRun(tenant);
    const markerKey = `${stack.prefix}:listing-marker`;
    await stack.redis.set(markerKey, 'kept');
    const log = capturedLog();
    // A page a run: a rejection taken for an empty queue would have sent every page's runs down the per-run path.
    const sweeper = stackSweeper(stack, 'listing-sweeper-lock', { markerKey, batch: 1, logger: pino({ level: 'warn' }, log.destination) });
    // Redis answers the listing with an error once (a timeout, BUSY): an injected failure on the real queue.
    const listing = failingOnce(queue, 'getRanges', () => new Error('Command timed out'));
    try {
      const first = await sentBy(() => sweeper.sweep());
      expect(listing.calls()).toBe(1);
      // Nothing decided from a look that failed: no run re-enqueued, and no run's jobs asked for one by one
      // (with the rejection reused, each run went to reenqueue: a tenant transaction and a look-up each).
      expect(first.sent.filter((s) => s.args.some((a) => [...alive, jobless].some((r) => a.includes(prefixOf(r))))).map((s) => s.name)).toEqual([]);
      expect(first.result.reenqueued).toBe(0);
      expect(first.result.undecided).toEqual({ waiting: 0, active: [...alive, jobless].length });
      expect(log.lines.filter((l) => /could not tell which runs have a live job/.test(l.msg))).toHaveLength(1);

      // The next sweep lists again (the last reached the newest run: from the oldest): the jobless run is re-enqueued, the live ones left alone.
      const second = await sentBy(() => sweeper.sweep());
      expect(second.result.reenqueued).toBe(1);
      expect(second.result.undecided).toEqual({ waiting: 0, active: 0 });
      expect(await jobState(jobless, 4)).toBe('waiting');
      expect(second.sent.filter((s) => s.args.some((a) => alive.some((r) => a.includes(prefixOf(r)))))).toEqual([]);
    } finally {
      listing.restore();
    }
    await endRuns([...alive, jobless]);
  });

  it("a listing that keeps failing on one queue leaves that queue's runs undecided, not the runs of other queues behind them: a jobless run of another workflow is re-enqueued", { timeout: LONG }, async () => {
    const tenant = newTenant();
    // The oldest incomplete run is on the queue whose listing fails; a jobless golden-path run comes after it.
    const stuck = await runningRun(tenant);
    await stack.db.admin(`update durable_runs set updated_at = now() - interval '2 hours' where id = $1`, [stuck.id]);
    const runtime = stack.container.runtime;
    const { run: other } = await tenantEm(stack.container.orm, tenant).transactional((tx) =>
      runtime.start_run(tx, GOLDEN_PATH, { tenantId: tenant, principal: 'recovery-test', idempotencyHash: createHash('sha256').update(randomUUID()).digest('hex'), input: CLASS_A_SUBMISSION, correlationId: randomUUID() }),
    );
    await stack.db.admin(`update durable_runs set status = 'running', updated_at = now() - interval '1 hour' where id = $1`, [other.id]);
    const gp = runtime.workflows.get(GOLDEN_PATH, other.workflow_version)!;
    const otherJob = stepJobId(gp.tag, other.idempotency_hash, 1, gp.steps[0]!.name, 0);
    const gpQueue = stack.container.queues.get(GOLDEN_PATH_QUEUE)!;
    const markerKey = `${stack.prefix}:listing-marker`;
    await stack.redis.set(markerKey, 'kept');
    const sweeper = stackSweeper(stack, 'stuck-listing-sweeper-lock', { markerKey, batch: 1 });
    // The slow queue's listing fails at every sweep (a queue whose listing always times out); every other queue answers.
    const listing = failingOnce(queue, 'getRanges', () => new Error('Command timed out'), Number.POSITIVE_INFINITY);
    try {
      const reports = [];
      for (let i = 0; i < 3; i++) reports.push(await sweeper.sweep());
      expect(await gpQueue.getJobState(otherJob)).toBe('waiting');
      expect(reports.reduce((n, r) => n + r.reenqueued, 0)).toBe(1);
      // Nothing decided about the run whose queue could not be listed.
      expect(await jobState(stuck, 4)).toBe('unknown');
      expect(reports.every((r) => r.undecided.active >= 1)).toBe(true);
    } finally {
      listing.restore();
      await gpQueue.remove(otherJob);
    }
    await endRuns([stuck, other]);
  });

  /** A sweep held in its middle (eachSweep) until the test releases it. */
  function sweepGate() {
    let entered!: () => void;
    const inside = new Promise<void>((r) => (entered = r));
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    return { inside, entered, released, release };
  }

  it('a sweep that outlasts its lock\'s time keeps the lock: no second worker starts a sweep beside it', { timeout: LONG }, async () => {
    const markerKey = `${stack.prefix}:lock-marker`;
    await stack.redis.set(markerKey, 'kept');
    const lockKey = `${stack.prefix}:long-sweep-lock`;
    const { inside, entered, released, release } = sweepGate();
    // intervalMs 3000: the lock is taken for 2.9 s; this sweep holds in the middle until the test lets it go.
    const long = stackSweeper(stack, 'long-sweep-lock', { markerKey, intervalMs: 3000, eachSweep: async () => (entered(), released) });
    const other = stackSweeper(stack, 'long-sweep-lock', { markerKey, intervalMs: 3000 });
    const sweeping = long.sweepWithLock();
    try {
      await within(inside, 'the long sweep to start');
      // Longer than the lock's first 2.9 s: its time raised again three times (renewed), or the lock gone.
      let renewals = 0;
      let last = await stack.redis.pttl(lockKey);
      await waitFor(
        async () => {
          const ttl = await stack.redis.pttl(lockKey);
          if (ttl < 0) return true;
          if (ttl > last) renewals++;
          last = ttl;
          return renewals >= 3;
        },
        { timeoutMs: 60_000, intervalMs: 50, what: 'the lock to be renewed three times, or to lapse' },
      );
      expect(await stack.redis.pttl(lockKey)).toBeGreaterThan(0);
      expect(await other.sweepWithLock()).toBeUndefined();
    } finally {
      release();
    }
    expect(await within(sweeping, 'the long sweep to end')).toBeDefined();
    // Ended: the lock is left to lapse within one interval (the next sweep of any worker after it), no longer renewed.
    const ttl = await stack.redis.pttl(lockKey);
    expect(ttl).toBeLessThanOrEqual(2900);
    await waitFor(async () => (await stack.redis.pttl(lockKey)) < 0, { timeoutMs: 60_000, what: 'the ended sweep\'s lock to lapse' });
    expect(await other.sweepWithLock()).toBeDefined();
  });

  it('a sweep that hangs past lockMaxMs stops renewing its lock: another worker sweeps again', { timeout: LONG }, async () => {
    // A sweep stuck on a wedged connection must not hold the lock for ever (renewed on a healthy
    // one): no worker would sweep again, and every run lost meanwhile would stay stuck.
    const markerKey = `${stack.prefix}:hang-marker`;
    await stack.redis.set(markerKey, 'kept');
    const lockKey = `${stack.prefix}:hung-sweep-lock`;
    const { inside, entered, released, release } = sweepGate();
    const hung = stackSweeper(stack, 'hung-sweep-lock', { markerKey, intervalMs: 3000, lockMaxMs: 4000, eachSweep: async () => (entered(), released) });
    const other = stackSweeper(stack, 'hung-sweep-lock', { markerKey, intervalMs: 3000 });
    const sweeping = hung.sweepWithLock();
    try {
      await within(inside, 'the hung sweep to start');
      await waitFor(async () => (await stack.redis.pttl(lockKey)) < 0, { timeoutMs: 60_000, intervalMs: 100, what: 'the hung sweep\'s lock to lapse' });
      expect(await other.sweepWithLock()).toBeDefined();
    } finally {
      release();
    }
    expect(await within(sweeping, 'the hung sweep to end')).toBeDefined();
  });
});
