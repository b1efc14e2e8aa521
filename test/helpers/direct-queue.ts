import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import type { TestStack } from './stack.ts';

/**
 * Runs `fn` with a queue of its own no worker listens on (`<name>-<uuid>`), under the stack's prefix:
 * jobs created on it are executed only by the test (a StepExecutor's `process`). Obliterated and closed after.
 */
export async function withDirectQueue<T>(stack: TestStack, name: string, fn: (queue: Queue) => Promise<T>): Promise<T> {
  const queue = new Queue(`${name}-${randomUUID()}`, { connection: stack.container.redis, prefix: stack.prefix });
  try {
    return await fn(queue);
  } finally {
    await queue.obliterate({ force: true }).catch(() => {});
    await queue.close();
  }
}
