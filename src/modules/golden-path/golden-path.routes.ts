import { z } from 'zod';
import type { EntityManager } from '@mikro-orm/postgresql';
import { defineRoute, type RouteDef } from '../../platform/http/route.ts';
import { NotFoundError } from '../../platform/errors/app-error.ts';
import { nextCursor, pageWhere } from '../../platform/http/cursor.ts';
import { currentTraceContext } from '../../platform/telemetry/trace-context.ts';
import { COMPLETED_STEPS_SQL, RUN_COLUMNS, type DurableRuntime, type RunRow } from '../../platform/durable/runtime.ts';
import { ACTIVE_RUN_STATUSES, RUN_STATUSES } from '../../platform/durable/durable-run.entity.ts';

const isActiveStatus = (status: string) => (ACTIVE_RUN_STATUSES as readonly string[]).includes(status);
import { submissionSchema } from './golden-path.schemas.ts';
import { GOLDEN_PATH } from './golden-path.workflow.ts';

export const BASE = '/api/v1';
const uuidParam = z.object({ id: z.string().uuid() });

export interface AdmissionControl {
  /** Throws 429 when the tenant exceeds its submission rate or runs in flight. */
  admit(em: EntityManager, tenantId: string): Promise<void>;
}

const runAccepted = z.object({
  run_id: z.string().uuid(),
  status: z.enum(RUN_STATUSES),
  correlation_id: z.string(),
  links: z.object({ self: z.string(), evidence: z.string().optional() }),
});

const iso = (v: Date | string | null | undefined) => (v === null || v === undefined ? null : new Date(v).toISOString());

export function runView(run: RunRow, steps: Array<{ sequence_num: number; step_name: string; status: string; attempt: number; output: unknown; error: unknown; created_at: Date; completed_at: Date | null }>, stepNames: string[]) {
  const byNum = new Map(steps.map((s) => [s.sequence_num, s]));
  // The checkpoints are the live progress (the run row moves only with its status).
  const completed = steps.filter((s) => s.status === 'completed').length;
  // By the steps' names: each workflow version may place them elsewhere.
  const outputOf = (name: string) => steps.find((s) => s.step_name === name)?.output as Record<string, string | undefined> | undefined;
  const evidence = outputOf('evidence-pack')?.evidence_pack_id;
  const approval = outputOf('approval-packet')?.approval_request_id;
  return {
    run_id: run.id,
    workflow: run.workflow,
    workflow_version: run.workflow_version,
    status: run.status,
    // An ended run has no current step (an expired or failed one ended before its last).
    progress: { completed_steps: completed, total_steps: run.step_count, current_sequence_num: isActiveStatus(run.status) ? Math.min(completed + 1, run.step_count) : null },
    correlation_id: run.correlation_id,
    trace_id: run.trace_id,
    submitted_by: run.principal,
    created_at: iso(run.created_at),
    updated_at: iso(run.updated_at),
    completed_at: iso(run.completed_at),
    steps: stepNames.map((name, i) => {
      const cp = byNum.get(i + 1);
      return {
        sequence_num: i + 1,
        name,
        status: cp?.status ?? 'pending',
        attempt: cp?.attempt ?? 0,
        checkpointed_at: iso(cp?.created_at),
        completed_at: iso(cp?.completed_at),
        output: cp?.output ?? null,
        error: cp?.error ?? null,
      };
    }),
    output: run.output,
    error: run.error,
    links: {
      self: `${BASE}/golden-path/runs/${run.id}`,
      ...(approval ? { approval: `${BASE}/approvals/${approval}` } : {}),
      ...(evidence ? { evidence: `${BASE}/evidence/${evidence}`, verify: `${BASE}/evidence/${evidence}/verify` } : {}),
    },
  };
}

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
      body: submissionSchema,
      responses: { 202: { description: 'Accepted: the run is queued', schema: runAccepted } },
      async handler({ em, body, principal, correlationId, idempotencyHash, afterCommit }) {
        await deps.admission?.admit(em, principal.tenantId);
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
        const self = `${BASE}/golden-path/runs/${run.id}`;
        return { status: 202, headers: { Location: self }, body: { run_id: run.id, status: run.status, correlation_id: run.correlation_id, links: { self } } };
      },
    }),
    defineRoute({
      method: 'get',
      path: `${BASE}/golden-path/runs/:id`,
      summary: 'A run: status, progress, every step with its checkpoint, outputs, correlation and trace ids',
      tags: ['golden-path'],
      params: uuidParam,
      responses: { 200: { description: 'The run' }, 404: { description: 'No such run for this tenant' } },
      async handler({ em, params, principal }) {
        const [run] = await em.execute<RunRow[]>(`select ${RUN_COLUMNS} from durable_runs where tenant_id = ? and id = ? and workflow = ?`, [principal.tenantId, params.id, GOLDEN_PATH]);
        if (!run) throw new NotFoundError('run');
        const steps = await em.execute<any[]>(
          `select sequence_num, step_name, status, attempt, output, error, created_at, completed_at from durable_checkpoints where tenant_id = ? and run_id = ? order by sequence_num`,
          [run.tenant_id, run.id],
        );
        return { status: 200, body: runView(run, steps, stepNames(run, steps)) };
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
      responses: { 200: { description: 'A page of runs' } },
      async handler({ em, query, principal }) {
        const params: unknown[] = [principal.tenantId, GOLDEN_PATH];
        const where = pageWhere('tenant_id = ? and workflow = ?', params, query);
        const rows = await em.execute<(RunRow & { completed: number })[]>(
          `select ${RUN_COLUMNS}, ${COMPLETED_STEPS_SQL} as completed from durable_runs r where ${where} order by created_at desc, id desc limit ?`,
          params,
        );
        const page = rows.slice(0, query.limit);
        const last = page[page.length - 1];
        const next = nextCursor(last, rows.length > query.limit);
        return {
          status: 200,
          body: {
            items: page.map((r) => ({ run_id: r.id, status: r.status, correlation_id: r.correlation_id, progress: { completed_steps: r.completed, total_steps: r.step_count }, created_at: iso(r.created_at), links: { self: `${BASE}/golden-path/runs/${r.id}` } })),
            next_cursor: next,
          },
        };
      },
    }),
  ];
}
