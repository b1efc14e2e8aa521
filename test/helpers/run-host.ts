import pino from 'pino';
import { DurableRuntime } from '../../src/platform/durable/runtime.ts';
import { StepExecutor } from '../../src/platform/durable/executor.ts';
import { startWorkers, type JobHandler } from '../../src/platform/durable/worker-host.ts';
import { TenantSlots, type LostPromotion } from '../../src/platform/durable/tenant-slots.ts';
import { createRedis } from '../../src/platform/queue/connections.ts';
import type { StepDef, WorkflowDef } from '../../src/platform/durable/workflow.ts';
import { GOLDEN_PATH } from '../../src/modules/golden-path/golden-path.workflow.ts';
import { PermanentError } from '../../src/platform/errors/app-error.ts';
import { TEST_REDIS_URL } from './env.ts';
import { TIMER_QUEUE } from '../../src/platform/queue/timers.ts';
import type { TestStack } from './stack.ts';
import { within } from './poll.ts';

export interface RunHostOptions {
  /** Jobs the host runs at once (default 1). */
  concurrency?: number;
  /** WORKER_MAX_ACTIVE_RUNS_PER_TENANT for this host (default off). */
  maxActiveRunsPerTenant?: number;
  /** The fallback delay of a parked job (default the platform's, 30–60 s): a test that must see parked jobs promoted sets it far beyond its deadline. */
  parkDelayMs?: (parks: number) => number;
  /** How often the host makes the tenants' lost promotions (default the platform's, RECOVER_EVERY_MS). */
  recoverEveryMs?: number;
  /** Told of each run job the host parks (as dealix_run_jobs_parked_total counts them). */
  onParked?: (info: { workflow: string }) => void;
  /** Told of each parked run job its look for lost promotions promoted (as dealix_lost_promotions_recovered_total counts them). */
  onRecovered?: (how: LostPromotion) => void;
  /** WORKFLOW_VERSIONS_RETIRED for this host (`name@vN`; default none). */
  retired?: string[];
}

/**
 * The production executor of `wf` on `stack`, without a worker host: a test hands it jobs itself
 * (`executor.process(job)`), e.g. two executions of one job at once, as a stalled job re-delivered while
 * its first worker still runs has.
 */
export function runExecutor(stack: TestStack, wf: WorkflowDef, workerId = 'run-executor', retired: string[] = []) {
  const logger = pino({ level: 'silent' });
  const runtime = new DurableRuntime({ workflows: [wf], queues: stack.container.runtime.queues, logger, retired });
  const executor = new StepExecutor({ orm: stack.container.orm, runtime, logger, workerId, leaseMs: 5000 });
  return { logger, runtime, executor };
}

/**
 * The production worker host and executor, in the test's process, running `wf` on its queue (the
 * golden path's, the partner offboarding's, …) of `stack` (one job at a time): a test can then hold, fail or count the steps of the runs it
 * submits through the stack's API. Stop it before starting another on the same queue. `handlers` are
 * its other jobs' (e.g. the SLA timers': jobHandlersFor), and with them it serves the timers queue; without
 * them a timer there waits, and one in the run queue fails.
 */
export function startRunHost(stack: TestStack, wf: WorkflowDef, workerId = 'run-host', handlers: Record<string, JobHandler> = {}, opts: RunHostOptions = {}) {
  const { logger, runtime, executor } = runExecutor(stack, wf, workerId, opts.retired);
  const connection = createRedis(TEST_REDIS_URL, 'worker', workerId);
  const host = startWorkers({
    runtime,
    executor,
    handlers,
    connection,
    prefix: stack.prefix,
    settings: { concurrency: opts.concurrency ?? 1, lockDurationMs: 5000, stalledIntervalMs: 5000, maxStalledCount: 10 },
    logger,
    queues: [wf.queue],
    // Given handlers (the SLA timers'), it serves the timers queue too, as every worker does (ADR 0015).
    ...(Object.keys(handlers).length ? { timers: { queues: [TIMER_QUEUE], concurrency: 1 } } : {}),
    ...(opts.maxActiveRunsPerTenant
      ? {
          tenantSlots: {
            slots: new TenantSlots(connection, { prefix: stack.prefix, cap: opts.maxActiveRunsPerTenant, leaseMs: 15_000 }),
            ...(opts.parkDelayMs ? { parkDelayMs: opts.parkDelayMs } : {}),
            ...(opts.onParked ? { onParked: opts.onParked } : {}),
            ...(opts.onRecovered ? { onRecovered: opts.onRecovered } : {}),
          },
        }
      : {}),
    ...(opts.recoverEveryMs ? { recoverEveryMs: opts.recoverEveryMs } : {}),
  });
  return {
    async stop() {
      await host.stop(0);
      connection.disconnect();
    },
  };
}

