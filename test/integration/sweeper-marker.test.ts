import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import { startStack, type TestStack } from '../helpers/stack.ts';
import { Sweeper } from '../../src/platform/durable/sweeper.ts';

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
