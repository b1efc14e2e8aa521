import { afterAll, beforeAll, expect, it } from 'vitest';
import { randomBytes, randomUUID } from 'node:crypto';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { parseConfig } from '../../src/platform/config/config.ts';
import { registeredQueues } from '../helpers/registered-workflows.ts';
import { createContainer, type Container } from '../../src/container.ts';
import { startWorkerProcess, type WorkerProcess } from '../../src/worker-runtime.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { TEST_JWT_SECRET, TEST_REDIS_URL } from '../helpers/env.ts';
import { waitFor } from '../helpers/poll.ts';
import { startReceiver } from '../helpers/webhooks.ts';
import { enqueueDeliveries, WEBHOOK_QUEUE } from '../../src/platform/webhooks/delivery.ts';

/**
 * A worker process runs WORKER_CONCURRENCY run jobs on each workflow queue (one BullMQ Worker per
 * queue), each step in a transaction holding a connection, and WORKER_TIMER_CONCURRENCY SLA timers,
 * each one transaction: its default pool must hold them all, plus the sweeper's and maintenance's two.
 * With a second workflow on a queue of its own (partner offboarding) the default was still
 * WORKER_CONCURRENCY + 2: under load on both queues, half the steps waited for a connection; and
 * without the timers counted, a timer that came due waited for one behind the run jobs.
 */
let db: TestDatabase;
let container: Container;
let worker: WorkerProcess | undefined;
const prefix = `t${randomBytes(5).toString('hex')}`;
const baseEnv = () => ({ NODE_ENV: 'test', JWT_SECRET: TEST_JWT_SECRET, DATABASE_URL: db.appUrl, MIGRATION_DATABASE_URL: db.ownerUrl, REDIS_URL: TEST_REDIS_URL, QUEUE_PREFIX: prefix, WORKER_CONCURRENCY: '3', WORKER_TIMER_CONCURRENCY: '5', LOG_LEVEL: 'silent', OTEL_SDK_DISABLED: 'true' });

beforeAll(async () => {
  db = await createTestDatabase();
  const config = parseConfig(baseEnv());
  container = await createContainer(config, { service: 'worker' });
});
afterAll(async () => {
  await worker?.stop();
  await container?.close();
  const redis = new Redis(TEST_REDIS_URL);
  const keys = await redis.keys(`${prefix}:*`);
  if (keys.length) await redis.del(...keys);
  redis.disconnect();
  await db?.drop();
});

it("a worker's default pool holds a connection for every run job and every timer it may run at once, on every workflow queue, plus two", async () => {
  worker = await startWorkerProcess(container);
  const runQueues = new Set(container.workflows.map((w) => w.queue));
  expect(runQueues.size).toBeGreaterThan(1);
  const runJobsAtOnce = worker.workers.filter((w) => runQueues.has(w.name)).reduce((n, w) => n + w.concurrency, 0);
  expect(runJobsAtOnce).toBe(3 * runQueues.size);
  const timersAtOnce = worker.workers.find((w) => w.name === 'timers')!.concurrency;
  expect(timersAtOnce).toBe(5);
  expect(container.orm.config.get('pool')?.max).toBe(runJobsAtOnce + timersAtOnce + 2);
});

/**
 * A platform team scales its worker dynos per queue (a burst of offboardings must not need more
 * golden-path capacity, nor hold it up): WORKER_QUEUES names the workflow queues a process serves.
 * Before it every worker process served every queue, so no dyno type could be given one queue.
 */
it('WORKER_QUEUES gives a worker process the named workflow queues only (and timers, maintenance and webhooks), its default pool sized for them', async () => {
  const config = parseConfig({ ...baseEnv(), WORKER_QUEUES: 'partner-offboarding' });
  const only = await createContainer(config, { service: 'worker' });
  const w = await startWorkerProcess(only);
  try {
    // The timers queue with its own concurrency, not WORKER_CONCURRENCY (ADR 0015): SLA timers fire on any dyno.
    expect(w.workers.map((x) => x.name).sort()).toEqual(['maintenance', 'partner-offboarding', 'timers', 'webhooks']);
    expect(w.workers.find((x) => x.name === 'timers')!.concurrency).toBe(config.WORKER_TIMER_CONCURRENCY);
    expect(only.orm.config.get('pool')?.max).toBe(3 + 5 + 2);
    // The API and the sweeper still know every workflow: a run of another queue is enqueued for the dynos that serve it.
    expect(only.queues.has('golden-path')).toBe(true);
  } finally {
    await w.stop();
    await only.close();
  }
});

/**
 * Webhook deliveries are not counted in the default pool (ADR 0013, 0015): a delivery takes a connection
 * for its read and, after the POST, for its record — two short transactions, at most one at a time, so
 * at most WORKER_CONCURRENCY at once (one per webhook slot) — and none while it waits for its receiver.
 * Counting them would add WORKER_CONCURRENCY connections to every worker's pool for transactions as
 * short as a timer's. What keeps that true is that no connection is held across the POST: with every
 * webhook slot of the worker held by a receiver that does not answer, none of its pool is checked out.
 */
