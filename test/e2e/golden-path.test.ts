import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { api, CLASS_A_SUBMISSION, CLASS_C_SUBMISSION, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { namedJobId } from '../../src/platform/queue/job-ids.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';
import { evidenceHash } from '../../src/modules/evidence/evidence.service.ts';
import { RECORDS_MATCH } from '../helpers/evidence.ts';

/**
 * The golden path over HTTP against real worker processes: classes A/B/C, rejection, the approval
 * rules (roles, distinct approvers, never the submitter), evidence verification and tampering,
 * tenant isolation (404, never 403), pagination, the per-tenant policy, and a worker killed while a
 * run waits for its approval.
 */
let stack: TestStack;
const tenant = newTenant();
const otherTenant = newTenant();
const tok: Record<string, string> = {};

const RUN_DEADLINE = { timeoutMs: 60_000, intervalMs: 100 };

async function submit(body: unknown, token = tok.submitter!, key: string = randomUUID()) {
  return api(stack, 'POST', '/api/v1/golden-path/run', { token, body, headers: { 'Idempotency-Key': key } });
}
async function getJson(path: string, token = tok.submitter!) {
  return api(stack, 'GET', path, { token });
}
async function runOf(id: string, token = tok.submitter!) {
  return (await getJson(`/api/v1/golden-path/runs/${id}`, token)).json;
}
async function waitStatus(id: string, statuses: string[], token = tok.submitter!) {
  return waitFor(
    async () => {
      const r = await runOf(id, token);
      return statuses.includes(r?.status) ? r : undefined;
    },
    { ...RUN_DEADLINE, what: `run ${id} to reach ${statuses.join('|')}` },
  );
}
async function decide(approvalId: string, decision: 'approve' | 'reject', token: string, key: string = randomUUID(), comment?: string) {
  return api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, {
    token,
    body: { decision, ...(comment ? { comment } : {}) },
    headers: { 'Idempotency-Key': key },
  });
}
/** The run's SLA timer in the timers queue (ADR 0015; its job id derives from the run's idempotency hash). */
async function slaTimer(runId: string) {
  const { rows } = await stack.db.admin(`select idempotency_hash from durable_runs where id = $1`, [runId]);
  const id = namedJobId('gp', rows[0].idempotency_hash, 'sla');
  const queue = stack.container.queues.get(TIMER_QUEUE)!;
  return { state: () => queue.getJobState(id) };
}
/** Submits and waits until the run waits for its approval; returns the run and its approval request id. */
async function submitWaiting(body: unknown, token = tok.submitter!) {
  const res = await submit(body, token);
  expect(res.status).toBe(202);
  const run = await waitStatus(res.json.run_id, ['waiting', 'failed'], token);
  expect(run.status).toBe('waiting');
  return { run, approvalId: run.steps[2].output.approval_request_id as string };
}

beforeAll(async () => {
  stack = await startStack();
  await stack.spawnWorker();
  const t = (sub: string, roles: string[] = [], tenantId = tenant) => stack.token({ tenantId, sub, roles });
  tok.submitter = await t('submitter-1');
  tok.submitterApprover = await t('submitter-1', ['approver']);
  tok.approver1 = await t('approver-1', ['approver']);
  tok.approver2 = await t('approver-2', ['approver']);
  tok.approver3 = await t('approver-3', ['approver']);
  tok.viewer = await t('viewer-1');
  tok.admin = await t('admin-1', ['admin']);
  tok.other = await t('other-1', ['approver', 'admin'], otherTenant);
});
afterAll(async () => stack?.stop());

