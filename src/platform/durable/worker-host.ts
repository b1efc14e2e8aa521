import { Job, Worker, type MinimalJob, type Processor, type WorkerOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { untilAborted, type StepExecutor } from './executor.ts';
import { sqlStateOf } from './errors.ts';
import type { DurableRuntime, StepJobData } from './runtime.ts';
import { DEFAULT_RETRY, STEP_BACKOFF, retryOf, stepBackoffMs, type WorkflowDef } from './workflow.ts';
import { ConfigError } from '../config/config.ts';
import { MAINTENANCE_QUEUE } from '../queue/maintenance.ts';
import { slotMember, slotParking, unparked, type LostPromotion, type ParkedJobData, type TenantSlots } from './tenant-slots.ts';
import { WEBHOOK_QUEUE } from '../webhooks/delivery.ts';
import { TIMER_QUEUE } from '../queue/timers.ts';


/**
 * The run ids a job's data names (a run job, an SLA timer): written on the lines BullMQ's events
 * cause outside the job's own context, so they are among the run's lines (found by its correlation id).
 */
function runIdsOf(data: unknown): { run_id?: string; tenant_id?: string; correlation_id?: string } {
  const d = (data ?? {}) as { run_id?: unknown; tenant_id?: unknown; _correlation_id?: unknown };
  const ids: { run_id?: string; tenant_id?: string; correlation_id?: string } = {};
  if (typeof d.run_id === 'string') ids.run_id = d.run_id;
  if (typeof d.tenant_id === 'string') ids.tenant_id = d.tenant_id;
  if (typeof d._correlation_id === 'string') ids.correlation_id = d._correlation_id;
  return ids;
}
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
  if (unknown.length) {
    // `maintenance`, `webhooks` and `timers` are queues, but every worker serves them: naming one does not make a worker of it alone.
    const always = unknown.find((q) => q === MAINTENANCE_QUEUE || q === WEBHOOK_QUEUE || q === TIMER_QUEUE);
    const note = always ? ` (${always} is served by every worker and is not named here)` : '';
    throw new ConfigError([`WORKER_QUEUES: ${unknown.join(', ')} is no workflow queue; there are ${all.join(', ')}${note}`]);
  }
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
  /** Moved back to `wait` at shutdown: its tenant slot is left to the worker that takes it next. */
  handedBack?: boolean;
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
  connection: Redis;
  prefix: string;
  settings: WorkerSettings;
  logger: Logger;
  telemetry?: WorkerOptions['telemetry'];
  queues?: string[];
  /**
   * The per-tenant cap on run jobs executing at once (WORKER_MAX_ACTIVE_RUNS_PER_TENANT, ADR 0012);
   * absent (the cap is off): no Redis command is added to a run job's path.
   */
  tenantSlots?: TenantSlotsUse;
  /**
   * Other caps' looks for lost promotions, made on the run jobs' timer (every `recoverEveryMs`): the webhook deliveries'
   * (ADR 0013), when a cap of theirs is on. None, and `tenantSlots` absent: no timer.
   */
  lostPromotions?: LostPromotionLook[];
  /** How often the host makes the lost promotions (ADR 0012, *Lost promotions*; default RECOVER_EVERY_MS). */
  recoverEveryMs?: number;
  /**
   * Queues of timer jobs (TIMER_QUEUE, ADR 0015), each served by a Worker of its own with `concurrency`
   * jobs at once: their jobs go to their handlers only, never to the step executor or a tenant slot.
   */
  timers?: { queues: string[]; concurrency: number };
}): WorkerHost {
  const queueNames = new Set(args.queues ?? args.runtime.workflows.all().map((w) => w.queue));
  const active = new Map<string, ActiveStep>();
  const slots = args.tenantSlots ? tenantSlotHolder(args.tenantSlots, args.runtime, args.logger, args.settings.lockDurationMs) : undefined;
  const looking = lookForLostPromotions([...(slots ? [slots.look] : []), ...(args.lostPromotions ?? [])], args.recoverEveryMs ?? RECOVER_EVERY_MS, args.logger);
  // Every job a processor is running (run jobs, timers, maintenance): a stopping worker with none and
  // no Redis has nothing left to wait for.
  let running = 0;
  let draining = false;
  const counted =
    (fn: Processor): Processor =>
    async (job, token) => {
      running++;
      try {
        return await fn(job, token);
      } finally {
        running--;
      }
    };
  const processJob: Processor = async (job, token) => {
    // A run job is recognised by its data, not its name: a step the code no longer has (renamed,
    // removed) must reach the executor and fail the run as non-determinism, not loop as "no handler".
    if (isStepJob(job.data)) {
      const key = `${job.queueName}/${job.id}`;
      // Over its tenant's cap the job is parked (delayed) before it touches PostgreSQL: it throws DelayedError.
      const slot = slots ? await slots.take(job as Job<StepJobData>, token) : undefined;
      const abort = new AbortController();
      const step: ActiveStep = { job, token, abort };
      active.set(key, step);
      try {
        // The executor names a step's database errors by their SQLSTATE itself (executor.ts); one raised
        // outside its steps (reading the run's version or status before them, failing a retired version's run) is named so here.
        return await redacted(job, () => args.executor.process(job as Job<StepJobData>, {
          abort: abort.signal,
          draining: () => draining,
          // With Redis down the hand-back waits for it: the stop's abort (after HAND_BACK_MS) ends the wait, and the job's lock lapses.
          handBack: async () => {
            if (!token) return;
            await untilAborted(job.moveToWait(token), abort.signal);
            step.handedBack = true;
          },
          defer: async (delayMs, deferrals) => {
            // A new attempt later: its park record goes (unparked), as on a step's retry (executor.ts).
            await job.updateData({ ...unparked(job.data as StepJobData), deferrals });
            await job.moveToDelayed(Date.now() + delayMs, token);
          },
        }));
      } finally {
        active.delete(key);
        // Whatever ended the job (its run ended or waits, it failed, was put off): the slot is given back.
        // A job handed back keeps it: the worker that takes the job next renews the same member (as a
        // re-delivery does), so the run under way neither loses its place to the tenant's parked jobs nor,
        // taken again before this release, runs beside one promoted by it.
        if (slot && step.handedBack) slots!.leave(slot);
        else if (slot) slots!.give(slot);
      }
    }
    return handle(job);
  };
  // What BullMQ keeps of a job's error (failedReason in Bull Board, the `job failed` event of the job's
  // span, which goes to the collector): a database error by its SQLSTATE, as a run's step does
  // (executor.ts), never PostgreSQL's message, which quotes values; the worker's log keeps it. Any other
  // error passes as it is: a job's own, and BullMQ's control errors (DelayedError, UnrecoverableError,
  // WaitingChildrenError), which carry no SQLSTATE.
  const redacted = async <T>(job: Job, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (e) {
      const state = sqlStateOf(e);
      if (!state) throw e;
      args.logger.warn({ err: e, job_id: job.id, job_name: job.name, queue: job.queueName, ...runIdsOf(job.data) }, 'job failed on a database error');
      throw new Error(`database error (SQLSTATE ${state}); the worker's log has its message under this job's id`);
    }
  };
  // Timers, maintenance, webhooks: the job's handler by its name. (A timer an older release added to a
  // workflow's queue is found there by the run queue's worker and comes here too, ADR 0015.)
  const handle = async (job: Job) => {
    const handler = args.handlers[job.name];
    if (!handler) throw new Error(`no handler for job ${job.name}`);
    return redacted(job, () => handler(job));
  };
  const timerQueues = (args.timers?.queues ?? []).filter((q) => !queueNames.has(q));
  const served = [
    ...[...queueNames].map((queueName) => ({ queueName, run: counted(processJob), concurrency: args.settings.concurrency })),
    ...timerQueues.map((queueName) => ({ queueName, run: counted(handle), concurrency: args.timers!.concurrency })),
  ];
  const workers = served.map(({ queueName, run, concurrency }) => {
    const worker = new Worker(queueName, run, {
      connection: args.connection,
      prefix: args.prefix,
      concurrency,
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
      if (job && (err.name === 'UnrecoverableError' || job.attemptsMade >= (job.opts.attempts ?? 1))) args.logger.warn({ job_id: job.id, ...runIdsOf(job.data), err: err.message }, 'job failed for good');
    });
    return worker;
  });
  // Unreachable: not ready, and it has failed since it last was (refused, reset, timed out) or is
  // waiting to retry. Not a connection still making its first attempt: a worker stopped while it
  // starts, Redis up, waits for it as for any close — not "Redis unreachable", its connections cut
  // off while they were still connecting.
  let failedSinceReady = false;
  args.connection.on('error', () => (failedSinceReady = true));
  args.connection.on('ready', () => (failedSinceReady = false));
  const redisUnreachable = () => args.connection.status !== 'ready' && (failedSinceReady || args.connection.status === 'reconnecting');
  return {
    workers,
    stop: (graceMs) => {
      // Jobs between two steps end there (handed back); a step already running gets the grace period.
      draining = true;
      // The slots of steps finishing in the grace period are renewed until the workers have stopped.
      // No look for lost promotions starts now; one under way is waited for beside the workers (its promotions are a few
      // Redis commands), so none goes on after the stop, on a connection the caller then cuts.
      const look = looking?.stop();
      const stopped = stopWorkers({ workers, active, running: () => running, redisUnreachable, graceMs, logger: args.logger });
      return Promise.all([stopped, look && waitForLook(look, redisUnreachable, args.logger)])
        .then(() => undefined)
        .finally(() => slots?.stop());
    },
  };
}

