/**
 * A step whose own call out cannot connect (a partner's API that refuses connections, a dead host)
 * fails its run for good after its retry policy's attempts, its error recorded, as any step error does:
 * it is no outage of the platform's database, which alone leaves a run to the sweeper (left so, such a
 * run was re-enqueued for ever). A step whose own query loses the platform's database connection still
 * leaves its run to the sweeper. Executed in this process by the real executor against the real
 * PostgreSQL (RLS in force) and Redis; each attempt is one `process` of the job, as BullMQ's retry runs it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomUUID } from 'node:crypto';
import { createServer, connect } from 'node:net';
import { Job } from 'bullmq';
import { pino } from 'pino';
import { z } from 'zod';
import { DurableRuntime, type StepJobData } from '../../src/platform/durable/runtime.ts';
import { StepExecutor } from '../../src/platform/durable/executor.ts';
import { defineStep, defineWorkflow, type StepContext } from '../../src/platform/durable/workflow.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { AppError } from '../../src/platform/errors/app-error.ts';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { readRun } from '../helpers/recovery.ts';
import { processAttempts, withDirectQueue } from '../helpers/direct-queue.ts';
import { pausableProxy } from '../helpers/held-proxy.ts';
import { createOrm, type MikroORM } from '../../src/platform/db/orm.ts';
import { entities } from '../../src/entities.ts';
import { raw } from '@mikro-orm/postgresql';
import { DurableRun } from '../../src/platform/durable/durable-run.entity.ts';

let stack: TestStack;
let closedPort: number;
beforeAll(async () => {
  stack = await startStack({ api: false });
  // A port that was just listened on and closed: nothing accepts connections there.
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closedPort = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
});
afterAll(async () => stack?.stop());

const WF = 'call-out';
const ATTEMPTS = 2;

/** A socket to the closed port: its 'error' (ECONNREFUSED, a bare node error) is what the step throws. */
const rawSocket = () =>
  new Promise<never>((_, reject) => {
    const socket = connect(closedPort, '127.0.0.1');
    socket.once('error', reject);
  });

async function attempts(body: (ctx: StepContext) => Promise<unknown>, orm: MikroORM = stack.container.orm, sync = false) {
  const tenant = newTenant();
  const logger = pino({ level: 'silent' });
  const step = defineStep({ name: 'call-partner', input: z.any(), output: z.any(), retry: { attempts: ATTEMPTS, backoffMs: 1 }, run: sync ? (_input, ctx) => body(ctx) as never : async (_input, ctx) => body(ctx) as never });
  const wf = defineWorkflow({ name: WF, version: 1, tag: 'call-out', queue: 'call-out-direct', input: z.any(), steps: [step] });
  const runtime = new DurableRuntime({ workflows: [wf], queues: new Map(), logger });
  const { run } = await tenantEm(stack.container.orm, tenant).transactional((tx) =>
    runtime.start_run(tx, WF, { tenantId: tenant, principal: 'call-out-test', idempotencyHash: createHash('sha256').update(randomUUID()).digest('hex'), input: {}, correlationId: randomUUID() }),
  );
  // A queue no worker listens on: this test's executions are the only ones.
  return withDirectQueue(stack, 'call-out-direct', async (queue) => {
    const data: StepJobData = { run_id: run.id, tenant_id: tenant, workflow: WF, workflow_version: 1, step: 'call-partner', sequence_num: 1, _correlation_id: run.correlation_id };
    const job = await Job.create(queue, 'call-out', data, { jobId: `call-out-${run.id}`, attempts: ATTEMPTS });
    const outcomes: string[] = [];
    const executor = new StepExecutor({ orm, runtime, logger, workerId: 'call-out-worker', leaseMs: 5000, onStepFailed: (i) => outcomes.push(i.outcome) });
    // Each attempt as BullMQ's retry runs it: the failed one counted in the job's data (fail() updates it).
    await processAttempts(executor, job, ATTEMPTS, outcomes);
    return { outcomes, after: await readRun(stack, tenant, run.id) };
  });
}

