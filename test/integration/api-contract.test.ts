import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, newTenant, OFFBOARDING_SUBMISSION, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { OPERATOR_ROLE } from '../../src/platform/http/admin-auth.middleware.ts';

/**
 * The API contract as a demanding client probes it (docs/api.md, Conventions): input a route does not
 * take is refused with a 4xx problem+json naming it, never silently ignored, and nothing is stored or
 * changed for it. No worker runs: submitted runs stay pending.
 */
let stack: TestStack;
const tenant = newTenant();
let token: string;

beforeAll(async () => {
  stack = await startStack({ env: { RATE_LIMIT_PER_MINUTE: '0' } });
  token = await stack.token({ tenantId: tenant, sub: 'contract-user', roles: ['approver', 'admin'] });
});
afterAll(async () => stack?.stop());

async function pendingRun(workflow: 'golden-path' | 'partner-offboarding' = 'golden-path'): Promise<string> {
  // An offboarding of a partner of its own: a second one of a partner is refused (409) while the first is pending.
  const body = workflow === 'golden-path' ? SAMPLE_SUBMISSION : { ...OFFBOARDING_SUBMISSION, partner: { reference: `P-${randomUUID().slice(0, 8)}`, name: 'Acme' } };
  const res = await api(stack, 'POST', `/api/v1/${workflow}/run`, { token, body, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status, res.text).toBe(202);
  return res.json.run_id as string;
}

/** Every workflow's cancel and retry (the run routes every workflow gets: run-routes.ts). */
const RUN_ACTIONS = [
  ['golden-path', 'cancel'],
  ['golden-path', 'retry'],
  ['partner-offboarding', 'cancel'],
  ['partner-offboarding', 'retry'],
] as const;

/** What a refused request must leave as it was: the run's row and the tenant's idempotency keys. */
async function state(runId: string) {
  const run = (await stack.db.admin(`select status, error, retry_count, completed_at from durable_runs where id = $1`, [runId])).rows[0];
  const keys = (await stack.db.admin(`select count(*)::int as n from idempotency_keys where tenant_id = $1`, [tenant])).rows[0].n as number;
  return { run, keys };
}

describe('a body sent to a route that takes none (cancel, retry)', () => {
  const post = (path: string, key: string, body?: { type: string; text: string }) =>
    api(stack, 'POST', path, { token, headers: { 'Idempotency-Key': key, ...(body ? { 'content-type': body.type } : {}) }, ...(body ? { rawBody: body.text } : {}) });

  it.each(RUN_ACTIONS)('%s %s: a JSON body with fields is 422 naming them, not ignored; nothing changes and no key is stored', async (workflow, action) => {
    const id = await pendingRun(workflow);
    const before = await state(id);
    for (const text of ['{"reason":"duplicate order"}', '[]', '{"comment":"x","force":true}']) {
      const res = await post(`/api/v1/${workflow}/runs/${id}/${action}`, randomUUID(), { type: 'application/json', text });
      expect(res.status, `${text}: ${res.text}`).toBe(422);
      expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(res.json).toMatchObject({ status: 422, code: 'validation_failed', errors: [expect.objectContaining({ path: expect.any(String) })] });
    }
    expect((await post(`/api/v1/${workflow}/runs/${id}/${action}`, randomUUID(), { type: 'application/json', text: '{"reason":"x"}' })).json.errors).toEqual([
      { path: '(root)', message: expect.stringContaining('reason') },
    ]);
    expect(await state(id)).toEqual(before);
  });

  it.each(RUN_ACTIONS)('%s %s: a body that is not JSON is 415; nothing changes and no key is stored', async (workflow, action) => {
    const id = await pendingRun(workflow);
    const before = await state(id);
    for (const type of ['text/plain', 'application/x-www-form-urlencoded']) {
      const res = await post(`/api/v1/${workflow}/runs/${id}/${action}`, randomUUID(), { type, text: 'reason=duplicate' });
      expect(res.status, `${type}: ${res.text}`).toBe(415);
      expect(res.json).toMatchObject({ status: 415, code: 'unsupported_media_type', detail: expect.stringContaining('no body') });
    }
    expect(await state(id)).toEqual(before);
  });

  it('an empty body, an empty JSON object and no body at all are the same request under one key: the cancel runs once and replays', async () => {
    const id = await pendingRun();
    const key = randomUUID();
    const path = `/api/v1/golden-path/runs/${id}/cancel`;
    const first = await post(path, key);
    expect(first.status, first.text).toBe(200);
    for (const body of [{ type: 'application/json', text: '{}' }, { type: 'application/json', text: '' }, { type: 'text/plain', text: '' }, { type: 'application/json', text: ' { } ' }]) {
      const again = await post(path, key, body);
      expect(again.status, `${JSON.stringify(body)}: ${again.text}`).toBe(200);
      expect(again.headers.get('idempotent-replayed')).toBe('true');
      expect(again.text).toBe(first.text);
    }
  });
});

describe('a query parameter a route does not take', () => {
  it('is a 400 naming it on every route without query parameters, not ignored', async () => {
    const id = await pendingRun();
    const reads = [`/api/v1/golden-path/runs/${id}`, `/api/v1/partner-offboarding/runs/${await pendingRun('partner-offboarding')}`, `/api/v1/approvals/${randomUUID()}`, `/api/v1/evidence/${randomUUID()}`, `/api/v1/evidence/${randomUUID()}/verify`, '/api/v1/approval-policy'];
    for (const path of reads) {
      const res = await api(stack, 'GET', `${path}?include=steps`, { token });
      expect(res.status, `${path}: ${res.text}`).toBe(400);
      expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(res.json, path).toMatchObject({ code: 'validation_failed', title: 'Invalid query parameters', errors: [{ path: '(root)', message: expect.stringContaining('include') }] });
    }
    // The lists already refused one: still so.
    expect((await api(stack, 'GET', '/api/v1/golden-path/runs?include=steps', { token })).status).toBe(400);
    expect((await api(stack, 'GET', '/api/v1/partner-offboarding/runs?include=steps', { token })).status).toBe(400);
  });

  it('refuses a mutating request with one before it runs: no run submitted "dry", no cancel, nothing stored', async () => {
    const id = await pendingRun();
    const before = await state(id);
    const runs = async () => (await stack.db.admin(`select count(*)::int as n from durable_runs where tenant_id = $1`, [tenant])).rows[0].n as number;
    const runsBefore = await runs();
    const key = { 'Idempotency-Key': randomUUID() };
    const dry = await api(stack, 'POST', '/api/v1/golden-path/run?dry_run=true', { token, body: SAMPLE_SUBMISSION, headers: key });
    expect(dry.status, dry.text).toBe(400);
    expect(dry.json.errors).toEqual([{ path: '(root)', message: expect.stringContaining('dry_run') }]);
    const cancel = await api(stack, 'POST', `/api/v1/golden-path/runs/${id}/cancel?force=1`, { token, headers: { 'Idempotency-Key': randomUUID() } });
    expect(cancel.status, cancel.text).toBe(400);
    const policy = await api(stack, 'PUT', '/api/v1/approval-policy?scope=all', { token, body: { class_a_max_cost: 1, class_a_max_payback_months: 1, class_c_min_cost: 2, class_c_min_payback_months: 2, sla_b_seconds: 60, sla_c_seconds: 60 } });
    expect(policy.status, policy.text).toBe(400);
    expect((await api(stack, 'GET', '/api/v1/approval-policy', { token })).json.source).toBe('default');
    expect(await runs()).toBe(runsBefore);
    expect(await state(id)).toEqual(before);
    // The key was not taken: the same request without the parameter runs.
    expect((await api(stack, 'POST', '/api/v1/golden-path/run', { token, body: SAMPLE_SUBMISSION, headers: key })).status).toBe(202);
  });
});

describe("a list's limit", () => {
  /** Every list route: a GET whose query takes `limit`. */
  const lists = () => stack.container.routes.filter((r) => r.method === 'get' && r.query && 'limit' in ((r.query as unknown as { shape?: object }).shape ?? {}));

  it('is plain decimal digits from 1 to 100: hex, exponents, signs, fractions and blanks are a 400 naming it, on every list route', async () => {
    const tenantToken = token;
    expect(lists().map((r) => r.path)).toEqual(
      expect.arrayContaining(['/api/v1/golden-path/runs', '/api/v1/partner-offboarding/runs', '/api/v1/approvals', '/api/v1/webhook-endpoints/:id/deliveries', '/api/v1/operator/tenant-limits']),
    );
    // The platform operator's lists open to its role alone.
    const operator = await stack.token({ tenantId: newTenant(), sub: 'contract-ops', roles: [OPERATOR_ROLE] });
    // A list under one resource (an endpoint's deliveries) is read under one that exists.
    const endpoint = await api(stack, 'POST', '/api/v1/webhook-endpoints', { token, body: { url: 'https://93.184.215.14/hook', events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(endpoint.status, endpoint.text).toBe(201);
    for (const route of lists()) {
      const def = { ...route, path: route.path.replace(':id', endpoint.json.id as string) };
      const token = route.roles?.includes(OPERATOR_ROLE) ? operator : tenantToken;
      // Number() reads all of these as 1..100; none is what a client means by a page size.
      for (const bad of ['0x10', '0X10', '0b11', '0o7', '1e1', '+5', '5.0', '%205', '5%20', 'Infinity', '', '0', '101', '-1', '1,2']) {
        const res = await api(stack, 'GET', `${def.path}?limit=${bad}`, { token });
        expect(res.status, `${def.path}?limit=${bad}: ${res.text}`).toBe(400);
        expect(res.json, `${def.path}?limit=${bad}`).toMatchObject({ code: 'validation_failed', title: 'Invalid query parameters', errors: [{ path: 'limit', message: expect.any(String) }] });
      }
      for (const good of ['1', '7', '100', '007']) {
        const res = await api(stack, 'GET', `${def.path}?limit=${good}`, { token });
        expect(res.status, `${def.path}?limit=${good}: ${res.text}`).toBe(200);
      }
    }
  });
});

describe('a malformed id in the path', () => {
  it('answers as documented on every route with an id, whether it is not a UUID or not even decodable: 404 validation_failed naming it', async () => {
    const withId = stack.container.routes.filter((r) => r.path.includes(':id'));
    expect(withId.length).toBeGreaterThanOrEqual(6);
    for (const def of withId) {
      for (const bad of ['not-a-uuid', '%E0%A4%A', '%C0%AF', '%FF', `${randomUUID()}%`, 'a'.repeat(2000), '%C3%A9t%C3%A9']) {
        // Its other path ids (a delivery's of an endpoint) valid, so that the answer names `id` alone.
        const path = def.path.replace(/:(?!id\b)[a-z_]+/g, () => randomUUID()).replace(':id', bad);
        const res = await api(stack, def.method.toUpperCase(), path, { token, headers: { 'Idempotency-Key': randomUUID() }, ...(def.method === 'get' ? {} : { body: {} }) });
        const where = `${def.method.toUpperCase()} ${path.slice(0, 80)}: ${res.text}`;
        expect(res.status, where).toBe(404);
        expect(res.headers.get('content-type'), where).toMatch(/^application\/problem\+json/);
        expect(res.json, where).toMatchObject({ status: 404, code: 'validation_failed', errors: [{ path: 'id', message: expect.any(String) }] });
      }
    }
  });
});

describe('a missing body on a route that takes one', () => {
  it('fails validation (422 naming the missing fields), not the media type, also when sent as Content-Length: 0 (as fetch sends a POST without a body)', async () => {
    for (const [method, path] of [['POST', '/api/v1/golden-path/run'], ['POST', `/api/v1/approvals/${randomUUID()}/decision`], ['PUT', '/api/v1/approval-policy']] as const) {
      for (const headers of [{}, { 'content-type': 'text/plain' }] as Array<Record<string, string>>) {
        // fetch sends `Content-Length: 0` for a body-less POST or PUT.
        const res = await api(stack, method, path, { token, headers: { 'Idempotency-Key': randomUUID(), ...headers } });
        expect(res.status, `${method} ${path} ${JSON.stringify(headers)}: ${res.text}`).toBe(422);
        expect(res.json).toMatchObject({ code: 'validation_failed', errors: expect.arrayContaining([expect.objectContaining({ path: expect.any(String) })]) });
      }
    }
  });
});
