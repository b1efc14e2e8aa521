import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { setPolicy } from '../helpers/policy.ts';
import { slaScheduler } from '../../src/modules/index.ts';
import { namedJobId } from '../../src/platform/queue/job-ids.ts';
import { jsonLines } from '../helpers/api-process.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { backendPid, blockedBy } from '../helpers/lock-graph.ts';

const EXPIRED_LINE = 'approval request expired undecided at its SLA deadline: the run ended approval_expired';

/** The approval SLA with a two-second class B deadline (APPROVAL_SLA_B=2s): expiry, late decisions, restarts. */
let stack: TestStack;
const tenant = newTenant();
let submitter: string;
let approver: string;

const DEADLINE = { timeoutMs: 60_000, intervalMs: 100 };

/** The return value a job's `completed` event carries in its queue's event stream; undefined until there is one. */
async function completedEvent(redis: Redis, queue: Queue, jobId: string): Promise<unknown> {
  const entries = await redis.xrange(queue.keys.events!, '-', '+');
  for (const [, fields] of entries) {
    const f = new Map<string, string>();
    for (let i = 0; i + 1 < fields.length; i += 2) f.set(fields[i]!, fields[i + 1]!);
    if (f.get('event') === 'completed' && f.get('jobId') === jobId) return JSON.parse(f.get('returnvalue') ?? 'null');
  }
  return undefined;
}

async function runOf(id: string) {
  return (await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: submitter })).json;
}
async function waitStatus(id: string, statuses: string[]) {
  return waitFor(
    async () => {
      const r = await runOf(id);
      return statuses.includes(r?.status) ? r : undefined;
    },
    { ...DEADLINE, what: `run ${id} to reach ${statuses.join('|')}` },
  );
}
async function decide(approvalId: string) {
  return api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token: approver, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
}
async function submitWaiting() {
  const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: submitter, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status).toBe(202);
  const run = await waitStatus(res.json.run_id, ['waiting', 'approval_expired', 'failed']);
  expect(run.status).toBe('waiting');
  return { run, approvalId: run.steps[2].output.approval_request_id as string, deadline: Date.parse(run.steps[2].output.sla_deadline) };
}

/** A run of a tenant whose class B SLA is 30 s (its own approval policy), waiting with its timer: nothing here races the deadline. */
async function waitingWithSlowSla() {
  const slow = newTenant();
  const policy = { class_a_max_cost: 50000, class_a_max_payback_months: 6, class_c_min_cost: 250000, class_c_min_payback_months: 24, sla_b_seconds: 30, sla_c_seconds: 60 };
  // Longer than this stack's 2 s default: a loosening, which a second admin approves.
  expect((await setPolicy(stack, slow, policy)).status).toBe(200);
  const own = await stack.token({ tenantId: slow, sub: 'submitter-2' });
  const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: own, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
  const runId = res.json.run_id as string;
  await waitFor(async () => (await api(stack, 'GET', `/api/v1/golden-path/runs/${runId}`, { token: own })).json?.status === 'waiting', { ...DEADLINE, what: 'the run to wait' });
  const queue = stack.container.queues.get('timers')!;
  const [timer] = (await queue.getDelayed()).filter((j) => j.name === 'approval-sla' && j.data.run_id === runId);
  expect(timer).toBeDefined();
  return { slow, own, runId, queue, timer: timer! };
}

beforeAll(async () => {
  // Sweeps every second, for runs untouched for a second: the repairs here happen within the test's deadline.
  stack = await startStack({ env: { APPROVAL_SLA_B: '2s', SWEEPER_INTERVAL: '1s', SWEEPER_MIN_AGE: '1s' } });
  await stack.spawnWorker();
  submitter = await stack.token({ tenantId: tenant, sub: 'submitter-1' });
  approver = await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] });
});
afterAll(async () => stack?.stop());

