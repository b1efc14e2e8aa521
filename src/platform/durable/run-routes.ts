import { z, type ZodType } from 'zod';
import type { EntityManager } from '@mikro-orm/postgresql';
import { defineRoute, type AdmissionControl, type RouteDef } from '../http/route.ts';
import { ForbiddenError, NotFoundError } from '../errors/app-error.ts';
import { nextCursor, pageLimit, pageWhere } from '../http/cursor.ts';
import type { Principal } from '../tenancy/jwt.ts';
import { ADMIN_ROLE } from '../tenancy/roles.ts';
import { RunNotActiveError } from './errors.ts';
import { ACTIVE_RUN_STATUSES, RUN_STATUSES, type RunStatus } from './durable-run.entity.ts';
import { COMPLETED_STEPS_SQL, RUN_COLUMNS, type DurableRuntime, type RunRow } from './runtime.ts';
import { readCheckpoints, toRunSummary, type CheckpointRow, type RunSummary, type RunSummaryRow } from './run-views.ts';
import { bulkCancel, bulkCancelFilter, bulkCancelResult, cancelLockedRun, type OnRunCancelled } from './run-cancel.ts';

export type { OnRunCancelled } from './run-cancel.ts';

/** A run as the run routes read it: the runtime's columns and the retry history. */
export type RunViewRow = RunRow & { retry_history: unknown };
const RUN_VIEW_COLUMNS = `${RUN_COLUMNS}, retry_history`;

/** A page of runs, newest first (the body of GET …/runs). */
export interface RunPage {
  items: RunSummary[];
  next_cursor: string | null;
}

export interface RunRoutesOptions<V, R extends RunViewRow, O> {
  runtime: DurableRuntime;
  /** The workflow name: part of every statement's filter, so another workflow's run id is a 404. */
  workflow: string;
  /** The workflow's API prefix: the routes are `<basePath>/runs/:id`, `…/cancel`, `…/retry`, `<basePath>/runs` and `<basePath>/runs/cancel`. */
  basePath: string;
  /** The run's body (GET, cancel, retry) as the module publishes it, and the function that builds it. */
  view: { schema: ZodType<V>; build(run: R, steps: CheckpointRow<O>[], stepNames: string[]): V };
  /** A page of runs as the module publishes it (pageSchema of runSummary, with its own component id). */
  page: ZodType<RunPage>;
  /** A run's path in `links.self` of a page's items. */
  runPath(id: string): string;
  /** The tenant's submission limits: a retry starts work again, so it is admitted like a submission (429). */
  admission?: AdmissionControl | undefined;
  onCancelled?: OnRunCancelled | undefined;
  /** Called once a retry has committed (the `dealix_runs_retried_total` counter). */
  onRetried?: ((workflow: string) => void) | undefined;
  /** OpenAPI summaries where the workflow says more than the defaults (the golden path's pending approval). */
  summaries?: Partial<Record<'get' | 'cancel' | 'retry' | 'list' | 'bulkCancel', string>>;
}

const uuidParam = z.object({ id: z.string().uuid() });

const SUMMARIES = {
  get: 'A run: status, progress, every step with its checkpoint and output',
  cancel: 'Cancel a run that has not ended (its submitter, or a tenant admin): no further step runs',
  retry: 'Retry a failed run from its last checkpoint (its submitter, or a tenant admin): completed steps are kept, the failed step runs again with fresh attempts',
  list: 'List runs, newest first, with cursor pagination',
  bulkCancel: "Cancel the tenant's runs that match a filter (tenant admins), each as a single cancel does, oldest first, up to a limit",
};

/** The columns a run's summary in a page shows (toRunSummary): never the run's input and output documents. */
const SUMMARY_COLUMNS = 'tenant_id, id, status, correlation_id, step_count, created_at';

/**
 * The statement of a page of a workflow's runs, newest first: one branch per status (the one filtered
 * on, or each), each a page of keys read in order from (tenant_id, workflow, status, created_at, id)
 * (an index-only range: never another workflow's runs, nor another status's, read and filtered out —
 * a tenant's few failed runs, or its few offboardings among a million golden-path runs, are read as
 * such), merged newest first and cut at the page size; only then are the page's rows and progress read.
 * The cursor is the same (created_at, id) position under any filter. That index is two partial ones
 * (ended runs, active runs: durable-run.entity.ts), so each branch names its status as a literal, one
 * of RUN_STATUSES: a plan cached for the statement, made without its parameters' values, proves its
 * index's predicate all the same.
 */
