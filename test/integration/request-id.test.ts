import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';

/**
 * X-Request-Id (docs/api.md, "Correlation and request ids"): on every response, errors included,
 * unique per request, and the `request_id` of a problem+json body — except a replayed problem, whose
 * body names the first request.
 */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const RUN = '/api/v1/golden-path/run';
let stack: TestStack;
const tenant = newTenant();
const tok: Record<string, string> = {};

beforeAll(async () => {
  stack = await startStack();
  tok.user = await stack.token({ tenantId: tenant, sub: 'user-1' });
  tok.approver = await stack.token({ tenantId: tenant, sub: 'approver-1', roles: ['approver'] });
});
afterAll(async () => stack?.stop());

type Reply = Awaited<ReturnType<typeof api>>;
const keyed = () => ({ 'Idempotency-Key': randomUUID() });

describe('X-Request-Id', () => {
  it('is on every response, unique per request, and is the request_id of every problem+json', async () => {
    const json = { 'content-type': 'application/json' };
    const replayKey = randomUUID();
    const replayed = () => api(stack, 'POST', RUN, { token: tok.user, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': replayKey } });
    const cases: Array<[string, number, () => Promise<Reply>]> = [
      ['liveness', 200, () => api(stack, 'GET', '/healthz')],
      ['readiness', 200, () => api(stack, 'GET', '/readyz')],
      ['metrics', 200, () => api(stack, 'GET', '/metrics')],
      ['the OpenAPI document', 200, () => api(stack, 'GET', '/openapi.json')],
      ['a list', 200, () => api(stack, 'GET', '/api/v1/golden-path/runs', { token: tok.user })],
      ['a submission', 202, replayed],
      ['its replay', 202, replayed],
      ['no token', 401, () => api(stack, 'GET', '/api/v1/golden-path/runs')],
      ['the dashboard without a token', 401, () => api(stack, 'GET', '/admin/queues/api/queues')],
      ['a missing role', 403, () => api(stack, 'PUT', '/api/v1/approval-policy', { token: tok.user, body: {} })],
      ['an unknown route', 404, () => api(stack, 'GET', '/api/v1/no-such-route', { token: tok.user })],
      ['an unknown run', 404, () => api(stack, 'GET', `/api/v1/golden-path/runs/${randomUUID()}`, { token: tok.user })],
      ['a malformed id', 404, () => api(stack, 'GET', '/api/v1/golden-path/runs/not-a-uuid', { token: tok.user })],
      ['a method the route does not answer', 405, () => api(stack, 'DELETE', '/api/v1/golden-path/runs', { token: tok.user })],
      ['malformed JSON', 400, () => api(stack, 'POST', RUN, { token: tok.user, rawBody: '{', headers: { ...json, ...keyed() } })],
      ['a missing Idempotency-Key', 400, () => api(stack, 'POST', RUN, { token: tok.user, body: SAMPLE_SUBMISSION })],
      ['a body over the limit', 413, () => api(stack, 'POST', RUN, { token: tok.user, body: { pad: 'x'.repeat(70 * 1024) }, headers: keyed() })],
      ['another media type', 415, () => api(stack, 'POST', RUN, { token: tok.user, rawBody: 'a=1', headers: { 'content-type': 'text/plain', ...keyed() } })],
      ['an invalid body', 422, () => api(stack, 'POST', RUN, { token: tok.user, body: { ...SAMPLE_SUBMISSION, currency: 'XXX' }, headers: keyed() })],
      ['a reused key', 422, () => api(stack, 'POST', RUN, { token: tok.user, body: { ...SAMPLE_SUBMISSION, currency: 'USD' }, headers: { 'Idempotency-Key': replayKey } })],
    ];
    const seen: string[] = [];
    for (const [what, status, send] of cases) {
      const res = await send();
      expect(res.status, `${what}: ${res.text.slice(0, 200)}`).toBe(status);
      const id = res.headers.get('x-request-id');
      expect(id, what).toMatch(UUID);
      seen.push(id!);
      if (status >= 400) {
        expect(res.headers.get('content-type'), what).toMatch(/^application\/problem\+json/);
        expect(res.json.request_id, what).toBe(id);
      }
    }
    expect(new Set(seen).size).toBe(seen.length);
  });

  it('of an unexpected failure (500 internal) is the request_id its problem carries', async () => {
    const fn = `fail_${randomUUID().replace(/-/g, '')}`;
    await stack.db.admin(`create function ${fn}() returns trigger language plpgsql as $$ begin raise exception 'injected failure'; end $$`);
    await stack.db.admin(`create trigger ${fn} before insert on durable_runs for each row when (new.tenant_id = '${tenant}') execute function ${fn}()`);
    try {
      const res = await api(stack, 'POST', RUN, { token: tok.user, body: SAMPLE_SUBMISSION, headers: keyed() });
      expect(res.status, res.text).toBe(500);
      expect(res.json).toMatchObject({ status: 500, code: 'internal' });
      expect(res.headers.get('x-request-id')).toMatch(UUID);
      expect(res.json.request_id).toBe(res.headers.get('x-request-id'));
      expect(res.text).not.toContain('injected failure');
    } finally {
      await stack.db.admin(`drop trigger ${fn} on durable_runs`);
      await stack.db.admin(`drop function ${fn}()`);
    }
  });

  it('is fresh on a replayed problem, whose body carries no request_id (it named the first request)', async () => {
    const key = randomUUID();
    // A decision on an approval request that does not exist: the handler's 404 is stored under the key.
    const decide = (approvalId: string) =>
      api(stack, 'POST', `/api/v1/approvals/${approvalId}/decision`, { token: tok.approver, body: { decision: 'approve' }, headers: { 'Idempotency-Key': key } });
    const missing = randomUUID();
    const send = () => decide(missing);
    const first = await send();
    expect(first.status).toBe(404);
    expect(first.json.request_id).toBe(first.headers.get('x-request-id'));
    const again = await send();
    expect(again.status).toBe(404);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(again.headers.get('x-request-id')).toMatch(UUID);
    expect(again.headers.get('x-request-id')).not.toBe(first.headers.get('x-request-id'));
    expect(again.json).not.toHaveProperty('request_id');
    const { request_id: _first, ...problem } = first.json;
    expect(again.json).toEqual(problem);
    // Another approval id under the key is another request: 422, a fresh problem with its own id.
    const reused = await decide(randomUUID());
    expect(reused.status).toBe(422);
    expect(reused.json.request_id).toBe(reused.headers.get('x-request-id'));
  });
});
