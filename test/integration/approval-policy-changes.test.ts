import { beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { api, SAMPLE_SUBMISSION, type TestStack } from '../helpers/stack.ts';
import { stackForTests } from '../helpers/stack-for-tests.ts';
import { waitFor } from '../helpers/poll.ts';
import { policyTenant, putPolicy, type PolicyTenant } from '../helpers/policy.ts';
import { sqlState } from '../helpers/sql-state.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { backendPid, blockedByAtLeast } from '../helpers/lock-graph.ts';
import { holdRows } from '../helpers/row-lock.ts';
import { spawnApi } from '../helpers/api-process.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { TENANT_SETTING } from '../../src/platform/db/tenant-owned.ts';
import { DEFAULT_POLICY, loosenedFields, policyFromBody, type ApprovalPolicyBody } from '../../src/modules/approvals/approval.policy.ts';

/**
 * Four-eyes on loosening the approval policy (ADR 0010, docs/api.md): a PUT that only tightens applies
 * at once; one that loosens is a pending change until a second admin of the tenant approves it.
 */
const PATH = '/api/v1/approval-policy';
const CHANGES = `${PATH}/changes`;
const DEFAULTS = { class_a_max_cost: 50_000, class_a_max_payback_months: 6, class_c_min_cost: 250_000, class_c_min_payback_months: 24, sla_b_seconds: 86_400, sla_c_seconds: 259_200, currency: 'SAR' };
/** Under it the sample (cost 65,000, payback 2.48 months; class B under the defaults) is class A: approved with nobody asked. */
const LOOSER = { ...DEFAULTS, class_a_max_cost: 100_000 };
const suite = stackForTests({ worker: true });
let stack: TestStack;
beforeAll(() => void ({ stack } = suite));

const tenantTokens = () => policyTenant(stack);

const put = (token: string, body: unknown, key?: string) => putPolicy(stack, token, body, key);
const decide = (token: string, id: string, decision: 'approve' | 'reject', key?: string) =>
  api(stack, 'POST', `${CHANGES}/${id}/${decision}`, { token, ...(key === undefined ? {} : { headers: { 'Idempotency-Key': key } }) });
const policyOf = async (t: PolicyTenant) => (await api(stack, 'GET', PATH, { token: t.submitter })).json;
const changeOf = async (t: PolicyTenant, id: string) => (await api(stack, 'GET', `${CHANGES}/${id}`, { token: t.submitter })).json;

/** Proposes `body` as admin-1 (it loosens): the pending change. */
async function propose(t: PolicyTenant, body: unknown = LOOSER) {
  const res = await put(t.admin, body);
  expect(res.status, res.text).toBe(202);
  return res.json;
}

/** Submits the sample and waits until it is classified: its approval packet. */
async function classifiedPacket(t: PolicyTenant) {
  const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: t.submitter, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status, res.text).toBe(202);
  const run = await waitFor(
    async () => {
      const r = (await api(stack, 'GET', `/api/v1/golden-path/runs/${res.json.run_id}`, { token: t.submitter })).json;
      return ['waiting', 'completed', 'failed'].includes(r?.status) ? r : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 100, what: `run ${res.json.run_id} to be classified` },
  );
  expect(run.status).not.toBe('failed');
  return { run, packet: run.steps[2].output };
}

function expectProblem(res: { status: number; json: any; headers: Headers }, status: number, code: string) {
  expect(res.status, JSON.stringify(res.json)).toBe(status);
  expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(res.json).toMatchObject({ status, code });
}

describe('a policy change that only tightens', () => {
  it('applies at once (200), one version up, approved by nobody: lower class A bounds, lower class C bounds, shorter SLAs, the same currency', async () => {
    const t = await tenantTokens();
    const initial = await policyOf(t);
    expect(initial).toEqual({ source: 'default', policy: DEFAULTS, version: 0, updated_at: null, updated_by: null, approved_by: null });

    const tighter = { ...DEFAULTS, class_a_max_cost: 40_000, class_a_max_payback_months: 5, class_c_min_cost: 200_000, class_c_min_payback_months: 20, sla_b_seconds: 3_600, sla_c_seconds: 7_200 };
    const res = await put(t.admin, tighter);
    expect(res.status, res.text).toBe(200);
    expect(res.json).toMatchObject({ source: 'tenant', policy: tighter, version: 1, updated_by: 'admin-1', approved_by: null });
    expect(await policyOf(t)).toEqual(res.json);
    // The same policy again is no loosening either.
    expect((await put(t.admin, tighter)).json).toMatchObject({ version: 2 });
    expect((await api(stack, 'GET', CHANGES, { token: t.submitter })).json).toEqual({ items: [], next_cursor: null });
    // A run is classified by it at once: the sample (cost 65,000) stays B, with the one-hour SLA.
    const { packet } = await classifiedPacket(t);
    expect(packet).toMatchObject({ approval_class: 'B', policy: { version: 2, updated_by: 'admin-1', approved_by: null } });
  });
});

