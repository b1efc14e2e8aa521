import { z } from 'zod';
import { defineRoute, type AdmissionControl, type RouteDef } from '../../platform/http/route.ts';
import { NotFoundError } from '../../platform/errors/app-error.ts';
import { RUN_COLUMNS, type DurableRuntime } from '../../platform/durable/runtime.ts';
import { acceptRun, readCheckpoints, runAccepted } from '../../platform/durable/run-views.ts';
import { offboardingSubmission } from './partner-offboarding.schemas.ts';
import { PARTNER_OFFBOARDING } from './partner-offboarding.workflow.ts';
import { OFFBOARDING_BASE, offboardingRunPath, offboardingRunView, toOffboardingRunView, type OffboardingRunRow, type OffboardingStepOutput } from './partner-offboarding.views.ts';

/** Submit an offboarding, and read one: the two routes every workflow needs (JWT, Idempotency-Key, problem+json and OpenAPI come from defineRoute and the router). */
export function partnerOffboardingRoutes(deps: { runtime: DurableRuntime; admission?: AdmissionControl }): RouteDef[] {
  return [
    defineRoute({
      method: 'post',
      path: `${OFFBOARDING_BASE}/run`,
      summary: 'Submit a partner offboarding: freeze the partner, settle its balances, archive its record',
      tags: ['partner-offboarding'],
      idempotency: 'required',
      // The tenant's submission rate and runs-in-flight cap, as for every submission (429).
      ...(deps.admission ? { admission: deps.admission } : {}),
      body: offboardingSubmission,
      responses: { 202: { description: 'Accepted: the run is queued', schema: runAccepted } },
      handler: (ctx) => acceptRun(deps.runtime, PARTNER_OFFBOARDING, ctx, offboardingRunPath),
    }),
    defineRoute({
      method: 'get',
      path: `${OFFBOARDING_BASE}/runs/:id`,
      summary: 'An offboarding run: status, progress, every step with its checkpoint and output',
      tags: ['partner-offboarding'],
      params: z.object({ id: z.uuid() }),
      responses: { 200: { description: 'The run', schema: offboardingRunView }, 404: { description: 'No such run for this tenant' } },
      async handler({ res, em, params, principal }) {
        // The workflow is part of the filter: a golden-path run's id is not an offboarding (404).
        const [run] = await em.execute<OffboardingRunRow[]>(`select ${RUN_COLUMNS} from durable_runs where tenant_id = ? and id = ? and workflow = ?`, [
          principal.tenantId,
          params.id,
          PARTNER_OFFBOARDING,
        ]);
        if (!run) throw new NotFoundError('run');
        res.locals.runId = run.id;
        const steps = await readCheckpoints<OffboardingStepOutput>(em, run.tenant_id, run.id);
        // The steps of the version the run started with; one this process does not register, its checkpoints' names.
        const names = deps.runtime.workflows.get(PARTNER_OFFBOARDING, run.workflow_version)?.steps.map((s) => s.name) ?? steps.map((c) => c.step_name);
        return { status: 200, body: toOffboardingRunView(run, steps, names) };
      },
    }),
  ];
}
