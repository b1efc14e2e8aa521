import { afterAll, beforeAll, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { parseConfig } from '../../src/platform/config/config.ts';
import { createContainer, type Container } from '../../src/container.ts';
import { startWorkerProcess, type WorkerProcess } from '../../src/worker-runtime.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { TEST_JWT_SECRET, TEST_REDIS_URL } from '../helpers/env.ts';

/**
 * A worker process runs WORKER_CONCURRENCY run jobs on each workflow queue (one BullMQ Worker per
 * queue), each step in a transaction holding a connection: its default pool must hold them all, plus
 * the sweeper's and maintenance's two. With a second workflow on a queue of its own (partner
 * offboarding) the default was still WORKER_CONCURRENCY + 2: under load on both queues, half the
 * steps waited for a connection.
 */
let db: TestDatabase;
let container: Container;
let worker: WorkerProcess | undefined;
const prefix = `t${randomBytes(5).toString('hex')}`;

beforeAll(async () => {
  db = await createTestDatabase();
  const config = parseConfig({ NODE_ENV: 'test', JWT_SECRET: TEST_JWT_SECRET, DATABASE_URL: db.appUrl, MIGRATION_DATABASE_URL: db.ownerUrl, REDIS_URL: TEST_REDIS_URL, QUEUE_PREFIX: prefix, WORKER_CONCURRENCY: '3', LOG_LEVEL: 'silent', OTEL_SDK_DISABLED: 'true' });
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

it("a worker's default pool holds a connection for every run job it may run at once, on every workflow queue, plus two", async () => {
  worker = await startWorkerProcess(container);
  const runQueues = new Set(container.workflows.map((w) => w.queue));
  expect(runQueues.size).toBeGreaterThan(1);
  const runJobsAtOnce = worker.workers.filter((w) => runQueues.has(w.name)).reduce((n, w) => n + w.concurrency, 0);
  expect(runJobsAtOnce).toBe(3 * runQueues.size);
  expect(container.orm.config.get('pool')?.max).toBe(runJobsAtOnce + 2);
});
