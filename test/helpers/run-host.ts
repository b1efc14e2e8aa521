import pino from 'pino';
import { DurableRuntime } from '../../src/platform/durable/runtime.ts';
import { StepExecutor } from '../../src/platform/durable/executor.ts';
import { startWorkers, type JobHandler } from '../../src/platform/durable/worker-host.ts';
import { createRedis } from '../../src/platform/queue/connections.ts';
import type { StepDef, WorkflowDef } from '../../src/platform/durable/workflow.ts';
import { GOLDEN_PATH, GOLDEN_PATH_QUEUE } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { TEST_REDIS_URL } from './env.ts';
import type { TestStack } from './stack.ts';

/**
 * The production worker host and executor, in the test's process, running `wf` on the golden-path
 * queue of `stack` (one job at a time): a test can then hold, fail or count the steps of the runs it
 * submits through the stack's API. Stop it before starting another on the same queue. `handlers` are
 * its other jobs' (e.g. the SLA timers': jobHandlersFor); without them such a job fails.
 */
export function startRunHost(stack: TestStack, wf: WorkflowDef, workerId = 'run-host', handlers: Record<string, JobHandler> = {}) {
  const logger = pino({ level: 'silent' });
  const runtime = new DurableRuntime({ workflows: [wf], queues: stack.container.runtime.queues, logger });
  const executor = new StepExecutor({ orm: stack.container.orm, runtime, logger, workerId, leaseMs: 5000 });
  const connection = createRedis(TEST_REDIS_URL, 'worker', workerId);
  const host = startWorkers({
    runtime,
    executor,
    handlers,
    connection,
    prefix: stack.prefix,
    settings: { concurrency: 1, lockDurationMs: 5000, stalledIntervalMs: 5000, maxStalledCount: 10 },
    logger,
    queues: [GOLDEN_PATH_QUEUE],
  });
  return {
    async stop() {
      await host.stop(0);
      connection.disconnect();
    },
  };
}

/** A barrier a step waits at: `inside` resolves once the step is there, `release()` lets it go on. */
export function barrier() {
  let enter!: () => void;
  let release!: () => void;
  const inside = new Promise<void>((r) => (enter = r));
  const released = new Promise<void>((r) => (release = r));
  return { inside, released, enter: () => enter(), release: () => release() };
}

/** The stack's golden-path definition with each step's body wrapped by `wrap` (its sequence_num, its own body). */
export function wrappedGoldenPath(stack: TestStack, wrap: (step: StepDef, seq: number) => StepDef['run']): WorkflowDef {
  const base = stack.container.runtime.workflow(GOLDEN_PATH);
  return { ...base, steps: base.steps.map((s, i): StepDef => ({ ...s, run: wrap(s, i + 1) })) };
}
