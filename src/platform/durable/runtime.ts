import { randomUUID } from 'node:crypto';
import type { EntityManager } from '@mikro-orm/postgresql';
import type { Queue } from 'bullmq';
import { context as otelContext, trace } from '@opentelemetry/api';
import type { Logger } from 'pino';
import type { Config } from '../config/config.ts';
import { stepJobId } from '../queue/job-ids.ts';
import { DEFER_UNTIL_NEXT, LAST_IN_TRANSACTION } from '../db/coalescing-client.ts';
import { withRunCorrelation } from '../telemetry/correlation-span-processor.ts';
import { extractInternal } from '../telemetry/internal-propagation.ts';
import { ATTR, INSTRUMENTATION_VERSION } from '../telemetry/attributes.ts';
import { ACTIVE_RUN_STATUSES, RUN_RETRY_HISTORY_MAX, type RunStatus } from './durable-run.entity.ts';
import type { CheckpointStatus } from './durable-checkpoint.entity.ts';
import { firstIncompleteStep, notRetryableBecause } from './retryable.ts';
import { STEP_BACKOFF, jobAttempts, retryOf, segmentStart, type StepDef, type WorkflowDef } from './workflow.ts';
import { WorkflowRegistry, versionLabel } from './registry.ts';
import { RunNotActiveError, RunNotFailedError, RunNotRetryableError, WorkflowVersionRetiredError, WorkflowVersionUnavailableError } from './errors.ts';
import { EMITTED_EVENTS, EVENT_AT, OUTBOX_IDS, RUN_ENDED_COLUMNS, RUN_ENDED_EVENTS, ISO_STATEMENT_TIME, outboxCte, STATEMENT_TIME, type OutboxEvent } from '../webhooks/outbox.ts';

const tracer = trace.getTracer('dealix-durable', INSTRUMENTATION_VERSION);

/**
 * Runs `fn` (work that adds a run's jobs to Redis: its run job, a re-created timer) in the run's
 * stored trace, so what it adds continues the submission's trace also when a resume, a retry or the
 * sweeper adds it from another process or request, with the run's correlation id as the only baggage,
 * so the workers' spans are tagged with it. Added from another trace (an approver's decision, a
 * client's retry), it is a span `resume run` of the run's trace that links to that request's span:
 * the run's trace tells who carried it on.
 */
export async function inRunTrace<T>(run: Pick<RunRow, 'traceparent' | 'correlation_id'> & Partial<Pick<RunRow, 'id' | 'tenant_id'>>, fn: () => Promise<T>): Promise<T> {
  const active = otelContext.active();
  let ctx = active;
  const here = trace.getSpanContext(active);
  if (run.traceparent) {
    const parent = extractInternal(active, { traceparent: run.traceparent });
    const runTrace = trace.getSpanContext(parent)?.traceId;
    if (runTrace) ctx = parent;
    if (runTrace && here && here.traceId !== runTrace) {
      const inRun = withRunCorrelation(parent, run.correlation_id);
      const span = tracer.startSpan('resume run', { links: [{ context: here }], attributes: { ...(run.id ? { [ATTR.RUN]: run.id } : {}), ...(run.tenant_id ? { [ATTR.TENANT]: run.tenant_id } : {}) } }, inRun);
      try {
        return await otelContext.with(trace.setSpan(inRun, span), fn);
      } finally {
        span.end();
      }
    }
  }
  return otelContext.with(withRunCorrelation(ctx, run.correlation_id), fn);
}

/** The data of a run job: the run, and the step it starts at (its id derives from both). */
export interface StepJobData {
  run_id: string;
  tenant_id: string;
  workflow: string;
  /**
   * The run's workflow version: the job is executed by exactly that version's definition (ADR 0008).
   * Absent only from jobs added before versions were carried: the executor reads it from the run.
   */
  workflow_version?: number;
  /** The step the job starts at, and its name when the job was added (a different name in the code is non-determinism). */
  step: string;
  sequence_num: number;
  _correlation_id: string;
  /** Failed attempts per sequence_num so far, so each step keeps its own retry budget within the job. */
  failures?: Record<string, number>;
  /** The sequence_num the job had reached when it last failed (its retry's backoff and attempt count follow it). */
  reached?: number;
  /**
   * The job's BullMQ stalledCounter whose stalls the executor has counted as crashes of its run's step
   * (ADR 0016): a delivery with a higher stalledCounter follows a new stall, and counts it.
   */
  stalls?: number;
  /**
   * The holders of the job found alive at its stalls (their lock lapsed: not a crash, ADR 0016
   * amendment) while the run was at step `seq`: one gone at a later stall with the run still at that
   * step died in it (a GC thrash before an OOM kill), and that stall counts a crash.
   */
  lapsed?: { seq: number; holders: string[] };
  /** How often workers that do not register the run's workflow version put the job off (ADR 0008). */
  deferrals?: number;
  /** How often the job was parked because its tenant had WORKER_MAX_ACTIVE_RUNS_PER_TENANT run jobs executing (ADR 0012). */
  parks?: number;
  /** When the job was first parked (ms since the epoch, Redis's clock: ADR 0012 amendment): its place among its tenant's parked jobs. Both cleared for a new attempt (a step's retry, a deferral: tenant-slots.ts unparked). */
  parked_at?: number;
  /**
   * The run's retry_count when the job was added (absent: 0). A job of an earlier generation than
   * its run's — a leftover of the run before an API client retried it — ends without a step: the
   * retry's own job carries the run (ADR 0009).
   */
  retry?: number;
  /**
   * What the run's first step needs, copied from the run row when the run was created (a job that
   * starts a new run, with an input of at most FIRST_STEP_INPUT_MAX bytes of JSON): the job runs that
   * step without reading the run first, and the step's checkpoint checks, in the same transaction,
   * that the run is still so (ADR 0004). PostgreSQL stays the source of truth: without it, or when
   * the check fails, the job reads the run as any other does.
   */
  first?: FirstStepData;
}

export interface FirstStepData {
  workflow_version: number;
  idempotency_hash: string;
  principal: string;
  input: unknown;
  /** The run row's created_at, ISO 8601. */
  created_at: string;
}

