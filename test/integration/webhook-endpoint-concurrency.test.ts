/**
 * One tenant's slow receiver must not hold every webhook slot (WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT, ADR
 * 0013): the real stack — PostgreSQL as the application role, Redis, a spawned worker process with
 * WORKER_CONCURRENCY webhook slots — and real node:http receivers on 127.0.0.1. Tenant A's receiver
 * holds every request open until the test lets it answer; tenant B's answers at once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Job } from 'bullmq';
import { api, CLASS_A_SUBMISSION, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { monitorKeys } from '../helpers/redis-monitor.ts';
import { WEBHOOK_QUEUE } from '../../src/platform/webhooks/delivery.ts';
import { deliveryJobId } from '../../src/platform/queue/job-ids.ts';
import { slotMember, TenantSlots } from '../../src/platform/durable/tenant-slots.ts';

const CONCURRENCY = 3;
const CAP = 2;
/** More of tenant A's deliveries than the worker has webhook slots. */
const A_RUNS = 5;

/** A receiver that holds every request open (`holding`) until `release`, then answers (200) at once; it counts the most it held together. */
async function startHoldingReceiver() {
  const held: ServerResponse[] = [];
  const ids: string[] = [];
  let open = 0;
  let maxOpen = 0;
  let holding = true;
  let status = 200;
  const server = createServer((req, res) => {
    open++;
    maxOpen = Math.max(maxOpen, open);
    res.on('close', () => open--);
    ids.push(String(req.headers['webhook-id']));
    req.resume();
    req.on('end', () => (holding ? held.push(res) : res.writeHead(status).end('ok')));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`,
    ids,
    open: () => open,
    maxOpen: () => maxOpen,
    /** Holds the requests that come from now on (again). */
    hold() {
      holding = true;
    },
    /** Answers the requests held, and every one from now on, with `answer`. */
    release(answer = 200) {
      holding = false;
      status = answer;
      for (const res of held.splice(0)) res.writeHead(status).end('ok');
    },
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

type HoldingReceiver = Awaited<ReturnType<typeof startHoldingReceiver>>;

/**
 * The stack with `env` and a spawned worker, a `slow` receiver that holds its requests and a `fast` one
 * that answers at once. The attempt's timeout is far beyond the test: held requests end only when the test releases them.
 */
async function startHoldingStack(env: Record<string, string>) {
  const stack = await startStack({ env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true', WEBHOOK_TIMEOUT: '60s', ...env } });
  const slow = await startHoldingReceiver();
  const fast = await startHoldingReceiver();
  fast.release();
  await stack.spawnWorker();
  return { stack, slow, fast };
}

async function stopHoldingStack(h: { stack?: TestStack; slow?: HoldingReceiver; fast?: HoldingReceiver }) {
  await h.slow?.close();
  await h.fast?.close();
  await h.stack?.stop();
}

async function tenantWithEndpoint(stack: TestStack, url: string) {
  const tenantId = newTenant();
  const admin = await stack.token({ tenantId, sub: 'admin-1', roles: ['admin'] });
  const created = await api(stack, 'POST', '/api/v1/webhook-endpoints', { token: admin, body: { url, events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } });
  expect(created.status, created.text).toBe(201);
  return { tenantId, admin, endpointId: created.json.id as string };
}

async function submit(stack: TestStack, token: string): Promise<void> {
  const res = await api(stack, 'POST', '/api/v1/golden-path/run', { token, body: CLASS_A_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
  expect(res.status, res.text).toBe(202);
}

const deliveriesOf = async (stack: TestStack, tenantId: string) =>
  (await stack.db.admin(`select id, status, attempts, jsonb_array_length(coalesce(attempt_log, '[]'::jsonb)) as logged from webhook_deliveries where tenant_id = $1 order by created_at`, [tenantId])).rows as {
    id: string;
    status: string;
    attempts: number;
    logged: number;
  }[];

/** The parked jobs of `rows`' deliveries (delayed, `parks` in their data). */
async function parkedJobsOf(stack: TestStack, rows: { id: string }[]) {
  const queue = stack.container.queues.get(WEBHOOK_QUEUE)!;
  const jobs = await Promise.all(rows.map((r) => queue.getJob(deliveryJobId(r.id))));
  const states = await Promise.all(jobs.map((j) => j?.getState()));
  return jobs.filter((j, i) => (j?.data as { parks?: number } | undefined)?.parks !== undefined && states[i] === 'delayed');
}

/** Tenant `b` submits a run; its delivery is delivered at its first attempt while `slow` holds `held` requests, never more. */
async function deliveredWhileHeld(stack: TestStack, b: { tenantId: string; admin: string }, slow: HoldingReceiver, held: number) {
  await submit(stack, b.admin);
  const [bRow] = await waitFor(async () => ((await deliveriesOf(stack, b.tenantId)).some((r) => r.status === 'delivered') ? deliveriesOf(stack, b.tenantId) : undefined), {
    timeoutMs: 30_000,
    what: "the other tenant's delivery while the slow receiver holds its requests",
  });
  expect(bRow).toMatchObject({ status: 'delivered', attempts: 1 });
  expect(slow.open()).toBe(held);
  expect(slow.maxOpen()).toBe(held);
}

describe('webhook deliveries: a per-endpoint in-flight cap', () => {
  let stack: TestStack;
  let slow: HoldingReceiver;
  let fast: HoldingReceiver;

  beforeAll(async () => {
    ({ stack, slow, fast } = await startHoldingStack({ WORKER_CONCURRENCY: String(CONCURRENCY), WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT: String(CAP) }));
  }, 120_000);

  afterAll(() => stopHoldingStack({ stack, slow, fast }));

  it("tenant B's delivery is delivered while tenant A's receiver holds its requests; A never gets more than the cap at once, and each of its deliveries once after", async () => {
    const a = await tenantWithEndpoint(stack, slow.url);
    const b = await tenantWithEndpoint(stack, fast.url);
    for (let i = 0; i < A_RUNS; i++) await submit(stack, a.admin);
    const queue = stack.container.queues.get(WEBHOOK_QUEUE)!;
    // Every one of A's deliveries has reached a webhook slot — held by the receiver, or (with the cap) parked — or they fill them.
    const aRows = await waitFor(
      async () => {
        const rows = await deliveriesOf(stack, a.tenantId);
        if (rows.length < A_RUNS) return undefined;
        const states = await Promise.all(rows.map((r) => queue.getJobState(deliveryJobId(r.id))));
        // (Without the cap: the receiver holds every slot and A's other deliveries wait behind them.)
        const settled = states.every((s) => s === 'active' || s === 'delayed') || slow.open() === CONCURRENCY;
        return settled && slow.open() >= CAP ? rows : undefined;
      },
      { timeoutMs: 60_000, what: "tenant A's deliveries to reach the worker" },
    );
    // B's run ends behind them; its delivery must not wait for A's receiver.
    await deliveredWhileHeld(stack, b, slow, CAP);
    // The held attempts' slots are leases on Redis's clock, not counts: a SIGKILLed holder's lapses on its own, at most
    // WEBHOOK_TIMEOUT and three lock durations after its acquire (the attempt itself ends by WEBHOOK_TIMEOUT).
    const [slotsKey] = await stack.redis.keys(`${stack.prefix}:endpoint-slots:*`);
    const [sec] = await stack.redis.time();
    const leases = (await stack.redis.zrange(slotsKey!, '0', '-1', 'WITHSCORES')).filter((_, i) => i % 2 === 1).map((score) => Number(score) - Number(sec) * 1000);
    expect(leases).toHaveLength(CAP);
    for (const ms of leases) expect(ms).toBeLessThanOrEqual(60_000 + 3 * 2_000 + 1_000);
    expect(await stack.redis.pttl(slotsKey!)).toBeGreaterThan(0);
    // A's deliveries beyond the cap are parked: delayed without an attempt, of the row or of BullMQ. Polled: a worker
    // records a park in the job's data, then moves the job to delayed, and the wait above may end between the two
    // (the job still active), or before the last job got that far.
    const parked = await waitFor(async () => {
      const jobs = await parkedJobsOf(stack, aRows);
      return jobs.length === A_RUNS - CAP ? (jobs as Job[]) : undefined;
    }, { timeoutMs: 30_000, what: `${A_RUNS - CAP} of tenant A's deliveries parked (delayed)` });
    for (const j of parked) expect(j.attemptsMade).toBe(0);
    const parkedIds = new Set(parked.map((j) => (j.data as { delivery_id: string }).delivery_id));
    expect((await deliveriesOf(stack, a.tenantId)).filter((r) => parkedIds.has(r.id)).map((r) => r.attempts)).toEqual(Array(A_RUNS - CAP).fill(0));

    // Released, A's parked deliveries are promoted as its slots free (not after their 30-60 s fallback delay).
    slow.release();
    const done = await waitFor(async () => {
      const rows = await deliveriesOf(stack, a.tenantId);
      return rows.every((r) => r.status === 'delivered') ? rows : undefined;
    }, { timeoutMs: 25_000, what: "all of tenant A's deliveries after the release" });
    // Each recorded once: one attempt, one log entry, one request per delivery, never more than the cap at once.
    expect(done.map((r) => [r.attempts, r.logged])).toEqual(Array(A_RUNS).fill([1, 1]));
    expect([...slow.ids].sort()).toEqual(done.map((r) => r.id).sort());
    expect(slow.maxOpen()).toBe(CAP);
    // The parks spent no BullMQ attempt: each job completed on its first.
    // (Read once each job has completed: a delivery is recorded before its job's processor returns, and
    // BullMQ counts the attempt only when it completes the job.)
    await waitFor(async () => (await Promise.all(done.map((r) => queue.getJobState(deliveryJobId(r.id))))).every((s) => s === 'completed'), { timeoutMs: 25_000, what: "tenant A's delivery jobs to complete" });
    for (const r of done) expect((await queue.getJob(deliveryJobId(r.id)))?.attemptsMade).toBe(1);
    // The endpoint's slots were all given back.
    await waitFor(async () => (await stack.redis.keys(`${stack.prefix}:endpoint-slots:*`)).length === 0, { what: "the endpoint's slots given back" });
  }, 150_000);
});

