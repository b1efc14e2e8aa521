import { p, type PolicyDef } from '@mikro-orm/core';

/**
 * The tenant setting every policy reads. Written exactly as PostgreSQL prints it back from
 * `pg_policies`, so the schema diff is empty and the drift check can pass; the sub-select makes
 * it an InitPlan evaluated once per statement, and `nullif` turns the post-transaction `''`
 * into NULL, so "no tenant context" matches nothing (default deny) instead of raising.
 */
export const TENANT_SETTING = 'app.tenant_id';
/** NOLOGIN role for narrow cross-tenant maintenance, reached only by SET LOCAL ROLE. See ADR 0003. */
export const SYSTEM_ROLE = 'dealix_system';
/**
 * NOLOGIN role of the platform operator's API routes (ADR 0014), reached only by SET LOCAL ROLE from the
 * application role inside an operator route's transaction: the one role that may write `tenant_limits`
 * (the application role only reads it), and the one that reads every tenant's row (the operator listing).
 */
export const OPERATOR_DB_ROLE = 'dealix_operator';
/**
 * What the operator role holds (granted by every `migrate`, roles.ts; anything beyond it is named by the
 * catalog inspection). Its writes stay under the isolation policy: an operator route binds the
 * transaction to the tenant in its path first. Its one policy of its own lets it read every row.
 */
export const OPERATOR_GRANTS: Readonly<Record<string, readonly string[]>> = {
  tenant_limits: ['SELECT', 'INSERT', 'UPDATE', 'DELETE'],
};
/**
 * The columns the system role reads (the sweeper, `/metrics`, the readiness matrix, key expiry; ADR
 * 0003, 0008): granted by every `migrate` (roles.ts), checked by the catalog inspection (catalog.ts).
 */
export const SYSTEM_READS: Readonly<Record<string, readonly string[]>> = {
  durable_runs: ['id', 'tenant_id', 'workflow', 'workflow_version', 'status', 'sequence_num', 'step_count', 'updated_at', 'idempotency_hash', 'retry_count'],
  idempotency_keys: ['id', 'tenant_id', 'expires_at'],
  webhook_deliveries: ['id', 'tenant_id', 'status', 'next_attempt_at', 'updated_at', 'resends'],
  // The workers' re-seed of the Redis copy of the active-run overrides (ADR 0014).
  tenant_limits: ['tenant_id', 'max_active_runs'],
  // Every API process's in-memory copy of the token revocations (ADR 0018).
  token_revocations: ['tenant_id', 'jti', 'subject', 'not_before', 'expires_at', 'lifted_at'],
};
/**
 * The tables without tenant_id the application role may reach, and how: the migrations table, read
 * by `/readyz` (pending migrations), and the run-retention decision, written by every worker at start
 * and read by the sweeper (ADR 0011): neither holds tenant data. Row-level security cannot scope a
 * table without tenant_id, so any other such privilege would show one tenant's rows to every other:
 * granted by every `migrate` (roles.ts), and any privilege beyond it named by the catalog inspection.
 */
export const APP_UNTENANTED_GRANTS: Readonly<Record<string, readonly string[]>> = {
  mikro_orm_migrations: ['SELECT'],
  // The run-retention decision of the worker started last (ADR 0011): one row, a platform setting, no tenant data.
  run_retention_decision: ['SELECT', 'INSERT', 'UPDATE'],
};
export const CURRENT_TENANT_SQL = `( SELECT (NULLIF(current_setting('${TENANT_SETTING}'::text, true), ''::text))::uuid AS "nullif")`;
export const TENANT_PREDICATE_SQL = `(tenant_id = ${CURRENT_TENANT_SQL})`;

/** The isolation policy of a tenant-owned table: USING and WITH CHECK on tenant_id. */
export function tenantIsolationPolicy(table: string): PolicyDef {
  return { name: `${table}_tenant_isolation`, command: 'all', using: TENANT_PREDICATE_SQL, check: TENANT_PREDICATE_SQL };
}

/** Property builder for the tenant column every tenant-owned entity carries. */
export const tenantIdProperty = () => p.uuid();

/** Marker read by the RLS suite and the readiness matrix: entities whose table is tenant-owned. */
export function isTenantOwned(meta: { properties: Record<string, unknown> }): boolean {
  return 'tenantId' in meta.properties;
}
