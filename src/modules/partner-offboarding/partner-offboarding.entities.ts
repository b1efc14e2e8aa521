import { defineEntity, p } from '@mikro-orm/core';
import { tenantIdProperty, tenantIsolationPolicy } from '../../platform/db/tenant-owned.ts';
import { OFFBOARDING_REASONS } from './partner-offboarding.schemas.ts';

export const OFFBOARDING_STATUSES = ['frozen', 'settled', 'archived'] as const;

/** One partner offboarding per run: created frozen by step 1, settled by step 2, archived by step 3. */
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
  uniques: [{ name: 'partner_offboardings_tenant_run_unique', properties: ['tenantId', 'runId'] }],
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('partner_offboardings')],
});
