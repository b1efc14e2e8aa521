/**
 * POST /api/v1/golden-path/runs/:id/cancel against the real stack (PostgreSQL as the application
 * role, Redis, a worker): who may cancel, what the cancel does to a run that waits on an approval,
 * and what a worker in the middle of a step does once the cancel has committed (docs/runtime.md).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { api, CLASS_A_SUBMISSION, CLASS_C_SUBMISSION, newTenant, runUsers, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { capturedLog } from '../helpers/log-capture.ts';
import { waitFor } from '../helpers/poll.ts';
import { barrier, startRunHost } from '../helpers/run-host.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';
import { namedJobId, stepJobId } from '../../src/platform/queue/job-ids.ts';
import type { StepDef, WorkflowDef } from '../../src/platform/durable/workflow.ts';
import { GOLDEN_PATH, GOLDEN_PATH_QUEUE } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { ApprovalService } from '../../src/modules/approvals/approval.service.ts';
import { PermanentError } from '../../src/platform/errors/app-error.ts';

const LONG = 120_000;
const cancelPath = (id: string) => `/api/v1/golden-path/runs/${id}/cancel`;

async function submit(stack: TestStack, token: string, body: unknown): Promise<string> {
  const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status, res.text).toBe(202);
  return res.json.run_id as string;
}

async function runStatus(stack: TestStack, token: string, id: string): Promise<string> {
  const res = await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token });
  expect(res.status, res.text).toBe(200);
  return res.json.status as string;
}

async function waitStatus(stack: TestStack, token: string, id: string, statuses: string[]) {
  return waitFor(
    async () => {
      const res = await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token });
      return statuses.includes(res.json?.status) ? res.json : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 100, what: `run ${id} to reach ${statuses.join('|')}` },
  );
}

const idempotencyHashOf = async (stack: TestStack, runId: string) =>
  ((await stack.db.admin(`select idempotency_hash from durable_runs where id = $1`, [runId])).rows[0] as { idempotency_hash: string }).idempotency_hash;

/**
 * A cancel's transaction as the route runs it — application role, the tenant set, the run row locked
 * `for update`, its status changed and its pending approval request withdrawn — held open until `commit()`.
 */
async function cancelInProgress(appUrl: string, tenantId: string, runId: string) {
  const client = new pg.Client({ connectionString: appUrl });
  await client.connect();
  await client.query('begin');
  let open = true;
  await client.query(`select set_config('app.tenant_id', $1, true)`, [tenantId]);
  await client.query('select id from durable_runs where id = $1 for update', [runId]);
  await client.query(`update durable_runs set status = 'cancelled', completed_at = now(), updated_at = now() where id = $1`, [runId]);
  await client.query(`update approval_requests set status = 'withdrawn', decided_at = now(), updated_at = now() where run_id = $1 and status = 'pending'`, [runId]);
  return {
    async commit() {
      open = false;
      await client.query('commit');
    },
    async close() {
      if (open) await client.query('rollback').catch(() => {});
      await client.end();
    },
  };
}

/** Polls until some statement of the test's database waits for a lock. */
const someoneWaitsForALock = (stack: TestStack, what: string) =>
  waitFor(async () => (await stack.db.admin(`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`)).rows[0].n > 0, {
    timeoutMs: 20_000,
    what,
  });

