/**
 * POST /api/v1/<workflow>/runs/cancel — a tenant admin cancels many runs at once, each exactly as the
 * single cancel does (run-routes.ts), against the real stack (PostgreSQL as the application role, Redis).
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { api, CLASS_A_SUBMISSION, newTenant, runUsers, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { barrier, controlledStep, enteredBy, startRunHost, stepControl, wrappedGoldenPath } from '../helpers/run-host.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';
import { namedJobId, stepJobId } from '../../src/platform/queue/job-ids.ts';
import { GOLDEN_PATH, GOLDEN_PATH_QUEUE } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { ApprovalService } from '../../src/modules/approvals/approval.service.ts';
import { BULK_CANCEL_BATCH } from '../../src/platform/durable/run-cancel.ts';
import { CoalescingClient } from '../../src/platform/db/coalescing-client.ts';
import { inlineStatement } from '../../src/platform/db/statement-batch.ts';
import { backendPid, blockedBy } from '../helpers/lock-graph.ts';

const LONG = 120_000;
const BULK = '/api/v1/golden-path/runs/cancel';

async function submit(stack: TestStack, token: string, body: unknown = CLASS_A_SUBMISSION): Promise<string> {
  const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status, res.text).toBe(202);
  return res.json.run_id as string;
}

const bulk = (stack: TestStack, token: string, body: unknown, key: string | null = randomUUID()) =>
  api(stack, 'POST', BULK, { token, body, headers: key ? { 'Idempotency-Key': key } : {} });

const statusOf = async (stack: TestStack, id: string) => ((await stack.db.admin(`select status from durable_runs where id = $1`, [id])).rows[0] as { status: string }).status;
/** The statuses of `ids`, in their order, read in one query (not one connection per id). */
const statusesOf = async (stack: TestStack, ids: string[]) => {
  const rows = (await stack.db.admin(`select id, status from durable_runs where id = any($1::uuid[])`, [ids])).rows as Array<{ id: string; status: string }>;
  const byId = new Map(rows.map((r) => [r.id, r.status]));
  return ids.map((id) => byId.get(id));
};
const hashOf = async (stack: TestStack, id: string) => ((await stack.db.admin(`select idempotency_hash from durable_runs where id = $1`, [id])).rows[0] as { idempotency_hash: string }).idempotency_hash;

