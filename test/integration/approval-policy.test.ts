import { beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, CLASS_A_SUBMISSION, SAMPLE_SUBMISSION, type TestStack } from '../helpers/stack.ts';
import { stackForTests } from '../helpers/stack-for-tests.ts';
import { waitFor } from '../helpers/poll.ts';
import { policyTenant, putPolicy, setPolicy } from '../helpers/policy.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';
import { namedJobId } from '../../src/platform/queue/job-ids.ts';
import { canonicalJson, sha256Hex } from '../../src/platform/idempotency/canonical-json.ts';

/**
 * PUT /api/v1/approval-policy (docs/api.md): its optional Idempotency-Key, and a change that applies
 * to runs classified after it, never to approval requests already waiting.
 */
const PATH = '/api/v1/approval-policy';
const DEFAULTS = { class_a_max_cost: 50_000, class_a_max_payback_months: 6, class_c_min_cost: 250_000, class_c_min_payback_months: 24 };
const suite = stackForTests({ worker: true });
let stack: TestStack;
beforeAll(() => void ({ stack } = suite));

const tenantTokens = () => policyTenant(stack);

const put = (token: string, body: unknown, key?: string) => putPolicy(stack, token, body, key);

/** Submits `body` as the tenant's submitter and waits until the run is classified: its approval packet. */
async function classifiedPacket(t: Awaited<ReturnType<typeof tenantTokens>>, body: typeof CLASS_A_SUBMISSION) {
  return (await classifiedRun(t, body)).steps[2].output;
}

/** Submits `body` as the tenant's submitter and waits until the run is classified: the run, as GET /runs/:id answers. */
async function classifiedRun(t: Awaited<ReturnType<typeof tenantTokens>>, body: typeof CLASS_A_SUBMISSION) {
  const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: t.submitter, body, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status, res.text).toBe(202);
  const run = await waitFor(
    async () => {
      const r = (await api(stack, 'GET', `/api/v1/golden-path/runs/${res.json.run_id}`, { token: t.submitter })).json;
      return ['waiting', 'completed', 'failed'].includes(r?.status) ? r : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 100, what: `the ${body.currency} run to be classified` },
  );
  expect(run.status).not.toBe('failed');
  return run;
}

