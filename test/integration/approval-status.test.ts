/**
 * An approval request's status tells the truth (docs/api.md, approvals): a cancelled run's pending
 * request reads `withdrawn`, a pending request past its SLA deadline reads `expired` before a worker's
 * timer records it, the list filters by the status read (across pages), and a cancel racing a decision
 * ends consistently in both orders without a deadlock (the run row is locked first on both paths).
 * Real PostgreSQL as the application role, Redis and a worker process.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { api, CLASS_C_SUBMISSION, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { backendPid, blockedBy } from '../helpers/lock-graph.ts';
import { namedJobId } from '../../src/platform/queue/job-ids.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';
import { ApprovalService } from '../../src/modules/approvals/approval.service.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { sqlState } from '../helpers/sql-state.ts';

const LONG = 120_000;
let stack: TestStack;
const tenant = newTenant();
const tok: Record<string, string> = {};

beforeAll(async () => {
  stack = await startStack();
  await stack.spawnWorker();
  const t = (sub: string, roles: string[] = []) => stack.token({ tenantId: tenant, sub, roles });
  tok.submitter = await t('submitter-1');
  tok.approver1 = await t('approver-1', ['approver']);
  tok.approver2 = await t('approver-2', ['approver']);
}, LONG);
afterAll(async () => {
  await stack?.stop();
});

const key = () => ({ 'Idempotency-Key': randomUUID() });
const get = (path: string, token = tok.submitter!) => api(stack, 'GET', path, { token });
const cancel = (runId: string, token = tok.submitter!) => api(stack, 'POST', `/api/v1/golden-path/runs/${runId}/cancel`, { token, headers: key() });
const decide = (approvalId: string, token: string, decision: 'approve' | 'reject' = 'approve') =>
  api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token, body: { decision }, headers: key() });

async function approval(id: string, token = tok.submitter!) {
  const res = await get(`/api/v1/approvals/${id}`, token);
  expect(res.status, res.text).toBe(200);
  return res.json;
}

/** Every request a filtered list shows, page by page (`limit` per page), in the order it shows them. */
async function listAll(query: string, limit: number, token = tok.submitter!): Promise<Array<{ id: string; status: string; decided_at: string | null }>> {
  const items: Array<{ id: string; status: string; decided_at: string | null; created_at: string }> = [];
  let cursor: string | null = null;
  for (let page = 0; page < 100; page++) {
    const res = await get(`/api/v1/approvals?limit=${limit}${query ? `&${query}` : ''}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`, token);
    expect(res.status, res.text).toBe(200);
    items.push(...res.json.items);
    cursor = res.json.next_cursor;
    if (cursor === null) return items;
    // The cursor is the last item's (created_at, id), as before.
    const last = res.json.items[res.json.items.length - 1];
    expect(Buffer.from(cursor, 'base64url').toString('utf8')).toBe(`${last.created_at}|${last.id}`);
  }
  throw new Error('more than 100 pages');
}
const ids = (items: Array<{ id: string }>) => items.map((i) => i.id);

async function submitWaiting(body: unknown, token = tok.submitter!): Promise<{ runId: string; approvalId: string }> {
  const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body, headers: key() });
  expect(res.status, res.text).toBe(202);
  const runId = res.json.run_id as string;
  const run = await waitFor(
    async () => {
      const r = (await get(`/api/v1/golden-path/runs/${runId}`, token)).json;
      return ['waiting', 'failed', 'completed'].includes(r?.status) ? r : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 100, what: `run ${runId} to wait for its approval` },
  );
  expect(run.status).toBe('waiting');
  return { runId, approvalId: run.steps[2].output.approval_request_id as string };
}

const runRow = async (runId: string) =>
  (await stack.db.admin(`select status, completed_at, idempotency_hash from durable_runs where id = $1`, [runId])).rows[0] as { status: string; completed_at: Date | null; idempotency_hash: string };
const requestRow = async (approvalId: string) =>
  (await stack.db.admin(`select status, decided_at, sla_deadline, (select count(*)::int from approval_decisions d where d.approval_request_id = a.id) as decisions from approval_requests a where id = $1`, [approvalId]))
    .rows[0] as { status: string; decided_at: Date | null; sla_deadline: Date | null; decisions: number };

/**
 * Polls until a backend of this test's database waits for a lock (a row, a transaction, an advisory lock)
 * that backend `holder` holds, by the lock graph (pg_blocking_pids); the waiter's pid. Not by
 * pg_stat_activity's query text: the API and the services send a transaction's statements in messages
 * of several, and a backend waiting inside one may show another statement of it there, so a poll on the
 * text could miss it until the deadline. A waiter's transaction start (xact_start) is then read by its
 * pid; only where a statement's own clock (query_start) is read is its text still checked, by pid.
 */
const waitsFor = (holder: number, what: string) => blockedBy(stack.db.admin, holder, what, { timeoutMs: 60_000 });