/** The largest run input (JSON bytes) a run job carries for its first step; a larger one is read from the run. */
export const FIRST_STEP_INPUT_MAX = 16 * 1024;

export interface RunRow {
  id: string;
  tenant_id: string;
  workflow: string;
  workflow_version: number;
  idempotency_hash: string;
  status: RunStatus;
  principal: string;
  input: unknown;
  output: unknown;
  error: unknown;
  correlation_id: string;
  trace_id: string | null;
  traceparent: string | null;
  sequence_num: number;
  step_count: number;
  created_at: Date;
  updated_at: Date;
  completed_at: Date | null;
  /** How often the run was retried after it failed: the generation of its run jobs' ids (stepJobId, ADR 0009). */
  retry_count: number;
}

export const RUN_COLUMNS = `id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, output, error,
  correlation_id, trace_id, traceparent, sequence_num, step_count, created_at, updated_at, completed_at, retry_count`;

/**
 * The statement's `now()` to the millisecond, down (as a JavaScript Date holds it, and as the run's
 * `created_at` and the policy prefetch's `read_at` are): what a run job learns of the database's clock
 * with a statement it sends anyway (StepContext.now).
 */
export const DB_TIME_SQL = `date_trunc('milliseconds', now())`;

/** The retries a run's `retry_history` keeps (declared beside the trigger that checks a retry against it). */
export { RUN_RETRY_HISTORY_MAX };

/** One retry of a failed run, as `durable_runs.retry_history` keeps it (oldest first, the newest RUN_RETRY_HISTORY_MAX). */
export interface RunRetry {
  /** 1 for the run's first retry: its retry_count after it. */
  retry: number;
  retried_by: string;
  retried_at: string;
  /** What the run failed with: its error as the executor recorded it (the failed step's code, message, name and sequence_num). */
  error: unknown;
  /** When it failed (its completed_at then). */
  failed_at: string | null;
  /** The attempts its failed step had spent when it failed for good; null when the run had no failed step recorded. */
  attempts: number | null;
}

/**
 * A run's live progress, for a query over `durable_runs r`: its completed steps (checkpoints are written
 * in order, so this is also the highest completed sequence_num). The run row's own `sequence_num` moves
 * only with its status (first step, a wait, a resume, the end).
 */
export const COMPLETED_STEPS_SQL = `(select count(*)::int from durable_checkpoints c where c.tenant_id = r.tenant_id and c.run_id = r.id and c.status = 'completed')`;

export interface StartRunInput {
  tenantId: string;
  principal: string;
  idempotencyHash: string;
  input: unknown;
  correlationId: string;
  traceId?: string | null;
  traceparent?: string | null;
}

export interface IncompleteRun {
  id: string;
  tenant_id: string;
  workflow: string;
  workflow_version: number;
  status: RunStatus;
  sequence_num: number;
  step_count: number;
  updated_at: Date;
  /** updated_at as PostgreSQL prints it (microseconds): the keyset cursor; a JS Date would round it. */
  updated_at_exact: string;
  /** What the run's job ids derive from (an opaque SHA-256; ADR 0003). */
  idempotency_hash: string;
  /** The generation of the run's job ids (stepJobId, ADR 0009): which of its jobs carry it now. */
  retry_count: number;
}

export interface RuntimeOptions {
  /** Every definition this process runs, several versions of a name allowed (registry.ts checks them). */
  workflows: WorkflowDef[];
  queues: Map<string, Queue>;
  logger: Logger;
  /**
   * Finished run jobs kept in Redis (Postgres keeps the truth): at most `count` of each kind, none
   * older than `age` seconds. Defaults: the newest 10,000 completed within an hour, 20,000 failed within a week.
   */
  keep?: { completed: KeepJobs; failed: KeepJobs };
  /**
   * Enqueues the delivery jobs of webhook deliveries a transaction inserted (the outbox, ADR 0013),
   * after its commit. Without it nothing is enqueued here and the redelivery pass finds them.
   */
  webhooks?: WebhookDispatcher;
  /** Workflow versions retired for good, `name@vN` (WORKFLOW_VERSIONS_RETIRED; registry.ts checks them). */
  retired?: Iterable<string>;
}

/** After a commit: one delivery job per outbox row it inserted (their ids). */
export interface WebhookDispatcher {
  dispatch(tenantId: string, deliveryIds: readonly string[]): Promise<void>;
}

/** Finished jobs BullMQ keeps: the newest `count`, none older than `age` seconds (BullMQ's KeepJobs). */
export interface KeepJobs {
  age: number;
  count: number;
}

export const DEFAULT_KEEP: { completed: KeepJobs; failed: KeepJobs } = {
  completed: { age: 3600, count: 10_000 },
  failed: { age: 7 * 24 * 3600, count: 20_000 },
};

/** The retention the configuration asks for (QUEUE_KEEP_COMPLETED / QUEUE_KEEP_FAILED). */
export function keepFromConfig(config: Pick<Config, 'QUEUE_KEEP_COMPLETED' | 'QUEUE_KEEP_FAILED'>): { completed: KeepJobs; failed: KeepJobs } {
  return {
    completed: { age: DEFAULT_KEEP.completed.age, count: config.QUEUE_KEEP_COMPLETED },
    failed: { age: DEFAULT_KEEP.failed.age, count: config.QUEUE_KEEP_FAILED },
  };
}

/**
 * The durable runtime: start_run, checkpoint, complete, resume, list_incomplete, and the enqueueing of
 * a run's remaining steps as one BullMQ run job with a deterministic id (ADR 0005). Postgres is the
 * source of truth; Redis carries the work. The step executor (executor.ts) and the sweeper (sweeper.ts) build on it.
 */
export class DurableRuntime {
  readonly workflows: WorkflowRegistry;
  readonly queues: Map<string, Queue>;
  private readonly logger: Logger;
  /** How many finished jobs, and how old, BullMQ keeps (every job the runtime adds, SLA timers included). */
  readonly keep: { completed: KeepJobs; failed: KeepJobs };
  private readonly webhooks: WebhookDispatcher | undefined;

  constructor(opts: RuntimeOptions) {
    this.workflows = new WorkflowRegistry(opts.workflows, opts.retired);
    this.queues = opts.queues;
    this.logger = opts.logger;
    this.keep = opts.keep ?? DEFAULT_KEEP;
    this.webhooks = opts.webhooks;
  }

