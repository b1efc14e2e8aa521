/**
 * Executions meeting in freeze-partner, the step that claims the partner (`insert … on conflict do
 * nothing` on the per-partner key): two runs of one partner at once, two executions of one run's job
 * at once (a stalled job re-delivered while its first worker is still inside the step), and two runs
 * taking over a cancelled offboarding's record at once. Each execution enters the step and waits there
 * until all have, then runs the real step body, so their claims meet in PostgreSQL. Real PostgreSQL as
 * the application role, the production executor in this process (as approval-step-races.test.ts); a
 * job whose step failed but may be retried is run again as BullMQ would (its data counting the attempt).
 * The runs meeting here are created without the submission guard (runs from before the submissions
 * claimed their partner): a guarded second submission of a partner is refused (partner-offboarding-runs.test.ts).
 * Also the submission guard ahead of them (admitSubmission) on a producer's `start`, which sends its
 * insert with its commit unless a guard follows it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Job, Queue, UnrecoverableError } from 'bullmq';
import { pino } from 'pino';
import { DurableRuntime, type StepJobData } from '../../src/platform/durable/runtime.ts';
import { StepExecutor } from '../../src/platform/durable/executor.ts';
import { sent } from '../helpers/pg-messages.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { PARTNER_OFFBOARDING } from '../../src/modules/partner-offboarding/partner-offboarding.workflow.ts';
import { newTenant, OFFBOARDING_SUBMISSION, offboardingStart, startStack, type TestStack } from '../helpers/stack.ts';
import { wrappedWorkflow } from '../helpers/run-host.ts';

const LONG = 120_000;

interface Execution {
  run: { id: string; tenant_id: string; correlation_id: string };
  /** A stalled job's re-delivery: it reads the run before its first step (not the first delivery's path, ADR 0004). */
  redelivery?: boolean;
}

