/**
 * A slow or silent receiver's parked backlog (WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT, ADR 0013, *Parked
 * backlogs*): the real stack — PostgreSQL as the application role, Redis — with the production delivery
 * handler run by a BullMQ worker in the test's process, its fallback delay scaled down (injected, no
 * sleeps). The endpoint's only slot is held (an attempt in flight elsewhere, its lease beyond the test):
 * the parked deliveries must not all keep coming back on their fallback delay — about `cap` of them do,
 * the rest wait for promotions — and a parked delivery that comes back to a full endpoint is parked
 * again before its row is read.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import { Worker, type Job } from 'bullmq';
import type { MikroORM } from '@mikro-orm/postgresql';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { TEST_REDIS_URL } from '../helpers/env.ts';
import { createEndpoint, startReceiver, type Receiver } from '../helpers/webhooks.ts';
import { createRedis } from '../../src/platform/queue/connections.ts';
import { enqueueDeliveries, WEBHOOK_QUEUE, webhookHandlers } from '../../src/platform/webhooks/delivery.ts';
import { parseSlotMember, slotParking, TenantSlots } from '../../src/platform/durable/tenant-slots.ts';
import { webhookResolver } from '../../src/container.ts';

const PAYLOAD = { type: 'run.completed', timestamp: '2026-12-06T00:00:00.000Z', data: { workflow: 'golden-path', run_id: 'r', status: 'completed', correlation_id: 'c-1', ended_at: '2026-12-06T00:00:00.000Z' } };
/** The endpoint's cap of attempts in flight. */
const CAP = 1;
/** Deliveries parked behind its one slot. */
const N = 100;
/** The (scaled-down) fallback delay of a parked delivery: the production one is 30–120 s. */
const FALLBACK_MS = 200;
/** How often the earliest parked delivery comes back while the test counts. */
const ROUNDS = 5;

describe('webhook deliveries: a parked backlog behind a full endpoint', () => {
  let stack: TestStack;
  let receiver: Receiver;
  const connection = createRedis(TEST_REDIS_URL, 'worker', 'parked-backlog');
  let worker: Worker | undefined;

  beforeAll(async () => {
    stack = await startStack({ env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true' } });
    receiver = await startReceiver();
  }, 120_000);

  afterAll(async () => {
    await worker?.close();
    connection.disconnect();
    await receiver?.close();
    await stack?.stop();
  });

  it(`${N} deliveries parked behind a held slot: while the earliest comes back ${ROUNDS} times, about the cap come back (not every one), none reads its row; released, every one is delivered once`, { timeout: 180_000 }, async () => {
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin', roles: ['admin'] });
    const created = await createEndpoint(stack, admin, { url: `${receiver.base}/backlog`, events: ['run.completed'] });
    expect(created.status, created.text).toBe(201);
    const endpointId = created.json.id as string;
    const slots = new TenantSlots(connection, { prefix: stack.prefix, per: 'endpoint', cap: CAP, leaseMs: 600_000 });
    // The endpoint's only slot, held by an attempt in flight elsewhere (a silent receiver's), its lease beyond the test: no lapse wakes anyone.
    const holder = `${WEBHOOK_QUEUE}:holder`;
    expect(await slots.acquire(endpointId, holder)).toBe(true);

    // Each transaction the handler opens (tenantEm / systemEm fork the ORM's manager) is counted.
    let forks = 0;
    const orm = stack.container.orm;
    const em = new Proxy(orm.em, { get: (t, p, r) => (p === 'fork' ? (...a: Parameters<typeof t.fork>) => (forks++, t.fork(...a)) : Reflect.get(t, p, r)) });
    const countingOrm = new Proxy(orm, { get: (t, p, r) => (p === 'em' ? em : Reflect.get(t, p, r)) }) as MikroORM;
    const queue = stack.container.queues.get(WEBHOOK_QUEUE)!;
    const handlers = webhookHandlers({
      orm: countingOrm,
      logger: pino({ level: 'silent' }),
      settings: { timeoutMs: 5000, maxAttempts: 3, retryBaseMs: 50, policy: { allowPrivate: true, httpsOnly: false }, resolver: webhookResolver(stack.config) },
      queue: () => queue,
      redis: stack.container.redis,
      redeliverAfterMs: 3_600_000,
      webhookSlots: { endpoint: slots, parkDelayMs: () => FALLBACK_MS },
    });
    let executions = 0;
    worker = new Worker(
      WEBHOOK_QUEUE,
      async (job: Job) => {
        executions++;
        return handlers[job.name as keyof typeof handlers](job);
      },
      { connection, prefix: stack.prefix, concurrency: 4 },
    );

    const { rows } = await stack.db.admin(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
       select gen_random_uuid(), $1, $2, 'run.completed', $3, 'pending', 0, now(), now(), now() from generate_series(1, $4) returning id`,
      [tenantId, endpointId, PAYLOAD, N],
    );
    const ids = rows.map((r) => r.id as string);
    await enqueueDeliveries(queue, tenantId, ids);
    // Every one parked once (its first execution reads its row: it does not know its endpoint yet).
    const parkedKey = slots.parkedKey(endpointId);
    await waitFor(async () => (await connection.zcard(parkedKey)) === N, { timeoutMs: 60_000, what: `${N} deliveries parked` });

    const [earliest] = await connection.zrange(parkedKey, '0', '0');
    const first = await queue.getJob(parseSlotMember(earliest!).jobId);
    const parksOf = async () => ((await queue.getJob(first!.id!))?.data as { parks?: number }).parks ?? 0;
    const parks0 = await parksOf();
    const executions0 = executions;
    const forks0 = forks;
    await waitFor(async () => (await parksOf()) >= parks0 + ROUNDS, { timeoutMs: 60_000, what: `the earliest parked delivery to come back ${ROUNDS} times` });
    const came = executions - executions0;
    // Before: every parked delivery came back on its fallback delay, each reading its row in a transaction: about N × ROUNDS.
    // Now those beyond the cap come back on a fallback scaled by their rank (about CAP × ROUNDS × a log factor in all) and none reads its row.
    expect(came, `${came} executions while the earliest came back ${ROUNDS} times`).toBeLessThan(N / 2);
    expect(forks - forks0, 'transactions opened by parked deliveries that came back to a full endpoint').toBe(0);
    expect(await connection.zcard(parkedKey)).toBe(N);

    // Released: promoted one after another as each attempt ends (not after their fallback), each delivered once.
    slotParking(slots, { queueOf: () => queue, logger: pino({ level: 'silent' }) }).give(endpointId, holder);
    await waitFor(
      async () => {
        const { rows: left } = await stack.db.admin(`select count(*)::int as n from webhook_deliveries where tenant_id = $1 and status <> 'delivered'`, [tenantId]);
        return left[0].n === 0;
      },
      { timeoutMs: 90_000, what: `all ${N} deliveries delivered after the release` },
    );
    const got = receiver.received.filter((r) => r.path === '/backlog').map((r) => String(r.headers['webhook-id']));
    expect(got.sort()).toEqual([...ids].sort());
  });
});
