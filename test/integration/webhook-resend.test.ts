/**
 * An admin's resend of settled webhook deliveries (ADR 0013, *Resending*) against the real stack:
 * PostgreSQL as the application role, Redis, a spawned worker process and a real node:http receiver.
 * A delivery given up while the receiver was down is sent again — the same event, the same
 * `webhook-id`, verified with the endpoint's secret — once it is back; one by id, or an endpoint's
 * window of them (the bulk "recover").
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { api, CLASS_A_SUBMISSION, newTenant, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { ENDPOINTS, webhookStackForTests, submit, tenantWithEndpoint, waitRun, type Receiver } from '../helpers/webhooks.ts';
import { CoalescingClient } from '../../src/platform/db/coalescing-client.ts';
import { inlineStatement } from '../../src/platform/db/statement-batch.ts';
import { deliveryJobId } from '../../src/platform/queue/job-ids.ts';
import { WEBHOOK_DELIVERY_JOB, WEBHOOK_QUEUE, WEBHOOK_REDELIVERY_JOB, webhookHandlers } from '../../src/platform/webhooks/delivery.ts';
import pino from 'pino';
import pg from 'pg';
import { webhookResolver } from '../../src/container.ts';

/** Three: a delivered delivery (one attempt) resent has attempts left under it, so its one attempt is the resend's rule, not the cap. */
const MAX_ATTEMPTS = 3;