describe('PUT approval-policy with an optional Idempotency-Key', () => {
  it('the same key and body replay the stored answer without writing again; another body under the key is 422 and changes nothing', async () => {
    const t = await tenantTokens();
    const key = randomUUID();
    const policy = { ...DEFAULTS, sla_b_seconds: 600, sla_c_seconds: 1_200 };
    const first = await put(t.admin, policy, key);
    expect(first.status, first.text).toBe(200);
    expect(first.headers.get('idempotent-replayed')).toBeNull();
    expect(first.json).toMatchObject({ source: 'tenant', policy });
    const stored = await api(stack, 'GET', PATH, { token: t.submitter });
    expect(stored.json).toEqual(first.json);

    const again = await put(t.admin, policy, key);
    expect(again.status).toBe(200);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(again.text).toBe(first.text);
    // Nothing was written again: the policy still carries the first request's updated_at.
    expect((await api(stack, 'GET', PATH, { token: t.submitter })).json).toEqual(first.json);

    const other = await put(t.admin, { ...policy, sla_b_seconds: 60 }, key);
    expect(other.status, other.text).toBe(422);
    expect(other.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(other.json).toMatchObject({ status: 422, code: 'idempotency_key_reused' });
    expect((await api(stack, 'GET', PATH, { token: t.submitter })).json).toEqual(first.json);

    // The key is the admin's, stored as the application role sees it under the tenant's RLS.
    const keys = await tenantEm(stack.container.orm, t.tenant).execute<{ route: string; status: string; response_status: number }[]>(
      'select route, status, response_status from idempotency_keys',
    );
    expect(keys).toEqual([{ route: `PUT ${PATH}`, status: 'completed', response_status: 200 }]);
  });

  it('without a key every PUT runs: nothing is stored, nothing replayed', async () => {
    const t = await tenantTokens();
    const policy = { ...DEFAULTS, sla_b_seconds: 600, sla_c_seconds: 1_200 };
    const first = await put(t.admin, policy);
    const second = await put(t.admin, policy);
    expect([first.status, second.status]).toEqual([200, 200]);
    expect(second.headers.get('idempotent-replayed')).toBeNull();
    expect((await api(stack, 'GET', PATH, { token: t.submitter })).json).toEqual(second.json);
    expect(await tenantEm(stack.container.orm, t.tenant).execute('select id from idempotency_keys')).toEqual([]);
  });
});

describe('a policy change', () => {
  it('leaves a waiting approval request with its class, approvals needed and deadline; runs classified after it get the new ones', async () => {
    const t = await tenantTokens();
    const submit = async () => {
      const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: t.submitter, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, res.text).toBe(202);
      return res.json.run_id as string;
    };
    const runOf = async (id: string) => (await api(stack, 'GET', `/api/v1/golden-path/runs/${id}`, { token: t.submitter })).json;
    const waitStatus = (id: string, statuses: string[]) =>
      waitFor(async () => {
        const r = await runOf(id);
        return statuses.includes(r?.status) ? r : undefined;
      }, { timeoutMs: 60_000, intervalMs: 100, what: `run ${id} to reach ${statuses.join('|')}` });
    const approval = async (id: string) => (await api(stack, 'GET', `/api/v1/approvals/${id}`, { token: t.approver })).json;
    const queue = stack.container.queues.get(TIMER_QUEUE)!;
    /** The run's SLA timer: the deadline it carries and when it is due. */
    const timerOf = async (runId: string) => {
      const [row] = await tenantEm(stack.container.orm, t.tenant).execute<{ idempotency_hash: string }[]>('select idempotency_hash from durable_runs where id = ?', [runId]);
      const job = await queue.getJob(namedJobId('gp', row!.idempotency_hash, 'sla'));
      return job && { deadline: job.data.deadline, dueAt: job.timestamp + (job.opts.delay ?? 0) };
    };

    // Under the defaults the sample is class B: one approver, a 24 h deadline.
    const waitingId = await submit();
    const waiting = await waitStatus(waitingId, ['waiting', 'failed']);
    expect(waiting.status).toBe('waiting');
    const approvalId = waiting.steps[2].output.approval_request_id as string;
    const before = await approval(approvalId);
    expect(before).toMatchObject({ approval_class: 'B', required_approvals: 1, status: 'pending' });
    const timer = await timerOf(waitingId);
    expect(timer?.deadline).toBe(before.sla_deadline);

    // Now the sample would be class C (two approvers), and every SLA is one second.
    const saved = await put(t.admin, { ...DEFAULTS, class_a_max_cost: 500, class_c_min_cost: 1_000, sla_b_seconds: 1, sla_c_seconds: 1 });
    expect(saved.status, saved.text).toBe(200);
    // A run classified after the change: class C, and its one-second deadline passes.
    const laterId = await submit();
    const later = await waitStatus(laterId, ['approval_expired', 'completed', 'failed']);
    expect(later.status).toBe('approval_expired');
    expect(later.steps[2].output).toMatchObject({ approval_class: 'C', required_approvals: 2 });

    // The request that was waiting before the change: unchanged, and not expired though the new SLA has passed.
    expect(await approval(approvalId)).toEqual(before);
    expect(await timerOf(waitingId)).toEqual(timer);
    expect((await runOf(waitingId)).status).toBe('waiting');
    // Still class B: one approval decides it, and the run completes.
    const decided = await api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token: t.approver, body: { decision: 'approve' }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(decided.status, decided.text).toBe(200);
    expect((await approval(approvalId)).status).toBe('approved');
    expect((await waitStatus(waitingId, ['completed', 'failed'])).status).toBe('completed');
  });

  it('the evidence pack records the policy the run was classified under — as GET answered then — though the tenant replaced it before the decision', async () => {
    const t = await tenantTokens();
    const first = await put(t.admin, { ...DEFAULTS, sla_b_seconds: 3_600, sla_c_seconds: 7_200 });
    expect(first.status, first.text).toBe(200);
    const inForce = (await api(stack, 'GET', PATH, { token: t.submitter })).json;
    const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token: t.submitter, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status, res.text).toBe(202);
    const runOf = async () => (await api(stack, 'GET', `/api/v1/golden-path/runs/${res.json.run_id}`, { token: t.submitter })).json;
    const waitStatus = (statuses: string[]) =>
      waitFor(async () => {
        const r = await runOf();
        return statuses.includes(r?.status) ? r : undefined;
      }, { timeoutMs: 60_000, intervalMs: 100, what: `run ${res.json.run_id} to reach ${statuses.join('|')}` });
    const waiting = await waitStatus(['waiting', 'failed']);
    expect(waiting.status).toBe('waiting');
    expect(waiting.steps[2].output.approval_class).toBe('B');

    // The tenant's policy is replaced (the sample would now be class C) before the approver decides.
    expect((await put(t.admin, { ...DEFAULTS, class_a_max_cost: 500, class_c_min_cost: 1_000, sla_b_seconds: 60, sla_c_seconds: 60 })).status).toBe(200);
    const decided = await api(stack, 'POST', `/api/v1/approvals/${waiting.steps[2].output.approval_request_id}/decision`, {
      token: t.approver,
      body: { decision: 'approve' },
      headers: { 'Idempotency-Key': randomUUID() },
    });
    expect(decided.status, decided.text).toBe(200);
    const done = await waitStatus(['completed', 'failed']);
    expect(done.status).toBe('completed');

    const pack = await api(stack, 'GET', `/api/v1/evidence/${done.steps[3].output.evidence_pack_id}`, { token: t.submitter });
    expect(pack.status, pack.text).toBe(200);
    const { approval_packet: packet, economics_model: econ } = pack.json.content;
    // What the class rests on is in the pack: the thresholds, currency and SLAs in force when it was
    // classified, and the admin who set them…
    expect(inForce).toMatchObject({ source: 'tenant', updated_by: 'admin-1', policy: { currency: 'SAR' } });
    expect(packet.policy).toEqual(inForce);
    expect(packet.currency_mismatch).toBeNull();
    // …and the packet's provenance re-derives from the pack alone.
    expect(packet.provenance.inputs_sha256).toBe(
      sha256Hex(canonicalJson({ economics: { cost: econ.cost, payback_months: econ.payback_months, currency: econ.currency }, policy: packet.policy })),
    );
    expect((await api(stack, 'GET', `/api/v1/evidence/${done.steps[3].output.evidence_pack_id}/verify`, { token: t.submitter })).json.valid).toBe(true);
  });
});