describe('a step whose own call out cannot connect', () => {
  it.each([
    ['fetch to a closed port', () => fetch(`http://127.0.0.1:${closedPort}/partner`), 'fetch failed'],
    ['a socket to a closed port', rawSocket, 'ECONNREFUSED'],
    [
      'the refusal wrapped in a retryable AppError',
      () => fetch(`http://127.0.0.1:${closedPort}/partner`).catch((e: unknown) => Promise.reject(new AppError('partner_unreachable', 'partner API unreachable', { retryable: true, cause: e }))),
      'partner API unreachable',
    ],
    // A step's own error quoting what the platform's clients say when they lose their server: its text
    // alone is no outage of the platform's database or Redis (left to the sweeper, the run looped for ever).
    ['an error quoting node-postgres\'s connection loss', () => Promise.reject(new Error('partner API 502: upstream said "Connection terminated unexpectedly"')), 'Connection terminated unexpectedly'],
    ['an error quoting ioredis\'s', () => Promise.reject(new Error('partner cache: Connection is closed. (Command timed out)')), 'Connection is closed'],
    ['an error carrying a PostgreSQL admin-shutdown code of its own', () => Promise.reject(Object.assign(new Error('partner database went away'), { code: '57P01' })), 'partner database went away'],
  ])('%s: the run fails for good after its attempts, its error recorded, not left to the sweeper', async (_what, call, message) => {
    const { outcomes, after } = await attempts(() => call());
    expect(outcomes).toEqual(['retrying', 'failed']);
    expect(after.status).toBe('failed');
    expect(after.error).toMatchObject({ step: 'call-partner', sequence_num: 1 });
    expect(String(after.error.message)).toContain(message);
    expect(after.checkpoints.map((c) => [c.sequence_num, c.status, c.attempt])).toEqual([[1, 'failed', ATTEMPTS]]);
  });

  it('a step whose run throws the refusal synchronously (not an async function): the run fails for good after its attempts all the same', async () => {
    // A client that throws at once when it knows its connection dead: the throw escapes before any promise exists.
    const refusal = Object.assign(new Error(`connect ECONNREFUSED 127.0.0.1:${closedPort}`), { code: 'ECONNREFUSED', syscall: 'connect' });
    const { outcomes, after } = await attempts(((): Promise<unknown> => {
      throw refusal;
    }) as (ctx: StepContext) => Promise<unknown>, stack.container.orm, true);
    expect(outcomes).toEqual(['retrying', 'failed']);
    expect(after.status).toBe('failed');
    expect(after.checkpoints.map((c) => [c.sequence_num, c.status, c.attempt])).toEqual([[1, 'failed', ATTEMPTS]]);
  });

  it("the step's own query losing the platform's database connection still leaves the run to the sweeper", async () => {
    // The step's connection ends under it (57P01 on its own backend): the platform's database, not the step's call out.
    const { outcomes, after } = await attempts((ctx) => ctx.em.execute('select pg_terminate_backend(pg_backend_pid())'));
    expect(outcomes).toEqual(['retrying', 'infrastructure']);
    expect(after.status).not.toBe('failed');
    expect(after.checkpoints.filter((c) => c.status === 'failed')).toEqual([]);
  });

  it.each([
    ['its connection API', (ctx: StepContext) => ctx.em.getConnection().execute('select pg_terminate_backend(pg_backend_pid())', [], 'all', ctx.em.getTransactionContext())],
    ['a query builder', (ctx: StepContext) => ctx.em.createQueryBuilder(DurableRun).select(raw('pg_terminate_backend(pg_backend_pid())')).limit(1).execute()],
  ])("the step's own query through %s (no DriverException: MikroORM leaves the driver's error as it is) losing the platform's database connection still leaves the run to the sweeper", async (_what, query) => {
    // A Postgres restart under a step that queries through MikroORM's connection or query builder, whose
    // errors MikroORM does not convert: node-postgres's own error, raised by the platform's own pool.
    const { outcomes, after } = await attempts((ctx) => query(ctx));
    expect(outcomes).toEqual(['retrying', 'infrastructure']);
    expect(after.status).not.toBe('failed');
    expect(after.checkpoints.filter((c) => c.status === 'failed')).toEqual([]);
  });

  it('its call out failing while the database is unreachable too: the failure cannot be recorded, and the run is left to the sweeper', async () => {
    // The executor's database through a proxy the step closes on its last attempt (PostgreSQL gone for it),
    // just before its call out is refused: recording the failure then fails, nothing of it commits.
    const proxy = await pausableProxy(stack.config.DATABASE_URL);
    const url = new URL(stack.config.DATABASE_URL);
    url.host = new URL(proxy.url).host;
    const orm = await createOrm(stack.config, { entities, role: 'app', poolMax: 1, clientUrl: url.toString() });
    try {
      const { outcomes, after } = await attempts(async (ctx) => {
        if (ctx.attempt === ATTEMPTS) await proxy.close();
        return fetch(`http://127.0.0.1:${closedPort}/partner`);
      }, orm);
      expect(outcomes).toEqual(['retrying', 'infrastructure']);
      // Read directly (not through the proxy): the run is still to finish, for the sweeper to carry on.
      expect(['pending', 'running']).toContain(after.status);
      expect(after.checkpoints.filter((c) => c.status === 'failed')).toEqual([]);
    } finally {
      await orm.close(true).catch(() => {});
      await proxy.close().catch(() => {});
    }
  });
});
