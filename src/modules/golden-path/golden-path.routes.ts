import { z } from 'zod';
import { defineRoute, type AdmissionControl, type RouteDef } from '../../platform/http/route.ts';
import type { EntityManager } from '@mikro-orm/postgresql';
import { ForbiddenError, NotFoundError } from '../../platform/errors/app-error.ts';
import type { Principal } from '../../platform/tenancy/jwt.ts';
import { RunNotActiveError } from '../../platform/durable/errors.ts';
import { ADMIN_ROLE } from '../approvals/approval.constants.ts';
import { nextCursor, pageLimit, pageWhere } from '../../platform/http/cursor.ts';
import { COMPLETED_STEPS_SQL, RUN_COLUMNS, type DurableRuntime, type RunRow } from '../../platform/durable/runtime.ts';
import { ACTIVE_RUN_STATUSES, RUN_STATUSES } from '../../platform/durable/durable-run.entity.ts';
import { acceptRun, readCheckpoints } from '../../platform/durable/run-views.ts';
import { submissionSchema } from './golden-path.schemas.ts';
import { GOLDEN_PATH } from './golden-path.workflow.ts';
import { BASE, runAccepted, runPage, runPath, runView, toRunSummary, toRunView, type CheckpointRow, type GoldenPathRunRow, type RunCancellation, type RunPage, type RunView } from './golden-path.views.ts';

const uuidParam = z.object({ id: z.string().uuid() });

/**
 * Called in a cancel's transaction, once the run is cancelled: what else the run held is released
 * (the approvals module: its pending request can no longer be decided). Returns what to do after the
 * commit (remove the request's SLA timer), if anything.
 */
export type OnRunCancelled = (em: EntityManager, tenantId: string, runId: string) => Promise<(() => Promise<void>) | undefined>;

/** A run as the run view reads it: the runtime's columns and the retry history. */
const RUN_VIEW_COLUMNS = `${RUN_COLUMNS}, retry_history`;

