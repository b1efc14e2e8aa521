import { defineWorkflow, type WorkflowDef } from '../../platform/durable/workflow.ts';
import { offboardingSubmission } from './partner-offboarding.schemas.ts';
import { archiveRecordStep, freezePartnerStep, refuseHeldPartner, settleBalancesStep } from './partner-offboarding.steps.ts';

export const PARTNER_OFFBOARDING = 'partner-offboarding';
/** Its own queue: a burst of offboardings does not hold up verifications, and Bull Board and /metrics show it apart. */
export const PARTNER_OFFBOARDING_QUEUE = 'partner-offboarding';

/**
 * Partner offboarding, the worked example of a second workflow (docs/runtime.md, "Adding a workflow"):
 *   1 freeze-partner → 2 settle-balances → 3 archive-record.
 * No step waits; the run ends `completed` with the archive step's output (the default `finish`). A
 * submission of a partner the tenant already offboards is refused before its run starts (409).
 */
export function partnerOffboardingWorkflow(): WorkflowDef {
  return defineWorkflow({
    name: PARTNER_OFFBOARDING,
    version: 1,
    tag: 'po',
    queue: PARTNER_OFFBOARDING_QUEUE,
    input: offboardingSubmission,
    steps: [freezePartnerStep, settleBalancesStep, archiveRecordStep],
    // A partner another offboarding holds (its record, or its run's claim from submission on): 409 at
    // submission; freeze-partner's claim of the record is the backstop for a run that holds no claim
    // (one an old web process accepted during the claims' deploy: those queued before it were claimed by a migration).
    admitSubmission: refuseHeldPartner,
  });
}
