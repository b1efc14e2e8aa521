import type { MikroORM } from '@mikro-orm/postgresql';
import { UnrecoverableError, type Job } from 'bullmq';
import { SpanStatusCode, trace } from '@opentelemetry/api';
import type { Logger } from 'pino';
import { ZodError } from 'zod';
import { AppError, coerceError, isConnectivityError } from '../errors/app-error.ts';
import { tenantEm } from '../db/tenant-em.ts';
import { holdingInserts } from '../db/coalescing-client.ts';
import { requestContext } from '../tenancy/request-context.ts';
import { ATTR } from '../telemetry/attributes.ts';
import { NonDeterminismError, RunNotVisibleError, isUniqueViolation } from './errors.ts';
import { RUN_COLUMNS, type DurableRuntime, type RunRow, type StepJobData } from './runtime.ts';
import { WAITING, isWaiting, type RunInfo, type Waiting } from './workflow.ts';

interface CheckpointView {
  seq: number;
  step: string;
  status: 'started' | 'completed' | 'failed' | 'waiting';
  output: unknown;
}

export interface StepOutcome {
  run_id: string;
  sequence_num: number;
  step: string;
  status: 'completed' | 'waiting' | 'skipped';
  replayed: boolean;
}

export interface ExecutorOptions {
  orm: MikroORM;
  runtime: DurableRuntime;
  logger: Logger;
  workerId: string;
  leaseMs: number;
  onStepDone?(info: { step: string; seconds: number; replayed: boolean; status: string }): void;
}

const tracer = trace.getTracer('dealix-durable');
const NEVER_ABORTED = new AbortController().signal;