describe('webhook resend', () => {
  const env = webhookStackForTests(MAX_ATTEMPTS);
  let stack: TestStack;
  let receiver: Receiver;
  beforeAll(() => void ({ stack, receiver } = env));

  const row = async (id: string) =>
    (await stack.db.admin(`select status, attempts, attempt_log, resends, resent_at, next_attempt_at, updated_at from webhook_deliveries where id = $1`, [id])).rows[0] as {
      status: string;
      attempts: number;
      attempt_log: unknown[];
      resends: number;
      resent_at: Date | null;
      next_attempt_at: Date | null;
      updated_at: Date;
    };

  const resend = (token: string, endpointId: string, deliveryId: string, key: string | null = randomUUID()) =>
    api(stack, 'POST', `${ENDPOINTS}/${endpointId}/deliveries/${deliveryId}/resend`, { token, headers: key ? { 'Idempotency-Key': key } : {} });

  const metric = async (series: string) => {
    const line = (await api(stack, 'GET', '/metrics')).text.split('\n').find((l) => l.startsWith(`${series} `));
    return line === undefined ? 0 : Number(line.slice(series.length + 1));
  };
  const SINGLE = 'dealix_webhook_deliveries_resent_total{mode="single"}';
  const BULK = 'dealix_webhook_deliveries_resent_total{mode="bulk"}';

  const recover = (token: string, endpointId: string, body: unknown, key: string = randomUUID()) =>
    api(stack, 'POST', `${ENDPOINTS}/${endpointId}/deliveries/resend`, { token, body, headers: { 'Idempotency-Key': key } });

  /** The endpoint's one delivery once it is `status` (the list's view). */
  const settled = (token: string, endpointId: string, status: string) =>
    waitFor(
      async () => {
        const res = await api(stack, 'GET', `${ENDPOINTS}/${endpointId}/deliveries?status=${status}`, { token });
        return res.json?.items?.[0];
      },
      { timeoutMs: 30_000, what: `a delivery of ${endpointId} to be ${status}` },
    );

  /** A tenant whose run.completed delivery to `path` was given up: the receiver answered 500 WEBHOOK_MAX_ATTEMPTS times. */
  async function givenUp(path: string) {
    receiver.plan(path, Array(MAX_ATTEMPTS).fill(500));
    const t = await tenantWithEndpoint(stack, receiver, path, ['run.completed']);
    const runId = await submit(stack, t.admin, CLASS_A_SUBMISSION);
    await waitRun(stack, t.admin, runId, ['completed']);
    const delivery = await settled(t.admin, t.endpoint.id, 'failed');
    expect(delivery).toMatchObject({ attempts: MAX_ATTEMPTS, last_status_code: 500, resends: 0, resent_at: null });
    return { ...t, runId, delivery: delivery as { id: string } };
  }

  it('a delivery given up while the receiver was down is resent once it is back: the same webhook-id, verified with the secret, delivered, every attempt kept; a replay of the key resends nothing', async () => {
    const t = await givenUp('/recovered');
    const counted = await metric(SINGLE);
    const key = randomUUID();
    const res = await resend(t.admin, t.endpoint.id, t.delivery.id, key);
    expect(res.status, res.text).toBe(202);
    expect(res.json).toMatchObject({ id: t.delivery.id, status: 'pending', attempts: MAX_ATTEMPTS, resends: 1, delivered_at: null });
    expect(res.json.resent_at).not.toBeNull();
    const delivered = await settled(t.admin, t.endpoint.id, 'delivered');
    expect(delivered).toMatchObject({ id: t.delivery.id, attempts: MAX_ATTEMPTS + 1, last_status_code: 200, next_attempt_at: null, resends: 1 });
    const got = receiver.received.filter((r) => r.path === '/recovered');
    expect(got).toHaveLength(MAX_ATTEMPTS + 1);
    // The same event: one webhook-id, every message signed with the endpoint's secret.
    expect(new Set(got.map((r) => r.headers['webhook-id']))).toEqual(new Set([t.delivery.id]));
    expect(receiver.verified('/recovered', t.endpoint.secret).map((m) => [m.type, m.data.run_id])).toEqual(Array(MAX_ATTEMPTS + 1).fill(['run.completed', t.runId]));
    const stored = await row(t.delivery.id);
    expect((stored.attempt_log as Array<{ status_code: number }>).map((a) => a.status_code)).toEqual([...Array(MAX_ATTEMPTS).fill(500), 200]);
    // The replay answers what the first answered and changes nothing: the delivery is not made pending again.
    const replay = await resend(t.admin, t.endpoint.id, t.delivery.id, key);
    expect(replay.status, replay.text).toBe(202);
    expect(replay.json).toEqual(res.json);
    expect(await row(t.delivery.id)).toMatchObject({ status: 'delivered', resends: 1, attempts: MAX_ATTEMPTS + 1 });
    expect(await metric(SINGLE)).toBe(counted + 1);
  });

  it('a resent delivery is owed exactly one attempt: the receiver still down, it is failed again after one more, and may be resent again', async () => {
    const t = await givenUp('/still-down');
    receiver.plan('/still-down', [503]);
    expect((await resend(t.admin, t.endpoint.id, t.delivery.id)).status).toBe(202);
    await waitFor(async () => ((await row(t.delivery.id)).status === 'failed' ? true : undefined), { timeoutMs: 30_000, what: 'the resent delivery to settle' });
    expect(await row(t.delivery.id)).toMatchObject({ status: 'failed', attempts: MAX_ATTEMPTS + 1, resends: 1, next_attempt_at: null });
    expect(receiver.received.filter((r) => r.path === '/still-down')).toHaveLength(MAX_ATTEMPTS + 1);
    // Again, the receiver up now: a second resend, one attempt more.
    expect((await resend(t.admin, t.endpoint.id, t.delivery.id)).json).toMatchObject({ status: 'pending', resends: 2 });
    expect(await settled(t.admin, t.endpoint.id, 'delivered')).toMatchObject({ attempts: MAX_ATTEMPTS + 2, resends: 2 });
  });

  it('a delivered delivery may be resent (a receiver that lost it): one attempt, though WEBHOOK_MAX_ATTEMPTS would allow more; it arrives again with the same webhook-id', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/lost-data', ['run.completed']);
    const runId = await submit(stack, t.admin, CLASS_A_SUBMISSION);
    await waitRun(stack, t.admin, runId, ['completed']);
    const delivery = await settled(t.admin, t.endpoint.id, 'delivered');
    expect(delivery.attempts).toBe(1);
    // The receiver fails the resend's attempt: failed at once (attempts 2 of a cap of 3), not retried.
    receiver.plan('/lost-data', [503]);
    expect((await resend(t.admin, t.endpoint.id, delivery.id)).status).toBe(202);
    await waitFor(async () => ((await row(delivery.id)).status === 'failed' ? true : undefined), { timeoutMs: 30_000, what: 'the resent delivery to fail' });
    expect(await row(delivery.id)).toMatchObject({ status: 'failed', attempts: 2, next_attempt_at: null });
    expect((await resend(t.admin, t.endpoint.id, delivery.id)).status).toBe(202);
    expect(await settled(t.admin, t.endpoint.id, 'delivered')).toMatchObject({ attempts: 3, resends: 2 });
    expect(receiver.verified('/lost-data', t.endpoint.secret).map((m) => m.data.run_id)).toEqual([runId, runId, runId]);
    expect(new Set(receiver.received.filter((r) => r.path === '/lost-data').map((r) => r.headers['webhook-id']))).toEqual(new Set([delivery.id]));
  });

  it('refused, and nothing changes: a pending delivery (409), a disabled endpoint (409), another tenant (404), a non-admin (403), no Idempotency-Key (400), a bad recover body (422)', async () => {
    const t = await givenUp('/refusals');
    const before = await row(t.delivery.id);
    const other = await stack.token({ tenantId: newTenant(), sub: 'admin-other', roles: ['admin'] });
    const approver = await stack.token({ tenantId: t.tenantId, sub: 'user-1', roles: ['approver'] });
    const otherTenant = await resend(other, t.endpoint.id, t.delivery.id);
    expect(otherTenant.status, otherTenant.text).toBe(404);
    expect((await recover(other, t.endpoint.id, { since: '2020-01-01T00:00:00Z' })).status).toBe(404);
    expect((await resend(t.admin, t.endpoint.id, randomUUID())).status).toBe(404);
    // Another tenant's admin naming this delivery under an endpoint of their own: RLS and the tenant filter find no such delivery.
    const foreign = await tenantWithEndpoint(stack, receiver, '/refusals-other', ['run.completed']);
    const crossed = await resend(foreign.admin, foreign.endpoint.id, t.delivery.id);
    expect(crossed.status, crossed.text).toBe(404);
    expect((await resend(approver, t.endpoint.id, t.delivery.id)).status).toBe(403);
    expect((await recover(approver, t.endpoint.id, { since: '2020-01-01T00:00:00Z' })).status).toBe(403);
    expect((await resend(t.admin, t.endpoint.id, t.delivery.id, null)).status).toBe(400);
    for (const body of [{}, { since: 'yesterday' }, { since: '2026-12-04T00:00:00Z', until: '2026-12-03T00:00:00Z' }, { since: '2020-01-01T00:00:00Z', status: ['pending'] }, { since: '2020-01-01T00:00:00Z', limit: 1001 }, { since: '2020-01-01T00:00:00Z', extra: 1 }, { since: '0000-06-01T00:00:00Z' }, { since: '2020-01-01T00:00:00Z', until: '2026-01-01T00:00:00-18:00' }]) {
      const res = await recover(t.admin, t.endpoint.id, body);
      expect(res.status, `${JSON.stringify(body)}: ${res.text}`).toBe(422);
    }
    expect(await row(t.delivery.id)).toEqual(before);
    // Still owed (pending): 409, and the delivery is left as it is.
    await stack.db.admin(`update webhook_deliveries set status = 'pending', next_attempt_at = now() + interval '1 hour' where id = $1`, [t.delivery.id]);
    const pending = await row(t.delivery.id);
    const owed = await resend(t.admin, t.endpoint.id, t.delivery.id);
    expect(owed.status, owed.text).toBe(409);
    expect(owed.json.code).toBe('webhook_delivery_pending');
    expect(await row(t.delivery.id)).toEqual(pending);
    await stack.db.admin(`update webhook_deliveries set status = 'failed', next_attempt_at = null where id = $1`, [t.delivery.id]);
    // A disabled endpoint: enable it first.
    expect((await api(stack, 'POST', `${ENDPOINTS}/${t.endpoint.id}/disable`, { token: t.admin })).status).toBe(200);
    const settledRow = await row(t.delivery.id);
    for (const res of [await resend(t.admin, t.endpoint.id, t.delivery.id), await recover(t.admin, t.endpoint.id, { since: '2020-01-01T00:00:00Z' })]) {
      expect(res.status, res.text).toBe(409);
      expect(res.json.code).toBe('webhook_endpoint_disabled');
    }
    expect(await row(t.delivery.id)).toEqual(settledRow);
    expect(receiver.received.filter((r) => r.path === '/refusals')).toHaveLength(MAX_ATTEMPTS);
  });

  it('a delivery the endpoint does not have is 404 not_found, before the endpoint is found disabled or the tenant at its resend backlog: the key stores the 404, not a 409', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/missing-delivery', ['run.completed']);
    expect((await api(stack, 'POST', `${ENDPOINTS}/${t.endpoint.id}/disable`, { token: t.admin })).status).toBe(200);
    const missing = randomUUID();
    const key = randomUUID();
    const onDisabled = await resend(t.admin, t.endpoint.id, missing, key);
    expect(onDisabled.status, onDisabled.text).toBe(404);
    expect(onDisabled.json.code).toBe('not_found');
    // Enabled again, the same key replays the 404 it stored (not a 409 webhook_endpoint_disabled).
    expect((await api(stack, 'POST', `${ENDPOINTS}/${t.endpoint.id}/enable`, { token: t.admin, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);
    const replay = await resend(t.admin, t.endpoint.id, missing, key);
    expect(replay.status, replay.text).toBe(404);
    expect(replay.json.code).toBe('not_found');
    // At the resend backlog (WEBHOOK_RESEND_MAX_PENDING deliveries pending from resends, due tomorrow: nothing attempts them).
    await stack.db.admin(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, resends, resent_at, next_attempt_at, created_at, updated_at)
       select gen_random_uuid(), $1, $2, 'run.completed', '{}'::jsonb, 'pending', 1, 1, now(), now() + interval '1 day', now(), now() from generate_series(1, $3::int)`,
      [t.tenantId, t.endpoint.id, stack.config.WEBHOOK_RESEND_MAX_PENDING],
    );
    const atBacklog = await resend(t.admin, t.endpoint.id, randomUUID());
    expect(atBacklog.status, atBacklog.text).toBe(404);
    expect(atBacklog.json.code).toBe('not_found');
    // No such endpoint either: 404 as before.
    const noEndpoint = await resend(t.admin, randomUUID(), randomUUID());
    expect(noEndpoint.status, noEndpoint.text).toBe(404);
    // Gone again: left behind, these rows change the plans a later test of this file checks.
    await stack.db.admin(`delete from webhook_deliveries where endpoint_id = $1`, [t.endpoint.id]);
  });

  /** An hour of 2026-11-20, as an ISO instant. */
  const at = (h: number) => `2026-11-20T${String(h).padStart(2, '0')}:00:00.000Z`;

  /** A settled delivery of the endpoint created at `hour`, as the outbox (or the test route) writes it; no job: nothing is attempted until a resend. */
  const insertSettled = async (t: { tenantId: string; endpoint: { id: string } }, hour: number, status: 'failed' | 'delivered', eventType = 'run.completed') => {
    const id = randomUUID();
    const data = eventType === 'webhook.test' ? { endpoint_id: t.endpoint.id, message: 'm' } : { workflow: 'golden-path', run_id: randomUUID(), status: 'completed', correlation_id: `c-${hour}`, ended_at: at(hour) };
    await stack.db.admin(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, last_status_code, last_error, created_at, updated_at)
       values ($1, $2, $3, $4, $5, $6, 2, 500, 'HTTP 500', $7, now())`,
      [id, t.tenantId, t.endpoint.id, eventType, JSON.stringify({ type: eventType, timestamp: at(hour), data }), status, at(hour)],
    );
    return id;
  };

  it("a tenant's deliveries pending from resends are bounded (WEBHOOK_RESEND_MAX_PENDING): at the bound a resend is refused (409) and nothing is resent; below it a bulk recover resends only up to it", async () => {
    const max = stack.config.WEBHOOK_RESEND_MAX_PENDING;
    const t = await tenantWithEndpoint(stack, receiver, '/backlog', ['run.completed']);
    const failed = [await insertSettled(t, 1, 'failed'), await insertSettled(t, 2, 'failed'), await insertSettled(t, 3, 'failed')];
    // The tenant's earlier resends, still owed (due tomorrow: no job, nothing attempts them meanwhile), on another endpoint of it.
    const other = await api(stack, 'POST', ENDPOINTS, { token: t.admin, body: { url: `${receiver.base}/backlog-other`, events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } });
    expect(other.status, other.text).toBe(201);
    await stack.db.admin(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, resends, resent_at, next_attempt_at, created_at, updated_at)
       select gen_random_uuid(), $1, $2, 'run.completed', '{}'::jsonb, 'pending', 1, 1, now(), now() + interval '1 day', now(), now() from generate_series(1, $3::int)`,
      [t.tenantId, other.json.id, max],
    );
    const before = await Promise.all(failed.map(row));
    const single = await resend(t.admin, t.endpoint.id, failed[0]!);
    const bulk = await recover(t.admin, t.endpoint.id, { since: at(0) });
    for (const res of [single, bulk]) {
      expect(res.status, res.text).toBe(409);
      expect(res.json).toMatchObject({ code: 'webhook_resend_backlog' });
      expect(res.json.detail).toContain('WEBHOOK_RESEND_MAX_PENDING');
    }
    expect(await Promise.all(failed.map(row))).toEqual(before);
    // Another tenant is not held back by this one's backlog.
    const elsewhere = await tenantWithEndpoint(stack, receiver, '/backlog-elsewhere', ['run.completed']);
    const theirs = await insertSettled(elsewhere, 1, 'failed');
    expect((await resend(elsewhere.admin, elsewhere.endpoint.id, theirs)).status).toBe(202);
    // Two of the earlier resends settle: room for two. The recover resends the two oldest and says more match.
    await stack.db.admin(`update webhook_deliveries set status = 'failed', next_attempt_at = null where id in (select id from webhook_deliveries where endpoint_id = $1 limit 2)`, [other.json.id]);
    const partial = await recover(t.admin, t.endpoint.id, { since: at(0) });
    expect(partial.status, partial.text).toBe(202);
    expect(partial.json).toEqual({ resent: 2, has_more: true });
    expect((await Promise.all(failed.map(row))).map((r) => r.resends)).toEqual([1, 1, 0]);
    // Settled, the backlog is gone: the rest may be resent.
    await stack.db.admin(`update webhook_deliveries set status = 'failed', next_attempt_at = null where endpoint_id = $1`, [other.json.id]);
    expect((await resend(t.admin, t.endpoint.id, failed[2]!)).status).toBe(202);
  });

  it("the bulk recover leaves test events out (it recovers real events): a failed or delivered webhook.test of the window is not resent, nor counted by has_more or the limit", async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/recover-tests', ['run.completed']);
    const tests = [await insertSettled(t, 2, 'failed', 'webhook.test'), await insertSettled(t, 3, 'delivered', 'webhook.test')];
    const real = [await insertSettled(t, 4, 'failed'), await insertSettled(t, 5, 'delivered')];
    const lastTest = await insertSettled(t, 6, 'failed', 'webhook.test');
    const window = { status: ['failed', 'delivered'], since: at(1), limit: 2 };
    // The two oldest are tests: the limit is spent on the real ones, and the later test is no "more".
    expect((await recover(t.admin, t.endpoint.id, window)).json).toEqual({ resent: 2, has_more: false });
    for (const id of real) expect((await row(id)).resends).toBe(1);
    for (const id of [...tests, lastTest]) expect(await row(id)).toMatchObject({ resends: 0, attempts: 2 });
    const ids = () => new Set(receiver.received.filter((r) => r.path === '/recover-tests').map((r) => r.headers['webhook-id']));
    await waitFor(() => (ids().size === 2 ? true : undefined), { timeoutMs: 30_000, what: 'the two real deliveries' });
    expect(ids()).toEqual(new Set(real));
    // A failed test is still resent one by one (subject to the test bound).
    expect((await resend(t.admin, t.endpoint.id, tests[0]!)).status).toBe(202);
  });

  it("the bulk recover resends the endpoint's settled deliveries of the window only, oldest first, up to its limit, with has_more; a replay resends nothing", async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/recover', ['run.completed']);
    const insert = (hour: number, status: 'failed' | 'delivered') => insertSettled(t, hour, status);
    const early = await insert(1, 'failed'); // before the window
    const inWindow = [await insert(2, 'failed'), await insert(3, 'failed'), await insert(4, 'failed')];
    const delivered = await insert(5, 'delivered'); // in the window, but not `failed`
    const late = await insert(6, 'failed'); // at `until`: outside
    const window = { status: ['failed'], since: at(2), until: at(6), limit: 2 };
    const key = randomUUID();
    const counted = await metric(BULK);
    const first = await recover(t.admin, t.endpoint.id, window, key);
    expect(first.status, first.text).toBe(202);
    expect(first.json).toEqual({ resent: 2, has_more: true });
    expect((await row(inWindow[0]!)).resends).toBe(1);
    expect((await row(inWindow[1]!)).resends).toBe(1);
    expect((await row(inWindow[2]!)).resends).toBe(0);
    // The replay: the same answer, nothing more resent.
    expect((await recover(t.admin, t.endpoint.id, window, key)).json).toEqual({ resent: 2, has_more: true });
    expect((await row(inWindow[2]!)).resends).toBe(0);
    const second = await recover(t.admin, t.endpoint.id, window);
    expect(second.json).toEqual({ resent: 1, has_more: false });
    expect(await metric(BULK)).toBe(counted + 3);
    const ids = () => new Set(receiver.received.filter((r) => r.path === '/recover').map((r) => r.headers['webhook-id']));
    await waitFor(() => (ids().size === 3 ? true : undefined), { timeoutMs: 30_000, what: 'the three resent deliveries' });
    expect(ids()).toEqual(new Set(inWindow));
    for (const id of inWindow) await waitFor(async () => ((await row(id)).status === 'delivered' ? true : undefined), { timeoutMs: 30_000, what: `${id} delivered` });
    expect(receiver.verified('/recover', t.endpoint.secret)).toHaveLength(3);
    for (const id of [early, delivered, late]) expect(await row(id)).toMatchObject({ resends: 0, attempts: 2 });
    // `delivered` asked for too: the delivered one of the window (the failed ones there are delivered now as well).
    expect((await recover(t.admin, t.endpoint.id, { status: ['delivered'], since: at(5), until: at(6) })).json).toEqual({ resent: 1, has_more: false });
    await waitFor(() => (ids().has(delivered) ? true : undefined), { timeoutMs: 30_000, what: 'the delivered one again' });
  });

  it('the bulk recover passes over a delivery another transaction holds (the retention pass deleting it): it neither waits for it nor deadlocks with it; has_more says it still matches', { timeout: 60_000 }, async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/held', ['run.completed']);
    const ids: string[] = [];
    for (const hour of [1, 2]) {
      const id = randomUUID();
      ids.push(id);
      await stack.db.admin(
        `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, last_status_code, created_at, updated_at)
         values ($1, $2, $3, 'run.completed', '{}', 'failed', 1, 500, $4, now())`,
        [id, t.tenantId, t.endpoint.id, `2026-11-21T0${hour}:00:00.000Z`],
      );
    }
    const holder = new pg.Client({ connectionString: stack.db.adminUrl });
    await holder.connect();
    try {
      await holder.query('begin');
      // The older one, as a retention batch holds the rows it deletes until its commit.
      await holder.query('select id from webhook_deliveries where id = $1 for update', [ids[0]]);
      const res = await recover(t.admin, t.endpoint.id, { since: '2026-11-21T00:00:00Z' });
      expect(res.status, res.text).toBe(202);
      expect(res.json).toEqual({ resent: 1, has_more: true });
    } finally {
      await holder.query('rollback').catch(() => {});
      await holder.end();
    }
    expect((await row(ids[0]!)).resends).toBe(0);
    expect((await row(ids[1]!)).resends).toBe(1);
  });

  // The attempt that settles a delivery commits its record, then its job completes: in between the job
  // is still `active` under `wh-<id>`, and BullMQ can neither remove it nor add another under its id. A
  // resend in that window added nothing, and the redelivery pass skips a delivery whose job exists, so
  // the resent delivery waited for that job to end (and then for the pass). The window is held open
  // here: the job's POST is held by the receiver while the test records the settling the job would
  // (attempts + 1, failed), as its own record does just before it completes.
  it("a resend while the delivery's settling job is still active is sent at once, not after that job ends", { timeout: 60_000 }, async () => {
    let held: ServerResponse | undefined;
    let heldClosed = false;
    const ids: string[] = [];
    const server = createServer((req: IncomingMessage, res: ServerResponse) => {
      req.resume();
      req.on('end', () => {
        ids.push(String(req.headers['webhook-id']));
        if (!held) {
          held = res;
          res.on('close', () => (heldClosed = true));
        } else res.writeHead(200).end('ok');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const tenantId = newTenant();
      const admin = await stack.token({ tenantId, sub: 'admin-held', roles: ['admin'] });
      const created = await api(stack, 'POST', ENDPOINTS, { token: admin, body: { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/held`, events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } });
      expect(created.status, created.text).toBe(201);
      const runId = await submit(stack, admin, CLASS_A_SUBMISSION);
      await waitRun(stack, admin, runId, ['completed']);
      await waitFor(() => (held ? true : undefined), { timeoutMs: 30_000, what: 'the first attempt to reach the receiver' });
      const [delivery] = (await stack.db.admin(`select id from webhook_deliveries where endpoint_id = $1`, [created.json.id])).rows as { id: string }[];
      await stack.db.admin(`update webhook_deliveries set status = 'failed', attempts = attempts + 1, next_attempt_at = null, updated_at = now() where id = $1`, [delivery!.id]);
      const res = await resend(admin, created.json.id, delivery!.id);
      expect(res.status, res.text).toBe(202);
      await waitFor(() => (ids.length === 2 ? true : undefined), { timeoutMs: 40_000, what: 'the resent attempt' });
      // Sent while the settling job was still active (its POST unanswered), not once it had ended.
      expect({ ids, heldClosed }).toEqual({ ids: [delivery!.id, delivery!.id], heldClosed: false });
      await waitFor(async () => ((await row(delivery!.id)).status === 'delivered' ? true : undefined), { timeoutMs: 30_000, what: 'the resent delivery delivered' });
      held!.writeHead(200).end('ok');
      // The held attempt, answered at last, records nothing: the row moved on (a duplicate's outcome, superseded).
      await waitFor(async () => ((await stack.container.queues.get(WEBHOOK_QUEUE)!.getJobState(deliveryJobId(delivery!.id))) === 'completed' ? true : undefined), { timeoutMs: 30_000, what: 'the held job to end' });
      expect(await row(delivery!.id)).toMatchObject({ status: 'delivered', attempts: 2, resends: 1 });
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  // The redelivery pass enqueues an overdue pending delivery whose job is gone. A resent one's job is
  // wh-<id>-r<resends>: looked for under wh-<id> (the earlier cycle's, long removed), a resend job still
  // waiting — parked on the endpoint's cap, say — would be doubled by a second job, and sent twice.
  it("the redelivery pass looks for a resent delivery's job under its cycle's id: a parked resend job is not doubled", { timeout: 60_000 }, async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/parked-resend', ['run.completed']);
    const queue = stack.container.queues.get(WEBHOOK_QUEUE)!;
    const insert = async (id: string, resends: number, overdue: string) =>
      stack.db.admin(
        `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, resends, resent_at, next_attempt_at, created_at, updated_at)
         values ($1, $2, $3, 'run.completed', '{}', 'pending', 3, $4, case when $4 > 0 then now() end, now() - $5::interval, now(), now())`,
        [id, t.tenantId, t.endpoint.id, resends, overdue],
      );
    // Resent, its job parked (delayed an hour) before the row is seen overdue.
    const parked = randomUUID();
    await queue.add(WEBHOOK_DELIVERY_JOB, { tenant_id: t.tenantId, delivery_id: parked }, { jobId: deliveryJobId(parked, 1), delay: 3_600_000 });
    await insert(parked, 1, '2 minutes');
    // Never resent, its job lost: the pass enqueues it (the control: the pass ran, and sees overdue rows).
    const lost = randomUUID();
    await insert(lost, 0, '1 minute');
    const pass = webhookHandlers({
      orm: stack.container.orm,
      logger: pino({ level: 'silent' }),
      settings: { timeoutMs: 5000, maxAttempts: MAX_ATTEMPTS, retryBaseMs: 50, policy: { allowPrivate: true, httpsOnly: false }, resolver: webhookResolver(stack.config) },
      queue: () => queue,
      redis: stack.container.redis,
      redeliverAfterMs: 0,
    })[WEBHOOK_REDELIVERY_JOB];
    await pass();
    await waitFor(async () => ((await row(lost)).status === 'delivered' ? true : undefined), { timeoutMs: 30_000, what: 'the lost delivery re-enqueued and delivered' });
    expect(await queue.getJobState(deliveryJobId(parked))).toBe('unknown');
    expect(await queue.getJobState(deliveryJobId(parked, 1))).toBe('delayed');
    expect(receiver.received.filter((r) => r.headers['webhook-id'] === parked)).toHaveLength(0);
  });

  // A receiver down for an hour among a month of deliveries: the recover's default (`failed`) over a
  // window the admin drew wide. Through (tenant, endpoint, created_at, id) both statements walked every
  // delivered delivery of the window, filtering status row by row — 100,000 for ten failed ones, and
  // all of them again for has_more once the failed ones were resent.
  it("the bulk recover's statements read only the failed deliveries they resend, not the endpoint's delivered history", { timeout: 120_000 }, async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/history', ['run.completed']);
    await stack.db.admin(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, last_status_code, created_at, updated_at)
       select gen_random_uuid(), $1, $2, 'run.completed', '{}', case when g % 10000 = 0 then 'failed' else 'delivered' end, 1,
              case when g % 10000 = 0 then 500 else 200 end, now() - interval '30 days' + g * interval '20 seconds', now()
         from generate_series(1, 100000) g`,
      [t.tenantId, t.endpoint.id],
    );
    await stack.db.admin('analyze webhook_deliveries');
    // The statements as sent for another tenant's endpoint (no delivery: nothing is resent), then run for this one.
    const probe = await tenantWithEndpoint(stack, receiver, '/history-probe', ['run.completed']);
    const originalQuery = CoalescingClient.prototype.query;
    const sent: { text: string; values: unknown[] }[] = [];
    CoalescingClient.prototype.query = function (this: CoalescingClient, config: any, values?: any, callback?: any) {
      if (typeof config === 'string' && /from webhook_deliveries where tenant_id = /.test(config) && Array.isArray(values)) sent.push({ text: config, values });
      return originalQuery.call(this, config, values, callback);
    };
    let res;
    try {
      res = await recover(probe.admin, probe.endpoint.id, { since: '2020-01-01T00:00:00Z' });
    } finally {
      CoalescingClient.prototype.query = originalQuery;
    }
    expect(res.status, res.text).toBe(202);
    expect(sent.length).toBe(3); // the resend bound's count (WEBHOOK_RESEND_MAX_PENDING), the resend, and the probe for has_more
    const swap = (v: unknown) => (v === probe.tenantId ? t.tenantId : v === probe.endpoint.id ? t.endpoint.id : v);
    for (const s of sent) {
      const sql = inlineStatement({ text: s.text, values: s.values.map(swap) });
      // Run as planned, and rolled back: the resend's update changes nothing (no job is added either).
      const results = (await stack.db.admin(`begin; explain (analyze, format json) ${sql}; rollback`)) as unknown as Array<{ rows: any[] }>;
      const nodes = planNodes(results[1]!.rows[0]['QUERY PLAN'][0].Plan);
      const read = nodes.reduce((n, node) => n + (node['Rows Removed by Filter'] ?? 0) + (node['Rows Removed by Index Recheck'] ?? 0), 0);
      // Nor a scan of the table: the update joined the picked ids to a sequential scan of every delivery
      // (a hash join planned for the limit's 1,000 rows), which removed none by filter when the table held
      // this tenant's rows alone, and only failed once other tenants' rows were there.
      const scans = nodes.filter((node) => node['Node Type'] === 'Seq Scan').length;
      expect({ statement: s.text.slice(0, 60), filteredOut: read, scans }).toEqual({ statement: s.text.slice(0, 60), filteredOut: 0, scans: 0 });
    }
    // And the request itself: the ten failed ones.
    expect((await recover(t.admin, t.endpoint.id, { since: '2020-01-01T00:00:00Z' })).json).toEqual({ resent: 10, has_more: false });
  });
});

/** Plan nodes of a JSON plan, depth first. */
function planNodes(plan: any, out: any[] = []): any[] {
  out.push(plan);
  for (const child of plan.Plans ?? []) planNodes(child, out);
  return out;
}