describe('the policy records who set it', () => {
  it('updated_by is null for the defaults, then the sub of the admin whose PUT set the policy, in GET, PUT and a replayed PUT', async () => {
    const t = await tenantTokens();
    const other = await stack.token({ tenantId: t.tenant, sub: 'admin-2', roles: ['admin'] });
    const initial = await api(stack, 'GET', PATH, { token: t.submitter });
    expect(initial.json).toEqual({
      source: 'default',
      policy: { ...DEFAULTS, currency: 'SAR', sla_b_seconds: 86_400, sla_c_seconds: 259_200 },
      version: 0,
      updated_at: null,
      updated_by: null,
      approved_by: null,
    });

    const policy = { ...DEFAULTS, sla_b_seconds: 600, sla_c_seconds: 1_200 };
    const key = randomUUID();
    const first = await put(t.admin, policy, key);
    expect(first.status, first.text).toBe(200);
    expect(first.json).toMatchObject({ source: 'tenant', policy: { ...policy, currency: 'SAR' }, updated_by: 'admin-1' });
    expect((await api(stack, 'GET', PATH, { token: t.submitter })).json).toEqual(first.json);

    // (A shorter SLA: it only tightens, so it applies at once.)
    const second = await put(other, { ...policy, sla_b_seconds: 300 });
    expect(second.json).toMatchObject({ updated_by: 'admin-2', approved_by: null });
    expect((await api(stack, 'GET', PATH, { token: t.submitter })).json).toEqual(second.json);
    // A replay of the first admin's request answers what it answered then and writes nothing.
    expect((await put(t.admin, policy, key)).json).toEqual(first.json);
    expect((await api(stack, 'GET', PATH, { token: t.submitter })).json.updated_by).toBe('admin-2');
    const [row] = await tenantEm(stack.container.orm, t.tenant).execute<{ updated_by: string | null }[]>('select updated_by from approval_policies');
    expect(row).toEqual({ updated_by: 'admin-2' });
  });
});

