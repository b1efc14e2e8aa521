import { afterAll, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { createRedis } from '../../src/platform/queue/connections.ts';
import { warnOnQueueErrors } from '../../src/platform/queue/queue-errors.ts';
import { TEST_REDIS_URL } from '../helpers/env.ts';
import { waitFor } from '../helpers/poll.ts';

/**
 * A real queue on the platform's shared producer connection (as the container's): the throttle of its
 * `queue error` warnings starts afresh when the connection is ready again, so Redis going away again
 * soon after it came back is logged at once. The connection is dropped by Redis (CLIENT KILL of this
 * test's own connection) and reconnects by itself.
 */
const redis = createRedis(TEST_REDIS_URL, 'producer', `queue-errors-${randomUUID()}`);
const admin = new Redis(TEST_REDIS_URL);
const queue = new Queue(`queue-errors-${randomUUID()}`, { connection: redis, prefix: 'queue-errors-test' });
afterAll(async () => {
  // The queue's keys (its meta hash) go with it: this Redis is shared, and a key per run would pile up.
  await queue.obliterate({ force: true }).catch(() => {});
  await queue.close();
  redis.disconnect();
  admin.disconnect();
});

it('an error after the connection came back is logged at once, whenever the one before was', { timeout: 30_000 }, async () => {
  const lines: Record<string, unknown>[] = [];
  warnOnQueueErrors(queue, queue.name, { warn: (obj: Record<string, unknown>) => void lines.push(obj) } as never, 600_000);
  await queue.waitUntilReady();
  const first = new Error('connect ECONNREFUSED (first outage)');
  queue.emit('error', first);
  queue.emit('error', first);
  expect(lines).toHaveLength(1);

  const id = Number(await redis.client('ID'));
  let readyAgain = false;
  redis.once('close', () => redis.once('ready', () => (readyAgain = true)));
  await admin.client('KILL', 'ID', String(id));
  await waitFor(() => readyAgain, { timeoutMs: 20_000, what: 'the producer connection to reconnect' });

  const again = new Error('Connection is closed. (second outage)');
  queue.emit('error', again);
  expect(lines).toEqual([{ err: first, queue: queue.name }, { err: again, queue: queue.name, suppressed: 1 }]);
});