export interface TenantSlotsUse {
  slots: TenantSlots;
  /** A parked job's fallback delay by how often it was parked (default parkDelayMs: 30–60 s, then 60–120 s). */
  parkDelayMs?: (parks: number) => number;
  /** Counts a parked run job (dealix_run_jobs_parked_total). */
  onParked?(info: { workflow: string }): void;
  /** Counts a parked run job promoted by the look for lost promotions (dealix_lost_promotions_recovered_total). */
  onRecovered?(how: LostPromotion): void;
}

/**
 * How often each worker host makes the promotions lost (`slotParking.recover`): a job popped for promotion by a worker that
 * died before promoting it, or an owner's slots free with jobs parked and none of its jobs left to release one, is promoted
 * within about this (plus a lease for the former), not after its fallback delay (up to 2 h far back in a backlog). The
 * same look for run jobs (ADR 0012) and webhook deliveries (ADR 0013), for each cap that is on.
 */
export const RECOVER_EVERY_MS = 10_000;

/** One cap's look for lost promotions (slotParking.recover), made by the worker host every `recoverEveryMs`. */
export interface LostPromotionLook {
  recover(): Promise<void>;
  /** A failed look's warning (the next look tries again). */
  failed: string;
}

/**
 * Makes the lost promotions of every cap in `looks` every `everyMs`, a look at a time (one still under way, its promotions
 * included, is not started again); a cap's failed look is logged and left to the next. No cap: no timer. `stop` ends the
 * timer and answers the look under way (settled if none): it never rejects.
 */