describe('a policy change that loosens', () => {
  it('is a pending change (202): the policy in force is unchanged, and runs submitted meanwhile are classified under it', async () => {
    const t = await tenantTokens();
    const res = await put(t.admin, LOOSER);
    expect(res.status, res.text).toBe(202);
    expect(res.json).toMatchObject({
      status: 'pending',
      policy: LOOSER,
      base_version: 0,
      loosens: ['class_a_max_cost'],
      proposed_by: 'admin-1',
      decided_by: null,
      decided_at: null,
    });
    expect(res.headers.get('location')).toBe(`${CHANGES}/${res.json.id}`);
    expect(Date.parse(res.json.expires_at) - Date.parse(res.json.proposed_at)).toBe(72 * 3_600_000);
    expect(await changeOf(t, res.json.id)).toEqual(res.json);
    expect((await api(stack, 'GET', `${CHANGES}?status=pending`, { token: t.submitter })).json.items).toEqual([res.json]);

    expect(await policyOf(t)).toMatchObject({ source: 'default', version: 0, policy: DEFAULTS });
    const { packet } = await classifiedPacket(t);
    expect(packet).toMatchObject({ approval_class: 'B', outcome: 'pending', policy: { source: 'default', version: 0 } });
  });

  it('names every field that loosens: higher bounds, longer SLAs, another currency (even with the rest tightened)', async () => {
    const t = await tenantTokens();
    const change = await propose(t, { ...DEFAULTS, class_a_max_cost: 1_000, class_a_max_payback_months: 7, class_c_min_cost: 300_000, class_c_min_payback_months: 30, sla_b_seconds: 90_000, sla_c_seconds: 300_000 });
    expect(change.loosens).toEqual(['class_a_max_payback_months', 'class_c_min_cost', 'class_c_min_payback_months', 'sla_b_seconds', 'sla_c_seconds']);
    expect((await propose(t, { ...DEFAULTS, currency: 'KWD' })).loosens).toEqual(['currency']);
    expect(await policyOf(t)).toMatchObject({ source: 'default', version: 0, policy: DEFAULTS });
  });

  it('cannot be approved by its proposer (403), by a non-admin (403), and stays pending; the PUT needs admin too', async () => {
    const t = await tenantTokens();
    const change = await propose(t);
    expectProblem(await decide(t.admin, change.id, 'approve'), 403, 'forbidden');
    for (const token of [t.submitter, t.approver]) {
      expectProblem(await decide(token, change.id, 'approve'), 403, 'forbidden');
      expectProblem(await decide(token, change.id, 'reject'), 403, 'forbidden');
    }
    expectProblem(await put(t.approver, LOOSER), 403, 'forbidden');
    expect(await changeOf(t, change.id)).toEqual(change);
    expect(await policyOf(t)).toMatchObject({ source: 'default', version: 0 });
    expect((await api(stack, 'GET', CHANGES, { token: t.submitter })).json.items).toEqual([change]);
  });

  it('cannot be approved by its proposer through another token of the same sub (other roles, signed anew), nor once re-proposed after a rejection; a sub with surrounding whitespace is no token at all (401)', async () => {
    const t = await tenantTokens();
    const sameSub = await stack.token({ tenantId: t.tenant, sub: 'admin-1', roles: ['approver', 'admin'] });
    const first = await propose(t);
    expectProblem(await decide(sameSub, first.id, 'approve'), 403, 'forbidden');
    expect((await decide(t.admin2, first.id, 'reject')).json).toMatchObject({ status: 'rejected', decided_by: 'admin-2' });
    const again = await propose(t);
    expect(again.id).not.toBe(first.id);
    expectProblem(await decide(sameSub, again.id, 'approve'), 403, 'forbidden');
    expect(await policyOf(t)).toMatchObject({ source: 'default', version: 0 });
    // Subjects are compared exactly (src/platform/tenancy/jwt.ts): ' admin-1' cannot even sign in.
    const spaced = await stack.token({ tenantId: t.tenant, sub: ' admin-1', roles: ['admin'] });
    expect((await decide(spaced, again.id, 'approve')).status).toBe(401);
    const approved = await decide(t.admin2, again.id, 'approve');
    expect(approved.json).toMatchObject({ version: 1, updated_by: 'admin-1', approved_by: 'admin-2' });
  });

  it('applies when another admin approves it: new runs use it, and the packet and evidence pack record both admins', async () => {
    const t = await tenantTokens();
    const change = await propose(t);
    const approved = await decide(t.admin2, change.id, 'approve');
    expect(approved.status, approved.text).toBe(200);
    expect(approved.json).toMatchObject({ source: 'tenant', policy: LOOSER, version: 1, updated_by: 'admin-1', approved_by: 'admin-2' });
    expect(await policyOf(t)).toEqual(approved.json);
    expect(await changeOf(t, change.id)).toMatchObject({ status: 'approved', decided_by: 'admin-2' });
    // Once decided, it is not decided again.
    expectProblem(await decide(t.admin2, change.id, 'approve'), 409, 'policy_change_decided');
    expectProblem(await decide(t.admin2, change.id, 'reject'), 409, 'policy_change_decided');

    // The sample is class A now: approved by policy, and its evidence pack shows who proposed and who approved the policy.
    const { run, packet } = await classifiedPacket(t);
    expect(packet).toMatchObject({ approval_class: 'A', outcome: 'approved', policy: approved.json });
    const done = await waitFor(
      async () => {
        const r = (await api(stack, 'GET', `/api/v1/golden-path/runs/${run.run_id}`, { token: t.submitter })).json;
        return ['completed', 'failed'].includes(r?.status) ? r : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 100, what: 'the class A run to complete' },
    );
    expect(done.status).toBe('completed');
    const pack = await api(stack, 'GET', `/api/v1/evidence/${done.steps[3].output.evidence_pack_id}`, { token: t.submitter });
    expect(pack.json.content.approval_packet.policy).toEqual({ ...approved.json });
    expect(pack.json.content.approval_packet.policy).toMatchObject({ updated_by: 'admin-1', approved_by: 'admin-2' });
    expect((await api(stack, 'GET', `/api/v1/evidence/${done.steps[3].output.evidence_pack_id}/verify`, { token: t.submitter })).json.valid).toBe(true);
  });

  it('is rejected by another admin, or withdrawn by its proposer (reject): nothing applies, and it can no longer be approved', async () => {
    const t = await tenantTokens();
    const change = await propose(t);
    const rejected = await decide(t.admin2, change.id, 'reject');
    expect(rejected.status, rejected.text).toBe(200);
    expect(rejected.json).toMatchObject({ id: change.id, status: 'rejected', decided_by: 'admin-2', policy: LOOSER });
    expect(rejected.json.decided_at).not.toBeNull();
    expect(await changeOf(t, change.id)).toEqual(rejected.json);
    expectProblem(await decide(t.admin2, change.id, 'approve'), 409, 'policy_change_decided');
    expect(await policyOf(t)).toMatchObject({ source: 'default', version: 0 });

    const withdrawn = await decide(t.admin, (await propose(t)).id, 'reject');
    expect(withdrawn.json).toMatchObject({ status: 'rejected', decided_by: 'admin-1' });
    expect((await api(stack, 'GET', `${CHANGES}?status=rejected`, { token: t.submitter })).json.items.map((c: any) => c.id)).toEqual([withdrawn.json.id, change.id]);
  });

  it('based on a version no longer in force cannot be approved (409 policy_changed): it reads superseded', async () => {
    const t = await tenantTokens();
    const first = await propose(t);
    const second = await propose(t, { ...DEFAULTS, sla_b_seconds: 172_800 });
    // Another admin tightens the policy meanwhile: version 1. Both changes were based on version 0.
    const tightened = await put(t.admin2, { ...DEFAULTS, sla_c_seconds: 86_400 });
    expect(tightened.json).toMatchObject({ version: 1 });
    expectProblem(await decide(t.admin2, first.id, 'approve'), 409, 'policy_changed');
    expect(await changeOf(t, first.id)).toMatchObject({ status: 'superseded', decided_by: null });
    expect(await policyOf(t)).toEqual(tightened.json);

    // Of two changes based on one version, the first approved applies; the other is then superseded.
    const a = await propose(t);
    const b = await propose(t, { ...DEFAULTS, sla_c_seconds: 86_400, sla_b_seconds: 172_800 });
    expect([a.base_version, b.base_version]).toEqual([1, 1]);
    expect((await decide(t.admin2, a.id, 'approve')).json).toMatchObject({ version: 2, approved_by: 'admin-2' });
    expectProblem(await decide(t.admin2, b.id, 'approve'), 409, 'policy_changed');
    expect(await changeOf(t, b.id)).toMatchObject({ status: 'superseded' });
    expect(await changeOf(t, second.id)).toMatchObject({ status: 'superseded' });
    expect((await policyOf(t)).version).toBe(2);
  });

  it('expires undecided at expires_at: it reads expired and can no longer be approved (409 policy_change_expired)', async () => {
    const t = await tenantTokens();
    const change = await propose(t);
    // Its deadline moved into the past, as the superuser: the application role may update only a change's decision (roles.ts, APP_UPDATE_COLUMNS).
    await stack.db.admin(`update approval_policy_changes set expires_at = now() - interval '1 second' where id = $1`, [change.id]);
    const expired = await changeOf(t, change.id);
    expect(expired).toMatchObject({ status: 'expired', decided_by: null });
    expect(expired.decided_at).toBe(expired.expires_at);
    expectProblem(await decide(t.admin2, change.id, 'approve'), 409, 'policy_change_expired');
    expect(await policyOf(t)).toMatchObject({ version: 0 });
  });

  it('cannot be erased or rewritten by the application role (42501), even under its own tenant: the record of what was proposed, by whom and who decided stays', async () => {
    const t = await tenantTokens();
    const pending = await propose(t);
    const decided = await propose(t, { ...DEFAULTS, sla_b_seconds: 172_800 });
    expect((await decide(t.admin2, decided.id, 'reject')).status).toBe(200);
    const em = tenantEm(stack.container.orm, t.tenant);
    expect(await sqlState(em.execute(`delete from approval_policy_changes where id = ?`, [decided.id]))).toBe('42501');
    expect(await sqlState(em.execute(`delete from approval_policy_changes where tenant_id = ?`, [t.tenant]))).toBe('42501');
    // Nor rewritten: what was proposed and by whom (only a change's decision is updated: roles.ts, APP_UPDATE_COLUMNS).
    expect(await sqlState(em.execute(`update approval_policy_changes set proposed_by = 'admin-2' where id = ?`, [pending.id]))).toBe('42501');
    expect(await sqlState(em.execute(`update approval_policy_changes set policy = policy || '{"class_a_max_cost": 1e9}'::jsonb where id = ?`, [pending.id]))).toBe('42501');
    expect(await changeOf(t, decided.id)).toMatchObject({ status: 'rejected', proposed_by: 'admin-1', decided_by: 'admin-2' });
    expect(await changeOf(t, pending.id)).toMatchObject({ status: 'pending', proposed_by: 'admin-1' });
  });

  it('once applied, cannot be erased by the application role either (42501): the policy in force, and who set and approved it, stay', async () => {
    const t = await tenantTokens();
    const approved = await decide(t.admin2, (await propose(t)).id, 'approve');
    expect(approved.json).toMatchObject({ version: 1, updated_by: 'admin-1', approved_by: 'admin-2' });
    const em = tenantEm(stack.container.orm, t.tenant);
    expect(await sqlState(em.execute(`delete from approval_policies where tenant_id = ?`, [t.tenant]))).toBe('42501');
    expect(await sqlState(em.execute(`delete from approval_policies`))).toBe('42501');
    expect(await policyOf(t)).toEqual(approved.json);
  });

  /** Runs `statements` as the application role under `t`, in one transaction, to its commit (deferred triggers included). */
  async function inAppTransaction(t: PolicyTenant, statements: [string, unknown[]?][]): Promise<void> {
    const c = new pg.Client({ connectionString: stack.db.appUrl });
    await c.connect();
    try {
      await c.query('begin');
      await c.query(`select set_config($1, $2, true)`, [TENANT_SETTING, t.tenant]);
      for (const [sql, params] of statements) await c.query(sql, params ?? []);
      await c.query('commit');
    } finally {
      await c.query('rollback').catch(() => {});
      await c.end();
    }
  }
  /** inAppTransaction's SQLSTATE, or 'succeeded'. */
  const asApp = (t: PolicyTenant, statements: [string, unknown[]?][]): Promise<string> => sqlState(inAppTransaction(t, statements));
  /** inAppTransaction's SQLSTATE and message, or 'succeeded'. */
  const refusal = (t: PolicyTenant, statements: [string, unknown[]?][]): Promise<string> =>
    inAppTransaction(t, statements).then(
      () => 'succeeded',
      (e: unknown) => `${(e as { code?: string }).code}: ${(e as Error).message}`,
    );
  const historyOf = async (t: PolicyTenant) => (await stack.db.admin(`select * from approval_policy_versions where tenant_id = $1 order by version`, [t.tenant])).rows;

  it('cannot be rewritten by the application role (42501): no version without the change a second admin approved, none out of order, no loosening without one, no rewrite of a version', async () => {
    const t = await tenantTokens();
    const approved = await decide(t.admin2, (await propose(t)).id, 'approve');
    expect(approved.json).toMatchObject({ version: 1, updated_by: 'admin-1', approved_by: 'admin-2' });
    const history = await historyOf(t);
    const where = `where tenant_id = '${t.tenant}'`;
    const forgeries: [string, string][] = [
      // The next version, named as approved by a second admin, with no approved change behind it.
      ['a version approved by nobody', `update approval_policies set class_amax_cost = 1e12, class_amax_payback_months = 1200, version = version + 1, updated_by = 'alice', approved_by = 'bob' ${where}`],
      // A loosening as if it only tightened (approved by nobody).
      ['a loosening approved by nobody', `update approval_policies set class_amax_cost = 200000, version = version + 1, approved_by = null ${where}`],
      ['a longer SLA approved by nobody', `update approval_policies set sla_bseconds = sla_bseconds + 1, version = version + 1, approved_by = null ${where}`],
      // Versions out of order: a lower one (later real versions would meet its history row), one skipped ahead, the same one rewritten.
      ['a lower version', `update approval_policies set version = version - 1 ${where}`],
      ['a version skipped', `update approval_policies set version = version + 2, approved_by = null ${where}`],
      ['the version in force rewritten', `update approval_policies set class_cmin_cost = 900000 ${where}`],
      ['who set it rewritten', `update approval_policies set updated_by = 'admin-9' ${where}`],
      ['who approved it rewritten', `update approval_policies set approved_by = 'admin-9' ${where}`],
      ['its time rewritten after it was recorded', `update approval_policies set updated_at = updated_at - interval '1 day' ${where}`],
    ];
    for (const [what, sql] of forgeries) expect(await asApp(t, [[sql]]), what).toBe('42501');
    expect(await policyOf(t)).toEqual(approved.json);
    expect(await historyOf(t)).toEqual(history);
    const tighten = `update approval_policies set sla_bseconds = 3600, version = version + 1, updated_by = 'admin-1', approved_by = null ${where}`;
    // A history row of the next version already there with other values (the owner's, past every trigger):
    // the next version is refused at its commit, not left unrecorded beside it (it was: on conflict do nothing).
    const cols = 'tenant_id, version, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months, sla_bseconds, sla_cseconds, currency, updated_at, updated_by, approved_by';
    await stack.db.admin(`set session_replication_role = replica; insert into approval_policy_versions (id, ${cols})
      select gen_random_uuid(), ${cols.replace('version', 'version + 1').replace('approved_by', "'admin-7'")} from approval_policies ${where}`);
    expect(await asApp(t, [[tighten]]), 'a version whose history row differs').toBe('42501');
    await stack.db.admin(`delete from approval_policy_versions where tenant_id = $1 and version = 2`, [t.tenant]);
    expect(await policyOf(t)).toEqual(approved.json);
    // A tightening, as a PUT writes it, still applies (the next version, approved by nobody); the API's flows are unchanged.
    expect(await asApp(t, [[tighten]])).toBe('succeeded');
    expect(await policyOf(t)).toMatchObject({ version: 2, policy: { ...LOOSER, sla_b_seconds: 3_600 }, approved_by: null });
    expect((await put(t.admin, { ...LOOSER, sla_b_seconds: 1_800 })).json).toMatchObject({ version: 3 });
    expect(await decide(t.admin2, (await propose(t, { ...LOOSER, sla_b_seconds: 7_200 })).id, 'approve')).toMatchObject({ status: 200, json: { version: 4, approved_by: 'admin-2' } });
    expect((await historyOf(t)).map((h) => [h.version, h.approved_by])).toEqual([[1, 'admin-2'], [2, null], [3, null], [4, 'admin-2']]);
  });

  it('a first policy the application role inserts is version 1, and loosens the defaults only with an approved change (42501)', async () => {
    const t = await tenantTokens();
    const insert = (cols: Record<string, unknown>) => {
      const row = { id: randomUUID(), tenant_id: t.tenant, class_amax_cost: 50_000, class_amax_payback_months: 6, class_cmin_cost: 250_000, class_cmin_payback_months: 24, sla_bseconds: 3_600, sla_cseconds: 7_200, currency: 'SAR', updated_at: new Date(), updated_by: 'admin-1', approved_by: null, version: 1, ...cols };
      return [`insert into approval_policies (${Object.keys(row).join(', ')}) values (${Object.keys(row).map((_, i) => `$${i + 1}`).join(', ')})`, Object.values(row)] as [string, unknown[]];
    };
    expect(await asApp(t, [insert({ version: 5 })]), 'a first version other than 1').toBe('42501');
    expect(await asApp(t, [insert({ class_amax_cost: 60_000 })]), 'a class A bound above the defaults, approved by nobody').toBe('42501');
    expect(await asApp(t, [insert({ currency: 'USD' })]), 'another currency, approved by nobody').toBe('42501');
    expect(await asApp(t, [insert({ approved_by: 'admin-2' })]), 'approved, with no approved change').toBe('42501');
    expect(await policyOf(t)).toMatchObject({ source: 'default', version: 0 });
    expect(await asApp(t, [insert({})]), 'a tightening of the defaults').toBe('succeeded');
    expect(await policyOf(t)).toMatchObject({ source: 'tenant', version: 1, approved_by: null });
  });

  it('four eyes in the database: the application role cannot store a change already decided, approve one as its proposer or as nobody, backdate or undo a decision (42501, naming the rule); the API decides as before', async () => {
    const t = await tenantTokens();
    const refused = /^42501: approval policy change .* \(ADR 0010, four eyes\)$/;
    // A change as proposeChange stores it, but with `cols` (the forger's).
    const insert = (cols: Record<string, unknown>): [string, unknown[]] => {
      const row = { id: randomUUID(), tenant_id: t.tenant, policy: JSON.stringify(LOOSER), base_version: 0, base_policy: JSON.stringify(DEFAULTS), loosens: JSON.stringify(['class_a_max_cost']), status: 'pending', proposed_by: 'admin-1', decided_by: null, decided_at: null, ...cols };
      const keys = Object.keys(row);
      return [`insert into approval_policy_changes (${keys.join(', ')}, created_at, expires_at) values (${keys.map((_, i) => `$${i + 1}`).join(', ')}, now(), now() + interval '1 day')`, Object.values(row)];
    };
    // The policy as approveChange writes it for that change: the next version, proposed by admin-1, approved by `approver` at `at` (the change's decided_at).
    const applyAs = (approver: string, at: Date): [string, unknown[]] => [
      `insert into approval_policies (id, tenant_id, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months, sla_bseconds, sla_cseconds, currency, updated_at, updated_by, approved_by, version)
        values (gen_random_uuid(), $1, 100000, 6, 250000, 24, 86400, 259200, 'SAR', $2, 'admin-1', $3, 1)`,
      [t.tenant, at, approver],
    ];
    // Stored already decided: approved (by another admin, or by its proposer), rejected, expired, or pending with a decision.
    const now = new Date();
    const stored = [
      { status: 'approved', decided_by: 'admin-2', decided_at: now },
      { status: 'approved', decided_by: 'admin-1', decided_at: now },
      { status: 'rejected', decided_by: 'admin-2', decided_at: now },
      { status: 'expired', decided_at: now },
      { decided_by: 'admin-2' },
      { decided_at: now },
    ];
    for (const cols of stored) expect(await refusal(t, [insert(cols)]), JSON.stringify(cols)).toMatch(refused);
    // Stored approved by a "second admin" and applied in the same transaction (record_version finds the approved change the version names): refused at the insert.
    expect(await refusal(t, [insert({ status: 'approved', decided_by: 'admin-2', decided_at: now }), applyAs('admin-2', now)])).toMatch(refused);
    expect(await policyOf(t)).toMatchObject({ source: 'default', version: 0 });

    const pending = await propose(t);
    const forgeries: [string, string][] = [
      ['approved by its proposer', `update approval_policy_changes set status = 'approved', decided_by = proposed_by, decided_at = statement_timestamp() where id = $1`],
      ['approved by nobody', `update approval_policy_changes set status = 'approved', decided_at = statement_timestamp() where id = $1`],
      ['approved with no time', `update approval_policy_changes set status = 'approved', decided_by = 'admin-2' where id = $1`],
      ['approved, backdated', `update approval_policy_changes set status = 'approved', decided_by = 'admin-2', decided_at = statement_timestamp() - interval '1 hour' where id = $1`],
      ['approved, dated ahead', `update approval_policy_changes set status = 'approved', decided_by = 'admin-2', decided_at = statement_timestamp() + interval '1 second' where id = $1`],
      ['rejected by nobody', `update approval_policy_changes set status = 'rejected', decided_at = statement_timestamp() where id = $1`],
      ['rejected, backdated', `update approval_policy_changes set status = 'rejected', decided_by = 'admin-2', decided_at = statement_timestamp() - interval '1 hour' where id = $1`],
      ['expired by a decider', `update approval_policy_changes set status = 'expired', decided_by = 'admin-2', decided_at = expires_at where id = $1`],
      ['superseded with no time', `update approval_policy_changes set status = 'superseded' where id = $1`],
      ['pending with a decider', `update approval_policy_changes set decided_by = 'admin-2' where id = $1`],
    ];
    for (const [what, sql] of forgeries) expect(await refusal(t, [[sql, [pending.id]]]), what).toMatch(refused);
    // Approved by its proposer and applied, as approveChange writes it (the version first, then the change, then the restamp): refused, nothing applied.
    expect(
      await refusal(t, [
        applyAs('admin-1', now),
        [
          `with c as (update approval_policy_changes set status = 'approved', decided_by = proposed_by, decided_at = statement_timestamp() where id = $1 returning decided_at)
           update approval_policies set updated_at = c.decided_at from c where tenant_id = $2`,
          [pending.id, t.tenant],
        ],
      ]),
    ).toMatch(refused);
    expect(await changeOf(t, pending.id)).toMatchObject({ status: 'pending', decided_by: null, decided_at: null });
    expect(await policyOf(t)).toMatchObject({ source: 'default', version: 0 });

    // Past its expires_at (the superuser moves it: setup), not even a second admin approves it.
    const late = await propose(t, { ...DEFAULTS, sla_b_seconds: 172_800 });
    await stack.db.admin(`update approval_policy_changes set created_at = created_at - interval '4 days', expires_at = now() - interval '1 second' where id = $1`, [late.id]);
    expect(await refusal(t, [[`update approval_policy_changes set status = 'approved', decided_by = 'admin-2', decided_at = statement_timestamp() where id = $1`, [late.id]]])).toMatch(refused);

    // A decision is final: a rejected change is not approved later, nor pending again.
    const rejected = await propose(t, { ...DEFAULTS, sla_c_seconds: 300_000 });
    expect((await decide(t.admin2, rejected.id, 'reject')).status).toBe(200);
    for (const sql of [
      `update approval_policy_changes set status = 'approved', decided_by = 'admin-2', decided_at = statement_timestamp() where id = $1`,
      `update approval_policy_changes set status = 'pending', decided_by = null, decided_at = null where id = $1`,
      `update approval_policy_changes set decided_at = statement_timestamp() where id = $1`,
    ]) {
      expect(await refusal(t, [[sql, [rejected.id]]]), sql).toMatch(refused);
    }
    expect(await changeOf(t, rejected.id)).toMatchObject({ status: 'rejected', decided_by: 'admin-2' });

    // The API's own writes pass: a second admin approves the pending change (the others read superseded, at the policy's update), then nothing undoes it.
    const approved = await decide(t.admin2, pending.id, 'approve');
    expect(approved.json).toMatchObject({ version: 1, updated_by: 'admin-1', approved_by: 'admin-2' });
    expect(await changeOf(t, pending.id)).toMatchObject({ status: 'approved', decided_by: 'admin-2' });
    expect(await refusal(t, [[`update approval_policy_changes set status = 'pending', decided_by = null, decided_at = null where id = $1`, [pending.id]]])).toMatch(refused);
    expect(await policyOf(t)).toEqual(approved.json);
    // The proposer still withdraws their own change (a rejection by its proposer).
    const withdrawn = await propose(t, { ...LOOSER, sla_b_seconds: 172_800 });
    expect((await decide(t.admin, withdrawn.id, 'reject')).json).toMatchObject({ status: 'rejected', decided_by: 'admin-1' });
  });

  // The trigger's rule is loosenedFields in SQL (POLICY_VERSION_ORDER): where they differ, either a genuine PUT
  // that only tightens is refused (a 500 at the upsert) or a loosening applies as approved by nobody. Held side by
  // side over policies drawn from values at and around each bound (equal values are the edge of every rule), the
  // SLAs chosen so that a lowered C bound meets a C SLA longer, equal and shorter than the B SLA in force.
  it("refuses a next version approved by nobody exactly when loosenedFields names a field; a first row exactly when it loosens the defaults' thresholds or currency", async () => {
    const t = await tenantTokens();
    expect((await put(t.admin, { ...DEFAULTS, sla_b_seconds: 3_600 })).json).toMatchObject({ version: 1 });
    const fresh = randomUUID(); // no policy row: a first row's insert
    let seed = 20261206;
    const pick = <T,>(xs: readonly T[]): T => {
      seed = (seed * 48_271) % 2_147_483_647; // Park–Miller: exact in doubles, the same draw every run
      return xs[seed % xs.length]!;
    };
    const draw = () => ({
      class_a_max_cost: pick([10_000, 50_000, 50_000.5, 60_000]),
      class_a_max_payback_months: pick([3, 6, 6.01, 7]),
      class_c_min_cost: pick([200_000, 250_000, 250_000.01, 300_000]),
      class_c_min_payback_months: pick([12, 24, 24.5, 30]),
      sla_b_seconds: pick([3_600, 86_400, 86_401]),
      sla_c_seconds: pick([3_600, 86_400, 86_401, 259_200]),
      currency: pick(['SAR', 'SAR', 'SAR', 'USD']),
    });
    // Literals (numbers, and a currency from the list above): each attempt is one message, its statements as a transaction rolled back.
    const set = (b: ApprovalPolicyBody) =>
      `class_amax_cost = ${b.class_a_max_cost}, class_amax_payback_months = ${b.class_a_max_payback_months}, class_cmin_cost = ${b.class_c_min_cost}, ` +
      `class_cmin_payback_months = ${b.class_c_min_payback_months}, sla_bseconds = ${b.sla_b_seconds}, sla_cseconds = ${b.sla_c_seconds}, currency = '${b.currency}'`;
    const asApp = async (tenant: string) => {
      const c = new pg.Client({ connectionString: stack.db.appUrl });
      await c.connect();
      await c.query(`select set_config($1, $2, false)`, [TENANT_SETTING, tenant]);
      return c;
    };
    const [app, appFresh] = [await asApp(t.tenant), await asApp(fresh)];
    const owner = new pg.Client({ connectionString: stack.db.adminUrl }); // one connection, not one per statement (admin())
    await owner.connect();
    /** `statement` as the application role, rolled back: the BEFORE trigger's answer (the deferred ones never run). */
    const attempt = async (c: pg.Client, statement: string) => {
      try {
        await c.query(`begin; ${statement}; rollback`);
        return 'succeeded';
      } catch (e) {
        await c.query('rollback');
        return sqlState(Promise.reject(e));
      }
    };
    const outcomes = { refused: 0, applied: 0, byLoweredC: 0, firstRefused: 0, firstApplied: 0 };
    try {
      for (let i = 0; i < 300; i++) {
        // The next policy keeps each field of the one in force (two in three) or draws it again: most fields
        // then stay equal, so tightenings come up often enough beside loosenings.
        const prev = draw();
        const redrawn = draw();
        const next = Object.fromEntries(Object.entries(prev).map(([k, v]) => [k, pick([v, v, redrawn[k as keyof typeof redrawn]])])) as typeof prev;
        // The version in force set as the owner (past the trigger, the version kept: nothing recorded).
        await owner.query(`update approval_policies set ${set(prev)} where tenant_id = $1`, [t.tenant]);
        const loosens = loosenedFields(policyFromBody(prev), next);
        const state = await attempt(app, `update approval_policies set ${set(next)}, version = version + 1, updated_by = 'admin-1', approved_by = null where tenant_id = '${t.tenant}'`);
        expect(state, `${JSON.stringify(prev)} -> ${JSON.stringify(next)}: loosens ${loosens.join(', ') || 'nothing'}`).toBe(loosens.length > 0 ? '42501' : 'succeeded');
        outcomes[state === '42501' ? 'refused' : 'applied']++;
        if (loosens.length > 0 && loosens.every((f) => f !== 'currency' && next[f] < prev[f])) outcomes.byLoweredC++;
        // A first row: against the defaults' thresholds and currency only (their SLAs are configuration the
        // database does not see): loosenedFields against defaults whose SLAs nothing exceeds.
        const first = loosenedFields({ ...DEFAULT_POLICY, slaBSeconds: Infinity, slaCSeconds: Infinity }, next);
        const inserted = await attempt(
          appFresh,
          `insert into approval_policies (id, tenant_id, class_amax_cost, class_amax_payback_months, class_cmin_cost, class_cmin_payback_months, sla_bseconds, sla_cseconds, currency, updated_at, updated_by, approved_by, version)
           values ('${randomUUID()}', '${fresh}', ${next.class_a_max_cost}, ${next.class_a_max_payback_months}, ${next.class_c_min_cost}, ${next.class_c_min_payback_months}, ${next.sla_b_seconds}, ${next.sla_c_seconds}, '${next.currency}', now(), 'admin-1', null, 1)`,
        );
        outcomes[inserted === '42501' ? 'firstRefused' : 'firstApplied']++;
        expect(inserted, `first row ${JSON.stringify(next)}: loosens ${first.join(', ') || 'nothing'}`).toBe(first.length > 0 ? '42501' : 'succeeded');
      }
    } finally {
      await Promise.all([app.end(), appFresh.end(), owner.end()]);
    }
    // Both answers were given many times (the draw is no degenerate one).
    expect(outcomes.refused).toBeGreaterThan(50);
    expect(outcomes.applied).toBeGreaterThan(50);
    expect(outcomes.byLoweredC).toBeGreaterThan(5); // refused for a lowered C bound alone (C's SLA longer than B's was)
    expect(Math.min(outcomes.firstRefused, outcomes.firstApplied)).toBeGreaterThan(5);
  });

  it('lists a page at a time by a cursor of milliseconds: every change is stored at that precision, so no page skips one proposed in the same millisecond', async () => {
    const t = await tenantTokens();
    const proposed: string[] = [];
    for (let i = 1; i <= 5; i++) proposed.unshift((await propose(t, { ...DEFAULTS, class_a_max_cost: 50_000 + i })).id);
    // The cursor is the last item's created_at in milliseconds (cursor.ts): after a page ending with a change
    // at .123600, one at .123400 is above the cursor's .123 and would be skipped. Read as the application role.
    const finer = await tenantEm(stack.container.orm, t.tenant).execute(`select id from approval_policy_changes where created_at <> date_trunc('milliseconds', created_at)`);
    expect(finer).toEqual([]);
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const page: { json: { items: Array<{ id: string }>; next_cursor: string | null } } = await api(stack, 'GET', `${CHANGES}?limit=2${cursor ? `&cursor=${cursor}` : ''}`, { token: t.submitter });
      seen.push(...page.json.items.map((c) => c.id));
      cursor = page.json.next_cursor;
    } while (cursor);
    expect(seen).toEqual(proposed);
  });

  it("is another tenant's secret: not listed, 404 to read, approve or reject, and still pending for its own tenant", async () => {
    const t = await tenantTokens();
    const other = await tenantTokens();
    const change = await propose(t);
    expect((await api(stack, 'GET', CHANGES, { token: other.submitter })).json.items).toEqual([]);
    expectProblem(await api(stack, 'GET', `${CHANGES}/${change.id}`, { token: other.admin }), 404, 'not_found');
    expectProblem(await decide(other.admin2, change.id, 'approve'), 404, 'not_found');
    expectProblem(await decide(other.admin2, change.id, 'reject'), 404, 'not_found');
    expect(await changeOf(t, change.id)).toEqual(change);
    expect(await policyOf(other)).toMatchObject({ source: 'default', version: 0 });
    // At the database: the application role bound to the other tenant sees no row of it.
    expect(await tenantEm(stack.container.orm, other.tenant).execute('select id from approval_policy_changes')).toEqual([]);
    expect(await tenantEm(stack.container.orm, t.tenant).execute('select id from approval_policy_changes')).toEqual([{ id: change.id }]);
  });

  it('without an Idempotency-Key (it is optional): the same loosening PUT again, a retry whose answer was lost, answers the change it proposed and proposes no second one', async () => {
    const t = await tenantTokens();
    const first = await propose(t);
    const retry = await put(t.admin, { ...LOOSER });
    expect(retry.status, retry.text).toBe(202);
    expect(retry.json.id).toBe(first.id);
    expect(retry.headers.get('location')).toBe(first.links.self);
    expect(await pendingOf(t)).toBe(1);
    // Another proposal (another body, or the same by another admin) is another change.
    expect((await put(t.admin, { ...LOOSER, class_a_max_cost: 120_000 })).json.id).not.toBe(first.id);
    expect((await put(t.admin2, LOOSER)).json.id).not.toBe(first.id);
    expect(await pendingOf(t)).toBe(3);
  });

  it('the same PUT again answers only a change still pending, of this tenant: one rejected or expired, or the same admin\'s (same sub) in another tenant, is not it', async () => {
    const t = await tenantTokens();
    const other = await tenantTokens();
    const theirs = await propose(other);
    const rejected = await propose(t);
    expect(rejected.id).not.toBe(theirs.id);
    expect((await decide(t.admin, rejected.id, 'reject')).status).toBe(200);
    const expired = await propose(t);
    expect(expired.id).not.toBe(rejected.id);
    await expireNow(expired.id);
    const fresh = await propose(t);
    expect([rejected.id, expired.id, theirs.id]).not.toContain(fresh.id);
    expect((await put(t.admin, LOOSER)).json.id).toBe(fresh.id);
    expect(await pendingOf(t)).toBe(1);
    expect(await pendingOf(other)).toBe(1);
  });

  it('with an Idempotency-Key: the PUT and the approval replay their answers and store nothing twice', async () => {
    const t = await tenantTokens();
    const key = randomUUID();
    const first = await put(t.admin, LOOSER, key);
    expect(first.status).toBe(202);
    const again = await put(t.admin, LOOSER, key);
    expect(again.status).toBe(202);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(again.json).toEqual(first.json);
    expect((await api(stack, 'GET', CHANGES, { token: t.submitter })).json.items).toHaveLength(1);

    const approveKey = randomUUID();
    const approved = await decide(t.admin2, first.json.id, 'approve', approveKey);
    expect(approved.status, approved.text).toBe(200);
    const replay = await decide(t.admin2, first.json.id, 'approve', approveKey);
    expect(replay.status).toBe(200);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.json).toEqual(approved.json);
    expect((await policyOf(t)).version).toBe(1);
  });
});

