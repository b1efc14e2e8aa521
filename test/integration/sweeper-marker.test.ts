import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { startStack, type TestStack } from '../helpers/stack.ts';
import { TEST_REDIS_URL } from '../helpers/env.ts';
import { Sweeper } from '../../src/platform/durable/sweeper.ts';
import { IDEMPOTENCY_EXPIRY_JOB, MAINTENANCE_QUEUE, RUN_RETENTION_JOB, restoreMaintenanceSchedulers, upsertMaintenanceSchedulers } from '../../src/platform/queue/maintenance.ts';
import { WEBHOOK_REDELIVERY_JOB } from '../../src/platform/webhooks/delivery.ts';

/**
 * The sweeper notices that Redis lost its data by a marker key's absence, and then repairs what only
 * Redis held (waiting runs' timers, the maintenance Job Schedulers: `afterRedisLoss`). A loss while
 * that repair runs, or a repair that fails, must be noticed by the next sweep — else the schedulers
 * stay gone until a worker restarts.
 */
let stack: TestStack;
beforeAll(async () => {
  stack = await startStack({ api: false });
});
afterAll(async () => {
  await stack?.stop();
});

function sweeperWith(name: string, afterRedisLoss: () => Promise<void>) {
  return new Sweeper({
    orm: stack.container.orm,
    runtime: stack.container.runtime,
    redis: stack.container.redis,
    logger: pino({ level: 'silent' }),
    lockKey: `${stack.prefix}:${name}`,
    intervalMs: 1000,
    minAgeMs: 0,
    afterRedisLoss,
  });
}

describe('the sweeper\'s Redis-loss marker', () => {
  it('a loss while the repair runs is noticed by the next sweep', async () => {
    const marker = `${stack.prefix}:marker-loss:marker`;
    let repairs = 0;
    const sweeper = sweeperWith('marker-loss', async () => {
      repairs++;
      // Redis loses its data again at this moment (only the marker matters here: a flush takes it too).
      if (repairs === 1) await stack.container.redis.del(marker);
    });
    expect((await sweeper.sweep()).redisLost).toBe(true);
    expect((await sweeper.sweep()).redisLost).toBe(true);
    expect(repairs).toBe(2);
    expect((await sweeper.sweep()).redisLost).toBe(false);
    expect(repairs).toBe(2);
  });

  it('a repair that fails is tried again by the next sweep', async () => {
    let repairs = 0;
    const sweeper = sweeperWith('marker-fail', async () => {
      repairs++;
      if (repairs === 1) throw new Error('Redis went away while the schedulers were re-created');
    });
    await expect(sweeper.sweep()).rejects.toThrow(/went away/);
    expect((await sweeper.sweep()).redisLost).toBe(true);
    expect(repairs).toBe(2);
    expect((await sweeper.sweep()).redisLost).toBe(false);
  });
});

/**
 * What the repair (afterRedisLoss → restoreMaintenanceSchedulers) puts back when Redis kept some of
 * the schedulers: the idempotency-expiry one there but the webhook-redelivery one gone (keys lost one
 * by one, a Redis restored from a snapshot older than that scheduler, or an older release's worker
 * started after a flush, which upserts only the schedulers it knows). The schedulers no worker
 * removes come back; the run-retention schedule is the last-started worker's (ADR 0011) and stays.
 */
describe("the sweeper's repair when Redis kept some of the maintenance schedulers", () => {
  it('puts back a scheduler no worker removes that Redis lost while idempotency-expiry stayed, and leaves a removed run-retention schedule removed', async () => {
    const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1 });
    const queue = new Queue(MAINTENANCE_QUEUE, { connection, prefix: `${stack.prefix}-partial` });
    try {
      await upsertMaintenanceSchedulers(queue, { runRetentionMs: 0 });
      await queue.removeJobScheduler(WEBHOOK_REDELIVERY_JOB);
      expect((await queue.getJobSchedulers()).map((s) => s.key)).toEqual([IDEMPOTENCY_EXPIRY_JOB]);
      await restoreMaintenanceSchedulers(queue, { runRetentionMs: 30 * 86_400_000 });
      expect((await queue.getJobSchedulers()).map((s) => s.key).sort()).toEqual([IDEMPOTENCY_EXPIRY_JOB, WEBHOOK_REDELIVERY_JOB].sort());
      expect(await queue.getJobScheduler(RUN_RETENTION_JOB)).toBeUndefined();
    } finally {
      await queue.close();
      connection.disconnect();
    }
  });
});