function lookForLostPromotions(looks: LostPromotionLook[], everyMs: number, logger: Logger): { stop(): Promise<void> } | undefined {
  if (looks.length === 0) return undefined;
  let look: Promise<void> | undefined;
  const timer = setInterval(() => {
    if (look) return;
    const each = looks.map((l) => l.recover().catch((err: unknown) => logger.warn({ err }, l.failed)));
    look = Promise.all(each).then(() => void (look = undefined));
  }, everyMs);
  timer.unref();
  return {
    stop: () => {
      clearInterval(timer);
      return look ?? Promise.resolve();
    },
  };
}

/**
 * The longest a stop waits for a look for lost promotions under way (a few Redis commands per owner popped): past it, or
 * with Redis unreachable, the stop ends and a member the look popped but did not promote is redone by another worker's
 * look after its grace (counted how="redo").
 */
const LOOK_AT_STOP_MS = 5_000;

async function waitForLook(look: Promise<void>, redisUnreachable: () => boolean, logger: Logger): Promise<void> {
  if ((await firstOf(look, LOOK_AT_STOP_MS, redisUnreachable)) !== 'settled') {
    logger.warn('a look for lost promotions did not end before the stop: a job it popped is promoted by another worker after its grace (how="redo")');
  }
}

interface HeldSlot {
  tenant: string;
  member: string;
}

