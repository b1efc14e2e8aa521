import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes, randomUUID } from 'node:crypto';
import { CLASS_A_SUBMISSION, newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { GOLDEN_PATH, GOLDEN_PATH_QUEUE } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { stepJobId } from '../../src/platform/queue/job-ids.ts';
import { keepFromConfig } from '../../src/platform/durable/runtime.ts';
import { parseConfig } from '../../src/platform/config/config.ts';

/**
 * Finished run jobs are kept in Redis for Bull Board, bounded by count as well as by age, so Redis
 * holds a fixed number of them however fast runs complete (QUEUE_KEEP_COMPLETED); PostgreSQL keeps
 * every run. Real worker process, real Redis and PostgreSQL.
 */
const KEEP = 3;
const RUNS = 8;
let stack: TestStack;

beforeAll(async () => {
  stack = await startStack({ env: { QUEUE_KEEP_COMPLETED: String(KEEP) } });
  await stack.spawnWorker();
});
afterAll(async () => stack?.stop());

describe('finished run jobs in Redis', () => {
  it(`keeps the newest ${KEEP} completed run jobs while PostgreSQL keeps all ${RUNS} runs`, async () => {
    const tenant = newTenant();
    const { runtime, orm } = stack.container;
    const hashes: string[] = [];
    const ids: string[] = [];
    // One after another, so "the newest" is well defined.
    for (let i = 0; i < RUNS; i++) {
      const hash = randomBytes(32).toString('hex');
      const { run } = await runtime.start(tenantEm(orm, tenant), GOLDEN_PATH, { tenantId: tenant, principal: 'retention', idempotencyHash: hash, input: CLASS_A_SUBMISSION, correlationId: randomUUID() });
      hashes.push(hash);
      ids.push(run.id);
      await waitFor(
        async () => {
          const [row] = await tenantEm(orm, tenant).transactional((tx) => tx.execute<{ status: string }[]>(`select status from durable_runs where id = ?`, [run.id]));
          return row?.status === 'completed';
        },
        { timeoutMs: 30_000, intervalMs: 50, what: `run ${i + 1} to complete` },
      );
    }
    const queue = stack.container.queues.get(GOLDEN_PATH_QUEUE)!;
    const jobOf = (hash: string) => stepJobId('gp', hash, 1, 'partner-dossier');
    // BullMQ trims the completed set as each job completes; the last completion may still be on its way.
    await waitFor(async () => (await queue.getJobState(jobOf(hashes.at(-1)!))) === 'completed', { timeoutMs: 30_000, intervalMs: 50, what: 'the last run job to be completed' });
    expect((await queue.getJobCounts('completed')).completed).toBe(KEEP);
    const states = await Promise.all(hashes.map((h) => queue.getJobState(jobOf(h))));
    expect(states).toEqual([...Array(RUNS - KEEP).fill('unknown'), ...Array(KEEP).fill('completed')]);
    const [row] = await tenantEm(orm, tenant).transactional((tx) => tx.execute<{ n: string }[]>(`select count(*) as n from durable_runs where status = 'completed' and id = any(?::uuid[])`, [`{${ids.join(',')}}`]));
    expect(Number(row!.n)).toBe(RUNS);
    // What the job carries: the configured count with the age bound.
    const job = await queue.getJob(jobOf(hashes.at(-1)!));
    expect(job?.opts.removeOnComplete).toEqual({ age: 3600, count: KEEP });
    expect(job?.opts.removeOnFail).toEqual({ age: 7 * 24 * 3600, count: 20_000 });
  });

  it('by default Redis keeps the newest 10,000 completed jobs of the last hour and 20,000 failed of the last week', () => {
    const { QUEUE_KEEP_COMPLETED: _, ...env } = stack.env;
    expect(keepFromConfig(parseConfig(env))).toEqual({ completed: { age: 3600, count: 10_000 }, failed: { age: 7 * 24 * 3600, count: 20_000 } });
  });
});