describe('cancelling a run through the API, with a worker running', () => {
  let stack: TestStack;
  const tenant = newTenant();
  const tok: Record<string, string> = {};
  const { lines: logLines, destination } = capturedLog();

  beforeAll(async () => {
    stack = await startStack({ env: { LOG_LEVEL: 'info' }, logDestination: destination });
    await stack.spawnWorker();
    Object.assign(tok, await runUsers(stack, tenant));
    tok.approver = await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] });
  }, LONG);
  afterAll(async () => {
    await stack?.stop();
  });

  it('a class B run waiting on its approval: 200 cancelled, the request can no longer be decided, its SLA timer is gone, and the run stays cancelled', { timeout: LONG }, async () => {
    const id = await submit(stack, tok.submitter!, SAMPLE_SUBMISSION);
    const waiting = await waitStatus(stack, tok.submitter!, id, ['waiting', 'failed', 'completed']);
    expect(waiting.status).toBe('waiting');
    const approvalId = waiting.steps[2].output.approval_request_id as string;
    const queue = stack.container.queues.get(TIMER_QUEUE)!;
    const timerId = namedJobId('gp', await idempotencyHashOf(stack, id), 'sla');
    expect(await queue.getJobState(timerId)).toBe('delayed');

    const cancelCid = `cancel-${randomUUID()}`;
    const res = await api(stack, 'POST', cancelPath(id), { token: tok.submitter!, headers: { 'Idempotency-Key': randomUUID(), 'X-Correlation-Id': cancelCid } });
    expect(res.status, res.text).toBe(200);
    expect(res.json).toMatchObject({ run_id: id, status: 'cancelled', progress: { current_sequence_num: null }, error: { code: 'cancelled', cancelled_by: 'submitter-1' } });
    expect(res.json.completed_at).toEqual(expect.any(String));
    // One time of the cancel (docs/api.md): the run's completed_at, its error's cancelled_at, and the
    // withdrawn request's decided_at — all by the database's clock, not one of them the API's.
    expect(res.json.error.cancelled_at).toBe(res.json.completed_at);
    expect((await api(stack, 'GET', `/api/v1/approvals/${approvalId}`, { token: tok.submitter! })).json).toMatchObject({ status: 'withdrawn', decided_at: res.json.completed_at });
    // Logged among the run's lines (its run id and correlation id); the request's own line names the run too.
    const cancelled = await waitFor(() => logLines.find((l) => l.msg === 'run cancelled' && l.run_id === id), { what: "the cancel's log line" });
    expect(cancelled).toMatchObject({ level: 30, tenant_id: tenant, correlation_id: waiting.correlation_id, cancelled_by: 'submitter-1', previous_status: 'waiting' });
    const request = await waitFor(() => logLines.find((l) => l.msg === 'request completed' && l.correlation_id === cancelCid), { what: "the cancel request's log line" });
    expect(request).toMatchObject({ run_id: id, tenant_id: tenant });

    // The approval request can no longer be decided.
    const decision = await api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token: tok.approver!, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(decision.status, decision.text).toBe(409);
    expect(decision.json).toMatchObject({ code: 'run_not_active', run_status: 'cancelled' });
    // Its SLA timer was removed after the commit.
    await waitFor(async () => (await queue.getJobState(timerId)) === 'unknown', { timeoutMs: 10_000, what: 'the SLA timer to be removed' });
    // The sweeper's repair of a waiting run's lost timer (it may have listed the run as waiting just
    // before the cancel) gives a cancelled run no timer back.
    const repair = stack.container.runtime.workflow(GOLDEN_PATH).repairWaiting!;
    await tenantEm(stack.container.orm, tenant).transactional((tx) => repair(tx, { tenantId: tenant, runId: id }));
    expect(await queue.getJobState(timerId)).toBe('unknown');
    // A timer that fired anyway (removed too late, or re-created) past the deadline finds nothing to expire.
    await stack.db.admin(`update approval_requests set sla_deadline = now() - interval '1 second' where id = $1`, [approvalId]);
    const expired = await tenantEm(stack.container.orm, tenant).transactional((tx) => new ApprovalService(stack.container.runtime).expire(tx, tenant, id));
    expect(expired).toEqual({ outcome: 'not_pending' });

    expect(await runStatus(stack, tok.submitter!, id)).toBe('cancelled');
    const [row] = (await stack.db.admin(`select status, completed_at, error from durable_runs where id = $1`, [id])).rows as Array<{ status: string; completed_at: Date | null; error: { code: string } }>;
    expect(row).toMatchObject({ status: 'cancelled', error: { code: 'cancelled' } });
    expect(row!.completed_at).not.toBeNull();
  });

  it('a class C run waiting on its first of two approvals: after the cancel not even the first decision is recorded', { timeout: LONG }, async () => {
    const id = await submit(stack, tok.submitter!, CLASS_C_SUBMISSION);
    const waiting = await waitStatus(stack, tok.submitter!, id, ['waiting', 'failed', 'completed']);
    expect(waiting.status).toBe('waiting');
    const approvalId = waiting.steps[2].output.approval_request_id as string;
    const res = await api(stack, 'POST', cancelPath(id), { token: tok.admin!, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status, res.text).toBe(200);
    const decision = await api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token: tok.approver!, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(decision.status, decision.text).toBe(409);
    expect(decision.json).toMatchObject({ code: 'run_not_active', run_status: 'cancelled' });
    expect((await stack.db.admin(`select count(*)::int as n from approval_decisions where approval_request_id = $1`, [approvalId])).rows[0].n).toBe(0);
    expect(await runStatus(stack, tok.submitter!, id)).toBe('cancelled');
  });

  it('a first of two approvals sent while a cancel is still in progress waits for it and is refused: nothing recorded', { timeout: LONG }, async () => {
    const id = await submit(stack, tok.submitter!, CLASS_C_SUBMISSION);
    const waiting = await waitStatus(stack, tok.submitter!, id, ['waiting', 'failed', 'completed']);
    expect(waiting.status).toBe('waiting');
    const approvalId = waiting.steps[2].output.approval_request_id as string;
    const cancel = await cancelInProgress(stack.db.appUrl, tenant, id);
    try {
      const decision = api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token: tok.approver!, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
      await someoneWaitsForALock(stack, "the decision to wait for the cancel's lock");
      await cancel.commit();
      const answered = await decision;
      expect(answered.status, answered.text).toBe(409);
      expect(answered.json).toMatchObject({ code: 'run_not_active', run_status: 'cancelled' });
      expect((await stack.db.admin(`select count(*)::int as n from approval_decisions where approval_request_id = $1`, [approvalId])).rows[0].n).toBe(0);
    } finally {
      await cancel.close();
    }
  });

  it('who may cancel: not another user (403), not another tenant (404); the submitter or a tenant admin may; an ended run is 409; the same key replays; no key is 400', { timeout: LONG }, async () => {
    const id = await submit(stack, tok.submitter!, SAMPLE_SUBMISSION);
    const key = randomUUID();
    const cancel = (token: string, k: string | null = randomUUID()) => api(stack, 'POST', cancelPath(id), { token, headers: k ? { 'Idempotency-Key': k } : {} });

    const missing = await cancel(tok.admin!, null);
    expect(missing.status, missing.text).toBe(400);
    expect(missing.json.code).toBe('validation_failed');
    const forbidden = await cancel(tok.other!);
    expect(forbidden.status, forbidden.text).toBe(403);
    const elsewhere = await cancel(tok.otherTenantAdmin!);
    expect(elsewhere.status, elsewhere.text).toBe(404);
    expect(await runStatus(stack, tok.submitter!, id)).not.toBe('cancelled');

    const first = await cancel(tok.admin!, key);
    expect(first.status, first.text).toBe(200);
    expect(first.json).toMatchObject({ run_id: id, status: 'cancelled', submitted_by: 'submitter-1', error: { code: 'cancelled', cancelled_by: 'admin-1' } });
    const replay = await cancel(tok.admin!, key);
    expect(replay.status).toBe(200);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.json).toEqual(first.json);
    const again = await cancel(tok.submitter!);
    expect(again.status, again.text).toBe(409);
    expect(again.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(again.json).toMatchObject({ code: 'run_not_active', run_status: 'cancelled' });

    // A run that ended on its own is not cancelled either.
    const done = await submit(stack, tok.submitter!, CLASS_A_SUBMISSION);
    expect((await waitStatus(stack, tok.submitter!, done, ['completed', 'failed'])).status).toBe('completed');
    const ended = await api(stack, 'POST', cancelPath(done), { token: tok.submitter!, headers: { 'Idempotency-Key': randomUUID() } });
    expect(ended.status, ended.text).toBe(409);
    expect(ended.json).toMatchObject({ code: 'run_not_active', run_status: 'completed' });
    expect(ended.json.detail).toContain('completed');
    expect(await runStatus(stack, tok.submitter!, done)).toBe('completed');
  });
});

