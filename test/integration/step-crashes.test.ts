/**
 * A step that kills its worker process (ADR 0016), with real worker processes (test/helpers/test-worker.ts,
 * the golden path's own steps behind a gate that SIGKILLs the process) and the API in this process:
 * every time → after STEP_MAX_CRASHES crashes the run ends `failed` with `step_crashed_worker`, the
 * sweeper leaves it so, and a retry once the cause is removed completes it; once → the run resumes from
 * its checkpoint and completes; a worker that stays alive while its job's lock lapses (its event loop
 * blocked past WORKER_LOCK_DURATION) → not a crash, however often: the run does not fail, and completes
 * once a worker carries the step through.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Job } from 'bullmq';
import { api, CLASS_A_SUBMISSION, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack, type WorkerHandle } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { killLiveWorkers, logged, stackSweeper } from '../helpers/recovery.ts';
import { stepJobId } from '../../src/platform/queue/job-ids.ts';
import { GOLDEN_PATH_QUEUE } from '../../src/modules/golden-path/golden-path.workflow.ts';

const TEST_WORKER = 'test/helpers/test-worker.ts';
const LONG = 300_000;
const STEPS = ['partner-dossier', 'economics-model', 'approval-packet', 'evidence-pack'];
const MAX_CRASHES = 3;

describe('a step that kills its worker process', () => {
  let stack: TestStack;
  let token: string;
  let approver: string;
  const tenant = newTenant();
  const dir = mkdtempSync(join(tmpdir(), 'dealix-step-crashes-'));
  beforeAll(async () => {
    stack = await startStack({ workerEntry: TEST_WORKER });
    token = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
    approver = await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] });
  }, LONG);
  afterEach(async () => killLiveWorkers(stack));
  afterAll(async () => {
    await stack?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A golden-path worker process whose steps go through test-worker.ts's gate (GP_SLOW_STEP_MS per step). */
  const worker = (steps: string, env: Record<string, string> = {}) => stack.spawnWorker({ GP_GATE_GOLDEN_PATH: '1', GP_SLOW_STEP_MS: steps, STEP_MAX_CRASHES: String(MAX_CRASHES), ...env });
  const dead = (w: WorkerHandle) => w.proc.exitCode !== null || w.proc.signalCode !== null;
  const getRun = async (id: string) => (await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token })).json;
  const ended = async (id: string) => !['pending', 'running'].includes((await getRun(id))?.status);
  const runRow = async (id: string) =>
    (await stack.db.admin(`select status, crash_seq, crash_count, retry_count from durable_runs where id = $1`, [id])).rows[0] as { status: string; crash_seq: number | null; crash_count: number; retry_count: number };
  async function submit(body: unknown = CLASS_A_SUBMISSION): Promise<{ id: string; hash: string }> {
    const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status, res.text).toBe(202);
    const id = res.json.run_id as string;
    const hash = (await stack.db.admin(`select idempotency_hash from durable_runs where id = $1`, [id])).rows[0].idempotency_hash as string;
    return { id, hash };
  }

  /** A class B run (SAMPLE_SUBMISSION) at its approval wait, approved: its run job from step 4 carries it on (a resume). */
  async function approveWaiting(id: string): Promise<void> {
    const waiting = await waitFor(async () => {
      const run = await getRun(id);
      return ['waiting', 'failed', 'completed'].includes(run?.status) ? run : undefined;
    }, { timeoutMs: 60_000, what: `run ${id} to wait for its approval` });
    expect(waiting.status).toBe('waiting');
    const approvalId = waiting.steps[2].output.approval_request_id as string;
    const res = await api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token: approver, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status, res.text).toBe(200);
  }

  /**
   * Keeps one worker process (`spawn`) alive, a new one as soon as the last has died, until the run has
   * ended or `max` have died (a crash loop the code does not stop). Returns how many died, and the one
   * alive at the end, if any. A process may die before its start line (it takes the job at once).
   */
  async function keepAWorker(id: string, spawn: () => Promise<WorkerHandle>, max: number): Promise<{ died: number; alive?: WorkerHandle }> {
    let died = 0;
    while (died < max) {
      const before = stack.workers.length;
      let w: WorkerHandle;
      try {
        w = await spawn();
      } catch (e) {
        // Died before its start line (it took the job at once), told at once: a worker start that timed out is no crash.
        const spawned = stack.workers[before];
        if (!spawned || !dead(spawned) || !/worker exited at start/.test((e as Error).message)) throw e;
        died++;
        continue;
      }
      const outcome = await waitFor(async () => (dead(w) ? 'died' : (await ended(id)) ? 'ended' : undefined), { timeoutMs: 60_000, intervalMs: 100, what: `run ${id} to end or its worker to die` });
      if (outcome === 'ended') return { died, alive: w };
      await w.exited;
      died++;
    }
    return { died };
  }

  it(`every time: after ${MAX_CRASHES} crashes the run fails with step_crashed_worker, the sweeper leaves it failed, and a retry once the cause is removed completes it`, { timeout: LONG }, async () => {
    const { id, hash } = await submit();
    // Step 2 SIGKILLs its worker on every execution; the processes replaced at once, as an orchestrator would.
    const loop = await keepAWorker(id, () => worker('0,kill'), MAX_CRASHES + 3);
    expect(loop.died).toBe(MAX_CRASHES);
    const failed = await getRun(id);
    expect(failed).toMatchObject({ status: 'failed', error: { code: 'step_crashed_worker', step: STEPS[1], sequence_num: 2, crashes: MAX_CRASHES } });
    expect(failed.error.message).toContain(`${MAX_CRASHES} times`);
    expect(failed.steps.map((s: { status: string }) => s.status)).toEqual(['completed', 'failed', 'pending', 'pending']);
    expect(failed.steps[1].error).toMatchObject({ code: 'step_crashed_worker' });
    // The job ended for good (not left to BullMQ's stall limit), failed by the worker that refused to run the step again.
    const job = await waitFor(async () => {
      const j = await Job.fromId(stack.container.queues.get(GOLDEN_PATH_QUEUE)!, stepJobId('gp', hash, 1, STEPS[0]!));
      return (await j?.getState()) === 'failed' ? j : undefined;
    }, { what: 'the run job to fail' });
    expect(job?.failedReason).toContain('lost its worker process');
    expect(job?.stalledCounter).toBe(MAX_CRASHES);
    // Workers write logs in batches: the line may trail the commit.
    await waitFor(() => logged(loop.alive!, id, 'step lost its worker too often: it is not run again, the run fails').length === 1, { what: "the worker's log line" });

    // The recovery sweeper has nothing to re-enqueue: the run is no longer active.
    const sweep = await stackSweeper(stack, 'step-crashes-sweep').sweep();
    expect(sweep.reenqueued).toBe(0);
    expect((await runRow(id)).status).toBe('failed');

    // The cause removed (a worker whose step 2 no longer crashes), the run retried through the API.
    loop.alive!.kill('SIGKILL');
    await loop.alive!.exited;
    await worker('0');
    const res = await api(stack, 'POST', `/api/v1/golden-path/runs/${id}/retry`, { token, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status, res.text).toBe(200);
    expect(res.json).toMatchObject({ status: 'running', error: null, retries: [{ retry: 1, error: { code: 'step_crashed_worker', step: STEPS[1], sequence_num: 2, crashes: MAX_CRASHES } }] });
    // The retry cleared the count: the step gets its STEP_MAX_CRASHES afresh.
    expect(await runRow(id)).toMatchObject({ crash_seq: null, crash_count: 0, retry_count: 1 });
    const done = await waitFor(async () => ((await ended(id)) ? getRun(id) : undefined), { timeoutMs: 60_000, what: 'the retried run to end' });
    expect(done.status).toBe('completed');
    expect(done.steps.map((s: { status: string }) => s.status)).toEqual(['completed', 'completed', 'completed', 'completed']);
  });

  it('once: the run resumes from its checkpoint and completes; the crash is counted, no more', { timeout: LONG }, async () => {
    const { id } = await submit();
    const loop = await keepAWorker(id, () => worker('0,kill-once', { GP_SLOW_KILL_ONCE: join(dir, `${id}.killed`) }), MAX_CRASHES + 3);
    expect(loop.died).toBe(1);
    const done = await getRun(id);
    expect(done.status).toBe('completed');
    expect(done.steps.map((s: { status: string; attempt: number }) => [s.status, s.attempt])).toEqual(STEPS.map(() => ['completed', 1]));
    expect(await runRow(id)).toMatchObject({ crash_seq: 2, crash_count: 1 });
    const counted = await waitFor(() => {
      const lines = logged(loop.alive!, id, 'run job delivered again after its worker was lost mid-step; the step runs again from the last checkpoint');
      return lines.length ? lines : undefined;
    }, { what: "the worker's log line" });
    expect(counted).toMatchObject([{ sequence_num: 2, crashes: 1, max_crashes: MAX_CRASHES }]);
  });

  it(`alive but its lock lapsed, ${MAX_CRASHES + 2} times: not counted as crashes, the run does not fail, and completes once the step goes through`, { timeout: LONG }, async () => {
    const { id, hash } = await submit();
    // Step 2 blocks its worker's event loop past the lock (2 s) on every execution, then never finishes:
    // each delivery's lock lapses while its worker is alive. Two of them, each re-delivered what the other lost.
    const blocking = [await worker('0,block'), await worker('0,block')];
    const job = () => Job.fromId(stack.container.queues.get(GOLDEN_PATH_QUEUE)!, stepJobId('gp', hash, 1, STEPS[0]!));
    const lapses = MAX_CRASHES + 2;
    await waitFor(async () => ((await ended(id)) || ((await job())?.stalledCounter ?? 0) >= lapses + 1 ? true : undefined), {
      timeoutMs: 120_000,
      what: `the run job to stall ${lapses + 1} times`,
    });
    expect(blocking.filter(dead)).toEqual([]);
    // Before: step_crashed_worker at the third lapse. The stall after the last one is delivered, or about to be: the lapses are what is checked.
    const row = await runRow(id);
    expect(row.status).toBe('running');
    expect(row.crash_count).toBe(0);
    const lapsed = await waitFor(() => {
      const lines = blocking.flatMap((w) => logged(w, id, 'run job delivered again after its lock lapsed while its worker was alive: not counted as a crash'));
      return lines.length >= lapses ? lines : undefined;
    }, { what: "the workers' log lines" });
    expect(lapsed[0]).toMatchObject({ sequence_num: 2, crashes: 0 });

    // Its workers gone (SIGKILL: a death, counted once), a worker whose step 2 goes through completes the run.
    await killLiveWorkers(stack);
    await worker('0');
    const done = await waitFor(async () => ((await ended(id)) ? getRun(id) : undefined), { timeoutMs: 60_000, what: 'the run to end' });
    expect(done.status).toBe('completed');
    expect(await runRow(id)).toMatchObject({ crash_seq: 2, crash_count: 1 });
  });

  it('alive when its lock lapsed, dead before the step went through (GC thrash, then the OOM kill), every time: counted, the run fails with step_crashed_worker', { timeout: LONG }, async () => {
    const { id } = await submit();
    // Step 2 blocks its worker's loop for 6 s, past the lock (2 s), then SIGKILLs it, on every execution.
    // Five such workers kept alive (replaced together), so one is idle at each lapse: each re-delivery finds
    // the holder it takes over from still alive (blocked), and holders die afterwards. Before: no crash
    // counted, the loop went on past BullMQ's stall limit, and the sweeper's re-enqueue started it again.
    const max = 4 * MAX_CRASHES;
    const live: WorkerHandle[] = [];
    let died = 0;
    while (died < max && !(await ended(id))) {
      const spawning = Math.min(5 - live.length, max - died);
      const before = stack.workers.length;
      const spawned = await Promise.allSettled(Array.from({ length: spawning }, () => worker('0,block-kill', { GP_SLOW_BLOCK_MS: '6000' })));
      for (const [i, s] of spawned.entries()) {
        if (s.status === 'fulfilled') live.push(s.value);
        // Died before its start line (it took the job at once): a death all the same.
        else if (dead(stack.workers[before + i]!) && /worker exited at start/.test((s.reason as Error).message)) died++;
        else throw s.reason;
      }
      await waitFor(async () => (live.some(dead) || (await ended(id)) ? true : undefined), { timeoutMs: 60_000, intervalMs: 100, what: `run ${id} to end or a worker to die` });
      for (const w of live.filter(dead)) {
        await w.exited;
        live.splice(live.indexOf(w), 1);
        died++;
      }
    }
    const failed = await waitFor(async () => ((await ended(id)) ? getRun(id) : undefined), { timeoutMs: 60_000, what: `run ${id} to end (${died} workers died)` });
    expect(failed).toMatchObject({ status: 'failed', error: { code: 'step_crashed_worker', step: STEPS[1], sequence_num: 2, crashes: MAX_CRASHES } });
  });

  it('resumed after its approval, alive but its lock lapsed: not counted; its workers SIGKILLed: counted, and the run completes', { timeout: LONG }, async () => {
    const { id, hash } = await submit(SAMPLE_SUBMISSION);
    // Steps 1-3 go through; step 4, the first after the wait, blocks its worker's loop past the lock on
    // every execution, then never finishes. Two such workers, each re-delivered what the other lost.
    const blocking = [await worker('0,0,0,block'), await worker('0,0,0,block')];
    await approveWaiting(id);
    const job = () => Job.fromId(stack.container.queues.get(GOLDEN_PATH_QUEUE)!, stepJobId('gp', hash, 4, STEPS[3]!));
    await waitFor(async () => ((await ended(id)) || ((await job())?.stalledCounter ?? 0) >= 2 ? true : undefined), {
      timeoutMs: 120_000,
      what: 'the resumed run job to stall twice',
    });
    expect(blocking.filter(dead)).toEqual([]);
    // Before: the resumed run had no holder on record (the wait cleared it), so its first lapse counted.
    expect(await runRow(id)).toMatchObject({ status: 'running', crash_count: 0 });
    const lapsed = await waitFor(() => {
      const lines = blocking.flatMap((w) => logged(w, id, 'run job delivered again after its lock lapsed while its worker was alive: not counted as a crash'));
      return lines.length ? lines : undefined;
    }, { what: "the workers' log lines" });
    expect(lapsed[0]).toMatchObject({ sequence_num: 4, crashes: 0, holder: expect.any(String) });

    // Its workers gone (SIGKILL: a death, counted once), a worker whose step 4 goes through completes the run.
    await killLiveWorkers(stack);
    await worker('0');
    const done = await waitFor(async () => ((await ended(id)) ? getRun(id) : undefined), { timeoutMs: 60_000, what: 'the run to end' });
    expect(done.status).toBe('completed');
    expect(await runRow(id)).toMatchObject({ crash_seq: 4, crash_count: 1 });
  });

  it('resumed after its approval, its worker SIGKILLed in the next step: counted against the holder the resume named, and the run completes', { timeout: LONG }, async () => {
    const { id } = await submit(SAMPLE_SUBMISSION);
    const first = await worker('0,0,0,kill-once', { GP_SLOW_KILL_ONCE: join(dir, `${id}.killed`) });
    await approveWaiting(id);
    await waitFor(() => dead(first), { timeoutMs: 60_000, what: 'the worker that took the resumed job to die in its step' });
    const next = await worker('0');
    const done = await waitFor(async () => ((await ended(id)) ? getRun(id) : undefined), { timeoutMs: 60_000, what: 'the run to end' });
    expect(done.status).toBe('completed');
    expect(await runRow(id)).toMatchObject({ crash_seq: 4, crash_count: 1 });
    const counted = await waitFor(() => {
      const lines = logged(next, id, 'run job delivered again after its worker was lost mid-step; the step runs again from the last checkpoint');
      return lines.length ? lines : undefined;
    }, { what: "the worker's log line" });
    // The holder is the worker that took the resumed job (before: none on record, counted all the same).
    expect(counted).toMatchObject([{ sequence_num: 4, crashes: 1, holder: expect.stringMatching(/./) }]);
  });
});
