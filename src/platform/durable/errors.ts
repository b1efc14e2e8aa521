import { AppError } from '../errors/app-error.ts';
import { storableText } from '../http/json-text.ts';

/** Stored checkpoints disagree with the code's steps (renamed, reordered or re-versioned): fail loudly. */
export class NonDeterminismError extends AppError {
  /** The sequence_num the run had reached (its first step not completed), where the run fails. */
  at: number | undefined;
  constructor(detail: string, at?: number) {
    super('non_determinism', `Non-determinism: ${detail}`, { status: 500, retryable: false, detail });
    this.at = at;
  }
}

/**
 * A step whose executions were cut off by the loss of their worker `crashes` times in a row (its run
 * job stalled: the process was SIGKILLed, ran out of memory, crashed in native code) and that reached
 * STEP_MAX_CRASHES: it is not run again, and its run fails for good, so that a step that kills its
 * worker every time ends instead of crash-looping the fleet (ADR 0016). A retry runs it again.
 */
export class StepCrashedWorkerError extends AppError {
  readonly crashes: number;
  constructor(step: string, seq: number, crashes: number, limit: number) {
    super(
      'step_crashed_worker',
      `Step ${step} (sequence_num ${seq}) lost its worker process ${crashes} times in a row while it ran (a crash, an out-of-memory kill or SIGKILL; STEP_MAX_CRASHES is ${limit}): it is not run again. Retry the run once the cause is removed.`,
      { status: 500, retryable: false },
    );
    this.crashes = crashes;
  }
}

/**
 * A run none of whose jobs could read it: `jobs` of them at the step it is at (as many as that step's
 * attempts) each spent their attempts on a statement or lock timeout (`sqlstate`, 57014 or 55P03, the
 * last one's) and ended as infrastructure, and the sweeper added the next, its attempts afresh. Not the step's
 * failure (it never ran), but the run would otherwise be re-enqueued for ever: it fails for good, and
 * a retry (ADR 0009) carries it on once the database is well (ADR 0002, amendment).
 */
export class InfrastructureExhaustedError extends AppError {
  readonly sqlstate: string;
  readonly jobs: number;
  constructor(step: string, seq: number, jobs: number, sqlstate: string) {
    super(
      'infrastructure_exhausted',
      `The run could not be read by ${jobs} of its jobs in turn at step ${step} (sequence_num ${seq}): each spent its attempts on a database timeout (the last SQLSTATE ${sqlstate}) before the step could run. The step never ran; the run is not re-enqueued again. Retry the run once the database's locks or slow reads are dealt with.`,
      { status: 500, retryable: false },
    );
    this.sqlstate = sqlstate;
    this.jobs = jobs;
  }
}

/** The job names a run that row-level security does not let its tenant see: a security event. */
export class RunNotVisibleError extends AppError {
  constructor(runId: string) {
    super('run_not_visible', `run ${runId} is not visible to the job's tenant`, { status: 404, retryable: false });
  }
}

/** The run has ended (cancelled, completed, failed, …): nothing may move it on any more. 409 to an API client. */
export class RunNotActiveError extends AppError {
  readonly runStatus: string;
  constructor(runId: string, status: string) {
    super('run_not_active', 'Conflict', {
      status: 409,
      retryable: false,
      detail: `The run ${runId} is ${status}; it is no longer active.`,
      extensions: { run_status: status },
    });
    this.runStatus = status;
  }
}

/** A retry of a run that has not failed (it is active, or ended otherwise: completed, rejected, expired, cancelled). 409 to an API client. */
export class RunNotFailedError extends AppError {
  readonly runStatus: string;
  constructor(runId: string, status: string) {
    super('run_not_failed', 'Conflict', {
      status: 409,
      retryable: false,
      detail: `The run ${runId} is ${status}; only a failed run can be retried.`,
      extensions: { run_status: status },
    });
    this.runStatus = status;
  }
}

