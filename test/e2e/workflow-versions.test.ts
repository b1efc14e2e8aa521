/**
 * Several versions of one workflow name, over HTTP against real worker processes
 * (test/helpers/test-worker.ts with GP_VERSIONS: version 2 is version 1 plus a closing step, and its
 * runs' output says `definition: <name>@v2`). A run is carried on by exactly the version it started
 * with — after a crash, after a human decision, after the sweeper re-enqueues it — and a worker that
 * does not register that version never fails it: it puts the job off for one that does (ADR 0008).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { createApp } from '../../src/app.ts';
import { createContainer, type Container } from '../../src/container.ts';
import { namedJobId, stepJobId } from '../../src/platform/queue/job-ids.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';
import { api, CLASS_A_SUBMISSION, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack, type WorkerHandle } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { jsonLines } from '../helpers/api-process.ts';
import { slowWorkflow } from '../helpers/slow-workflow.ts';
import { createSlowRun, enteredThroughLast, expectEveryStepOnce, killLiveWorkers, stopForWholeLog, waitEntered, waitRun } from '../helpers/recovery.ts';
import { CLOSING_STEP, withVersions } from '../helpers/versioned-workflows.ts';

const TEST_WORKER = 'test/helpers/test-worker.ts';
const LONG = 240_000;
const V1_STEPS = ['partner-dossier', 'economics-model', 'approval-packet', 'evidence-pack'];
const DEFERRED = 'run of a workflow version this worker does not register: job put off for a worker that does';
const TIMER_DEFERRED = 'SLA timer of a workflow version this worker does not register: put off for a worker that does';
const SWEEP_SKIPPED = 'incomplete runs of workflow versions this worker does not register: left to workers that do';

let stack: TestStack;
const tenant = newTenant();
const tok: Record<string, string> = {};
const apis: Array<{ container: Container; server: Server }> = [];

/** Another API process of the same stack (database, Redis prefix) whose code registers these golden-path versions: a newer or older release. */
async function startApi(versions: number[]): Promise<TestStack> {
  const container = await createContainer(stack.config, { service: 'api', workflows: (fromModules) => withVersions(fromModules, versions) });
  const server = await new Promise<Server>((resolve) => {
    const s = createApp(container).listen(0, '127.0.0.1', () => resolve(s));
  });
  apis.push({ container, server });
  return { ...stack, container, baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

async function submit(body: unknown, via: TestStack = stack) {
  const res = await api(via, 'POST', '/api/v1/golden-path/run', { token: tok.submitter!, body, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status).toBe(202);
  return res.json.run_id as string;
}
async function runOf(id: string, via: TestStack = stack) {
  return (await api(via, 'GET', `/api/v1/golden-path/runs/${id}`, { token: tok.submitter! })).json;
}
async function waitStatus(id: string, statuses: string[], via: TestStack = stack) {
  return waitFor(
    async () => {
      const r = await runOf(id, via);
      return statuses.includes(r?.status) ? r : undefined;
    },
    { timeoutMs: 180_000, intervalMs: 200, what: `run ${id} to reach ${statuses.join('|')}` },
  );
}
/** The run's stored checkpoints (name, status), read as the owner: which definition's steps ran. */
async function checkpointsOf(runId: string): Promise<Array<[string, string]>> {
  const { rows } = await stack.db.admin(`select step_name, status from durable_checkpoints where run_id = $1 order by sequence_num`, [runId]);
  return rows.map((r: { step_name: string; status: string }) => [r.step_name, r.status]);
}
/** The run job that starts the run (step 1 of version 1), by its deterministic id. */
async function firstJobOf(runId: string) {
  const { rows } = await stack.db.admin(`select idempotency_hash from durable_runs where id = $1`, [runId]);
  const queue = stack.container.queues.get('golden-path')!;
  const id = stepJobId('gp', rows[0].idempotency_hash, 1, V1_STEPS[0]!);
  return { queue, id, job: () => queue.getJob(id) };
}
/** The run's SLA timer in the timers queue (ADR 0015; its id derives from the run's idempotency hash). */
async function slaTimerOf(runId: string) {
  const { rows } = await stack.db.admin(`select idempotency_hash from durable_runs where id = $1`, [runId]);
  const queue = stack.container.queues.get(TIMER_QUEUE)!;
  return { queue, job: () => queue.getJob(namedJobId('gp', rows[0].idempotency_hash, 'sla')) };
}
/** This worker's log lines of one message (about one run, if given). */
const linesOf = (w: WorkerHandle, msg: string, runId?: string) => jsonLines(w.output()).filter((l) => l.msg === msg && (runId === undefined || l.run_id === runId));
/** The value of one Prometheus sample. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/** A v1 run that ended on version 1's definition: v1's steps only, each completed, and no v2 mark in its output. */
async function expectFinishedOnV1(run: any): Promise<void> {
  expect(run).toMatchObject({ status: 'completed', workflow: 'golden-path', workflow_version: 1 });
  expect(await checkpointsOf(run.run_id)).toEqual(V1_STEPS.map((s) => [s, 'completed']));
  expect(run.steps.map((s: { name: string }) => s.name)).toEqual(V1_STEPS);
  expect(run.output).not.toHaveProperty('definition');
  expect(run.output.evidence_pack_id).toEqual(expect.any(String));
}

beforeAll(async () => {
  // The in-process API is the release that knows version 1 only (the modules' golden-path, and gp-slow).
  stack = await startStack({ workerEntry: TEST_WORKER, extraWorkflows: [slowWorkflow()] });
  tok.submitter = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
  tok.approver = await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] });
});
afterEach(async () => killLiveWorkers(stack));
afterAll(async () => {
  for (const { container, server } of apis) {
    await new Promise<void>((r) => server.close(() => r()));
    await container.close();
  }
  await stack?.stop();
});