it("deliveries waiting for a receiver that does not answer hold none of the worker's pool: every webhook slot busy, no connection checked out", async () => {
  const receiver = await startReceiver();
  // A prefix of its own: the worker of the first test, still running, must not take these deliveries.
  const ownPrefix = `${prefix}w`;
  const config = parseConfig({ ...baseEnv(), QUEUE_PREFIX: ownPrefix, WORKER_QUEUES: 'partner-offboarding', WEBHOOK_ALLOW_PRIVATE_NETWORKS: 'true', WEBHOOK_TIMEOUT: '60s' });
  const own = await createContainer(config, { service: 'worker' });
  const w = await startWorkerProcess(own);
  const pool = (await own.orm.em.getDriver().getConnection().getNativeClient()) as { totalCount: number; idleCount: number; waitingCount: number };
  const checkedOut = () => pool.totalCount - pool.idleCount;
  try {
    expect(own.orm.config.get('pool')?.max).toBe(3 + 5 + 2);
    const tenant = randomUUID();
    const endpoint = randomUUID();
    receiver.plan('/hook', Array(5).fill('hold'));
    await db.admin(
      `insert into webhook_endpoints (id, tenant_id, url, events, secret, enabled, created_by, created_at, updated_at) values ($1, $2, $3, '{run.completed}', 'whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=', true, 'test', now(), now())`,
      [endpoint, tenant, `${receiver.base}/hook`],
    );
    const { rows } = await db.admin(
      `insert into webhook_deliveries (id, tenant_id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, created_at, updated_at)
       select gen_random_uuid(), $1, $2, 'run.completed', '{"type":"run.completed","data":{}}', 'pending', 0, now(), now(), now() from generate_series(1, 5) returning id`,
      [tenant, endpoint],
    );
    await enqueueDeliveries(own.queues.get(WEBHOOK_QUEUE)!, tenant, rows.map((r: { id: string }) => r.id));
    // Every webhook slot of the worker (WORKER_CONCURRENCY, 3) in a POST its receiver holds.
    await waitFor(() => receiver.received.length === 3 || undefined, { timeoutMs: 30_000, what: 'three deliveries in their POST' });
    // Their read transactions have ended: nothing of the pool is checked out (the sweeper's and maintenance's own
    // transactions come and go; none is left), and nothing waits for a connection. (Well within WEBHOOK_TIMEOUT:
    // a delivery holding a connection through its POST would hold it past this wait.)
    await waitFor(() => checkedOut() === 0 || undefined, { timeoutMs: 20_000, what: 'no connection checked out while the deliveries wait for their receiver' });
    expect(pool.waitingCount).toBe(0);
    expect(receiver.received.length).toBe(3);
    receiver.release();
    await waitFor(() => receiver.received.length === 5 || undefined, { timeoutMs: 30_000, what: 'the other two deliveries' });
    receiver.release();
    await waitFor(async () => (await db.admin(`select count(*)::int as n from webhook_deliveries where tenant_id = $1 and status = 'delivered'`, [tenant])).rows[0].n === 5 || undefined, { timeoutMs: 30_000, what: 'every delivery recorded delivered' });
  } finally {
    // The receiver first: a request it still held would hold the worker's stop for its grace period.
    await receiver.close();
    await w.stop();
    await own.close();
    const redis = new Redis(TEST_REDIS_URL);
    const keys = await redis.keys(`${ownPrefix}:*`);
    if (keys.length) await redis.del(...keys);
    redis.disconnect();
  }
});

/** The workflow queues the modules register, as the WORKER_QUEUES refusal lists them (a new workflow's joins by itself). */
const WORKFLOW_QUEUES = registeredQueues();

it('a WORKER_QUEUES naming no workflow queue stops the worker at start, naming the variable and the queues there are', async () => {
  const config = parseConfig({ ...baseEnv(), WORKER_QUEUES: 'golden-path,partner-offbording' });
  await expect(createContainer(config, { service: 'worker' })).rejects.toThrow(`WORKER_QUEUES: partner-offbording is no workflow queue; there are ${WORKFLOW_QUEUES}`);
});

/**
 * The production entry prints it as it prints any bad setting: the message alone on stderr, exit 1.
 * Checked once the workflows are known (in createContainer), it was thrown past the entry instead: a
 * stack trace with the source line, which a log drain splits into a dozen unrelated lines.
 */
it.each([
  { name: 'WORKER_QUEUES', value: 'golden-path,partner-offbording', problem: `partner-offbording is no workflow queue; there are ${WORKFLOW_QUEUES}` },
  { name: 'WORKER_QUEUES', value: 'maintenance', problem: `maintenance is no workflow queue; there are ${WORKFLOW_QUEUES} (maintenance is served by every worker and is not named here)` },
  // Checked by the workflow registry once the workflows are known, as WORKER_QUEUES: it was a plain Error, a stack trace.
  { name: 'WORKFLOW_VERSIONS_RETIRED', value: 'golden-path-v1', problem: '"golden-path-v1" is not name@vN (e.g. golden-path@v1)' },
])('the production worker started with $name=$value exits 1 with the configuration problem only, no stack trace', async ({ name, value, problem }) => {
  const proc = spawn(process.execPath, ['workers/golden-path.worker.ts'], {
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
    env: { PATH: process.env.PATH ?? '', ...baseEnv(), LOG_LEVEL: 'info', [name]: value },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (d) => (stdout += d));
  proc.stderr.on('data', (d) => (stderr += d));
  // 'close': its output read to the end ('exit' can come before the last of it).
  const code = await new Promise<number | null>((r) => proc.once('close', (c) => r(c)));
  expect(code, stderr).toBe(1);
  expect(stderr).toBe(`invalid configuration:\n  - ${name}: ${problem}\n`);
  expect(stdout).toBe('');
});
