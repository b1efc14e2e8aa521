/**
 * Webhook deliveries under faults (ADR 0013, *Consequences*: at least once, never lost while PostgreSQL
 * keeps the row), with real processes: a worker SIGKILLed while its POST is held by the receiver, the
 * stack's own Redis flushed with deliveries pending, put back for a rate turn and delayed for a retry,
 * and the redelivery pass over a backlog larger than one of its pages.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import pino from 'pino';
import type { Redis } from 'ioredis';
import { api, startStack, newTenant, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { enqueueDeliveries, WEBHOOK_DELIVERY_JOB, WEBHOOK_QUEUE, WEBHOOK_REDELIVERY_JOB, webhookHandlers } from '../../src/platform/webhooks/delivery.ts';
import { deliveryJobId } from '../../src/platform/queue/job-ids.ts';
import { createEndpoint, ENDPOINTS, expectSpaced, rateLetGos, startReceiver, startWebhookStack, stopWebhookStack, tenantWithEndpoint, type Receiver } from '../helpers/webhooks.ts';
import { monitorKeys } from '../helpers/redis-monitor.ts';
import { startEnvironment, pollDb, type Environment } from '../chaos/environment.ts';
import { CLASS_A_SUBMISSION } from '../helpers/stack.ts';
import { webhookResolver } from '../../src/container.ts';

const PAYLOAD = { type: 'run.completed', timestamp: '2026-12-04T00:00:00.000Z', data: { workflow: 'golden-path', run_id: 'r', status: 'completed', correlation_id: 'c-1', ended_at: '2026-12-04T00:00:00.000Z' } };

/**
 * `n` pending deliveries of the endpoint, `agoMs` overdue, a microsecond apart — or, `tied`, all at one
 * next_attempt_at, as the outbox inserts a transaction's deliveries (its now()); their ids in next_attempt_at order.
 */
async function insertDeliveries(stack: TestStack, tenantId: string, endpointId: string, n: number, agoMs = 0, tied = false): Promise<string[]> {
  const { rows } = await stack.db.admin(
    `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
     select gen_random_uuid(), $1, $2, 'run.completed', $3, 'pending', 0, now() - $4 * interval '1 millisecond' + g * $6 * interval '1 microsecond', now(), now()
       from generate_series(1, $5) g
     returning id, next_attempt_at`,
    [tenantId, endpointId, PAYLOAD, agoMs, n, tied ? 0 : 1],
  );
  return rows.sort((a, b) => a.next_attempt_at - b.next_attempt_at).map((r) => r.id as string);
}

const passOf = (stack: TestStack, redis: Redis = stack.container.redis) =>
  webhookHandlers({
    orm: stack.container.orm,
    logger: pino({ level: 'silent' }),
    settings: { timeoutMs: 5000, maxAttempts: 3, retryBaseMs: 50, policy: { allowPrivate: true, httpsOnly: false }, resolver: webhookResolver(stack.config) },
    queue: () => stack.container.queues.get(WEBHOOK_QUEUE)!,
    redis,
    redeliverAfterMs: 0,
  })[WEBHOOK_REDELIVERY_JOB];

/**
 * Calls, since the last CONFIG RESETSTAT, of the commands that walk a list (their cost is the list's length,
 * commands run by a Lua script included): Queue.getJobState walks `active` and `wait` for a job that is not
 * in a sorted set, so a pass reading it for each of N waiting or lost jobs cost O(N²) of Redis's one thread.
 */
const listWalks = async (redis: Redis) =>
  [...(await redis.info('commandstats')).matchAll(/^cmdstat_(lpos|lrange|lindex|lrem):calls=(\d+)/gm)].reduce((n, m) => n + Number(m[2]), 0);

