/**
 * Glossary of the durable runtime
 * - run: one execution of a workflow for one tenant (durable_runs), unique per (tenant, idempotency hash).
 * - step: a named unit of work with zod input and output schemas; its name is a persisted identifier:
 *   never rename one under runs in flight; register the changed workflow as a new `version` beside the
 *   old one (docs/runtime.md, "Changing a workflow"): a run is finished by the version it started with.
 * - sequence_num: the 1-based position of a step in its workflow; the checkpoint key with the run.
 * - checkpoint: the stored outcome of one step of one run (durable_checkpoints), written in the same
 *   transaction as the step's effects. A completed checkpoint is never executed again: its output replays.
 * - run job: one BullMQ job that carries a run from one step through the following ones, one transaction
 *   and one checkpoint per step, until a step waits or the run ends (ADR 0005). Its id derives from the
 *   submission's idempotency hash and the step it starts at.
 * - resume: continuing a run from its last completed sequence_num (after a crash, a wait or a flush).
 * - sweeper: the periodic job that finds runs incomplete in Postgres with no live job in Redis and
 *   re-enqueues their remaining steps.
 */
import type { EntityManager } from '@mikro-orm/postgresql';
import type { ZodType } from 'zod';
import type { Logger } from 'pino';

export interface RetryPolicy {
  /** Total attempts including the first. */
  attempts: number;
  /** Base delay of the exponential backoff, in ms. */
  backoffMs: number;
  /** 0..1 random spread applied to each delay, so retries of many runs do not stampede. */
  jitter: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 5, backoffMs: 500, jitter: 0.5 };

export interface RunInfo {
  id: string;
  tenantId: string;
  workflow: string;
  workflowVersion: number;
  principal: string;
  correlationId: string;
  idempotencyHash: string;
  createdAt: Date;
}

/** The run a workflow's submission guard (`admitSubmission`) judges: just created, in the submission's transaction. */
export interface SubmissionRun {
  tenantId: string;
  runId: string;
  /** Whether `version` of the workflow is declared retired for good (WORKFLOW_VERSIONS_RETIRED). */
  retired(version: number): boolean;
}

export interface StepContext {
  /**
   * Tenant-bound entity manager inside the step's transaction: domain writes commit with the checkpoint.
   * `insertRow(em, Entity, row)` (platform/db/insert-row.ts) for append-only rows is the cheap path: like `em.insert`, its statement is held and sent with the step's
   * next one (at the latest the checkpoint and commit); `em.create` rows are flushed by the executor.
   */
  em: EntityManager;
  run: RunInfo;
  sequenceNum: number;
  attempt: number;
  logger: Logger;
  /**
   * Aborted when the worker hands the job back at shutdown: the step's transaction is rolled back
   * regardless, so a long step may watch this to stop its own work early.
   */
  signal: AbortSignal;
  /** Mark this step as waiting (e.g. for a human): its checkpoint is `waiting` and the run pauses. */
  wait<O>(output: O): Waiting<O>;
  /**
   * Emits a webhook event (e.g. `approval.requested`): its deliveries, one per endpoint of the tenant
   * subscribed to it, are inserted by the step's checkpoint statement, so they commit exactly when
   * the step does (the outbox, ADR 0013), and are sent after the commit.
   */
  emit(type: string, data: Record<string, unknown>): void;
  /**
   * What the step's `prefetch` read, with the run's state when the run job started (JSON, or null
   * when it found nothing); undefined when the step declares no prefetch.
   */
  prefetched: unknown;
  /**
   * The database's time, as this run job last read it, to the millisecond: what a step stamps its rows
   * and outputs with, never this worker's clock (which may be off by a day: docs/runtime.md, *The step
   * algorithm*). The `now()` of the job's read of its run (the first transaction of the job), or of a
   * new run's first step's checkpoint for the steps after it; for that first step itself (run from what
   * its job carries, before any read) the run's `created_at`. Never before the run's creation, nor
   * before anything committed before the job read the run (a human decision it carries on from), nor
   * after the step's own commit; no round trip of its own. To the millisecond, down: a human decision
   * keeps its microseconds (their order), so one recorded in the same millisecond as the read reads in
   * SQL up to 1 ms after it (rounding up instead would put every stamp after its own step's
   * `completed_at`, the same transaction's now()); to the millisecond, as a Date and an ISO string show
   * both, never after. Fixed for the step's execution: a step that runs again (its transaction rolled
   * back) may get a later one.
   */
  now: Date;
  /**
   * Whether `version` of this run's workflow is declared retired for good (WORKFLOW_VERSIONS_RETIRED,
   * ADR 0008): a run of it can never be carried on, nor retried. For a step that judges other runs of
   * its workflow (partner offboarding's freeze-partner: a failed run of such a version holds nothing).
   */
  retired(version: number): boolean;
}

export const WAITING = Symbol('dealix.waiting');
export interface Waiting<O> {
  [WAITING]: true;
  output: O;
}
export function isWaiting(v: unknown): v is Waiting<unknown> {
  return typeof v === 'object' && v !== null && WAITING in v;
}

