/**
 * Signed webhooks for run and approval events (ADR 0013) against the real stack: PostgreSQL as the
 * application role, Redis, a spawned worker process, and a real node:http receiver on 127.0.0.1.
 * The receiver verifies nothing itself: each test verifies what it got with the standardwebhooks
 * library, as a client would.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pino from 'pino';
import pg from 'pg';
import { api, CLASS_A_SUBMISSION, newTenant, SAMPLE_SUBMISSION, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { WEBHOOK_DELIVERY_JOB, WEBHOOK_QUEUE, WEBHOOK_REDELIVERY_JOB, webhookHandlers } from '../../src/platform/webhooks/delivery.ts';
import { deliveryJobId } from '../../src/platform/queue/job-ids.ts';
import { DelayedError, type Job } from 'bullmq';
import { barrier, wrappedGoldenPath, startRunHost } from '../helpers/run-host.ts';
import { stackForTests } from '../helpers/stack-for-tests.ts';
import { Webhook } from 'standardwebhooks';
import { WEBHOOK_ENDPOINTS_TOTAL_FACTOR } from '../../src/platform/webhooks/webhook-endpoints.routes.ts';
import { answeredUnblocked, createEndpoint, ENDPOINTS, openRunEnd, startReceiver, submit, tenantWithEndpoint, waitRun, webhookStackForTests, type Receiver } from '../helpers/webhooks.ts';
import { webhookResolver } from '../../src/container.ts';

const deliveriesOfRun = async (stack: TestStack, runId: string) =>
  (await stack.db.admin(`select id, event_type, status, attempts, attempt_log, endpoint_id, tenant_id from webhook_deliveries where payload->'data'->>'run_id' = $1 order by created_at`, [runId])).rows;

/** Rotates an endpoint's signing secret (optionally under a given key, with a body). */
async function rotate(stack: TestStack, token: string, id: string, body?: unknown, key: string = randomUUID()) {
  return api(stack, 'POST', `${ENDPOINTS}/${id}/rotate-secret`, { token, body, headers: { 'Idempotency-Key': key } });
}

/** A new tenant's admin and one endpoint of it at `url` (run.completed; no receiver behind it). */
async function adminWithEndpoint(stack: TestStack, url: string) {
  const tenantId = newTenant();
  const admin = await stack.token({ tenantId, sub: 'admin-1', roles: ['admin'] });
  const created = await createEndpoint(stack, admin, { url, events: ['run.completed'] });
  expect(created.status, created.text).toBe(201);
  return { tenantId, admin, id: created.json.id as string, secret: created.json.secret as string, created };
}

/** An endpoint's stored secrets, read as the admin role (no API read ever returns them). */
const secretsOf = async (stack: TestStack, id: string) =>
  (await stack.db.admin(`select secret, previous_secret, previous_secret_expires_at from webhook_endpoints where id = $1`, [id])).rows[0] as { secret: string; previous_secret: string | null; previous_secret_expires_at: Date | null };

/** The worker's webhook handlers as the test's own (silent, fast retries, private receivers allowed). */
const testHandlers = (stack: TestStack, redeliverAfterMs: number) =>
  webhookHandlers({
    orm: stack.container.orm,
    logger: pino({ level: 'silent' }),
    settings: { timeoutMs: 5000, maxAttempts: 3, retryBaseMs: 50, policy: { allowPrivate: true, httpsOnly: false }, resolver: webhookResolver(stack.config) },
    queue: () => stack.container.queues.get(WEBHOOK_QUEUE)!,
    redis: stack.container.redis,
    redeliverAfterMs,
  });

/** Ends the tenant's run `failed` in a transaction of the test's own (no job enqueued): the ids of the deliveries it committed. */
async function failRunDirectly(stack: TestStack, tenantId: string, runId: string): Promise<string[]> {
  const ids: string[] = [];
  await tenantEm(stack.container.orm, tenantId).transactional((tx) => stack.container.runtime.complete(tx, runId, 'failed', { error: { code: 'test' } }, ids));
  return ids;
}