describe('a cancelled run withdraws its pending approval request', () => {
  it('class B waiting, cancelled: its request reads withdrawn in detail and list, leaves ?status=pending for ?status=withdrawn, and a decision answers 409 run_not_active', { timeout: LONG }, async () => {
    const { runId, approvalId } = await submitWaiting(SAMPLE_SUBMISSION);
    expect(ids(await listAll('status=pending', 50))).toContain(approvalId);

    const res = await cancel(runId);
    expect(res.status, res.text).toBe(200);
    expect(res.json.status).toBe('cancelled');

    // decided_at is the cancel's time: the run's completed_at, the same transaction's clock.
    const withdrawn = await approval(approvalId);
    expect(withdrawn).toMatchObject({ id: approvalId, run_id: runId, status: 'withdrawn', decided_at: res.json.completed_at, decisions: [] });
    expect((await listAll('', 50)).find((i) => i.id === approvalId)).toMatchObject({ status: 'withdrawn', decided_at: res.json.completed_at });
    expect(ids(await listAll('status=pending', 50))).not.toContain(approvalId);
    expect(ids(await listAll('status=withdrawn', 50))).toContain(approvalId);
    expect(await requestRow(approvalId)).toMatchObject({ status: 'withdrawn', decisions: 0 });

    const decision = await decide(approvalId, tok.approver1!);
    expect(decision.status, decision.text).toBe(409);
    expect(decision.json).toMatchObject({ code: 'run_not_active', run_status: 'cancelled' });
    expect(await requestRow(approvalId)).toMatchObject({ status: 'withdrawn', decisions: 0 });
    expect(await approval(approvalId)).toEqual(withdrawn);
  });

  it('a request that already reads expired (its deadline passed, its timer not run yet) stays expired at its deadline when its run is cancelled, never rewritten as withdrawn', { timeout: LONG }, async () => {
    const { runId, approvalId } = await submitWaiting(SAMPLE_SUBMISSION);
    // Past its deadline while its timer is still delayed to the original one: the run still waits.
    await stack.db.admin(`update approval_requests set sla_deadline = date_trunc('milliseconds', now()) - interval '1 minute' where id = $1`, [approvalId]);
    const read = await approval(approvalId);
    expect(read).toMatchObject({ status: 'expired', decided_at: read.sla_deadline });
    expect(ids(await listAll('status=expired', 50))).toContain(approvalId);

    const res = await cancel(runId);
    expect(res.status, res.text).toBe(200);
    expect(res.json.status).toBe('cancelled');
    // What it read before the cancel is what it reads after, and what is stored.
    expect(await approval(approvalId)).toEqual(read);
    expect(ids(await listAll('status=expired', 50))).toContain(approvalId);
    expect(ids(await listAll('status=withdrawn', 50))).not.toContain(approvalId);
    expect(await requestRow(approvalId)).toMatchObject({ status: 'expired', decided_at: new Date(read.sla_deadline) });
  });
});

/**
 * A tenant of its own whose class B SLA is an hour (its timers stay delayed while a test runs, however
 * slow a loaded machine makes it: a worker's expiry of a run a test holds would race the test's own
 * contender, and its statement match the same pg_stat_activity filters): a submitter's and an approver's tokens.
 */
async function shortSlaTenant(): Promise<{ submitter: string; approver: string }> {
  const own = newTenant();
  const admin = await stack.token({ tenantId: own, sub: 'admin-1', roles: ['admin'] });
  const policy = { class_a_max_cost: 50000, class_a_max_payback_months: 6, class_c_min_cost: 250000, class_c_min_payback_months: 24, sla_b_seconds: 3600, sla_c_seconds: 7200 };
  expect((await api(stack, 'PUT', '/api/v1/approval-policy', { token: admin, body: policy })).status).toBe(200);
  return { submitter: await stack.token({ tenantId: own, sub: 'submitter-2' }), approver: await stack.token({ tenantId: own, sub: 'approver-2', roles: ['approver'] }) };
}