describe('golden path over HTTP', () => {
  it('refuses bad input with 4xx and persists nothing', async () => {
    const fresh = newTenant();
    const token = await stack.token({ tenantId: fresh, sub: 'u-1' });
    const bad: Array<[unknown, number[]]> = [
      [{ ...SAMPLE_SUBMISSION, extra: true }, [422]],
      [{ ...SAMPLE_SUBMISSION, economics: { ...SAMPLE_SUBMISSION.economics, win_rate: 1.5 } }, [422]],
      [{ ...SAMPLE_SUBMISSION, economics: { ...SAMPLE_SUBMISSION.economics, onboarding_cost: -1 } }, [422]],
      [{ ...SAMPLE_SUBMISSION, partner: { ...SAMPLE_SUBMISSION.partner, country: 'XX' } }, [422]],
      [{ ...SAMPLE_SUBMISSION, currency: 'sar' }, [422]],
      // Text PostgreSQL cannot store is refused before the handler (400) or by the schema (422): never a 5xx.
      [{ ...SAMPLE_SUBMISSION, partner: { ...SAMPLE_SUBMISSION.partner, name: 'nul\u0000byte' } }, [400, 422]],
    ];
    for (const [body, statuses] of bad) {
      const res = await submit(body, token);
      expect(statuses, JSON.stringify(body)).toContain(res.status);
      expect(res.headers.get('content-type')).toMatch(/application\/problem\+json/);
    }
    const noKey = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body: SAMPLE_SUBMISSION });
    expect(noKey.status).toBe(400);
    const list = await getJson('/api/v1/golden-path/runs', token);
    expect(list.json.items).toEqual([]);
  });

  it('class A is approved by the system and completes with a verifiable evidence pack', async () => {
    const res = await submit(CLASS_A_SUBMISSION);
    expect(res.status).toBe(202);
    expect(res.json.correlation_id).toBe(res.headers.get('x-correlation-id'));
    const run = await waitStatus(res.json.run_id, ['completed', 'failed']);
    expect(run.status).toBe('completed');
    expect(run.correlation_id).toBe(res.json.correlation_id);
    expect(run.progress).toMatchObject({ completed_steps: 4, total_steps: 4 });
    expect(run.steps.map((s: any) => [s.sequence_num, s.name, s.status])).toEqual([
      [1, 'partner-dossier', 'completed'],
      [2, 'economics-model', 'completed'],
      [3, 'approval-packet', 'completed'],
      [4, 'evidence-pack', 'completed'],
    ]);
    for (const s of run.steps) expect(s.completed_at).not.toBeNull();
    const packet = run.steps[2].output;
    expect(packet).toMatchObject({ approval_class: 'A', outcome: 'approved', required_approvals: 0, sla_deadline: null });
    expect(packet.decisions).toEqual([expect.objectContaining({ decided_by: 'system', kind: 'system', decision: 'approve' })]);
    const approval = await getJson(run.links.approval);
    expect(approval.json).toMatchObject({ status: 'approved', approval_class: 'A' });
    const evidence = await getJson(run.links.evidence);
    expect(evidence.json.content.outcome).toBe('approved');
    expect(evidence.json.sha256).toBe(run.steps[3].output.sha256);
    const verify = await getJson(run.links.verify);
    expect(verify.json).toMatchObject({ valid: true, sha256: evidence.json.sha256 });
  });

  it("PostgreSQL has nothing to warn about on the API's path: a keyed submission, its replay and the reads raise no notice", async () => {
    // The API runs in this process: every notice its connections receive (a WARNING the server also
    // logs, e.g. a commit with no transaction in progress) is seen here.
    const notices: string[] = [];
    const emit = pg.Client.prototype.emit;
    pg.Client.prototype.emit = function (this: pg.Client, event: string | symbol, ...args: any[]) {
      if (event === 'notice') notices.push(`${args[0]?.severity}: ${args[0]?.message}`);
      return emit.call(this, event, ...args);
    };
    try {
      const key = randomUUID();
      const first = await submit(CLASS_A_SUBMISSION, tok.submitter, key);
      expect(first.status).toBe(202);
      const replay = await submit(CLASS_A_SUBMISSION, tok.submitter, key);
      expect(replay.status).toBe(202);
      expect(replay.json.run_id).toBe(first.json.run_id);
      await waitStatus(first.json.run_id, ['completed', 'failed']);
      expect((await getJson('/api/v1/golden-path/runs?limit=5')).status).toBe(200);
    } finally {
      pg.Client.prototype.emit = emit;
    }
    expect(notices).toEqual([]);
  });

  it('class B waits for one approver and completes after approval', async () => {
    const { run, approvalId } = await submitWaiting(SAMPLE_SUBMISSION);
    expect(run.steps[2]).toMatchObject({ status: 'waiting', output: { approval_class: 'B', required_approvals: 1, outcome: 'pending' } });
    expect(run.steps[3].status).toBe('pending');
    // The SLA timer waits as a delayed job while the request is pending...
    const sla = await slaTimer(run.run_id);
    expect(await sla.state()).toBe('delayed');
    const pending = await getJson('/api/v1/approvals?status=pending', tok.approver1);
    expect(pending.json.items.map((a: any) => a.approval_request_id)).toContain(approvalId);
    const d = await decide(approvalId, 'approve', tok.approver1!, randomUUID(), 'numbers hold');
    expect(d.status).toBe(200);
    expect(d.json).toMatchObject({ status: 'approved', approvals: 1, required_approvals: 1 });
    // ...and is gone once it is decided (removed after the decision's commit, before the answer).
    expect(await sla.state()).toBe('unknown');
    const done = await waitStatus(run.run_id, ['completed']);
    expect(done.steps[3].output.outcome).toBe('approved');
    const evidence = await getJson(done.links.evidence);
    expect(evidence.json.content.approval_packet.decisions).toEqual([expect.objectContaining({ decided_by: 'approver-1', decision: 'approve', comment: 'numbers hold', kind: 'human' })]);
    expect((await getJson(done.links.verify)).json.valid).toBe(true);
    // Every time the API answers is ISO 8601 in UTC with Z, the decisions' too (not PostgreSQL's own form).
    const approval = (await getJson(`/api/v1/approvals/${approvalId}`)).json;
    const isoZ = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
    expect(approval.decisions).toEqual([expect.objectContaining({ approver: 'approver-1', decision: 'approve', decided_at: expect.stringMatching(isoZ) })]);
    expect(approval.decisions[0].decided_at).toBe(approval.decided_at);
    for (const at of [approval.created_at, approval.sla_deadline]) expect(at).toMatch(isoZ);
  });

  it('a payback of 6.004 months, shown as 6, is class B: never approved by the system; approved by one approver, its pack verifies valid', async () => {
    // 1 deal × 40,000, win rate 1, margin 0.3: gross profit 1,000 a month; a cost of 6,004 is paid back in 6.004 months.
    const economics = { expected_deals_per_year: 1, average_deal_value: 40_000, win_rate: 1, gross_margin: 0.3, onboarding_cost: 6_004, enablement_cost: 0, annual_support_cost: 0 };
    const res = await submit({ ...SAMPLE_SUBMISSION, economics });
    expect(res.status).toBe(202);
    const run = await waitStatus(res.json.run_id, ['waiting', 'completed', 'failed']);
    expect(run.status).toBe('waiting');
    const approvalId = run.steps[2].output.approval_request_id as string;
    expect(run.steps[1].output.payback_months).toBe(6);
    expect(run.steps[2]).toMatchObject({ status: 'waiting', output: { approval_class: 'B', required_approvals: 1, outcome: 'pending', decisions: [], provenance: { method: 'approval-policy@2' } } });
    expect((await decide(approvalId, 'approve', tok.approver1!)).status).toBe(200);
    const done = await waitStatus(run.run_id, ['completed']);
    const verified = (await getJson(done.links.verify)).json;
    expect(verified).toMatchObject({ valid: true, records: RECORDS_MATCH });
  });

  it('class B rejected ends the run rejected, with an evidence pack recording the rejection', async () => {
    const { run, approvalId } = await submitWaiting(SAMPLE_SUBMISSION);
    const d = await decide(approvalId, 'reject', tok.approver1!, randomUUID(), 'margin too thin');
    expect(d.status).toBe(200);
    expect(d.json.status).toBe('rejected');
    const done = await waitStatus(run.run_id, ['rejected', 'completed', 'failed']);
    expect(done.status).toBe('rejected');
    expect(done.completed_at).not.toBeNull();
    const evidence = await getJson(done.links.evidence);
    expect(evidence.json.content.outcome).toBe('rejected');
    expect(evidence.json.content.approval_packet.outcome).toBe('rejected');
    expect(evidence.json.content.approval_packet.decisions[0]).toMatchObject({ decided_by: 'approver-1', decision: 'reject', comment: 'margin too thin' });
    expect((await getJson(done.links.verify)).json.valid).toBe(true);
    expect((await getJson(`/api/v1/approvals/${approvalId}`)).json.status).toBe('rejected');
  });

  it('class C needs two distinct approvers: the same approver twice is refused, a second one completes it', async () => {
    const { run, approvalId } = await submitWaiting(CLASS_C_SUBMISSION);
    expect(run.steps[2].output).toMatchObject({ approval_class: 'C', required_approvals: 2 });
    const key = randomUUID();
    const first = await decide(approvalId, 'approve', tok.approver1!, key);
    expect(first.status).toBe(200);
    expect(first.json).toMatchObject({ status: 'pending', approvals: 1, required_approvals: 2 });
    // The same request again (same key) replays; the same approver with a new key is refused.
    const replay = await decide(approvalId, 'approve', tok.approver1!, key);
    expect(replay.status).toBe(200);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    const twice = await decide(approvalId, 'approve', tok.approver1!);
    expect(twice.status).toBe(409);
    expect(twice.json.code).toBe('approver_already_decided');
    expect((await runOf(run.run_id)).status).toBe('waiting');
    // One approval of two decides nothing: the SLA timer keeps running until the second.
    const sla = await slaTimer(run.run_id);
    expect(await sla.state()).toBe('delayed');
    const second = await decide(approvalId, 'approve', tok.approver2!);
    expect(second.status).toBe(200);
    expect(second.json).toMatchObject({ status: 'approved', approvals: 2 });
    expect(await sla.state()).toBe('unknown');
    const done = await waitStatus(run.run_id, ['completed', 'failed']);
    expect(done.status).toBe('completed');
    const evidence = await getJson(done.links.evidence);
    expect(evidence.json.content.approval_packet.decisions.map((d: any) => d.decided_by).sort()).toEqual(['approver-1', 'approver-2']);
    const late = await decide(approvalId, 'reject', tok.approver3!);
    expect(late.status).toBe(409);
    expect(late.json.code).toBe('approval_decided');
  });

  it('the submitter can never decide their own run, nor can a user without the approver role', async () => {
    const { run, approvalId } = await submitWaiting(SAMPLE_SUBMISSION);
    const self = await decide(approvalId, 'approve', tok.submitterApprover!);
    expect(self.status).toBe(403);
    const viewer = await decide(approvalId, 'approve', tok.viewer!);
    expect(viewer.status).toBe(403);
    expect((await getJson(`/api/v1/approvals/${approvalId}`)).json).toMatchObject({ status: 'pending', decisions: [] });
    expect((await runOf(run.run_id)).status).toBe('waiting');
    expect((await decide(approvalId, 'approve', tok.approver2!)).status).toBe(200);
    await waitStatus(run.run_id, ['completed']);
  });

  it('verify detects an evidence pack changed in the database after it was written', async () => {
    const res = await submit(CLASS_A_SUBMISSION);
    const run = await waitStatus(res.json.run_id, ['completed']);
    const id = run.steps[3].output.evidence_pack_id;
    expect((await getJson(`/api/v1/evidence/${id}/verify`)).json.valid).toBe(true);
    // As the table owner: FORCE RLS applies to it too, so it must name the tenant in its session.
    const results = (await stack.db.owner(
      `select set_config('app.tenant_id', '${tenant}', false);
       update evidence_packs set content = jsonb_set(content, '{economics_model,cost}', '1'::jsonb) where id = '${id}'`,
    )) as unknown as Array<{ rowCount: number }>;
    expect(results[1]!.rowCount).toBe(1);
    const verify = await getJson(`/api/v1/evidence/${id}/verify`);
    expect(verify.status).toBe(200);
    expect(verify.json.valid).toBe(false);
    expect(verify.json.sha256).toBe(run.steps[3].output.sha256);
    expect(verify.json.recomputed_sha256).not.toBe(verify.json.sha256);
  });

  it('verify answers valid: false, not an error, for content changed into JSON it cannot recompute a hash over (a number beyond a double)', async () => {
    const res = await submit(CLASS_A_SUBMISSION);
    const run = await waitStatus(res.json.run_id, ['completed']);
    const id = run.steps[3].output.evidence_pack_id;
    // jsonb holds 1e400 exactly; read back it is Infinity, which RFC 8785 has no form for.
    await stack.db.owner(
      `select set_config('app.tenant_id', '${tenant}', false);
       update evidence_packs set content = jsonb_set(content, '{economics_model,cost}', '1e400'::jsonb) where id = '${id}'`,
    );
    const verify = await getJson(`/api/v1/evidence/${id}/verify`);
    expect(verify.status, verify.text).toBe(200);
    expect(verify.json).toEqual({
      valid: false,
      sha256: run.steps[3].output.sha256,
      recomputed_sha256: null,
      recorded_sha256: run.steps[3].output.sha256,
      // The stored model's cost is 65,000, not 1e400 (compared as jsonb, exactly).
      // Nor is its class what the policy gives a cost of 1e400 (class C): approval_policy disagrees too.
      records: { ...RECORDS_MATCH, economics_model: 'mismatch', approval_policy: 'mismatch' },
    });
  });

  it('verify also detects content rewritten together with its hash, and the application role cannot rewrite a pack at all', async () => {
    const res = await submit(CLASS_A_SUBMISSION);
    const run = await waitStatus(res.json.run_id, ['completed']);
    const id = run.steps[3].output.evidence_pack_id;
    const before = (await getJson(`/api/v1/evidence/${id}/verify`)).json;
    expect(before).toMatchObject({ valid: true, recorded_sha256: run.steps[3].output.sha256 });
    // The application role may insert and read evidence packs, never change or delete them.
    const asApp = async (sql: string) => {
      const c = new pg.Client({ connectionString: stack.db.appUrl });
      await c.connect();
      try {
        await c.query('begin');
        await c.query(`select set_config('app.tenant_id', $1, true)`, [tenant]);
        return await c.query(sql, [id]);
      } finally {
        await c.query('rollback').catch(() => {});
        await c.end();
      }
    };
    for (const sql of [`update evidence_packs set sha256 = 'x' where id = $1`, `delete from evidence_packs where id = $1`]) {
      await expect(asApp(sql)).rejects.toThrow(/permission denied for table evidence_packs/);
    }
    // The owner forges content and a matching hash in one update: the row agrees with itself, not with the run.
    const forged = { ...(await getJson(`/api/v1/evidence/${id}`)).json.content, outcome: 'rejected' };
    await stack.db.owner(
      `select set_config('app.tenant_id', '${tenant}', false);
       update evidence_packs set content = '${JSON.stringify(forged).replace(/'/g, "''")}'::jsonb, sha256 = '${evidenceHash(forged)}' where id = '${id}'`,
    );
    const after = (await getJson(`/api/v1/evidence/${id}/verify`)).json;
    expect(after.sha256).toBe(after.recomputed_sha256);
    expect(after).toMatchObject({ valid: false, recorded_sha256: run.steps[3].output.sha256 });
    // Nor with the run's approval request, which was approved.
    expect(after.records).toEqual({ ...RECORDS_MATCH, approval: 'mismatch' });
  });

  it("another tenant gets 404, never 403, for a run, its approval, its evidence and the decision endpoint", async () => {
    const { run, approvalId } = await submitWaiting(SAMPLE_SUBMISSION);
    expect((await decide(approvalId, 'approve', tok.approver1!)).status).toBe(200);
    const done = await waitStatus(run.run_id, ['completed']);
    const evidenceId = done.steps[3].output.evidence_pack_id;
    for (const path of [`/api/v1/golden-path/runs/${run.run_id}`, `/api/v1/approvals/${approvalId}`, `/api/v1/evidence/${evidenceId}`, `/api/v1/evidence/${evidenceId}/verify`]) {
      const res = await getJson(path, tok.other);
      expect(res.status, path).toBe(404);
      expect(res.json.code).toBe('not_found');
    }
    expect((await decide(approvalId, 'reject', tok.other!)).status).toBe(404);
    expect((await getJson('/api/v1/golden-path/runs', tok.other)).json.items).toEqual([]);
    expect((await getJson('/api/v1/approvals', tok.other)).json.items).toEqual([]);
    // Nothing changed for the owner of the run.
    expect((await runOf(run.run_id)).status).toBe('completed');
  });

  it('lists approval requests newest first, page by page with a cursor, filtered by status', async () => {
    const pager = newTenant();
    const token = await stack.token({ tenantId: pager, sub: 'approval-pager-1' });
    const approvalIds: string[] = [];
    for (let i = 0; i < 3; i++) approvalIds.push((await submitWaiting(SAMPLE_SUBMISSION, token)).approvalId);
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const page = await getJson(`/api/v1/approvals?status=pending&limit=2${cursor ? `&cursor=${cursor}` : ''}`, token);
      expect(page.status).toBe(200);
      expect(page.json.items.length).toBeLessThanOrEqual(2);
      seen.push(...page.json.items.map((a: any) => a.approval_request_id));
      cursor = page.json.next_cursor;
      pages++;
    } while (cursor && pages < 10);
    expect(pages).toBe(2);
    // One ordering, newest first, no gap and no repeat: the three requests in reverse order of creation.
    expect(seen).toEqual([...approvalIds].reverse());
    expect((await getJson('/api/v1/approvals?cursor=not-a-cursor', token)).status).toBe(400);
  });

  it('lists runs newest first, page by page with a cursor, filtered by status', async () => {
    const pager = newTenant();
    const token = await stack.token({ tenantId: pager, sub: 'pager-1' });
    const approver = await stack.token({ tenantId: pager, sub: 'pager-approver', roles: ['approver'] });
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await submit(CLASS_A_SUBMISSION, token)).json.run_id);
    const { run: waiting, approvalId } = await submitWaiting(SAMPLE_SUBMISSION, token);
    for (const id of ids) await waitStatus(id, ['completed'], token);

    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const q: string = `/api/v1/golden-path/runs?status=completed&limit=2${cursor ? `&cursor=${cursor}` : ''}`;
      const page = await getJson(q, token);
      expect(page.status).toBe(200);
      expect(page.json.items.length).toBeLessThanOrEqual(2);
      for (const item of page.json.items) expect(item.status).toBe('completed');
      seen.push(...page.json.items.map((r: any) => r.run_id));
      cursor = page.json.next_cursor;
      pages++;
    } while (cursor && pages < 10);
    expect(pages).toBe(3);
    // Pages follow the one ordering of the full list (newest first), with no gap and no repeat.
    const completed = await getJson('/api/v1/golden-path/runs?status=completed&limit=100', token);
    expect(seen).toEqual(completed.json.items.map((r: any) => r.run_id));
    expect([...seen].sort()).toEqual([...ids].sort());
    const created = completed.json.items.map((r: any) => Date.parse(r.created_at));
    expect(created).toEqual([...created].sort((a: number, b: number) => b - a));

    const all = await getJson('/api/v1/golden-path/runs?limit=100', token);
    expect(all.json.items.map((r: any) => r.run_id).sort()).toEqual([waiting.run_id, ...ids].sort());
    const onlyWaiting = await getJson('/api/v1/golden-path/runs?status=waiting', token);
    expect(onlyWaiting.json.items.map((r: any) => r.run_id)).toEqual([waiting.run_id]);
    expect((await getJson('/api/v1/golden-path/runs?cursor=not-a-cursor', token)).status).toBe(400);
    expect((await getJson('/api/v1/golden-path/runs?status=bogus', token)).status).toBe(400);
    expect((await decide(approvalId, 'approve', approver)).status).toBe(200);
  });

  it("a tenant admin sets the tenant's approval policy; its runs are classified and timed by it", async () => {
    const t = newTenant();
    const admin = await stack.token({ tenantId: t, sub: 'admin-1', roles: ['admin'] });
    const user = await stack.token({ tenantId: t, sub: 'user-1' });
    const initial = await getJson('/api/v1/approval-policy', user);
    expect(initial.json).toEqual({
      source: 'default',
      policy: { class_a_max_cost: 50_000, class_a_max_payback_months: 6, class_c_min_cost: 250_000, class_c_min_payback_months: 24, sla_b_seconds: 86_400, sla_c_seconds: 259_200, currency: 'SAR' },
      version: 0,
      updated_at: null,
      updated_by: null,
      approved_by: null,
    });
    const policy = { class_a_max_cost: 1_000, class_a_max_payback_months: 1, class_c_min_cost: 500_000, class_c_min_payback_months: 36, sla_b_seconds: 1, sla_c_seconds: 3_600 };
    const put = (body: unknown, token: string) => api(stack, 'PUT', '/api/v1/approval-policy', { token, body });
    expect((await put(policy, user)).status).toBe(403);
    expect((await put({ ...policy, class_a_max_cost: 600_000 }, admin)).status).toBe(422);
    expect((await put({ ...policy, sla_b_seconds: 0 }, admin)).status).toBe(422);
    // It raises the class C bounds (fewer runs need two approvers): a loosening, pending until a second admin approves it.
    const proposed = await put(policy, admin);
    expect(proposed.status, proposed.text).toBe(202);
    expect(proposed.json).toMatchObject({ status: 'pending', loosens: ['class_c_min_cost', 'class_c_min_payback_months'] });
    expect((await getJson('/api/v1/approval-policy', user)).json.source).toBe('default');
    const admin2 = await stack.token({ tenantId: t, sub: 'admin-2', roles: ['admin'] });
    const saved = await api(stack, 'POST', `/api/v1/approval-policy/changes/${proposed.json.id}/approve`, { token: admin2 });
    expect(saved.status, saved.text).toBe(200);
    expect(saved.json).toMatchObject({ source: 'tenant', policy: { ...policy, currency: 'SAR' }, version: 1, updated_by: 'admin-1', approved_by: 'admin-2' });
    expect((await getJson('/api/v1/approval-policy', user)).json).toMatchObject({ source: 'tenant', policy });
    // Another tenant still sees the defaults.
    expect((await getJson('/api/v1/approval-policy', tok.other)).json.source).toBe('default');

    // Under this policy the class A sample is class B with a one-second SLA: it expires.
    const res = await submit(CLASS_A_SUBMISSION, user);
    const run = await waitStatus(res.json.run_id, ['approval_expired', 'completed', 'failed'], user);
    expect(run.status).toBe('approval_expired');
    expect(run.steps[2].output).toMatchObject({ approval_class: 'B', outcome: 'expired' });
  });

  it('a worker killed while a run waits for approval loses nothing: the run completes after the decision', async () => {
    const { run, approvalId } = await submitWaiting(SAMPLE_SUBMISSION);
    for (const w of stack.workers) w.kill('SIGKILL');
    await Promise.all(stack.workers.map((w) => w.exited));
    // Decided while no worker is alive: the rest of the run waits in Redis, its state in Postgres.
    const d = await decide(approvalId, 'approve', tok.approver1!);
    expect(d.status).toBe(200);
    expect((await runOf(run.run_id)).status).toBe('running');
    await stack.spawnWorker();
    const done = await waitStatus(run.run_id, ['completed', 'failed']);
    expect(done.status).toBe('completed');
    expect((await getJson(done.links.verify)).json.valid).toBe(true);
  });
});
