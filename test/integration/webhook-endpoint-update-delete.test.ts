/**
 * Updating (PATCH) and deleting (DELETE) a webhook endpoint (ADR 0013, *Updating and deleting an
 * endpoint*) against the real stack: PostgreSQL as the application role, Redis, a spawned worker
 * process and a real node:http receiver on 127.0.0.1.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { api, newTenant, SAMPLE_SUBMISSION, type TestStack } from '../helpers/stack.ts';
import { stackForTests } from '../helpers/stack-for-tests.ts';
import { waitFor } from '../helpers/poll.ts';
import { backendPid, blockedBy } from '../helpers/lock-graph.ts';
import { WEBHOOK_QUEUE } from '../../src/platform/webhooks/delivery.ts';
import { deliveryJobId } from '../../src/platform/queue/job-ids.ts';
import { systemEm, tenantEm } from '../../src/platform/db/tenant-em.ts';
import { deleteSettledDeliveries, deliveriesLockKey } from '../../src/platform/webhooks/retention.ts';
import { answeredUnblocked, createEndpoint, ENDPOINTS, openRunEnd, submit, tenantWithEndpoint, waitRun, webhookStackForTests, type Receiver } from '../helpers/webhooks.ts';

const key = () => ({ 'Idempotency-Key': randomUUID() });
const patch = (stack: TestStack, token: string, id: string, body: unknown, headers: Record<string, string> = key()) => api(stack, 'PATCH', `${ENDPOINTS}/${id}`, { token, body, headers });
const del = (stack: TestStack, token: string, id: string, headers: Record<string, string> = key()) => api(stack, 'DELETE', `${ENDPOINTS}/${id}`, { token, headers });
/** An endpoint's row as stored (read as the admin role), or undefined once deleted. */
const rowOf = async (stack: TestStack, id: string) => (await stack.db.admin(`select url, events, description, enabled, secret, failing_since, updated_at from webhook_endpoints where id = $1`, [id])).rows[0];
const deliveriesOf = async (stack: TestStack, endpointId: string) => (await stack.db.admin(`select id, status, attempts from webhook_deliveries where endpoint_id = $1 order by created_at`, [endpointId])).rows;

/**
 * A connection of the test's own, as the admin role, and its backend pid: the holder whose waiters the
 * lock graph names (lock-graph.ts). Not pg_stat_activity's query text: the API's statements go in
 * messages of several, and a backend waiting inside one may show another statement of it there.
 */
const holderClient = async (stack: TestStack) => {
  const client = new pg.Client({ connectionString: stack.db.adminUrl });
  await client.connect();
  return { client, pid: await backendPid((sql, params) => client.query(sql, params)) };
};

