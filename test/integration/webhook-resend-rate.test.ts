/**
 * The hourly budget of resent deliveries per tenant (WEBHOOK_RESEND_MAX_PER_HOUR; ADR 0013, *Resending*)
 * against the real stack: PostgreSQL as the application role, Redis. A review found that a tenant admin
 * could point an endpoint at any public host and bulk-resend 1,000 signed POSTs per request, again and
 * again as the pending bound (WEBHOOK_RESEND_MAX_PENDING) drained: the platform as an amplifier. No
 * worker runs here: resent deliveries stay pending, nothing is POSTed, and the rows tell what was resent.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, startStack, type TestStack } from '../helpers/stack.ts';
import { ENDPOINTS, startReceiver, tenantWithEndpoint, type Receiver } from '../helpers/webhooks.ts';
import { waitFor } from '../helpers/poll.ts';

const BUDGET = 5;

describe('webhook resend budget (WEBHOOK_RESEND_MAX_PER_HOUR)', () => {
  let stack: TestStack;
  let receiver: Receiver;
  beforeAll(async () => {
    // Its own redis-server: the last test stops it.
    stack = await startStack({ ownRedis: true, env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true', WEBHOOK_RESEND_MAX_PER_HOUR: String(BUDGET) } });
    receiver = await startReceiver();
  }, 120_000);
  afterAll(async () => {
    await receiver?.close();
    await stack?.stop();
  });

  const recover = (token: string, endpointId: string, body: unknown, key: string = randomUUID()) =>
    api(stack, 'POST', `${ENDPOINTS}/${endpointId}/deliveries/resend`, { token, body, headers: { 'Idempotency-Key': key } });
  const resend = (token: string, endpointId: string, deliveryId: string) =>
    api(stack, 'POST', `${ENDPOINTS}/${endpointId}/deliveries/${deliveryId}/resend`, { token, headers: { 'Idempotency-Key': randomUUID() } });

  /** `n` failed deliveries of the endpoint, created an hour apart from 2026-11-20T01:00Z (no job: nothing attempts them). */
  const insertFailed = async (t: { tenantId: string; endpoint: { id: string } }, n: number, firstHour = 1) => {
    const ids: string[] = [];
    for (let h = firstHour; h < firstHour + n; h++) {
      const id = randomUUID();
      const at = `2026-11-20T${String(h).padStart(2, '0')}:00:00.000Z`;
      await stack.db.admin(
        `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, last_status_code, last_error, created_at, updated_at)
         values ($1, $2, $3, 'run.completed', $4, 'failed', 2, 500, 'HTTP 500', $5, now())`,
        [id, t.tenantId, t.endpoint.id, JSON.stringify({ type: 'run.completed', timestamp: at, data: { run_id: randomUUID() } }), at],
      );
      ids.push(id);
    }
    return ids;
  };
  const resends = async (ids: string[]) =>
    ((await stack.db.admin(`select id, resends from webhook_deliveries where id = any($1::uuid[])`, [ids])).rows as { id: string; resends: number }[])
      .sort((a, b) => ids.indexOf(a.id) - ids.indexOf(b.id))
      .map((r) => r.resends);

  it('a tenant resends at most WEBHOOK_RESEND_MAX_PER_HOUR deliveries in an hour: a bulk recover is clamped to what is left, then both resends are 429 with Retry-After and nothing is resent', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/budget', ['run.completed']);
    const ids = await insertFailed(t, BUDGET + 3);
    const first = await recover(t.admin, t.endpoint.id, { since: '2026-11-20T00:00:00Z' });
    expect(first.status, first.text).toBe(202);
    // Clamped by the budget, not by the limit (1,000) nor the pending bound (2,000): has_more says the rest is left.
    expect(first.json).toEqual({ resent: BUDGET, has_more: true });
    expect(await resends(ids)).toEqual([...Array(BUDGET).fill(1), 0, 0, 0]);
    // The budget is spent: both resends are refused, as problem+json with Retry-After, and change nothing.
    const key = randomUUID();
    const bulk = await recover(t.admin, t.endpoint.id, { since: '2026-11-20T00:00:00Z' }, key);
    const single = await resend(t.admin, t.endpoint.id, ids[BUDGET]!);
    for (const res of [bulk, single]) {
      expect(res.status, res.text).toBe(429);
      expect(res.headers.get('content-type')).toContain('application/problem+json');
      expect(res.json).toMatchObject({ code: 'webhook_resend_rate_limited', status: 429 });
      expect(res.json.detail).toContain('WEBHOOK_RESEND_MAX_PER_HOUR');
      const retryAfter = Number(res.headers.get('retry-after'));
      expect(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 3600, `Retry-After ${res.headers.get('retry-after')}`).toBe(true);
    }
    expect(await resends(ids)).toEqual([...Array(BUDGET).fill(1), 0, 0, 0]);
    // Counted as a refusal by a limit, by route (no tenant label).
    const metrics = (await api(stack, 'GET', '/metrics')).text;
    expect(metrics).toContain(`dealix_requests_refused_total{reason="webhook_resend",route="POST ${ENDPOINTS}/:id/deliveries/resend"} 1`);
    // The refusal stored no answer under its key: the same key is processed again (refused again, not replayed as a 202).
    expect((await recover(t.admin, t.endpoint.id, { since: '2026-11-20T00:00:00Z' }, key)).status).toBe(429);
    // Another tenant's budget is its own.
    const other = await tenantWithEndpoint(stack, receiver, '/budget-other', ['run.completed']);
    const theirs = await insertFailed(other, 1);
    expect((await resend(other.admin, other.endpoint.id, theirs[0]!)).status).toBe(202);
  });

  it('a resend spends only what it resent: a recover matching fewer than the budget, a refused one (disabled endpoint) and a 404 leave the rest for later requests', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/budget-partial', ['run.completed']);
    const two = await insertFailed(t, 2);
    expect((await recover(t.admin, t.endpoint.id, { since: '2026-11-20T00:00:00Z' })).json).toEqual({ resent: 2, has_more: false });
    expect((await resend(t.admin, t.endpoint.id, randomUUID())).status).toBe(404);
    expect((await api(stack, 'POST', `${ENDPOINTS}/${t.endpoint.id}/disable`, { token: t.admin })).status).toBe(200);
    const more = await insertFailed(t, BUDGET, 10);
    expect((await recover(t.admin, t.endpoint.id, { since: '2026-11-20T09:00:00Z' })).json.code).toBe('webhook_endpoint_disabled');
    expect((await api(stack, 'POST', `${ENDPOINTS}/${t.endpoint.id}/enable`, { token: t.admin, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);
    // 2 spent of 5: three more now, then none.
    expect((await recover(t.admin, t.endpoint.id, { since: '2026-11-20T09:00:00Z' })).json).toEqual({ resent: BUDGET - 2, has_more: true });
    expect(await resends([...two, ...more])).toEqual([1, 1, ...Array(BUDGET - 2).fill(1), 0, 0]);
    expect((await recover(t.admin, t.endpoint.id, { since: '2026-11-20T09:00:00Z' })).status).toBe(429);
  });

  it('a test event is a POST an admin makes the platform send too: it spends one from the same budget, and past it is 429 with nothing inserted', async () => {
    // Test events were bounded only to one pending per endpoint: sent back to back as each settled, one
    // signed POST per request to any host the admin set, outside the hourly budget.
    const t = await tenantWithEndpoint(stack, receiver, '/budget-test-event', ['run.completed']);
    const sendTest = () => api(stack, 'POST', `${ENDPOINTS}/${t.endpoint.id}/test`, { token: t.admin, headers: { 'Idempotency-Key': randomUUID() } });
    const tests = async () => ((await stack.db.admin(`select count(*)::int as n from webhook_deliveries where tenant_id = $1 and event_type = 'webhook.test'`, [t.tenantId])).rows[0] as { n: number }).n;
    const first = await sendTest();
    expect(first.status, first.text).toBe(202);
    // Settled (no worker runs here): the endpoint's one-pending bound no longer holds the next one back.
    await stack.db.admin(`update webhook_deliveries set status = 'delivered' where tenant_id = $1 and event_type = 'webhook.test'`, [t.tenantId]);
    const ids = await insertFailed(t, BUDGET);
    // One of the budget went to the test event.
    expect((await recover(t.admin, t.endpoint.id, { since: '2026-11-20T00:00:00Z' })).json).toEqual({ resent: BUDGET - 1, has_more: true });
    const refused = await sendTest();
    expect(refused.status, refused.text).toBe(429);
    expect(refused.headers.get('content-type')).toContain('application/problem+json');
    expect(refused.json).toMatchObject({ code: 'webhook_resend_rate_limited', status: 429 });
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(await tests()).toBe(1);
    expect((await resends(ids)).filter((n) => n === 1)).toHaveLength(BUDGET - 1);
  });

  it('Redis unavailable: a resend fails closed — 503 problem+json with Retry-After, nothing resent, the key not stored — and is processed once Redis is back', { timeout: 120_000 }, async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/budget-down', ['run.completed']);
    const ids = await insertFailed(t, 2);
    const key = randomUUID();
    await stack.ownRedis!.stopServer();
    try {
      await waitFor(async () => (await api(stack, 'GET', '/readyz')).status === 503, { timeoutMs: 30_000, what: 'the API to see Redis down' });
      const bulk = await recover(t.admin, t.endpoint.id, { since: '2026-11-20T00:00:00Z' }, key);
      const single = await resend(t.admin, t.endpoint.id, ids[1]!);
      for (const res of [bulk, single]) {
        expect(res.status, res.text).toBe(503);
        expect(res.headers.get('content-type')).toContain('application/problem+json');
        expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(0);
      }
      // The budget refused them, not the request as a whole: reading the deliveries needs no Redis.
      expect((await api(stack, 'GET', `${ENDPOINTS}/${t.endpoint.id}/deliveries`, { token: t.admin })).status).toBe(200);
      expect(await resends(ids)).toEqual([0, 0]);
    } finally {
      await stack.ownRedis!.startServer();
    }
    // The 503 stored nothing under its key: the same key is processed once the API has reconnected.
    const done = await waitFor(
      async () => {
        const res = await recover(t.admin, t.endpoint.id, { since: '2026-11-20T00:00:00Z' }, key);
        return res.status === 202 ? res : undefined;
      },
      { timeoutMs: 30_000, what: 'the resend to be processed once Redis is back' },
    );
    expect(done.json).toEqual({ resent: 2, has_more: false });
    expect(await resends(ids)).toEqual([1, 1]);
  });
});
