import { Worker, type Job, type Processor, type WorkerOptions } from 'bullmq';
import type { Logger } from 'pino';
import type { StepExecutor } from './executor.ts';
import type { DurableRuntime, StepJobData } from './runtime.ts';

export interface WorkerSettings {
  concurrency: number;
  lockDurationMs: number;
  stalledIntervalMs: number;
  maxStalledCount: number;
}

export type JobHandler = (job: Job) => Promise<unknown>;

/**
 * One BullMQ Worker per workflow queue. Step jobs go to the executor; other job names (timers,
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
}): Worker[] {
  const queueNames = new Set(args.queues ?? [...args.runtime.workflows.values()].map((w) => w.queue));
  const stepNames = new Set([...args.runtime.workflows.values()].flatMap((w) => w.steps.map((s) => s.name)));
  const processor: Processor = async (job) => {
    if (stepNames.has(job.name) && (job.data as StepJobData).run_id) return args.executor.process(job as Job<StepJobData>);
    const handler = args.handlers[job.name];
    if (!handler) throw new Error(`no handler for job ${job.name}`);
    return handler(job);
  };
  return [...queueNames].map((queueName) => {
    const worker = new Worker(queueName, processor, {
      connection: args.connection,
      prefix: args.prefix,
      concurrency: args.settings.concurrency,
      lockDuration: args.settings.lockDurationMs,
      stalledInterval: args.settings.stalledIntervalMs,
      maxStalledCount: args.settings.maxStalledCount,
      autorun: true,
      ...(args.telemetry ? { telemetry: args.telemetry } : {}),
    });
    worker.on('error', (err) => args.logger.error({ err, queue: queueName }, 'worker error'));
    worker.on('failed', (job, err) => {
      if (job && job.attemptsMade >= (job.opts.attempts ?? 1)) args.logger.warn({ job_id: job.id, err: err.message }, 'job failed for good');
    });
    return worker;
  });
}

/**
 * Graceful stop: take no new jobs, give active ones `graceMs` to finish, then force-close (their
 * locks lapse and another worker resumes them from their checkpoints).
 */
export async function stopWorkers(workers: Worker[], graceMs: number, logger: Logger): Promise<void> {
  await Promise.all(
    workers.map(async (w) => {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), graceMs)));
      const res = await Promise.race([w.close().then(() => 'closed' as const), timeout]);
      if (timer) clearTimeout(timer);
      if (res === 'timeout') {
        logger.warn({ queue: w.name }, 'active jobs did not finish in the grace period; handing them back');
        await w.close(true);
      }
    }),
  );
}
