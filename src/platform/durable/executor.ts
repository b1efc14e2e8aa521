import type { EntityManager, MikroORM } from '@mikro-orm/postgresql';
import { DelayedError, UnrecoverableError, WaitingError, type Job } from 'bullmq';
import { context as otelContext, SpanStatusCode, trace, type Span } from '@opentelemetry/api';
import type { Logger } from 'pino';
import { ZodError } from 'zod';
import { AppError, PermanentError, coerceError, isBackendTimeout, isBackendUnavailable, isConnectivityError, isDatabaseTimeout } from '../errors/app-error.ts';
import { systemEm, tenantEm } from '../db/tenant-em.ts';
import { LAST_IN_TRANSACTION, Prelude, holdingInserts, withPrelude } from '../db/coalescing-client.ts';
import { bindParameters } from '../db/binding-driver.ts';
import { TENANT_SETTING } from '../db/tenant-owned.ts';
import { stepTransaction } from '../db/step-transaction.ts';
import { requestContext } from '../tenancy/request-context.ts';
import { ATTR } from '../telemetry/attributes.ts';
import { InfrastructureExhaustedError, NonDeterminismError, RunNotVisibleError, StepCrashedWorkerError, WorkflowVersionUnavailableError, isRunNoLongerActive, isStaleStart, isUniqueViolation, recordedError, retiredByWorkerError, sqlStateOf, unrecordableError } from './errors.ts';
import { ACTIVE_RUN_STATUSES } from './durable-run.entity.ts';
import type { DurableRuntime, RunRow, StepJobData } from './runtime.ts';
import { loadRunState, startingRunState, type RunState } from './run-state.ts';
import { WAITING, deferDelayMs, isWaiting, retryOf, type StepContext, type StepDef, type Waiting, type WorkflowDef } from './workflow.ts';
import { versionLabel } from './registry.ts';
import { unparked } from './tenant-slots.ts';
import type { OutboxEvent } from '../webhooks/outbox.ts';

export interface StepOutcome {
  sequence_num: number;
  step: string;
  status: 'completed' | 'waiting';
  /** True when the step's checkpoint was already written (by an earlier execution): its output replayed. */
  replayed: boolean;
  /** The step's execution including its commit; 0 when replayed. */
  duration_ms: number;
}

/** What a run job returns (Bull Board shows it): each step it reached, executed or replayed. */
export interface JobOutcome {
  run_id: string;
  from_sequence_num: number;
  /** `ended`: the run reached its last step (or was already over); `waiting`: a step waits (e.g. for a human). */
  status: 'ended' | 'waiting';
  steps: StepOutcome[];
}

export interface ExecutorOptions {
  orm: MikroORM;
  runtime: DurableRuntime;
  logger: Logger;
  workerId: string;
  leaseMs: number;
  /**
   * Times a step of a run may lose its worker mid-execution before the run fails with
   * `step_crashed_worker` instead of running it again (STEP_MAX_CRASHES, ADR 0016; default 5).
   */
  maxCrashes?: number;
  /**
   * The instance ids (`workerId`) of the worker processes alive now — a connection of theirs open to
   * Redis — asked only after a stall: a stall whose job was held by one of them is a lock that lapsed
   * (its event loop blocked, a GC pause, a starved CPU, Redis out of reach), not a crash, and is not
   * counted (ADR 0016, amendment). Without it, or when it fails, every stall counts.
   */
  connectedWorkers?(): Promise<ReadonlySet<string>>;
  onStepDone?(info: { workflow: string; step: string; seconds: number; replayed: boolean; status: string }): void;
  /**
   * A step attempt failed: `retrying` (BullMQ retries it with backoff), `failed` (for good: the run
   * failed), `infrastructure` (its last attempt failed on the platform's unreachable database or Redis,
   * not on a call out of the step's own, or on a statement or lock timeout reading the run before any
   * step ran, or its failure could not be recorded for the database was unreachable or timing out: the
   * run stays as it is, an incomplete one for the sweeper — but an active run whose jobs have ended on
   * read timeouts as often as its step has attempts fails `infrastructure_exhausted`, counted `failed`).
   */
  onStepFailed?(info: { workflow: string; step: string; outcome: 'retrying' | 'failed' | 'infrastructure' }): void;
  /** A job put off because this process does not register its run's workflow version (ADR 0008). */
  onDeferred?(info: { workflow: string; version: number | undefined }): void;
  /**
   * A run failed for good whose workflow's `onFailed` threw (not on the platform's database unreachable
   * or timing out): the hook's writes rolled back alone, the run failed all the same with the hook's
   * error as its error's `on_failed_error`. Counted once the failure has committed.
   */
  onFailedHookFailed?(info: { workflow: string }): void;
}

/** How the worker host steers a running job. */
export interface JobControl {
  /** Aborted when the worker hands the job back mid-step at shutdown: the step's transaction rolls back. */
  abort?: AbortSignal;
  /** True once the worker is stopping: the job ends before its next step by handing itself back. */
  draining?(): boolean;
  /** Moves the job back to `wait` (no attempt spent) so another worker continues it. */
  handBack?(): Promise<void>;
  /**
   * Moves the job to `delayed` for `delayMs` (no attempt spent), recording that it was put off
   * `deferrals` times: for a worker that registers its run's workflow version (ADR 0008).
   */
  defer?(delayMs: number, deferrals: number): Promise<void>;
}

const tracer = trace.getTracer('dealix-durable');

/**
 * Errors the step's own code threw (its `run`), as opposed to the executor's reads and writes of the
 * run (its transaction, the checkpoint, the commit). A network error among them may be the step's own
 * call out (a partner's API down): it leaves the run to the sweeper only when the platform's database
 * client raised it (isBackendUnavailable), never for what its message quotes. Marked here, not wrapped:
 * the step's error goes on as it was thrown.
 */
const thrownByStep = new WeakSet<object>();
const markThrownByStep = (e: unknown): never => {
  if (e !== null && (typeof e === 'object' || typeof e === 'function')) thrownByStep.add(e);
  throw e;
};
const LOST_RACE = 'another execution checkpointed this step first; going on from what it stored';

/** A step's unique violation that the run, read again, shows was no race lost: no other execution committed the step. */
class OwnViolation {
  readonly error: unknown;
  constructor(error: unknown) {
    this.error = error;
  }
}

/**
 * Settles with `running` (a step, a hand-back), or rejects as soon as `signal` aborts; a step left
 * running then can no longer commit.
 */