/** A failed run none of whose steps may run again (`why`): a retry would repeat effects or do nothing. 409 to an API client. */
export class RunNotRetryableError extends AppError {
  constructor(runId: string, why: string) {
    super('run_not_retryable', 'Conflict', {
      status: 409,
      retryable: false,
      detail: `The run ${runId} failed, but cannot be retried: ${why}.`,
      extensions: { run_status: 'failed' },
    });
  }
}

export function isUniqueViolation(e: unknown): boolean {
  for (let cur: any = e, d = 0; cur && d < 5; d++, cur = cur.cause) {
    if (cur.code === '23505' || cur.name === 'UniqueConstraintViolationException') return true;
  }
  return false;
}

/**
 * A run job's first step ran without reading its run (the job carried what the step needs), and the
 * checkpoint's check found the run no longer as the job was added: not pending, another workflow
 * version, or not the job's tenant's (durable_expect's DX001, or the checkpoint's foreign key on
 * (tenant_id, run_id)). Its transaction rolled back; the job reads the run and goes on from there.
 */
export function isStaleStart(e: unknown): boolean {
  for (let cur: any = e, d = 0; cur && d < 5; d++, cur = cur.cause) {
    if (cur.code === 'DX001' || cur.code === '23503' || cur.name === 'ForeignKeyConstraintViolationException') return true;
  }
  return false;
}

/**
 * DX001 alone: a checkpoint found its run no longer active (cancelled or ended since the job read it).
 * Unlike isStaleStart, never a foreign-key violation, which a step's own domain insert can raise and
 * which must fail the step as any error does.
 */
export function isRunNoLongerActive(e: unknown): boolean {
  for (let cur: any = e, d = 0; cur && d < 5; d++, cur = cur.cause) if (cur.code === 'DX001') return true;
  return false;
}

/**
 * The run was started by a version of its workflow that this process does not register (ADR 0008):
 * another process may (a rolling deploy, workers kept to drain an old version). Never a reason to
 * fail the run: a worker defers the job, the API answers 503 so the caller retries elsewhere or later.
 */
export class WorkflowVersionUnavailableError extends AppError {
  readonly workflow: string;
  readonly version: number | undefined;
  /**
   * `retiredByWorker`: the run's recorded failure is a worker's `workflow_version_retired` (its
   * WORKFLOW_VERSIONS_RETIRED names the version, this instance's does not): the detail says the
   * processes disagree, not that a deploy is in progress — retrying shortly changes nothing.
   */
  constructor(workflow: string, version: number | undefined, opts: { retiredByWorker?: boolean } = {}) {
    super('workflow_version_unavailable', `workflow ${workflow}@v${version ?? '?'} is not registered in this process`, {
      status: 503,
      retryable: true,
      detail: opts.retiredByWorker
        ? `The run was started by ${workflow}@v${version ?? '?'}, which this instance does not run, nor declares retired. A worker failed the run because its configuration declares that version retired (WORKFLOW_VERSIONS_RETIRED): the API's and the workers' lists disagree, and retrying changes nothing until an operator sets the same WORKFLOW_VERSIONS_RETIRED on every process (then this answers 409 workflow_version_retired) or brings the version back.`
        : 'The run was started by a workflow version this instance does not run; retry shortly.',
      headers: { 'Retry-After': '5' },
    });
    this.workflow = workflow;
    this.version = version;
  }
}

/**
 * The run was started by a version of its workflow that is retired for good (WORKFLOW_VERSIONS_RETIRED,
 * ADR 0008): no process runs it any more, so the run can never be carried on, here or elsewhere. 409
 * to an API client, not retryable (unlike WorkflowVersionUnavailableError's 503): the run stays as it
 * is, and the way on is a new submission, which runs on `currentVersion`.
 */