describe('the redelivery pass over a backlog larger than its page (no worker: the jobs stay where the pass leaves them; an own Redis, its command counts the pass\'s)', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ ownRedis: true, env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true' } });
  }, 120_000);
  afterAll(() => stack?.stop());
  /** A new tenant's endpoint, the earlier tests' pending rows settled: the pass sees only what the test inserts next. */
  const aloneWithEndpoint = async (path: string) => {
    const t = newTenant();
    const admin = await stack.token({ tenantId: t, sub: 'admin', roles: ['admin'] });
    const endpoint = await createEndpoint(stack, admin, { url: `http://127.0.0.1:9${path}`, events: ['run.completed'] });
    await stack.db.admin(`update webhook_deliveries set status = 'delivered' where status = 'pending'`);
    return { t, endpoint };
  };

  it("a lost delivery behind 1,000 overdue ones whose jobs exist (waiting for rate turns) is enqueued by the next pass, not after that backlog drains; a flushed backlog of 1,500 comes back in one pass, each job read without walking the queue's lists", { timeout: 120_000 }, async () => {
    const queue = stack.container.queues.get(WEBHOOK_QUEUE)!;
    // Tenant A: an endpoint's backlog of 1,000, overdue (put back for rate turns, which do not move next_attempt_at), jobs delayed.
    const a = newTenant();
    const aAdmin = await stack.token({ tenantId: a, sub: 'admin-a', roles: ['admin'] });
    const aEndpoint = await createEndpoint(stack, aAdmin, { url: 'http://127.0.0.1:9/a', events: ['run.completed'] });
    expect(aEndpoint.status, aEndpoint.text).toBe(201);
    const backlog = await insertDeliveries(stack, a, aEndpoint.json.id, 1000, 60_000);
    await queue.addBulk(backlog.map((id) => ({ name: WEBHOOK_DELIVERY_JOB, data: { tenant_id: a, delivery_id: id }, opts: { jobId: deliveryJobId(id), delay: 3_600_000 } })));
    // Tenant B: one delivery committed after them whose job never reached Redis.
    const b = newTenant();
    const bAdmin = await stack.token({ tenantId: b, sub: 'admin-b', roles: ['admin'] });
    const bEndpoint = await createEndpoint(stack, bAdmin, { url: 'http://127.0.0.1:9/b', events: ['run.completed'] });
    const [lost] = await insertDeliveries(stack, b, bEndpoint.json.id, 1, 1_000);
    const pass = passOf(stack);
    expect(await pass()).toEqual({ overdue: 1001, enqueued: 1 });
    expect(await queue.getJobState(deliveryJobId(lost!))).toBe('waiting');

    // Redis flushed (the jobs gone): the pass brings the whole backlog back at once, not 1,000 a minute.
    await queue.obliterate({ force: true });
    await insertDeliveries(stack, b, bEndpoint.json.id, 499, 1_000);
    const redis = stack.ownRedis!.client;
    await redis.config('RESETSTAT');
    expect(await pass()).toEqual({ overdue: 1500, enqueued: 1500 });
    // And again: every job exists now (waiting: no worker), nothing is enqueued twice.
    expect(await pass()).toEqual({ overdue: 1500, enqueued: 0 });
    // Each row's job read in O(1): neither pass walked the wait list, as long as the backlog, once per row.
    expect(await listWalks(redis)).toBe(0);
    expect(await queue.getJobCountByTypes('waiting')).toBe(1500);
    await queue.obliterate({ force: true });
  });

  it('a pass reads the rows overdue when it started: one falling overdue while it runs is left to the next pass (a pass cannot chase them for ever)', { timeout: 120_000 }, async () => {
    const queue = stack.container.queues.get(WEBHOOK_QUEUE)!;
    const { t, endpoint } = await aloneWithEndpoint('/late');
    // A full first page whose jobs exist (so the pass reads a second page), and a delivery due a second from now, its job lost.
    const page = await insertDeliveries(stack, t, endpoint.json.id, 1000, 60_000);
    await queue.addBulk(page.map((id) => ({ name: WEBHOOK_DELIVERY_JOB, data: { tenant_id: t, delivery_id: id }, opts: { jobId: deliveryJobId(id), delay: 3_600_000 } })));
    const [late] = await insertDeliveries(stack, t, endpoint.json.id, 1, -1_000);
    // The first page's job lookup waits until the late delivery is overdue by the database's clock.
    let held = false;
    const redis = new Proxy(stack.container.redis, {
      get(target, prop) {
        if (prop !== 'pipeline') return Reflect.get(target, prop, target);
        return () => {
          const pipeline = target.pipeline();
          const exec = pipeline.exec.bind(pipeline);
          return Object.assign(pipeline, {
            exec: async () => {
              if (!held) {
                held = true;
                await waitFor(async () => (await stack.db.admin(`select now() > next_attempt_at as due from webhook_deliveries where id = $1`, [late])).rows[0].due, { timeoutMs: 10_000, intervalMs: 50, what: 'the late delivery to fall overdue' });
              }
              return exec();
            },
          });
        };
      },
    });
    expect(await passOf(stack, redis)()).toEqual({ overdue: 1000, enqueued: 0 });
    expect(held).toBe(true);
    expect(await passOf(stack)()).toEqual({ overdue: 1001, enqueued: 1 });
    expect(await queue.getJobState(deliveryJobId(late!))).toBe('waiting');
    await queue.obliterate({ force: true });
  });

  it('rows tied on next_attempt_at across a page boundary (one transaction\'s deliveries share its now()) are each read once: the keyset breaks ties by id', { timeout: 120_000 }, async () => {
    const queue = stack.container.queues.get(WEBHOOK_QUEUE)!;
    const { t, endpoint } = await aloneWithEndpoint('/tied');
    const ids = await insertDeliveries(stack, t, endpoint.json.id, 2500, 1_000, true);
    expect((await stack.db.admin(`select count(distinct next_attempt_at)::int as n from webhook_deliveries where status = 'pending'`)).rows[0].n).toBe(1);
    const pass = passOf(stack);
    expect(await pass()).toEqual({ overdue: 2500, enqueued: 2500 });
    const waiting = await queue.getJobs(['waiting'], 0, -1);
    expect(waiting.map((j) => j.id).sort()).toEqual(ids.map((id) => deliveryJobId(id)).sort());
    expect(await pass()).toEqual({ overdue: 2500, enqueued: 0 });
    await queue.obliterate({ force: true });
  });
});