/**
 * A worker host's side of the per-tenant cap (ADR 0012): `take` acquires a slot for a run job or
 * parks the job (slotParking: delayed, no attempt spent, recorded in its tenant's parked set) and
 * throws DelayedError; `give` releases the slot and promotes the tenant's earliest parked job. The
 * leases of the slots held are renewed together every half lock duration; `look` makes the promotions lost (ADR 0012,
 * *Lost promotions*), on the host's timer.
 */
function tenantSlotHolder(use: TenantSlotsUse, runtime: DurableRuntime, logger: Logger, lockDurationMs: number) {
  const { slots } = use;
  const parking = slotParking(slots, { queueOf: (name) => runtime.queues.get(name), logger, ...(use.parkDelayMs ? { parkDelayMs: use.parkDelayMs } : {}) });
  const held = new Set<HeldSlot>();
  const renewal = setInterval(() => {
    if (held.size === 0) return;
    slots.renew(held).catch((err: unknown) => logger.warn({ err }, 'could not renew the tenant slots held; they lapse unless renewed in time'));
  }, Math.max(100, Math.floor(lockDurationMs / 2)));
  renewal.unref();
  return {
    look: { recover: () => parking.recover(use.onRecovered), failed: 'could not look for lost promotions of parked run jobs; the next look tries again' } satisfies LostPromotionLook,
    async take(job: Job<StepJobData>, token: string | undefined): Promise<HeldSlot> {
      const d = job.data;
      const slot: HeldSlot = { tenant: d.tenant_id, member: slotMember(job.queueName, job.id!) };
      // Its wakeBy is not used (ADR 0012, 0013): run jobs' leases are renewed while they run, so the earliest lease's
      // expiry is always a lease ahead and would bring parked jobs back every lease for nothing; a dead worker's
      // job is re-delivered by stall detection and takes its own slot back. `cap`: the tenant's override or the setting (ADR 0014).
      // Its `rank` and `cap` are used (ADR 0012, *Parked backlogs*): a job behind the tenant's `cap` earliest parked comes back on a
      // fallback scaled by its place, so a tenant's long parked backlog does not all come back every fallback delay.
      // Its first park's `parked_at` is passed, as a delivery's is: popped for promotion and beaten to the slot by a
      // fresh job, it is ranked by that time (near the front), not at the tail with a scaled fallback.
      const took = await slots.take(slot.tenant, slot.member, (d as ParkedJobData).parked_at);
      const { cap } = took;
      if (took.acquired) {
        held.add(slot);
        // Slots left free while jobs are parked (the tenant's override was raised, ADR 0014): the next parked
        // job is promoted now, and its own acquire wakes the one after, until the cap is reached; not their fallback delay.
        if (took.wakeParked) parking.wake(slot.tenant);
        return slot;
      }
      return parking.park(job, token, slot.tenant, slot.member, ({ parks, delayMs }) => {
        use.onParked?.({ workflow: d.workflow });
        logger[parks === 1 ? 'info' : 'debug'](
          { tenant_id: d.tenant_id, run_id: d.run_id, job_id: job.id, cap, parks, fallback_delay_ms: delayMs },
          'tenant at its cap of active run jobs: job parked until one of its runs gives a slot back',
        );
      }, { refusedAt: took.refusedAt, rank: took.rank, cap });
    },
    give(slot: HeldSlot): void {
      held.delete(slot);
      parking.give(slot.tenant, slot.member);
    },
    /** Stops renewing `slot` without giving it back: its lease carries it to the job's next taker (or lapses). */
    leave(slot: HeldSlot): void {
      held.delete(slot);
    },
    stop(): void {
      clearInterval(renewal);
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

/**
 * Resolves 'settled' once `p` settles, 'condition' once `condition()` holds (checked every 100 ms), or
 * 'timeout' after `ms`, whichever comes first.
 */
async function firstOf(p: Promise<unknown>, ms: number, condition?: () => boolean): Promise<'settled' | 'condition' | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  let check: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), ms)));
  const held = new Promise<'condition'>((r) => {
    const poll = () => (condition!() ? r('condition') : (check = setTimeout(poll, 100)));
    if (condition) poll();
  });
  try {
    return await Promise.race([p.then(() => 'settled' as const), held, timeout]);
  } finally {
    clearTimeout(timer);
    clearTimeout(check);
  }
}