  /**
   * After the commit that inserted them: enqueues the webhook deliveries' jobs. Never throws: a
   * delivery whose job could not be added (Redis down) stays pending in PostgreSQL, and the
   * redelivery pass enqueues it (ADR 0013).
   */
  async dispatchDeliveries(tenantId: string, deliveryIds: readonly string[]): Promise<void> {
    if (deliveryIds.length === 0 || !this.webhooks) return;
    await this.webhooks.dispatch(tenantId, deliveryIds).catch((err: unknown) =>
      this.logger.warn({ err, tenant_id: tenantId, deliveries: deliveryIds.length }, 'could not enqueue webhook deliveries; the redelivery pass will'),
    );
  }

  /** The definition new runs of `name` start on: the version marked current, else the newest registered. */
  workflow(name: string): WorkflowDef {
    const wf = this.workflows.current(name);
    if (!wf) throw new Error(`unknown workflow ${name}`);
    return wf;
  }

  /**
   * The definition of exactly this version, which a run started on it is carried on by; refused when
   * this process does not register it: 409 for good when the version is declared retired
   * (WorkflowVersionRetiredError: no process runs it), else 503, retryable (another process may).
   */
  definition(name: string, version: number, run?: { id: string; status: string; error?: unknown }): WorkflowDef {
    const wf = this.workflows.get(name, version);
    if (wf) return wf;
    if (run && this.workflows.retired(name, version)) throw new WorkflowVersionRetiredError(name, version, run, this.workflows.current(name)?.version);
    // A run a worker failed as retired (its WORKFLOW_VERSIONS_RETIRED names the version, this process's
    // does not): still 503, as this process cannot tell which list is right, but named as the disagreement it is.
    const retiredByWorker = (run?.error as { code?: unknown } | null | undefined)?.code === 'workflow_version_retired';
    throw new WorkflowVersionUnavailableError(name, version, { retiredByWorker });
  }

  /**
   * Creates the run, or finds the one this submission already created (unique per tenant and
   * idempotency hash): a retried submission can never start a second run. In the caller's
   * transaction (the POST handler's, with its admission check and stored response), where the
   * workflow's submission guard may refuse a run it creates (admitSubmission: the error it throws).
   */
  async start_run(em: EntityManager, workflowName: string, input: StartRunInput): Promise<{ run: RunRow; created: boolean }> {
    const wf = this.workflow(workflowName);
    for (let attempt = 0; attempt < 5; attempt++) {
      const found = await this.createRun(em, wf, input, '');
      if (found) return found;
    }
    throw new Error('start_run found neither a new nor an existing run');
  }

  /**
   * Starts a run outside any caller's transaction (a producer in a worker or a script, not a
   * request): the insert is its own transaction, sent with its `begin`, tenant setting and `commit`
   * in one round trip (LAST_IN_TRANSACTION), then the run job is enqueued, or, for a submission
   * that already has its run, made sure of. `em` is a tenant-bound manager (tenantEm) outside a transaction.
   */
  async start(em: EntityManager, workflowName: string, input: StartRunInput): Promise<{ run: RunRow; created: boolean }> {
    const wf = this.workflow(workflowName);
    for (let attempt = 0; attempt < 5; attempt++) {
      // Each attempt is a transaction of its own: nothing follows the insert in it (but the workflow's guard).
      const found = await em.transactional((tx) => this.createRun(tx, wf, input, LAST_IN_TRANSACTION));
      if (!found) continue;
      if (found.created) await this.enqueue(found.run, 1, { carryFirst: true });
      else await this.ensureEnqueued(found.run);
      return found;
    }
    throw new Error('start found neither a new nor an existing run');
  }

  /**
   * insertRun, and the workflow's submission guard on a run it created (`admitSubmission`): a refusal
   * it throws rolls the insert back with the caller's transaction. The guard's statements follow the
   * insert, which is then not the transaction's last (`marker` dropped). The guard judges the input as
   * the run's steps will read it, parsed by the workflow's schema: a producer's `start` passes it as
   * given (` P-1 ` is the partner `P-1` to freeze-partner, which trims it, and a guard reading it raw
   * let it through), and one the schema refuses is the run's first step's to fail, as for a workflow
   * without a guard (a guard reading its fields crashed on it). A route's body is already parsed.
   */
  private async createRun(em: EntityManager, wf: WorkflowDef, input: StartRunInput, marker: string): Promise<{ run: RunRow; created: boolean } | undefined> {
    const found = await this.insertRun(em, wf, input, wf.admitSubmission ? '' : marker);
    if (found?.created && wf.admitSubmission) {
      const parsed = wf.input.safeParse(input.input);
      if (parsed.success) await wf.admitSubmission(em, parsed.data, { tenantId: input.tenantId, runId: found.run.id, retired: (version) => this.workflows.retired(wf.name, version) });
    }
    return found;
  }

  /**
   * The run's insert, or the existing run of the same submission; undefined when neither is seen:
   * under READ COMMITTED the fallback select's snapshot can predate a concurrent insert that won the
   * conflict while this one waited, and the next statement (the caller's next attempt) sees the winner.
   */
  private async insertRun(em: EntityManager, wf: WorkflowDef, input: StartRunInput, marker: string): Promise<{ run: RunRow; created: boolean } | undefined> {
    const rows = await em.execute<(RunRow & { created: boolean })[]>(
      `${marker}with ins as (
         insert into durable_runs (id, tenant_id, workflow, workflow_version, idempotency_hash, status, principal, input, correlation_id,
                                   trace_id, traceparent, sequence_num, step_count, created_at, updated_at)
         values (?, ?, ?, ?, ?, 'pending', ?, ?::jsonb, ?, ?, ?, 0, ?, date_trunc('milliseconds', now()), now())
         on conflict (tenant_id, idempotency_hash) do nothing
         returning ${RUN_COLUMNS})
       select ins.*, true as created from ins
       union all
       select ${RUN_COLUMNS}, false as created from durable_runs
        where tenant_id = ? and idempotency_hash = ? and not exists (select 1 from ins)`,
      [randomUUID(), input.tenantId, wf.name, wf.version, input.idempotencyHash, input.principal, JSON.stringify(input.input),
        input.correlationId, input.traceId ?? null, input.traceparent ?? null, wf.steps.length, input.tenantId, input.idempotencyHash],
    );
    const row = rows[0];
    if (!row) return undefined;
    const { created, ...run } = row;
    return { run, created };
  }

