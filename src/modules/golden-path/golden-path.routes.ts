import { defineRoute, type AdmissionControl, type RouteDef } from '../../platform/http/route.ts';
import type { DurableRuntime } from '../../platform/durable/runtime.ts';
import { acceptRun } from '../../platform/durable/run-views.ts';
import { runRoutes, type OnRunCancelled } from '../../platform/durable/run-routes.ts';
import { submissionRequestSchema } from './golden-path.schemas.ts';
import { GOLDEN_PATH } from './golden-path.workflow.ts';
import { BASE, runAccepted, runPage, runPath, runView, toRunView } from './golden-path.views.ts';

/** The submission, and the run routes every workflow gets (read, cancel, retry, list: run-routes.ts). */
export function goldenPathRoutes(deps: {
  runtime: DurableRuntime;
  admission?: AdmissionControl;
  /** The approvals module: a cancelled run's pending approval request is withdrawn and its SLA timer removed. */
  onCancelled?: OnRunCancelled;
  /** Called once a retry has committed (the `dealix_runs_retried_total` counter). */
  onRetried?: (workflow: string) => void;
}): RouteDef[] {
  return [
    defineRoute({
      method: 'post',
      path: `${BASE}/golden-path/run`,
      summary: 'Submit a partner tier-1 verification run',
      tags: ['golden-path'],
      idempotency: 'required',
      // The tenant's submission rate and runs-in-flight cap: the router admits the request first (429).
      ...(deps.admission ? { admission: deps.admission } : {}),
      body: submissionRequestSchema,
      responses: { 202: { description: 'Accepted: the run is queued', schema: runAccepted, location: true } },
      handler: (ctx) => acceptRun(deps.runtime, GOLDEN_PATH, ctx, runPath),
    }),
    ...runRoutes({
      runtime: deps.runtime,
      workflow: GOLDEN_PATH,
      basePath: `${BASE}/golden-path`,
      view: { schema: runView, build: toRunView },
      page: runPage,
      runPath,
      admission: deps.admission,
      onCancelled: deps.onCancelled,
      onRetried: deps.onRetried,
      summaries: {
        get: 'A run: status, progress, every step with its checkpoint, outputs, correlation and trace ids',
        cancel: 'Cancel a run that has not ended (its submitter, or a tenant admin): no further step runs, a pending approval can no longer be decided',
      },
    }),
  ];
}
