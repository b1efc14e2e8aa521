import { defineEntity, p } from '@mikro-orm/core';
import { tenantIdProperty, tenantIsolationPolicy } from '../../platform/db/tenant-owned.ts';

/** Step 1's output, one row per run. Keyed by (tenant, run): `id` is written, never looked up, and not indexed (docs/performance-history.md, session 24). */
export const PartnerDossierRow = defineEntity({
  name: 'PartnerDossier',
  tableName: 'partner_dossiers',
  properties: {
    id: p.uuid(),
    tenantId: tenantIdProperty().primary(),
    runId: p.uuid().primary(),
    partnerName: p.string().length(200),
    country: p.string().length(2),
    completenessScore: p.double(),
    content: p.json<unknown>(),
    createdAt: p.datetime(),
  },
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('partner_dossiers')],
});

/** Step 2's output, one row per run. Keyed by (tenant, run): `id` is written, never looked up, and not indexed (docs/performance-history.md, session 24). */
export const EconomicsModelRow = defineEntity({
  name: 'EconomicsModel',
  tableName: 'economics_models',
  properties: {
    id: p.uuid(),
    tenantId: tenantIdProperty().primary(),
    runId: p.uuid().primary(),
    currency: p.string().length(3),
    cost: p.double(),
    paybackMonths: p.double().nullable(),
    content: p.json<unknown>(),
    createdAt: p.datetime(),
  },
  rowLevelSecurity: 'force',
  policies: [tenantIsolationPolicy('economics_models')],
});
