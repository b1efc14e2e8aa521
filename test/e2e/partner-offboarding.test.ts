import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { publishedSchemas } from '../helpers/openapi-validator.ts';
import { databaseRows } from '../../src/readiness/database.checks.ts';
import { bullBoardQueuesRow } from '../../src/readiness/bull-board.checks.ts';
import { bullBoardInfo } from '../../src/readiness/bull-board.info.ts';
import { createApp } from '../../src/app.ts';

/**
 * The second workflow, partner offboarding (docs/runtime.md, "Adding a workflow"), over HTTP against a
 * real worker process (the production entry, which registers every module's workflows): a run goes
 * through its three steps, each step's domain write is on its row, the bodies match the OpenAPI
 * document, tenants are isolated, a replayed submission starts no second run, and the readiness
 * matrix covers the new table and queue.
 */
let stack: TestStack;
const tenant = newTenant();
let token: string;

const BASE = '/api/v1/partner-offboarding';
const SUBMISSION = {
  partner: { reference: 'P-1042', name: 'Acme Trading' },
  reason: 'contract_ended',
  balances: [
    { currency: 'SAR', amount: 1200.5 },
    { currency: 'SAR', amount: -200.25 },
    { currency: 'USD', amount: -75 },
    { currency: 'EUR', amount: 10 },
    { currency: 'EUR', amount: -10 },
    // 2,678,818,162,215.360 exactly: summed as doubles, it rounded to .361.
    { currency: 'KWD', amount: 863_212_823_867.817 },
    { currency: 'KWD', amount: 835_851_907_730.742 },
    { currency: 'KWD', amount: 979_753_430_616.801 },
  ],
};

/** The submission for a partner of its own: a tenant offboards a partner once (docs/api.md). */
const another = () => ({ ...SUBMISSION, partner: { ...SUBMISSION.partner, reference: `P-${randomUUID().slice(0, 8)}` } });
const submit = (body: unknown, key: string = randomUUID(), tok = token) => api(stack, 'POST', `${BASE}/run`, { token: tok, body, headers: { 'Idempotency-Key': key } });
const runOf = async (id: string, tok = token) => api(stack, 'GET', `${BASE}/runs/${id}`, { token: tok });

beforeAll(async () => {
  stack = await startStack();
  await stack.spawnWorker();
  token = await stack.token({ tenantId: tenant, sub: 'ops-1' });
});
afterAll(async () => stack?.stop());

