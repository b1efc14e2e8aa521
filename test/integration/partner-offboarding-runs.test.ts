/**
 * The run routes every workflow gets from the platform (src/platform/durable/run-routes.ts), on the
 * second workflow: POST /api/v1/partner-offboarding/runs/:id/cancel and …/retry, GET …/runs, against
 * the real stack (PostgreSQL as the application role, Redis, the API in this process). The workflow's
 * own steps run in the production worker host and executor, in this process, each behind a control
 * the test sets (hold it, fail it for good), as retry-run.test.ts does for the golden path.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, newTenant, OFFBOARDING_SUBMISSION, SAMPLE_SUBMISSION, type TestStack } from '../helpers/stack.ts';
import { stackForTests } from '../helpers/stack-for-tests.ts';
import { waitFor } from '../helpers/poll.ts';
import { blockedByIdleTransaction } from '../helpers/lock-graph.ts';
import { retiringApi } from '../helpers/retiring-api.ts';
import type { WorkflowDef } from '../../src/platform/durable/workflow.ts';
import { barrier, controlledStep, enteredBy, startRunHost, stepControl, wrappedWorkflow, type StepControl } from '../helpers/run-host.ts';
import { stepJobId } from '../../src/platform/queue/job-ids.ts';
import { PARTNER_OFFBOARDING, PARTNER_OFFBOARDING_QUEUE } from '../../src/modules/partner-offboarding/partner-offboarding.workflow.ts';
import { pino } from 'pino';
import { DurableRuntime, RUN_COLUMNS, type RunRow } from '../../src/platform/durable/runtime.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';

const LONG = 120_000;
const BASE = '/api/v1/partner-offboarding';
const STEPS = ['freeze-partner', 'settle-balances', 'archive-record'];

describe('cancelling, retrying and listing partner offboardings through the API', () => {
  // No worker process: the runs' jobs are the test's own host's.
  const suite = stackForTests({ stack: { env: { LOG_LEVEL: 'info' } }, logs: true, users: true, timeoutMs: LONG });
  const { tenant, tok, logLines, hosts } = suite;
  let stack: TestStack;
  beforeAll(() => void ({ stack } = suite));

  /** Runs the partner offboarding in this process under `ctl`; stopped after the test. */
  function host(ctl: StepControl, concurrency = 1) {
    hosts.push(startRunHost(stack, wrappedWorkflow(stack, PARTNER_OFFBOARDING, controlledStep(ctl)), `offboarding-runs-${randomUUID().slice(0, 8)}`, {}, { concurrency }));
  }

  const post = (token: string, body: unknown, key = randomUUID()) => api(stack, 'POST', `${BASE}/run`, { token, body, headers: { 'Idempotency-Key': key } });
  async function submit(token = tok.submitter!, body: unknown = OFFBOARDING_SUBMISSION): Promise<string> {
    const res = await post(token, body);
    expect(res.status, res.text).toBe(202);
    return res.json.run_id as string;
  }
  /** A submission refused for its partner, another run of the tenant holding it (`holder`: that run and its statuses). */
  function expectRefused(res: Awaited<ReturnType<typeof post>>, holder: { run_id: string; run_status?: string; offboarding_status?: string | null }) {
    expect(res.status, res.text).toBe(409);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(res.json).toMatchObject({ status: 409, code: 'partner_already_offboarded', ...holder });
  }
  const act = (action: 'cancel' | 'retry', id: string, token = tok.submitter!, key: string | null = randomUUID()) =>
    api(stack, 'POST', `${BASE}/runs/${id}/${action}`, { token, headers: key ? { 'Idempotency-Key': key } : {} });
  async function waitStatus(id: string, statuses: string[], token = tok.submitter!) {
    return waitFor(
      async () => {
        const res = await api(stack, 'GET', `${BASE}/runs/${id}`, { token });
        return statuses.includes(res.json?.status) ? res.json : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 50, what: `offboarding ${id} to reach ${statuses.join('|')}` },
    );
  }
  /** An offboarding of a partner of its own, failed for good in settle-balances (its record frozen); `ctl` fails step 2 until cleared. */
  async function failedInSettle() {
    const ctl = stepControl([2]);
    host(ctl);
    const body = ofPartner();
    const failed = await submit(tok.submitter!, body);
    await waitStatus(failed, ['failed']);
    return { ctl, body, failed };
  }
  const runRow = async (id: string) => (await stack.db.admin(`select status, error, retry_count, correlation_id, idempotency_hash, updated_at from durable_runs where id = $1`, [id])).rows[0];
  const checkpointsOf = async (id: string) => (await stack.db.admin(`select sequence_num, status, attempt, created_at from durable_checkpoints where run_id = $1 order by sequence_num`, [id])).rows;
  const ofPartner = () => ({ ...OFFBOARDING_SUBMISSION, partner: { reference: `P-${randomUUID().slice(0, 8)}`, name: 'Acme' } });
  const recordsOf = async (reference: string) => (await stack.db.admin(`select run_id, status from partner_offboardings where tenant_id = $1 and partner_reference = $2 order by frozen_at`, [tenant, reference])).rows;
  /** The tenant's offboarding runs of the partner, whatever their status. */
  const runsOf = async (reference: string) =>
    (await stack.db.admin(`select id from durable_runs where tenant_id = $1 and workflow = $2 and input->'partner'->>'reference' = $3 order by created_at, id`, [tenant, PARTNER_OFFBOARDING, reference])).rows.map((r) => r.id as string);
  const offboardingOf = async (id: string) => (await stack.db.admin(`select status, settled_at, archived_at from partner_offboardings where run_id = $1`, [id])).rows;
  const metric = async (series: string) => {
    const line = (await api(stack, 'GET', '/metrics')).text.split('\n').find((l) => l.startsWith(`${series} `));
    return line === undefined ? 0 : Number(line.slice(series.length + 1));
  };

  it('who may cancel or retry: no key 400, another user 403, another tenant 404, a golden-path run id 404; an admin may cancel', { timeout: LONG }, async () => {
    // No host: the run stays pending. Who may act is checked before what the run's status allows.
    const id = await submit();
    const before = await runRow(id);
    for (const action of ['cancel', 'retry'] as const) {
      const missing = await act(action, id, tok.submitter!, null);
      expect(missing.status, missing.text).toBe(400);
      expect(missing.json.code).toBe('validation_failed');
      const forbidden = await act(action, id, tok.other!);
      expect(forbidden.status, forbidden.text).toBe(403);
      expect(forbidden.json).toMatchObject({ code: 'forbidden', detail: expect.stringContaining(action) });
      const elsewhere = await act(action, id, tok.otherTenantAdmin!);
      expect(elsewhere.status, elsewhere.text).toBe(404);
    }
    expect(await runRow(id)).toEqual(before);

    // The workflow is part of the filter: a golden-path run of the same tenant and submitter is not an offboarding.
    const gp = await api(stack, 'POST', '/api/v1/golden-path/run', { token: tok.submitter!, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(gp.status, gp.text).toBe(202);
    const gpBefore = await runRow(gp.json.run_id);
    for (const action of ['cancel', 'retry'] as const) {
      const res = await act(action, gp.json.run_id, tok.admin!);
      expect(res.status, `${action}: ${res.text}`).toBe(404);
      expect(res.json.code).toBe('not_found');
    }
    expect((await api(stack, 'GET', `${BASE}/runs/${gp.json.run_id}`, { token: tok.submitter! })).status).toBe(404);
    expect(await runRow(gp.json.run_id)).toEqual(gpBefore);

    const cancelled = await act('cancel', id, tok.admin!);
    expect(cancelled.status, cancelled.text).toBe(200);
    expect(cancelled.json).toMatchObject({ run_id: id, workflow: PARTNER_OFFBOARDING, status: 'cancelled', submitted_by: 'submitter-1', error: { code: 'cancelled', cancelled_by: 'admin-1' }, retries: [] });
  });

  it('a cancel while step 2 runs: 200 cancelled, step 2 commits nothing, step 3 never runs, the job ends quietly and the run stays cancelled', { timeout: LONG }, async () => {
    const ctl = stepControl();
    const held = barrier();
    ctl.hold = { seq: 2, at: held };
    host(ctl);
    const id = await submit();
    await held.inside;
    let res: Awaited<ReturnType<typeof act>>;
    try {
      res = await act('cancel', id);
    } finally {
      held.release();
    }
    expect(res.status, res.text).toBe(200);
    expect(res.json).toMatchObject({
      run_id: id,
      status: 'cancelled',
      progress: { completed_steps: 1, total_steps: 3, current_sequence_num: null },
      error: { code: 'cancelled', cancelled_by: 'submitter-1' },
      links: { self: `${BASE}/runs/${id}` },
    });
    const { correlation_id: runCid, idempotency_hash: hash } = await runRow(id);
    const line = await waitFor(() => logLines.find((l) => l.msg === 'run cancelled' && l.run_id === id), { what: "the cancel's log line" });
    expect(line).toMatchObject({ level: 30, tenant_id: tenant, correlation_id: runCid, workflow: PARTNER_OFFBOARDING, cancelled_by: 'submitter-1', previous_status: 'running' });

    // The run's job goes on with step 2, whose checkpoint refuses to commit on a cancelled run: the job ends, completed, with no step after it.
    const job = await waitFor(
      async () => {
        // The state first, then the job: a job read before it completed keeps returnvalue null.
        const queue = stack.container.queues.get(PARTNER_OFFBOARDING_QUEUE)!;
        const jobId = stepJobId('po', hash, 1, STEPS[0]!);
        return (await queue.getJobState(jobId)) === 'completed' ? await queue.getJob(jobId) : undefined;
      },
      { timeoutMs: 30_000, what: "the run's job to end" },
    );
    expect(job.returnvalue).toMatchObject({ run_id: id, status: 'ended' });
    expect(enteredBy(ctl, id)).toEqual([1, 2]);
    expect((await checkpointsOf(id)).map((c) => [c.sequence_num, c.status])).toEqual([[1, 'completed']]);
    // Step 2's write rolled back with its checkpoint: the record is frozen, never settled.
    expect(await offboardingOf(id)).toEqual([{ status: 'frozen', settled_at: null, archived_at: null }]);
    expect((await waitStatus(id, ['cancelled'])).status).toBe('cancelled');
    const again = await act('cancel', id);
    expect(again.status, again.text).toBe(409);
    expect(again.json).toMatchObject({ code: 'run_not_active', run_status: 'cancelled' });
  });

  it('an offboarding whose step 2 failed for good, retried once the step is fixed: completes, step 1 not run again; counted and logged', { timeout: LONG }, async () => {
    const ctl = stepControl([2]);
    host(ctl);
    const id = await submit();
    const failed = await waitStatus(id, ['failed', 'completed']);
    expect(failed).toMatchObject({ status: 'failed', error: { code: 'test_permanent', step: STEPS[1], sequence_num: 2 } });
    const before = await checkpointsOf(id);
    expect(before.map((c) => [c.sequence_num, c.status])).toEqual([[1, 'completed'], [2, 'failed']]);
    expect(await offboardingOf(id)).toEqual([{ status: 'frozen', settled_at: null, archived_at: null }]);
    const RETRIED = `dealix_runs_retried_total{workflow="${PARTNER_OFFBOARDING}"}`;
    const counted = await metric(RETRIED);

    ctl.failing.clear(); // the cause is fixed
    const res = await act('retry', id);
    expect(res.status, res.text).toBe(200);
    expect(res.json).toMatchObject({
      run_id: id,
      status: 'running',
      error: null,
      completed_at: null,
      progress: { completed_steps: 1, current_sequence_num: 2 },
      retries: [{ retry: 1, retried_by: 'submitter-1', error: { code: 'test_permanent', step: STEPS[1], sequence_num: 2 }, attempts: 1 }],
    });
    const done = await waitStatus(id, ['completed', 'failed']);
    expect(done).toMatchObject({ status: 'completed', error: null, retries: res.json.retries });
    expect(enteredBy(ctl, id)).toEqual([1, 2, 2, 3]);
    const after = await checkpointsOf(id);
    expect(after[0]).toEqual(before[0]);
    expect(after.map((c) => [c.sequence_num, c.status, c.attempt])).toEqual([[1, 'completed', 1], [2, 'completed', 1], [3, 'completed', 1]]);
    expect((await offboardingOf(id)).map((r) => r.status)).toEqual(['archived']);

    expect(await metric(RETRIED)).toBe(counted + 1);
    const line = await waitFor(() => logLines.find((l) => l.msg === 'run retried' && l.run_id === id), { what: "the retry's log line" });
    expect(line).toMatchObject({ level: 30, tenant_id: tenant, correlation_id: (await runRow(id)).correlation_id, workflow: PARTNER_OFFBOARDING, retried_by: 'submitter-1', retry: 1, failed_step: STEPS[1], failed_code: 'test_permanent' });
    const again = await act('retry', id);
    expect(again.status, again.text).toBe(409);
    expect(again.json).toMatchObject({ code: 'run_not_failed', run_status: 'completed' });
  });

  it("lists the tenant's offboardings newest first, page by page and by status; another tenant sees none, and golden-path runs are not among them", { timeout: LONG }, async () => {
    // A tenant of its own, and no host: its runs stay pending.
    const own = newTenant();
    const token = await stack.token({ tenantId: own, sub: 'lister-1' });
    const list = async (query: string, t = token) => {
      const res = await api(stack, 'GET', `${BASE}/runs${query}`, { token: t });
      expect(res.status, res.text).toBe(200);
      return res.json as { items: Array<{ run_id: string; status: string; progress: unknown; links: { self: string } }>; next_cursor: string | null };
    };
    const ids: string[] = [];
    // Each of its own partner: a second submission of one partner is refused while the first is pending.
    for (let i = 0; i < 3; i++) ids.push(await submit(token, ofPartner()));
    const gp = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(gp.status, gp.text).toBe(202);
    const newestFirst = [...ids].reverse();

    const first = await list('?limit=2');
    expect(first.items.map((r) => r.run_id)).toEqual(newestFirst.slice(0, 2));
    expect(first.items[0]).toMatchObject({ status: 'pending', progress: { completed_steps: 0, total_steps: 3 }, links: { self: `${BASE}/runs/${newestFirst[0]}` } });
    expect(first.next_cursor).toEqual(expect.any(String));
    const rest = await list(`?limit=2&cursor=${first.next_cursor}`);
    expect(rest.items.map((r) => r.run_id)).toEqual(newestFirst.slice(2));
    expect(rest.next_cursor).toBeNull();
    expect((await list('')).items.map((r) => r.run_id)).toEqual(newestFirst);

    expect((await act('cancel', ids[1]!, token)).status).toBe(200);
    expect((await list('?status=cancelled')).items.map((r) => r.run_id)).toEqual([ids[1]]);
    expect((await list('?status=pending')).items.map((r) => r.run_id)).toEqual([ids[2], ids[0]]);

    // Another tenant (an admin at that) sees none of them; the golden path's list has only its own run.
    expect(await list('', tok.otherTenantAdmin!)).toEqual({ items: [], next_cursor: null });
    const gpList = await api(stack, 'GET', '/api/v1/golden-path/runs', { token });
    expect(gpList.json.items.map((r: { run_id: string }) => r.run_id)).toEqual([gp.json.run_id]);
  });

  it('one offboarding per partner: a second submission, after the first completed or while it runs, is refused 409 naming that run, and leaves no run; its key replays the 409', { timeout: LONG }, async () => {
    const ctl = stepControl();
    host(ctl, 2);
    const body = ofPartner();
    const first = await submit(tok.submitter!, body);
    expect(await waitStatus(first, ['completed', 'failed'])).toMatchObject({ status: 'completed' });

    const key = randomUUID();
    const again = await post(tok.submitter!, body, key);
    expectRefused(again, { run_id: first, run_status: 'completed', offboarding_status: 'archived' });
    expect(again.json.detail).toContain(first);
    // Nothing of it persisted: no run (so no job, no step), the partner's one record as it was.
    expect(await runsOf(body.partner.reference)).toEqual([first]);
    expect(await recordsOf(body.partner.reference)).toEqual([{ run_id: first, status: 'archived' }]);
    // A 4xx the handler decided is the request's answer (docs/api.md, Idempotency-Key): the same key replays it.
    const replay = await post(tok.submitter!, body, key);
    expect(replay.status, replay.text).toBe(409);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    const { request_id: _first, ...stored } = again.json;
    expect(replay.json).toEqual(stored);

    // The same reference in another tenant is another partner (the check reads under the tenant's RLS):
    // accepted and offboarded there, and this tenant's refusal still names its own run.
    const theirs = await submit(tok.otherTenantAdmin!, body);
    expect((await waitStatus(theirs, ['completed', 'failed'], tok.otherTenantAdmin!)).status).toBe('completed');
    expectRefused(await post(tok.submitter!, body), { run_id: first });

    // While the first is still in flight (held in settle-balances): refused the same way, naming its status.
    const held = barrier();
    ctl.hold = { seq: 2, at: held };
    const other = ofPartner();
    const running = await submit(tok.submitter!, other);
    await held.inside;
    let during: Awaited<ReturnType<typeof post>>;
    try {
      during = await post(tok.submitter!, other);
    } finally {
      ctl.hold = undefined;
      held.release();
    }
    expectRefused(during, { run_id: running, run_status: 'running', offboarding_status: 'frozen' });
    expect(await waitStatus(running, ['completed', 'failed'])).toMatchObject({ status: 'completed' });
    expect(await runsOf(other.partner.reference)).toEqual([running]);
    expect(await recordsOf(other.partner.reference)).toEqual([{ run_id: running, status: 'archived' }]);
  });

  it('the guard window: a second submission while the first is still queued (no worker: it cannot reach freeze-partner) is refused 409 naming it, with no record yet; once it is cancelled, a new submission is accepted', { timeout: LONG }, async () => {
    // No host: the first run stays pending, its partner not frozen (no record).
    const body = ofPartner();
    const first = await submit(tok.submitter!, body);
    const key = randomUUID();
    const again = await post(tok.submitter!, body, key);
    expectRefused(again, { run_id: first, run_status: 'pending', offboarding_status: null });
    expect(again.json.detail).toContain(first);
    // Nothing of it persisted but its stored answer: no run, no record; the same key replays the 409.
    expect(await runsOf(body.partner.reference)).toEqual([first]);
    expect(await recordsOf(body.partner.reference)).toEqual([]);
    const replay = await post(tok.submitter!, body, key);
    expect(replay.status, replay.text).toBe(409);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    // Another user of the tenant is refused the same way: the partner is the tenant's, not the submitter's.
    expectRefused(await post(tok.other!, body), { run_id: first, run_status: 'pending', offboarding_status: null });

    // Cancelled before it froze the partner, it holds nothing: the next submission is accepted, runs and archives.
    expect((await act('cancel', first)).status).toBe(200);
    const next = await submit(tok.submitter!, body);
    expectRefused(await post(tok.submitter!, body), { run_id: next, run_status: 'pending', offboarding_status: null });
    host(stepControl());
    expect(await waitStatus(next, ['completed', 'failed'])).toMatchObject({ status: 'completed', error: null });
    expect(await runsOf(body.partner.reference)).toEqual([first, next]);
    expect(await recordsOf(body.partner.reference)).toEqual([{ run_id: next, status: 'archived' }]);
    expectRefused(await post(tok.submitter!, body), { run_id: next, run_status: 'completed', offboarding_status: 'archived' });
  });

  it('submissions of one partner at once, before any run starts: exactly one is accepted (202), every other one refused 409 naming it; the same once that run is cancelled', { timeout: LONG }, async () => {
    // No host: the accepted run stays pending, so only the submissions' own claim decides.
    const body = ofPartner();
    const atOnce = async () => {
      const answers = await Promise.all([0, 1, 2, 3].map(() => post(tok.submitter!, body)));
      const accepted = answers.filter((a) => a.status === 202);
      expect(accepted, answers.map((a) => `${a.status} ${a.text}`).join('\n')).toHaveLength(1);
      const winner = accepted[0]!.json.run_id as string;
      for (const refused of answers.filter((a) => a.status !== 202)) expectRefused(refused, { run_id: winner, run_status: 'pending', offboarding_status: null });
      return winner;
    };
    const first = await atOnce();
    expect(await runsOf(body.partner.reference)).toEqual([first]);
    // Once it is cancelled, submissions at once take its claim over: again exactly one of them.
    expect((await act('cancel', first)).status).toBe(200);
    const second = await atOnce();
    expect(await runsOf(body.partner.reference)).toEqual([first, second]);
    expect(await recordsOf(body.partner.reference)).toEqual([]);
    expect((await act('cancel', second)).status).toBe(200);
  });

  it('submissions of one partner at once, with a worker: exactly one is accepted and archived; each other one is refused 409 at submission, none fails at freeze-partner', { timeout: LONG }, async () => {
    const ctl = stepControl();
    host(ctl, 2);
    const body = ofPartner();
    const answers = await Promise.all([0, 1, 2, 3].map(() => post(tok.submitter!, body)));
    const accepted = answers.filter((a) => a.status === 202).map((a) => a.json.run_id as string);
    expect(accepted, answers.map((a) => `${a.status} ${a.text}`).join('\n')).toHaveLength(1);
    for (const refused of answers.filter((a) => a.status !== 202)) expectRefused(refused, { run_id: accepted[0]! });
    expect(await waitStatus(accepted[0]!, ['completed', 'failed'])).toMatchObject({ status: 'completed', error: null });
    // The partner's one live record is the accepted run's, archived; a refused submission left no run.
    expect(await recordsOf(body.partner.reference)).toEqual([{ run_id: accepted[0], status: 'archived' }]);
    expect(await runsOf(body.partner.reference)).toEqual(accepted);
  });

  it('a cancelled offboarding does not hold its partner: refused while it ran, then accepted once it was cancelled, whose run marks the cancelled record abandoned', { timeout: LONG }, async () => {
    const body = ofPartner();
    const ctl = stepControl();
    const held = barrier();
    ctl.hold = { seq: 2, at: held };
    host(ctl, 2);
    const cancelled = await submit(tok.submitter!, body);
    try {
      await held.inside;
      expectRefused(await post(tok.submitter!, body), { run_id: cancelled, run_status: 'running', offboarding_status: 'frozen' });
      expect((await act('cancel', cancelled)).status).toBe(200);
    } finally {
      ctl.hold = undefined;
      held.release();
    }
    expect(await recordsOf(body.partner.reference)).toEqual([{ run_id: cancelled, status: 'frozen' }]);
    const next = await submit(tok.submitter!, body);
    expect(await waitStatus(next, ['completed', 'failed'])).toMatchObject({ status: 'completed', error: null });
    expect(await recordsOf(body.partner.reference)).toEqual([
      { run_id: cancelled, status: 'abandoned' },
      { run_id: next, status: 'archived' },
    ]);
    expectRefused(await post(tok.submitter!, body), { run_id: next, run_status: 'completed', offboarding_status: 'archived' });
  });

  it('a failed offboarding holds its partner until it is retried, or deleted by run retention: then the next offboarding of the partner completes', { timeout: LONG }, async () => {
    const { ctl, body, failed } = await failedInSettle();
    const key = randomUUID();
    const refused = await post(tok.submitter!, body, key);
    expectRefused(refused, { run_id: failed, run_status: 'failed', offboarding_status: 'frozen' });
    expect(refused.json.detail).toContain(failed);
    expect(refused.json.detail).toContain('retry that run');
    expect(await runsOf(body.partner.reference)).toEqual([failed]);

    ctl.failing.clear();
    // What run retention does to a run that ended long ago (its checkpoints go with it): the record stays, naming no run.
    await stack.db.admin(`delete from durable_runs where id = $1`, [failed]);
    // The refused request's key keeps its answer (a new key is a new request): its replay is the 409.
    const replay = await post(tok.submitter!, body, key);
    expect(replay.status, replay.text).toBe(409);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    const next = await submit(tok.submitter!, body);
    expect(await waitStatus(next, ['completed', 'failed'])).toMatchObject({ status: 'completed', error: null });
    expect(await recordsOf(body.partner.reference)).toEqual([
      { run_id: failed, status: 'abandoned' },
      { run_id: next, status: 'archived' },
    ]);
  });

  it('a failed offboarding of a workflow version declared retired, whose retry is refused, does not hold its partner: of submissions at once one is accepted, completes, and marks the failed record abandoned', { timeout: LONG }, async () => {
    const { body, failed } = await failedInSettle();
    // A run of a version no release runs any more (v7 stands for it: this stack registers v1 only).
    await stack.db.admin(`update durable_runs set workflow_version = 7 where id = $1`, [failed]);
    // Where v7 is merely not registered (a deploy in progress, not declared retired), its retry is put
    // off (503, Retry-After), not refused: the failed run still holds its partner, "retry that run".
    expect((await act('retry', failed)).status).toBe(503);
    expectRefused(await post(tok.submitter!, body), { run_id: failed, run_status: 'failed', offboarding_status: 'frozen' });
    // A deployment that declares v7 retired: its API, and a worker (the failed run's host, failing step 2, stopped).
    while (hosts.length) await hosts.pop()!.stop();
    hosts.push(startRunHost(stack, stack.container.runtime.workflow(PARTNER_OFFBOARDING), `offboarding-retired-${randomUUID().slice(0, 8)}`, {}, { retired: ['partner-offboarding@v7'] }));
    const retiring = await retiringApi(stack, 'partner-offboarding@v7');
    try {
      const retry = await api(retiring, 'POST', `${BASE}/runs/${failed}/retry`, { token: tok.submitter!, headers: { 'Idempotency-Key': randomUUID() } });
      expect(retry.status, retry.text).toBe(409);
      expect(retry.json.code).toBe('workflow_version_retired');
      // Before: 409 partner_already_offboarded, "retry that run" — the retry just refused — until run retention deleted the failed run.
      const answers = await Promise.all([0, 1, 2, 3].map(() => api(retiring, 'POST', `${BASE}/run`, { token: tok.submitter!, body, headers: { 'Idempotency-Key': randomUUID() } })));
      const accepted = answers.filter((a) => a.status === 202).map((a) => a.json.run_id as string);
      expect(accepted, answers.map((a) => `${a.status} ${a.text}`).join('\n')).toHaveLength(1);
      for (const refused of answers.filter((a) => a.status !== 202)) expectRefused(refused, { run_id: accepted[0]! });
      const next = accepted[0]!;
      expect(await waitStatus(next, ['completed', 'failed'])).toMatchObject({ status: 'completed', error: null });
      expect(await recordsOf(body.partner.reference)).toEqual([
        { run_id: failed, status: 'abandoned' },
        { run_id: next, status: 'archived' },
      ]);
      expect(await runsOf(body.partner.reference)).toEqual([failed, next]);
      expectRefused(await api(retiring, 'POST', `${BASE}/run`, { token: tok.submitter!, body, headers: { 'Idempotency-Key': randomUUID() } }), { run_id: next, run_status: 'completed', offboarding_status: 'archived' });
    } finally {
      await retiring.stop();
    }
  });

  it('a failed offboarding whose retry is refused run_not_retryable (a step of it had committed its effects) does not hold its partner: a new submission takes its claim over, completes, and marks the failed record abandoned', { timeout: LONG }, async () => {
    const { ctl, body, failed } = await failedInSettle();
    ctl.failing.clear();
    // What the executor leaves of a step that had committed its effects (its output kept) when the run
    // failed there afterwards (a version with a waiting step failed at it by a changed deploy:
    // retry-run.test.ts). v1 has no such step; a failed run so is the runtime's to refuse, whatever its workflow.
    await stack.db.admin(`update durable_checkpoints set output = '{}' where run_id = $1 and sequence_num = 2`, [failed]);
    const retry = await act('retry', failed);
    expect(retry.status, retry.text).toBe(409);
    expect(retry.json).toMatchObject({ code: 'run_not_retryable', run_status: 'failed' });
    // Before: 409 partner_already_offboarded, "retry that run" — the retry just refused — for as long as the failed run was kept.
    const next = await submit(tok.submitter!, body);
    expect(await waitStatus(next, ['completed', 'failed'])).toMatchObject({ status: 'completed', error: null });
    expect(await recordsOf(body.partner.reference)).toEqual([
      { run_id: failed, status: 'abandoned' },
      { run_id: next, status: 'archived' },
    ]);
    expect((await runRow(failed)).status).toBe('failed');
    expectRefused(await post(tok.submitter!, body), { run_id: next, run_status: 'completed', offboarding_status: 'archived' });
  });

  /**
   * v7 brought back by an operator: a worker registering it (`wf` relabelled v7, not declared retired)
   * and the failed run `id` retried as the retry route does (its row locked), its job enqueued.
   */
  async function bringBackAndRetry(wf: WorkflowDef, id: string) {
    const v7 = { ...wf, version: 7 };
    hosts.push(startRunHost(stack, v7, `offboarding-v7-${randomUUID().slice(0, 8)}`));
    const operator = new DurableRuntime({ workflows: [v7], queues: stack.container.runtime.queues, logger: pino({ level: 'silent' }) });
    const retried = await tenantEm(stack.container.orm, tenant).transactional(async (tx) => {
      const [row] = await tx.execute<RunRow[]>(`select ${RUN_COLUMNS} from durable_runs where tenant_id = ? and id = ? for update`, [tenant, id]);
      return operator.retry(tx, row!, { retriedBy: 'operator' });
    });
    expect(retried.status).toBe('running');
    await operator.ensureEnqueued(retried);
  }
  /**
   * Waits until a backend of the stack's database waits for a lock the step held at a barrier has (its
   * transaction idle meanwhile): `text` names the statement meant. By the lock graph, not by
   * pg_stat_activity's query text: a step's statements go in messages of several (the coalescing
   * client), and a backend waiting inside one may show another statement of it there.
   */
  const blockedIn = (text: string) => blockedByIdleTransaction(stack.db.admin, `a statement (${text}) to wait on the held step's lock`, { intervalMs: 20 });
  /** The partner offboarding with the steps of runs `which` picks held at barriers: each `[seq, before or after its body, barrier]`. */
  const holdingAt = (which: (run: string) => boolean, ...holds: Array<[number, 'before' | 'after', ReturnType<typeof barrier>]>) =>
    wrappedWorkflow(stack, PARTNER_OFFBOARDING, (step, seq) => async (input, ctx) => {
      const hold = async (when: 'before' | 'after') => {
        for (const [n, w, at] of holds) {
          if (n !== seq || w !== when || !which(ctx.run.id)) continue;
          at.enter();
          await at.released;
        }
      };
      await hold('before');
      const out = await step.run(input, ctx);
      await hold('after');
      return out;
    });

  /**
   * An offboarding failed in settle-balances on v7, then v7 declared retired (an API and the new run's
   * worker, whose steps are held at `holds`) and the partner submitted again: accepted, taking it over.
   * Stop `retiring` in a `finally`.
   */
  async function takenOverOnRetired(...holds: Array<[number, 'before' | 'after', ReturnType<typeof barrier>]>) {
    const { body, failed } = await failedInSettle();
    await stack.db.admin(`update durable_runs set workflow_version = 7 where id = $1`, [failed]);
    while (hosts.length) await hosts.pop()!.stop();
    hosts.push(startRunHost(stack, holdingAt((run) => run !== failed, ...holds), `offboarding-takeover-${randomUUID().slice(0, 8)}`, {}, { retired: ['partner-offboarding@v7'] }));
    const retiring = await retiringApi(stack, 'partner-offboarding@v7');
    const accepted = await api(retiring, 'POST', `${BASE}/run`, { token: tok.submitter!, body, headers: { 'Idempotency-Key': randomUUID() } }).catch(async (err) => {
      await retiring.stop();
      throw err;
    });
    return { body, failed, retiring, accepted };
  }

  it('a failed offboarding of a retired version taken over, then its version brought back and the run retried while the new run holds its record in freeze-partner: the retried run waits, then fails partner_already_offboarded — exactly one offboarding archived', { timeout: LONG }, async () => {
    // The new run's freeze-partner gives the failed run's record up and is held after its body, that
    // record locked and marked abandoned, its transaction open.
    const held = barrier();
    const { body, failed, retiring, accepted } = await takenOverOnRetired([1, 'after', held]);
    try {
      expect(accepted.status, accepted.text).toBe(202);
      const next = accepted.json.run_id as string;
      await held.inside;
      // Meanwhile v7 is brought back and the failed run retried: its settle-balances waits on the record the new run holds.
      await bringBackAndRetry(stack.container.runtime.workflow(PARTNER_OFFBOARDING), failed);
      await blockedIn(`set status = 'settled'`);
      held.release();
      const old = await waitStatus(failed, ['completed', 'failed']);
      expect(old.error).toMatchObject({ code: 'partner_already_offboarded', message: expect.stringContaining(next) });
      expect(await waitStatus(next, ['completed', 'failed'])).toMatchObject({ status: 'completed', error: null });
      expect(await recordsOf(body.partner.reference)).toEqual([
        { run_id: failed, status: 'abandoned' },
        { run_id: next, status: 'archived' },
      ]);
    } finally {
      held.release();
      await retiring.stop();
    }
  });

  it('a failed offboarding of a retired version taken over, then its version brought back and the run retried, settling before the new run reaches freeze-partner: the new run waits, then fails partner_already_offboarded having frozen nothing — exactly one offboarding archived', { timeout: LONG }, async () => {
    // The new run's freeze-partner is held before its body.
    const fresh = barrier();
    const settling = barrier();
    const archiving = barrier();
    const { body, failed, retiring, accepted } = await takenOverOnRetired([1, 'before', fresh]);
    try {
      expect(accepted.status, accepted.text).toBe(202);
      const next = accepted.json.run_id as string;
      await fresh.inside;
      // v7 brought back, the failed run retried: its settle-balances held after its body (its record
      // settled, locked, not committed), then before archive-record (settled, committed, the run running).
      await bringBackAndRetry(holdingAt((run) => run === failed, [2, 'after', settling], [3, 'before', archiving]), failed);
      await settling.inside;
      fresh.release();
      await blockedIn('insert into partner_offboardings');
      settling.release();
      const lost = await waitStatus(next, ['completed', 'failed']);
      archiving.release();
      expect(lost.error).toMatchObject({ code: 'partner_already_offboarded', message: expect.stringContaining(failed) });
      expect(await waitStatus(failed, ['completed', 'failed'])).toMatchObject({ status: 'completed', error: null });
      expect(await recordsOf(body.partner.reference)).toEqual([{ run_id: failed, status: 'archived' }]);
    } finally {
      for (const b of [fresh, settling, archiving]) b.release();
      await retiring.stop();
    }
  });

  it("a failed offboarding whose record was abandoned (the migration's: its partner offboarded by another run), retried: fails at once partner_already_offboarded, settles nothing", { timeout: LONG }, async () => {
    const { ctl, body, failed } = await failedInSettle();
    // What the migration leaves of a partner offboarded twice before the rule: the other run's archived record kept, this one abandoned.
    const other = randomUUID();
    await stack.db.admin(`update partner_offboardings set status = 'abandoned' where run_id = $1`, [failed]);
    await stack.db.admin(
      `insert into partner_offboardings (id, tenant_id, run_id, partner_reference, partner_name, reason, status, settlement, frozen_at, settled_at, archived_at)
       values ($1, $2, $3, $4, 'Acme', 'inactive', 'archived', '{"lines": []}', now(), now(), now())`,
      [randomUUID(), tenant, other, body.partner.reference],
    );
    ctl.failing.clear();
    expect((await act('retry', failed)).status).toBe(200);
    const why = await waitStatus(failed, ['completed', 'failed']);
    // Before: "offboarding of run … is not frozen", a plain error retried with backoff until its attempts were spent.
    expect(why).toMatchObject({ status: 'failed', error: { code: 'partner_already_offboarded', step: STEPS[1], sequence_num: 2 } });
    expect(why.error.message).toContain(other);
    expect((await checkpointsOf(failed)).map((c) => [c.sequence_num, c.status, c.attempt])).toEqual([[1, 'completed', 1], [2, 'failed', 1]]);
    expect(await offboardingOf(failed)).toEqual([{ status: 'abandoned', settled_at: null, archived_at: null }]);
  });

  it("sends each offboarding's end to its own tenant's endpoints once: completed, cancelled, none for a second offboarding refused at submission; another tenant's offboarding of the same reference is its own", { timeout: LONG }, async () => {
    const EVENTS = ['run.completed', 'run.failed', 'run.cancelled'];
    const endpoint = async (token: string) => {
      const res = await api(stack, 'POST', '/api/v1/webhook-endpoints', { token, body: { url: 'https://93.184.215.14/hook', events: EVENTS }, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, res.text).toBe(201);
      return res.json.id as string;
    };
    const own = await endpoint(tok.admin!);
    const otherTenant = newTenant();
    const otherAdmin = await stack.token({ tenantId: otherTenant, sub: 'admin-2', roles: ['admin'] });
    const elsewhere = await endpoint(otherAdmin);

    const ctl = stepControl();
    host(ctl);
    const body = ofPartner();
    const completed = await submit(tok.submitter!, body);
    await waitStatus(completed, ['completed']);
    // Refused at submission (409): no run, so no run.failed event.
    expectRefused(await post(tok.submitter!, body), { run_id: completed });
    const held = barrier();
    ctl.hold = { seq: 2, at: held };
    const cancelled = await submit(tok.submitter!, ofPartner());
    await held.inside;
    try {
      expect((await act('cancel', cancelled)).status).toBe(200);
    } finally {
      ctl.hold = undefined;
      held.release();
    }
    // The same reference in another tenant: not the first tenant's partner.
    const theirs = await submit(otherAdmin, body);
    const theirsDone = await waitFor(
      async () => {
        const r = (await api(stack, 'GET', `${BASE}/runs/${theirs}`, { token: otherAdmin })).json;
        return ['completed', 'failed'].includes(r?.status) ? r : undefined;
      },
      { timeoutMs: 60_000, what: "the other tenant's offboarding to end" },
    );
    expect(theirsDone).toMatchObject({ status: 'completed', error: null });

    const { rows } = await stack.db.admin(
      `select tenant_id, endpoint_id, event_type, payload->'data'->>'run_id' as run_id, payload->'data'->>'workflow' as workflow from webhook_deliveries where endpoint_id in ($1, $2) order by created_at, event_type`,
      [own, elsewhere],
    );
    const of = (run: string) => rows.filter((r) => r.run_id === run).map((r) => [r.tenant_id, r.endpoint_id, r.event_type, r.workflow]);
    expect(of(completed)).toEqual([[tenant, own, 'run.completed', PARTNER_OFFBOARDING]]);
    expect(of(cancelled)).toEqual([[tenant, own, 'run.cancelled', PARTNER_OFFBOARDING]]);
    expect(of(theirs)).toEqual([[otherTenant, elsewhere, 'run.completed', PARTNER_OFFBOARDING]]);
    expect(rows).toHaveLength(3);
  });
});