export interface StepDef<I = any, O = any> {
  name: string;
  /** Validates what the runtime hands the step: { submission, outputs: { [stepName]: output } }. */
  input: ZodType<I>;
  /** Validates the output on write; on read, each later step's `input` validates the outputs it uses. */
  output: ZodType<O>;
  retry?: Partial<RetryPolicy>;
  /** True when the step may return ctx.wait(): a run job that reaches it may end there. */
  mayWait?: boolean;
  /**
   * A read the step needs, fetched with the run's state in the first transaction of the run job
   * instead of in the step's own (one round trip less per run): a scalar SQL subquery returning
   * JSON, where `r` is the run's row; the tenant's row-level security applies. It reads what was
   * there when the job started, a few steps earlier; a job started after this step never fetches it.
   */
  prefetch?: string;
  /**
   * True when the step's only effects are its writes through `ctx.em` (nothing outside its
   * transaction: no HTTP call, no message, no timer). As a workflow's first step it may then run
   * before its run is read, from what a new run's job carries: the checkpoint checks the stored run
   * and commits nothing if it is not as carried, so such a run of the step leaves no trace
   * (ADR 0004). A first step without it always reads its run first.
   */
  effectsInTransaction?: boolean;
  run(input: I, ctx: StepContext): Promise<O | Waiting<O>>;
}

export function defineStep<I, O>(def: StepDef<I, O>): StepDef<I, O> {
  if (!/^[a-z][a-z0-9-]{0,63}$/.test(def.name)) throw new Error(`step name "${def.name}" must be kebab-case`);
  return def;
}

export interface WorkflowDef<In = any> {
  name: string;
  /**
   * A positive integer. A process may register several versions of one name (registry.ts): each run
   * stores the version it started with and is carried on by exactly that version's definition.
   */
  version: number;
  /**
   * New runs of this name start on this version instead of the newest registered one (e.g. while a
   * newer version is being rolled out to every worker). At most one version of a name says so.
   */
  current?: boolean;
  /** Short tag that prefixes job ids (no ':'). */
  tag: string;
  queue: string;
  input: ZodType<In>;
  steps: StepDef[];
  /**
   * The submission's guard: refuses a submission whose run must not start (partner offboarding's, a
   * partner another offboarding of the tenant holds: 409). `start_run` (and `start`) call it in the
   * submission's own transaction, under the tenant's RLS, right after the insert that created the run,
   * and only then: a retried submission that finds its run is never refused, nor is a failed run
   * retried (POST …/retry, ADR 0009: its steps check again; the run that holds the key must be let
   * through). `input` is the submission parsed by `input` (the schema above); one the schema refuses
   * is not judged, and the run's first step fails it as for a workflow without a guard. It throws the
   * refusal (an AppError 4xx, which the route answers and, but for a 429 or a `validation_failed`,
   * stores under the Idempotency-Key like any 4xx of its handler, router.ts), and the transaction
   * rolls back with the run's row — and with whatever the guard wrote: nothing of the submission is
   * left. `run.runId` is the run just created: a guard may claim a business key for it in this
   * transaction (partner offboarding's claim of the partner, a row keyed by the partner, so two
   * submissions at once meet on it: the second waits for the first's commit and is refused), which
   * holds the key from the submission on, before the run's first step. A guard that only read what
   * earlier runs' steps wrote would let two submissions at once, or a second before the first's run
   * has started, both pass. A step must still enforce the key for runs the guard never judged (runs
   * from before it; freeze-partner's claim of the record).
   * `run.retired(version)`: whether a version of the workflow is declared retired for good
   * (WORKFLOW_VERSIONS_RETIRED, ADR 0008), so a failed run of it can never be retried.
   */
  admitSubmission?(em: EntityManager, input: In, run: SubmissionRun): Promise<void>;
  /**
   * What the run's `run.<status>` webhook event carries besides the run's own fields, from its output
   * when its last step completed (e.g. the golden path's evidence pack id; docs/api.md, *Webhooks*).
   */
  eventData?(output: unknown): Record<string, unknown>;
  /** The run's terminal status and output once the last step completed. */
  finish?(outputs: Record<string, unknown>): { status: 'completed' | 'rejected'; output: unknown };
  /**
   * Called by the sweeper, under the run's tenant, for runs that wait (e.g. for a human): re-creates
   * what Redis may have lost, such as an SLA timer (in the timers queue).
   */
  repairWaiting?(em: EntityManager, run: { tenantId: string; runId: string }): Promise<void>;
  /**
   * The id of the job that must stay alive while a run of this workflow waits (e.g. its SLA timer),
   * from the run's idempotency hash. Such a job belongs in the timers queue (TIMER_QUEUE, ADR 0015),
   * not the workflow's own: a timer that comes due must not wait behind the run jobs queued there.
   * Every sweep checks waiting runs against it, in the timers queue and, for timers older releases
   * added there, the workflow's queue, and calls `repairWaiting` for a run whose job is in neither
   * (lost, failed for good, or ended early).
   */
  waitingJobId?(idempotencyHash: string): string;
  /**
   * Called in the transaction that fails a run for good (its step's attempts spent, a permanent
   * error, non-determinism), under the run's tenant, after the run row was locked and moved to
   * `failed`: closes what the run left open while it waited, e.g. a pending approval request that no
   * one may decide any more. Lock order: the run row, then what the hook touches. Returns what to do
   * after the commit (remove the request's SLA timer), if anything, as a cancel's `onCancelled` does:
   * the executor calls it once the failure has committed, never if it rolled back, best-effort (a
   * failure is logged; what it would have removed must then be harmless, as a timer that finds its
   * request closed is). Runs in a savepoint with the run's move to `failed`: a hook that throws is
   * rolled back alone and the run fails all the same, the hook's error as `error.on_failed_error`
   * (logged, counted), what it would have closed left open — so what it leaves must stay harmless too
   * (a request no one can decide once its run has ended). Only the platform's database unreachable or
   * timing out under it rolls the whole failure back, for the sweeper to try again (ADR 0002, amendment).
   */
  onFailed?(em: EntityManager, run: { tenantId: string; runId: string }): Promise<(() => Promise<void>) | undefined>;
}