function listStatement(tenantId: string, workflow: string, query: { status?: RunStatus | undefined; cursor?: string | undefined; limit: number }): { sql: string; params: unknown[] } {
  const params: unknown[] = [];
  const branches = (query.status ? [query.status] : RUN_STATUSES).map((status) => {
    if (!RUN_STATUSES.includes(status)) throw new Error(`not a run status: ${status}`);
    params.push(tenantId, workflow);
    const where = pageWhere(`tenant_id = ? and workflow = ? and status = '${status}'`, params, { cursor: query.cursor, limit: query.limit });
    return `(select created_at as k_at, id as k_id from durable_runs where ${where} order by created_at desc, id desc limit ?)`;
  });
  params.push(query.limit + 1, tenantId);
  const keys = `select k_at, k_id from (${branches.join(' union all ')}) u order by k_at desc, k_id desc limit ?`;
  return {
    // Each key's row by (tenant_id, id), in the keys' order: a lateral that is not flattened into a join
    // (its limit), so no plan reads the tenant's runs to match them to the page's keys.
    // Only what a summary shows: never the runs' input and output documents, which a page does not show.
    sql: `select r.*, ${COMPLETED_STEPS_SQL} as completed from (${keys}) k
          cross join lateral (select ${SUMMARY_COLUMNS} from durable_runs where tenant_id = ? and id = k.k_id limit 1) r order by k_at desc, k_id desc`,
    params,
  };
}

/**
 * The run-management routes every workflow gets (docs/runtime.md, *Adding a workflow*): read one run,
 * cancel it, retry it after it failed, and list the tenant's runs of the workflow. Only the submission
 * (`acceptRun`) and the run's body are the module's own.
 */
