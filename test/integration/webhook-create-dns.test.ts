/**
 * A webhook endpoint's create resolves its host (the SSRF guard) before the request's transaction,
 * so it holds no database connection while DNS answers. The host's DNS is the tenant's: one that
 * never answers would otherwise hold one of the API's pooled connections per create, for the
 * resolver's whole timeout, and a tenant's share of in-flight requests exceeds the pool.
 *
 * DNS is made to wait here, in this process (the API runs in it), by a gate in node:dns's `lookup`;
 * PostgreSQL and Redis are the real ones, and the API's pool has a single connection.
 *
 * The wait is bounded (WEBHOOK_TIMEOUT, one delivery attempt's budget): a host whose DNS never answers
 * gets a 503 once it has passed, and nothing is stored. The bound is made small through the config,
 * and that host's gate is never opened.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import dns from 'node:dns';
import { syncBuiltinESMExports } from 'node:module';
import { randomUUID } from 'node:crypto';
import { api, newTenant, startStack, type TestStack } from '../helpers/stack.ts';

const ENDPOINTS = '/api/v1/webhook-endpoints';
const GATED_HOST = 'receiver.gated.test';
const SILENT_HOST = 'receiver.silent.test';
const realLookup = dns.lookup;

/** GATED_HOST resolves to a public address once `opened` settles; SILENT_HOST never resolves; other names as usual. */
function installGate(opened: Promise<void>, entered: () => void): void {
  const gated = ((hostname: string, options: unknown, callback: unknown) => {
    if (hostname === SILENT_HOST) return;
    if (hostname !== GATED_HOST) return (realLookup as (...a: unknown[]) => void)(hostname, options, callback);
    const cb = (typeof options === 'function' ? options : callback) as (err: null, a: unknown, f?: number) => void;
    const all = typeof options === 'object' && options !== null && (options as { all?: boolean }).all;
    entered();
    void opened.then(() => (all ? cb(null, [{ address: '93.184.215.14', family: 4 }]) : cb(null, '93.184.215.14', 4)));
  }) as typeof dns.lookup;
  dns.lookup = gated;
  syncBuiltinESMExports();
}

function removeGate(): void {
  dns.lookup = realLookup;
  syncBuiltinESMExports();
}

describe('webhook endpoint create: DNS outside the transaction', () => {
  let stack: TestStack;
  let release!: () => void;
  const opened = new Promise<void>((r) => (release = r));
  let entered!: () => void;
  const resolving = new Promise<void>((r) => (entered = r));

  beforeAll(async () => {
    stack = await startStack({ env: { DATABASE_POOL_MAX: '1' } });
    installGate(opened, entered);
  }, 120_000);

  afterAll(async () => {
    release();
    removeGate();
    await stack?.stop();
  });

  it("another request is served while a create waits for its host's DNS; the create then answers 201", async () => {
    const admin = await stack.token({ tenantId: newTenant(), sub: 'admin-1', roles: ['admin'] });
    const other = await stack.token({ tenantId: newTenant(), sub: 'admin-1', roles: ['admin'] });
    const create = api(stack, 'POST', ENDPOINTS, { token: admin, body: { url: `https://${GATED_HOST}/hook`, events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } });
    await resolving;
    // With the pool's only connection held by the create's transaction, this would wait for the gate.
    const listed = await Promise.race([
      api(stack, 'GET', ENDPOINTS, { token: other }),
      opened.then(() => 'the gate opened first' as const),
      // Long enough for a GET that is not blocked to be answered on a loaded machine (then it wins the race at once).
      new Promise<'blocked'>((r) => setTimeout(() => r('blocked'), 30_000).unref()),
    ]);
    expect(listed === 'blocked' ? 'the list waited for the create’s DNS (a connection held through it)' : 'served').toBe('served');
    expect(typeof listed === 'object' && listed.status).toBe(200);
    release();
    const created = await create;
    expect(created.status, created.text).toBe(201);
  });
});

describe('webhook endpoint create: a bounded wait for DNS', () => {
  let stack: TestStack;

  beforeAll(async () => {
    // WEBHOOK_TIMEOUT bounds the create's DNS wait; its smallest value keeps the test short.
    stack = await startStack({ env: { WEBHOOK_TIMEOUT: '100ms' } });
    installGate(new Promise<void>(() => {}), () => {});
  }, 120_000);

  afterAll(async () => {
    removeGate();
    await stack?.stop();
  });

  it('a host whose DNS never answers: 503 problem+json naming the host once the wait is over, nothing stored, the key free for a retry', async () => {
    const tenant = newTenant();
    const admin = await stack.token({ tenantId: tenant, sub: 'admin-1', roles: ['admin'] });
    const key = randomUUID();
    const create = api(stack, 'POST', ENDPOINTS, { token: admin, body: { url: `https://${SILENT_HOST}/hook`, events: ['run.completed'] }, headers: { 'Idempotency-Key': key } });
    // Unbounded, the create waits for a resolver that never answers: this stops the test instead of its timeout.
    const answered = await Promise.race([create, new Promise<'still waiting'>((r) => setTimeout(() => r('still waiting'), 30_000).unref())]);
    expect(answered === 'still waiting' ? 'the create still waits for DNS' : 'answered').toBe('answered');
    const res = answered as Awaited<typeof create>;
    // A resolver that did not answer says nothing about the URL: "not now" (503, Retry-After), not a 422 that calls the URL wrong.
    expect(res.status, res.text).toBe(503);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(res.headers.get('retry-after')).toBeTruthy();
    expect(res.json.detail).toBe(`The host ${SILENT_HOST} could not be resolved within 100 ms; try again.`);
    const listed = await api(stack, 'GET', ENDPOINTS, { token: admin });
    expect(listed.status).toBe(200);
    expect(listed.json.items).toEqual([]);
    // The key was released, not stored: no idempotency record of the tenant's remains.
    expect((await stack.db.admin(`select 1 from idempotency_keys where tenant_id = $1`, [tenant])).rows).toEqual([]);
  });
  it("an update (PATCH) to a host whose DNS never answers: 503 once the wait is over, the endpoint unchanged, the key free for a retry", async () => {
    const tenant = newTenant();
    const admin = await stack.token({ tenantId: tenant, sub: 'admin-1', roles: ['admin'] });
    const created = await api(stack, 'POST', ENDPOINTS, { token: admin, body: { url: 'https://93.184.215.43/hook', events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(created.status, created.text).toBe(201);
    const key = randomUUID();
    const res = await api(stack, 'PATCH', `${ENDPOINTS}/${created.json.id}`, { token: admin, body: { url: `https://${SILENT_HOST}/hook` }, headers: { 'Idempotency-Key': key } });
    expect(res.status, res.text).toBe(503);
    expect(res.headers.get('retry-after')).toBeTruthy();
    expect((await api(stack, 'GET', `${ENDPOINTS}/${created.json.id}`, { token: admin })).json.url).toBe('https://93.184.215.43/hook');
    expect((await stack.db.admin(`select 1 from idempotency_keys where tenant_id = $1 and idempotency_key = $2`, [tenant, key])).rows).toEqual([]);
  });
});
