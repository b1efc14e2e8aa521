import { randomUUID } from 'node:crypto';
import { Queue, type Job } from 'bullmq';
import type { StepExecutor } from '../../src/platform/durable/executor.ts';
import type { StepJobData } from '../../src/platform/durable/runtime.ts';
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

/**
 * Runs `job` through `executor` `attempts` times, each attempt as BullMQ's retry runs it: the one
 * before counted in the job (attemptsMade, attemptsStarted; its fail() would update them). An attempt
 * whose `process` returns adds 'returned' to `outcomes`; one that throws adds nothing (what the
 * executor did with the failure is its onStepFailed's to say).
 */
export async function processAttempts(executor: StepExecutor, job: Job<StepJobData>, attempts: number, outcomes: string[]): Promise<void> {
  for (let i = 0; i < attempts; i++) {
    await executor.process(job).then(
      () => outcomes.push('returned'),
      () => {},
    );
    job.attemptsMade = i + 1;
    job.attemptsStarted = i + 2;
  }
}