export async function untilAborted<T>(running: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return running;
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

/**
 * A step's output as its checkpoint stores it, and as the next steps see it: the parse of its JSON, on
 * the first execution as on a replay, which reads it back from the checkpoint (a Date is its ISO string,
 * an undefined field is gone, NaN is null, a Map is {}, a class instance its own fields; undefined is
 * null). Serialised once, here: the checkpoint writes this text. An output JSON cannot hold (a BigInt, a
 * circular reference, a toJSON that throws) fails the step for good: a retry would produce it again.
 */
function stored(stepName: string, value: unknown): { output: unknown; json: string | null } {
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch (e) {
    throw new PermanentError('step_output_not_json', `step ${stepName}: its output cannot be stored as JSON: ${coerceError(e).message}`, e);
  }
  if (json === undefined) return { output: null, json: null };
  // Strings, booleans, null and finite numbers other than -0 read back as they are: no parse for them.
  const plain = typeof value === 'string' || typeof value === 'boolean' || value === null || (typeof value === 'number' && Number.isFinite(value) && !Object.is(value, -0));
  return { output: plain ? value : JSON.parse(json), json };
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const positiveInt = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= 1;

/**
 * Why a run job's data is not as `runtime.enqueue` writes it (ids that are UUIDs, a workflow name, a
 * step position), or undefined. A few checks of fields every job has, on the hot path: what the job
 * names is then checked where it is read (the tenant's row-level security binds the run to the job's
 * tenant; each step's schema validates its input).
 */
export function malformedJobData(d: Partial<StepJobData> | null | undefined): string | undefined {
  if (!d || typeof d !== 'object') return 'no data';
  if (typeof d.run_id !== 'string' || !UUID.test(d.run_id)) return 'run_id is not a UUID';
  if (typeof d.tenant_id !== 'string' || !UUID.test(d.tenant_id)) return 'tenant_id is not a UUID';
  if (typeof d.workflow !== 'string' || !d.workflow) return 'no workflow';
  if (!positiveInt(d.sequence_num)) return 'sequence_num is not a positive integer';
  if (d.workflow_version !== undefined && !positiveInt(d.workflow_version)) return 'workflow_version is not a positive integer';
  if (d.retry !== undefined && !(Number.isInteger(d.retry) && d.retry >= 0)) return 'retry is not a generation';
  return undefined;
}

/** STEP_MAX_CRASHES's default: crashes of one step before its run fails (ADR 0016). */
export const DEFAULT_MAX_CRASHES = 5;
/** At most this many holders found alive at a step's stalls are looked for again (StepJobData.lapsed): a bound on the job's data. */
const MAX_LAPSED_HOLDERS = 20;
/**
 * The job ends a run's read timeout count remembers (`durable_runs.read_timeout_keys`, newest first), so
 * that one counted already is not counted again: two executions of one job at once, or one end's count
 * sent again, come close together, while other jobs' ends are one a sweep apart. A bound on the run's row.
 */
export const READ_TIMEOUT_KEYS_MAX = 8;

/**
 * One end of one job at one step, as the read timeout count knows it (`read_timeout_keys`): the job's id,
 * its creation time — the sweeper adds a new job under the id of one that ended — its finished attempts —
 * the same job retried from Bull Board ends again on a later one — and the step it ended at. The same for
 * every execution of one attempt at one step: a stalled job's re-delivery keeps its attemptsMade, and the
 * count sent again is of the same job. The step, because the count is a step's: two executions of one job
 * can end at different steps (the re-delivery committed the step the first could not read the run at), and
 * the later step's end is that step's first, not an end counted already — without it, the later step was
 * answered the earlier step's count and failed against its own attempts.
 */
export function readTimeoutKey(job: Pick<Job, 'id' | 'timestamp' | 'attemptsMade'>, seq: number): string {
  return `${job.id}@${job.timestamp}#${job.attemptsMade ?? 0}/${seq}`;
}

const isActive = (status: string) => (ACTIVE_RUN_STATUSES as readonly string[]).includes(status);

/** What the job does next, decided from the run's state inside a transaction. */
type Next = { kind: 'step'; seq: number } | { kind: 'ended' } | { kind: 'waiting' } | { kind: 'hand-back' } | { kind: 'superseded' };

/**
 * Executes a run job: carries one run from the job's step through the following ones, each step in
 * ONE transaction with its domain writes, its checkpoint and the run's progress, until a step waits
 * or the run ends (ADR 0005). The checkpoint algorithm (after DBOS): bind the tenant from the job;
 * read the run and its checkpoints through RLS (once, in the first step's transaction); a completed
 * checkpoint replays its stored output; a stored step name that differs from the code's is
 * non-determinism; otherwise run the step. A unique violation means another execution won a step:
 * read the run again and go on from what it stored, never redo. The first delivery of a new run's
 * job skips the read: it runs step 1 from what the job carries and its checkpoint checks the run
 * (pending, this workflow version, the job's tenant's) in the same statement; if the check fails,
 * nothing of the step committed and the job reads the run as above (ADR 0004).
 */
export class StepExecutor {
  private readonly o: ExecutorOptions;
  constructor(opts: ExecutorOptions) {
    this.o = opts;
  }

  async process(job: Job<StepJobData>, control: JobControl = {}): Promise<JobOutcome> {
    const d = job.data;
    const logger = this.o.logger.child({ run_id: d.run_id, tenant_id: d.tenant_id, correlation_id: d._correlation_id, job_id: job.id });
    return requestContext.run({ requestId: String(job.id), correlationId: d._correlation_id, runId: d.run_id, principal: { sub: 'worker', tenantId: d.tenant_id, roles: [] } }, () =>
      this.execute(job, logger, control),
    );
  }

  private async execute(job: Job<StepJobData>, logger: Logger, control: JobControl): Promise<JobOutcome> {
    const d = job.data;
    const malformed = malformedJobData(d);
    if (malformed) {
      // Not written by the runtime (Bull Board no longer adds or edits jobs; Redis reached another
      // way, a bug): nothing is read or written on its word, and no attempt is retried on it.
      logger.error({ security_event: 'run_job_malformed', reason: malformed, job_name: job.name }, 'run job data not as the runtime writes it: the job fails for good');
      throw new UnrecoverableError(`run job data malformed: ${malformed}`);
    }
    // BullMQ's `process` span (the active one) started before the job's data was read: it names the run too.
    trace.getActiveSpan()?.setAttributes({ [ATTR.RUN]: d.run_id, [ATTR.TENANT]: d.tenant_id });
    const em = tenantEm(this.o.orm, d.tenant_id);
    // Exactly the version the run started with (the job carries it: two map lookups, no read).
    const version = d.workflow_version ?? (await this.storedVersion(em, d));
    const wf = version === undefined ? this.o.runtime.workflows.current(d.workflow) : this.o.runtime.workflows.get(d.workflow, version);
    const outcome: JobOutcome = { run_id: d.run_id, from_sequence_num: d.sequence_num, status: 'ended', steps: [] };
    if (!wf) {
      // Off the hot path (a version this process lacks): a run that ended meanwhile — cancelled while
      // no worker could carry it on — has nothing left for any worker, so its job ends here.
      const status = await this.storedStatus(em, d);
      // No run the job's tenant can see (deleted by run retention long after it ended — by when its
      // version is seldom registered anywhere — or another tenant's): no worker could ever carry it on,
      // so it fails as a job of a registered version does instead of being put off for ever.
      if (status === undefined) return this.notVisible(d, logger, `run ${d.run_id} is not visible to the job's tenant`);
      if (!isActive(status)) {
        logger.info({ workflow: versionLabel(d.workflow, version), run_status: status }, 'run ended while its workflow version was not registered here: job ends');
        return outcome;
      }
      // Retired for good (WORKFLOW_VERSIONS_RETIRED): no worker will ever register it, so putting the job
      // off would cycle it for ever and leave the run active, counted against its tenant's cap.
      if (this.o.runtime.workflows.retired(d.workflow, version)) {
        // A waiting run is carried on by a decision or its timer, not by a job (this one is a leftover):
        // it is not this job's to fail, which would leave its approval request open.
        if (status === 'waiting') {
          logger.warn({ workflow: versionLabel(d.workflow, version), run_status: status }, 'job of a waiting run of a retired workflow version: job ends, the run waits');
          return outcome;
        }
        return this.failRetired(job, logger, version!);
      }
      return this.defer(job, control, logger, version);
    }
    // BullMQ counts each time the job became active (1 on its first delivery; 0 when run outside a
    // worker), its stalls, and its finished attempts.
    const firstDelivery = (job.attemptsStarted ?? 0) <= 1 && !job.stalledCounter && !job.attemptsMade;
    if (!firstDelivery) await this.countCrash(job, wf, logger);
    let state: RunState | undefined = startingRunState(wf, d, firstDelivery);
    // True while the run has not been read: the next checkpoint checks it (DurableRuntime.checkpoint's `expect`).
    let unread = state !== undefined;
    let seq = d.sequence_num;
    // A job that carries its run on past step 1 (after a wait: a decision, an SLA timer; a retried run)
    // names its worker the run's holder where the run has none, ahead of its first read (holderPrelude).
    let claim = !state && d.sequence_num > 1 ? this.holderPrelude(em, d) : undefined;
    // A unique violation at step `seq`: a lost race only if the re-read finds the step committed by
    // another execution (its rows and its checkpoint commit together); else it was the step's own.
    let violated: { seq: number; error: unknown } | undefined;
    // Each lost race (another execution committed the step first) re-reads the run; more losses than
    // steps means something else is wrong.
    for (let races = 0; races <= wf.steps.length; ) {
      let span: Span | undefined;
      const started = performance.now();
      const prelude = claim;
      claim = undefined;
      try {
        const inTransaction = <T>(fn: (tx: EntityManager) => Promise<T>) => (prelude ? withPrelude(prelude, () => stepTransaction(em, fn)) : stepTransaction(em, fn));
        const done = await inTransaction(async (tx) => {
          if (!state) state = await loadRunState(tx, wf, d);
          // A job of an earlier generation of a run retried since (ADR 0009): the retry's job carries it.
          if ((d.retry ?? 0) !== state.run.retry_count) return { kind: 'superseded' as const };
          seq = this.replayCompleted(state, seq, outcome, wf);
          const next = this.next(state, seq, wf, control);
          if (violated) {
            // The run read again after a unique violation: the step still to run means no other
            // execution committed it (the violation was its own); its checkpoint stored means it did.
            const v = violated;
            violated = undefined;
            if (v.seq === seq && next.kind === 'step') throw new OwnViolation(v.error);
            if (state.checkpoints.has(v.seq)) logger.warn({ sequence_num: v.seq }, LOST_RACE);
          }
          if (next.kind !== 'step') return next;
          span = this.stepSpan(d, wf.steps[seq - 1]!, seq, this.attempt(d, seq));
          const runStep = () => this.runStep(tx, state!, wf, seq, this.attempt(d, seq), logger, control.abort, unread);
          return { kind: 'step' as const, ...(await otelContext.with(trace.setSpan(otelContext.active(), span), runStep)) };
        });
        if (done.kind === 'hand-back') return await this.handBack(control, logger, seq);
        if (done.kind === 'superseded') {
          logger.info({ job_retry: d.retry ?? 0, run_retry: state?.run.retry_count }, 'job of a run retried since it was added: it ends, the retry\'s job carries the run');
          return outcome;
        }
        if (done.kind !== 'step') {
          outcome.status = done.kind;
          return outcome;
        }
        // Committed: the job's view of the run moves on without reading it again.
        const step = wf.steps[seq - 1]!;
        await this.o.runtime.dispatchDeliveries(d.tenant_id, done.deliveries);
        const ms = performance.now() - started;
        state!.checkpoints.set(seq, { seq, step: step.name, status: done.waiting ? 'waiting' : 'completed', output: done.output });
        state!.run.status = done.runStatus;
        if (!done.waiting) state!.outputs[step.name] = done.output;
        for (const [at, value] of done.prefetched ?? []) state!.prefetched.set(at, value);
        // A first step's checkpoint tells the database's time of its transaction: the next steps' ctx.now.
        if (done.dbTime && done.dbTime > state!.dbTime) state!.dbTime = done.dbTime;
        unread = false;
        outcome.steps.push({ sequence_num: seq, step: step.name, status: done.waiting ? 'waiting' : 'completed', replayed: false, duration_ms: Math.round(ms * 100) / 100 });
        span?.setAttribute(ATTR.REPLAYED, false);
        span?.end();
        this.o.onStepDone?.({ workflow: wf.name, step: step.name, seconds: ms / 1000, replayed: false, status: done.waiting ? 'waiting' : 'completed' });
        logger.info({ step: step.name, sequence_num: seq, status: done.waiting ? 'waiting' : 'completed', attempt: this.attempt(d, seq) }, 'step checkpointed');
        if (done.waiting) {
          outcome.status = 'waiting';
          return outcome;
        }
        // The run's last step: no transaction needed to find out there is nothing left.
        if (seq === wf.steps.length) return outcome;
        seq++;
      } catch (e) {
        if (span) {
          if (isStaleStart(e)) span.addEvent(unread ? 'run no longer as its job was added; read it and went on' : 'run no longer active (cancelled or ended); read it again');
          else {
            // A database error as the run records it, by its SQLSTATE (PostgreSQL's message carries values).
            const err = coerceError(e);
            const dbError = sqlStateOf(err) ? recordedError(err) : undefined;
            span.recordException(dbError ? { name: dbError.code, message: dbError.message } : err);
            span.setStatus({ code: SpanStatusCode.ERROR, message: dbError?.message ?? err.message });
          }
          span.end();
        }
        if (control.abort?.aborted) {
          // Handed back at shutdown: the transaction rolled back and the job is already back in the queue.
          logger.info({ sequence_num: seq }, 'step aborted and handed back; another worker re-runs it from the last checkpoint');
          // An OwnViolation is not an Error: hand BullMQ the step's own error it carries.
          throw e instanceof OwnViolation ? e.error : e;
        }
        if (unread) {
          // Nothing of the step committed. The run moved since its job was added (ended, say), is not
          // the job's tenant's, or is not what the job carried (isStaleStart); or the step failed on
          // what the job carried, which must not decide the run's fate: read the run and go on from it
          // (running the step again on the stored run, whose own failure then counts).
          if (isStaleStart(e)) logger.info({ sequence_num: seq, err: (e as Error).message }, 'the run is no longer as its job carried it; reading it');
          else logger.warn({ sequence_num: seq, err: coerceError(e).message }, 'the first step failed before its run was read; reading the run and running the step again');
          state = undefined;
          unread = false;
          continue;
        }
        if (e instanceof OwnViolation) {
          // No other execution committed the step: its own statement violated a unique key (a domain
          // row's). It fails as any error does (its retry policy, then the run), instead of running
          // again and again as a lost race until the job gave up with the run left running.
          logger.warn({ sequence_num: seq }, "no other execution committed the step: the unique violation was the step's own, and it fails as any error does");
          await this.fail(job, wf, e.error, seq, logger, true);
          state = undefined;
          races++;
          continue;
        }
        if (isRunNoLongerActive(e)) {
          // The run was read, but its checkpoint found it no longer active (DX001: cancelled, or ended
          // elsewhere, since the job read it): nothing of the step committed. Read it again; an ended
          // run ends the job quietly (next() finds it so), without another step and without failing it.
          logger.info({ sequence_num: seq, err: (e as Error).message }, 'the run is no longer active; reading it');
          state = undefined;
          races++;
          continue;
        }
        if (!isUniqueViolation(e)) {
          // Throws, unless the step failed for good here while another execution of the job had
          // completed it: then the run is that execution's success, never failed, and this one goes on from it.
          const why = await this.fail(job, wf, e, state ? seq : ((e as NonDeterminismError).at ?? d.reached ?? seq), logger, state !== undefined);
          if (why === 'run-ended') {
            state = undefined;
            races++;
            continue;
          }
        }
        if (state && isUniqueViolation(e)) {
          // Not known yet whose the violation is: the run's next read tells (above), and the log says so then.
          logger.warn({ sequence_num: seq }, "the step's transaction violated a unique key; reading the run to tell a race lost to another execution from the step's own violation");
          violated = { seq, error: e };
        } else logger.warn({ sequence_num: seq }, LOST_RACE);
        state = undefined;
        unread = false;
        races++;
      }
    }
    throw new AppError('checkpoint_races', `run ${d.run_id}: lost the race for a step more often than the workflow has steps`, { retryable: true });
  }

  /**
   * The workflow version of the run a job added before jobs carried it names (one read, for such
   * jobs only); undefined when the run is not visible, which the run's read then reports.
   */
  private async storedVersion(em: EntityManager, d: StepJobData): Promise<number | undefined> {
    return (await this.storedRun(em, d))?.workflow_version;
  }

  /** The run's status, for a job whose workflow version this process lacks; undefined when the run is not visible. */
  private async storedStatus(em: EntityManager, d: StepJobData): Promise<string | undefined> {
    return (await this.storedRun(em, d))?.status;
  }

  private async storedRun(em: EntityManager, d: StepJobData): Promise<{ workflow_version: number; status: string } | undefined> {
    const [row] = await em.transactional((tx) =>
      tx.execute<{ workflow_version: number; status: string }[]>(`select workflow_version, status from durable_runs where tenant_id = ? and id = ?`, [d.tenant_id, d.run_id]),
    );
    return row;
  }

  /**
   * Whether a run with this id exists in any tenant: the system role's read of run ids (ADR 0003), for a
   * job whose run its tenant cannot see. True when that cannot be told: the job is then reported as the
   * security event it may be.
   */
  private async runExists(runId: string): Promise<boolean> {
    try {
      const rows = await systemEm(this.o.orm).transactional((tx) => tx.execute(`select 1 from durable_runs where id = ?`, [runId]));
      return rows.length > 0;
    } catch {
      return true;
    }
  }

  /**
   * Fails a job whose run its tenant cannot see, for good. A run deleted by run retention after it
   * ended (ADR 0011) is no security event: its job — a failed one retried from Bull Board, one left in
   * a queue no worker served — names a run of no tenant. A run of another tenant is one.
   */
  private async notVisible(d: StepJobData, log: Logger, reason: string): Promise<never> {
    if (!(await this.runExists(d.run_id))) {
      log.warn({ run_id: d.run_id }, 'job names a run that does not exist (deleted by run retention after it ended, or never created): the job fails');
      throw new UnrecoverableError(`run ${d.run_id} does not exist (deleted by run retention after it ended, or never created)`);
    }
    log.error({ security_event: 'run_not_visible', tenant_id: d.tenant_id, run_id: d.run_id }, 'job names a run its tenant cannot see');
    throw new UnrecoverableError(reason);
  }

  /**
   * Puts the job off: this process does not register the run's workflow version, another may (a
   * rolling deploy, workers kept to drain an old version). The run is never failed for it; the job
   * goes to `delayed` with a growing delay (no attempt spent) and any worker may take it then (ADR 0008).
   */
  private async defer(job: Job<StepJobData>, control: JobControl, logger: Logger, version: number | undefined): Promise<never> {
    const d = job.data;
    const deferrals = (d.deferrals ?? 0) + 1;
    const delayMs = deferDelayMs(deferrals);
    this.o.onDeferred?.({ workflow: d.workflow, version });
    logger.warn(
      { workflow: versionLabel(d.workflow, version), registered: this.o.runtime.workflows.labels(), deferrals, delay_ms: delayMs },
      'run of a workflow version this worker does not register: job put off for a worker that does',
    );
    if (!control.defer) throw new WorkflowVersionUnavailableError(d.workflow, version);
    await control.defer(delayMs, deferrals);
    throw new DelayedError();
  }

  /**
   * Fails the run of a job whose workflow version is retired for good, and the job with it: no worker
   * registers the version or will (ADR 0008, *Retiring a version*). Nothing of its steps runs; the run
   * records `workflow_version_retired` at the step its job was to run (its `run.failed` webhook with
   * it), and a retry of it is refused
   * with the same code, so its client submits it again. A run that ended meanwhile stays as it ended.
   */
  private async failRetired(job: Job<StepJobData>, logger: Logger, version: number): Promise<never> {
    const d = job.data;
    // Named as this worker's doing: the API may not declare the version retired (it may even start runs of it).
    const error = retiredByWorkerError(d.workflow, version, d.step, d.sequence_num);
    const deliveries: string[] = [];
    const failed = await tenantEm(this.o.orm, d.tenant_id).transactional((tx) => this.o.runtime.complete(tx, d.run_id, 'failed', { error }, deliveries));
    await this.o.runtime.dispatchDeliveries(d.tenant_id, deliveries);
    logger.error({ workflow: versionLabel(d.workflow, version), registered: this.o.runtime.workflows.labels(), run_failed: failed }, 'run of a workflow version this worker declares retired (WORKFLOW_VERSIONS_RETIRED): the run fails, its job with it; if the API still starts or retries runs of it, set the same WORKFLOW_VERSIONS_RETIRED on every process');
    throw new UnrecoverableError(`workflow ${versionLabel(d.workflow, version)} is retired: the run cannot be carried on`);
  }

  /** Steps from `seq` on whose checkpoint is completed are replayed (their stored outputs are in the state). */
  private replayCompleted(state: RunState, seq: number, outcome: JobOutcome, wf: WorkflowDef): number {
    for (let cp = state.checkpoints.get(seq); cp?.status === 'completed' && seq <= wf.steps.length; cp = state.checkpoints.get(++seq)) {
      if (outcome.steps.some((s) => s.sequence_num === seq)) continue;
      outcome.steps.push({ sequence_num: seq, step: cp.step, status: 'completed', replayed: true, duration_ms: 0 });
      this.o.onStepDone?.({ workflow: wf.name, step: cp.step, seconds: 0, replayed: true, status: 'completed' });
    }
    return seq;
  }

  private next(state: RunState, seq: number, wf: WorkflowDef, control: JobControl): Next {
    if (seq > wf.steps.length || !isActive(state.run.status)) return { kind: 'ended' };
    if (state.checkpoints.get(seq)?.status === 'waiting' || state.run.status === 'waiting') return { kind: 'waiting' };
    if (control.draining?.() && control.handBack) return { kind: 'hand-back' };
    return { kind: 'step', seq };
  }

  private stepSpan(d: StepJobData, step: StepDef, seq: number, attempt: number): Span {
    return tracer.startSpan(`step ${step.name}`, {
      attributes: {
        [ATTR.TENANT]: d.tenant_id,
        [ATTR.RUN]: d.run_id,
        [ATTR.STEP]: step.name,
        [ATTR.SEQUENCE]: seq,
        [ATTR.ATTEMPT]: attempt,
        [ATTR.CORRELATION]: d._correlation_id,
      },
    });
  }

  /** Runs one step and writes its checkpoint in the caller's transaction; the commit sends both. */
  private async runStep(tx: EntityManager, state: RunState, wf: WorkflowDef, seq: number, attempt: number, jobLogger: Logger, signal: AbortSignal | undefined, unread: boolean) {
    const step = wf.steps[seq - 1]!;
    const input = step.input.parse({ submission: state.run.input, outputs: state.outputs });
    // The step's logger is made when the step first logs (most steps never do; a pino child per step was ~1.5 % of a worker's CPU).
    let logger: Logger | undefined;
    const events: OutboxEvent[] = [];
    const ctx: StepContext = {
      em: tx,
      run: state.info,
      sequenceNum: seq,
      attempt,
      get logger() {
        return (logger ??= jobLogger.child({ step: step.name, sequence_num: seq }));
      },
      signal: signal ?? new AbortController().signal,
      wait: <O>(output: O): Waiting<O> => ({ [WAITING]: true, output }),
      emit: (type, data) => void events.push({ type, data }),
      prefetched: state.prefetched.has(seq) ? state.prefetched.get(seq) : undefined,
      now: state.dbTime,
      retired: (version) => this.o.runtime.workflows.retired(wf.name, version),
    };
    // The step's inserts are held and travel with its next statement: at the latest with the
    // checkpoint and the commit (ADR 0004).
    const produced = await untilAborted(
      // `async`: a step whose run throws before it returns a promise (not an async function) is marked too.
      holdingInserts(async () => step.run(input, ctx)).catch(markThrownByStep),
      signal,
    );
    const waiting = isWaiting(produced);
    const { output, json } = stored(step.name, step.output.parse(waiting ? produced.output : produced));
    await holdingInserts(() => tx.flush());
    let runStatus: RunRow['status'] = waiting ? 'waiting' : 'running';
    let runOutput: unknown;
    if (seq === wf.steps.length && !waiting) {
      const fin = wf.finish ? wf.finish({ ...state.outputs, [step.name]: output }) : { status: 'completed' as const, output };
      runStatus = fin.status;
      runOutput = fin.output;
    }
    const { prefetched, deliveries, dbTime } = await this.o.runtime.checkpoint(tx, {
      run: state.run,
      sequenceNum: seq,
      stepName: step.name,
      status: waiting ? 'waiting' : 'completed',
      output,
      outputJson: json,
      attempt,
      runStatus,
      runOutput,
      // A waiting run has no holder: the job that carries it on names its own holder only by a commit, and
      // a crash before it is then counted rather than taken for a lapse of this worker's (ADR 0016, amendment).
      leaseOwner: waiting ? undefined : this.o.workerId,
      leaseMs: this.o.leaseMs,
      // The last statement before commit: it travels with the commit (one round trip for both).
      beforeCommit: true,
      // The run row changes only with its status (first step, a wait, the end): the checkpoints are
      // the live progress, and skipping the row's update saves about a fifth of a step's PostgreSQL time.
      moveRun: runStatus !== state.run.status,
      // Webhook deliveries (ADR 0013): the step's events, and the run's own when it ends, inserted by this statement.
      events,
      ...(runOutput !== undefined && wf.eventData ? { eventData: wf.eventData(runOutput) } : {}),
      // Not read in this transaction: the checkpoint checks the run, and brings the later steps' prefetches.
      ...(unread ? { expect: { run: state.run, prefetch: wf.steps.flatMap((s, i) => (s.prefetch && i + 1 > seq ? [{ seq: i + 1, sql: s.prefetch }] : [])) } } : {}),
    });
    return { waiting, output, runStatus, prefetched, deliveries, dbTime };
  }

  /**
   * The holder of a run carried on past step 1 by a job that reads it — after a wait (an approval
   * decision, an SLA timer: a wait clears `lease_owner`), or a retry (ADR 0009 clears it too) — as
   * a first delivery's is: this worker, from the moment it picks the run up. Without it such a run had
   * no holder on record until its next status-moving commit (for the golden path, its end), and a stall
   * of a live worker's delivery counted as a crash (ADR 0016, amendment). A prelude (coalescing-client.ts):
   * its own short transaction, committed asynchronously, sent in the same message as the job's first read
   * of the run, so it costs no round trip; it writes only a `running` run of the job's generation whose
   * holder is not this worker already (a run taken over after a stall is: countCrash named it). A holder
   * left by another worker is replaced, not kept: the worker whose job Redis lost (the sweeper's job then
   * carries the run), that handed its job back at shutdown, or whose attempt failed before this retry, is
   * not the one executing the step now — kept, a stall of this live worker counted as a crash when that
   * one was gone, and a death of this one was not counted while that one lived. Never sent for a job from
   * step 1 (a class A run's, whose first step's commit names its holder).
   */
  private holderPrelude(em: EntityManager, d: StepJobData): Prelude {
    const platform = em.getPlatform();
    const settingsSql = 'select set_config(?, ?, true), set_config(?, ?, true)';
    const settings = [TENANT_SETTING, d.tenant_id.toLowerCase(), 'synchronous_commit', 'off'];
    // `status || ''` keeps the row found by its key, never through the partial index of active runs (ADR 0004).
    const claimSql = `update durable_runs set lease_owner = ?, lease_expires_at = now() + ? * interval '1 millisecond'
        where tenant_id = ? and id = ? and lease_owner is distinct from ? and (status || '') = 'running' and retry_count = ?`;
    const claimParams = [this.o.workerId, this.o.leaseMs, d.tenant_id, d.run_id, this.o.workerId, d.retry ?? 0];
    const bound = [bindParameters(settingsSql, settings, platform), bindParameters(claimSql, claimParams, platform)];
    const sql = bound.every((b) => b !== undefined) ? bound : `${platform.formatQuery(settingsSql, settings)};\n${platform.formatQuery(claimSql, claimParams)}`;
    return new Prelude(sql, 2);
  }

  /** Ends the job between steps at shutdown: back to `wait`, so another worker goes on from the last checkpoint. */
  private async handBack(control: JobControl, logger: Logger, seq: number): Promise<never> {
    await control.handBack!();
    logger.info({ sequence_num: seq }, 'worker stopping: job handed back before its next step');
    throw new WaitingError();
  }

  /**
   * A delivery that follows a stall (BullMQ's stalled check found the job's lock lapsed) counts a crash
   * of the step the run is at, its first without a completed checkpoint, in PostgreSQL, if the worker
   * that held the job died (SIGKILL, OOM, a crash in native code): `crash_count` goes up while
   * `crash_seq` stays that step, and starts again at 1 on another step. The holder is the run's
   * `lease_owner` (written by the commit that moves the run's status — its first step; a wait clears
   * it —, by the job that picks a run up again past step 1, after a wait or a retry (holderPrelude),
   * and by this statement: the delivery that takes the job over after a stall is its holder from
   * then on); it is alive when it still has a connection open
   * to Redis (`connectedWorkers`). A holder alive is a lock that lapsed — its event loop blocked past
   * the lock, a GC pause, a starved CPU, Redis out of its reach — and is not counted (ADR 0016,
   * amendment); a holder unknown (no step committed yet, the worker list out of reach) counts. The
   * statement commits on its own before the step runs again (its transaction would die with the next
   * crash): one round trip, and one CLIENT LIST, on re-deliveries after a stall only — a first
   * delivery, a retry after a failed attempt, a job handed back at shutdown, parked or put off costs
   * nothing (`stalledCounter` moves only on a stall; the job records the stalls it has counted). At
   * `maxCrashes` the step is not run again: the run fails as for any permanent step error
   * (`step_crashed_worker`, the `run.failed` webhook, `dealix_step_failures_total{outcome="failed"}`)
   * and may be retried (ADR 0009, 0016): this throws, and the job fails for good. Otherwise the job goes
   * on as usual.
   */
  private async countCrash(job: Job<StepJobData>, wf: WorkflowDef, logger: Logger): Promise<void> {
    const d = job.data;
    const stalls = job.stalledCounter ?? 0;
    if (stalls <= (d.stalls ?? 0)) return;
    const alive = this.o.connectedWorkers
      ? await this.o.connectedWorkers().catch((le: unknown) => {
          logger.warn({ err: le }, 'could not list the live workers: the stall counts as a crash');
          return undefined;
        })
      : undefined;
    // Holders found alive at earlier stalls (their lock lapsed), gone since: if the run is still at the
    // step they lapsed in (their execution never committed it), they died in it — a GC thrash before an
    // OOM kill, a block then a crash in native code. Each re-delivery of such a step finds the holder it
    // takes over from still alive, so without them no death would ever be counted. A stall counts one
    // crash however many deaths it learns of (as many as STEP_MAX_CRASHES stalls fail the run, as before).
    const gone = d.lapsed && alive ? d.lapsed.holders.filter((w) => !alive.has(w)) : [];
    const counted = tenantEm(this.o.orm, d.tenant_id).transactional((tx) =>
      tx.execute<{ seq: number; crashes: number; holder: string | null; alive: boolean; counts: boolean }[]>(
        // `status || ''` keeps the row found by its key (ADR 0004); a waiting or ended run has no step running to count.
        `${LAST_IN_TRANSACTION}with n as (select count(*)::int + 1 as seq from durable_checkpoints where tenant_id = ? and run_id = ? and status = 'completed'),
              h as (select lease_owner as holder, coalesce(lease_owner in (select jsonb_array_elements_text(?::jsonb)), false) as alive from durable_runs where tenant_id = ? and id = ?),
              c as (select h.holder, h.alive, not h.alive or coalesce(n.seq = ?::int and ?::int > 0, false) as counts from h, n)
         update durable_runs set
             crash_count = case when not c.counts then crash_count when crash_seq = n.seq then crash_count + 1 else 1 end,
             crash_seq = case when c.counts then n.seq else crash_seq end,
             lease_owner = ?, lease_expires_at = now() + ? * interval '1 millisecond'
           from n, c where tenant_id = ? and id = ? and (status || '') in ('pending', 'running') and retry_count = ?
         returning n.seq, crash_count as crashes, c.holder, c.alive, c.counts`,
        [d.tenant_id, d.run_id, JSON.stringify([...(alive ?? [])]), d.tenant_id, d.run_id, d.lapsed?.seq ?? null, gone.length,
          this.o.workerId, this.o.leaseMs, d.tenant_id, d.run_id, d.retry ?? 0],
      ),
    );
    // Not counted (the database unreachable, say): the job goes on, and its step meets the same database
    // on the usual path; the stall stays uncounted in the job, so its next delivery counts it.
    const rows = await counted.catch((ce: unknown) => {
      logger.warn({ err: ce }, 'could not count the crash of the run\'s step; the job goes on');
      return undefined;
    });
    if (!rows) return;
    // Counted: a crash of this job's re-delivery is counted by the next one (its stalledCounter is higher again).
    const row = rows[0];
    // The holders still alive at the run's step, this stall's if alive: the next stalls look for them again.
    const holders = row && d.lapsed?.seq === row.seq ? d.lapsed.holders.filter((w) => !gone.includes(w)) : [];
    if (row?.alive && row.holder && !holders.includes(row.holder)) holders.push(row.holder);
    const lapsed = row && holders.length ? { seq: row.seq, holders: holders.slice(-MAX_LAPSED_HOLDERS) } : undefined;
    await job.updateData({ ...job.data, stalls, lapsed }).catch((ue) => logger.warn({ err: ue }, 'could not record the stall counted; a later delivery may count it again'));
    if (!row || row.seq > wf.steps.length) return;
    const step = wf.steps[row.seq - 1]!;
    const limit = this.o.maxCrashes ?? DEFAULT_MAX_CRASHES;
    const log = logger.child({ sequence_num: row.seq, step: step.name });
    if (!row.counts) {
      log.warn({ holder: row.holder, crashes: row.crashes, max_crashes: limit, stalls }, 'run job delivered again after its lock lapsed while its worker was alive: not counted as a crash');
      return;
    }
    if (row.crashes < limit) {
      log.warn({ holder: row.holder, ...(gone.length && d.lapsed?.seq === row.seq ? { lapsed_gone: gone } : {}), crashes: row.crashes, max_crashes: limit, stalls }, 'run job delivered again after its worker was lost mid-step; the step runs again from the last checkpoint');
      return;
    }
    log.error({ holder: row.holder, crashes: row.crashes, max_crashes: limit }, 'step lost its worker too often: it is not run again, the run fails');
    // Returns only when the step completed elsewhere (a stalled execution that was in fact alive committed
    // it) or the run ended meanwhile: the job then goes on as usual, reading the run.
    await this.fail(job, wf, new StepCrashedWorkerError(step.name, row.seq, row.crashes, limit), row.seq, logger, true);
  }

  /** The attempt of step `seq` within this job: each step keeps its own retry budget. */
  private attempt(d: StepJobData, seq: number): number {
    return (d.failures?.[String(seq)] ?? 0) + 1;
  }

  /**
   * Fails the step (and, past its attempts, the run) by throwing; returns only when the step itself
   * failed (`stepRan`: the run was read, the error is the step's or its checkpoint's, not the run's
   * reading, such as non-determinism) while another execution of the job had completed it, or for
   * good after its run had ended (cancelled): the job then reads the run again and ends quietly.
   */
  private async fail(job: Job<StepJobData>, wf: WorkflowDef, e: unknown, seq: number, logger: Logger, stepRan = false): Promise<'completed-elsewhere' | 'run-ended'> {
    const d = job.data;
    const err = coerceError(e);
    // What BullMQ keeps of the error (the job's failedReason in Bull Board, the `job failed` event of its
    // span, which goes to the collector): a database error by its SQLSTATE, as the run records it, never
    // PostgreSQL's message, which quotes values. The worker's log below keeps the message.
    const reason = sqlStateOf(err) ? recordedError(err).message : err.message;
    const step = wf.steps[seq - 1];
    const log = logger.child({ sequence_num: seq, step: step?.name ?? d.step });
    if (e instanceof RunNotVisibleError) return this.notVisible(d, log, reason);
    const attempt = this.attempt(d, seq);
    const permanent = e instanceof ZodError || (e instanceof AppError && !e.retryable) || e instanceof UnrecoverableError;
    const lastAttempt = attempt >= (step ? retryOf(step).attempts : 1);
    const failed = (outcome: 'retrying' | 'failed' | 'infrastructure') => this.o.onStepFailed?.({ workflow: wf.name, step: step?.name ?? d.step, outcome });
    // The platform's database or Redis unreachable: the executor's own reads and writes of the run, or
    // the step's, by who raised the error. A step's own call out that cannot connect (a partner's API,
    // a dead host) is the step's failure like any other: left to the sweeper, its run would loop for ever.
    const unreachable = isConnectivityError(e) && (!thrownByStep.has(e as object) || isBackendUnavailable(e));
    // No step ran (the job could not read the run): a statement or lock timeout there (57014, 55P03) is the
    // database busy — a lock held past DATABASE_STATEMENT_TIMEOUT — not the run's fault. Failing the run
    // for it would end a run that a leftover job (a replayed submission's ensureEnqueued, a retry from
    // Bull Board) merely read, a waiting one's approval request withdrawn with it: the run stays as it is.
    const unreadable = !stepRan && isDatabaseTimeout(e);
    // What the run fails with: the error, or, for a run its jobs could not read too often, infrastructure_exhausted.
    let failure: Error = err;
    if (!permanent && lastAttempt && (unreachable || unreadable)) {
      // A run that stays active is re-enqueued by the sweeper with its attempts afresh: its jobs that
      // ended unable to read it are counted with it, and past its step's attempts of them it fails.
      const exhausted = unreadable && !unreachable ? await this.countReadTimeout(job, wf, seq, err, log) : undefined;
      if (!exhausted) {
        // Not the step's fault (the database was unreachable, or too busy to read the run): the run stays
        // as it is in Postgres, and the sweeper re-enqueues an incomplete one once the job has failed here.
        failed('infrastructure');
        if (unreachable) log.error({ err, attempt }, 'step kept failing on infrastructure; the run stays incomplete for the sweeper');
        else log.error({ err, attempt }, 'the run could not be read: the database kept timing out; the run stays as it is (an active one for the sweeper)');
        throw new UnrecoverableError(reason);
      }
      log.error({ err, attempt, read_timeout_jobs: exhausted.jobs }, 'the run could not be read by as many of its jobs as its step has attempts: the run fails (infrastructure_exhausted)');
      failure = exhausted;
    }
    if (permanent || lastAttempt) {
      const recorded = await this.recordFailure(d, wf, seq, step?.name ?? d.step, failure, attempt, stepRan, log);
      if (failure !== err && recorded !== 'failed' && recorded !== 'unrecorded') {
        // infrastructure_exhausted, but the run is no longer at the job's step (another execution committed
        // it, or its wait), ended or was retried since the job counted: the run stays as it is. Not back to
        // the read either: it would meet the same timeout and count this job's end again.
        failed('infrastructure');
        log.warn({ err: err.message, recorded }, 'the run could not be read, but it moved on, ended or was retried since: it stays as it is, the job ends');
        throw new UnrecoverableError(reason);
      }
      if (recorded === 'unrecorded') {
        failed('infrastructure');
        log.error({ err, permanent }, 'step failed for good, but its failure could not be recorded (the database unreachable or timing out, or the record refused even with a fixed error); the run stays incomplete for the sweeper');
        throw new UnrecoverableError(reason);
      }
      if (recorded === 'superseded') {
        // The run was retried after this job read it (ADR 0009): its failure is not the retried run's.
        log.info({ err: err.message, permanent, job_retry: d.retry ?? 0 }, 'step failed for good, but its run was retried since this job read it: the retry\'s job carries the run');
        return 'run-ended';
      }
      if (recorded === 'run-ended') {
        // The run ended meanwhile (an API client cancelled it): it stays as it ended, and the job ends
        // quietly once it has read the run again, like a job that finds it ended when it starts.
        log.info({ err: err.message, permanent }, 'step failed for good, but the run had already ended (cancelled): it stays so');
        return 'run-ended';
      }
      if (recorded === 'completed-elsewhere') {
        log.warn({ err: err.message, permanent }, 'step failed here, but another execution of the job had completed it (or committed its wait): the run goes on');
        return 'completed-elsewhere';
      }
      failed('failed');
      log.error({ err, permanent }, 'step failed for good; the run fails');
      throw new UnrecoverableError(reason);
    }
    // BullMQ retries the job with backoff; the next attempt replays the completed steps and retries this one.
    // Its park record goes (unparked): parked again on its retry, it queues behind the jobs parked since (ADR 0012).
    await job.updateData({ ...unparked(d), failures: { ...d.failures, [String(seq)]: attempt }, reached: seq }).catch((ue) => log.warn({ err: ue }, 'could not count the failed attempt'));
    failed('retrying');
    log.warn({ err: err.message, attempt }, 'step failed; BullMQ retries it with backoff');
    throw reason === err.message ? err : new Error(reason);
  }

  /**
   * Counts, with its run, a job that ends having never read it (every attempt met a statement or lock
   * timeout): its own statement, committed at once. A pending or running run of the job's generation
   * only — a waiting run's leftover job is never re-enqueued by the sweeper, and must not fail it. The
   * count is of the step the job was at (`seq`: the sweeper adds a job at the run's first incomplete
   * step): a job at a later step than those counted — the run moved on meanwhile, its row untouched by
   * steps that leave its status as it was — starts it afresh at 1, so timeouts at different steps over
   * the run's life never add up to a failure; one at an earlier step (a leftover) adds to it. Returns
   * the error to fail the run with once the step's jobs have ended so as often as it has attempts (the
   * step's budget, spent across the jobs the sweeper adds, whose own attempts start afresh); undefined
   * while it has attempts left, and when the count could not be written (the run's row as busy as its
   * read): nothing could fail the run then either, and the next job's end counts.
   *
   * One job's end at a step counts once (`readTimeoutKey`, kept in `read_timeout_keys`): two executions of the job
   * at once (a stalled job re-delivered while its first worker still runs it) both end here, and the
   * count sent again after its answer was lost finds itself counted. Either leaves the count as it is and
   * answers it, so the run fails (or not) as for the first; counted twice, one job spent two of the step's
   * attempts and failed its run a job early.
   */
  private async countReadTimeout(job: Job<StepJobData>, wf: WorkflowDef, seq: number, err: Error, log: Logger): Promise<InfrastructureExhaustedError | undefined> {
    const d = job.data;
    const step = wf.steps[seq - 1];
    if (!step) return undefined;
    const key = readTimeoutKey(job, seq);
    const rows = await tenantEm(this.o.orm, d.tenant_id)
      .transactional((tx) =>
        tx.execute<{ jobs: number }[]>(
          // `status || ''` keeps the row found by its key (ADR 0004). `read_timeout_seq >= ?` is null
          // (a count afresh) while none was counted; greatest() ignores the null. `? = any(read_timeout_keys)`
          // (null while none is kept) is the job's end counted already: the row stays as it is. SET reads the
          // row as it was, and a concurrent execution's count, waited for on the row's lock, is seen (read committed).
          `${LAST_IN_TRANSACTION}update durable_runs set
              read_timeout_jobs = case when ?::text = any(read_timeout_keys) then read_timeout_jobs when read_timeout_seq >= ?::int then read_timeout_jobs + 1 else 1 end,
              read_timeout_seq = case when ?::text = any(read_timeout_keys) then read_timeout_seq else greatest(read_timeout_seq, ?::int) end,
              read_timeout_keys = case when ?::text = any(read_timeout_keys) then read_timeout_keys else (array[?::text] || read_timeout_keys)[1:${READ_TIMEOUT_KEYS_MAX}] end
            where tenant_id = ? and id = ? and (status || '') in ('pending', 'running') and retry_count = ?
           returning read_timeout_jobs as jobs`,
          [key, seq, key, seq, key, key, d.tenant_id, d.run_id, d.retry ?? 0],
        ),
      )
      .catch((ce: unknown) => {
        log.warn({ err: ce }, 'could not count the job that could not read its run; the next such job counts');
        return undefined;
      });
    const jobs = rows?.[0]?.jobs;
    if (jobs === undefined) return undefined;
    const budget = retryOf(step).attempts;
    if (jobs < budget) {
      log.warn({ read_timeout_jobs: jobs, budget }, 'job ends unable to read its run: counted with the run, which stays as it is while its step has attempts left');
      return undefined;
    }
    return new InfrastructureExhaustedError(step.name, seq, jobs, sqlStateOf(err) ?? 'unknown');
  }

  /**
   * Records the step's failure and fails the run, in one transaction. With `stepRan` (or for
   * `infrastructure_exhausted`, counted in a transaction of its own: another execution may have moved
   * the run on since), `completed-elsewhere` (nothing written) when the step's checkpoint is already
   * completed, or waiting: another execution of the job committed it (a wait too: its request and SLA timer stay);
   * `run-ended` when the run had ended (cancelled) and stays so; `superseded` (nothing written) when
   * the run was retried since the job was added: a job of an earlier generation that read the run
   * before the retry must not fail the retried run. After the commit, what the workflow's `onFailed`
   * left for then (the SLA timer's removal) is done.
   *
   * `onFailed` runs in a savepoint of its own (a nested transaction): a hook that throws — a bug in the
   * workflow, data it cannot handle, every time — is rolled back alone, and the failure (checkpoint, run
   * `failed`, its `run.failed` deliveries) still commits, the hook's error recorded as the run's
   * `error.on_failed_error`, logged and counted (onFailedHookFailed). Rolled back with the whole failure,
   * it left the run active for the sweeper to run its step, and its calls out, again every sweep, for
   * ever. What the hook would have closed stays as it was (a pending approval request: docs/runtime.md).
   * A hook that meets the platform's own database unreachable or timing out (isBackendUnavailable,
   * isBackendTimeout: told by who raised the error, never by its text) rejects the whole failure:
   * nothing commits, recordFailure answers `unrecorded`, and the sweeper tries again once the database is well.
   */
  private async markFailed(d: StepJobData, wf: WorkflowDef, seq: number, stepName: string, err: Error, attempt: number, stepRan: boolean, log: Logger): Promise<'failed' | 'completed-elsewhere' | 'run-ended' | 'superseded'> {
    const em = tenantEm(this.o.orm, d.tenant_id);
    const error = recordedError(err);
    // The run's failure stands only at the step it is at: the step ran here, or the run was counted there.
    const atStep = stepRan || err instanceof InfrastructureExhaustedError;
    // The run's `run.failed` deliveries, inserted with its failure (ADR 0013); enqueued after the commit.
    const deliveries: string[] = [];
    let release: (() => Promise<void>) | undefined;
    // The hook's own error, as the run records it, when it threw and was rolled back alone.
    let hookError: { error: unknown; recorded: { code: string; message: string } } | undefined;
    const outcome = await em.transactional(async (tx) => {
      // `for key share`, the lock the checkpoint's foreign key takes anyway: a retry in progress (it holds
      // the row `for update`) is waited for, and then its generation is seen. Failure path only.
      const [run] = await tx.execute<{ retry_count: number }[]>(`select retry_count from durable_runs where id = ? for key share`, [d.run_id]);
      if (run && run.retry_count !== (d.retry ?? 0)) return 'superseded';
      // A step that ran and failed finds its checkpoint `completed` or `waiting` only when another
      // execution of the job (a stalled job's re-delivery) committed the step meanwhile — a wait too:
      // the approval step's request, its timer and the run waiting for a human. That is the step's
      // outcome and stays; this failure is the losing execution's. A failure to read the run (non-
      // determinism, `stepRan` false) still overwrites a `waiting` one and fails the run.
      const written = await tx.execute<{ id: string }[]>(
        `insert into durable_checkpoints (id, tenant_id, run_id, sequence_num, step_name, status, error, attempt, created_at, updated_at)
         values (gen_random_uuid(), ?, ?, ?, ?, 'failed', ?::jsonb, ?, now(), now())
         on conflict (tenant_id, run_id, sequence_num) do update set status = 'failed', error = excluded.error, attempt = excluded.attempt, updated_at = now()
         where durable_checkpoints.status <> 'completed'${atStep ? ` and durable_checkpoints.status <> 'waiting'` : ''}
         returning id`,
        [d.tenant_id, d.run_id, seq, stepName, JSON.stringify(error), attempt],
      );
      if (written.length === 0 && atStep) return 'completed-elsewhere';
      const extra =
        err instanceof StepCrashedWorkerError ? { crashes: err.crashes } : err instanceof InfrastructureExhaustedError ? { sqlstate: err.sqlstate, read_timeout_jobs: err.jobs } : {};
      const runError = { ...error, step: stepName, sequence_num: seq, ...extra };
      let failed: boolean;
      if (!wf.onFailed) failed = await this.o.runtime.complete(tx, d.run_id, 'failed', { error: runError }, deliveries);
      else {
        // What the run left open while it waited (a pending approval request) closes with it.
        const closed = await this.failAndClose(tx, wf.onFailed, d, runError);
        ({ failed, release, hookError } = closed);
        deliveries.push(...closed.deliveries);
      }
      // Only a step's own failure: a failure to read the run (non-determinism, say) would recur on the re-read.
      return failed || !atStep ? ('failed' as const) : ('run-ended' as const);
    });
    await this.o.runtime.dispatchDeliveries(d.tenant_id, deliveries);
    // Only once the failure has committed (a rollback keeps the run waiting, and its timer with it).
    // Best-effort, as a cancel's: a timer left behind finds its request closed when it fires.
    await release?.().catch((re: unknown) => log.warn({ err: re }, 'could not remove what the failed run left (its SLA timer); it finds the request closed when it fires'));
    if (hookError) {
      this.o.onFailedHookFailed?.({ workflow: wf.name });
      log.error(
        { err: hookError.error, on_failed_error: hookError.recorded, workflow: wf.name },
        "the workflow's onFailed threw: its writes rolled back alone, the run failed all the same (error.on_failed_error); what it would have closed (a pending approval request) stays open",
      );
    }
    return outcome;
  }

  /**
   * Fails the run (runtime.complete) and calls the workflow's `onFailed`, both in a savepoint of the
   * failure's transaction `tx` (markFailed), and returns what the hook leaves for after the commit and the
   * run's `run.failed` deliveries. When the hook threw, the savepoint is rolled back — the run's end with
   * it: an ended run's row is never written again (durable_runs_ended_is_history) — and the run fails
   * anew without the hook, its error with the hook's (as recordedError makes it storable: a database
   * error by its SQLSTATE) as `on_failed_error`, which is returned too. The platform's database
   * unreachable or timing out under the hook rejects, and the whole failure with it.
   */
  private async failAndClose(
    tx: EntityManager,
    onFailed: NonNullable<WorkflowDef['onFailed']>,
    d: StepJobData,
    runError: Record<string, unknown>,
  ): Promise<{ failed: boolean; release?: () => Promise<void>; deliveries: string[]; hookError?: { error: unknown; recorded: { code: string; message: string } } }> {
    let inHook = false;
    try {
      return await tx.transactional(async (sub) => {
        const deliveries: string[] = [];
        const failed = await this.o.runtime.complete(sub, d.run_id, 'failed', { error: runError }, deliveries);
        inHook = failed;
        const release = failed ? await onFailed(sub, { tenantId: d.tenant_id, runId: d.run_id }) : undefined;
        return { failed, deliveries, ...(release ? { release } : {}) };
      });
    } catch (he) {
      if (!inHook || isBackendUnavailable(he) || isBackendTimeout(he)) throw he;
      const recorded = recordedError(coerceError(he));
      const deliveries: string[] = [];
      const failed = await this.o.runtime.complete(tx, d.run_id, 'failed', { error: { ...runError, on_failed_error: recorded } }, deliveries);
      // Recorded only when this end committed the run's failure with it (another writer may have ended it meanwhile).
      return { failed, deliveries, ...(failed ? { hookError: { error: he, recorded } } : {}) };
    }
  }

  /**
   * markFailed, and what fail() goes on from when it rejects: `unrecorded` when nothing of the failure
   * committed because the database is unreachable now (a step's call out failed while it was down too)
   * or too busy to write the run (its row or table locked past the statement timeout), under the
   * workflow's onFailed too — the run stays incomplete, and the sweeper re-enqueues it once PostgreSQL
   * is back. An onFailed that throws otherwise is no rejection: markFailed rolls it back alone and the
   * run fails (failAndClose). Any other rejection (the transaction refused what it wrote: an error text
   * jsonb cannot hold that recordedError missed) is tried once more with a fixed error
   * (step_error_unrecordable), so the run still fails instead of staying active for the sweeper to run its step, and its calls out, again
   * every sweep. When that fails too, nothing committed: `unrecorded`, never `failed`.
   */
  private async recordFailure(d: StepJobData, wf: WorkflowDef, seq: number, stepName: string, err: Error, attempt: number, stepRan: boolean, log: Logger): Promise<'failed' | 'completed-elsewhere' | 'run-ended' | 'superseded' | 'unrecorded'> {
    const unavailable = (me: unknown) => isConnectivityError(me) || isDatabaseTimeout(me);
    try {
      return await this.markFailed(d, wf, seq, stepName, err, attempt, stepRan, log);
    } catch (me) {
      log.error({ err: me }, 'could not record the failure');
      if (unavailable(me)) return 'unrecorded';
    }
    const { code, message } = unrecordableError();
    const fixed = new AppError(code, message, { retryable: false });
    try {
      // At the step as the first try was (an infrastructure_exhausted failure is recorded there too).
      return await this.markFailed(d, wf, seq, stepName, fixed, attempt, stepRan || err instanceof InfrastructureExhaustedError, log);
    } catch (me) {
      log.error({ err: me }, 'could not record the failure with a fixed error either: nothing of it committed, the run stays incomplete for the sweeper');
      return 'unrecorded';
    }
  }
}
