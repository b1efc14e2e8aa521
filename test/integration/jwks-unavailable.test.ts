import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { api, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';

/**
 * The identity provider's JWKS (JWT_JWKS_URL) cannot be fetched — it answers 500, answers something
 * that is no key set, or drops the connection — while the API has no fresh copy of the keys (a new
 * process; or one whose cache is past JWT_JWKS_CACHE_MAX_AGE). A valid token then cannot be checked:
 * that is the API's trouble, not the client's. The answer is 503 problem+json with Retry-After, not a
 * 401 that tells every client its token is bad (re-authentication storms, tokens thrown away, alerts
 * on "rejected tokens"), and nothing is persisted. Once the keys are back the same token works.
 */

type Mode = 'up' | 'status-500' | 'not-json' | 'reset';
let mode: Mode = 'status-500';
let fetches = 0;
let stack: TestStack;
let idp: Server;
let keys: Awaited<ReturnType<typeof generateKeyPair>>;
const tenant = newTenant();
const RUN = '/api/v1/golden-path/run';
const now = () => Math.floor(Date.now() / 1000);

beforeAll(async () => {
  keys = await generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await exportJWK(keys.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
  idp = createServer((req, res) => {
    fetches++;
    if (mode === 'reset') return void req.socket.destroy();
    if (mode === 'status-500') return void res.writeHead(500, { 'content-type': 'text/plain' }).end('internal error');
    if (mode === 'not-json') return void res.writeHead(200, { 'content-type': 'text/html' }).end('<html>maintenance</html>');
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] }));
  });
  await new Promise<void>((r) => idp.listen(0, '127.0.0.1', r));
  stack = await startStack({ env: { JWT_JWKS_URL: `http://127.0.0.1:${(idp.address() as AddressInfo).port}/jwks.json` } });
});
afterAll(async () => {
  await stack?.stop();
  idp?.closeAllConnections();
  await new Promise<void>((r) => (idp ? idp.close(() => r()) : r()));
});

// Any claim can be bent by `claims` (exp, aud included).
const sign = (claims: Record<string, unknown>, kid = 'k1') =>
  new SignJWT({ tenant_id: tenant, roles: ['approver'], sub: 'alice', iss: stack.config.JWT_ISSUER, aud: stack.config.JWT_AUDIENCE, iat: now(), jti: randomUUID(), exp: now() + 600, ...claims })
    .setProtectedHeader({ alg: 'RS256', kid })
    .sign(keys.privateKey);

async function persisted() {
  const counts = await stack.db.admin(`select (select count(*) from durable_runs)::int as runs, (select count(*) from idempotency_keys)::int as keys`);
  return counts.rows[0];
}

function expectKeysUnavailable(res: Awaited<ReturnType<typeof api>>) {
  expect(res.status, res.text).toBe(503);
  expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(0);
  expect(res.headers.get('www-authenticate')).toBeNull();
  expect(res.json).toMatchObject({ status: 503, code: 'service_unavailable' });
  expect(res.json.detail).toMatch(/JWT_JWKS_URL/);
  expect(res.text).not.toMatch(/stack|JWS|jose|internal error|maintenance/i);
}

describe('the JWKS cannot be fetched', () => {
  const key = randomUUID();
  let token: string;
  beforeAll(async () => {
    token = await sign({});
  });

  for (const m of ['status-500', 'not-json', 'reset'] as const) {
    it(`(${m}) a valid token is 503 problem+json with Retry-After, not 401, on a read, a submission and the dashboard; nothing persisted`, async () => {
      mode = m;
      const before = fetches;
      expectKeysUnavailable(await api(stack, 'GET', '/api/v1/golden-path/runs', { token }));
      expectKeysUnavailable(await api(stack, 'POST', RUN, { token, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': key } }));
      const operator = await sign({ roles: ['platform-operator'] });
      expectKeysUnavailable(await api(stack, 'GET', '/admin/queues/api/queues', { token: operator }));
      expectKeysUnavailable(await api(stack, 'GET', '/api/v1/operator/tenant-limits', { token: operator }));
      // The keys were asked for each time (no failure is remembered), so the API recovers with the IdP.
      expect(fetches).toBeGreaterThan(before);
      expect(await persisted()).toEqual({ runs: 0, keys: 0 });
    });
  }

  it('a token its claims refuse whatever its signature (expired, another audience) stays 401 on the API and the dashboard', async () => {
    mode = 'status-500';
    const expired = await sign({ exp: now() - 3600 });
    const elsewhere = await sign({ aud: 'another-api' });
    for (const [path, token] of [
      ['/api/v1/golden-path/runs', expired],
      ['/api/v1/golden-path/runs', elsewhere],
      ['/admin/queues/api/queues', await sign({ exp: now() - 3600, roles: ['platform-operator'] })],
    ] as const) {
      const res = await api(stack, 'GET', path, { token });
      expect(res.status, `${path}: ${res.text}`).toBe(401);
      expect(res.json).toMatchObject({ code: 'unauthorized' });
    }
    const res = await api(stack, 'POST', RUN, { token: expired, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status, res.text).toBe(401);
    expect(await persisted()).toEqual({ runs: 0, keys: 0 });
  });

  it('once the keys can be fetched, the same token and the same Idempotency-Key are accepted', async () => {
    mode = 'up';
    expect((await api(stack, 'GET', '/api/v1/golden-path/runs', { token })).status).toBe(200);
    const res = await api(stack, 'POST', RUN, { token, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': key } });
    expect(res.status, res.text).toBe(202);
    expect(await persisted()).toMatchObject({ runs: 1 });
  });

  it('a token naming a key the fetched set does not hold is still 401 (the control: only the fetch failing is 503)', async () => {
    mode = 'up';
    const res = await api(stack, 'GET', '/api/v1/golden-path/runs', { token: await sign({}, 'unknown-kid') });
    expect(res.status).toBe(401);
    expect(res.json).toMatchObject({ code: 'unauthorized' });
  });
});