describe('webhook endpoint update and delete: the API', () => {
  // WEBHOOK_ALLOW_PRIVATE_NETWORKS unset: the production default, as the create's refusals are tested. At most two enabled endpoints a tenant.
  const suite = stackForTests({ stack: { env: { WEBHOOK_MAX_ENDPOINTS: '2', LOG_LEVEL: 'info' } }, logs: true });
  const { logLines } = suite;
  let stack: TestStack;
  beforeAll(() => void ({ stack } = suite));

  async function adminWithEndpoint(body: Record<string, unknown> = {}) {
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin-1', roles: ['admin'] });
    const created = await createEndpoint(stack, admin, { url: 'https://93.184.215.43/hook?token=abc', events: ['run.completed'], description: 'first', ...body });
    expect(created.status, created.text).toBe(201);
    return { tenantId, admin, id: created.json.id as string, secret: created.json.secret as string };
  }

  it('PATCH changes only the fields sent and answers 200 with the endpoint (never its secret); the URL change is an audit line without the query', async () => {
    const { tenantId, admin, id, secret } = await adminWithEndpoint();
    const events = await patch(stack, admin, id, { events: ['run.failed', 'run.cancelled'] });
    expect(events.status, events.text).toBe(200);
    expect(events.json).toMatchObject({ id, url: 'https://93.184.215.43/hook?token=abc', events: ['run.failed', 'run.cancelled'], description: 'first', enabled: true });
    expect(events.json).not.toHaveProperty('secret');
    expect(logLines.some((l) => l.security_event === 'webhook_endpoint_url_changed' && l.webhook_endpoint_id === id)).toBe(false);
    const url = await patch(stack, admin, id, { url: 'https://93.184.215.44/new', description: null });
    expect(url.status, url.text).toBe(200);
    expect(url.json).toMatchObject({ url: 'https://93.184.215.44/new', events: ['run.failed', 'run.cancelled'], description: null });
    expect((await api(stack, 'GET', `${ENDPOINTS}/${id}`, { token: admin })).json).toEqual(url.json);
    expect((await rowOf(stack, id)).secret).toBe(secret);
    const audit = await waitFor(() => logLines.find((l) => l.security_event === 'webhook_endpoint_url_changed' && l.webhook_endpoint_id === id), { what: 'the audit line' });
    expect(audit).toMatchObject({ tenant_id: tenantId, changed_by: 'admin-1', previous_url_origin: 'https://93.184.215.43', url_origin: 'https://93.184.215.44' });
    expect(JSON.stringify(audit)).not.toContain('token=abc');
    // A replay of its key answers the same, and changes nothing more.
    const k = key();
    const first = await patch(stack, admin, id, { description: 'third' }, k);
    const replay = await patch(stack, admin, id, { description: 'third' }, k);
    expect(replay.status).toBe(200);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.json).toEqual(first.json);
  });

  it("a new URL clears the endpoint's failing_since (the old receiver's failures are not the new one's); a change that keeps the URL keeps it", async () => {
    const { admin, id } = await adminWithEndpoint();
    await stack.db.admin(`update webhook_endpoints set failing_since = now() - interval '2 days' where id = $1`, [id]);
    const kept = await patch(stack, admin, id, { description: 'same receiver', url: 'https://93.184.215.43/hook?token=abc' });
    expect(kept.status, kept.text).toBe(200);
    expect(kept.json.failing_since).not.toBeNull();
    const moved = await patch(stack, admin, id, { url: 'https://93.184.215.49/hook' });
    expect(moved.status, moved.text).toBe(200);
    expect(moved.json.failing_since).toBeNull();
  });

  it("a PATCH that keeps the URL does not resolve its host again: an endpoint whose host no longer resolves still takes new events or a description, the URL sent unchanged or not; a new URL is still checked", async () => {
    const { admin, id } = await adminWithEndpoint();
    // Its host stopped resolving after the create (.invalid never resolves, RFC 6761).
    const gone = 'https://receiver.gone.invalid/hook';
    await stack.db.admin(`update webhook_endpoints set url = $2 where id = $1`, [id, gone]);
    const events = await patch(stack, admin, id, { events: ['run.failed'] });
    expect(events.status, events.text).toBe(200);
    const same = await patch(stack, admin, id, { url: gone, description: 'same receiver' });
    expect(same.status, same.text).toBe(200);
    expect(same.json).toMatchObject({ url: gone, events: ['run.failed'], description: 'same receiver' });
    expect(logLines.some((l) => l.security_event === 'webhook_endpoint_url_changed' && l.webhook_endpoint_id === id)).toBe(false);
    // Another URL on a host that does not resolve is refused as before (422, or 503 when the resolver cannot say now), and nothing changes.
    const moved = await patch(stack, admin, id, { url: 'https://other.gone.invalid/hook', description: 'moved' });
    expect([422, 503], moved.text).toContain(moved.status);
    expect(await rowOf(stack, id)).toMatchObject({ url: gone, description: 'same receiver' });
  });

  it('a PATCH sending the URL the endpoint had, which another update changed before its lock, is not applied unchecked: 503 with the key released, and its retry is checked and applied', async () => {
    const { admin, id } = await adminWithEndpoint();
    const first = 'https://93.184.215.43/hook?token=abc';
    const { client: other, pid: otherPid } = await holderClient(stack);
    const k = key();
    try {
      await other.query('begin');
      await other.query(`update webhook_endpoints set url = 'https://93.184.215.50/moved' where id = $1`, [id]);
      // Read before the move commits: the URL sent is the endpoint's, so it is not resolved; the update then waits for the row.
      const answer = patch(stack, admin, id, { url: first, description: 'back' }, k);
      await blockedBy(stack.db.admin, otherPid, 'the PATCH to wait for the row');
      await other.query('commit');
      const res = await answer;
      expect(res.status, res.text).toBe(503);
      expect(res.headers.get('retry-after')).toBeTruthy();
    } finally {
      await other.query('rollback').catch(() => {});
      await other.end();
    }
    expect(await rowOf(stack, id)).toMatchObject({ url: 'https://93.184.215.50/moved', description: 'first' });
    const retried = await patch(stack, admin, id, { url: first, description: 'back' }, k);
    expect(retried.status, retried.text).toBe(200);
    expect(retried.json).toMatchObject({ url: first, description: 'back' });
  });

  it.each([
    ['no field', {}],
    ['an unknown field', { secret: 'mine' }],
    ['the secret beside a known field', { description: 'x', secret: 'mine' }],
    ['a URL that is no URL', { url: 'not a url' }],
    ['an ftp URL', { url: 'ftp://example.com/hook' }],
    ['a loopback address', { url: 'http://127.0.0.1:9/hook' }],
    ['the link-local metadata address', { url: 'http://169.254.169.254/latest' }],
    ['a name that resolves to loopback', { url: 'http://localhost:9/hook' }],
    ['no event', { events: [] }],
    ['an unknown event type', { events: ['run.exploded'] }],
    ['the test event (not subscribable)', { events: ['webhook.test'] }],
  ])('PATCH with %s is refused with 422 problem+json, and nothing changes', async (_what, body) => {
    const { admin, id } = await adminWithEndpoint();
    const before = await rowOf(stack, id);
    const res = await patch(stack, admin, id, body);
    expect(res.status, res.text).toBe(422);
    expect(res.headers.get('content-type')).toMatch(/application\/problem\+json/);
    expect(await rowOf(stack, id)).toEqual(before);
  });

  it("PATCH and DELETE of another tenant's endpoint are 404, by a non-admin 403, and nothing changes", async () => {
    const a = await adminWithEndpoint();
    const b = await adminWithEndpoint();
    const before = await rowOf(stack, a.id);
    const viewer = await stack.token({ tenantId: a.tenantId, sub: 'viewer', roles: ['viewer'] });
    expect((await patch(stack, b.admin, a.id, { url: 'https://93.184.215.45/x' })).status).toBe(404);
    expect((await del(stack, b.admin, a.id)).status).toBe(404);
    expect((await patch(stack, viewer, a.id, { description: 'x' })).status).toBe(403);
    expect((await del(stack, viewer, a.id)).status).toBe(403);
    expect((await patch(stack, a.admin, randomUUID(), { description: 'x' })).status).toBe(404);
    expect(await rowOf(stack, a.id)).toEqual(before);
  });

  it('DELETE answers 204; the endpoint is gone from read, list, its deliveries and every change (404), a second DELETE is 404, and it frees its place under WEBHOOK_MAX_ENDPOINTS', async () => {
    const { admin, id } = await adminWithEndpoint();
    const other = await createEndpoint(stack, admin, { url: 'https://93.184.215.46/hook', events: ['run.completed'] });
    expect(other.status, other.text).toBe(201);
    expect((await createEndpoint(stack, admin, { url: 'https://93.184.215.47/hook', events: ['run.completed'] })).status).toBe(409);
    const k = key();
    const gone = await del(stack, admin, id, k);
    expect(gone.status, gone.text).toBe(204);
    expect(gone.text).toBe('');
    // Its replay answers the same 204; a new DELETE finds nothing.
    expect(gone.headers.get('content-type')).toBeNull();
    const replay = await del(stack, admin, id, k);
    expect(replay.status).toBe(204);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    // Exactly as the first: no body, so no Content-Type (a 204 naming a media type describes a body it does not have).
    expect(replay.headers.get('content-type')).toBeNull();
    expect(replay.text).toBe('');
    expect((await del(stack, admin, id)).status).toBe(404);
    expect(await rowOf(stack, id)).toBeUndefined();
    expect((await api(stack, 'GET', `${ENDPOINTS}/${id}`, { token: admin })).status).toBe(404);
    expect((await api(stack, 'GET', ENDPOINTS, { token: admin })).json.items.map((e: { id: string }) => e.id)).toEqual([other.json.id]);
    expect((await api(stack, 'GET', `${ENDPOINTS}/${id}/deliveries`, { token: admin })).status).toBe(404);
    expect((await api(stack, 'GET', `${ENDPOINTS}/${id}/deliveries/${randomUUID()}`, { token: admin })).status).toBe(404);
    for (const action of ['enable', 'disable', 'rotate-secret', 'test']) {
      const res = await api(stack, 'POST', `${ENDPOINTS}/${id}/${action}`, { token: admin, headers: key() });
      expect(res.status, `${action}: ${res.text}`).toBe(404);
    }
    for (const [path, body] of [[`deliveries/${randomUUID()}/resend`, undefined], ['deliveries/resend', { since: '2020-01-01T00:00:00Z' }]] as const) {
      const res = await api(stack, 'POST', `${ENDPOINTS}/${id}/${path}`, { token: admin, body, headers: key() });
      expect(res.status, `${path}: ${res.text}`).toBe(404);
    }
    expect((await patch(stack, admin, id, { description: 'back?' })).status).toBe(404);
    expect(await rowOf(stack, id)).toBeUndefined();
    const again = await createEndpoint(stack, admin, { url: 'https://93.184.215.47/hook', events: ['run.completed'] });
    expect(again.status, again.text).toBe(201);
    expect(logLines.find((l) => l.security_event === 'webhook_endpoint_deleted' && l.webhook_endpoint_id === id)).toMatchObject({ deleted_by: 'admin-1', url_origin: 'https://93.184.215.43' });
  });

  it('DELETE with a body is refused (422), and nothing is deleted', async () => {
    const { admin, id } = await adminWithEndpoint();
    const res = await api(stack, 'DELETE', `${ENDPOINTS}/${id}`, { token: admin, body: { force: true }, headers: key() });
    expect(res.status, res.text).toBe(422);
    expect(await rowOf(stack, id)).toBeDefined();
  });

  /** A delivery of the endpoint, delivered: created and last updated that long ago (past a day's retention). */
  const seedSettled = async (tenantId: string, endpointId: string, createdAgo: string, updatedAgo: string) =>
    (await stack.db.admin(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, delivered_at, created_at, updated_at)
       values (gen_random_uuid(), $1, $2, 'run.completed', '{}'::jsonb, 'delivered', 1, now() - $4::interval, now() - $3::interval, now() - $4::interval) returning id`,
      [tenantId, endpointId, createdAgo, updatedAgo],
    )).rows[0].id as string;
  /** Sessions of the test's database waiting for a lock (whichever). */
  const lockWaiting = async () => (await stack.db.admin(`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`)).rows[0].n as number;
  const retentionPass = () => deleteSettledDeliveries(systemEm(stack.container.orm), { olderThanMs: 24 * 3600_000 }).then((p) => p, (err: unknown) => err as Error);

  it("DELETE and a run retention pass deleting the endpoint's settled deliveries at once: no deadlock, the DELETE answers 204 and the pass completes", async () => {
    const { tenantId, admin, id } = await adminWithEndpoint();
    // Two settled deliveries past the retention, in opposite orders for the two statements: the DELETE's cascade reaches `a`
    // first (the endpoint's deliveries by creation), the retention pass `b` (settled ones by last update).
    const a = await seedSettled(tenantId, id, '10 days', '2 days');
    const b = await seedSettled(tenantId, id, '9 days', '3 days');
    // A third transaction holds `b`, so that each statement is caught at its first row it cannot have.
    const holder = new pg.Client({ connectionString: stack.db.adminUrl });
    await holder.connect();
    try {
      await holder.query('begin');
      await holder.query('select id from webhook_deliveries where id = $1 for update', [b]);
      const pass = retentionPass();
      await waitFor(async () => (await lockWaiting()) >= 1, { what: 'the retention pass to wait' });
      const deleted = del(stack, admin, id);
      await waitFor(async () => (await lockWaiting()) >= 2, { what: 'the DELETE to wait' });
      // Unheld, the pass takes `b` and goes on to `a`; without a common lock order the cascade held `a` and waited for `b` (40P01).
      await holder.query('rollback');
      const answer = await deleted;
      expect(answer.status, answer.text).toBe(204);
      const done = await pass;
      expect(done).not.toBeInstanceOf(Error);
      expect(done).toMatchObject({ deleted: 2 });
    } finally {
      await holder.query('rollback').catch(() => {});
      await holder.end();
    }
    expect(await deliveriesOf(stack, id)).toEqual([]);
    expect((await stack.db.admin(`select count(*)::int as n from webhook_deliveries where id = any($1)`, [[a, b]])).rows[0].n).toBe(0);
  });

  it("a run retention pass during an endpoint's DELETE passes over the tenant's deliveries without waiting for it; they go with the endpoint", async () => {
    const { tenantId, admin, id } = await adminWithEndpoint();
    const a = await seedSettled(tenantId, id, '10 days', '2 days');
    await seedSettled(tenantId, id, '9 days', '3 days');
    const holder = new pg.Client({ connectionString: stack.db.adminUrl });
    await holder.connect();
    try {
      // The DELETE is caught in its cascade, at `a`.
      await holder.query('begin');
      await holder.query('select id from webhook_deliveries where id = $1 for update', [a]);
      const deleted = del(stack, admin, id);
      await waitFor(async () => (await lockWaiting()) >= 1, { what: 'the DELETE to wait' });
      let ended: unknown;
      const pass = retentionPass().then((p) => (ended = p));
      const first = await waitFor(async () => (ended !== undefined ? 'ended' : (await lockWaiting()) >= 2 ? 'waiting for the DELETE' : false), { what: 'the pass to end or wait' });
      expect(first).toBe('ended');
      expect(await pass).toMatchObject({ deleted: 0 });
      await holder.query('rollback');
      expect((await deleted).status).toBe(204);
    } finally {
      await holder.query('rollback').catch(() => {});
      await holder.end();
    }
    expect(await deliveriesOf(stack, id)).toEqual([]);
  });

  it("a retention pass that passes over one tenant's deliveries (its endpoint being deleted) goes on with the other tenants' in the same pass", async () => {
    const deleting = await adminWithEndpoint();
    const other = await adminWithEndpoint();
    // The deleting tenant's row first (oldest, inserted first), so the first batch of two picks it beside one of the other's.
    const left = await seedSettled(deleting.tenantId, deleting.id, '10 days', '5 days');
    for (const ago of ['4 days', '3 days', '2 days']) await seedSettled(other.tenantId, other.id, '10 days', ago);
    // A DELETE of the tenant's endpoint in progress holds the tenant's lock, shared, as the route takes it.
    const holder = new pg.Client({ connectionString: stack.db.adminUrl });
    await holder.connect();
    try {
      await holder.query('begin');
      await holder.query(`select pg_advisory_xact_lock_shared(${deliveriesLockKey('$1::uuid')})`, [deleting.tenantId]);
      const pass = await deleteSettledDeliveries(systemEm(stack.container.orm), { olderThanMs: 24 * 3600_000, batchSize: 2 });
      // A batch that left the held tenant's row was short of a batch in rows deleted, not in rows picked: the pass went on.
      expect((await stack.db.admin(`select count(*)::int as n from webhook_deliveries where tenant_id = $1`, [other.tenantId])).rows[0].n).toBe(0);
      expect((await deliveriesOf(stack, deleting.id)).map((d) => d.id)).toEqual([left]);
      expect(pass.complete).toBe(true);
    } finally {
      await holder.query('rollback').catch(() => {});
      await holder.end();
    }
  });

  it('PATCH locks the endpoint row as NO KEY UPDATE: it does not wait for a transaction that inserted a delivery for the endpoint (a run ending)', async () => {
    const { tenantId, admin, id } = await adminWithEndpoint();
    const runEnd = await openRunEnd(stack, tenantId, id);
    try {
      const answer = await answeredUnblocked(stack, runEnd.pid, patch(stack, admin, id, { url: 'https://93.184.215.48/hook', events: ['run.failed'] }), 'the PATCH');
      expect(answer.status).toBe(200);
    } finally {
      await runEnd.close();
    }
  });
});

describe('webhook endpoint update and delete: deliveries, with a worker and a receiver', () => {
  // Retries an hour apart: a failed attempt's retry runs only when the test promotes its job.
  const suite = webhookStackForTests(3, { WEBHOOK_RETRY_BASE: '1h' });
  let stack: TestStack;
  let receiver: Receiver;
  beforeAll(() => void ({ stack, receiver } = suite));

  /** A tenant with an endpoint at `path` for run.failed, and a class B run waiting for its approver (to be ended). */
  async function withWaitingRun(path: string) {
    const t = await tenantWithEndpoint(stack, receiver, path, ['run.failed', 'run.cancelled']);
    const runId = await submit(stack, t.admin, SAMPLE_SUBMISSION);
    await waitRun(stack, t.admin, runId, ['waiting']);
    return { ...t, runId };
  }

  /** Ends the run `failed` in a transaction of the test's own: the ids of the deliveries it committed (no job enqueued). */
  async function failRun(tenantId: string, runId: string): Promise<string[]> {
    const ids: string[] = [];
    await tenantEm(stack.container.orm, tenantId).transactional((tx) => stack.container.runtime.complete(tx, runId, 'failed', { error: { code: 'test' } }, ids));
    return ids;
  }

  const queue = () => stack.container.queues.get(WEBHOOK_QUEUE)!;

  /** Makes a delivery's retry due now: its row's next attempt, and its delayed job promoted. */
  async function retryNow(deliveryId: string) {
    await stack.db.admin(`update webhook_deliveries set next_attempt_at = now() where id = $1`, [deliveryId]);
    const job = await waitFor(async () => {
      const j = await queue().getJob(deliveryJobId(deliveryId, 0));
      return j && (await j.getState()) === 'delayed' ? j : undefined;
    }, { what: 'the delivery job to be delayed for its retry' });
    await job.promote();
  }

  /** The delivery job's end: completed (with its return value), never failed or retried. */
  const jobCompleted = (deliveryId: string) =>
    waitFor(async () => {
      const j = await queue().getJob(deliveryJobId(deliveryId, 0));
      const state = j ? await j.getState() : 'unknown';
      expect(state).not.toBe('failed');
      // Read again once completed: a job read before it completed keeps returnvalue null.
      return state === 'completed' ? (await queue().getJob(deliveryJobId(deliveryId, 0)))!.returnvalue : undefined;
    }, { timeoutMs: 30_000, what: `delivery ${deliveryId}'s job to complete` });

  it("a URL changed after a failed attempt: the delivery's next attempt goes to the new URL (signed with the same secret); events changed: only future events follow them", async () => {
    const t = await withWaitingRun('/old');
    receiver.plan('/old', [500]);
    const [delivery] = await failRun(t.tenantId, t.runId);
    await stack.container.runtime.dispatchDeliveries(t.tenantId, [delivery!]);
    await waitFor(async () => (await deliveriesOf(stack, t.endpoint.id))[0]?.attempts === 1, { what: 'the first attempt, failed, to be recorded' });
    expect(receiver.received.filter((r) => r.path === '/old')).toHaveLength(1);
    const changed = await patch(stack, t.admin, t.endpoint.id, { url: `${receiver.base}/new`, events: ['run.cancelled'] });
    expect(changed.status, changed.text).toBe(200);
    await retryNow(delivery!);
    await waitFor(async () => (await deliveriesOf(stack, t.endpoint.id))[0]?.status === 'delivered', { timeoutMs: 30_000, what: 'the retry to be delivered' });
    expect(receiver.verified('/new', t.endpoint.secret).map((m) => m.data.run_id)).toEqual([t.runId]);
    expect(receiver.received.filter((r) => r.path === '/old')).toHaveLength(1);
    // The delivery made before the change was a run.failed, and was delivered though the endpoint no longer subscribes to it;
    // a run.failed after the change inserts none.
    const later = await withWaitingRun('/later');
    const moved = await patch(stack, later.admin, later.endpoint.id, { events: ['run.cancelled'] });
    expect(moved.status).toBe(200);
    expect(await failRun(later.tenantId, later.runId)).toEqual([]);
  });

  it.each([
    ['a failure counts nothing against the new URL (failing_since stays unset)', 500, null],
    ['a failure does not disable it, though the new URL has been failing longer than WEBHOOK_DISABLE_AFTER', 500, '10 days'],
    ["a 2xx does not clear the new URL's failing_since", 200, '10 days'],
  ] as const)("an attempt to the old URL recorded after a PATCH moved the endpoint is recorded on its delivery, but says nothing of the new receiver's health: %s", async (_what, status, failingFor) => {
    const path = `/moved-${status}-${failingFor ? 'failing' : 'healthy'}`;
    const t = await withWaitingRun(path);
    receiver.plan(path, ['hold']);
    const [delivery] = await failRun(t.tenantId, t.runId);
    await stack.container.runtime.dispatchDeliveries(t.tenantId, [delivery!]);
    await waitFor(() => receiver.received.some((r) => r.path === path), { what: 'the attempt to reach the old URL' });
    const moved = await patch(stack, t.admin, t.endpoint.id, { url: `${receiver.base}${path}/new` });
    expect(moved.status, moved.text).toBe(200);
    // The new receiver's own failures, as far as this endpoint knows.
    if (failingFor) await stack.db.admin(`update webhook_endpoints set failing_since = now() - $2::interval where id = $1`, [t.endpoint.id, failingFor]);
    const before = await rowOf(stack, t.endpoint.id);
    receiver.release(status);
    const [recorded] = await waitFor(async () => {
      const rows = await deliveriesOf(stack, t.endpoint.id);
      return rows[0]?.attempts === 1 ? rows : undefined;
    }, { timeoutMs: 30_000, what: 'the old attempt to be recorded' });
    expect(recorded.status).toBe(status === 200 ? 'delivered' : 'pending');
    const after = await rowOf(stack, t.endpoint.id);
    expect({ enabled: after.enabled, failing_since: after.failing_since }).toEqual({ enabled: true, failing_since: before.failing_since });
  });

  it('DELETE: the pending deliveries go with the endpoint; their jobs, run afterwards, find nothing, complete without retrying, and send nothing', async () => {
    const t = await withWaitingRun('/deleted');
    receiver.plan('/deleted', [500]);
    const [retrying] = await failRun(t.tenantId, t.runId);
    await stack.container.runtime.dispatchDeliveries(t.tenantId, [retrying!]);
    await waitFor(async () => (await deliveriesOf(stack, t.endpoint.id))[0]?.attempts === 1, { what: 'the first attempt, failed, to be recorded' });
    // A second delivery committed, its job not yet added.
    const second = await submit(stack, t.admin, { ...SAMPLE_SUBMISSION, partner: { ...SAMPLE_SUBMISSION.partner, name: 'Other' } });
    await waitRun(stack, t.admin, second, ['waiting']);
    const [unsent] = await failRun(t.tenantId, second);
    expect(unsent).toBeDefined();
    const gone = await del(stack, t.admin, t.endpoint.id);
    expect(gone.status, gone.text).toBe(204);
    expect(await deliveriesOf(stack, t.endpoint.id)).toEqual([]);
    await retryNow(retrying!);
    await stack.container.runtime.dispatchDeliveries(t.tenantId, [unsent!]);
    expect(await jobCompleted(retrying!)).toMatchObject({ outcome: 'not_found' });
    expect(await jobCompleted(unsent!)).toMatchObject({ outcome: 'not_found' });
    expect(receiver.received.filter((r) => r.path === '/deleted')).toHaveLength(1);
  });

  it('DELETE while an attempt is in flight: the attempt finishes, records nothing (its row is gone), its job completes without a retry, and nothing more is sent', { timeout: 60_000 }, async () => {
    // A receiver that holds its first request open, and answers it 500 when told (a failure that would otherwise be retried).
    let held: ServerResponse | undefined;
    let requests = 0;
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        requests++;
        if (!held) held = res;
        else res.writeHead(500).end('no');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const t = await withWaitingRun('/unused');
      const moved = await patch(stack, t.admin, t.endpoint.id, { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/held` });
      expect(moved.status, moved.text).toBe(200);
      const [delivery] = await failRun(t.tenantId, t.runId);
      await stack.container.runtime.dispatchDeliveries(t.tenantId, [delivery!]);
      await waitFor(() => (held ? true : undefined), { timeoutMs: 30_000, what: 'the attempt to reach the receiver' });
      const gone = await del(stack, t.admin, t.endpoint.id);
      expect(gone.status, gone.text).toBe(204);
      held!.writeHead(500).end('no');
      expect(await jobCompleted(delivery!)).toMatchObject({ outcome: 'superseded' });
      expect(await deliveriesOf(stack, t.endpoint.id)).toEqual([]);
      expect(requests).toBe(1);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('DELETE during a run end that inserted a delivery for the endpoint waits for its commit, then takes the delivery with it: nothing is attempted', async () => {
    const t = await withWaitingRun('/raced-after');
    const runEnd = tenantEm(stack.container.orm, t.tenantId).fork();
    let ids: string[] = [];
    let deleted: Promise<Awaited<ReturnType<typeof api>>> | undefined;
    await runEnd.transactional(async (tx) => {
      const [own] = await tx.execute<Array<{ pid: number }>>('select pg_backend_pid() as pid');
      await stack.container.runtime.complete(tx, t.runId, 'failed', { error: { code: 'test' } }, ids);
      expect(ids).toHaveLength(1);
      deleted = del(stack, t.admin, t.endpoint.id);
      await blockedBy(stack.db.admin, own!.pid, 'the DELETE to wait for the run end');
    });
    expect((await deleted!).status).toBe(204);
    await stack.container.runtime.dispatchDeliveries(t.tenantId, ids);
    expect(await jobCompleted(ids[0]!)).toMatchObject({ outcome: 'not_found' });
    expect(receiver.received.filter((r) => r.path === '/raced-after')).toHaveLength(0);
    ids = [];
  });

  it('a run end during an uncommitted DELETE of the endpoint waits for it, then inserts no delivery and ends the run without error (no foreign-key violation)', async () => {
    const t = await withWaitingRun('/raced-before');
    const { client: deleting, pid: deletingPid } = await holderClient(stack);
    try {
      await deleting.query('begin');
      await deleting.query('delete from webhook_endpoints where id = $1', [t.endpoint.id]);
      const ended = failRun(t.tenantId, t.runId);
      await blockedBy(stack.db.admin, deletingPid, 'the run end to wait for the DELETE');
      await deleting.query('commit');
      expect(await ended).toEqual([]);
    } finally {
      await deleting.query('rollback').catch(() => {});
      await deleting.end();
    }
    expect((await waitRun(stack, t.admin, t.runId, ['failed'])).status).toBe('failed');
    expect(receiver.received.filter((r) => r.path === '/raced-before')).toHaveLength(0);
  });
});
