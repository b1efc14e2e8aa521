/**
 * Per-endpoint rate limits (`rate_limit_per_second`, ADR 0013, *Rate limits*) against the real stack:
 * PostgreSQL as the application role, Redis, two spawned worker processes (the limit is Redis-side,
 * over every worker), a real node:http receiver that stamps each request's arrival with its own
 * monotonic clock, and MONITOR on the rate keys for when each request was let go (rateLetGos: the
 * spacing is checked there). Deliveries are inserted into the outbox as a run end would, and enqueued.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { api, type TestStack, type WorkerHandle } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { monitorKeys } from '../helpers/redis-monitor.ts';
import pino from 'pino';
import { enqueueDeliveries, WEBHOOK_QUEUE, WEBHOOK_REDELIVERY_JOB, webhookHandlers } from '../../src/platform/webhooks/delivery.ts';
import { deliveryJobId } from '../../src/platform/queue/job-ids.ts';
import { parseSlotMember, slotMember } from '../../src/platform/durable/tenant-slots.ts';
import { createEndpoint, ENDPOINTS, expectSpaced, rateLetGoMembers, rateLetGos, startWebhookStack, stopWebhookStack, tenantWithEndpoint, type Receiver } from '../helpers/webhooks.ts';
import { webhookResolver } from '../../src/container.ts';

describe('webhook endpoint rate limits (rate_limit_per_second)', () => {
  let stack: TestStack;
  let receiver: Receiver;
  let monitor: Awaited<ReturnType<typeof monitorKeys>>;
  const workers: WorkerHandle[] = [];

  beforeAll(async () => {
    // WEBHOOK_DISABLE_AFTER: a second, for the endpoint disabled for failing; every other receiver answers 2xx. WEBHOOK_TIMEOUT: a
    // minute, the longest, for the failing endpoint's attempt the receiver holds while the test sets the others up.
    const started = await startWebhookStack({ WEBHOOK_RETRY_BASE: '50ms', WEBHOOK_MAX_ENDPOINTS: '5', WEBHOOK_DISABLE_AFTER: '1s', WEBHOOK_TIMEOUT: '60s' }, { WORKER_METRICS_PORT: '0' });
    ({ stack, receiver } = started);
    workers.push(started.worker, await stack.spawnWorker({ WORKER_METRICS_PORT: '0' }));
    monitor = await monitorKeys(`${stack.prefix}:endpoint-rate:`);
  }, 120_000);

  afterAll(async () => {
    monitor?.stop();
    await stopWebhookStack(stack, receiver);
  });

  /** `n` pending deliveries of `run.completed` for the endpoint, inserted as the outbox does; enqueued unless `enqueue` is false. */
  async function deliveries(tenantId: string, endpointId: string, n: number, enqueue = true): Promise<string[]> {
    const ids = Array.from({ length: n }, () => randomUUID());
    for (const id of ids) {
      await stack.db.admin(
        `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
         values ($1, $2, $3, 'run.completed', $4, 'pending', 0, now(), now(), now())`,
        [id, tenantId, endpointId, { type: 'run.completed', timestamp: '2026-12-04T00:00:00.000Z', data: { workflow: 'golden-path', run_id: randomUUID(), status: 'completed', correlation_id: 'c-1', ended_at: '2026-12-04T00:00:00.000Z' } }],
      );
    }
    if (enqueue) await enqueueDeliveries(stack.container.queues.get(WEBHOOK_QUEUE)!, tenantId, ids);
    return ids;
  }

  const arrivals = (path: string) => receiver.received.filter((r) => r.path === path).map((r) => r.at).sort((a, b) => a - b);

  async function settled(endpointId: string, n: number) {
    return waitFor(
      async () => {
        const { rows } = await stack.db.admin(`select status, attempts, jsonb_array_length(attempt_log) as logged from webhook_deliveries where endpoint_id = $1`, [endpointId]);
        return rows.length === n && rows.every((r) => r.status === 'delivered') ? rows : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 100, what: `the ${n} deliveries of ${endpointId} to be delivered` },
    );
  }

  /** A counter of the workers' /metrics, summed over them. */
  async function workersTotal(counter: string): Promise<number> {
    let total = 0;
    for (const w of workers) {
      const port = w.output().match(/"worker metrics listening".*?"metrics_port":(\d+)|"metrics_port":(\d+).*?"worker metrics listening"/);
      const text = await (await fetch(`http://127.0.0.1:${port?.[1] ?? port?.[2]}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(`${counter} `));
      total += Number(line?.split(' ')[1] ?? 0);
    }
    return total;
  }

  /** dealix_webhook_deliveries_rate_limited_total summed over the workers. */
  const rateLimitedTotal = () => workersTotal('dealix_webhook_deliveries_rate_limited_total');

  const rateKeys = (endpointId: string) => ({ stateKey: `${stack.prefix}:endpoint-rate:${endpointId}`, waitingKey: `${stack.prefix}:endpoint-rate-waiting:${endpointId}` });

  /** When each of the endpoint's POSTs was let go (rateLetGos). */
  const letGos = (endpointId: string) => rateLetGos(monitor, stack.redis, rateKeys(endpointId).stateKey);
  /** The delivery ids the endpoint's limiter let go, in its order (rateLetGoMembers). */
  const letGoOrder = async (endpointId: string) => (await rateLetGoMembers(monitor, stack.redis, rateKeys(endpointId).stateKey)).map((m) => parseSlotMember(m).jobId.replace(/^wh-/, ''));

  /** Redis's clock, in µs (the limiter's turns are on it). */
  async function redisNowUs(): Promise<number> {
    const [s, us] = await stack.redis.time();
    return Number(s) * 1e6 + Number(us);
  }

  /**
   * An hour of the endpoint's turns handed out already: its next free turn (`tat`, the take script's) an hour from now, by
   * Redis's clock — the state its limiter keeps behind 3,600 deliveries waiting at 1/s, the lowest limit, which no test can
   * afford to create (its keys live as long as the take script would keep them). The deliveries enqueued next each reserve a
   * turn an hour off and wait for it. Released by a change of the limit, a DELETE or a disable, they settle within the test's
   * deadlines; left on the old schedule, not for an hour: "released at all" is the proof, with no race between the release
   * and a turn a second off for a loaded machine to lose (the end of an 8-turn schedule, compared with elapsed time, was).
   */
  async function hourOfTurnsAhead(endpointId: string): Promise<void> {
    const { stateKey } = rateKeys(endpointId);
    await stack.redis.multi().hset(stateKey, 'tat', String((await redisNowUs()) + 3_600_000_000)).pexpire(stateKey, 3_660_000).exec();
  }

  /**
   * The turns the deliveries `ids` reserved (µs, Redis's clock), oldest first, once each holds one and its job is delayed until it:
   * none is then between its read of the endpoint's row and its turn (one would take a turn after a recall, from fresh keys), and
   * none in flight. Each turn is its own, a second (10^6 µs) apart — they would come back one by one, never together — and an hour off.
   */
  async function waitingForTurns(endpointId: string, ids: string[]): Promise<number[]> {
    const queue = stack.container.queues.get(WEBHOOK_QUEUE)!;
    const members = new Set(ids.map((id) => slotMember(WEBHOOK_QUEUE, deliveryJobId(id))));
    const turns = await waitFor(
      async () => {
        const flat = await stack.redis.zrange(rateKeys(endpointId).waitingKey, '0', '-1', 'WITHSCORES');
        const held = Array.from({ length: flat.length / 2 }, (_, i) => ({ member: flat[2 * i]!, turn: Number(flat[2 * i + 1]) })).filter((x) => members.has(x.member));
        if (held.length < ids.length) return undefined;
        const states = await Promise.all(ids.map((id) => queue.getJobState(deliveryJobId(id))));
        return states.every((s) => s === 'delayed') ? held.map((x) => x.turn) : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 20, what: `the ${ids.length} deliveries to wait for their turns` },
    );
    for (let i = 1; i < turns.length; i++) expect(turns[i]! - turns[i - 1]!, `turns ${i - 1} and ${i}`).toBeGreaterThanOrEqual(1_000_000);
    expect(turns[0]! - (await redisNowUs()), 'the first turn, an hour off').toBeGreaterThan(3_000_000_000);
    return turns;
  }

  /** The endpoint's deliveries, once none is pending and neither of its rate keys is left. */
  async function settledKeysGone(endpointId: string, what: string) {
    const { stateKey, waitingKey } = rateKeys(endpointId);
    return waitFor(
      async () => {
        const { rows } = await stack.db.admin(`select status, attempts, last_error from webhook_deliveries where endpoint_id = $1`, [endpointId]);
        return (rows.every((r) => r.status !== 'pending') && (await stack.redis.exists(stateKey, waitingKey)) === 0 && rows) || undefined;
      },
      { timeoutMs: 20_000, intervalMs: 50, what: `${what} to settle and its rate keys to go` },
    );
  }

  it('sends at most N requests per second to a limited endpoint, over both workers, a test event included; none is lost, no attempt spent; the same tenant\'s unlimited endpoint is not slowed', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/limited', ['run.completed']);
    const patched = await api(stack, 'PATCH', `${ENDPOINTS}/${t.endpoint.id}`, { token: t.admin, body: { rate_limit_per_second: 2 } });
    expect(patched.status, patched.text).toBe(200);
    expect(patched.json.rate_limit_per_second).toBe(2);
    const free = await createEndpoint(stack, t.admin, { url: `${receiver.base}/free`, events: ['run.completed'] });
    expect(free.status, free.text).toBe(201);
    expect(free.json.rate_limit_per_second).toBeNull();
    const limitedBefore = await rateLimitedTotal();
    const limitedIds = await deliveries(t.tenantId, t.endpoint.id, 7, false);
    const freeIds = await deliveries(t.tenantId, free.json.id as string, 8, false);
    await enqueueDeliveries(stack.container.queues.get(WEBHOOK_QUEUE)!, t.tenantId, [...limitedIds, ...freeIds]);
    // A test event (an admin's) is limited as any delivery is.
    const test = await api(stack, 'POST', `${ENDPOINTS}/${t.endpoint.id}/test`, { token: t.admin, headers: { 'Idempotency-Key': randomUUID() } });
    expect(test.status, test.text).toBe(202);

    const rows = await settled(t.endpoint.id, 8);
    // Each delivery was POSTed once: the turns waited for spent no attempt.
    expect(rows.map((r) => [r.attempts, r.logged])).toEqual(Array.from({ length: 8 }, () => [1, 1]));
    await settled(free.json.id as string, 8);

    // Never 3 in one second: let go one turn (500 ms) apart at the earliest, the 8th at least 3.5 s after the 1st.
    const limited = arrivals('/limited');
    expect(limited).toHaveLength(8);
    const lets = await letGos(t.endpoint.id);
    expectSpaced(lets, 2, 8);
    expect(lets.at(-1)! - lets[0]!).toBeGreaterThanOrEqual(3_500_000);
    // The unlimited endpoint of the same tenant, enqueued with the limited one, was not held to turns: its deliveries
    // took none (its endpoint has no rate key in Redis), and its last arrived before the limited one's last, which
    // the turns held back by 3.5 s at least (a comparison within this run, not a wall-clock bound).
    const unlimited = arrivals('/free');
    expect(unlimited).toHaveLength(8);
    expect(unlimited[7]!).toBeLessThan(limited[7]!);
    expect(await stack.redis.exists(`${stack.prefix}:endpoint-rate:${free.json.id}`, `${stack.prefix}:endpoint-rate-waiting:${free.json.id}`)).toBe(0);
    expect(await stack.redis.exists(`${stack.prefix}:endpoint-rate:${t.endpoint.id}`)).toBe(1);
    // Every delivery that found no turn was put back and counted (the first 1 or 2 go at once): polled, since a
    // worker counts a put-back after its moveToDelayed returns, which another worker may follow with its delivery.
    await waitFor(async () => (await rateLimitedTotal()) - limitedBefore >= 6, { what: 'the workers to count six deliveries put back' });
  });

  it("a test event takes the endpoint's next turn, ahead of the deliveries waiting for turns; the one that held it goes last; each is delivered once, and arrivals stay a turn apart", async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/ahead', ['run.completed']);
    expect((await api(stack, 'PATCH', `${ENDPOINTS}/${t.endpoint.id}`, { token: t.admin, body: { rate_limit_per_second: 1 } })).status).toBe(200);
    const aheadBefore = await workersTotal('dealix_webhook_test_events_ahead_total');
    const backlog = await deliveries(t.tenantId, t.endpoint.id, 6);
    const { waitingKey } = rateKeys(t.endpoint.id);
    // At 1/s one or two went at once; the others wait for turns a second apart (the last some 5 s off).
    await waitFor(async () => (arrivals('/ahead').length >= 1 && (await stack.redis.zcard(waitingKey)) >= 4) || undefined, { timeoutMs: 20_000, intervalMs: 10, what: 'deliveries waiting for turns' });
    const test = await api(stack, 'POST', `${ENDPOINTS}/${t.endpoint.id}/test`, { token: t.admin, headers: { 'Idempotency-Key': randomUUID() } });
    expect(test.status, test.text).toBe(202);
    const testId = test.json.id as string;
    const testMember = slotMember(WEBHOOK_QUEUE, deliveryJobId(testId));
    const idOf = (member: string) => parseSlotMember(member).jobId.replace(/^wh-/, '');

    // The schedule once the test's job has taken its turn (read from Redis): the earliest one, ahead of every waiting delivery
    // (with FIFO turns, the last). Or, if it found that turn due, it went at once: then every one still waiting comes after it.
    const schedule = await waitFor(
      async () => {
        const flat = await stack.redis.zrange(waitingKey, '0', '-1', 'WITHSCORES');
        const turns = Array.from({ length: flat.length / 2 }, (_, i) => ({ member: flat[2 * i]!, turn: Number(flat[2 * i + 1]) }));
        const arrived = receiver.received.some((r) => r.path === '/ahead' && r.headers['webhook-id'] === testId);
        return turns.some((x) => x.member === testMember) || arrived ? { turns, arrived } : undefined;
      },
      { timeoutMs: 20_000, intervalMs: 10, what: "the test event's turn" },
    );
    const waiting = schedule.turns.filter((x) => x.member !== testMember).map((x) => idOf(x.member));
    expect(waiting.length).toBeGreaterThanOrEqual(3);
    if (!schedule.arrived) {
      expect(schedule.turns[0]!.member, 'the test holds the earliest turn').toBe(testMember);
      // Counted once, by the worker whose test took the turn: polled, since the worker counts it after the take's
      // reply, which Redis sends before this test can read the turn it wrote, and a scrape may come in between.
      const ahead = await waitFor(async () => {
        const n = (await workersTotal('dealix_webhook_test_events_ahead_total')) - aheadBefore;
        return n >= 1 ? n : undefined;
      }, { what: "the workers' count of the test event ahead" });
      expect(ahead).toBe(1);
    }
    // The turns themselves are still a second (10^6 µs) apart: the test took one, the delivery that held it a fresh one at the tail.
    for (let i = 1; i < schedule.turns.length; i++) expect(schedule.turns[i]!.turn - schedule.turns[i - 1]!.turn).toBeGreaterThanOrEqual(1_000_000);

    const rows = await settled(t.endpoint.id, 7);
    expect(rows.map((r) => [r.attempts, r.logged])).toEqual(Array.from({ length: 7 }, () => [1, 1]));
    const got = receiver.received.filter((r) => r.path === '/ahead').map((r) => String(r.headers['webhook-id']));
    // Each delivered once, the test included.
    expect([...got].sort()).toEqual([...backlog, testId].sort());
    // Let go ahead of every delivery that was waiting for a turn when it took its own; the delivery displaced to the
    // tail is let go last. (The limiter's order, not the receiver's: two workers' POSTs a turn apart can arrive swapped.)
    const order = await letGoOrder(t.endpoint.id);
    expect([...order].sort()).toEqual([...backlog, testId].sort());
    for (const id of waiting) expect(order.indexOf(id), `backlog delivery ${id} vs the test event`).toBeGreaterThan(order.indexOf(testId));
    expect(order.at(-1)).toBe(waiting.at(-1));
    // Still at most 1/s: consecutive let-gos a second apart.
    expectSpaced(await letGos(t.endpoint.id), 1, 7);
  });

  it('a PATCH that removes the limit releases the deliveries waiting for their turns at once, not on the old schedule', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/released', ['run.completed']);
    expect((await api(stack, 'PATCH', `${ENDPOINTS}/${t.endpoint.id}`, { token: t.admin, body: { rate_limit_per_second: 1 } })).status).toBe(200);
    // Behind an hour of turns (hourOfTurnsAhead): all 8 wait, their turns an hour off, a second apart.
    await hourOfTurnsAhead(t.endpoint.id);
    const ids = await deliveries(t.tenantId, t.endpoint.id, 8);
    await waitingForTurns(t.endpoint.id, ids);
    // Waiting for a turn holds no in-flight slot of the endpoint (nor of the tenant): the slots are taken after the turn.
    // Read at one instant (MULTI), with every one of them waiting.
    const snapshot = await stack.redis
      .multi()
      .zrange(rateKeys(t.endpoint.id).waitingKey, '0', '-1')
      .zrange(`${stack.prefix}:endpoint-slots:${t.endpoint.id}`, '0', '-1')
      .zrange(`${stack.prefix}:webhook-tenant-slots:${t.tenantId}`, '0', '-1')
      .exec();
    const [waitingNow, endpointSlots, tenantSlots] = snapshot!.map(([err, members]) => {
      if (err) throw err;
      return members as string[];
    }) as [string[], string[], string[]];
    expect(waitingNow).toHaveLength(8);
    expect(endpointSlots.filter((m) => waitingNow.includes(m)), `endpoint slots ${endpointSlots} vs waiting ${waitingNow}`).toEqual([]);
    expect(tenantSlots.filter((m) => waitingNow.includes(m)), `tenant slots ${tenantSlots} vs waiting ${waitingNow}`).toEqual([]);
    expect(arrivals('/released')).toHaveLength(0);
    const res = await api(stack, 'PATCH', `${ENDPOINTS}/${t.endpoint.id}`, { token: t.admin, body: { rate_limit_per_second: null } });
    expect(res.status, res.text).toBe(200);
    expect(res.json.rate_limit_per_second).toBeNull();

    // Released: all delivered, once each, within the deadline (with the recall left out, each waits out its turn, an hour off).
    const rows = await settled(t.endpoint.id, 8);
    expect(rows.every((r) => r.attempts === 1)).toBe(true);
    expect(arrivals('/released')).toHaveLength(8);
  });

  it("an endpoint's DELETE ends the jobs of its deliveries waiting for turns at once, and drops its rate keys, rather than both lingering until the last turn", async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/deleted', ['run.completed']);
    expect((await api(stack, 'PATCH', `${ENDPOINTS}/${t.endpoint.id}`, { token: t.admin, body: { rate_limit_per_second: 1 } })).status).toBe(200);
    const { stateKey, waitingKey } = rateKeys(t.endpoint.id);
    // Behind an hour of turns (hourOfTurnsAhead): all 8 wait for turns an hour off, none in flight.
    await hourOfTurnsAhead(t.endpoint.id);
    const ids = await deliveries(t.tenantId, t.endpoint.id, 8);
    await waitingForTurns(t.endpoint.id, ids);
    const res = await api(stack, 'DELETE', `${ENDPOINTS}/${t.endpoint.id}`, { token: t.admin });
    expect(res.status, res.text).toBe(204);

    // Every job has ended (its delivery went with the endpoint: nothing to send), and neither rate key is left — within the
    // deadline (with the recall left out, the jobs wait out their turns, an hour off, and the keys outlive the last by a minute).
    const queue = stack.container.queues.get(WEBHOOK_QUEUE)!;
    await waitFor(
      async () => {
        const states = await Promise.all(ids.map((id) => queue.getJobState(deliveryJobId(id, 0))));
        return (states.every((s) => s === 'completed') && (await stack.redis.exists(stateKey, waitingKey)) === 0) || undefined;
      },
      { timeoutMs: 20_000, what: "the deleted endpoint's jobs to end and its rate keys to go" },
    );
    const outcomes = await Promise.all(ids.map(async (id) => ((await queue.getJob(deliveryJobId(id, 0)))?.returnvalue as { outcome: string }).outcome));
    expect(outcomes).toEqual(ids.map(() => 'not_found'));
    expect(arrivals('/deleted')).toHaveLength(0);
  });

  it("an endpoint's disable gives up its deliveries waiting for turns at once, and drops its rate keys; re-enabled, it is limited as before", async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/disabled', ['run.completed']);
    expect((await api(stack, 'PATCH', `${ENDPOINTS}/${t.endpoint.id}`, { token: t.admin, body: { rate_limit_per_second: 1 } })).status).toBe(200);
    // As for the DELETE: all 8 wait for turns an hour off (hourOfTurnsAhead), none in flight.
    await hourOfTurnsAhead(t.endpoint.id);
    await waitingForTurns(t.endpoint.id, await deliveries(t.tenantId, t.endpoint.id, 8));
    const res = await api(stack, 'POST', `${ENDPOINTS}/${t.endpoint.id}/disable`, { token: t.admin });
    expect(res.status, res.text).toBe(200);
    expect(res.json.enabled).toBe(false);

    // Every delivery has settled — given up unsent, as any pending delivery of a disabled endpoint is — and neither rate key is
    // left, within the deadline (with the recall left out, the deliveries wait out their turns, an hour off, and the keys with them).
    const rows = await settledKeysGone(t.endpoint.id, "the disabled endpoint's deliveries");
    expect(rows.map((r) => [r.status, r.last_error])).toEqual(rows.map(() => ['failed', 'endpoint disabled']));
    expect(rows).toHaveLength(8);
    expect(arrivals('/disabled')).toHaveLength(0);

    // Re-enabled, its new deliveries are limited again from fresh keys (the hour of turns went with them): delivered once each, a turn (1 s) apart.
    const enabled = await api(stack, 'POST', `${ENDPOINTS}/${t.endpoint.id}/enable`, { token: t.admin });
    expect(enabled.status, enabled.text).toBe(200);
    expect(enabled.json).toMatchObject({ enabled: true, rate_limit_per_second: 1 });
    const letGosBefore = (await letGos(t.endpoint.id)).length;
    const later = await deliveries(t.tenantId, t.endpoint.id, 3);
    const done = await waitFor(
      async () => {
        const { rows } = await stack.db.admin(`select id, status, attempts from webhook_deliveries where id = any($1::uuid[])`, [later]);
        return rows.every((r) => r.status === 'delivered') ? rows : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 100, what: 'the deliveries after the enable' },
    );
    expect(done.map((r) => r.attempts)).toEqual([1, 1, 1]);
    const got = receiver.received.filter((r) => r.path === '/disabled');
    expect(got.map((r) => r.headers['webhook-id']).sort()).toEqual([...later].sort());
    expectSpaced((await letGos(t.endpoint.id)).slice(letGosBefore), 1, 3);
  });

  it('an endpoint disabled for failing (WEBHOOK_DISABLE_AFTER) gives up its deliveries waiting for turns at once, and drops its rate keys', async () => {
    // The first delivery's first attempt fails (the endpoint failing since); its retry, a turn (1 s) later, is held by the receiver.
    receiver.plan('/failing', [500, 'hold']);
    const t = await tenantWithEndpoint(stack, receiver, '/failing', ['run.completed']);
    expect((await api(stack, 'PATCH', `${ENDPOINTS}/${t.endpoint.id}`, { token: t.admin, body: { rate_limit_per_second: 1 } })).status).toBe(200);
    const [first] = await deliveries(t.tenantId, t.endpoint.id, 1);
    await waitFor(() => arrivals('/failing').length === 2 || undefined, { timeoutMs: 20_000, what: "the first delivery's retry" });
    // While it is in flight, 7 more wait for turns an hour off (hourOfTurnsAhead), and the endpoint has failed for WEBHOOK_DISABLE_AFTER
    // (a second, PostgreSQL's clock, which records it): the retry's failure disables it (WEBHOOK_TIMEOUT, a minute here, ends it
    // no sooner than that), whatever the time its setup took.
    try {
      await hourOfTurnsAhead(t.endpoint.id);
      await waitingForTurns(t.endpoint.id, await deliveries(t.tenantId, t.endpoint.id, 7));
      await waitFor(
        async () => (await stack.db.admin(`select failing_since <= now() - interval '1 second' as due from webhook_endpoints where id = $1`, [t.endpoint.id])).rows[0].due || undefined,
        { timeoutMs: 20_000, what: 'the endpoint to have failed for WEBHOOK_DISABLE_AFTER' },
      );
      expect((await stack.db.admin(`select enabled from webhook_endpoints where id = $1`, [t.endpoint.id])).rows[0].enabled).toBe(true);
    } finally {
      // Failed or not, the held attempt ends: it holds a worker's slot for the file's next tests else.
      receiver.release(500);
    }

    // Every delivery has settled and neither rate key is left, within the deadline (with the recall left out, the 7 wait out their
    // turns, an hour off, and the keys with them).
    const rows = await settledKeysGone(t.endpoint.id, "the failing endpoint's deliveries");
    expect((await stack.db.admin(`select disabled_reason from webhook_endpoints where id = $1`, [t.endpoint.id])).rows[0].disabled_reason).toBe('failing');
    expect(rows).toHaveLength(8);
    expect(rows.every((r) => r.status === 'failed')).toBe(true);
    // The 7 given up unsent; the first failed for good by its own attempt, the one that disabled the endpoint.
    expect(rows.filter((r) => r.last_error === 'endpoint disabled')).toHaveLength(7);
    expect((await stack.db.admin(`select attempts, last_status_code from webhook_deliveries where id = $1`, [first])).rows[0]).toEqual({ attempts: 2, last_status_code: 500 });
    expect(arrivals('/failing')).toHaveLength(2);
  });

  it("a delivery re-enqueued by the redelivery pass (its job lost) takes its turn behind the ones waiting, not past them", async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/redelivered', ['run.completed']);
    expect((await api(stack, 'PATCH', `${ENDPOINTS}/${t.endpoint.id}`, { token: t.admin, body: { rate_limit_per_second: 1 } })).status).toBe(200);
    const first = await deliveries(t.tenantId, t.endpoint.id, 3);
    // One went at once and is recorded; the other two wait for their turns, a second apart.
    await waitFor(async () => ((await stack.db.admin(`select count(*)::int as n from webhook_deliveries where endpoint_id = $1 and status = 'delivered'`, [t.endpoint.id])).rows[0].n === 1 ? true : undefined), { timeoutMs: 20_000, what: 'the first delivery' });
    // A delivery whose job Redis lost: pending, overdue, no job. The pass enqueues it, and only it (the waiting ones' jobs are delayed).
    const [lost] = await deliveries(t.tenantId, t.endpoint.id, 1, false);
    const queue = stack.container.queues.get(WEBHOOK_QUEUE)!;
    const pass = webhookHandlers({
      orm: stack.container.orm,
      logger: pino({ level: 'silent' }),
      settings: { timeoutMs: 5000, maxAttempts: 3, retryBaseMs: 50, policy: { allowPrivate: true, httpsOnly: false }, resolver: webhookResolver(stack.config) },
      queue: () => queue,
      redis: stack.container.redis,
      redeliverAfterMs: 0,
    })[WEBHOOK_REDELIVERY_JOB];
    expect(await pass()).toMatchObject({ enqueued: 1 });
    const rows = await settled(t.endpoint.id, 4);
    expect(rows.every((r) => r.attempts === 1)).toBe(true);
    // Each delivered once; the re-enqueued one let go after the three that held turns (the limiter's order: arrivals can swap).
    expect(receiver.received.filter((r) => r.path === '/redelivered').map((r) => String(r.headers['webhook-id'])).sort()).toEqual([...first, lost!].sort());
    const order = await letGoOrder(t.endpoint.id);
    expect(order.at(-1)).toBe(lost);
    expect(new Set(order.slice(0, 3))).toEqual(new Set(first));
    expectSpaced(await letGos(t.endpoint.id), 1, 4);
  });

  it('validates rate_limit_per_second (an integer 1-1000, or null) on create and update, and shows it on read and list', async () => {
    const t = await tenantWithEndpoint(stack, receiver, '/validated', ['run.completed']);
    const count = async () => Number((await stack.db.admin(`select count(*) from webhook_endpoints where tenant_id = $1`, [t.tenantId])).rows[0].count);
    expect(await count()).toBe(1);
    for (const bad of [0, 1001, -1, 2.5, '3', true]) {
      const res = await createEndpoint(stack, t.admin, { url: `${receiver.base}/validated`, events: ['run.completed'], rate_limit_per_second: bad });
      expect(res.status, `create with ${JSON.stringify(bad)}: ${res.text}`).toBe(422);
      expect(res.headers.get('content-type')).toContain('application/problem+json');
      expect(res.json).toMatchObject({ code: 'validation_failed' });
      expect(JSON.stringify(res.json.errors)).toContain('rate_limit_per_second');
    }
    expect(await count()).toBe(1);

    const created = await createEndpoint(stack, t.admin, { url: `${receiver.base}/validated`, events: ['run.completed'], rate_limit_per_second: 1000 });
    expect(created.status, created.text).toBe(201);
    expect(created.json.rate_limit_per_second).toBe(1000);
    const id = created.json.id as string;
    for (const bad of [0, 1001, 1.5, 'x']) {
      const res = await api(stack, 'PATCH', `${ENDPOINTS}/${id}`, { token: t.admin, body: { rate_limit_per_second: bad } });
      expect(res.status, `update with ${JSON.stringify(bad)}: ${res.text}`).toBe(422);
    }
    const read = await api(stack, 'GET', `${ENDPOINTS}/${id}`, { token: t.admin });
    expect(read.json.rate_limit_per_second).toBe(1000);
    expect((await api(stack, 'PATCH', `${ENDPOINTS}/${id}`, { token: t.admin, body: { rate_limit_per_second: 1 } })).json.rate_limit_per_second).toBe(1);
    const list = await api(stack, 'GET', ENDPOINTS, { token: t.admin });
    expect(Object.fromEntries(list.json.items.map((e: { id: string; rate_limit_per_second: number | null }) => [e.id, e.rate_limit_per_second]))).toEqual({ [id]: 1, [t.endpoint.id]: null });
    // Another field's update leaves it as it is; null removes it.
    expect((await api(stack, 'PATCH', `${ENDPOINTS}/${id}`, { token: t.admin, body: { description: 'd' } })).json.rate_limit_per_second).toBe(1);
    expect((await api(stack, 'PATCH', `${ENDPOINTS}/${id}`, { token: t.admin, body: { rate_limit_per_second: null } })).json.rate_limit_per_second).toBeNull();
    expect((await stack.db.admin(`select rate_limit_per_second from webhook_endpoints where id = $1`, [id])).rows[0].rate_limit_per_second).toBeNull();
  });
});