describe('partner offboarding over HTTP', () => {
  it('runs freeze-partner → settle-balances → archive-record to completion on a real worker', async () => {
    const res = await submit(SUBMISSION);
    expect(res.status).toBe(202);
    expect(res.headers.get('location')).toBe(`${BASE}/runs/${res.json.run_id}`);
    const run = await waitFor(
      async () => {
        const r = (await runOf(res.json.run_id)).json;
        return r?.status === 'completed' || r?.status === 'failed' ? r : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 100, what: 'the offboarding run to end' },
    );
    expect(run.error).toBeNull();
    expect(run.status).toBe('completed');
    expect(run.workflow).toBe('partner-offboarding');
    expect(run.progress).toEqual({ completed_steps: 3, total_steps: 3, current_sequence_num: null });
    expect(run.steps.map((s: { name: string; status: string }) => `${s.name}:${s.status}`)).toEqual(['freeze-partner:completed', 'settle-balances:completed', 'archive-record:completed']);
    const [frozen, settled, archived] = run.steps.map((s: { output: unknown }) => s.output);
    expect(settled.lines).toEqual([
      { currency: 'EUR', net: 0, direction: 'none' },
      { currency: 'KWD', net: 2_678_818_162_215.36, direction: 'pay_partner' },
      { currency: 'SAR', net: 1000.25, direction: 'pay_partner' },
      { currency: 'USD', net: -75, direction: 'collect_from_partner' },
    ]);
    expect(archived.offboarding_id).toBe(frozen.offboarding_id);
    expect(run.output).toEqual(archived);

    // Each step's domain write is on the row (read as the superuser: seeding-side check only).
    const { rows } = await stack.db.admin(`select * from partner_offboardings where run_id = $1`, [run.run_id]);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ id: frozen.offboarding_id, tenant_id: tenant, partner_reference: 'P-1042', reason: 'contract_ended', status: 'archived' });
    expect(rows[0].settlement).toEqual(settled);
    expect(rows[0].settled_at.toISOString()).toBe(settled.settled_at);
    expect(rows[0].archived_at.toISOString()).toBe(archived.archived_at);
    // One checkpoint per step, no more.
    const cps = await stack.db.admin(`select step_name from durable_checkpoints where run_id = $1 order by sequence_num`, [run.run_id]);
    expect(cps.rows.map((r) => r.step_name)).toEqual(['freeze-partner', 'settle-balances', 'archive-record']);

    // The bodies are the ones the OpenAPI document publishes.
    const schemas = publishedSchemas((await api(stack, 'GET', '/openapi.json')).json);
    const accepted = schemas.validator('post', `${BASE}/run`, 202, 'application/json');
    const view = schemas.validator('get', `${BASE}/runs/:id`, 200, 'application/json');
    expect(accepted && view).toBeTruthy();
    expect(schemas.errors(accepted!, res.json)).toEqual([]);
    expect(schemas.errors(view!, run)).toEqual([]);
  });

  it('answers a replayed submission with the same run, and refuses bad input as problem+json', async () => {
    const key = randomUUID();
    const body = another();
    const first = await submit(body, key);
    const again = await submit(body, key);
    expect(again.status).toBe(202);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(again.json.run_id).toBe(first.json.run_id);
    const { rows } = await stack.db.admin(`select count(*)::int as n from durable_runs where tenant_id = $1 and idempotency_hash = (select idempotency_hash from durable_runs where id = $2)`, [tenant, first.json.run_id]);
    expect(rows[0].n).toBe(1);

    const bad = await submit({ ...SUBMISSION, reason: 'bored' });
    expect(bad.status).toBe(422);
    expect(bad.headers.get('content-type')).toMatch(/application\/problem\+json/);
    expect(bad.json.code).toBe('validation_failed');
    const noKey = await api(stack, 'POST', `${BASE}/run`, { token, body: SUBMISSION });
    expect(noKey.status).toBe(400);
    const noToken = await api(stack, 'POST', `${BASE}/run`, { body: SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(noToken.status).toBe(401);
  });

  it("keeps tenants apart: another tenant's token gets 404, and a golden-path run id is not an offboarding", async () => {
    const res = await submit(another());
    const other = await stack.token({ tenantId: newTenant(), sub: 'ops-2' });
    expect((await runOf(res.json.run_id, other)).status).toBe(404);
    const gp = await api(stack, 'POST', '/api/v1/golden-path/run', {
      token,
      headers: { 'Idempotency-Key': randomUUID() },
      body: {
        partner: { name: 'Beta', country: 'SA', sector: 'logistics' },
        economics: { expected_deals_per_year: 1, average_deal_value: 1, win_rate: 0.1, gross_margin: 0.1, onboarding_cost: 1, enablement_cost: 1, annual_support_cost: 1 },
        currency: 'SAR',
      },
    });
    expect(gp.status).toBe(202);
    expect((await runOf(gp.json.run_id)).status).toBe(404);
  });

  it('is covered by the readiness matrix: RLS rows for its table, its queue in Bull Board', async () => {
    const rows = await databaseRows(stack.container.orm);
    const row = (c: string) => rows.find((r) => r.component === c);
    expect(row('rls partner_offboardings')).toMatchObject({ status: 'PASS' });
    expect(row('tenant-unique partner_offboardings')).toMatchObject({ status: 'PASS' });
    const queues = bullBoardQueuesRow(bullBoardInfo(createApp(stack.container)), stack.container.workflows.map((w) => w.queue));
    expect(queues.status).toBe('PASS');
    expect(queues.reason).toContain('partner-offboarding');
  });
});