/**
 * Holds a row of the tenant locked (FOR UPDATE) on a connection of its own, as the application role
 * under the tenant's RLS, so that the requests sent meanwhile queue behind it in the order they are sent.
 */
async function holdRow(tenant: string, table: 'approval_policies' | 'approval_policy_changes', id?: string) {
  const client = new pg.Client({ connectionString: stack.db.appUrl });
  await client.connect();
  await client.query('begin');
  await client.query('select set_config($1, $2, true)', [TENANT_SETTING, tenant]);
  const held = await client.query(`select 1 from ${table} where tenant_id = $1${id ? ' and id = $2' : ''} for update`, id ? [tenant, id] : [tenant]);
  expect(held.rowCount).toBe(1);
  return {
    pid: await backendPid((sql, params) => client.query(sql, params)),
    async release() {
      await client.query('commit');
      await client.end();
    },
  };
}

/** Makes a pending change expire now, by the database's clock: its expires_at set just ahead, then polled until passed. */
async function expireNow(changeId: string): Promise<void> {
  await stack.db.admin(`update approval_policy_changes set expires_at = clock_timestamp() + interval '300 milliseconds' where id = $1`, [changeId]);
  await waitFor(async () => (await stack.db.admin(`select expires_at <= clock_timestamp() as passed from approval_policy_changes where id = $1`, [changeId])).rows[0].passed, {
    timeoutMs: 10_000,
    what: 'the change to pass its expires_at',
  });
}

