/**
 * An admin's test event to a webhook endpoint (ADR 0013, *Test events*; Stripe's "Send test webhook",
 * Svix's "Send example") against the real stack: PostgreSQL as the application role, Redis, a spawned
 * worker process and a real node:http receiver. The event goes through the outbox — signed with the
 * endpoint's secret, recorded, listed with its deliveries — to that endpoint only, whatever it
 * subscribed to, and is owed one attempt.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { api, newTenant, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { holdTable, type TableLock } from '../helpers/table-lock.ts';
import { inlineStatement } from '../../src/platform/db/statement-batch.ts';
import { INSERT_TEST, TEST_EVENT_MESSAGE, WEBHOOK_TEST_MAX_PENDING } from '../../src/platform/webhooks/test-event.ts';
import { createEndpoint, ENDPOINTS, webhookStackForTests, tenantWithEndpoint, type Receiver } from '../helpers/webhooks.ts';

/** Three: a test event failing once is failed at once by its one-attempt rule, not by the cap. */
const MAX_ATTEMPTS = 3;

describe('webhook test event', () => {
  const env = webhookStackForTests(MAX_ATTEMPTS);
  let stack: TestStack;
  let receiver: Receiver;
  beforeAll(() => void ({ stack, receiver } = env));

  const sendTest = (token: string, endpointId: string, key: string | null = randomUUID()) =>
    api(stack, 'POST', `${ENDPOINTS}/${endpointId}/test`, { token, headers: key ? { 'Idempotency-Key': key } : {} });

  /** The endpoint's deliveries as stored (every column a refusal must leave as it was). */
  const rows = async (endpointId: string) =>
    (await stack.db.admin(`select id, event_type, status, attempts, last_status_code, payload from webhook_deliveries where endpoint_id = $1 order by created_at, id`, [endpointId])).rows as Array<{
      id: string;
      event_type: string;
      status: string;
      attempts: number;
      last_status_code: number | null;
      payload: { type: string; data: Record<string, unknown> };
    }>;

  /** dealix_webhook_test_events_total, as the API's /metrics shows it. */
  const metric = async () => {
    const series = 'dealix_webhook_test_events_total';
    const line = (await api(stack, 'GET', '/metrics')).text.split('\n').find((l) => l.startsWith(`${series} `));
    return line === undefined ? 0 : Number(line.slice(series.length + 1));
  };

  /** The endpoint's delivery `id` once the list shows it `status`. */
  const settledAs = (token: string, endpointId: string, id: string, status: string) =>
    waitFor(
      async () => {
        const res = await api(stack, 'GET', `${ENDPOINTS}/${endpointId}/deliveries`, { token });
        return (res.json?.items as Array<{ id: string; status: string }> | undefined)?.find((d) => d.id === id && d.status === status);
      },
      { timeoutMs: 30_000, what: `test delivery ${id} to be ${status}` },
    );

  /**
   * Runs `requests` while the deliveries table's writes are held (EXCLUSIVE: reads go on), until both wait
   * on a lock — the table, or the other's endpoint row lock — then releases it and returns their answers.
   */
  const raceHeldDeliveries = async (requests: Array<() => ReturnType<typeof sendTest>>) => {
    const holder: TableLock = await holdTable(stack.db.adminUrl, 'webhook_deliveries');
    try {
      let answered = 0;
      const pending = requests.map((r) => r().finally(() => answered++));
      await waitFor(async () => answered === 2 || (await stack.db.admin(`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`)).rows[0].n === 2 || undefined, {
        timeoutMs: 20_000,
        what: 'both requests to wait',
      });
      expect(answered).toBe(0);
      await holder.release();
      return await Promise.all(pending);
    } finally {
      await holder.close();
    }
  };

  it('sends one webhook.test event to the endpoint, though it did not subscribe to it: signed with its secret, recorded delivered, listed; a replay of the key sends nothing more', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/tested', ['run.completed']);
    // Another endpoint of the tenant, subscribed to every event type: the test is not for it.
    const bystander = await createEndpoint(stack, t.admin, { url: `${receiver.base}/tested-bystander`, events: ['run.completed', 'run.failed', 'approval.requested', 'webhook_endpoint.disabled'] });
    expect(bystander.status, bystander.text).toBe(201);
    const counted = await metric();
    const key = randomUUID();
    const res = await sendTest(t.admin, t.endpoint.id, key);
    expect(res.status, res.text).toBe(202);
    expect(await rows(bystander.json.id)).toEqual([]);
    expect(res.json).toMatchObject({ event_type: 'webhook.test', status: 'pending', attempts: 0, resends: 0, resent_at: null });
    expect(res.json.payload).toMatchObject({ type: 'webhook.test', data: { endpoint_id: t.endpoint.id } });
    expect(typeof res.json.payload.data.message).toBe('string');
    const delivered = await settledAs(t.admin, t.endpoint.id, res.json.id, 'delivered');
    expect(delivered).toMatchObject({ attempts: 1, last_status_code: 200, event_type: 'webhook.test' });
    // What the receiver got verifies with the endpoint's secret, as a real event would; its webhook-id is the answer's id.
    const got = receiver.received.filter((r) => r.path === '/tested');
    expect(got).toHaveLength(1);
    expect(got[0]!.headers['webhook-id']).toBe(res.json.id);
    const [message] = receiver.verified('/tested', t.endpoint.secret);
    expect(message).toEqual(res.json.payload);
    expect(message!.data).toEqual({ endpoint_id: t.endpoint.id, message: expect.any(String) });
    expect(got[0]!.body).not.toContain('whsec_');
    // The replay answers the stored 202 and inserts and sends nothing.
    const replay = await sendTest(t.admin, t.endpoint.id, key);
    expect(replay.status, replay.text).toBe(202);
    expect(replay.json).toEqual(res.json);
    expect(await rows(t.endpoint.id)).toHaveLength(1);
    expect(await metric()).toBe(counted + 1);
    // Once settled, another test may be sent: a new event, a new webhook-id.
    const again = await sendTest(t.admin, t.endpoint.id);
    expect(again.status, again.text).toBe(202);
    expect(again.json.id).not.toBe(res.json.id);
    await settledAs(t.admin, t.endpoint.id, again.json.id, 'delivered');
    expect(receiver.verified('/tested', t.endpoint.secret).map((m) => m.type)).toEqual(['webhook.test', 'webhook.test']);
    expect(receiver.received.filter((r) => r.path === '/tested-bystander')).toEqual([]);
  });

  it('is owed one attempt: a receiver answering 500 makes it failed at once, whatever WEBHOOK_MAX_ATTEMPTS', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/broken', ['run.completed']);
    receiver.plan('/broken', [500, 500, 500]);
    const res = await sendTest(t.admin, t.endpoint.id);
    expect(res.status, res.text).toBe(202);
    const failed = await settledAs(t.admin, t.endpoint.id, res.json.id, 'failed');
    expect(failed).toMatchObject({ attempts: 1, last_status_code: 500, next_attempt_at: null });
    expect(receiver.received.filter((r) => r.path === '/broken')).toHaveLength(1);
    // An admin may resend it (as any settled delivery): one attempt again, the receiver still answering 500.
    const resent = await api(stack, 'POST', `${ENDPOINTS}/${t.endpoint.id}/deliveries/${res.json.id}/resend`, { token: t.admin, headers: { 'Idempotency-Key': randomUUID() } });
    expect(resent.status, resent.text).toBe(202);
    await waitFor(async () => ((await rows(t.endpoint.id)).find((d) => d.id === res.json.id && d.status === 'failed' && d.attempts === 2) ? true : undefined), { timeoutMs: 30_000, what: 'the resent test event failed after one more attempt' });
    expect(receiver.received.filter((r) => r.path === '/broken')).toHaveLength(2);
  });

  it('is bounded: while a test event of the endpoint is pending, another is 409 webhook_test_pending and nothing is inserted', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/bounded', ['run.completed']);
    // A test event still owed (its attempt not due for an hour, no job): as one parked behind a slow receiver.
    const pendingId = randomUUID();
    const payload = { type: 'webhook.test', timestamp: '2026-12-04T00:00:00.000Z', data: { endpoint_id: t.endpoint.id, message: 'm' } };
    await stack.db.admin(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
       values ($1, $2, $3, 'webhook.test', $4, 'pending', 0, now() + interval '1 hour', now(), now())`,
      [pendingId, t.tenantId, t.endpoint.id, JSON.stringify(payload)],
    );
    const before = await rows(t.endpoint.id);
    const refused = await sendTest(t.admin, t.endpoint.id);
    expect(refused.status, refused.text).toBe(409);
    expect(refused.json.code).toBe('webhook_test_pending');
    expect(await rows(t.endpoint.id)).toEqual(before);
    // Another endpoint of the tenant is not bound by it.
    const second = await createEndpoint(stack, t.admin, { url: `${receiver.base}/bounded-2`, events: ['run.failed'] });
    expect(second.status, second.text).toBe(201);
    expect((await sendTest(t.admin, second.json.id)).status).toBe(202);
    // Settled, the bound no longer holds it back.
    await stack.db.admin(`update webhook_deliveries set status = 'failed', next_attempt_at = null where id = $1`, [pendingId]);
    const allowed = await sendTest(t.admin, t.endpoint.id);
    expect(allowed.status, allowed.text).toBe(202);
    await settledAs(t.admin, t.endpoint.id, allowed.json.id, 'delivered');
    expect(receiver.received.filter((r) => r.path === '/bounded')).toHaveLength(1);
  });

  it('holds under concurrent requests: two whose inserts would run together take turns on the endpoint row; one is sent, the other is 409 while its attempt is in flight', async () => {
    const slow = await holdingServer();
    try {
      const t = await tenantWithEndpoint(stack, receiver, '/concurrent', ['run.completed']);
      await stack.db.admin(`update webhook_endpoints set url = $1 where id = $2`, [slow.url, t.endpoint.id]);
      // Without the endpoint's row lock, both requests' inserts wait for the held table and then run together,
      // each counting no pending test (the other's not committed); with it, the second waits for the first's commit.
      const answers = await raceHeldDeliveries([() => sendTest(t.admin, t.endpoint.id), () => sendTest(t.admin, t.endpoint.id)]);
      expect(answers.map((a) => a.status).sort()).toEqual([202, 409]);
      expect(answers.find((a) => a.status === 409)!.json.code).toBe('webhook_test_pending');
      expect(await rows(t.endpoint.id)).toHaveLength(1);
      await slow.answerOne();
      await settledAs(t.admin, t.endpoint.id, answers.find((a) => a.status === 202)!.json.id, 'delivered');
      expect(slow.held).toHaveLength(1);
    } finally {
      await slow.close();
    }
  });

  const resend = (token: string, endpointId: string, deliveryId: string) =>
    api(stack, 'POST', `${ENDPOINTS}/${endpointId}/deliveries/${deliveryId}/resend`, { token, headers: { 'Idempotency-Key': randomUUID() } });

  /** A test event of the endpoint, sent through the route and failed (the receiver's `path` answers 500 once). */
  const failedTest = async (t: { admin: string; endpoint: { id: string } }, path: string) => {
    receiver.plan(path, [500]);
    const res = await sendTest(t.admin, t.endpoint.id);
    expect(res.status, res.text).toBe(202);
    await settledAs(t.admin, t.endpoint.id, res.json.id, 'failed');
    return res.json.id as string;
  };

  it("bounds a resent test event as a new one: resending a failed webhook.test while another test of the endpoint is pending is 409 webhook_test_pending, and nothing changes", async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/resend-bounded', ['run.completed']);
    const failedId = await failedTest(t, '/resend-bounded');
    // Another test event still owed (its attempt not due for an hour, no job), as in the route's bound above.
    const pendingId = randomUUID();
    await stack.db.admin(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
       values ($1, $2, $3, 'webhook.test', $4, 'pending', 0, now() + interval '1 hour', now(), now())`,
      [pendingId, t.tenantId, t.endpoint.id, JSON.stringify({ type: 'webhook.test', timestamp: '2026-12-04T00:00:00.000Z', data: { endpoint_id: t.endpoint.id, message: 'm' } })],
    );
    const before = await rows(t.endpoint.id);
    const refused = await resend(t.admin, t.endpoint.id, failedId);
    expect(refused.status, refused.text).toBe(409);
    expect(refused.json.code).toBe('webhook_test_pending');
    expect(await rows(t.endpoint.id)).toEqual(before);
    // Settled, the bound no longer holds the resend back.
    await stack.db.admin(`update webhook_deliveries set status = 'failed', next_attempt_at = null where id = $1`, [pendingId]);
    const allowed = await resend(t.admin, t.endpoint.id, failedId);
    expect(allowed.status, allowed.text).toBe(202);
    await settledAs(t.admin, t.endpoint.id, failedId, 'delivered');
    expect(receiver.received.filter((r) => r.path === '/resend-bounded')).toHaveLength(2);
  });

  it('bounds a resent test event under concurrency too: a test and a resend of a failed test whose writes would run together take turns on the endpoint row; one is sent, the other is 409', async () => {
    const slow = await holdingServer();
    try {
      const t = await tenantWithEndpoint(stack, receiver, '/resend-concurrent', ['run.completed']);
      const failedId = await failedTest(t, '/resend-concurrent');
      await stack.db.admin(`update webhook_endpoints set url = $1 where id = $2`, [slow.url, t.endpoint.id]);
      const before = await rows(t.endpoint.id);
      // Without the endpoint's row lock, the resend's update and the test's insert wait for the held table and
      // then run together, each seeing no other test pending.
      const answers = await raceHeldDeliveries([() => resend(t.admin, t.endpoint.id, failedId), () => sendTest(t.admin, t.endpoint.id)]);
      expect(answers.map((a) => a.status).sort()).toEqual([202, 409]);
      expect(answers.find((a) => a.status === 409)!.json.code).toBe('webhook_test_pending');
      const after = await rows(t.endpoint.id);
      expect(after.filter((d) => d.status === 'pending')).toHaveLength(1);
      // The refused one changed nothing: a refused resend leaves its row failed; a refused test inserted none.
      expect(after.length - before.length + after.filter((d) => d.id === failedId && d.status === 'pending').length).toBe(1);
      await slow.answerOne();
      await waitFor(async () => ((await rows(t.endpoint.id)).every((d) => d.status !== 'pending') ? true : undefined), { timeoutMs: 30_000, what: 'the sent test event to settle' });
      expect(slow.held).toHaveLength(1);
    } finally {
      await slow.close();
    }
  });

  it('refused, and nothing changes: another tenant (404), an unknown endpoint (404), a non-admin (403), no Idempotency-Key (400), a disabled endpoint (409); webhook.test cannot be subscribed to (422)', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/refusals', ['run.completed']);
    const other = await stack.token({ tenantId: newTenant(), sub: 'admin-other', roles: ['admin'] });
    const approver = await stack.token({ tenantId: t.tenantId, sub: 'user-1', roles: ['approver'] });
    expect((await sendTest(other, t.endpoint.id)).status).toBe(404);
    expect((await sendTest(t.admin, randomUUID())).status).toBe(404);
    expect((await sendTest(approver, t.endpoint.id)).status).toBe(403);
    expect((await sendTest(t.admin, t.endpoint.id, null)).status).toBe(400);
    // A malformed id names no endpoint: 404, as for every route's path parameters.
    expect((await sendTest(t.admin, 'not-a-uuid')).status).toBe(404);
    expect((await api(stack, 'POST', `${ENDPOINTS}/${t.endpoint.id}/disable`, { token: t.admin })).status).toBe(200);
    const disabled = await sendTest(t.admin, t.endpoint.id);
    expect(disabled.status, disabled.text).toBe(409);
    expect(disabled.json.code).toBe('webhook_endpoint_disabled');
    expect(await rows(t.endpoint.id)).toEqual([]);
    // Not an event type to subscribe to: nothing but this route emits it.
    const subscribed = await createEndpoint(stack, t.admin, { url: `${receiver.base}/refusals-2`, events: ['webhook.test'] });
    expect(subscribed.status, subscribed.text).toBe(422);
    expect(receiver.received.filter((r) => r.path.startsWith('/refusals'))).toHaveLength(0);
  });
  // An endpoint with months of deliveries, while another tenant's receiver is down (a backlog of pending
  // deliveries, platform-wide): the test's bound (one pending webhook.test of the endpoint) must read its
  // few candidate rows, not the endpoint's history through (tenant, endpoint, created_at, id) nor every
  // pending delivery of the platform through the pending index, filtering row by row.
  it("the pending-test bound reads the endpoint's pending test events only, not its history or the platform's pending backlog", { timeout: 120_000 }, async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/test-history', ['run.completed']);
    const down = await tenantWithEndpoint(stack, receiver, '/test-backlog', ['run.completed']);
    // Not due for a day: the redelivery pass leaves the backlog alone.
    await stack.db.admin(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, last_status_code, next_attempt_at, created_at, updated_at)
       select gen_random_uuid(), t.tenant_id, t.endpoint_id, 'run.completed', '{}', t.status, 1, case when t.status = 'pending' then 503 else 200 end,
              case when t.status = 'pending' then now() + interval '1 day' end, now() - interval '30 days' + g * interval '20 seconds', now()
         from generate_series(1, 50000) g,
              (values ($1::uuid, $2::uuid, 'delivered'), ($3::uuid, $4::uuid, 'pending')) as t(tenant_id, endpoint_id, status)`,
      [t.tenantId, t.endpoint.id, down.tenantId, down.endpoint.id],
    );
    await stack.db.admin('analyze webhook_deliveries');
    // The statement as the ORM sends it: its \`?\` placeholders numbered.
    let n = 0;
    const sql = inlineStatement({ text: INSERT_TEST.replace(/\?/g, () => `$${++n}`), values: [t.tenantId, TEST_EVENT_MESSAGE, t.tenantId, t.endpoint.id, WEBHOOK_TEST_MAX_PENDING] });
    // Run as planned, and rolled back (no test event is inserted).
    const results = (await stack.db.admin(`begin; explain (analyze, format json) ${sql}; rollback`)) as unknown as Array<{ rows: any[] }>;
    const nodes = planNodes(results[1]!.rows[0]['QUERY PLAN'][0].Plan);
    const filteredOut = nodes.reduce((n, node) => n + (node['Rows Removed by Filter'] ?? 0) + (node['Rows Removed by Index Recheck'] ?? 0), 0);
    expect({ filteredOut, scans: nodes.filter((n) => n['Relation Name'] === 'webhook_deliveries').map((n) => n['Index Name'] ?? n['Node Type']) }).toMatchObject({ filteredOut: 0 });
    // And the request itself is sent.
    expect((await sendTest(t.admin, t.endpoint.id)).status).toBe(202);
  });
});

/** A receiver that holds every request until answered: a test event sent to it stays pending meanwhile. */
async function holdingServer() {
  const held: ServerResponse[] = [];
  const server = createServer((req, res) => {
    req.resume();
    held.push(res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    held,
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/held`,
    /** Waits for the one request expected, and answers every held one 204. */
    async answerOne() {
      await waitFor(() => (held.length === 1 ? true : undefined), { timeoutMs: 30_000, what: 'the test event to reach the holding receiver' });
      for (const res of held) res.writeHead(204).end();
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Plan nodes of a JSON plan, depth first. */
function planNodes(plan: any, out: any[] = []): any[] {
  out.push(plan);
  for (const child of plan.Plans ?? []) planNodes(child, out);
  return out;
}
