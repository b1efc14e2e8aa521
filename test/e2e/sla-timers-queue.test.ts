/**
 * SLA timers in their own queue (ADR 0015): a timer that comes due is taken by the timers queue's
 * worker, not queued behind the golden-path queue's run jobs; timers an older release left in the
 * golden-path queue still fire there, are still removed by a decision, and count as alive for the sweeper.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { namedJobId } from '../../src/platform/queue/job-ids.ts';
import { stackSweeper } from '../helpers/recovery.ts';

const DEADLINE = { timeoutMs: 60_000, intervalMs: 100 };
const LONG = 180_000;
/** Run jobs queued behind the one the worker is stuck on. */
const BACKLOG = 20;

let stack: TestStack;
const tenant = newTenant();
let submitter: string;
let approver: string;
let runQueue: Queue;
/** The timers queue, by name: the test reads Redis as any release left it. */
let timerQueue: Queue;

beforeAll(async () => {
  // One run job at a time per workflow queue, and statements that wait for a lock as long as the test
  // holds it (not DATABASE_STATEMENT_TIMEOUT's 30 s): a run job stuck on a lock holds the queue's only slot.
  stack = await startStack({ env: { WORKER_CONCURRENCY: '1', DATABASE_STATEMENT_TIMEOUT: '10m' } });
  await stack.spawnWorker();
  submitter = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
  approver = await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] });
  runQueue = stack.container.queues.get('golden-path')!;
  timerQueue = stack.container.queues.get('timers') ?? new Queue('timers', { connection: stack.container.redis, prefix: stack.prefix });
}, LONG);
afterAll(async () => {
  if (timerQueue && !stack.container.queues.has('timers')) await timerQueue.close();
  await stack?.stop();
});

async function runOf(id: string) {
  return (await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: submitter })).json;
}
async function submit(): Promise<string> {
  const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: submitter, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status).toBe(202);
  return res.json.run_id as string;
}
async function waitStatus(id: string, statuses: string[], what = `run ${id} to reach ${statuses.join('|')}`) {
  return waitFor(async () => {
    const r = await runOf(id);
    return statuses.includes(r?.status) ? r : undefined;
  }, { ...DEADLINE, what });
}
/** A class B run waiting for its approval (the default 24 h SLA: its timer is far off), its timer's id and its request. */
async function waitingRun() {
  const runId = await submit();
  const run = await waitStatus(runId, ['waiting', 'failed']);
  expect(run.status).toBe('waiting');
  const { rows } = await stack.db.admin(`select idempotency_hash from durable_runs where id = $1`, [runId]);
  const hash = rows[0].idempotency_hash as string;
  return { runId, hash, timerId: namedJobId('gp', hash, 'sla'), approvalId: run.steps[2].output.approval_request_id as string };
}
/** The request's deadline is now past: the timer's handler expires it when it runs. */
async function deadlinePassed(runId: string) {
  await stack.db.admin(`update approval_requests set sla_deadline = now() - interval '1 second' where run_id = $1`, [runId]);
}
/** A timer as releases before the timers queue added it: same name, id and data, in the golden-path queue. */
async function legacyTimer(w: { runId: string; hash: string; timerId: string }, delayMs: number) {
  const data = { tenant_id: tenant, run_id: w.runId, hash: w.hash, deadline: new Date(Date.now() + delayMs).toISOString() };
  return runQueue.add('approval-sla', data, { jobId: w.timerId, delay: delayMs, attempts: 10, backoff: { type: 'exponential', delay: 1000 } });
}