describe('a pending request past its SLA deadline reads expired before a worker records it', () => {
  it('detail and list read expired (decided_at the deadline), ?status=pending leaves it out and ?status=expired takes it in, a decision is 409 approval_expired; the timer then records the same', { timeout: LONG }, async () => {
    // A tenant whose class B SLA is an hour: its timer waits for that; the deadline is then moved into
    // the past by hand, so the timer cannot have fired while the reads are checked (it is still delayed).
    const { submitter, approver } = await shortSlaTenant();
    const { runId, approvalId } = await submitWaiting(SAMPLE_SUBMISSION, submitter);
    const queue = stack.container.queues.get(TIMER_QUEUE)!;
    const timerId = namedJobId('gp', (await runRow(runId)).idempotency_hash, 'sla');
    expect(await queue.getJobState(timerId)).toBe('delayed');
    expect((await approval(approvalId, submitter)).status).toBe('pending');

    const [moved] = (await stack.db.admin(`update approval_requests set sla_deadline = now() - interval '1 second' where id = $1 returning sla_deadline`, [approvalId])).rows as Array<{ sla_deadline: Date }>;
    const deadline = moved!.sla_deadline.toISOString();

    const read = await approval(approvalId, submitter);
    expect(read).toMatchObject({ status: 'expired', sla_deadline: deadline, decided_at: deadline, decisions: [] });
    expect((await listAll('', 50, submitter)).find((i) => i.id === approvalId)).toMatchObject({ status: 'expired', decided_at: deadline });
    expect(ids(await listAll('status=pending', 50, submitter))).not.toContain(approvalId);
    expect(ids(await listAll('status=expired', 50, submitter))).toEqual([approvalId]);
    const late = await decide(approvalId, approver);
    expect(late.status, late.text).toBe(409);
    expect(late.json.code).toBe('approval_expired');
    // The run waits until a worker records the expiry (docs/api.md): its step 3 still reads pending.
    const run = (await get(`/api/v1/golden-path/runs/${runId}`, submitter)).json;
    expect(run).toMatchObject({ status: 'waiting' });
    expect(run.steps[2].output.outcome).toBe('pending');
    // What was read was derived: the stored row is pending and its timer has not fired.
    expect(await requestRow(approvalId)).toMatchObject({ status: 'pending', decided_at: null, decisions: 0 });
    expect(await queue.getJobState(timerId)).toBe('delayed');

    // The timer fires now: the worker records the expiry, and the request reads as it did.
    await (await queue.getJob(timerId))!.promote();
    await waitFor(async () => (await get(`/api/v1/golden-path/runs/${runId}`, submitter)).json?.status === 'approval_expired', { timeoutMs: 30_000, what: 'the worker to record the expiry' });
    expect(await requestRow(approvalId)).toMatchObject({ status: 'expired', decided_at: moved!.sla_deadline });
    expect(await approval(approvalId, submitter)).toEqual(read);
    expect(ids(await listAll('status=expired', 50, submitter))).toEqual([approvalId]);
  });

  /**
   * A waiting class B request (shortSlaTenant) whose run row another transaction holds (or what
   * `opts.hold` locks: a table, as a migration would) while `contend` sends what waits for it; the
   * deadline is then set just after that waiting transaction began (its now()) — or, `from:
   * 'query_start'`, just after the waiting statement itself began (its statement_timestamp()) — and the
   * clock passes it before the lock is released: the request reads expired meanwhile. With
   * `opts.viaGate` (the hold keeps the requests table from being written) the deadline is set by the
   * holding transaction, committed with its release. Resolves with the contender's answer and the deadline.
   */
  async function waitedPastDeadline<T>(
    waitingQuery: string,
    contend: (w: { runId: string; approvalId: string; submitter: string; approver: string }) => Promise<T>,
    opts: { hold?: (gate: pg.Client, runId: string) => Promise<unknown>; from?: 'xact_start' | 'query_start'; viaGate?: boolean } = {},
  ) {
    const { submitter, approver } = await shortSlaTenant();
    const { runId, approvalId } = await submitWaiting(SAMPLE_SUBMISSION, submitter);
    // Another transaction holds the run row (as a concurrent decision, cancel or expiry would).
    const gate = new pg.Client({ connectionString: stack.db.adminUrl });
    await gate.connect();
    const gatePid = await backendPid((sql, params) => gate.query(sql, params));
    try {
      await gate.query('begin');
      await (opts.hold ?? ((g: pg.Client, id: string) => g.query('select 1 from durable_runs where id = $1 for update', [id])))(gate, runId);
      const answered = contend({ runId, approvalId, submitter, approver });
      const waiter = await waitsFor(gatePid, 'the contender to wait for the lock held');
      // The deadline is set from that statement's own clock: it must be the one shown (the waiter, blocked, shows no other after it).
      if (opts.from === 'query_start') {
        await waitFor(async () => (await stack.db.admin(`select 1 from pg_stat_activity where pid = $1 and query like $2`, [waiter, waitingQuery])).rowCount, {
          timeoutMs: 60_000,
          what: `the contender's waiting statement (${waitingQuery}) to be shown`,
        });
      }
      const [row] = (
        await (opts.viaGate ? (q: string, p: unknown[]) => gate.query(q, p) : (q: string, p: unknown[]) => stack.db.admin(q, p))(
          `update approval_requests set sla_deadline = (select ${opts.from ?? 'xact_start'} + interval '1 millisecond' from pg_stat_activity where pid = $2)
            where id = $1 returning sla_deadline as deadline`,
          [approvalId, waiter],
        )
      ).rows as Array<{ deadline: Date }>;
      const deadline = row!.deadline;
      expect(deadline).toBeInstanceOf(Date);
      await waitFor(async () => (await gate.query(`select clock_timestamp() > $1::timestamptz as past`, [deadline])).rows[0].past, { what: 'the deadline to pass' });
      if (!opts.viaGate) expect((await approval(approvalId, submitter)).status).toBe('expired');
      await gate.query('commit');
      return { answer: await answered, deadline, runId, approvalId, submitter };
    } finally {
      await gate.query('rollback').catch(() => {});
      await gate.end();
    }
  }

  /** A cancel (waitedPastDeadline's) answered 200 and recorded the request expired at its deadline, as it read. */
  async function cancelledExpired(w: { answer: Awaited<ReturnType<typeof cancel>>; deadline: Date; runId: string; approvalId: string; submitter: string }) {
    expect(w.answer.status, w.answer.text).toBe(200);
    expect(w.answer.json.status).toBe('cancelled');
    expect(await runRow(w.runId)).toMatchObject({ status: 'cancelled' });
    expect(await requestRow(w.approvalId)).toMatchObject({ status: 'expired', decided_at: w.deadline, decisions: 0 });
    expect(await approval(w.approvalId, w.submitter)).toMatchObject({ status: 'expired', decided_at: w.deadline.toISOString() });
  }

  it('a decision that began before the deadline but waited for the run row past it is 409 approval_expired, as the request read meanwhile; nothing is recorded', { timeout: LONG }, async () => {
    const { answer, deadline, approvalId, submitter } = await waitedPastDeadline('%from durable_runs where id = (select run_id from approval_requests%', (w) => decide(w.approvalId, w.approver));
    expect(answer.status, answer.text).toBe(409);
    expect(answer.json.code).toBe('approval_expired');
    expect(await requestRow(approvalId)).toMatchObject({ status: 'pending', decisions: 0 });
    expect(await approval(approvalId, submitter)).toMatchObject({ status: 'expired', decided_at: deadline.toISOString(), decisions: [] });
  });

  it('a cancel that began before the deadline but waited for the run row past it records the request expired at its deadline, as it read meanwhile, not withdrawn', { timeout: LONG }, async () => {
    await cancelledExpired(await waitedPastDeadline('%from durable_runs where tenant_id = % and workflow = % for update%', (w) => cancel(w.runId, w.submitter)));
  });

  it('a decision that waited, inside the statement that tests its deadline again, for a table a migration holds (ACCESS EXCLUSIVE on durable_checkpoints) past the deadline is 409 approval_expired; nothing is recorded', { timeout: LONG }, async () => {
    // The decision has the run and the request; its next statement, which tests the deadline again,
    // was sent before the deadline and waits for the checkpoints table while the deadline passes: its
    // statement_timestamp() is after that wait (a guard: were it the statement's arrival, as its
    // query_start is, the decision would be accepted after its deadline).
    // The check compares the deadline the decision read with the request's row lock, so it cannot be
    // moved once the check waits, only before the decision reads it: the decision is stopped first,
    // waiting for its run row (held here; confirmed), only then is the deadline set `margin` ahead of
    // the database's clock, and the run released; what remains before the check's arrival is one
    // statement of the decision's transaction, no HTTP. That it arrived before the deadline is read
    // (its backend's query_start), not assumed: had load delayed it past the margin, the premise did
    // not hold (the answer is 409 all the same, nothing recorded), and it is tried again on the same
    // request with a wider margin (the widest well within the API's statement timeout, 30 s, which the
    // waiting check counts against).
    const { submitter, approver } = await shortSlaTenant();
    const { runId, approvalId } = await submitWaiting(SAMPLE_SUBMISSION, submitter);
    const check = '%from durable_checkpoints c where c.tenant_id = %';
    for (const margin of [2, 8, 20]) {
      const checkpoints = await holdTable(stack.db.adminUrl, 'durable_checkpoints', 'access exclusive');
      const gate = new pg.Client({ connectionString: stack.db.adminUrl });
      await gate.connect();
      try {
        const gatePid = await backendPid((sql, params) => gate.query(sql, params));
        await gate.query('begin');
        await gate.query('select 1 from durable_runs where id = $1 for update', [runId]);
        const answered = decide(approvalId, approver);
        // Its backend, waiting for the run: its transaction has begun (its now() is before the deadline set next).
        const pid = await waitsFor(gatePid, 'the decision to wait for the run row');
        const { deadline } = (
          await stack.db.admin(`update approval_requests set sla_deadline = clock_timestamp() + $2 * interval '1 second' where id = $1 returning sla_deadline as deadline`, [approvalId, margin])
        ).rows[0] as { deadline: Date };
        await gate.query('commit');
        // Not due by its transaction's start, it locks the run and the request (the deadline as set), and its check waits for the table
        // (told by the lock graph). Its arrival is that statement's query_start, read only when it is the statement shown: were
        // another of its message shown, the premise is unconfirmed (not early), and it is tried again with a wider margin.
        await waitFor(async () => (await stack.db.admin(`select 1 from pg_stat_activity where pid = $1 and $2 = any(pg_blocking_pids(pid))`, [pid, checkpoints.pid])).rowCount, {
          timeoutMs: 60_000,
          what: 'the decision to wait for the checkpoints table, holding the run and the request',
        });
        const early = (
          (await stack.db.admin(`select query_start < $3::timestamptz as early from pg_stat_activity where pid = $1 and $4 = any(pg_blocking_pids(pid)) and query like $2`, [pid, check, deadline, checkpoints.pid])).rows[0] as
            | { early: boolean }
            | undefined
        )?.early === true;
        await waitFor(async () => (await stack.db.admin(`select clock_timestamp() > $1::timestamptz as past`, [deadline])).rows[0].past, { timeoutMs: 120_000, what: 'the deadline to pass' });
        expect((await approval(approvalId, submitter)).status).toBe('expired');
        await checkpoints.release();
        const answer = await answered;
        expect(answer.status, answer.text).toBe(409);
        expect(answer.json.code).toBe('approval_expired');
        expect(await requestRow(approvalId)).toMatchObject({ status: 'pending', decided_at: null, decisions: 0 });
        if (early) {
          expect(await approval(approvalId, submitter)).toMatchObject({ status: 'expired', decided_at: deadline.toISOString(), decisions: [] });
          return;
        }
      } finally {
        await gate.query('rollback').catch(() => {});
        await gate.end();
        await checkpoints.close();
      }
    }
    throw new Error('the decision never sent its deadline check before the deadline, even 20 s ahead: the premise of this test did not hold');
  });

  it('a decision that waited for the requests table (a lock a migration holds) past the deadline is 409 approval_expired; nothing is recorded', { timeout: LONG }, async () => {
    const { answer, approvalId } = await waitedPastDeadline('%from durable_runs where id = (select run_id from approval_requests%', (w) => decide(w.approvalId, w.approver), {
      hold: (gate) => gate.query('lock table approval_requests in exclusive mode'),
      viaGate: true,
    });
    expect(answer.status, answer.text).toBe(409);
    expect(answer.json.code).toBe('approval_expired');
    expect(await requestRow(approvalId)).toMatchObject({ status: 'pending', decided_at: null, decisions: 0 });
  });

  it('a cancel whose withdrawal waited for the requests table (a lock a migration holds) past the deadline records the request expired at its deadline, not withdrawn', { timeout: LONG }, async () => {
    // The cancel has the run; its update of the request, sent before the deadline, waits for the table
    // while the deadline passes: tested by that statement's clock, after the wait (a guard: by its
    // arrival it would be recorded withdrawn after the request had read expired).
    await cancelledExpired(
      await waitedPastDeadline('%update approval_requests a set status = case%', (w) => cancel(w.runId, w.submitter), {
        hold: (gate) => gate.query('lock table approval_requests in exclusive mode'),
        from: 'query_start',
        viaGate: true,
      }),
    );
  });

  // It read the status by its transaction's start (now()), before the wait: approval_status pending.
  it('a decision that waited for the run row while run retention deleted the run, past the deadline, is 409 run_deleted naming the request expired, as it read meanwhile', { timeout: LONG }, async () => {
    const { answer, approvalId, submitter } = await waitedPastDeadline('%from durable_runs where id = (select run_id from approval_requests%', (w) => decide(w.approvalId, w.approver), {
      // Run retention's delete (its checkpoints with it, on cascade; the request is kept, ADR 0011).
      hold: (gate, runId) => gate.query('delete from durable_runs where id = $1', [runId]),
    });
    expect(answer.status, answer.text).toBe(409);
    expect(answer.json).toMatchObject({ code: 'run_deleted', approval_status: 'expired' });
    expect(await requestRow(approvalId)).toMatchObject({ status: 'pending', decided_at: null, decisions: 0 });
    expect((await approval(approvalId, submitter)).status).toBe('expired');
  });

  // It decided by its transaction's start (now()) and answered not_due: its timer was put off though the request read expired.
  it("the SLA timer's expiry that began before the deadline but waited for the run row past it expires the request at its deadline (not put off as not yet due); a decision then is 409", { timeout: LONG }, async () => {
    const tenantOf = async (runId: string) => (await stack.db.admin(`select tenant_id from durable_runs where id = $1`, [runId])).rows[0].tenant_id as string;
    const { answer, deadline, runId, approvalId, submitter } = await waitedPastDeadline(
      '%for update) r%join approval_requests a on a.tenant_id = r.tenant_id and a.run_id = r.id where a.tenant_id = %',
      async (w) => {
        const own = await tenantOf(w.runId);
        // The timer's handler, as a worker runs it; settled here, so a failure is this check's.
        return tenantEm(stack.container.orm, own)
          .transactional((tx) => new ApprovalService(stack.container.runtime).expire(tx, own, w.runId))
          .then((outcome) => ({ outcome }), (error: unknown) => ({ error }));
      },
      { from: 'query_start' },
    );
    expect(answer).toMatchObject({ outcome: { outcome: 'expired', approvalRequestId: approvalId } });
    expect(await requestRow(approvalId)).toMatchObject({ status: 'expired', decided_at: deadline, decisions: 0 });
    expect(await runRow(runId)).toMatchObject({ status: 'approval_expired' });
    const late = await decide(approvalId, (await stack.token({ tenantId: await tenantOf(runId), sub: 'approver-3', roles: ['approver'] })));
    expect(late.status, late.text).toBe(409);
    expect(late.json.code).toBe('approval_expired');
    expect(await approval(approvalId, submitter)).toMatchObject({ status: 'expired', decided_at: deadline.toISOString() });
  });

  it('the list filters by the status read, newest first, across pages by the same (created_at, id) cursor', { timeout: LONG }, async () => {
    // Rows of a tenant of their own, newest first: stored expired and overdue pending interleaved.
    const own = newTenant();
    const token = await stack.token({ tenantId: own, sub: 'reader' });
    const rows: Array<{ status: string; overdue?: boolean }> = [
      { status: 'pending', overdue: true },
      { status: 'expired' },
      { status: 'pending' },
      { status: 'withdrawn' },
      { status: 'pending', overdue: true },
      { status: 'approved' },
      { status: 'expired' },
      { status: 'pending' },
      { status: 'rejected' },
      { status: 'pending', overdue: true },
    ];
    const made = rows.map((r, i) => ({ ...r, id: randomUUID(), at: new Date(Date.UTC(2026, 0, 1) - i * 60_000) }));
    for (const r of made) {
      const ended = r.status !== 'pending';
      await stack.db.admin(
        `insert into approval_requests (id, tenant_id, run_id, approval_class, required_approvals, status, submitted_by, reasons, sla_deadline, decided_at, created_at, updated_at)
         values ($1, $2, $3, 'B', 1, $4, 'someone', '[]', now() + ($5::int * interval '1 hour'), $6, $7, $7)`,
        [r.id, own, randomUUID(), r.status, r.overdue || r.status === 'expired' ? -1 : 1, ended ? r.at : null, r.at],
      );
    }
    const reads = (r: (typeof made)[number]) => (r.overdue ? 'expired' : r.status);
    const expected = (status: string) => made.filter((r) => reads(r) === status).map((r) => r.id);

    for (const limit of [1, 2, 3, 50]) {
      const all = await listAll('', limit, token);
      expect(all.map((i) => [i.id, i.status])).toEqual(made.map((r) => [r.id, reads(r)]));
      for (const status of ['pending', 'expired', 'withdrawn', 'approved', 'rejected']) {
        const page = await listAll(`status=${status}`, limit, token);
        expect(ids(page), `?status=${status}&limit=${limit}`).toEqual(expected(status));
        expect(page.every((i) => i.status === status)).toBe(true);
      }
    }
    expect(expected('expired')).toHaveLength(5);
    expect(expected('pending')).toHaveLength(2);
  });
});