describe('webhooks', () => {
  const suite = webhookStackForTests(3, { APPROVAL_SLA_B: '1h' });
  let stack: TestStack;
  let receiver: Receiver;
  beforeAll(() => void ({ stack, receiver } = suite));

  it('a class A run that completes is POSTed once as run.completed, signed with the secret from create; tenant B hears nothing of it', async () => {
    const a = await tenantWithEndpoint(stack, receiver, '/a', ['run.completed', 'run.cancelled', 'approval.requested']);
    const b = await tenantWithEndpoint(stack, receiver, '/b', ['run.completed', 'run.failed', 'run.cancelled', 'approval.requested']);
    const runId = await submit(stack, a.admin, CLASS_A_SUBMISSION);
    const run = await waitRun(stack, a.admin, runId, ['completed']);
    const got = await waitFor(() => receiver.verified('/a', a.endpoint.secret).find((m) => m.data.run_id === runId), { timeoutMs: 30_000, what: 'run.completed at /a' });
    expect(got.type).toBe('run.completed');
    expect(got.data).toMatchObject({ workflow: 'golden-path', run_id: runId, status: 'completed', correlation_id: run.correlation_id });
    expect(got.data.evidence_pack_id).toBe(run.output.evidence_pack_id);
    // The pack's hash as it was when the run ended, signed with the message: a receiver that keeps it can
    // check the pack later (GET /evidence/:id, hashed by the docs' recipe) without trusting the platform.
    expect(got.data.evidence_sha256).toBe(run.output.sha256);
    expect(got.data.evidence_sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(Date.parse(got.data.ended_at as string)).toBe(Date.parse(run.completed_at));
    // Exactly one: its delivery is recorded delivered, and the receiver got it once.
    await waitFor(async () => (await deliveriesOfRun(stack, runId)).every((d) => d.status === 'delivered'), { what: 'delivery recorded' });
    expect(receiver.received.filter((r) => r.body.includes(runId))).toHaveLength(1);
    const [row] = await deliveriesOfRun(stack, runId);
    expect(receiver.received.find((r) => r.body.includes(runId))!.headers['webhook-id']).toBe(row.id);
    // Tenant B's endpoint never receives tenant A's events, nor does any row of B's name A's run.
    expect(receiver.received.filter((r) => r.path === '/b')).toHaveLength(0);
    expect((await deliveriesOfRun(stack, runId)).map((d) => d.tenant_id)).toEqual([a.tenantId]);
    void b;
  });

  it('a class B run that waits sends approval.requested; its cancel sends run.cancelled', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/approvals', ['approval.requested', 'run.cancelled']);
    const runId = await submit(stack, t.admin, SAMPLE_SUBMISSION);
    await waitRun(stack, t.admin, runId, ['waiting']);
    const requested = await waitFor(() => receiver.verified('/approvals', t.endpoint.secret).find((m) => m.type === 'approval.requested' && m.data.run_id === runId), {
      timeoutMs: 30_000,
      what: 'approval.requested',
    });
    const approvals = await api(stack, 'GET', `/api/v1/approvals?limit=5`, { token: t.admin });
    const request = approvals.json.items.find((r: { run_id: string }) => r.run_id === runId);
    expect(requested.data).toMatchObject({ approval_request_id: request.id, run_id: runId, approval_class: 'B', sla_deadline: request.sla_deadline });
    const cancel = await api(stack, 'POST', `/api/v1/golden-path/runs/${runId}/cancel`, { token: t.admin, headers: { 'Idempotency-Key': randomUUID() } });
    expect(cancel.status, cancel.text).toBe(200);
    const cancelled = await waitFor(() => receiver.verified('/approvals', t.endpoint.secret).find((m) => m.type === 'run.cancelled' && m.data.run_id === runId), {
      timeoutMs: 30_000,
      what: 'run.cancelled',
    });
    expect(cancelled.data).toMatchObject({ workflow: 'golden-path', status: 'cancelled', run_id: runId });
  });

  it('a receiver that answers 500 and then 200 gets the event on the retry; both attempts are recorded', async () => {
    receiver.plan('/flaky', [500]);
    const t = await tenantWithEndpoint(stack, receiver, '/flaky', ['run.completed']);
    const runId = await submit(stack, t.admin, CLASS_A_SUBMISSION);
    await waitRun(stack, t.admin, runId, ['completed']);
    const page = await waitFor(
      async () => {
        const res = await api(stack, 'GET', `${ENDPOINTS}/${t.endpoint.id}/deliveries`, { token: t.admin });
        return res.json?.items?.[0]?.status === 'delivered' ? res.json : undefined;
      },
      { timeoutMs: 30_000, what: 'the delivery to succeed on a retry' },
    );
    expect(page.items).toHaveLength(1);
    expect(page.items[0]).toMatchObject({ event_type: 'run.completed', status: 'delivered', attempts: 2, last_status_code: 200, last_error: null, next_attempt_at: null });
    const [row] = await deliveriesOfRun(stack, runId);
    expect((row.attempt_log as { status_code: number }[]).map((a) => a.status_code)).toEqual([500, 200]);
    const got = receiver.received.filter((r) => r.path === '/flaky');
    expect(got).toHaveLength(2);
    // The same message both times: receivers deduplicate by webhook-id.
    expect(got[0]!.headers['webhook-id']).toBe(got[1]!.headers['webhook-id']);
    expect(receiver.verified('/flaky', t.endpoint.secret).map((m) => m.data.run_id)).toEqual([runId, runId]);
  });

  it('a receiver that answers 101 Switching Protocols has a failed attempt, retried: the delivery job does not hang on the connection', async () => {
    // The worker's attempt waited for ever on a 101 (webhook-send.test.ts): the job stayed active, the delivery
    // pending with no attempt recorded, and the redelivery pass left it (its job exists).
    receiver.plan('/switching', [101]);
    const t = await tenantWithEndpoint(stack, receiver, '/switching', ['run.completed']);
    const runId = await submit(stack, t.admin, CLASS_A_SUBMISSION);
    await waitRun(stack, t.admin, runId, ['completed']);
    const row = await waitFor(
      async () => {
        const [r] = await deliveriesOfRun(stack, runId);
        return r?.status === 'delivered' ? r : undefined;
      },
      { timeoutMs: 45_000, what: 'the delivery to be retried after its 101 and delivered' },
    );
    expect((row.attempt_log as { status_code: number; error: string | null }[]).map((a) => [a.status_code, a.error])).toEqual([[101, 'HTTP 101'], [200, null]]);
  });

  it('a receiver that keeps failing gets WEBHOOK_MAX_ATTEMPTS attempts, then the delivery is failed with its last answer', async () => {
    receiver.plan('/down', [503, 503, 503, 503]);
    const t = await tenantWithEndpoint(stack, receiver, '/down', ['run.completed']);
    const runId = await submit(stack, t.admin, CLASS_A_SUBMISSION);
    await waitRun(stack, t.admin, runId, ['completed']);
    const page = await waitFor(
      async () => {
        const res = await api(stack, 'GET', `${ENDPOINTS}/${t.endpoint.id}/deliveries?status=failed`, { token: t.admin });
        return res.json?.items?.length ? res.json : undefined;
      },
      { timeoutMs: 30_000, what: 'the delivery to be given up' },
    );
    expect(page.items[0]).toMatchObject({ status: 'failed', attempts: 3, last_status_code: 503, last_error: 'HTTP 503', next_attempt_at: null, delivered_at: null });
    expect(receiver.received.filter((r) => r.path === '/down')).toHaveLength(3);
  });

  it('outbox: a transaction that ends a run but rolls back leaves no delivery; the one that commits leaves exactly one', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/outbox', ['run.failed']);
    const runId = await submit(stack, t.admin, SAMPLE_SUBMISSION);
    await waitRun(stack, t.admin, runId, ['waiting']);
    const runtime = stack.container.runtime;
    const inRolledBack: string[] = [];
    await expect(
      tenantEm(stack.container.orm, t.tenantId).transactional(async (tx) => {
        expect(await runtime.complete(tx, runId, 'failed', { error: { code: 'test' } }, inRolledBack)).toBe(true);
        throw new Error('the state change rolls back');
      }),
    ).rejects.toThrow('rolls back');
    expect(inRolledBack).toHaveLength(1); // inserted in the transaction …
    expect(await deliveriesOfRun(stack, runId)).toHaveLength(0); // … and gone with it
    const committed: string[] = [];
    await tenantEm(stack.container.orm, t.tenantId).transactional((tx) => runtime.complete(tx, runId, 'failed', { error: { code: 'test' } }, committed));
    expect((await deliveriesOfRun(stack, runId)).map((d) => d.id)).toEqual(committed);
  });

  it('a delivery whose job Redis lost is enqueued again by the redelivery pass, and delivered', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/lost', ['run.failed']);
    const runId = await submit(stack, t.admin, SAMPLE_SUBMISSION);
    await waitRun(stack, t.admin, runId, ['waiting']);
    // The run ends and its delivery commits, but its job never reaches Redis (lost with it).
    const ids = await failRunDirectly(stack, t.tenantId, runId);
    expect(ids).toHaveLength(1);
    expect(await stack.container.queues.get(WEBHOOK_QUEUE)!.getJob(`wh-${ids[0]}`)).toBeUndefined();
    const pass = testHandlers(stack, 0)[WEBHOOK_REDELIVERY_JOB];
    const result = await pass();
    expect(result.enqueued).toBeGreaterThanOrEqual(1);
    const got = await waitFor(() => receiver.verified('/lost', t.endpoint.secret).find((m) => m.data.run_id === runId), { timeoutMs: 30_000, what: 'the lost delivery' });
    expect(got).toMatchObject({ type: 'run.failed', data: { status: 'failed' } });
  });

  it("a delivery job naming another tenant's delivery finds nothing (its read is bound to the job's tenant, under RLS), and sends nothing", async () => {
    const a = await tenantWithEndpoint(stack, receiver, '/rls-a', ['run.failed']);
    const runId = await submit(stack, a.admin, SAMPLE_SUBMISSION);
    await waitRun(stack, a.admin, runId, ['waiting']);
    const ids = await failRunDirectly(stack, a.tenantId, runId);
    expect(ids).toHaveLength(1);
    const deliver = testHandlers(stack, 60_000)['webhook-delivery'];
    // Tenant B's id with tenant A's delivery: the read is bound to B, whose rows hide A's.
    const job = { id: 'cross-tenant', token: 'none', data: { tenant_id: newTenant(), delivery_id: ids[0] } } as unknown as Parameters<typeof deliver>[0];
    expect(await deliver(job)).toEqual({ outcome: 'not_found' });
    await stack.container.runtime.dispatchDeliveries(a.tenantId, ids);
    await waitFor(async () => (await deliveriesOfRun(stack, runId)).every((d) => d.status === 'delivered'), { timeoutMs: 30_000, what: "A's delivery by its own job" });
    expect(receiver.received.filter((r) => r.path === '/rls-a')).toHaveLength(1);
  });

  it('a rotated secret overlaps with the previous one: during the overlap each delivery verifies with either, after it with the new one only; a rotation during an overlap replaces the previous', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/rotate', ['run.completed']);
    const s0 = t.endpoint.secret;
    const deliverRun = async () => {
      const runId = await submit(stack, t.admin, CLASS_A_SUBMISSION);
      await waitRun(stack, t.admin, runId, ['completed']);
      const got = await waitFor(() => receiver.received.find((r) => r.path === '/rotate' && r.body.includes(runId)), { timeoutMs: 30_000, what: `the delivery of ${runId}` });
      return { runId, signatures: String(got.headers['webhook-signature']).split(' ') };
    };
    // What a receiver does: verify the message with a secret it holds (the library accepts any one of the listed signatures).
    const verifiedWith = (run: { runId: string }, secret: string) => {
      const hit = receiver.received.find((r) => r.path === '/rotate' && r.body.includes(run.runId))!;
      return (new Webhook(secret).verify(hit.body, hit.headers as Record<string, string>) as { data: { run_id: string } }).data.run_id;
    };

    // A rotation with an hour's overlap: the new secret is answered once, the old one still signs.
    const first = await rotate(stack, t.admin, t.endpoint.id, { previous_secret_expires_in_seconds: 3600 });
    expect(first.status, first.text).toBe(200);
    const s1 = first.json.secret as string;
    expect(s1).toMatch(/^whsec_[A-Za-z0-9+/]+=*$/);
    expect(s1).not.toBe(s0);
    expect(first.json).toMatchObject({ id: t.endpoint.id, enabled: true });
    expect(Date.parse(first.json.previous_secret_expires_at) - Date.now()).toBeGreaterThan(3500_000);
    const during = await deliverRun();
    expect(during.signatures).toHaveLength(2);
    expect(verifiedWith(during, s1)).toBe(during.runId);
    expect(verifiedWith(during, s0)).toBe(during.runId);

    // A second rotation while s0 is still live: s1 becomes the previous, s0 signs nothing any more.
    const second = await rotate(stack, t.admin, t.endpoint.id, { previous_secret_expires_in_seconds: 3600 });
    expect(second.status, second.text).toBe(200);
    const s2 = second.json.secret as string;
    const replaced = await deliverRun();
    expect(replaced.signatures).toHaveLength(2);
    expect(verifiedWith(replaced, s2)).toBe(replaced.runId);
    expect(verifiedWith(replaced, s1)).toBe(replaced.runId);
    expect(() => verifiedWith(replaced, s0)).toThrow(/No matching signature/);

    // A one-second overlap: once it has passed (by the database's clock, as the endpoint's read says), only s3 signs.
    const third = await rotate(stack, t.admin, t.endpoint.id, { previous_secret_expires_in_seconds: 1 });
    expect(third.status, third.text).toBe(200);
    const s3 = third.json.secret as string;
    await waitFor(async () => (await api(stack, 'GET', `${ENDPOINTS}/${t.endpoint.id}`, { token: t.admin })).json?.previous_secret_expires_at === null, { timeoutMs: 10_000, what: 'the previous secret to expire' });
    const after = await deliverRun();
    expect(after.signatures).toHaveLength(1);
    expect(verifiedWith(after, s3)).toBe(after.runId);
    expect(() => verifiedWith(after, s2)).toThrow(/No matching signature/);

    // 0 drops the previous secret at once: nothing but the new one is stored.
    const fourth = await rotate(stack, t.admin, t.endpoint.id, { previous_secret_expires_in_seconds: 0 });
    expect(fourth.status, fourth.text).toBe(200);
    expect(fourth.json.previous_secret_expires_at).toBeNull();
    expect(await secretsOf(stack, t.endpoint.id)).toEqual({ secret: fourth.json.secret, previous_secret: null, previous_secret_expires_at: null });
    const dropped = await deliverRun();
    expect(dropped.signatures).toHaveLength(1);
    expect(verifiedWith(dropped, fourth.json.secret)).toBe(dropped.runId);
    expect(() => verifiedWith(dropped, s3)).toThrow(/No matching signature/);
  });

  it('a disabled endpoint gets no new event, and its pending delivery is given up unsent', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/disabled', ['run.failed', 'run.cancelled']);
    const [first, second] = [await submit(stack, t.admin, SAMPLE_SUBMISSION), await submit(stack, t.admin, { ...SAMPLE_SUBMISSION, partner: { ...SAMPLE_SUBMISSION.partner, name: 'Other' } })];
    await waitRun(stack, t.admin, first, ['waiting']);
    await waitRun(stack, t.admin, second, ['waiting']);
    // A delivery committed while the endpoint was enabled, its job not yet added …
    const ids: string[] = [];
    await tenantEm(stack.container.orm, t.tenantId).transactional((tx) => stack.container.runtime.complete(tx, first, 'failed', { error: { code: 'test' } }, ids));
    const disabled = await api(stack, 'POST', `${ENDPOINTS}/${t.endpoint.id}/disable`, { token: t.admin, headers: { 'Idempotency-Key': randomUUID() } });
    expect(disabled.status, disabled.text).toBe(200);
    // … is given up at its attempt; an event after the disable inserts none.
    await stack.container.runtime.dispatchDeliveries(t.tenantId, ids);
    const cancel = await api(stack, 'POST', `/api/v1/golden-path/runs/${second}/cancel`, { token: t.admin, headers: { 'Idempotency-Key': randomUUID() } });
    expect(cancel.status, cancel.text).toBe(200);
    const page = await waitFor(
      async () => {
        const res = await api(stack, 'GET', `${ENDPOINTS}/${t.endpoint.id}/deliveries`, { token: t.admin });
        return res.json?.items?.[0]?.status === 'failed' ? res.json : undefined;
      },
      { timeoutMs: 30_000, what: 'the pending delivery to be given up' },
    );
    expect(page.items).toHaveLength(1);
    expect(page.items[0]).toMatchObject({ id: ids[0], status: 'failed', attempts: 1, last_error: 'endpoint disabled', last_status_code: null });
    expect(receiver.received.filter((r) => r.path === '/disabled')).toHaveLength(0);
  });

  it("an execution superseded by another's record of its attempt (a stalled job run twice) delays its job to the row's next attempt, not completes it: the retry is not left to the redelivery pass", { timeout: 60_000 }, async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/superseded', ['run.completed']);
    const handler = testHandlers(stack, 60_000)[WEBHOOK_DELIVERY_JOB];
    /** One execution of a new delivery's job (`jobIdOf` its id; no job in Redis: none of the worker's), until its record; what it moved its job to. */
    const execution = async (jobIdOf: (id: string) => string) => {
      const id = randomUUID();
      await stack.db.admin(
        `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
         values ($1, $2, $3, 'run.completed', '{}', 'pending', 0, now(), now(), now())`,
        [id, t.tenantId, t.endpoint.id],
      );
      const delayedTo: number[] = [];
      const job = { id: jobIdOf(id), name: WEBHOOK_DELIVERY_JOB, queueName: WEBHOOK_QUEUE, token: 'tok', data: { tenant_id: t.tenantId, delivery_id: id }, moveToDelayed: async (ts: number) => void delayedTo.push(ts) } as unknown as Job;
      const held = receiver.received.length;
      receiver.plan('/superseded', ['hold']);
      const run = handler(job).then((r) => r, (e: unknown) => e);
      await waitFor(() => (receiver.received.length > held ? true : undefined), { what: 'its POST at the receiver' });
      // Meanwhile the other execution recorded this attempt (a failure, the retry due in an hour) and its move to delayed failed (its lock lost).
      const [due] = (await stack.db.admin(
        `update webhook_deliveries set attempts = 1, last_status_code = 500, next_attempt_at = date_trunc('milliseconds', now()) + interval '1 hour' where id = $1 returning next_attempt_at`,
        [id],
      )).rows as { next_attempt_at: Date }[];
      receiver.release(500);
      return { outcome: await run, delayedTo, due: due!.next_attempt_at.getTime(), id };
    };
    const current = await execution((id) => deliveryJobId(id));
    expect(current.outcome).toBeInstanceOf(DelayedError);
    expect(current.delayedTo).toEqual([current.due]);
    // Its attempt is recorded once (the other execution's).
    expect((await stack.db.admin(`select status, attempts from webhook_deliveries where id = $1`, [current.id])).rows[0]).toEqual({ status: 'pending', attempts: 1 });
    // A job of an earlier cycle of the delivery (before a resend) is not its job now: it completes, superseded, as before.
    const earlier = await execution((id) => deliveryJobId(id, 3));
    expect(earlier.outcome).toEqual({ outcome: 'superseded' });
    expect(earlier.delayedTo).toEqual([]);
  });
});

