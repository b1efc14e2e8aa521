import { defineEntity, p } from '@mikro-orm/core';
import { tenantIdProperty, tenantIsolationPolicy } from '../../platform/db/tenant-owned.ts';
import { OFFBOARDING_REASONS } from './partner-offboarding.schemas.ts';

export const OFFBOARDING_STATUSES = ['frozen', 'settled', 'archived', 'abandoned'] as const;

/**
 * One partner offboarding per run: created frozen by step 1, settled by step 2, archived by step 3.
 * One per partner too: at most one record of a tenant's `partner_reference` is not `abandoned` (the
 * partial unique key), so a partner is frozen, settled and archived once. A record whose run was
 * cancelled (or deleted by run retention, or failed on a workflow version declared retired or with no
 * step that may run again, so it can never be retried) before it was archived is marked `abandoned` by the next
 * offboarding of that partner (step 1), which then takes its place. A submission of a partner that a
 * record, or another run's claim (PartnerOffboardingClaimRow), holds is refused before its run starts
 * (409, refuseHeldPartner); step 1's claim of the record is the backstop for a run that holds no claim
 * (one an old web process accepted during the claims' deploy; those queued before it a migration claimed for).
 */
export const PartnerOffboardingRow = defineEntity({
  name: 'PartnerOffboarding',
  tableName: 'partner_offboardings',
  properties: {
    id: p.uuid().primary(),
    tenantId: tenantIdProperty(),
    runId: p.uuid(),
    partnerReference: p.string().length(100),
    partnerName: p.string().length(200),
    reason: p.enum(OFFBOARDING_REASONS),
    status: p.enum(OFFBOARDING_STATUSES),
    settlement: p.json<unknown>().nullable(),
    frozenAt: p.datetime(),
    settledAt: p.datetime().nullable(),
    archivedAt: p.datetime().nullable(),
  },
  uniques: [
    { name: 'partner_offboardings_tenant_run_unique', properties: ['tenantId', 'runId'] },
    { name: 'partner_offboardings_tenant_partner_unique', properties: ['tenantId', 'partnerReference'], where: "status <> 'abandoned'" },
  ],
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('partner_offboardings')],
});

/**
 * Which run of the tenant a partner's offboarding belongs to from its submission on — before its run
 * reaches freeze-partner and writes its record. One row per (tenant, partner reference), taken in the
 * submission's transaction (refuseHeldPartner): its primary key makes two submissions of one partner at
 * once queue on it, so only one of them is accepted. A claim whose run no longer holds the partner
 * (cancelled, deleted by run retention, failed for good — on a retired workflow version, or not
 * retryable — or its record abandoned)
 * is taken over by the next submission;
 * claims are never deleted (as records are not; the application role has no DELETE on them:
 * NO_DELETE_TABLES), and a run's steps never read or write them.
 */
export const PartnerOffboardingClaimRow = defineEntity({
  name: 'PartnerOffboardingClaim',
  tableName: 'partner_offboarding_claims',
  properties: {
    // Written, never looked up, and not indexed (as partner_dossiers'): the claim's key is (tenant, partner).
    id: p.uuid(),
    tenantId: tenantIdProperty().primary(),
    partnerReference: p.string().length(100).primary(),
    runId: p.uuid(),
    claimedAt: p.datetime(),
  },
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('partner_offboarding_claims')],
});