/**
 * Polls until `n` statements wait for the lock `held` has (or behind one that does), by the lock graph.
 * Not by pg_stat_activity's query text on the policy tables: the API sends a request's statements in
 * messages of several (its idempotency claim, a tenant's setting, its read), and a backend waiting inside
 * one may show another statement of it there, so a poll on the text could miss it until the deadline.
 */
const lockWaiters = (held: { pid: number }, n: number, what: string) => blockedByAtLeast(stack.db.admin, held.pid, n, what, { timeoutMs: 20_000 });

describe('a change based on the defaults (a tenant without a policy row)', () => {
  it('cannot be approved once an operator changed the configured SLAs it was compared with (409 policy_changed, it reads superseded): it would loosen more than its loosens, and than its approver saw', { timeout: 120_000 }, async () => {
    const t = await tenantTokens();
    // Proposed under APPROVAL_SLA_B 24 h: it loosens the class A cost bound only, and keeps sla_b_seconds 86,400.
    const change = await propose(t);
    expect(change).toMatchObject({ base_version: 0, loosens: ['class_a_max_cost'], base_policy: DEFAULTS });
    // The operator shortens APPROVAL_SLA_B to 1 h and restarts the API: the defaults in force are tighter now,
    // and the change would lengthen the class B SLA from 1 h to 24 h too, which nobody confirmed.
    const restarted = await spawnApi({ ...stack.env, APPROVAL_SLA_B: '1h' });
    try {
      const there = { ...stack, baseUrl: restarted.baseUrl };
      expect((await api(there, 'GET', PATH, { token: t.submitter })).json).toMatchObject({ version: 0, policy: { ...DEFAULTS, sla_b_seconds: 3_600 } });
      expectProblem(await api(there, 'POST', `${CHANGES}/${change.id}/approve`, { token: t.admin2 }), 409, 'policy_changed');
      expect((await api(there, 'GET', PATH, { token: t.submitter })).json).toMatchObject({ source: 'default', version: 0 });
      expect((await api(there, 'GET', `${CHANGES}/${change.id}`, { token: t.submitter })).json).toMatchObject({ status: 'superseded', decided_by: null, decided_at: null });
      // Proposed again under the new defaults, it names what it loosens now, and applies once approved.
      const again = (await api(there, 'PUT', PATH, { token: t.admin, body: LOOSER })).json;
      expect(again).toMatchObject({ base_version: 0, loosens: ['class_a_max_cost', 'sla_b_seconds'], base_policy: { ...DEFAULTS, sla_b_seconds: 3_600 } });
      const approved = await api(there, 'POST', `${CHANGES}/${again.id}/approve`, { token: t.admin2 });
      expect(approved.status, approved.text).toBe(200);
      expect(approved.json).toMatchObject({ version: 1, policy: LOOSER, approved_by: 'admin-2' });
    } finally {
      await restarted.stop();
    }
  });

  it('superseded only by the configured defaults can still be rejected (withdrawn): otherwise it would read pending again, and be approvable, once the operator restores them', { timeout: 120_000 }, async () => {
    const t = await tenantTokens();
    const change = await propose(t);
    const restarted = await spawnApi({ ...stack.env, APPROVAL_SLA_B: '1h' });
    try {
      const there = { ...stack, baseUrl: restarted.baseUrl };
      expect((await api(there, 'GET', `${CHANGES}/${change.id}`, { token: t.submitter })).json).toMatchObject({ status: 'superseded' });
      // Its proposer withdraws it while it reads superseded.
      const rejected = await api(there, 'POST', `${CHANGES}/${change.id}/reject`, { token: t.admin });
      expect(rejected.status, rejected.text).toBe(200);
      expect(rejected.json).toMatchObject({ status: 'rejected', decided_by: 'admin-1' });
    } finally {
      await restarted.stop();
    }
    // The defaults it was based on are back (this stack's API): it stays rejected, and cannot be approved.
    expect(await changeOf(t, change.id)).toMatchObject({ status: 'rejected', decided_by: 'admin-1' });
    expectProblem(await decide(t.admin2, change.id, 'approve'), 409, 'policy_change_decided');
    expect(await policyOf(t)).toMatchObject({ source: 'default', version: 0 });
  });

  it('with configured SLAs beyond what a PUT may set (APPROVAL_SLA_C 100d, a PUT at most 90d): proposed, read, listed and approved — its base_policy records them as they are, not a 500', { timeout: 120_000 }, async () => {
    const longC = 100 * 86_400;
    const restarted = await spawnApi({ ...stack.env, APPROVAL_SLA_C: '100d' });
    try {
      const there = { ...stack, baseUrl: restarted.baseUrl };
      const t = await tenantTokens();
      expect((await api(there, 'GET', PATH, { token: t.submitter })).json).toMatchObject({ version: 0, policy: { ...DEFAULTS, sla_c_seconds: longC } });
      // Loosens the class A cost bound (and shortens the class C SLA to the most a PUT may set).
      const body = { ...LOOSER, sla_c_seconds: 90 * 86_400 };
      const proposed = await api(there, 'PUT', PATH, { token: t.admin, body });
      expect(proposed.status, proposed.text).toBe(202);
      expect(proposed.json).toMatchObject({ status: 'pending', loosens: ['class_a_max_cost'], base_policy: { ...DEFAULTS, sla_c_seconds: longC } });
      expect((await api(there, 'GET', `${CHANGES}/${proposed.json.id}`, { token: t.submitter })).json).toEqual(proposed.json);
      expect((await api(there, 'GET', CHANGES, { token: t.submitter })).json.items).toEqual([proposed.json]);
      const approved = await api(there, 'POST', `${CHANGES}/${proposed.json.id}/approve`, { token: t.admin2 });
      expect(approved.status, approved.text).toBe(200);
      expect(approved.json).toMatchObject({ version: 1, policy: body, approved_by: 'admin-2' });
    } finally {
      await restarted.stop();
    }
  });

  it('proposed before base_policy was recorded (null): on the defaults it reads superseded, as its base cannot be known; on a version of the tenant it stays pending', async () => {
    const onDefaults = await tenantTokens();
    const old = await propose(onDefaults);
    const onVersion = await tenantTokens();
    expect((await put(onVersion.admin, DEFAULTS)).json).toMatchObject({ version: 1 });
    const oldOnVersion = await propose(onVersion);
    await stack.db.admin(`update approval_policy_changes set base_policy = null where id = any($1::uuid[])`, [[old.id, oldOnVersion.id]]);
    expect(await changeOf(onDefaults, old.id)).toMatchObject({ status: 'superseded', base_policy: null, decided_at: null });
    expectProblem(await decide(onDefaults.admin2, old.id, 'approve'), 409, 'policy_changed');
    expect(await changeOf(onVersion, oldOnVersion.id)).toMatchObject({ status: 'pending', base_policy: null });
    expect((await decide(onVersion.admin2, oldOnVersion.id, 'approve')).json).toMatchObject({ version: 2, approved_by: 'admin-2' });
  });
});