  /**
   * Enqueues the run job that carries the run on from `fromSeq` (idempotent: the job id derives from
   * the idempotency hash and the step, so adding it twice while it exists is a no-op). Checkpoints make
   * a second execution after the job was removed harmless.
   */
  async enqueue(
    run: Pick<RunRow, 'id' | 'tenant_id' | 'workflow' | 'workflow_version' | 'idempotency_hash' | 'correlation_id' | 'traceparent' | 'retry_count'> & Partial<RunRow>,
    fromSeq: number,
    /**
     * `carryFirst`: the caller has just created the run (its row is `run`), so the job may carry what
     * the first step needs (StepJobData.first). Never for a run found or re-enqueued (the sweeper, a
     * retried submission): its first step may be done, and its job must read the run first.
     */
    opts: { carryFirst?: boolean } = {},
  ): Promise<void> {
    const wf = this.definition(run.workflow, run.workflow_version);
    if (fromSeq < 1 || fromSeq > wf.steps.length) return;
    const queue = this.queues.get(wf.queue);
    if (!queue) throw new Error(`no queue ${wf.queue} for workflow ${wf.name}`);
    const step = wf.steps[fromSeq - 1]!;
    const retry = retryOf(step);
    const data: StepJobData = {
      run_id: run.id,
      tenant_id: run.tenant_id,
      workflow: wf.name,
      workflow_version: wf.version,
      step: step.name,
      sequence_num: fromSeq,
      _correlation_id: run.correlation_id,
    };
    // Only for a first step that may run from it (run-state.ts, startingRunState): no other job puts the input in Redis.
    const runsUnread = wf.steps[0]?.effectsInTransaction === true && !wf.steps[0].prefetch;
    const first = opts.carryFirst && fromSeq === 1 && runsUnread ? firstStepData(run) : undefined;
    if (first) data.first = first;
    if (run.retry_count > 0) data.retry = run.retry_count;
    const add = () =>
      queue.add(step.name, data, {
        // A retried run's jobs are of its retry's generation: the failed generation's keep their ids in BullMQ's failed set.
        jobId: stepJobId(wf.tag, run.idempotency_hash, fromSeq, step.name, run.retry_count),
        attempts: jobAttempts(wf, fromSeq),
        // Each step's own policy, counted from its own failures (worker-host.ts): see stepBackoffMs.
        backoff: { type: STEP_BACKOFF, delay: retry.backoffMs, jitter: retry.jitter },
        removeOnComplete: this.keep.completed,
        removeOnFail: this.keep.failed,
      });
    await inRunTrace(run, add);
  }

  /**
   * Makes sure a run that has not reached a wait has its run job, e.g. when a retried submission
   * finds the run its first attempt created: the job is added under the id of the job that started
   * the run's current stretch of steps, so while that one exists this is a no-op (adding it from the
   * next step would start a second job beside the live one). A run of a version this process does not
   * register is left to the sweeper of a worker that does (ADR 0008).
   */
  async ensureEnqueued(
    run: Pick<RunRow, 'id' | 'tenant_id' | 'workflow' | 'workflow_version' | 'idempotency_hash' | 'correlation_id' | 'traceparent' | 'sequence_num' | 'retry_count'> & Partial<RunRow>,
    opts: { carryFirst?: boolean } = {},
  ): Promise<void> {
    const wf = this.workflows.get(run.workflow, run.workflow_version);
    if (!wf) {
      this.logger.warn({ run_id: run.id, tenant_id: run.tenant_id, workflow: versionLabel(run.workflow, run.workflow_version) }, 'run of a workflow version this process does not register: left to the sweeper of a worker that does');
      return;
    }
    await this.enqueue(run, segmentStart(wf, run.sequence_num + 1), opts);
  }