describe('bulk cancel, no worker (the runs stay pending)', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack();
  }, LONG);
  afterAll(async () => stack?.stop());

  it('cancels the matching runs of the caller tenant up to the limit; has_more until the last page; each reads cancelled as a single cancel leaves it', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await runUsers(stack, tenant);
    const ids = [await submit(stack, tok.submitter), await submit(stack, tok.submitter), await submit(stack, tok.submitter)];
    const first = await bulk(stack, tok.admin, { status: ['pending', 'running'], limit: 2 });
    expect(first.status, first.text).toBe(200);
    expect(first.json).toMatchObject({ cancelled: 2, has_more: true, unmatched_ids: [] });
    // Oldest first.
    expect(first.json.cancelled_ids).toEqual(ids.slice(0, 2));
    const second = await bulk(stack, tok.admin, { status: ['pending', 'running'], limit: 2 });
    expect(second.status, second.text).toBe(200);
    expect(second.json).toEqual({ cancelled: 1, cancelled_ids: [ids[2]], has_more: false, unmatched_ids: [] });
    expect(await statusesOf(stack, ids)).toEqual(['cancelled', 'cancelled', 'cancelled']);
    const read = await api(stack, 'GET', `/api/v1/golden-path/runs/${ids[0]}`, { token: tok.submitter });
    expect(read.json).toMatchObject({ status: 'cancelled', error: { code: 'cancelled', cancelled_by: 'admin-1' } });
    // Each run of a batch: one time of its cancel, its completed_at (docs/api.md), as a single cancel sets it.
    for (const id of ids) {
      const run = (await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: tok.submitter })).json;
      expect(run.error.cancelled_at, id).toBe(run.completed_at);
    }
    // Nothing left: an empty answer, not an error.
    const none = await bulk(stack, tok.admin, { status: ['pending'] });
    expect(none.status, none.text).toBe(200);
    expect(none.json).toEqual({ cancelled: 0, cancelled_ids: [], has_more: false, unmatched_ids: [] });
  });

  it(`more than one batch (${BULK_CANCEL_BATCH} runs) in a request: every run up to the limit is cancelled once, oldest first`, { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await runUsers(stack, tenant);
    const total = BULK_CANCEL_BATCH + 20;
    const ids: string[] = [];
    for (let i = 0; i < total; i += 10) ids.push(...(await Promise.all(Array.from({ length: Math.min(10, total - i) }, () => submit(stack, tok.submitter)))));
    const created = (await stack.db.admin(`select id from durable_runs where tenant_id = $1 order by created_at, id`, [tenant])).rows.map((r: { id: string }) => r.id);
    const first = await bulk(stack, tok.admin, { status: ['pending'], limit: BULK_CANCEL_BATCH + 10 });
    expect(first.status, first.text).toBe(200);
    expect(first.json).toMatchObject({ cancelled: BULK_CANCEL_BATCH + 10, has_more: true });
    expect(first.json.cancelled_ids).toEqual(created.slice(0, BULK_CANCEL_BATCH + 10));
    const rest = await bulk(stack, tok.admin, { status: ['pending'], limit: 500 });
    expect(rest.json).toMatchObject({ cancelled: 10, has_more: false });
    expect(rest.json.cancelled_ids).toEqual(created.slice(BULK_CANCEL_BATCH + 10));
    expect(new Set(await statusesOf(stack, ids))).toEqual(new Set(['cancelled']));
  });

  it("filters: ids and created_before narrow it; an ended run and another tenant's run are untouched and reported unmatched", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await runUsers(stack, tenant);
    const other = newTenant();
    const otherTok = await runUsers(stack, other);
    const [a, b, c, ended] = [await submit(stack, tok.submitter), await submit(stack, tok.submitter), await submit(stack, tok.submitter), await submit(stack, tok.submitter)];
    const foreign = await submit(stack, otherTok.submitter);
    const single = await api(stack, 'POST', `/api/v1/golden-path/runs/${ended}/cancel`, { token: tok.submitter, headers: { 'Idempotency-Key': randomUUID() } });
    expect(single.status, single.text).toBe(200);
    const endedError = (await stack.db.admin(`select error, completed_at from durable_runs where id = $1`, [ended])).rows[0];

    // created_before b's creation: only a (strictly before) of the ids given.
    const bCreated = (await api(stack, 'GET', `/api/v1/golden-path/runs/${b}`, { token: tok.submitter })).json.created_at as string;
    const unknown = randomUUID();
    const res = await bulk(stack, tok.admin, { status: ['pending'], created_before: bCreated, ids: [a, b, ended, foreign, unknown, a.toUpperCase()] });
    expect(res.status, res.text).toBe(200);
    expect(res.json.cancelled_ids).toEqual([a]);
    expect(res.json.cancelled).toBe(1);
    expect(new Set(res.json.unmatched_ids)).toEqual(new Set([b, ended, foreign, unknown]));
    expect(await statusesOf(stack, [a, b, c, foreign])).toEqual(['cancelled', 'pending', 'pending', 'pending']);
    expect((await stack.db.admin(`select error, completed_at from durable_runs where id = $1`, [ended])).rows[0]).toEqual(endedError);

    // Another tenant's admin, naming this tenant's runs: nothing of them moves.
    const elsewhere = await bulk(stack, otherTok.admin, { status: ['pending', 'running', 'waiting'], ids: [b, c] });
    expect(elsewhere.status, elsewhere.text).toBe(200);
    expect(elsewhere.json).toEqual({ cancelled: 0, cancelled_ids: [], has_more: false, unmatched_ids: [b, c] });
    // …and without ids it cancels its own tenant's only.
    const own = await bulk(stack, otherTok.admin, { status: ['pending'] });
    expect(own.json).toMatchObject({ cancelled: 1, cancelled_ids: [foreign] });
    expect(await statusesOf(stack, [b, c, foreign])).toEqual(['pending', 'pending', 'cancelled']);
  });

  it("a run found by a batch that ends before the batch locks it is left as it ended; the next matching run takes its place, with ids or without", { timeout: LONG }, async () => {
    for (const byIds of [false, true]) {
      const tenant = newTenant();
      const tok = await runUsers(stack, tenant);
      const ids = [await submit(stack, tok.submitter), await submit(stack, tok.submitter), await submit(stack, tok.submitter)];
      // The oldest run locked by another transaction (a step committing it), which the batch's lock waits for.
      const holder = new pg.Client({ connectionString: stack.db.adminUrl });
      await holder.connect();
      try {
        await holder.query('begin');
        await holder.query(`select 1 from durable_runs where id = $1 for update`, [ids[0]]);
        const holderPid = (await holder.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
        const pending = bulk(stack, tok.admin, { status: ['pending', 'running'], limit: 2, ...(byIds ? { ids } : {}) });
        await waitFor(async () => (await stack.db.admin(`select 1 from pg_stat_activity where $1 = any(pg_blocking_pids(pid))`, [holderPid])).rows.length > 0 || undefined, {
          timeoutMs: 30_000,
          what: "the bulk cancel's lock to wait for the holder's",
        });
        // It ends meanwhile (completed), and the bulk cancel's lock then finds it no longer matching.
        await holder.query(`update durable_runs set status = 'completed', completed_at = now() where id = $1`, [ids[0]]);
        await holder.query('commit');
        const res = await pending;
        expect(res.status, res.text).toBe(200);
        expect(res.json).toEqual({ cancelled: 2, cancelled_ids: ids.slice(1), has_more: false, unmatched_ids: byIds ? [ids[0]] : [] });
        expect(await statusesOf(stack, ids)).toEqual(['completed', 'cancelled', 'cancelled']);
      } finally {
        await holder.end();
      }
    }
  });

  it('the same key replays the first answer and cancels nothing new; the same key with another filter is 422', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await runUsers(stack, tenant);
    const first = await submit(stack, tok.submitter);
    const key = randomUUID();
    const res = await bulk(stack, tok.admin, { status: ['pending'] }, key);
    expect(res.status, res.text).toBe(200);
    expect(res.json.cancelled_ids).toEqual([first]);
    const later = await submit(stack, tok.submitter);
    const replay = await bulk(stack, tok.admin, { status: ['pending'] }, key);
    expect(replay.status).toBe(200);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.text).toBe(res.text);
    expect(await statusOf(stack, later)).toBe('pending');
    const reused = await bulk(stack, tok.admin, { status: ['pending'], limit: 5 }, key);
    expect(reused.status, reused.text).toBe(422);
    expect(reused.json.code).toBe('idempotency_key_reused');
    expect(await statusOf(stack, later)).toBe('pending');
  });

  it("a bulk cancel that deadlocks with a transaction locking its runs newest first (a worker's group commit, ADR 0007) and is PostgreSQL's victim: it starts again in its request, 200 with every run cancelled, the answer stored once", { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await runUsers(stack, tenant);
    // The cycle needs the cancel to be the transaction PostgreSQL aborts: the one whose deadlock check
    // (deadlock_timeout after it began to wait) finds it. It began to wait first, so it is, unless the
    // holder's second lock came later than that check (a loaded machine): the holder is then the
    // victim, the cancel goes through untouched, and the scenario is built again.
    for (let attempt = 1; ; attempt++) {
      const older = await submit(stack, tok.submitter);
      const newer = await submit(stack, tok.submitter);
      const holder = new pg.Client({ connectionString: stack.db.adminUrl });
      await holder.connect();
      const query = (sql: string, params?: unknown[]) => holder.query(sql, params);
      try {
        await query('begin');
        // A group's first member moves the newer run (a step's checkpoint updates its run row: FOR NO KEY UPDATE).
        await query(`update durable_runs set updated_at = now() where id = $1`, [newer]);
        const pid = await backendPid(query);
        const key = randomUUID();
        const answer = bulk(stack, tok.admin, { status: ['pending'] }, key);
        // The cancel locked the older run, oldest first, and waits for the newer one.
        await blockedBy(query, pid, 'the bulk cancel to wait for the newer run', { intervalMs: 5 });
        // The group's next member moves the older run, which the cancel holds: a cycle.
        const second = await query(`update durable_runs set updated_at = now() where id = $1`, [older]).then(
          () => 'granted',
          (e: { code?: string }) => e.code,
        );
        if (second === '40P01') {
          // The holder was the victim (its check came first): nothing of what this test is for happened.
          await query('rollback');
          expect((await answer).status).toBe(200);
          expect(attempt, 'the cancel was never the deadlock victim').toBeLessThan(5);
          continue;
        }
        expect(second).toBe('granted'); // the cancel gave the older run up: it was the victim
        await query('commit');
        const res = await answer;
        expect(res.status, res.text).toBe(200);
        expect(res.json).toEqual({ cancelled: 2, cancelled_ids: [older, newer], has_more: false, unmatched_ids: [] });
        expect(await statusesOf(stack, [older, newer])).toEqual(['cancelled', 'cancelled']);
        const replay = await bulk(stack, tok.admin, { status: ['pending'] }, key);
        expect(replay.headers.get('idempotent-replayed')).toBe('true');
        expect(replay.text).toBe(res.text);
        return;
      } finally {
        await query('rollback').catch(() => {});
        await holder.end();
      }
    }
  });

  it('bad input is 422 and nothing changes; no key is 400; a user without the admin role is 403', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await runUsers(stack, tenant);
    const id = await submit(stack, tok.submitter);
    const tooMany = Array.from({ length: 501 }, () => randomUUID());
    const bad: unknown[] = [
      undefined,
      {},
      { status: [] },
      { status: ['completed'] },
      { status: ['cancelled'] },
      { status: 'pending' },
      { status: ['pending'], limit: 0 },
      { status: ['pending'], limit: 501 },
      { status: ['pending'], limit: 2.5 },
      { status: ['pending'], ids: [] },
      { status: ['pending'], ids: ['not-a-uuid'] },
      { status: ['pending'], ids: tooMany },
      { status: ['pending'], created_before: 'yesterday' },
      // ISO 8601 that PostgreSQL cannot hold (year 0, an offset past ±15:59): a 422, not a 500.
      { status: ['pending'], created_before: '0000-06-01T00:00:00Z' },
      { status: ['pending'], created_before: '2026-01-01T00:00:00+20:00' },
      { status: ['pending'], workflow: 'partner-offboarding' },
    ];
    for (const body of bad) {
      const res = await bulk(stack, tok.admin, body);
      expect(res.status, `${JSON.stringify(body)?.slice(0, 80)}: ${res.text}`).toBe(422);
      expect(res.json.code).toBe('validation_failed');
    }
    const noKey = await bulk(stack, tok.admin, { status: ['pending'] }, null);
    expect(noKey.status, noKey.text).toBe(400);
    for (const token of [tok.submitter, tok.other]) {
      const res = await bulk(stack, token, { status: ['pending'] });
      expect(res.status, res.text).toBe(403);
    }
    expect(await statusOf(stack, id)).toBe('pending');
  });
});

