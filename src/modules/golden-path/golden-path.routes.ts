import { z } from 'zod';
import { defineRoute, type AdmissionControl, type RouteDef } from '../../platform/http/route.ts';
import { NotFoundError } from '../../platform/errors/app-error.ts';
import { nextCursor, pageWhere } from '../../platform/http/cursor.ts';
import { currentTraceContext } from '../../platform/telemetry/trace-context.ts';
import { COMPLETED_STEPS_SQL, RUN_COLUMNS, type DurableRuntime, type RunRow } from '../../platform/durable/runtime.ts';
import { RUN_STATUSES } from '../../platform/durable/durable-run.entity.ts';
import { submissionSchema } from './golden-path.schemas.ts';
import { GOLDEN_PATH } from './golden-path.workflow.ts';
import { BASE, runAccepted, runPage, runPath, runView, toRunSummary, toRunView, type CheckpointRow, type GoldenPathRunRow, type RunAccepted, type RunPage } from './golden-path.views.ts';

const uuidParam = z.object({ id: z.string().uuid() });

export function goldenPathRoutes(deps: { runtime: DurableRuntime; admission?: AdmissionControl }): RouteDef[] {
  // A run is shown with the steps of the version it started with; one this process does not register, with its checkpoints' names.
  const stepNames = (run: RunRow, checkpoints: Array<{ step_name: string }>) =>
    deps.runtime.workflows.get(GOLDEN_PATH, run.workflow_version)?.steps.map((s) => s.name) ?? checkpoints.map((c) => c.step_name);
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
      async handler({ em, body, principal, correlationId, idempotencyHash, afterCommit }) {
        const trace = currentTraceContext();
        const { run, created } = await deps.runtime.start_run(em, GOLDEN_PATH, {
          tenantId: principal.tenantId,
          principal: principal.sub,
          idempotencyHash,
          input: body,
          correlationId,
          traceId: trace.traceId,
          traceparent: trace.traceparent,
        });
        // Postgres first, then Redis; a retry of a half-finished submission re-enqueues idempotently.
        // A run this request created carries its first step's data in its job (ADR 0004).
        if (run.status === 'pending' || run.status === 'running') afterCommit(() => deps.runtime.ensureEnqueued(run, { carryFirst: created }));
        const self = runPath(run.id);
        const accepted: RunAccepted = { run_id: run.id, status: run.status, correlation_id: run.correlation_id, links: { self } };
        return { status: 202, headers: { Location: self }, body: accepted };
      },
    }),
    defineRoute({
      method: 'get',
      path: `${BASE}/golden-path/runs/:id`,
      summary: 'A run: status, progress, every step with its checkpoint, outputs, correlation and trace ids',
      tags: ['golden-path'],
      params: uuidParam,
      responses: { 200: { description: 'The run', schema: runView }, 404: { description: 'No such run for this tenant' } },
      async handler({ em, params, principal }) {
        const [run] = await em.execute<GoldenPathRunRow[]>(`select ${RUN_COLUMNS} from durable_runs where tenant_id = ? and id = ? and workflow = ?`, [principal.tenantId, params.id, GOLDEN_PATH]);
        if (!run) throw new NotFoundError('run');
        const steps = await em.execute<CheckpointRow[]>(
          `select sequence_num, step_name, status, attempt, output, error, created_at, completed_at from durable_checkpoints where tenant_id = ? and run_id = ? order by sequence_num`,
          [run.tenant_id, run.id],
        );
        return { status: 200, body: toRunView(run, steps, stepNames(run, steps)) };
      },
    }),
    defineRoute({
      method: 'get',
      path: `${BASE}/golden-path/runs`,
      summary: 'List runs, newest first, with cursor pagination',
      tags: ['golden-path'],
      query: z.strictObject({
        status: z.enum(RUN_STATUSES).optional(),
        limit: z.coerce.number().int().min(1).max(100).default(20),
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
