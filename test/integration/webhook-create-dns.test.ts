/**
 * A webhook endpoint's create resolves its host (the SSRF guard) before the request's transaction,
 * so it holds no database connection while DNS answers. The host's DNS is the tenant's: one that
 * never answers would otherwise hold one of the API's pooled connections per create, for the
 * resolver's whole timeout, and a tenant's share of in-flight requests exceeds the pool.
 *
 * DNS is made to wait here, in this process (the API runs in it), by a gate in node:dns's `lookup`;
 * PostgreSQL and Redis are the real ones, and the API's pool has a single connection.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import dns from 'node:dns';
import { syncBuiltinESMExports } from 'node:module';
import { randomUUID } from 'node:crypto';
import { api, newTenant, startStack, type TestStack } from '../helpers/stack.ts';

const ENDPOINTS = '/api/v1/webhook-endpoints';
const GATED_HOST = 'receiver.gated.test';

describe('webhook endpoint create: DNS outside the transaction', () => {
  let stack: TestStack;
  const realLookup = dns.lookup;
  let release!: () => void;
  const opened = new Promise<void>((r) => (release = r));
  let entered!: () => void;
  const resolving = new Promise<void>((r) => (entered = r));

  beforeAll(async () => {
    stack = await startStack({ env: { DATABASE_POOL_MAX: '1' } });
    // GATED_HOST resolves to a public address, but only once the test opens the gate.
    const gated = ((hostname: string, options: unknown, callback: unknown) => {
      if (hostname !== GATED_HOST) return (realLookup as (...a: unknown[]) => void)(hostname, options, callback);
      const cb = (typeof options === 'function' ? options : callback) as (err: null, a: unknown, f?: number) => void;
      const all = typeof options === 'object' && options !== null && (options as { all?: boolean }).all;
      entered();
      void opened.then(() => (all ? cb(null, [{ address: '93.184.215.14', family: 4 }]) : cb(null, '93.184.215.14', 4)));
    }) as typeof dns.lookup;
    dns.lookup = gated;
    syncBuiltinESMExports();
  }, 120_000);

  afterAll(async () => {
    release();
    dns.lookup = realLookup;
    syncBuiltinESMExports();
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
      new Promise<'blocked'>((r) => setTimeout(() => r('blocked'), 15_000).unref()),
    ]);
    expect(listed === 'blocked' ? 'the list waited for the create’s DNS (a connection held through it)' : 'served').toBe('served');
    expect(typeof listed === 'object' && listed.status).toBe(200);
    release();
    const created = await create;
    expect(created.status, created.text).toBe(201);
  });
});
