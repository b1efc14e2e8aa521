/**
 * A step's output that JSON does not hold as it is (a Date, an undefined field, NaN, a Map, a class
 * instance) reaches the next step as its checkpoint stores it — the parse of its JSON — on the first
 * execution as on a replay, which reads it back from the checkpoint (docs/runtime.md, "Step outputs"):
 * a workflow behaves the same after a recovery. Executed in this process by the real executor against
 * the real PostgreSQL (RLS in force) and Redis; the replay is the job's retry after its second step's
 * first attempt failed: it reads the run and replays the first step from its checkpoint.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomUUID } from 'node:crypto';
import { Job } from 'bullmq';
import { pino } from 'pino';
import { z } from 'zod';
import { DurableRuntime, type StepJobData } from '../../src/platform/durable/runtime.ts';
import { StepExecutor, type JobOutcome } from '../../src/platform/durable/executor.ts';
import { defineStep, defineWorkflow } from '../../src/platform/durable/workflow.ts';
import { tenantEm } from '../../src/platform/db/tenant-em.ts';
import { newTenant, startStack, type TestStack } from '../helpers/stack.ts';
import { readRun } from '../helpers/recovery.ts';
import { withDirectQueue } from '../helpers/direct-queue.ts';

let stack: TestStack;
beforeAll(async () => {
  stack = await startStack({ api: false });
});
afterAll(async () => stack?.stop());

const WF = 'output-replay';
const AT = new Date('2026-12-05T10:00:00.000Z');

class Point {
  readonly x: number;
  readonly y: number;
  constructor(x: number, y: number) {
    this.x = x;
    this.y = y;
  }
  get norm() {
    return Math.hypot(this.x, this.y);
  }
}

describe("a step's output JSON does not hold as it is", () => {
  it('reaches the next step as its checkpoint stores it, on the first execution as on a replay', async () => {
    const tenant = newTenant();
    const logger = pino({ level: 'silent' });
    // What the second step saw of the first one's output, at each of its executions.
    const seen: unknown[] = [];
    const make = defineStep({
      name: 'make',
      input: z.any(),
      output: z.any(),
      run: async () => ({ at: AT, gone: undefined, n: Number.NaN, m: new Map([['k', 1]]), p: new Point(3, 4), list: [undefined, AT], kept: 'yes' }) as never,
    });
    const use = defineStep({
      name: 'use',
      input: z.any(),
      output: z.any(),
      retry: { attempts: 2, backoffMs: 1 },
      run: async (input: { outputs: Record<string, unknown> }, ctx) => {
        seen.push(input.outputs.make);
        // Its first attempt fails: the job's retry replays `make` from its checkpoint.
        if (ctx.attempt === 1) throw new Error('first attempt fails (test)');
        return { ok: true } as never;
      },
    });
    const wf = defineWorkflow({ name: WF, version: 1, tag: 'output-replay', queue: 'output-replay-direct', input: z.any(), steps: [make, use] });
    const runtime = new DurableRuntime({ workflows: [wf], queues: new Map(), logger });
    const { run } = await tenantEm(stack.container.orm, tenant).transactional((tx) =>
      runtime.start_run(tx, WF, { tenantId: tenant, principal: 'output-replay-test', idempotencyHash: createHash('sha256').update(randomUUID()).digest('hex'), input: {}, correlationId: randomUUID() }),
    );
    const outcomes = await withDirectQueue(stack, 'output-replay-direct', async (queue) => {
      const data: StepJobData = { run_id: run.id, tenant_id: tenant, workflow: WF, workflow_version: 1, step: 'make', sequence_num: 1, _correlation_id: run.correlation_id };
      const job = await Job.create(queue, 'output-replay', data, { jobId: `output-replay-${run.id}`, attempts: 3 });
      const executor = new StepExecutor({ orm: stack.container.orm, runtime, logger, workerId: 'output-replay-worker', leaseMs: 5000 });
      const first = await executor.process(job).then((o) => o, (e: unknown) => (e as Error).message);
      job.attemptsMade = 1;
      job.attemptsStarted = 2;
      const second: JobOutcome | string = await executor.process(job).then((o) => o, (e: unknown) => (e as Error).message);
      return [first, second] as const;
    });
    // The first job ran `make` and failed at `use`; its retry replayed `make` and completed `use`.
    expect(outcomes[0]).toBe('first attempt fails (test)');
    expect(typeof outcomes[1] === 'string' ? outcomes[1] : outcomes[1].steps.map((s) => [s.step, s.replayed])).toEqual([
      ['make', true],
      ['use', false],
    ]);
    expect((await readRun(stack, tenant, run.id)).status).toBe('completed');
    const asStored = { at: AT.toISOString(), n: null, m: {}, p: { x: 3, y: 4 }, list: [null, AT.toISOString()], kept: 'yes' };
    expect(seen).toHaveLength(2);
    // As the checkpoint holds it on the replay, and the same on the first execution (toStrictEqual: an
    // undefined field, a Date for a string, a class for a plain object all differ).
    expect(seen[1]).toStrictEqual(asStored);
    expect(seen[0]).toStrictEqual(seen[1]);
  });
});