describe("a run in another currency than the policy's", () => {
  const submitIn = (t: Awaited<ReturnType<typeof tenantTokens>>, currency: string) => classifiedPacket(t, { ...CLASS_A_SUBMISSION, currency });

  it('is class C (two approvers, the C SLA) with the reason recorded; a run in the policy\'s currency classifies as before; a PUT sets the currency', async () => {
    const t = await tenantTokens();
    // Under the defaults (SAR) the class A sample is class A in SAR…
    const sar = await submitIn(t, 'SAR');
    expect(sar).toMatchObject({ approval_class: 'A', required_approvals: 0, outcome: 'approved', currency_mismatch: null });
    // …and class C in KWD, whose 30,000 are about twelve times as many SAR: the SAR thresholds do not apply.
    const kwd = await submitIn(t, 'KWD');
    expect(kwd).toMatchObject({
      approval_class: 'C',
      required_approvals: 2,
      outcome: 'pending',
      reasons: ["currency KWD is not the policy's currency SAR: its cost thresholds do not apply"],
      currency_mismatch: { submission_currency: 'KWD', policy_currency: 'SAR' },
      policy: { source: 'default', policy: { currency: 'SAR' } },
    });
    const request = (await api(stack, 'GET', `/api/v1/approvals/${kwd.approval_request_id}`, { token: t.approver })).json;
    expect(request).toMatchObject({ approval_class: 'C', required_approvals: 2, reasons: kwd.reasons });
    expect(new Date(kwd.sla_deadline).getTime() - new Date(request.created_at).getTime()).toBe(259_200_000);

    // The currency must be an ISO 4217 code, upper case, as a submission's.
    for (const currency of ['kwd', 'XYZ', 'KWDX']) {
      const bad = await put(t.admin, { ...DEFAULTS, sla_b_seconds: 600, sla_c_seconds: 1_200, currency });
      expect(bad.status, currency).toBe(422);
      expect(new Set(bad.json.errors.map((e: { path: string }) => e.path))).toEqual(new Set(['currency']));
    }
    // A policy in KWD: KWD runs classify by its thresholds, SAR runs are now the ones in class C.
    // Another currency is a loosening (KWD runs were class C): a second admin approves it.
    const saved = await setPolicy(stack, t.tenant, { ...DEFAULTS, sla_b_seconds: 600, sla_c_seconds: 1_200, currency: 'KWD' });
    expect(saved.status, saved.text).toBe(200);
    expect(saved.json.policy.currency).toBe('KWD');
    expect((await api(stack, 'GET', PATH, { token: t.submitter })).json.policy.currency).toBe('KWD');
    expect(await submitIn(t, 'KWD')).toMatchObject({ approval_class: 'A', currency_mismatch: null, policy: { source: 'tenant', policy: { currency: 'KWD' } } });
    expect(await submitIn(t, 'SAR')).toMatchObject({ approval_class: 'C', currency_mismatch: { submission_currency: 'SAR', policy_currency: 'KWD' } });
    // A PUT without a currency means the default one, SAR: from KWD, a change of currency (proposed).
    const plain = await put(t.admin, { ...DEFAULTS, sla_b_seconds: 600, sla_c_seconds: 1_200 });
    expect(plain.status, plain.text).toBe(202);
    expect(plain.json).toMatchObject({ policy: { currency: 'SAR' }, loosens: ['currency'] });
  });
});

