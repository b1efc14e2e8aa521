/**
 * Reading an endpoint's deliveries (ADR 0013) against the real stack: PostgreSQL as the application role,
 * Redis, a spawned worker and a real node:http receiver. The list's filters (status, event type,
 * creation time) across pages and the plans they run; one delivery with every attempt after retries.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, CLASS_A_SUBMISSION, newTenant, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { ENDPOINTS, webhookStackForTests, submit, tenantWithEndpoint, waitRun, type Receiver } from '../helpers/webhooks.ts';
import { CoalescingClient } from '../../src/platform/db/coalescing-client.ts';
import { inlineStatement } from '../../src/platform/db/statement-batch.ts';

const MAX_ATTEMPTS = 3;

describe('webhook deliveries: filters and attempt history', () => {
  const env = webhookStackForTests(MAX_ATTEMPTS);
  let stack: TestStack;
  let receiver: Receiver;
  beforeAll(() => void ({ stack, receiver } = env));

  const list = (token: string, endpointId: string, query: string) => api(stack, 'GET', `${ENDPOINTS}/${endpointId}/deliveries?${query}`, { token });

  /** Every page of the list under `query` (limit 2: several pages), the ids in order. */
  async function allPages(token: string, endpointId: string, query: string): Promise<string[]> {
    const ids: string[] = [];
    let cursor: string | null = null;
    for (let i = 0; i < 50; i++) {
      const res = await list(token, endpointId, `${query}&limit=2${cursor ? `&cursor=${cursor}` : ''}`);
      expect(res.status, res.text).toBe(200);
      ids.push(...res.json.items.map((d: { id: string }) => d.id));
      cursor = res.json.next_cursor;
      if (!cursor) return ids;
    }
    throw new Error('too many pages');
  }

  /** A delivery as the outbox writes it, settled or not, at `hour` (no job: nothing attempts it). */
  const insert = async (tenantId: string, endpointId: string, hour: number, status: string, eventType = 'run.completed') => {
    const id = randomUUID();
    const at = `2026-11-20T${String(hour).padStart(2, '0')}:00:00.000Z`;
    const payload = { type: eventType, timestamp: at, data: { workflow: 'golden-path', run_id: randomUUID(), status: 'completed', correlation_id: `c-${hour}`, ended_at: at } };
    await stack.db.admin(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
       values ($1, $2, $3, $4, $5, $6, 1, case when $6 = 'pending' then now() + interval '1 hour' end, $7, now())`,
      [id, tenantId, endpointId, eventType, JSON.stringify(payload), status, at],
    );
    return { id, hour, status, eventType, at };
  };

  it('the filters return exactly the matching deliveries, newest first, across pages; a cursor reads on under another filter', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/filters', ['run.completed', 'run.failed']);
    // Another endpoint of the tenant: none of its deliveries is listed under the first.
    const other = await api(stack, 'POST', ENDPOINTS, { token: t.admin, body: { url: `${receiver.base}/filters-other`, events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(other.status, other.text).toBe(201);
    const statuses = ['failed', 'delivered', 'pending', 'failed', 'delivered', 'failed', 'pending', 'delivered', 'failed', 'delivered'];
    const rows: Awaited<ReturnType<typeof insert>>[] = [];
    for (const [i, status] of statuses.entries()) rows.push(await insert(t.tenantId, t.endpoint.id, i + 1, status, i % 3 === 0 ? 'run.failed' : 'run.completed'));
    await insert(t.tenantId, other.json.id, 5, 'failed');
    const newestFirst = (pick: (r: (typeof rows)[number]) => boolean) => rows.filter(pick).reverse().map((r) => r.id);
    const cases: Array<[string, (r: (typeof rows)[number]) => boolean]> = [
      ['status=failed', (r) => r.status === 'failed'],
      ['status=pending', (r) => r.status === 'pending'],
      ['status=delivered', (r) => r.status === 'delivered'],
      ['status=failed,pending', (r) => r.status !== 'delivered'],
      ['status=failed&status=pending', (r) => r.status !== 'delivered'],
      ['status=failed&status=failed,delivered', (r) => r.status !== 'pending'],
      ['event_type=run.failed', (r) => r.eventType === 'run.failed'],
      ['event_type=webhook.test', () => false],
      ['created_after=2026-11-20T03:00:00Z&created_before=2026-11-20T08:00:00Z', (r) => r.hour > 3 && r.hour < 8],
      ['created_after=2026-11-20T03:00:00%2B01:00', (r) => r.hour > 2],
      // Unencoded, as a client that builds the URL by hand sends it: the query parser reads the `+` as a
      // space, which is taken back at that one place (before hh:mm at the end). The same rows as %2B.
      ['created_after=2026-11-20T03:00:00+01:00', (r) => r.hour > 2],
      ['created_after=2026-11-20T03:00:00+01:00&created_before=2026-11-20T09:30:00+01:30', (r) => r.hour > 2 && r.hour < 8],
      ['status=failed,pending&event_type=run.completed&created_before=2026-11-20T09:00:00Z', (r) => r.status !== 'delivered' && r.eventType === 'run.completed' && r.hour < 9],
      ['status=delivered,failed&created_after=2026-11-20T01:00:00Z', (r) => r.status !== 'pending' && r.hour > 1],
    ];
    for (const [query, pick] of cases) expect({ query, ids: await allPages(t.admin, t.endpoint.id, query) }).toEqual({ query, ids: newestFirst(pick) });
    // The items are the list's view: the failed filter shows failed ones only.
    const page = await list(t.admin, t.endpoint.id, 'status=failed&limit=1');
    expect(page.json.items).toHaveLength(1);
    expect(page.json.items[0]).toMatchObject({ status: 'failed', attempts: 1 });
    // A cursor is a position: the unfiltered list's cursor after the 6th newest reads on under a filter from there.
    const unfiltered = await list(t.admin, t.endpoint.id, 'limit=5');
    const after = await list(t.admin, t.endpoint.id, `status=failed&cursor=${unfiltered.json.next_cursor}`);
    expect(after.status, after.text).toBe(200);
    expect(after.json.items.map((d: { id: string }) => d.id)).toEqual(rows.filter((r) => r.status === 'failed' && r.hour < 6).reverse().map((r) => r.id));
  });

  it('a bad filter is refused (400 validation_failed, problem+json), naming it', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/bad-filters', ['run.completed']);
    for (const [query, path] of [
      ['status=bogus', 'status'],
      ['status=failed,bogus', 'status'],
      ['status=', 'status'],
      ['event_type=run.exploded', 'event_type'],
      ['created_after=yesterday', 'created_after'],
      ['created_before=2026-11-20', 'created_before'],
      // ISO 8601 that PostgreSQL cannot hold (year 0, an offset past ±15:59): a 400, not a 500.
      ['created_after=0000-06-01T00:00:00Z', 'created_after'],
      ['created_before=2026-11-20T05:00:00%2B20:00', 'created_before'],
      ['created_before=2026-11-20T05:00:00+20:00', 'created_before'],
      // A space (a `+` read as one) anywhere but before the offset's hh:mm stays refused.
      ['created_after=2026-11-20+05:00:00Z', 'created_after'],
      ['created_after=2026-11-20T05:00:00++01:00', 'created_after'],
      ['created_after=2026-11-20T05:00:00+0100', 'created_after'],
      ['created_after=+2026-11-20T05:00:00Z', 'created_after'],
      ['created_after=2026-11-20T05:00:00Z&created_before=2026-11-20T05:00:00Z', 'created_before'],
      ['sort=asc', '(root)'],
    ]) {
      const res = await list(t.admin, t.endpoint.id, query!);
      expect({ query, status: res.status }).toEqual({ query, status: 400 });
      expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(res.json.code).toBe('validation_failed');
      expect(res.json.errors.map((e: { path: string }) => e.path.split('.')[0])).toContain(path);
    }
  });

  it('the detail shows the message POSTed and every attempt after retries; another tenant, another endpoint, an unknown id: 404; a non-admin: 403', async () => {
    receiver.plan('/retried', [500, 503]);
    const t = await tenantWithEndpoint(stack, receiver, '/retried', ['run.completed']);
    const runId = await submit(stack, t.admin, CLASS_A_SUBMISSION);
    await waitRun(stack, t.admin, runId, ['completed']);
    const delivery = await waitFor(
      async () => (await list(t.admin, t.endpoint.id, 'status=delivered')).json?.items?.[0] as { id: string } | undefined,
      { timeoutMs: 30_000, what: 'the delivery to be delivered after two failures' },
    );
    const res = await api(stack, 'GET', `${ENDPOINTS}/${t.endpoint.id}/deliveries/${delivery.id}`, { token: t.admin });
    expect(res.status, res.text).toBe(200);
    expect(res.json).toMatchObject({ id: delivery.id, status: 'delivered', attempts: 3, last_status_code: 200, event_type: 'run.completed', payload: { type: 'run.completed', data: { run_id: runId } } });
    const log = res.json.attempt_log as Array<{ at: string; status_code: number | null; error: string | null; duration_ms: number }>;
    expect(log.map((a) => a.status_code)).toEqual([500, 503, 200]);
    expect(log.map((a) => a.error === null)).toEqual([false, false, true]);
    for (const a of log) {
      expect(new Date(a.at).toISOString()).toBe(a.at);
      expect(a.duration_ms).toBeGreaterThanOrEqual(0);
    }
    expect([...log].sort((a, b) => a.at.localeCompare(b.at))).toEqual(log);
    // What the receiver got is what the detail shows as the payload.
    expect(receiver.verified('/retried', t.endpoint.secret).at(-1)).toEqual(res.json.payload);
    expect(JSON.stringify(res.json)).not.toContain('whsec_');

    const foreign = await tenantWithEndpoint(stack, receiver, '/retried-foreign', ['run.completed']);
    const sibling = await api(stack, 'POST', ENDPOINTS, { token: t.admin, body: { url: `${receiver.base}/retried-sibling`, events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } });
    const other = await stack.token({ tenantId: newTenant(), sub: 'admin-other', roles: ['admin'] });
    const approver = await stack.token({ tenantId: t.tenantId, sub: 'user-1', roles: ['approver'] });
    for (const [token, endpointId, deliveryId, status] of [
      [other, t.endpoint.id, delivery.id, 404],
      [foreign.admin, foreign.endpoint.id, delivery.id, 404],
      [t.admin, sibling.json.id, delivery.id, 404],
      [t.admin, t.endpoint.id, randomUUID(), 404],
      [approver, t.endpoint.id, delivery.id, 403],
    ] as const) {
      const got = await api(stack, 'GET', `${ENDPOINTS}/${endpointId}/deliveries/${deliveryId}`, { token });
      expect(got.status, got.text).toBe(status);
    }
    expect((await list(approver, t.endpoint.id, 'status=failed')).status).toBe(403);
  });

  // An endpoint with a month of deliveries, nearly all delivered: the failed and pending filters read
  // only their own rows through their partial indexes, not the endpoint's whole history (nor, for `pending`,
  // every tenant's owed deliveries through the redelivery pass's index); an event type it rarely gets
  // (`webhook.test`, `run.failed`) is read through (tenant, endpoint, event_type, created_at, id), not by
  // walking the history within the window.
  it('the status and event type filters read their own deliveries only, not the endpoint history', { timeout: 120_000 }, async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/plan-history', ['run.completed']);
    await stack.db.admin(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
       select gen_random_uuid(), $1, $2, case g % 10000 when 2 then 'webhook.test' when 3 then 'run.failed' else 'run.completed' end, '{}',
              case when g % 10000 = 0 then 'failed' when g % 10000 = 1 then 'pending' else 'delivered' end, 1,
              case when g % 10000 = 1 then now() + interval '1 hour' end, now() - interval '30 days' + g * interval '20 seconds', now()
         from generate_series(1, 100000) g`,
      [t.tenantId, t.endpoint.id],
    );
    // Other tenants' backlog: owed deliveries across tenants (the redelivery pass's index, next_attempt_at, holds them all).
    const busy = await tenantWithEndpoint(stack, receiver, '/plan-backlog', ['run.completed']);
    await stack.db.admin(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
       select gen_random_uuid(), $1, $2, 'run.completed', '{}', 'pending', 0, now() + interval '1 hour', now() - g * interval '1 second', now()
         from generate_series(1, 5000) g`,
      [busy.tenantId, busy.endpoint.id],
    );
    await stack.db.admin('analyze webhook_deliveries');
    const originalQuery = CoalescingClient.prototype.query;
    const sent: { text: string; values: unknown[] }[] = [];
    CoalescingClient.prototype.query = function (this: CoalescingClient, config: any, values?: any, callback?: any) {
      if (typeof config === 'string' && /from webhook_deliveries where tenant_id = /.test(config) && Array.isArray(values)) sent.push({ text: config, values });
      return originalQuery.call(this, config, values, callback);
    };
    const queries = ['status=failed', 'status=pending', 'status=failed,pending', 'status=failed&created_after=2020-01-01T00:00:00Z', 'event_type=webhook.test', 'event_type=run.failed&created_after=2020-01-01T00:00:00Z'];
    const pages: Record<string, number> = {};
    try {
      for (const q of queries) {
        const res = await list(t.admin, t.endpoint.id, `${q}&limit=100`);
        expect(res.status, res.text).toBe(200);
        pages[q] = res.json.items.length;
      }
    } finally {
      CoalescingClient.prototype.query = originalQuery;
    }
    expect(pages).toEqual({
      'status=failed': 10,
      'status=pending': 10,
      'status=failed,pending': 20,
      'status=failed&created_after=2020-01-01T00:00:00Z': 10,
      'event_type=webhook.test': 10,
      'event_type=run.failed&created_after=2020-01-01T00:00:00Z': 10,
    });
    expect(sent).toHaveLength(queries.length);
    const used: string[][] = [];
    for (const s of sent) {
      const sql = inlineStatement({ text: s.text, values: s.values });
      const [result] = (await stack.db.admin(`explain (analyze, format json) ${sql}`)).rows as any[];
      const nodes = planNodes(result['QUERY PLAN'][0].Plan);
      const read = nodes.reduce((n, node) => n + (node['Rows Removed by Filter'] ?? 0) + (node['Rows Removed by Index Recheck'] ?? 0), 0);
      const indexes = [...new Set(nodes.map((n) => n['Index Name']).filter(Boolean))].sort();
      used.push(indexes);
      expect({ statement: s.text.slice(0, 200), filteredOut: read }, JSON.stringify(result['QUERY PLAN'][0].Plan)).toEqual({ statement: s.text.slice(0, 200), filteredOut: 0 });
    }
    const FAILED = 'webhook_deliveries_failed_index';
    const PENDING = 'webhook_deliveries_endpoint_pending_index';
    const EVENT_TYPE = 'webhook_deliveries_endpoint_event_type_index';
    expect(used).toEqual([[FAILED], [PENDING], [PENDING, FAILED].sort(), [FAILED], [EVENT_TYPE], [EVENT_TYPE]]);
  });
});

/** Plan nodes of a JSON plan, depth first. */
function planNodes(plan: any, out: any[] = []): any[] {
  out.push(plan);
  for (const child of plan.Plans ?? []) planNodes(child, out);
  return out;
}
