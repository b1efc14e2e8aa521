/**
 * A step that fails by itself (docs/runtime.md, "Failures"), in a real worker process
 * (test/helpers/test-worker.ts, GP_SLOW_FAIL): a permanent error fails the run at once; a retryable
 * one is retried under the step's own policy and fails the run on the step's last attempt. The run is
 * read under its tenant (RLS in force), the job from BullMQ, the step's executions from the worker's log.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { startStack, newTenant, type TestStack, type WorkerHandle } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { slowWorkflow, SLOW_WORKFLOW, STEP_ENTERED } from '../helpers/slow-workflow.ts';
import { SLOW_STEPS, createSlowRun, enteredThroughLast, expectEveryStepOnce, jobOf, killLiveWorkers, logged, waitRun } from '../helpers/recovery.ts';
import { STEP_BACKOFF } from '../../src/platform/durable/workflow.ts';
import type { RunRow } from '../../src/platform/durable/runtime.ts';
import { ATTR } from '../../src/platform/telemetry/attributes.ts';
import { TELEMETRY_REGISTER } from '../helpers/api-process.ts';
import { startOtlpReceiver } from '../helpers/otlp-receiver.ts';

const TEST_WORKER = 'test/helpers/test-worker.ts';
/** Every step's policy: three attempts, short backoff (the API's definition and the worker's agree). */
const RETRY = { attempts: 3, backoffMs: 100, jitter: 0.5 };
const FAILED_FOR_GOOD = 'step failed for good; the run fails';
const LOST_RACE = 'another execution checkpointed this step first; going on from what it stored';
const UNIQUE_VIOLATED = "the step's transaction violated a unique key; reading the run to tell a race lost to another execution from the step's own violation";
const OWN_VIOLATION = "no other execution committed the step: the unique violation was the step's own, and it fails as any error does";

let stack: TestStack;
beforeAll(async () => {
  stack = await startStack({ api: false, workerEntry: TEST_WORKER, extraWorkflows: [slowWorkflow({ retry: RETRY })] });
});
afterEach(async () => killLiveWorkers(stack));
afterAll(async () => stack?.stop());

/** A worker whose step fails as `fail` says (GP_SLOW_FAIL), and a run it carries until the run ends. */
async function runToTheEnd(fail: string, env: Record<string, string> = {}) {
  const tenant = newTenant();
  const w = await stack.spawnWorker({ GP_SLOW_FAIL: fail, GP_SLOW_RETRY: JSON.stringify(RETRY), ...env });
  const run = await createSlowRun(stack, tenant, { enqueue: true });
  return { w, run, ended: await waitRun(stack, tenant, run.id, ['failed', 'completed'], 30_000) };
}

/** The attempts at which this worker entered step `seq` of the run (its log lines). */
const attemptsAt = (w: WorkerHandle, runId: string, seq: number) => logged(w, runId, STEP_ENTERED).flatMap((j) => (j.sequence_num === seq ? [j.attempt] : []));

/** The worker's log once it says the run failed: every line it wrote before is in it too. */
async function failedLog(w: WorkerHandle, runId: string): Promise<void> {
  await waitFor(() => logged(w, runId, FAILED_FOR_GOOD).length > 0, { timeoutMs: 30_000, what: "the worker's log line for the failed run" });
}

/**
 * The run's job once BullMQ has ended it (`failed` for good, or `completed`): the run's end commits
 * before the job's processor returns, so a job read when the run reads ended can still be active.
 */
async function endedJob(run: RunRow, state: 'failed' | 'completed' = 'failed') {
  return waitFor(async () => {
    const j = await jobOf(stack, run, 1);
    // Read again once ended: a job read before it ended keeps failedReason, finishedOn and attemptsMade as they were.
    return j && (await j.getState()) === state ? jobOf(stack, run, 1) : undefined;
  }, { timeoutMs: 30_000, what: `the job to be ${state}` });
}
const failedJob = (run: RunRow) => endedJob(run, 'failed');