describe('an expiry records the decisions made before it', () => {
  it("a class C request that expires with one of its two approvals: its run's step 3 output (outcome expired) holds that approval, as the request does", { timeout: LONG }, async () => {
    const { runId, approvalId } = await submitWaiting(CLASS_C_SUBMISSION);
    const first = await decide(approvalId, tok.approver1!, 'approve');
    expect(first.status, first.text).toBe(200);
    expect(first.json).toMatchObject({ status: 'pending', approvals: 1, required_approvals: 2 });
    // The deadline passes before the second approver decides; the timer fires now.
    await stack.db.admin(`update approval_requests set sla_deadline = date_trunc('milliseconds', now()) - interval '1 second' where id = $1`, [approvalId]);
    const queue = stack.container.queues.get(TIMER_QUEUE)!;
    await (await queue.getJob(namedJobId('gp', (await runRow(runId)).idempotency_hash, 'sla')))!.promote();
    const run = await waitFor(
      async () => {
        const r = (await get(`/api/v1/golden-path/runs/${runId}`)).json;
        return r?.status === 'approval_expired' ? r : undefined;
      },
      { timeoutMs: 30_000, what: 'the worker to record the expiry' },
    );
    const request = await approval(approvalId);
    expect(request).toMatchObject({ status: 'expired', decisions: [{ approver: 'approver-1', decision: 'approve', kind: 'human' }] });
    expect(run.steps[2].output.outcome).toBe('expired');
    expect(run.steps[2].output.decisions).toEqual(
      request.decisions.map((d: { approver: string; decision: string; comment: string | null; kind: string; decided_at: string }) => ({ decided_by: d.approver, decision: d.decision, comment: d.comment, decided_at: d.decided_at, kind: d.kind })),
    );
  });
});