describe('several versions of one workflow', () => {
  it('v1 runs — one waiting for a human, one killed mid-step — finish on v1 once the workers run v1 and v2; a new submission starts and runs on v2', { timeout: LONG }, async () => {
    const old = await stack.spawnWorker({ GP_VERSIONS: '1', GP_SLOW_STEP_MS: '0,hang' });
    // A class B run waits for its approver at step 3.
    const waitingId = await submit(SAMPLE_SUBMISSION);
    const waiting = await waitStatus(waitingId, ['waiting', 'failed']);
    expect(waiting).toMatchObject({ status: 'waiting', workflow_version: 1 });
    // A gp-slow run (the same steps, gated) is inside its step 2 when its worker dies.
    const slow = await createSlowRun(stack, tenant, { enqueue: true });
    await waitEntered(old, slow.id, 2);
    old.kill('SIGKILL');
    await old.exited;

    // The new release's worker registers both versions; its newest, v2, is the one new runs start on.
    const both = await stack.spawnWorker({ GP_VERSIONS: '1,2', GP_SLOW_STEP_MS: '0' });
    const decide = (via: TestStack) =>
      api(via, 'POST', `/api/v1/approvals/${waiting.steps[2].output.approval_request_id}/decision`, {
        token: tok.approver!,
        body: { decision: 'approve' },
        headers: { 'Idempotency-Key': randomUUID() },
      });
    // An API instance that runs v2 only cannot resume a v1 run: it refuses the decision, records nothing, and says to retry.
    const refused = await decide(await startApi([2]));
    expect(refused.status).toBe(503);
    expect(refused.json).toMatchObject({ code: 'workflow_version_unavailable' });
    expect(refused.headers.get('retry-after')).toBe('5');
    expect(await runOf(waitingId)).toMatchObject({ status: 'waiting' });
    expect((await decide(stack)).status).toBe(200);
    await expectFinishedOnV1(await waitStatus(waitingId, ['completed', 'failed', 'rejected']));
    // The killed run went on from its last checkpoint on v1's steps: no closing step, each step once.
    const slowDone = await waitRun(stack, tenant, slow.id, ['completed', 'failed'], 120_000);
    expect(slowDone.status).toBe('completed');
    expectEveryStepOnce(slowDone);
    expect(await enteredThroughLast(both, slow.id)).toEqual([2, 3, 4]);

    // The new release's API starts new runs on v2, and the worker runs v2's steps for them.
    const newApi = await startApi([1, 2]);
    const freshId = await submit(CLASS_A_SUBMISSION, newApi);
    const fresh = await waitStatus(freshId, ['completed', 'failed'], newApi);
    expect(fresh).toMatchObject({ status: 'completed', workflow_version: 2, output: { definition: 'golden-path@v2' } });
    expect(await checkpointsOf(freshId)).toEqual([...V1_STEPS, CLOSING_STEP].map((s) => [s, 'completed']));
    expect(fresh.steps.map((s: { name: string }) => s.name)).toEqual([...V1_STEPS, CLOSING_STEP]);
    expect(fresh.steps[4].output).toEqual({ definition: 'golden-path@v2', after: V1_STEPS });
  });

  it('a worker with only v2 puts a v1 run off instead of failing it, says so (log, metric, active-runs gauge), and a worker with v1 beside it finishes the run on v1', { timeout: LONG }, async () => {
    // The old release's API starts the run on v1 while no worker runs; then only the new release's worker is up.
    const runId = await submit(CLASS_A_SUBMISSION);
    const newOnly = await stack.spawnWorker({ GP_VERSIONS: '2', WORKER_METRICS_PORT: '0' });
    await waitFor(() => linesOf(newOnly, DEFERRED, runId).length >= 2, { timeoutMs: 60_000, what: 'the v2-only worker to put the v1 run off twice' });
    expect(linesOf(newOnly, DEFERRED, runId)[0]).toMatchObject({ workflow: 'golden-path@v1', registered: expect.arrayContaining(['golden-path@v2']) });
    // Nothing of the run ran, nothing failed it: it is pending, its job delayed with the count of deferrals.
    expect(await runOf(runId)).toMatchObject({ status: 'pending', workflow_version: 1, progress: { completed_steps: 0 } });
    expect(await checkpointsOf(runId)).toEqual([]);
    const first = await firstJobOf(runId);
    expect((await first.job())?.data).toMatchObject({ workflow: 'golden-path', workflow_version: 1 });
    expect((await first.job())?.data.deferrals).toBeGreaterThanOrEqual(2);
    expect(await first.queue.getJobCounts('failed')).toMatchObject({ failed: 0 });

    const port = await waitFor(() => jsonLines(newOnly.output()).find((l) => l.msg === 'worker metrics listening')?.metrics_port, { what: 'the worker metrics port' });
    const workerMetrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(sample(workerMetrics, 'dealix_run_jobs_deferred_total{workflow="golden-path",version="1"}')).toBeGreaterThanOrEqual(2);
    // An API of the new release reports the v1 runs it could not carry on; the old one, the same runs as registered.
    const newApi = await startApi([2]);
    const gauge = async (via: TestStack, registered: boolean) =>
      sample((await api(via, 'GET', '/metrics')).text, `dealix_active_runs{workflow="golden-path",version="1",registered="${registered}"}`);
    expect(await gauge(newApi, false)).toBeGreaterThanOrEqual(1);
    expect(await gauge(stack, true)).toBeGreaterThanOrEqual(1);
    expect(sample((await api(newApi, 'GET', '/metrics')).text, 'dealix_active_runs{workflow="golden-path",version="2",registered="true"}')).toBe(0);

    // The old release's worker comes up beside it: the run's job, once its delay is over, is taken by
    // whichever worker; the v2-only one puts it off again, the v1 one finishes it on v1.
    await stack.spawnWorker({ GP_VERSIONS: '1' });
    await expectFinishedOnV1(await waitStatus(runId, ['completed', 'failed']));
    // The v2-only worker ran no step of it: read once that worker has stopped, its whole log written.
    await stopForWholeLog(newOnly);
    expect(linesOf(newOnly, 'step checkpointed', runId)).toEqual([]);
  });

  it('a v1 run cancelled while only a v2 worker is up: its put-off job ends at its next pick-up instead of cycling forever', { timeout: LONG }, async () => {
    const runId = await submit(CLASS_A_SUBMISSION);
    const newOnly = await stack.spawnWorker({ GP_VERSIONS: '2' });
    await waitFor(() => linesOf(newOnly, DEFERRED, runId).length >= 1, { timeoutMs: 60_000, what: 'the v2-only worker to put the v1 run off' });
    // The submitter cancels it (the old release's API, which registers v1).
    const cancel = await api(stack, 'POST', `/api/v1/golden-path/runs/${runId}/cancel`, { token: tok.submitter!, headers: { 'Idempotency-Key': randomUUID() } });
    expect(cancel.status, cancel.text).toBe(200);
    // Once its delay is over, the v2-only worker takes the job again, finds the run ended, and the job completes.
    const first = await firstJobOf(runId);
    await waitFor(async () => (await first.queue.getJobState(first.id)) === 'completed', { timeoutMs: 60_000, what: 'the put-off job to end' });
    await waitFor(() => linesOf(newOnly, 'run ended while its workflow version was not registered here: job ends', runId).length === 1, { what: 'the worker to say why the job ended' });
    expect(await runOf(runId)).toMatchObject({ status: 'cancelled', workflow_version: 1 });
    expect(await checkpointsOf(runId)).toEqual([]);
  });

  it('a v1 run whose job is gone is left alone by the sweeper of a worker with only v2, and re-enqueued onto v1 by the sweeper of a worker with v1', { timeout: LONG }, async () => {
    const runId = await submit(CLASS_A_SUBMISSION);
    // Redis lost the run's job (as after a crash between commit and enqueue): only a sweeper can bring the run back.
    const first = await firstJobOf(runId);
    await waitFor(async () => (await first.job()) !== undefined, { what: 'the run job' });
    await first.queue.remove(first.id);
    const newOnly = await stack.spawnWorker({ GP_VERSIONS: '2' });
    const skipped = await waitFor(() => linesOf(newOnly, SWEEP_SKIPPED).find((l) => l.unregistered?.['golden-path@v1'] >= 1), {
      timeoutMs: 60_000,
      what: "the v2-only worker's sweeper to skip the v1 run",
    });
    expect(skipped.registered).toEqual(expect.arrayContaining(['golden-path@v2']));
    expect(await first.queue.getJobState(first.id)).toBe('unknown');
    expect(await runOf(runId)).toMatchObject({ status: 'pending', workflow_version: 1 });

    const old = await stack.spawnWorker({ GP_VERSIONS: '1' });
    await expectFinishedOnV1(await waitStatus(runId, ['completed', 'failed']));
    // Its lines are read once the workers have stopped, their whole logs written: a worker writes its log
    // in batches, and the sweeper's line can still be in the v1 worker's buffer when the run reads completed.
    await stopForWholeLog(old);
    await stopForWholeLog(newOnly);
    expect(linesOf(old, 'sweeper re-enqueued run', runId)).toHaveLength(1);
    expect(linesOf(newOnly, 'step checkpointed', runId)).toEqual([]);
  });

  it('an SLA timer that fires in a worker with only v2 for a waiting v1 run is put off, not spent; a worker with v1 then expires the run on v1', { timeout: LONG }, async () => {
    const old = await stack.spawnWorker({ GP_VERSIONS: '1', APPROVAL_SLA_B: '8s' });
    const runId = await submit(SAMPLE_SUBMISSION);
    expect(await waitStatus(runId, ['waiting', 'failed'])).toMatchObject({ status: 'waiting', workflow_version: 1 });
    old.kill('SIGKILL');
    await old.exited;
    const newOnly = await stack.spawnWorker({ GP_VERSIONS: '2', WORKER_METRICS_PORT: '0' });
    // Past the deadline the v2-only worker takes the timer: the expiry needs v1's definition, so the
    // timer goes back to delayed (twice here) without spending an attempt, and nothing of the run moves.
    const timer = await slaTimerOf(runId);
    await waitFor(async () => {
      const job = await timer.job();
      return job && job.attemptsStarted >= 2 && (await job.getState()) === 'delayed';
    }, { timeoutMs: 60_000, what: 'the SLA timer to be put off twice' });
    expect((await timer.job())?.attemptsMade).toBe(0);
    expect(await runOf(runId)).toMatchObject({ status: 'waiting' });
    const { rows } = await stack.db.admin(`select status from approval_requests where run_id = $1`, [runId]);
    expect(rows).toEqual([{ status: 'pending' }]);
    // Said as for a run job: a warning naming the version (waited for: written before the timer went back to
    // delayed, it can still be in the worker's buffer when Redis shows it there), and the deferral counter.
    const warned = await waitFor(() => linesOf(newOnly, TIMER_DEFERRED, runId)[0], { what: "the v2-only worker's line putting the timer off" });
    expect(warned).toMatchObject({ workflow: 'golden-path@v1', registered: expect.arrayContaining(['golden-path@v2']) });
    const port = await waitFor(() => jsonLines(newOnly.output()).find((l) => l.msg === 'worker metrics listening')?.metrics_port, { what: 'the worker metrics port' });
    expect(sample(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text(), 'dealix_run_jobs_deferred_total{workflow="golden-path",version="1"}')).toBeGreaterThanOrEqual(2);

    await stack.spawnWorker({ GP_VERSIONS: '1' });
    const expired = await waitStatus(runId, ['approval_expired', 'completed', 'failed']);
    expect(expired).toMatchObject({ status: 'approval_expired', workflow_version: 1 });
    expect(expired.steps.map((st: { name: string; status: string }) => [st.name, st.status])).toEqual([
      ['partner-dossier', 'completed'],
      ['economics-model', 'completed'],
      ['approval-packet', 'completed'],
      ['evidence-pack', 'pending'],
    ]);
    expect(expired.steps[2].output.outcome).toBe('expired');
    await stopForWholeLog(newOnly);
    expect(linesOf(newOnly, 'step checkpointed', runId)).toEqual([]);
  });
});
