/**
 * POST /api/v1/golden-path/runs/:id/retry against the real stack (PostgreSQL as the application role,
 * Redis, the API in this process): a failed run goes back to work from its last checkpoint. The
 * golden path's own steps run in the production worker host and executor, in this process, each
 * step behind a control the test sets (fail it for good, hold it, count who entered it), so a test
 * can fail a step, "fix" it, retry, and see what ran again (docs/runtime.md, ADR 0009).
 */
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, CLASS_A_SUBMISSION, CLASS_C_SUBMISSION, newTenant, SAMPLE_SUBMISSION, type TestStack } from '../helpers/stack.ts';
import { stackForTests } from '../helpers/stack-for-tests.ts';
import { waitFor } from '../helpers/poll.ts';
import { setPolicy } from '../helpers/policy.ts';
import { barrier, controlledStep, enteredBy, startRunHost, stepControl, wrappedGoldenPath, type StepControl } from '../helpers/run-host.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';
import { namedJobId, stepJobId } from '../../src/platform/queue/job-ids.ts';
import { jobHandlersFor } from '../../src/modules/index.ts';
import { stackSweeper } from '../helpers/recovery.ts';
import { holdRows } from '../helpers/row-lock.ts';
import { GOLDEN_PATH, GOLDEN_PATH_QUEUE } from '../../src/modules/golden-path/golden-path.workflow.ts';
import type { WorkflowDef } from '../../src/platform/durable/workflow.ts';
import { DEFER_UNTIL_NEXT } from '../../src/platform/db/markers.ts';
import { retiringApi as retiringApiOf } from '../helpers/retiring-api.ts';
import { StepExecutor } from '../../src/platform/durable/executor.ts';
import { RUN_RETRY_HISTORY_MAX } from '../../src/platform/durable/runtime.ts';

const LONG = 120_000;
const STEPS = ['partner-dossier', 'economics-model', 'approval-packet', 'evidence-pack'];
const retryPath = (id: string) => `/api/v1/golden-path/runs/${id}/retry`;

/** What the test's worker does (run-host.ts), and: */
interface Control extends StepControl {
  /** Step 1 renamed (the code changed in place under a run): non-determinism against its checkpoints. */
  renamedFirst?: boolean;
}