/**
 * A barrier a step waits at: `inside` resolves once the step is there, `release()` lets it go on.
 * Each read of `inside` is a wait with a deadline (`timeoutMs` from that read, within()): a run that
 * never gets there (it went through unheld, or failed) fails the test with a message, and the test's
 * `finally` still stops its host — awaited bare, the test hung to its timeout and the host it started
 * kept taking the file's next tests' jobs.
 */
export function barrier(timeoutMs = 30_000) {
  let enter!: () => void;
  let release!: () => void;
  const entered = new Promise<void>((r) => (enter = r));
  const released = new Promise<void>((r) => (release = r));
  return {
    get inside(): Promise<void> {
      return within(entered, 'a step to reach the barrier', timeoutMs);
    },
    released,
    enter: () => enter(),
    release: () => release(),
  };
}

/** The stack's definition of `workflow` with each step's body wrapped by `wrap` (its sequence_num, its own body). */
export function wrappedWorkflow(stack: TestStack, workflow: string, wrap: (step: StepDef, seq: number) => StepDef['run']): WorkflowDef {
  const base = stack.container.runtime.workflow(workflow);
  return { ...base, steps: base.steps.map((s, i): StepDef => ({ ...s, run: wrap(s, i + 1) })) };
}

/** The stack's golden-path definition with each step's body wrapped by `wrap` (its sequence_num, its own body). */
export const wrappedGoldenPath = (stack: TestStack, wrap: (step: StepDef, seq: number) => StepDef['run']): WorkflowDef => wrappedWorkflow(stack, GOLDEN_PATH, wrap);

/**
 * The stack's golden path with `tenant`'s runs held in their first step until `release()`, and each of
 * their steps counted while it executes (`executing`, `most` at once; `entered` in order): what executes
 * at once is then what the slots let in, not how fast a run ends. Other tenants' runs go through.
 */
export function heldGoldenPath(stack: TestStack, tenant: string) {
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const state = { executing: 0, most: 0, entered: [] as Array<{ run: string; seq: number }> };
  const wf = wrappedGoldenPath(stack, (step, seq) => async (input, ctx) => {
    if (ctx.run.tenantId !== tenant) return step.run(input, ctx);
    state.entered.push({ run: ctx.run.id, seq });
    state.executing++;
    state.most = Math.max(state.most, state.executing);
    try {
      if (seq === 1) await released;
      return await step.run(input, ctx);
    } finally {
      state.executing--;
    }
  });
  return { wf, state, release: () => release() };
}

/** What the steps of a controlled host do: fail for good, wait at a barrier, and record each step entered, by run. */
export interface StepControl {
  failing: Set<number>;
  /** Steps whose body runs (its rows, the timer it schedules) and then fails for good: the step's transaction rolls back. */
  failingAfter?: Set<number>;
  hold?: { seq: number; at: ReturnType<typeof barrier> };
  entered: Array<{ run: string; seq: number }>;
}

export const stepControl = (failing: number[] = []): StepControl => ({ failing: new Set(failing), entered: [] });

/** The steps `ctl` saw the run enter, in order (a step run again appears again). */
export const enteredBy = (ctl: StepControl, runId: string) => ctl.entered.filter((e) => e.run === runId).map((e) => e.seq);

/** A wrap for wrappedWorkflow: each step's body under `ctl` (entered, then held, then failed or run). */
export const controlledStep =
  (ctl: StepControl) =>
  (step: StepDef, seq: number): StepDef['run'] =>
  async (input, ctx) => {
    ctl.entered.push({ run: ctx.run.id, seq });
    if (ctl.hold?.seq === seq) {
      ctl.hold.at.enter();
      await ctl.hold.at.released;
    }
    if (ctl.failing.has(seq)) throw new PermanentError('test_permanent', `step ${seq} refused for good (test)`);
    const out = await step.run(input, ctx);
    if (ctl.failingAfter?.has(seq)) throw new PermanentError('test_permanent', `step ${seq} refused for good after its body ran (test)`);
    return out;
  };