/** How long a stopping worker tries to hand its jobs back (a Redis command, milliseconds when Redis answers). */
const HAND_BACK_MS = 2_000;

const STOPPED_WITHOUT_REDIS = 'no job running and Redis unreachable: the workers stop without waiting for Redis';

/**
 * Graceful stop, bounded in time: take no new jobs and give active ones `graceMs` to finish. Steps
 * still running then are handed back: each job returns to `wait` (no attempt spent, no lock to wait
 * out) so another worker takes it at once, and the step is aborted, which rolls its transaction back.
 * The other worker re-runs it from the last checkpoint. With Redis unreachable the hand-back waits
 * for a connection: after HAND_BACK_MS the steps are aborted all the same, and the jobs' locks lapse
 * (another worker's stall check, or the sweeper after a Redis that lost its data, re-queues them).
 * (A second `close(true)` would not help: BullMQ returns the first, still-waiting close.)
 *
 * BullMQ's close waits for Redis (it quits its blocking connection), however long it is down: once no
 * job is running and Redis is unreachable there is nothing left to finish or hand back, and the stop
 * ends there (at once for an idle worker, as soon as its steps end for a busy one) instead of waiting
 * out the grace and more. A job whose step ended but whose completion could not reach Redis keeps its
 * lock until it lapses, and is carried on from its last checkpoint like any stalled job.
 */
async function stopWorkers(o: {
  workers: Worker[];
  active: Map<string, ActiveStep>;
  running: () => number;
  redisUnreachable: () => boolean;
  graceMs: number;
  logger: Logger;
}): Promise<void> {
  const { active, logger } = o;
  const idleWithoutRedis = () => o.running() === 0 && o.redisUnreachable();
  // Given up on Redis, the workers' connections go on retrying until the process exits: each failure
  // would be a `worker error` line after the process's last one (`shut down cleanly`). Not logged.
  const withoutRedis = () => {
    for (const w of o.workers) w.removeAllListeners('error').on('error', () => {});
    logger.warn(STOPPED_WITHOUT_REDIS);
  };
  const closing = Promise.allSettled(o.workers.map((w) => w.close()));
  const first = await firstOf(closing, o.graceMs, idleWithoutRedis);
  if (first === 'settled') return;
  if (first === 'condition') return withoutRedis();
  const left = [...active.values()];
  if (left.length > 0) {
    logger.warn({ active_jobs: left.length }, 'active jobs did not finish in the grace period; handing them back');
    const handingBack = left.map(async (step) => {
      const { job, token } = step;
      try {
        if (!token) return;
        await job.moveToWait(token);
        step.handedBack = true;
      } catch (err) {
        logger.warn({ err, job_id: job.id }, 'could not hand the job back; its lock will lapse instead');
      }
    });
    if ((await firstOf(Promise.all(handingBack), HAND_BACK_MS)) !== 'settled') {
      logger.warn({ active_jobs: left.length }, 'could not hand the jobs back in time (Redis unreachable?); their locks will lapse instead');
    }
    for (const { abort } of left) abort.abort(new Error('worker shutting down: job handed back'));
  }
  // No run step is left to hand back; a timer or maintenance job may still be running (each is safe to run again).
  const last = await firstOf(closing, 5_000, idleWithoutRedis);
  if (last === 'condition') withoutRedis();
  else if (last === 'timeout') logger.error({ running_jobs: o.running(), redis_unreachable: o.redisUnreachable() }, left.length > 0 ? 'workers did not close after handing their jobs back' : 'workers did not close in the grace period; no run step was in flight');
}
