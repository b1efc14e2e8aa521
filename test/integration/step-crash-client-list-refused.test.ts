/**
 * The fallback of ADR 0016's amendment: where Redis refuses CLIENT LIST (an ACL without `client|list`,
 * a managed Redis), a re-delivery after a stall cannot tell whether the worker that held the job is
 * alive, so the stall counts as a crash, with a warning. A private redis-server (never the shared one)
 * with an ACL user that may do everything but `CLIENT LIST`; the production executor in this process,
 * asking for the live workers as worker-runtime.ts does (`connectedWorkers` on its own connection), over
 * a connection as that user, for a run whose holder is connected, so the list, were it allowed, would
 * call it alive and the stall would not count (the contrast below, as the default user).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Job, Queue } from 'bullmq';
import { pino } from 'pino';
import type { Redis } from 'ioredis';
import { DurableRuntime, type StepJobData } from '../../src/platform/durable/runtime.ts';
import { StepExecutor } from '../../src/platform/durable/executor.ts';
import { connectedWorkers, createRedis, workerConnectionName } from '../../src/platform/queue/connections.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { createSlowRun } from '../helpers/recovery.ts';
import { capturedLog } from '../helpers/log-capture.ts';
import { SLOW_QUEUE, SLOW_TAG, slowWorkflow } from '../helpers/slow-workflow.ts';
import { waitFor } from '../helpers/poll.ts';

const LONG = 120_000;
const REFUSED = 'could not list the live workers: the stall counts as a crash';
const COUNTED = 'run job delivered again after its worker was lost mid-step; the step runs again from the last checkpoint';

describe('a re-delivery after a stall where Redis refuses CLIENT LIST', () => {
  let stack: TestStack;
  const connections: Redis[] = [];
  /** A worker-style connection to the private Redis, named as worker `id`'s, as `user` (default: the default user). */
  async function connect(id: string, user?: string): Promise<Redis> {
    const url = new URL(stack.ownRedis!.url);
    if (user) [url.username, url.password] = [user, `${user}-secret`];
    const redis = createRedis(url.toString(), 'worker', workerConnectionName(id));
    connections.push(redis);
    await waitFor(() => redis.status === 'ready' || undefined, { timeoutMs: 15_000, what: `redis connection of ${id}` });
    return redis;
  }

  beforeAll(async () => {
    stack = await startStack({ api: false, ownRedis: true, extraWorkflows: [slowWorkflow()] });
    // Everything but CLIENT LIST (CLIENT SETNAME, which names a worker's connection, stays allowed).
    await stack.ownRedis!.client.call('ACL', 'SETUSER', 'nolist', 'on', '>nolist-secret', '~*', '&*', '+@all', '-client|list');
  }, LONG);
  afterAll(async () => {
    for (const c of connections) c.disconnect();
    await stack?.stop();
  });

  /**
   * A run at step 1 held by `holder` (its `lease_owner`, as its first step's commit leaves it) and its
   * job, delivered again after one stall to an executor that lists the live workers over `lister`.
   */
  async function redeliver(holder: string, lister: Redis) {
    const tenant = newTenant();
    const run = await createSlowRun(stack, tenant, { enqueue: false });
    await stack.db.admin(`update durable_runs set status = 'running', lease_owner = $2 where id = $1`, [run.id, holder]);
    const log = capturedLog();
    const logger = pino({ level: 'warn' }, log.destination);
    const runtime = new DurableRuntime({ workflows: [slowWorkflow()], queues: new Map(), logger });
    const executor = new StepExecutor({ orm: stack.container.orm, runtime, logger, workerId: `taker-${randomUUID()}`, leaseMs: 5000, connectedWorkers: () => connectedWorkers(lister) });
    // A queue no worker listens on: this execution is the job's only one.
    const queue = new Queue(`${SLOW_QUEUE}-acl`, { connection: stack.container.redis, prefix: stack.prefix });
    try {
      const data: StepJobData = { run_id: run.id, tenant_id: tenant, workflow: run.workflow, step: 'partner-dossier', sequence_num: 1, _correlation_id: run.correlation_id };
      const job = await Job.create(queue, 'partner-dossier', data, { jobId: `${SLOW_TAG}-acl-${run.id}`, attempts: 5 });
      job.stalledCounter = 1; // BullMQ's stalled check moved it back to wait once: this delivery follows a stall
      const outcome = await executor.process(job);
      const row = (await stack.db.admin(`select status, crash_seq, crash_count from durable_runs where id = $1`, [run.id])).rows[0];
      return { outcome: outcome.status, row, messages: log.lines.map((l) => l.msg as string) };
    } finally {
      await queue.close();
      await tenantEm(stack.container.orm, tenant).transactional((tx) => stack.container.runtime.complete(tx, run.id, 'cancelled'));
    }
  }

  it('connectedWorkers is refused as that user, and answers as the default user', { timeout: LONG }, async () => {
    const holder = `holder-${randomUUID()}`;
    await connect(holder);
    await expect(connectedWorkers(await connect(`lister-${randomUUID()}`, 'nolist'))).rejects.toThrow(/NOPERM/);
    expect(await connectedWorkers(await connect(`lister-${randomUUID()}`))).toContain(holder);
  });

  it('counts the stall as a crash, with a warning, though the holder is connected', { timeout: LONG }, async () => {
    const holder = `holder-${randomUUID()}`;
    await connect(holder);
    const { outcome, row, messages } = await redeliver(holder, await connect(`lister-${randomUUID()}`, 'nolist'));
    expect(outcome).toBe('ended');
    expect(row).toMatchObject({ status: 'completed', crash_seq: 1, crash_count: 1 });
    expect(messages).toEqual(expect.arrayContaining([REFUSED, COUNTED]));
  });

  it('the same re-delivery allowed to list the workers finds the holder alive: not counted', { timeout: LONG }, async () => {
    const holder = `holder-${randomUUID()}`;
    await connect(holder);
    const { outcome, row, messages } = await redeliver(holder, await connect(`lister-${randomUUID()}`));
    expect(outcome).toBe('ended');
    expect(row).toMatchObject({ status: 'completed', crash_count: 0 });
    expect(messages).not.toContain(REFUSED);
  });
});