const MAX_PENDING = 20;
/** `n` pending changes of `t`, each loosening the class A cost bound by another amount. */
async function proposeMany(t: PolicyTenant, n: number, from = 1) {
  for (let i = from; i < from + n; i++) await propose(t, { ...DEFAULTS, class_a_max_cost: 50_000 + i });
}
const pendingOf = async (t: PolicyTenant) => (await api(stack, 'GET', `${CHANGES}?status=pending&limit=100`, { token: t.submitter })).json.items.length;

describe('pending changes per tenant are capped', () => {
  it(`at ${MAX_PENDING}: one more proposal is 409 too_many_pending_changes and stores nothing; a tightening PUT still applies, and deciding one makes room`, async () => {
    const t = await tenantTokens();
    await proposeMany(t, MAX_PENDING);
    const refused = await put(t.admin2, LOOSER);
    expectProblem(refused, 409, 'too_many_pending_changes');
    expect(refused.json).toMatchObject({ pending: MAX_PENDING, limit: MAX_PENDING });
    expect(await pendingOf(t)).toBe(MAX_PENDING);
    expect((await api(stack, 'GET', `${CHANGES}?limit=100`, { token: t.submitter })).json.items).toHaveLength(MAX_PENDING);
    // Another tenant is not affected.
    expect((await put((await tenantTokens()).admin, LOOSER)).status).toBe(202);
    // A rejection makes room for one.
    const oldest = (await api(stack, 'GET', `${CHANGES}?status=pending&limit=100`, { token: t.submitter })).json.items.at(-1);
    expect((await decide(t.admin2, oldest.id, 'reject')).status).toBe(200);
    await propose(t);
    // Another proposal (the same one again would be that change, not another: see above).
    expectProblem(await put(t.admin2, LOOSER), 409, 'too_many_pending_changes');
    // Changes that no longer read pending do not count: a tightening applies (never capped) and supersedes them all.
    expect((await put(t.admin, { ...DEFAULTS, sla_b_seconds: 3_600 })).status).toBe(200);
    expect(await pendingOf(t)).toBe(0);
    await propose(t, { ...DEFAULTS, sla_b_seconds: 7_200 });
  });

  it('counts by the clock after its wait for the policy row: a change that expired while the proposal waited leaves room (202), not a 409 naming 20 pending when 19 are', async () => {
    const t = await tenantTokens();
    expect((await put(t.admin, DEFAULTS)).json).toMatchObject({ version: 1 });
    await proposeMany(t, MAX_PENDING);
    const oldest = (await api(stack, 'GET', `${CHANGES}?status=pending&limit=100`, { token: t.submitter })).json.items.at(-1);
    const held = await holdRow(t.tenant, 'approval_policies');
    const proposal = put(t.admin, LOOSER);
    await lockWaiters(held, 1, 'the proposal to wait for the policy');
    // Pending when the proposal's transaction began; it expires while the proposal waits (by the database's clock).
    await expireNow(oldest.id);
    await held.release();
    const res = await proposal;
    expect(res.status, res.text).toBe(202);
    expect(await changeOf(t, oldest.id)).toMatchObject({ status: 'expired' });
    expect(await pendingOf(t)).toBe(MAX_PENDING);
  });

  it('holds under concurrent proposals on a tenant without a policy row (nothing to lock): of five at once with room for two, two are stored', async () => {
    const t = await tenantTokens();
    await proposeMany(t, MAX_PENDING - 2);
    // Inserts into the changes wait (reads go on) while all five are sent, so they overlap for sure.
    const held = await holdTable(stack.db.adminUrl, 'approval_policy_changes');
    try {
      const proposals = [1, 2, 3, 4, 5].map((i) => put(t.admin, { ...DEFAULTS, class_a_max_cost: 60_000 + i }));
      await lockWaiters(held, 5, 'the five proposals to wait');
      await held.release();
      const answers = await Promise.all(proposals);
      expect(answers.map((a) => a.status).sort()).toEqual([202, 202, 409, 409, 409]);
      for (const a of answers.filter((x) => x.status === 409)) expect(a.json).toMatchObject({ code: 'too_many_pending_changes' });
      expect(await pendingOf(t)).toBe(MAX_PENDING);
    } finally {
      await held.close();
    }
  });

  it('holds under the same proposal sent at once, keyless (a client that retried before its first answer came): one change, which every answer names — with a policy row to lock or without', async () => {
    for (const withRow of [false, true]) {
      const t = await tenantTokens();
      if (withRow) expect((await put(t.admin, DEFAULTS)).json).toMatchObject({ version: 1 });
      // Inserts into the changes wait (reads go on) while all three are sent, so they overlap for sure.
      const held = await holdTable(stack.db.adminUrl, 'approval_policy_changes');
      try {
        const same = [1, 2, 3].map(() => put(t.admin, LOOSER));
        await lockWaiters(held, 3, 'the three proposals to wait');
        await held.release();
        const answers = await Promise.all(same);
        expect(answers.map((a) => a.status)).toEqual([202, 202, 202]);
        expect(new Set(answers.map((a) => a.json.id)).size).toBe(1);
        expect(await pendingOf(t)).toBe(1);
      } finally {
        await held.close();
      }
    }
  });
});

