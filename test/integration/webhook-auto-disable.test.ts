/**
 * Automatic disabling of a failing webhook endpoint, and its re-enabling by the tenant (ADR 0013),
 * against the real stack: PostgreSQL as the application role, Redis, a spawned worker process and a
 * real node:http receiver answering 500. Time passes honestly: WEBHOOK_DISABLE_AFTER is a second and
 * the retries 50 ms apart at first, and each test polls until what it waits for happened.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { api, CLASS_A_SUBMISSION, newTenant, type TestStack, type WorkerHandle } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { backendPid, countBlockedBy } from '../helpers/lock-graph.ts';
import { holdTable } from '../helpers/table-lock.ts';
import { enqueueDeliveries, WEBHOOK_QUEUE } from '../../src/platform/webhooks/delivery.ts';
import { enabledEndpointsLockKey } from '../../src/platform/webhooks/webhook-endpoints.routes.ts';
import { createEndpoint, ENDPOINTS, startWebhookStack, stopWebhookStack, submit, tenantWithEndpoint, waitRun, type Receiver } from '../helpers/webhooks.ts';

/** More failures than any test makes attempts: the receiver answers 500 until the test says otherwise. */
const ALWAYS_500 = Array.from({ length: 100 }, () => 500);

describe('webhook endpoints that keep failing are disabled; the tenant re-enables them', () => {
  let stack: TestStack;
  let receiver: Receiver;
  let worker: WorkerHandle;

  beforeAll(async () => {
    ({ stack, receiver, worker } = await startWebhookStack({ WEBHOOK_RETRY_BASE: '50ms', WEBHOOK_MAX_ATTEMPTS: '12', WEBHOOK_DISABLE_AFTER: '1s', WEBHOOK_MAX_ENDPOINTS: '3' }, { WORKER_METRICS_PORT: '0' }));
  }, 120_000);

  afterAll(() => stopWebhookStack(stack, receiver));

  const endpoint = async (token: string, id: string) => {
    const res = await api(stack, 'GET', `${ENDPOINTS}/${id}`, { token });
    expect(res.status, res.text).toBe(200);
    return res.json;
  };
  const enable = (token: string, id: string) => api(stack, 'POST', `${ENDPOINTS}/${id}/enable`, { token, headers: { 'Idempotency-Key': randomUUID() } });
  const deliveries = async (token: string, id: string) => (await api(stack, 'GET', `${ENDPOINTS}/${id}/deliveries`, { token })).json.items as { id: string; status: string; event_type: string; last_error: string | null; payload: { data: Record<string, unknown> } }[];

  it("is disabled ('failing') at a failed attempt WEBHOOK_DISABLE_AFTER past its first failure; the tenant's other endpoint hears webhook_endpoint.disabled; re-enabled, it gets new events again", async () => {
    receiver.plan('/dead', [...ALWAYS_500]);
    // The dead endpoint subscribes to its own disabling too: it must not be sent it.
    const t = await tenantWithEndpoint(stack, receiver, '/dead', ['run.completed', 'webhook_endpoint.disabled']);
    const watch = await createEndpoint(stack, t.admin, { url: `${receiver.base}/watch`, events: ['webhook_endpoint.disabled'] });
    expect(watch.status, watch.text).toBe(201);
    const runId = await submit(stack, t.admin, CLASS_A_SUBMISSION);
    await waitRun(stack, t.admin, runId, ['completed']);

    const disabled = await waitFor(
      async () => {
        const e = await endpoint(t.admin, t.endpoint.id);
        return e.enabled === false ? e : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 100, what: 'the failing endpoint to be disabled' },
    );
    expect(disabled).toMatchObject({ enabled: false, disabled_reason: 'failing' });
    expect(Date.parse(disabled.disabled_at) - Date.parse(disabled.failing_since)).toBeGreaterThanOrEqual(1000);
    // The delivery whose attempt disabled it ended with it (the same statement): failed, no attempt due, that attempt logged once.
    const sentBefore = receiver.received.filter((r) => r.path === '/dead').length;
    const [given] = (await stack.db.admin(`select id, status, attempts, next_attempt_at, last_status_code, last_attempt_at, jsonb_array_length(attempt_log) as logged from webhook_deliveries where endpoint_id = $1`, [t.endpoint.id])).rows;
    expect(given).toMatchObject({ status: 'failed', attempts: sentBefore, logged: sentBefore, next_attempt_at: null, last_status_code: 500 });
    expect(given.last_attempt_at.getTime()).toBe(Date.parse(disabled.disabled_at));
    // The receiver failed every attempt; it was still tried until the disabling one.
    expect(receiver.received.filter((r) => r.path === '/dead').length).toBeGreaterThan(1);
    // Operators see it: a warning naming the tenant and endpoint (written after the commit, so awaited), and the worker's counter (counted before it).
    const warning = await waitFor(
      () =>
        worker
          .output()
          .split('\n')
          .find((l) => l.includes('"ops_event":"webhook_endpoint_auto_disabled"') && l.includes(t.endpoint.id)),
      { what: 'the worker to log the disabling' },
    );
    expect(warning).toContain(`"tenant_id":"${t.tenantId}"`);
    expect(JSON.parse(warning).level).toBe(40);
    const port = worker.output().match(/"worker metrics listening".*?"metrics_port":(\d+)|"metrics_port":(\d+).*?"worker metrics listening"/);
    const metrics = await (await fetch(`http://127.0.0.1:${port?.[1] ?? port?.[2]}/metrics`)).text();
    expect(metrics.split('\n')).toContain('dealix_webhook_endpoints_auto_disabled_total 1');

    // The other endpoint is told, signed with its own secret; the dead one gets nothing of it.
    const told = await waitFor(() => receiver.verified('/watch', watch.json.secret).find((m) => m.type === 'webhook_endpoint.disabled'), { timeoutMs: 30_000, what: 'webhook_endpoint.disabled at /watch' });
    expect(told.data).toEqual({ endpoint_id: t.endpoint.id, url: new URL(receiver.base).origin, reason: 'failing', failing_since: disabled.failing_since, disabled_at: disabled.disabled_at });
    expect(receiver.received.filter((r) => r.path === '/dead' && r.body.includes('webhook_endpoint.disabled'))).toHaveLength(0);
    expect((await deliveries(t.admin, t.endpoint.id)).map((d) => d.event_type)).toEqual(['run.completed']);


    // The receiver is fixed; the admin re-enables the endpoint.
    receiver.plan('/dead', []);
    const enabled = await enable(t.admin, t.endpoint.id);
    expect(enabled.status, enabled.text).toBe(200);
    expect(enabled.json).toMatchObject({ id: t.endpoint.id, enabled: true, disabled_reason: null, disabled_at: null, failing_since: null });
    const next = await submit(stack, t.admin, CLASS_A_SUBMISSION);
    await waitRun(stack, t.admin, next, ['completed']);
    const got = await waitFor(() => receiver.verified('/dead', t.endpoint.secret).find((m) => m.data.run_id === next), { timeoutMs: 30_000, what: 'the new event at the re-enabled endpoint' });
    expect(got.type).toBe('run.completed');
    // The delivery given up while it was disabled is not sent again.
    expect(receiver.received.filter((r) => r.path === '/dead' && r.body.includes(runId))).toHaveLength(sentBefore);
    expect((await deliveries(t.admin, t.endpoint.id)).find((d) => d.id === given!.id)).toMatchObject({ status: 'failed' });
  });

  it("webhook_endpoint.disabled names the disabled endpoint by its origin only: a token in its path or query is not handed to the tenant's other receivers", async () => {
    // Receivers put their credential in the URL: in the query (`?token=…`, Zapier- and Pipedream-style hooks) or in
    // the path (Slack's /services/T…/B…/<secret>, Discord's /api/webhooks/<id>/<token>); the tenant's other endpoints
    // are other parties. The event carried the URL whole, then without its query only: the watching receiver still got
    // the path's token. Now the origin, as the log lines name an endpoint (webhook_endpoint_url_changed, _deleted).
    const pathToken = `ptok-${randomUUID()}`;
    const queryToken = `qtok-${randomUUID()}`;
    const path = `/leaky/services/T0/B0/${pathToken}?token=${queryToken}#frag`;
    receiver.plan(path.split('#')[0]!, [...ALWAYS_500]);
    const t = await tenantWithEndpoint(stack, receiver, path, ['run.completed']);
    const watch = await createEndpoint(stack, t.admin, { url: `${receiver.base}/watch-leaky`, events: ['webhook_endpoint.disabled'] });
    expect(watch.status, watch.text).toBe(201);
    const runId = await submit(stack, t.admin, CLASS_A_SUBMISSION);
    await waitRun(stack, t.admin, runId, ['completed']);
    const told = await waitFor(() => receiver.verified('/watch-leaky', watch.json.secret).find((m) => m.type === 'webhook_endpoint.disabled'), { timeoutMs: 30_000, what: 'webhook_endpoint.disabled at /watch-leaky' });
    expect(told.data).toMatchObject({ endpoint_id: t.endpoint.id, url: new URL(receiver.base).origin });
    const toWatcher = receiver.received.filter((r) => r.path === '/watch-leaky').map((r) => r.body).join('');
    expect(toWatcher).not.toContain(queryToken);
    expect(toWatcher).not.toContain(pathToken);
    // The tenant's admin still reads the whole URL on the endpoint itself.
    expect((await endpoint(t.admin, t.endpoint.id)).url).toBe(`${receiver.base}${path}`);
  });

  it('a 2xx in between starts the count again: failures more than WEBHOOK_DISABLE_AFTER apart, with a success between them, do not disable', async () => {
    receiver.plan('/flaps', [500, 200]);
    const t = await tenantWithEndpoint(stack, receiver, '/flaps', ['run.completed']);
    const first = await submit(stack, t.admin, CLASS_A_SUBMISSION);
    await waitRun(stack, t.admin, first, ['completed']);
    await waitFor(async () => (await deliveries(t.admin, t.endpoint.id))[0]?.status === 'delivered', { timeoutMs: 30_000, what: 'the first event, on its second attempt' });
    expect((await endpoint(t.admin, t.endpoint.id)).failing_since).toBeNull();
    // More than WEBHOOK_DISABLE_AFTER after that first failure, by the database's clock …
    const [firstFailure] = (await stack.db.admin(`select (attempt_log->0->>'at')::timestamptz as at from webhook_deliveries where endpoint_id = $1`, [t.endpoint.id])).rows;
    await waitFor(async () => (await stack.db.admin(`select now() > $1::timestamptz + interval '1 second' as past`, [firstFailure.at])).rows[0].past, { what: 'WEBHOOK_DISABLE_AFTER to pass' });
    // … the next event fails twice, then succeeds: its failures are counted from its own first one.
    receiver.plan('/flaps', [500, 500]);
    const second = await submit(stack, t.admin, CLASS_A_SUBMISSION);
    await waitRun(stack, t.admin, second, ['completed']);
    await waitFor(async () => (await deliveries(t.admin, t.endpoint.id)).every((d) => d.status === 'delivered'), { timeoutMs: 30_000, what: 'the second event, on its third attempt' });
    expect(await endpoint(t.admin, t.endpoint.id)).toMatchObject({ enabled: true, disabled_reason: null, disabled_at: null, failing_since: null });
    expect(receiver.received.filter((r) => r.path === '/flaps')).toHaveLength(5);
  });

  it('a failure past WEBHOOK_DISABLE_AFTER by the snapshot, whose endpoint a 2xx cleared meanwhile (committed while the attempt waited for its row), neither disables it nor gives its delivery up', async () => {
    // The retry is held at the receiver until the first attempt's record has been read: with the test's 50 ms
    // backoff it could otherwise be delivered (and recorded) before the poll below looks.
    receiver.plan('/late', [500, 'hold']);
    const t = await tenantWithEndpoint(stack, receiver, '/late', ['run.completed']);
    // Failing for an hour: its next failure would disable it …
    await stack.db.admin(`update webhook_endpoints set failing_since = now() - interval '1 hour' where id = $1`, [t.endpoint.id]);
    // … but another attempt's 2xx is being recorded: it cleared failing_since and holds the row until its commit.
    const success = new pg.Client({ connectionString: stack.db.adminUrl });
    await success.connect();
    const successPid = await backendPid((sql, params) => success.query(sql, params));
    try {
      await success.query('begin');
      await success.query(`update webhook_endpoints set failing_since = null where id = $1`, [t.endpoint.id]);
      const runId = await submit(stack, t.admin, CLASS_A_SUBMISSION);
      await waitRun(stack, t.admin, runId, ['completed']);
      // By the lock graph (blocked by this transaction), read from pg_locks: pg_stat_activity, read inside this
      // open transaction, would keep its first reading to the end (a snapshot per transaction).
      await waitFor(
        async () => receiver.received.some((r) => r.path === '/late') && (await countBlockedBy((sql, params) => success.query(sql, params), successPid)) > 0,
        { what: 'the failed attempt to wait for the endpoint row' },
      );
      await success.query('commit');
    } finally {
      await success.query('rollback').catch(() => {});
      await success.end();
    }
    // Recorded as the first failure since that 2xx: the endpoint stays enabled, the delivery is retried (and then delivered).
    await waitFor(() => receiver.received.filter((r) => r.path === '/late').length === 2, { what: 'the retry to reach the receiver (held there)' });
    const [after] = (await stack.db.admin(`select e.enabled, e.failing_since, d.status, d.attempts from webhook_endpoints e join webhook_deliveries d on d.endpoint_id = e.id where e.id = $1`, [t.endpoint.id])).rows;
    expect(after).toMatchObject({ enabled: true, status: 'pending', attempts: 1 });
    expect(after.failing_since).not.toBeNull();
    receiver.release();
    await waitFor(async () => (await deliveries(t.admin, t.endpoint.id))[0]?.status === 'delivered', { timeoutMs: 30_000, what: 'the retry to deliver it' });
    expect(await endpoint(t.admin, t.endpoint.id)).toMatchObject({ enabled: true, disabled_reason: null, failing_since: null });
  });

  it("an attempt that sent nothing (its endpoint disabled when it read it) is no failure of the endpoint: re-enabled before that attempt is recorded, it is not marked failing", async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/ghost', ['run.completed']);
    expect((await api(stack, 'POST', `${ENDPOINTS}/${t.endpoint.id}/disable`, { token: t.admin, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);
    // A delivery still pending from before the disable.
    const id = randomUUID();
    await stack.db.admin(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
       values ($1, $2, $3, 'run.completed', $4, 'pending', 0, now(), now(), now())`,
      [id, t.tenantId, t.endpoint.id, { type: 'run.completed', timestamp: '2026-12-04T00:00:00.000Z', data: { workflow: 'golden-path', run_id: randomUUID(), status: 'completed', correlation_id: 'c-1', ended_at: '2026-12-04T00:00:00.000Z' } }],
    );
    // Its attempt reads the endpoint disabled (so sends nothing), and is held before it is recorded; the admin re-enables meanwhile.
    const held = await holdTable(stack.db.adminUrl, 'webhook_deliveries');
    try {
      await enqueueDeliveries(stack.container.queues.get(WEBHOOK_QUEUE)!, t.tenantId, [id]);
      await held.waiting('the attempt to be recorded');
      const enabled = await enable(t.admin, t.endpoint.id);
      expect(enabled.status, enabled.text).toBe(200);
      await held.release();
    } finally {
      await held.close();
    }
    await waitFor(async () => (await deliveries(t.admin, t.endpoint.id)).find((d) => d.id === id && d.status === 'failed'), { what: 'the delivery to be given up' });
    expect(receiver.received.filter((r) => r.path === '/ghost')).toHaveLength(0);
    expect(await endpoint(t.admin, t.endpoint.id)).toMatchObject({ enabled: true, failing_since: null });
  });

  it('enable is for admins of the tenant only (403, 404), and counts against WEBHOOK_MAX_ENDPOINTS (409); a manual disable says so', async () => {
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin-1', roles: ['admin'] });
    const user = await stack.token({ tenantId, sub: 'user-1', roles: ['approver'] });
    const other = await stack.token({ tenantId: newTenant(), sub: 'admin-1', roles: ['admin'] });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await createEndpoint(stack, admin, { url: `${receiver.base}/cap-${i}`, events: ['run.completed'] });
      expect(res.status, res.text).toBe(201);
      ids.push(res.json.id);
    }
    const off = await api(stack, 'POST', `${ENDPOINTS}/${ids[0]}/disable`, { token: admin, headers: { 'Idempotency-Key': randomUUID() } });
    expect(off.json).toMatchObject({ enabled: false, disabled_reason: 'manual' });
    expect(off.json.disabled_at).not.toBeNull();
    // Its place is taken by a new endpoint: enabling it again would make four.
    expect((await createEndpoint(stack, admin, { url: `${receiver.base}/cap-3`, events: ['run.completed'] })).status).toBe(201);
    const refused = await enable(admin, ids[0]!);
    expect(refused.status, refused.text).toBe(409);
    expect(refused.headers.get('content-type')).toMatch(/application\/problem\+json/);
    expect(refused.json).toMatchObject({ code: 'webhook_endpoint_limit' });
    expect(await endpoint(admin, ids[0]!)).toMatchObject({ enabled: false, disabled_reason: 'manual' });

    expect((await enable(user, ids[0]!)).status).toBe(403);
    expect((await enable(other, ids[0]!)).status).toBe(404);
    expect((await enable(admin, randomUUID())).status).toBe(404);

    // A place freed, it is enabled; enabling it again changes nothing.
    expect((await api(stack, 'POST', `${ENDPOINTS}/${ids[1]}/disable`, { token: admin, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);
    const back = await enable(admin, ids[0]!);
    expect(back.status, back.text).toBe(200);
    expect(back.json).toMatchObject({ enabled: true, disabled_reason: null, disabled_at: null, failing_since: null });
    const again = await enable(admin, ids[0]!);
    expect(again.status, again.text).toBe(200);
    expect(again.json).toEqual(back.json);
    const list = await api(stack, 'GET', ENDPOINTS, { token: admin });
    expect(list.json.items.map((e: { id: string; enabled: boolean; disabled_reason: string | null }) => [e.id, e.enabled, e.disabled_reason]).filter(([id]: [string]) => id === ids[1])).toEqual([[ids[1], false, 'manual']]);
  });

  it('an enable and a create for the last place wait for a concurrent enable holding it to commit, then answer 409: they take the same per-tenant lock', async () => {
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin-1', roles: ['admin'] });
    const create = async (i: number) => (await createEndpoint(stack, admin, { url: `${receiver.base}/race-${i}`, events: ['run.completed'] })).json.id as string;
    const disable = async (id: string) => expect((await api(stack, 'POST', `${ENDPOINTS}/${id}/disable`, { token: admin, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);
    // Two disabled endpoints and two enabled: room under the cap (3) for one more.
    const [held, waiting] = [await create(0), await create(1)];
    await disable(held);
    await disable(waiting);
    await create(2);
    await create(3);
    // A concurrent enable, stopped between its update and its commit (the race's window, held open rather
    // than hoped for): it takes the per-tenant lock as the routes do and the last place, uncommitted.
    const competitor = new pg.Client({ connectionString: stack.db.adminUrl });
    await competitor.connect();
    try {
      await competitor.query('begin');
      await competitor.query('select pg_advisory_xact_lock(hashtextextended($1, 0))', [enabledEndpointsLockKey(tenantId)]);
      await competitor.query(`update webhook_endpoints set enabled = true, disabled_at = null, disabled_reason = null where tenant_id = $1 and id = $2`, [tenantId, held]);
      // Still three enabled as a snapshot sees them: without the lock, each would count two and take the place.
      const settled: number[] = [];
      const answers = [enable(admin, waiting), createEndpoint(stack, admin, { url: `${receiver.base}/race-4`, events: ['run.completed'] })].map((p, i) => p.finally(() => settled.push(i)));
      await waitFor(
        async () => {
          const { rows } = await competitor.query(`select count(*)::int as n from pg_locks where locktype = 'advisory' and not granted and database = (select oid from pg_database where datname = current_database())`);
          return rows[0].n + settled.length >= 2;
        },
        { what: 'the enable and the create to wait for the lock (or answer without it)' },
      );
      await competitor.query('commit');
      const [enabled, created] = await Promise.all(answers);
      expect(enabled!.status, enabled!.text).toBe(409);
      expect(created!.status, created!.text).toBe(409);
      expect([enabled!.json.code, created!.json.code]).toEqual(['webhook_endpoint_limit', 'webhook_endpoint_limit']);
    } finally {
      await competitor.query('rollback').catch(() => {});
      await competitor.end();
    }
    expect((await stack.db.admin(`select count(*)::int as n from webhook_endpoints where tenant_id = $1 and enabled`, [tenantId])).rows[0].n).toBe(3);
  });
});