describe('approval SLA', () => {
  it('an undecided request expires at its deadline, the run ends approval_expired, and a late decision is refused', async () => {
    const { run, approvalId, deadline } = await submitWaiting();
    // The configured two seconds, not the 24-hour default (loose bounds: the machine may be slow).
    expect(deadline).toBeGreaterThan(Date.parse(run.created_at));
    expect(deadline - Date.parse(run.created_at)).toBeLessThan(60_000);
    const expired = await waitStatus(run.run_id, ['approval_expired', 'completed', 'failed']);
    expect(expired.status).toBe('approval_expired');
    expect(expired.completed_at).not.toBeNull();
    // Ended before its last step: three steps done, and no current step.
    expect(expired.progress).toEqual({ completed_steps: 3, total_steps: 4, current_sequence_num: null });
    expect(expired.steps[2]).toMatchObject({ status: 'completed', output: { outcome: 'expired' } });
    expect(expired.steps[3].status).toBe('pending');
    expect(expired.links.evidence).toBeUndefined();
    const approval = (await api(stack, 'GET', `/api/v1/approvals/${approvalId}`, { token: approver })).json;
    expect(approval.status).toBe('expired');
    const late = await decide(approvalId);
    expect(late.status).toBe(409);
    expect(late.json.code).toBe('approval_expired');
    // The worker that expired it says so, among the run's lines (its run id and correlation id).
    const line = await waitFor(
      () => stack.workers.flatMap((w) => jsonLines(w.output())).find((l) => l.msg === EXPIRED_LINE && l.run_id === run.run_id),
      { timeoutMs: 20_000, what: 'the expiry log line' },
    );
    expect(line).toMatchObject({ level: 30, tenant_id: tenant, correlation_id: run.correlation_id, approval_request_id: approvalId });
  });

  it('the SLA timer survives a killed worker: a decision after the deadline is refused and the new worker expires the run', async () => {
    const { run, approvalId, deadline } = await submitWaiting();
    for (const w of stack.workers) w.kill('SIGKILL');
    await Promise.all(stack.workers.map((w) => w.exited));
    await waitFor(() => Date.now() > deadline + 200, { ...DEADLINE, what: 'the SLA deadline to pass' });
    // No worker has expired it yet, but the deadline is the deadline.
    const late = await decide(approvalId);
    expect(late.status).toBe(409);
    expect(late.json.code).toBe('approval_expired');
    expect((await runOf(run.run_id)).status).toBe('waiting');
    await stack.spawnWorker();
    const expired = await waitStatus(run.run_id, ['approval_expired', 'completed', 'failed']);
    expect(expired.status).toBe('approval_expired');
  });

  it('Redis loses its data while a run waits: the sweeper re-creates the SLA timer from the approval row and the run still expires', async () => {
    const { run } = await submitWaiting();
    const queue = stack.container.queues.get('timers')!;
    expect((await queue.getDelayed()).filter((j) => j.name === 'approval-sla' && j.data.run_id === run.run_id)).toHaveLength(1);
    // A flush of this stack's keys (its own prefix only: the Redis server is shared).
    const keys = await stack.redis.keys(`${stack.prefix}:*`);
    for (let i = 0; i < keys.length; i += 500) await stack.redis.del(...keys.slice(i, i + 500));
    const expired = await waitStatus(run.run_id, ['approval_expired', 'completed', 'failed']);
    expect(expired.status).toBe('approval_expired');
  });

  it("a timer with another deadline than the stored one is moved to it: never late, never polling", async () => {
    const { slow, own, runId, queue, timer } = await waitingWithSlowSla();
    const { rows } = await stack.db.admin(`select r.idempotency_hash, a.sla_deadline from durable_runs r join approval_requests a on a.run_id = r.id where r.id = $1`, [runId]);
    const hash = rows[0].idempotency_hash as string;
    // When the delayed timer fires (BullMQ scores a delayed job by its due time × 4096).
    const dueAt = async () => Math.floor(Number(await stack.redis.zscore(queue.toKey('delayed'), timer.id!)) / 4096);
    expect(Math.abs((await dueAt()) - new Date(rows[0].sla_deadline).getTime())).toBeLessThan(1000);

    // 1. A retry of the approval step stores a deadline 3 s out (as after a rolled-back attempt whose
    //    timer took the job id): scheduling it moves the waiting timer, which would otherwise fire late.
    const soon = new Date(Date.now() + 3_000);
    await stack.db.admin(`update approval_requests set sla_deadline = $2 where run_id = $1`, [runId, soon]);
    await slaScheduler({ timers: () => queue }, stack.container.runtime.keep).schedule({ tenantId: slow, runId, approvalRequestId: '', idempotencyHash: hash, deadline: soon });
    expect(Math.abs((await dueAt()) - soon.getTime())).toBeLessThan(1000);
    expect((await queue.getJob(timer.id!))!.data.deadline).toBe(soon.toISOString());

    // 2. The stored deadline moves out again behind the timer's back: the timer fires early, finds the
    //    request not due and waits for the stored deadline (not a poll every 500 ms until then).
    await stack.db.admin(`update approval_requests set sla_deadline = now() + interval '60 seconds' where run_id = $1`, [runId]);
    await waitFor(async () => (await dueAt()) > Date.now() + 30_000, { ...DEADLINE, what: 'the early timer to wait for the stored deadline' });
    expect((await api(stack, 'GET', `/api/v1/golden-path/runs/${runId}`, { token: own })).json.status).toBe('waiting');
  });

  it('a scheduled timer is due at its deadline to the millisecond, not a clock tick after it', async () => {
    // BullMQ files a delayed job at its timestamp + delay; a timestamp read apart from the delay's
    // clock reading put some timers a millisecond late (a CI failure: due 1 ms after the deadline).
    const queue = stack.container.queues.get('timers')!;
    const scheduler = slaScheduler({ timers: () => queue }, stack.container.runtime.keep);
    const hashes = Array.from({ length: 300 }, () => `due-${randomUUID()}`);
    const base = Date.now() + 3_600_000;
    try {
      const late: string[] = [];
      for (const [i, hash] of hashes.entries()) {
        const deadline = new Date(base + i);
        await scheduler.schedule({ tenantId: tenant, runId: randomUUID(), approvalRequestId: '', idempotencyHash: hash, deadline });
        const due = Math.floor(Number(await stack.redis.zscore(queue.keys.delayed!, namedJobId('gp', hash, 'sla'))) / 0x1000);
        if (due !== deadline.getTime()) late.push(`${hash}: due ${due - deadline.getTime()} ms after its deadline`);
      }
      expect(late).toEqual([]);
    } finally {
      for (const hash of hashes) await scheduler.cancel({ idempotencyHash: hash });
    }
  });

  it('a waiting run whose timer alone is gone (Redis kept the rest) is found by the sweeper and still expires at its deadline', async () => {
    const { own, runId, timer } = await waitingWithSlowSla();
    // The timer is removed (or failed for good, or ended early): past the deadline nobody could decide
    // the run and nothing would expire it. The deadline is brought to 3 s from now.
    await timer.remove();
    await stack.db.admin(`update approval_requests set sla_deadline = now() + interval '3 seconds' where run_id = $1`, [runId]);
    const expired = await waitFor(
      async () => {
        const r = (await api(stack, 'GET', `/api/v1/golden-path/runs/${runId}`, { token: own })).json;
        return r?.status !== 'waiting' ? r : undefined;
      },
      { ...DEADLINE, what: 'the sweeper to re-create the timer and the run to expire' },
    );
    expect(expired.status).toBe('approval_expired');
    // Waited for, not read at once: a worker writes its log in batches (every 100 ms), and a repair that
    // came after the deadline (a loaded machine's late sweep) has its timer fire, and the run expire,
    // before the sweep writes its line.
    await waitFor(() => stack.workers.some((w) => jsonLines(w.output()).some((l) => l.msg === 'sweeper repaired a waiting run whose timer was gone' && l.run_id === runId)), {
      ...DEADLINE,
      what: "the sweeper's repair line",
    });
  });

  it('a decision before the deadline wins over the timer, and a timer left behind fires later as a no-op', async () => {
    const { slow, own, runId, queue, timer } = await waitingWithSlowSla();
    const slowApprover = await stack.token({ tenantId: slow, sub: 'approver-2', roles: ['approver'] });
    const runNow = async () => (await api(stack, 'GET', `/api/v1/golden-path/runs/${runId}`, { token: own })).json;
    const approvalId = (await runNow()).steps[2].output.approval_request_id as string;
    // Thirty seconds of SLA: the decision is always in time.
    const d = await api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token: slowApprover, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(d.status).toBe(200);
    // The decision cancels the timer before it answers.
    expect(await queue.getJob(timer.id!)).toBeUndefined();
    await waitFor(async () => (await runNow())?.status === 'completed', { ...DEADLINE, what: 'the approved run to complete' });

    // A timer left behind anyway (its cancel lost to a crash, or re-created by a sweep) fires after the
    // deadline: it finds the request decided and changes nothing.
    const { rows } = await stack.db.admin(`select idempotency_hash from durable_runs where id = $1`, [runId]);
    const past = new Date(Date.now() - 1_000);
    await stack.db.admin(`update approval_requests set sla_deadline = $2 where run_id = $1`, [runId, past]);
    await slaScheduler({ timers: () => queue }, stack.container.runtime.keep).schedule({ tenantId: slow, runId, approvalRequestId: '', idempotencyHash: rows[0].idempotency_hash as string, deadline: past });
    const fired = await waitFor(
      async () => {
        const job = await queue.getJob(timer.id!);
        return job?.finishedOn || job?.failedReason ? job : undefined;
      },
      { ...DEADLINE, what: 'the left-behind timer to fire' },
    );
    expect(fired.failedReason).toBeFalsy();
    expect(await fired.getState()).toBe('completed');
    expect(fired.returnvalue).toEqual({ outcome: 'not_pending' });
    expect((await api(stack, 'GET', `/api/v1/approvals/${approvalId}`, { token: slowApprover })).json.status).toBe('approved');
    const after = await runNow();
    expect(after.status).toBe('completed');
    expect(after.steps[2].output.outcome).toBe('approved');
  });

  it("a decision whose commit is not followed by its after-commit work (the API killed in between): the sweeper carries the run on from step 4 once, and the timer left behind fires as a no-op", async () => {
    const { slow, own, runId, queue, timer } = await waitingWithSlowSla();
    const slowApprover = await stack.token({ tenantId: slow, sub: 'approver-3', roles: ['approver'] });
    const runNow = async () => (await api(stack, 'GET', `/api/v1/golden-path/runs/${runId}`, { token: own })).json;
    const approvalId = (await runNow()).steps[2].output.approval_request_id as string;
    // The decision commits; what follows its commit (the run job from step 4, then the timer's removal)
    // is lost, as when the API process dies right after the commit.
    const enqueue = vi.spyOn(stack.container.runtime, 'enqueue').mockImplementationOnce(async () => {
      throw new Error('the API died between the decision\'s commit and its enqueue (test)');
    });
    try {
      const d = await api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token: slowApprover, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
      expect(d.status, d.text).toBe(200);
      expect(enqueue).toHaveBeenCalledTimes(1);
    } finally {
      enqueue.mockRestore();
    }
    // Committed: running from step 4, with no job; its timer still waits.
    expect((await runNow()).status).toBe('running');
    expect(await timer.getState()).toBe('delayed');
    // The worker's sweeper (every second, for runs untouched for a second) finds it and re-enqueues it from step 4.
    const done = await waitFor(async () => ((await runNow())?.status === 'completed' ? runNow() : undefined), { ...DEADLINE, what: 'the sweeper to carry the decided run on' });
    expect(done.steps.map((st: { status: string }) => st.status)).toEqual(['completed', 'completed', 'completed', 'completed']);
    expect(done.steps[2].output.outcome).toBe('approved');
    // The worker's lines reach this process through a pipe: read once its line is there.
    const recovered = await waitFor(
      () => {
        const lines = stack.workers.flatMap((w) => jsonLines(w.output())).filter((l) => l.msg === 'sweeper re-enqueued run' && l.run_id === runId);
        return lines.length ? lines : undefined;
      },
      { timeoutMs: 20_000, what: "the sweeper's line" },
    );
    expect(recovered.map((l) => l.from_sequence_num)).toEqual([4]);
    const { rows } = await stack.db.admin(`select (select count(*)::int from evidence_packs where run_id = $1) as packs, (select count(*)::int from durable_checkpoints where run_id = $1) as checkpoints`, [runId]);
    expect(rows[0]).toEqual({ packs: 1, checkpoints: 4 });
    // The timer the lost after-commit work did not remove fires (promoted here) and changes nothing.
    await timer.promote();
    const fired = await waitFor(async () => ((await timer.getState()) === 'completed' ? queue.getJob(timer.id!) : undefined), { ...DEADLINE, what: 'the timer left behind to fire' });
    expect(fired!.returnvalue).toEqual({ outcome: 'not_pending' });
    expect((await runNow()).status).toBe('completed');
  });

  it('a decision begun before the deadline and still in its transaction when the timer fires: the timer waits for it and finds the request decided; the run completes, decided before its deadline', async () => {
    const { slow, own, runId, queue, timer } = await waitingWithSlowSla();
    const slowApprover = await stack.token({ tenantId: slow, sub: 'approver-4', roles: ['approver'] });
    const runNow = async () => (await api(stack, 'GET', `/api/v1/golden-path/runs/${runId}`, { token: own })).json;
    const approvalId = (await runNow()).steps[2].output.approval_request_id as string;
    // The timer fires when this test promotes it, not on its own.
    await timer.changeDelay(3_600_000);
    // Who waits for whom is read from the lock graph of this test's database (pg_blocking_pids), not from
    // pg_locks by a table's name (another test file's database, a clone of the same template, has the
    // same table oids) nor from pg_stat_activity's query text (a backend running a message of several
    // statements may show another of them while it waits).
    // 1. The decision's transaction begins and waits for the requests table (held here), before it locks anything.
    const requests = new pg.Client({ connectionString: stack.db.adminUrl });
    await requests.connect();
    const requestsPid = await backendPid((sql, params) => requests.query(sql, params));
    const outbox = await holdTable(stack.env.MIGRATION_DATABASE_URL!, 'webhook_deliveries');
    let held = false;
    try {
      // Steps 1 to 3 again, with a wider margin, if load delayed the decision's check past the deadline:
      // it was refused then (409 approval_expired, nothing recorded), and the premise did not hold. The
      // widest margin stays well inside the API's statement timeout (30 s), which its waiting insert counts against.
      let decided: ReturnType<typeof api> | undefined;
      let deadline: Date | undefined;
      let decisionPid: number | undefined;
      for (const margin of [3, 10]) {
        await requests.query('begin');
        held = true;
        await requests.query('lock table approval_requests in exclusive mode');
        const attempt = api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token: slowApprover, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
        let answered = false;
        void attempt.then(
          () => (answered = true),
          () => (answered = true),
        );
        await blockedBy((sql, params) => requests.query(sql, params), requestsPid, 'the decision to begin and wait', DEADLINE);
        // 2. Its deadline is set to pass a few seconds after the decision's transaction began.
        [{ deadline }] = (await requests.query(`update approval_requests set sla_deadline = clock_timestamp() + $2 * interval '1 second' where run_id = $1 returning sla_deadline as deadline`, [runId, margin])).rows;
        await requests.query('commit');
        held = false;
        // 3. The decision locks the run and the request, checks the deadline (by its statement's clock: a
        // decision that waited for the run past the deadline is refused) before it passes, and waits
        // inside its insert (its webhook outbox), still in its transaction, while the deadline passes.
        // Its insert (the decision's, with its outbox rows) is the one statement that waits for the held outbox.
        const inside = await waitFor(
          async () =>
            ((await stack.db.admin(`select pid from pg_stat_activity where datname = current_database() and $1 = any(pg_blocking_pids(pid))`, [outbox.pid])).rows[0]?.pid as number | undefined) ||
            (answered && 'answered'),
          { ...DEADLINE, what: 'the decision to wait inside its transaction' },
        );
        if (typeof inside === 'number') {
          decisionPid = inside;
          decided = attempt;
          break;
        }
        const refused = await attempt;
        expect(refused.status, refused.text).toBe(409);
        expect(refused.json.code).toBe('approval_expired');
      }
      if (!decided || !deadline || !decisionPid) throw new Error("the decision never checked its deadline before it, even 10 s ahead: this test's premise did not hold");
      await waitFor(async () => (await stack.db.admin(`select clock_timestamp() > $1::timestamptz as past`, [deadline])).rows[0].past, { ...DEADLINE, what: 'the deadline to pass' });
      // 4. The timer fires: its expiry waits for the run the decision holds.
      await timer.promote();
      await blockedBy(stack.db.admin, decisionPid, "the timer's expiry to wait for the decision", DEADLINE);
      await outbox.release();
      const d = await decided;
      expect(d.status, d.text).toBe(200);
      expect(d.json.status).toBe('approved');
      // Read from the queue's event stream, not the job: the decision's after-commit work removes the
      // run's timer, which may come just after the timer completed (then the job is gone, its event is not).
      const outcome = await waitFor(() => completedEvent(stack.container.redis, queue, timer.id!), { ...DEADLINE, what: 'the timer to end' });
      expect(outcome).toEqual({ outcome: 'not_pending' });
      const done = await waitFor(async () => ((await runNow())?.status === 'completed' ? runNow() : undefined), { ...DEADLINE, what: 'the approved run to complete' });
      expect(done.steps[2].output.outcome).toBe('approved');
      const approval = (await api(stack, 'GET', `/api/v1/approvals/${approvalId}`, { token: slowApprover })).json;
      expect(approval.status).toBe('approved');
      expect(Date.parse(approval.decided_at)).toBeLessThan(new Date(deadline).getTime());
    } finally {
      await outbox.close();
      if (held) await requests.query('rollback').catch(() => {});
      await requests.end();
    }
  });
});
