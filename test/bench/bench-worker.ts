/**
 * A benchmark worker process: the production worker (startWorkerProcess on the production container),
 * plus measurement only: a round-trip counter on the pg client, the duration of every step, and
 * a completion report (run id, time) when a run's last step has committed. With BENCH_HOLD=1 it also
 * serves the recovery benchmark's hold workflow.
 */
import { Redis } from 'ioredis';
import type { Job } from 'bullmq';
import { installIoCounter } from './lib/io-counter.ts';
import { childChannel, rssBytes } from './lib/child-ipc.ts';
import { nowMs } from './lib/stats.ts';
import { loadConfig } from '../../src/platform/config/config.ts';
import { createContainer } from '../../src/container.ts';
import { startWorkerProcess } from '../../src/worker-runtime.ts';
import { onShutdown } from '../../src/platform/process/shutdown.ts';
import { StepExecutor, type JobControl, type JobOutcome } from '../../src/platform/durable/executor.ts';
import type { StepJobData } from '../../src/platform/durable/runtime.ts';
import { holdWorkflow } from './bench-workflows.ts';

const counter = installIoCounter();
const config = loadConfig();
const hold = process.env.BENCH_HOLD === '1';
const holdRedis = hold ? new Redis(config.REDIS_URL, { maxRetriesPerRequest: null }) : undefined;
const container = await createContainer(config, {
  service: 'worker',
  extraWorkflows: hold ? [holdWorkflow({ prefix: config.QUEUE_PREFIX, ...(holdRedis ? { redis: holdRedis } : {}) })] : [],
});
const lastStep = new Map(container.workflows.map((w) => [w.name, w.steps[w.steps.length - 1]!.name]));

let stepMs: number[] = [];
/** The same durations by step (sequence number): steps of one kind are one population (the first also reads the run). */
let stepMsBySeq: Record<number, number[]> = {};
/** Step jobs that found their checkpoint already written (a duplicate delivery, or a sweeper re-enqueue). */
let replays = 0;
let cpuBase = process.cpuUsage();
const channel = childChannel({
  collect: () => {
    // With BENCH_NODE_ARGS=--expose-gc the memory figures are read after a full collection (diagnosis only).
    (globalThis as { gc?: () => void }).gc?.();
    const cpu = process.cpuUsage(cpuBase);
    return { queries: counter.total, control: counter.control, redisWrites: counter.redisWrites, rss: rssBytes(), heap: process.memoryUsage().heapUsed, memory: process.memoryUsage(), cpuMs: (cpu.user + cpu.system) / 1000, stepMs, stepMsBySeq, replays };
  },
  reset: () => {
    counter.reset();
    stepMs = [];
    stepMsBySeq = {};
    replays = 0;
    cpuBase = process.cpuUsage();
  },
});

const process_ = StepExecutor.prototype.process;
StepExecutor.prototype.process = async function measuredProcess(this: StepExecutor, job: Job<StepJobData>, control?: JobControl): Promise<JobOutcome> {
  const out = await process_.call(this, job, control);
  for (const step of out.steps) {
    if (step.replayed) replays++;
    else {
      stepMs.push(step.duration_ms);
      (stepMsBySeq[step.sequence_num] ??= []).push(step.duration_ms);
    }
  }
  const last = out.steps[out.steps.length - 1];
  if (last && last.status === 'completed' && !last.replayed && last.step === lastStep.get(job.data.workflow)) channel.done(out.run_id, nowMs());
  return out;
};

const worker = await startWorkerProcess(container);
onShutdown(container.logger, config.WORKER_SHUTDOWN_GRACE, async () => {
  await worker.stop();
  await container.close();
  holdRedis?.disconnect();
});
channel.ready({ instance: container.instanceId, concurrency: config.WORKER_CONCURRENCY, poolMax: config.DATABASE_POOL_MAX });