  /** Records a checkpoint for (run, sequence_num) and moves the run, in the caller's transaction. */
  async checkpoint(
    em: EntityManager,
    args: {
      /**
       * The run as the job read it: `retry_count` is the job's generation (ADR 0009). The checkpoint
       * writes only while the run is still of it: a job of an earlier generation still inside a step
       * when the run was failed and retried commits nothing (DX001), and ends superseded (executor.ts).
       */
      run: Pick<RunRow, 'id' | 'tenant_id' | 'retry_count'>;
      sequenceNum: number;
      stepName: string;
      status: CheckpointStatus;
      output?: unknown;
      /**
       * `output` already serialised (JSON text; null for none), written instead of serialising it again:
       * the executor serialises a step's output once, and hands the next steps that text's parse.
       */
      outputJson?: string | null;
      error?: unknown;
      attempt: number;
      runStatus: RunStatus;
      runOutput?: unknown;
      leaseOwner?: string;
      leaseMs?: number;
      /**
       * The caller commits right after this statement: it may be sent with the commit (its failure,
       * e.g. a concurrent execution's unique violation, is then raised by the commit).
       */
      beforeCommit?: boolean;
      /**
       * False when the step leaves the run's status as it was (neither its first step, nor a wait,
       * nor its end): the run row is not touched, the checkpoint alone records the progress.
       */
      moveRun?: boolean;
      /**
       * The run was not read in this transaction (a run job's first step ran from what its job
       * carries, ADR 0004): the stored run must still be pending, visible to the tenant, and equal to
       * `expect.run` in every field the step saw (workflow version, input, principal, idempotency
       * hash, correlation id, created_at), or the statement raises (errors.ts, isStaleStart) and the
       * transaction commits nothing: what the job carried is checked, never trusted. The statement is
       * then the transaction's last and travels with its commit (LAST_IN_TRANSACTION), returning the
       * reads of `expect.prefetch` (the later steps' prefetches, StepDef.prefetch) by sequence_num.
       */
      expect?: { run: RunRow; prefetch: { seq: number; sql: string }[] };
      /** Events the step emitted (StepContext.emit): their webhook deliveries are inserted by this statement. */
      events?: OutboxEvent[];
      /** A run that ends here: what its `run.<status>` event's data carries besides the run's own fields. */
      eventData?: Record<string, unknown>;
    },
  ): Promise<CheckpointResult> {
    const completed = args.status === 'completed';
    const terminal = !(ACTIVE_RUN_STATUSES as readonly string[]).includes(args.runStatus);
    if (args.expect) return this.checkpointExpecting(em, args, args.expect, completed, terminal);
    const outbox = outboxOf(terminal, args);
    // Both statements write only while the run is active and of the job's generation, in the statement
    // the step sends anyway (no round trip more): a run cancelled (or otherwise ended) since the job read
    // it, or failed and retried since (ADR 0009: its retry's job carries it, from the checkpoints as they
    // were), makes durable_expect raise DX001, the step's transaction commits nothing, and the job reads
    // the run and ends (executor.ts: `superseded` for a retried one).
    // `status || ''` as in checkpointExpecting: the row is found by its key, never through the partial
    // index of active runs. `for key share` (the lock the checkpoint's foreign key takes anyway) waits
    // for a cancel still in progress (it holds the row `for update`) and then re-reads the status, so
    // a step never commits after a cancel that committed first.
    const notActive = `run ${args.run.id}: no longer active (cancelled or ended) or retried since the job read it; the step's transaction commits nothing`;
    const generation = args.run.retry_count;
    if (args.moveRun === false && !outbox) {
      await em.execute(
        `${args.beforeCommit ? DEFER_UNTIL_NEXT : ''}with cp as (
           insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, error, attempt, created_at, updated_at, completed_at)
           select ?, ?, ?, ?, ?, ?, ?::jsonb, ?::jsonb, ?, now(), now(), ${completed ? 'now()' : 'null'}
            where exists (select 1 from durable_runs where id = ? and ${ACTIVE_OF_GENERATION} for key share)
           returning run_id)
         select durable_expect((select count(*) from cp) = 1, ?) as expected`,
        [randomUUID(), args.run.tenant_id, args.run.id, args.sequenceNum, args.stepName, args.status,
          outputParam(args), args.error === undefined ? null : JSON.stringify(args.error), args.attempt,
          args.run.id, generation, notActive],
        'run',
      );
      return { deliveries: [] };
    }
    const params = [randomUUID(), args.run.tenant_id, args.run.id, args.sequenceNum, args.stepName, args.status,
      outputParam(args), args.error === undefined ? null : JSON.stringify(args.error), args.attempt,
      args.sequenceNum, args.runStatus, args.leaseOwner ?? null, args.leaseMs ?? 0,
      ...(terminal ? [JSON.stringify(args.runOutput ?? null)] : [])];
    if (!outbox) {
      await em.execute(
        `${args.beforeCommit ? DEFER_UNTIL_NEXT : ''}${checkpointAndRunCtes(completed, terminal, ACTIVE_OF_GENERATION, 'id')}
         select durable_expect((select count(*) from r) = 1, ?) as expected`,
        [...params, generation, notActive],
        'run',
      );
      return { deliveries: [] };
    }
    // With webhook deliveries to insert (the run ends, or the step emitted events), the statement reads
    // back their ids: sent with the commit as the transaction's last statement (LAST_IN_TRANSACTION)
    // instead of held for it (DEFER_UNTIL_NEXT) — the same one round trip (ADR 0013).
    const rows = await em.execute<{ webhook_deliveries: string[] }[]>(
      `${args.beforeCommit ? LAST_IN_TRANSACTION : ''}${checkpointAndRunCtes(completed, terminal, ACTIVE_OF_GENERATION, RUN_ENDED_COLUMNS)},
       ${outboxCte(outbox.sql, { at: EVENT_AT })}
       select durable_expect((select count(*) from r) = 1, ?) as expected, ${OUTBOX_IDS}`,
      [...params, generation, ...outbox.params, notActive],
    );
    return { deliveries: rows[0]?.webhook_deliveries ?? [] };
  }

  /** The checkpoint of a step that ran without reading the run: written only if the run is as expected (see `expect`). */
  private async checkpointExpecting(
    em: EntityManager,
    args: Parameters<DurableRuntime['checkpoint']>[1],
    expect: { run: RunRow; prefetch: { seq: number; sql: string }[] },
    completed: boolean,
    terminal: boolean,
  ): Promise<CheckpointResult> {
    const outbox = outboxOf(terminal, args);
    // `r` is the run as updated (its id and tenant), what a prefetch's subquery reads its tenant from.
    // `status || ''` is the same test as `status = 'pending'` (PostgreSQL re-checks it on a row that a
    // concurrent transaction changed, e.g. a cancel), but one the planner cannot match to the partial
    // index of active runs: the row is found by its key, never by walking the tenant's pending runs.
    const rows = await em.execute<Record<string, unknown>[]>(
      `${LAST_IN_TRANSACTION}${checkpointAndRunCtes(
        completed,
        terminal,
        `status || '' = 'pending' and workflow = ? and workflow_version = ? and input = ?::jsonb
           and principal = ? and idempotency_hash = ? and correlation_id = ? and created_at = ?::timestamptz and retry_count = ?`,
        outbox ? RUN_ENDED_COLUMNS : 'id, tenant_id',
      )}${outbox ? `,
       ${outboxCte(outbox.sql, { at: EVENT_AT })}` : ''}
       select durable_expect((select count(*) from r) = 1, ?) as expected, ${DB_TIME_SQL} as db_time${outbox ? `, ${OUTBOX_IDS}` : ''}${expect.prefetch.map((p) => `,
         (select (${p.sql}) from r) as prefetch_${p.seq}`).join('')}`,
      [randomUUID(), args.run.tenant_id, args.run.id, args.sequenceNum, args.stepName, args.status,
        outputParam(args), args.error === undefined ? null : JSON.stringify(args.error), args.attempt,
        args.sequenceNum, args.runStatus, args.leaseOwner ?? null, args.leaseMs ?? 0,
        ...(terminal ? [JSON.stringify(args.runOutput ?? null)] : []),
        expect.run.workflow, expect.run.workflow_version, JSON.stringify(expect.run.input), expect.run.principal, expect.run.idempotency_hash, expect.run.correlation_id,
        new Date(expect.run.created_at).toISOString(), args.run.retry_count, ...(outbox?.params ?? []), `run ${args.run.id}: not pending, not the job's tenant's, or not as its job carried it`],
    );
    const row = rows[0] ?? {};
    return {
      prefetched: new Map(expect.prefetch.map((p) => [p.seq, row[`prefetch_${p.seq}`] ?? null])),
      ...(row.db_time ? { dbTime: new Date(row.db_time as Date | string) } : {}),
      deliveries: (row.webhook_deliveries as string[] | undefined) ?? [],
    };
  }

