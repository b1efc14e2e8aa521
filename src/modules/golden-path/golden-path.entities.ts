import { defineEntity, p } from '@mikro-orm/core';
import { tenantIdProperty, tenantIsolationPolicy } from '../../platform/db/tenant-owned.ts';

/** Step 1's output, one row per run. */
export const PartnerDossierRow = defineEntity({
  name: 'PartnerDossier',
  tableName: 'partner_dossiers',
  properties: {
    id: p.uuid().primary(),
    tenantId: tenantIdProperty(),
    runId: p.uuid(),
    partnerName: p.string().length(200),
    country: p.string().length(2),
    completenessScore: p.double(),
    content: p.json<unknown>(),
    createdAt: p.datetime(),
  },
  uniques: [{ name: 'partner_dossiers_tenant_run_unique', properties: ['tenantId', 'runId'] }],
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('partner_dossiers')],
});

/** Step 2's output, one row per run. */
export const EconomicsModelRow = defineEntity({
  name: 'EconomicsModel',
  tableName: 'economics_models',
  properties: {
    id: p.uuid().primary(),
    tenantId: tenantIdProperty(),
    runId: p.uuid(),
    currency: p.string().length(3),
    cost: p.double(),
    paybackMonths: p.double().nullable(),
    content: p.json<unknown>(),
    createdAt: p.datetime(),
  },
  uniques: [{ name: 'economics_models_tenant_run_unique', properties: ['tenantId', 'runId'] }],
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('economics_models')],
});
