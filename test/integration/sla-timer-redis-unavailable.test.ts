import { expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import pino from 'pino';
import { Queue } from 'bullmq';
import { TEST_REDIS_URL } from '../helpers/env.ts';
import { api, SAMPLE_SUBMISSION, newTenant } from '../helpers/stack.ts';
import { sweeperStackForTests } from '../helpers/recovery.ts';
import { startRunHost } from '../helpers/run-host.ts';
import { waitFor } from '../helpers/poll.ts';
import { createRedis } from '../../src/platform/queue/connections.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';
import { slaScheduler } from '../../src/modules/index.ts';
import { approvalPacketStep } from '../../src/modules/approvals/approval-packet.step.ts';
import { GOLDEN_PATH } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { Sweeper } from '../../src/platform/durable/sweeper.ts';
import type { WorkflowDef } from '../../src/platform/durable/workflow.ts';

/**
 * The approval step's SLA timer is added through the platform's producer Redis connection (no offline
 * queue, one retry, a 5 s command timeout). When that connection cannot reach Redis while the step
 * runs, the step still commits its request and the run waits (the timer is best effort there): the
 * sweeper's waiting pass puts the missing timer back from the approval row. Before, the ioredis error
 * was the step's own failure, and after its attempts the class B run failed for good (run.failed).
 * The connection loses Redis alone: a TCP proxy in front of it, closed once it is ready.
 */
const suite = sweeperStackForTests({ env: { SWEEPER_INTERVAL: '1h', SWEEPER_MIN_AGE: '1h' } });
const lockKeys = suite.lockKeys;

it('a class B run whose SLA timer cannot be added still waits, and a sweep puts its timer back', { timeout: 180_000 }, async () => {
  const tenant = newTenant();
  const token = await suite.stack.token({ tenantId: tenant, sub: 'submitter-1' });
  const target = new URL(TEST_REDIS_URL);
  const sockets = new Set<net.Socket>();
  const proxy = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 6379), target.hostname);
    sockets.add(client).add(upstream);
    client.pipe(upstream).pipe(client);
    client.on('error', () => {});
    upstream.on('error', () => {});
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', () => resolve()));
  const port = (proxy.address() as net.AddressInfo).port;
  // As the container makes the platform's producer connection.
  const cut = createRedis(`redis://127.0.0.1:${port}`, 'producer', 'sla-timer-cut');
  const cutTimers = new Queue(TIMER_QUEUE, { connection: cut, prefix: suite.stack.prefix });
  cutTimers.on('error', () => {});
  await cutTimers.waitUntilReady();
  await cutTimers.getJobCounts();
  const closed = new Promise<void>((resolve) => proxy.close(() => resolve()));
  for (const s of sockets) s.destroy();
  await closed;
  // The connection has lost Redis: a command on it fails (no offline queue).
  await waitFor(async () => cutTimers.getJobCounts().then(() => false, () => true), { timeoutMs: 30_000, what: 'the cut connection to refuse commands' });

  const base = suite.stack.container.runtime.workflow(GOLDEN_PATH);
  const step = approvalPacketStep({ slaBSeconds: 3600, slaCSeconds: 3600, sla: slaScheduler({ timers: () => cutTimers }, suite.stack.container.runtime.keep) });
  const wf: WorkflowDef = { ...base, steps: base.steps.map((s) => (s.name === step.name ? step : s)) };
  const host = startRunHost(suite.stack, wf, 'sla-timer-cut-host');
  const timers = suite.stack.container.runtime.queues.get(TIMER_QUEUE)!;
  try {
    const res = await api(suite.stack, 'POST', '/api/v1/golden-path/run', { token, body: SAMPLE_SUBMISSION, headers: { 'Idempotency-Key': randomUUID() } });
    expect(res.status, res.text).toBe(202);
    const runId = res.json.run_id as string;
    const run = await waitFor(
      async () => {
        const [r] = (await suite.stack.db.admin(`select status, error, idempotency_hash from durable_runs where id = $1`, [runId])).rows;
        return r && r.status !== 'pending' && r.status !== 'running' ? r : undefined;
      },
      { timeoutMs: 90_000, intervalMs: 100, what: 'the run to wait (or end)' },
    );
    expect({ status: run.status, error: run.error }).toEqual({ status: 'waiting', error: null });
    // The step committed at its first attempt, its request pending with its deadline.
    const cps = (await suite.stack.db.admin(`select status, attempt from durable_checkpoints where run_id = $1 and step_name = $2`, [runId, step.name])).rows;
    expect(cps).toEqual([{ status: 'waiting', attempt: 1 }]);
    const [request] = (await suite.stack.db.admin(`select status, sla_deadline from approval_requests where run_id = $1`, [runId])).rows;
    expect(request.status).toBe('pending');
    expect(request.sla_deadline).not.toBeNull();
    // No timer for it in Redis.
    const jobId = base.waitingJobId!(run.idempotency_hash);
    expect(await timers.getJob(jobId)).toBeUndefined();

    // One sweep puts it back, from the approval row: due at the request's deadline.
    const lockKey = `sla-timer-cut-${randomUUID()}`;
    lockKeys.push(lockKey);
    // The marker set first: this sweep is not the one after a loss, so the waiting pass alone repairs the run.
    await suite.stack.redis.set(`${lockKey}:marker`, new Date().toISOString());
    const sweeper = new Sweeper({ orm: suite.stack.container.orm, runtime: suite.stack.container.runtime, redis: suite.stack.container.redis, logger: pino({ level: 'silent' }), lockKey, intervalMs: 60_000, minAgeMs: 0 });
    const report = await sweeper.sweep();
    expect(report.redisLost).toBe(false);
    expect(report.repairedWaiting).toBe(1);
    const timer = await timers.getJob(jobId);
    expect(timer?.data).toMatchObject({ run_id: runId, deadline: new Date(request.sla_deadline).toISOString() });
    expect(await timer!.getState()).toBe('delayed');
    expect(timer!.timestamp + timer!.delay).toBe(new Date(request.sla_deadline).getTime());
  } finally {
    await host.stop();
    await cutTimers.close().catch(() => {});
    cut.disconnect();
  }
});