describe('a decision is a record the application cannot rewrite', () => {
  it("as the application role under the request's own tenant, a decision can be neither updated (one approver passed off as a second) nor deleted (42501)", { timeout: LONG }, async () => {
    const { approvalId } = await submitWaiting(CLASS_C_SUBMISSION);
    const first = await decide(approvalId, tok.approver1!, 'approve');
    expect(first.json).toMatchObject({ status: 'pending', approvals: 1, required_approvals: 2 });
    const em = tenantEm(stack.container.orm, tenant);
    expect(await sqlState(em.execute(`update approval_decisions set approver = 'approver-2' where approval_request_id = ?`, [approvalId]))).toBe('42501');
    expect(await sqlState(em.execute(`delete from approval_decisions where approval_request_id = ?`, [approvalId]))).toBe('42501');
    expect((await approval(approvalId)).decisions).toMatchObject([{ approver: 'approver-1', decision: 'approve', kind: 'human' }]);
    // The row stayed: approver-1 still cannot decide a second time.
    expect((await decide(approvalId, tok.approver1!, 'approve')).json).toMatchObject({ status: 409 });
  });

  it("as the application role under the request's own tenant, an approval request cannot be deleted (42501): the request, its class and its decisions stay", { timeout: LONG }, async () => {
    const { approvalId } = await submitWaiting(CLASS_C_SUBMISSION);
    expect((await decide(approvalId, tok.approver1!, 'approve')).json).toMatchObject({ status: 'pending', approvals: 1 });
    const em = tenantEm(stack.container.orm, tenant);
    expect(await sqlState(em.execute(`delete from approval_requests where id = ?`, [approvalId]))).toBe('42501');
    expect(await sqlState(em.execute(`delete from approval_requests`))).toBe('42501');
    expect(await approval(approvalId)).toMatchObject({ status: 'pending', approval_class: 'C', decisions: [{ approver: 'approver-1', decision: 'approve' }] });
  });
});