describe("cost thresholds and the policy's currency's minor unit", () => {
  const BASE = { ...DEFAULTS, sla_b_seconds: 600, sla_c_seconds: 1_200 };
  const expectRefused = (res: { status: number; json: any; headers: Headers; text: string }, errors: Array<{ path: string; message: string }>) => {
    expect(res.status, res.text).toBe(422);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(res.json).toMatchObject({ status: 422, code: 'validation_failed' });
    expect(res.json.errors).toEqual(errors);
  };
  const changesOf = async (t: Awaited<ReturnType<typeof tenantTokens>>) => (await api(stack, 'GET', `${PATH}/changes`, { token: t.submitter })).json.items;
  /** The class A sample in `currency` with these costs (no annual support), classified: its approval packet. */
  const classified = (t: Awaited<ReturnType<typeof tenantTokens>>, currency: string, costs: { onboarding_cost: number; enablement_cost: number }) =>
    classifiedPacket(t, { ...CLASS_A_SUBMISSION, currency, economics: { ...CLASS_A_SUBMISSION.economics, ...costs, annual_support_cost: 0 } });

  it('a PUT finer than it is 422 naming each field, in the currency it sets (SAR when absent), tightening or loosening: nothing stored, nothing proposed', async () => {
    const t = await tenantTokens();
    const initial = (await api(stack, 'GET', PATH, { token: t.submitter })).json;
    const key = randomUUID();
    // A loosening (another currency) would be proposed; a tightening (lower bounds, SAR) would apply at once.
    expectRefused(await put(t.admin, { ...BASE, currency: 'JPY', class_a_max_cost: 1_000.5 }, key), [
      { path: 'class_a_max_cost', message: 'at most 0 decimals in JPY (its ISO 4217 minor unit)' },
    ]);
    expectRefused(await put(t.admin, { ...BASE, currency: 'KWD', class_a_max_cost: 40_000.0001, class_c_min_cost: 200_000.1234 }), [
      { path: 'class_a_max_cost', message: 'at most 3 decimals in KWD (its ISO 4217 minor unit)' },
      { path: 'class_c_min_cost', message: 'at most 3 decimals in KWD (its ISO 4217 minor unit)' },
    ]);
    expectRefused(await put(t.admin, { ...BASE, class_c_min_cost: 249_999.999 }), [{ path: 'class_c_min_cost', message: 'at most 2 decimals in SAR (its ISO 4217 minor unit)' }]);
    expect((await api(stack, 'GET', PATH, { token: t.submitter })).json).toEqual(initial);
    expect(await changesOf(t)).toEqual([]);
    // A refused body holds no Idempotency-Key: the same key with a valid body runs.
    const ok = await put(t.admin, { ...BASE, currency: 'JPY', class_a_max_cost: 1_000 }, key);
    expect(ok.status, ok.text).toBe(202);
  });

  it('a change of currency is checked against the new one: thresholds valid in KWD are refused for SAR or JPY; the policy stays in KWD', async () => {
    const t = await tenantTokens();
    const kwd = { ...BASE, currency: 'KWD', class_a_max_cost: 30_000.125, class_c_min_cost: 200_000.5 };
    const saved = await setPolicy(stack, t.tenant, kwd);
    expect(saved.status, saved.text).toBe(200);
    expect(saved.json.policy).toEqual(kwd);
    expectRefused(await put(t.admin, { ...kwd, currency: 'SAR' }), [{ path: 'class_a_max_cost', message: 'at most 2 decimals in SAR (its ISO 4217 minor unit)' }]);
    const { currency: _absent, ...sar } = kwd;
    expectRefused(await put(t.admin, sar), [{ path: 'class_a_max_cost', message: 'at most 2 decimals in SAR (its ISO 4217 minor unit)' }]);
    expectRefused(await put(t.admin, { ...kwd, currency: 'JPY' }), [
      { path: 'class_a_max_cost', message: 'at most 0 decimals in JPY (its ISO 4217 minor unit)' },
      { path: 'class_c_min_cost', message: 'at most 0 decimals in JPY (its ISO 4217 minor unit)' },
    ]);
    expect((await api(stack, 'GET', PATH, { token: t.submitter })).json).toEqual(saved.json);
    expect((await changesOf(t)).filter((c: { status: string }) => c.status === 'pending')).toEqual([]);
  });

  it('a run whose cost is exactly a threshold is at it, in JPY, KWD and SAR; one minor unit more is over it', async () => {
    const bounds = [
      { currency: 'JPY', bound: 30_001, at: { onboarding_cost: 20_000, enablement_cost: 10_001 }, over: { onboarding_cost: 20_000, enablement_cost: 10_002 } },
      { currency: 'KWD', bound: 30_000.125, at: { onboarding_cost: 20_000.1, enablement_cost: 10_000.025 }, over: { onboarding_cost: 20_000.1, enablement_cost: 10_000.026 } },
      { currency: 'SAR', bound: 30_000.3, at: { onboarding_cost: 30_000.1, enablement_cost: 0.2 }, over: { onboarding_cost: 30_000.1, enablement_cost: 0.21 } },
    ];
    await Promise.all(
      bounds.map(async ({ currency, bound, at, over }) => {
        const t = await tenantTokens();
        const saved = await setPolicy(stack, t.tenant, { ...BASE, currency, class_a_max_cost: bound });
        expect(saved.status, saved.text).toBe(200);
        const [atBound, overBound] = await Promise.all([classified(t, currency, at), classified(t, currency, over)]);
        expect(atBound, currency).toMatchObject({ approval_class: 'A', required_approvals: 0 });
        expect(atBound.reasons[0], currency).toMatch(new RegExp(`^cost ${bound} <= ${bound} and payback`));
        expect(overBound, currency).toMatchObject({ approval_class: 'B', required_approvals: 1 });
      }),
    );
  });

  it("a run's cost above 2.25 × 10¹² KWD is recorded exactly, not a minor unit off (its step output, its economics_models row)", async () => {
    const t = await tenantTokens();
    // 2,678,818,162,215.360 exactly; the sum as doubles, rounded, was .361.
    const economics = { ...CLASS_A_SUBMISSION.economics, onboarding_cost: 863_212_823_867.817, enablement_cost: 835_851_907_730.742, annual_support_cost: 979_753_430_616.801 };
    const run = await classifiedRun(t, { ...CLASS_A_SUBMISSION, currency: 'KWD', economics });
    expect(run.steps[1].output).toMatchObject({ currency: 'KWD', cost: 2_678_818_162_215.36 });
    const [row] = await tenantEm(stack.container.orm, t.tenant).execute<{ cost: number }[]>('select cost from economics_models where run_id = ?', [run.run_id]);
    expect(row).toEqual({ cost: 2_678_818_162_215.36 });
  });

  it('a policy or a pending change stored before the check still reads and classifies as written; such a change cannot be approved (422), only rejected', async () => {
    const t = await tenantTokens();
    const jpy = { ...BASE, currency: 'JPY', class_a_max_cost: 30_000 };
    expect((await setPolicy(stack, t.tenant, jpy)).status).toBe(200);
    // As a PUT before the check could store it: 30,000.5 JPY. Written in place as the owner (the application
    // role may write only the next version, and a higher bound only as an approved change: ADR 0010).
    await stack.db.admin('update approval_policies set class_amax_cost = 30000.5 where tenant_id = $1', [t.tenant]);
    const stored = await api(stack, 'GET', PATH, { token: t.submitter });
    expect(stored.status, stored.text).toBe(200);
    expect(stored.json.policy).toEqual({ ...jpy, class_a_max_cost: 30_000.5 });
    // No amount is at it: 30,000 is under it (A), 30,001 over it (B).
    const [under, over] = await Promise.all([
      classified(t, 'JPY', { onboarding_cost: 20_000, enablement_cost: 10_000 }),
      classified(t, 'JPY', { onboarding_cost: 20_000, enablement_cost: 10_001 }),
    ]);
    expect(under).toMatchObject({ approval_class: 'A', policy: { policy: { class_a_max_cost: 30_000.5 } } });
    expect(over).toMatchObject({ approval_class: 'B' });

    // A change proposed before the check (a loosening, pending), its threshold finer than its currency's unit.
    const proposed = await put(t.admin, { ...jpy, class_a_max_cost: 40_000 });
    expect(proposed.status, proposed.text).toBe(202);
    // As the superuser: the application role may update only a change's decision (roles.ts, APP_UPDATE_COLUMNS).
    await stack.db.admin(`update approval_policy_changes set policy = jsonb_set(policy, '{class_a_max_cost}', '40000.5') where id = $1`, [proposed.json.id]);
    const change = (await api(stack, 'GET', `${PATH}/changes/${proposed.json.id}`, { token: t.submitter })).json;
    expect(change).toMatchObject({ status: 'pending', policy: { class_a_max_cost: 40_000.5 } });
    const approve = await api(stack, 'POST', `${PATH}/changes/${proposed.json.id}/approve`, { token: t.admin2 });
    expectRefused(approve, [{ path: 'policy.class_a_max_cost', message: 'at most 0 decimals in JPY (its ISO 4217 minor unit)' }]);
    expect((await api(stack, 'GET', PATH, { token: t.submitter })).json).toEqual(stored.json);
    expect((await api(stack, 'GET', `${PATH}/changes/${proposed.json.id}`, { token: t.submitter })).json).toEqual(change);
    const rejected = await api(stack, 'POST', `${PATH}/changes/${proposed.json.id}/reject`, { token: t.admin });
    expect(rejected.status, rejected.text).toBe(200);
    expect(rejected.json).toMatchObject({ status: 'rejected', decided_by: 'admin-1' });
  });
  it('month thresholds: a PUT finer than 2 decimals is 422 naming each; one stored before (6.001) classifies the exact payback as written', async () => {
    const t = await tenantTokens();
    expectRefused(await put(t.admin, { ...BASE, class_a_max_payback_months: 5.001, class_c_min_payback_months: 23.999 }), [
      { path: 'class_a_max_payback_months', message: 'at most 2 decimals (the payback months are shown to 2)' },
      { path: 'class_c_min_payback_months', message: 'at most 2 decimals (the payback months are shown to 2)' },
    ]);
    expect(await changesOf(t)).toEqual([]);
    expect((await setPolicy(stack, t.tenant, BASE)).status).toBe(200);
    // As a PUT before the check could store it, written in place as the owner (the application role may
    // write only the next version, and a higher bound only as an approved change: ADR 0010).
    await stack.db.admin('update approval_policies set class_amax_payback_months = 6.001 where tenant_id = $1', [t.tenant]);
    // 1,000 of gross profit a month: a cost of 6,001 is 6.001 months (within), 6,002 is 6.002 (over); both shown as 6.
    const economics = (onboarding_cost: number) => ({ expected_deals_per_year: 1, average_deal_value: 40_000, win_rate: 1, gross_margin: 0.3, onboarding_cost, enablement_cost: 0, annual_support_cost: 0 });
    const [within, over] = await Promise.all([6_001, 6_002].map((cost) => classifiedPacket(t, { ...CLASS_A_SUBMISSION, economics: economics(cost) })));
    expect(within).toMatchObject({ approval_class: 'A', reasons: ['cost 6001 <= 50000 and payback 6 <= 6.001 months'], policy: { policy: { class_a_max_payback_months: 6.001 } } });
    expect(over).toMatchObject({ approval_class: 'B', required_approvals: 1 });
  });
});