/** Plan nodes of a JSON plan, depth first. */
function planNodes(plan: any, out: any[] = []): any[] {
  out.push(plan);
  for (const child of plan.Plans ?? []) planNodes(child, out);
  return out;
}

describe("bulk cancel's statements on a tenant with a long history", () => {
  let stack: TestStack;
  const originalQuery = CoalescingClient.prototype.query;
  beforeAll(async () => {
    stack = await startStack();
  }, LONG);
  afterAll(async () => {
    CoalescingClient.prototype.query = originalQuery;
    await stack?.stop();
  });

  // Without RUN_RETENTION a tenant keeps every run it ever had. Each batch read the tenant's runs in
  // creation order through (tenant_id, created_at, id), filtering status row by row: it walked every
  // ended run older than the first active one — 300,000 in 1.4 s per batch on a 2-vCPU development machine (cold cache),
  // five batches and the has_more probe per request, past DATABASE_STATEMENT_TIMEOUT (30 s) for a tenant
  // of a few million runs, so a bulk cancel failed the more history its tenant had, whatever it cancelled.
  it('each statement reads only the active runs it returns: no ended run is read and filtered out, nothing sorted', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await runUsers(stack, tenant);
    await stack.db.admin(
      `insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id, sequence_num, step_count, created_at, updated_at, completed_at)
       select gen_random_uuid(), $1, $2, 1, md5(random()::text || g), case when g <= 30000 then 'completed' else 'pending' end, 'u', '{}', 'c', 0, 4,
              now() - interval '30 days' + g * interval '1 second', now(), case when g <= 30000 then now() end
         from generate_series(1, 35000) g`,
      [tenant, GOLDEN_PATH],
    );
    await stack.db.admin('analyze durable_runs');
    // The statements of a bulk cancel as sent (another tenant's, which has no run: nothing changes), then
    // planned and run for this tenant as the superuser (the select alone: nothing is cancelled).
    const sent: { text: string; values: unknown[] }[] = [];
    CoalescingClient.prototype.query = function (this: CoalescingClient, config: any, values?: any, callback?: any) {
      if (typeof config === 'string' && /from durable_runs where tenant_id = /.test(config) && Array.isArray(values)) sent.push({ text: config, values });
      return originalQuery.call(this, config, values, callback);
    };
    const probeTenant = newTenant();
    const probe = await runUsers(stack, probeTenant);
    const res = await bulk(stack, probe.admin, { status: ['pending', 'running'], limit: 100 });
    CoalescingClient.prototype.query = originalQuery;
    expect(res.status, res.text).toBe(200);
    expect(sent.length).toBeGreaterThanOrEqual(2); // the batch, and the probe for has_more
    for (const s of sent) {
      const sql = inlineStatement({ text: s.text, values: s.values.map((v) => (v === probeTenant ? tenant : v)) });
      // Run as planned (a `for update` takes its row locks, and releases them at the statement's end).
      const plan = (await stack.db.admin(`explain (analyze, format json) ${sql}`)).rows[0]['QUERY PLAN'][0].Plan;
      const nodes = planNodes(plan);
      const filtered = nodes.reduce((n, node) => n + (node['Rows Removed by Filter'] ?? 0) + (node['Rows Removed by Index Recheck'] ?? 0), 0);
      expect({ statement: s.text.slice(0, 60), filtered, sorted: nodes.some((node) => node['Node Type'] === 'Sort') }).toEqual({ statement: s.text.slice(0, 60), filtered: 0, sorted: false });
    }
    // And the request itself: the 100 oldest pending runs of the 5,000.
    const done = await bulk(stack, tok.admin, { status: ['pending', 'running'], limit: 100 });
    expect(done.json).toMatchObject({ cancelled: 100, has_more: true });
  });
});