describe('SLA timers in their own queue', () => {
  it('a timer that comes due expires its request while the golden-path queue holds a backlog its worker cannot drain', { timeout: LONG }, async () => {
    const w = await waitingRun();
    // The timer, wherever this release schedules it.
    const timer = (await timerQueue.getJob(w.timerId)) ?? (await runQueue.getJob(w.timerId));
    expect(await timer?.getState()).toBe('delayed');

    // The golden-path worker's only slot is taken by a run job stuck on its first step's insert, and
    // BACKLOG more run jobs queue behind it: nothing drains until the lock goes.
    const dossiers = await holdTable(stack.db.ownerUrl, 'partner_dossiers');
    try {
      const stuck = await submit();
      await dossiers.waiting('the first run job to wait for the lock');
      // One after another: the tenant's share of the API's in-flight requests is below BACKLOG.
      const backlog: string[] = [];
      for (let i = 0; i < BACKLOG; i++) backlog.push(await submit());
      await waitFor(async () => (await runQueue.getWaitingCount()) >= BACKLOG, { ...DEADLINE, what: 'the backlog to queue' });

      // The deadline passes and the timer comes due now.
      await deadlinePassed(w.runId);
      await timer!.promote();
      const expired = await waitStatus(w.runId, ['approval_expired', 'completed', 'failed'], 'the request to expire behind the backlog');
      expect(expired.status).toBe('approval_expired');
      // Observed while every run job of the backlog still waits, and the stuck one is still stuck.
      expect(await runQueue.getWaitingCount()).toBeGreaterThanOrEqual(BACKLOG);
      expect((await runOf(stuck)).status).toBe('pending');
      for (const id of backlog) expect((await runOf(id)).status).toBe('pending');
      // It was the timers queue's worker that ran it (read once finished: the run's expiry commits before
      // the timer's job completes, and a job read before that has no returnvalue).
      const fired = await waitFor(async () => {
        const job = await timerQueue.getJob(w.timerId);
        return job?.finishedOn ? job : undefined;
      }, { ...DEADLINE, what: 'the timer to finish' });
      expect(fired.returnvalue).toEqual({ outcome: 'expired' });

      await dossiers.release();
      // The backlog drains once the lock is gone (its runs reach their own approvals).
      for (const id of [stuck, ...backlog]) await waitStatus(id, ['waiting', 'failed']);
    } finally {
      await dossiers.close();
    }
  });

  it('a timer an older release left in the golden-path queue still fires there and expires its request', { timeout: LONG }, async () => {
    const w = await waitingRun();
    // The old timer (same id, same name) in the run queue, due now; this release's timer is gone (removed
    // after the old one is there, so no sweep finds the run without a timer meanwhile).
    await deadlinePassed(w.runId);
    await legacyTimer(w, 0);
    await (await timerQueue.getJob(w.timerId))!.remove();
    const expired = await waitStatus(w.runId, ['approval_expired', 'completed', 'failed']);
    expect(expired.status).toBe('approval_expired');
    const fired = await waitFor(async () => {
      const job = await runQueue.getJob(w.timerId);
      return job?.finishedOn ? job : undefined;
    }, { ...DEADLINE, what: 'the old timer to finish' });
    expect(fired.returnvalue).toEqual({ outcome: 'expired' });
    expect((await api(stack, 'GET', `/api/v1/approvals/${w.approvalId}`, { token: approver })).json.status).toBe('expired');
  });

  it('a decision removes the timer from the timers queue and an older release\'s from the golden-path queue', { timeout: LONG }, async () => {
    const w = await waitingRun();
    await legacyTimer(w, 3_600_000);
    expect(await timerQueue.getJobState(w.timerId)).toBe('delayed');
    expect(await runQueue.getJobState(w.timerId)).toBe('delayed');
    const d = await api(stack, 'POST', `/api/v1/approvals/${w.approvalId}/decision`, { token: approver, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(d.status).toBe(200);
    // Removed before the decision answers.
    expect(await timerQueue.getJobState(w.timerId)).toBe('unknown');
    expect(await runQueue.getJobState(w.timerId)).toBe('unknown');
    expect((await waitStatus(w.runId, ['completed', 'failed'])).status).toBe('completed');
  });

  it('a cancel removes the timer from both queues too', { timeout: LONG }, async () => {
    const w = await waitingRun();
    await legacyTimer(w, 3_600_000);
    const c = await api(stack, 'POST', `/api/v1/golden-path/runs/${w.runId}/cancel`, { token: submitter, headers: { 'Idempotency-Key': randomUUID() } });
    expect(c.status).toBe(200);
    // After the commit.
    await waitFor(async () => (await timerQueue.getJobState(w.timerId)) === 'unknown' && (await runQueue.getJobState(w.timerId)) === 'unknown', { ...DEADLINE, what: 'both timers to be removed' });
  });

  it("the sweeper counts an older release's timer as alive, and re-creates a lost timer in the timers queue", { timeout: LONG }, async () => {
    const w = await waitingRun();
    await legacyTimer(w, 3_600_000);
    await (await timerQueue.getJob(w.timerId))!.remove();
    // The stack's own marker: not a "Redis lost its data" sweep, which repairs every waiting run regardless.
    const sweeper = stackSweeper(stack, 'test-sweeper-lock', { markerKey: `${stack.prefix}:sweeper-lock:marker` });
    await waitFor(async () => (await stack.redis.exists(`${stack.prefix}:sweeper-lock:marker`)) === 1, { ...DEADLINE, what: "the worker's first sweep" });
    const kept = await sweeper.sweep();
    expect(kept.redisLost).toBe(false);
    // The old timer is alive: no second one in the timers queue.
    expect(await timerQueue.getJobState(w.timerId)).toBe('unknown');
    expect(await runQueue.getJobState(w.timerId)).toBe('delayed');

    // Both gone: the sweep re-creates it, in the timers queue.
    await (await runQueue.getJob(w.timerId))!.remove();
    const repaired = await sweeper.sweep();
    expect(repaired.repairedWaiting).toBeGreaterThanOrEqual(1);
    expect(await timerQueue.getJobState(w.timerId)).toBe('delayed');
    expect(await runQueue.getJobState(w.timerId)).toBe('unknown');
    expect((await timerQueue.getJob(w.timerId))!.name).toBe('approval-sla');
  });
});