  /**
   * Ends a run (terminal status), e.g. failed after its retries or expired while waiting. Only an active
   * run moves; `status || ''` keeps the row found by its key, never through the partial index of active runs.
   */
  async complete(
    em: EntityManager,
    runId: string,
    status: Exclude<RunStatus, 'pending' | 'running' | 'waiting'>,
    /**
     * `errorEndedAt` names a field of `error` to set to the run's end, `completed_at` as the API shows it
     * (a cancel's `cancelled_at`): one time, the database's, not a second one read from this process's clock.
     */
    result: { output?: unknown; error?: unknown; errorEndedAt?: string } = {},
    /** Receives the ids of the webhook deliveries of the run's `run.<status>` event (the outbox, ADR 0013): dispatch them after the commit. */
    deliveries?: string[],
  ): Promise<boolean> {
    // The run's event is inserted by the same statement (a CTE), so it exists exactly when the run ended.
    // Ended at this statement's time, not now(): the caller's transaction may have waited for the run's
    // lock (a cancel behind a decision or a step) since it began, and the end follows what it waited for
    // (its delivery's created_at and timestamp are this statement's too: outbox.ts), and so is its
    // updated_at, the run's last change of status (docs/api.md): now() put it before its own end.
    const [row] = await em.execute<{ moved: boolean; webhook_deliveries: string[] }[]>(
      `with r as (
         update durable_runs set status = ?, output = coalesce(?::jsonb, output),
                error = ?::jsonb || case when ?::text is null then '{}'::jsonb else jsonb_build_object(?::text, ${ISO_STATEMENT_TIME}) end,
                completed_at = ${STATEMENT_TIME}, updated_at = ${STATEMENT_TIME},
                lease_owner = null, lease_expires_at = null
          where id = ? and (status || '') in ('pending', 'running', 'waiting')
          returning ${RUN_ENDED_COLUMNS}),
       ${outboxCte(RUN_ENDED_EVENTS, { at: EVENT_AT })}
       select exists (select 1 from r) as moved, ${OUTBOX_IDS}`,
      [
        status,
        result.output === undefined ? null : JSON.stringify(result.output),
        result.error === undefined ? null : JSON.stringify(result.error),
        result.errorEndedAt ?? null,
        result.errorEndedAt ?? null,
        runId,
        '{}',
      ],
    );
    deliveries?.push(...(row?.webhook_deliveries ?? []));
    return row?.moved === true;
  }

  /**
   * Resumes a run that waits at `sequenceNum`: completes the waiting checkpoint with `output`
   * (validated by the step's schema), moves the run on, and returns a function that enqueues the
   * remaining steps; call it after the transaction commits. A run that does not wait there is refused,
   * and so is a run of a version this process does not register (WorkflowVersionUnavailableError, 503:
   * the transaction rolls back and the caller retries, on an instance that has it), or one declared
   * retired (WorkflowVersionRetiredError, 409) — except for an ending that runs no step code: a
   * terminal `finalStatus` with `opts.step`, the waiting step as the caller knows it (its name and
   * output schema), ends a run of a retired version there without its definition (ADR 0008: an SLA
   * expiry; no process will ever have the definition, so waiting for one would leave the run waiting).
   * `opts.at` (timestamptz text) is when the waiting step completed, and the run moved on (its
   * `updated_at`, and its `completed_at` if it ends here): a decision's time, taken after its locks
   * (approval.service.ts), which the step's output records. Without it (an expiry), the time of the
   * statement that writes it — after the wait for the run's lock above, which now(), the transaction's
   * start, is not: an expiry that waited behind a decision or a cancel past the SLA deadline ended the
   * run before its request expired (at the deadline), and a decision's run before its decided_at.
   */
  async resume(
    em: EntityManager,
    runId: string,
    sequenceNum: number,
    output: unknown,
    opts: { finalStatus?: RunStatus; step?: Pick<StepDef, 'name' | 'output'>; at?: string } = {},
  ): Promise<() => Promise<void>> {
    const [run] = await em.execute<RunRow[]>(`select ${RUN_COLUMNS} from durable_runs where id = ? for update`, [runId]);
    if (!run) throw new Error(`run ${runId} not found`);
    // Locked above: a cancel that committed first is seen here, and the run is never moved on from it.
    if (run.status !== 'waiting') throw new RunNotActiveError(run.id, run.status);
    const isTerminal = (s: RunStatus) => !(ACTIVE_RUN_STATUSES as readonly string[]).includes(s);
    // A version merely not registered here still needs its definition: another process has it (a
    // deploy), and checks the step is where that version places it. A retired one's ending does with
    // the caller's step: no process will ever have the definition.
    const endsRetired = opts.finalStatus !== undefined && isTerminal(opts.finalStatus) && opts.step !== undefined && this.workflows.retired(run.workflow, run.workflow_version);
    const wf = endsRetired ? undefined : this.definition(run.workflow, run.workflow_version, run);
    const step = wf ? wf.steps[sequenceNum - 1] : opts.step;
    if (!step) throw new Error(`workflow ${run.workflow} has no step ${sequenceNum}`);
    const parsed = step.output.parse(output);
    const res = (await em.execute(
      `update durable_checkpoints set status = 'completed', output = ?::jsonb, completed_at = coalesce(?::timestamptz, ${STATEMENT_TIME}), updated_at = now()
        where tenant_id = ? and run_id = ? and sequence_num = ? and status = 'waiting' and step_name = ?`,
      [JSON.stringify(parsed), opts.at ?? null, run.tenant_id, runId, sequenceNum, step.name],
      'run',
    )) as { affectedRows?: number };
    if (!res.affectedRows) throw new Error(`run ${runId} is not waiting at step ${sequenceNum}`);
    const last = sequenceNum === wf?.steps.length;
    const status: RunStatus = opts.finalStatus ?? (last ? 'completed' : 'running');
    const terminal = isTerminal(status);
    // One time for the run's move, and for its end: ended at its `updated_at` (as complete()).
    const movedAt = `coalesce(?::timestamptz, ${STATEMENT_TIME})`;
    const update = `update durable_runs set sequence_num = greatest(sequence_num, ?), status = ?, updated_at = ${movedAt} ${terminal ? `, completed_at = ${movedAt}` : ''} where id = ?`;
    const at = opts.at ?? null;
    if (!terminal) {
      await em.execute(update, [sequenceNum, status, at, runId], 'run');
      return async () => {
        if (!last) await this.enqueue(run, sequenceNum + 1);
      };
    }
    // The run ends here (e.g. its approval expired): its event's deliveries in the same statement (ADR 0013).
    const [row] = await em.execute<{ webhook_deliveries: string[] }[]>(
      `with r as (${update} returning ${RUN_ENDED_COLUMNS}), ${outboxCte(RUN_ENDED_EVENTS, { at: EVENT_AT })} select ${OUTBOX_IDS}`,
      [sequenceNum, status, at, at, runId, '{}'],
    );
    const deliveries = row?.webhook_deliveries ?? [];
    return () => this.dispatchDeliveries(run.tenant_id, deliveries);
  }

