/**
 * Redis's `timeout` must stay 0 (ADR 0016, amendment): a worker whose event loop is blocked longer has
 * its idle connection closed, looks gone from CLIENT LIST, and its lapsed lock counts as a crash. A
 * worker process says so at start with one warning when it is not 0, none when it is. On a private
 * redis-server (CONFIG SET there, never on the shared Redis). The readiness row `redis-timeout`:
 * readiness-redis.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonLines } from '../helpers/api-process.ts';
import { startStack, type TestStack } from '../helpers/stack.ts';
import { REDIS_IDLE_TIMEOUT_WARNING } from '../../src/platform/queue/connections.ts';

describe("Redis's timeout at a worker's start", () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ api: false, ownRedis: true });
  }, 120_000);
  afterAll(async () => {
    await stack?.stop();
  });

  it('a worker logs one warning when Redis closes idle clients (timeout 300), none with timeout 0', { timeout: 180_000 }, async () => {
    const redis = stack.ownRedis!.client;
    expect(await redis.config('GET', 'timeout')).toEqual(['timeout', '0']);
    const plain = await stack.spawnWorker();
    expect(jsonLines(plain.output()).filter((l) => l.msg === REDIS_IDLE_TIMEOUT_WARNING)).toEqual([]);
    await redis.config('SET', 'timeout', '300');
    const warned = await stack.spawnWorker();
    const lines = jsonLines(warned.output()).filter((l) => l.msg === REDIS_IDLE_TIMEOUT_WARNING);
    expect(lines).toEqual([expect.objectContaining({ level: 40, redis_timeout_seconds: 300 })]);
  });
});
