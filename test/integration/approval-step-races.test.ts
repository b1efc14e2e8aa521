/**
 * Two executions of one golden-path run job at once (a stalled job re-delivered while its first
 * worker is still inside a step) meeting in the approval step, which opens the request, schedules the
 * SLA timer and waits: one commits the wait, the other loses. What the loser does must not change
 * what the winner committed — neither the run's fate nor its timer's deadline. Real PostgreSQL as the
 * application role, real Redis, the production executor in this process (as durable-recovery.test.ts's
 * "two executions at once"), the real SLA scheduler of the stack's golden path.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomUUID } from 'node:crypto';
import { Job, Queue } from 'bullmq';
import { pino } from 'pino';
import { DurableRuntime, type StepJobData } from '../../src/platform/durable/runtime.ts';
import { StepExecutor } from '../../src/platform/durable/executor.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { PermanentError } from '../../src/platform/errors/app-error.ts';
import { isWaiting } from '../../src/platform/durable/workflow.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';
import { namedJobId } from '../../src/platform/queue/job-ids.ts';
import { GOLDEN_PATH } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { wrappedGoldenPath } from '../helpers/run-host.ts';

const LONG = 120_000;
const APPROVAL_SEQ = 3;

describe('two executions of a run job meeting in the approval step', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ api: false }); // no worker: the two executions below are the run's only ones
  }, LONG);
  afterAll(async () => stack?.stop());

  const timers = () => stack.container.queues.get(TIMER_QUEUE)!;

  /** A class B golden-path run (the default policy), created without a job. */
  async function waitingCandidate(tenant: string) {
    const { run } = await tenantEm(stack.container.orm, tenant).transactional((tx) =>
      stack.container.runtime.start_run(tx, GOLDEN_PATH, {
        tenantId: tenant,
        principal: 'submitter-1',
        idempotencyHash: createHash('sha256').update(randomUUID()).digest('hex'),
        input: SAMPLE_SUBMISSION,
        correlationId: randomUUID(),
      }),
    );
    return run;
  }

  /**
   * Runs the run's job from step 1 in two executions at once. The first to enter the approval step
   * waits there until the second has entered it too, then commits the wait; the second waits until
   * that wait is committed and then does `loser` (fail for good, or run the step itself).
   */
  async function meetInApprovalStep(tenant: string, runId: string, correlationId: string, loser: 'fails for good' | 'runs the step') {
    let entered = 0;
    let secondIn!: () => void;
    const second = new Promise<void>((r) => (secondIn = r));
    let loserDeadline: string | undefined;
    const waitCommitted = async () =>
      (await stack.db.admin(`select status from durable_checkpoints where run_id = $1 and sequence_num = $2`, [runId, APPROVAL_SEQ])).rows[0]?.status === 'waiting';
    const wf = wrappedGoldenPath(stack, (step, seq) => async (input, ctx) => {
      if (seq !== APPROVAL_SEQ) return step.run(input, ctx);
      if (++entered === 1) {
        await second;
        return step.run(input, ctx);
      }
      secondIn();
      await waitFor(waitCommitted, { timeoutMs: 30_000, intervalMs: 20, what: 'the other execution to commit the wait' });
      if (loser === 'fails for good') throw new PermanentError('test_permanent', 'the approval step refused for good in the losing execution (test)');
      // The loser reads its policy in its own step transaction, after the winner's commit (no prefetch):
      // the time it dates its request by (read_at, the database's) is then strictly later than the
      // winner's, read when both jobs started — the later deadline this test needs. With the prefetch,
      // both read at the same moment and under load the loser's could come out no later.
      const out = await step.run(input, { ...ctx, prefetched: undefined });
      if (isWaiting(out)) loserDeadline = (out.output as { sla_deadline: string }).sla_deadline;
      return out;
    });
    const logger = pino({ level: 'silent' });
    const runtime = new DurableRuntime({ workflows: [wf], queues: stack.container.runtime.queues, logger });
    const executor = (workerId: string) => new StepExecutor({ orm: stack.container.orm, runtime, logger, workerId, leaseMs: 5000 });
    // A queue no worker serves: the job and its twin (the same job, as a stalled re-delivery) run only here.
    const queue = new Queue(`${GOLDEN_PATH}-direct`, { connection: stack.container.redis, prefix: stack.prefix });
    try {
      const data: StepJobData = { run_id: runId, tenant_id: tenant, workflow: GOLDEN_PATH, workflow_version: 1, step: 'partner-dossier', sequence_num: 1, _correlation_id: correlationId };
      const job = await Job.create(queue, 'partner-dossier', data, { jobId: `gp-dup-${runId}`, attempts: 5 });
      const twin = (await Job.fromId<StepJobData>(queue, job.id!))!;
      const outcomes = await Promise.allSettled([executor('worker-a').process(job), executor('worker-b').process(twin)]);
      expect(entered).toBe(2);
      return { outcomes, loserDeadline };
    } finally {
      await queue.close();
    }
  }

  const stored = async (runId: string) => ({
    run: (await stack.db.admin(`select status, error, idempotency_hash, lease_owner from durable_runs where id = $1`, [runId])).rows[0],
    checkpoints: (await stack.db.admin(`select sequence_num, status from durable_checkpoints where run_id = $1 order by sequence_num`, [runId])).rows,
    requests: (await stack.db.admin(`select status, sla_deadline from approval_requests where run_id = $1`, [runId])).rows,
  });

  it('the losing execution failing the step for good after the other committed its wait: the run still waits, its request pending, its timer in place', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const run = await waitingCandidate(tenant);
    try {
      const { outcomes } = await meetInApprovalStep(tenant, run.id, run.correlation_id, 'fails for good');
      // Before the fix the loser's failure overwrote the committed `waiting` checkpoint with `failed`, failed
      // the run (run.failed sent), withdrew its request and removed its timer: a run waiting for a human, lost.
      expect(outcomes.map((o) => (o.status === 'fulfilled' ? o.value.status : `rejected: ${(o.reason as Error).message}`))).toEqual(['waiting', 'waiting']);
      const after = await stored(run.id);
      // A waiting run has no holder: a crash of the job that carries it on is counted, not taken for a lapse of this one's (ADR 0016).
      expect(after.run).toMatchObject({ status: 'waiting', error: null, lease_owner: null });
      expect(after.checkpoints).toEqual([
        { sequence_num: 1, status: 'completed' },
        { sequence_num: 2, status: 'completed' },
        { sequence_num: 3, status: 'waiting' },
      ]);
      expect(after.requests).toEqual([{ status: 'pending', sla_deadline: expect.any(Date) }]);
      const timer = await timers().getJob(namedJobId('gp', after.run.idempotency_hash, 'sla'));
      expect(await timer?.getState()).toBe('delayed');
    } finally {
      await tenantEm(stack.container.orm, tenant).transactional((tx) => stack.container.runtime.complete(tx, run.id, 'cancelled'));
    }
  });

  it("the losing execution's own schedule does not move the committed request's timer to its later deadline", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const run = await waitingCandidate(tenant);
    try {
      const { outcomes, loserDeadline } = await meetInApprovalStep(tenant, run.id, run.correlation_id, 'runs the step');
      expect(outcomes.map((o) => (o.status === 'fulfilled' ? o.value.status : `rejected: ${(o.reason as Error).message}`))).toEqual(['waiting', 'waiting']);
      const after = await stored(run.id);
      expect(after.run.status).toBe('waiting');
      // One request, the winner's; the loser's rolled back with its step (its checkpoint was a unique violation).
      expect(after.requests).toHaveLength(1);
      const deadline = new Date(after.requests[0].sla_deadline as Date);
      expect(loserDeadline).toBeDefined();
      expect(Date.parse(loserDeadline!)).toBeGreaterThan(deadline.getTime());
      // The timer is the committed request's: due at its deadline. Before the fix the loser's schedule
      // moved it to the loser's own, later deadline (rolled back with its request), so the request
      // would have read expired at its deadline while the run stayed waiting, and ended late.
      const queue = timers();
      const timerId = namedJobId('gp', after.run.idempotency_hash, 'sla');
      const timer = await queue.getJob(timerId);
      expect(await timer?.getState()).toBe('delayed');
      expect(timer!.data.deadline).toBe(deadline.toISOString());
      const dueAt = Math.floor(Number(await stack.redis.zscore(queue.toKey('delayed'), timerId)) / 4096);
      expect(dueAt).toBeLessThan(Date.parse(loserDeadline!));
    } finally {
      await tenantEm(stack.container.orm, tenant).transactional((tx) => stack.container.runtime.complete(tx, run.id, 'cancelled'));
    }
  });
});