describe("a human approver whose subject is the platform's own actor name", () => {
  // The approval step records a class A approval as decided by "system" (kind system): an identity
  // provider issuing that subject must not make a human's decision read as the platform's.
  it('approving or rejecting is 403 problem+json; nothing is recorded, the request stays pending', { timeout: LONG }, async () => {
    const { approvalId } = await submitWaiting(SAMPLE_SUBMISSION);
    const system = await stack.token({ tenantId: tenant, sub: 'system', roles: ['approver'] });
    for (const decision of ['approve', 'reject'] as const) {
      const res = await decide(approvalId, system, decision);
      expect(res.status, res.text).toBe(403);
      expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(res.json).toMatchObject({ status: 403, code: 'forbidden' });
      expect(res.json.detail).toMatch(/"system"/);
    }
    expect(await requestRow(approvalId)).toMatchObject({ status: 'pending', decided_at: null, decisions: 0 });
    expect(await decide(approvalId, tok.approver1!)).toMatchObject({ status: 200 });
  });
});

describe("a class C request's decisions are recorded in the order they were applied", () => {
  it("a second approval whose transaction began before the first's, and which waited for the run behind the first's locks, is recorded after it: in the request, its decided_at, the run's step 3 and the evidence pack", { timeout: LONG }, async () => {
    const { runId, approvalId } = await submitWaiting(CLASS_C_SUBMISSION);
    const service = new ApprovalService(stack.container.runtime);
    // The second approval (approver-2) begins first: its transaction's first statement waits for an
    // advisory lock another connection holds, so its now() is fixed before the first approval's.
    const gate = new pg.Client({ connectionString: stack.db.adminUrl });
    await gate.connect();
    // The first approval (approver-1, over HTTP) is held at its insert into approval_decisions, after its locks.
    const decisionsTable = await holdTable(stack.db.ownerUrl, 'approval_decisions');
    try {
      await gate.query('begin');
      await gate.query('select pg_advisory_xact_lock(7318)');
      const second = tenantEm(stack.container.orm, tenant)
        .transactional(async (tx) => {
          await tx.execute('select pg_advisory_xact_lock(7318)');
          return service.decide(tx, { sub: 'approver-2', tenantId: tenant, roles: ['approver'] }, approvalId, 'approve', null);
        })
        // After the commit, as the route does: the run job is enqueued (step 4). Settled here, so a failure is this check's.
        .then(async ({ result, afterCommit }) => (await afterCommit(), { result }))
        .then((ok) => ok, (error: unknown) => ({ error }));
      const advisoryWaits = `select count(*)::int as n from pg_locks
                              where locktype = 'advisory' and objid = 7318 and not granted and database = (select oid from pg_database where datname = current_database())`;
      await waitFor(async () => (await gate.query(advisoryWaits)).rows[0].n > 0, { timeoutMs: 20_000, what: 'the second approval to begin and wait for the advisory lock' });
      const first = decide(approvalId, tok.approver1!);
      const firstPid = await decisionsTable.waiting('the first approval to hold the run and the request and wait to record');
      // The second goes on and waits for the run row the first holds.
      await gate.query('commit');
      const secondPid = await waitsFor(firstPid, 'the second approval to wait for the run row behind the first');
      // The premise: the second's transaction began before the first's (each read by its backend's pid).
      const [{ inverted }] = (
        await stack.db.admin(`select (select xact_start from pg_stat_activity where pid = $1) < (select xact_start from pg_stat_activity where pid = $2) as inverted`, [secondPid, firstPid])
      ).rows;
      expect(inverted).toBe(true);
      await decisionsTable.release();
      const one = await first;
      expect(one.status, one.text).toBe(200);
      expect(one.json).toMatchObject({ status: 'pending', approvals: 1, required_approvals: 2 });
      expect(await second).toEqual({ result: expect.objectContaining({ status: 'approved', approvals: 2, required_approvals: 2 }) });
    } finally {
      await gate.query('rollback').catch(() => {});
      await gate.end();
      await decisionsTable.close();
    }

    // Stored in the order applied: approver-1, then approver-2, whose time is the request's decided_at.
    const stored = (
      await stack.db.admin(`select approver, created_at from approval_decisions where approval_request_id = $1 order by created_at`, [approvalId])
    ).rows as Array<{ approver: string; created_at: Date }>;
    expect(stored.map((d) => d.approver)).toEqual(['approver-1', 'approver-2']);
    const [{ ordered, final }] = (
      await stack.db.admin(
        `select bool_and(d2.created_at > d1.created_at) as ordered, bool_and(a.decided_at = d2.created_at and a.decided_at < a.sla_deadline) as final
           from approval_requests a join approval_decisions d1 on d1.approval_request_id = a.id and d1.approver = 'approver-1'
           join approval_decisions d2 on d2.approval_request_id = a.id and d2.approver = 'approver-2' where a.id = $1`,
        [approvalId],
      )
    ).rows;
    expect({ ordered, final }).toEqual({ ordered: true, final: true });
    const read = await approval(approvalId);
    expect(read).toMatchObject({ status: 'approved', decided_at: read.decisions[1].decided_at });
    expect(read.decisions.map((d: { approver: string }) => d.approver)).toEqual(['approver-1', 'approver-2']);
    // The run's step 3 and the evidence pack record the decisions as the request shows them.
    const recorded = read.decisions.map((d: { approver: string; decision: string; comment: string | null; kind: string; decided_at: string }) => ({
      decided_by: d.approver,
      decision: d.decision,
      comment: d.comment,
      decided_at: d.decided_at,
      kind: d.kind,
    }));
    const done = await waitFor(
      async () => {
        const r = (await get(`/api/v1/golden-path/runs/${runId}`)).json;
        return ['completed', 'failed'].includes(r?.status) ? r : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 100, what: 'the run to complete' },
    );
    expect(done.status).toBe('completed');
    expect(done.steps[2].output).toMatchObject({ outcome: 'approved', decisions: recorded });
    // Step 3 completed when its final decision was recorded, not at that transaction's start (before both decisions).
    expect(done.steps[2].completed_at).toBe(read.decided_at);
    const pack = await get(`/api/v1/evidence/${done.steps[3].output.evidence_pack_id}`);
    expect(pack.status, pack.text).toBe(200);
    expect(pack.json.content.approval_packet.decisions).toEqual(recorded);
    expect((await get(`/api/v1/evidence/${done.steps[3].output.evidence_pack_id}/verify`)).json.valid).toBe(true);
  });
});