describe('webhook deliveries: the per-endpoint cap off', () => {
  let stack: TestStack;
  let receiver: Awaited<ReturnType<typeof startHoldingReceiver>>;

  beforeAll(async () => {
    stack = await startStack({ env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true' } });
    receiver = await startHoldingReceiver();
    receiver.release();
  }, 120_000);

  afterAll(async () => {
    await receiver?.close();
    await stack?.stop();
  });

  it('0: a delivery sends no endpoint- or tenant-slot command to Redis; on (the defaults), both slot commands are seen (MONITOR)', async () => {
    const t = await tenantWithEndpoint(stack, receiver.url);
    const monitor = await monitorKeys(`${stack.prefix}:`);
    const slotCommands = () => monitor.seen.filter((c) => /:(endpoint|webhook-tenant)-(slots|parked):/.test(c));
    try {
      for (const cap of ['0', undefined]) {
        const worker = await stack.spawnWorker(cap === undefined ? {} : { WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT: cap, WEBHOOK_MAX_IN_FLIGHT_PER_TENANT: cap });
        const before = (await deliveriesOf(stack, t.tenantId)).length;
        await submit(stack, t.admin);
        await waitFor(async () => (await deliveriesOf(stack, t.tenantId)).filter((r) => r.status === 'delivered').length === before + 1, { timeoutMs: 60_000, what: 'the delivery' });
        worker.kill();
        await worker.exited;
        // The worker is gone: every command it sent ran before this marker, which MONITOR reports after them.
        await monitor.settle(stack.redis, `${stack.prefix}-marker-${cap ?? 'default'}`);
        if (cap === '0') expect(slotCommands()).toEqual([]);
        else {
          expect(slotCommands().some((c) => c.includes(':endpoint-slots:'))).toBe(true);
          expect(slotCommands().some((c) => c.includes(`:webhook-tenant-slots:${t.tenantId}`))).toBe(true);
        }
      }
    } finally {
      monitor.stop();
    }
  }, 150_000);
});

describe('webhook deliveries: parked deliveries that cannot use their slot, a parked delivery retried, and a per-tenant in-flight cap', () => {
  let stack: TestStack;
  let slow: HoldingReceiver;
  let fast: HoldingReceiver;
  const TENANT_CAP = 2;
  const parkedOf = (rows: { id: string }[]) => parkedJobsOf(stack, rows);
  /** A new tenant's endpoint at the slow receiver (holding again, its ids cleared) and `n` run ends: one attempt held, the other n - 1 parked behind it. */
  async function oneHeldRestParked(n: number) {
    slow.ids.length = 0;
    slow.hold();
    const a = await tenantWithEndpoint(stack, slow.url);
    for (let i = 0; i < n; i++) await submit(stack, a.admin);
    await waitFor(async () => {
      const rows = await deliveriesOf(stack, a.tenantId);
      return rows.length === n && slow.open() === 1 && (await parkedOf(rows)).length === n - 1;
    }, { timeoutMs: 60_000, what: `one attempt in flight and ${n - 1} parked` });
    return a;
  }

  beforeAll(async () => {
    // One attempt per endpoint, two per tenant, three webhook slots in the worker: one tenant's three endpoints would fill them.
    ({ stack, slow, fast } = await startHoldingStack({ WORKER_CONCURRENCY: '3', WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT: '1', WEBHOOK_MAX_IN_FLIGHT_PER_TENANT: String(TENANT_CAP) }));
  }, 120_000);

  afterAll(() => stopHoldingStack({ stack, slow, fast }));

  it('an endpoint disabled while its deliveries are parked gives them all up as its attempt ends, not one per 30-60 s fallback delay', async () => {
    // One attempt held by the receiver, the other two parked behind it.
    const a = await oneHeldRestParked(3);
    const res = await api(stack, 'POST', `/api/v1/webhook-endpoints/${a.endpointId}/disable`, { token: a.admin, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status, res.text).toBe(200);
    slow.release();
    // The first parked delivery is promoted into the freed slot and given up without a POST; the second must not wait out its
    // fallback delay (30-60 s) behind a slot that woke nobody.
    const rows = await waitFor(async () => {
      const r = await deliveriesOf(stack, a.tenantId);
      return r.every((d) => d.status !== 'pending') ? r : undefined;
    }, { timeoutMs: 25_000, what: "the disabled endpoint's parked deliveries to be given up" });
    expect(rows.map((r) => r.status).sort()).toEqual(['delivered', 'failed', 'failed']);
    expect(slow.ids).toHaveLength(1);
    await waitFor(async () => (await stack.redis.keys(`${stack.prefix}:*-slots:*`)).length === 0, { what: 'every slot given back' });
  }, 150_000);

  it("a test event parked at its endpoint's cap is promoted first when a slot frees, ahead of the deliveries parked before it; each is delivered once", async () => {
    const a = await oneHeldRestParked(3);
    const test = await api(stack, 'POST', `/api/v1/webhook-endpoints/${a.endpointId}/test`, { token: a.admin, headers: { 'Idempotency-Key': randomUUID() } });
    expect(test.status, test.text).toBe(202);
    const testId = test.json.id as string;
    // Parked behind the attempt in flight, after the other two.
    await waitFor(async () => (await parkedOf([{ id: testId }])).length === 1, { timeoutMs: 30_000, what: 'the test event parked' });
    expect(slow.ids).toHaveLength(1);

    slow.release();
    const done = await waitFor(async () => {
      const rows = await deliveriesOf(stack, a.tenantId);
      return rows.length === 4 && rows.every((r) => r.status === 'delivered') ? rows : undefined;
    }, { timeoutMs: 25_000, what: 'the deliveries and the test event after the release' });
    expect(done.map((r) => [r.attempts, r.logged])).toEqual(Array(4).fill([1, 1]));
    // The slot freed by the held attempt went to the test event (parked last; promoted last with the parked set's FIFO order).
    expect(slow.ids[1]).toBe(testId);
    expect([...slow.ids].sort()).toEqual(done.map((r) => r.id).sort());
    await waitFor(async () => (await stack.redis.keys(`${stack.prefix}:*-slots:*`)).length === 0, { what: 'every slot given back' });
  }, 150_000);

  it("a tenant's slow endpoints hold no more than WEBHOOK_MAX_IN_FLIGHT_PER_TENANT attempts; another tenant's delivery goes through, and the parked ones after the release", async () => {
    slow.ids.length = 0;
    slow.hold();
    const tenantId = newTenant();
    const admin = await stack.token({ tenantId, sub: 'admin-1', roles: ['admin'] });
    for (let i = 0; i < 3; i++) {
      const created = await api(stack, 'POST', '/api/v1/webhook-endpoints', { token: admin, body: { url: `${slow.url}?endpoint=${i}`, events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } });
      expect(created.status, created.text).toBe(201);
    }
    // Two run ends: six deliveries over three endpoints, each endpoint under its own cap of one.
    for (let i = 0; i < 2; i++) await submit(stack, admin);
    await waitFor(async () => {
      const rows = await deliveriesOf(stack, tenantId);
      // (Without the tenant's cap: one attempt per endpoint, three, the worker's every webhook slot.)
      return rows.length === 6 && (slow.open() === 3 || (slow.open() === TENANT_CAP && (await parkedOf(rows)).length === 6 - TENANT_CAP));
    }, { timeoutMs: 60_000, what: "the tenant's deliveries in flight or parked" });
    const b = await tenantWithEndpoint(stack, fast.url);
    await deliveredWhileHeld(stack, b, slow, TENANT_CAP);
    const [tenantSlots] = await stack.redis.keys(`${stack.prefix}:webhook-tenant-slots:${tenantId}`);
    expect(await stack.redis.zcard(tenantSlots!)).toBe(TENANT_CAP);

    // Released, the parked deliveries are promoted as the tenant's and its endpoints' slots free (not after their fallback delay).
    slow.release();
    const done = await waitFor(async () => {
      const rows = await deliveriesOf(stack, tenantId);
      return rows.every((r) => r.status === 'delivered') ? rows : undefined;
    }, { timeoutMs: 25_000, what: "the tenant's deliveries after the release" });
    expect(done.map((r) => [r.attempts, r.logged])).toEqual(Array(6).fill([1, 1]));
    expect([...slow.ids].sort()).toEqual(done.map((r) => r.id).sort());
    expect(slow.maxOpen()).toBe(TENANT_CAP);
    await waitFor(async () => (await stack.redis.keys(`${stack.prefix}:*-slots:*`)).length === 0, { what: 'every slot given back' });
  }, 150_000);

  it('a parked delivery whose attempt fails is retried as a new attempt: its parks (and its place in the parked set) are not carried to its next attempt', async () => {
    const a = await oneHeldRestParked(2);
    // Both attempts fail: each delivery waits for its retry (WEBHOOK_RETRY_BASE, 30 s), delayed.
    slow.release(500);
    const rows = await waitFor(async () => {
      const r = await deliveriesOf(stack, a.tenantId);
      return r.every((d) => d.status === 'pending' && d.attempts === 1) ? r : undefined;
    }, { timeoutMs: 25_000, what: 'both first attempts recorded as failed' });
    const queue = stack.container.queues.get(WEBHOOK_QUEUE)!;
    const jobs = await waitFor(async () => {
      const js = await Promise.all(rows.map((r) => queue.getJob(deliveryJobId(r.id))));
      const states = await Promise.all(js.map((j) => j?.getState()));
      return states.every((st) => st === 'delayed') ? js : undefined;
    }, { what: 'both jobs delayed for their retry' });
    // Parked again at its retry, the delivery parked at its first attempt would otherwise jump ahead of every delivery parked
    // since (its first parked_at is the earliest), with the longer 60-120 s fallback delay and its park logged at debug only.
    for (const j of jobs) expect(j!.data).toEqual({ tenant_id: a.tenantId, delivery_id: (j!.data as { delivery_id: string }).delivery_id });
  }, 150_000);
});

describe('webhook deliveries: a slot whose holder died', () => {
  let stack: TestStack;
  let slow: HoldingReceiver;
  let fast: HoldingReceiver;
  /** The dead holder's lease: far shorter than a parked job's 30-120 s fallback delay. */
  const LEASE_MS = 8_000;

  beforeAll(async () => {
    ({ stack, slow, fast } = await startHoldingStack({ WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT: '1', WEBHOOK_MAX_IN_FLIGHT_PER_TENANT: '0' }));
  }, 120_000);

  afterAll(() => stopHoldingStack({ stack, slow, fast }));

  it("a delivery parked behind a lease that is never given back (its worker died in the POST) is parked until the lease lapses at the latest, then takes the slot and is delivered", async () => {
    const a = await tenantWithEndpoint(stack, fast.url);
    // The dead holder: the endpoint's only slot, taken through the slot code as a worker takes it, and dropped.
    const slots = new TenantSlots(stack.redis, { prefix: stack.prefix, per: 'endpoint', cap: 1, leaseMs: LEASE_MS });
    const dead = slotMember(WEBHOOK_QUEUE, 'dead-holder');
    expect(await slots.acquire(a.endpointId, dead)).toBe(true);
    const lapsesAt = Number(await stack.redis.zscore(slots.slotsKey(a.endpointId), dead));
    await submit(stack, a.admin);
    const [job] = await waitFor(async () => {
      const rows = await deliveriesOf(stack, a.tenantId);
      const parked = rows.length === 1 ? await parkedJobsOf(stack, rows) : [];
      return parked.length === 1 ? parked : undefined;
    }, { timeoutMs: 30_000, what: 'the delivery parked behind the dead holder' });
    // When the parked job comes back (the delayed set's score is its timestamp × 0x1000): by the lapse, not after its fallback delay.
    const queue = stack.container.queues.get(WEBHOOK_QUEUE)!;
    const parkedUntil = Math.floor(Number(await stack.redis.zscore(queue.keys.delayed!, job!.id!)) / 0x1000);
    expect(parkedUntil).toBeGreaterThan(0);
    expect(parkedUntil).toBeLessThanOrEqual(lapsesAt);
    // Back, it finds the dead lease lapsed and takes the slot: delivered once, its POST after the lapse.
    const [row] = await waitFor(async () => {
      const rows = await deliveriesOf(stack, a.tenantId);
      return rows[0]?.status === 'delivered' ? rows : undefined;
    }, { timeoutMs: 25_000, what: 'the delivery after the dead lease lapsed' });
    expect(row).toMatchObject({ attempts: 1, logged: 1 });
    const [{ at }] = (await stack.db.admin(`select (extract(epoch from last_attempt_at) * 1000)::bigint as at from webhook_deliveries where id = $1`, [row!.id])).rows;
    expect(Number(at)).toBeGreaterThanOrEqual(lapsesAt);
    expect(fast.ids).toEqual([row!.id]);
  }, 150_000);
});
