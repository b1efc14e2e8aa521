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
import { DurableRuntime, type StepJobData } from '../../src/platform/durable/runtime.ts';
import type { Job } from 'bullmq';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { stepJobId } from '../../src/platform/queue/job-ids.ts';
import { GOLDEN_PATH } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { namedJobId } from '../../src/platform/queue/job-ids.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';
import { CLASS_A_SUBMISSION, CLASS_C_SUBMISSION, newTenant, offboardingStart, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { ApprovalService } from '../../src/modules/approvals/approval.service.ts';
import { PARTNER_OFFBOARDING } from '../../src/modules/partner-offboarding/partner-offboarding.workflow.ts';
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
    return (await skewedRun(CLASS_A_SUBMISSION, ['completed', 'completed', 'completed', 'completed'], skewMs, opts)).runId;
  }

  /** classARun for any submission: its job's steps end as `statuses` (a class B or C run waits in step 3). */
  async function skewedRun(submission: unknown, statuses: string[], skewMs: number, opts: { rereads?: boolean; noPrefetch?: boolean } = {}) {
    const tenant = newTenant();
    const { orm } = stack.container;
    const wf = opts.noPrefetch
      ? wrappedGoldenPath(stack, (step) => (input, ctx) => step.run(input, { ...ctx, prefetched: undefined }))
      : stack.container.runtime.workflow(GOLDEN_PATH);
    const runtime = opts.noPrefetch ? new DurableRuntime({ workflows: [wf], queues: stack.container.runtime.queues, logger: pino({ level: 'silent' }) }) : stack.container.runtime;
    const hash = randomBytes(32).toString('hex');
    const { run } = await stack.container.runtime.start(tenantEm(orm, tenant), GOLDEN_PATH, { tenantId: tenant, principal: 'producer', idempotencyHash: hash, input: submission, correlationId: randomUUID() });
    const job = (await stack.container.runtime.queues.get(wf.queue)!.getJob(stepJobId(wf.tag, hash, 1, wf.steps[0]!.name)))!;
    if (opts.rereads) job.attemptsMade = 1; // as an attempt had failed before: this delivery reads the run first
    await processSkewed(runtime, job, statuses, skewMs);
    return { runId: run.id, hash, tenant };
  }

  /** Runs `job` here, its steps ending as `statuses`, with this process's clock `skewMs` off; then removes it. */
  async function processSkewed(runtime: DurableRuntime, job: Job<StepJobData>, statuses: string[], skewMs: number) {
    const executor = new StepExecutor({ orm: stack.container.orm, runtime, logger: pino({ level: 'silent' }), workerId: 'skewed-worker', leaseMs: 5_000 });
    // The worker's clock only (Date); its timers and I/O run as usual.
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() + skewMs, shouldAdvanceTime: true });
    try {
      const outcome = await executor.process(job);
      expect(outcome.steps.map((s) => s.status)).toEqual(statuses);
    } finally {
      vi.useRealTimers();
      await job.remove();
    }
  }

  /** When BullMQ has a delayed timer due (its delayed set's score, milliseconds times 0x1000 plus a counter). */
  async function dueAt(jobId: string): Promise<number> {
    const timers = stack.container.queues.get(TIMER_QUEUE)!;
    return Math.floor(Number(await stack.redis.zscore(timers.toKey('delayed'), jobId)) / 0x1000);
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
  /**
   * Steps 1, 2 and 4 stamp what they write with the database's time too (docs/runtime.md, *The step
   * algorithm*: `ctx.now`), at no round trip more: the dossier's and the economics model's rows and the
   * provenance of every step's output (so of the evidence pack's content), the evidence pack's
   * `created_at` and its seal's (the insert's trigger copies it). A worker a day behind wrote an evidence
   * pack created before its run and before the approval it records.
   */
  it.each([
    ['a day behind', -DAY, {}],
    ['a day ahead', DAY, {}],
    ['a day behind, the job reading its run first (a re-delivery)', -DAY, { rereads: true }],
  ] as const)('clock %s: every step\'s rows and provenance carry the database\'s time', { timeout: LONG }, async (_label, skew, opts) => {
    const runId = await classARun(skew, opts);
    // Each time against the run's creation, the system decision (the evidence pack's), the step's own
    // checkpoint (committed with it) and the database's now() after the run; all to the millisecond.
    const { rows } = await stack.db.admin(
      `with t(what, at, seq) as (
         select 'dossier row', d.created_at, 1 from partner_dossiers d where d.run_id = $1
         union all select 'dossier profile provenance', (c.output->'profile'->'provenance'->>'produced_at')::timestamptz, 1 from durable_checkpoints c where c.run_id = $1 and c.sequence_num = 1
         union all select 'dossier facts provenance', (c.output->'facts'->'provenance'->>'produced_at')::timestamptz, 1 from durable_checkpoints c where c.run_id = $1 and c.sequence_num = 1
         union all select 'economics row', m.created_at, 2 from economics_models m where m.run_id = $1
         union all select 'economics provenance', (c.output->'provenance'->>'produced_at')::timestamptz, 2 from durable_checkpoints c where c.run_id = $1 and c.sequence_num = 2
         union all select 'approval packet provenance', (c.output->'provenance'->>'produced_at')::timestamptz, 3 from durable_checkpoints c where c.run_id = $1 and c.sequence_num = 3
         union all select 'evidence pack row', e.created_at, 4 from evidence_packs e where e.run_id = $1
         union all select 'evidence seal', s.created_at, 4 from evidence_seals s where s.run_id = $1
         union all select 'evidence provenance', (c.output->'provenance'->>'produced_at')::timestamptz, 4 from durable_checkpoints c where c.run_id = $1 and c.sequence_num = 4
         union all select 'evidence content: dossier provenance', (e.content->'partner_dossier'->'profile'->'provenance'->>'produced_at')::timestamptz, 1 from evidence_packs e where e.run_id = $1
       )
       select t.what, t.at is not null as stamped,
              t.at >= r.created_at as after_run_created,
              t.seq < 4 or t.at >= date_trunc('milliseconds', a.decided_at) as after_decision,
              t.at <= c.completed_at as before_step_completed,
              t.at <= now() as before_db_now
         from t join durable_runs r on r.id = $1
         join approval_requests a on a.run_id = r.id
         join durable_checkpoints c on c.run_id = r.id and c.sequence_num = t.seq
        order by t.what`,
      [runId],
    );
    expect(rows).toHaveLength(10);
    expect(rows).toEqual(rows.map((row) => ({ what: row.what, stamped: true, after_run_created: true, after_decision: true, before_step_completed: true, before_db_now: true })));
  });
  /**
   * A class B run approved by a human, its step 4 then run by a worker whose clock is off the other way:
   * the evidence pack (its row, its seal) and step 4's provenance are stamped with the database's time
   * of the resumed job's read, after the decision (to the millisecond: the decision keeps its
   * microseconds, ctx.now the millisecond that holds them at the latest) and before step 4 committed.
   */
  it.each([
    ['a day behind, then a day ahead', -DAY, DAY],
    ['a day ahead, then a day behind', DAY, -DAY],
  ] as const)('class B, clock %s: the evidence pack of an approved run is stamped after the human decision', { timeout: LONG }, async (_label, skewBefore, skewAfter) => {
    const { runId, hash, tenant } = await skewedRun(SAMPLE_SUBMISSION, ['completed', 'completed', 'waiting'], skewBefore);
    const { runtime, orm } = stack.container;
    const wf = runtime.workflow(GOLDEN_PATH);
    const timers = stack.container.queues.get(TIMER_QUEUE)!;
    const [request] = (await stack.db.admin(`select id from approval_requests where run_id = $1`, [runId])).rows;
    const { afterCommit } = await tenantEm(orm, tenant).transactional((tx) =>
      new ApprovalService(runtime).decide(tx, { sub: 'approver-1', tenantId: tenant, roles: ['approver'] }, request.id, 'approve', null),
    );
    await afterCommit();
    await (await timers.getJob(namedJobId('gp', hash, 'sla')))?.remove();
    const resumed = (await runtime.queues.get(wf.queue)!.getJob(stepJobId(wf.tag, hash, 4, wf.steps[3]!.name)))!;
    await processSkewed(runtime, resumed, ['completed'], skewAfter);
    const { rows } = await stack.db.admin(
      `with t(what, at) as (
         select 'evidence pack row', e.created_at from evidence_packs e where e.run_id = $1
         union all select 'evidence seal', s.created_at from evidence_seals s where s.run_id = $1
         union all select 'evidence provenance', (c.output->'provenance'->>'produced_at')::timestamptz from durable_checkpoints c where c.run_id = $1 and c.sequence_num = 4
       )
       select t.what, t.at is not null as stamped,
              t.at >= date_trunc('milliseconds', a.decided_at) as after_decision,
              t.at >= (e.content->'approval_packet'->'decisions'->0->>'decided_at')::timestamptz as after_recorded_decision,
              t.at <= c.completed_at as before_step_completed,
              t.at <= now() as before_db_now
         from t join approval_requests a on a.run_id = $1 and a.status = 'approved'
         join evidence_packs e on e.run_id = $1
         join durable_checkpoints c on c.run_id = $1 and c.sequence_num = 4
        order by t.what`,
      [runId],
    );
    expect(rows).toHaveLength(3);
    expect(rows).toEqual(rows.map((row) => ({ what: row.what, stamped: true, after_decision: true, after_recorded_decision: true, before_step_completed: true, before_db_now: true })));
  });
  /**
   * A partner offboarding's steps stamp the record and their outputs with the database's time too
   * (ctx.now): `frozen_at`, `settled_at`, `archived_at`, in that order, after the run's creation and
   * each before its step's checkpoint completed, whatever the worker's clock reads.
   */
  it.each([
    ['a day behind', -DAY, false],
    ['a day ahead', DAY, false],
    ['a day behind, the job reading its run first (a re-delivery)', -DAY, true],
  ] as const)('partner offboarding, clock %s: the record and the outputs carry the database\'s time', { timeout: LONG }, async (_label, skew, rereads) => {
    const tenant = newTenant();
    const { runtime, orm } = stack.container;
    const wf = runtime.workflow(PARTNER_OFFBOARDING);
    const start = offboardingStart(tenant, `P-CLOCK-${randomUUID()}`);
    const { run } = await runtime.start(tenantEm(orm, tenant), PARTNER_OFFBOARDING, start);
    const job = (await runtime.queues.get(wf.queue)!.getJob(stepJobId(wf.tag, start.idempotencyHash, 1, wf.steps[0]!.name)))!;
    if (rereads) job.attemptsMade = 1;
    await processSkewed(runtime, job, ['completed', 'completed', 'completed'], skew);
    const { rows } = await stack.db.admin(
      `with t(what, at, seq) as (
         select 'frozen_at', o.frozen_at, 1 from partner_offboardings o where o.run_id = $1
         union all select 'frozen_at output', (c.output->>'frozen_at')::timestamptz, 1 from durable_checkpoints c where c.run_id = $1 and c.sequence_num = 1
         union all select 'settled_at', o.settled_at, 2 from partner_offboardings o where o.run_id = $1
         union all select 'settled_at output', (c.output->>'settled_at')::timestamptz, 2 from durable_checkpoints c where c.run_id = $1 and c.sequence_num = 2
         union all select 'archived_at', o.archived_at, 3 from partner_offboardings o where o.run_id = $1
         union all select 'archived_at output', (c.output->>'archived_at')::timestamptz, 3 from durable_checkpoints c where c.run_id = $1 and c.sequence_num = 3
       )
       select t.what, t.at is not null as stamped,
              t.at >= r.created_at as after_run_created,
              t.at >= coalesce(o.settled_at, o.frozen_at) or t.seq < 3 as in_order,
              t.at >= o.frozen_at as after_frozen,
              t.at <= c.completed_at as before_step_completed,
              t.at <= now() as before_db_now
         from t join durable_runs r on r.id = $1
         join partner_offboardings o on o.run_id = $1
         join durable_checkpoints c on c.run_id = $1 and c.sequence_num = t.seq
        order by t.what`,
      [run.id],
    );
    expect(rows).toHaveLength(6);
    expect(rows).toEqual(rows.map((row) => ({ what: row.what, stamped: true, after_run_created: true, in_order: true, after_frozen: true, before_step_completed: true, before_db_now: true })));
  });
  /**
   * A class B or C request opened by a worker whose clock is off: its `created_at` is the database's time
   * of the policy read, and its SLA deadline that time plus the class's SLA, by the clock that judges
   * the deadline (statement_timestamp(), a decision's and an expiry's check). The SLA timer is filed at
   * that deadline (its timestamp the request's created_at, its delay the SLA), whatever the worker's clock reads.
   */
  it.each([
    ['B', 'a day behind', SAMPLE_SUBMISSION, -DAY, {}],
    ['B', 'two days ahead (more than its SLA)', SAMPLE_SUBMISSION, 2 * DAY, {}],
    ['C', 'a day ahead, the job reading its run first (a re-delivery)', CLASS_C_SUBMISSION, DAY, { rereads: true }],
    ['C', 'a day behind, the step reading the policy itself (nothing prefetched)', CLASS_C_SUBMISSION, -DAY, { noPrefetch: true }],
  ] as const)('class %s, clock %s: the request is opened at the database\'s time, its deadline the SLA after it', { timeout: LONG }, async (cls, _label, submission, skew, opts) => {
    const { runId, hash } = await skewedRun(submission, ['completed', 'completed', 'waiting'], skew, opts);
    const timers = stack.container.queues.get(TIMER_QUEUE)!;
    const timer = await timers.getJob(namedJobId('gp', hash, 'sla'));
    try {
      const slaSeconds = (cls === 'B' ? stack.config.APPROVAL_SLA_B : stack.config.APPROVAL_SLA_C) / 1000;
      const { rows } = await stack.db.admin(
        `select a.approval_class, a.status, a.created_at = a.updated_at as updated_with_it,
                extract(epoch from a.sla_deadline - a.created_at)::float8 as sla_seconds,
                to_char(a.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as created_at,
                to_char(a.sla_deadline at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as sla_deadline,
                c.output->>'sla_deadline' as step_output_sla_deadline,
                r.created_at <= a.created_at as after_run_created,
                a.created_at <= c.created_at as before_step_checkpoint,
                a.created_at <= now() as before_db_now
           from durable_runs r
           join approval_requests a on a.run_id = r.id
           join durable_checkpoints c on c.run_id = r.id and c.sequence_num = 3
          where r.id = $1`,
        [runId],
      );
      expect(rows).toHaveLength(1);
      const t = rows[0];
      expect(t).toMatchObject({ approval_class: cls, status: 'pending', updated_with_it: true });
      // Opened between the run's creation and the database's now() after it, before step 3's checkpoint: the database's clock.
      expect({ after_run_created: t.after_run_created, before_step_checkpoint: t.before_step_checkpoint, before_db_now: t.before_db_now }).toEqual({
        after_run_created: true,
        before_step_checkpoint: true,
        before_db_now: true,
      });
      // The SLA after it, and the same deadline in the step's output and the timer.
      expect(t.sla_seconds).toBe(slaSeconds);
      expect(t.step_output_sla_deadline).toBe(t.sla_deadline);
      expect(timer?.data.deadline).toBe(t.sla_deadline);
      // Filed at the deadline by the database's clock: the SLA from the request's created_at, not from
      // this worker's clock (a delay a day longer, or none: due at once).
      expect({ timestamp: timer?.timestamp, delay: timer?.opts.delay }).toEqual({ timestamp: Date.parse(t.created_at), delay: slaSeconds * 1000 });
      expect(await dueAt(timer!.id!)).toBe(Date.parse(t.sla_deadline));
    } finally {
      await timer?.remove();
    }
  });
  /**
   * The sweeper re-creates a lost SLA timer from the stored deadline (repairWaiting): due at that deadline
   * by the database's clock, from which the deadline was stamped and by which it is judged, not by the
   * clock of the host that sweeps: its timestamp, which its delay is reckoned from, is the time of the
   * repair's statement, to the millisecond (between the database's times before and after it).
   */
  it.each([
    ['a day behind', -DAY],
    ['a day ahead', DAY],
  ] as const)('a lost SLA timer re-created by a sweeper whose clock is %s is due at the deadline by the database\'s clock', { timeout: LONG }, async (_label, skew) => {
    const { runId, hash } = await skewedRun(SAMPLE_SUBMISSION, ['completed', 'completed', 'waiting'], 0);
    const timers = stack.container.queues.get(TIMER_QUEUE)!;
    const jobId = namedJobId('gp', hash, 'sla');
    await (await timers.getJob(jobId))!.remove(); // Redis lost it
    const { rows: [run] } = await stack.db.admin(`select tenant_id from durable_runs where id = $1`, [runId]);
    const dbMs = async () => Number((await stack.db.admin(`select floor(extract(epoch from clock_timestamp()) * 1000)::float8 as ms`)).rows[0].ms);
    const wf = stack.container.runtime.workflow(GOLDEN_PATH);
    const before = await dbMs();
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() + skew, shouldAdvanceTime: true });
    try {
      await tenantEm(stack.container.orm, run.tenant_id).transactional((em) => wf.repairWaiting!(em, { tenantId: run.tenant_id, runId }));
    } finally {
      vi.useRealTimers();
    }
    const after = await dbMs();
    const timer = (await timers.getJob(jobId))!;
    try {
      // Its delay reckoned from the database's time of the repair, so due at the deadline.
      expect({ afterBefore: timer.timestamp >= before, beforeAfter: timer.timestamp <= after }).toEqual({ afterBefore: true, beforeAfter: true });
      expect(timer.timestamp + timer.opts.delay!).toBe(Date.parse(timer.data.deadline));
      expect(await dueAt(jobId)).toBe(Date.parse(timer.data.deadline));
    } finally {
      await timer.remove();
    }
  });
});