/** Settles with the step, or rejects as soon as `signal` aborts; a step left running then can no longer commit. */
async function untilAborted<T>(running: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal === NEVER_ABORTED) return running;
  running.catch(() => {}); // if the abort wins, the step's own later failure is moot
  let onAbort!: () => void;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(coerceError(signal.reason));
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([running, aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

/** Failures of the platform around a step rather than of the step: they never fail a run for good. */
function isInfrastructureFailure(e: unknown): boolean {
  return isConnectivityError(e) || (e instanceof AppError && e.code === 'step_out_of_order');
}

/**
 * Executes one step job with the checkpoint algorithm (after DBOS): bind the tenant from the job; load
 * the run and its checkpoints through RLS; a completed checkpoint replays its stored output; a stored
 * step name that differs from the code's is non-determinism; otherwise run the step and commit its
 * domain writes, its checkpoint and the run's progress in ONE transaction. A unique violation means
 * another execution won: use its stored output, never redo.
 */
export class StepExecutor {
  private readonly o: ExecutorOptions;
  constructor(opts: ExecutorOptions) {
    this.o = opts;
  }

  /** `signal`: aborted when the worker hands the job back at shutdown (the step then rolls back). */
  async process(job: Job<StepJobData>, signal: AbortSignal = NEVER_ABORTED): Promise<StepOutcome> {
    const d = job.data;
    const logger = this.o.logger.child({ run_id: d.run_id, tenant_id: d.tenant_id, correlation_id: d._correlation_id, step: d.step, sequence_num: d.sequence_num, job_id: job.id });
    return requestContext.run({ requestId: String(job.id), correlationId: d._correlation_id, runId: d.run_id, principal: { sub: 'worker', tenantId: d.tenant_id, roles: [] } }, () =>
      tracer.startActiveSpan(
        `step ${d.step}`,
        {
          attributes: {
            [ATTR.TENANT]: d.tenant_id,
            [ATTR.RUN]: d.run_id,
            [ATTR.STEP]: d.step,
            [ATTR.SEQUENCE]: d.sequence_num,
            [ATTR.ATTEMPT]: job.attemptsMade + 1,
            [ATTR.CORRELATION]: d._correlation_id,
          },
        },
        async (span) => {
          const started = performance.now();
          try {
            const outcome = await this.execute(job, logger, signal);
            span.setAttribute(ATTR.REPLAYED, outcome.replayed);
            this.o.onStepDone?.({ step: d.step, seconds: (performance.now() - started) / 1000, replayed: outcome.replayed, status: outcome.status });
            return outcome;
          } catch (e) {
            span.recordException(coerceError(e));
            span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error).message });
            throw e;
          } finally {
            span.end();
          }
        },
      ),
    );
  }

  private async execute(job: Job<StepJobData>, logger: Logger, signal: AbortSignal): Promise<StepOutcome> {
    const d = job.data;
    const wf = this.o.runtime.workflow(d.workflow);
    const step = wf.steps[d.sequence_num - 1];
    const attempt = job.attemptsMade + 1;
    const base = { run_id: d.run_id, sequence_num: d.sequence_num, step: d.step };
    const em = tenantEm(this.o.orm, d.tenant_id);
    let run: RunRow | undefined;
    try {
      const result = await em.transactional(async (tx) => {
        const rows = await tx.execute<(RunRow & { checkpoints: CheckpointView[] })[]>(
          `select ${RUN_COLUMNS},
             coalesce((select json_agg(json_build_object('seq', c.sequence_num, 'step', c.step_name, 'status', c.status, 'output', c.output)
                                       order by c.sequence_num)
                         from durable_checkpoints c where c.run_id = r.id and c.sequence_num <= ?), '[]'::json) as checkpoints
             from durable_runs r where r.id = ?`,
          [d.sequence_num, d.run_id],
        );
        const row = rows[0];
        if (!row) throw new RunNotVisibleError(d.run_id);
        run = row;
        if (row.workflow !== wf.name || row.workflow_version !== wf.version) {
          throw new NonDeterminismError(`run ${row.id} was started by ${row.workflow}@v${row.workflow_version}; this worker runs ${wf.name}@v${wf.version}`);
        }
        if (!step || step.name !== d.step) {
          throw new NonDeterminismError(`job names step ${d.sequence_num} "${d.step}", the code has "${step?.name ?? 'nothing'}"`);
        }
        const outputs: Record<string, unknown> = {};
        for (const cp of row.checkpoints) {
          const codeStep = wf.steps[cp.seq - 1];
          if (!codeStep || codeStep.name !== cp.step) {
            throw new NonDeterminismError(`checkpoint ${cp.seq} of run ${row.id} is "${cp.step}", the code has "${codeStep?.name ?? 'nothing'}" there`);
          }
          // Validated where it is consumed: the step's input schema parses the outputs it reads.
          if (cp.status === 'completed') outputs[cp.step] = cp.output;
        }
        const mine = row.checkpoints.find((c) => c.seq === d.sequence_num);
        if (mine?.status === 'completed') return { status: 'completed' as const, replayed: true };
        if (mine?.status === 'waiting') return { status: 'waiting' as const, replayed: true };
        if (row.status !== 'pending' && row.status !== 'running') return { status: 'skipped' as const, replayed: true };
        const missing = wf.steps.slice(0, d.sequence_num - 1).find((s) => !(s.name in outputs));
        if (missing) throw new AppError('step_out_of_order', `step ${d.step} ran before ${missing.name} completed`, { retryable: true });

        const runInfo: RunInfo = {
          id: row.id,
          tenantId: row.tenant_id,
          workflow: row.workflow,
          workflowVersion: row.workflow_version,
          principal: row.principal,
          correlationId: row.correlation_id,
          idempotencyHash: row.idempotency_hash,
          createdAt: new Date(row.created_at),
        };
        const input = step.input.parse({ submission: row.input, outputs });
        // The step's inserts are held and travel with its next statement: at the latest with the
        // checkpoint and the commit (ADR 0004).
        const produced = await untilAborted(
          holdingInserts(() => step.run(input, {
            em: tx,
            run: runInfo,
            sequenceNum: d.sequence_num,
            attempt,
            logger,
            signal,
            wait: <O>(output: O): Waiting<O> => ({ [WAITING]: true, output }),
          })),
          signal,
        );
        const waiting = isWaiting(produced);
        const output = step.output.parse(waiting ? produced.output : produced);
        // The step's inserts, its checkpoint and the commit go to PostgreSQL as one message.
        await holdingInserts(() => tx.flush());
        const last = d.sequence_num === wf.steps.length;
        let runStatus: RunRow['status'] = waiting ? 'waiting' : 'running';
        let runOutput: unknown;
        if (last && !waiting) {
          const fin = wf.finish ? wf.finish({ ...outputs, [step.name]: output }) : { status: 'completed' as const, output };
          runStatus = fin.status;
          runOutput = fin.output;
        }
        await this.o.runtime.checkpoint(tx, {
          run: row,
          sequenceNum: d.sequence_num,
          stepName: step.name,
          status: waiting ? 'waiting' : 'completed',
          output,
          attempt,
          runStatus,
          runOutput,
          leaseOwner: this.o.workerId,
          leaseMs: this.o.leaseMs,
          // The last statement before commit: it travels with the commit (one round trip for both).
          beforeCommit: true,
        });
        return { status: waiting ? ('waiting' as const) : ('completed' as const), replayed: false };
      });
      if (result.status === 'completed' && step?.mayWait && run) {
        // The flow segment ended here: enqueue the rest (idempotent, also on replay after a crash).
        await this.o.runtime.enqueue(run, d.sequence_num + 1);
      }
      if (result.replayed) logger.info({ replayed: true, status: result.status }, 'step already checkpointed; replayed');
      else logger.info({ status: result.status, attempt }, 'step checkpointed');
      return { ...base, ...result };
    } catch (e) {
      if (signal.aborted) {
        // Handed back at shutdown: the transaction rolled back and the job is already back in the queue.
        logger.info({ attempt }, 'step aborted and handed back; another worker re-runs it from the last checkpoint');
        throw e;
      }
      if (isUniqueViolation(e)) {
        logger.warn('another execution checkpointed this step first; using its stored output');
        return { ...base, status: 'completed', replayed: true };
      }
      return this.fail(job, e, logger);
    }
  }

  private async fail(job: Job<StepJobData>, e: unknown, logger: Logger): Promise<never> {
    const d = job.data;
    const err = coerceError(e);
    if (e instanceof RunNotVisibleError) {
      logger.error({ security_event: 'run_not_visible', tenant_id: d.tenant_id, run_id: d.run_id }, 'job names a run its tenant cannot see');
      throw new UnrecoverableError(err.message);
    }
    const permanent = e instanceof ZodError || (e instanceof AppError && !e.retryable) || e instanceof UnrecoverableError;
    const lastAttempt = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
    if (!permanent && lastAttempt && isInfrastructureFailure(e)) {
      // Not the step's fault (the database was unreachable, the chain ran out of order): the run stays
      // incomplete in Postgres and the sweeper re-enqueues it once the job has failed here.
      logger.error({ err, attempt: job.attemptsMade + 1 }, 'step kept failing on infrastructure; the run stays incomplete for the sweeper');
      throw err;
    }
    if (permanent || lastAttempt) {
      logger.error({ err, permanent }, 'step failed for good; the run fails');
      await this.markFailed(d, err, job.attemptsMade + 1).catch((me) => logger.error({ err: me }, 'could not record the failure'));
      throw permanent ? new UnrecoverableError(err.message) : err;
    }
    logger.warn({ err: err.message, attempt: job.attemptsMade + 1 }, 'step failed; BullMQ retries it with backoff');
    throw err;
  }

  private async markFailed(d: StepJobData, err: Error, attempt: number): Promise<void> {
    const em = tenantEm(this.o.orm, d.tenant_id);
    const error = { code: err instanceof AppError ? err.code : err.name, message: err.message.slice(0, 2000) };
    await em.transactional(async (tx) => {
      await tx.execute(
        `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, error, attempt, created_at, updated_at)
         values (gen_random_uuid(), ?, ?, ?, ?, 'failed', ?::jsonb, ?, now(), now())
         on conflict (tenant_id, run_id, sequence_num) do update set status = 'failed', error = excluded.error, attempt = excluded.attempt, updated_at = now()
         where durable_checkpoints.status <> 'completed'`,
        [d.tenant_id, d.run_id, d.sequence_num, d.step, JSON.stringify(error), attempt],
        'run',
      );
      await this.o.runtime.complete(tx, d.run_id, 'failed', { error: { ...error, step: d.step, sequence_num: d.sequence_num } });
    });
  }
}