  /**
   * Brings a failed run back, in the caller's transaction, the run row locked by the caller (`for
   * update`, as a cancel does: a concurrent retry or cancel waits and then sees what this one did):
   * the run becomes `running` (`pending` when no step has completed), its error moves to
   * `retry_history` with who retried it (the newest RUN_RETRY_HISTORY_MAX kept), `retry_count` (the generation of its job ids) goes up, and
   * the checkpoints of its steps that did not complete — the failed step's `failed` one — are
   * deleted, so that step's next attempt can insert its own (unique per run and sequence_num), and
   * the count of its step's crashes is cleared (a run failed with `step_crashed_worker` gets
   * STEP_MAX_CRASHES afresh, ADR 0016), and so is the count of its jobs that ended unable to read it (a
   * run failed `infrastructure_exhausted` gets its step's attempts of such jobs afresh, ADR 0002 amendment).
   * Completed checkpoints, and the domain rows committed with them, stay as they are: the run's next
   * job replays them. Returns the run as updated; the caller enqueues its job after the commit
   * (`ensureEnqueued`), and a job lost between the commit and the enqueue is the sweeper's (the run
   * is active again). Refused: a run that is not `failed` (RunNotFailedError, 409); a run of a
   * version this process does not register (WorkflowVersionUnavailableError, 503); a run none of
   * whose steps may run again (RunNotRetryableError, 409): every step completed, or a step that had
   * committed its effects (it was waiting) before the run failed, whose re-run would repeat them.
   * A run that failed for non-determinism is retried like any other: its next job reads the same
   * checkpoints, and fails it the same way unless the code changed meanwhile.
   */
  async retry(em: EntityManager, run: RunRow, args: { retriedBy: string }): Promise<RunRow> {
    if (run.status !== 'failed') throw new RunNotFailedError(run.id, run.status);
    const wf = this.definition(run.workflow, run.workflow_version, run);
    // Stable while the run row is locked: a checkpoint's insert takes the row `for key share` (its foreign key).
    const checkpoints = await em.execute<{ sequence_num: number; step_name: string; status: CheckpointStatus; attempt: number; has_output: boolean }[]>(
      `select sequence_num, step_name, status, attempt, output is not null as has_output from durable_checkpoints where tenant_id = ? and run_id = ? order by sequence_num`,
      [run.tenant_id, run.id],
    );
    const completed = new Set(checkpoints.filter((c) => c.status === 'completed').map((c) => c.sequence_num));
    const next = firstIncompleteStep(completed);
    const refused = notRetryableBecause(checkpoints, wf.steps.length);
    if (refused) throw new RunNotRetryableError(run.id, refused);
    const failedStep = checkpoints.filter((c) => c.status === 'failed');
    // `retried_at` is the database's: set by the update below to its statement's time (the run's
    // updated_at), as every other instant of a run; this process's clock may be off from it. Not now(),
    // the transaction's start: the retry may have waited for the run's lock behind the failure it
    // retries, and was then stamped before it (as `complete` ends a run at its statement's time).
    const entry: Omit<RunRetry, 'retried_at'> = {
      retry: run.retry_count + 1,
      retried_by: args.retriedBy,
      error: run.error,
      failed_at: run.completed_at ? new Date(run.completed_at).toISOString() : null,
      attempts: failedStep.length ? Math.max(...failedStep.map((c) => c.attempt)) : null,
    };
    const [retried] = await em.execute<RunRow[]>(
      // The delete runs whatever the update reads of it (a data-modifying CTE always runs to completion).
      // `status || ''`: `status = 'failed'` proves the ended runs' list index's predicate, and a generic plan
      // walked the tenant's ended runs in it to test `id` (durable-run.entity.ts); this finds the row by its key.
      // The history keeps its newest RUN_RETRY_HISTORY_MAX entries (lax jsonpath: a shorter array is kept whole).
      // The entry's `error` is the row's own (`error` in SET is the value before this update), not the copy
      // read into JavaScript: the trigger ended_is_history compares it with the row's, and a number jsonb
      // holds more exactly than a double (a hand repair, another writer) made every retry of the run 42501.
      `with dropped as (delete from durable_checkpoints where tenant_id = ? and run_id = ? and status <> 'completed')
       update durable_runs set status = ?, sequence_num = ?, error = null, completed_at = null, updated_at = ${STATEMENT_TIME}, lease_owner = null, lease_expires_at = null,
              crash_seq = null, crash_count = 0, read_timeout_jobs = 0, read_timeout_seq = null, read_timeout_keys = null, retry_count = ?,
              retry_history = jsonb_path_query_array(coalesce(retry_history, '[]'::jsonb) || jsonb_build_array(?::jsonb || jsonb_build_object('error', error, 'retried_at', ${ISO_STATEMENT_TIME})), '$[last - ${RUN_RETRY_HISTORY_MAX - 1} to last]')
        where tenant_id = ? and id = ? and status || '' = 'failed' and retry_count = ?
       returning ${RUN_COLUMNS}`,
      [run.tenant_id, run.id, completed.size === 0 ? 'pending' : 'running', next - 1, entry.retry, JSON.stringify(entry), run.tenant_id, run.id, run.retry_count],
    );
    // The caller locked the row: nothing else could have moved it since it was read.
    if (!retried) throw new Error(`run ${run.id} changed under its row lock`);
    return retried;
  }