describe('webhook deliveries under faults: real worker processes on an own Redis', () => {
  let stack: TestStack;
  let receiver: Receiver;
  const queue = () => stack.container.queues.get(WEBHOOK_QUEUE)!;
  const received = (path: string) => receiver.received.filter((r) => r.path === path);
  const rowsOf = async (endpointId: string) =>
    (await stack.db.admin(`select id, status, attempts, jsonb_array_length(coalesce(attempt_log, '[]')) as logged, (attempt_log->-1->>'duration_ms')::int as duration_ms from webhook_deliveries where endpoint_id = $1`, [endpointId])).rows as { id: string; status: string; attempts: number; logged: number; duration_ms: number }[];
  const allDelivered = (endpointId: string, n: number, timeoutMs = 30_000) =>
    waitFor(async () => {
      const rows = await rowsOf(endpointId);
      return rows.length === n && rows.every((r) => r.status === 'delivered') ? rows : undefined;
    }, { timeoutMs, intervalMs: 100, what: `the ${n} deliveries of ${endpointId} to be delivered` });

  beforeAll(async () => {
    // Retries 3 s (±20 %) after a failure: a delivery is still delayed for its retry when Redis is flushed.
    // The redelivery pass every 5 s, not every minute: the FLUSHALL test below waits for it.
    stack = await startStack({ ownRedis: true, env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true', WEBHOOK_RETRY_BASE: '3s', WEBHOOK_MAX_ATTEMPTS: '5', WEBHOOK_REDELIVERY_INTERVAL: '5s' } });
    receiver = await startReceiver();
  }, 120_000);
  afterAll(async () => {
    await receiver?.close();
    await stack?.stop();
  });

  it("a worker SIGKILLed while the receiver holds its POST: another worker sends it again with the same webhook-id and signature, and the attempt is recorded once", { timeout: 120_000 }, async () => {
    const first = await stack.spawnWorker();
    const t = await tenantWithEndpoint(stack, receiver, '/killed', ['run.completed']);
    receiver.plan('/killed', ['hold']);
    const [id] = await insertDeliveries(stack, t.tenantId, t.endpoint.id, 1);
    await enqueueDeliveries(queue(), t.tenantId, [id!]);
    await waitFor(() => received('/killed').length === 1, { timeoutMs: 30_000, what: 'the POST the receiver holds' });
    first.kill('SIGKILL');
    await first.exited;
    await stack.spawnWorker();
    const [row] = await allDelivered(t.endpoint.id, 1);
    expect(row).toMatchObject({ id, attempts: 1, logged: 1 });
    // Both requests are the same message: the receiver deduplicates them by webhook-id, and each verifies.
    expect(received('/killed').map((r) => r.headers['webhook-id'])).toEqual([id, id]);
    expect(receiver.verified('/killed', t.endpoint.secret).map((m) => m.type)).toEqual(['run.completed', 'run.completed']);
    receiver.release();
  });

  it('FLUSHALL with deliveries pending, put back for rate turns, delayed for a retry and in flight: the redelivery pass brings every one back, each recorded once, and the rate limit holds after it', { timeout: 240_000 }, async () => {
    if (stack.workers.every((w) => w.proc.exitCode !== null || w.proc.signalCode !== null)) await stack.spawnWorker();
    // Delayed for its retry: its first attempt answered 500.
    const retry = await tenantWithEndpoint(stack, receiver, '/flush-retry', ['run.completed']);
    receiver.plan('/flush-retry', [500]);
    await enqueueDeliveries(queue(), retry.tenantId, await insertDeliveries(stack, retry.tenantId, retry.endpoint.id, 1));
    await waitFor(async () => (await rowsOf(retry.endpoint.id))[0]?.attempts === 1, { timeoutMs: 30_000, what: 'the failed first attempt' });
    // In flight through the flush: the receiver holds it.
    const held = await tenantWithEndpoint(stack, receiver, '/flush-held', ['run.completed']);
    receiver.plan('/flush-held', ['hold']);
    await enqueueDeliveries(queue(), held.tenantId, await insertDeliveries(stack, held.tenantId, held.endpoint.id, 1));
    await waitFor(() => received('/flush-held').length === 1, { timeoutMs: 30_000, what: 'the held POST' });
    // At 1/s: one goes, the other seven wait for their turns (delayed jobs) when Redis loses everything.
    const rated = await tenantWithEndpoint(stack, receiver, '/flush-rated', ['run.completed']);
    expect((await api(stack, 'PATCH', `${ENDPOINTS}/${rated.endpoint.id}`, { token: rated.admin, body: { rate_limit_per_second: 1 }, headers: { 'Idempotency-Key': randomUUID() } })).status).toBe(200);
    const ratedIds = await insertDeliveries(stack, rated.tenantId, rated.endpoint.id, 8);
    // When each rated POST is let go (MONITOR sees through the flush: it is the connection's state, not data).
    const monitor = await monitorKeys(`${stack.prefix}:endpoint-rate:`, stack.ownRedis!.url);
    try {
      await enqueueDeliveries(queue(), rated.tenantId, ratedIds);
      await waitFor(() => received('/flush-rated').length >= 1, { timeoutMs: 30_000, what: 'the first rated POST' });
      await waitFor(async () => (await stack.ownRedis!.client.zcard(`${stack.prefix}:endpoint-rate-waiting:${rated.endpoint.id}`)) >= 5, { timeoutMs: 30_000, what: 'the rated deliveries waiting for their turns' });

      await stack.ownRedis!.client.flushall();
      // Redis's clock just after the flush: a let-go recorded later is one after it.
      const [s, us] = await stack.ownRedis!.client.time();
      const flushedAtUs = Number(s) * 1e6 + Number(us);
      // The attempt in flight ends after the flush: recorded once, its job gone (nothing to complete).
      receiver.release();
      expect((await allDelivered(held.endpoint.id, 1))[0]).toMatchObject({ attempts: 1, logged: 1 });

      // The sweeper sees the loss, restores the schedulers, and the pass (WEBHOOK_REDELIVERY_INTERVAL) re-enqueues the rest.
      const ratedRows = await allDelivered(rated.endpoint.id, 8, 150_000);
      expect(ratedRows.map((r) => [r.attempts, r.logged])).toEqual(ratedIds.map(() => [1, 1]));
      expect((await allDelivered(retry.endpoint.id, 1, 150_000))[0]).toMatchObject({ attempts: 2, logged: 2 });
      expect(received('/flush-retry')).toHaveLength(2);
      expect(received('/flush-held')).toHaveLength(1);
      const got = received('/flush-rated').sort((a, b) => a.at - b.at);
      expect(got.map((r) => r.headers['webhook-id']).sort()).toEqual([...ratedIds].sort());
      // After the flush the turns start afresh and hold: the ones let go after it a turn apart. (The flush forgot the last POST
      // let go before it, ADR 0013, docs/api.md: the first one after may follow that one by less than a turn, once.)
      const letGos = await rateLetGos(monitor, stack.ownRedis!.client, `${stack.prefix}:endpoint-rate:${rated.endpoint.id}`);
      expectSpaced(letGos.filter((at) => at > flushedAtUs), 1, 5);
    } finally {
      monitor.stop();
    }
  });
});

describe('webhook deliveries under faults: PostgreSQL restarted between the POST and its record (own cluster, API and worker processes)', () => {
  let env: Environment;
  let receiver: Receiver;
  beforeAll(async () => {
    env = await startEnvironment({ workers: 1, ownRedis: false, ownPostgres: true, logLevel: 'warn', env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true' }, log: () => {} });
    receiver = await startReceiver();
  }, 180_000);
  afterAll(async () => {
    await receiver?.close();
    await env?.stop({ keepDir: false });
  });

  it("the receiver answers 2xx while PostgreSQL is down: the attempt is not recorded then; the job's retry sends it again (same webhook-id) and records one attempt, delivered", { timeout: 180_000 }, async () => {
    const tenantId = newTenant();
    const admin = await env.token(tenantId, 'admin-pg', ['admin']);
    const call = async (path: string, body: unknown) => {
      const res = await fetch(`${env.baseUrl}${path}`, { method: 'POST', headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json', 'idempotency-key': randomUUID() }, body: JSON.stringify(body) });
      return { status: res.status, json: (await res.json()) as Record<string, string> };
    };
    const created = await call(ENDPOINTS, { url: `${receiver.base}/pg-restart`, events: ['run.completed'] });
    expect(created.status).toBe(201);
    receiver.plan('/pg-restart', ['hold']);
    const submitted = await call('/api/v1/golden-path/run', CLASS_A_SUBMISSION);
    expect(submitted.status).toBe(202);
    await waitFor(() => received().length === 1, { timeoutMs: 90_000, what: 'the run.completed POST, held' });
    // PostgreSQL goes down (immediate shutdown) with the POST in flight; the receiver answers 200 during the outage.
    const restarted = env.ownPostgres!.restart(5_000);
    await waitFor(async () => (await pollDb(env, (db) => db.query('select 1'))) === undefined, { timeoutMs: 20_000, intervalMs: 20, what: 'PostgreSQL to be down' });
    receiver.release();
    await restarted;
    const row = await waitFor(
      async () => {
        const r = await pollDb(env, async (db) => (await db.query(`select id, status, attempts, jsonb_array_length(attempt_log) as logged from webhook_deliveries where endpoint_id = $1`, [created.json.id])).rows[0]);
        return r?.status === 'delivered' ? r : undefined;
      },
      { timeoutMs: 90_000, intervalMs: 200, what: 'the delivery to be recorded delivered' },
    );
    expect(row).toMatchObject({ status: 'delivered', attempts: 1, logged: 1 });
    expect(received().map((r) => r.headers['webhook-id'])).toEqual([row.id, row.id]);
    expect(receiver.verified('/pg-restart', created.json.secret!)).toHaveLength(2);
  });

  const received = () => receiver.received.filter((r) => r.path === '/pg-restart');
});

describe('webhook deliveries: an endpoint failing under concurrent deliveries from two worker processes', () => {
  let stack: TestStack;
  let receiver: Receiver;
  beforeAll(async () => {
    ({ stack, receiver } = await startWebhookStack({ WEBHOOK_RETRY_BASE: '50ms', WEBHOOK_MAX_ATTEMPTS: '50', WEBHOOK_DISABLE_AFTER: '1s' }));
    await stack.spawnWorker();
  }, 120_000);
  afterAll(() => stopWebhookStack(stack, receiver));

  it('is disabled once, emits webhook_endpoint.disabled once, and every delivery settles with each POST recorded once (the POSTs the receiver got are the attempts logged)', { timeout: 120_000 }, async () => {
    receiver.plan('/dead-many', Array.from({ length: 10_000 }, () => 500));
    const t = await tenantWithEndpoint(stack, receiver, '/dead-many', ['run.completed']);
    const watch = await createEndpoint(stack, t.admin, { url: `${receiver.base}/watch-many`, events: ['webhook_endpoint.disabled'] });
    expect(watch.status, watch.text).toBe(201);
    const ids = await insertDeliveries(stack, t.tenantId, t.endpoint.id, 12);
    await enqueueDeliveries(stack.container.queues.get(WEBHOOK_QUEUE)!, t.tenantId, ids);
    const rows = await waitFor(
      async () => {
        const { rows } = await stack.db.admin(`select status, attempts, attempt_log from webhook_deliveries where endpoint_id = $1`, [t.endpoint.id]);
        return rows.every((r) => r.status !== 'pending') ? rows : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 100, what: 'every delivery of the failing endpoint to settle' },
    );
    expect(rows.every((r) => r.status === 'failed' && r.attempts === r.attempt_log.length)).toBe(true);
    const posted = rows.flatMap((r) => r.attempt_log as { error: string | null }[]).filter((a) => a.error !== 'endpoint disabled');
    expect(receiver.received.filter((r) => r.path === '/dead-many')).toHaveLength(posted.length);
    const { rows: [endpoint] } = await stack.db.admin(`select enabled, disabled_reason from webhook_endpoints where id = $1`, [t.endpoint.id]);
    expect(endpoint).toEqual({ enabled: false, disabled_reason: 'failing' });
    const told = await waitFor(() => receiver.verified('/watch-many', watch.json.secret).length > 0 && receiver.verified('/watch-many', watch.json.secret), { timeoutMs: 30_000, what: 'webhook_endpoint.disabled' });
    const { rows: events } = await stack.db.admin(`select count(*)::int as n from webhook_deliveries where endpoint_id = $1`, [watch.json.id]);
    expect(events[0].n).toBe(1);
    expect(told).toHaveLength(1);
  });
});
