/**
 * SIGTERM to real worker processes (test/helpers/test-worker.ts) in the situations a platform meets
 * when it restarts or scales workers: while Redis is down (this file's own redis-server, stopped and
 * started again empty). The worker must exit 0 by itself — not be cut off at the hard deadline
 * (WORKER_SHUTDOWN_GRACE + 10 s, status 1) — and the run must complete, each step once.
 * The plain cases (a step finishing within the grace, one outlasting it) are in durable-recovery.test.ts.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { waitFor } from '../helpers/poll.ts';
import { slowWorkflow } from '../helpers/slow-workflow.ts';
import { createSlowRun, expectEveryStepOnce, killLiveWorkers, readRun, waitEntered, waitRun } from '../helpers/recovery.ts';

const TEST_WORKER = 'test/helpers/test-worker.ts';
const LONG = 120_000;

describe('SIGTERM to a worker while Redis is down (own redis-server)', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ api: false, workerEntry: TEST_WORKER, extraWorkflows: [slowWorkflow()], ownRedis: true });
  });
  afterEach(async () => {
    await killLiveWorkers(stack);
    const redis = stack.ownRedis!;
    if ((await redis.client.ping().catch(() => '')) !== 'PONG') await redis.startServer();
    // The stack's own producer connection (no offline queue) reconnects with a backoff.
    await waitFor(() => stack.container.redis.status === 'ready', { what: "the stack's Redis connection" });
  });
  afterAll(async () => stack?.stop());

  it('an idle worker exits 0', { timeout: LONG }, async () => {
    const worker = await stack.spawnWorker({ WORKER_SHUTDOWN_GRACE: '1s' });
    await stack.ownRedis!.stopServer();
    worker.kill('SIGTERM');
    expect(await worker.exited).toBe(0);
  });

  it.each([
    { what: 'a step that finishes after the signal commits; its job cannot be handed back', gate: '0,sigterm', committed: 2 },
    { what: 'a step outlasting the grace is aborted and rolls back; its job cannot be handed back', gate: '0,hang', committed: 1 },
  ])('$what: the worker exits 0, and once Redis is back another worker completes the run', { timeout: LONG }, async ({ gate, committed }) => {
    const tenant = newTenant();
    const first = await stack.spawnWorker({ GP_SLOW_STEP_MS: gate, WORKER_SHUTDOWN_GRACE: '1s' });
    const run = await createSlowRun(stack, tenant, { enqueue: true });
    await waitEntered(first, run.id, 2);
    await stack.ownRedis!.stopServer();
    first.kill('SIGTERM');
    expect(await first.exited, first.output().slice(-3000)).toBe(0);
    expect((await readRun(stack, tenant, run.id)).sequence_num).toBe(committed);

    // Redis comes back empty: the sweeper of the next worker re-enqueues the run from its last checkpoint.
    await stack.ownRedis!.startServer();
    await stack.spawnWorker({ GP_SLOW_STEP_MS: '0' });
    const done = await waitRun(stack, tenant, run.id, ['completed', 'failed']);
    expect(done.status).toBe('completed');
    expectEveryStepOnce(done);
  });
});