describe('decisions at once (lock order: the policy row first, then changes)', () => {
  it('two approvals of two changes based on one version: the first applies, the other is 409 policy_changed — not a deadlock (503)', async () => {
    const t = await tenantTokens();
    const admin3 = await stack.token({ tenantId: t.tenant, sub: 'admin-3', roles: ['admin'] });
    expect((await put(t.admin, DEFAULTS)).json).toMatchObject({ version: 1 });
    const x = await propose(t);
    const y = await propose(t, { ...DEFAULTS, sla_b_seconds: 172_800 });
    const held = await holdRow(t.tenant, 'approval_policies');
    const first = decide(t.admin2, x.id, 'approve');
    await lockWaiters(held, 1, 'the approval of x to wait for the policy');
    const second = decide(admin3, y.id, 'approve');
    await lockWaiters(held, 2, 'the approval of y to wait too');
    await held.release();
    const [a, b] = await Promise.all([first, second]);
    expect(a.status, a.text).toBe(200);
    expect(a.json).toMatchObject({ policy: LOOSER, version: 2, approved_by: 'admin-2' });
    expectProblem(b, 409, 'policy_changed');
    expect(await changeOf(t, y.id)).toMatchObject({ status: 'superseded', decided_by: null });
    expect(await policyOf(t)).toEqual(a.json);
  });

  it('an approval that meets a tightening PUT: the PUT applies, the approval is 409 policy_changed — not a deadlock (503)', async () => {
    const t = await tenantTokens();
    expect((await put(t.admin, DEFAULTS)).json).toMatchObject({ version: 1 });
    const x = await propose(t);
    const tighter = { ...DEFAULTS, sla_b_seconds: 3_600 };
    const held = await holdRow(t.tenant, 'approval_policies');
    const tightening = put(t.admin, tighter);
    await lockWaiters(held, 1, 'the PUT to wait for the policy');
    const approval = decide(t.admin2, x.id, 'approve');
    await lockWaiters(held, 2, 'the approval to wait too');
    await held.release();
    const [p, a] = await Promise.all([tightening, approval]);
    expect(p.status, p.text).toBe(200);
    expect(p.json).toMatchObject({ policy: tighter, version: 2, approved_by: null });
    expectProblem(a, 409, 'policy_changed');
    expect(await changeOf(t, x.id)).toMatchObject({ status: 'superseded' });
    expect(await policyOf(t)).toEqual(p.json);
  });

  it('a tightening PUT that waited for an approval decides on the policy approved: 200, never a 409 its Idempotency-Key would replay', async () => {
    const t = await tenantTokens();
    expect((await put(t.admin, DEFAULTS)).json).toMatchObject({ version: 1 });
    const x = await propose(t);
    // Tighter than version 1 and than LOOSER, the version the approval is about to apply.
    const tighter = { ...DEFAULTS, sla_b_seconds: 3_600 };
    const key = randomUUID();
    const held = await holdRow(t.tenant, 'approval_policies');
    const approval = decide(t.admin2, x.id, 'approve');
    await lockWaiters(held, 1, 'the approval to wait for the policy');
    const tightening = put(t.admin, tighter, key);
    await lockWaiters(held, 2, 'the PUT to wait too');
    await held.release();
    const [a, p] = await Promise.all([approval, tightening]);
    expect(a.json).toMatchObject({ version: 2, approved_by: 'admin-2' });
    expect(p.status, p.text).toBe(200);
    expect(p.json).toMatchObject({ policy: tighter, version: 3, updated_by: 'admin-1', approved_by: null });
    const again = await put(t.admin, tighter, key);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(again.json).toEqual(p.json);
  });

  it("a tenant's first policy: a tightening PUT that met an approval writing it (no row to lock yet) decides again on the policy approved", async () => {
    const t = await tenantTokens();
    const x = await propose(t);
    expect(x.base_version).toBe(0);
    const tighter = { ...DEFAULTS, sla_b_seconds: 3_600 };
    // The approval inserts the tenant's first policy, then waits for its change, held here.
    const held = await holdRow(t.tenant, 'approval_policy_changes', x.id);
    const approval = decide(t.admin2, x.id, 'approve');
    await lockWaiters(held, 1, 'the approval to wait for its change');
    // The PUT finds no row to lock, decides on the defaults, and its insert waits for the approval's.
    const tightening = put(t.admin, tighter);
    await lockWaiters(held, 2, 'the PUT to wait for the first policy');
    await held.release();
    const [a, p] = await Promise.all([approval, tightening]);
    expect(a.status, a.text).toBe(200);
    expect(a.json).toMatchObject({ policy: LOOSER, version: 1, approved_by: 'admin-2' });
    expect(p.status, p.text).toBe(200);
    expect(p.json).toMatchObject({ policy: tighter, version: 2, approved_by: null });
    expect(await policyOf(t)).toEqual(p.json);
  });

  it('an approval that waited for the policy row while the change passed its expires_at: 409 policy_change_expired, nothing applied — expiry is checked again once the lock is had', async () => {
    const t = await tenantTokens();
    expect((await put(t.admin, DEFAULTS)).json).toMatchObject({ version: 1 });
    const x = await propose(t);
    const held = await holdRow(t.tenant, 'approval_policies');
    const approval = decide(t.admin2, x.id, 'approve');
    await lockWaiters(held, 1, 'the approval to wait for the policy');
    // Pending when the approval read it; it expires while the approval waits (by the database's clock).
    await expireNow(x.id);
    await held.release();
    expectProblem(await approval, 409, 'policy_change_expired');
    expect(await policyOf(t)).toMatchObject({ policy: DEFAULTS, version: 1, approved_by: null });
    expect(await changeOf(t, x.id)).toMatchObject({ status: 'expired', decided_by: null });
  });

  it('a change that expired while a tightening PUT waited for the policy row stays expired: the PUT supersedes only those still pending when it writes — it read expired meanwhile, and must not turn superseded, at an earlier time', async () => {
    const t = await tenantTokens();
    expect((await put(t.admin, DEFAULTS)).json).toMatchObject({ version: 1 });
    const x = await propose(t);
    const held = await holdRow(t.tenant, 'approval_policies');
    const tightening = put(t.admin, { ...DEFAULTS, sla_b_seconds: 3_600 });
    await lockWaiters(held, 1, 'the PUT to wait for the policy');
    await expireNow(x.id);
    const expired = await changeOf(t, x.id);
    expect(expired).toMatchObject({ status: 'expired', decided_at: expired.expires_at });
    await held.release();
    expect((await tightening).json).toMatchObject({ version: 2 });
    expect(await changeOf(t, x.id)).toEqual(expired);
  });

  it('an approval that meets a rejection of the same change: 409 policy_change_decided, and the policy it was writing rolls back', async () => {
    const t = await tenantTokens();
    expect((await put(t.admin, DEFAULTS)).json).toMatchObject({ version: 1 });
    const x = await propose(t);
    const held = await holdRow(t.tenant, 'approval_policy_changes', x.id);
    const rejection = decide(t.admin, x.id, 'reject');
    await lockWaiters(held, 1, 'the rejection to wait for the change');
    const approval = decide(t.admin2, x.id, 'approve');
    await lockWaiters(held, 2, 'the approval to wait for the change');
    await held.release();
    const [r, a] = await Promise.all([rejection, approval]);
    expect(r.json).toMatchObject({ status: 'rejected', decided_by: 'admin-1' });
    expectProblem(a, 409, 'policy_change_decided');
    expect(await policyOf(t)).toMatchObject({ policy: DEFAULTS, version: 1, approved_by: null });
  });
});