export function defineWorkflow<In>(def: WorkflowDef<In>): WorkflowDef<In> {
  checkWorkflow(def);
  return def;
}

/** What every definition must satisfy; checked when it is defined and again when it is registered. */
export function checkWorkflow(def: WorkflowDef): void {
  // The name is stored on every run and named as `name@vN` by WORKFLOW_VERSIONS_RETIRED, whose format
  // (registry.ts) takes kebab-case only: a name outside it could never be declared retired.
  if (!/^[a-z][a-z0-9-]{0,63}$/.test(def.name)) throw new Error(`workflow name ${JSON.stringify(def.name)} must be kebab-case (a-z, 0-9, -; stored on every run, named as name@vN by WORKFLOW_VERSIONS_RETIRED)`);
  if (!Number.isSafeInteger(def.version) || def.version < 1) throw new Error(`workflow ${def.name}: version must be a positive integer, not ${String(def.version)}`);
  const names = new Set<string>();
  for (const s of def.steps) {
    if (names.has(s.name)) throw new Error(`workflow ${def.name}@v${def.version}: duplicate step ${s.name}`);
    names.add(s.name);
  }
  if (!/^[a-z0-9-]{1,16}$/.test(def.tag)) throw new Error(`workflow ${def.name}: tag ${JSON.stringify(def.tag)} must be short kebab-case (1-16 characters of a-z, 0-9, -): it prefixes the run's job ids`);
}

/**
 * The first sequence_num of the stretch of steps that contains `seq`: the step after the last step
 * before `seq` that may wait, or 1. A run job added for a stretch starts there (a resume's, or the
 * first); it goes on past a step that may wait but does not, so the job carrying a run may have
 * started at an earlier stretch — or at any step, when the sweeper re-enqueued the run (sweeper.ts
 * checks them all).
 */
export function segmentStart(wf: WorkflowDef, seq: number): number {
  for (let s = seq - 1; s >= 1; s--) {
    if (wf.steps[s - 1]!.mayWait) return s + 1;
  }
  return 1;
}

/** Attempts a run job gets: every step from `fromSeq` on may spend its own (ADR 0005). */
export function jobAttempts(wf: WorkflowDef, fromSeq: number): number {
  return wf.steps.slice(fromSeq - 1).reduce((n, s) => n + retryOf(s).attempts, 0);
}

export function retryOf(step: StepDef): RetryPolicy {
  return { ...DEFAULT_RETRY, ...step.retry };
}

/** The backoff type of run jobs: BullMQ asks the worker's strategy (worker-host.ts), which calls stepBackoffMs. */
export const STEP_BACKOFF = 'dealix-step';

/**
 * Delay before retrying a run job whose step failed `failures` times: exponential in that step's own
 * failures (not the job's, which may include other steps'), with the step's jitter.
 */
export function stepBackoffMs(policy: RetryPolicy, failures: number): number {
  const max = Math.round(2 ** Math.max(0, failures - 1) * policy.backoffMs);
  return Math.floor(max * (1 - policy.jitter) + Math.random() * max * policy.jitter);
}

/** The first delay of a job put off for a worker that registers its run's workflow version (ADR 0008). */
export const DEFER_BASE_MS = 1000;
/**
 * The longest such delay: about how long a job may wait after a worker with its version starts
 * (each time the delay ends, any worker may take the job, so it also bounds the back-and-forth).
 */
export const DEFER_MAX_MS = 10_000;

/** Delay before a job put off `deferrals` times may be taken again: doubling from DEFER_BASE_MS to DEFER_MAX_MS, ±20 %. */
export function deferDelayMs(deferrals: number): number {
  const max = Math.min(DEFER_MAX_MS, DEFER_BASE_MS * 2 ** Math.max(0, deferrals - 1));
  return Math.round(max * (0.8 + Math.random() * 0.4));
}
