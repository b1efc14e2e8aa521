import { defineEntity, p } from '@mikro-orm/core';
import { SYSTEM_ROLE, tenantIdProperty, tenantIsolationPolicy } from '../db/tenant-owned.ts';

/**
 * A tenant's overrides of the process-wide per-tenant limits, set by a platform operator at runtime
 * (PUT /api/v1/operator/tenants/:tenant_id/limits; ADR 0014). A null column means "the default":
 * WORKER_MAX_ACTIVE_RUNS_PER_TENANT, MAX_RUNS_IN_FLIGHT_PER_TENANT. No row: no override at all.
 */
export const TenantLimitsRow = defineEntity({
  name: 'TenantLimits',
  tableName: 'tenant_limits',
  properties: {
    tenantId: tenantIdProperty().primary(),
    /** The tenant's cap on run jobs executing at once (worker side, ADR 0012); null: the default. */
    maxActiveRuns: p.integer().nullable(),
    /** The tenant's cap on runs pending or running, checked on submission (API side); null: the default. */
    maxRunsInFlight: p.integer().nullable(),
    /** The sub of the operator whose PUT wrote the row. */
    updatedBy: p.string().length(255),
    updatedAt: p.datetime(),
  },
  rowLevelSecurity: 'force',
  policies: [
    tenantIsolationPolicy('tenant_limits'),
    // The workers' re-seed of the Redis copy (ADR 0014): as the NOLOGIN system role, every tenant's
    // active-run override (the columns granted to it), never a write.
    { name: 'tenant_limits_system_read', command: 'select', roles: [SYSTEM_ROLE], using: 'true' },
  ],
});
