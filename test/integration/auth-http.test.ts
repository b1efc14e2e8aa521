import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { SignJWT, UnsecuredJWT } from 'jose';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { TEST_JWT_SECRET } from '../helpers/env.ts';

/**
 * Over HTTP, a request without a valid bearer token is answered 401 problem+json with
 * WWW-Authenticate, before validation or idempotency run: nothing is persisted, nothing enqueued.
 */

let stack: TestStack;
const tenant = newTenant();
const RUN = '/api/v1/golden-path/run';

beforeAll(async () => {
  stack = await startStack();
});
afterAll(async () => stack?.stop());

const secret = new TextEncoder().encode(TEST_JWT_SECRET);
const now = () => Math.floor(Date.now() / 1000);

function claims(extra: Record<string, unknown> = {}) {
  return { tenant_id: tenant, roles: [], ...extra };
}
async function signed(payload: Record<string, unknown>, o: { exp?: number; aud?: string; key?: Uint8Array } = {}) {
  return new SignJWT(payload)
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject('user-1')
    .setIssuedAt()
    .setIssuer(stack.config.JWT_ISSUER)
    .setAudience(o.aud ?? stack.config.JWT_AUDIENCE)
    .setExpirationTime(o.exp ?? now() + 600)
    .sign(o.key ?? secret);
}

async function persisted() {
  const counts = await stack.db.admin(`select (select count(*) from durable_runs)::int as runs, (select count(*) from idempotency_keys)::int as keys`);
  const queued = await Promise.all([...stack.container.queues.values()].map((q) => q.count()));
  return { ...counts.rows[0], queued: queued.reduce((a, b) => a + b, 0) };
}

describe('authentication over HTTP', () => {
  const badAuthorization: Array<[string, () => Promise<string | undefined>]> = [
    ['no Authorization header', async () => undefined],
    ['a Basic scheme', async () => 'Basic dXNlcjpwYXNz'],
    ['a bearer value that is not a JWT', async () => 'Bearer not-a-token'],
    ['an expired token', async () => `Bearer ${await signed(claims(), { exp: now() - 120 })}`],
    ['a token signed with another secret', async () => `Bearer ${await signed(claims(), { key: new TextEncoder().encode('x'.repeat(40)) })}`],
    ['an unsigned token (alg: none)', async () => `Bearer ${new UnsecuredJWT(claims()).setSubject('user-1').setIssuer(stack.config.JWT_ISSUER).setAudience(stack.config.JWT_AUDIENCE).setExpirationTime(now() + 600).encode()}`],
    ['a token for another audience', async () => `Bearer ${await signed(claims(), { aud: 'another-api' })}`],
    ['a token without tenant_id', async () => `Bearer ${await signed({ roles: [] })}`],
    ['a token whose tenant_id is not a UUID', async () => `Bearer ${await signed(claims({ tenant_id: 'acme' }))}`],
  ];

  it.each(badAuthorization)('a submission with %s is 401 problem+json with WWW-Authenticate, and nothing is persisted', async (_what, header) => {
    const h = await header();
    const res = await api(stack, 'POST', RUN, { body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID(), ...(h ? { authorization: h } : {}) } });
    expect(res.status).toBe(401);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(res.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect(res.json).toMatchObject({ status: 401, code: 'unauthorized', title: 'Unauthorized' });
    expect(res.text).not.toMatch(/stack|JWS|jose/i);
    expect(await persisted()).toEqual({ runs: 0, keys: 0, queued: 0 });
  });

  it('a read with a bad token is 401 too', async () => {
    const res = await api(stack, 'GET', `/api/v1/golden-path/runs/${randomUUID()}`, { headers: { authorization: 'Bearer a.b.c' } });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toMatch(/^Bearer/);
  });

  it('the same submission with a valid token is accepted (so the 401s above were about the token)', async () => {
    const res = await api(stack, 'POST', RUN, { token: await stack.token({ tenantId: tenant, sub: 'user-1' }), body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status).toBe(202);
    expect((await persisted()).runs).toBe(1);
  });
});
