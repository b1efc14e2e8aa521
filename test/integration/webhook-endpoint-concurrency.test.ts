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

const CONCURRENCY = 3;
const CAP = 2;
/** More of tenant A's deliveries than the worker has webhook slots. */
const A_RUNS = 5;

/** A receiver that holds every request open (`holding`) until `release`, then answers 200 at once; it counts the most it held together. */
async function startHoldingReceiver() {
  const held: ServerResponse[] = [];
  const ids: string[] = [];
  let open = 0;
  let maxOpen = 0;
  let holding = true;
  const server = createServer((req, res) => {
    open++;
    maxOpen = Math.max(maxOpen, open);
    res.on('close', () => open--);
    ids.push(String(req.headers['webhook-id']));
    req.resume();
    req.on('end', () => (holding ? held.push(res) : res.writeHead(200).end('ok')));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`,
    ids,
    open: () => open,
    maxOpen: () => maxOpen,
    release() {
      holding = false;
      for (const res of held.splice(0)) res.writeHead(200).end('ok');
    },
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

async function tenantWithEndpoint(stack: TestStack, url: string) {
  const tenantId = newTenant();
  const admin = await stack.token({ tenantId, sub: 'admin-1', roles: ['admin'] });
  const created = await api(stack, 'POST', '/api/v1/webhook-endpoints', { token: admin, body: { url, events: ['run.completed'] }, headers: { 'Idempotency-Key': randomUUID() } });
  expect(created.status, created.text).toBe(201);
  return { tenantId, admin };
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

describe('webhook deliveries: a per-endpoint in-flight cap', () => {
  let stack: TestStack;
  let slow: Awaited<ReturnType<typeof startHoldingReceiver>>;
  let fast: Awaited<ReturnType<typeof startHoldingReceiver>>;

  beforeAll(async () => {
    // The attempt's timeout is far beyond the test: A's held requests end only when the test releases them.
    stack = await startStack({ env: { WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true', WEBHOOK_TIMEOUT: '60s', WORKER_CONCURRENCY: String(CONCURRENCY), WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT: String(CAP) } });
    slow = await startHoldingReceiver();
    fast = await startHoldingReceiver();
    fast.release();
    await stack.spawnWorker();
  }, 120_000);

  afterAll(async () => {
    await slow?.close();
    await fast?.close();
    await stack?.stop();
  });

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
    await submit(stack, b.admin);
    const [bRow] = await waitFor(async () => ((await deliveriesOf(stack, b.tenantId)).some((r) => r.status === 'delivered') ? deliveriesOf(stack, b.tenantId) : undefined), {
      timeoutMs: 30_000,
      what: "tenant B's delivery while tenant A's receiver holds its requests",
    });
    expect(bRow).toMatchObject({ status: 'delivered', attempts: 1 });
    expect(slow.open()).toBe(CAP);
    expect(slow.maxOpen()).toBe(CAP);
    // The held attempts' slots are leases on Redis's clock, not counts: a SIGKILLed holder's lapses on its own, at most
    // WEBHOOK_TIMEOUT and three lock durations after its acquire (the attempt itself ends by WEBHOOK_TIMEOUT).
    const [slotsKey] = await stack.redis.keys(`${stack.prefix}:endpoint-slots:*`);
    const [sec] = await stack.redis.time();
    const leases = (await stack.redis.zrange(slotsKey!, '0', '-1', 'WITHSCORES')).filter((_, i) => i % 2 === 1).map((score) => Number(score) - Number(sec) * 1000);
    expect(leases).toHaveLength(CAP);
    for (const ms of leases) expect(ms).toBeLessThanOrEqual(60_000 + 3 * 2_000 + 1_000);
    expect(await stack.redis.pttl(slotsKey!)).toBeGreaterThan(0);
    // A's deliveries beyond the cap are parked: delayed without an attempt, of the row or of BullMQ.
    const parked = (await Promise.all(aRows.map((r) => queue.getJob(deliveryJobId(r.id))))).filter((j): j is Job => j !== undefined && (j.data as { parks?: number }).parks !== undefined);
    expect(parked).toHaveLength(A_RUNS - CAP);
    for (const j of parked) {
      expect(await j.getState()).toBe('delayed');
      expect(j.attemptsMade).toBe(0);
    }
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

  it('0: a delivery sends no endpoint-slot command to Redis; on (the default), its slot commands are seen (MONITOR)', async () => {
    const t = await tenantWithEndpoint(stack, receiver.url);
    const monitor = await monitorKeys(`${stack.prefix}:endpoint-`);
    const { seen } = monitor;
    try {
      for (const cap of ['0', undefined]) {
        const worker = await stack.spawnWorker(cap === undefined ? {} : { WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT: cap });
        const before = (await deliveriesOf(stack, t.tenantId)).length;
        await submit(stack, t.admin);
        await waitFor(async () => (await deliveriesOf(stack, t.tenantId)).filter((r) => r.status === 'delivered').length === before + 1, { timeoutMs: 60_000, what: 'the delivery' });
        worker.kill();
        await worker.exited;
        // The worker is gone: every command it sent ran before this marker, which MONITOR reports after them.
        await monitor.settle(stack.redis, `${stack.prefix}-marker-${cap ?? 'default'}`);
        if (cap === '0') expect(seen).toEqual([]);
        else expect(seen.some((c) => c.includes(':endpoint-slots:'))).toBe(true);
      }
    } finally {
      monitor.stop();
    }
  }, 150_000);
});