export class WorkflowVersionRetiredError extends AppError {
  readonly workflow: string;
  readonly version: number;
  constructor(workflow: string, version: number, run: { id: string; status: string }, currentVersion: number | undefined) {
    super('workflow_version_retired', 'Conflict', {
      status: 409,
      retryable: false,
      detail: `The run ${run.id} was started by ${workflow}@v${version}, a workflow version this instance's configuration declares retired for good (WORKFLOW_VERSIONS_RETIRED), so the run cannot be carried on. Submit it again (a new request with a new Idempotency-Key) to run it on the current version${currentVersion === undefined ? '' : ` (v${currentVersion})`}.`,
      extensions: { workflow, workflow_version: version, ...(currentVersion === undefined ? {} : { current_version: currentVersion }), run_status: run.status },
    });
    this.workflow = workflow;
    this.version = version;
  }
}

/**
 * The error a worker records on a run it fails because its own WORKFLOW_VERSIONS_RETIRED names the
 * run's version (executor.ts, failRetired; the sweeper's active pass for a run whose job Redis lost,
 * which cannot name the step: no process has the version's definition, so only `sequence_num`). It names the version and says whose configuration retires
 * it, and not which version a new submission runs on: the API decides that, and the worker cannot tell
 * whether the API's list says the same. When it does not — the API still starts or retries runs of the
 * version — every such run fails here, and submitting it again does not help.
 */
export function retiredByWorkerError(workflow: string, version: number, step: string | undefined, sequenceNum: number) {
  const label = `${workflow}@v${version}`;
  return {
    code: 'workflow_version_retired',
    message: `The run was started by ${label}, which this worker's configuration declares retired for good (WORKFLOW_VERSIONS_RETIRED): the worker failed the run without running its step ${step ?? sequenceNum}. Submit it again (a new request with a new Idempotency-Key) to run it on the current version. If a new run of ${label} fails the same way, the API still starts runs of it: the API's WORKFLOW_VERSIONS_RETIRED and the workers' disagree, and an operator must set the same list on every process.`,
    ...(step === undefined ? {} : { step }),
    sequence_num: sequenceNum,
  };
}

/**
 * The SQLSTATE of an error PostgreSQL answered (node-postgres' DatabaseError, also wrapped by
 * MikroORM as a `cause`), else undefined. Not a socket's error code (ECONNRESET, EPIPE): those carry
 * no `severity`.
 */
export function sqlStateOf(e: unknown): string | undefined {
  for (let cur: any = e, d = 0; cur && d < 5; d++, cur = cur.cause) {
    if (typeof cur.code === 'string' && /^[0-9A-Z]{5}$/.test(cur.code) && typeof cur.severity === 'string') return cur.code;
  }
  return undefined;
}

/**
 * What a failed step's checkpoint and its run record of the error, which API clients read: a
 * workflow's own errors as they are (code and message); a database error as its SQLSTATE only —
 * PostgreSQL's message names tables, constraints and values, which stay in the worker's log.
 */
export function recordedError(err: Error): { code: string; message: string } {
  // Storable as jsonb whatever the error says: a NUL or a lone surrogate (a step's partner quoted, a
  // message cut inside a character) would roll back the failure's transaction, and the run would stay
  // active for the sweeper to run its step again every sweep.
  if (err instanceof AppError) return { code: storableText(String(err.code), 200), message: storableText(String(err.message), 2000) };
  const state = sqlStateOf(err);
  if (state) return { code: 'database_error', message: `The step failed on a database error (SQLSTATE ${state}); the worker's log has its details under this run's id.` };
  return { code: storableText(String(err.name), 200), message: storableText(String(err.message), 2000) };
}

/**
 * What a failed step's checkpoint and its run record when its own error could not be recorded (its
 * transaction rolled back on something other than the database being unreachable or timing out): the
 * run still fails, with this, rather than staying active for the sweeper to run its step again.
 */
export function unrecordableError(): { code: string; message: string } {
  return {
    code: 'step_error_unrecordable',
    message: "The step failed for good, but its error could not be recorded (the transaction that records it failed); the worker's log has both errors under this run's id.",
  };
}
