/**
 * A class A run's approval by policy is stamped with the database's clock, as every other decision is
 * (a human decision, an expiry, a cancel's withdrawal): never with the clock of the worker that ran
 * the step. A worker host whose clock is a day off still records the system decision — the request's
 * `decided_at`, its `created_at`, the decision row, step 3's output and the evidence pack's copy of it
 * — between the run's `created_at` and the database's `now()` after the run, and before step 3's
 * checkpoint completed. Real PostgreSQL as the application role, real Redis, the production executor
 * in this process with its clock (`Date`) faked a day off (no worker process runs: the job runs here).
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomBytes, randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { StepExecutor } from '../../src/platform/durable/executor.ts';
import { DurableRuntime } from '../../src/platform/durable/runtime.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { stepJobId } from '../../src/platform/queue/job-ids.ts';
import { GOLDEN_PATH } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { CLASS_A_SUBMISSION, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { wrappedGoldenPath } from '../helpers/run-host.ts';

const LONG = 120_000;
const DAY = 24 * 3600_000;

describe("a class A run's approval by policy, on a worker whose clock is a day off", () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ api: false }); // no worker: each run's job runs only here
  }, LONG);
  afterAll(async () => stack?.stop());

  /**
   * Starts a class A run (its job added, not taken) and runs its job here with the process clock
   * `skewMs` off; `rereads` makes the job a re-delivery (an attempt made), which reads its run — and
   * the step's policy prefetch with it — first; `noPrefetch` runs the approval step without what was
   * prefetched, so it reads the policy itself.
   */
  async function classARun(skewMs: number, opts: { rereads?: boolean; noPrefetch?: boolean } = {}) {
    const tenant = newTenant();
    const { orm } = stack.container;
    const wf = opts.noPrefetch
      ? wrappedGoldenPath(stack, (step) => (input, ctx) => step.run(input, { ...ctx, prefetched: undefined }))
      : stack.container.runtime.workflow(GOLDEN_PATH);
    const runtime = opts.noPrefetch ? new DurableRuntime({ workflows: [wf], queues: stack.container.runtime.queues, logger: pino({ level: 'silent' }) }) : stack.container.runtime;
    const hash = randomBytes(32).toString('hex');
    const { run } = await stack.container.runtime.start(tenantEm(orm, tenant), GOLDEN_PATH, { tenantId: tenant, principal: 'producer', idempotencyHash: hash, input: CLASS_A_SUBMISSION, correlationId: randomUUID() });
    const job = (await stack.container.runtime.queues.get(wf.queue)!.getJob(stepJobId(wf.tag, hash, 1, wf.steps[0]!.name)))!;
    if (opts.rereads) job.attemptsMade = 1; // as an attempt had failed before: this delivery reads the run first
    const executor = new StepExecutor({ orm, runtime, logger: pino({ level: 'silent' }), workerId: 'skewed-worker', leaseMs: 5_000 });
    // The worker's clock only (Date); its timers and I/O run as usual.
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() + skewMs, shouldAdvanceTime: true });
    try {
      const outcome = await executor.process(job);
      expect(outcome.steps.map((s) => s.status)).toEqual(['completed', 'completed', 'completed', 'completed']);
    } finally {
      vi.useRealTimers();
      await job.remove();
    }
    return run.id;
  }

  /** Every record of the run's system decision, compared by the database. */
  async function decisionTimes(runId: string) {
    const iso = (e: string) => `to_char(${e} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;
    const { rows } = await stack.db.admin(
      `select a.approval_class, a.status, d.approver, d.kind,
              ${iso('a.decided_at')} as decided_at, ${iso('a.created_at')} as request_created_at, ${iso('a.updated_at')} as request_updated_at,
              ${iso('d.created_at')} as decision_created_at,
              c.output->'decisions'->0->>'decided_at' as step_output_decided_at,
              e.content->'approval_packet'->'decisions'->0->>'decided_at' as evidence_decided_at,
              r.created_at <= a.decided_at as after_run_created,
              a.decided_at <= c.completed_at as before_step_completed,
              a.decided_at <= now() as before_db_now
         from durable_runs r
         join approval_requests a on a.run_id = r.id
         join approval_decisions d on d.tenant_id = a.tenant_id and d.approval_request_id = a.id
         join durable_checkpoints c on c.run_id = r.id and c.sequence_num = 3
         join evidence_packs e on e.run_id = r.id
        where r.id = $1`,
      [runId],
    );
    expect(rows).toHaveLength(1);
    return rows[0];
  }

  it.each([
    ['a day behind', -DAY, {}],
    ['a day ahead', DAY, {}],
    ['a day behind, the job reading its run first (a re-delivery)', -DAY, { rereads: true }],
    ['a day ahead, the step reading the policy itself (nothing prefetched)', DAY, { noPrefetch: true }],
  ] as const)('clock %s: the decision is recorded at the database\'s time, the same everywhere', { timeout: LONG }, async (_label, skew, opts) => {
    const runId = await classARun(skew, opts);
    const t = await decisionTimes(runId);
    expect(t).toMatchObject({ approval_class: 'A', status: 'approved', approver: 'system', kind: 'system' });
    // Between the run's creation and the database's now() after it, before step 3 committed: the database's clock.
    expect({ after_run_created: t.after_run_created, before_step_completed: t.before_step_completed, before_db_now: t.before_db_now }).toEqual({
      after_run_created: true,
      before_step_completed: true,
      before_db_now: true,
    });
    // One time: the request's, the decision row's, step 3's output's and the evidence pack's.
    expect([t.request_created_at, t.request_updated_at, t.decision_created_at, t.step_output_decided_at, t.evidence_decided_at]).toEqual(Array(5).fill(t.decided_at));
  });
});