  /**
   * Runs of every tenant that are incomplete in Postgres and untouched for `olderThanMs`: ids and
   * progress only, read as the narrow system role (see ADR 0003). The sweeper's only cross-tenant read.
   */
  async list_incomplete(
    systemEm: EntityManager,
    opts: { olderThanMs: number; limit: number; statuses?: RunStatus[]; after?: { updatedAt: string; id: string } },
  ): Promise<IncompleteRun[]> {
    const statuses = opts.statuses ?? ['pending', 'running'];
    const after = opts.after ? 'and (updated_at, id) > (?::timestamptz, ?::uuid)' : '';
    // One range of (status, updated_at, id) per status, each read in order from the cursor and merged:
    // a page reads about the rows it returns, wherever the cursor is. With `status = any(…)` over
    // (status, updated_at) every page read every run of its statuses behind the cursor and sorted them
    // (~1 s a page with 300,000 waiting runs; 40 pages a sweep).
    const branch = `(select id, tenant_id, workflow, workflow_version, status, sequence_num, step_count, updated_at, updated_at::text as updated_at_exact, idempotency_hash, retry_count from durable_runs
          where status = ? and updated_at < now() - ? * interval '1 millisecond' ${after}
          order by updated_at, id limit ?)`;
    return systemEm.transactional((tx) =>
      tx.execute<IncompleteRun[]>(
        `select * from (${statuses.map(() => branch).join(' union all ')}) r order by updated_at, id limit ?`,
        [...statuses.flatMap((status) => [status, opts.olderThanMs, ...(opts.after ? [opts.after.updatedAt, opts.after.id] : []), opts.limit]), opts.limit],
      ),
    );
  }
}

/**
 * A step's checkpoint insert (`cp`) and the run row's update (`r`, the run as updated, returning
 * `returning`) as the two CTEs of one statement: the update moves the run only where `guard` holds.
 * Parameters, in order: the checkpoint's id, tenant, run, sequence_num, step, status, output, error,
 * attempt; the run's sequence_num, status, lease owner, lease ms, (terminal) output; then `guard`'s.
 */
/** A checkpoint's output as its statement binds it: the caller's serialisation if it made one, else `output`'s (null for none). */
function outputParam(args: { output?: unknown; outputJson?: string | null }): string | null {
  if (args.outputJson !== undefined) return args.outputJson;
  return args.output === undefined ? null : JSON.stringify(args.output);
}

/**
 * A checkpoint's guard on the run row (one parameter: the job's generation): still active, and not
 * retried since the job read it (ADR 0009). `status || ''` keeps the row found by its key, never
 * through the partial index of active runs (ADR 0004).
 */
const ACTIVE_OF_GENERATION = `(status || '') in ('pending', 'running', 'waiting') and retry_count = ?`;

function checkpointAndRunCtes(completed: boolean, terminal: boolean, guard: string, returning: string): string {
  return `with cp as (
         insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, output, error, attempt, created_at, updated_at, completed_at)
         values (?, ?, ?, ?, ?, ?, ?::jsonb, ?::jsonb, ?, now(), now(), ${completed ? 'now()' : 'null'})
         returning run_id),
       r as (
         update durable_runs set
           sequence_num = ${completed ? 'greatest(sequence_num, ?)' : 'sequence_num + 0 * ?'},
           status = ?, lease_owner = ?, lease_expires_at = now() + ? * interval '1 millisecond', updated_at = now()
           ${terminal ? ', output = ?::jsonb, completed_at = now()' : ''}
         where id = (select run_id from cp) and ${guard}
         returning ${returning})`;
}

/** The first step's data for a run job, from the run row of a run that has not started (else undefined). */
function firstStepData(run: Partial<RunRow>): FirstStepData | undefined {
  if (run.status !== 'pending' || run.sequence_num !== 0 || run.input === undefined || run.workflow_version === undefined) return undefined;
  if (run.principal === undefined || run.idempotency_hash === undefined || run.created_at === undefined) return undefined;
  if (Buffer.byteLength(JSON.stringify(run.input)) > FIRST_STEP_INPUT_MAX) return undefined;
  return { workflow_version: run.workflow_version, idempotency_hash: run.idempotency_hash, principal: run.principal, input: run.input, created_at: new Date(run.created_at).toISOString() };
}

/** What a checkpoint statement returns: the later steps' prefetches (`expect` only) and the webhook deliveries it inserted. */
export interface CheckpointResult {
  prefetched?: Map<number, unknown>;
  /** The statement's DB_TIME_SQL (`expect` only: the one checkpoint whose row is read anyway): the next steps' StepContext.now. */
  dbTime?: Date;
  /** Ids of the webhook deliveries inserted with the checkpoint: enqueue them after the commit (dispatchDeliveries). */
  deliveries: string[];
}

/**
 * The events a checkpoint inserts deliveries for — the run's `run.<status>` when it ends, and what
 * the step emitted — as the query `outboxCte` reads and its parameters; undefined when there are none.
 */
function outboxOf(terminal: boolean, args: { events?: OutboxEvent[]; eventData?: Record<string, unknown> }): { sql: string; params: unknown[] } | undefined {
  const parts: string[] = [];
  const params: unknown[] = [];
  if (terminal) {
    parts.push(RUN_ENDED_EVENTS);
    params.push(JSON.stringify(args.eventData ?? {}));
  }
  if (args.events?.length) {
    parts.push(EMITTED_EVENTS);
    params.push(JSON.stringify(args.events));
  }
  return parts.length ? { sql: parts.join(' union all '), params } : undefined;
}

