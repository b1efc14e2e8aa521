/**
 * A sweeper stopped while it sweeps (the worker shutting down) ends its sweep after the run it is on,
 * instead of going through the rest (up to SWEEPER_MAX_PER_SWEEP runs of each kind, minutes of a deep
 * table, while the worker's shutdown deadline runs out and it exits 1); the next sweep goes on from
 * where it stopped and re-enqueues the rest. Against the real PostgreSQL (RLS in force) and Redis.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomUUID } from 'node:crypto';
import type { Queue } from 'bullmq';
import { pino } from 'pino';
import { z } from 'zod';
import { DurableRuntime } from '../../src/platform/durable/runtime.ts';
import { Sweeper } from '../../src/platform/durable/sweeper.ts';
import { defineStep, defineWorkflow } from '../../src/platform/durable/workflow.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { newTenant, type TestStack } from '../helpers/stack.ts';
import { withDirectQueue } from '../helpers/direct-queue.ts';
import { sweeperStackForTests } from '../helpers/recovery.ts';
import { waitFor } from '../helpers/poll.ts';

/** `lockKeys`: the lock keys of the sweepers this file's tests built, outside the stack's prefix, whose keys are deleted after each test. */
const suite = sweeperStackForTests();
const { lockKeys } = suite;
let stack: TestStack;
beforeAll(() => void ({ stack } = suite));

describe('a sweeper stopped during a sweep', () => {
  it('stops after the run it is on, and the next sweep re-enqueues the rest', { timeout: 120_000 }, async () => {
    const N = 60;
    const name = `sweep-stop-${randomUUID().slice(0, 8)}`;
    const step = defineStep({ name: 's1', input: z.any(), output: z.any(), run: async () => 1 });
    const wf = defineWorkflow({ name, version: 1, tag: 'sweep-stop', queue: 'sweep-stop', input: z.any(), steps: [step] });
    const queues = new Map<string, Queue>();
    const runtime = new DurableRuntime({ workflows: [wf], queues, logger: pino({ level: 'silent' }) });
    // Runs whose jobs are gone (none was ever added: the runtime had no queue for them).
    const tenant = newTenant();
    await tenantEm(stack.container.orm, tenant).transactional(async (tx) => {
      for (let i = 0; i < N; i++) {
        await runtime.start_run(tx, name, { tenantId: tenant, principal: 'sweep-stop-test', idempotencyHash: createHash('sha256').update(randomUUID()).digest('hex'), input: {}, correlationId: randomUUID() });
      }
    });
    await withDirectQueue(stack, 'sweep-stop', async (queue) => {
      queues.set('sweep-stop', queue);
      let stopped: Promise<void> | undefined;
      // Stopped as soon as the sweep has re-enqueued its first run: what it does after that is up to stop().
      const logger = pino({ level: 'info' }, {
        write: (line: string) => {
          if ((JSON.parse(line) as { msg?: string }).msg === 'sweeper re-enqueued run') stopped ??= sweeper.stop();
        },
      });
      // Small pages, so the sweep goes through several.
      const lockKey = `sweep-stop-${randomUUID()}`;
      lockKeys.push(lockKey);
      const sweeper = new Sweeper({ orm: stack.container.orm, runtime, redis: stack.container.redis, logger, lockKey, intervalMs: 60_000, minAgeMs: 0, batch: 10 });
      sweeper.start();
      await waitFor(() => stopped !== undefined, { timeoutMs: 60_000, intervalMs: 20, what: 'the sweep to re-enqueue its first run' });
      await stopped;
      const handled = await queue.getJobCountByTypes('wait');
      expect(handled).toBeGreaterThan(0);
      // It did not go through every run before stop() returned.
      expect(handled).toBeLessThan(N);
      // The next sweep (stopped, the sweeper sweeps in full when called) goes on from there.
      const report = await sweeper.sweep();
      expect(report.reenqueued).toBe(N - handled);
      expect(await queue.getJobCountByTypes('wait')).toBe(N);
    });
  });
});
