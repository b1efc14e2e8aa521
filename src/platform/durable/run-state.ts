import type { EntityManager } from '@mikro-orm/postgresql';
import { NonDeterminismError, RunNotVisibleError } from './errors.ts';
import { DB_TIME_SQL, RUN_COLUMNS, type RunRow, type StepJobData } from './runtime.ts';
import type { RunInfo, WorkflowDef } from './workflow.ts';

export interface CheckpointView {
  seq: number;
  step: string;
  status: 'started' | 'completed' | 'failed' | 'waiting';
  output: unknown;
}

/**
 * What a run job knows of its run: read once through RLS when the job starts (and again after another
 * execution won a step), then kept up to date by the job's own commits.
 */
export interface RunState {
  run: RunRow;
  info: RunInfo;
  checkpoints: Map<number, CheckpointView>;
  /** Completed steps' outputs by step name: what the next steps' input schemas read. */
  outputs: Record<string, unknown>;
  /** What the steps' `prefetch` reads found, by sequence_num (steps from the job's on that declare one). */
  prefetched: Map<number, unknown>;
  /**
   * The database's time as the job last read it (StepContext.now): the run's read's `now()`, or for a
   * run not read yet its `created_at`; moved on by a checkpoint that reports its own (a first step's).
   */
  dbTime: Date;
}


/**
 * Reads the run and all its checkpoints in one statement, in the caller's transaction (so with the
 * tenant set, RLS in force), and checks them against the code: the workflow and its version, the step
 * the job names, and every stored step name at its sequence_num. Any difference is non-determinism.
 */
export async function loadRunState(tx: EntityManager, wf: WorkflowDef, job: StepJobData): Promise<RunState> {
  const prefetches = wf.steps.flatMap((s, i) => (s.prefetch && i + 1 >= job.sequence_num ? [{ seq: i + 1, sql: s.prefetch }] : []));
  const rows = await tx.execute<(RunRow & { checkpoints: CheckpointView[] } & Record<string, unknown>)[]>(
    `select ${RUN_COLUMNS},
       coalesce((select json_agg(json_build_object('seq', c.sequence_num, 'step', c.step_name, 'status', c.status, 'output', c.output)
                                 order by c.sequence_num)
                   from durable_checkpoints c where c.tenant_id = r.tenant_id and c.run_id = r.id), '[]'::json) as checkpoints,
       ${DB_TIME_SQL} as db_time${prefetches.map((p) => `,
       (${p.sql}) as prefetch_${p.seq}`).join('')}
       from durable_runs r where r.tenant_id = ? and r.id = ?`,
    [job.tenant_id, job.run_id],
  );
  const row = rows[0];
  if (!row) throw new RunNotVisibleError(job.run_id);
  // Where the run stands (its first step from the job's on without a completed checkpoint): a
  // difference found below fails the run there.
  const done = new Set(row.checkpoints.filter((c) => c.status === 'completed').map((c) => c.seq));
  let at = job.sequence_num;
  while (done.has(at)) at++;
  if (row.workflow !== wf.name || row.workflow_version !== wf.version) {
    throw new NonDeterminismError(`run ${row.id} was started by ${row.workflow}@v${row.workflow_version}; this worker runs ${wf.name}@v${wf.version}`, at);
  }
  const checkpoints = new Map<number, CheckpointView>();
  const outputs: Record<string, unknown> = {};
  for (const cp of row.checkpoints) {
    const codeStep = wf.steps[cp.seq - 1];
    if (!codeStep || codeStep.name !== cp.step) {
      throw new NonDeterminismError(`checkpoint ${cp.seq} of run ${row.id} is "${cp.step}", the code has "${codeStep?.name ?? 'nothing'}" there`, at);
    }
    checkpoints.set(cp.seq, cp);
    // Validated where it is consumed: each step's input schema parses the outputs it reads.
    if (cp.status === 'completed') outputs[cp.step] = cp.output;
  }
  const named = wf.steps[job.sequence_num - 1];
  if (!named || named.name !== job.step) {
    throw new NonDeterminismError(`job names step ${job.sequence_num} "${job.step}", the code has "${named?.name ?? 'nothing'}"`, at);
  }
  const { checkpoints: _, db_time: dbTime, ...rest } = row;
  const prefetched = new Map<number, unknown>();
  for (const p of prefetches) {
    prefetched.set(p.seq, rest[`prefetch_${p.seq}`] ?? null);
    delete rest[`prefetch_${p.seq}`];
  }
  return stateOf(rest as RunRow, checkpoints, outputs, prefetched, new Date(dbTime as Date | string));
}

/**
 * The state of a run that has not started, from what its job carries (StepJobData.first) instead of
 * a read: no checkpoints, no outputs, nothing prefetched yet. Undefined unless the job is a first
 * delivery of the run's first job, carries that data, and names the workflow version and step the
 * code has (anything else reads the run, and loadRunState reports the difference). Nothing here is
 * trusted: the first step's checkpoint checks the run in its own transaction (DurableRuntime.checkpoint's `expect`).
 */
export function startingRunState(wf: WorkflowDef, job: StepJobData, firstDelivery: boolean): RunState | undefined {
  const f = job.first;
  // A job delivered again (its worker died or handed it back, or it is retried) may find steps done:
  // it reads them, so a step that has a checkpoint is never entered again.
  if (!f || !firstDelivery || job.sequence_num !== 1 || job.failures || job.reached !== undefined) return undefined;
  const step = wf.steps[0];
  if (job.workflow !== wf.name || f.workflow_version !== wf.version || step?.name !== job.step || !step.effectsInTransaction || step.prefetch) return undefined;
  const createdAt = new Date(f.created_at);
  const run: RunRow = {
    id: job.run_id,
    tenant_id: job.tenant_id,
    workflow: wf.name,
    workflow_version: f.workflow_version,
    idempotency_hash: f.idempotency_hash,
    status: 'pending',
    principal: f.principal,
    input: f.input,
    output: null,
    error: null,
    correlation_id: job._correlation_id,
    trace_id: null,
    traceparent: null,
    sequence_num: 0,
    step_count: wf.steps.length,
    created_at: createdAt,
    updated_at: createdAt,
    completed_at: null,
    // A new run's first job: a retried run's jobs never carry `first` (enqueue's carryFirst is for a run just created).
    retry_count: 0,
  };
  // No read yet: the run's creation is the latest time of the database's the job knows (its queueing not counted).
  return stateOf(run, new Map(), {}, new Map(), createdAt);
}

function stateOf(run: RunRow, checkpoints: Map<number, CheckpointView>, outputs: Record<string, unknown>, prefetched: Map<number, unknown>, dbTime: Date): RunState {
  return {
    run,
    checkpoints,
    outputs,
    prefetched,
    dbTime,
    info: {
      id: run.id,
      tenantId: run.tenant_id,
      workflow: run.workflow,
      workflowVersion: run.workflow_version,
      principal: run.principal,
      correlationId: run.correlation_id,
      idempotencyHash: run.idempotency_hash,
      createdAt: new Date(run.created_at),
    },
  };
}