export function goldenPathRoutes(deps: {
  runtime: DurableRuntime;
  admission?: AdmissionControl;
  onCancelled?: OnRunCancelled;
  /** Called once a retry has committed (the `dealix_runs_retried_total` counter). */
  onRetried?: (workflow: string) => void;
}): RouteDef[] {
  // A run is shown with the steps of the version it started with; one this process does not register, with its checkpoints' names.
  const stepNames = (run: RunRow, checkpoints: Array<{ step_name: string }>) =>
    deps.runtime.workflows.get(GOLDEN_PATH, run.workflow_version)?.steps.map((s) => s.name) ?? checkpoints.map((c) => c.step_name);
  const viewOf = async (em: EntityManager, run: GoldenPathRunRow): Promise<RunView> => {
    const steps: CheckpointRow[] = await readCheckpoints(em, run.tenant_id, run.id);
    return toRunView(run, steps, stepNames(run, steps));
  };
  const runById = async (em: EntityManager, tenantId: string, id: string) =>
    (await em.execute<GoldenPathRunRow[]>(`select ${RUN_VIEW_COLUMNS} from durable_runs where tenant_id = ? and id = ? and workflow = ?`, [tenantId, id, GOLDEN_PATH]))[0];
  /**
   * The run an API client acts on (cancel, retry), its row locked `for update`: a concurrent decision,
   * expiry, step checkpoint, cancel or retry waits for this transaction and then sees what it did.
   * 404 when the tenant has no such run; 403 unless the principal submitted it or is a tenant admin.
   */
  const ownRunForUpdate = async (em: EntityManager, principal: Principal, id: string, verb: string): Promise<GoldenPathRunRow> => {
    const [run] = await em.execute<GoldenPathRunRow[]>(
      `select ${RUN_VIEW_COLUMNS} from durable_runs where tenant_id = ? and id = ? and workflow = ? for update`,
      [principal.tenantId, id, GOLDEN_PATH],
    );
    if (!run) throw new NotFoundError('run');
    if (run.principal !== principal.sub && !principal.roles.includes(ADMIN_ROLE)) {
      throw new ForbiddenError(`Only the run's submitter or a tenant user with the "${ADMIN_ROLE}" role may ${verb} it.`);
    }
    return run;
  };
  return [
    defineRoute({
      method: 'post',
      path: `${BASE}/golden-path/run`,
      summary: 'Submit a partner tier-1 verification run',
      tags: ['golden-path'],
      idempotency: 'required',
      // The tenant's submission rate and runs-in-flight cap: the router admits the request first (429).
      ...(deps.admission ? { admission: deps.admission } : {}),
      body: submissionSchema,
      responses: { 202: { description: 'Accepted: the run is queued', schema: runAccepted } },
      handler: (ctx) => acceptRun(deps.runtime, GOLDEN_PATH, ctx, runPath),
    }),
    defineRoute({
      method: 'get',
      path: `${BASE}/golden-path/runs/:id`,
      summary: 'A run: status, progress, every step with its checkpoint, outputs, correlation and trace ids',
      tags: ['golden-path'],
      params: uuidParam,
      responses: { 200: { description: 'The run', schema: runView }, 404: { description: 'No such run for this tenant' } },
      async handler({ res, em, params, principal }) {
        const run = await runById(em, principal.tenantId, params.id);
        if (!run) throw new NotFoundError('run');
        res.locals.runId = run.id;
        return { status: 200, body: await viewOf(em, run) };
      },
    }),
    defineRoute({
      method: 'post',
      path: `${BASE}/golden-path/runs/:id/cancel`,
      summary: 'Cancel a run that has not ended (its submitter, or a tenant admin): no further step runs, a pending approval can no longer be decided',
      tags: ['golden-path'],
      idempotency: 'required',
      params: uuidParam,
      responses: {
        200: { description: 'The run, cancelled', schema: runView },
        403: { description: 'Neither the run\'s submitter nor a tenant admin (code: forbidden)' },
        404: { description: 'No such run for this tenant' },
        409: { description: 'The run has already ended (run_not_active, with its status)' },
      },
      async handler({ req, res, em, params, principal, afterCommit }) {
        // Locked: a concurrent decision, expiry or step checkpoint waits for this transaction and then sees the run cancelled.
        const run = await ownRunForUpdate(em, principal, params.id, 'cancel');
        res.locals.runId = run.id;
        if (!(ACTIVE_RUN_STATUSES as readonly string[]).includes(run.status)) throw new RunNotActiveError(run.id, run.status);
        const cancellation: RunCancellation = { code: 'cancelled', message: `Cancelled by ${principal.sub}.`, cancelled_by: principal.sub, cancelled_at: new Date().toISOString() };
        await deps.runtime.complete(em, run.id, 'cancelled', { error: cancellation });
        const release = await deps.onCancelled?.(em, run.tenant_id, run.id);
        afterCommit(async () =>
          // Among the run's lines: its correlation id, not the cancel request's (the request's own line has that).
          req.log.info({ run_id: run.id, tenant_id: run.tenant_id, correlation_id: run.correlation_id, cancelled_by: principal.sub, previous_status: run.status }, 'run cancelled'),
        );
        if (release) afterCommit(release);
        return { status: 200, body: await viewOf(em, (await runById(em, run.tenant_id, run.id))!) };
      },
    }),
    defineRoute({
      method: 'post',
      path: `${BASE}/golden-path/runs/:id/retry`,
      summary: 'Retry a failed run from its last checkpoint (its submitter, or a tenant admin): completed steps are kept, the failed step runs again with fresh attempts',
      tags: ['golden-path'],
      idempotency: 'required',
      // A retry starts work again: admitted like a submission (the tenant's rate and runs-in-flight cap, 429),
      // so retrying many failed runs at once cannot put a tenant past its cap.
      ...(deps.admission ? { admission: deps.admission } : {}),
      params: uuidParam,
      responses: {
        200: { description: 'The run, active again (pending or running), its failure recorded in `retries`', schema: runView },
        403: { description: 'Neither the run\'s submitter nor a tenant admin (code: forbidden)' },
        404: { description: 'No such run for this tenant' },
        409: { description: 'The run has not failed (run_not_failed, with its status), or none of its steps may run again (run_not_retryable)' },
        503: {
          description: "The run's workflow version is not registered on this instance: nothing changed; retry after Retry-After (code: workflow_version_unavailable)",
        },
      },
      async handler({ req, res, em, params, principal, afterCommit }) {
        // Locked as for a cancel: of two retries, or a retry and a cancel, the second waits and then sees the first's outcome.
        const run = await ownRunForUpdate(em, principal, params.id, 'retry');
        res.locals.runId = run.id;
        const retried = await deps.runtime.retry(em, run, { retriedBy: principal.sub });
        afterCommit(async () => {
          deps.onRetried?.(retried.workflow);
          const error = run.error as { code?: string; step?: string; sequence_num?: number } | null;
          req.log.info(
            { run_id: run.id, tenant_id: run.tenant_id, correlation_id: run.correlation_id, retried_by: principal.sub, retry: retried.retry_count, workflow: run.workflow, failed_step: error?.step, failed_code: error?.code, run_status: retried.status },
            'run retried',
          );
        });
        // Postgres first, then Redis: the job of the run's current stretch, of its new generation. If the
        // enqueue fails, the run is active without a job, and the sweeper re-enqueues it (ADR 0009).
        afterCommit(() => deps.runtime.ensureEnqueued(retried));
        return { status: 200, body: await viewOf(em, (await runById(em, run.tenant_id, run.id))!) };
      },
    }),
    defineRoute({
      method: 'get',
      path: `${BASE}/golden-path/runs`,
      summary: 'List runs, newest first, with cursor pagination',
      tags: ['golden-path'],
      query: z.strictObject({
        status: z.enum(RUN_STATUSES).optional(),
        limit: pageLimit(20),
        cursor: z.string().max(200).optional(),
      }),
      responses: { 200: { description: 'A page of runs', schema: runPage } },
      async handler({ em, query, principal }) {
        const params: unknown[] = [principal.tenantId, GOLDEN_PATH];
        const where = pageWhere('tenant_id = ? and workflow = ?', params, query);
        const rows = await em.execute<(RunRow & { completed: number })[]>(
          `select ${RUN_COLUMNS}, ${COMPLETED_STEPS_SQL} as completed from durable_runs r where ${where} order by created_at desc, id desc limit ?`,
          params,
        );
        const page = rows.slice(0, query.limit);
        const body: RunPage = { items: page.map(toRunSummary), next_cursor: nextCursor(page[page.length - 1], rows.length > query.limit) };
        return { status: 200, body };
      },
    }),
  ];
}
