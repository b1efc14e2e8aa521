import { afterAll, beforeAll, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Queue, Worker, type Job } from 'bullmq';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { jobHandlersFor } from '../../src/modules/index.ts';

/**
 * An SLA timer that finds its run active and no request yet (expire's `no_request`) is put off a
 * bounded number of times (SLA_NO_REQUEST_DEFERRALS). The bound counts those deferrals only: a timer
 * job restarted for another reason (an attempt that threw, a stalled job whose worker died — BullMQ's
 * `attemptsStarted` counts them all) keeps its deferrals. No worker here: the run stays `pending` (active,
 * no request), the timer runs in a queue of its own through the production handler, connected as the
 * application role (RLS in force).
 */
let stack: TestStack;
const DEADLINE = { timeoutMs: 60_000, intervalMs: 100 };

beforeAll(async () => {
  stack = await startStack({ env: { SWEEPER_INTERVAL: '1h', SWEEPER_MIN_AGE: '1h' } });
});
afterAll(async () => stack?.stop());

it('a timer that crashed before it met no request still gets all its no_request deferrals, counted in its data', { timeout: 120_000 }, async () => {
  const tenant = newTenant();
  const submitter = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
  const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: submitter, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status, res.text).toBe(202);
  const runId = res.json.run_id as string;
  const [{ tenant_id: runTenant, idempotency_hash: hash }] = (await stack.db.admin(`select tenant_id, idempotency_hash from durable_runs where id = $1`, [runId])).rows;

  const BOUND = 2;
  const CRASHES = 3;
  const spent: unknown[] = [];
  const handlers = jobHandlersFor({ orm: stack.container.orm, runtime: stack.container.runtime, noRequestDeferrals: BOUND, onNoRequestSpent: () => spent.push(runId) });
  const handled: { attemptsStarted: number; deferrals: number | undefined }[] = [];
  const name = `sla-deferrals-${randomUUID().slice(0, 8)}`;
  const timers = new Queue(name, { connection: stack.redis, prefix: stack.prefix });
  // Its first attempts throw before the handler runs (a crash): each is a start BullMQ counts, none a deferral.
  const worker = new Worker(
    name,
    async (job: Job) => {
      if (job.attemptsMade < CRASHES) throw new Error('worker crashed (test)');
      handled.push({ attemptsStarted: job.attemptsStarted, deferrals: job.data.no_request_deferrals });
      return handlers['approval-sla']!(job);
    },
    { connection: stack.redis.duplicate({ maxRetriesPerRequest: null }), prefix: stack.prefix },
  );
  try {
    const timer = await timers.add('approval-sla', { tenant_id: runTenant, run_id: runId, hash, deadline: new Date().toISOString() }, { attempts: 10, backoff: { type: 'fixed', delay: 10 } });
    const state = await waitFor(
      async () => {
        const s = await timers.getJobState(timer.id!);
        return ['completed', 'failed'].includes(s) ? s : undefined;
      },
      { ...DEADLINE, what: 'the timer to be spent' },
    );
    expect(state).toBe('completed');
    const done = (await timers.getJob(timer.id!))!;
    expect(done.returnvalue).toEqual({ outcome: 'no_request' });
    // Put off BOUND times after its crashes, then spent: BOUND + 1 runs of the handler, each with the count so far.
    expect(handled.map((h) => h.deferrals ?? 0)).toEqual([0, 1, 2]);
    expect(handled[0]!.attemptsStarted).toBe(CRASHES + 1);
    expect(done.data.no_request_deferrals).toBe(BOUND);
    expect(done.attemptsMade).toBeLessThanOrEqual(CRASHES + 1);
    // The give-up is reported (a warning and dealix_sla_timers_spent_total, wired in the container).
    expect(spent).toEqual([runId]);
    // Nothing was written: the run is still pending, with no request.
    expect((await stack.db.admin(`select status from durable_runs where id = $1`, [runId])).rows[0].status).toBe('pending');
    expect((await stack.db.admin(`select count(*)::int as n from approval_requests where run_id = $1`, [runId])).rows[0].n).toBe(0);
  } finally {
    await worker.close();
    await timers.obliterate({ force: true });
    await timers.close();
  }
});
