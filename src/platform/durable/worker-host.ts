import { Worker, type Job, type MinimalJob, type Processor, type WorkerOptions } from 'bullmq';
import type { Logger } from 'pino';
import type { StepExecutor } from './executor.ts';
import type { DurableRuntime, StepJobData } from './runtime.ts';
import { DEFAULT_RETRY, STEP_BACKOFF, retryOf, stepBackoffMs, type WorkflowDef } from './workflow.ts';
import { ConfigError } from '../config/config.ts';

export interface WorkerSettings {
  concurrency: number;
  lockDurationMs: number;
  stalledIntervalMs: number;
  maxStalledCount: number;
}

export type JobHandler = (job: Job) => Promise<unknown>;

/**
 * The workflow queues a worker process serves: those `only` names (WORKER_QUEUES), else every queue of
 * `workflows`. A name that is no workflow's queue is refused, so a typo does not leave a queue unserved.
 */
export function servedRunQueues(workflows: readonly Pick<WorkflowDef, 'queue'>[], only: readonly string[]): string[] {
  const all = [...new Set(workflows.map((w) => w.queue))];
  if (only.length === 0) return all;
  const unknown = only.filter((q) => !all.includes(q));
  if (unknown.length) throw new ConfigError([`WORKER_QUEUES: ${unknown.join(', ')} is no workflow queue; there are ${all.join(', ')}`]);
  return [...new Set(only)];
}

export interface WorkerHost {
  workers: Worker[];
  /** Stops taking jobs; active steps get `graceMs` to finish, then are handed back to the queue. */
  stop(graceMs: number): Promise<void>;
}

interface ActiveStep {
  job: Job;
  token: string | undefined;
  abort: AbortController;
}

/**
 * One BullMQ Worker per workflow queue. Run jobs go to the executor; other job names (timers,
 * maintenance) to their registered handlers. Lock and stall settings are short so a SIGKILLed
 * worker's job is picked up by another within seconds, and a high maxStalledCount keeps repeated
 * crashes from failing a run for good: checkpoints make every re-execution safe (ADR 0002).
 */
export function startWorkers(args: {
  runtime: DurableRuntime;
  executor: StepExecutor;
  handlers: Record<string, JobHandler>;
  connection: WorkerOptions['connection'];
  prefix: string;
  settings: WorkerSettings;
  logger: Logger;
  telemetry?: WorkerOptions['telemetry'];
  queues?: string[];
}): WorkerHost {
  const queueNames = new Set(args.queues ?? args.runtime.workflows.all().map((w) => w.queue));
  const active = new Map<string, ActiveStep>();
  let draining = false;
  const processor: Processor = async (job, token) => {
    // A run job is recognised by its data, not its name: a step the code no longer has (renamed,
    // removed) must reach the executor and fail the run as non-determinism, not loop as "no handler".
    if (isStepJob(job.data)) {
      const key = `${job.queueName}/${job.id}`;
      const abort = new AbortController();
      active.set(key, { job, token, abort });
      try {
        return await args.executor.process(job as Job<StepJobData>, {
          abort: abort.signal,
          draining: () => draining,
          handBack: async () => {
            if (token) await job.moveToWait(token);
          },
          defer: async (delayMs, deferrals) => {
            await job.updateData({ ...(job.data as StepJobData), deferrals });
            await job.moveToDelayed(Date.now() + delayMs, token);
          },
        });
      } finally {
        active.delete(key);
      }
    }
    const handler = args.handlers[job.name];
    if (!handler) throw new Error(`no handler for job ${job.name}`);
    return handler(job);
  };
  const workers = [...queueNames].map((queueName) => {
    const worker = new Worker(queueName, processor, {
      connection: args.connection,
      prefix: args.prefix,
      concurrency: args.settings.concurrency,
      lockDuration: args.settings.lockDurationMs,
      stalledInterval: args.settings.stalledIntervalMs,
      maxStalledCount: args.settings.maxStalledCount,
      settings: { backoffStrategy: (_made: number, type?: string, _err?: Error, job?: MinimalJob) => runJobBackoff(args.runtime, type, job) },
      autorun: true,
      ...(args.telemetry ? { telemetry: args.telemetry } : {}),
    });
    worker.on('error', (err) => args.logger.error({ err, queue: queueName }, 'worker error'));
    worker.on('failed', (job, err) => {
      // A run job's attempts are the sum of its steps' (jobAttempts); a step that fails for good ends
      // the job at once with an UnrecoverableError, long before those run out.
      if (job && (err.name === 'UnrecoverableError' || job.attemptsMade >= (job.opts.attempts ?? 1))) args.logger.warn({ job_id: job.id, err: err.message }, 'job failed for good');
    });
    return worker;
  });
  return {
    workers,
    stop: (graceMs) => {
      // Jobs between two steps end there (handed back); a step already running gets the grace period.
      draining = true;
      return stopWorkers(workers, active, graceMs, args.logger);
    },
  };
}

