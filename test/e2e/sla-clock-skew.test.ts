/**
 * SLA timers (ADR 0015) on a worker whose clock is off from PostgreSQL's. The database decides
 * whether a request is overdue (its clock: a decision's, the API's reads); BullMQ fires a delayed
 * timer by the clock of the worker that takes it. A worker whose clock runs ahead takes its timers
 * early, and a timer that fires before the stored deadline waits for it (expire's `not_due`).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Job } from 'bullmq';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { namedJobId } from '../../src/platform/queue/job-ids.ts';

// The SLA outlasts the skew, with room for the approval step to commit: a worker ahead by more than the
// time left takes the timer before the request it expires is visible (it completes `not_pending`, and the
// sweeper re-creates it), which is not the early firing tested here — with an 8 s skew and a 3 s SLA, the
// request dated by the database (f342f86) made this test pass with the early-firing fix reverted.
const SKEW_MS = 4_000;
const SLA = '8s';
const DEADLINE = { timeoutMs: 90_000, intervalMs: 200 };

describe('SLA timers on a worker whose clock runs ahead of the database', () => {
  let stack: TestStack;
  const tenant = newTenant();
  let submitter: string;
  beforeAll(async () => {
    stack = await startStack({ env: { APPROVAL_SLA_B: SLA }, workerExecArgv: ['--import', './test/helpers/skewed-clock.ts'] });
    await stack.spawnWorker({ TEST_CLOCK_SKEW_MS: String(SKEW_MS) });
    submitter = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
  });
  afterAll(async () => stack?.stop());

  it('a timer taken before the stored deadline by the database clock waits out what is left by that clock: taken twice, not polled until the clocks agree', { timeout: 120_000 }, async () => {
    const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: submitter, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status).toBe(202);
    const runId = res.json.run_id as string;
    const run = await waitFor(
      async () => {
        const r = (await api(stack, 'GET', `/api/v1/golden-path/runs/${runId}`, { token: submitter })).json;
        return r && r.status !== 'pending' && r.status !== 'running' && r.status !== 'waiting' ? r : undefined;
      },
      { ...DEADLINE, what: 'the run to end' },
    );
    expect(run.status).toBe('approval_expired');
    const { rows } = await stack.db.admin(`select r.idempotency_hash, a.status, a.decided_at = a.sla_deadline as at_deadline,
              (extract(epoch from a.created_at) * 1000)::float8 as created_ms from durable_runs r join approval_requests a on a.run_id = r.id where r.id = $1`, [runId]);
    expect(rows[0]).toMatchObject({ status: 'expired', at_deadline: true });
    // The timer's job completes once its handler returns, after the expiry it committed: read once finished
    // (read when the run reads expired, it can still be active, its attemptsStarted not yet final).
    const timers = stack.container.queues.get('timers')!;
    const timerId = namedJobId('gp', rows[0].idempotency_hash, 'sla');
    const state = await waitFor(async () => {
      const st = await timers.getJobState(timerId);
      return st === 'completed' || st === 'failed' ? st : undefined;
    }, { ...DEADLINE, what: 'the timer job to finish' });
    expect(state).toBe('completed');
    const timer = await Job.fromId(timers, timerId);
    // The approval step's own timer (filed from the request's database time), not one the sweeper re-created.
    expect(timer?.timestamp).toBe(rows[0].created_ms);
    // Taken early once (the worker's clock is ahead), then at the deadline by the database's clock.
    // Before: put off to the stored deadline read on the worker's own clock — the moment it had just
    // fired at — so it came back every 500 ms until the clocks agreed (about SKEW_MS / 500 times).
    expect(timer?.attemptsStarted).toBe(2);
  });
});