describe('bulk cancel while a worker holds one run inside a step', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack(); // only the in-process host below takes the runs' jobs, one at a time
  }, LONG);
  afterAll(async () => stack?.stop());

  it('a running run (held at step 2) and pending runs: all read cancelled, none commits another step, every job ends quietly', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await runUsers(stack, tenant);
    const ctl = stepControl();
    const at = barrier();
    ctl.hold = { seq: 2, at };
    const host = startRunHost(stack, wrappedGoldenPath(stack, controlledStep(ctl)), 'bulk-cancel');
    try {
      const held = await submit(stack, tok.submitter);
      await at.inside;
      const queued = [await submit(stack, tok.submitter), await submit(stack, tok.submitter), await submit(stack, tok.submitter)];
      expect(await statusOf(stack, held)).toBe('running');
      const res = await bulk(stack, tok.admin, { status: ['pending', 'running'] });
      expect(res.status, res.text).toBe(200);
      expect(res.json).toMatchObject({ cancelled: 4, has_more: false });
      expect(new Set(res.json.cancelled_ids)).toEqual(new Set([held, ...queued]));
      at.release();
      const wf = stack.container.runtime.workflow(GOLDEN_PATH);
      const queue = stack.container.queues.get(GOLDEN_PATH_QUEUE)!;
      for (const id of [held, ...queued]) {
        const jobId = stepJobId(wf.tag, await hashOf(stack, id), 1, wf.steps[0]!.name);
        const state = await waitFor(async () => {
          const st = await queue.getJobState(jobId);
          return st === 'completed' || st === 'failed' ? st : undefined;
        }, { timeoutMs: 30_000, what: `run ${id}'s job to end` });
        expect(state).toBe('completed');
      }
      expect(enteredBy(ctl, held)).toEqual([1, 2]);
      // A queued run's job may enter its first step (the executor learns that the run ended at the step's
      // checkpoint, which then commits nothing: ADR 0004), never a later one.
      for (const id of queued) expect([[], [1]]).toContainEqual(enteredBy(ctl, id));
      const checkpoints = (await stack.db.admin(`select run_id, sequence_num from durable_checkpoints where run_id = any($1::uuid[]) order by sequence_num`, [[held, ...queued]])).rows;
      expect(checkpoints).toEqual([{ run_id: held, sequence_num: 1 }]);
      expect(await statusesOf(stack, [held, ...queued])).toEqual(['cancelled', 'cancelled', 'cancelled', 'cancelled']);
    } finally {
      at.release();
      await host.stop();
    }
  });
});