describe('retrying a failed run through the API', () => {
  // No worker process: the runs' jobs are the test's own host's.
  const suite = stackForTests({ stack: { env: { LOG_LEVEL: 'info' } }, logs: true, users: true, timeoutMs: LONG });
  const { tenant, tok, logLines, hosts } = suite;
  let stack: TestStack;
  beforeAll(async () => {
    ({ stack } = suite);
    tok.approver = await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] });
  });
  // Registered after the suite's: runs before it stops the hosts (vitest's after-hooks run last-registered first).
  afterEach(() => {
    vi.restoreAllMocks();
  });

  const queue = () => stack.container.queues.get(GOLDEN_PATH_QUEUE)!;

  /** Runs the golden path in this process under `ctl`; stopped after the test (or by the test). */
  function host(ctl: Control, wrapOnFailed?: (onFailed: NonNullable<WorkflowDef['onFailed']>) => WorkflowDef['onFailed']) {
    const wf: WorkflowDef = wrappedGoldenPath(stack, controlledStep(ctl));
    if (ctl.renamedFirst) wf.steps[0] = { ...wf.steps[0]!, name: `${STEPS[0]}-v2` };
    if (wrapOnFailed) wf.onFailed = wrapOnFailed(wf.onFailed!);
    // The SLA timers' handler too: a timer of a run here fires and expires it as a worker's would.
    const h = startRunHost(stack, wf, `retry-test-${randomUUID().slice(0, 8)}`, jobHandlersFor({ orm: stack.container.orm, runtime: stack.container.runtime }));
    hosts.push(h);
    return {
      async stop() {
        hosts.splice(hosts.indexOf(h), 1);
        await h.stop();
      },
    };
  }
  const control: (failing?: number[]) => Control = stepControl;

  /** An API instance (and its runtime) of a deployment that declares golden-path v7 retired, on this stack's database and Redis. */
  const retiringApi = () => retiringApiOf(stack, 'golden-path@v7');

  async function submit(body: unknown = CLASS_A_SUBMISSION, token = tok.submitter!): Promise<string> {
    const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status, res.text).toBe(202);
    return res.json.run_id as string;
  }
  const retry = (id: string, token = tok.submitter!, key: string | null = randomUUID()) => api(stack, 'POST', retryPath(id), { token, headers: key ? { 'Idempotency-Key': key } : {} });
  const cancel = (id: string, token = tok.submitter!) => api(stack, 'POST', `/api/v1/golden-path/runs/${id}/cancel`, { token, headers: { 'Idempotency-Key': randomUUID() } });
  async function waitStatus(id: string, statuses: string[]) {
    return waitFor(
      async () => {
        const res = await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: tok.submitter! });
        return statuses.includes(res.json?.status) ? res.json : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 50, what: `run ${id} to reach ${statuses.join('|')}` },
    );
  }
  /** Submits a class A run and waits for it to fail at step `seq` (the host must fail it). */
  async function failedRun(seq: number): Promise<string> {
    const id = await submit();
    const failed = await waitStatus(id, ['failed', 'completed']);
    expect(failed).toMatchObject({ status: 'failed', error: { code: 'test_permanent', sequence_num: seq } });
    return id;
  }
  const runRow = async (id: string) =>
    (await stack.db.admin(`select status, error, retry_count, retry_history, workflow_version, completed_at, updated_at, idempotency_hash from durable_runs where id = $1`, [id])).rows[0] as {
      status: string;
      error: any;
      retry_count: number;
      retry_history: any[] | null;
      workflow_version: number;
      completed_at: Date | null;
      updated_at: Date;
      idempotency_hash: string;
    };
  const checkpointsOf = async (id: string) =>
    (await stack.db.admin(`select id, sequence_num, step_name, status, attempt, output is not null as has_output, created_at, completed_at from durable_checkpoints where run_id = $1 order by sequence_num`, [id])).rows;
  const domainRows = async (id: string) => {
    const out: Record<string, Array<{ id: string; created_at: Date }>> = {};
    for (const table of ['partner_dossiers', 'economics_models', 'approval_requests', 'evidence_packs']) {
      out[table] = (await stack.db.admin(`select id, created_at from ${table} where run_id = $1 order by created_at`, [id])).rows;
    }
    return out;
  };
  /** The id of the run's job that starts at `seq`, of its `retry`th generation. */
  const jobIdOf = async (id: string, seq: number, generation = 0) => stepJobId('gp', (await runRow(id)).idempotency_hash, seq, STEPS[seq - 1]!, generation);
  const jobState = async (id: string, seq: number, generation = 0) => queue().getJobState(await jobIdOf(id, seq, generation));
  /** Every job BullMQ holds for the run, by id and state. */
  async function jobsOf(id: string): Promise<Record<string, string>> {
    const hash = (await runRow(id)).idempotency_hash;
    const out: Record<string, string> = {};
    for (const job of await queue().getJobs(['wait', 'active', 'delayed', 'prioritized', 'completed', 'failed'])) {
      if (job?.id?.startsWith(`gp-${hash.slice(0, 40)}-`)) out[job.id] = await job.getState();
    }
    return out;
  }
  /**
   * jobsOf once none of the run's jobs is waiting or active: the run's end commits before its job's
   * processor returns, and BullMQ completes the job after that (under load a test read it 'active').
   */
  const endedJobsOf = (id: string) =>
    waitFor(async () => {
      const jobs = await jobsOf(id);
      return Object.values(jobs).every((state) => state === 'completed' || state === 'failed') ? jobs : undefined;
    }, { what: `the jobs of run ${id} to end` });
  const metric = async (series: string) => {
    const line = (await api(stack, 'GET', '/metrics')).text.split('\n').find((l) => l.startsWith(`${series} `));
    return line === undefined ? 0 : Number(line.slice(series.length + 1));
  };
  const RETRIED = `dealix_runs_retried_total{workflow="${GOLDEN_PATH}"}`;
  /** The recovery sweeper of a worker process, here; every incomplete run is old enough for it. */
  const sweeper = (lock: string) => stackSweeper(stack, lock);

  it('a run whose step 2 failed for good, retried once the step is fixed: completes, step 1 and its row untouched, step 2 run again with fresh attempts; counted and logged', { timeout: LONG }, async () => {
    const ctl = control([2]);
    host(ctl);
    const id = await failedRun(2);
    const before = { checkpoints: await checkpointsOf(id), rows: await domainRows(id), run: await runRow(id) };
    expect(before.checkpoints.map((c) => [c.sequence_num, c.status])).toEqual([[1, 'completed'], [2, 'failed']]);
    expect(before.rows.partner_dossiers).toHaveLength(1);
    expect(before.rows.economics_models).toHaveLength(0);
    await waitFor(async () => (await jobState(id, 1)) === 'failed', { what: 'the failed job to be in the failed set' });
    const counted = await metric(RETRIED);

    ctl.failing.clear(); // the cause is fixed
    const res = await retry(id);
    expect(res.status, res.text).toBe(200);
    // The run as the transaction left it: active again from step 2, its failure kept in `retries`.
    expect(res.json).toMatchObject({
      run_id: id,
      status: 'running',
      error: null,
      completed_at: null,
      progress: { completed_steps: 1, current_sequence_num: 2 },
      retries: [{ retry: 1, retried_by: 'submitter-1', error: { code: 'test_permanent', step: STEPS[1], sequence_num: 2 }, attempts: 1, failed_at: before.run.completed_at!.toISOString() }],
    });
    expect(res.json.steps.map((s: { status: string }) => s.status)).toEqual(['completed', 'pending', 'pending', 'pending']);

    const done = await waitStatus(id, ['completed', 'failed']);
    expect(done.status).toBe('completed');
    expect(done.error).toBeNull();
    expect(done.retries).toEqual(res.json.retries);
    // Step 1 was not run again: its checkpoint and its row are the ones of the first attempt, once.
    const after = { checkpoints: await checkpointsOf(id), rows: await domainRows(id) };
    expect(after.checkpoints[0]).toEqual(before.checkpoints[0]);
    expect(after.rows.partner_dossiers).toEqual(before.rows.partner_dossiers);
    expect(after.checkpoints.map((c) => [c.sequence_num, c.status, c.attempt])).toEqual([[1, 'completed', 1], [2, 'completed', 1], [3, 'completed', 1], [4, 'completed', 1]]);
    for (const table of ['economics_models', 'approval_requests', 'evidence_packs']) expect(after.rows[table], table).toHaveLength(1);
    expect(enteredBy(ctl, id)).toEqual([1, 2, 2, 3, 4]);
    // The failed job keeps its id in the failed set; the retry's job is of the next generation, and
    // replayed step 1 from its checkpoint before it ran step 2.
    expect(await jobState(id, 1)).toBe('failed');
    const retried = (await queue().getJob(await jobIdOf(id, 1, 1)))!;
    await waitFor(async () => (await retried.getState()) === 'completed', { what: "the retry's job to complete" });
    expect((await queue().getJob(retried.id!))!.returnvalue.steps.map((s: { sequence_num: number; replayed: boolean }) => [s.sequence_num, s.replayed])).toEqual([[1, true], [2, false], [3, false], [4, false]]);
    expect(await metric(RETRIED)).toBe(counted + 1);
    const line = await waitFor(() => logLines.find((l) => l.msg === 'run retried' && l.run_id === id), { what: "the retry's log line" });
    expect(line).toMatchObject({ level: 30, retried_by: 'submitter-1', retry: 1, tenant_id: tenant, failed_step: STEPS[1], failed_code: 'test_permanent' });
    // Among the run's lines: its correlation id, not the retry request's.
    const [{ correlation_id: runCid }] = (await stack.db.admin(`select correlation_id from durable_runs where id = $1`, [id])).rows;
    expect(line.correlation_id).toBe(runCid);
  });

  it('a run that is not failed answers 409 run_not_failed with its status, and nothing changes: completed, cancelled, running', { timeout: LONG }, async () => {
    const ctl = control();
    const held = barrier();
    host(ctl);
    const completed = await submit();
    expect((await waitStatus(completed, ['completed', 'failed'])).status).toBe('completed');
    ctl.hold = { seq: 2, at: held };
    const running = await submit();
    await held.inside;
    const cancelled = await submit();
    expect((await cancel(cancelled)).status).toBe(200);
    try {
      for (const [id, status] of [[completed, 'completed'], [cancelled, 'cancelled'], [running, 'running']] as const) {
        const before = { run: await runRow(id), checkpoints: await checkpointsOf(id) };
        const res = await retry(id, tok.admin!);
        expect(res.status, res.text).toBe(409);
        expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
        expect(res.json).toMatchObject({ code: 'run_not_failed', run_status: status });
        expect(res.json.detail).toContain(status);
        expect(await runRow(id)).toEqual(before.run);
        expect(await checkpointsOf(id)).toEqual(before.checkpoints);
      }
    } finally {
      held.release();
    }
    expect((await waitStatus(running, ['completed', 'failed'])).status).toBe('completed');
  });

  it('who may retry, and the key: no key 400, another user 403, another tenant 404; an admin may; the same key replays, with another run it is 422', { timeout: LONG }, async () => {
    const ctl = control([2]);
    host(ctl);
    const id = await failedRun(2);
    const other = await failedRun(2);
    const unchanged = await runRow(id);

    const missing = await retry(id, tok.admin!, null);
    expect(missing.status, missing.text).toBe(400);
    expect(missing.json.code).toBe('validation_failed');
    const forbidden = await retry(id, tok.other!);
    expect(forbidden.status, forbidden.text).toBe(403);
    expect(forbidden.json.detail).toContain('retry');
    const elsewhere = await retry(id, tok.otherTenantAdmin!);
    expect(elsewhere.status, elsewhere.text).toBe(404);
    expect(await runRow(id)).toEqual(unchanged);

    ctl.failing.clear();
    const key = randomUUID();
    const first = await retry(id, tok.admin!, key);
    expect(first.status, first.text).toBe(200);
    expect(first.json).toMatchObject({ run_id: id, submitted_by: 'submitter-1', retries: [{ retried_by: 'admin-1' }] });
    const replay = await retry(id, tok.admin!, key);
    expect(replay.status).toBe(200);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.json).toEqual(first.json);
    const reused = await retry(other, tok.admin!, key);
    expect(reused.status, reused.text).toBe(422);
    expect(reused.json.code).toBe('idempotency_key_reused');
    expect((await runRow(other)).status).toBe('failed');
    expect((await waitStatus(id, ['completed', 'failed'])).status).toBe('completed');
    expect((await runRow(id)).retry_count).toBe(1);
  });

  it('two retries at once (other keys, other users): one 200, one 409; one job carries the run on, its step runs once more', { timeout: LONG }, async () => {
    const ctl = control([2]);
    host(ctl);
    const id = await failedRun(2);
    ctl.failing.clear();
    const answers = await Promise.all([retry(id, tok.submitter!), retry(id, tok.admin!)]);
    expect(answers.map((a) => a.status).sort()).toEqual([200, 409]);
    const refused = answers.find((a) => a.status === 409)!;
    expect(refused.json.code).toBe('run_not_failed');
    expect(['pending', 'running', 'completed']).toContain(refused.json.run_status);
    expect((await waitStatus(id, ['completed', 'failed'])).status).toBe('completed');
    const run = await runRow(id);
    expect(run.retry_count).toBe(1);
    expect(run.retry_history).toHaveLength(1);
    expect(enteredBy(ctl, id)).toEqual([1, 2, 2, 3, 4]);
    const hash = run.idempotency_hash.slice(0, 40);
    expect(await endedJobsOf(id)).toEqual({ [`gp-${hash}-1-${STEPS[0]}`]: 'failed', [`gp-${hash}-1-${STEPS[0]}-retry1`]: 'completed' });
  });

  it('a run that fails again after its retry can be retried again: each retry a job of its own generation, each failure kept', { timeout: LONG }, async () => {
    const ctl = control([2]);
    host(ctl);
    const id = await failedRun(2);
    const first = await retry(id);
    expect(first.status, first.text).toBe(200);
    const again = await waitStatus(id, ['failed', 'completed']);
    expect(again).toMatchObject({ status: 'failed', error: { code: 'test_permanent', sequence_num: 2 } });
    await waitFor(async () => (await jobState(id, 1, 1)) === 'failed', { what: "the first retry's job to fail" });
    ctl.failing.clear();
    const second = await retry(id);
    expect(second.status, second.text).toBe(200);
    expect(second.json.retries).toEqual([expect.objectContaining({ retry: 1 }), expect.objectContaining({ retry: 2, error: expect.objectContaining({ code: 'test_permanent' }) })]);
    expect((await waitStatus(id, ['completed', 'failed'])).status).toBe('completed');
    expect(enteredBy(ctl, id)).toEqual([1, 2, 2, 2, 3, 4]);
    const hash = (await runRow(id)).idempotency_hash.slice(0, 40);
    expect(await endedJobsOf(id)).toEqual({
      [`gp-${hash}-1-${STEPS[0]}`]: 'failed',
      [`gp-${hash}-1-${STEPS[0]}-retry1`]: 'failed',
      [`gp-${hash}-1-${STEPS[0]}-retry2`]: 'completed',
    });
    expect((await domainRows(id)).partner_dossiers).toHaveLength(1);
  });

  it('a run retried again and again after a failure that does not go away: its history keeps the last RUN_RETRY_HISTORY_MAX retries, its retry_count counts them all, and each answer stays that size', { timeout: 4 * LONG }, async () => {
    const K = RUN_RETRY_HISTORY_MAX;
    const times = K + 3;
    const ctl = control([2]); // never fixed: a deterministic failure, as a script that retries on every `failed` would meet
    host(ctl);
    const id = await failedRun(2);
    const keys: string[] = [];
    for (let i = 1; i <= times; i++) {
      keys.push(randomUUID());
      const res = await retry(id, tok.submitter!, keys[i - 1]!);
      expect(res.status, res.text).toBe(200);
      // The newest K retries, oldest first; the count of all of them.
      expect(res.json.retry_count).toBe(i);
      expect(res.json.retries.map((r: { retry: number }) => r.retry)).toEqual(Array.from({ length: Math.min(i, K) }, (_, j) => Math.max(i - K, 0) + j + 1));
      expect((await waitStatus(id, ['failed', 'completed'])).status).toBe('failed');
    }
    const row = await runRow(id);
    expect(row.retry_count).toBe(times);
    expect(row.retry_history).toHaveLength(K);
    expect(row.retry_history!.map((r) => r.retry)).toEqual(Array.from({ length: K }, (_, j) => times - K + j + 1));
    expect(row.retry_history!.at(-1)).toMatchObject({ retry: times, retried_by: 'submitter-1', error: { code: 'test_permanent', sequence_num: 2 }, attempts: 1 });
    const view = (await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: tok.submitter! })).json;
    expect(view).toMatchObject({ status: 'failed', retry_count: times });
    expect(view.retries).toEqual(row.retry_history!.map((r) => expect.objectContaining({ retry: r.retry })));
    // The last retry's answer, as its key stored it: the same bounded body.
    const replay = await retry(id, tok.submitter!, keys.at(-1)!);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.json.retries).toHaveLength(K);
    expect(replay.json.retry_count).toBe(times);
  });

  it('a retry whose enqueue failed after its commit: 200, the run is active without a job, and the sweeper re-enqueues it in its generation', { timeout: LONG }, async () => {
    const ctl = control([2]);
    host(ctl);
    const id = await failedRun(2);
    ctl.failing.clear();
    vi.spyOn(stack.container.runtime, 'ensureEnqueued').mockRejectedValueOnce(new Error('Redis unavailable (test)'));
    const res = await retry(id);
    expect(res.status, res.text).toBe(200);
    expect(res.json.status).toBe('running');
    await waitFor(() => logLines.find((l) => l.msg === 'after-commit action failed; the sweeper will repair it' && l.err?.message === 'Redis unavailable (test)'), { what: 'the failed enqueue to be logged' });
    expect(await jobState(id, 1, 1)).toBe('unknown');
    expect((await runRow(id)).status).toBe('running');

    expect((await sweeper('retry-test-sweep').sweep()).reenqueued).toBeGreaterThanOrEqual(1);
    expect((await waitStatus(id, ['completed', 'failed'])).status).toBe('completed');
    // From its first step without a completed checkpoint, as a job of the retry's generation.
    // (Completed once its processor returns, after the run's end committed.)
    await waitFor(async () => (await jobState(id, 2, 1)) === 'completed', { what: "the sweeper's job to complete" });
    expect(enteredBy(ctl, id)).toEqual([1, 2, 2, 3, 4]);
  });

  it.each([
    [1, 'pending'],
    [2, 'running'],
  ])('the sweeper leaves a retried run alone while its job is alive (step %i failed, the run %s again)', { timeout: LONG }, async (seq, status) => {
    const ctl = control([seq]);
    host(ctl);
    const id = await failedRun(seq);
    // (A new run's first job may have entered step 1 twice: once from what the job carried, once after reading the run.)
    const enteredBefore = enteredBy(ctl, id).filter((s) => s === seq).length;
    ctl.failing.clear();
    const held = barrier();
    ctl.hold = { seq, at: held };
    try {
      const res = await retry(id);
      expect(res.status, res.text).toBe(200);
      expect(res.json.status).toBe(status);
      await held.inside;
      // Untouched for longer than the sweeper's minimum age (0 here), the run's job in a worker's hands.
      const report = await sweeper(`retry-test-alive-${seq}`).sweep();
      expect(report.reenqueued).toBe(0);
      const hash = (await runRow(id)).idempotency_hash.slice(0, 40);
      expect(await jobsOf(id)).toEqual({ [`gp-${hash}-1-${STEPS[0]}`]: 'failed', [`gp-${hash}-1-${STEPS[0]}-retry1`]: 'active' });
    } finally {
      held.release();
    }
    expect((await waitStatus(id, ['completed', 'failed'])).status).toBe('completed');
    expect(enteredBy(ctl, id).filter((s) => s === seq)).toHaveLength(enteredBefore + 1);
  });

  it("a job the run's failed generation left in the queue ends without a step once the run is retried; the retry's job carries the run", { timeout: LONG }, async () => {
    const ctl = control([2]);
    const first = host(ctl);
    const id = await failedRun(2);
    await first.stop();
    ctl.failing.clear();
    // A job of the run from before the retry, still waiting (e.g. a duplicate a Redis flush left behind), ahead of the retry's.
    const row = (await stack.db.admin(`select id, tenant_id, workflow, workflow_version, idempotency_hash, correlation_id, traceparent, retry_count from durable_runs where id = $1`, [id])).rows[0];
    await stack.container.runtime.enqueue(row, 2);
    expect(await jobState(id, 2)).toBe('waiting');
    expect((await retry(id)).status).toBe(200);
    host(ctl);
    expect((await waitStatus(id, ['completed', 'failed'])).status).toBe('completed');
    const stale = (await queue().getJob(await jobIdOf(id, 2)))!;
    await waitFor(async () => (await stale.getState()) === 'completed', { what: 'the leftover job to end' });
    expect((await queue().getJob(stale.id!))!.returnvalue).toEqual({ run_id: id, from_sequence_num: 2, status: 'ended', steps: [] });
    // The retry's job completes after the run's end commits: read once completed (before, its returnvalue is null).
    await waitFor(async () => (await jobState(id, 1, 1)) === 'completed', { what: "the retry's job to complete" });
    const carried = (await queue().getJob(await jobIdOf(id, 1, 1)))!;
    expect(carried.returnvalue.steps.map((s: { sequence_num: number; replayed: boolean }) => [s.sequence_num, s.replayed])).toEqual([[1, true], [2, false], [3, false], [4, false]]);
    expect(enteredBy(ctl, id)).toEqual([1, 2, 2, 3, 4]);
  });

  it('a cancel after a retry, while the retried step runs: the step commits nothing, the run stays cancelled; a retry racing a cancel ends consistently', { timeout: LONG }, async () => {
    const ctl = control([2]);
    host(ctl);
    const id = await failedRun(2);
    ctl.failing.clear();
    const held = barrier();
    ctl.hold = { seq: 2, at: held };
    try {
      expect((await retry(id)).status).toBe(200);
      await held.inside;
      const cancelled = await cancel(id);
      expect(cancelled.status, cancelled.text).toBe(200);
      expect(cancelled.json).toMatchObject({ status: 'cancelled', error: { code: 'cancelled' }, retries: [{ retry: 1 }] });
    } finally {
      held.release();
    }
    await waitFor(async () => (await jobState(id, 1, 1)) === 'completed', { what: "the retry's job to end quietly" });
    expect((await runRow(id)).status).toBe('cancelled');
    expect((await checkpointsOf(id)).map((c) => [c.sequence_num, c.status])).toEqual([[1, 'completed']]);
    expect((await domainRows(id)).economics_models).toHaveLength(0);
    // Retrying a cancelled run is refused.
    expect((await retry(id)).json).toMatchObject({ code: 'run_not_failed', run_status: 'cancelled' });

    // A retry and a cancel at once on a failed run: the cancel either comes second (the retry made the
    // run active again) and cancels it, or comes first and is refused (a failed run has ended).
    delete ctl.hold;
    ctl.failing.add(2);
    const raced = await failedRun(2);
    ctl.failing.clear();
    const [r, c] = await Promise.all([retry(raced), cancel(raced)]);
    expect(r.status, r.text).toBe(200);
    if (c.status === 200) {
      expect(c.json.retries).toHaveLength(1);
      await waitFor(async () => (await jobState(raced, 1, 1)) === 'completed', { what: "the retry's job to end" });
      expect((await runRow(raced)).status).toBe('cancelled');
    } else {
      // Refused: the cancel read the run before the retry (failed), or after the retried run had finished.
      expect(c.status, c.text).toBe(409);
      expect(c.json.code).toBe('run_not_active');
      expect(['failed', 'completed']).toContain(c.json.run_status);
      expect((await waitStatus(raced, ['completed', 'failed', 'cancelled'])).status).toBe('completed');
    }
  });

  it('a run of a workflow version this API does not register: 503 workflow_version_unavailable, nothing changes, and the key is free for a later try', { timeout: LONG }, async () => {
    const ctl = control([2]);
    host(ctl);
    const id = await failedRun(2);
    // As if a later release (v2) had started it and this instance runs v1 only (a rolling deploy).
    await stack.db.admin(`update durable_runs set workflow_version = 2 where id = $1`, [id]);
    const before = { run: await runRow(id), checkpoints: await checkpointsOf(id) };
    const key = randomUUID();
    const res = await retry(id, tok.submitter!, key);
    expect(res.status, res.text).toBe(503);
    expect(res.json.code).toBe('workflow_version_unavailable');
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(await runRow(id)).toEqual(before.run);
    expect(await checkpointsOf(id)).toEqual(before.checkpoints);
    // An instance that has the version takes the same key.
    await stack.db.admin(`update durable_runs set workflow_version = 1 where id = $1`, [id]);
    ctl.failing.clear();
    const later = await retry(id, tok.submitter!, key);
    expect(later.status, later.text).toBe(200);
    expect(later.headers.get('idempotent-replayed')).toBeNull();
    expect((await waitStatus(id, ['completed', 'failed'])).status).toBe('completed');
  });

  it('a run of a workflow version declared retired (WORKFLOW_VERSIONS_RETIRED): 409 workflow_version_retired for good, naming the version and what to do instead; nothing changes', { timeout: LONG }, async () => {
    const ctl = control([2]);
    host(ctl);
    const id = await failedRun(2);
    // A run of a version no release runs any more (v7 stands for it: this stack's API registers v1 only).
    await stack.db.admin(`update durable_runs set workflow_version = 7 where id = $1`, [id]);
    const retiring = await retiringApi();
    try {
      const before = { run: await runRow(id), checkpoints: await checkpointsOf(id) };
      const key = randomUUID();
      const res = await api(retiring, 'POST', retryPath(id), { token: tok.submitter!, headers: { 'Idempotency-Key': key } });
      expect(res.status, res.text).toBe(409);
      expect(res.json).toMatchObject({ code: 'workflow_version_retired', workflow: 'golden-path', workflow_version: 7, current_version: 1, run_status: 'failed' });
      expect(res.json.detail).toMatch(/submit it again/i);
      expect(res.headers.get('retry-after')).toBeNull();
      expect(await runRow(id)).toEqual(before.run);
      expect(await checkpointsOf(id)).toEqual(before.checkpoints);
      // Definitive: the same key answers the same.
      const again = await api(retiring, 'POST', retryPath(id), { token: tok.submitter!, headers: { 'Idempotency-Key': key } });
      expect(again.status).toBe(409);
      expect(again.json.code).toBe('workflow_version_retired');
      // Where the version is merely not registered (not declared retired), it stays 503: a deploy window.
      const unknown = await retry(id);
      expect(unknown.status, unknown.text).toBe(503);
      expect(unknown.json.code).toBe('workflow_version_unavailable');
    } finally {
      await retiring.stop();
    }
  });

  /**
   * A waiting run of `submission`, made a run of golden-path v7: its approver's decision is refused by an
   * API that declares v7 retired (409) and by one that merely lacks it (503), and nothing is recorded.
   */
  async function decisionRefusedOnRetired(submission: unknown, requiredApprovals: number) {
    host(control());
    const id = await submit(submission);
    expect((await waitStatus(id, ['waiting', 'failed'])).status).toBe('waiting');
    await stack.db.admin(`update durable_runs set workflow_version = 7 where id = $1`, [id]);
    const [request] = (await stack.db.admin(`select id, required_approvals from approval_requests where run_id = $1`, [id])).rows;
    expect(request.required_approvals).toBe(requiredApprovals);
    const before = { run: await runRow(id), request: (await stack.db.admin(`select * from approval_requests where run_id = $1`, [id])).rows };
    const decide = (target: TestStack) =>
      api(target, 'POST', `/api/v1/approvals/${request.id}/decision`, { token: tok.approver!, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
    const retiring = await retiringApi();
    try {
      const res = await decide(retiring);
      expect(res.status, res.text).toBe(409);
      expect(res.json).toMatchObject({ code: 'workflow_version_retired', workflow: 'golden-path', workflow_version: 7, run_status: 'waiting' });
      const unregistered = await decide(stack);
      expect(unregistered.status, unregistered.text).toBe(503);
      expect(await runRow(id)).toEqual(before.run);
      expect((await stack.db.admin(`select * from approval_requests where run_id = $1`, [id])).rows).toEqual(before.request);
      expect((await stack.db.admin(`select count(*)::int as n from approval_decisions where approval_request_id = $1`, [request.id])).rows[0].n).toBe(0);
    } finally {
      await retiring.stop();
      await cancel(id);
    }
  }

  it('a decision on a waiting run of a retired version: 409 workflow_version_retired, nothing recorded; where the version is merely not registered, 503', { timeout: LONG }, async () => {
    await decisionRefusedOnRetired(SAMPLE_SUBMISSION, 1); // class B: waits for a human at step 3
  });

  it("a class C request's first approval on a waiting run of a retired version: 409 workflow_version_retired, nothing recorded (the second could never follow it); where merely not registered, 503", { timeout: LONG }, async () => {
    await decisionRefusedOnRetired(CLASS_C_SUBMISSION, 2); // two distinct approvers: the first decision does not resume the run
  });

  it("an SLA timer of a waiting run of a retired version expires it (ADR 0008): an expiry runs no step code, so the run ends approval_expired with one run.approval_expired event, its request expired at its deadline, and the timer completes", { timeout: LONG }, async () => {
    // The tenant's endpoint for every terminal event of a run: the run's end inserts exactly one delivery (the outbox).
    const events = ['run.completed', 'run.failed', 'run.cancelled', 'run.rejected', 'run.approval_expired'];
    const hook = await api(stack, 'POST', '/api/v1/webhook-endpoints', { token: tok.admin!, body: { url: 'https://93.184.215.14/hook', events }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(hook.status, hook.text).toBe(201);
    host(control());
    const id = await submit(SAMPLE_SUBMISSION); // class B: waits for a human at step 3
    expect((await waitStatus(id, ['waiting', 'failed'])).status).toBe('waiting');
    await stack.db.admin(`update durable_runs set workflow_version = 7 where id = $1`, [id]);
    await stack.db.admin(`update approval_requests set sla_deadline = date_trunc('milliseconds', now()) - interval '1 second' where run_id = $1`, [id]);
    const [{ tenant_id: runTenant }] = (await stack.db.admin(`select tenant_id from durable_runs where id = $1`, [id])).rows;
    // The timer, due, in a queue of its own served by a worker of a deployment that declares v7 retired.
    const retiring = await retiringApi();
    const handlers = jobHandlersFor({ orm: stack.container.orm, runtime: retiring.container.runtime });
    const { Queue, Worker } = await import('bullmq');
    const name = `retired-sla-${randomUUID().slice(0, 8)}`;
    const timers = new Queue(name, { connection: stack.redis, prefix: stack.prefix });
    const worker = new Worker(name, (job) => handlers['approval-sla']!(job), { connection: stack.redis.duplicate({ maxRetriesPerRequest: null }), prefix: stack.prefix });
    try {
      const timer = await timers.add('approval-sla', { tenant_id: runTenant, run_id: id, hash: 'f'.repeat(64), deadline: new Date().toISOString() }, { attempts: 10 });
      // Ended, or put off (moved to delayed): either is what the worker did with it.
      const state = await waitFor(
        async () => {
          const s = await timers.getJobState(timer.id!);
          return ['completed', 'failed', 'delayed'].includes(s) ? s : undefined;
        },
        { what: 'the timer to be completed, failed or put off' },
      );
      expect(state).toBe('completed');
      expect((await timers.getJob(timer.id!))!.returnvalue).toEqual({ outcome: 'expired' });
      const run = await runRow(id);
      expect(run).toMatchObject({ status: 'approval_expired', error: null, workflow_version: 7 });
      expect(run.completed_at).not.toBeNull();
      const [request] = (await stack.db.admin(`select status, decided_at = sla_deadline as at_deadline from approval_requests where run_id = $1`, [id])).rows;
      expect(request).toEqual({ status: 'expired', at_deadline: true });
      const [packet] = (await stack.db.admin(`select status, output->>'outcome' as outcome from durable_checkpoints where run_id = $1 and step_name = $2`, [id, STEPS[2]])).rows;
      expect(packet).toEqual({ status: 'completed', outcome: 'expired' });
      const deliveries = (await stack.db.admin(`select event_type from webhook_deliveries where endpoint_id = $1 and payload->'data'->>'run_id' = $2`, [hook.json.id, id])).rows;
      expect(deliveries).toEqual([{ event_type: 'run.approval_expired' }]);
      expect((await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: tok.submitter! })).json).toMatchObject({ status: 'approval_expired' });
    } finally {
      await worker.close();
      await timers.obliterate({ force: true });
      await timers.close();
      await retiring.stop();
      await api(stack, 'DELETE', `/api/v1/webhook-endpoints/${hook.json.id}`, { token: tok.admin!, headers: { 'Idempotency-Key': randomUUID() } });
      await cancel(id); // left waiting, were the expiry refused
    }
  });

  it('a run job of a retired version fails its run (workflow_version_retired) instead of being put off for ever; of a version merely not registered here it is still put off', { timeout: LONG }, async () => {
    // No host: the new run's job waits in the queue, and the test runs it through executors of its own.
    const id = await submit();
    await stack.db.admin(`update durable_runs set workflow_version = 7 where id = $1`, [id]);
    const job = (await queue().getJob(await jobIdOf(id, 1)))!;
    job.data = { ...job.data, workflow_version: 7 };
    const deferred: number[] = [];
    const control = { defer: async (_ms: number, deferrals: number) => void deferred.push(deferrals) };
    const executorOf = (runtime: typeof stack.container.runtime) => new StepExecutor({ orm: stack.container.orm, runtime, logger: stack.container.logger, workerId: 'retired-test', leaseMs: 2_000 });
    // This stack's worker code registers v1 only and declares nothing retired: a deploy window, put off.
    const put = await executorOf(stack.container.runtime).process(job, control).then(() => undefined, (e: Error) => e);
    expect(put?.name).toBe('DelayedError');
    expect(deferred).toEqual([1]);
    expect((await runRow(id)).status).toBe('pending');
    const retiring = await retiringApi();
    try {
      // A leftover job of a waiting run (its decision or timer carries it on) ends; the run still waits.
      await stack.db.admin(`update durable_runs set status = 'waiting' where id = $1`, [id]);
      expect(await executorOf(retiring.container.runtime).process(job, control)).toMatchObject({ status: 'ended', steps: [] });
      expect((await runRow(id)).status).toBe('waiting');
      await stack.db.admin(`update durable_runs set status = 'pending' where id = $1`, [id]);
      const failed = await executorOf(retiring.container.runtime).process(job, control).then(() => undefined, (e: Error) => e);
      expect(failed?.name).toBe('UnrecoverableError');
      expect(failed?.message).toMatch(/golden-path@v7 is retired/);
      expect(deferred).toEqual([1]);
      const row = await runRow(id);
      expect(row.status).toBe('failed');
      expect(row.error).toMatchObject({ code: 'workflow_version_retired', step: STEPS[0], sequence_num: 1 });
      expect(await checkpointsOf(id)).toEqual([]);
      // Its client sees why, and a retry says what to do.
      expect((await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: tok.submitter! })).json).toMatchObject({ status: 'failed', error: { code: 'workflow_version_retired' } });
      const res = await api(retiring, 'POST', retryPath(id), { token: tok.submitter!, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, res.text).toBe(409);
      expect(res.json.code).toBe('workflow_version_retired');
    } finally {
      await retiring.stop();
      await job.remove(); // no later test's host is to meet it
    }
  });

  it('a run failed for non-determinism: retried under the same code it fails the same way and writes nothing; retried once the code agrees, it completes', { timeout: LONG }, async () => {
    const fixed = control([2]);
    const original = host(fixed);
    const id = await failedRun(2);
    await original.stop();
    // The code changed in place (step 1 renamed, same version): the run's checkpoint 1 disagrees.
    const changed = control();
    changed.renamedFirst = true;
    const changedHost = host(changed);
    expect((await retry(id)).status).toBe(200);
    const again = await waitStatus(id, ['failed', 'completed']);
    expect(again).toMatchObject({ status: 'failed', error: { code: 'non_determinism', sequence_num: 2 } });
    expect(enteredBy(changed, id)).toEqual([]);
    const rows = await domainRows(id);
    expect(rows.partner_dossiers).toHaveLength(1);
    expect(rows.economics_models).toHaveLength(0);
    await changedHost.stop();

    fixed.failing.clear();
    host(fixed);
    const res = await retry(id);
    expect(res.status, res.text).toBe(200);
    expect(res.json.retries.map((r: { error: { code: string } }) => r.error.code)).toEqual(['test_permanent', 'non_determinism']);
    expect((await waitStatus(id, ['completed', 'failed'])).status).toBe('completed');
    expect(enteredBy(fixed, id)).toEqual([1, 2, 2, 3, 4]);
  });

  /**
   * A class B run waiting on its approval, with its SLA timer in the timers queue and a copy of it in
   * the golden-path queue (where a release before ADR 0015 put it); then a job of the run delivered to
   * code changed in place (`onFailed` wrapped by `wrap`, if given), which fails it for non-determinism
   * at the step it waits at: the executor records the failure on that step's checkpoint, which keeps its output.
   */
  async function waitingRunFailedByChange(wrap?: (onFailed: NonNullable<WorkflowDef['onFailed']>) => WorkflowDef['onFailed']) {
    const first = host(control());
    const id = await submit(SAMPLE_SUBMISSION); // class B: waits for a human at step 3
    expect((await waitStatus(id, ['waiting', 'failed'])).status).toBe('waiting');
    await first.stop();
    const timers = stack.container.queues.get(TIMER_QUEUE)!;
    const timer = await timers.getJob(namedJobId('gp', (await runRow(id)).idempotency_hash, 'sla'));
    expect(await timer?.getState()).toBe('delayed');
    await queue().add(timer!.name, timer!.data, { jobId: timer!.id!, delay: 3_600_000 });
    await queue().remove(await jobIdOf(id, 1));
    const changed = control();
    changed.renamedFirst = true;
    const h = host(changed, wrap);
    const run = (await stack.db.admin(`select id, tenant_id, workflow, workflow_version, idempotency_hash, correlation_id, traceparent, retry_count from durable_runs where id = $1`, [id])).rows[0];
    await stack.container.runtime.enqueue(run, 1);
    return { id, timerId: timer!.id!, timers, host: h };
  }

  it('a run that failed after its waiting step had committed: its approval request is withdrawn with it, its SLA timer removed from both queues after the commit; a retry answers 409 run_not_retryable, nothing changes', { timeout: LONG }, async () => {
    const { id, timerId, timers } = await waitingRunFailedByChange();
    expect(await waitStatus(id, ['failed'])).toMatchObject({ error: { code: 'non_determinism', sequence_num: 3 } });
    // Its SLA timer has nothing left to time: removed after the failure's commit, from the timers
    // queue and from the golden-path queue (as a cancel removes it), not left to fire as a no-op.
    await waitFor(async () => (await timers.getJobState(timerId)) === 'unknown' && (await queue().getJobState(timerId)) === 'unknown', { timeoutMs: 10_000, what: 'the SLA timer to be removed from both queues' });
    // Its approval request, which no one may decide any more, closed with the run (withdrawn, in the
    // failure's transaction): approvers no longer see it among the pending ones.
    const [request] = (await stack.db.admin(`select a.id, a.status, a.decided_at, r.completed_at from approval_requests a join durable_runs r on r.id = a.run_id where a.run_id = $1`, [id])).rows;
    expect(request).toMatchObject({ status: 'withdrawn', decided_at: request.completed_at });
    const pending = await api(stack, 'GET', '/api/v1/approvals?status=pending&limit=100', { token: tok.approver! });
    expect(pending.status, pending.text).toBe(200);
    expect(pending.json.items.map((i: { id: string }) => i.id)).not.toContain(request.id);
    expect((await api(stack, 'GET', `/api/v1/approvals/${request.id}`, { token: tok.approver! })).json.status).toBe('withdrawn');
    const before = { run: await runRow(id), checkpoints: await checkpointsOf(id), rows: await domainRows(id) };
    expect(before.checkpoints[2]).toMatchObject({ sequence_num: 3, status: 'failed', has_output: true });

    const res = await retry(id);
    expect(res.status, res.text).toBe(409);
    expect(res.json).toMatchObject({ code: 'run_not_retryable', run_status: 'failed' });
    expect(res.json.detail).toContain('step 3 (approval-packet)');
    expect({ run: await runRow(id), checkpoints: await checkpointsOf(id), rows: await domainRows(id) }).toEqual(before);
  });
  it("a waiting run whose failure's transaction rolls back (the hook met the database timing out): it still waits, its request still pending, and its SLA timer stays in both queues", { timeout: LONG }, async () => {
    // The hook closes the request and hands back the timer's removal; then its next statement meets a
    // statement timeout (the database too busy: 57014), which rolls the whole failure back — unlike a
    // hook's own error, which is rolled back alone (the test below). What the hook handed back is
    // checked out here: an assertion in the hook would only roll it back.
    let handed: unknown = 'the hook did not run';
    const { id, timerId, timers } = await waitingRunFailedByChange((onFailed) => async (em, run) => {
      const release = await onFailed(em, run);
      handed = release;
      await em.execute(`select set_config('statement_timeout', '1', true)`);
      await em.execute(`select pg_sleep(0.5)`);
      return release;
    });
    // The job ends once markFailed has returned, after what would run after a commit.
    await waitFor(async () => (await queue().getJobState(await jobIdOf(id, 1))) === 'failed', { timeoutMs: 60_000, what: "the run's job to fail" });
    // A removal was there to run, and was not run.
    expect(handed).toEqual(expect.any(Function));
    expect((await runRow(id)).status).toBe('waiting');
    expect((await stack.db.admin(`select status from approval_requests where run_id = $1`, [id])).rows).toEqual([{ status: 'pending' }]);
    expect(await timers.getJobState(timerId)).toBe('delayed');
    expect(await queue().getJobState(timerId)).toBe('delayed');
  });
  it("a waiting run whose onFailed always throws (a bug of the hook's, or a statement it sends refused): the run still fails, the hook's error recorded; its request stays pending, a decision answers 409 run_not_active, and its SLA timer ends as a no-op at the deadline", { timeout: LONG }, async () => {
    let hooks = 0;
    // The hook's own statement refused (a held one, sent with its savepoint's release): its writes roll back alone.
    const { id, timerId, timers } = await waitingRunFailedByChange((onFailed) => async (em, run) => {
      hooks++;
      await onFailed(em, run);
      await em.execute(`${DEFER_UNTIL_NEXT}select 1 / 0`);
      return undefined;
    });
    const failed = await waitStatus(id, ['failed']);
    expect(failed).toMatchObject({ error: { code: 'non_determinism', sequence_num: 3, on_failed_error: { code: 'database_error', message: expect.stringContaining('SQLSTATE 22012') } } });
    await waitFor(async () => (await queue().getJobState(await jobIdOf(id, 1))) === 'failed', { timeoutMs: 60_000, what: "the run's job to fail" });
    expect(hooks).toBe(1);
    // What the hook would have closed stays as it was: the request pending (until its deadline), the SLA timer in both queues.
    const [request] = (await stack.db.admin(`select id, status from approval_requests where run_id = $1`, [id])).rows;
    expect(request.status).toBe('pending');
    expect((await api(stack, 'GET', `/api/v1/approvals/${request.id}`, { token: tok.approver! })).json.status).toBe('pending');
    expect(await timers.getJobState(timerId)).toBe('delayed');
    // No one can decide it: the run no longer waits.
    const decided = await api(stack, 'POST', `/api/v1/approvals/${request.id}/decision`, { token: tok.approver!, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(decided.status, decided.text).toBe(409);
    expect(decided.json).toMatchObject({ code: 'run_not_active', run_status: 'failed' });
    // Nor does a retry carry it on: as for any run that failed at the step it waited at.
    const retried = await retry(id);
    expect(retried.status, retried.text).toBe(409);
    expect(retried.json).toMatchObject({ code: 'run_not_retryable' });
    // Its deadline passes (moved to the past here): the request reads expired, and the timer that fires then changes nothing.
    await stack.db.admin(`update approval_requests set sla_deadline = now() - interval '1 second' where id = $1`, [request.id]);
    expect((await api(stack, 'GET', `/api/v1/approvals/${request.id}`, { token: tok.approver! })).json.status).toBe('expired');
    await (await timers.getJob(timerId))!.promote();
    const fired = await waitFor(async () => ((await timers.getJobState(timerId)) === 'completed' ? timers.getJob(timerId) : undefined), { timeoutMs: 30_000, what: 'the timer left behind to fire' });
    expect(fired!.returnvalue).toEqual({ outcome: 'not_pending' });
    expect((await runRow(id)).status).toBe('failed');
    expect((await stack.db.admin(`select status from approval_requests where run_id = $1`, [id])).rows).toEqual([{ status: 'pending' }]);
  });
  it('a waiting run that fails for good while Redis refuses its timer\'s removal: the run still fails and its request is withdrawn; the timer left behind fires as a no-op', { timeout: LONG }, async () => {
    const { id, timerId, timers } = await waitingRunFailedByChange((onFailed) => async (em, run) => {
      await onFailed(em, run);
      return async () => {
        throw new Error('Redis unreachable');
      };
    });
    expect(await waitStatus(id, ['failed'])).toMatchObject({ error: { code: 'non_determinism', sequence_num: 3 } });
    await waitFor(async () => (await queue().getJobState(await jobIdOf(id, 1))) === 'failed', { timeoutMs: 60_000, what: "the run's job to fail" });
    expect((await stack.db.admin(`select status from approval_requests where run_id = $1`, [id])).rows).toEqual([{ status: 'withdrawn' }]);
    // The timer the failure could not remove comes due (promoted here) and changes nothing.
    await (await timers.getJob(timerId))!.promote();
    const fired = await waitFor(async () => ((await timers.getJobState(timerId)) === 'completed' ? timers.getJob(timerId) : undefined), { timeoutMs: 30_000, what: 'the timer left behind to fire' });
    expect(fired!.returnvalue).toEqual({ outcome: 'not_pending' });
    expect((await runRow(id)).status).toBe('failed');
    expect((await stack.db.admin(`select status from approval_requests where run_id = $1`, [id])).rows).toEqual([{ status: 'withdrawn' }]);
  });
  it('a class B run approved by a human whose last step then failed for good: retried, only the last step runs again; the decision and its request stay as they were', { timeout: LONG }, async () => {
    const ctl = control([4]);
    host(ctl);
    const id = await submit(SAMPLE_SUBMISSION); // class B: waits for a human at step 3
    expect((await waitStatus(id, ['waiting', 'failed'])).status).toBe('waiting');
    const [request] = (await stack.db.admin(`select id from approval_requests where run_id = $1`, [id])).rows;
    const decided = await api(stack, 'POST', `/api/v1/approvals/${request.id}/decision`, { token: tok.approver!, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(decided.status, decided.text).toBe(200);
    expect(await waitStatus(id, ['failed', 'completed'])).toMatchObject({ status: 'failed', error: { code: 'test_permanent', sequence_num: 4 } });
    const before = { checkpoints: await checkpointsOf(id), rows: await domainRows(id) };
    expect(before.checkpoints.map((c) => [c.sequence_num, c.status])).toEqual([[1, 'completed'], [2, 'completed'], [3, 'completed'], [4, 'failed']]);
    const decisionRows = async () => (await stack.db.admin(`select a.status, a.decided_at, d.id as decision_id from approval_requests a join approval_decisions d on d.approval_request_id = a.id where a.run_id = $1`, [id])).rows;
    const decisionsBefore = await decisionRows();
    expect(decisionsBefore).toHaveLength(1);

    ctl.failing.clear();
    const res = await retry(id);
    expect(res.status, res.text).toBe(200);
    expect(res.json).toMatchObject({ status: 'running', progress: { completed_steps: 3, current_sequence_num: 4 } });
    expect((await waitStatus(id, ['completed', 'failed'])).status).toBe('completed');
    const after = { checkpoints: await checkpointsOf(id), rows: await domainRows(id) };
    expect(after.checkpoints.slice(0, 3)).toEqual(before.checkpoints.slice(0, 3));
    for (const table of ['partner_dossiers', 'economics_models', 'approval_requests']) expect(after.rows[table], table).toEqual(before.rows[table]);
    expect(after.rows.evidence_packs).toHaveLength(1);
    expect(await decisionRows()).toEqual(decisionsBefore);
    // Steps 1-3 entered once each (3 up to its wait), step 4 twice: the failed attempt and the retry's.
    expect(enteredBy(ctl, id).filter((seq) => seq === 4)).toHaveLength(2);
    expect(enteredBy(ctl, id).filter((seq) => seq < 3)).toEqual([1, 2]);
  });
  it("a job of the failed generation still inside its step when the run is retried: its failure for good does not fail the retried run", { timeout: LONG }, async () => {
    const ctl = control([2]);
    const held = barrier();
    ctl.hold = { seq: 2, at: held };
    host(ctl);
    const id = await submit();
    await held.inside; // the run's first job, in step 2, read the run before any retry
    ctl.hold = undefined;
    // A duplicate job of the same generation (as a stalled job's re-delivery would be) fails step 2 for good: the run fails.
    const row = (await stack.db.admin(`select id, tenant_id, workflow, workflow_version, idempotency_hash, correlation_id, traceparent, retry_count from durable_runs where id = $1`, [id])).rows[0];
    await stack.container.runtime.enqueue(row, 2);
    host(ctl);
    expect(await waitStatus(id, ['failed'])).toMatchObject({ error: { code: 'test_permanent', sequence_num: 2 } });
    // Retried: the retry's job (the next generation) reaches step 2 and is held there.
    const retriedHeld = barrier();
    ctl.hold = { seq: 2, at: retriedHeld };
    expect((await retry(id)).status).toBe(200);
    await retriedHeld.inside;
    // The first job now fails step 2 for good: it must not fail the retried run.
    held.release();
    await waitFor(async () => ['completed', 'failed'].includes(await jobState(id, 1)), { what: 'the first job to end' });
    expect(await runRow(id)).toMatchObject({ status: 'running', retry_count: 1, error: null });
    ctl.failing.clear();
    ctl.hold = undefined;
    retriedHeld.release();
    expect((await waitStatus(id, ['completed', 'failed'])).status).toBe('completed');
  });

  it("a job of the failed generation released inside its step after the run was retried: it commits nothing and ends superseded; the retry's job completes the run, one checkpoint per step", { timeout: LONG }, async () => {
    // The first job (generation 0) reads the run and enters step 2, where it is held: as a worker whose
    // event loop blocked past its lock while its re-delivery failed the run, and a client retried it.
    const ctl = control();
    const held = barrier();
    ctl.hold = { seq: 2, at: held };
    host(ctl);
    const id = await submit();
    await held.inside;
    ctl.hold = undefined;
    // A re-delivery of the same generation fails step 2 for good: the run fails.
    ctl.failing.add(2);
    const row = (await stack.db.admin(`select id, tenant_id, workflow, workflow_version, idempotency_hash, correlation_id, traceparent, retry_count from durable_runs where id = $1`, [id])).rows[0];
    await stack.container.runtime.enqueue(row, 2);
    host(ctl);
    expect(await waitStatus(id, ['failed'])).toMatchObject({ error: { code: 'test_permanent', sequence_num: 2 } });
    ctl.failing.clear();
    // Retried: the retry's job (generation 1) reaches step 2 and is held there, so the old job goes first.
    const retriedHeld = barrier();
    ctl.hold = { seq: 2, at: retriedHeld };
    try {
      expect((await retry(id)).status).toBe(200);
      await retriedHeld.inside;
      ctl.hold = undefined;
      // The old job goes on: its step 2 succeeds now, and its checkpoint must find the run retried since.
      held.release();
      await waitFor(async () => ['completed', 'failed'].includes(await jobState(id, 1)), { what: 'the first job to end' });
      const first = (await queue().getJob(await jobIdOf(id, 1)))!;
      expect(first.returnvalue?.steps.map((s: { sequence_num: number }) => s.sequence_num)).toEqual([1]);
      expect(await runRow(id)).toMatchObject({ status: 'running', retry_count: 1, error: null });
      expect((await checkpointsOf(id)).map((c) => [c.sequence_num, c.status])).toEqual([[1, 'completed']]);
      expect((await domainRows(id)).economics_models).toHaveLength(0);
    } finally {
      held.release();
      retriedHeld.release();
    }
    expect((await waitStatus(id, ['completed', 'failed'])).status).toBe('completed');
    expect((await checkpointsOf(id)).map((c) => [c.sequence_num, c.status])).toEqual([[1, 'completed'], [2, 'completed'], [3, 'completed'], [4, 'completed']]);
    const rows = await domainRows(id);
    for (const table of Object.keys(rows)) expect(rows[table], table).toHaveLength(1);
    await waitFor(async () => (await jobState(id, 1, 1)) === 'completed', { what: "the retry's job to complete" });
    const carried = (await queue().getJob(await jobIdOf(id, 1, 1)))!;
    expect(carried.returnvalue.steps.map((s: { sequence_num: number; replayed: boolean }) => [s.sequence_num, s.replayed])).toEqual([[1, true], [2, false], [3, false], [4, false]]);
  });

  it("a retry's history entry is stamped with the database's time, as the API writes every instant", { timeout: LONG }, async () => {
    const ctl = control([2]);
    host(ctl);
    const id = await failedRun(2);
    ctl.failing.clear();
    const dbNow = async () => (await stack.db.admin(`select now() as now`)).rows[0].now as Date;
    const before = await dbNow();
    // The API's clock ten minutes behind the database's (this process's Date only; its timers run as ever).
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() - 10 * 60_000 });
    let res: Awaited<ReturnType<typeof retry>>;
    try {
      res = await retry(id);
    } finally {
      vi.useRealTimers();
    }
    expect(res.status, res.text).toBe(200);
    const after = await dbNow();
    const stamped = (await runRow(id)).retry_history![0].retried_at as string;
    expect(stamped).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    expect(res.json.retries[0].retried_at).toBe(stamped);
    // Milliseconds, down: the stamp may be up to 1 ms before the transaction's exact now().
    expect(new Date(stamped).getTime()).toBeGreaterThanOrEqual(Math.floor(before.getTime()));
    expect(new Date(stamped).getTime()).toBeLessThanOrEqual(after.getTime());
    expect((await waitStatus(id, ['completed', 'failed'])).status).toBe('completed');
  });

  it("a retry that waited for the run's lock while its failure committed: retried_at is not before the failure it retries (failed_at), nor the run's updated_at", { timeout: LONG }, async () => {
    const ctl = control([2]);
    host(ctl);
    const id = await failedRun(2);
    ctl.failing.clear();
    // The run's row held as a failure's transaction holds it (markFailed, `complete`): the retry's
    // transaction starts and waits for it; the failure then commits, its end stamped at its statement's time.
    const lock = await holdRows(stack, 'select 1 from durable_runs where id = $1 for update', [id]);
    let res: Awaited<ReturnType<typeof retry>>;
    try {
      const pending = retry(id);
      await lock.waitedFor('the retry to wait for the run');
      await lock.client.query(`update durable_runs set completed_at = clock_timestamp(), updated_at = clock_timestamp() where id = $1`, [id]);
      await lock.release();
      res = await pending;
    } finally {
      await lock.close();
    }
    expect(res.status, res.text).toBe(200);
    const entry = res.json.retries[0] as { retried_at: string; failed_at: string };
    // Before the fix, the retry's transaction's start (now()): before the failure it followed.
    expect(new Date(entry.retried_at).getTime()).toBeGreaterThanOrEqual(new Date(entry.failed_at).getTime());
    expect(new Date(res.json.updated_at).getTime()).toBeGreaterThanOrEqual(new Date(entry.failed_at).getTime());
    expect((await waitStatus(id, ['completed', 'failed'])).status).toBe('completed');
  });

  /** A class B policy whose SLA is `slaB` seconds. */
  const slaPolicy = (slaB: number) => ({ class_a_max_cost: 50000, class_a_max_payback_months: 6, class_c_min_cost: 250000, class_c_min_payback_months: 24, sla_b_seconds: slaB, sla_c_seconds: 60 });

  /**
   * A class B run of a tenant of its own (class B SLA `slaB` seconds) whose step 3 opened its request
   * and scheduled its timer, then failed for good: the request rolled back with the step, the timer
   * (in Redis) stayed. The host stays up, step 3 failing until `failingAfter` is cleared.
   */
  async function failedAfterScheduling(slaB: number) {
    const t = newTenant();
    const submitter = await stack.token({ tenantId: t, sub: 'submitter-1' });
    expect((await setPolicy(stack, t, slaPolicy(slaB))).status).toBe(200);
    const failingAfter = new Set([3]);
    host({ ...control(), failingAfter });
    const sub = await api(stack, 'POST', '/api/v1/golden-path/run', { token: submitter, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } }); // class B
    expect(sub.status, sub.text).toBe(202);
    const id = sub.json.run_id as string;
    const statusOf = async () => (await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: submitter })).json;
    expect(await waitFor(async () => ((await statusOf())?.status === 'failed' ? statusOf() : undefined), { timeoutMs: 60_000, what: 'the run to fail at step 3' })).toMatchObject({ error: { sequence_num: 3 } });
    expect((await domainRows(id)).approval_requests).toHaveLength(0);
    const timerId = namedJobId('gp', (await runRow(id)).idempotency_hash, 'sla');
    return { t, submitter, failingAfter, id, statusOf, timerId, timers: stack.container.queues.get(TIMER_QUEUE)! };
  }

  it("a run retried after its approval step had scheduled an SLA timer that has since fired: the retry's request gets a timer of its own and expires at its deadline, no sweeper needed", { timeout: LONG }, async () => {
    // A tenant of its own whose class B SLA is one second, so the first timer fires within the test:
    // step 3 opened its request and scheduled its timer, then failed for good; the request rolled
    // back with the step, the timer (in Redis) stayed, fired at its deadline and found nothing to expire.
    const { t, submitter, failingAfter, id, statusOf, timerId, timers } = await failedAfterScheduling(1);
    const spent = await waitFor(async () => ((await timers.getJobState(timerId)) === 'completed' ? timers.getJob(timerId) : undefined), { timeoutMs: 60_000, what: 'the first timer to fire' });
    expect(spent!.returnvalue).toEqual({ outcome: 'not_pending' });

    // Fixed and retried, with a two-second SLA this time (longer: a second admin approves it): the run waits on a new request.
    failingAfter.clear();
    expect((await setPolicy(stack, t, slaPolicy(2))).status).toBe(200);
    const res = await api(stack, 'POST', retryPath(id), { token: submitter, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status, res.text).toBe(200);
    await waitFor(async () => (await statusOf())?.status !== 'running' && (await statusOf())?.status !== 'pending', { timeoutMs: 60_000, what: 'the retried run to wait' });
    const [request] = (await stack.db.admin(`select sla_deadline from approval_requests where run_id = $1`, [id])).rows;
    // The timer under the run's SLA id is the new request's (its deadline), not the spent one kept in
    // the completed set: adding a job under an id BullMQ still keeps is a silent no-op.
    const timer = await timers.getJob(timerId);
    expect(timer?.data.deadline).toBe(new Date(request.sla_deadline).toISOString());
    // No sweeper runs here: the run expires by its own timer.
    const expired = await waitFor(async () => {
      const r = await statusOf();
      return r?.status !== 'waiting' ? r : undefined;
    }, { timeoutMs: 60_000, what: 'the retried run to expire' });
    expect(expired.status).toBe('approval_expired');
    expect((await stack.db.admin(`select status from approval_requests where run_id = $1`, [id])).rows).toEqual([{ status: 'expired' }]);
  });

  it("a run retried while the timer its failed approval step scheduled still waits, due before the retry's deadline: the timer keeps its earlier deadline, fires early as not_due without expiring the new request, and waits for the request's own deadline", { timeout: LONG }, async () => {
    // An hour's SLA for the failed attempt, two for the retry's request: the old timer is due first.
    // Its request rolled back with the step; its timer stayed, an hour out (no request was open for the failure to remove it with).
    const { t, submitter, failingAfter, id, statusOf, timerId, timers } = await failedAfterScheduling(3600);
    const approver = await stack.token({ tenantId: t, sub: 'approver-1', roles: ['approver'] });
    const dueAt = async () => Math.floor(Number(await stack.redis.zscore(timers.keys.delayed!, timerId)) / 0x1000);
    const stale = (await timers.getJob(timerId))!;
    expect(await stale.getState()).toBe('delayed');
    const d1 = Date.parse(stale.data.deadline as string);

    // Fixed and retried under a two-hour SLA: the new request's deadline is later than the timer's.
    failingAfter.clear();
    expect((await setPolicy(stack, t, slaPolicy(7200))).status).toBe(200);
    const res = await api(stack, 'POST', retryPath(id), { token: submitter, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status, res.text).toBe(200);
    await waitFor(async () => (await statusOf())?.status === 'waiting', { timeoutMs: 60_000, what: 'the retried run to wait' });
    const [request] = (await stack.db.admin(`select id, sla_deadline from approval_requests where run_id = $1`, [id])).rows;
    const d2 = new Date(request.sla_deadline).getTime();
    expect(d2).toBeGreaterThan(d1);
    // A schedule moves a waiting timer only to an earlier deadline: it is still the failed attempt's.
    const timer = (await timers.getJob(timerId))!;
    expect(await timer.getState()).toBe('delayed');
    expect(Date.parse(timer.data.deadline as string)).toBe(d1);
    expect(await dueAt()).toBe(d1);

    // It comes due (promoted here, an hour early): the request's stored deadline has not passed, so
    // the timer expires nothing and puts itself off to that deadline.
    await timer.promote();
    const fired = await waitFor(
      async () => {
        const state = await timers.getJobState(timerId);
        return state === 'completed' || state === 'failed' || (state === 'delayed' && (await dueAt()) !== d1) ? state : undefined;
      },
      { timeoutMs: 60_000, what: 'the timer to fire' },
    );
    expect(fired).toBe('delayed');
    expect(await dueAt()).toBe(d2);
    expect((await stack.db.admin(`select status, decided_at from approval_requests where run_id = $1`, [id])).rows).toEqual([{ status: 'pending', decided_at: null }]);
    expect((await statusOf()).status).toBe('waiting');
    // The request is still the approver's to decide, and the run completes.
    const d = await api(stack, 'POST', `/api/v1/approvals/${request.id}/decision`, { token: approver, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(d.status, d.text).toBe(200);
    expect(d.json.status).toBe('approved');
    expect((await waitFor(async () => ((await statusOf())?.status !== 'running' && (await statusOf())?.status !== 'waiting' ? statusOf() : undefined), { timeoutMs: 60_000, what: 'the approved run to end' })).status).toBe('completed');
  });
});