export function runRoutes<V, R extends RunViewRow, O>(opts: RunRoutesOptions<V, R, O>): RouteDef[] {
  const { runtime, workflow } = opts;
  const tags = [workflow];
  const summary = { ...SUMMARIES, ...opts.summaries };
  // A run is shown with the steps of the version it started with; one this process does not register, with its checkpoints' names.
  const viewOf = async (em: EntityManager, run: R): Promise<V> => {
    const steps = await readCheckpoints<O>(em, run.tenant_id, run.id);
    const names = runtime.workflows.get(workflow, run.workflow_version)?.steps.map((s) => s.name) ?? steps.map((c) => c.step_name);
    return opts.view.build(run, steps, names);
  };
  const runById = async (em: EntityManager, tenantId: string, id: string, lock = '') =>
    (await em.execute<R[]>(`select ${RUN_VIEW_COLUMNS} from durable_runs where tenant_id = ? and id = ? and workflow = ?${lock}`, [tenantId, id, workflow]))[0];
  /**
   * The run an API client acts on (cancel, retry), its row locked `for update`: a concurrent decision,
   * expiry, step checkpoint, cancel or retry waits for this transaction and then sees what it did.
   * 404 when the tenant has no such run of this workflow; 403 unless the principal submitted it or is a tenant admin.
   */
  const ownRunForUpdate = async (em: EntityManager, principal: Principal, id: string, verb: string): Promise<R> => {
    const run = await runById(em, principal.tenantId, id, ' for update');
    if (!run) throw new NotFoundError('run');
    if (run.principal !== principal.sub && !principal.roles.includes(ADMIN_ROLE)) {
      throw new ForbiddenError(`Only the run's submitter or a tenant user with the "${ADMIN_ROLE}" role may ${verb} it.`);
    }
    return run;
  };
  const refusals = {
    403: { description: 'Neither the run\'s submitter nor a tenant admin (code: forbidden)' },
    404: { description: 'No such run for this tenant' },
  };
  return [
    defineRoute({
      method: 'get',
      path: `${opts.basePath}/runs/:id`,
      summary: summary.get,
      tags,
      params: uuidParam,
      responses: { 200: { description: 'The run', schema: opts.view.schema }, 404: refusals[404] },
      async handler({ res, em, params, principal }) {
        const run = await runById(em, principal.tenantId, params.id);
        if (!run) throw new NotFoundError('run');
        res.locals.runId = run.id;
        return { status: 200, body: await viewOf(em, run) };
      },
    }),
    defineRoute({
      method: 'post',
      path: `${opts.basePath}/runs/cancel`,
      summary: summary.bulkCancel,
      tags,
      roles: [ADMIN_ROLE],
      idempotency: 'required',
      body: bulkCancelFilter,
      responses: { 200: { description: 'What the request cancelled, and whether more runs match (has_more)', schema: bulkCancelResult } },
      async handler({ req, em, body, principal, afterCommit }) {
        const result = await bulkCancel(opts, { em, principal, log: req.log, afterCommit }, body);
        afterCommit(async () => req.log.info({ workflow, tenant_id: principal.tenantId, cancelled_by: principal.sub, cancelled: result.cancelled, has_more: result.has_more }, 'runs cancelled in bulk'));
        return { status: 200, body: result };
      },
    }),
    defineRoute({
      method: 'post',
      path: `${opts.basePath}/runs/:id/cancel`,
      summary: summary.cancel,
      tags,
      idempotency: 'required',
      params: uuidParam,
      responses: {
        200: { description: 'The run, cancelled', schema: opts.view.schema },
        ...refusals,
        409: { description: 'The run has already ended (run_not_active, with its status)' },
      },
      async handler({ req, res, em, params, principal, afterCommit }) {
        // Locked: a concurrent decision, expiry or step checkpoint waits for this transaction and then sees the run cancelled.
        const run = await ownRunForUpdate(em, principal, params.id, 'cancel');
        res.locals.runId = run.id;
        if (!(ACTIVE_RUN_STATUSES as readonly string[]).includes(run.status)) throw new RunNotActiveError(run.id, run.status);
        await cancelLockedRun(opts, { em, principal, log: req.log, afterCommit }, run);
        return { status: 200, body: await viewOf(em, (await runById(em, run.tenant_id, run.id))!) };
      },
    }),
    defineRoute({
      method: 'post',
      path: `${opts.basePath}/runs/:id/retry`,
      summary: summary.retry,
      tags,
      idempotency: 'required',
      // A retry starts work again: admitted like a submission (the tenant's rate and runs-in-flight cap, 429),
      // so retrying many failed runs at once cannot put a tenant past its cap.
      ...(opts.admission ? { admission: opts.admission } : {}),
      params: uuidParam,
      responses: {
        200: { description: 'The run, active again (pending or running), its failure recorded in `retries`', schema: opts.view.schema },
        ...refusals,
        409: {
          description:
            'The run has not failed (run_not_failed, with its status), none of its steps may run again (run_not_retryable), or its workflow version is retired for good (workflow_version_retired, with workflow, workflow_version, current_version): submit it again',
        },
        503: {
          description: "The run's workflow version is not registered on this instance, nor declared retired (a deploy in progress): nothing changed; retry after Retry-After (code: workflow_version_unavailable)",
        },
      },
      async handler({ req, res, em, params, principal, afterCommit }) {
        // Locked as for a cancel: of two retries, or a retry and a cancel, the second waits and then sees the first's outcome.
        const run = await ownRunForUpdate(em, principal, params.id, 'retry');
        res.locals.runId = run.id;
        const retried = await runtime.retry(em, run, { retriedBy: principal.sub });
        afterCommit(async () => {
          opts.onRetried?.(retried.workflow);
          const error = run.error as { code?: string; step?: string; sequence_num?: number } | null;
          req.log.info(
            { run_id: run.id, tenant_id: run.tenant_id, correlation_id: run.correlation_id, retried_by: principal.sub, retry: retried.retry_count, workflow, failed_step: error?.step, failed_code: error?.code, run_status: retried.status },
            'run retried',
          );
        });
        // Postgres first, then Redis: the job of the run's current stretch, of its new generation. If the
        // enqueue fails, the run is active without a job, and the sweeper re-enqueues it (ADR 0009).
        afterCommit(() => runtime.ensureEnqueued(retried));
        return { status: 200, body: await viewOf(em, (await runById(em, run.tenant_id, run.id))!) };
      },
    }),
    defineRoute({
      method: 'get',
      path: `${opts.basePath}/runs`,
      summary: summary.list,
      tags,
      query: z.strictObject({
        status: z.enum(RUN_STATUSES).optional(),
        limit: pageLimit(20),
        cursor: z.string().max(200).optional(),
      }),
      responses: { 200: { description: 'A page of runs', schema: opts.page } },
      async handler({ em, query, principal }) {
        const { sql, params } = listStatement(principal.tenantId, workflow, query);
        const rows = await em.execute<RunSummaryRow[]>(sql, params);
        const page = rows.slice(0, query.limit);
        const body: RunPage = { items: page.map((r) => toRunSummary(r, opts.runPath)), next_cursor: nextCursor(page[page.length - 1], rows.length > query.limit) };
        return { status: 200, body };
      },
    }),
  ];
}