/** Three runs of a new tenant waiting for their approvals, each with its SLA timer. */
async function threeWaitingRuns(stack: TestStack) {
  const tenant = newTenant();
  const tok = await runUsers(stack, tenant);
  const ids = await Promise.all([1, 2, 3].map(() => submit(stack, tok.submitter, SAMPLE_SUBMISSION)));
  await waitFor(async () => (await statusesOf(stack, ids)).every((s) => s === 'waiting'), { timeoutMs: 60_000, what: 'the three runs to wait for their approvals' });
  const queue = stack.container.queues.get(TIMER_QUEUE)!;
  const timers = await Promise.all(ids.map(async (id) => namedJobId('gp', await hashOf(stack, id), 'sla')));
  return { tenant, tok, ids, queue, timers };
}

describe('bulk cancel of a run waiting for its approval, with a worker', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack();
    await stack.spawnWorker();
  }, LONG);
  afterAll(async () => stack?.stop());

  it('the run is cancelled, its approval request withdrawn, its SLA timer removed, and a timer firing anyway expires nothing', { timeout: LONG }, async () => {
    const tenant = newTenant();
    const tok = await runUsers(stack, tenant);
    const id = await submit(stack, tok.submitter, SAMPLE_SUBMISSION);
    const waiting = await waitFor(async () => {
      const r = await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: tok.submitter });
      return ['waiting', 'failed', 'completed'].includes(r.json?.status) ? r.json : undefined;
    }, { timeoutMs: 60_000, what: 'the run to wait for its approval' });
    expect(waiting.status).toBe('waiting');
    const approvalId = waiting.steps[2].output.approval_request_id as string;
    const queue = stack.container.queues.get(TIMER_QUEUE)!;
    const timerId = namedJobId('gp', await hashOf(stack, id), 'sla');
    expect(await queue.getJobState(timerId)).toBe('delayed');

    const res = await bulk(stack, tok.admin, { status: ['waiting'] });
    expect(res.status, res.text).toBe(200);
    expect(res.json).toEqual({ cancelled: 1, cancelled_ids: [id], has_more: false, unmatched_ids: [] });
    expect(await statusOf(stack, id)).toBe('cancelled');
    expect((await stack.db.admin(`select status from approval_requests where id = $1`, [approvalId])).rows[0].status).toBe('withdrawn');
    await waitFor(async () => (await queue.getJobState(timerId)) === 'unknown', { timeoutMs: 10_000, what: 'the SLA timer to be removed' });
    await stack.db.admin(`update approval_requests set sla_deadline = now() - interval '1 second' where id = $1`, [approvalId]);
    const expired = await tenantEm(stack.container.orm, tenant).transactional((tx) => new ApprovalService(stack.container.runtime).expire(tx, tenant, id));
    expect(expired).toEqual({ outcome: 'not_pending' });
    expect(await statusOf(stack, id)).toBe('cancelled');
    expect((await stack.db.admin(`select status from approval_requests where id = $1`, [approvalId])).rows[0].status).toBe('withdrawn');
  });

  it("the runs' SLA timers are removed concurrently after the commit, not one after another: with Redis slow to answer, the answer waits for one removal, not for each in turn", { timeout: LONG }, async () => {
    const { tok, ids, queue, timers } = await threeWaitingRuns(stack);
    // Redis held still: each timer's removal (the real command) waits until the test lets it go.
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const started = new Set<string>();
    const remove = queue.remove.bind(queue);
    const spy = vi.spyOn(queue, 'remove').mockImplementation(async (jobId, opts) => {
      if (timers.includes(jobId)) {
        started.add(jobId);
        await held;
      }
      return remove(jobId, opts);
    });
    try {
      const answer = bulk(stack, tok.admin, { status: ['waiting'] });
      // One after another, the second removal would not start before the first returned.
      await waitFor(async () => started.size === timers.length, { timeoutMs: 20_000, what: 'every timer removal to be under way at once' });
      release();
      const res = await answer;
      expect(res.status, res.text).toBe(200);
      expect(res.json).toMatchObject({ cancelled: 3, has_more: false });
    } finally {
      release();
      spy.mockRestore();
    }
    for (const timerId of timers) expect(await queue.getJobState(timerId)).toBe('unknown');
    expect(await statusesOf(stack, ids)).toEqual(['cancelled', 'cancelled', 'cancelled']);
  });

  it("one run's after-commit action failing stops none of the others: every SLA timer is still removed, and the answer is 200", { timeout: LONG }, async () => {
    const { tenant, tok, ids, queue, timers } = await threeWaitingRuns(stack);
    for (const timerId of timers) expect(await queue.getJobState(timerId)).toBe('delayed');
    // The first run's webhook enqueue throws (it swallows Redis errors itself: this is the one that does not).
    const runtime = stack.container.runtime;
    const dispatch = runtime.dispatchDeliveries.bind(runtime);
    let calls = 0;
    const spy = vi.spyOn(runtime, 'dispatchDeliveries').mockImplementation(async (tenantId, deliveries) => {
      if (tenantId === tenant && calls++ === 0) throw new Error('enqueue failed');
      return dispatch(tenantId, deliveries);
    });
    try {
      const res = await bulk(stack, tok.admin, { status: ['waiting'] });
      expect(res.status, res.text).toBe(200);
      expect(res.json).toMatchObject({ cancelled: 3, has_more: false });
    } finally {
      spy.mockRestore();
    }
    expect(calls).toBe(3);
    for (const timerId of timers) expect(await queue.getJobState(timerId)).toBe('unknown');
    expect(await statusesOf(stack, ids)).toEqual(['cancelled', 'cancelled', 'cancelled']);
  });
});