describe('a step that fails by itself', () => {
  it('a permanent error fails the run at once, with its error recorded: the step ran once and the job is not retried', async () => {
    const { w, run, ended: failed } = await runToTheEnd('2:permanent');
    expect(failed.status).toBe('failed');
    expect(failed.error).toMatchObject({ code: 'test_permanent', step: SLOW_STEPS[1], sequence_num: 2 });
    expect(failed.checkpoints.map((c) => [c.sequence_num, c.status, c.attempt])).toEqual([
      [1, 'completed', 1],
      [2, 'failed', 1],
    ]);
    expect(failed.checkpoints[1]!.error).toEqual({ code: 'test_permanent', message: 'step economics-model refused for good (GP_SLOW_FAIL)' });
    // Nothing of the failed step committed, and nothing after it ran.
    expect(failed.counts).toEqual({ partner_dossiers: 1, economics_models: 0, approval_requests: 0, evidence_packs: 0 });

    const job = await failedJob(run);
    expect(job.attemptsMade).toBe(1);
    expect(job.failedReason).toBe('step economics-model refused for good (GP_SLOW_FAIL)');
    await failedLog(w, run.id);
    expect(attemptsAt(w, run.id, 2)).toEqual([1]);
    // BullMQ's own line about the job is one of the run's lines too (found by its run or correlation id).
    const [gaveUp] = await waitFor(() => {
      const l = logged(w, run.id, 'job failed for good');
      return l.length ? l : undefined;
    }, { timeoutMs: 30_000, what: "the worker's 'job failed for good' line of the run" });
    expect(gaveUp).toMatchObject({ job_id: job.id, tenant_id: run.tenant_id, correlation_id: run.correlation_id });
  });

  it('a retryable error that clears on a later attempt: the step is retried, the run completes, and the attempts are recorded', async () => {
    const { w, run, ended: done } = await runToTheEnd('2:retryable:2');
    expect(done.status).toBe('completed');
    expectEveryStepOnce(done);
    // The step's checkpoint says which attempt succeeded; the failed ones left nothing.
    expect(done.checkpoints.map((c) => c.attempt)).toEqual([1, 3, 1, 1]);

    // Completed once its processor returns, after the run's end committed (BullMQ counts the attempt then).
    const job = (await endedJob(run, 'completed'))!;
    expect(job.attemptsMade).toBe(3);
    expect(job.data.failures).toEqual({ 2: 2 });
    expect(job.opts.backoff).toMatchObject({ type: STEP_BACKOFF });
    // Each retry replayed step 1 from its checkpoint and tried step 2 again.
    expect(await enteredThroughLast(w, run.id)).toEqual([1, 2, 2, 2, 3, 4]);
    expect(attemptsAt(w, run.id, 2)).toEqual([1, 2, 3]);
  });

  it('a retryable error on every attempt fails the run after exactly the step\'s configured attempts; the worker counts each failed attempt by outcome', async () => {
    const { w, run, ended: failed } = await runToTheEnd('2:retryable', { WORKER_METRICS_PORT: '0' });
    expect(failed.status).toBe('failed');
    expect(failed.error).toMatchObject({ code: 'Error', message: 'step economics-model failed on attempt 3 (GP_SLOW_FAIL)', step: SLOW_STEPS[1], sequence_num: 2 });
    expect(failed.checkpoints.map((c) => [c.sequence_num, c.status, c.attempt])).toEqual([
      [1, 'completed', 1],
      [2, 'failed', RETRY.attempts],
    ]);

    const job = await failedJob(run);
    // The job had attempts left for the later steps: the step's own budget ended it.
    expect(job.opts.attempts).toBe(RETRY.attempts * SLOW_STEPS.length);
    expect(job.attemptsMade).toBe(RETRY.attempts);
    // A step's own error reaches BullMQ (Bull Board) as it was thrown: its message, its stack.
    expect(job.failedReason).toBe('step economics-model failed on attempt 3 (GP_SLOW_FAIL)');
    expect((job.stacktrace ?? []).join('\n')).toContain('failed on attempt 1 (GP_SLOW_FAIL)');
    await failedLog(w, run.id);
    expect(attemptsAt(w, run.id, 2)).toEqual([1, 2, 3]);
    expect(attemptsAt(w, run.id, 1)).toEqual([1]);

    // An operator alerts on failed attempts before runs fail: two retried, then one for good.
    const port = w.output().split('\n').find((l) => l.includes('"worker metrics listening"'))?.match(/"metrics_port":(\d+)/)?.[1];
    expect(port).toBeDefined();
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const failures = text.split('\n').filter((l) => l.startsWith('dealix_step_failures_total{'));
    expect(failures.sort()).toEqual([
      `dealix_step_failures_total{workflow="${SLOW_WORKFLOW}",step="${SLOW_STEPS[1]}",outcome="failed"} 1`,
      `dealix_step_failures_total{workflow="${SLOW_WORKFLOW}",step="${SLOW_STEPS[1]}",outcome="retrying"} 2`,
    ]);
  });

  it.each([
    ['sent at once', 'unique'],
    ['held until its commit (one message, which group commit may take)', 'unique-held'],
  ])('a step whose own statement (%s) violates a domain unique key fails like any error (retried, then the run fails): it is not taken for a race lost to another execution', async (_how, kind) => {
    const { w, run, ended: failed } = await runToTheEnd(`2:${kind}`);
    expect(failed.status).toBe('failed');
    // The step's own violation is what failed the run (not a failure of the run's read after it).
    expect(failed.error).toMatchObject({ code: 'database_error', step: SLOW_STEPS[1], sequence_num: 2 });
    expect(failed.error.message).toContain('SQLSTATE 23505');
    expect(failed.checkpoints.map((c) => [c.sequence_num, c.status, c.attempt])).toEqual([
      [1, 'completed', 1],
      [2, 'failed', RETRY.attempts],
    ]);
    expect(failed.counts).toEqual({ partner_dossiers: 1, economics_models: 0, approval_requests: 0, evidence_packs: 0 });
    await failedLog(w, run.id);
    // Each attempt ran the step once: the run read again after the violation showed no other execution had committed it.
    expect(attemptsAt(w, run.id, 2)).toEqual([1, 2, 3]);
    // The worker's log tells an operator what happened on each attempt: a violation checked against the
    // stored run and found the step's own, never a race lost to another execution (there was none).
    expect(logged(w, run.id, LOST_RACE)).toEqual([]);
    expect(logged(w, run.id, UNIQUE_VIOLATED).map((j) => j.sequence_num)).toEqual([2, 2, 2]);
    expect(logged(w, run.id, OWN_VIOLATION).map((j) => j.sequence_num)).toEqual([2, 2, 2]);
  });

  it('a step that fails in PostgreSQL records the SQLSTATE, not the database\'s message: clients read the run and the job\'s spans, the worker\'s log keeps the details', async () => {
    const otlp = await startOtlpReceiver();
    onTestFinished(() => otlp.close());
    const telemetry = { NODE_OPTIONS: `--import ${TELEMETRY_REGISTER}`, OTEL_SDK_DISABLED: 'false', OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_BSP_SCHEDULE_DELAY: '100', OTEL_METRICS_EXPORTER: 'none' };
    const { w, run, ended: failed } = await runToTheEnd('2:database', telemetry);
    expect(failed.status).toBe('failed');
    const recorded = {
      code: 'database_error',
      message: "The step failed on a database error (SQLSTATE 22012); the worker's log has its details under this run's id.",
    };
    expect(failed.error).toEqual({ ...recorded, step: SLOW_STEPS[1], sequence_num: 2 });
    expect(failed.checkpoints[1]!.error).toEqual(recorded);
    expect(JSON.stringify(failed)).not.toContain('division by zero');
    await failedLog(w, run.id);
    const [line] = logged(w, run.id, FAILED_FOR_GOOD);
    expect(JSON.stringify(line)).toContain('division by zero');
    // Bull Board shows the job's failedReason and each attempt's stack: the SQLSTATE, as the run records it.
    const job = await failedJob(run);
    expect(job.failedReason).toBe(recorded.message);
    expect(job.stacktrace).toHaveLength(RETRY.attempts);
    expect(JSON.stringify(job.stacktrace)).not.toContain('division by zero');
    // Every span of the job's attempts — the step's, PostgreSQL's, and BullMQ's `process` span with its
    // `job failed` event — goes to the collector, which keeps no values: the SQLSTATE, not the message.
    const spans = await waitFor(() => {
      const traces = new Set(otlp.spans.filter((s) => s.attributes[ATTR.RUN] === run.id).map((s) => s.traceId));
      const mine = otlp.spans.filter((s) => traces.has(s.traceId));
      return mine.filter((s) => s.events.some((e) => e.name === 'job failed')).length === RETRY.attempts ? mine : undefined;
    }, { timeoutMs: 30_000, what: "the spans of the job's three attempts" });
    expect(spans.some((s) => s.status.message?.includes('22012'))).toBe(true);
    expect(JSON.stringify(spans)).not.toContain('division by zero');
    expect(JSON.stringify(spans)).not.toContain('internal detail');
  });
});