describe('decision times after a lock wait (docs/api.md: decided_at is when it stopped being pending)', () => {
  /** The stored times of the tenant's policy and of changes `ids`, each compared with `released` (the holder's release). */
  const stored = async (tenant: string, ids: string[], released: string) =>
    (
      await stack.db.admin(
        `select c.id, c.status, c.decided_at::text as decided_at, c.decided_at >= $3::timestamptz as after_release, p.updated_at::text as policy_updated_at
           from approval_policy_changes c join approval_policies p on p.tenant_id = c.tenant_id
          where c.tenant_id = $1 and c.id = any($2::uuid[]) order by array_position($2::uuid[], c.id)`,
        [tenant, ids, released],
      )
    ).rows as { id: string; status: string; decided_at: string; after_release: boolean; policy_updated_at: string }[];

  it('an approval that waited for the policy row: the change approved, the policy updated and the changes it supersedes at one time, after the wait', async () => {
    const t = await tenantTokens();
    expect((await put(t.admin, DEFAULTS)).json).toMatchObject({ version: 1 });
    const x = await propose(t);
    const y = await propose(t, { ...DEFAULTS, sla_b_seconds: 172_800 });
    // Another transaction holds the policy row (as a PUT would): the approval's upsert waits for it.
    const holder = await holdRows(stack, 'select 1 from approval_policies where tenant_id = $1 for update', [t.tenant]);
    try {
      const approval = decide(t.admin2, x.id, 'approve');
      await holder.waitedFor("the approval's upsert to wait for the holder's lock");
      const released = await holder.release();
      const a = await approval;
      expect(a.status, a.text).toBe(200);
      const [approved, superseded] = await stored(t.tenant, [x.id, y.id], released);
      expect(approved).toMatchObject({ status: 'approved', after_release: true });
      expect(superseded).toMatchObject({ status: 'superseded', after_release: true });
      // One time: the policy's update, the approval, what it superseded (the superseded read as p.updated_at).
      expect(approved!.policy_updated_at).toBe(approved!.decided_at);
      expect(superseded!.decided_at).toBe(approved!.decided_at);
      expect(a.json.updated_at).toBe((await changeOf(t, x.id)).decided_at);
      expect((await changeOf(t, y.id)).decided_at).toBe(a.json.updated_at);
    } finally {
      await holder.close();
    }
  });

  it('a rejection that waited for its change row: decided after the wait', async () => {
    const t = await tenantTokens();
    expect((await put(t.admin, DEFAULTS)).json).toMatchObject({ version: 1 });
    const x = await propose(t);
    // Another transaction holds the change (as an approval marking it would): the rejection's lock waits for it.
    const holder = await holdRows(stack, 'select 1 from approval_policy_changes where tenant_id = $1 and id = $2 for update', [t.tenant, x.id]);
    try {
      const rejection = decide(t.admin2, x.id, 'reject');
      await holder.waitedFor("the rejection's lock to wait for the holder's");
      const released = await holder.release();
      const r = await rejection;
      expect(r.status, r.text).toBe(200);
      expect((await stored(t.tenant, [x.id], released))[0]).toMatchObject({ status: 'rejected', after_release: true });
    } finally {
      await holder.close();
    }
  });
});
