import { defineEntity, p } from '@mikro-orm/core';
import { OPERATOR_DB_ROLE, SYSTEM_ROLE, tenantIdProperty, tenantIsolationPolicy } from '../db/tenant-owned.ts';

/** The bounds an override may take: WORKER_MAX_ACTIVE_RUNS_PER_TENANT's own maximum, and a million runs in flight. */
export const MAX_ACTIVE_RUNS_OVERRIDE = 100_000;
export const MAX_RUNS_IN_FLIGHT_OVERRIDE = 1_000_000;

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
  // The API's ranges: no row holds what the operator API refuses (a cap of 0 or less would refuse, or fail, every
  // submission of the tenant; the slot scripts ignore such a copy: ADR 0014).
  checks: [
    { name: 'tenant_limits_max_active_runs_check', expression: `max_active_runs >= 1 and max_active_runs <= ${MAX_ACTIVE_RUNS_OVERRIDE}` },
    { name: 'tenant_limits_max_runs_in_flight_check', expression: `max_runs_in_flight >= 1 and max_runs_in_flight <= ${MAX_RUNS_IN_FLIGHT_OVERRIDE}` },
  ],
  rowLevelSecurity: 'force',
  policies: [
    tenantIsolationPolicy('tenant_limits'),
    // The workers' re-seed of the Redis copy (ADR 0014): as the NOLOGIN system role, every tenant's
    // active-run override (the columns granted to it), never a write.
    { name: 'tenant_limits_system_read', command: 'select', roles: [SYSTEM_ROLE], using: 'true' },
    // The operator listing (GET /api/v1/operator/tenant-limits): as the NOLOGIN operator role, which only
    // the operator routes take on, every tenant's row. Its writes have no policy of their own: the
    // isolation policy binds them to the tenant the route names (the application role may not write at all).
    { name: 'tenant_limits_operator_read', command: 'select', roles: [OPERATOR_DB_ROLE], using: 'true' },
  ],
});