/**
 * The run's last step, held by a worker in this process until a cancel has committed: its
 * checkpoint then finds the run no longer active and its transaction — the run's end with its
 * run.completed delivery — commits nothing. The run's only event is the cancel's.
 */
describe('outbox: a step transaction that rolls back', () => {
  let stack: TestStack;
  let receiver: Receiver;

  beforeAll(async () => {
    stack = await startStack({ env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true' } }); // no worker process: only the host below runs the run
    receiver = await startReceiver();
  }, 120_000);
  afterAll(async () => {
    await receiver?.close();
    await stack?.stop();
  });

  it('writes no delivery: a run cancelled while its last step runs has run.cancelled only, never run.completed', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/held', ['run.completed', 'run.cancelled']);
    const b = barrier();
    const last = stack.container.runtime.workflow('golden-path').steps.length;
    const host = startRunHost(
      stack,
      wrappedGoldenPath(stack, (step, seq) => async (input, ctx) => {
        if (seq === last) {
          b.enter();
          await b.released;
        }
        return step.run(input, ctx);
      }),
      'webhook-held',
    );
    try {
      const runId = await submit(stack, t.admin, CLASS_A_SUBMISSION);
      await b.inside;
      expect(await deliveriesOfRun(stack, runId)).toEqual([]); // not ended yet: no event
      const cancel = await api(stack, 'POST', `/api/v1/golden-path/runs/${runId}/cancel`, { token: t.admin, headers: { 'Idempotency-Key': randomUUID() } });
      expect(cancel.status, cancel.text).toBe(200);
      b.release();
      // The step's transaction ran to its checkpoint and rolled back there; the job then ended.
      await waitFor(async () => (await stack.db.admin(`select count(*)::int as n from durable_checkpoints where run_id = $1`, [runId])).rows[0].n === last - 1 && (await api(stack, 'GET', `/api/v1/golden-path/runs/${runId}`, { token: t.admin })).json.status === 'cancelled', { what: 'the held step to end' });
      const queue = stack.container.queues.get('golden-path')!;
      await waitFor(async () => (await queue.getJobCounts('active', 'wait')).active === 0, { what: 'the run job to end' });
      expect((await deliveriesOfRun(stack, runId)).map((d) => d.event_type)).toEqual(['run.cancelled']);
    } finally {
      b.release();
      await host.stop();
    }
  });
});

describe('webhook endpoint API: refusals', () => {
  // WEBHOOK_ALLOW_PRIVATE_NETWORKS unset: the production default. At most three enabled endpoints a tenant.
  const suite = stackForTests({ stack: { env: { WEBHOOK_MAX_ENDPOINTS: '3', LOG_LEVEL: 'info' } }, logs: true });
  const { logLines } = suite;
  let stack: TestStack;
  beforeAll(() => void ({ stack } = suite));

  const endpointsOf = async (tenantId: string) => (await stack.db.admin(`select count(*)::int as n from webhook_endpoints where tenant_id = $1`, [tenantId])).rows[0].n as number;

  it.each([
    ['a URL that is no URL', { url: 'not a url', events: ['run.completed'] }],
    ['an ftp URL', { url: 'ftp://example.com/hook', events: ['run.completed'] }],
    ['an unknown event type', { url: 'https://example.com/hook', events: ['run.exploded'] }],
    ['no event', { url: 'https://example.com/hook', events: [] }],
    ['a loopback address', { url: 'http://127.0.0.1:9/hook', events: ['run.completed'] }],
    ['a private address', { url: 'https://10.1.2.3/hook', events: ['run.completed'] }],
    ['the link-local metadata address', { url: 'http://169.254.169.254/latest', events: ['run.completed'] }],
    ['an IPv6 unique-local address', { url: 'https://[fd00::1]/hook', events: ['run.completed'] }],
    ['an IPv4-mapped loopback', { url: 'https://[::ffff:127.0.0.1]/hook', events: ['run.completed'] }],
    ['a name that resolves to loopback', { url: 'http://localhost:9/hook', events: ['run.completed'] }],
    ['an unknown field', { url: 'https://example.com/hook', events: ['run.completed'], secret: 'mine' }],
  ])('%s is refused with 422 problem+json, and nothing is stored', async (_what, body) => {
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin-1', roles: ['admin'] });
    const res = await createEndpoint(stack, admin, body);
    expect(res.status, res.text).toBe(422);
    expect(res.headers.get('content-type')).toMatch(/application\/problem\+json/);
    expect(await endpointsOf(tenantId)).toBe(0);
  });

  it('a refused host name does not tell which address it resolves to: the platform\'s DNS is no map of its network', async () => {
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin-1', roles: ['admin'] });
    const res = await createEndpoint(stack, admin, { url: 'http://localhost:9/hook', events: ['run.completed'] });
    expect(res.status, res.text).toBe(422);
    expect(res.json.errors).toEqual([{ path: 'url', message: 'its host localhost does not resolve to a public address' }]);
    expect(res.text).not.toMatch(/127\.0\.0\.1|::1|loopback/);
  });

  it('a user who is not a tenant admin may neither create nor list endpoints (403)', async () => {
    const tenantId = newTenant();
    const user = await stack.token({ tenantId, sub: 'user-1', roles: ['approver'] });
    const res = await createEndpoint(stack, user, { url: 'https://example.com/hook', events: ['run.completed'] });
    expect(res.status, res.text).toBe(403);
    expect((await api(stack, 'GET', ENDPOINTS, { token: user })).status).toBe(403);
    expect(await endpointsOf(tenantId)).toBe(0);
  });

  it('an admin lists, reads and disables endpoints of its own tenant only; the secret is never shown again', async () => {
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin-1', roles: ['admin'] });
    const other = await stack.token({ tenantId: newTenant(), sub: 'admin-1', roles: ['admin'] });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await api(stack, 'POST', ENDPOINTS, { token: admin, body: { url: `https://93.184.215.${i + 10}/hook`, events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } });
      expect(res.status, res.text).toBe(201);
      ids.push(res.json.id);
    }
    const first = await api(stack, 'GET', `${ENDPOINTS}?limit=2`, { token: admin });
    expect(first.status, first.text).toBe(200);
    expect(first.json.items).toHaveLength(2);
    const second = await api(stack, 'GET', `${ENDPOINTS}?limit=2&cursor=${first.json.next_cursor}`, { token: admin });
    expect([...first.json.items, ...second.json.items].map((e: { id: string }) => e.id).sort()).toEqual([...ids].sort());
    expect(second.json.next_cursor).toBeNull();
    expect(JSON.stringify([first.json, second.json])).not.toContain('whsec_');
    expect((await api(stack, 'GET', `${ENDPOINTS}/${ids[0]}`, { token: other })).status).toBe(404);
    const disabled = await api(stack, 'POST', `${ENDPOINTS}/${ids[0]}/disable`, { token: admin, headers: { 'Idempotency-Key': randomUUID() } });
    expect(disabled.status, disabled.text).toBe(200);
    expect(disabled.json).toMatchObject({ id: ids[0], enabled: false });
    expect(disabled.json.secret).toBeUndefined();
  });

  it("a signing secret never travels in a statement's text (pg_stat_activity, the server's log): the create's insert and the rotation's update bind it as a parameter", async () => {
    const Connection = (pg as unknown as { Connection: { prototype: Record<string, (...a: any[]) => unknown> } }).Connection.prototype;
    const texts: string[] = [];
    const bound: string[] = [];
    const original = { query: Connection.query!, parse: Connection.parse!, bind: Connection.bind! };
    // What the API's connections send PostgreSQL as statement text: a simple query's, and an extended-protocol Parse's.
    Connection.query = function (this: unknown, text: string) {
      texts.push(String(text));
      return original.query.apply(this, [text]);
    };
    Connection.parse = function (this: unknown, msg: { text: string }) {
      texts.push(msg.text);
      return original.parse.apply(this, [msg]);
    };
    // The values bound to a statement (prepared by an earlier test on the connection, its text is not sent again).
    Connection.bind = function (this: unknown, msg: { values?: unknown[] }) {
      bound.push(...(msg.values ?? []).map((v) => (Buffer.isBuffer(v) ? v.toString('utf8') : String(v))));
      return original.bind.apply(this, [msg]);
    };
    let created, rotated;
    try {
      created = await adminWithEndpoint(stack, 'https://93.184.215.41/hook');
      rotated = await rotate(stack, created.admin, created.id);
    } finally {
      Object.assign(Connection, original);
    }
    expect(rotated.status, rotated.text).toBe(200);
    for (const secret of [created.secret, rotated.json.secret as string]) {
      const key = secret.slice('whsec_'.length);
      expect(texts.filter((t) => t.includes(key))).toEqual([]);
      // …and it did travel, as a bound value: the hooks saw the statements that store it.
      expect(bound.some((v) => v.includes(key))).toBe(true);
    }
  });

  it('rotate-secret: without a body the previous secret overlaps for 24 h; a replay of its key answers the same secret and rotates nothing; reads show neither secret', async () => {
    const { tenantId, admin, id, secret: createdSecret, created } = await adminWithEndpoint(stack, 'https://93.184.215.40/hook');
    const key = randomUUID();
    const first = await rotate(stack, admin, id, undefined, key);
    expect(first.status, first.text).toBe(200);
    const expires = Date.parse(first.json.previous_secret_expires_at) - Date.now();
    expect(expires).toBeGreaterThan(23 * 3600_000);
    expect(expires).toBeLessThanOrEqual(24 * 3600_000);
    const stored = await secretsOf(stack, id);
    expect(stored).toMatchObject({ secret: first.json.secret, previous_secret: createdSecret });
    const replay = await rotate(stack, admin, id, undefined, key);
    expect(replay.status, replay.text).toBe(200);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    // An answer holding a secret is kept by no cache (browser, proxy), its replay neither.
    for (const answer of [created, first, replay]) expect(answer.headers.get('cache-control')).toBe('no-store');
    expect(replay.json.secret).toBe(first.json.secret);
    expect(await secretsOf(stack, id)).toEqual(stored);
    // No body, `{}` and the default spelled out are one request (as for a route without a body): a
    // client whose retry sends `{}` where the first attempt sent nothing gets the replay, not a 422.
    for (const same of [{}, { previous_secret_expires_in_seconds: 86400 }]) {
      const again = await rotate(stack, admin, id, same, key);
      expect(again.status, `${JSON.stringify(same)}: ${again.text}`).toBe(200);
      expect(again.headers.get('idempotent-replayed')).toBe('true');
      expect(again.json.secret).toBe(first.json.secret);
    }
    expect(await secretsOf(stack, id)).toEqual(stored);
    // The same key with another body is another request: refused, and nothing rotates.
    const reused = await rotate(stack, admin, id, { previous_secret_expires_in_seconds: 0 }, key);
    expect(reused.status, reused.text).toBe(422);
    expect(await secretsOf(stack, id)).toEqual(stored);
    const reads = [await api(stack, 'GET', `${ENDPOINTS}/${id}`, { token: admin }), await api(stack, 'GET', ENDPOINTS, { token: admin })];
    expect(reads[0]!.json.previous_secret_expires_at).toBe(first.json.previous_secret_expires_at);
    expect(JSON.stringify(reads.map((r) => r.json))).not.toContain('whsec_');
    // One audit line for the one rotation (the replay ran nothing), naming who and until when; never a secret.
    expect(logLines.filter((l) => l.security_event === 'webhook_secret_rotated' && l.webhook_endpoint_id === id)).toEqual([
      expect.objectContaining({ tenant_id: tenantId, rotated_by: 'admin-1', previous_secret_expires_at: first.json.previous_secret_expires_at }),
    ]);
    expect(JSON.stringify(logLines)).not.toContain('whsec_');
    // The stored answer is its principal's: another admin of the tenant sending the same key is not
    // answered the secret, it makes a rotation of its own.
    const otherAdmin = await stack.token({ tenantId, sub: 'admin-2', roles: ['admin'] });
    const theirs = await rotate(stack, otherAdmin, id, undefined, key);
    expect(theirs.status, theirs.text).toBe(200);
    expect(theirs.headers.get('idempotent-replayed')).toBeNull();
    expect(theirs.json.secret).not.toBe(first.json.secret);
    expect(await secretsOf(stack, id)).toMatchObject({ secret: theirs.json.secret, previous_secret: first.json.secret });
  });

  it('rotate-secret is refused, and nothing changes: without Idempotency-Key (400), for a non-admin (403), a bad body (422), another tenant (404)', async () => {
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin-1', roles: ['admin'] });
    const approver = await stack.token({ tenantId, sub: 'user-1', roles: ['approver'] });
    const other = await stack.token({ tenantId: newTenant(), sub: 'admin-1', roles: ['admin'] });
    const created = await createEndpoint(stack, admin, { url: 'https://93.184.215.41/hook', events: ['run.completed'] });
    expect(created.status, created.text).toBe(201);
    const id = created.json.id as string;
    const unchanged = { secret: created.json.secret, previous_secret: null, previous_secret_expires_at: null };
    const noKey = await api(stack, 'POST', `${ENDPOINTS}/${id}/rotate-secret`, { token: admin });
    expect(noKey.status, noKey.text).toBe(400);
    expect((await rotate(stack, approver, id)).status).toBe(403);
    for (const body of [
      { previous_secret_expires_in_seconds: -1 },
      { previous_secret_expires_in_seconds: 7 * 24 * 3600 + 1 },
      { previous_secret_expires_in_seconds: 1.5 },
      { previous_secret_expires_in_seconds: '3600' },
      { previous_secret_expires_in_seconds: null },
      { secret: 'whsec_mine' },
      [],
    ]) {
      const res = await rotate(stack, admin, id, body);
      expect(res.status, `${JSON.stringify(body)}: ${res.text}`).toBe(422);
      expect(res.headers.get('content-type')).toMatch(/application\/problem\+json/);
    }
    const cross = await rotate(stack, other, id);
    expect(cross.status, cross.text).toBe(404);
    expect(await secretsOf(stack, id)).toEqual(unchanged);
  });

  it('rotate-secret of a disabled endpoint rotates (after a leak: disable at once, rotate, re-enable later): 200 with the new secret, the old one kept only for the overlap asked', async () => {
    const { admin, id, secret: createdSecret } = await adminWithEndpoint(stack, 'https://93.184.215.42/hook');
    expect((await api(stack, 'POST', `${ENDPOINTS}/${id}/disable`, { token: admin, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);
    const rotated = await rotate(stack, admin, id, { previous_secret_expires_in_seconds: 0 });
    expect(rotated.status, rotated.text).toBe(200);
    expect(rotated.json).toMatchObject({ id, enabled: false, previous_secret_expires_at: null });
    expect(rotated.json.secret).toMatch(/^whsec_/);
    expect(rotated.json.secret).not.toBe(createdSecret);
    expect(await secretsOf(stack, id)).toEqual({ secret: rotated.json.secret, previous_secret: null, previous_secret_expires_at: null });
  });

  it('concurrent rotations: under one Idempotency-Key one rotates and the others replay it or are told it is in progress; under different keys they take turns, the previous of the later being the secret of the earlier', async () => {
    const { admin, id, secret: createdSecret } = await adminWithEndpoint(stack, 'https://93.184.215.44/hook');
    const key = randomUUID();
    const same = await Promise.all(Array.from({ length: 4 }, () => rotate(stack, admin, id, undefined, key)));
    const rotatedOnce = same.filter((r) => r.status === 200);
    expect(rotatedOnce.length, same.map((r) => r.text).join('\n')).toBeGreaterThanOrEqual(1);
    for (const r of same) expect(r.status === 200 || (r.status === 409 && r.json.code === 'idempotency_key_in_use'), r.text).toBe(true);
    expect(new Set(rotatedOnce.map((r) => r.json.secret)).size).toBe(1);
    const once = rotatedOnce[0]!.json.secret as string;
    expect(await secretsOf(stack, id)).toMatchObject({ secret: once, previous_secret: createdSecret });
    const [a, b] = await Promise.all([rotate(stack, admin, id), rotate(stack, admin, id)]);
    expect([a!.status, b!.status]).toEqual([200, 200]);
    const stored = await secretsOf(stack, id);
    // Whichever committed last holds the secret, and the previous is the one the other answered: never `once` kept beside it, never a secret nobody was told.
    const [earlier, later] = stored.secret === a!.json.secret ? [b!, a!] : [a!, b!];
    expect(stored).toMatchObject({ secret: later.json.secret, previous_secret: earlier.json.secret });
  });

  it('rotate-secret, enable and disable lock the endpoint row as NO KEY UPDATE: neither waits for a transaction that inserted a delivery for the endpoint (a run ending), nor would make one wait', async () => {
    const { tenantId, admin, id } = await adminWithEndpoint(stack, 'https://93.184.215.43/hook');
    // A run's end, still open: its delivery insert holds KEY SHARE on the endpoint row (the foreign key).
    const runEnd = await openRunEnd(stack, tenantId, id);
    try {
      const unblocked = (request: Promise<Awaited<ReturnType<typeof api>>>, what: string) => answeredUnblocked(stack, runEnd.pid, request, what);
      const rotated = await unblocked(rotate(stack, admin, id), 'rotate-secret');
      expect(rotated.status, rotated.text).toBe(200);
      // An enable of an endpoint already enabled reads it under the same lock, and changes nothing.
      const enabled = await unblocked(api(stack, 'POST', `${ENDPOINTS}/${id}/enable`, { token: admin, headers: { 'Idempotency-Key': randomUUID() } }), 'enable');
      expect(enabled.status, enabled.text).toBe(200);
      const disabled = await unblocked(api(stack, 'POST', `${ENDPOINTS}/${id}/disable`, { token: admin, headers: { 'Idempotency-Key': randomUUID() } }), 'disable');
      expect(disabled.status, disabled.text).toBe(200);
    } finally {
      await runEnd.close();
    }
  });

  it('a tenant has at most WEBHOOK_MAX_ENDPOINTS enabled endpoints, concurrent creates included: one more is 409 and nothing is stored; a disabled one frees its place', async () => {
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin-1', roles: ['admin'] });
    const enabledOf = async () => (await stack.db.admin(`select count(*)::int as n from webhook_endpoints where tenant_id = $1 and enabled`, [tenantId])).rows[0].n as number;
    // Six creates at once for a cap of three: each would see room under it without a lock.
    const created = await Promise.all(Array.from({ length: 6 }, (_, i) => createEndpoint(stack, admin, { url: `https://93.184.215.${i + 20}/hook`, events: ['run.completed'] })));
    expect(created.map((r) => r.status).sort()).toEqual([201, 201, 201, 409, 409, 409]);
    const refused = created.find((r) => r.status === 409)!;
    expect(refused.headers.get('content-type')).toMatch(/application\/problem\+json/);
    expect(refused.json).toMatchObject({ code: 'webhook_endpoint_limit' });
    expect(await enabledOf()).toBe(3);
    expect(await endpointsOf(tenantId)).toBe(3);
    const first = created.find((r) => r.status === 201)!.json.id as string;
    expect((await api(stack, 'POST', `${ENDPOINTS}/${first}/disable`, { token: admin, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);
    const again = await createEndpoint(stack, admin, { url: 'https://93.184.215.30/hook', events: ['run.completed'] });
    expect(again.status, again.text).toBe(201);
    expect(await enabledOf()).toBe(3);
  });

  it('a tenant has at most WEBHOOK_ENDPOINTS_TOTAL_FACTOR × WEBHOOK_MAX_ENDPOINTS endpoints, disabled ones included: a create → disable loop ends in 409, nothing stored; a delete frees a place', async () => {
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin-1', roles: ['admin'] });
    const total = WEBHOOK_ENDPOINTS_TOTAL_FACTOR * stack.config.WEBHOOK_MAX_ENDPOINTS;
    const ids: string[] = [];
    for (let i = 0; i < total; i++) {
      const created = await createEndpoint(stack, admin, { url: `https://93.184.215.${i + 20}/hook`, events: ['run.completed'] });
      expect(created.status, created.text).toBe(201);
      ids.push(created.json.id);
      expect((await api(stack, 'POST', `${ENDPOINTS}/${created.json.id}/disable`, { token: admin, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);
    }
    const refused = await createEndpoint(stack, admin, { url: 'https://93.184.216.1/hook', events: ['run.completed'] });
    expect(refused.status, refused.text).toBe(409);
    expect(refused.json).toMatchObject({ code: 'webhook_endpoint_total_limit' });
    expect(await endpointsOf(tenantId)).toBe(total);
    // Enabling a disabled one adds no endpoint: still under the enabled cap, it is allowed.
    expect((await api(stack, 'POST', `${ENDPOINTS}/${ids[0]}/enable`, { token: admin, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);
    expect((await api(stack, 'DELETE', `${ENDPOINTS}/${ids[1]}`, { token: admin })).status).toBe(204);
    const again = await createEndpoint(stack, admin, { url: 'https://93.184.216.1/hook', events: ['run.completed'] });
    expect(again.status, again.text).toBe(201);
    expect(await endpointsOf(tenantId)).toBe(total);
  });
});