/**
 * A cancel that commits while a worker is inside one of the run's steps. The golden path's own steps,
 * each behind a gate, run by a BullMQ worker in this process (the production worker host and
 * executor), so the test holds exactly one step until the cancel has committed.
 */
describe('cancelling a run while a step executes', () => {
  let stack: TestStack;
  const tenant = newTenant();
  let token = '';

  beforeAll(async () => {
    stack = await startStack(); // no worker process: only the in-process one below takes the run's job
    token = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
  }, LONG);
  afterAll(async () => {
    await stack?.stop();
  });

  /** The production worker host and executor, in this process, running `wf` on the golden-path queue. */
  const startHost = (wf: WorkflowDef) => startRunHost(stack, wf, 'cancel-test');

  /** The run's job (from step 1) once it has ended: completed or failed. */
  async function endedJob(runId: string) {
    const base = stack.container.runtime.workflow(GOLDEN_PATH);
    const queue = stack.container.queues.get(GOLDEN_PATH_QUEUE)!;
    const jobId = stepJobId(base.tag, await idempotencyHashOf(stack, runId), 1, base.steps[0]!.name);
    const state = await waitFor(async () => {
      const st = await queue.getJobState(jobId);
      return st === 'completed' || st === 'failed' ? st : undefined;
    }, { timeoutMs: 30_000, what: 'the run job to end' });
    return { state, job: (await queue.getJob(jobId))! };
  }

  it('cancelled before its job started: the job runs no step and completes', { timeout: LONG }, async () => {
    const id = await submit(stack, token, CLASS_A_SUBMISSION);
    const res = await api(stack, 'POST', cancelPath(id), { token, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status, res.text).toBe(200);
    const host = startHost(stack.container.runtime.workflow(GOLDEN_PATH));
    try {
      const { state, job } = await endedJob(id);
      expect(state).toBe('completed');
      expect(job.returnvalue).toEqual({ run_id: id, from_sequence_num: 1, status: 'ended', steps: [] });
      expect((await stack.db.admin(`select count(*)::int as n from durable_checkpoints where run_id = $1`, [id])).rows[0].n).toBe(0);
      expect((await stack.db.admin(`select status from durable_runs where id = $1`, [id])).rows[0].status).toBe('cancelled');
      // The only run of this stack's database so far: /metrics counts it as cancelled (its reading may lag a refresh).
      const series = 'dealix_runs{workflow="golden-path",status="cancelled"}';
      const counted = await waitFor(async () => {
        const line = (await api(stack, 'GET', '/metrics')).text.split('\n').find((l) => l.startsWith(`${series} `));
        return line !== undefined && Number(line.slice(series.length + 1)) > 0 ? Number(line.slice(series.length + 1)) : undefined;
      }, { timeoutMs: 20_000, what: `${series} to count the run` });
      expect(counted).toBe(1);
    } finally {
      await host.stop();
    }
  });

  /** The golden path with step `held` waiting at `b` before it runs; `ran` collects the steps entered. */
  function heldAt(held: number, b: ReturnType<typeof barrier>, ran: number[] = []): WorkflowDef {
    const base = stack.container.runtime.workflow(GOLDEN_PATH);
    return {
      ...base,
      steps: base.steps.map((s): StepDef => ({
        ...s,
        async run(input, ctx) {
          ran.push(ctx.sequenceNum);
          if (ctx.sequenceNum === held) {
            b.enter();
            await b.released;
          }
          return s.run(input, ctx);
        },
      })),
    };
  }

  /** Runs `wf` here, submits a class A run, cancels it once a step is at `b`, releases the step; the run and its ended job. */
  async function cancelWhileHeld(wf: WorkflowDef, b: ReturnType<typeof barrier>) {
    const host = startHost(wf);
    try {
      const id = await submit(stack, token, CLASS_A_SUBMISSION);
      await b.inside;
      const res = await api(stack, 'POST', cancelPath(id), { token, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, res.text).toBe(200);
      expect(res.json.status).toBe('cancelled');
      b.release();
      return { id, ...(await endedJob(id)) };
    } finally {
      b.release();
      await host.stop();
    }
  }

  it('a step that fails for good after the cancel: its failure is recorded on the step, the run stays cancelled, the job completes', { timeout: LONG }, async () => {
    const b = barrier();
    const base = stack.container.runtime.workflow(GOLDEN_PATH);
    const failing: WorkflowDef = {
      ...base,
      steps: base.steps.map((s, i): StepDef => (i !== 1 ? s : {
        ...s,
        async run() {
          b.enter();
          await b.released;
          throw new PermanentError('test_permanent', 'step 2 refused for good after the cancel');
        },
      })),
    };
    const { id, state, job } = await cancelWhileHeld(failing, b);
    expect(state, job.failedReason).toBe('completed');
    expect(job.returnvalue).toMatchObject({ run_id: id, status: 'ended' });
    const checkpoints = (await stack.db.admin(`select sequence_num, status from durable_checkpoints where run_id = $1 order by sequence_num`, [id])).rows;
    expect(checkpoints).toEqual([{ sequence_num: 1, status: 'completed' }, { sequence_num: 2, status: 'failed' }]);
    const [run] = (await stack.db.admin(`select status, error from durable_runs where id = $1`, [id])).rows as Array<{ status: string; error: { code: string } }>;
    expect(run).toMatchObject({ status: 'cancelled', error: { code: 'cancelled' } });
  });

  it("a step whose own insert breaks a foreign key fails as any error does (not taken for a cancel): the run fails, the job ends", { timeout: LONG }, async () => {
    const base = stack.container.runtime.workflow(GOLDEN_PATH);
    const broken: WorkflowDef = {
      ...base,
      steps: base.steps.map((s, i): StepDef => (i !== 1 ? s : {
        ...s,
        retry: { attempts: 2, backoffMs: 10, jitter: 0 },
        async run(_input, ctx) {
          // A row naming a run that does not exist: PostgreSQL refuses it with 23503, as a real bug would.
          await ctx.em.execute(
            `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, attempt, created_at, updated_at) values (?, ?, ?, 1, 'x', 'completed', 1, now(), now())`,
            [randomUUID(), ctx.run.tenantId, randomUUID()],
          );
          return undefined as never;
        },
      })),
    };
    const host = startHost(broken);
    try {
      const id = await submit(stack, token, CLASS_A_SUBMISSION);
      const { state, job } = await endedJob(id);
      expect(state).toBe('failed');
      expect(job.failedReason).not.toMatch(/lost the race/);
      const [run] = (await stack.db.admin(`select status from durable_runs where id = $1`, [id])).rows as Array<{ status: string }>;
      expect(run!.status).toBe('failed');
    } finally {
      await host.stop();
    }
  });

  it('a cancel not yet committed when a middle step sends its checkpoint: the step waits for it, then commits nothing', { timeout: LONG }, async () => {
    const b = barrier();
    const gated = heldAt(2, b);
    const host = startHost(gated);
    let cancel: Awaited<ReturnType<typeof cancelInProgress>> | undefined;
    try {
      const id = await submit(stack, token, CLASS_A_SUBMISSION);
      await b.inside;
      cancel = await cancelInProgress(stack.db.appUrl, tenant, id);
      b.release();
      await someoneWaitsForALock(stack, "step 2's checkpoint to wait for the cancel's lock");
      await cancel.commit();
      const { state } = await endedJob(id);
      expect(state).toBe('completed');
      const checkpoints = (await stack.db.admin(`select sequence_num from durable_checkpoints where run_id = $1 order by sequence_num`, [id])).rows;
      expect(checkpoints, 'step 2 committed after the cancel').toEqual([{ sequence_num: 1 }]);
      expect((await stack.db.admin(`select count(*)::int as n from economics_models where run_id = $1`, [id])).rows[0].n).toBe(0);
      expect((await stack.db.admin(`select status from durable_runs where id = $1`, [id])).rows[0].status).toBe('cancelled');
    } finally {
      await cancel?.close();
      b.release();
      await host.stop();
    }
  });

  it.each([
    [2, 'a middle step (its checkpoint alone records it)', { partner_dossiers: 1, economics_models: 0, evidence_packs: 0 }],
    [4, 'the last step (its checkpoint would end the run)', { partner_dossiers: 1, economics_models: 1, evidence_packs: 0 }],
  ])('held at step %i, %s: the step commits nothing, no later step runs, the run stays cancelled, the job completes', { timeout: LONG }, async (held, _what, rows) => {
    const b = barrier();
    const ran: number[] = [];
    const gated = heldAt(held, b, ran);
    const { id, state, job } = await cancelWhileHeld(gated, b);
    expect(state).toBe('completed');
    // Ended quietly on its first delivery: not failed, not retried.
    expect(job.failedReason).toBeFalsy();
    expect(job.attemptsStarted).toBe(1);
    expect(job.returnvalue).toMatchObject({ run_id: id, status: 'ended' });
    // The held step's work rolled back with its checkpoint; no step after it was entered.
    expect(ran).toEqual(Array.from({ length: held }, (_, i) => i + 1));
    const checkpoints = (await stack.db.admin(`select sequence_num, status from durable_checkpoints where run_id = $1 order by sequence_num`, [id])).rows;
    expect(checkpoints).toEqual(Array.from({ length: held - 1 }, (_, i) => ({ sequence_num: i + 1, status: 'completed' })));
    const counts: Record<string, number> = {};
    for (const table of Object.keys(rows)) counts[table] = Number((await stack.db.admin(`select count(*)::int as n from ${table} where run_id = $1`, [id])).rows[0].n);
    expect(counts).toEqual(rows);
    const [run] = (await stack.db.admin(`select status, error from durable_runs where id = $1`, [id])).rows as Array<{ status: string; error: { code: string } }>;
    expect(run).toMatchObject({ status: 'cancelled', error: { code: 'cancelled' } });
  });

  it('held at step 3, a wait (its checkpoint would make the run wait): refused as the run no longer active, not as a failure of the step; the job ends quietly on its first delivery', { timeout: LONG }, async () => {
    // The trigger follows_its_predecessor reads the run before the checkpoint's own guard does: a run that
    // ended meanwhile must be refused as that guard refuses it (DX001), or the executor takes it for the step
    // failing (retried with backoff, a failed checkpoint on its last attempt).
    const b = barrier();
    const host = startHost(heldAt(3, b));
    try {
      const id = await submit(stack, token, SAMPLE_SUBMISSION);
      await b.inside;
      const res = await api(stack, 'POST', cancelPath(id), { token, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, res.text).toBe(200);
      b.release();
      const { state, job } = await endedJob(id);
      expect(state).toBe('completed');
      expect(job.failedReason).toBeFalsy();
      expect(job.attemptsStarted).toBe(1);
      const checkpoints = (await stack.db.admin(`select sequence_num, status from durable_checkpoints where run_id = $1 order by sequence_num`, [id])).rows;
      expect(checkpoints).toEqual([{ sequence_num: 1, status: 'completed' }, { sequence_num: 2, status: 'completed' }]);
      expect((await stack.db.admin(`select status from durable_runs where id = $1`, [id])).rows[0].status).toBe('cancelled');
    } finally {
      b.release();
      await host.stop();
    }
  });
});