describe('a cancel racing a decision: both orders forced, no deadlock, a consistent end', () => {
  // Runs waiting on their approvals, made while the worker runs; then the worker stops, so no step of a
  // resumed run can commit (or end the run) while a cancel waits: each order ends one way only.
  const waiting: Record<'cancelFirst' | 'cancelFirstExpiry' | 'decisionFirstB' | 'decisionFirstC', { runId: string; approvalId: string }> = {} as never;
  beforeAll(async () => {
    waiting.cancelFirst = await submitWaiting(SAMPLE_SUBMISSION);
    waiting.cancelFirstExpiry = await submitWaiting(SAMPLE_SUBMISSION);
    waiting.decisionFirstB = await submitWaiting(SAMPLE_SUBMISSION);
    waiting.decisionFirstC = await submitWaiting(CLASS_C_SUBMISSION);
    for (const w of stack.workers) w.kill('SIGKILL');
    await Promise.all(stack.workers.map((w) => w.exited));
  }, LONG);

  /**
   * What races the cancel: `before` runs before the cancel is held, `start` sends it while the cancel
   * holds the run, and the function `start` returns checks its answer once the cancel has committed.
   */
  const contenders = {
    decision: {
      async before() {},
      start({ approvalId }: { approvalId: string }) {
        const answered = decide(approvalId, tok.approver1!);
        return async () => {
          const d = await answered;
          expect(d.status, d.text).toBe(409);
          expect(d.json).toMatchObject({ code: 'run_not_active', run_status: 'cancelled' });
        };
      },
    },
    expiry: {
      // A request whose deadline has passed; its timer's handler, as a worker runs it.
      async before({ approvalId }: { approvalId: string }) {
        await stack.db.admin(`update approval_requests set sla_deadline = now() - interval '1 second' where id = $1`, [approvalId]);
      },
      start({ runId }: { runId: string }) {
        // Settled here, so a failure (a deadlock) is this check's, never an unhandled rejection.
        const expired = tenantEm(stack.container.orm, tenant)
          .transactional((tx) => new ApprovalService(stack.container.runtime).expire(tx, tenant, runId))
          .then((outcome) => ({ outcome }), (error: unknown) => ({ error }));
        return async () => expect(await expired).toEqual({ outcome: { outcome: 'not_pending' } });
      },
    },
  };

  it.each([
    ['a decision', 'cancelFirst', 'decision'],
    ["the SLA timer's expiry", 'cancelFirstExpiry', 'expiry'],
  ] as const)(
    'the cancel locks the run first and is held before it withdraws the request; %s sent then waits for the run, not holding the request, and finds it ended once the cancel commits',
    { timeout: LONG },
    async (what, which, contender) => {
      const { runId, approvalId } = waiting[which];
      // The cancel is held right after it locked and ended the run, before its update of the request
      // (a statement trigger on approval_requests waits for an advisory lock the test holds).
      await stack.db.admin(`create function test_hold_withdrawal() returns trigger language plpgsql as $$ begin perform pg_advisory_xact_lock(7317); return null; end $$`);
      const gate = new pg.Client({ connectionString: stack.db.ownerUrl });
      await gate.connect();
      try {
        const gatePid = await backendPid((sql, params) => gate.query(sql, params));
        await contenders[contender].before({ approvalId });
        await gate.query('begin');
        await gate.query('select pg_advisory_xact_lock(7317)');
        await stack.db.admin(`create trigger test_hold_withdrawal before update on approval_requests for each statement execute function test_hold_withdrawal()`);
        const cancelled = cancel(runId);
        const cancelPid = await waitsFor(gatePid, 'the cancel to hold the run and wait before the request');
        const check = contenders[contender].start({ runId, approvalId });
        // It waits for the run row the cancel holds, before it locks the request: were it to lock the
        // request first, the cancel's update would wait for it in turn — a deadlock.
        await waitsFor(cancelPid, `${what} to wait for the run row`);
        await gate.query('commit');
        const c = await cancelled;
        expect(c.status, c.text).toBe(200);
        expect(c.json.status).toBe('cancelled');
        await check();
        const run = await runRow(runId);
        expect(run).toMatchObject({ status: 'cancelled' });
        // A request past its deadline (the expiry's) already read expired: the cancel records it so, at its deadline.
        const stored = await requestRow(approvalId);
        if (contender === 'expiry') expect(stored).toMatchObject({ status: 'expired', decisions: 0 });
        else expect(stored).toMatchObject({ status: 'withdrawn', decided_at: run.completed_at, decisions: 0 });
        if (contender === 'expiry') expect(stored.decided_at).toEqual(stored.sla_deadline);
        expect((await approval(approvalId)).status).toBe(stored.status);
      } finally {
        await gate.query('rollback').catch(() => {});
        await gate.end();
        await stack.db.admin('drop trigger if exists test_hold_withdrawal on approval_requests');
        await stack.db.admin('drop function if exists test_hold_withdrawal()');
      }
    },
  );

  it.each([
    ['B, the final approval', 'decisionFirstB', { decision: { status: 'approved', approvals: 1 }, request: 'approved', decisions: 1 }],
    ['C, the first of two approvals', 'decisionFirstC', { decision: { status: 'pending', approvals: 1 }, request: 'withdrawn', decisions: 1 }],
  ] as const)(
    'class %s: the decision holds its locks (the run, then the request) and is held before it records; a cancel sent then waits for the run and cancels it after the decision commits',
    { timeout: LONG },
    async (_what, which, end) => {
      const { runId, approvalId } = waiting[which];
      // The decision is held at its insert into approval_decisions, after its locking read.
      const decisions = await holdTable(stack.db.ownerUrl, 'approval_decisions');
      try {
        const decided = decide(approvalId, tok.approver1!);
        const decisionPid = await decisions.waiting('the decision to hold the run and the request and wait to record');
        const cancelled = cancel(runId);
        await waitsFor(decisionPid, 'the cancel to wait for the run row');
        await decisions.release();
        const [d, c] = await Promise.all([decided, cancelled]);
        expect(d.status, d.text).toBe(200);
        expect(d.json).toMatchObject(end.decision);
        expect(c.status, c.text).toBe(200);
        expect(c.json.status).toBe('cancelled');
        expect(await runRow(runId)).toMatchObject({ status: 'cancelled' });
        // A decided request stays decided (history); a C request still pending at the cancel is withdrawn, its first approval kept.
        const stored = await requestRow(approvalId);
        expect(stored).toMatchObject({ status: end.request, decisions: end.decisions });
        const read = await approval(approvalId);
        expect(read.status).toBe(end.request);
        expect(read.decisions).toEqual([expect.objectContaining({ approver: 'approver-1', decision: 'approve' })]);
        if (end.request === 'withdrawn') expect(stored.decided_at).toEqual((await runRow(runId)).completed_at);
        else expect(stored.decided_at!.getTime()).toBeLessThan((await runRow(runId)).completed_at!.getTime());
        // Nothing more decides it.
        const again = await decide(approvalId, tok.approver2!);
        expect(again.status, again.text).toBe(409);
        expect(again.json.code).toBe(end.request === 'withdrawn' ? 'run_not_active' : 'approval_decided');
      } finally {
        await decisions.close();
      }
    },
  );
});