describe('executions meeting in freeze-partner', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ api: false }); // no worker: the executions below are the runs' only ones
  }, LONG);
  afterAll(async () => stack?.stop());

  const submissionOf = offboardingStart;

  /**
   * A partner offboarding run of `reference`, created without a job, and without the submission guard:
   * as a run from before the submissions claimed their partner was, which holds no claim. Only such
   * runs meet in freeze-partner (a submission's claim refuses a second run of the partner: the runs
   * test), so its claim of the record is their backstop.
   */
  async function offboarding(tenant: string, reference: string) {
    const { admitSubmission: _guard, ...unguarded } = stack.container.runtime.workflow(PARTNER_OFFBOARDING);
    const runtime = new DurableRuntime({ workflows: [unguarded], queues: stack.container.runtime.queues, logger: pino({ level: 'silent' }) });
    const { run } = await tenantEm(stack.container.orm, tenant).transactional((tx) => runtime.start_run(tx, PARTNER_OFFBOARDING, submissionOf(tenant, reference)));
    return run;
  }

  /** What step 1 leaves for `runId` (as the superuser): its record of `reference`, frozen. */
  const frozenRecord = (tenant: string, runId: string, reference: string) =>
    stack.db.admin(
      `insert into partner_offboardings (id, tenant_id, run_id, partner_reference, partner_name, reason, status, frozen_at) values ($1, $2, $3, $4, 'Acme', 'inactive', 'frozen', now())`,
      [randomUUID(), tenant, runId, reference],
    );

  /**
   * Runs each execution's job from step 1, all at once; each waits inside freeze-partner until all are
   * there. A job that fails retryably is run again (up to its attempts); what each ends with: `ended`,
   * or the message it failed the run for good with.
   */
  async function meetInFreeze(executions: Execution[]): Promise<string[]> {
    let entered = 0;
    let allIn!: () => void;
    const all = new Promise<void>((r) => (allIn = r));
    const wf = wrappedWorkflow(stack, PARTNER_OFFBOARDING, (step, seq) => async (input, ctx) => {
      if (seq === 1 && entered < executions.length) {
        if (++entered === executions.length) allIn();
        await all;
      }
      return step.run(input, ctx);
    });
    const logger = pino({ level: 'silent' });
    const runtime = new DurableRuntime({ workflows: [wf], queues: stack.container.runtime.queues, logger });
    const queue = new Queue(`${PARTNER_OFFBOARDING}-direct`, { connection: stack.container.redis, prefix: stack.prefix });
    try {
      const jobs = await Promise.all(
        executions.map(async ({ run, redelivery }, i) => {
          const data: StepJobData = { run_id: run.id, tenant_id: run.tenant_id, workflow: PARTNER_OFFBOARDING, workflow_version: 1, step: 'freeze-partner', sequence_num: 1, _correlation_id: run.correlation_id };
          const jobId = `po-race-${run.id}`;
          const job = (await Job.fromId<StepJobData>(queue, jobId)) ?? (await Job.create(queue, 'freeze-partner', data, { jobId, attempts: 5 }));
          if (redelivery) job.stalledCounter = 1;
          return { job, executor: new StepExecutor({ orm: stack.container.orm, runtime, logger, workerId: `worker-${i}`, leaseMs: 5000 }) };
        }),
      );
      return await Promise.all(
        jobs.map(async ({ job, executor }) => {
          for (let attempt = 1; ; attempt++) {
            try {
              return (await executor.process(job)).status;
            } catch (e) {
              if (e instanceof UnrecoverableError || attempt >= 5) return (e as Error).message;
              job.attemptsMade = attempt; // BullMQ's retry of the job: its data keeps the failed attempts
            }
          }
        }),
      );
    } finally {
      await queue.close();
    }
  }

  const runOf = async (id: string) => (await stack.db.admin(`select status, error from durable_runs where id = $1`, [id])).rows[0];
  const recordsOf = async (tenant: string, reference: string) =>
    (await stack.db.admin(`select run_id, status from partner_offboardings where tenant_id = $1 and partner_reference = $2 order by frozen_at, status`, [tenant, reference])).rows;

  it('two runs of one partner at once: one offboards it, the other fails partner_already_offboarded, nothing settled twice', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const [a, b] = [await offboarding(tenant, 'P-RACE'), await offboarding(tenant, 'P-RACE')];
    const ends = await meetInFreeze([{ run: a }, { run: b }]);
    const winner = ends[0] === 'ended' ? a : b;
    const loser = winner === a ? b : a;
    expect(ends.filter((e) => e === 'ended')).toHaveLength(1);
    expect(await runOf(winner.id)).toMatchObject({ status: 'completed', error: null });
    expect(await runOf(loser.id)).toMatchObject({ status: 'failed', error: { code: 'partner_already_offboarded', sequence_num: 1 } });
    expect((await runOf(loser.id)).error.message).toContain(winner.id);
    expect(await recordsOf(tenant, 'P-RACE')).toEqual([{ run_id: winner.id, status: 'archived' }]);
  });

  it("two executions of one run's job at once (a stalled re-delivery): the run finds its own claim, completes, and is never refused", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const run = await offboarding(tenant, 'P-TWICE');
    const ends = await meetInFreeze([{ run }, { run, redelivery: true }]);
    expect(ends).toEqual(['ended', 'ended']);
    expect(await runOf(run.id)).toMatchObject({ status: 'completed', error: null });
    expect(await recordsOf(tenant, 'P-TWICE')).toEqual([{ run_id: run.id, status: 'archived' }]);
    const checkpoints = (await stack.db.admin(`select sequence_num, status from durable_checkpoints where run_id = $1 order by sequence_num`, [run.id])).rows;
    expect(checkpoints).toEqual([1, 2, 3].map((sequence_num) => ({ sequence_num, status: 'completed' })));
  });

  it("a producer's start (outside a request) passes the same submission guard: a held partner is refused and leaves no run; a free one starts", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const holder = await offboarding(tenant, 'P-HELD');
    await frozenRecord(tenant, holder.id, 'P-HELD');
    const start = (reference: string) => stack.container.runtime.start(tenantEm(stack.container.orm, tenant), PARTNER_OFFBOARDING, submissionOf(tenant, reference));
    const refused = await sent(() => start('P-HELD').then(() => undefined, (e: unknown) => e));
    expect(refused.result).toMatchObject({ status: 409, code: 'partner_already_offboarded', extensions: { run_id: holder.id, run_status: 'pending', offboarding_status: 'frozen' } });
    const { result: free, texts } = await sent(() => start('P-FREE'));
    expect(free.created).toBe(true);
    // The guard's read follows the insert, so the insert is not marked to travel with the commit (nor
    // grouped, ADR 0007): begin with the insert, the read, the commit — or the rollback of a refusal.
    for (const messages of [refused.texts, texts]) {
      expect(messages).toHaveLength(3);
      expect(messages[0]).toMatch(/^begin;\nselect set_config\('app\.tenant_id'[^\n]*\nwith ins as \(\s*insert into durable_runs/);
      expect(messages[1]).toMatch(/^with rec as \(select o\.id, o\.run_id[\s\S]*insert into partner_offboarding_claims/);
    }
    expect([refused.texts[2], texts[2]]).toEqual(['rollback', 'commit']);
    // The free partner is the started run's from here on, before its first step: a second start is refused naming it.
    await expect(start('P-FREE')).rejects.toMatchObject({ status: 409, code: 'partner_already_offboarded', extensions: { run_id: free.run.id, run_status: 'pending', offboarding_status: null } });
    const runs = (await stack.db.admin(`select id from durable_runs where tenant_id = $1 order by created_at, id`, [tenant])).rows.map((r) => r.id);
    expect(runs.sort()).toEqual([holder.id, free.run.id].sort());
  });

  it("a producer's start is judged on its input as the steps read it (parsed by the workflow's schema): a held partner's reference with spaces around it is refused; an input the schema refuses is left to freeze-partner", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const holder = await offboarding(tenant, 'P-SPACED');
    await frozenRecord(tenant, holder.id, 'P-SPACED');
    // A producer's input reaches the runtime as it was given (no route parsed it): the steps trim the reference.
    const start = (input: unknown) => stack.container.runtime.start(tenantEm(stack.container.orm, tenant), PARTNER_OFFBOARDING, { ...submissionOf(tenant, 'unused'), input });
    await expect(start({ ...OFFBOARDING_SUBMISSION, partner: { reference: '  P-SPACED ', name: 'Acme' } })).rejects.toMatchObject({ status: 409, code: 'partner_already_offboarded', extensions: { run_id: holder.id } });
    // Not a TypeError from the guard: the run starts, and its first step refuses the input, as any workflow's does.
    const malformed = await start({ reason: 'inactive' });
    expect(malformed.created).toBe(true);
    await meetInFreeze([{ run: malformed.run }]);
    expect(await runOf(malformed.run.id)).toMatchObject({ status: 'failed', error: { sequence_num: 1 } });
    const runs = (await stack.db.admin(`select id from durable_runs where tenant_id = $1`, [tenant])).rows.map((r) => r.id);
    expect(runs.sort()).toEqual([holder.id, malformed.run.id].sort());
  });

  it("two runs taking over a cancelled offboarding's record at once: one abandons it and offboards the partner, the other is refused", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const cancelled = await offboarding(tenant, 'P-TAKEN');
    // What a run cancelled in settle-balances leaves: its record frozen.
    await frozenRecord(tenant, cancelled.id, 'P-TAKEN');
    await tenantEm(stack.container.orm, tenant).transactional((tx) => stack.container.runtime.complete(tx, cancelled.id, 'cancelled'));
    const [b, c] = [await offboarding(tenant, 'P-TAKEN'), await offboarding(tenant, 'P-TAKEN')];
    const ends = await meetInFreeze([{ run: b }, { run: c }]);
    expect(ends.filter((e) => e === 'ended')).toHaveLength(1);
    const winner = ends[0] === 'ended' ? b : c;
    const loser = winner === b ? c : b;
    expect(await runOf(winner.id)).toMatchObject({ status: 'completed', error: null });
    expect(await runOf(loser.id)).toMatchObject({ status: 'failed', error: { code: 'partner_already_offboarded', sequence_num: 1 } });
    expect(await recordsOf(tenant, 'P-TAKEN')).toEqual([
      { run_id: cancelled.id, status: 'abandoned' },
      { run_id: winner.id, status: 'archived' },
    ]);
  });
});
