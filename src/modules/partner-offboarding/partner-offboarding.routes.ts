import { defineRoute, type AdmissionControl, type RouteDef } from '../../platform/http/route.ts';
import type { DurableRuntime } from '../../platform/durable/runtime.ts';
import { acceptRun, runAccepted } from '../../platform/durable/run-views.ts';
import { runRoutes } from '../../platform/durable/run-routes.ts';
import { offboardingRequest } from './partner-offboarding.schemas.ts';
import { PARTNER_OFFBOARDING } from './partner-offboarding.workflow.ts';
import { OFFBOARDING_BASE, offboardingRunPage, offboardingRunPath, offboardingRunView, toOffboardingRunView } from './partner-offboarding.views.ts';

/**
 * Submit an offboarding, and the run routes every workflow gets from the platform (read, cancel, retry,
 * list: run-routes.ts). JWT, Idempotency-Key, problem+json and OpenAPI come from defineRoute and the router.
 */
export function partnerOffboardingRoutes(deps: { runtime: DurableRuntime; admission?: AdmissionControl; onRetried?: (workflow: string) => void }): RouteDef[] {
  return [
    defineRoute({
      method: 'post',
      path: `${OFFBOARDING_BASE}/run`,
      summary: 'Submit a partner offboarding: freeze the partner, settle its balances, archive its record',
      tags: ['partner-offboarding'],
      idempotency: 'required',
      // The tenant's submission rate and runs-in-flight cap, as for every submission (429).
      ...(deps.admission ? { admission: deps.admission } : {}),
      // Balances held to ISO 4217 (codes, minor units): 422 before any key is taken. The steps read the stored input with offboardingSubmission.
      body: offboardingRequest,
      responses: {
        202: { description: 'Accepted: the run is queued', schema: runAccepted, location: true },
        // The workflow's submission guard (refuseHeldPartner, which claims the partner): nothing is started or claimed, and the key stores the answer.
        409: { description: 'Another offboarding of the tenant holds the partner: archived, or its run not cancelled — even one still pending, before it froze the partner (offboarding_status null); of submissions of one partner at once, one is accepted. Retry that run if it failed (a failed run whose retry is refused for good — workflow_version_retired, run_not_retryable — holds nothing) (code: partner_already_offboarded, with run_id, run_status and offboarding_status)' },
      },
      handler: (ctx) => acceptRun(deps.runtime, PARTNER_OFFBOARDING, ctx, offboardingRunPath),
    }),
    // The workflow is part of every run route's filter: a golden-path run's id is not an offboarding (404).
    ...runRoutes({
      runtime: deps.runtime,
      workflow: PARTNER_OFFBOARDING,
      basePath: OFFBOARDING_BASE,
      view: { schema: offboardingRunView, build: toOffboardingRunView },
      page: offboardingRunPage,
      runPath: offboardingRunPath,
      admission: deps.admission,
      onRetried: deps.onRetried,
      summaries: { get: 'An offboarding run: status, progress, every step with its checkpoint and output' },
    }),
  ];
}