/** BullMQ's custom backoff for run jobs: the failing step's own policy and failure count. */
function runJobBackoff(runtime: DurableRuntime, type: string | undefined, job: MinimalJob | undefined): number {
  const d = job?.data as StepJobData | undefined;
  if (type !== STEP_BACKOFF || !d) return stepBackoffMs(DEFAULT_RETRY, job?.attemptsMade ?? 1);
  const seq = d.reached ?? d.sequence_num;
  const wf = d.workflow_version === undefined ? runtime.workflows.current(d.workflow) : runtime.workflows.get(d.workflow, d.workflow_version);
  const step = wf?.steps[seq - 1];
  return stepBackoffMs(step ? retryOf(step) : DEFAULT_RETRY, d.failures?.[String(seq)] ?? 1);
}

function isStepJob(data: unknown): boolean {
  const d = data as Partial<StepJobData> | null;
  return typeof d?.run_id === 'string' && typeof d.tenant_id === 'string' && typeof d.workflow === 'string' && typeof d.sequence_num === 'number';
}

/** Resolves true if `p` settles within `ms`, false otherwise. */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)));
  try {
    return await Promise.race([p.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** How long a stopping worker tries to hand its jobs back (a Redis command, milliseconds when Redis answers). */
const HAND_BACK_MS = 2_000;

/**
 * Graceful stop, bounded in time: take no new jobs and give active ones `graceMs` to finish. Steps
 * still running then are handed back: each job returns to `wait` (no attempt spent, no lock to wait
 * out) so another worker takes it at once, and the step is aborted, which rolls its transaction back.
 * The other worker re-runs it from the last checkpoint. With Redis unreachable the hand-back waits
 * for a connection: after HAND_BACK_MS the steps are aborted all the same, and the jobs' locks lapse
 * (another worker's stall check, or the sweeper after a Redis that lost its data, re-queues them).
 * (A second `close(true)` would not help: BullMQ returns the first, still-waiting close.)
 */
async function stopWorkers(workers: Worker[], active: Map<string, ActiveStep>, graceMs: number, logger: Logger): Promise<void> {
  const closing = Promise.allSettled(workers.map((w) => w.close()));
  if (await within(closing, graceMs)) return;
  const left = [...active.values()];
  logger.warn({ active_jobs: left.length }, 'active jobs did not finish in the grace period; handing them back');
  const handingBack = left.map(async ({ job, token }) => {
    try {
      if (token) await job.moveToWait(token);
    } catch (err) {
      logger.warn({ err, job_id: job.id }, 'could not hand the job back; its lock will lapse instead');
    }
  });
  if (!(await within(Promise.all(handingBack), HAND_BACK_MS))) {
    logger.warn({ active_jobs: left.length }, 'could not hand the jobs back in time (Redis unreachable?); their locks will lapse instead');
  }
  for (const { abort } of left) abort.abort(new Error('worker shutting down: job handed back'));
  if (!(await within(closing, 5_000))) logger.error('workers did not close after handing their jobs back');
}
